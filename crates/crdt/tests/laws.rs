//! Property tests: the join-semilattice laws, the delta law, codec round
//! trips and convergence under any delivery order, for every CRDT.

use std::fmt::Debug;

use converge_crdt::codec;
use converge_crdt::{
    CCounter, CounterStore, Crdt, DWFlag, EWFlag, GCounter, GSet, Hlc, HlcTimestamp, LWWMap,
    LWWRegister, MVRegister, MvRegStore, ORMap, ORSet, OrMapStore, OrSetStore, PNCounter,
    ReplicaId, TwoPSet, Validate,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde::Serialize;
use serde::de::DeserializeOwned;

const REPLICAS: usize = 3;

/// A CRDT under test: how to generate and apply a random mutation.
trait Model: Crdt + Debug + Validate + Serialize + DeserializeOwned {
    type Op: Debug + Clone;
    fn op() -> BoxedStrategy<Self::Op>;
    /// Applies `op` as replica `replica` at wall time `now`; returns the delta.
    fn apply(&mut self, replica: ReplicaId, clock: &mut Hlc, now: u64, op: &Self::Op) -> Self;
}

#[derive(Debug, Clone)]
enum Action<O> {
    Op(usize, O),
    /// Replica `.1` merges replica `.0`'s full state.
    Sync(usize, usize),
}

fn script<M: Model>() -> impl Strategy<Value = Vec<Action<M::Op>>> {
    let action = prop_oneof![
        4 => (0..REPLICAS, M::op()).prop_map(|(r, o)| Action::Op(r, o)),
        1 => (0..REPLICAS, 0..REPLICAS).prop_map(|(a, b)| Action::Sync(a, b)),
    ];
    prop::collection::vec(action, 0..40)
}

fn replica(i: usize) -> ReplicaId {
    ReplicaId::from_u64(0x1000 + i as u64)
}

struct Run<M> {
    states: Vec<M>,
    deltas: Vec<M>,
}

/// Runs a script, checking the delta law at every mutation.
fn run<M: Model>(actions: &[Action<M::Op>]) -> Result<Run<M>, TestCaseError> {
    let mut states: Vec<M> = (0..REPLICAS).map(|_| M::default()).collect();
    let mut clocks: Vec<Hlc> = (0..REPLICAS).map(|i| Hlc::new(replica(i))).collect();
    let mut deltas = Vec::new();
    for (step, action) in actions.iter().enumerate() {
        match action {
            Action::Op(r, op) => {
                let before = states[*r].clone();
                let delta = states[*r].apply(replica(*r), &mut clocks[*r], step as u64, op);
                let mut joined = before;
                joined.merge(&delta);
                prop_assert_eq!(&joined, &states[*r], "state ⊔ delta != mutated state");
                prop_assert_eq!(delta.validate(), Ok(()));
                prop_assert_eq!(states[*r].validate(), Ok(()));
                deltas.push(delta);
            }
            Action::Sync(from, to) => {
                let s = states[*from].clone();
                states[*to].merge(&s);
            }
        }
    }
    Ok(Run { states, deltas })
}

fn join<M: Crdt>(a: &M, b: &M) -> M {
    let mut x = a.clone();
    x.merge(b);
    x
}

fn check_laws<M: Model>(actions: Vec<Action<M::Op>>) -> Result<(), TestCaseError> {
    let Run { states, deltas } = run::<M>(&actions)?;
    let (a, b, c) = (&states[0], &states[1], &states[2]);
    prop_assert_eq!(&join(a, a), a, "idempotent");
    prop_assert_eq!(join(a, b), join(b, a), "commutative");
    prop_assert_eq!(join(&join(a, b), c), join(a, &join(b, c)), "associative");
    prop_assert_eq!(&join(a, &M::default()), a, "bottom is neutral");
    let mut owned = a.clone();
    owned.merge_owned(b.clone());
    prop_assert_eq!(owned, join(a, b), "merge_owned == merge");
    for value in states.iter().chain(&deltas) {
        let bytes = codec::encode(value);
        let back: M = codec::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, value, "codec round trip");
    }
    Ok(())
}

/// Every replica receives every delta, shuffled and duplicated; all must end
/// equal, with identical encodings, and equal to a gossip of full states.
fn check_convergence<M: Model>(
    actions: Vec<Action<M::Op>>,
    orders: Vec<Vec<usize>>,
) -> Result<(), TestCaseError> {
    let Run { states, deltas } = run::<M>(&actions)?;
    let mut finals = Vec::new();
    for (i, state) in states.iter().enumerate() {
        let mut s = state.clone();
        let order = &orders[i % orders.len()];
        for &k in order {
            if !deltas.is_empty() {
                s.merge(&deltas[k % deltas.len()]);
            }
        }
        // Whatever the random order missed, deliver in order (duplicates included).
        for d in &deltas {
            s.merge(d);
        }
        finals.push(s);
    }
    // Full-state gossip in a fixed ring, twice around, reaches the same point.
    let mut gossip = states.clone();
    for _ in 0..2 {
        for i in 0..REPLICAS {
            let from = gossip[i].clone();
            gossip[(i + 1) % REPLICAS].merge(&from);
        }
    }
    let first = codec::encode(&finals[0]);
    for s in finals.iter().chain(&gossip) {
        prop_assert_eq!(s, &finals[0], "replicas diverged");
        prop_assert_eq!(
            codec::encode(s),
            first.clone(),
            "equal states encode differently"
        );
    }
    Ok(())
}

macro_rules! crdt_props {
    ($name:ident, $ty:ty) => {
        mod $name {
            use super::*;
            proptest! {
                #![proptest_config(ProptestConfig::with_cases(cases(96)))]
                #[test]
                fn laws(actions in script::<$ty>()) {
                    check_laws::<$ty>(actions)?;
                }
                #[test]
                fn convergence(
                    actions in script::<$ty>(),
                    orders in prop::collection::vec(prop::collection::vec(0usize..64, 0..80), 1..4),
                ) {
                    check_convergence::<$ty>(actions, orders)?;
                }
            }
        }
    };
}

// ---- models ---------------------------------------------------------------

impl Model for GCounter {
    type Op = u8;
    fn op() -> BoxedStrategy<u8> {
        any::<u8>().boxed()
    }
    fn apply(&mut self, r: ReplicaId, _: &mut Hlc, _: u64, by: &u8) -> Self {
        self.increment(r, u64::from(*by))
    }
}

impl Model for PNCounter {
    type Op = i8;
    fn op() -> BoxedStrategy<i8> {
        any::<i8>().boxed()
    }
    fn apply(&mut self, r: ReplicaId, _: &mut Hlc, _: u64, by: &i8) -> Self {
        self.add(r, i64::from(*by))
    }
}

impl Model for GSet<u8> {
    type Op = u8;
    fn op() -> BoxedStrategy<u8> {
        (0u8..16).boxed()
    }
    fn apply(&mut self, _: ReplicaId, _: &mut Hlc, _: u64, v: &u8) -> Self {
        self.insert(*v)
    }
}

impl Model for TwoPSet<u8> {
    type Op = (bool, u8);
    fn op() -> BoxedStrategy<(bool, u8)> {
        (any::<bool>(), 0u8..8).boxed()
    }
    fn apply(&mut self, _: ReplicaId, _: &mut Hlc, _: u64, (add, v): &(bool, u8)) -> Self {
        if *add {
            self.insert(*v)
        } else {
            self.remove(v).unwrap_or_default()
        }
    }
}

#[derive(Debug, Clone)]
enum SetOp {
    Add(u8),
    Remove(u8),
    Clear,
}

fn set_op() -> BoxedStrategy<SetOp> {
    prop_oneof![
        6 => (0u8..8).prop_map(SetOp::Add),
        4 => (0u8..8).prop_map(SetOp::Remove),
        1 => Just(SetOp::Clear),
    ]
    .boxed()
}

impl Model for ORSet<u8> {
    type Op = SetOp;
    fn op() -> BoxedStrategy<SetOp> {
        set_op()
    }
    fn apply(&mut self, r: ReplicaId, _: &mut Hlc, _: u64, op: &SetOp) -> Self {
        match op {
            SetOp::Add(v) => self.add(r, *v),
            SetOp::Remove(v) => self.remove(v),
            SetOp::Clear => self.clear(),
        }
    }
}

impl Model for LWWRegister<u8> {
    type Op = (u8, u8);
    fn op() -> BoxedStrategy<(u8, u8)> {
        (0u8..3, any::<u8>()).boxed()
    }
    fn apply(&mut self, _: ReplicaId, clock: &mut Hlc, now: u64, (skew, v): &(u8, u8)) -> Self {
        // Wall clocks that jump back and forth.
        let ts: HlcTimestamp = clock.tick(now * u64::from(*skew));
        self.set(ts, *v)
    }
}

impl Model for MVRegister<u8> {
    type Op = u8;
    fn op() -> BoxedStrategy<u8> {
        any::<u8>().boxed()
    }
    fn apply(&mut self, r: ReplicaId, _: &mut Hlc, _: u64, v: &u8) -> Self {
        self.write(r, *v)
    }
}

impl Model for EWFlag {
    type Op = bool;
    fn op() -> BoxedStrategy<bool> {
        any::<bool>().boxed()
    }
    fn apply(&mut self, r: ReplicaId, _: &mut Hlc, _: u64, on: &bool) -> Self {
        if *on { self.enable(r) } else { self.disable(r) }
    }
}

impl Model for DWFlag {
    type Op = bool;
    fn op() -> BoxedStrategy<bool> {
        any::<bool>().boxed()
    }
    fn apply(&mut self, r: ReplicaId, _: &mut Hlc, _: u64, on: &bool) -> Self {
        if *on { self.enable(r) } else { self.disable(r) }
    }
}

impl Model for CCounter {
    type Op = i8;
    fn op() -> BoxedStrategy<i8> {
        any::<i8>().boxed()
    }
    fn apply(&mut self, r: ReplicaId, _: &mut Hlc, _: u64, by: &i8) -> Self {
        self.add(r, i64::from(*by))
    }
}

#[derive(Debug, Clone)]
enum MapOp {
    Count(u8, i8),
    Remove(u8),
    Tag(u8, SetOp),
    Nested(u8, u8, u8),
}

type Cart = ORMap<u8, CounterStore>;
type Tags = ORMap<u8, OrSetStore<u8>>;
type Nested = ORMap<u8, OrMapStore<u8, MvRegStore<u8>>>;

impl Model for Cart {
    type Op = MapOp;
    fn op() -> BoxedStrategy<MapOp> {
        prop_oneof![
            3 => (0u8..4, any::<i8>()).prop_map(|(k, by)| MapOp::Count(k, by)),
            1 => (0u8..4).prop_map(MapOp::Remove),
        ]
        .boxed()
    }
    fn apply(&mut self, r: ReplicaId, _: &mut Hlc, _: u64, op: &MapOp) -> Self {
        match op {
            MapOp::Count(k, by) => self.update(r, *k, |v, m| v.add(m, i64::from(*by))),
            MapOp::Remove(k) => self.remove(k),
            _ => unreachable!("generated only for other maps"),
        }
    }
}

impl Model for Tags {
    type Op = MapOp;
    fn op() -> BoxedStrategy<MapOp> {
        prop_oneof![
            3 => (0u8..3, set_op()).prop_map(|(k, o)| MapOp::Tag(k, o)),
            1 => (0u8..3).prop_map(MapOp::Remove),
        ]
        .boxed()
    }
    fn apply(&mut self, r: ReplicaId, _: &mut Hlc, _: u64, op: &MapOp) -> Self {
        match op {
            MapOp::Tag(k, o) => self.update(r, *k, |set, m| match o {
                SetOp::Add(v) => set.add(m, *v),
                SetOp::Remove(v) => set.remove(m, v),
                SetOp::Clear => set.clear(m),
            }),
            MapOp::Remove(k) => self.remove(k),
            _ => unreachable!("generated only for other maps"),
        }
    }
}

impl Model for Nested {
    type Op = MapOp;
    fn op() -> BoxedStrategy<MapOp> {
        prop_oneof![
            3 => (0u8..3, 0u8..3, any::<u8>()).prop_map(|(k, j, v)| MapOp::Nested(k, j, v)),
            1 => (0u8..3).prop_map(MapOp::Remove),
        ]
        .boxed()
    }
    fn apply(&mut self, r: ReplicaId, _: &mut Hlc, _: u64, op: &MapOp) -> Self {
        match op {
            MapOp::Nested(k, j, v) => self.update(r, *k, |inner, m| {
                inner.update(m, *j, |reg, m| reg.write(m, *v))
            }),
            MapOp::Remove(k) => self.remove(k),
            _ => unreachable!("generated only for other maps"),
        }
    }
}

impl Model for LWWMap<u8, u8> {
    type Op = (bool, u8, u8);
    fn op() -> BoxedStrategy<(bool, u8, u8)> {
        (any::<bool>(), 0u8..4, any::<u8>()).boxed()
    }
    fn apply(
        &mut self,
        r: ReplicaId,
        clock: &mut Hlc,
        now: u64,
        (set, k, v): &(bool, u8, u8),
    ) -> Self {
        if *set {
            self.set(r, clock.tick(now), *k, *v)
        } else {
            self.remove(k)
        }
    }
}

crdt_props!(gcounter, GCounter);
crdt_props!(pncounter, PNCounter);
crdt_props!(gset, GSet<u8>);
crdt_props!(two_p_set, TwoPSet<u8>);
crdt_props!(orset, ORSet<u8>);
crdt_props!(lww_register, LWWRegister<u8>);
crdt_props!(mv_register, MVRegister<u8>);
crdt_props!(ew_flag, EWFlag);
crdt_props!(dw_flag, DWFlag);
crdt_props!(ccounter, CCounter);
crdt_props!(ormap_counters, Cart);
crdt_props!(ormap_sets, Tags);
crdt_props!(ormap_nested, Nested);
crdt_props!(lww_map, LWWMap<u8, u8>);

// ---- semantic checks beyond the laws -------------------------------------

proptest! {
    /// Counters count every increment exactly once, whatever the delivery.
    #[test]
    fn pncounter_value_is_the_sum(ops in prop::collection::vec((0..REPLICAS, any::<i8>()), 0..60)) {
        let mut states: Vec<PNCounter> = (0..REPLICAS).map(|_| PNCounter::new()).collect();
        let mut deltas = Vec::new();
        let mut expected = 0i128;
        for (r, by) in &ops {
            deltas.push(states[*r].add(replica(*r), i64::from(*by)));
            expected += i128::from(*by);
        }
        let mut all = PNCounter::new();
        for d in deltas.iter().rev().chain(&deltas) {
            all.merge(d);
        }
        prop_assert_eq!(all.value(), expected);
    }

    /// An ORSet behaves like a plain set when used by one replica.
    #[test]
    fn orset_matches_a_set_sequentially(ops in prop::collection::vec(set_op(), 0..60)) {
        let mut s = ORSet::new();
        let mut model = std::collections::BTreeSet::new();
        for op in &ops {
            match op {
                SetOp::Add(v) => { s.add(replica(0), *v); model.insert(*v); }
                SetOp::Remove(v) => { s.remove(v); model.remove(v); }
                SetOp::Clear => { s.clear(); model.clear(); }
            }
            prop_assert_eq!(s.iter().copied().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
        }
        // Single writer: the context stays a plain version vector.
        prop_assert_eq!(s.context().cloud().count(), 0);
    }

    /// Decoding arbitrary or mutated bytes returns an error or a valid value; never panics.
    #[test]
    fn decoding_garbage_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let _ = codec::decode::<ORSet<u8>>(&bytes);
        let _ = codec::decode::<Nested>(&bytes);
        // Start from a real encoding and corrupt it.
        let mut s = Nested::new();
        s.update(replica(0), 1, |i, m| i.update(m, 2, |r, m| r.write(m, 3)));
        s.update(replica(1), 4, |i, m| i.update(m, 5, |r, m| r.write(m, 6)));
        let good = codec::encode(&s);
        let mut bad = good.clone();
        for (i, x) in &flips {
            let i = i.index(bad.len());
            bad[i] ^= x | 1;
        }
        if !flips.is_empty() {
            prop_assert!(codec::decode::<Nested>(&bad).is_err(), "corruption must be detected");
        }
        let truncated = &good[..cut.index(good.len())];
        prop_assert!(codec::decode::<Nested>(truncated).is_err());
    }
}

/// Cases per property: `PROPTEST_CASES` when set (to run harder), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
