//! The causal CRDT framework (Almeida, Shoker, Baquero, *Delta state
//! replicated data types*, 2018): a *dot store* holds the live part of a
//! state, each piece tagged by the [`Dot`] of the event that wrote it; a
//! [`CausalContext`] records every dot ever seen. A dot that the context
//! holds but the store does not was removed, so removals need no tombstones.

use std::fmt;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::{CausalContext, Crdt, Dot, ReplicaId, Validate};

/// The live part of a causal CRDT: values tagged with dots.
///
/// A store is joined together with the causal contexts of both sides: a
/// piece present on one side only survives unless the other side's context
/// has seen its dot (then the other side removed it).
pub trait DotStore: Clone + PartialEq + Default + fmt::Debug {
    /// Whether the store holds nothing (the bottom element).
    fn is_empty(&self) -> bool;

    /// Calls `f` with every dot the store holds.
    fn for_each_dot(&self, f: &mut dyn FnMut(Dot));

    /// Joins `other` (whose context is `other_ctx`) into `self` (whose
    /// context is `ctx`). Contexts are merged by the caller afterwards.
    fn join(&mut self, ctx: &CausalContext, other: Self, other_ctx: &CausalContext);

    /// Checks the store's invariants for input that came from outside:
    /// canonical order, no empty parts, every dot present in `ctx`.
    fn validate(&self, ctx: &CausalContext) -> Result<(), String>;
}

/// One mutation in progress: mints new dots for `replica` and collects the
/// delta's causal context (new dots plus the dots the mutation overwrites).
///
/// Store mutators take `&mut Mutation` and return the store part of the delta.
#[derive(Debug)]
pub struct Mutation {
    replica: ReplicaId,
    next: u64,
    ctx: CausalContext,
}

impl Mutation {
    /// Starts a mutation by `replica` on a state whose context is `state_ctx`.
    pub fn new(replica: ReplicaId, state_ctx: &CausalContext) -> Self {
        Self {
            replica,
            next: state_ctx.next_dot(replica).counter,
            ctx: CausalContext::new(),
        }
    }

    /// The replica performing the mutation.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// A fresh dot, recorded in the delta's context.
    pub fn new_dot(&mut self) -> Dot {
        let dot = Dot::new(self.replica, self.next);
        self.next = self.next.saturating_add(1);
        self.ctx.insert(dot);
        dot
    }

    /// Records that the delta overwrites (removes) `dot`.
    pub fn cover(&mut self, dot: Dot) {
        self.ctx.insert(dot);
    }

    /// Records that the delta overwrites every dot in `store`.
    pub fn cover_all<S: DotStore>(&mut self, store: &S) {
        store.for_each_dot(&mut |d| self.ctx.insert(d));
    }

    /// The delta's causal context.
    pub fn into_context(self) -> CausalContext {
        self.ctx
    }
}

/// A causal CRDT: a dot store `S` and the causal context of everything seen.
///
/// [`ORSet`](crate::ORSet), [`MVRegister`](crate::MVRegister),
/// [`EWFlag`](crate::EWFlag), [`DWFlag`](crate::DWFlag),
/// [`CCounter`](crate::CCounter) and [`ORMap`](crate::ORMap) are all `Causal`
/// over their stores; the stores themselves nest inside an `ORMap`.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Causal<S: DotStore> {
    pub(crate) store: S,
    pub(crate) ctx: CausalContext,
}

impl<S: DotStore> Causal<S> {
    /// The empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// The live dot store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Everything this state has seen.
    pub fn context(&self) -> &CausalContext {
        &self.ctx
    }

    /// Applies a mutation by `replica` and returns its delta.
    ///
    /// `f` receives the current store and a [`Mutation`] to mint dots with,
    /// and returns the store part of the delta. The state afterwards is
    /// exactly `state ⊔ delta`, by construction.
    pub fn mutate(&mut self, replica: ReplicaId, f: impl FnOnce(&S, &mut Mutation) -> S) -> Self {
        let mut m = Mutation::new(replica, &self.ctx);
        let store = f(&self.store, &mut m);
        let delta = Self {
            store,
            ctx: m.into_context(),
        };
        self.merge(&delta);
        delta
    }
}

impl<S: DotStore> Crdt for Causal<S> {
    fn merge_owned(&mut self, other: Self) {
        self.store.join(&self.ctx, other.store, &other.ctx);
        self.ctx.merge(&other.ctx);
    }
}

impl<S: DotStore> fmt::Debug for Causal<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Causal")
            .field("store", &self.store)
            .field("ctx", &self.ctx)
            .finish()
    }
}

impl<S: DotStore> Validate for Causal<S> {
    fn validate(&self) -> Result<(), String> {
        self.ctx.validate()?;
        self.store.validate(&self.ctx)
    }
}

/// A set of dots (usually one), sorted. The store of a flag or of one
/// element of an [`ORSet`](crate::ORSet).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DotSet(SmallVec<[Dot; 1]>);

impl DotSet {
    /// The set holding just `dot`.
    pub fn one(dot: Dot) -> Self {
        let mut v = SmallVec::new();
        v.push(dot);
        Self(v)
    }

    /// The dots in order.
    pub fn iter(&self) -> impl Iterator<Item = Dot> + '_ {
        self.0.iter().copied()
    }

    /// Whether `dot` is in the set.
    pub fn contains(&self, dot: Dot) -> bool {
        self.0.binary_search(&dot).is_ok()
    }
}

impl fmt::Debug for DotSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.iter()).finish()
    }
}

impl DotStore for DotSet {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn for_each_dot(&self, f: &mut dyn FnMut(Dot)) {
        self.0.iter().for_each(|d| f(*d));
    }

    fn join(&mut self, ctx: &CausalContext, other: Self, other_ctx: &CausalContext) {
        // Fast path: identical singletons (the common case for elements both
        // sides have seen).
        if self.0 == other.0 {
            return;
        }
        let mut out = SmallVec::new();
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.0, &other.0);
        while i < a.len() || j < b.len() {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x == y => {
                    out.push(*x);
                    i += 1;
                    j += 1;
                }
                (Some(x), y) if y.is_none_or(|y| x < y) => {
                    if !other_ctx.contains(*x) {
                        out.push(*x);
                    }
                    i += 1;
                }
                (_, Some(y)) => {
                    if !ctx.contains(*y) {
                        out.push(*y);
                    }
                    j += 1;
                }
                (_, None) => break,
            }
        }
        self.0 = out;
    }

    fn validate(&self, ctx: &CausalContext) -> Result<(), String> {
        if !self.0.windows(2).all(|w| w[0] < w[1]) {
            return Err("dot set is not sorted and unique".into());
        }
        match self.0.iter().find(|d| !ctx.contains(**d)) {
            Some(d) => Err(format!(
                "dot {d:?} is live but missing from the causal context"
            )),
            None => Ok(()),
        }
    }
}

impl DotSet {
    /// Keeps only the dots not covered by `ctx` (what survives a remove).
    pub(crate) fn retain_unseen(&mut self, ctx: &CausalContext) {
        self.0.retain(|d| !ctx.contains(*d));
    }
}

/// A map from dots to values, sorted by dot: the store of registers and
/// counters, where each write replaces the writer's observed dots.
///
/// The same dot always carries the same value when replicas behave; should
/// two inputs disagree, the greater value is kept so the join stays a join.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DotFun<V>(Vec<(Dot, V)>);

impl<V> Default for DotFun<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V> DotFun<V> {
    /// `(dot, value)` pairs in dot order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (Dot, &V)> + '_ {
        self.0.iter().map(|(d, v)| (*d, v))
    }

    /// The values in dot order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &V> + '_ {
        self.0.iter().map(|(_, v)| v)
    }

    /// The single-entry store `{dot: value}`.
    pub fn one(dot: Dot, value: V) -> Self {
        Self(vec![(dot, value)])
    }

    /// Number of entries.
    #[expect(
        clippy::len_without_is_empty,
        reason = "is_empty is DotStore::is_empty"
    )]
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl<V: fmt::Debug> fmt::Debug for DotFun<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(d, v)| (d, v)))
            .finish()
    }
}

impl<V: Clone + Ord + fmt::Debug> DotStore for DotFun<V> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn for_each_dot(&self, f: &mut dyn FnMut(Dot)) {
        self.0.iter().for_each(|(d, _)| f(*d));
    }

    fn join(&mut self, ctx: &CausalContext, other: Self, other_ctx: &CausalContext) {
        let a = std::mem::take(&mut self.0);
        let mut out = Vec::with_capacity(a.len().max(other.0.len()));
        let mut left = a.into_iter().peekable();
        let mut right = other.0.into_iter().peekable();
        loop {
            let order = match (left.peek(), right.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((x, _)), Some((y, _))) => x.cmp(y),
            };
            match order {
                std::cmp::Ordering::Less => {
                    if let Some((d, v)) = left.next()
                        && !other_ctx.contains(d)
                    {
                        out.push((d, v));
                    }
                }
                std::cmp::Ordering::Greater => {
                    if let Some((d, v)) = right.next()
                        && !ctx.contains(d)
                    {
                        out.push((d, v));
                    }
                }
                std::cmp::Ordering::Equal => {
                    if let (Some((d, x)), Some((_, y))) = (left.next(), right.next()) {
                        out.push((d, x.max(y)));
                    }
                }
            }
        }
        self.0 = out;
    }

    fn validate(&self, ctx: &CausalContext) -> Result<(), String> {
        if !self.0.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err("dot map is not sorted by unique dots".into());
        }
        match self.0.iter().find(|(d, _)| !ctx.contains(*d)) {
            Some((d, _)) => Err(format!(
                "dot {d:?} is live but missing from the causal context"
            )),
            None => Ok(()),
        }
    }
}
