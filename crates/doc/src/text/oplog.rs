//! The operation log of one text: every insert and delete ever made, by
//! position in the version its author saw, in run-length form.

use std::ops::Range;

use converge_crdt::{Dot, ReplicaId, VersionVector};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::agents::Agents;
use crate::error::DocError;
use crate::graph::{Frontier, Graph, Lv};

/// Whether an operation inserts or deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    /// Inserts one character.
    Insert,
    /// Deletes one character.
    Delete,
}

/// A run of operations of one kind at adjacent positions with consecutive LVs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpRun {
    pub(crate) lvs: Range<Lv>,
    pub(crate) kind: OpKind,
    /// Inserts: where the first character went; the k-th goes at `pos + k`.
    /// Deletes: where the first deletion was; the k-th is at `pos` when
    /// `fwd` (the delete key) or `pos - k` when not (backspace).
    pub(crate) pos: usize,
    pub(crate) fwd: bool,
    /// Inserts: the byte range of the run's text in `OpLog::text`.
    pub(crate) content: Range<usize>,
    /// Whether the content is ASCII (byte offsets equal char offsets).
    pub(crate) ascii: bool,
}

impl OpRun {
    pub(crate) fn len(&self) -> usize {
        self.lvs.end - self.lvs.start
    }

    /// Position of the op `k` steps into the run.
    pub(crate) fn pos_at(&self, k: usize) -> usize {
        match (self.kind, self.fwd) {
            (OpKind::Insert, _) => self.pos + k,
            (OpKind::Delete, true) => self.pos,
            (OpKind::Delete, false) => self.pos - k,
        }
    }
}

/// One operation, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Op {
    pub(crate) kind: OpKind,
    pub(crate) pos: usize,
    pub(crate) ch: Option<char>,
}

/// Every operation on one text, its causal graph and its authors.
#[derive(Debug, Clone, Default)]
pub struct OpLog {
    pub(crate) graph: Graph,
    pub(crate) agents: Agents,
    pub(crate) runs: Vec<OpRun>,
    pub(crate) text: String,
    /// The version holding every operation.
    pub(crate) frontier: Frontier,
}

impl OpLog {
    /// Number of operations held.
    pub fn len(&self) -> usize {
        self.graph.next_lv()
    }

    /// Whether no operation is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Operation counters held, per replica.
    pub fn version(&self) -> &VersionVector {
        self.agents.version()
    }

    /// Appends `replica`'s next operations, made on the log's whole
    /// version (local edits): inserting `text` at `pos`, or deleting `len`
    /// characters from `pos`.
    #[inline]
    pub(crate) fn push_local(
        &mut self,
        replica: ReplicaId,
        kind: OpKind,
        pos: usize,
        len: usize,
        text: &str,
    ) -> Range<Lv> {
        let start = self.graph.next_lv();
        let lvs = start..start + len;
        // Fast path: the last op is the whole version and `replica`'s, so
        // the new ops continue its graph entry and its author run.
        if let [last] = self.frontier.as_mut_slice()
            && *last + 1 == start
            && self.agents.extend_last(replica, len)
        {
            self.graph.extend_last(len);
            *last = lvs.end - 1;
        } else {
            let counter = self.agents.version().get(replica) + 1;
            self.graph.push(&self.frontier, lvs.clone());
            self.agents.push(lvs.clone(), replica, counter);
            // Made on the whole version: the new op alone is the frontier.
            self.frontier.clear();
            self.frontier.push(lvs.end - 1);
        }
        self.push_ops(lvs.clone(), kind, pos, true, text);
        lvs
    }

    #[allow(clippy::too_many_arguments)]
    fn push_run(
        &mut self,
        replica: ReplicaId,
        counter: u64,
        parents: &[Lv],
        kind: OpKind,
        pos: usize,
        len: usize,
        fwd: bool,
        text: &str,
    ) -> Range<Lv> {
        let start = self.graph.next_lv();
        let lvs = start..start + len;
        self.graph.push(parents, lvs.clone());
        self.agents.push(lvs.clone(), replica, counter);
        Graph::advance_frontier(&mut self.frontier, parents, &lvs);
        self.push_ops(lvs.clone(), kind, pos, fwd || len == 1, text);
        lvs
    }

    #[inline]
    fn push_ops(&mut self, lvs: Range<Lv>, kind: OpKind, pos: usize, fwd: bool, text: &str) {
        let len = lvs.end - lvs.start;
        if let Some(last) = self.runs.last_mut()
            && last.lvs.end == lvs.start
            && last.kind == kind
        {
            match kind {
                OpKind::Insert if pos == last.pos + last.len() => {
                    last.lvs.end = lvs.end;
                    last.ascii &= push_text(&mut self.text, text);
                    last.content.end = self.text.len();
                    return;
                }
                OpKind::Delete if fwd && pos == last.pos && (last.fwd || last.len() == 1) => {
                    last.fwd = true;
                    last.lvs.end = lvs.end;
                    return;
                }
                OpKind::Delete
                    if len == 1
                        && (!last.fwd || last.len() == 1)
                        && pos + last.len() == last.pos =>
                {
                    last.fwd = false;
                    last.lvs.end = lvs.end;
                    return;
                }
                _ => {}
            }
        }
        let start = self.text.len();
        // Deletes carry no text: their (empty) content is ASCII.
        let ascii = kind != OpKind::Insert || push_text(&mut self.text, text);
        self.runs.push(OpRun {
            lvs,
            kind,
            pos,
            fwd,
            content: start..self.text.len(),
            ascii,
        });
    }

    /// Appends a run read from an encoding; `content` indexes the text,
    /// which becomes the log's text once every run is in.
    pub(crate) fn push_decoded(
        &mut self,
        lvs: Range<Lv>,
        kind: OpKind,
        pos: usize,
        fwd: bool,
        content: Range<usize>,
        ascii: bool,
    ) {
        self.runs.push(OpRun {
            lvs,
            kind,
            pos,
            fwd,
            content,
            ascii,
        });
    }

    fn run_index(&self, lv: Lv) -> usize {
        self.runs.partition_point(|r| r.lvs.end <= lv)
    }

    /// The run holding `lv` and the offset of `lv` in it.
    pub(crate) fn run_at(&self, lv: Lv) -> (&OpRun, usize) {
        let run = &self.runs[self.run_index(lv)];
        (run, lv - run.lvs.start)
    }

    /// The text inserted by ops `k..k + n` of insert run `run`.
    pub(crate) fn run_text(&self, run: &OpRun, k: usize, n: usize) -> &str {
        let s = &self.text[run.content.clone()];
        if run.ascii {
            &s[k..k + n]
        } else {
            let mut idx = s
                .char_indices()
                .map(|(i, _)| i)
                .chain(std::iter::once(s.len()));
            let start = idx.nth(k).unwrap_or(s.len());
            let end = if n == 0 {
                start
            } else {
                idx.nth(n - 1).unwrap_or(s.len())
            };
            &s[start..end]
        }
    }

    /// The operation at `lv`.
    pub(crate) fn op(&self, lv: Lv) -> Op {
        let run = &self.runs[self.run_index(lv)];
        let k = lv - run.lvs.start;
        let ch = match run.kind {
            OpKind::Delete => None,
            OpKind::Insert => {
                let s = &self.text[run.content.clone()];
                if run.ascii {
                    s.as_bytes().get(k).map(|b| char::from(*b))
                } else {
                    s.chars().nth(k)
                }
            }
        };
        Op {
            kind: run.kind,
            pos: run.pos_at(k),
            ch,
        }
    }

    /// This log with its ops in canonical order (see
    /// [`Graph::canonical_order`]) and each old LV's new LV, or `None` if it
    /// already is in that order.
    pub(crate) fn canonical(&self) -> Option<(Self, Vec<Lv>)> {
        let order = self.graph.canonical_order(&self.agents)?;
        let mut new_lv = vec![0; order.len()];
        for (i, lv) in order.iter().enumerate() {
            new_lv[*lv] = i;
        }
        let mut out = Self::default();
        let mut buf = [0u8; 4];
        for &lv in &order {
            let mut parents: Frontier = self
                .graph
                .parents_of(lv)
                .iter()
                .map(|p| new_lv[*p])
                .collect();
            parents.sort_unstable();
            let dot = self.agents.dot(lv);
            let op = self.op(lv);
            let text = op.ch.map_or("", |c| &*c.encode_utf8(&mut buf));
            out.push_run(
                dot.replica,
                dot.counter,
                &parents,
                op.kind,
                op.pos,
                1,
                true,
                text,
            );
        }
        Some((out, new_lv))
    }

    /// The operations a replica at `version` lacks, as self-contained runs
    /// in causal order, ready to ship.
    pub fn changes_since(&self, version: &VersionVector) -> Vec<TextChange> {
        let mut out = Vec::new();
        for span in self.agents.missing_from(version) {
            let mut lv = span.start;
            while lv < span.end {
                let change = self.change_at(lv, span.end);
                lv += change.len;
                out.push(change);
            }
        }
        out
    }

    /// The longest exportable run starting at `lv` and ending before `end`.
    fn change_at(&self, lv: Lv, end: Lv) -> TextChange {
        let run = &self.runs[self.run_index(lv)];
        let k = lv - run.lvs.start;
        let mut stop = end.min(run.lvs.end);
        // Stop where the graph or the authorship changes.
        let id = self.agents.dot(lv);
        for l in lv + 1..stop {
            let parents = self.graph.parents_of(l);
            if parents.as_slice() != [l - 1]
                || self.agents.dot(l) != Dot::new(id.replica, id.counter + (l - lv) as u64)
            {
                stop = l;
                break;
            }
        }
        let len = stop - lv;
        let text = match run.kind {
            OpKind::Insert => {
                let s = &self.text[run.content.clone()];
                s.chars().skip(k).take(len).collect()
            }
            OpKind::Delete => String::new(),
        };
        TextChange {
            id,
            parents: self.agents.dots(&self.graph.parents_of(lv)),
            kind: run.kind,
            pos: run.pos_at(k),
            len,
            fwd: run.fwd,
            text,
        }
    }

    /// Adds a change received from another replica. Returns the LVs added
    /// (empty if every operation was already held). Checking that the change
    /// extends its replica's chain visits graph runs, deducted from `budget`
    /// (see [`Limits::max_chain_check`]); the change is refused once it runs out.
    pub(crate) fn push_remote(
        &mut self,
        change: &TextChange,
        limits: &Limits,
        budget: &mut u64,
    ) -> Result<Range<Lv>, DocError> {
        change.check(limits)?;
        let have = self.agents.version().get(change.id.replica);
        let first = change.id.counter;
        let last = first + change.len as u64 - 1;
        if last <= have {
            return Ok(self.graph.next_lv()..self.graph.next_lv());
        }
        if first > have + 1 {
            return Err(DocError::Gap {
                replica: change.id.replica,
                expected: have + 1,
                found: first,
            });
        }
        // Skip the prefix already held: its ops are a chain, so the first new
        // op's parent is the op before it.
        let skip = (have + 1 - first) as usize;
        let parents: Frontier = if skip == 0 {
            let mut ps = Frontier::new();
            for p in &change.parents {
                let lv = self.agents.lv(*p).ok_or(DocError::MissingDependency {
                    op: change.id,
                    dep: *p,
                })?;
                ps.push(lv);
            }
            ps.sort_unstable();
            ps.dedup();
            ps
        } else {
            let prev = Dot::new(change.id.replica, have);
            let lv = self.agents.lv(prev).ok_or(DocError::MissingDependency {
                op: change.id,
                dep: prev,
            })?;
            SmallVec::from_slice(&[lv])
        };
        let prev = (have > 0)
            .then(|| self.agents.lv(Dot::new(change.id.replica, have)))
            .flatten();
        match self.graph.extends_own_chain_within(&parents, prev, budget) {
            Some(true) => {}
            Some(false) => {
                return Err(DocError::InvalidChange {
                    op: change.id,
                    why: "the change has not seen its replica's previous operation".into(),
                });
            }
            None => {
                return Err(DocError::InvalidChange {
                    op: change.id,
                    why: format!(
                        "checking that the changes extend their replicas' chains visits more \
                         than {} graph runs (Limits::max_chain_check)",
                        limits.max_chain_check
                    ),
                });
            }
        }
        let text: String = change.text.chars().skip(skip).collect();
        let pos = match (change.kind, change.fwd) {
            (OpKind::Insert, _) => change.pos + skip,
            (OpKind::Delete, true) => change.pos,
            (OpKind::Delete, false) => change.pos - skip,
        };
        Ok(self.push_run(
            change.id.replica,
            have + 1,
            &parents,
            change.kind,
            pos,
            change.len - skip,
            change.fwd,
            &text,
        ))
    }

    /// Forgets every operation from `lv` on (undoing a failed import).
    pub(crate) fn truncate(&mut self, lv: Lv, frontier: Frontier) {
        if lv >= self.len() {
            return;
        }
        self.graph.truncate(lv);
        self.agents.truncate(lv);
        let i = self.run_index(lv);
        self.runs.truncate(i + 1);
        if let Some(run) = self.runs.last_mut() {
            if run.lvs.start >= lv {
                self.runs.pop();
            } else {
                let keep = lv - run.lvs.start;
                run.lvs.end = lv;
                if run.kind == OpKind::Insert {
                    let s = &self.text[run.content.clone()];
                    let bytes: usize = s.chars().take(keep).map(char::len_utf8).sum();
                    run.content.end = run.content.start + bytes;
                }
            }
        }
        let text_end = self
            .runs
            .iter()
            .rev()
            .find(|r| r.kind == OpKind::Insert)
            .map_or(0, |r| r.content.end);
        self.text.truncate(text_end);
        self.frontier = frontier;
    }
}

/// Appends `text` to `buf` and returns whether it is ASCII. A single byte
/// (typing one ASCII character, the common case) goes without the call to
/// `memcpy` that `push_str` makes, and without `str::is_ascii`, whose
/// branches on the text's address alignment mispredict about once a
/// keystroke.
#[inline]
fn push_text(buf: &mut String, text: &str) -> bool {
    match *text.as_bytes() {
        // A one-byte string is one ASCII character.
        [b] => {
            buf.push(char::from(b));
            true
        }
        _ => {
            buf.push_str(text);
            text.is_ascii()
        }
    }
}

/// Limits on changes accepted from outside.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most operations in one change.
    pub max_change_len: usize,
    /// Most parents one change may name.
    pub max_parents: usize,
    /// Most graph runs visited, in total over one `apply_changes` call,
    /// checking that each change extends its replica's chain (was made
    /// after that replica's previous operation).
    ///
    /// A check walks back from the change's parents to the replica's
    /// previous operation, past whatever others did meanwhile: honest
    /// batches visit about their own size times the replicas editing at
    /// once. Many hostile replicas taking turns would make a batch cost
    /// quadratic; it is refused instead (as
    /// [`crate::text::LoadLimits::max_chain_check`] does for loading).
    pub max_chain_check: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_change_len: 1 << 20,
            max_parents: 64,
            max_chain_check: 1 << 25,
        }
    }
}

/// A run of operations by one replica, each made right after the previous
/// one: the unit in which texts exchange history. Self-contained: it names
/// its operations and its parents by id, not by local version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextChange {
    /// Id of the first operation; the rest follow with consecutive counters.
    pub id: Dot,
    /// Ids of the operations the first one had seen (its version).
    pub parents: Vec<Dot>,
    /// Insert or delete.
    pub kind: OpKind,
    /// Position of the first operation in its version, in characters.
    pub pos: usize,
    /// Number of operations.
    pub len: usize,
    /// Deletes: all at `pos` (delete key) rather than `pos, pos-1, …` (backspace).
    pub fwd: bool,
    /// Inserts: the characters inserted (exactly `len` of them).
    pub text: String,
}

impl TextChange {
    /// Checks the change's form against `limits` (not whether it applies).
    pub(crate) fn check(&self, limits: &Limits) -> Result<(), DocError> {
        let bad = |why: String| Err(DocError::InvalidChange { op: self.id, why });
        if self.len == 0 {
            return bad("a change holds no operation".into());
        }
        if self.len > limits.max_change_len {
            return bad(format!(
                "{} operations exceed the limit of {}",
                self.len, limits.max_change_len
            ));
        }
        if self.parents.len() > limits.max_parents {
            return bad(format!(
                "{} parents exceed the limit of {}",
                self.parents.len(),
                limits.max_parents
            ));
        }
        if self.id.counter == 0 || self.id.counter.checked_add(self.len as u64).is_none() {
            return bad("operation counters start at 1 and must not overflow".into());
        }
        match self.kind {
            OpKind::Insert if self.text.chars().count() != self.len => bad(format!(
                "insert of {} operations carries {} characters",
                self.len,
                self.text.chars().count()
            )),
            OpKind::Delete if !self.text.is_empty() => bad("a delete carries text".into()),
            OpKind::Delete if !self.fwd && self.pos + 1 < self.len => {
                bad("backspace run goes past the start of the text".into())
            }
            OpKind::Insert if self.pos.checked_add(self.len).is_none() => {
                bad("position overflows".into())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        /// A local edit by replica `r` (on the whole version).
        Local(u64, bool, usize, usize),
        /// Replica `r`'s op made on the version `back` ops ago (concurrent
        /// with the ones since), as a remote change arrives. Remote
        /// replicas are not the local ones, and the log does not check
        /// causality itself: both logs get the same op.
        Remote(u64, usize, usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0..3u64, any::<bool>(), 0..8usize, 1..4usize)
                .prop_map(|(r, ins, pos, n)| Step::Local(r, ins, pos, n)),
            1 => (3..5u64, 0..4usize, 0..8usize).prop_map(|(r, back, pos)| Step::Remote(r, back, pos)),
        ]
    }

    proptest! {
        /// `push_local`'s fast path leaves the log exactly as the general
        /// path (`push_run` on the whole version, next counter) does, also
        /// after other replicas' ops and concurrent ones.
        #[test]
        fn local_fast_path_matches_the_general_path(steps in prop::collection::vec(step(), 0..80)) {
            let (mut fast, mut slow) = (OpLog::default(), OpLog::default());
            for s in steps {
                match s {
                    Step::Local(r, ins, pos, n) => {
                        let replica = ReplicaId::from_u64(r + 1);
                        let (kind, text) = if ins {
                            (OpKind::Insert, "xyzw".get(..n).unwrap_or(""))
                        } else {
                            (OpKind::Delete, "")
                        };
                        let a = fast.push_local(replica, kind, pos, n, text);
                        let counter = slow.version().get(replica) + 1;
                        let parents = slow.frontier.clone();
                        let b = slow.push_run(replica, counter, &parents, kind, pos, n, true, text);
                        prop_assert_eq!(a, b);
                    }
                    Step::Remote(r, back, pos) => {
                        let replica = ReplicaId::from_u64(r + 1);
                        let next = fast.len();
                        let parents: Frontier = match next.checked_sub(back + 1) {
                            Some(p) => smallvec::smallvec![p],
                            None => Frontier::new(),
                        };
                        for log in [&mut fast, &mut slow] {
                            let counter = log.version().get(replica) + 1;
                            log.push_run(replica, counter, &parents, OpKind::Insert, pos, 1, true, "r");
                        }
                    }
                }
                prop_assert_eq!(&fast.graph, &slow.graph);
                prop_assert_eq!(&fast.agents, &slow.agents);
                prop_assert_eq!(&fast.runs, &slow.runs);
                prop_assert_eq!(&fast.text, &slow.text);
                prop_assert_eq!(&fast.frontier, &slow.frontier);
            }
        }
    }
}
