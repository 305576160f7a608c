//! The node-wide committer: every durable append of the node's documents
//! and sync sessions goes through one queue, drained by one blocking task
//! at a time into one [`Store::append_many`] call.
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
//! After each round the committer pulls the change feed once
//! ([`FeedHub::pull`]) for everything it appended, rather than once per
//! document on an async worker.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use converge_crdt::{ReplicaId, VersionVector};
use converge_store::{
    AppendError, AppendOutcome, AppendRequest, Entry, ReadError, Store, StoreError,
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
    /// Whether to read the object's version vector right after the append
    /// (what a document writer answers with).
    pub(crate) read_version: bool,
}

/// What the committer did with one [`Append`].
pub(crate) struct Committed {
    /// The append's result, as [`Store::append`] gives it.
    pub(crate) result: Result<AppendOutcome, AppendError>,
    /// The object's version vector after the round, if asked for and the
    /// append succeeded.
    pub(crate) version: Option<Result<VersionVector, ReadError>>,
}

/// A group of appends and the waiter for their results (in the same order).
struct Job {
    appends: Vec<Append>,
    done: oneshot::Sender<Vec<Committed>>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// A blocking task is draining the queue.
    running: bool,
}

/// The node's commit queue (see the module docs).
pub(crate) struct Committer {
    queue: Mutex<Queue>,
    /// Weak, so that once the last writer has its answer nothing here keeps
    /// the store open (a restarted node reopens the same files at once).
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
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.run());
        }
        match answer.await {
            Ok(results) => results,
            // The round panicked: nothing is known to be stored.
            Err(_) => (0..count)
                .map(|_| Committed {
                    result: Err(commit_failed("the commit task failed")),
                    version: None,
                })
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
                    self.0.queue().running = false;
                }
            }
        }
        let _running = Running(self);
        loop {
            let jobs = {
                let mut queue = self.queue();
                if queue.jobs.is_empty() {
                    queue.running = false;
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
            let mut out = Vec::with_capacity(job.appends.len());
            for a in &job.appends {
                let result = results.next().unwrap_or_else(|| {
                    Err(commit_failed("the store gave fewer results than appends"))
                });
                appended |= result.as_ref().is_ok_and(|o| o.appended > 0);
                let version =
                    (a.read_version && result.is_ok()).then(|| store.version_vector(&a.object));
                out.push(Committed { result, version });
            }
            answers.push((job.done, out));
        }
        if appended {
            // Tells sync sessions that the store gained entries.
            self.feed.pull(&*store);
        }
        drop(store);
        for (done, out) in answers {
            // A waiter that went away needs no answer.
            let _ = done.send(out);
        }
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

    fn append(object: &str, seqs: std::ops::RangeInclusive<u64>, read_version: bool) -> Append {
        Append {
            object: object.into(),
            replica: A,
            entries: seqs.map(|s| Entry::new(s, vec![s as u8])).collect(),
            read_version,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_append_gets_its_own_result_and_version() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let committer = Committer::new(&store, Arc::new(FeedHub::new()));
        let out = committer
            .commit(vec![
                append("x", 1..=2, true),
                append("x", 4..=4, true), // a gap: refused alone
                append("y", 1..=1, false),
                append("x", 3..=3, true),
            ])
            .await;
        let appended: Vec<_> = out
            .iter()
            .map(|c| c.result.as_ref().ok().map(|o| o.appended))
            .collect();
        assert_eq!(appended, [Some(2), None, Some(1), Some(1)]);
        assert!(matches!(out[1].result, Err(AppendError::Gap { .. })));
        let versions: Vec<_> = out
            .iter()
            .map(|c| {
                c.version
                    .as_ref()
                    .map(|v| v.as_ref().map(|v| v.get(A)).ok())
            })
            .collect();
        // Read after the whole round: x's later append shows in both.
        assert_eq!(versions, [Some(Some(3)), None, None, Some(Some(3))]);
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
                        let out = committer
                            .commit(vec![append(&object, seq..=seq, false)])
                            .await;
                        assert_eq!(out.len(), 1);
                        assert!(out[0].result.as_ref().is_ok_and(|o| o.appended == 1));
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
        assert!(!committer.queue().running || committer.queue().jobs.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_store_fails_the_appends_instead_of_hanging() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let committer = Committer::new(&store, Arc::new(FeedHub::new()));
        drop(store);
        let out = committer.commit(vec![append("x", 1..=1, true)]).await;
        assert!(matches!(out[0].result, Err(AppendError::Store(_))));
    }
}
