//! The replay's items in document order, as an order-statistic list.
//!
//! A plain `Vec` makes every step of a replay linear in the conflict zone
//! (finding the n-th visible slot, finding the item of an op, inserting),
//! so a batch replay is quadratic. Here items live in chunks of bounded
//! size, each caching its number of items and of visible slots (in the
//! replayed version and in the result), with an index from an item's first
//! LV to its chunk: finding by position or by LV and inserting cost
//! O(√n)-ish (chunks are skipped by their cached counts), not O(n). Runs
//! of consecutive inserts by one author stay one item until split. Each
//! chunk also notes whether all its items are concurrent siblings with the
//! same origins, so that placing an insert among many such siblings passes
//! over whole chunks ([`Items::scan`]).

use std::collections::BTreeMap;

use converge_crdt::Dot;

use super::{Item, ROOT};
use crate::graph::Lv;

/// Chunks are split in two once they hold more items than this.
const MAX_CHUNK: usize = 128;

/// Visible slots of an item: (in the replayed version, in the result).
pub(super) type Lens<'a> = &'a dyn Fn(&Item) -> (usize, usize);

#[derive(Debug, Clone, Default)]
struct Chunk {
    items: Vec<Item>,
    /// Index of the chunk's first item among all items.
    start: usize,
    /// Position of this chunk in `Items::order`.
    rank: usize,
    /// Cached visible slots: replayed version, result.
    cur: usize,
    end: usize,
    /// Whether `cur` / `end` must be recomputed.
    dirty: bool,
    /// When every item is a run of slots outside the replayed version with
    /// the same origins: those origins (left, right) and the greatest id of
    /// the items' first slots. Lets a scan for a new slot's place pass over
    /// the chunk at once (see [`Items::scan`]). Valid while `sibs_fresh`.
    sibs: Option<(Lv, Lv, Dot)>,
    sibs_fresh: bool,
}

/// One step of [`Items::scan`].
pub(super) enum Scan<'a> {
    /// The next item.
    Item(&'a Item),
    /// A whole chunk of this many items, all siblings the new slot goes after.
    Siblings(usize),
}

/// Items in document order, addressed by their index among all items.
#[derive(Debug, Clone, Default)]
pub(super) struct Items {
    /// Chunks by id (ids are stable; the order is in `order`).
    chunks: Vec<Chunk>,
    /// Chunk ids in document order.
    order: Vec<usize>,
    /// Each item's first LV → the id of its chunk.
    by_lv: BTreeMap<Lv, usize>,
    len: usize,
}

impl Items {
    /// Number of items.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Removes every item.
    pub(super) fn clear(&mut self) {
        self.chunks.clear();
        self.order.clear();
        self.by_lv.clear();
        self.len = 0;
    }

    /// The chunk id and offset of item `i` (`i < len`).
    fn locate(&self, i: usize) -> (usize, usize) {
        let r = self
            .order
            .partition_point(|&c| self.chunks[c].start <= i)
            .saturating_sub(1);
        let c = self.order[r];
        (c, i - self.chunks[c].start)
    }

    /// Item `i`.
    pub(super) fn get(&self, i: usize) -> &Item {
        let (c, j) = self.locate(i);
        &self.chunks[c].items[j]
    }

    /// Item `i`, to change; its chunk's counts are recomputed when next needed.
    pub(super) fn get_mut(&mut self, i: usize) -> &mut Item {
        let (c, j) = self.locate(i);
        let chunk = &mut self.chunks[c];
        chunk.dirty = true;
        chunk.sibs_fresh = false;
        &mut chunk.items[j]
    }

    /// Marks the chunk of the item holding `lv` for recounting (its visible
    /// slots changed through state kept outside the item).
    pub(super) fn touch(&mut self, lv: Lv) {
        if let Some((_, &c)) = self.by_lv.range(..=lv).next_back() {
            self.chunks[c].dirty = true;
        }
    }

    /// Index of the item holding `lv`, or `len` if none does.
    pub(super) fn index_of(&self, lv: Lv) -> usize {
        let Some((&first, &c)) = self.by_lv.range(..=lv).next_back() else {
            return self.len;
        };
        let chunk = &self.chunks[c];
        match chunk.items.iter().position(|it| it.lv == first) {
            Some(j) if chunk.items[j].contains(lv) => chunk.start + j,
            _ => self.len,
        }
    }

    /// Index just after the item holding `lv` (0 for the start, `ROOT`).
    pub(super) fn index_after(&self, lv: Lv) -> usize {
        if lv == ROOT { 0 } else { self.index_of(lv) + 1 }
    }

    /// Index of the item holding `lv` (the end for the end, `ROOT`).
    pub(super) fn index_before(&self, lv: Lv) -> usize {
        if lv == ROOT {
            self.len
        } else {
            self.index_of(lv)
        }
    }

    /// Items from index `i` on.
    pub(super) fn iter_from(&self, i: usize) -> impl Iterator<Item = &Item> + '_ {
        let (rank, skip) = if i >= self.len {
            (self.order.len(), 0)
        } else {
            let (c, j) = self.locate(i);
            (self.chunks[c].rank, j)
        };
        self.order[rank..]
            .iter()
            .flat_map(|&c| self.chunks[c].items.iter())
            .skip(skip)
    }

    /// Inserts `item` so that it becomes item `at` (`at <= len`).
    pub(super) fn insert(&mut self, at: usize, item: Item) {
        if self.order.is_empty() {
            self.chunks.push(Chunk::default());
            self.order.push(self.chunks.len() - 1);
        }
        let (c, j) = if at >= self.len {
            let c = self.order[self.order.len() - 1];
            (c, self.chunks[c].items.len())
        } else {
            self.locate(at)
        };
        self.by_lv.insert(item.lv, c);
        let chunk = &mut self.chunks[c];
        chunk.items.insert(j, item);
        chunk.dirty = true;
        chunk.sibs_fresh = false;
        let rank = chunk.rank;
        self.len += 1;
        for &later in &self.order[rank + 1..] {
            self.chunks[later].start += 1;
        }
        if self.chunks[c].items.len() > MAX_CHUNK {
            self.split_chunk(c);
        }
    }

    /// Splits item `i` so that its offset `k` starts a new item.
    pub(super) fn split(&mut self, i: usize, k: usize) {
        let item = *self.get(i);
        if k == 0 || k >= item.len {
            return;
        }
        let right = Item {
            lv: item.lv + k,
            len: item.len - k,
            origin_left: item.lv + k - 1,
            dot: Dot::new(item.dot.replica, item.dot.counter + k as u64),
            ..item
        };
        self.get_mut(i).len = k;
        self.insert(i + 1, right);
    }

    /// Moves the second half of chunk `c` to a new chunk after it.
    fn split_chunk(&mut self, c: usize) {
        let half = self.chunks[c].items.len() / 2;
        let moved = self.chunks[c].items.split_off(half);
        let id = self.chunks.len();
        for it in &moved {
            self.by_lv.insert(it.lv, id);
        }
        let rank = self.chunks[c].rank + 1;
        self.chunks[c].dirty = true;
        self.chunks[c].sibs_fresh = false;
        self.chunks.push(Chunk {
            start: self.chunks[c].start + half,
            items: moved,
            rank,
            cur: 0,
            end: 0,
            dirty: true,
            sibs: None,
            sibs_fresh: false,
        });
        self.order.insert(rank, id);
        for r in rank + 1..self.order.len() {
            let later = self.order[r];
            self.chunks[later].rank = r;
        }
    }

    /// Walks the items from index `from` on, in order, calling `visit`
    /// with each until it returns false; `visit` also gets the list, for
    /// lookups. A whole chunk, entered at its start, whose items all are
    /// runs outside the replayed version with origins `(left, right)` and
    /// ids below `dot` is passed as one [`Scan::Siblings`] instead: the
    /// concurrent siblings a new slot with those origins and id goes after
    /// (FugueMax), so that k concurrent inserts at one place cost about
    /// k²/[`MAX_CHUNK`] steps rather than k².
    pub(super) fn scan(
        &mut self,
        from: usize,
        (left, right, dot): (Lv, Lv, Dot),
        mut visit: impl FnMut(&Self, Scan<'_>) -> bool,
    ) {
        if from >= self.len {
            return;
        }
        let (first, mut j) = self.locate(from);
        for rank in self.chunks[first].rank..self.order.len() {
            let c = self.order[rank];
            if j == 0 {
                self.refresh_sibs(c);
                let chunk = &self.chunks[c];
                if chunk
                    .sibs
                    .is_some_and(|(l, r, max)| l == left && r == right && max < dot)
                {
                    if !visit(self, Scan::Siblings(chunk.items.len())) {
                        return;
                    }
                    continue;
                }
            }
            for k in j..self.chunks[c].items.len() {
                if !visit(self, Scan::Item(&self.chunks[c].items[k])) {
                    return;
                }
            }
            j = 0;
        }
    }

    /// Recomputes chunk `c`'s sibling summary if stale.
    fn refresh_sibs(&mut self, c: usize) {
        let chunk = &mut self.chunks[c];
        if chunk.sibs_fresh {
            return;
        }
        chunk.sibs_fresh = true;
        chunk.sibs = chunk.items.first().and_then(|first| {
            let (l, r) = (first.origin_left, first.origin_right);
            chunk
                .items
                .iter()
                .try_fold((l, r, first.dot), |(l, r, max), it| {
                    (!it.inserted && it.origin_left == l && it.origin_right == r).then_some((
                        l,
                        r,
                        max.max(it.dot),
                    ))
                })
        });
    }

    /// Recomputes chunk `c`'s counts if stale.
    fn refresh(&mut self, c: usize, lens: Lens<'_>) {
        let chunk = &mut self.chunks[c];
        if chunk.dirty {
            let (mut cur, mut end) = (0, 0);
            for it in &chunk.items {
                let (a, b) = lens(it);
                cur += a;
                end += b;
            }
            chunk.cur = cur;
            chunk.end = end;
            chunk.dirty = false;
        }
    }

    /// The item index and offset of the `pos`-th visible slot in the
    /// replayed version.
    pub(super) fn find_cur(&mut self, pos: usize, lens: Lens<'_>) -> Option<(usize, usize)> {
        let mut left = pos;
        for r in 0..self.order.len() {
            let c = self.order[r];
            self.refresh(c, lens);
            let chunk = &self.chunks[c];
            if left >= chunk.cur {
                left -= chunk.cur;
                continue;
            }
            for (j, it) in chunk.items.iter().enumerate() {
                let n = lens(it).0;
                if left < n {
                    return Some((chunk.start + j, left));
                }
                left -= n;
            }
            return None; // counts out of date: cannot happen
        }
        None
    }

    /// Visible slots in the result before item `index`.
    pub(super) fn end_pos(&mut self, index: usize, lens: Lens<'_>) -> usize {
        let mut pos = 0;
        for r in 0..self.order.len() {
            let c = self.order[r];
            let start = self.chunks[c].start;
            let n = self.chunks[c].items.len();
            if index >= start + n {
                self.refresh(c, lens);
                pos += self.chunks[c].end;
                continue;
            }
            for it in &self.chunks[c].items[..index.saturating_sub(start)] {
                pos += lens(it).1;
            }
            break;
        }
        pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(lv: Lv, len: usize, inserted: bool) -> Item {
        Item {
            lv,
            len,
            origin_left: lv,
            origin_right: lv,
            inserted,
            elem: None,
            touched: false,
            dot: Dot::new(converge_crdt::ReplicaId::from_u64(1), lv as u64),
        }
    }

    /// Test lengths: replayed version counts inserted items, the result
    /// counts every slot except those of even LV runs that are marked touched.
    fn lens(it: &Item) -> (usize, usize) {
        let cur = if it.inserted { it.len } else { 0 };
        let end = if it.touched { 0 } else { it.len };
        (cur, end)
    }

    #[derive(Debug, Clone)]
    enum Step {
        Insert(usize, usize, bool),
        Split(usize, usize),
        Toggle(usize),
        Touch(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (any::<usize>(), 1..5usize, any::<bool>()).prop_map(|(a, n, b)| Step::Insert(a, n, b)),
            2 => (any::<usize>(), any::<usize>()).prop_map(|(a, k)| Step::Split(a, k)),
            1 => any::<usize>().prop_map(Step::Toggle),
            1 => any::<usize>().prop_map(Step::Touch),
        ]
    }

    /// k concurrent inserts at one place: a scan for the next one passes
    /// over whole chunks of them, in about k / MAX_CHUNK steps.
    #[test]
    fn scan_over_many_siblings_takes_few_steps() {
        let mut items = Items::default();
        for i in 0..2000u64 {
            let mut it = item(i as usize, 1, false);
            (it.origin_left, it.origin_right) = (ROOT, ROOT);
            it.dot = Dot::new(converge_crdt::ReplicaId::from_u64(i + 1), 1);
            items.insert(i as usize, it);
        }
        let (mut steps, mut seen) = (0, 0);
        let last = Dot::new(converge_crdt::ReplicaId::from_u64(5000), 1);
        items.scan(0, (ROOT, ROOT, last), |_, step| {
            steps += 1;
            seen += match step {
                Scan::Item(_) => 1,
                Scan::Siblings(n) => n,
            };
            true
        });
        assert_eq!(seen, 2000);
        assert!(steps <= 2000 / (MAX_CHUNK / 2) + MAX_CHUNK, "{steps} steps");
        // An id that goes first among them stops at the first item.
        let first = Dot::new(converge_crdt::ReplicaId::from_u64(0), 1);
        let mut steps = 0;
        items.scan(0, (ROOT, ROOT, first), |_, step| {
            steps += 1;
            matches!(step, Scan::Siblings(_))
        });
        assert_eq!(steps, 1);
    }

    proptest! {
        /// The chunked list answers every query as a plain `Vec` does, over
        /// enough items to split chunks many times.
        #[test]
        fn matches_a_vec(steps in prop::collection::vec(step(), 0..600)) {
            let mut items = Items::default();
            let mut model: Vec<Item> = Vec::new();
            let mut next_lv = 0;
            for s in steps {
                match s {
                    Step::Insert(at, n, ins) => {
                        let at = at % (model.len() + 1);
                        let it = item(next_lv, n, ins);
                        next_lv += n + 1; // leave gaps: LVs not held
                        items.insert(at, it);
                        model.insert(at, it);
                    }
                    Step::Split(i, k) if !model.is_empty() => {
                        let i = i % model.len();
                        let k = k % (model[i].len + 1);
                        items.split(i, k);
                        if k > 0 && k < model[i].len {
                            let right = Item {
                                lv: model[i].lv + k,
                                len: model[i].len - k,
                                origin_left: model[i].lv + k - 1,
                                dot: Dot::new(model[i].dot.replica, model[i].dot.counter + k as u64),
                                ..model[i]
                            };
                            model[i].len = k;
                            model.insert(i + 1, right);
                        }
                    }
                    Step::Toggle(i) if !model.is_empty() => {
                        let i = i % model.len();
                        model[i].inserted = !model[i].inserted;
                        items.get_mut(i).inserted = model[i].inserted;
                    }
                    Step::Touch(i) if !model.is_empty() => {
                        let i = i % model.len();
                        model[i].touched = true;
                        // State changed "outside" the item: flag it by LV.
                        items.get_mut(i).touched = true;
                        items.touch(model[i].lv);
                    }
                    _ => {}
                }
                prop_assert_eq!(items.len(), model.len());
            }
            for (i, it) in model.iter().enumerate() {
                prop_assert_eq!(items.get(i).lv, it.lv);
                prop_assert_eq!(items.get(i).dot, it.dot);
                prop_assert_eq!(items.index_of(it.lv + it.len - 1), i);
                prop_assert_eq!(items.iter_from(i).next().map(|x| x.lv), Some(it.lv));
                let want: usize = model[..i].iter().map(|x| lens(x).1).sum();
                prop_assert_eq!(items.end_pos(i, &lens), want);
            }
            prop_assert_eq!(items.index_of(next_lv + 7), model.len());
            let all: Vec<Lv> = items.iter_from(0).map(|x| x.lv).collect();
            prop_assert_eq!(all, model.iter().map(|x| x.lv).collect::<Vec<_>>());
            let total: usize = model.iter().map(|x| lens(x).0).sum();
            let mut pos = 0;
            for (i, it) in model.iter().enumerate() {
                for k in 0..lens(it).0 {
                    prop_assert_eq!(items.find_cur(pos, &lens), Some((i, k)));
                    pos += 1;
                }
            }
            prop_assert_eq!(pos, total);
            prop_assert_eq!(items.find_cur(total, &lens), None);
        }

        /// `scan` visits exactly the items from its start, in order, and
        /// passes over a chunk at once only when every item in it is a
        /// sibling the query goes after; the visitor stops it.
        #[test]
        fn scan_passes_over_siblings_only(
            items_in in prop::collection::vec((0..2u8, 0..8u8, 0..10u64), 0..700),
            queries in prop::collection::vec((0..2u8, 0..10u64, any::<usize>(), any::<usize>()), 1..8),
        ) {
            let origins = |o: u8| if o == 0 { (3, 4) } else { (5, 6) };
            let mut items = Items::default();
            let mut model: Vec<Item> = Vec::new();
            for (i, (o, ins, c)) in items_in.into_iter().enumerate() {
                let (l, r) = origins(o);
                let it = Item {
                    lv: 10 * i,
                    len: 1,
                    origin_left: l,
                    origin_right: r,
                    inserted: ins == 0,
                    elem: None,
                    touched: false,
                    dot: Dot::new(converge_crdt::ReplicaId::from_u64(c), 1),
                };
                // Appending keeps chunks long; every so often insert inside.
                let at = if i % 5 == 0 { (c as usize * 7) % (model.len() + 1) } else { model.len() };
                items.insert(at, it);
                model.insert(at, it);
            }
            for (o, c, from, stop) in queries {
                let (l, r) = origins(o);
                let dot = Dot::new(converge_crdt::ReplicaId::from_u64(c), 1);
                let from = from % (model.len() + 1);
                let stop = 1 + stop % (model.len() + 1);
                let mut seen = from;
                let mut steps = 0;
                items.scan(from, (l, r, dot), |_, step| {
                    steps += 1;
                    match step {
                        Scan::Item(it) => {
                            assert_eq!(it.lv, model[seen].lv);
                            seen += 1;
                        }
                        Scan::Siblings(n) => {
                            for it in &model[seen..seen + n] {
                                assert!(!it.inserted && it.origin_left == l && it.origin_right == r);
                                assert!(it.dot < dot);
                            }
                            seen += n;
                        }
                    }
                    steps < stop
                });
                if steps < stop {
                    prop_assert_eq!(seen, model.len());
                } else {
                    prop_assert_eq!(steps, stop);
                }
            }
        }
    }
}
