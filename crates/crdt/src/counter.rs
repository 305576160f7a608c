//! Grow-only and positive-negative counters.

use serde::{Deserialize, Serialize};

use crate::{Crdt, ReplicaId, Validate};

/// A grow-only counter: one monotone count per replica; the value is their sum.
///
/// Concurrent semantics: increments from different replicas all count;
/// merging takes each replica's highest count, so re-delivery never double-counts.
#[derive(Clone, PartialEq, Eq, Default, Debug, Serialize, Deserialize)]
pub struct GCounter {
    /// Sorted by replica, no zero counts: merging is one linear pass.
    counts: Vec<(ReplicaId, u64)>,
}

impl GCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `by` to `replica`'s count (saturating at `u64::MAX` per replica)
    /// and returns the delta to ship.
    pub fn increment(&mut self, replica: ReplicaId, by: u64) -> Self {
        if by == 0 {
            return Self::new();
        }
        let count = match self.counts.binary_search_by_key(&replica, |(r, _)| *r) {
            Ok(i) => {
                let c = &mut self.counts[i].1;
                *c = c.saturating_add(by);
                *c
            }
            Err(i) => {
                self.counts.insert(i, (replica, by));
                by
            }
        };
        Self {
            counts: vec![(replica, count)],
        }
    }

    /// The sum of all replicas' counts (exact: `u128` cannot overflow here).
    pub fn value(&self) -> u128 {
        self.counts.iter().map(|(_, c)| u128::from(*c)).sum()
    }

    /// `replica`'s own count.
    pub fn count_of(&self, replica: ReplicaId) -> u64 {
        self.counts
            .binary_search_by_key(&replica, |(r, _)| *r)
            .map_or(0, |i| self.counts[i].1)
    }

    /// Number of replicas that have incremented.
    pub fn replicas(&self) -> usize {
        self.counts.len()
    }
}

impl Crdt for GCounter {
    fn merge_owned(&mut self, other: Self) {
        self.merge(&other);
    }

    fn merge(&mut self, other: &Self) {
        // A small delta into a large state: update in place.
        if other.counts.len() <= 4 {
            for &(r, c) in &other.counts {
                match self.counts.binary_search_by_key(&r, |(x, _)| *x) {
                    Ok(i) => self.counts[i].1 = self.counts[i].1.max(c),
                    Err(i) => self.counts.insert(i, (r, c)),
                }
            }
            return;
        }
        let a = &self.counts;
        let b = &other.counts;
        let mut out = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            let (ra, ca) = a[i];
            let (rb, cb) = b[j];
            match ra.cmp(&rb) {
                std::cmp::Ordering::Less => {
                    out.push((ra, ca));
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push((rb, cb));
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    out.push((ra, ca.max(cb)));
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend_from_slice(&a[i..]);
        out.extend_from_slice(&b[j..]);
        self.counts = out;
    }
}

impl Validate for GCounter {
    fn validate(&self) -> Result<(), String> {
        if !self.counts.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err("counter entries are not sorted by unique replica".into());
        }
        match self.counts.iter().find(|(_, c)| *c == 0) {
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
