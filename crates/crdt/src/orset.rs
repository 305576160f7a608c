//! The add-wins observed-remove set.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::causal::{Causal, DotSet, DotStore, Mutation};
use crate::join::{JoinOps, join_maps};
use crate::{CausalContext, Dot, ReplicaId};

/// The dot store of an [`ORSet`]: each present element with the dots of the
/// adds that put it there (normally one). Nests inside an [`ORMap`](crate::ORMap).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Ord + Deserialize<'de>"))]
pub struct OrSetStore<T: Ord>(BTreeMap<T, DotSet>);

impl<T: Ord> Default for OrSetStore<T> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<T: Ord + fmt::Debug> fmt::Debug for OrSetStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl<T: Ord + Clone + fmt::Debug> OrSetStore<T> {
    /// Delta mutator: adds `value`, overwriting the adds this replica observed.
    pub fn add(&self, m: &mut Mutation, value: T) -> Self {
        if let Some(dots) = self.0.get(&value) {
            m.cover_all(dots);
        }
        let dot = m.new_dot();
        Self(BTreeMap::from([(value, DotSet::one(dot))]))
    }

    /// Delta mutator: removes `value` as observed (nothing if absent).
    pub fn remove(&self, m: &mut Mutation, value: &T) -> Self {
        if let Some(dots) = self.0.get(value) {
            m.cover_all(dots);
        }
        Self::default()
    }

    /// Delta mutator: removes every observed element.
    pub fn clear(&self, m: &mut Mutation) -> Self {
        m.cover_all(self);
        Self::default()
    }

    /// Whether `value` is present.
    pub fn contains(&self, value: &T) -> bool {
        self.0.contains_key(value)
    }

    /// Present elements in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &T> + '_ {
        self.0.keys()
    }

    /// Number of present elements.
    #[expect(
        clippy::len_without_is_empty,
        reason = "is_empty is DotStore::is_empty"
    )]
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl<T: Ord + Clone + fmt::Debug> DotStore for OrSetStore<T> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn for_each_dot(&self, f: &mut dyn FnMut(Dot)) {
        for dots in self.0.values() {
            dots.for_each_dot(f);
        }
    }

    fn join(&mut self, ctx: &CausalContext, other: Self, other_ctx: &CausalContext) {
        join_maps(
            &mut self.0,
            other.0,
            JoinOps {
                left_may_change: !other_ctx.is_empty(),
                left: |_: &T, mut dots: DotSet| {
                    dots.retain_unseen(other_ctx);
                    (!dots.is_empty()).then_some(dots)
                },
                right: |_: &T, mut dots: DotSet| {
                    dots.retain_unseen(ctx);
                    (!dots.is_empty()).then_some(dots)
                },
                both: |_: &T, mut a: DotSet, b: DotSet| {
                    a.join(ctx, b, other_ctx);
                    (!a.is_empty()).then_some(a)
                },
            },
        );
    }

    fn validate(&self, ctx: &CausalContext) -> Result<(), String> {
        for dots in self.0.values() {
            if dots.is_empty() {
                return Err("set element with no dots".into());
            }
            dots.validate(ctx)?;
        }
        Ok(())
    }
}

/// An add-wins observed-remove set (the optimized OR-Set without
/// tombstones: Bieniusa et al. 2012, in delta form).
///
/// Concurrent semantics: an add concurrent with a remove of the same element
/// wins; a remove only removes the adds its replica had observed, so removing
/// an element never seen is a no-op. Removed elements leave no per-element
/// tombstone: the causal context remembers their dots compactly.
pub type ORSet<T> = Causal<OrSetStore<T>>;

impl<T: Ord + Clone + fmt::Debug> Causal<OrSetStore<T>> {
    /// Adds `value` on behalf of `replica`; returns the delta.
    pub fn add(&mut self, replica: ReplicaId, value: T) -> Self {
        let mut m = Mutation::new(replica, &self.ctx);
        let store = self.store.add(&mut m, value.clone());
        let ctx = m.into_context();
        // Apply in place: the delta touches only `value`'s entry, so there is
        // no need for a full join.
        if let Some((k, dots)) = store.0.iter().next() {
            self.store.0.insert(k.clone(), dots.clone());
        }
        self.ctx.merge(&ctx);
        Self { store, ctx }
    }

    /// Removes `value` as this replica has observed it; returns the delta
    /// (empty when `value` is absent).
    pub fn remove(&mut self, value: &T) -> Self {
        let mut ctx = CausalContext::new();
        if let Some(dots) = self.store.0.remove(value) {
            dots.iter().for_each(|d| ctx.insert(d));
        }
        Self {
            store: OrSetStore::default(),
            ctx,
        }
    }

    /// Removes every element this replica has observed; returns the delta.
    pub fn clear(&mut self) -> Self {
        let mut ctx = CausalContext::new();
        self.store.for_each_dot(&mut |d| ctx.insert(d));
        self.store.0.clear();
        Self {
            store: OrSetStore::default(),
            ctx,
        }
    }

    /// Whether `value` is present.
    pub fn contains(&self, value: &T) -> bool {
        self.store.contains(value)
    }

    /// Present elements in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &T> + '_ {
        self.store.iter()
    }

    /// Number of present elements.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether no element is present.
    pub fn is_empty(&self) -> bool {
        self.store.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Crdt;

    fn r(n: u64) -> ReplicaId {
        ReplicaId::from_u64(n)
    }

    #[test]
    fn add_wins_over_concurrent_remove() {
        let mut a = ORSet::new();
        let mut b = ORSet::new();
        b.merge(&a.add(r(1), "x"));
        let rm = b.remove(&"x");
        let add = a.add(r(1), "x");
        a.merge(&rm);
        b.merge(&add);
        assert_eq!(a, b);
        assert!(a.contains(&"x"));
    }

    #[test]
    fn observed_remove_wins_and_leaves_no_tombstone() {
        let mut a = ORSet::new();
        let mut b = ORSet::new();
        for i in 0..100 {
            b.merge(&a.add(r(1), i));
        }
        for i in 0..100 {
            a.merge(&b.remove(&i));
        }
        assert_eq!(a, b);
        assert!(a.is_empty());
        // No per-element tombstones: the context folded into one vector entry.
        assert_eq!(a.context().cloud().count(), 0);
        assert_eq!(a.context().version_vector().len(), 1);
    }

    #[test]
    fn remove_of_unseen_element_is_a_noop() {
        let mut a = ORSet::new();
        let mut b: ORSet<u32> = ORSet::new();
        let rm = b.remove(&7);
        assert!(rm.context().is_empty());
        let add = a.add(r(1), 7);
        b.merge(&add);
        b.merge(&rm);
        a.merge(&rm);
        assert!(a.contains(&7) && b.contains(&7));
    }
}
