//! Identities and clocks: [`ReplicaId`], [`Dot`], [`VersionVector`], [`CausalContext`]
//! and the hybrid logical clock ([`Hlc`], [`HlcTimestamp`]).
//!
//! Nothing here reads the wall clock: callers pass physical time in, so the
//! same code runs under a simulator's virtual time.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Validate;

/// The identity of one replica: the writer of one append-only log per object.
///
/// 64 bits, random by default so that replicas can be created without
/// coordination. Printed as 16 lowercase hex digits; parsed from the same.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ReplicaId(u64);

impl ReplicaId {
    /// A fresh random replica id from the operating system's random source.
    ///
    /// # Panics
    ///
    /// If the operating system cannot supply randomness, which does not
    /// happen on supported platforms (the standard library's `HashMap`
    /// makes the same assumption). Use [`ReplicaId::try_random`] to handle it.
    pub fn random() -> Self {
        match Self::try_random() {
            Ok(id) => id,
            Err(e) => panic!("the operating system's random source failed: {e}"),
        }
    }

    /// A fresh random replica id, or the random source's error.
    pub fn try_random() -> Result<Self, getrandom::Error> {
        getrandom::u64().map(Self)
    }

    /// A replica id with the given numeric value (tests, configuration).
    pub const fn from_u64(v: u64) -> Self {
        Self(v)
    }

    /// The numeric value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplicaId({self})")
    }
}

/// The error returned when a string is not a valid [`ReplicaId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid replica id {input:?}: expected 1 to 16 hexadecimal digits")]
pub struct ParseReplicaIdError {
    input: String,
}

impl FromStr for ReplicaId {
    type Err = ParseReplicaIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseReplicaIdError {
            input: s.chars().take(40).collect(),
        };
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        u64::from_str_radix(s, 16).map(Self).map_err(|_| err())
    }
}

// Binary formats store the raw u64; human-readable ones (JSON) the hex string,
// because JavaScript numbers cannot hold 64 bits exactly.
impl Serialize for ReplicaId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ReplicaId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            u64::deserialize(d).map(Self)
        }
    }
}

/// One event of one replica: the `counter`-th event `replica` generated
/// (counters start at 1). Dots name entries in logs and elements in causal CRDTs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The replica that generated the event.
    pub replica: ReplicaId,
    /// Its sequence number at that replica, starting at 1.
    pub counter: u64,
}

impl Dot {
    /// The dot `(replica, counter)`.
    pub const fn new(replica: ReplicaId, counter: u64) -> Self {
        Self { replica, counter }
    }
}

impl fmt::Debug for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.replica, self.counter)
    }
}

/// How two version vectors (or the states they summarise) are causally related.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// The left side has seen strictly less than the right.
    Before,
    /// Both have seen exactly the same events.
    Equal,
    /// The left side has seen strictly more than the right.
    After,
    /// Each has seen something the other has not.
    Concurrent,
}

/// What a replica has seen: for each replica, the highest counter such that
/// every event `1..=counter` has been seen.
///
/// Replicas mapped to 0 are never stored, so equal knowledge means equal
/// values and equal encodings.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<ReplicaId, u64>);

impl VersionVector {
    /// The empty vector: nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest contiguous counter seen from `replica` (0 if none).
    pub fn get(&self, replica: ReplicaId) -> u64 {
        self.0.get(&replica).copied().unwrap_or(0)
    }

    /// Whether `dot` is covered.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter != 0 && self.get(dot.replica) >= dot.counter
    }

    /// Whether nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of replicas with a non-zero entry.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `(replica, counter)` pairs in replica order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (ReplicaId, u64)> + '_ {
        self.0.iter().map(|(r, c)| (*r, *c))
    }

    /// Sets the entry for `replica` (0 removes it). Callers must keep the
    /// meaning "all of `1..=counter` seen" true.
    pub fn set(&mut self, replica: ReplicaId, counter: u64) {
        if counter == 0 {
            self.0.remove(&replica);
        } else {
            self.0.insert(replica, counter);
        }
    }

    /// Advances `replica` by one and returns the new dot.
    pub fn increment(&mut self, replica: ReplicaId) -> Dot {
        let c = self.0.entry(replica).or_insert(0);
        *c = c.saturating_add(1);
        Dot::new(replica, *c)
    }

    /// Raises the entry for `dot.replica` to at least `dot.counter`.
    ///
    /// Only correct when every earlier counter of that replica is known to
    /// be seen (for example, log entries applied in order).
    pub fn observe(&mut self, dot: Dot) {
        if dot.counter == 0 {
            return;
        }
        let c = self.0.entry(dot.replica).or_insert(0);
        *c = (*c).max(dot.counter);
    }

    /// Pointwise maximum: afterwards `self` has seen everything either had seen.
    pub fn merge(&mut self, other: &Self) {
        for (r, c) in other.iter() {
            self.observe(Dot::new(r, c));
        }
    }

    /// Whether `self` has seen everything `other` has (`self >= other`).
    pub fn dominates(&self, other: &Self) -> bool {
        other.iter().all(|(r, c)| self.get(r) >= c)
    }

    /// The causal relation between `self` (left) and `other` (right).
    pub fn causality(&self, other: &Self) -> Causality {
        match (self.dominates(other), other.dominates(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (false, false) => Causality::Concurrent,
        }
    }

    /// What `other` lacks of what `self` has: for each replica where `self`
    /// is ahead, the inclusive range of counters to send, in replica order.
    ///
    /// This is the core of sync: ship exactly these suffixes.
    pub fn missing_from(&self, other: &Self) -> Vec<(ReplicaId, RangeInclusive<u64>)> {
        self.iter()
            .filter_map(|(r, c)| {
                let theirs = other.get(r);
                (c > theirs).then(|| (r, theirs + 1..=c))
            })
            .collect()
    }
}

impl PartialOrd for VersionVector {
    /// `Some(Less)` when `self` happened before `other`, `None` when concurrent.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.causality(other) {
            Causality::Before => Some(Ordering::Less),
            Causality::Equal => Some(Ordering::Equal),
            Causality::After => Some(Ordering::Greater),
            Causality::Concurrent => None,
        }
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl FromIterator<(ReplicaId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (ReplicaId, u64)>>(iter: I) -> Self {
        let mut vv = Self::new();
        for (r, c) in iter {
            vv.observe(Dot::new(r, c));
        }
        vv
    }
}

impl Validate for VersionVector {
    fn validate(&self) -> Result<(), String> {
        match self.0.iter().find(|(_, c)| **c == 0) {
            Some((r, _)) => Err(format!(
                "version vector holds a zero entry for {r} (zero entries are never stored)"
            )),
            None => Ok(()),
        }
    }
}

/// The set of dots a causal CRDT has seen, not necessarily contiguous: a
/// version vector plus a "cloud" of dots seen beyond it.
///
/// Deltas carry small, gappy contexts (only the dots they touch); full
/// states compact back to a plain version vector as gaps fill. Always kept
/// compact, so equal knowledge has one representation.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CausalContext {
    vv: VersionVector,
    cloud: BTreeSet<Dot>,
}

impl CausalContext {
    /// The empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `dot` has been seen.
    pub fn contains(&self, dot: Dot) -> bool {
        self.vv.contains(dot) || self.cloud.contains(&dot)
    }

    /// Whether nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.vv.is_empty() && self.cloud.is_empty()
    }

    /// The contiguous part of the context.
    pub fn version_vector(&self) -> &VersionVector {
        &self.vv
    }

    /// Dots seen beyond the contiguous part, in order.
    pub fn cloud(&self) -> impl Iterator<Item = Dot> + '_ {
        self.cloud.iter().copied()
    }

    /// The highest counter seen from `replica`, contiguous or not.
    pub fn max_counter(&self, replica: ReplicaId) -> u64 {
        let cloud_max = self
            .cloud
            .range(Dot::new(replica, 0)..=Dot::new(replica, u64::MAX))
            .next_back()
            .map_or(0, |d| d.counter);
        self.vv.get(replica).max(cloud_max)
    }

    /// The next dot `replica` should use: one past the highest it has seen.
    pub fn next_dot(&self, replica: ReplicaId) -> Dot {
        Dot::new(replica, self.max_counter(replica).saturating_add(1))
    }

    /// Records `dot` as seen.
    pub fn insert(&mut self, dot: Dot) {
        if dot.counter == 0 || self.vv.contains(dot) {
            return;
        }
        if dot.counter == self.vv.get(dot.replica) + 1 {
            self.vv.set(dot.replica, dot.counter);
            self.compact_replica(dot.replica);
        } else {
            self.cloud.insert(dot);
        }
    }

    /// Union with `other`.
    pub fn merge(&mut self, other: &Self) {
        if other.is_empty() {
            return;
        }
        if self.cloud.is_empty() && other.cloud.is_empty() {
            self.vv.merge(&other.vv);
            return;
        }
        self.vv.merge(&other.vv);
        self.cloud.extend(other.cloud.iter().copied());
        self.compact();
    }

    /// Moves cloud dots that have become contiguous into the vector and drops
    /// those it already covers.
    fn compact(&mut self) {
        if self.cloud.is_empty() {
            return;
        }
        let cloud = std::mem::take(&mut self.cloud);
        for dot in cloud {
            let have = self.vv.get(dot.replica);
            if dot.counter <= have {
                continue;
            }
            if dot.counter == have + 1 {
                self.vv.set(dot.replica, dot.counter);
            } else {
                self.cloud.insert(dot);
            }
        }
    }

    fn compact_replica(&mut self, replica: ReplicaId) {
        loop {
            let next = Dot::new(replica, self.vv.get(replica) + 1);
            if !self.cloud.remove(&next) {
                break;
            }
            self.vv.set(replica, next.counter);
        }
    }
}

impl From<VersionVector> for CausalContext {
    fn from(vv: VersionVector) -> Self {
        Self {
            vv,
            cloud: BTreeSet::new(),
        }
    }
}

impl fmt::Debug for CausalContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cloud.is_empty() {
            write!(f, "{:?}", self.vv)
        } else {
            write!(f, "{:?}+{:?}", self.vv, self.cloud)
        }
    }
}

impl Validate for CausalContext {
    fn validate(&self) -> Result<(), String> {
        self.vv.validate()?;
        // Only the compact form is valid: a cloud dot that is zero, already
        // covered, or next in line would give one context two encodings.
        match self
            .cloud
            .iter()
            .find(|d| d.counter <= self.vv.get(d.replica) + 1)
        {
            Some(dot) => Err(format!(
                "causal context is not compact: dot {dot:?} belongs in the version vector"
            )),
            None => Ok(()),
        }
    }
}

/// A hybrid logical clock reading: physical milliseconds, a logical counter
/// that orders events within one millisecond, and the replica as tiebreak.
///
/// Ordered lexicographically, so two different replicas' readings are never
/// equal: last-writer-wins has a single winner everywhere.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
pub struct HlcTimestamp {
    /// Milliseconds since the Unix epoch (as the replica's clock saw it, or later).
    pub physical_ms: u64,
    /// Events within the same `physical_ms`.
    pub logical: u32,
    /// The replica that produced the reading.
    pub replica: ReplicaId,
}

/// Why a remote timestamp was refused by [`Hlc::observe`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HlcError {
    /// The remote clock is further ahead of ours than the configured limit;
    /// accepting it would drag every later timestamp into the future.
    #[error(
        "remote timestamp {remote_ms} ms is {ahead_ms} ms ahead of the local clock \
         (limit {max_drift_ms} ms): check the clocks of both machines"
    )]
    ClockDrift {
        /// The remote physical time.
        remote_ms: u64,
        /// How far ahead of local wall time it is.
        ahead_ms: u64,
        /// The configured limit.
        max_drift_ms: u64,
    },
    /// The logical counter would overflow (more than 2^32 events in one ms).
    #[error("hybrid logical clock counter overflowed within one millisecond")]
    Overflow,
}

/// A hybrid logical clock (Kulkarni et al., 2014): readings follow wall time
/// when it moves forward and never go backwards when it does not.
///
/// The caller supplies wall time (`wall_ms`) to every call, so tests and
/// simulations control it.
#[derive(Debug, Clone)]
pub struct Hlc {
    replica: ReplicaId,
    last: HlcTimestamp,
    max_drift_ms: u64,
}

impl Hlc {
    /// Default limit on how far ahead a remote clock may be: one minute.
    pub const DEFAULT_MAX_DRIFT_MS: u64 = 60_000;

    /// A clock for `replica`, starting before any reading.
    pub fn new(replica: ReplicaId) -> Self {
        Self {
            replica,
            last: HlcTimestamp {
                physical_ms: 0,
                logical: 0,
                replica,
            },
            max_drift_ms: Self::DEFAULT_MAX_DRIFT_MS,
        }
    }

    /// Sets how far ahead of local wall time a remote reading may be.
    pub fn with_max_drift_ms(mut self, max_drift_ms: u64) -> Self {
        self.max_drift_ms = max_drift_ms;
        self
    }

    /// The last reading issued or observed.
    pub fn last(&self) -> HlcTimestamp {
        self.last
    }

    /// A new reading for a local event, strictly greater than every earlier one.
    pub fn tick(&mut self, wall_ms: u64) -> HlcTimestamp {
        if wall_ms > self.last.physical_ms {
            self.last.physical_ms = wall_ms;
            self.last.logical = 0;
        } else if let Some(l) = self.last.logical.checked_add(1) {
            self.last.logical = l;
        } else {
            // 2^32 events in one millisecond: borrow from the next millisecond
            // rather than repeat a reading.
            self.last.physical_ms = self.last.physical_ms.saturating_add(1);
            self.last.logical = 0;
        }
        self.last.replica = self.replica;
        self.last
    }

    /// Folds in a reading received from another replica, so that the next
    /// local reading is ordered after it. Returns the new local reading.
    pub fn observe(
        &mut self,
        remote: HlcTimestamp,
        wall_ms: u64,
    ) -> Result<HlcTimestamp, HlcError> {
        if remote.physical_ms > wall_ms.saturating_add(self.max_drift_ms) {
            return Err(HlcError::ClockDrift {
                remote_ms: remote.physical_ms,
                ahead_ms: remote.physical_ms - wall_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        let local = self.last;
        let physical = wall_ms.max(local.physical_ms).max(remote.physical_ms);
        let logical = if physical == local.physical_ms && physical == remote.physical_ms {
            local.logical.max(remote.logical).checked_add(1)
        } else if physical == local.physical_ms {
            local.logical.checked_add(1)
        } else if physical == remote.physical_ms {
            remote.logical.checked_add(1)
        } else {
            Some(0)
        };
        let logical = logical.ok_or(HlcError::Overflow)?;
        self.last = HlcTimestamp {
            physical_ms: physical,
            logical,
            replica: self.replica,
        };
        Ok(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u64) -> ReplicaId {
        ReplicaId::from_u64(n)
    }

    #[test]
    fn replica_id_prints_and_parses() {
        let id = r(0xabc);
        assert_eq!(id.to_string(), "0000000000000abc");
        assert_eq!("0000000000000abc".parse::<ReplicaId>().unwrap(), id);
        assert_eq!("abc".parse::<ReplicaId>().unwrap(), id);
        assert!("".parse::<ReplicaId>().is_err());
        assert!("xyz".parse::<ReplicaId>().is_err());
        assert!("+abc".parse::<ReplicaId>().is_err());
        assert!("00000000000000000".parse::<ReplicaId>().is_err());
        assert_ne!(ReplicaId::random(), ReplicaId::random());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"0000000000000abc\"");
        assert_eq!(serde_json::from_str::<ReplicaId>(&json).unwrap(), id);
    }

    #[test]
    fn version_vector_order_and_missing() {
        let a: VersionVector = [(r(1), 4), (r(2), 2)].into_iter().collect();
        let b: VersionVector = [(r(1), 2), (r(2), 2), (r(3), 3)].into_iter().collect();
        assert_eq!(a.causality(&b), Causality::Concurrent);
        assert_eq!(a.partial_cmp(&b), None);
        assert_eq!(a.missing_from(&b), vec![(r(1), 3..=4)]);
        assert_eq!(b.missing_from(&a), vec![(r(3), 1..=3)]);
        let mut m = a.clone();
        m.merge(&b);
        assert!(m.dominates(&a) && m.dominates(&b));
        assert_eq!(a.causality(&m), Causality::Before);
        assert_eq!(m.causality(&a), Causality::After);
        assert_eq!(m.causality(&m.clone()), Causality::Equal);
        assert!(a < m);
        let mut z = VersionVector::new();
        z.set(r(9), 0);
        assert_eq!(z, VersionVector::new());
    }

    #[test]
    fn causal_context_compacts() {
        let mut c = CausalContext::new();
        c.insert(Dot::new(r(1), 3));
        c.insert(Dot::new(r(1), 2));
        assert!(!c.contains(Dot::new(r(1), 1)));
        assert_eq!(c.max_counter(r(1)), 3);
        c.insert(Dot::new(r(1), 1));
        assert_eq!(c.version_vector().get(r(1)), 3);
        assert_eq!(c.cloud().count(), 0);
        let mut d = CausalContext::new();
        d.insert(Dot::new(r(1), 5));
        c.merge(&d);
        assert_eq!(c.cloud().collect::<Vec<_>>(), vec![Dot::new(r(1), 5)]);
        assert_eq!(c.next_dot(r(1)), Dot::new(r(1), 6));
    }

    #[test]
    fn hlc_never_goes_backwards() {
        let mut h = Hlc::new(r(1));
        let t1 = h.tick(1000);
        let t2 = h.tick(500); // wall clock jumped back
        assert!(t2 > t1);
        assert_eq!(t2.physical_ms, 1000);
        let remote = HlcTimestamp {
            physical_ms: 2000,
            logical: 7,
            replica: r(2),
        };
        let t3 = h.observe(remote, 1500).unwrap();
        assert!(t3 > remote);
        assert_eq!((t3.physical_ms, t3.logical), (2000, 8));
        let t4 = h.tick(3000);
        assert_eq!((t4.physical_ms, t4.logical), (3000, 0));
        let far = HlcTimestamp {
            physical_ms: 10_000_000,
            logical: 0,
            replica: r(2),
        };
        assert!(matches!(
            h.observe(far, 3000),
            Err(HlcError::ClockDrift { .. })
        ));
        assert_eq!(h.last(), t4, "a refused reading changes nothing");
    }
}
