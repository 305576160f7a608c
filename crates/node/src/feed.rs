//! The change feed fan-out: one reader of the store's change feed for the
//! whole node, and wake-ups routed to the sync sessions that want an item.
//!
//! Without it every append woke every session, and each read the store's
//! feed for itself and skipped what its peer had not subscribed to: with
//! N clients each writing its own document, that is N² wake-ups and feed
//! items read (the `node` bench's `sync-writes-256` fell to half the
//! throughput of `sync-writes-16`). Here:
//!
//! - after an append, [`FeedHub::pull`] reads the new items once into a
//!   window of the latest items (concurrent pulls coalesce into one);
//! - it wakes only the sessions whose peer wants one of them (by object
//!   id for sessions subscribed to objects; by prefix otherwise; every
//!   session whose peer's interest is not known yet);
//! - a session reads the feed through [`SessionStore`], which serves
//!   [`Store::changes_since`] from the window with the items its peer does
//!   not want left out. The session skips those anyway, only advancing its
//!   feed position past them, so the window keeps the last item it scanned
//!   (real, and skipped by the session) to move that position just the same.
//!   A read from before the window goes to the store.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use converge_crdt::{ReplicaId, VersionVector};
use converge_store::{
    AppendError, AppendOutcome, CompactOutcome, DeleteError, DeleteOutcome, Entry, FeedItem,
    ReadError, Snapshot, SnapshotError, Store, StoreError, Tombstone,
};
use converge_sync::Interest;
use tokio::sync::Notify;

/// Feed items kept in memory for the sessions to read.
const WINDOW_ITEMS: usize = 16_384;
/// Items read from the store per call while pulling.
const PULL_PAGE: usize = 1024;
/// Least time between two pulls made only in case an append went
/// unannounced ([`FeedHub::pull_if_idle`]).
const LAZY_PULL_GAP: Duration = Duration::from_millis(100);

/// The node's change feed reader and the sessions waiting on it.
pub(crate) struct FeedHub {
    state: Mutex<FeedState>,
    /// Held by the one thread pulling now.
    puller: Mutex<()>,
    /// A pull was asked for since the puller last looked.
    pending: AtomicBool,
    next_id: AtomicU64,
    /// When the last pull happened.
    last_pull: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct FeedState {
    /// The latest items of the store's feed in position order: every item
    /// with a position in `floor + 1..=head` is here. Empty and unusable
    /// (`started` false) while no session listens.
    items: VecDeque<FeedItem>,
    floor: u64,
    head: u64,
    started: bool,
    /// Sessions whose peer's interest is not known: woken by every item.
    broad: HashMap<u64, Arc<Notify>>,
    /// Sessions subscribed by prefix.
    prefixed: HashMap<u64, (String, Arc<Notify>)>,
    /// Sessions subscribed to objects by id: object -> (session, wake).
    by_object: HashMap<String, Vec<(u64, Arc<Notify>)>>,
    /// The objects each such session named, to unregister it.
    objects_of: HashMap<u64, Vec<String>>,
}

impl FeedState {
    fn listeners(&self) -> usize {
        self.broad.len() + self.prefixed.len() + self.objects_of.len()
    }

    fn remove(&mut self, id: u64) {
        self.broad.remove(&id);
        self.prefixed.remove(&id);
        for object in self.objects_of.remove(&id).unwrap_or_default() {
            if let Some(list) = self.by_object.get_mut(&object) {
                list.retain(|(s, _)| *s != id);
                if list.is_empty() {
                    self.by_object.remove(&object);
                }
            }
        }
    }

    fn wake_all(&self) {
        for n in self.broad.values() {
            n.notify_one();
        }
        for (_, n) in self.prefixed.values() {
            n.notify_one();
        }
        for list in self.by_object.values() {
            for (_, n) in list {
                n.notify_one();
            }
        }
    }

    /// Wakes every session whose peer may want `object`.
    fn wake_for(&self, object: &str) {
        for n in self.broad.values() {
            n.notify_one();
        }
        for (prefix, n) in self.prefixed.values() {
            if object.starts_with(prefix.as_str()) {
                n.notify_one();
            }
        }
        if let Some(list) = self.by_object.get(object) {
            for (_, n) in list {
                n.notify_one();
            }
        }
    }
}

impl FeedHub {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(FeedState::default()),
            puller: Mutex::new(()),
            pending: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            last_pull: Mutex::new(None),
        }
    }

    fn state(&self) -> MutexGuard<'_, FeedState> {
        // Every update leaves the state whole between statements that can
        // panic (none of them allocate mid-way through an invariant).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new listener, woken by every item until its interest is known.
    pub(crate) fn subscribe(self: &Arc<Self>) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        self.state().broad.insert(id, wake.clone());
        Subscription {
            hub: self.clone(),
            id,
            wake,
        }
    }

    /// Reads the items the store added to its feed since the last pull and
    /// wakes the sessions that want them. Called after every append; calls
    /// made while another thread pulls are folded into that pull.
    pub(crate) fn pull(&self, store: &dyn Store) {
        self.pending.store(true, Ordering::SeqCst);
        loop {
            let Ok(guard) = self.puller.try_lock() else {
                // The thread pulling now sees `pending` and pulls again.
                return;
            };
            while self.pending.swap(false, Ordering::SeqCst) {
                self.pull_once(store);
            }
            drop(guard);
            // A caller that came between the last swap and the unlock
            // found the lock held: its pull is ours to make.
            if !self.pending.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    /// [`FeedHub::pull`], unless a pull happened in the last
    /// [`LAZY_PULL_GAP`]: sessions call it on their timers, so that an
    /// append nobody announced (a store written to directly) still reaches
    /// them, at the cost of one feed read per gap for the whole node.
    pub(crate) fn pull_if_idle(&self, store: &dyn Store) {
        let due = self
            .last_pull
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none_or(|at| at.elapsed() >= LAZY_PULL_GAP);
        if due {
            self.pull(store);
        }
    }

    fn pull_once(&self, store: &dyn Store) {
        *self
            .last_pull
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        let (started, head) = {
            let mut state = self.state();
            if state.listeners() == 0 {
                // Nobody reads the window: stop keeping it (a session that
                // comes later starts it again).
                state.started = false;
                state.items.clear();
                return;
            }
            (state.started, state.head)
        };
        if !started {
            match store.feed_head() {
                Ok(head) => {
                    let mut state = self.state();
                    state.items.clear();
                    state.floor = head;
                    state.head = head;
                    state.started = true;
                    // What changed before is unknown: let everyone look.
                    state.wake_all();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the change feed head");
                    self.state().wake_all();
                }
            }
            return;
        }
        let mut after = head;
        loop {
            let items = match store.changes_since(after, PULL_PAGE) {
                Ok(items) => items,
                Err(e) => {
                    // The window stays behind; sessions read what it has
                    // and the next pull tries again.
                    tracing::warn!(error = %e, "cannot read the change feed");
                    return;
                }
            };
            let full = items.len() == PULL_PAGE;
            let mut state = self.state();
            if !state.started || state.head != after {
                // Reset meanwhile (no listeners); the next pull restarts.
                return;
            }
            for item in items {
                after = item.position;
                state.wake_for(&item.object);
                state.head = item.position;
                state.items.push_back(item);
            }
            while state.items.len() > WINDOW_ITEMS {
                if let Some(old) = state.items.pop_front() {
                    state.floor = old.position;
                }
            }
            if !full {
                return;
            }
        }
    }

    /// Up to `limit` items after position `after` that `interest` wants,
    /// from the window, plus the last item scanned when it is not one of
    /// them (see the module docs); `None` when the window does not reach
    /// back to `after`.
    fn read(&self, after: u64, limit: usize, interest: &Interest) -> Option<Vec<FeedItem>> {
        let state = self.state();
        if !state.started || after < state.floor {
            return None;
        }
        let start = state.items.partition_point(|i| i.position <= after);
        let mut out = Vec::new();
        let mut last_skipped = None;
        for item in state.items.range(start..) {
            if out.len() >= limit {
                return Some(out);
            }
            if interest.matches(&item.object) {
                out.push(item.clone());
                last_skipped = None;
            } else {
                last_skipped = Some(item);
            }
        }
        if let Some(item) = last_skipped
            && out.len() < limit
        {
            out.push(item.clone());
        }
        Some(out)
    }
}

/// One session's registration with the [`FeedHub`]; unregisters on drop.
pub(crate) struct Subscription {
    hub: Arc<FeedHub>,
    id: u64,
    wake: Arc<Notify>,
}

impl Subscription {
    /// Completes when an item the session's peer may want was pulled.
    pub(crate) async fn changed(&self) {
        self.wake.notified().await;
    }

    /// The peer subscribed to `interest`: wake the session only for it.
    pub(crate) fn set_interest(&self, interest: &Interest) {
        let mut state = self.hub.state();
        state.remove(self.id);
        match interest {
            Interest::Prefix(prefix) => {
                state
                    .prefixed
                    .insert(self.id, (prefix.clone(), self.wake.clone()));
            }
            Interest::Objects(ids) => {
                for object in ids {
                    state
                        .by_object
                        .entry(object.clone())
                        .or_default()
                        .push((self.id, self.wake.clone()));
                }
                state.objects_of.insert(self.id, ids.clone());
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.state().remove(self.id);
    }
}

/// The store as one sync session sees it: the node's store, with the
/// change feed read from the [`FeedHub`]'s window and filtered by the
/// peer's interest once it is known (see the module docs).
#[derive(Clone)]
pub(crate) struct SessionStore {
    store: Arc<dyn Store>,
    hub: Arc<FeedHub>,
    interest: Option<Arc<Interest>>,
}

impl SessionStore {
    pub(crate) fn new(store: Arc<dyn Store>, hub: Arc<FeedHub>) -> Self {
        Self {
            store,
            hub,
            interest: None,
        }
    }

    /// The peer's interest, as its hello gave it.
    pub(crate) fn set_interest(&mut self, interest: Interest) {
        self.interest = Some(Arc::new(interest));
    }
}

impl Store for SessionStore {
    fn append(
        &self,
        object: &str,
        replica: ReplicaId,
        entries: &[Entry],
    ) -> Result<AppendOutcome, AppendError> {
        self.store.append(object, replica, entries)
    }

    fn append_many(
        &self,
        requests: &[converge_store::AppendRequest<'_>],
    ) -> Vec<Result<AppendOutcome, AppendError>> {
        self.store.append_many(requests)
    }

    fn read(
        &self,
        object: &str,
        replica: ReplicaId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, ReadError> {
        self.store.read(object, replica, from_seq, limit)
    }

    fn version_vector(&self, object: &str) -> Result<VersionVector, ReadError> {
        self.store.version_vector(object)
    }

    fn list_objects(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, ReadError> {
        self.store.list_objects(prefix, after, limit)
    }

    fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<FeedItem>, StoreError> {
        if let Some(interest) = &self.interest
            && let Some(items) = self.hub.read(after, limit, interest)
        {
            return Ok(items);
        }
        self.store.changes_since(after, limit)
    }

    fn feed_head(&self) -> Result<u64, StoreError> {
        self.store.feed_head()
    }

    fn put_snapshot(
        &self,
        object: &str,
        version_vector: &VersionVector,
        bytes: &[u8],
    ) -> Result<(), SnapshotError> {
        self.store.put_snapshot(object, version_vector, bytes)
    }

    fn latest_snapshot(&self, object: &str) -> Result<Option<Snapshot>, ReadError> {
        self.store.latest_snapshot(object)
    }

    fn compact(
        &self,
        object: &str,
        horizon: &VersionVector,
    ) -> Result<CompactOutcome, SnapshotError> {
        self.store.compact(object, horizon)
    }

    fn delete_object(&self, object: &str) -> Result<DeleteOutcome, DeleteError> {
        self.store.delete_object(object)
    }

    fn tombstone(&self, object: &str) -> Result<Option<Tombstone>, ReadError> {
        self.store.tombstone(object)
    }

    fn is_deleted(&self, object: &str) -> Result<bool, ReadError> {
        self.store.is_deleted(object)
    }

    fn list_tombstones(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, ReadError> {
        self.store.list_tombstones(prefix, after, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_store::MemoryStore;
    use futures_util::FutureExt as _;

    fn put(store: &MemoryStore, object: &str, seq: u64) {
        store
            .append(object, ReplicaId::from_u64(1), &[Entry::new(seq, vec![1])])
            .expect("append");
    }

    /// Reads the feed the way a session does: from `after`, page by page,
    /// keeping the items `interest` wants; returns them and the position
    /// reached.
    fn follow(store: &dyn Store, mut after: u64, interest: &Interest) -> (Vec<u64>, u64) {
        let mut wanted = Vec::new();
        loop {
            let items = store.changes_since(after, 4).expect("feed");
            for item in &items {
                assert!(item.position > after, "positions only grow");
                after = item.position;
                if interest.matches(&item.object) {
                    wanted.push(item.position);
                }
            }
            if items.len() < 4 {
                return (wanted, after);
            }
        }
    }

    #[test]
    fn a_session_reads_what_its_peer_wants_and_reaches_the_head() {
        let store = Arc::new(MemoryStore::new());
        let hub = Arc::new(FeedHub::new());
        let _sub = hub.subscribe();
        put(&store, "early", 1);
        hub.pull(&*store); // starts the window at position 1
        let interest = Interest::Objects(vec!["a".into(), "c".into()]);
        let mut view = SessionStore::new(store.clone(), hub.clone());
        view.set_interest(interest.clone());
        let mut seqs: HashMap<&str, u64> = HashMap::new();
        for object in ["a", "b", "b", "c", "b", "b", "b", "b", "a", "b", "b"] {
            let seq = seqs.entry(object).or_default();
            *seq += 1;
            put(&store, object, *seq);
        }
        hub.pull(&*store);
        for from in 1..=12 {
            let direct = follow(&*store, from, &interest);
            let filtered = follow(&view, from, &interest);
            assert_eq!(filtered, direct, "from position {from}");
        }
        // Only wanted items and the last one scanned come back.
        let page = view.changes_since(1, 100).expect("feed");
        let objects: Vec<&str> = page.iter().map(|i| i.object.as_str()).collect();
        assert_eq!(objects, ["a", "c", "a", "b"]);
        assert_eq!(page.last().map(|i| i.position), Some(12));
        // From before the window, the store answers, unfiltered.
        assert_eq!(view.changes_since(0, 100).expect("feed").len(), 12);
    }

    #[test]
    fn only_sessions_whose_peer_wants_an_object_are_woken() {
        let store = MemoryStore::new();
        let hub = Arc::new(FeedHub::new());
        let (a, b, all, unknown) = (
            hub.subscribe(),
            hub.subscribe(),
            hub.subscribe(),
            hub.subscribe(),
        );
        a.set_interest(&Interest::Objects(vec!["a".into()]));
        b.set_interest(&Interest::Objects(vec!["b".into()]));
        all.set_interest(&Interest::Prefix(String::new()));
        hub.pull(&store); // starts the window: wakes everyone once
        for s in [&a, &b, &all, &unknown] {
            assert!(s.changed().now_or_never().is_some());
        }
        put(&store, "a", 1);
        hub.pull(&store);
        assert!(a.changed().now_or_never().is_some(), "a wants it");
        assert!(b.changed().now_or_never().is_none(), "b does not");
        assert!(all.changed().now_or_never().is_some(), "a prefix of it");
        assert!(
            unknown.changed().now_or_never().is_some(),
            "interest unknown"
        );
        drop(a);
        put(&store, "a", 2);
        hub.pull(&store);
        assert!(b.changed().now_or_never().is_none());
        assert_eq!(hub.state().by_object.get("a").map(Vec::len), None);
    }

    #[test]
    fn without_listeners_no_window_is_kept() {
        let store = Arc::new(MemoryStore::new());
        let hub = Arc::new(FeedHub::new());
        put(&store, "a", 1);
        hub.pull(&*store);
        assert!(!hub.state().started);
        let sub = hub.subscribe();
        hub.pull(&*store);
        put(&store, "a", 2);
        hub.pull(&*store);
        {
            let state = hub.state();
            assert_eq!((state.floor, state.head, state.items.len()), (1, 2, 1));
        }
        drop(sub);
        hub.pull(&*store);
        let state = hub.state();
        assert!(!state.started && state.items.is_empty());
    }
}
