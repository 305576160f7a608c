//! The observed-remove map of nested causal CRDTs, and the LWW map.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::causal::{Causal, DotStore, Mutation};
use crate::join::{JoinOps, join_maps};
use crate::stores::LwwRegStore;
use crate::{CausalContext, Crdt, Dot, HlcTimestamp, ReplicaId, Validate};

/// The dot store of an [`ORMap`]: keys mapped to nested dot stores that
/// share the map's causal context. Itself a dot store, so maps nest.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize, V: Serialize",
    deserialize = "K: Ord + Deserialize<'de>, V: Deserialize<'de>"
))]
pub struct OrMapStore<K: Ord, V>(BTreeMap<K, V>);

impl<K: Ord, V> Default for OrMapStore<K, V> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<K: Ord + fmt::Debug, V: fmt::Debug> fmt::Debug for OrMapStore<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl<K: Ord + Clone + fmt::Debug, V: DotStore> OrMapStore<K, V> {
    /// Delta mutator: applies the nested delta mutator `f` to the value
    /// under `key` (an empty value if the key is absent).
    pub fn update(&self, m: &mut Mutation, key: K, f: impl FnOnce(&V, &mut Mutation) -> V) -> Self {
        let empty = V::default();
        let current = self.0.get(&key).unwrap_or(&empty);
        let nested = f(current, m);
        let mut out = BTreeMap::new();
        if !nested.is_empty() {
            out.insert(key, nested);
        }
        Self(out)
    }

    /// Delta mutator: removes `key`, resetting every part of its value this
    /// replica observed.
    pub fn remove(&self, m: &mut Mutation, key: &K) -> Self {
        if let Some(v) = self.0.get(key) {
            m.cover_all(v);
        }
        Self::default()
    }

    /// The value under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.0.get(key)
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&K, &V)> + '_ {
        self.0.iter()
    }

    /// Number of keys.
    #[expect(
        clippy::len_without_is_empty,
        reason = "is_empty is DotStore::is_empty"
    )]
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl<K: Ord + Clone + fmt::Debug, V: DotStore> DotStore for OrMapStore<K, V> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn for_each_dot(&self, f: &mut dyn FnMut(Dot)) {
        for v in self.0.values() {
            v.for_each_dot(f);
        }
    }

    fn join(&mut self, ctx: &CausalContext, other: Self, other_ctx: &CausalContext) {
        join_maps(
            &mut self.0,
            other.0,
            JoinOps {
                left_may_change: !other_ctx.is_empty(),
                left: |_: &K, mut v: V| {
                    v.join(ctx, V::default(), other_ctx);
                    (!v.is_empty()).then_some(v)
                },
                right: |_: &K, v: V| {
                    let mut out = V::default();
                    out.join(ctx, v, other_ctx);
                    (!out.is_empty()).then_some(out)
                },
                both: |_: &K, mut a: V, b: V| {
                    a.join(ctx, b, other_ctx);
                    (!a.is_empty()).then_some(a)
                },
            },
        );
    }

    fn validate(&self, ctx: &CausalContext) -> Result<(), String> {
        for v in self.0.values() {
            if v.is_empty() {
                return Err("map key with an empty value".into());
            }
            v.validate(ctx)?;
        }
        Ok(())
    }
}

/// An observed-remove map from keys to nested causal CRDTs (their dot
/// stores: [`CounterStore`](crate::CounterStore),
/// [`OrSetStore`](crate::OrSetStore), [`MvRegStore`](crate::MvRegStore),
/// flags, or another [`OrMapStore`]).
///
/// Concurrent semantics: updates to one key merge by the nested type's rules.
/// Removing a key resets its value: every part the remover observed is
/// dropped, so a key re-created later starts from empty. An update
/// concurrent with the remove wins: the key stays, holding what the updater wrote.
pub type ORMap<K, V> = Causal<OrMapStore<K, V>>;

impl<K: Ord + Clone + fmt::Debug, V: DotStore> Causal<OrMapStore<K, V>> {
    /// Applies the nested delta mutator `f` to the value under `key` on
    /// behalf of `replica`; returns the delta.
    ///
    /// ```
    /// use converge_crdt::{ORMap, CounterStore, ReplicaId};
    /// let mut cart: ORMap<String, CounterStore> = ORMap::new();
    /// cart.update(ReplicaId::from_u64(1), "apples".into(), |qty, m| qty.add(m, 3));
    /// assert_eq!(cart.get(&"apples".into()).map(|q| q.value()), Some(3));
    /// ```
    pub fn update(
        &mut self,
        replica: ReplicaId,
        key: K,
        f: impl FnOnce(&V, &mut Mutation) -> V,
    ) -> Self {
        let mut m = Mutation::new(replica, &self.ctx);
        let store = self.store.update(&mut m, key.clone(), f);
        let ctx = m.into_context();
        // The delta covers only dots of `key`'s value, so joining that one
        // entry is the whole join.
        let current = self.store.0.remove(&key).unwrap_or_default();
        let mut joined = current;
        joined.join(
            &self.ctx,
            store.0.get(&key).cloned().unwrap_or_default(),
            &ctx,
        );
        if !joined.is_empty() {
            self.store.0.insert(key, joined);
        }
        self.ctx.merge(&ctx);
        Self { store, ctx }
    }

    /// Removes `key` as observed; returns the delta (empty if absent).
    pub fn remove(&mut self, key: &K) -> Self {
        let mut ctx = CausalContext::new();
        if let Some(v) = self.store.0.remove(key) {
            v.for_each_dot(&mut |d| ctx.insert(d));
        }
        Self {
            store: OrMapStore::default(),
            ctx,
        }
    }

    /// The value under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.store.get(key)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> bool {
        self.store.0.contains_key(key)
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&K, &V)> + '_ {
        self.store.iter()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.store.0.is_empty()
    }
}

/// A map whose values are last-writer-wins registers on HLC timestamps
/// (an [`ORMap`] of [`LwwRegStore`]).
///
/// Concurrent semantics: concurrent writes to a key resolve by greatest
/// timestamp; a write concurrent with a remove wins over the remove; a
/// remove leaves no tombstone.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize, V: Serialize",
    deserialize = "K: Ord + Clone + fmt::Debug + Deserialize<'de>, V: Clone + Ord + fmt::Debug + Deserialize<'de>"
))]
pub struct LWWMap<K: Ord + Clone + fmt::Debug, V: Clone + Ord + fmt::Debug>(
    ORMap<K, LwwRegStore<V>>,
);

impl<K: Ord + Clone + fmt::Debug, V: Clone + Ord + fmt::Debug> Default for LWWMap<K, V> {
    fn default() -> Self {
        Self(ORMap::default())
    }
}

impl<K: Ord + Clone + fmt::Debug, V: Clone + Ord + fmt::Debug> fmt::Debug for LWWMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Ord + Clone + fmt::Debug, V: Clone + Ord + fmt::Debug> LWWMap<K, V> {
    /// The empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value` at time `ts` on behalf of `replica`; returns the delta.
    pub fn set(&mut self, replica: ReplicaId, ts: HlcTimestamp, key: K, value: V) -> Self {
        Self(self.0.update(replica, key, |r, m| r.write(m, ts, value)))
    }

    /// Removes `key` as observed; returns the delta.
    pub fn remove(&mut self, key: &K) -> Self {
        Self(self.0.remove(key))
    }

    /// The value under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.0.get(key).and_then(|r| r.read())
    }

    /// Present entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.0.iter().filter_map(|(k, r)| r.read().map(|v| (k, v)))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Ord + Clone + fmt::Debug, V: Clone + Ord + fmt::Debug> Crdt for LWWMap<K, V> {
    fn merge_owned(&mut self, other: Self) {
        self.0.merge_owned(other.0);
    }
}

impl<K: Ord + Clone + fmt::Debug, V: Clone + Ord + fmt::Debug> Validate for LWWMap<K, V> {
    fn validate(&self) -> Result<(), String> {
        self.0.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CounterStore, Hlc, MvRegStore};

    fn r(n: u64) -> ReplicaId {
        ReplicaId::from_u64(n)
    }

    type Cart = ORMap<&'static str, CounterStore>;

    fn qty(c: &Cart, k: &'static str) -> Option<i128> {
        c.get(&k).map(|v| v.value())
    }

    #[test]
    fn concurrent_update_wins_over_remove() {
        let mut a = Cart::new();
        let mut b = Cart::new();
        b.merge(&a.update(r(1), "apple", |v, m| v.add(m, 3)));
        let rm = b.remove(&"apple");
        let up = a.update(r(1), "apple", |v, m| v.add(m, 1));
        a.merge(&rm);
        b.merge(&up);
        assert_eq!(a, b);
        assert_eq!(qty(&a, "apple"), Some(4), "the updater's totals survive");
    }

    #[test]
    fn remove_resets_the_observed_value() {
        let mut a = Cart::new();
        let mut b = Cart::new();
        b.merge(&a.update(r(1), "apple", |v, m| v.add(m, 3)));
        b.merge(&a.update(r(2), "apple", |v, m| v.add(m, 2)));
        a.merge(&b.remove(&"apple"));
        assert_eq!(qty(&a, "apple"), None);
        let again = a.update(r(1), "apple", |v, m| v.add(m, 1));
        b.merge(&again);
        assert_eq!(qty(&a, "apple"), Some(1), "re-created key starts from zero");
        assert_eq!(a, b);
    }

    #[test]
    fn nested_maps_merge() {
        type Doc = ORMap<u8, OrMapStore<u8, MvRegStore<u32>>>;
        let mut a = Doc::new();
        let mut b = Doc::new();
        let d1 = a.update(r(1), 1, |inner, m| {
            inner.update(m, 10, |reg, m| reg.write(m, 7))
        });
        let d2 = b.update(r(2), 1, |inner, m| {
            inner.update(m, 11, |reg, m| reg.write(m, 8))
        });
        a.merge(&d2);
        b.merge(&d1);
        assert_eq!(a, b);
        assert_eq!(a.get(&1).map(|m| m.len()), Some(2));
    }

    #[test]
    fn lww_map_write_beats_concurrent_remove() {
        let mut h = Hlc::new(r(1));
        let mut a = LWWMap::new();
        let mut b = LWWMap::new();
        b.merge(&a.set(r(1), h.tick(1), "k", 1));
        let rm = b.remove(&"k");
        let set = a.set(r(1), h.tick(2), "k", 2);
        a.merge(&rm);
        b.merge(&set);
        assert_eq!(a, b);
        assert_eq!(a.get(&"k"), Some(&2));
    }
}
