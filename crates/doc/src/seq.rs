//! The Eg-walker replay of a conflict zone (Gentle & Kleppmann, 2025),
//! shared by every sequence type (text, lists).
//!
//! Operations are stored with positions relative to the version their author
//! saw. To apply an operation made concurrently with ones a replica already
//! has, the walker rebuilds a temporary CRDT state (FugueMax ordering, as in
//! YjsMod) over only the *conflict zone* — the operations since the last
//! version both sides shared — replaying each operation in the version its
//! author saw (retreating and advancing concurrent operations), and emits
//! each new operation transformed to a position in the current sequence.
//! Everything before the zone is one placeholder, so the cost depends on how
//! much is concurrent, not on the size of the history.

use std::collections::HashMap;

use converge_crdt::Dot;

use crate::agents::Agents;
use crate::graph::{Frontier, Graph, Lv, Side};
use crate::text::OpKind;

/// Where a sequence's operations come from: the shared causal graph and a
/// view of which operations belong to this sequence.
pub(crate) trait SeqSource {
    /// The causal graph of every operation.
    fn graph(&self) -> &Graph;
    /// Who wrote each operation (for ordering concurrent inserts).
    fn agents(&self) -> &Agents;
    /// The operation at `lv` if it belongs to this sequence: its kind and
    /// its position in its author's version.
    fn seq_op(&self, lv: Lv) -> Option<(OpKind, usize)>;
}

/// An edit to the current sequence produced by a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeqEdit {
    /// Insert the element created by op `.1` at position `.0`.
    Insert(usize, Lv),
    /// Delete the element at position `.0`.
    Delete(usize),
}

/// Sentinels for "start of text" / "end of text" origins.
const ROOT: Lv = usize::MAX;
/// LVs of the placeholder characters that stand for the text at the common
/// ancestor; far above any real LV.
const UNDERWATER: Lv = usize::MAX / 4;
/// The placeholder's length: more characters than any text can have.
const UNDERWATER_LEN: usize = usize::MAX / 8;

#[derive(Debug, Clone, Copy)]
struct Item {
    lv: Lv,
    len: usize,
    /// Origin of the first character; later ones have the character before.
    origin_left: Lv,
    origin_right: Lv,
    /// 0: not inserted yet in the version being replayed; 1: inserted;
    /// 1 + n: deleted by n operations.
    cur: u32,
    /// Deleted in the resulting text.
    ever_deleted: bool,
}

impl Item {
    fn cur_len(&self) -> usize {
        if self.cur == 1 { self.len } else { 0 }
    }
    fn end_len(&self) -> usize {
        if self.ever_deleted { 0 } else { self.len }
    }
    fn contains(&self, lv: Lv) -> bool {
        lv >= self.lv && lv - self.lv < self.len
    }
}

struct Tracker<'a, S> {
    src: &'a S,
    items: Vec<Item>,
    /// Delete op → the character it deleted.
    deletes: HashMap<Lv, Lv>,
    version: Frontier,
}

impl<'a, S: SeqSource> Tracker<'a, S> {
    fn new(src: &'a S, common: Frontier) -> Self {
        let items = if common.is_empty() {
            Vec::new()
        } else {
            vec![Item {
                lv: UNDERWATER,
                len: UNDERWATER_LEN,
                origin_left: ROOT,
                origin_right: ROOT,
                cur: 1,
                ever_deleted: false,
            }]
        };
        Self {
            src,
            items,
            deletes: HashMap::new(),
            version: common,
        }
    }

    /// Forgets the replay state: the sequence at version `[lv]` becomes one
    /// placeholder.
    fn reset_to(&mut self, lv: Lv) {
        self.items.clear();
        self.items.push(Item {
            lv: UNDERWATER,
            len: UNDERWATER_LEN,
            origin_left: ROOT,
            origin_right: ROOT,
            cur: 1,
            ever_deleted: false,
        });
        self.deletes.clear();
        self.version = smallvec::smallvec![lv];
    }

    /// Splits the item at `i` so that offset `k` starts a new item.
    fn split(&mut self, i: usize, k: usize) {
        if k == 0 || k >= self.items[i].len {
            return;
        }
        let item = self.items[i];
        let right = Item {
            lv: item.lv + k,
            len: item.len - k,
            origin_left: item.lv + k - 1,
            ..item
        };
        self.items[i].len = k;
        self.items.insert(i + 1, right);
    }

    /// Index of the single-character item holding `lv`, splitting as needed.
    fn isolate(&mut self, lv: Lv) -> usize {
        let i = self.index_of(lv);
        let k = lv - self.items[i].lv;
        self.split(i, k);
        let i = if k > 0 { i + 1 } else { i };
        self.split(i, 1);
        i
    }

    fn index_of(&self, lv: Lv) -> usize {
        // The tracker only ever holds LVs it created or the placeholder's,
        // so the search always succeeds for LVs taken from its own items.
        self.items
            .iter()
            .position(|it| it.contains(lv))
            .unwrap_or(self.items.len())
    }

    /// Index just after the item holding `lv` (0 for the start).
    fn index_after(&self, lv: Lv) -> usize {
        if lv == ROOT { 0 } else { self.index_of(lv) + 1 }
    }

    /// Index of the item holding `lv` (the end for the end).
    fn index_before(&self, lv: Lv) -> usize {
        if lv == ROOT {
            self.items.len()
        } else {
            self.index_of(lv)
        }
    }

    fn set_cur(&mut self, lv: Lv, f: impl FnOnce(u32) -> u32) {
        let i = self.isolate(lv);
        self.items[i].cur = f(self.items[i].cur);
    }

    fn retreat(&mut self, lv: Lv) {
        match self.src.seq_op(lv) {
            None => {}
            Some((OpKind::Insert, _)) => self.set_cur(lv, |_| 0),
            Some((OpKind::Delete, _)) => {
                if let Some(&target) = self.deletes.get(&lv) {
                    self.set_cur(target, |c| c - 1);
                }
            }
        }
    }

    fn advance(&mut self, lv: Lv) {
        match self.src.seq_op(lv) {
            None => {}
            Some((OpKind::Insert, _)) => self.set_cur(lv, |_| 1),
            Some((OpKind::Delete, _)) => {
                if let Some(&target) = self.deletes.get(&lv) {
                    self.set_cur(target, |c| c + 1);
                }
            }
        }
    }

    /// Moves the replayed version to `to`.
    fn move_to(&mut self, to: &[Lv]) {
        let graph = self.src.graph();
        if self.version.as_slice() == to {
            return;
        }
        let (retreat, advance) = graph.diff(&self.version, to);
        for span in retreat {
            for lv in span.rev() {
                self.retreat(lv);
            }
        }
        for span in advance.into_iter().rev() {
            for lv in span {
                self.advance(lv);
            }
        }
        self.version = to.iter().copied().collect();
    }

    /// The item index and offset of the `pos`-th visible character in the
    /// replayed version.
    fn find_cur(&self, pos: usize) -> Option<(usize, usize)> {
        let mut left = pos;
        for (i, it) in self.items.iter().enumerate() {
            let n = it.cur_len();
            if left < n {
                return Some((i, left));
            }
            left -= n;
        }
        None
    }

    fn end_pos(&self, index: usize) -> usize {
        self.items[..index].iter().map(Item::end_len).sum()
    }

    fn dot(&self, lv: Lv) -> Dot {
        self.src.agents().dot(lv)
    }

    /// Replays op `lv`; returns the edit to the text if it is new.
    fn apply(
        &mut self,
        lv: Lv,
        kind: OpKind,
        pos: usize,
        emit: bool,
    ) -> Result<Option<SeqEdit>, String> {
        match kind {
            OpKind::Insert => {
                let (start, origin_left) = if pos == 0 {
                    (0, ROOT)
                } else {
                    let (i, k) = self.find_cur(pos - 1).ok_or_else(|| {
                        format!("insert at {} is past the end of its version", pos)
                    })?;
                    let left = self.items[i].lv + k;
                    let i = self.isolate(left);
                    (i + 1, left)
                };
                let origin_right = self.items[start..]
                    .iter()
                    .find(|it| it.cur != 0)
                    .map_or(ROOT, |it| it.lv);
                let at = self.integrate(lv, start, origin_right);
                self.items.insert(
                    at,
                    Item {
                        lv,
                        len: 1,
                        origin_left,
                        origin_right,
                        cur: 1,
                        ever_deleted: false,
                    },
                );
                Ok(emit.then(|| SeqEdit::Insert(self.end_pos(at), lv)))
            }
            OpKind::Delete => {
                let (i, k) = self
                    .find_cur(pos)
                    .ok_or_else(|| format!("delete at {} is past the end of its version", pos))?;
                let target = self.items[i].lv + k;
                let i = self.isolate(target);
                self.deletes.insert(lv, target);
                self.items[i].cur += 1;
                if self.items[i].ever_deleted {
                    return Ok(None);
                }
                self.items[i].ever_deleted = true;
                Ok(emit.then(|| SeqEdit::Delete(self.end_pos(i))))
            }
        }
    }

    /// Where a new character with these origins goes among the concurrent
    /// insertions that follow `start` (FugueMax / YjsMod).
    fn integrate(&self, lv: Lv, start: usize, origin_right: Lv) -> usize {
        let left_index = start;
        let right_index = self.index_before(origin_right);
        let mut i = start;
        let mut scanning = false;
        let mut scan_start = start;
        while i < self.items.len() {
            let other = &self.items[i];
            if other.cur != 0 {
                break;
            }
            let other_left = self.index_after(other.origin_left);
            if other_left < left_index {
                break;
            }
            if other_left == left_index {
                if other.origin_right == origin_right {
                    if self.dot(lv) < self.dot(other.lv) {
                        break;
                    }
                    scanning = false;
                } else {
                    let other_right = self.index_before(other.origin_right);
                    if other_right < right_index {
                        if !scanning {
                            scanning = true;
                            scan_start = i;
                        }
                    } else {
                        scanning = false;
                    }
                }
            }
            i += 1;
        }
        if scanning { scan_start } else { i }
    }
}

/// Replays the conflict zone between the version `from` (what the sequence
/// reflects) and `to`, and returns the edits that bring the sequence to
/// `from ∪ to`. On a bad operation returns it with the reason.
pub(crate) fn replay<S: SeqSource>(
    src: &S,
    from: &[Lv],
    to: &[Lv],
) -> Result<Vec<SeqEdit>, (Lv, String)> {
    let graph = src.graph();
    let mut before: Vec<Lv> = Vec::new();
    let mut new: Vec<Lv> = Vec::new();
    let common = graph.find_conflicting(from, to, |span, side| {
        let list = match side {
            Side::A | Side::Shared => &mut before,
            Side::B => &mut new,
        };
        list.extend(span);
    });
    before.sort_unstable();
    new.sort_unstable();
    // For each new op, the lowest parent of any later new op (-1: the root).
    // When it is not below op X, every later op descends from X.
    let mut later_min_parent = vec![isize::MAX; new.len()];
    let mut running = isize::MAX;
    for i in (0..new.len()).rev() {
        later_min_parent[i] = running;
        let lowest = graph.parents_of(new[i]).first().map_or(-1, |p| *p as isize);
        running = running.min(lowest);
    }
    let mut tracker = Tracker::new(src, common.clone());
    let mut processed: Frontier = common;
    let mut edits = Vec::new();
    // Operations the sequence already has first (in causal order), then the
    // new ones: both orders are topological, and this way the tracker's
    // resulting state is always exactly the current sequence.
    for (lvs, emit) in [(&before, false), (&new, true)] {
        for (i, &lv) in lvs.iter().enumerate() {
            let parents = graph.parents_of(lv);
            Graph::advance_frontier(&mut processed, &parents, &(lv..lv + 1));
            if let Some((kind, pos)) = src.seq_op(lv) {
                tracker.move_to(&parents);
                if let Some(edit) = tracker
                    .apply(lv, kind, pos, emit)
                    .map_err(|why| (lv, why))?
                {
                    edits.push(edit);
                }
                tracker.version = smallvec::smallvec![lv];
            }
            // A critical version: everything processed is in `lv`'s history
            // and everything still to come descends from it. The replay
            // state can then be forgotten and replaced by a placeholder,
            // which keeps long histories with occasional concurrency linear.
            if emit && processed.as_slice() == [lv] && later_min_parent[i] >= lv as isize {
                tracker.reset_to(lv);
            }
        }
    }
    Ok(edits)
}
