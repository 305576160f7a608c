//! Registers, flags and the causal counter: small dot stores over [`DotFun`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::causal::{Causal, DotFun, DotStore, Mutation};
use crate::{CausalContext, Dot, HlcTimestamp, ReplicaId};

/// Implements [`DotStore`] for a newtype over [`DotFun`] by delegation.
macro_rules! delegate_dot_store {
    ($ty:ident $(<$g:ident>)?) => {
        impl$(<$g: Clone + Ord + fmt::Debug>)? DotStore for $ty$(<$g>)? {
            fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
            fn for_each_dot(&self, f: &mut dyn FnMut(Dot)) {
                self.0.for_each_dot(f)
            }
            fn join(&mut self, ctx: &CausalContext, other: Self, other_ctx: &CausalContext) {
                self.0.join(ctx, other.0, other_ctx)
            }
            fn validate(&self, ctx: &CausalContext) -> Result<(), String> {
                self.0.validate(ctx)
            }
        }
    };
}

/// The dot store of a [`MVRegister`]: every concurrently written value.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MvRegStore<T>(DotFun<T>);

impl<T> Default for MvRegStore<T> {
    fn default() -> Self {
        Self(DotFun::default())
    }
}
delegate_dot_store!(MvRegStore<T>);

impl<T: Clone + Ord + fmt::Debug> MvRegStore<T> {
    /// Delta mutator: writes `value`, overwriting every value observed.
    pub fn write(&self, m: &mut Mutation, value: T) -> Self {
        m.cover_all(self);
        Self(DotFun::one(m.new_dot(), value))
    }

    /// The current values: one, or several after concurrent writes (in dot
    /// order, so every replica lists them alike). Empty before any write.
    pub fn read(&self) -> Vec<&T> {
        self.0.values().collect()
    }
}

/// A multi-value register: a write replaces the values its replica observed.
///
/// Concurrent semantics: concurrent writes are all kept and all readable
/// (like a conflict in Dynamo); the next write that has seen them replaces them.
pub type MVRegister<T> = Causal<MvRegStore<T>>;

impl<T: Clone + Ord + fmt::Debug> Causal<MvRegStore<T>> {
    /// Writes `value` on behalf of `replica`; returns the delta.
    pub fn write(&mut self, replica: ReplicaId, value: T) -> Self {
        self.mutate(replica, |s, m| s.write(m, value))
    }

    /// The current values (several after concurrent writes), in dot order.
    pub fn read(&self) -> Vec<&T> {
        self.store.read()
    }
}

/// The dot store of an [`EWFlag`]: the dots of the enables not yet observed
/// by a disable.
#[derive(Clone, PartialEq, Eq, Default, Debug, Serialize, Deserialize)]
pub struct EwFlagStore(DotFun<()>);
delegate_dot_store!(EwFlagStore);

impl EwFlagStore {
    /// Delta mutator: enables the flag.
    pub fn enable(&self, m: &mut Mutation) -> Self {
        m.cover_all(self);
        Self(DotFun::one(m.new_dot(), ()))
    }

    /// Delta mutator: disables the flag (removes the enables observed).
    pub fn disable(&self, m: &mut Mutation) -> Self {
        m.cover_all(self);
        Self::default()
    }

    /// Whether the flag is on.
    pub fn read(&self) -> bool {
        !self.0.is_empty()
    }
}

/// An enable-wins flag, initially off.
///
/// Concurrent semantics: an enable concurrent with a disable wins (the flag
/// ends on); a disable turns off only the enables it observed.
pub type EWFlag = Causal<EwFlagStore>;

impl Causal<EwFlagStore> {
    /// Turns the flag on; returns the delta.
    pub fn enable(&mut self, replica: ReplicaId) -> Self {
        self.mutate(replica, |s, m| s.enable(m))
    }

    /// Turns the flag off; returns the delta.
    pub fn disable(&mut self, replica: ReplicaId) -> Self {
        self.mutate(replica, |s, m| s.disable(m))
    }

    /// Whether the flag is on.
    pub fn read(&self) -> bool {
        self.store.read()
    }
}

/// The dot store of a [`DWFlag`]: the latest unobserved writes, each an
/// enable (`true`) or a disable (`false`).
#[derive(Clone, PartialEq, Eq, Default, Debug, Serialize, Deserialize)]
pub struct DwFlagStore(DotFun<bool>);
delegate_dot_store!(DwFlagStore);

impl DwFlagStore {
    /// Delta mutator: writes `on`, overwriting every write observed.
    pub fn set(&self, m: &mut Mutation, on: bool) -> Self {
        m.cover_all(self);
        Self(DotFun::one(m.new_dot(), on))
    }

    /// On only if some write enabled it and no concurrent write disabled it.
    pub fn read(&self) -> bool {
        let mut values = self.0.values();
        values.len() > 0 && values.all(|on| *on)
    }
}

/// A disable-wins flag, initially off.
///
/// Concurrent semantics: a disable concurrent with an enable wins (the flag
/// ends off); the next write that observed both decides.
pub type DWFlag = Causal<DwFlagStore>;

impl Causal<DwFlagStore> {
    /// Turns the flag on; returns the delta.
    pub fn enable(&mut self, replica: ReplicaId) -> Self {
        self.mutate(replica, |s, m| s.set(m, true))
    }

    /// Turns the flag off; returns the delta.
    pub fn disable(&mut self, replica: ReplicaId) -> Self {
        self.mutate(replica, |s, m| s.set(m, false))
    }

    /// Whether the flag is on.
    pub fn read(&self) -> bool {
        self.store.read()
    }
}

/// The dot store of a [`CCounter`]: for each replica, its running totals of
/// increments and decrements, tagged with the dot of its latest update.
#[derive(Clone, PartialEq, Eq, Default, Debug, Serialize, Deserialize)]
pub struct CounterStore(DotFun<(u64, u64)>);
delegate_dot_store!(CounterStore);

impl CounterStore {
    /// Delta mutator: adds `by` (negative to subtract).
    pub fn add(&self, m: &mut Mutation, by: i64) -> Self {
        let replica = m.replica();
        // This replica's own totals; after a reset (the map key was removed)
        // there are none and counting starts again from zero.
        let (mut inc, mut dec) = (0u64, 0u64);
        for (dot, (i, d)) in self.0.iter() {
            if dot.replica == replica {
                m.cover(dot);
                inc = inc.max(*i);
                dec = dec.max(*d);
            }
        }
        if by >= 0 {
            inc = inc.saturating_add(by.unsigned_abs());
        } else {
            dec = dec.saturating_add(by.unsigned_abs());
        }
        Self(DotFun::one(m.new_dot(), (inc, dec)))
    }

    /// Increments minus decrements over every replica.
    pub fn value(&self) -> i128 {
        self.0
            .values()
            .map(|(i, d)| i128::from(*i) - i128::from(*d))
            .fold(0i128, i128::saturating_add)
    }
}

/// A causal positive-negative counter (the paper's CCounter): a PN-counter
/// whose per-replica totals carry dots, so that it can live in an
/// [`ORMap`](crate::ORMap) and be reset by removing its key.
///
/// Concurrent semantics: all increments and decrements count; inside a map,
/// removing the key drops the totals the remover observed, and an update
/// concurrent with the remove survives with its replica's totals.
pub type CCounter = Causal<CounterStore>;

impl Causal<CounterStore> {
    /// Adds `by` (negative to subtract) on behalf of `replica`; returns the delta.
    pub fn add(&mut self, replica: ReplicaId, by: i64) -> Self {
        self.mutate(replica, |s, m| s.add(m, by))
    }

    /// The current value.
    pub fn value(&self) -> i128 {
        self.store.value()
    }
}

/// The dot store of a last-writer-wins register that can be removed: the
/// unobserved writes with their timestamps; the greatest timestamp is read.
/// The value store of an [`LWWMap`](crate::LWWMap).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LwwRegStore<T>(DotFun<(HlcTimestamp, T)>);

impl<T> Default for LwwRegStore<T> {
    fn default() -> Self {
        Self(DotFun::default())
    }
}
delegate_dot_store!(LwwRegStore<T>);

impl<T: Clone + Ord + fmt::Debug> LwwRegStore<T> {
    /// Delta mutator: writes `value` at time `ts`.
    pub fn write(&self, m: &mut Mutation, ts: HlcTimestamp, value: T) -> Self {
        m.cover_all(self);
        Self(DotFun::one(m.new_dot(), (ts, value)))
    }

    /// The value with the greatest timestamp, if any.
    pub fn read(&self) -> Option<&T> {
        self.read_with_timestamp().map(|(_, v)| v)
    }

    /// The winning value with its timestamp.
    pub fn read_with_timestamp(&self) -> Option<(HlcTimestamp, &T)> {
        self.0
            .values()
            .max_by(|a, b| a.cmp(b))
            .map(|(ts, v)| (*ts, v))
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
    fn mv_register_keeps_concurrent_writes() {
        let mut a = MVRegister::new();
        let mut b = MVRegister::new();
        let da = a.write(r(1), "apple");
        let db = b.write(r(2), "banana");
        a.merge(&db);
        b.merge(&da);
        assert_eq!(a, b);
        assert_eq!(a.read(), vec![&"apple", &"banana"]);
        let dc = a.write(r(1), "cherry");
        b.merge(&dc);
        assert_eq!(
            b.read(),
            vec![&"cherry"],
            "a write that saw both replaces both"
        );
    }

    #[test]
    fn flags_resolve_concurrency_as_named() {
        let mut a = EWFlag::new();
        let mut b = EWFlag::new();
        b.merge(&a.enable(r(1)));
        let off = b.disable(r(2));
        let on = a.enable(r(1));
        a.merge(&off);
        b.merge(&on);
        assert!(a.read() && b.read(), "enable wins");

        let mut a = DWFlag::new();
        let mut b = DWFlag::new();
        assert!(!a.read());
        b.merge(&a.enable(r(1)));
        assert!(b.read());
        let off = b.disable(r(2));
        let on = a.enable(r(1));
        a.merge(&off);
        b.merge(&on);
        assert!(!a.read() && !b.read(), "disable wins");
        b.merge(&a.enable(r(1)));
        assert!(
            b.read(),
            "a later enable that observed the disable turns it on"
        );
    }

    #[test]
    fn causal_counter_counts_every_replica() {
        let mut a = CCounter::new();
        let mut b = CCounter::new();
        let d1 = a.add(r(1), 5);
        let d2 = b.add(r(2), -2);
        let d3 = a.add(r(1), 1);
        b.merge(&d3);
        b.merge(&d1);
        a.merge(&d2);
        assert_eq!(a, b);
        assert_eq!(a.value(), 4);
    }
}
