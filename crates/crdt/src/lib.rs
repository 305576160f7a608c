//! # converge-crdt
//!
//! The pure core of converge: identities and clocks, and the state-based
//! (delta-state) CRDTs that the key-value layer replicates. No IO, no async,
//! no wall clock: callers pass replica ids and timestamps in.
//!
//! ## Main types
//!
//! - Clocks: [`ReplicaId`], [`Dot`], [`VersionVector`], [`CausalContext`],
//!   and the hybrid logical clock [`Hlc`] / [`HlcTimestamp`].
//! - Plain state-based CRDTs: [`GCounter`], [`PNCounter`], [`GSet`],
//!   [`TwoPSet`], [`LWWRegister`].
//! - Causal CRDTs, built from a *dot store* and a [`CausalContext`]
//!   ([`Causal`]): [`ORSet`], [`MVRegister`], [`EWFlag`], [`DWFlag`],
//!   [`CCounter`], [`ORMap`] of nested dot stores, and [`LWWMap`].
//!
//! Every type implements [`Crdt`]: `merge` is a join (idempotent,
//! commutative, associative), and every mutator applies itself and returns a
//! **delta**: a small value of the same type such that merging the delta into
//! any replica that has seen the mutated state's causal past has the same
//! effect as the mutation. Deltas are what replicas ship to each other.
//!
//! [`codec`] turns any of them into versioned, checksummed bytes and back,
//! rejecting corrupt, truncated or invariant-breaking input with a typed error.
//!
//! ## Example
//!
//! ```
//! use converge_crdt::{Crdt, ORSet, ReplicaId};
//!
//! let (a, b) = (ReplicaId::from_u64(1), ReplicaId::from_u64(2));
//! let mut alice = ORSet::new();
//! let mut bob = ORSet::new();
//! let d1 = alice.add(a, "milk");
//! bob.merge(&d1);
//! // Concurrently: Bob removes milk, Alice adds it again.
//! let d2 = bob.remove(&"milk");
//! let d3 = alice.add(a, "milk");
//! alice.merge(&d2);
//! bob.merge(&d3);
//! assert_eq!(alice, bob);
//! assert!(alice.contains(&"milk"), "add wins over a concurrent remove");
//! # let _ = b;
//! ```

mod causal;
mod clock;
pub mod codec;
mod counter;
mod join;
mod map;
mod orset;
mod register;
mod set;
mod stores;

pub use causal::{Causal, DotFun, DotSet, DotStore, Mutation};
pub use clock::{
    CausalContext, Causality, Dot, Hlc, HlcError, HlcTimestamp, ParseReplicaIdError, ReplicaId,
    VersionVector,
};
pub use counter::{GCounter, PNCounter};
pub use map::{LWWMap, ORMap, OrMapStore};
pub use orset::{ORSet, OrSetStore};
pub use register::LWWRegister;
pub use set::{GSet, NotAdded, TwoPSet};
pub use stores::{
    CCounter, CounterStore, DWFlag, DwFlagStore, EWFlag, EwFlagStore, LwwRegStore, MVRegister,
    MvRegStore,
};

/// A state-based CRDT: a join semilattice whose `merge` is the join.
///
/// Laws (checked by property tests for every type): `merge` is idempotent,
/// commutative and associative, and merging [`Default::default`] changes
/// nothing. Deltas returned by mutators are values of the same type.
pub trait Crdt: Clone + PartialEq + Default {
    /// Joins `other` into `self`, taking ownership to avoid copies.
    fn merge_owned(&mut self, other: Self);

    /// Joins `other` into `self`.
    fn merge(&mut self, other: &Self) {
        self.merge_owned(other.clone());
    }
}

/// Invariants a value read from outside must satisfy before use: canonical
/// form (sorted, compact, no empty parts) and, for causal types, every live
/// dot present in the causal context.
///
/// [`codec::decode`] checks it; call it yourself after deserializing from
/// another format (JSON, say).
pub trait Validate {
    /// `Ok` if the value is well formed, else a description of the first problem.
    fn validate(&self) -> Result<(), String>;
}
