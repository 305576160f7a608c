//! Who wrote each operation: local versions mapped to (replica, counter).

use std::collections::BTreeMap;
use std::ops::Range;

use converge_crdt::{Dot, ReplicaId, VersionVector};

use crate::graph::Lv;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    lvs: Range<Lv>,
    replica: ReplicaId,
    /// Counter of `lvs.start` (counters start at 1).
    counter: u64,
}

/// The two-way map between local versions and operation ids ([`Dot`]s).
///
/// Each replica's operations carry counters 1, 2, 3…, so what a log holds is
/// summed up by a [`VersionVector`] of operation counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agents {
    by_lv: Vec<Run>,
    /// Per replica: counter of a run's start → the run's index in `by_lv`
    /// (so extending the last run touches only `by_lv`).
    by_replica: BTreeMap<ReplicaId, BTreeMap<u64, usize>>,
    version: VersionVector,
}

impl Agents {
    /// Records that `lvs` are `replica`'s operations `counter..`.
    pub(crate) fn push(&mut self, lvs: Range<Lv>, replica: ReplicaId, counter: u64) {
        let len = (lvs.end - lvs.start) as u64;
        if len == 0 {
            return;
        }
        self.version.set(replica, counter + len - 1);
        if let Some(last) = self.by_lv.last_mut()
            && last.replica == replica
            && last.lvs.end == lvs.start
            && last.counter + (last.lvs.end - last.lvs.start) as u64 == counter
        {
            last.lvs.end = lvs.end;
            return;
        }
        self.by_replica
            .entry(replica)
            .or_default()
            .insert(counter, self.by_lv.len());
        self.by_lv.push(Run {
            lvs,
            replica,
            counter,
        });
    }

    /// Gives the next `n` LVs to `replica`'s next operations if the last
    /// run is `replica`'s, by extending that run: the fast path of local
    /// typing, which skips the per-replica index. Returns whether it did.
    ///
    /// The last run in LV order is its replica's latest (a replica's
    /// operations arrive in counter order), so the new counters follow it.
    #[inline]
    pub(crate) fn extend_last(&mut self, replica: ReplicaId, n: usize) -> bool {
        match self.by_lv.last_mut() {
            Some(last) if last.replica == replica && n > 0 => {
                last.lvs.end += n;
                let top = last.counter + (last.lvs.end - last.lvs.start) as u64 - 1;
                self.version.set(replica, top);
                true
            }
            _ => false,
        }
    }

    /// Forgets every operation from `lv` on.
    pub(crate) fn truncate(&mut self, lv: Lv) {
        self.by_lv.retain(|r| r.lvs.start < lv);
        if let Some(last) = self.by_lv.last_mut() {
            last.lvs.end = last.lvs.end.min(lv);
        }
        let runs = std::mem::take(&mut self.by_lv);
        *self = Self::default();
        for r in runs {
            self.push(r.lvs, r.replica, r.counter);
        }
    }

    /// The id of the operation at `lv`.
    pub fn dot(&self, lv: Lv) -> Dot {
        let i = self.by_lv.partition_point(|r| r.lvs.end <= lv);
        let run = &self.by_lv[i];
        Dot::new(run.replica, run.counter + (lv - run.lvs.start) as u64)
    }

    /// The ids of the operations at `lvs` (a version, as exchanged).
    pub(crate) fn dots(&self, lvs: &[Lv]) -> Vec<Dot> {
        lvs.iter().map(|lv| self.dot(*lv)).collect()
    }

    /// The LV of operation `dot`, if this log holds it.
    pub fn lv(&self, dot: Dot) -> Option<Lv> {
        let runs = self.by_replica.get(&dot.replica)?;
        let (_, &idx) = runs.range(..=dot.counter).next_back()?;
        let run = &self.by_lv[idx];
        let offset = dot.counter - run.counter;
        (offset < (run.lvs.end - run.lvs.start) as u64).then(|| run.lvs.start + offset as usize)
    }

    /// The operations held, per replica.
    pub fn version(&self) -> &VersionVector {
        &self.version
    }

    /// Runs of LVs with their replica and first counter, in LV order.
    pub(crate) fn runs(&self) -> impl Iterator<Item = (Range<Lv>, ReplicaId, u64)> + '_ {
        self.by_lv
            .iter()
            .map(|r| (r.lvs.clone(), r.replica, r.counter))
    }

    /// `replica`'s operations as LV runs, in counter order.
    pub(crate) fn replica_runs(&self, replica: ReplicaId) -> impl Iterator<Item = Range<Lv>> + '_ {
        self.by_replica
            .get(&replica)
            .into_iter()
            .flat_map(|runs| runs.values().map(|idx| self.by_lv[*idx].lvs.clone()))
    }

    /// The LV runs holding every operation `version` lacks, in LV order
    /// (a causal order: what a replica at `version` needs, ready to ship).
    pub(crate) fn missing_from(&self, version: &VersionVector) -> Vec<Range<Lv>> {
        let mut spans = Vec::new();
        for (replica, _) in self.version.iter() {
            spans.extend(self.lvs_after(replica, version.get(replica)));
        }
        spans.sort_by_key(|s| s.start);
        spans
    }

    /// The LV runs holding `replica`'s operations with counters above `after`.
    fn lvs_after(&self, replica: ReplicaId, after: u64) -> Vec<Range<Lv>> {
        let Some(runs) = self.by_replica.get(&replica) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for &idx in runs.values() {
            let run = &self.by_lv[idx];
            let (start, lv) = (run.counter, run.lvs.start);
            let len = (run.lvs.end - run.lvs.start) as u64;
            let end = start + len;
            if end <= after + 1 {
                continue;
            }
            let skip = (after + 1).saturating_sub(start);
            out.push(lv + skip as usize..lv + len as usize);
        }
        out
    }
}
