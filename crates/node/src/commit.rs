//! The node-wide committer: every durable append of the node's documents
//! and sync sessions goes through one queue, drained by at most
//! [`PIPELINE`] blocking tasks at a time, each taking everything queued
//! into one [`Store::append_many`] call.
//!
//! Before it, each document batch took a blocking thread of its own that
//! sat in the store's group commit, and every incoming frame of a sync
//! session moved the session to a blocking thread and back: with 256
//! writing clients, ~45% of the node's CPU went to those hand-offs (the
//! `node` bench's `http-writes-256`). Now a writer queues its appends and
//! awaits a oneshot; while commits keep coming the one committer task keeps
//! draining (no hand-off per commit), and the more writers wait, the more
//! each `append_many` (one log write and one sync, on a backend that
//! batches) carries.
//!
//! Two tasks rather than one keep the store busy: while one waits for its
//! sync, the other hands the store the next batch, which a backend with
//! group commit writes as soon as the sync is done, instead of idling
//! while the first task answers its writers and comes back. The order of
//! appends to one log is kept all the same: a document has one batch in
//! flight at a time, and a sync session one message's appends.
//!
//! After each round the committer pulls the change feed once
//! ([`FeedHub::pull`]) for everything it appended, rather than once per
//! document on an async worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use converge_crdt::{ReplicaId, VersionVector};
use converge_store::{
    AppendError, AppendOutcome, AppendRequest, CompactOutcome, DeleteError, DeleteOutcome, Entry,
    FeedItem, ReadError, Snapshot, SnapshotError, Store, StoreError, Tombstone, validate_object_id,
};
use tokio::sync::oneshot;

use crate::feed::FeedHub;

/// One log's append, as queued.
pub(crate) struct Append {
    /// The object.
    pub(crate) object: String,
    /// The replica whose log grows.
    pub(crate) replica: ReplicaId,
    /// Entries with consecutive seqs.
    pub(crate) entries: Vec<Entry>,
}

/// What the committer did with one [`Append`], as [`Store::append`]
/// answers.
pub(crate) type Committed = Result<AppendOutcome, AppendError>;

/// A group of appends and the waiter for their results (in the same order).
struct Job {
    appends: Vec<Append>,
    done: oneshot::Sender<Vec<Committed>>,
}

/// Most blocking tasks draining the queue at once (see the module docs).
const PIPELINE: usize = 2;

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// Blocking tasks draining the queue now.
    running: usize,
}

/// The node's commit queue (see the module docs).
pub(crate) struct Committer {
    queue: Mutex<Queue>,
    /// Weak, so that once the last writer has its answer nothing here keeps
    /// the store open (a closed node's store is reopened at once).
    store: Weak<dyn Store>,
    feed: Arc<FeedHub>,
}

impl Committer {
    pub(crate) fn new(store: &Arc<dyn Store>, feed: Arc<FeedHub>) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Queue::default()),
            store: Arc::downgrade(store),
            feed,
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue is a plain list and a flag, whole between statements.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `appends` durably, in order, together with whatever else is
    /// queued, and returns their results in the same order. Each append is
    /// atomic and validated on its own, as [`Store::append_many`] does.
    ///
    /// Cancelling the future does not cancel the appends.
    pub(crate) async fn commit(self: &Arc<Self>, appends: Vec<Append>) -> Vec<Committed> {
        let count = appends.len();
        let (done, answer) = oneshot::channel();
        let start = {
            let mut queue = self.queue();
            queue.jobs.push(Job { appends, done });
            let start = queue.running < PIPELINE;
            queue.running += usize::from(start);
            start
        };
        if start {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.run());
        }
        match answer.await {
            Ok(results) => results,
            // The round panicked: nothing is known to be stored.
            Err(_) => (0..count)
                .map(|_| Err(commit_failed("the commit task failed")))
                .collect(),
        }
    }

    /// Drains the queue until it is empty (on a blocking thread).
    fn run(&self) {
        // Should a round panic, the next `commit` starts a new task; the
        // jobs of the failed round get an error (their senders drop).
        struct Running<'a>(&'a Committer);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.queue().running -= 1;
                }
            }
        }
        let _running = Running(self);
        loop {
            let jobs = {
                let mut queue = self.queue();
                if queue.jobs.is_empty() {
                    queue.running -= 1;
                    return;
                }
                std::mem::take(&mut queue.jobs)
            };
            self.round(jobs);
        }
    }

    /// One `append_many` for every queued append, then the answers.
    fn round(&self, jobs: Vec<Job>) {
        let Some(store) = self.store.upgrade() else {
            // The node is gone; its writers went with it.
            return;
        };
        let requests: Vec<AppendRequest<'_>> = jobs
            .iter()
            .flat_map(|j| &j.appends)
            .map(|a| AppendRequest::new(&a.object, a.replica, &a.entries))
            .collect();
        let mut results = store.append_many(&requests).into_iter();
        drop(requests);
        let mut appended = false;
        let mut answers = Vec::with_capacity(jobs.len());
        for job in jobs {
            let out: Vec<Committed> = (0..job.appends.len())
                .map(|_| {
                    let result = results.next().unwrap_or_else(|| {
                        Err(commit_failed("the store gave fewer results than appends"))
                    });
                    appended |= result.as_ref().is_ok_and(|o| o.appended > 0);
                    result
                })
                .collect();
            answers.push((job.done, out));
        }
        if appended {
            // Tells sync sessions that the store gained entries.
            self.feed.pull(&*store);
        }
        // Before the answers: a writer that has its answer may close the
        // node and reopen its store at once, which fails while the store
        // is still held here.
        drop(store);
        for (done, out) in answers {
            // A waiter that went away needs no answer.
            let _ = done.send(out);
        }
    }
}

/// A store for one call of a sync session that writes entries without
/// blocking: an append is checked against what the store holds and
/// answered as the store would answer it, but only recorded
/// ([`Deferring::into_appends`]); the driver commits the recorded appends
/// through the [`Committer`] and sends nothing the session queued (its
/// acks, its checkpoints) before they are durable. Everything else goes to
/// the wrapped store.
///
/// The answer is what the store would say unless another writer changes
/// the log in between: a gap it reports may have been filled meanwhile
/// (the session then asks for entries it holds, which is harmless); and
/// a conflict with entries not yet durable when it checked shows only
/// when committing, where the driver drops the connection without
/// acknowledging anything.
pub(crate) struct Deferring<'a> {
    inner: &'a dyn Store,
    state: Mutex<Deferred>,
}

#[derive(Default)]
struct Deferred {
    appends: Vec<Append>,
    /// (object, replica) -> (last seq in the store, last seq with the
    /// recorded appends).
    heads: HashMap<(String, ReplicaId), (u64, u64)>,
}

impl<'a> Deferring<'a> {
    pub(crate) fn new(inner: &'a dyn Store) -> Self {
        Self {
            inner,
            state: Mutex::new(Deferred::default()),
        }
    }

    /// The appends recorded, in call order, to commit.
    pub(crate) fn into_appends(self) -> Vec<Append> {
        self.state
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .appends
    }

    /// Whether the store holds `entries` up to seq `upto` with other bytes:
    /// the conflict [`Store::append`] would report, if any.
    fn conflict(
        &self,
        object: &str,
        replica: ReplicaId,
        entries: &[Entry],
        upto: u64,
    ) -> Option<u64> {
        let mut want = entries.iter().take_while(|e| e.seq <= upto).peekable();
        while let Some(first) = want.peek() {
            let held = match self.inner.read(object, replica, first.seq, 1024) {
                Ok(held) if !held.is_empty() => held,
                // Compacted away (held through the snapshot), or not
                // readable now: the committer's append decides.
                _ => return None,
            };
            for h in held {
                match want.next_if(|e| e.seq == h.seq) {
                    Some(e) if e.bytes != h.bytes => return Some(e.seq),
                    Some(_) => {}
                    None => return None,
                }
            }
        }
        None
    }
}

impl Store for Deferring<'_> {
    fn append(
        &self,
        object: &str,
        replica: ReplicaId,
        entries: &[Entry],
    ) -> Result<AppendOutcome, AppendError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(AppendOutcome::default());
        };
        validate_object_id(object)?;
        let (first, last) = (first.seq, last.seq);
        let key = (object.to_owned(), replica);
        let known = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .heads
            .get(&key)
            .copied();
        let (stored, head) = match known {
            Some(heads) => heads,
            None => {
                let stored = match self.inner.version_vector(object) {
                    Ok(vv) => vv.get(replica),
                    Err(ReadError::UnknownObject { .. }) => 0,
                    Err(ReadError::Deleted { object }) => {
                        return Err(AppendError::Deleted { object });
                    }
                    Err(ReadError::ObjectId(e)) => return Err(e.into()),
                    Err(ReadError::Store(e)) => return Err(e.into()),
                    Err(e) => {
                        return Err(AppendError::Store(StoreError::Backend {
                            context: "reading a version vector",
                            source: e.to_string().into(),
                        }));
                    }
                };
                (stored, stored)
            }
        };
        if first > head.saturating_add(1) {
            return Err(AppendError::Gap {
                object: object.to_owned(),
                replica,
                last: head,
                found: first,
            });
        }
        if first <= stored
            && let Some(seq) = self.conflict(object, replica, entries, stored)
        {
            return Err(AppendError::Conflict {
                object: object.to_owned(),
                replica,
                seq,
            });
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.heads.insert(key, (stored, head.max(last)));
        // Entries past what the store held are committed, including any
        // already recorded in this call: the store then finds a conflict
        // with those, or skips them.
        if last > stored {
            state.appends.push(Append {
                object: object.to_owned(),
                replica,
                entries: entries.to_vec(),
            });
        }
        let mut outcome = AppendOutcome::default();
        outcome.appended = last.saturating_sub(head);
        Ok(outcome)
    }

    fn read(
        &self,
        object: &str,
        replica: ReplicaId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, ReadError> {
        self.inner.read(object, replica, from_seq, limit)
    }

    fn version_vector(&self, object: &str) -> Result<VersionVector, ReadError> {
        self.inner.version_vector(object)
    }

    fn list_objects(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, ReadError> {
        self.inner.list_objects(prefix, after, limit)
    }

    fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<FeedItem>, StoreError> {
        self.inner.changes_since(after, limit)
    }

    fn feed_head(&self) -> Result<u64, StoreError> {
        self.inner.feed_head()
    }

    fn put_snapshot(
        &self,
        object: &str,
        version_vector: &VersionVector,
        bytes: &[u8],
    ) -> Result<(), SnapshotError> {
        self.inner.put_snapshot(object, version_vector, bytes)
    }

    fn latest_snapshot(&self, object: &str) -> Result<Option<Snapshot>, ReadError> {
        self.inner.latest_snapshot(object)
    }

    fn compact(
        &self,
        object: &str,
        horizon: &VersionVector,
    ) -> Result<CompactOutcome, SnapshotError> {
        self.inner.compact(object, horizon)
    }

    fn delete_object(&self, object: &str) -> Result<DeleteOutcome, DeleteError> {
        self.inner.delete_object(object)
    }

    fn tombstone(&self, object: &str) -> Result<Option<Tombstone>, ReadError> {
        self.inner.tombstone(object)
    }

    fn list_tombstones(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, ReadError> {
        self.inner.list_tombstones(prefix, after, limit)
    }
}

/// The error of an append whose outcome is unknown.
fn commit_failed(why: &str) -> AppendError {
    AppendError::Store(StoreError::Backend {
        context: "committing appends",
        source: why.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_store::MemoryStore;

    const A: ReplicaId = ReplicaId::from_u64(0xa);

    fn append(object: &str, seqs: std::ops::RangeInclusive<u64>) -> Append {
        Append {
            object: object.into(),
            replica: A,
            entries: seqs.map(|s| Entry::new(s, vec![s as u8])).collect(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_append_gets_its_own_result() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let committer = Committer::new(&store, Arc::new(FeedHub::new()));
        let out = committer
            .commit(vec![
                append("x", 1..=2),
                append("x", 4..=4), // a gap: refused alone
                append("y", 1..=1),
                append("x", 3..=3),
            ])
            .await;
        let appended: Vec<_> = out
            .iter()
            .map(|c| c.as_ref().ok().map(|o| o.appended))
            .collect();
        assert_eq!(appended, [Some(2), None, Some(1), Some(1)]);
        assert!(matches!(out[1], Err(AppendError::Gap { .. })));
        assert_eq!(store.version_vector("x").expect("x").get(A), 3);
        assert_eq!(store.version_vector("y").expect("y").get(A), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_all_get_answers_in_order_per_log() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let committer = Committer::new(&store, Arc::new(FeedHub::new()));
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let committer = committer.clone();
                tokio::spawn(async move {
                    let object = format!("doc{i}");
                    for seq in 1..=20 {
                        let out = committer.commit(vec![append(&object, seq..=seq)]).await;
                        assert_eq!(out.len(), 1);
                        assert!(out[0].as_ref().is_ok_and(|o| o.appended == 1));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("writer");
        }
        for i in 0..64 {
            let vv = store.version_vector(&format!("doc{i}")).expect("doc");
            assert_eq!(vv.get(A), 20);
        }
        assert!(committer.queue().jobs.is_empty());
        assert!(committer.queue().running <= PIPELINE);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_store_fails_the_appends_instead_of_hanging() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let committer = Committer::new(&store, Arc::new(FeedHub::new()));
        drop(store);
        let out = committer.commit(vec![append("x", 1..=1)]).await;
        assert!(matches!(out[0], Err(AppendError::Store(_))));
    }

    fn entries(seqs: std::ops::RangeInclusive<u64>, byte: u8) -> Vec<Entry> {
        seqs.map(|s| Entry::new(s, vec![byte, s as u8])).collect()
    }

    type Outcome = Result<u64, String>;

    fn outcome(r: Result<AppendOutcome, AppendError>) -> Outcome {
        r.map(|o| o.appended).map_err(|e| match e {
            AppendError::Gap { .. } => "gap".into(),
            AppendError::Conflict { seq, .. } => format!("conflict at {seq}"),
            AppendError::Deleted { .. } => "deleted".into(),
            other => other.to_string(),
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deferred_appends_answer_and_store_as_direct_ones() {
        // Each call: (object, replica, entries); the same calls go to a
        // store directly and, through `Deferring` and the committer, to
        // another holding the same start.
        let b = ReplicaId::from_u64(0xb);
        let calls: Vec<(&str, ReplicaId, Vec<Entry>)> = vec![
            ("x", A, entries(3..=4, 1)),    // extends the stored 1..=2
            ("x", A, entries(7..=7, 1)),    // a gap
            ("x", A, entries(2..=5, 1)),    // overlaps stored and recorded, extends
            ("x", A, entries(1..=2, 1)),    // all held already
            ("x", A, entries(2..=3, 9)),    // different bytes for a stored seq
            ("x", b, entries(1..=2, 1)),    // another log of the object
            ("new", A, entries(1..=1, 1)),  // an object not stored yet
            ("new", A, entries(3..=3, 1)),  // a gap in it
            ("gone", A, entries(2..=2, 1)), // a deleted object
            ("x", A, Vec::new()),           // nothing
        ];
        let start = |store: &dyn Store| {
            store.append("x", A, &entries(1..=2, 1)).expect("x");
            store.append("gone", A, &entries(1..=1, 1)).expect("gone");
            store.delete_object("gone").expect("delete");
        };
        let direct = MemoryStore::new();
        start(&direct);
        let expected: Vec<Outcome> = calls
            .iter()
            .map(|(o, r, e)| outcome(direct.append(o, *r, e)))
            .collect();
        assert_eq!(
            expected,
            [
                Ok(2),
                Err("gap".into()),
                Ok(1),
                Ok(0),
                Err("conflict at 2".into()),
                Ok(2),
                Ok(1),
                Err("gap".into()),
                Err("deleted".into()),
                Ok(0),
            ]
        );
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        start(&*store);
        let deferring = Deferring::new(&*store);
        let answered: Vec<Outcome> = calls
            .iter()
            .map(|(o, r, e)| outcome(deferring.append(o, *r, e)))
            .collect();
        assert_eq!(answered, expected);
        // Nothing written yet.
        assert_eq!(store.version_vector("x").expect("x").get(A), 2);
        assert!(matches!(
            store.version_vector("new"),
            Err(ReadError::UnknownObject { .. })
        ));
        let committer = Committer::new(&store, Arc::new(FeedHub::new()));
        let results = committer.commit(deferring.into_appends()).await;
        assert!(results.iter().all(Result::is_ok));
        for object in ["x", "new"] {
            assert_eq!(
                store.version_vector(object).expect("vv"),
                direct.version_vector(object).expect("vv"),
                "{object}"
            );
            for r in [A, b] {
                assert_eq!(
                    store.read(object, r, 1, 100).expect("read"),
                    direct.read(object, r, 1, 100).expect("read"),
                    "{object}/{r}"
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conflict_that_shows_only_when_committing_is_reported() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let committer = Committer::new(&store, Arc::new(FeedHub::new()));
        let deferring = Deferring::new(&*store);
        assert_eq!(outcome(deferring.append("x", A, &entries(1..=1, 1))), Ok(1));
        // Another writer stores other bytes at that seq meanwhile.
        store
            .append("x", A, &entries(1..=1, 2))
            .expect("other writer");
        let results = committer.commit(deferring.into_appends()).await;
        assert!(matches!(
            results[0],
            Err(AppendError::Conflict { seq: 1, .. })
        ));
    }

    mod deferring_matches_the_store {
        use super::*;
        use proptest::prelude::*;

        const LOGS: [(&str, u64); 3] = [("x", 0xa), ("x", 0xb), ("y", 0xa)];

        /// A call: (object index, replica, first seq, length, other bytes).
        type Call = (usize, u64, u64, u64, bool);

        /// The bytes of entry `seq`; "other" bytes only where the store
        /// held the seq before the session began (`Deferring` checks
        /// conflicts against the store, and leaves those with entries
        /// recorded in the same call to the committer: documented above).
        fn entry(seq: u64, other: bool, held: u64) -> Entry {
            if other && seq <= held {
                Entry::new(seq, vec![seq as u8, 0xee])
            } else {
                Entry::new(seq, vec![seq as u8])
            }
        }

        fn held(heads: &[u64; 3], object: &str, replica: u64) -> u64 {
            LOGS.iter()
                .position(|&(o, r)| o == object && r == replica)
                .map_or(0, |i| heads[i])
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            /// Whatever a session's calls are, `Deferring` answers each as
            /// the store would, writes nothing itself, and what it
            /// recorded, once committed, leaves the store as direct
            /// appends would.
            #[test]
            fn for_any_calls(
                heads in prop::array::uniform3(0u64..=3),
                calls in prop::collection::vec(
                    (0usize..4, prop_oneof![Just(0xau64), Just(0xbu64)], 1u64..=7, 0u64..=3, prop::bool::weighted(0.2)),
                    1..12,
                ),
            ) {
                let objects = ["x", "y", "new", "gone"];
                let start = |store: &dyn Store| {
                    for (&(object, replica), &head) in LOGS.iter().zip(&heads) {
                        if head > 0 {
                            let entries: Vec<Entry> = (1..=head).map(|s| entry(s, false, 0)).collect();
                            store.append(object, ReplicaId::from_u64(replica), &entries).expect("start");
                        }
                    }
                    store.append("gone", A, &[entry(1, false, 0)]).expect("gone");
                    store.delete_object("gone").expect("delete");
                };
                let calls: Vec<(&str, ReplicaId, Vec<Entry>)> = calls
                    .iter()
                    .map(|&(o, r, first, len, other): &Call| {
                        let object = objects[o];
                        let stored = held(&heads, object, r);
                        let entries = (first..first + len).map(|s| entry(s, other, stored)).collect();
                        (object, ReplicaId::from_u64(r), entries)
                    })
                    .collect();
                let direct = MemoryStore::new();
                start(&direct);
                let expected: Vec<Outcome> =
                    calls.iter().map(|(o, r, e)| outcome(direct.append(o, *r, e))).collect();

                let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
                start(&*store);
                let before = store.feed_head().expect("feed head");
                let deferring = Deferring::new(&*store);
                let answered: Vec<Outcome> =
                    calls.iter().map(|(o, r, e)| outcome(deferring.append(o, *r, e))).collect();
                prop_assert_eq!(&answered, &expected);
                prop_assert_eq!(store.feed_head().expect("feed head"), before, "wrote before committing");

                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let committer = Committer::new(&store, Arc::new(FeedHub::new()));
                let results = runtime.block_on(committer.commit(deferring.into_appends()));
                prop_assert!(results.iter().all(Result::is_ok), "{:?}", results);
                for object in ["x", "y", "new"] {
                    let vv = |s: &dyn Store| s.version_vector(object).ok();
                    prop_assert_eq!(vv(&*store), vv(&direct), "{}", object);
                    for r in [0xa, 0xb] {
                        let r = ReplicaId::from_u64(r);
                        let read = |s: &dyn Store| s.read(object, r, 1, 100).ok();
                        prop_assert_eq!(read(&*store), read(&direct), "{}/{}", object, r);
                    }
                }
            }
        }
    }
}
