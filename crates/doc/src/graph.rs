//! The causal graph: which operations each operation had seen.
//!
//! Every operation a document holds gets a *local version* ([`Lv`]): its
//! index in this replica's operation log, assigned on arrival. Arrival order
//! respects causality (an operation is added only after its parents), so LV
//! order is a topological order of the graph. Runs of operations where each
//! one's only parent is the previous are stored as one entry, so a typing
//! session of thousands of keystrokes costs one entry.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;

use converge_crdt::Dot;

use smallvec::{SmallVec, smallvec};

/// A local version: an operation's index in this replica's log.
pub type Lv = usize;

/// A version: the set of operations with no seen successor, sorted
/// ascending. The empty frontier is the empty document.
pub type Frontier = SmallVec<[Lv; 2]>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    span: Range<Lv>,
    /// Parents of `span.start`; each later LV's parent is the one before it.
    parents: Frontier,
}

/// The causal graph of a log, in run-length form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Graph {
    entries: Vec<Entry>,
}

/// Which side(s) of a comparison an operation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Side {
    /// Only in the first version.
    A,
    /// Only in the second version.
    B,
    /// In both.
    Shared,
}

impl Graph {
    /// The LV the next operation will get.
    pub fn next_lv(&self) -> Lv {
        self.entries.last().map_or(0, |e| e.span.end)
    }

    /// Appends the operations `span` (which must start at [`Self::next_lv`]),
    /// the first of which had seen exactly `parents`.
    pub(crate) fn push(&mut self, parents: &[Lv], span: Range<Lv>) {
        debug_assert_eq!(span.start, self.next_lv());
        debug_assert!(parents.iter().all(|p| *p < span.start));
        if span.is_empty() {
            return;
        }
        if let Some(last) = self.entries.last_mut()
            && parents.len() == 1
            && parents[0] + 1 == span.start
            && last.span.end == span.start
        {
            last.span.end = span.end;
            return;
        }
        self.entries.push(Entry {
            span,
            parents: parents.iter().copied().collect(),
        });
    }

    /// Appends the `n` operations after the last one, each made on the one
    /// before it: the fast path of local typing, whose parent is the last
    /// operation (the caller checks that it is the whole version, so the
    /// graph is not empty).
    pub(crate) fn extend_last(&mut self, n: usize) {
        debug_assert!(!self.entries.is_empty());
        if let Some(last) = self.entries.last_mut() {
            last.span.end += n;
        }
    }

    /// Whether the history is one chain: every operation but the first was
    /// made on exactly the one before it (the empty history is one too).
    pub(crate) fn is_chain(&self) -> bool {
        self.entries.len() <= 1
    }

    /// Entries in LV order: each run and the parents of its first op.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (Range<Lv>, &[Lv])> + '_ {
        self.entries
            .iter()
            .map(|e| (e.span.clone(), e.parents.as_slice()))
    }

    /// Checks that a replica's ops form a causal chain: the op with counter
    /// `counter` (made on `parents`) must have seen the replica's previous
    /// op, `prev` (the LV of `(replica, counter - 1)`, if `counter > 1`).
    /// Replicas that behave always satisfy it; canonical order relies on it.
    /// Visits at most `budget` graph runs (deducted from it): `None` once
    /// the budget runs out.
    ///
    /// The check walks back from `parents` to `prev`, through every run
    /// between them. For one replica those stretches do not overlap, but
    /// many replicas taking turns make every check walk past every other
    /// replica's ops: a whole-history check costs replicas × runs, which a
    /// hostile file can make quadratic. Loading bounds it with this budget.
    pub(crate) fn extends_own_chain_within(
        &self,
        parents: &[Lv],
        prev: Option<Lv>,
        budget: &mut u64,
    ) -> Option<bool> {
        let Some(p) = prev else { return Some(true) };
        if parents.contains(&p) {
            return Some(true);
        }
        if parents.iter().all(|f| *f < p) {
            return Some(false);
        }
        let mut only_target = Vec::new();
        self.walk(
            &[p],
            parents,
            |span, side| {
                if side == Side::A {
                    push_desc(&mut only_target, span);
                }
            },
            false,
            budget,
        )?;
        Some(only_target.is_empty())
    }

    /// The Lamport timestamp of every op: one more than its parents' greatest.
    pub(crate) fn lamports(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.next_lv());
        for e in &self.entries {
            let base = e.parents.iter().map(|p| out[*p]).max().unwrap_or(0);
            for k in 0..(e.span.end - e.span.start) as u64 {
                out.push(base + 1 + k);
            }
        }
        out
    }

    /// The canonical order of the ops: a topological order that depends
    /// only on which ops are held (their ids and parents), not on the order
    /// they arrived in, so replicas holding the same ops encode them
    /// identically. Each replica's ops are cut into maximal chains (each op
    /// made right after the previous one of its replica); chains are emitted
    /// whole, the ready one with the least (Lamport timestamp, id) first,
    /// which keeps runs long and encodings small. `None` if LV order already
    /// is canonical.
    pub(crate) fn canonical_order(&self, agents: &crate::agents::Agents) -> Option<Vec<Lv>> {
        let n = self.next_lv();
        if n == 0 {
            return None;
        }
        let lamports = self.lamports();
        // Chains: LV ranges, cut where an op's parents are not exactly the
        // previous op of its replica.
        let mut chains: Vec<Vec<Range<Lv>>> = Vec::new();
        for (replica, _) in agents.version().iter() {
            let mut prev: Option<Lv> = None;
            for run in agents.replica_runs(replica) {
                let mut lv = run.start;
                while lv < run.end {
                    let end = self.chain_end(lv).min(run.end);
                    let continues = prev.is_some_and(|p| self.parents_of(lv).as_slice() == [p]);
                    match chains.last_mut() {
                        Some(chain) if continues => chain.push(lv..end),
                        _ => chains.push(std::iter::once(lv..end).collect()),
                    }
                    prev = Some(end - 1);
                    lv = end;
                }
            }
        }
        // Which chain holds each LV.
        let mut owner: Vec<(Lv, Lv, usize)> = chains
            .iter()
            .enumerate()
            .flat_map(|(i, c)| c.iter().map(move |r| (r.start, r.end, i)))
            .collect();
        owner.sort_unstable();
        let chain_of = |lv: Lv| {
            let i = owner.partition_point(|(_, end, _)| *end <= lv);
            owner[i].2
        };
        let mut waiting = vec![0usize; chains.len()];
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); chains.len()];
        for (i, chain) in chains.iter().enumerate() {
            let mut deps: Vec<usize> = self
                .parents_of(chain[0].start)
                .iter()
                .map(|p| chain_of(*p))
                .collect();
            deps.sort_unstable();
            deps.dedup();
            waiting[i] = deps.len();
            for d in deps {
                children[d].push(i);
            }
        }
        let key = |i: usize| {
            let first = chains[i][0].start;
            Reverse((lamports[first], agents.dot(first)))
        };
        let mut ready: BinaryHeap<(Reverse<(u64, Dot)>, usize)> = (0..chains.len())
            .filter(|i| waiting[*i] == 0)
            .map(|i| (key(i), i))
            .collect();
        let mut order = Vec::with_capacity(n);
        while let Some((_, i)) = ready.pop() {
            for r in &chains[i] {
                order.extend(r.clone());
            }
            for &c in &children[i] {
                waiting[c] -= 1;
                if waiting[c] == 0 {
                    ready.push((key(c), c));
                }
            }
        }
        debug_assert_eq!(order.len(), n, "every op lies on exactly one chain");
        if order.iter().enumerate().all(|(i, lv)| i == *lv) {
            None
        } else {
            Some(order)
        }
    }

    /// Forgets every operation from `lv` on.
    pub(crate) fn truncate(&mut self, lv: Lv) {
        self.entries.retain(|e| e.span.start < lv);
        if let Some(last) = self.entries.last_mut() {
            last.span.end = last.span.end.min(lv);
        }
    }

    fn entry(&self, lv: Lv) -> &Entry {
        let i = self.entries.partition_point(|e| e.span.end <= lv);
        &self.entries[i]
    }

    /// The end of the run holding `lv`: every op in `lv + 1..end` has the
    /// op before it as its only parent.
    pub(crate) fn chain_end(&self, lv: Lv) -> Lv {
        self.entry(lv).span.end
    }

    /// The operations `lv` had seen directly.
    pub fn parents_of(&self, lv: Lv) -> Frontier {
        let e = self.entry(lv);
        if lv == e.span.start {
            e.parents.clone()
        } else {
            smallvec![lv - 1]
        }
    }

    /// The frontier after adding the run `span` whose first op had `parents`
    /// to a version `frontier`.
    pub(crate) fn advance_frontier(frontier: &mut Frontier, parents: &[Lv], span: &Range<Lv>) {
        if span.is_empty() {
            return;
        }
        if frontier.as_slice() == parents {
            // Made on exactly this version (the common case).
            frontier.clear();
            frontier.push(span.end - 1);
            return;
        }
        // One binary search per parent, not a scan of the frontier per
        // entry: a history of many concurrent heads (tens of thousands of
        // roots, say) must not make loading or receiving quadratic.
        for p in parents {
            if let Ok(i) = frontier.binary_search(p) {
                frontier.remove(i);
            }
        }
        let last = span.end - 1;
        let i = frontier.partition_point(|f| *f < last);
        frontier.insert(i, last);
    }

    /// Whether version `frontier` includes operation `lv`.
    pub fn contains(&self, frontier: &[Lv], lv: Lv) -> bool {
        if frontier.contains(&lv) {
            return true;
        }
        if frontier.iter().all(|f| *f < lv) {
            return false;
        }
        let (only_target, _) = self.diff(&[lv], frontier);
        only_target.is_empty()
    }

    /// The operations in `a` but not `b`, and in `b` but not `a`, as LV
    /// ranges in descending order.
    pub fn diff(&self, a: &[Lv], b: &[Lv]) -> (Vec<Range<Lv>>, Vec<Range<Lv>>) {
        let mut only_a = Vec::new();
        let mut only_b = Vec::new();
        if a == b {
            return (only_a, only_b);
        }
        // An unlimited budget never runs out.
        let mut unlimited = u64::MAX;
        self.walk(
            a,
            b,
            |span, side| match side {
                Side::A => push_desc(&mut only_a, span),
                Side::B => push_desc(&mut only_b, span),
                Side::Shared => {}
            },
            false,
            &mut unlimited,
        );
        (only_a, only_b)
    }

    /// Finds where `a` and `b` diverged: returns the newest version both
    /// contain from which every operation in either descends (the *common
    /// ancestor*), and calls `visit` with every run after it, newest first,
    /// tagged with the side(s) it is on.
    pub(crate) fn find_conflicting(
        &self,
        a: &[Lv],
        b: &[Lv],
        visit: impl FnMut(Range<Lv>, Side),
    ) -> Frontier {
        // An unlimited budget never runs out.
        let mut unlimited = u64::MAX;
        self.walk(a, b, visit, true, &mut unlimited)
            .unwrap_or_default()
    }

    /// The shared walk behind [`Self::diff`] and [`Self::find_conflicting`]:
    /// a max-heap of (LV, side) walked downwards, run by run.
    ///
    /// With `to_common` false it stops once only shared operations remain;
    /// with it true it goes on until a single shared point remains, and
    /// returns it. Each run visited costs one from `budget`; `None` if it
    /// runs out first.
    fn walk(
        &self,
        a: &[Lv],
        b: &[Lv],
        mut visit: impl FnMut(Range<Lv>, Side),
        to_common: bool,
        budget: &mut u64,
    ) -> Option<Frontier> {
        let mut heap: BinaryHeap<(Lv, Reverse<Side>)> = BinaryHeap::new();
        // Number of heap items that are not Shared.
        let mut unshared = 0usize;
        // Whether some path already ended at the root: then no single
        // operation is a common ancestor of everything, and the root is.
        let mut reached_root = false;
        for &lv in a {
            heap.push((lv, Reverse(Side::A)));
            unshared += 1;
        }
        for &lv in b {
            heap.push((lv, Reverse(Side::B)));
            unshared += 1;
        }
        while let Some((lv, Reverse(mut side))) = heap.pop() {
            *budget = budget.checked_sub(1)?;
            if side != Side::Shared {
                unshared -= 1;
            }
            // Merge every heap item for the same LV.
            while let Some(&(next, Reverse(s))) = heap.peek() {
                if next != lv {
                    break;
                }
                heap.pop();
                if s != Side::Shared {
                    unshared -= 1;
                }
                if s != side {
                    side = Side::Shared;
                }
            }
            if side == Side::Shared && unshared == 0 {
                if !to_common {
                    return Some(Frontier::new()); // everything left is shared
                }
                if heap.is_empty() && !reached_root {
                    return Some(smallvec![lv]); // every path passes through `lv`
                }
            }
            let e = self.entry(lv);
            // Walk down this run until the next heap item (if it lies within).
            let lower = match heap.peek() {
                Some(&(next, _)) if next >= e.span.start => next + 1,
                _ => e.span.start,
            };
            visit(lower..lv + 1, side);
            let push = |heap: &mut BinaryHeap<_>, unshared: &mut usize, lv: Lv| {
                heap.push((lv, Reverse(side)));
                if side != Side::Shared {
                    *unshared += 1;
                }
            };
            if lower > e.span.start {
                push(&mut heap, &mut unshared, lower - 1);
            } else {
                reached_root |= e.parents.is_empty();
                for &p in &e.parents {
                    push(&mut heap, &mut unshared, p);
                }
            }
            if !to_common && unshared == 0 {
                return Some(Frontier::new());
            }
        }
        Some(Frontier::new())
    }
}

/// Appends `span` to a list kept in descending order, merging neighbours.
fn push_desc(list: &mut Vec<Range<Lv>>, span: Range<Lv>) {
    if let Some(last) = list.last_mut()
        && last.start == span.end
    {
        last.start = span.start;
        return;
    }
    list.push(span);
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    /// 0..3 typed by A; 3..5 by B concurrently after 1; 5 merges both.
    fn sample() -> Graph {
        let mut g = Graph::default();
        g.push(&[], 0..3);
        g.push(&[1], 3..5);
        g.push(&[2, 4], 5..6);
        g
    }

    #[test]
    fn diff_finds_concurrent_runs() {
        let g = sample();
        assert_eq!(g.diff(&[2], &[4]), (vec![2..3], vec![3..5]));
        assert_eq!(g.diff(&[5], &[4]), (vec![5..6, 2..3], vec![]));
        assert_eq!(g.diff(&[], &[1]), (vec![], vec![0..2]));
        assert!(g.contains(&[5], 3));
        assert!(!g.contains(&[2], 3));
        assert!(g.contains(&[4], 0));
        assert_eq!(g.parents_of(3).as_slice(), &[1]);
        assert_eq!(g.parents_of(4).as_slice(), &[3]);
        assert_eq!(g.parents_of(5).as_slice(), &[2, 4]);
    }

    #[test]
    fn common_ancestor() {
        let g = sample();
        let mut seen = Vec::new();
        let common = g.find_conflicting(&[2], &[4], |r, s| seen.push((r, s)));
        assert_eq!(common.as_slice(), &[1]);
        assert_eq!(seen, vec![(3..5, Side::B), (2..3, Side::A)]);
        let common = g.find_conflicting(&[], &[4], |_, _| {});
        assert!(common.is_empty());
        // Two runs from the root: no operation is a common ancestor.
        let mut g = Graph::default();
        g.push(&[], 0..1);
        g.push(&[], 1..2);
        let mut seen = Vec::new();
        let common = g.find_conflicting(&[0], &[0, 1], |r, s| seen.push((r, s)));
        assert!(common.is_empty());
        assert_eq!(seen, vec![(1..2, Side::B), (0..1, Side::Shared)]);
    }

    #[test]
    fn runs_are_merged() {
        let mut g = Graph::default();
        g.push(&[], 0..1);
        g.push(&[0], 1..2);
        g.push(&[1], 2..10);
        assert_eq!(g.entries.len(), 1);
    }
}
