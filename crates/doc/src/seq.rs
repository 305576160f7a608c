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

mod items;

use std::collections::HashMap;

use converge_crdt::Dot;

use crate::agents::Agents;
use crate::graph::{Frontier, Graph, Lv, Side};
use items::{Items, Scan};

/// Where a sequence's operations come from: the shared causal graph and a
/// view of which operations belong to this sequence.
pub(crate) trait SeqSource {
    /// The causal graph of every operation.
    fn graph(&self) -> &Graph;
    /// Who wrote each operation (for ordering concurrent inserts).
    fn agents(&self) -> &Agents;
    /// The operation at `lv` if it belongs to this sequence, with positions
    /// in its author's version.
    fn seq_op(&self, lv: Lv) -> Option<SeqOp>;
    /// The Lamport timestamp of `lv` (only moves need it).
    fn lamport(&self, _lv: Lv) -> u64 {
        0
    }
}

/// A sequence operation, with positions in its author's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeqOp {
    /// Insert a new element at `pos`.
    Insert(usize),
    /// Delete the element at `pos`.
    Delete(usize),
    /// Move the element at `from` to a new slot inserted at `to` (counted
    /// with the element still at `from`).
    Move {
        /// Where the element is.
        from: usize,
        /// Where its new slot goes.
        to: usize,
    },
}

/// An edit to the current sequence produced by a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeqEdit {
    /// Insert the element created by op `.1` at position `.0`.
    Insert(usize, Lv),
    /// Delete the element at position `.0`.
    Delete(usize),
    /// Take the element at `from` out, and put it back at `to` (counted
    /// after the removal) in the slot created by move op `lv`.
    Move {
        /// Current position.
        from: usize,
        /// Position after removal.
        to: usize,
        /// The move op (its slot).
        lv: Lv,
    },
}

/// Sentinels for "start of text" / "end of text" origins.
const ROOT: Lv = usize::MAX;
/// LVs of the placeholder characters that stand for the text at the common
/// ancestor; far above any real LV.
const UNDERWATER: Lv = usize::MAX / 4;
/// The placeholder's length: more characters than any text can have.
const UNDERWATER_LEN: usize = usize::MAX / 8;

/// A run of slots (a single slot, except for untouched placeholder runs).
/// A slot is where an element sits: its insert, or a move's new place.
#[derive(Debug, Clone, Copy)]
struct Item {
    lv: Lv,
    len: usize,
    /// Origin of the first slot; later ones have the slot before.
    origin_left: Lv,
    origin_right: Lv,
    /// Whether the slot's op is in the version being replayed.
    inserted: bool,
    /// The element of a move's slot (other slots hold their own element).
    elem: Option<Lv>,
    /// Whether the element has state in `Tracker::elems` (deleted or moved).
    touched: bool,
    /// The id of the first slot's op (later slots' follow): kept here so
    /// that ordering concurrent inserts compares ids without looking them up.
    dot: Dot,
}

impl Item {
    fn contains(&self, lv: Lv) -> bool {
        lv >= self.lv && lv - self.lv < self.len
    }
    /// The element in slot `lv` of this item.
    fn key(&self, lv: Lv) -> Lv {
        self.elem.unwrap_or(lv)
    }
}

/// Visible slots of item `it`: in the replayed version, and in the
/// resulting sequence.
fn lens(elems: &HashMap<Lv, Elem>, it: &Item) -> (usize, usize) {
    if !it.touched {
        return (if it.inserted { it.len } else { 0 }, it.len);
    }
    match elems.get(&it.key(it.lv)) {
        None => (if it.inserted { it.len } else { 0 }, it.len),
        Some(e) => {
            let cur = it.inserted
                && e.del_cur == 0
                && (e.slots.is_empty() || e.winner(true) == Some(it.lv));
            let end = !e.ever_deleted && (e.slots.is_empty() || e.winner(false) == Some(it.lv));
            (usize::from(cur), usize::from(end))
        }
    }
}

/// Per-element state for elements that were deleted or moved.
#[derive(Debug, Clone, Default)]
struct Elem {
    /// Deletes in the version being replayed.
    del_cur: u32,
    /// Deleted in the resulting sequence.
    ever_deleted: bool,
    /// For moved elements, every slot: (slot, rank, in the replayed version).
    /// The visible slot is the greatest-ranked one (last writer wins).
    slots: Vec<(Lv, (u64, Dot), bool)>,
}

impl Elem {
    fn winner(&self, only_inserted: bool) -> Option<Lv> {
        self.slots
            .iter()
            .filter(|(_, _, ins)| *ins || !only_inserted)
            .max_by_key(|(_, rank, _)| *rank)
            .map(|(lv, _, _)| *lv)
    }
}

struct Tracker<'a, S> {
    src: &'a S,
    st: ReplayState,
}

/// What a replay builds up: the tracker's items and their indexes.
#[derive(Debug, Clone)]
struct ReplayState {
    items: Items,
    elems: HashMap<Lv, Elem>,
    /// Slot → element, for the slots of moved elements.
    slot_owner: HashMap<Lv, Lv>,
    /// Delete op → the element it deleted.
    deletes: HashMap<Lv, Lv>,
    version: Frontier,
    /// The version the placeholder stands for (empty: no placeholder).
    base: Frontier,
}

/// The replay state a merge ends with, kept so that the next merge can
/// continue from it instead of replaying the conflict zone again.
///
/// Receiving concurrent changes one at a time would otherwise rebuild the
/// whole zone on every receive (with no common ancestor, the whole
/// history): quadratic in the zone per receive. The state is only valid for
/// a sequence still at version `end`, and for new operations that all
/// descend from `st.base` (what the placeholder stands for).
#[derive(Debug, Clone)]
pub(crate) struct ReplayCache {
    st: ReplayState,
    /// The version of the sequence the state ends at.
    end: Frontier,
}

fn placeholder() -> Item {
    Item {
        lv: UNDERWATER,
        len: UNDERWATER_LEN,
        origin_left: ROOT,
        origin_right: ROOT,
        inserted: true,
        elem: None,
        touched: false,
        dot: Dot::new(converge_crdt::ReplicaId::from_u64(0), 0),
    }
}

impl<'a, S: SeqSource> Tracker<'a, S> {
    fn new(src: &'a S, common: Frontier) -> Self {
        let mut items = Items::default();
        if !common.is_empty() {
            items.insert(0, placeholder());
        }
        Self {
            src,
            st: ReplayState {
                items,
                elems: HashMap::new(),
                slot_owner: HashMap::new(),
                deletes: HashMap::new(),
                version: common.clone(),
                base: common,
            },
        }
    }

    /// Continues from the state a previous replay ended with.
    fn from_cache(src: &'a S, cache: ReplayCache) -> Self {
        Self { src, st: cache.st }
    }

    /// Keeps the state for the next replay; the sequence is at `end`.
    fn into_cache(self, end: Frontier) -> ReplayCache {
        ReplayCache { st: self.st, end }
    }

    /// Forgets the replay state: the sequence at version `[lv]` becomes one
    /// placeholder.
    fn reset_to(&mut self, lv: Lv) {
        self.st.items.clear();
        self.st.items.insert(0, placeholder());
        self.st.elems.clear();
        self.st.slot_owner.clear();
        self.st.deletes.clear();
        self.st.version = smallvec::smallvec![lv];
        self.st.base = smallvec::smallvec![lv];
    }

    /// Splits the item at `i` so that offset `k` starts a new item.
    fn split(&mut self, i: usize, k: usize) {
        self.st.items.split(i, k);
    }

    /// Index of the single-slot item holding `lv`, splitting as needed.
    fn isolate(&mut self, lv: Lv) -> usize {
        let i = self.index_of(lv);
        let k = lv - self.st.items.get(i).lv;
        self.split(i, k);
        let i = if k > 0 { i + 1 } else { i };
        self.split(i, 1);
        i
    }

    fn index_of(&self, lv: Lv) -> usize {
        // The tracker only ever holds LVs it created or the placeholder's,
        // so the search always succeeds for LVs taken from its own items.
        self.st.items.index_of(lv)
    }

    /// Index of the item holding `lv` (the end for the end).
    fn index_before(&self, lv: Lv) -> usize {
        self.st.items.index_before(lv)
    }

    /// Marks every slot of element `key` for recounting (its state changed).
    fn touch_elem(&mut self, key: Lv) {
        self.st.items.touch(key);
        if let Some(e) = self.st.elems.get(&key) {
            for (slot, _, _) in &e.slots {
                self.st.items.touch(*slot);
            }
        }
    }

    fn set_inserted(&mut self, lv: Lv, inserted: bool) {
        let i = self.isolate(lv);
        self.st.items.get_mut(i).inserted = inserted;
        if let Some(&key) = self.st.slot_owner.get(&lv)
            && let Some(e) = self.st.elems.get_mut(&key)
            && let Some(slot) = e.slots.iter_mut().find(|(s, _, _)| *s == lv)
        {
            slot.2 = inserted;
            // Another slot of the element may win now.
            self.touch_elem(key);
        }
    }

    fn change_deletes(&mut self, lv: Lv, up: bool) {
        if let Some(&key) = self.st.deletes.get(&lv)
            && let Some(e) = self.st.elems.get_mut(&key)
        {
            e.del_cur = if up {
                e.del_cur + 1
            } else {
                e.del_cur.saturating_sub(1)
            };
            self.touch_elem(key);
        }
    }

    fn retreat(&mut self, lv: Lv) {
        match self.src.seq_op(lv) {
            None => {}
            Some(SeqOp::Insert(_) | SeqOp::Move { .. }) => self.set_inserted(lv, false),
            Some(SeqOp::Delete(_)) => self.change_deletes(lv, false),
        }
    }

    fn advance(&mut self, lv: Lv) {
        match self.src.seq_op(lv) {
            None => {}
            Some(SeqOp::Insert(_) | SeqOp::Move { .. }) => self.set_inserted(lv, true),
            Some(SeqOp::Delete(_)) => self.change_deletes(lv, true),
        }
    }

    /// Moves the replayed version to `to`.
    fn move_to(&mut self, to: &[Lv]) {
        let graph = self.src.graph();
        if self.st.version.as_slice() == to {
            return;
        }
        let (retreat, advance) = graph.diff(&self.st.version, to);
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
        self.st.version = to.iter().copied().collect();
    }

    /// The item index and offset of the `pos`-th visible slot in the
    /// replayed version.
    fn find_cur(&mut self, pos: usize) -> Option<(usize, usize)> {
        let elems = &self.st.elems;
        self.st.items.find_cur(pos, &|it| lens(elems, it))
    }

    /// Visible slots in the resulting sequence before item `index`.
    fn end_pos(&mut self, index: usize) -> usize {
        let elems = &self.st.elems;
        self.st.items.end_pos(index, &|it| lens(elems, it))
    }

    fn dot(&self, lv: Lv) -> Dot {
        self.src.agents().dot(lv)
    }

    /// The order of a slot among an element's slots: placeholder slots
    /// (from before the replay) first, then by Lamport timestamp and id.
    fn rank(&self, lv: Lv) -> (u64, Dot) {
        if lv >= UNDERWATER {
            (0, Dot::new(converge_crdt::ReplicaId::from_u64(0), 0))
        } else {
            (self.src.lamport(lv), self.dot(lv))
        }
    }

    /// The visible slot at `pos` in the replayed version, isolated:
    /// (item index, slot lv, element).
    fn slot_at(&mut self, pos: usize, what: &str) -> Result<(usize, Lv, Lv), String> {
        let (i, k) = self
            .find_cur(pos)
            .ok_or_else(|| format!("{what} at {pos} is past the end of its version"))?;
        let slot = self.st.items.get(i).lv + k;
        let i = self.isolate(slot);
        Ok((i, slot, self.st.items.get(i).key(slot)))
    }

    /// Inserts a new slot `lv` at `pos` (FugueMax placement); returns the
    /// index of its item and its offset there (non-zero when it extended a
    /// run: typing by one author stays one item).
    fn insert_slot(
        &mut self,
        lv: Lv,
        pos: usize,
        elem: Option<Lv>,
    ) -> Result<(usize, usize), String> {
        let (start, origin_left) = if pos == 0 {
            (0, ROOT)
        } else {
            // Split after the origin slot only, so a run ending there stays whole.
            let (i, k) = self
                .find_cur(pos - 1)
                .ok_or_else(|| format!("insert at {pos} is past the end of its version"))?;
            let slot = self.st.items.get(i).lv + k;
            self.split(i, k + 1);
            (i + 1, slot)
        };
        let origin_right = self
            .st
            .items
            .iter_from(start)
            .find(|it| it.inserted)
            .map_or(ROOT, |it| it.lv);
        let dot = self.dot(lv);
        let at = self.integrate(dot, start, origin_left, origin_right);
        if elem.is_none() && at > 0 {
            // Extend the run before when this is its author's next insert,
            // right after it, with the same right origin.
            let prev = *self.st.items.get(at - 1);
            if prev.lv < UNDERWATER
                && prev.inserted
                && !prev.touched
                && prev.elem.is_none()
                && prev.lv + prev.len == lv
                && origin_left == lv - 1
                && prev.origin_right == origin_right
                && prev.dot.replica == dot.replica
                && prev.dot.counter + prev.len as u64 == dot.counter
            {
                self.st.items.get_mut(at - 1).len += 1;
                return Ok((at - 1, prev.len));
            }
        }
        self.st.items.insert(
            at,
            Item {
                lv,
                len: 1,
                origin_left,
                origin_right,
                inserted: true,
                elem,
                touched: elem.is_some(),
                dot,
            },
        );
        Ok((at, 0))
    }

    /// Replays op `lv`; returns the edit to the sequence if it is new.
    fn apply(&mut self, lv: Lv, op: SeqOp, emit: bool) -> Result<Option<SeqEdit>, String> {
        match op {
            SeqOp::Insert(pos) => {
                let (at, k) = self.insert_slot(lv, pos, None)?;
                // A run's slots before `k` are untouched: all visible.
                Ok(emit.then(|| SeqEdit::Insert(self.end_pos(at) + k, lv)))
            }
            SeqOp::Delete(pos) => {
                let (i, _, key) = self.slot_at(pos, "delete")?;
                self.st.items.get_mut(i).touched = true;
                self.st.deletes.insert(lv, key);
                let e = self.st.elems.entry(key).or_default();
                e.del_cur += 1;
                let ever_deleted = e.ever_deleted;
                self.touch_elem(key);
                if ever_deleted {
                    return Ok(None);
                }
                let e = self.st.elems.entry(key).or_default();
                // The element's visible slot may be another one than the
                // deleted position's (a concurrent move won): delete that.
                let shown = if e.slots.is_empty() {
                    None
                } else {
                    e.winner(false)
                };
                let at = match shown {
                    Some(s) => self.index_of(s),
                    None => i,
                };
                let edit = emit.then(|| SeqEdit::Delete(self.end_pos(at)));
                if let Some(e) = self.st.elems.get_mut(&key) {
                    e.ever_deleted = true;
                }
                self.touch_elem(key);
                Ok(edit)
            }
            SeqOp::Move { from, to } => {
                let (i, slot, key) = self.slot_at(from, "move")?;
                self.st.items.get_mut(i).touched = true;
                let rank = self.rank(slot);
                let e = self.st.elems.entry(key).or_default();
                if e.slots.is_empty() {
                    e.slots.push((slot, rank, true));
                    self.st.slot_owner.insert(slot, key);
                }
                let deleted = e.ever_deleted;
                let before = e.winner(false);
                let from_end = match before {
                    Some(s) if emit && !deleted => Some(self.end_pos(self.index_of(s))),
                    _ => None,
                };
                // A move's slot never extends a run: its offset is 0.
                let (at, _) = self.insert_slot(lv, to, Some(key))?;
                let rank = self.rank(lv);
                self.st.slot_owner.insert(lv, key);
                let e = self.st.elems.entry(key).or_default();
                e.slots.push((lv, rank, true));
                let after = e.winner(false);
                self.touch_elem(key);
                match from_end {
                    Some(from) if after == Some(lv) && before != after => Ok(Some(SeqEdit::Move {
                        from,
                        to: self.end_pos(at),
                        lv,
                    })),
                    _ => Ok(None),
                }
            }
        }
    }

    /// Where a new slot with these origins goes among the concurrent
    /// insertions that follow `start` (FugueMax / YjsMod).
    fn integrate(&mut self, dot: Dot, start: usize, origin_left: Lv, origin_right: Lv) -> usize {
        let left_index = start;
        let right_index = self.index_before(origin_right);
        let mut i = start;
        let mut scanning = false;
        let mut scan_start = start;
        self.st
            .items
            .scan(start, (origin_left, origin_right, dot), |items, step| {
                let other = match step {
                    Scan::Item(other) => other,
                    Scan::Siblings(n) => {
                        // Same origins, smaller ids: each would only reset
                        // `scanning` and move on (below).
                        scanning = false;
                        i += n;
                        return true;
                    }
                };
                if other.inserted {
                    return false;
                }
                let other_left = items.index_after(other.origin_left);
                if other_left < left_index {
                    return false;
                }
                if other_left == left_index {
                    if other.origin_right == origin_right {
                        if dot < other.dot {
                            return false;
                        }
                        scanning = false;
                    } else {
                        let other_right = items.index_before(other.origin_right);
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
                true
            });
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
    replay_cached(src, from, to, None, &mut None)
}

/// Whether a state whose placeholder stands for `base` can replay the ops
/// `new` (ascending): every op they were made on that is not itself new
/// must include `base`, so that no replay step has to retreat into the
/// placeholder.
fn base_holds(graph: &Graph, base: &[Lv], new: &[Lv]) -> bool {
    let Some(&c) = base.first() else {
        return true; // no placeholder: the state holds every op
    };
    new.iter().all(|&lv| {
        let parents = graph.parents_of(lv);
        // An op made on the empty version has not seen `base`.
        !parents.is_empty()
            && parents
                .iter()
                .all(|&p| new.binary_search(&p).is_ok() || graph.contains(&[p], c))
    })
}

/// [`replay`], continuing from `cache` when it is still valid: when
/// `known_new` lists exactly the ops in `to` but not `from` (ascending),
/// the sequence is where the cached state ended, and the new ops descend
/// from its base, only the new ops are replayed. Leaves the final state in
/// `cache` (cleared on error).
pub(crate) fn replay_cached<S: SeqSource>(
    src: &S,
    from: &[Lv],
    to: &[Lv],
    known_new: Option<&[Lv]>,
    cache: &mut Option<ReplayCache>,
) -> Result<Vec<SeqEdit>, (Lv, String)> {
    let graph = src.graph();
    let reuse = match (cache.take(), known_new) {
        (Some(c), Some(new)) if c.end.as_slice() == from && base_holds(graph, &c.st.base, new) => {
            Some((c, new))
        }
        _ => None,
    };
    let (mut tracker, before, new, mut processed) = match reuse {
        Some((c, new)) => (
            Tracker::from_cache(src, c),
            Vec::new(),
            new.to_vec(),
            from.iter().copied().collect::<Frontier>(),
        ),
        None => {
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
            (Tracker::new(src, common.clone()), before, new, common)
        }
    };
    // For each new op, the lowest parent of any later new op (-1: the root).
    // When it is not below op X, every later op descends from X.
    let mut later_min_parent = vec![isize::MAX; new.len()];
    let mut running = isize::MAX;
    for i in (0..new.len()).rev() {
        later_min_parent[i] = running;
        let lowest = graph.parents_of(new[i]).first().map_or(-1, |p| *p as isize);
        running = running.min(lowest);
    }
    let mut edits = Vec::new();
    // Operations the sequence already has first (in causal order), then the
    // new ones: both orders are topological, and this way the tracker's
    // resulting state is always exactly the current sequence.
    for (lvs, emit) in [(&before, false), (&new, true)] {
        for (i, &lv) in lvs.iter().enumerate() {
            let parents = graph.parents_of(lv);
            Graph::advance_frontier(&mut processed, &parents, &(lv..lv + 1));
            if let Some(op) = src.seq_op(lv) {
                tracker.move_to(&parents);
                if let Some(edit) = tracker.apply(lv, op, emit).map_err(|why| (lv, why))? {
                    edits.push(edit);
                }
                tracker.st.version = smallvec::smallvec![lv];
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
    *cache = Some(tracker.into_cache(processed));
    Ok(edits)
}
