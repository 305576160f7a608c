//! The `crdt` suite: converge's state-based CRDTs against `crdts` 7.3.2.
//!
//! Each workload is written once against a small trait per CRDT kind
//! ([`SetSubject`], [`GCounterSubject`], [`PnCounterSubject`]), implemented
//! for both libraries with their natural, efficient calls; the traits are
//! monomorphised and inlined, so they add nothing to the timed code.

use std::hint::black_box;

use converge_crdt::{Crdt, ORSet, ReplicaId};
use crdts::{CmRDT, CvRDT, Orswot};

use crate::harness::{MS, Record, expect_eq, time_runs};
use crate::{Options, live_heap_bytes};

/// The subjects, in table order.
pub(crate) const SUBJECTS: [&str; 2] = ["converge", "crdts"];

/// Elements in the set workloads.
const N: u64 = 100_000;
/// Replica ids of the two sides of every merge.
const REPLICA_A: u64 = 1;
const REPLICA_B: u64 = 2;

/// An observed-remove set as driven by the workloads.
trait SetSubject: Clone {
    /// The empty set.
    fn empty() -> Self;
    /// Adds `v` on behalf of replica `replica`.
    fn add(&mut self, replica: u64, v: u64);
    /// Removes `v` as observed.
    fn remove(&mut self, v: u64);
    /// Joins `other` into `self`, by value.
    fn merge_from(&mut self, other: Self);
    /// Number of present elements (untimed: may be slow).
    fn count(&self) -> usize;
    /// Whether `v` is present (untimed).
    fn has(&self, v: u64) -> bool;
}

impl SetSubject for ORSet<u64> {
    fn empty() -> Self {
        Self::new()
    }
    #[inline]
    fn add(&mut self, replica: u64, v: u64) {
        // The delta is part of converge's mutator API; it is dropped here.
        drop(Self::add(self, ReplicaId::from_u64(replica), v));
    }
    #[inline]
    fn remove(&mut self, v: u64) {
        drop(Self::remove(self, &v));
    }
    #[inline]
    fn merge_from(&mut self, other: Self) {
        self.merge_owned(other);
    }
    fn count(&self) -> usize {
        self.len()
    }
    fn has(&self, v: u64) -> bool {
        self.contains(&v)
    }
}

impl SetSubject for Orswot<u64, u64> {
    fn empty() -> Self {
        Self::new()
    }
    #[inline]
    fn add(&mut self, replica: u64, v: u64) {
        let op = Self::add(self, v, self.read_ctx().derive_add_ctx(replica));
        self.apply(op);
    }
    #[inline]
    fn remove(&mut self, v: u64) {
        // Remove with the member's own clock (what `contains` observed).
        let op = self.rm(v, self.contains(&v).derive_rm_ctx());
        self.apply(op);
    }
    #[inline]
    fn merge_from(&mut self, other: Self) {
        CvRDT::merge(self, other);
    }
    fn count(&self) -> usize {
        self.read().val.len()
    }
    fn has(&self, v: u64) -> bool {
        self.contains(&v).val
    }
}

/// A grow-only counter as driven by the workloads.
trait GCounterSubject: Clone {
    /// A counter at zero.
    fn zero() -> Self;
    /// Adds `by` to `replica`'s count.
    fn inc(&mut self, replica: u64, by: u64);
    /// Joins `other` into `self`, by value.
    fn merge_from(&mut self, other: Self);
    /// The counter's value (untimed).
    fn total(&self) -> i128;
}

impl GCounterSubject for converge_crdt::GCounter {
    fn zero() -> Self {
        Self::new()
    }
    #[inline]
    fn inc(&mut self, replica: u64, by: u64) {
        drop(self.increment(ReplicaId::from_u64(replica), by));
    }
    #[inline]
    fn merge_from(&mut self, other: Self) {
        self.merge_owned(other);
    }
    fn total(&self) -> i128 {
        i128::try_from(self.value()).unwrap_or(i128::MAX)
    }
}

impl GCounterSubject for crdts::GCounter<u64> {
    fn zero() -> Self {
        Self::new()
    }
    #[inline]
    fn inc(&mut self, replica: u64, by: u64) {
        let op = self.inc_many(replica, by);
        self.apply(op);
    }
    #[inline]
    fn merge_from(&mut self, other: Self) {
        CvRDT::merge(self, other);
    }
    fn total(&self) -> i128 {
        self.read().to_string().parse().unwrap_or(i128::MIN)
    }
}

/// A positive-negative counter as driven by the workloads.
trait PnCounterSubject: Clone {
    /// A counter at zero.
    fn zero() -> Self;
    /// Adds `by` on behalf of `replica`.
    fn inc(&mut self, replica: u64, by: u64);
    /// Subtracts `by` on behalf of `replica`.
    fn dec(&mut self, replica: u64, by: u64);
    /// Joins `other` into `self`, by value.
    fn merge_from(&mut self, other: Self);
    /// The counter's value (untimed).
    fn total(&self) -> i128;
}

impl PnCounterSubject for converge_crdt::PNCounter {
    fn zero() -> Self {
        Self::new()
    }
    #[inline]
    fn inc(&mut self, replica: u64, by: u64) {
        drop(self.increment(ReplicaId::from_u64(replica), by));
    }
    #[inline]
    fn dec(&mut self, replica: u64, by: u64) {
        drop(self.decrement(ReplicaId::from_u64(replica), by));
    }
    #[inline]
    fn merge_from(&mut self, other: Self) {
        self.merge_owned(other);
    }
    fn total(&self) -> i128 {
        self.value()
    }
}

impl PnCounterSubject for crdts::PNCounter<u64> {
    fn zero() -> Self {
        Self::new()
    }
    #[inline]
    fn inc(&mut self, replica: u64, by: u64) {
        let op = self.inc_many(replica, by);
        self.apply(op);
    }
    #[inline]
    fn dec(&mut self, replica: u64, by: u64) {
        let op = self.dec_many(replica, by);
        self.apply(op);
    }
    #[inline]
    fn merge_from(&mut self, other: Self) {
        CvRDT::merge(self, other);
    }
    fn total(&self) -> i128 {
        self.read().to_string().parse().unwrap_or(i128::MIN)
    }
}

/// A set holding `range`, every element added by `replica`.
fn build_set<S: SetSubject>(replica: u64, range: std::ops::Range<u64>) -> S {
    let mut s = S::empty();
    for v in range {
        s.add(replica, v);
    }
    s
}

/// Checks the element count and a few members of a merged set.
fn check_set<S: SetSubject>(
    s: &S,
    len: usize,
    present: &[u64],
    absent: &[u64],
) -> Result<(), String> {
    expect_eq("element count", s.count(), len)?;
    for &v in present {
        expect_eq(&format!("contains({v})"), s.has(v), true)?;
    }
    for &v in absent {
        expect_eq(&format!("contains({v})"), s.has(v), false)?;
    }
    Ok(())
}

/// Times merging `b` into `a` (both cloned fresh for every run).
fn time_merge<S: SetSubject>(
    runs: usize,
    a: &S,
    b: &S,
    check: impl FnMut(&S) -> Result<(), String>,
) -> Result<Vec<f64>, String> {
    time_runs(
        runs,
        || (a.clone(), b.clone()),
        |(mut a, b)| {
            a.merge_from(b);
            a
        },
        check,
    )
}

/// The set workloads for one subject.
fn set_cases<S: SetSubject>(subject: &str, opts: &Options, out: &mut Vec<Record>) {
    let (n, runs) = (N as usize, opts.runs);
    const CASES: [&str; 4] = [
        "orset-merge-100k",
        "orset-merge-same-100k",
        "orset-remove-10k-merge",
        "orset-add-100k",
    ];
    if !CASES.iter().any(|c| opts.wants(c)) {
        return;
    }
    let a: S = build_set(REPLICA_A, 0..N);

    // 1. Disjoint halves: A holds 0..N, B holds N..2N.
    let case = "orset-merge-100k";
    if opts.wants(case) {
        let b: S = build_set(REPLICA_B, N..2 * N);
        let outcome = time_merge(runs, &a, &b, |m| {
            check_set(m, 2 * n, &[0, N - 1, N, 2 * N - 1], &[2 * N])
        });
        out.push(Record::new(case, subject, MS, outcome));
    }

    // 2. The same elements, added independently on both sides.
    let case = "orset-merge-same-100k";
    if opts.wants(case) {
        let b: S = build_set(REPLICA_B, 0..N);
        let outcome = time_merge(runs, &a, &b, |m| check_set(m, n, &[0, N - 1], &[N]));
        out.push(Record::new(case, subject, MS, outcome));
    }

    // 3. B is a copy of A (by merge); A then removes every tenth element;
    //    time merging A into B.
    let case = "orset-remove-10k-merge";
    if opts.wants(case) {
        let mut b = S::empty();
        b.merge_from(a.clone());
        let mut a_removed = a.clone();
        for v in (0..N).step_by(10) {
            a_removed.remove(v);
        }
        let outcome = time_merge(runs, &b, &a_removed, |m| {
            check_set(m, n - n / 10, &[1, 9, N - 1], &[0, 10, N - 10])
        });
        out.push(Record::new(case, subject, MS, outcome));
    }
    drop(a);

    // 4. Local adds on one replica.
    let case = "orset-add-100k";
    if opts.wants(case) {
        let outcome = time_runs(
            runs,
            || (),
            |()| build_set::<S>(REPLICA_A, 0..N),
            |s| check_set(s, n, &[0, N - 1], &[N]),
        );
        out.push(Record::new(case, subject, MS, outcome));
    }
}

/// Per-replica increments of side A (`0..n`) and side B (`n/2..3n/2`):
/// deterministic, different on the overlap so the merge must take the max.
fn counter_sides(n: u64) -> [Vec<(u64, u64, u64)>; 2] {
    let a = (0..n).map(|r| (r, r % 7 + 1, r % 3 + 1)).collect();
    let b = (n / 2..n + n / 2)
        .map(|r| (r, r % 11 + 1, r % 5 + 1))
        .collect();
    [a, b]
}

/// The value a merge of both sides must have: per replica the max of each
/// side's increments (and decrements), summed.
fn expected_counter(n: u64, with_decrements: bool) -> i128 {
    let [a, b] = counter_sides(n);
    let mut inc = std::collections::BTreeMap::<u64, (u64, u64)>::new();
    for (r, i, d) in a.into_iter().chain(b) {
        let e = inc.entry(r).or_insert((0, 0));
        *e = (e.0.max(i), e.1.max(d));
    }
    inc.values()
        .map(|&(i, d)| i128::from(i) - if with_decrements { i128::from(d) } else { 0 })
        .sum()
}

fn gcounter_case<C: GCounterSubject>(
    case: &str,
    subject: &str,
    n: u64,
    runs: usize,
    out: &mut Vec<Record>,
) {
    let sides = counter_sides(n).map(|side| {
        let mut c = C::zero();
        for (r, i, _) in side {
            c.inc(r, i);
        }
        c
    });
    let want = expected_counter(n, false);
    let outcome = time_runs(
        runs,
        || sides.clone(),
        |[mut a, b]| {
            a.merge_from(b);
            a
        },
        |m| expect_eq("value", m.total(), want),
    );
    out.push(Record::new(case, subject, MS, outcome));
}

fn pncounter_case<C: PnCounterSubject>(
    case: &str,
    subject: &str,
    n: u64,
    runs: usize,
    out: &mut Vec<Record>,
) {
    let sides = counter_sides(n).map(|side| {
        let mut c = C::zero();
        for (r, i, d) in side {
            c.inc(r, i);
            c.dec(r, d);
        }
        c
    });
    let want = expected_counter(n, true);
    let outcome = time_runs(
        runs,
        || sides.clone(),
        |[mut a, b]| {
            a.merge_from(b);
            a
        },
        |m| expect_eq("value", m.total(), want),
    );
    out.push(Record::new(case, subject, MS, outcome));
}

/// Counter workloads: small cases get more runs (they take microseconds).
fn counter_cases(opts: &Options, out: &mut Vec<Record>) {
    use converge_crdt::{GCounter, PNCounter};
    type PeerG = crdts::GCounter<u64>;
    type PeerPn = crdts::PNCounter<u64>;
    for (size, n) in [("1000", 1_000), ("100k", N)] {
        let runs = if n < N { opts.runs.max(51) } else { opts.runs };
        let case = format!("gcounter-merge-{size}");
        if opts.wants(&case) {
            gcounter_case::<GCounter>(&case, SUBJECTS[0], n, runs, out);
            gcounter_case::<PeerG>(&case, SUBJECTS[1], n, runs, out);
        }
        let case = format!("pncounter-merge-{size}");
        if opts.wants(&case) {
            pncounter_case::<PNCounter>(&case, SUBJECTS[0], n, runs, out);
            pncounter_case::<PeerPn>(&case, SUBJECTS[1], n, runs, out);
        }
    }
}

/// Live heap bytes per element of a set built by `build`, holding `len`
/// elements. Runs `reps` times and returns every sample.
fn bytes_per_element<S>(reps: usize, len: usize, mut build: impl FnMut() -> S) -> Vec<f64> {
    (0..reps)
        .map(|_| {
            let before = live_heap_bytes();
            let s = black_box(build());
            let after = live_heap_bytes();
            drop(s);
            (after - before) as f64 / len as f64
        })
        .collect()
}

/// The memory pass: live heap bytes per element, measured under the counting
/// allocator. Two shapes: one replica's 100k adds, and the merge of two
/// replicas that each added the same 100k elements (two dots per element).
pub(crate) fn memory_records() -> Vec<Record> {
    fn for_subject<S: SetSubject>(subject: &str, out: &mut Vec<Record>) {
        let n = N as usize;
        let single = bytes_per_element(3, n, || build_set::<S>(REPLICA_A, 0..N));
        out.push(Record::new(
            "orset-100k",
            subject,
            "bytes_per_element",
            Ok(single),
        ));
        let b: S = build_set(REPLICA_B, 0..N);
        let two = bytes_per_element(3, n, || {
            let mut a: S = build_set(REPLICA_A, 0..N);
            a.merge_from(b.clone());
            a
        });
        out.push(Record::new(
            "orset-100k-two-replicas",
            subject,
            "bytes_per_element",
            Ok(two),
        ));
    }
    let mut out = Vec::new();
    for_subject::<ORSet<u64>>(SUBJECTS[0], &mut out);
    for_subject::<Orswot<u64, u64>>(SUBJECTS[1], &mut out);
    out
}

/// Runs the timed workloads; memory figures come from `memory`, which the
/// caller gets from a separate untimed pass.
pub(crate) fn run(opts: &Options, memory: Vec<Record>) -> Vec<Record> {
    let mut out = Vec::new();
    set_cases::<ORSet<u64>>(SUBJECTS[0], opts, &mut out);
    set_cases::<Orswot<u64, u64>>(SUBJECTS[1], opts, &mut out);
    counter_cases(opts, &mut out);
    out.extend(memory);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_counter_values() {
        // n = 2: A = {0: (1,1), 1: (2,2)}, B = {1: (2,2), 2: (3,3)}.
        assert_eq!(expected_counter(2, false), 1 + 2 + 3);
        assert_eq!(expected_counter(2, true), 0);
    }

    fn small_set_roundtrip<S: SetSubject>() {
        let a: S = build_set(REPLICA_A, 0..10);
        let mut b: S = build_set(REPLICA_B, 5..15);
        b.merge_from(a.clone());
        check_set(&b, 15, &[0, 14], &[15]).unwrap();
        let mut a2 = a.clone();
        a2.remove(3);
        let mut c = S::empty();
        c.merge_from(a);
        c.merge_from(a2);
        check_set(&c, 9, &[0, 9], &[3]).unwrap();
    }

    #[test]
    fn both_subjects_drive_sets_correctly() {
        small_set_roundtrip::<ORSet<u64>>();
        small_set_roundtrip::<Orswot<u64, u64>>();
    }
}
