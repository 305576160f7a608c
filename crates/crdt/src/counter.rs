//! Grow-only and positive-negative counters.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::join::{JoinOps, join_maps};
use crate::{Crdt, ReplicaId, Validate};

/// A grow-only counter: one monotone count per replica; the value is their sum.
///
/// Concurrent semantics: increments from different replicas all count;
/// merging takes each replica's highest count, so re-delivery never double-counts.
#[derive(Clone, PartialEq, Eq, Default, Debug, Serialize, Deserialize)]
pub struct GCounter {
    counts: BTreeMap<ReplicaId, u64>,
}

impl GCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `by` to `replica`'s count (saturating at `u64::MAX` per replica)
    /// and returns the delta to ship.
    pub fn increment(&mut self, replica: ReplicaId, by: u64) -> Self {
        let mut delta = Self::new();
        if by == 0 {
            return delta;
        }
        let c = self.counts.entry(replica).or_insert(0);
        *c = c.saturating_add(by);
        delta.counts.insert(replica, *c);
        delta
    }

    /// The sum of all replicas' counts (exact: `u128` cannot overflow here).
    pub fn value(&self) -> u128 {
        self.counts.values().map(|c| u128::from(*c)).sum()
    }

    /// `replica`'s own count.
    pub fn count_of(&self, replica: ReplicaId) -> u64 {
        self.counts.get(&replica).copied().unwrap_or(0)
    }

    /// Number of replicas that have incremented.
    pub fn replicas(&self) -> usize {
        self.counts.len()
    }
}

impl Crdt for GCounter {
    fn merge_owned(&mut self, other: Self) {
        join_maps(
            &mut self.counts,
            other.counts,
            JoinOps {
                left_may_change: false,
                left: |_: &ReplicaId, v| Some(v),
                right: |_: &ReplicaId, v| Some(v),
                both: |_: &ReplicaId, a: u64, b: u64| Some(a.max(b)),
            },
        );
    }
}

impl Validate for GCounter {
    fn validate(&self) -> Result<(), String> {
        match self.counts.iter().find(|(_, c)| **c == 0) {
            Some((r, _)) => Err(format!("counter holds a zero count for {r} (never stored)")),
            None => Ok(()),
        }
    }
}

/// A counter that goes up and down: two [`GCounter`]s, increments and decrements.
///
/// Concurrent semantics: every increment and decrement from every replica
/// counts exactly once; the value is increments minus decrements.
#[derive(Clone, PartialEq, Eq, Default, Debug, Serialize, Deserialize)]
pub struct PNCounter {
    inc: GCounter,
    dec: GCounter,
}

impl PNCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `by` on behalf of `replica`; returns the delta.
    pub fn increment(&mut self, replica: ReplicaId, by: u64) -> Self {
        Self {
            inc: self.inc.increment(replica, by),
            dec: GCounter::new(),
        }
    }

    /// Subtracts `by` on behalf of `replica`; returns the delta.
    pub fn decrement(&mut self, replica: ReplicaId, by: u64) -> Self {
        Self {
            inc: GCounter::new(),
            dec: self.dec.increment(replica, by),
        }
    }

    /// Adds a signed amount (a decrement when negative); returns the delta.
    pub fn add(&mut self, replica: ReplicaId, by: i64) -> Self {
        if by >= 0 {
            self.increment(replica, by.unsigned_abs())
        } else {
            self.decrement(replica, by.unsigned_abs())
        }
    }

    /// Increments minus decrements (exact).
    pub fn value(&self) -> i128 {
        // Each side is at most 2^64 * 2^64 = 2^128 in theory, but real
        // counters hold far fewer than 2^63 replicas; saturate to stay total.
        let inc = i128::try_from(self.inc.value()).unwrap_or(i128::MAX);
        let dec = i128::try_from(self.dec.value()).unwrap_or(i128::MAX);
        inc.saturating_sub(dec)
    }
}

impl Crdt for PNCounter {
    fn merge_owned(&mut self, other: Self) {
        self.inc.merge_owned(other.inc);
        self.dec.merge_owned(other.dec);
    }
}

impl Validate for PNCounter {
    fn validate(&self) -> Result<(), String> {
        self.inc.validate()?;
        self.dec.validate()
    }
}
