//! Appends that are durable in the write-ahead log but not yet applied to
//! redb, and the views that put them on top of the database.
//!
//! A durable append used to cost one write-ahead log record, one sync, and a
//! redb transaction (B-tree inserts and a non-durable commit: ~185k
//! instructions for a one-entry append, nearly all of the append's CPU, by
//! callgrind). Now the writer checks an append against the database plus the
//! [`Overlay`], syncs its log record, adds it to the overlay and answers; a
//! background applier folds the overlay into redb, many records per
//! transaction, and drops them from the overlay once committed.
//!
//! Readers see the overlay on top of a redb snapshot taken *after* it (see
//! [`Layered`]): an append leaves the overlay only once redb holds it, so
//! nothing acknowledged is ever missing from a read; it may be in both
//! (applied, not yet dropped), and the merge below takes each item once.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::{Bound, Deref};

use converge_crdt::{ReplicaId, VersionVector};
// foldhash, not SipHash: object ids are chosen by remote peers, so the hash
// is seeded per map (no fixed collisions to aim at), yet it hashed a short
// id in a fraction of SipHash's instructions, which were ~28% of an
// `append_many` request's cost on the writer (callgrind).
use foldhash::HashMap;

use crate::format::{Head, WalAppendOwned};
use crate::logic::{Page, Txn, View};
use crate::{Entry, FeedItem, FeedKind, Snapshot, StoreError, Tombstone};

/// Log records written and synced, waiting to be applied to redb, indexed
/// for reads.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    /// object → replica → the log's pending tail.
    logs: HashMap<String, BTreeMap<u64, PendingLog>>,
    /// Objects created by pending appends (not in redb's `objects` yet).
    objects: BTreeSet<String>,
    /// Change feed items of pending appends, by position.
    feed: BTreeMap<u64, FeedItem>,
}

/// The pending tail of one log: its head, and entries `first..=head.last`.
#[derive(Debug, Default)]
struct PendingLog {
    head: Head,
    first: u64,
    entries: VecDeque<Vec<u8>>,
}

/// One synced log record, as the applier folds it into redb.
#[derive(Debug)]
pub(crate) struct Batch {
    /// The record's LSN.
    pub(crate) lsn: u64,
    /// The record's appends (new entries only, with their feed positions).
    pub(crate) appends: Vec<WalAppendOwned>,
    /// The head of each append's log after it, in the same order: the
    /// applier writes them as they are (the writer checked everything).
    pub(crate) heads: Vec<Head>,
    /// The objects these appends created.
    pub(crate) created: Vec<String>,
    /// The record's size in the log, in bytes.
    pub(crate) record_len: usize,
}

impl Overlay {
    fn log(&self, object: &str, replica: ReplicaId) -> Option<&PendingLog> {
        self.logs.get(object)?.get(&replica.as_u64())
    }

    /// The objects created by what this overlay holds.
    pub(crate) fn created_objects(&self) -> Vec<String> {
        self.objects.iter().cloned().collect()
    }

    /// Adds what `delta` (one staged batch) wrote.
    pub(crate) fn merge(&mut self, delta: Self) {
        for (object, logs) in delta.logs {
            let mine = self.logs.entry(object).or_default();
            for (replica, log) in logs {
                match mine.get_mut(&replica) {
                    Some(pending) => {
                        pending.head = log.head;
                        if pending.entries.is_empty() {
                            pending.first = log.first;
                        }
                        pending.entries.extend(log.entries);
                    }
                    None => {
                        mine.insert(replica, log);
                    }
                }
            }
        }
        self.objects.extend(delta.objects);
        self.feed.extend(delta.feed);
    }

    /// Drops what `batch` added, now that redb holds it.
    pub(crate) fn remove(&mut self, batch: &Batch) {
        for append in &batch.appends {
            self.feed.remove(&append.position);
            let Some(logs) = self.logs.get_mut(&append.object) else {
                continue;
            };
            let replica = append.replica.as_u64();
            if let Some(log) = logs.get_mut(&replica) {
                let n = append.entries.len().min(log.entries.len());
                log.entries.drain(..n);
                log.first += n as u64;
                if log.entries.is_empty() {
                    logs.remove(&replica);
                }
            }
            if logs.is_empty() {
                self.logs.remove(&append.object);
            }
        }
        for object in &batch.created {
            self.objects.remove(object);
        }
    }
}

/// What the writer knows for sure of the latest state (redb plus overlay),
/// so that an append to a log it wrote before needs no database read.
/// Valid while every change goes through the writer; cleared by every write
/// that is not an append.
#[derive(Debug, Default)]
pub(crate) struct WriterCache {
    /// object → replica → head; an object listed here is known to exist
    /// (and so not to be deleted). Keyed by object first, so that a lookup
    /// borrows the caller's `&str` instead of building a key.
    logs: HashMap<String, BTreeMap<u64, Head>>,
    /// How many heads `logs` holds.
    heads: usize,
    /// The last change feed position, once known.
    feed_head: Option<u64>,
}

/// Logs remembered before the cache starts over (bounds its memory).
const CACHE_MAX_LOGS: usize = 1 << 16;

impl WriterCache {
    /// Forgets everything (after a write that is not an append).
    pub(crate) fn clear(&mut self) {
        self.logs.clear();
        self.heads = 0;
        self.feed_head = None;
    }

    /// Learns what a batch, now durable, wrote.
    pub(crate) fn learn(&mut self, delta: &Overlay) {
        if self.heads > CACHE_MAX_LOGS {
            self.logs.clear();
            self.heads = 0;
        }
        for (object, logs) in &delta.logs {
            let known = match self.logs.get_mut(object.as_str()) {
                Some(known) => known,
                None => self.logs.entry(object.clone()).or_default(),
            };
            for (replica, log) in logs {
                if known.insert(*replica, log.head).is_none() {
                    self.heads += 1;
                }
            }
        }
        if let Some((position, _)) = delta.feed.last_key_value() {
            self.feed_head = Some(*position);
        }
    }
}

/// The overlay (held through `P`, e.g. a lock guard) on top of a base view:
/// reads take an item from the overlay if it has it, else from the base.
pub(crate) struct Layered<P, B> {
    pending: P,
    base: B,
}

impl<P: Deref<Target = Overlay>, B: View> Layered<P, B> {
    /// `pending` over `base`. The base must have been opened after `pending`
    /// was locked against changes: then everything that left the overlay is
    /// in the base.
    pub(crate) fn new(pending: P, base: B) -> Self {
        Self { pending, base }
    }

    fn layers(&self) -> [&Overlay; 1] {
        [&*self.pending]
    }
}

impl<P: Deref<Target = Overlay>, B: View> View for Layered<P, B> {
    fn object_exists(&self, object: &str) -> Result<bool, StoreError> {
        layered_object_exists(&self.layers(), &self.base, object)
    }
    fn head(&self, object: &str, replica: ReplicaId) -> Result<Head, StoreError> {
        layered_head(&self.layers(), &self.base, object, replica)
    }
    fn heads(&self, object: &str) -> Result<Vec<(ReplicaId, Head)>, StoreError> {
        layered_heads(&self.layers(), &self.base, object)
    }
    fn entries(
        &self,
        object: &str,
        replica: ReplicaId,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Page, StoreError> {
        layered_entries(
            &self.layers(),
            &self.base,
            object,
            replica,
            from,
            to,
            max_bytes,
        )
    }
    fn objects(
        &self,
        prefix: &str,
        start: &str,
        exclusive: bool,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        layered_objects(&self.layers(), &self.base, prefix, start, exclusive, limit)
    }
    fn feed(&self, after: u64, limit: usize) -> Result<Vec<FeedItem>, StoreError> {
        layered_feed(&self.layers(), &self.base, after, limit)
    }
    fn feed_head(&self) -> Result<u64, StoreError> {
        layered_feed_head(&self.layers(), &self.base)
    }
    fn snapshot(&self, object: &str) -> Result<Option<Snapshot>, StoreError> {
        self.base.snapshot(object)
    }
    fn tombstone(&self, object: &str) -> Result<Option<Tombstone>, StoreError> {
        self.base.tombstone(object)
    }
    fn tombstones(
        &self,
        prefix: &str,
        start: &str,
        exclusive: bool,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.base.tombstones(prefix, start, exclusive, limit)
    }
}

fn layered_object_exists(
    layers: &[&Overlay],
    base: &impl View,
    object: &str,
) -> Result<bool, StoreError> {
    if layers.iter().any(|l| l.objects.contains(object)) {
        return Ok(true);
    }
    base.object_exists(object)
}

fn layered_head(
    layers: &[&Overlay],
    base: &impl View,
    object: &str,
    replica: ReplicaId,
) -> Result<Head, StoreError> {
    match layers.iter().rev().find_map(|l| l.log(object, replica)) {
        Some(log) => Ok(log.head),
        None => base.head(object, replica),
    }
}

fn layered_heads(
    layers: &[&Overlay],
    base: &impl View,
    object: &str,
) -> Result<Vec<(ReplicaId, Head)>, StoreError> {
    if layers.iter().all(|l| !l.logs.contains_key(object)) {
        return base.heads(object);
    }
    let mut heads: BTreeMap<u64, Head> = base
        .heads(object)?
        .into_iter()
        .map(|(replica, head)| (replica.as_u64(), head))
        .collect();
    for layer in layers {
        if let Some(logs) = layer.logs.get(object) {
            heads.extend(logs.iter().map(|(replica, log)| (*replica, log.head)));
        }
    }
    Ok(heads
        .into_iter()
        .map(|(replica, head)| (ReplicaId::from_u64(replica), head))
        .collect())
}

fn layered_entries(
    layers: &[&Overlay],
    base: &impl View,
    object: &str,
    replica: ReplicaId,
    from: u64,
    to: u64,
    mut max_bytes: usize,
) -> Result<Page, StoreError> {
    let logs: Vec<&PendingLog> = layers
        .iter()
        .filter_map(|l| l.log(object, replica))
        .filter(|log| !log.entries.is_empty())
        .collect();
    // Below the first pending entry, the base holds the log.
    let cut = logs.iter().map(|log| log.first).min().unwrap_or(u64::MAX);
    let mut page = if from < cut {
        base.entries(object, replica, from, to.min(cut - 1), max_bytes)?
    } else {
        Page {
            entries: Vec::new(),
            capped: false,
        }
    };
    if page.capped || to < cut {
        return Ok(page);
    }
    max_bytes = max_bytes.saturating_sub(page.entries.iter().map(|e| e.bytes.len()).sum());
    let mut next = page.entries.last().map_or(from, |e| e.seq + 1).max(cut);
    for log in logs {
        while next <= to {
            let Some(index) = next
                .checked_sub(log.first)
                .and_then(|i| usize::try_from(i).ok())
            else {
                break;
            };
            let Some(bytes) = log.entries.get(index) else {
                break;
            };
            if !page.push(Entry::new(next, bytes.clone()), &mut max_bytes) {
                return Ok(page);
            }
            next += 1;
        }
    }
    Ok(page)
}

fn layered_objects(
    layers: &[&Overlay],
    base: &impl View,
    prefix: &str,
    start: &str,
    exclusive: bool,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut found: BTreeSet<String> = base
        .objects(prefix, start, exclusive, limit)?
        .into_iter()
        .collect();
    let lower = if exclusive {
        Bound::Excluded(start)
    } else {
        Bound::Included(start)
    };
    for layer in layers {
        found.extend(
            layer
                .objects
                .range::<str, _>((lower, Bound::Unbounded))
                .take_while(|o| o.starts_with(prefix))
                .take(limit)
                .cloned(),
        );
    }
    Ok(found.into_iter().take(limit).collect())
}

fn layered_feed(
    layers: &[&Overlay],
    base: &impl View,
    after: u64,
    limit: usize,
) -> Result<Vec<FeedItem>, StoreError> {
    let mut items: BTreeMap<u64, FeedItem> = base
        .feed(after, limit)?
        .into_iter()
        .map(|item| (item.position, item))
        .collect();
    for layer in layers {
        items.extend(
            layer
                .feed
                .range((Bound::Excluded(after), Bound::Unbounded))
                .take(limit)
                .map(|(p, item)| (*p, item.clone())),
        );
    }
    Ok(items.into_values().take(limit).collect())
}

fn layered_feed_head(layers: &[&Overlay], base: &impl View) -> Result<u64, StoreError> {
    let pending = layers
        .iter()
        .filter_map(|l| l.feed.last_key_value().map(|(p, _)| *p))
        .max();
    match pending {
        Some(p) => Ok(p),
        None => base.feed_head(),
    }
}

/// The writer's view while it checks a batch of appends: the batch's own
/// writes so far (`delta`) over the overlay over redb, with the writer's
/// cache in front; redb is only opened if the cache and overlay lack
/// something. Appends write into `delta`; nothing else can be staged.
pub(crate) struct Staging<'a, B, F> {
    pending: &'a Overlay,
    delta: Overlay,
    cache: &'a WriterCache,
    base: OnceCell<B>,
    open: F,
    /// Whether the current job has written anything.
    pub(crate) wrote: bool,
}

impl<'a, B: View, F: Fn() -> Result<B, StoreError>> Staging<'a, B, F> {
    /// A staging area over `pending`; `open` opens the database view when
    /// first needed (after `pending` was locked, see [`Layered::new`]).
    pub(crate) fn new(pending: &'a Overlay, cache: &'a WriterCache, open: F) -> Self {
        Self {
            pending,
            delta: Overlay::default(),
            cache,
            base: OnceCell::new(),
            open,
            wrote: false,
        }
    }

    /// What the staged appends wrote.
    pub(crate) fn into_delta(self) -> Overlay {
        self.delta
    }

    fn base(&self) -> Result<&B, StoreError> {
        if let Some(base) = self.base.get() {
            return Ok(base);
        }
        let base = (self.open)()?;
        Ok(self.base.get_or_init(|| base))
    }

    fn layers(&self) -> [&Overlay; 2] {
        [self.pending, &self.delta]
    }

    fn delta_log(&mut self, object: &str, replica: ReplicaId) -> &mut PendingLog {
        // Look the object up before copying its id: most calls find it.
        if !self.delta.logs.contains_key(object) {
            self.delta.logs.insert(object.to_owned(), BTreeMap::new());
        }
        self.delta
            .logs
            .get_mut(object)
            .map(|logs| logs.entry(replica.as_u64()).or_default())
            .unwrap_or_else(|| unreachable!("inserted above"))
    }
}

fn not_staged(what: &str) -> StoreError {
    StoreError::backend(
        "staging a batch of appends",
        format!("{what} is not an append (a bug in converge-store)"),
    )
}

impl<B: View, F: Fn() -> Result<B, StoreError>> View for Staging<'_, B, F> {
    fn object_exists(&self, object: &str) -> Result<bool, StoreError> {
        if self.cache.logs.contains_key(object) {
            return Ok(true);
        }
        layered_object_exists(&self.layers(), self.base()?, object)
    }
    fn head(&self, object: &str, replica: ReplicaId) -> Result<Head, StoreError> {
        if let Some(log) = self.delta.log(object, replica) {
            return Ok(log.head);
        }
        if let Some(head) = self
            .cache
            .logs
            .get(object)
            .and_then(|logs| logs.get(&replica.as_u64()))
        {
            return Ok(*head);
        }
        layered_head(&self.layers(), self.base()?, object, replica)
    }
    fn heads(&self, object: &str) -> Result<Vec<(ReplicaId, Head)>, StoreError> {
        layered_heads(&self.layers(), self.base()?, object)
    }
    fn entries(
        &self,
        object: &str,
        replica: ReplicaId,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Page, StoreError> {
        layered_entries(
            &self.layers(),
            self.base()?,
            object,
            replica,
            from,
            to,
            max_bytes,
        )
    }
    fn objects(
        &self,
        prefix: &str,
        start: &str,
        exclusive: bool,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        layered_objects(
            &self.layers(),
            self.base()?,
            prefix,
            start,
            exclusive,
            limit,
        )
    }
    fn feed(&self, after: u64, limit: usize) -> Result<Vec<FeedItem>, StoreError> {
        layered_feed(&self.layers(), self.base()?, after, limit)
    }
    fn feed_head(&self) -> Result<u64, StoreError> {
        if let Some((position, _)) = self.delta.feed.last_key_value() {
            return Ok(*position);
        }
        if let Some(position) = self.cache.feed_head {
            return Ok(position);
        }
        layered_feed_head(&self.layers(), self.base()?)
    }
    fn snapshot(&self, object: &str) -> Result<Option<Snapshot>, StoreError> {
        self.base()?.snapshot(object)
    }
    fn tombstone(&self, object: &str) -> Result<Option<Tombstone>, StoreError> {
        self.base()?.tombstone(object)
    }
    fn tombstones(
        &self,
        prefix: &str,
        start: &str,
        exclusive: bool,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.base()?.tombstones(prefix, start, exclusive, limit)
    }
}

impl<B: View, F: Fn() -> Result<B, StoreError>> Txn for Staging<'_, B, F> {
    fn create_object(&mut self, object: &str) -> Result<(), StoreError> {
        self.wrote = true;
        self.delta.objects.insert(object.to_owned());
        Ok(())
    }

    fn put_entries(
        &mut self,
        object: &str,
        replica: ReplicaId,
        entries: &[Entry],
    ) -> Result<(), StoreError> {
        self.wrote = true;
        let log = self.delta_log(object, replica);
        for entry in entries {
            if log.entries.is_empty() {
                log.first = entry.seq;
            } else if log.first + log.entries.len() as u64 != entry.seq {
                return Err(not_staged("an entry out of sequence"));
            }
            log.entries.push_back(entry.bytes.clone());
        }
        Ok(())
    }

    fn set_head(&mut self, object: &str, replica: ReplicaId, head: Head) -> Result<(), StoreError> {
        self.wrote = true;
        self.delta_log(object, replica).head = head;
        Ok(())
    }

    fn push_feed(
        &mut self,
        object: &str,
        replica: ReplicaId,
        first: u64,
        last: u64,
    ) -> Result<u64, StoreError> {
        self.wrote = true;
        let position = self.feed_head()? + 1;
        self.delta.feed.insert(
            position,
            FeedItem {
                position,
                object: object.to_owned(),
                replica,
                first,
                last,
                kind: FeedKind::Append,
            },
        );
        Ok(position)
    }

    fn remove_entries(&mut self, _: &str, _: ReplicaId, _: u64, _: u64) -> Result<(), StoreError> {
        Err(not_staged("dropping entries"))
    }
    fn remove_object(&mut self, _: &str) -> Result<(), StoreError> {
        Err(not_staged("removing an object"))
    }
    fn remove_head(&mut self, _: &str, _: ReplicaId) -> Result<(), StoreError> {
        Err(not_staged("removing a log head"))
    }
    fn remove_snapshot(&mut self, _: &str) -> Result<(), StoreError> {
        Err(not_staged("removing a snapshot"))
    }
    fn set_tombstone(&mut self, _: &str, _: &Tombstone) -> Result<(), StoreError> {
        Err(not_staged("a tombstone"))
    }
    fn set_snapshot(&mut self, _: &str, _: &VersionVector, _: &[u8]) -> Result<(), StoreError> {
        Err(not_staged("a snapshot"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic;
    use crate::memory::State;

    const A: ReplicaId = ReplicaId::from_u64(0xa);
    const B: ReplicaId = ReplicaId::from_u64(0xb);

    /// A borrowed base, as the tests keep writing to it between views.
    impl View for &State {
        fn object_exists(&self, object: &str) -> Result<bool, StoreError> {
            (**self).object_exists(object)
        }
        fn head(&self, object: &str, replica: ReplicaId) -> Result<Head, StoreError> {
            (**self).head(object, replica)
        }
        fn heads(&self, object: &str) -> Result<Vec<(ReplicaId, Head)>, StoreError> {
            (**self).heads(object)
        }
        fn entries(
            &self,
            object: &str,
            replica: ReplicaId,
            from: u64,
            to: u64,
            max_bytes: usize,
        ) -> Result<Page, StoreError> {
            (**self).entries(object, replica, from, to, max_bytes)
        }
        fn objects(
            &self,
            prefix: &str,
            start: &str,
            exclusive: bool,
            limit: usize,
        ) -> Result<Vec<String>, StoreError> {
            (**self).objects(prefix, start, exclusive, limit)
        }
        fn feed(&self, after: u64, limit: usize) -> Result<Vec<FeedItem>, StoreError> {
            (**self).feed(after, limit)
        }
        fn feed_head(&self) -> Result<u64, StoreError> {
            (**self).feed_head()
        }
        fn snapshot(&self, object: &str) -> Result<Option<Snapshot>, StoreError> {
            (**self).snapshot(object)
        }
        fn tombstone(&self, object: &str) -> Result<Option<Tombstone>, StoreError> {
            (**self).tombstone(object)
        }
        fn tombstones(
            &self,
            prefix: &str,
            start: &str,
            exclusive: bool,
            limit: usize,
        ) -> Result<Vec<String>, StoreError> {
            (**self).tombstones(prefix, start, exclusive, limit)
        }
    }

    fn entries(seqs: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        seqs.map(|seq| Entry::new(seq, format!("e{seq}").into_bytes()))
            .collect()
    }

    /// Stages appends over `pending` and `base` and returns what they wrote,
    /// as the writer does for one batch.
    fn stage(
        pending: &Overlay,
        base: &State,
        appends: &[(&str, ReplicaId, std::ops::RangeInclusive<u64>)],
    ) -> Overlay {
        let cache = WriterCache::default();
        let mut staging = Staging::new(pending, &cache, || Ok(base));
        for (object, replica, seqs) in appends {
            logic::append(&mut staging, object, *replica, &entries(seqs.clone())).unwrap();
        }
        staging.into_delta()
    }

    fn seqs(page: &Page) -> Vec<u64> {
        page.entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn reads_merge_the_overlay_over_the_base() {
        let mut base = State::default();
        logic::append(&mut base, "doc", A, &entries(1..=3)).unwrap();
        let mut pending = Overlay::default();
        pending.merge(stage(
            &pending,
            &base,
            &[("doc", A, 4..=6), ("new", B, 1..=2)],
        ));
        let view = Layered::new(&pending, &base);
        assert_eq!(
            seqs(&view.entries("doc", A, 2, 10, usize::MAX).unwrap()),
            [2, 3, 4, 5, 6]
        );
        assert_eq!(
            view.entries("doc", A, 5, 5, usize::MAX).unwrap().entries[0].bytes,
            b"e5"
        );
        assert_eq!(view.head("doc", A).unwrap().last, 6);
        assert!(view.object_exists("new").unwrap());
        assert_eq!(view.objects("", "", false, 10).unwrap(), ["doc", "new"]);
        assert_eq!(view.objects("", "doc", true, 10).unwrap(), ["new"]);
        let feed: Vec<u64> = view
            .feed(0, 10)
            .unwrap()
            .iter()
            .map(|i| i.position)
            .collect();
        assert_eq!(feed, [1, 2, 3]);
        assert_eq!(view.feed_head().unwrap(), 3);
        assert_eq!(
            view.heads("new").unwrap(),
            [(
                B,
                Head {
                    last: 2,
                    compacted: 0
                }
            )]
        );
    }

    #[test]
    fn entries_both_applied_and_pending_are_served_once() {
        // The applier has committed a batch to the base but not yet dropped
        // it from the overlay: readers must see each entry and item once.
        let mut base = State::default();
        logic::append(&mut base, "doc", A, &entries(1..=2)).unwrap();
        let mut pending = Overlay::default();
        pending.merge(stage(&pending, &base, &[("doc", A, 3..=5)]));
        logic::append(&mut base, "doc", A, &entries(3..=5)).unwrap();
        let view = Layered::new(&pending, &base);
        assert_eq!(
            seqs(&view.entries("doc", A, 1, 9, usize::MAX).unwrap()),
            [1, 2, 3, 4, 5]
        );
        let feed: Vec<u64> = view
            .feed(0, 10)
            .unwrap()
            .iter()
            .map(|i| i.position)
            .collect();
        assert_eq!(feed, [1, 2]);
        assert_eq!(view.objects("", "", false, 10).unwrap(), ["doc"]);
    }

    #[test]
    fn the_size_cap_spans_base_and_overlay() {
        let mut base = State::default();
        logic::append(&mut base, "doc", A, &entries(1..=2)).unwrap();
        let mut pending = Overlay::default();
        pending.merge(stage(&pending, &base, &[("doc", A, 3..=4)]));
        let view = Layered::new(&pending, &base);
        // Each entry is 2 bytes: 6 bytes hold three of them.
        let page = view.entries("doc", A, 1, 4, 6).unwrap();
        assert_eq!(seqs(&page), [1, 2, 3]);
        assert!(page.capped);
        let page = view.entries("doc", A, 3, 4, 1).unwrap();
        assert_eq!(seqs(&page), [3], "a page always holds one entry");
    }

    #[test]
    fn staging_checks_against_the_overlay_and_its_own_writes() {
        let base = State::default();
        let mut pending = Overlay::default();
        pending.merge(stage(&pending, &base, &[("doc", A, 1..=3)]));
        let cache = WriterCache::default();
        let mut staging = Staging::new(&pending, &cache, || Ok(&base));
        // A gap after the pending head, a conflict with a pending entry, a
        // re-delivery, then two appends to one log in the same batch.
        assert!(matches!(
            logic::append(&mut staging, "doc", A, &entries(5..=5)),
            Err(crate::AppendError::Gap { last: 3, .. })
        ));
        assert!(matches!(
            logic::append(&mut staging, "doc", A, &[Entry::new(2, b"other".to_vec())]),
            Err(crate::AppendError::Conflict { seq: 2, .. })
        ));
        let again = logic::append(&mut staging, "doc", A, &entries(2..=3)).unwrap();
        assert_eq!(again.appended, 0);
        let first = logic::append(&mut staging, "doc", A, &entries(3..=4)).unwrap();
        let second = logic::append(&mut staging, "doc", A, &entries(5..=6)).unwrap();
        assert_eq!((first.appended, first.position), (1, Some(2)));
        assert_eq!((second.appended, second.position), (2, Some(3)));
        pending.merge(staging.into_delta());
        let view = Layered::new(&pending, &base);
        assert_eq!(
            seqs(&view.entries("doc", A, 1, 9, usize::MAX).unwrap()),
            [1, 2, 3, 4, 5, 6]
        );
    }

    #[test]
    fn removing_an_applied_batch_leaves_the_rest() {
        let mut base = State::default();
        let mut pending = Overlay::default();
        let first = stage(&pending, &base, &[("doc", A, 1..=2)]);
        let batch = Batch {
            lsn: 1,
            appends: vec![WalAppendOwned {
                object: "doc".to_owned(),
                replica: A,
                position: 1,
                entries: entries(1..=2),
            }],
            heads: vec![Head {
                last: 2,
                compacted: 0,
            }],
            created: first.created_objects(),
            record_len: 1,
        };
        pending.merge(first);
        pending.merge(stage(&pending, &base, &[("doc", A, 3..=3)]));
        // The applier commits the first batch, then drops it.
        logic::append(&mut base, "doc", A, &entries(1..=2)).unwrap();
        pending.remove(&batch);
        assert!(pending.objects.is_empty());
        assert_eq!(pending.feed.keys().copied().collect::<Vec<_>>(), [2]);
        let view = Layered::new(&pending, &base);
        assert_eq!(
            seqs(&view.entries("doc", A, 1, 9, usize::MAX).unwrap()),
            [1, 2, 3]
        );
        assert_eq!(view.head("doc", A).unwrap().last, 3);
    }
}
