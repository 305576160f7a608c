//! [`RedbStore`]: the embedded default backend, one redb file, no server.
//!
//! ## Tables (see `FORMAT.md`)
//!
//! | table       | key                          | value                    |
//! |-------------|------------------------------|--------------------------|
//! | `meta`      | `&str` (`"format"`)          | meta record (magic, version) |
//! | `objects`   | object id `&str`             | `()`                     |
//! | `heads`     | `(object, replica)`          | head record (last, compacted) |
//! | `log`       | `(object, replica, first seq)` | chunk record (crc, entries) |
//! | `feed`      | position `u64`               | feed record              |
//! | `snapshots` | object id `&str`             | snapshot record          |
//! | `tombstones`| object id `&str`             | tombstone record (format 2) |
//!
//! Next to the database file lives its write-ahead log (`<file>-wal`, see
//! [`crate::wal`]): appends are durable once their log record is synced, and
//! redb is synced only at checkpoints.
//!
//! ## Group commit
//!
//! Every write goes through one dedicated writer thread. A caller checks its
//! input, queues a job and blocks on its own reply slot. The writer takes
//! *all* queued jobs (up to a bound) and makes them durable with one sync.
//! While it syncs, new jobs queue up and form the next batch, so under
//! concurrency many appends share one sync, and no caller returns before its
//! own data is durable. Before starting a batch, the writer waits briefly
//! (at most 200 µs and a quarter of the last commit) until as many jobs are
//! queued as callers were active at the last answer, so that writers in a
//! loop all share each sync instead of splitting into two alternating groups.
//!
//! A [`Store::append_many`] call is one job: its requests are checked on the
//! caller's thread, then against the store in request order by the writer,
//! and all accepted ones go into the same log record as the rest of the
//! batch, so one call costs one write and one sync (shared with concurrent
//! appenders), and after a crash each request is wholly there or not.
//!
//! A caller alone (nothing queued, nothing being committed, and at most one
//! caller active at the last commit) commits its own job on its own thread,
//! through the same path: the hand-off to the writer thread and back costs
//! two thread wake-ups, which on a loaded machine cost as much as the sync.
//!
//! ## Appends: the log, the overlay and the applier
//!
//! A batch of appends never touches redb on the caller's path (redb's
//! B-tree inserts and commit were nearly all of an append's CPU). The writer
//! checks each append (gap, duplicate, conflict, deleted object) against
//! redb plus the [`Overlay`] of records synced but not yet applied, with its
//! own cache of the heads it wrote in front, so a steady writer reads no
//! redb page; it writes the batch's new entries as one write-ahead log
//! record, syncs it, adds the batch to the overlay (now readers see it) and
//! answers. The applier thread folds queued records into redb, many per
//! transaction, without a sync (writing what the writer checked as it is:
//! entries, heads, feed items; only replay on open checks records again),
//! then drops them from the overlay; every
//! [`BACKGROUND_CHECKPOINT_BYTES`] of log its commit is durable instead (a
//! checkpoint), so that when the log is full and must rewind, little is left
//! to sync. Readers lock the overlay, then open a redb snapshot: whatever
//! left the overlay is in that snapshot, so no acknowledged append is missed.
//!
//! A batch that does more than append (snapshot, compaction, deletion), or
//! whose record is too large for the log, waits for the applier to drain the
//! overlay, is applied in one redb transaction and committed durably (a
//! checkpoint). Each job checks everything before writing anything, so a job
//! rejected for its input (a gap, a conflict) leaves the batch untouched and
//! only its own caller sees the error. If storage fails after a job started
//! writing, nothing of the batch is written and every caller in it gets the
//! error. If the applier fails, redb no longer follows the log: writes are
//! refused until the store is reopened, which replays the log.

use std::collections::VecDeque;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use converge_crdt::{ReplicaId, VersionVector};
use redb::{
    Database, DatabaseError, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, StorageBackend, Table, TableDefinition, WriteTransaction,
};

use crate::format::{
    self, CHECKPOINT_KEY, Checkpoint, FORMAT_VERSION, FeedRecord, Head, Meta,
    OLDEST_FORMAT_VERSION, WalAppend, WalAppendOwned,
};
use crate::handoff::{self, Answer, Board};
use crate::logic::{self, Page, Txn, View};
use crate::overlay::{Batch, Layered, Overlay, Staging, WriterCache};
use crate::wal::{self, Wal, WalFile};
use crate::{
    AppendError, AppendOutcome, AppendRequest, CompactOutcome, DeleteError, DeleteOutcome, Entry,
    FeedItem, FeedKind, ReadError, Snapshot, SnapshotError, Store, StoreConfig, StoreError,
    Tombstone,
};

type ObjectKey = &'static str;
type HeadKey = (&'static str, u64);
type LogKey = (&'static str, u64, u64);
type Bytes = &'static [u8];

const META: TableDefinition<'_, &str, Bytes> = TableDefinition::new("meta");
const OBJECTS: TableDefinition<'_, ObjectKey, ()> = TableDefinition::new("objects");
const HEADS: TableDefinition<'_, HeadKey, Bytes> = TableDefinition::new("heads");
const LOG: TableDefinition<'_, LogKey, Bytes> = TableDefinition::new("log");
const FEED: TableDefinition<'_, u64, Bytes> = TableDefinition::new("feed");
const SNAPSHOTS: TableDefinition<'_, ObjectKey, Bytes> = TableDefinition::new("snapshots");
const TOMBSTONES: TableDefinition<'_, ObjectKey, Bytes> = TableDefinition::new("tombstones");
const TABLE_NAMES: [&str; 7] = [
    "meta",
    "objects",
    "heads",
    "log",
    "feed",
    "snapshots",
    "tombstones",
];

/// The key of the meta record in the `meta` table.
const FORMAT_KEY: &str = "format";

/// How many of the latest change feed items are verified on open.
const TAIL_CHECK_ITEMS: u64 = 64;
/// How many entries of each of those items are verified on open.
const TAIL_CHECK_ENTRIES: u64 = 16;
/// Entries a read reserves room for up front (a page may hold more).
const PAGE_RESERVE: usize = 4096;

/// Bounds on one group commit, so one batch cannot hold unbounded memory.
const MAX_BATCH_JOBS: usize = 1024;
const MAX_BATCH_BYTES: usize = 64 << 20;

/// How long the writer may wait for active callers to join a batch (see
/// `gather`): at most this, and at most 1/`GATHER_SHARE` of the last commit.
const GATHER_MAX: Duration = Duration::from_micros(200);
const GATHER_SHARE: u32 = 4;

/// Log bytes the applier may hold unapplied before appends wait for it, so
/// that the overlay's memory stays bounded when redb falls behind.
const MAX_PENDING_BYTES: usize = 32 << 20;
/// Log records the applier folds into one redb transaction, at most.
const APPLY_MAX_BATCHES: usize = 1024;
/// How long the applier, woken by a first record, waits for more before
/// starting a transaction (unless someone waits for it, or enough is
/// queued): a redb transaction costs tens of thousands of instructions
/// however little it holds, and a single writer with fast syncs queued one
/// record per transaction, on the two cores its appends need too.
const APPLY_GATHER: Duration = Duration::from_millis(1);
/// Records, or log bytes, queued that start the applier's transaction
/// without waiting out [`APPLY_GATHER`].
const APPLY_GATHER_BATCHES: usize = 64;
const APPLY_GATHER_BYTES: usize = 1 << 20;
/// Log bytes applied without a sync after which the applier's next commit
/// is durable (a checkpoint): redb's dirty pages are then flushed in the
/// background, and a full log rewinds with little left to sync.
const BACKGROUND_CHECKPOINT_BYTES: usize = (wal::CAPACITY / 4) as usize;

/// The embedded default [`Store`]: one redb file, crash-safe, no server.
///
/// Writes are durable when they return; concurrent writers share one disk
/// sync (see the module docs). Reads run on the caller's thread against the
/// latest committed state and never see undurable data.
///
/// The store is two files: the redb database at the path given, and its
/// write-ahead log next to it, at the same path with `-wal` appended. Keep
/// them together: the log may hold acknowledged appends that the database
/// does not hold durably yet (they are replayed on open).
///
/// Only one process may have a store open; a second gets
/// [`StoreError::Locked`].
pub struct RedbStore {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    applier: Option<JoinHandle<()>>,
}

struct Shared {
    db: Database,
    config: StoreConfig,
    /// Durable transactions committed by the writer.
    commits: AtomicU64,
    /// Write jobs (appends, snapshots, compactions) answered by the writer.
    jobs: AtomicU64,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// What callers blocked on their job's answer wait on.
    answers: Arc<Board>,
    /// The write-ahead log and the commit path: held by whoever commits
    /// (the writer thread, or a caller committing its own job inline).
    writer: Mutex<Writer>,
    /// Callers seen active at the last commit (its jobs plus those queued
    /// then): a caller commits inline only while this is at most 1.
    active: AtomicUsize,
    /// Appends durable in the log but not yet applied to redb, for reads.
    overlay: RwLock<Overlay>,
    /// The applier's work queue and progress.
    apply: Mutex<ApplyState>,
    /// Signalled when work is queued for the applier and when it progresses.
    apply_cv: Condvar,
}

/// The applier's work: synced log records to fold into redb, in LSN order.
#[derive(Default)]
struct ApplyState {
    /// Records queued, oldest first; the applier drops them once applied.
    batches: VecDeque<Arc<Batch>>,
    /// Their total size in the log.
    bytes: usize,
    /// The last LSN redb holds durably (its checkpoint record).
    durable: u64,
    /// Log bytes applied to redb since its last durable commit.
    undurable: usize,
    /// Why applying failed: redb no longer follows the log, so every write
    /// is refused until the store is reopened (which replays the log).
    failed: Option<String>,
    /// Set on close: the applier exits once the queue is empty.
    closing: bool,
    /// Set while someone waits for the applier's progress: it then applies
    /// what is queued at once instead of gathering more.
    hurry: bool,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Set by `Drop`: the writer finishes the queue and exits.
    closing: bool,
    /// Set when the writer has exited (also if it panicked): submits fail fast.
    stopped: bool,
    /// How many queued jobs the waiting writer wants before it is woken:
    /// 1 when it is idle, the batch it gathers for (see `gather`), and 0
    /// while it is busy (it looks at the queue when it is done). Without
    /// this, every caller joining a gathering batch woke the writer only for
    /// it to find the batch still short and sleep again.
    want: usize,
}

struct Job {
    op: Op,
    reply: Answer<Reply>,
}

enum Op {
    Append(OwnedAppend),
    /// The requests of one [`Store::append_many`] call that passed the
    /// caller's checks: one job, so they share one log record and one sync.
    AppendMany(Vec<OwnedAppend>),
    PutSnapshot {
        object: String,
        version_vector: VersionVector,
        bytes: Vec<u8>,
    },
    Compact {
        object: String,
        horizon: VersionVector,
    },
    Delete {
        object: String,
    },
}

/// One append as the writer takes it: [`Store::append`]'s arguments, owned.
struct OwnedAppend {
    object: String,
    replica: ReplicaId,
    entries: Vec<Entry>,
}

impl OwnedAppend {
    fn new(object: &str, replica: ReplicaId, entries: &[Entry]) -> Self {
        Self {
            object: object.to_owned(),
            replica,
            entries: entries.to_vec(),
        }
    }
}

/// How far [`RedbStore::verify_with_progress`] has got: log entries and
/// change feed items checked so far, out of how many the store holds (the
/// two largest parts of the work; the rest is small).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct VerifyProgress {
    /// Log entries checked.
    pub entries: u64,
    /// Log entries in the store.
    pub entries_total: u64,
    /// Change feed items checked.
    pub feed_items: u64,
    /// Change feed items in the store.
    pub feed_items_total: u64,
}

/// What [`RedbStore::verify`] checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Objects registered.
    pub objects: u64,
    /// Logs (one per object and replica).
    pub logs: u64,
    /// Log entries held (not counting compacted ones).
    pub entries: u64,
    /// Change feed items.
    pub feed_items: u64,
    /// Snapshots.
    pub snapshots: u64,
    /// Tombstones (deleted objects).
    pub tombstones: u64,
}

/// Counters of the group-commit writer (see [`RedbStore::commit_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CommitStats {
    /// Write jobs answered.
    pub jobs: u64,
    /// Durable transactions committed.
    pub commits: u64,
}

enum Reply {
    Append(Result<AppendOutcome, AppendError>),
    AppendMany(Vec<Result<AppendOutcome, AppendError>>),
    PutSnapshot(Result<(), SnapshotError>),
    Compact(Result<CompactOutcome, SnapshotError>),
    Delete(Result<DeleteOutcome, DeleteError>),
}

impl RedbStore {
    /// Opens the store in the file at `path`, creating it if it does not
    /// exist, with the default [`StoreConfig`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, StoreConfig::default())
    }

    /// Opens the store in the file at `path`, creating it if it does not exist.
    ///
    /// Fails with [`StoreError::UnsupportedFormat`] if the file was written by
    /// an unknown format version, [`StoreError::NotAStore`] if it is not a
    /// converge store, [`StoreError::Locked`] if another process has it open,
    /// and [`StoreError::Corrupt`] if the most recent writes fail their checksums.
    pub fn open_with(path: impl AsRef<Path>, config: StoreConfig) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let db = Database::builder()
            .create(path)
            .map_err(|e| open_error(&shown, e))?;
        // Opened only once redb holds the database's lock: one process at a
        // time writes the log too.
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        let wal = WalFile::open(Path::new(&wal_path))
            .map_err(|e| StoreError::backend("opening the write-ahead log", e))?;
        Self::from_database(db, &shown, Box::new(wal), &format!("{shown}-wal"), config)
    }

    /// Opens (or creates) a store on custom redb [`StorageBackend`]s, one for
    /// the database and one for its write-ahead log, such as
    /// [`crate::crash::CrashBackend`] and its [`crate::crash::CrashBackend::wal`].
    pub fn open_with_backends(
        database: impl StorageBackend,
        wal: impl StorageBackend,
        config: StoreConfig,
    ) -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(database)
            .map_err(|e| open_error("the storage backend", e))?;
        Self::from_database(
            db,
            "the storage backend",
            Box::new(wal),
            "the write-ahead log backend",
            config,
        )
    }

    fn from_database(
        db: Database,
        shown: &str,
        wal: Box<dyn StorageBackend>,
        shown_wal: &str,
        config: StoreConfig,
    ) -> Result<Self, StoreError> {
        let mut db = db;
        let Initialized {
            checkpoint,
            fresh,
            upgraded,
        } = initialize(&db, shown)?;
        let recovered = Wal::open(wal, checkpoint.store_id, checkpoint.lsn, fresh, shown_wal)?;
        let mut wal = recovered.wal;
        replay(&db, &mut wal, checkpoint.store_id, recovered.records)?;
        check_tail(&db)?;
        if upgraded {
            // The upgrade rewrote every log in one transaction; redb keeps
            // the pages it freed in the file (1M entries of 100 B: 142 MB
            // before, 541 MB after). Give them back once.
            while db
                .compact()
                .map_err(|e| StoreError::backend("compacting the upgraded store", e))?
            {}
        }
        let durable = wal.last_lsn();
        let shared = Arc::new(Shared {
            db,
            config,
            commits: AtomicU64::new(0),
            jobs: AtomicU64::new(0),
            queue: Mutex::default(),
            wake: Condvar::new(),
            answers: Arc::default(),
            writer: Mutex::new(Writer {
                wal,
                store_id: checkpoint.store_id,
                failed: None,
                cache: WriterCache::default(),
            }),
            active: AtomicUsize::new(0),
            overlay: RwLock::default(),
            apply: Mutex::new(ApplyState {
                durable,
                ..ApplyState::default()
            }),
            apply_cv: Condvar::new(),
        });
        let for_applier = Arc::clone(&shared);
        let store_id = checkpoint.store_id;
        let applier = std::thread::Builder::new()
            .name("converge-store-applier".into())
            .spawn(move || apply_loop(&for_applier, store_id))
            .map_err(|e| StoreError::backend("starting the applier thread", e))?;
        let mut store = Self {
            shared,
            writer: None,
            applier: Some(applier),
        };
        // On failure, dropping `store` stops the applier.
        let for_writer = Arc::clone(&store.shared);
        store.writer = Some(
            std::thread::Builder::new()
                .name("converge-store-writer".into())
                .spawn(move || write_loop(&for_writer))
                .map_err(|e| StoreError::backend("starting the writer thread", e))?,
        );
        Ok(store)
    }

    /// How many write jobs the writer has answered, and in how many durable
    /// commits: under concurrency there are fewer commits than jobs.
    pub fn commit_stats(&self) -> CommitStats {
        CommitStats {
            jobs: self.shared.jobs.load(Ordering::Relaxed),
            commits: self.shared.commits.load(Ordering::Relaxed),
        }
    }

    /// Checks the whole store: every record's checksum, every log contiguous
    /// between its compacted horizon and its head with no entry outside it,
    /// every object of a log or snapshot registered and not deleted, every feed
    /// item naming a stored or deleted object, and the feed
    /// numbered 1, 2, 3... Reads everything, so it takes time in proportion to
    /// the store's size; run it after a suspected disk problem, or in tests.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.verify_with_progress(&mut |_| {})
    }

    /// [`RedbStore::verify`], calling `progress` after every page of log
    /// entries and of change feed items checked (about every thousand), so a
    /// tool can show how far a long check has got.
    pub fn verify_with_progress(
        &self,
        progress: &mut dyn FnMut(VerifyProgress),
    ) -> Result<VerifyReport, StoreError> {
        let view = {
            // With writes held off, let the applier empty the overlay: then
            // redb holds everything acknowledged, and its tables are checked.
            let _writer = self.shared.writer();
            self.shared.drain()?;
            read_tables(&self.shared.db)?
        };
        let corrupt = |what: String| StoreError::Corrupt { what };
        let read = storage("verifying the store");
        let mut report = VerifyReport::default();
        let exists = |object: &str| -> Result<(), StoreError> {
            if view.object_exists(object)? {
                Ok(())
            } else {
                Err(corrupt(format!(
                    "object {object:?} has data but is not registered"
                )))
            }
        };

        report.objects = view.objects.len().map_err(&read)?;
        // What the heads say the logs hold (the log table's rows are chunks
        // of many entries; its entry count is summed, and checked, below).
        let mut entries_total = 0u64;
        for item in view.heads.iter().map_err(&read)? {
            let (key, record) = item.map_err(&read)?;
            let (object, replica) = key.value();
            let head = format::decode_head(object, ReplicaId::from_u64(replica), record.value())?;
            entries_total = entries_total.saturating_add(head.last - head.compacted);
        }
        let mut done = VerifyProgress {
            entries_total,
            feed_items_total: view.feed_head()?,
            ..VerifyProgress::default()
        };
        progress(done);
        for item in view.heads.iter().map_err(&read)? {
            let (key, record) = item.map_err(&read)?;
            let (object, replica) = key.value();
            let replica = ReplicaId::from_u64(replica);
            let head = format::decode_head(object, replica, record.value())?;
            exists(object)?;
            report.logs += 1;
            // Stream the log in bounded pages: a log may be larger than memory.
            let mut next = head.compacted.saturating_add(1);
            while next <= head.last {
                let to = head.last.min(next.saturating_add(1023));
                let page = view.entries(object, replica, next, to, usize::MAX)?;
                for entry in &page.entries {
                    if entry.seq != next {
                        return Err(corrupt(format!(
                            "log {object}/{replica} lacks seq {next}, below its head {}",
                            head.last
                        )));
                    }
                    next += 1;
                }
                if next <= to {
                    return Err(corrupt(format!(
                        "log {object}/{replica} lacks seq {next}, below its head {}",
                        head.last
                    )));
                }
                report.entries += page.entries.len() as u64;
                done.entries = report.entries;
                progress(done);
            }
        }
        // Every chunk's entries, including chunks no head accounts for.
        let mut stored = 0u64;
        for item in view.log.iter().map_err(&read)? {
            let (key, record) = item.map_err(&read)?;
            let (object, replica, first) = key.value();
            let count = format::chunk_entry_count(record.value())
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    corrupt(format!(
                        "log chunk {object}/{}/{first} is truncated or empty",
                        ReplicaId::from_u64(replica)
                    ))
                })?;
            stored = stored.saturating_add(count);
        }
        if stored != report.entries {
            return Err(corrupt(format!(
                "the log table holds {stored} entries, the log heads account for {}",
                report.entries
            )));
        }

        let mut after = 0;
        loop {
            let items = view.feed(after, 1024)?;
            if items.is_empty() {
                break;
            }
            for item in &items {
                if item.position != after + 1 {
                    return Err(corrupt(format!(
                        "the change feed jumps from position {after} to {}",
                        item.position
                    )));
                }
                after = item.position;
                if item.kind == FeedKind::Delete || !view.object_exists(&item.object)? {
                    if view.tombstone(&item.object)?.is_none() {
                        return Err(corrupt(format!(
                            "change feed item {} names {:?}, which is neither stored nor deleted",
                            item.position, item.object
                        )));
                    }
                    continue;
                }
                let head = view.head(&item.object, item.replica)?;
                if item.last > head.last {
                    return Err(corrupt(format!(
                        "change feed item {} reaches seq {} of {}/{}, but the log ends at {}",
                        item.position, item.last, item.object, item.replica, head.last
                    )));
                }
            }
            report.feed_items += items.len() as u64;
            done.feed_items = report.feed_items;
            progress(done);
        }

        for item in view.snapshots.iter().map_err(&read)? {
            let (key, record) = item.map_err(&read)?;
            let object = key.value();
            format::decode_snapshot(object, record.value())?;
            exists(object)?;
            report.snapshots += 1;
        }

        for item in view.tombstones.iter().map_err(&read)? {
            let (key, record) = item.map_err(&read)?;
            let object = key.value();
            format::decode_tombstone(object, record.value())?;
            if view.object_exists(object)? {
                return Err(corrupt(format!(
                    "object {object:?} is both stored and deleted"
                )));
            }
            report.tombstones += 1;
        }
        Ok(report)
    }

    /// Queues a write and waits until it is committed (durable) or rejected.
    fn submit(&self, mut op: Op) -> Result<Reply, StoreError> {
        let shared = &*self.shared;
        {
            let queue = shared.queue();
            if queue.stopped || queue.closing {
                return Err(StoreError::Closed);
            }
            // A lone caller commits its own job on its own thread: handing it
            // to the writer thread and back costs two thread wake-ups per
            // append, which on a busy machine cost as much as the sync.
            // Callers that overlap go through the writer thread, which
            // gathers them into one commit.
            if queue.jobs.is_empty()
                && shared.active.load(Ordering::Relaxed) <= 1
                && let Ok(mut writer) = shared.writer.try_lock()
            {
                drop(queue);
                let mut replies = writer.commit_batch(shared, &mut [&mut op]);
                drop(writer);
                shared.jobs.fetch_add(1, Ordering::Relaxed);
                let waiting = shared.queue().jobs.len();
                shared.active.store(1 + waiting, Ordering::Relaxed);
                if waiting > 0 {
                    // Jobs queued behind this commit: the writer thread may
                    // have been waiting for the lock, or for a wake-up.
                    shared.wake.notify_one();
                }
                // commit_batch answers every op it is given.
                return replies.pop().ok_or(StoreError::Closed);
            }
        }
        let (reply, waiter) = handoff::slot(&shared.answers);
        let wake = {
            let mut queue = shared.queue();
            if queue.stopped {
                return Err(StoreError::Closed);
            }
            queue.jobs.push_back(Job { op, reply });
            queue.want != 0 && queue.jobs.len() >= queue.want
        };
        if wake {
            shared.wake.notify_one();
        }
        // The writer drops the job unanswered only if it panicked or closed.
        waiter.wait().ok_or(StoreError::Closed)
    }

    /// The latest state: the overlay, locked for the read, over a redb
    /// snapshot opened after it (so whatever left the overlay is in redb).
    fn read_view(&self) -> Result<Layered<RwLockReadGuard<'_, Overlay>, ReadTables>, StoreError> {
        let pending = self.shared.overlay_read();
        let base = read_tables(&self.shared.db)?;
        Ok(Layered::new(pending, base))
    }
}

/// redb's tables in a new read transaction.
fn read_tables(db: &Database) -> Result<ReadTables, StoreError> {
    let txn = db
        .begin_read()
        .map_err(|e| StoreError::backend("starting a read transaction", e))?;
    let open = |e| StoreError::backend("opening a table", e);
    Ok(Tables {
        objects: txn.open_table(OBJECTS).map_err(open)?,
        heads: txn.open_table(HEADS).map_err(open)?,
        log: txn.open_table(LOG).map_err(open)?,
        feed: txn.open_table(FEED).map_err(open)?,
        snapshots: txn.open_table(SNAPSHOTS).map_err(open)?,
        tombstones: txn.open_table(TOMBSTONES).map_err(open)?,
        wrote: false,
    })
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.shared.queue().closing = true;
        self.shared.wake.notify_all();
        if let Some(writer) = self.writer.take() {
            // A panic in the writer has already been reported to every caller
            // as `StoreError::Closed`; there is nothing more to do with it here.
            let _ = writer.join();
        }
        // The writer has drained the applier on its way out (or failed, and
        // the log is replayed on the next open).
        self.shared.apply_state().closing = true;
        self.shared.apply_cv.notify_all();
        if let Some(applier) = self.applier.take() {
            // A panic in the applier was recorded as a failure for writers.
            let _ = applier.join();
        }
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|poisoned| {
            // A commit panicked midway (its transaction was dropped, so redb
            // is unchanged): the log's state is unknown, refuse further writes.
            let mut writer = poisoned.into_inner();
            writer.failed = Some("a commit panicked".to_owned());
            writer
        })
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // The queue is only pushed to and drained; a panic elsewhere cannot
        // leave it inconsistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn apply_state(&self) -> MutexGuard<'_, ApplyState> {
        // Every change to it is a single assignment or push/pop.
        self.apply.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn overlay_read(&self) -> RwLockReadGuard<'_, Overlay> {
        // Changed only by `merge` and `remove`, which do not panic midway
        // on valid input; a poisoned lock still holds a usable overlay.
        self.overlay.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn overlay_write(&self) -> std::sync::RwLockWriteGuard<'_, Overlay> {
        self.overlay.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the applier holds no more than `bytes` of the log
    /// unapplied; fails if applying failed.
    fn wait_applied(&self, bytes: usize) -> Result<MutexGuard<'_, ApplyState>, StoreError> {
        let mut state = self.apply_state();
        loop {
            if let Some(why) = &state.failed {
                return Err(StoreError::backend(
                    "applying the write-ahead log; reopen the store",
                    why.clone(),
                ));
            }
            if state.batches.is_empty() || state.bytes <= bytes {
                return Ok(state);
            }
            if !state.hurry {
                state.hurry = true;
                self.apply_cv.notify_all();
            }
            state = self
                .apply_cv
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits until redb holds every synced log record (the overlay is empty).
    fn drain(&self) -> Result<(), StoreError> {
        self.wait_applied(0).map(drop)
    }

    /// Queues a synced log record for the applier.
    fn publish(&self, batch: Batch) {
        let mut state = self.apply_state();
        state.bytes += batch.record_len;
        state.batches.push_back(Arc::new(batch));
        // Wake an idle applier; one gathering wakes when enough is queued
        // (or at its deadline), not for every record.
        let wake = state.batches.len() == 1 || gathered(&state);
        drop(state);
        if wake {
            self.apply_cv.notify_all();
        }
    }
}

fn open_error(shown: &str, error: DatabaseError) -> StoreError {
    match error {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::Locked {
                path: shown.to_owned(),
            }
        }
        // redb reports a file that is not a redb database as invalid data.
        DatabaseError::Storage(redb::StorageError::Io(e))
            if e.kind() != std::io::ErrorKind::InvalidData =>
        {
            StoreError::backend("opening the store file", e)
        }
        other => StoreError::NotAStore {
            path: shown.to_owned(),
            detail: other.to_string(),
        },
    }
}

fn storage(context: &'static str) -> impl Fn(redb::StorageError) -> StoreError {
    move |e| match e {
        redb::StorageError::Corrupted(what) => StoreError::Corrupt { what },
        other => StoreError::backend(context, other),
    }
}

/// What [`initialize`] found.
struct Initialized {
    checkpoint: Checkpoint,
    /// The store is new, or was upgraded from a version without a
    /// write-ahead log (so it has no log of its own yet).
    fresh: bool,
    /// An older version was upgraded in place just now.
    upgraded: bool,
}

/// Creates the tables, the meta record and the checkpoint record of a new
/// store, or checks those of an existing one (upgrading an older version in
/// place).
fn initialize(db: &Database, shown: &str) -> Result<Initialized, StoreError> {
    let txn = db
        .begin_write()
        .map_err(|e| StoreError::backend("starting a write transaction", e))?;
    let foreign: Vec<String> = txn
        .list_tables()
        .map_err(storage("listing tables"))?
        .map(|t| redb::TableHandle::name(&t).to_owned())
        .filter(|name| !TABLE_NAMES.contains(&name.as_str()))
        .collect();
    if !foreign.is_empty() {
        return Err(StoreError::NotAStore {
            path: shown.to_owned(),
            detail: format!("it holds tables {foreign:?}"),
        });
    }
    let open = |e| StoreError::backend("creating a table", e);
    let checkpoint;
    let fresh;
    let mut upgraded = false;
    {
        let mut meta = txn.open_table(META).map_err(open)?;
        let found = meta
            .get(FORMAT_KEY)
            .map_err(storage("reading the meta record"))?
            .map(|v| format::decode_meta(v.value()));
        match found {
            Some(Meta::Store {
                version: FORMAT_VERSION,
            }) => {
                checkpoint = read_checkpoint(&meta)?;
                fresh = false;
            }
            Some(Meta::Store { version })
                if (OLDEST_FORMAT_VERSION..FORMAT_VERSION).contains(&version) =>
            {
                // Version 1 lacks the tombstones table (created below) and
                // never holds a deletion feed record; version 2 lacks the
                // checkpoint record (nothing was ever in a write-ahead log);
                // versions 1 to 3 hold one log row per entry, not chunks.
                // Upgrading is adding what is missing, rewriting the log and
                // the meta record, in the same transaction. A version 3
                // file keeps its checkpoint: its write-ahead log may hold
                // acknowledged appends, replayed into the upgraded tables.
                if version >= 3 {
                    checkpoint = read_checkpoint(&meta)?;
                    fresh = false;
                } else {
                    checkpoint = new_checkpoint();
                    fresh = true;
                }
                upgraded = true;
                meta.insert(FORMAT_KEY, format::encode_meta(FORMAT_VERSION).as_slice())
                    .map_err(storage("upgrading the meta record"))?;
                meta.insert(
                    CHECKPOINT_KEY,
                    format::encode_checkpoint(checkpoint).as_slice(),
                )
                .map_err(storage("writing the checkpoint record"))?;
                rewrite_log_as_chunks(&mut txn.open_table(LOG).map_err(open)?)?;
            }
            Some(Meta::Store { version }) => {
                return Err(StoreError::UnsupportedFormat {
                    found: version,
                    supported: FORMAT_VERSION,
                });
            }
            Some(Meta::Foreign(why)) => {
                return Err(StoreError::NotAStore {
                    path: shown.to_owned(),
                    detail: why.to_owned(),
                });
            }
            None => {
                let objects = txn.open_table(OBJECTS).map_err(open)?;
                if !objects.is_empty().map_err(storage("reading objects"))? {
                    return Err(StoreError::NotAStore {
                        path: shown.to_owned(),
                        detail: "it holds objects but no meta record".to_owned(),
                    });
                }
                checkpoint = new_checkpoint();
                fresh = true;
                meta.insert(FORMAT_KEY, format::encode_meta(FORMAT_VERSION).as_slice())
                    .map_err(storage("writing the meta record"))?;
                meta.insert(
                    CHECKPOINT_KEY,
                    format::encode_checkpoint(checkpoint).as_slice(),
                )
                .map_err(storage("writing the checkpoint record"))?;
            }
        }
        txn.open_table(OBJECTS).map_err(open)?;
        txn.open_table(HEADS).map_err(open)?;
        txn.open_table(LOG).map_err(open)?;
        txn.open_table(FEED).map_err(open)?;
        txn.open_table(SNAPSHOTS).map_err(open)?;
        txn.open_table(TOMBSTONES).map_err(open)?;
    }
    if fresh || upgraded {
        txn.commit()
            .map_err(|e| StoreError::backend("committing the store's tables", e))?;
    }
    // An existing store is not written here: its state may be ahead in the
    // write-ahead log, and the replay's checkpoint commits it.
    Ok(Initialized {
        checkpoint,
        fresh,
        upgraded,
    })
}

/// The checkpoint record of a version 3 or later file (`Corrupt` if it is
/// missing or damaged).
fn read_checkpoint(meta: &Table<'_, &str, Bytes>) -> Result<Checkpoint, StoreError> {
    let record = meta
        .get(CHECKPOINT_KEY)
        .map_err(storage("reading the checkpoint record"))?
        .ok_or_else(|| StoreError::Corrupt {
            what: "the checkpoint record is missing".to_owned(),
        })?;
    format::decode_checkpoint(record.value())
}

/// Rewrites a `log` table of format versions 1 to 3 (one entry record per
/// row) as chunk records, in key order: each chunk takes a run of
/// consecutive seqs of one log up to the chunk cap. Every entry record is
/// checked first: a damaged one is reported, not sealed into a chunk.
fn rewrite_log_as_chunks(log: &mut Table<'_, LogKey, Bytes>) -> Result<(), StoreError> {
    let read = storage("upgrading the log table");
    // Rows up to `done` (the last seq rewritten) are chunks already; the
    // rest are entry records.
    let mut done: Option<(String, u64, u64)> = None;
    loop {
        let mut run: Vec<Entry> = Vec::new();
        let log_key;
        {
            let lower: Bound<(&str, u64, u64)> = match &done {
                Some((object, replica, last)) => {
                    Bound::Excluded((object.as_str(), *replica, *last))
                }
                None => Bound::Unbounded,
            };
            let mut rows = log.range((lower, Bound::Unbounded)).map_err(&read)?;
            let Some(item) = rows.next() else {
                return Ok(());
            };
            let (key, record) = item.map_err(&read)?;
            let (object, replica, seq) = key.value();
            let records = format::LogRecords::new(object, ReplicaId::from_u64(replica));
            let payload = records.decode(seq, record.value())?;
            // The size of the chunk record the run makes so far.
            let mut bytes = format::chunk_record_start(payload.len());
            run.push(Entry::new(seq, payload));
            log_key = (object.to_owned(), replica);
            for item in rows {
                let (key, record) = item.map_err(&read)?;
                let (o, r, seq) = key.value();
                let next = run.last().map_or(0, |e| e.seq.saturating_add(1));
                if o != object || r != replica || seq != next {
                    break;
                }
                let payload = records.decode(seq, record.value())?;
                if !format::chunk_takes(run.len(), bytes, payload.len()) {
                    break;
                }
                bytes = bytes.saturating_add(4).saturating_add(payload.len());
                run.push(Entry::new(seq, payload));
            }
        }
        let (object, replica) = log_key;
        let (Some(first), Some(last)) = (run.first().map(|e| e.seq), run.last().map(|e| e.seq))
        else {
            return Ok(());
        };
        log.retain_in(
            (object.as_str(), replica, first)..=(object.as_str(), replica, last),
            |_, _| false,
        )
        .map_err(&read)?;
        put_chunks(log, &object, ReplicaId::from_u64(replica), &run)?;
        done = Some((object, replica, last));
    }
}

/// The checkpoint record of a store that never had a write-ahead log: a new
/// random store id, nothing covered.
fn new_checkpoint() -> Checkpoint {
    use std::hash::{BuildHasher, Hasher};
    // std's RandomState is seeded from the OS: random enough to tell two
    // stores apart, without a dependency.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    Checkpoint {
        store_id: hasher.finish(),
        lsn: 0,
    }
}

/// Applies the write-ahead log records not yet in the database, in one
/// transaction, and checkpoints (commits durably) the result.
fn replay(
    db: &Database,
    wal: &mut Wal,
    store_id: u64,
    records: Vec<format::WalRecord>,
) -> Result<(), StoreError> {
    if records.is_empty() {
        wal.checkpointed();
        return Ok(());
    }
    let txn = begin(db)?;
    {
        let mut tables = write_tables(&txn)?;
        for record in &records {
            apply_record(&mut tables, record.lsn, &record.appends)?;
        }
    }
    write_checkpoint(&txn, store_id, wal.last_lsn())?;
    txn.commit()
        .map_err(|e| StoreError::backend("checkpointing the replayed write-ahead log", e))?;
    wal.checkpointed();
    Ok(())
}

/// Applies one write-ahead log record's appends, checking that each adds
/// exactly the recorded entries at the recorded feed position.
fn apply_record(
    tables: &mut WriteTables<'_>,
    lsn: u64,
    appends: &[WalAppendOwned],
) -> Result<(), StoreError> {
    for append in appends {
        let mismatch = |what: String| StoreError::Corrupt {
            what: format!("write-ahead log record {lsn} does not replay: {what}"),
        };
        let outcome = logic::append(tables, &append.object, append.replica, &append.entries)
            .map_err(|e| mismatch(e.to_string()))?;
        if outcome.position != Some(append.position)
            || outcome.appended != append.entries.len() as u64
        {
            return Err(mismatch(format!(
                "the append to {}/{} gave position {:?}, the log says {}",
                append.object, append.replica, outcome.position, append.position
            )));
        }
    }
    Ok(())
}

/// Writes what a batch of appends the writer checked (against this very
/// state: redb plus the batches before it) changes: its entries, heads,
/// feed items and new objects, without checking them again. Replay, which
/// reads the records back from disk, goes through [`apply_record`] instead.
///
/// Checking again cost the applier ~30% of its instructions (three redb
/// lookups per append, callgrind), and the applier shares two cores with
/// the appenders.
///
/// Heads go into `heads` instead, the last one per log winning, for the
/// caller to write once per transaction: a log appended to by every record
/// of a transaction had its head rewritten by each.
fn apply_checked_batch<'b>(
    tables: &mut WriteTables<'_>,
    batch: &'b Batch,
    heads: &mut foldhash::HashMap<(&'b str, ReplicaId), Head>,
) -> Result<(), StoreError> {
    if batch.heads.len() != batch.appends.len() {
        return Err(StoreError::backend(
            "applying the write-ahead log",
            "a batch without a head per append (a bug in converge-store)",
        ));
    }
    for object in &batch.created {
        tables
            .objects
            .insert(object.as_str(), ())
            .map_err(storage("writing an object"))?;
    }
    for (append, head) in batch.appends.iter().zip(&batch.heads) {
        let (Some(first), Some(last)) = (append.entries.first(), append.entries.last()) else {
            continue;
        };
        let (object, replica) = (append.object.as_str(), append.replica);
        put_chunks(&mut tables.log, object, replica, &append.entries)?;
        heads.insert((object, replica), *head);
        let record =
            format::encode_feed_item(append.position, replica, first.seq, last.seq, object);
        tables
            .feed
            .insert(append.position, record.as_slice())
            .map_err(storage("writing the change feed"))?;
    }
    Ok(())
}

/// The applier: folds synced log records into redb, many per transaction,
/// off the appenders' path, then drops them from the overlay. Its commits
/// are not synced, except every [`BACKGROUND_CHECKPOINT_BYTES`] of log,
/// when it checkpoints.
fn apply_loop(shared: &Shared, store_id: u64) {
    // On exit, also by panic, with work left: writers must not wait for it.
    struct Stopped<'a>(&'a Shared);
    impl Drop for Stopped<'_> {
        fn drop(&mut self) {
            let mut state = self.0.apply_state();
            if !state.batches.is_empty() && state.failed.is_none() {
                state.failed = Some("the applier stopped".to_owned());
            }
            drop(state);
            self.0.apply_cv.notify_all();
        }
    }
    let _stopped = Stopped(shared);
    loop {
        let (batches, durable) = {
            let mut state = shared.apply_state();
            loop {
                if state.failed.is_some() {
                    return;
                }
                if !state.batches.is_empty() {
                    break;
                }
                if state.closing {
                    return;
                }
                state = shared
                    .apply_cv
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            // Gather more records into this transaction, for a moment.
            state = shared
                .apply_cv
                .wait_timeout_while(state, APPLY_GATHER, |s| {
                    !s.hurry && !s.closing && s.failed.is_none() && !gathered(s)
                })
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            state.hurry = false;
            let batches: Vec<Arc<Batch>> = state
                .batches
                .iter()
                .take(APPLY_MAX_BATCHES)
                .cloned()
                .collect();
            let bytes: usize = batches.iter().map(|b| b.record_len).sum();
            (
                batches,
                state.undurable + bytes >= BACKGROUND_CHECKPOINT_BYTES,
            )
        };
        let Some(last) = batches.last().map(|b| b.lsn) else {
            continue;
        };
        if let Err(e) = apply_batches(&shared.db, store_id, &batches, durable) {
            shared.apply_state().failed = Some(e.to_string());
            shared.apply_cv.notify_all();
            return;
        }
        {
            let mut overlay = shared.overlay_write();
            for batch in &batches {
                overlay.remove(batch);
            }
        }
        let mut state = shared.apply_state();
        let bytes: usize = batches.iter().map(|b| b.record_len).sum();
        state.batches.drain(..batches.len());
        state.bytes -= bytes;
        if durable {
            state.durable = last;
            state.undurable = 0;
        } else {
            state.undurable += bytes;
        }
        drop(state);
        shared.apply_cv.notify_all();
    }
}

/// Whether enough is queued for the applier to start without gathering more.
fn gathered(state: &ApplyState) -> bool {
    state.batches.len() >= APPLY_GATHER_BATCHES || state.bytes >= APPLY_GATHER_BYTES
}

/// Applies `batches` in one redb transaction: not synced, or durably as a
/// checkpoint covering the last of them.
fn apply_batches(
    db: &Database,
    store_id: u64,
    batches: &[Arc<Batch>],
    durable: bool,
) -> Result<(), StoreError> {
    let mut txn = begin(db)?;
    {
        let mut tables = write_tables(&txn)?;
        let mut heads = foldhash::HashMap::default();
        for batch in batches {
            apply_checked_batch(&mut tables, batch, &mut heads)?;
        }
        for ((object, replica), head) in heads {
            tables.set_head(object, replica, head)?;
        }
    }
    match batches.last() {
        Some(last) if durable => write_checkpoint(&txn, store_id, last.lsn)?,
        _ => txn
            .set_durability(Durability::None)
            .map_err(|e| StoreError::backend("setting durability", e))?,
    }
    txn.commit()
        .map_err(|e| StoreError::backend("applying the write-ahead log", e))
}

/// Writes the checkpoint record into `txn`: once it commits durably, the
/// database holds every log record up to `lsn`.
fn write_checkpoint(txn: &WriteTransaction, store_id: u64, lsn: u64) -> Result<(), StoreError> {
    let mut meta = txn
        .open_table(META)
        .map_err(|e| StoreError::backend("opening a table", e))?;
    meta.insert(
        CHECKPOINT_KEY,
        format::encode_checkpoint(Checkpoint { store_id, lsn }).as_slice(),
    )
    .map_err(storage("writing the checkpoint record"))?;
    Ok(())
}

/// Verifies the checksums of the most recent writes, so that a damaged tail
/// is reported on open instead of being served later.
fn check_tail(db: &Database) -> Result<(), StoreError> {
    let tables = read_tables(db)?;
    let head = tables.feed_head()?;
    let after = head.saturating_sub(TAIL_CHECK_ITEMS);
    for item in tables.feed(after, TAIL_CHECK_ITEMS as usize)? {
        if item.kind == FeedKind::Delete || !tables.object_exists(&item.object)? {
            // Deleted since: its logs were reclaimed, its tombstone remains.
            if tables.tombstone(&item.object)?.is_none() {
                return Err(StoreError::Corrupt {
                    what: format!(
                        "change feed item {} names {:?}, which is neither stored nor deleted",
                        item.position, item.object
                    ),
                });
            }
            continue;
        }
        let log = tables.head(&item.object, item.replica)?;
        if log.last < item.last {
            return Err(StoreError::Corrupt {
                what: format!(
                    "change feed item {} reaches seq {} of {}/{}, but the log ends at {}",
                    item.position, item.last, item.object, item.replica, log.last
                ),
            });
        }
        if item.last <= log.compacted {
            continue; // Compacted away since: the snapshot holds it.
        }
        let from = item
            .last
            .saturating_sub(TAIL_CHECK_ENTRIES - 1)
            .max(item.first)
            .max(log.compacted + 1);
        let found = tables
            .entries(&item.object, item.replica, from, item.last, usize::MAX)?
            .entries;
        if found.len() as u64 != item.last - from + 1 {
            return Err(StoreError::Corrupt {
                what: format!(
                    "log {}/{} lacks entries between seq {from} and {}",
                    item.object, item.replica, item.last
                ),
            });
        }
    }
    Ok(())
}

fn write_loop(shared: &Shared) {
    // On exit, also by panic: refuse new jobs and drop queued ones, whose
    // callers then get `StoreError::Closed` instead of waiting forever.
    struct Stopped<'a>(&'a Shared);
    impl Drop for Stopped<'_> {
        fn drop(&mut self) {
            let mut queue = self.0.queue();
            queue.stopped = true;
            queue.jobs.clear();
        }
    }
    let _stopped = Stopped(shared);
    // Callers known to be active: those answered last time plus those that
    // were already queued then. Writers in a loop come straight back after
    // their answer, so the next batch waits briefly for them (see `gather`).
    let mut expected = 0;
    let mut last_commit = Duration::ZERO;
    loop {
        let mut jobs = {
            let mut queue = shared.queue();
            loop {
                if !queue.jobs.is_empty() {
                    break;
                }
                if queue.closing {
                    drop(queue);
                    // A clean close leaves nothing to replay. If it fails,
                    // the next open replays the log instead.
                    let _ = shared.writer().close(shared);
                    return;
                }
                queue.want = 1;
                queue = shared
                    .wake
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let wait = GATHER_MAX.min(last_commit / GATHER_SHARE);
            queue = gather(shared, queue, expected, wait);
            queue.want = 0;
            take_batch(&mut queue.jobs)
        };
        let started = Instant::now();
        let mut ops: Vec<&mut Op> = jobs.iter_mut().map(|job| &mut job.op).collect();
        let replies = shared.writer().commit_batch(shared, &mut ops);
        last_commit = started.elapsed();
        shared.jobs.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        expected = (jobs.len() + shared.queue().jobs.len()).min(MAX_BATCH_JOBS);
        shared.active.store(expected, Ordering::Relaxed);
        // Jobs left without a reply (none should be) are dropped, which
        // wakes their callers with `StoreError::Closed`.
        handoff::answer_all(
            jobs.into_iter()
                .zip(replies)
                .map(|(job, reply)| (job.reply, reply)),
        );
    }
}

/// Waits up to `wait` for the queue to hold `expected` jobs (or to close).
///
/// Without this, steady writers split into two groups that alternate: the
/// first caller back after an answer starts a batch of its own, and the
/// rest queue behind it for the next one, so each sync is shared by half
/// the writers. A single writer never waits here (its own job is the one
/// expected), and callers that do not come back cost at most `wait`, a
/// small share of a commit.
fn gather<'a>(
    shared: &'a Shared,
    mut queue: MutexGuard<'a, Queue>,
    expected: usize,
    wait: Duration,
) -> MutexGuard<'a, Queue> {
    queue.want = expected;
    shared
        .wake
        .wait_timeout_while(queue, wait, |q| q.jobs.len() < expected && !q.closing)
        .unwrap_or_else(PoisonError::into_inner)
        .0
}

fn take_batch(queue: &mut VecDeque<Job>) -> Vec<Job> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(job) = queue.front() {
        let size = job.op.size();
        if !batch.is_empty() && (batch.len() >= MAX_BATCH_JOBS || bytes + size > MAX_BATCH_BYTES) {
            break;
        }
        bytes += size;
        // The loop condition just saw a front element.
        if let Some(job) = queue.pop_front() {
            batch.push(job);
        }
    }
    batch
}

/// The writer thread's state: the write-ahead log, and whether it failed.
struct Writer {
    wal: Wal,
    store_id: u64,
    /// Set when the log or a commit after it failed: the log's state on disk
    /// is unknown, so every later write is refused until the store is
    /// reopened (which replays what was durable).
    failed: Option<String>,
    /// What the writer knows of the latest heads, so that appends to logs
    /// it wrote recently are checked without reading redb.
    cache: WriterCache,
}

impl Writer {
    /// Makes a batch of jobs durable and answers each: a batch that only
    /// appends is checked against redb and the overlay, written to the log,
    /// synced and added to the overlay (the applier folds it into redb
    /// later); any other batch, or one too large for the log, waits for the
    /// applier to finish and is committed to redb durably (a checkpoint).
    ///
    /// An append job's entries may be moved out into the applier's queue:
    /// the job is answered, not reused.
    fn commit_batch(&mut self, shared: &Shared, jobs: &mut [&mut Op]) -> Vec<Reply> {
        if let Some(why) = &self.failed {
            let e = StoreError::backend("an earlier write failed; reopen the store", why.clone());
            return jobs.iter().map(|op| op.fail(&e)).collect();
        }
        if jobs.iter().all(|op| op.is_append()) {
            match self.log_appends(shared, jobs) {
                Ok(Some(replies)) => return replies,
                Ok(None) => {} // Too large for the log: committed below.
                Err(e) => return jobs.iter().map(|op| op.fail(&e)).collect(),
            }
        }
        if let Err(e) = shared.drain() {
            return jobs.iter().map(|op| op.fail(&e)).collect();
        }
        // Writes other than appends change what the cache knows.
        self.cache.clear();
        let txn = match begin(&shared.db) {
            Ok(txn) => txn,
            Err(e) => return jobs.iter().map(|op| op.fail(&e)).collect(),
        };
        let mut replies = Vec::with_capacity(jobs.len());
        let mut any_written = false;
        let applied = (|| {
            let mut tables = write_tables(&txn)?;
            for op in jobs.iter() {
                // Fails if storage failed midway through a write: the
                // transaction holds part of it, so none of the batch may be
                // committed.
                replies.push(op.apply(&mut tables, &shared.config, &mut any_written)?);
            }
            Ok(())
        })();
        if let Err(e) = applied {
            return jobs.iter().map(|op| op.fail(&e)).collect();
        }
        if !any_written {
            // Nothing to make durable (all re-deliveries or rejections); dropping
            // the transaction aborts it.
            return replies;
        }
        if let Err(e) = self.checkpoint(shared, txn) {
            return replies
                .into_iter()
                .zip(jobs)
                .map(|(reply, op)| reply.fail_accepted(op, &e))
                .collect();
        }
        shared.commits.fetch_add(1, Ordering::Relaxed);
        replies
    }

    /// The durable path of a batch of appends: checks each against redb and
    /// the overlay (its own writes staged aside), writes the new entries as
    /// one log record and syncs it, then makes them visible in the overlay
    /// and queues the record for the applier. `None` if the record is too
    /// large for the log; `Err` if storage failed while checking.
    fn log_appends(
        &mut self,
        shared: &Shared,
        jobs: &mut [&mut Op],
    ) -> Result<Option<Vec<Reply>>, StoreError> {
        // Bound the overlay: wait while the applier is far behind.
        drop(shared.wait_applied(MAX_PENDING_BYTES)?);
        let mut replies = Vec::with_capacity(jobs.len());
        let mut logged = Vec::new();
        // Where each logged append came from: (job, append, first new entry).
        let mut sources = Vec::new();
        let pending = shared.overlay_read();
        let mut staging = Staging::new(&pending, &self.cache, || read_tables(&shared.db));
        for (job, op) in jobs.iter().enumerate() {
            let appends = op.appends();
            if appends.is_empty() {
                return Err(StoreError::backend(
                    "logging appends",
                    "a job that is not an append (a bug in converge-store)",
                ));
            }
            let mut results = Vec::with_capacity(appends.len());
            for (index, append) in appends.iter().enumerate() {
                let OwnedAppend {
                    object,
                    replica,
                    entries,
                } = append;
                staging.wrote = false;
                let result = logic::append(&mut staging, object, *replica, entries);
                if staging.wrote {
                    match &result {
                        Err(AppendError::Store(e)) => return Err(duplicate(e)),
                        Err(_) => {}
                        Ok(outcome) => {
                            let new = usize::try_from(outcome.appended)
                                .map_or(0, |n| entries.len().saturating_sub(n));
                            logged.push(WalAppend {
                                object,
                                replica: *replica,
                                position: outcome.position.unwrap_or(0),
                                entries: &entries[new..],
                            });
                            sources.push((job, index, new));
                        }
                    }
                }
                results.push(result);
            }
            replies.push(op.answer(results));
        }
        // The head of each logged append's log right after it: its last
        // seq, and the log's compacted horizon (appends do not move it).
        let heads = logged
            .iter()
            .map(|append| {
                let compacted = staging.head(append.object, append.replica)?.compacted;
                let last = append.entries.last().map_or(0, |e| e.seq);
                Ok(Head { last, compacted })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let delta = staging.into_delta();
        drop(pending);
        if logged.is_empty() {
            // Nothing to make durable (all re-deliveries or rejections).
            return Ok(Some(replies));
        }
        let size = format::wal_record_len(&logged);
        if size > wal::DIRECT_MAX {
            return Ok(None);
        }
        if !self.wal.fits(size) {
            self.make_room(shared)?;
        }
        let record = format::encode_wal_record(self.wal.next_lsn(), &logged);
        let positions: Vec<u64> = logged.iter().map(|a| a.position).collect();
        if let Err(e) = self.wal.append(&record) {
            // The record may be on disk in part, or whole: later records
            // cannot follow it safely, and the next open sorts it out.
            self.failed = Some(format!("writing the write-ahead log: {e}"));
            let e = StoreError::backend("writing the write-ahead log", e);
            return Ok(Some(
                replies
                    .into_iter()
                    .zip(jobs.iter())
                    .map(|(reply, op)| reply.fail_accepted(op, &e))
                    .collect(),
            ));
        }
        // The applier's copy: the jobs' own ids and entries, moved rather
        // than copied when the whole append was new (the usual case).
        let mut appends = Vec::with_capacity(sources.len());
        for ((job, index, new), position) in sources.into_iter().zip(positions) {
            let Some(append) = jobs[job].appends_mut().get_mut(index) else {
                // The record is durable but cannot be applied: refuse
                // further writes; reopening replays it from the log.
                self.failed = Some("a logged append went missing".to_owned());
                return Err(StoreError::backend(
                    "logging appends",
                    "a logged append went missing (a bug in converge-store)",
                ));
            };
            let entries = if new == 0 {
                std::mem::take(&mut append.entries)
            } else {
                append.entries[new..].to_vec()
            };
            appends.push(WalAppendOwned {
                object: std::mem::take(&mut append.object),
                replica: append.replica,
                position,
                entries,
            });
        }
        let batch = Batch {
            lsn: self.wal.last_lsn(),
            appends,
            heads,
            created: delta.created_objects(),
            record_len: record.len(),
        };
        self.cache.learn(&delta);
        // Visible to readers from here on; durable since the sync above.
        shared.overlay_write().merge(delta);
        shared.publish(batch);
        shared.commits.fetch_add(1, Ordering::Relaxed);
        Ok(Some(replies))
    }

    /// Lets the log start over: waits until redb holds every record, makes
    /// that durable (unless the applier just did), and rewinds the log.
    fn make_room(&mut self, shared: &Shared) -> Result<(), StoreError> {
        shared.drain()?;
        if shared.apply_state().durable < self.wal.last_lsn() {
            let txn = begin(&shared.db)?;
            self.checkpoint(shared, txn)?;
        }
        self.wal.checkpointed();
        Ok(())
    }

    /// Commits `txn` durably, with the checkpoint record: the database then
    /// holds every log record, and the log starts over. The applier must be
    /// idle (drained), so that redb holds every record written.
    fn checkpoint(&mut self, shared: &Shared, mut txn: WriteTransaction) -> Result<(), StoreError> {
        write_checkpoint(&txn, self.store_id, self.wal.last_lsn())?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::backend("setting durability", e))?;
        txn.commit()
            .map_err(|e| StoreError::backend("committing a batch of writes", e))?;
        self.wal.checkpointed();
        let mut state = shared.apply_state();
        state.durable = self.wal.last_lsn();
        state.undurable = 0;
        Ok(())
    }

    /// Checkpoints on a clean close, so the next open has nothing to replay.
    fn close(&mut self, shared: &Shared) -> Result<(), StoreError> {
        if self.failed.is_some() {
            return Ok(());
        }
        shared.drain()?;
        if shared.apply_state().durable >= self.wal.last_lsn() {
            return Ok(());
        }
        let txn = begin(&shared.db)?;
        self.checkpoint(shared, txn)
    }
}

fn begin(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db
        .begin_write()
        .map_err(|e| StoreError::backend("starting a write transaction", e))?;
    // Immediate is redb's default; a batch that goes through the log lowers
    // it before committing. Say so rather than rely on a default.
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StoreError::backend("setting durability", e))?;
    Ok(txn)
}

impl Op {
    fn size(&self) -> usize {
        match self {
            Self::Append(_) | Self::AppendMany(_) => self
                .appends()
                .iter()
                .map(|a| {
                    a.object.len() + a.entries.iter().map(|e| e.bytes.len() + 16).sum::<usize>()
                })
                .sum(),
            Self::PutSnapshot { bytes, .. } => bytes.len(),
            Self::Compact { .. } | Self::Delete { .. } => 0,
        }
    }

    /// Whether the job only appends (so it may go through the log).
    fn is_append(&self) -> bool {
        matches!(self, Self::Append(_) | Self::AppendMany(_))
    }

    /// The appends of the job, in order (none for other writes).
    fn appends(&self) -> &[OwnedAppend] {
        match self {
            Self::Append(append) => std::slice::from_ref(append),
            Self::AppendMany(appends) => appends,
            _ => &[],
        }
    }

    /// The appends of the job, to move their data out once logged.
    fn appends_mut(&mut self) -> &mut [OwnedAppend] {
        match self {
            Self::Append(append) => std::slice::from_mut(append),
            Self::AppendMany(appends) => appends,
            _ => &mut [],
        }
    }

    /// The reply of an append job, from the results of its appends in order.
    fn answer(&self, mut results: Vec<Result<AppendOutcome, AppendError>>) -> Reply {
        match self {
            Self::AppendMany(_) => Reply::AppendMany(results),
            _ => Reply::Append(
                results
                    .pop()
                    .unwrap_or_else(|| Err(unexpected_reply().into())),
            ),
        }
    }

    /// Applies the job inside `tables`' transaction and sets `written` if
    /// it wrote anything. `Err` if storage failed after the job had started
    /// writing: the transaction then holds part of it and must be dropped.
    fn apply(
        &self,
        tables: &mut WriteTables<'_>,
        config: &StoreConfig,
        written: &mut bool,
    ) -> Result<Reply, StoreError> {
        if self.is_append() {
            let mut results = Vec::with_capacity(self.appends().len());
            for append in self.appends() {
                tables.wrote = false;
                let result = logic::append(tables, &append.object, append.replica, &append.entries);
                if tables.wrote {
                    if let Err(AppendError::Store(e)) = &result {
                        return Err(duplicate(e));
                    }
                    *written = true;
                }
                results.push(result);
            }
            return Ok(self.answer(results));
        }
        tables.wrote = false;
        let reply = self.apply_other(tables, config);
        if tables.wrote {
            if let Some(e) = reply.store_error() {
                return Err(e);
            }
            *written = true;
        }
        Ok(reply)
    }

    /// Applies a job that is not an append.
    fn apply_other(&self, tables: &mut WriteTables<'_>, config: &StoreConfig) -> Reply {
        match self {
            Self::Append(_) | Self::AppendMany(_) => Reply::Append(Err(unexpected_reply().into())),
            Self::PutSnapshot {
                object,
                version_vector,
                bytes,
            } => Reply::PutSnapshot(logic::put_snapshot(
                tables,
                config,
                object,
                version_vector,
                bytes,
            )),
            Self::Compact { object, horizon } => {
                Reply::Compact(logic::compact(tables, object, horizon))
            }
            Self::Delete { object } => Reply::Delete(logic::delete_object(tables, object)),
        }
    }

    fn fail(&self, error: &StoreError) -> Reply {
        let error = duplicate(error);
        match self {
            Self::Append(_) => Reply::Append(Err(error.into())),
            Self::AppendMany(appends) => Reply::AppendMany(
                appends
                    .iter()
                    .map(|_| Err(duplicate(&error).into()))
                    .collect(),
            ),
            Self::PutSnapshot { .. } => Reply::PutSnapshot(Err(error.into())),
            Self::Compact { .. } => Reply::Compact(Err(error.into())),
            Self::Delete { .. } => Reply::Delete(Err(error.into())),
        }
    }
}

impl Reply {
    /// This reply with every write it accepted failed with `error` instead
    /// (its batch was not made durable); rejections stand.
    fn fail_accepted(self, op: &Op, error: &StoreError) -> Self {
        let accepted = match self {
            Self::AppendMany(results) => {
                return Self::AppendMany(
                    results
                        .into_iter()
                        .map(|r| match r {
                            Ok(_) => Err(duplicate(error).into()),
                            rejected => rejected,
                        })
                        .collect(),
                );
            }
            Self::Append(ref r) => r.is_ok(),
            Self::PutSnapshot(ref r) => r.is_ok(),
            Self::Compact(ref r) => r.is_ok(),
            Self::Delete(ref r) => r.is_ok(),
        };
        if accepted { op.fail(error) } else { self }
    }

    fn store_error(&self) -> Option<StoreError> {
        let error = match self {
            Self::AppendMany(_) => return None,
            Self::Append(Err(AppendError::Store(e)))
            | Self::PutSnapshot(Err(SnapshotError::Store(e)))
            | Self::Compact(Err(SnapshotError::Store(e)))
            | Self::Delete(Err(DeleteError::Store(e))) => e,
            _ => return None,
        };
        Some(duplicate(error))
    }
}

/// A copy of a storage error, to report one failure to every caller of a batch.
fn duplicate(error: &StoreError) -> StoreError {
    match error {
        StoreError::Backend { context, source } => StoreError::Backend {
            context,
            source: source.to_string().into(),
        },
        StoreError::Corrupt { what } => StoreError::Corrupt { what: what.clone() },
        StoreError::UnsupportedFormat { found, supported } => StoreError::UnsupportedFormat {
            found: *found,
            supported: *supported,
        },
        StoreError::NotAStore { path, detail } => StoreError::NotAStore {
            path: path.clone(),
            detail: detail.clone(),
        },
        StoreError::Locked { path } => StoreError::Locked { path: path.clone() },
        StoreError::Closed => StoreError::Closed,
    }
}

fn unexpected_reply() -> StoreError {
    StoreError::backend(
        "answering a write",
        "the writer answered with a reply of another kind (a bug in converge-store)",
    )
}

impl Store for RedbStore {
    fn append(
        &self,
        object: &str,
        replica: ReplicaId,
        entries: &[Entry],
    ) -> Result<AppendOutcome, AppendError> {
        logic::check_batch(&self.shared.config, object, entries)?;
        if entries.is_empty() {
            return Ok(AppendOutcome::default());
        }
        match self.submit(Op::Append(OwnedAppend::new(object, replica, entries)))? {
            Reply::Append(result) => result,
            _ => Err(unexpected_reply().into()),
        }
    }

    /// Checks every request on the caller's thread, then hands the rest to
    /// the writer as one job: they are checked against the store in order,
    /// written as one log record with one sync (shared with concurrent
    /// appenders), and answered together.
    fn append_many(
        &self,
        requests: &[AppendRequest<'_>],
    ) -> Vec<Result<AppendOutcome, AppendError>> {
        let mut results = Vec::with_capacity(requests.len());
        let mut queued = Vec::new();
        let mut slots = Vec::new();
        for (slot, request) in requests.iter().enumerate() {
            let checked = logic::check_batch(&self.shared.config, request.object, request.entries);
            if checked.is_ok() && !request.entries.is_empty() {
                slots.push(slot);
                queued.push(OwnedAppend::new(
                    request.object,
                    request.replica,
                    request.entries,
                ));
            }
            results.push(checked.map(|()| AppendOutcome::default()));
        }
        if queued.is_empty() {
            return results;
        }
        let answers = match self.submit(Op::AppendMany(queued)) {
            Ok(Reply::AppendMany(answers)) if answers.len() == slots.len() => answers,
            Ok(_) => slots
                .iter()
                .map(|_| Err(unexpected_reply().into()))
                .collect(),
            Err(e) => slots.iter().map(|_| Err(duplicate(&e).into())).collect(),
        };
        for (slot, answer) in slots.into_iter().zip(answers) {
            results[slot] = answer;
        }
        results
    }

    fn read(
        &self,
        object: &str,
        replica: ReplicaId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, ReadError> {
        logic::read(
            &self.read_view()?,
            &self.shared.config,
            object,
            replica,
            from_seq,
            limit,
        )
    }

    fn version_vector(&self, object: &str) -> Result<VersionVector, ReadError> {
        logic::version_vector(&self.read_view()?, object)
    }

    fn list_objects(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, ReadError> {
        logic::list_objects(&self.read_view()?, prefix, after, limit)
    }

    fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<FeedItem>, StoreError> {
        self.read_view()?.feed(after, limit)
    }

    fn feed_head(&self) -> Result<u64, StoreError> {
        View::feed_head(&self.read_view()?)
    }

    fn put_snapshot(
        &self,
        object: &str,
        version_vector: &VersionVector,
        bytes: &[u8],
    ) -> Result<(), SnapshotError> {
        crate::validate_object_id(object)?;
        if bytes.len() > self.shared.config.max_snapshot_bytes {
            return Err(SnapshotError::TooLarge {
                len: bytes.len(),
                max: self.shared.config.max_snapshot_bytes,
            });
        }
        match self.submit(Op::PutSnapshot {
            object: object.to_owned(),
            version_vector: version_vector.clone(),
            bytes: bytes.to_vec(),
        })? {
            Reply::PutSnapshot(result) => result,
            _ => Err(unexpected_reply().into()),
        }
    }

    fn latest_snapshot(&self, object: &str) -> Result<Option<Snapshot>, ReadError> {
        logic::latest_snapshot(&self.read_view()?, object)
    }

    fn compact(
        &self,
        object: &str,
        horizon: &VersionVector,
    ) -> Result<CompactOutcome, SnapshotError> {
        crate::validate_object_id(object)?;
        match self.submit(Op::Compact {
            object: object.to_owned(),
            horizon: horizon.clone(),
        })? {
            Reply::Compact(result) => result,
            _ => Err(unexpected_reply().into()),
        }
    }

    fn delete_object(&self, object: &str) -> Result<DeleteOutcome, DeleteError> {
        crate::validate_object_id(object)?;
        match self.submit(Op::Delete {
            object: object.to_owned(),
        })? {
            Reply::Delete(result) => result,
            _ => Err(unexpected_reply().into()),
        }
    }

    fn tombstone(&self, object: &str) -> Result<Option<Tombstone>, ReadError> {
        logic::tombstone(&self.read_view()?, object)
    }

    fn list_tombstones(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, ReadError> {
        logic::list_tombstones(&self.read_view()?, prefix, after, limit)
    }
}

/// The store's tables, read-only or inside a write transaction.
struct Tables<O, H, L, F, S, T> {
    objects: O,
    heads: H,
    log: L,
    feed: F,
    snapshots: S,
    tombstones: T,
    /// Whether the current job has written anything (write transactions only).
    wrote: bool,
}

type ReadTables = Tables<
    ReadOnlyTable<ObjectKey, ()>,
    ReadOnlyTable<HeadKey, Bytes>,
    ReadOnlyTable<LogKey, Bytes>,
    ReadOnlyTable<u64, Bytes>,
    ReadOnlyTable<ObjectKey, Bytes>,
    ReadOnlyTable<ObjectKey, Bytes>,
>;

type WriteTables<'t> = Tables<
    Table<'t, ObjectKey, ()>,
    Table<'t, HeadKey, Bytes>,
    Table<'t, LogKey, Bytes>,
    Table<'t, u64, Bytes>,
    Table<'t, ObjectKey, Bytes>,
    Table<'t, ObjectKey, Bytes>,
>;

fn write_tables(txn: &WriteTransaction) -> Result<WriteTables<'_>, StoreError> {
    let open = |e| StoreError::backend("opening a table", e);
    Ok(Tables {
        objects: txn.open_table(OBJECTS).map_err(open)?,
        heads: txn.open_table(HEADS).map_err(open)?,
        log: txn.open_table(LOG).map_err(open)?,
        feed: txn.open_table(FEED).map_err(open)?,
        snapshots: txn.open_table(SNAPSHOTS).map_err(open)?,
        tombstones: txn.open_table(TOMBSTONES).map_err(open)?,
        wrote: false,
    })
}

impl<O, H, L, F, S, T> View for Tables<O, H, L, F, S, T>
where
    O: ReadableTable<ObjectKey, ()>,
    H: ReadableTable<HeadKey, Bytes>,
    L: ReadableTable<LogKey, Bytes>,
    F: ReadableTable<u64, Bytes>,
    S: ReadableTable<ObjectKey, Bytes>,
    T: ReadableTable<ObjectKey, Bytes>,
{
    fn object_exists(&self, object: &str) -> Result<bool, StoreError> {
        Ok(self
            .objects
            .get(object)
            .map_err(storage("reading an object"))?
            .is_some())
    }

    fn head(&self, object: &str, replica: ReplicaId) -> Result<Head, StoreError> {
        match self
            .heads
            .get((object, replica.as_u64()))
            .map_err(storage("reading a log head"))?
        {
            Some(record) => format::decode_head(object, replica, record.value()),
            None => Ok(Head::default()),
        }
    }

    fn heads(&self, object: &str) -> Result<Vec<(ReplicaId, Head)>, StoreError> {
        let read = storage("reading log heads");
        let mut heads = Vec::new();
        for item in self
            .heads
            .range((object, 0)..=(object, u64::MAX))
            .map_err(&read)?
        {
            let (key, record) = item.map_err(&read)?;
            let replica = ReplicaId::from_u64(key.value().1);
            heads.push((
                replica,
                format::decode_head(object, replica, record.value())?,
            ));
        }
        Ok(heads)
    }

    fn entries(
        &self,
        object: &str,
        replica: ReplicaId,
        from: u64,
        to: u64,
        mut max_bytes: usize,
    ) -> Result<Page, StoreError> {
        let read = storage("reading a log");
        let r = replica.as_u64();
        let mut page = Page {
            entries: Vec::with_capacity(
                usize::try_from(to.saturating_sub(from).saturating_add(1))
                    .unwrap_or(usize::MAX)
                    .min(PAGE_RESERVE),
            ),
            capped: false,
        };
        if from > to {
            return Ok(page);
        }
        let chunks = format::LogChunks::new(object, replica);
        let start = chunk_holding(&self.log, object, r, from)?;
        'chunks: for item in self
            .log
            .range((object, r, start)..=(object, r, to))
            .map_err(&read)?
        {
            let (key, record) = item.map_err(&read)?;
            let chunk = chunks.decode(key.value().2, record.value())?;
            for (seq, bytes) in chunk.iter() {
                if seq < from {
                    continue;
                }
                if seq > to || !page.push(Entry::new(seq, bytes), &mut max_bytes) {
                    break 'chunks;
                }
            }
        }
        Ok(page)
    }

    fn objects(
        &self,
        prefix: &str,
        start: &str,
        exclusive: bool,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        list_keys(&self.objects, prefix, start, exclusive, limit)
    }

    fn tombstones(
        &self,
        prefix: &str,
        start: &str,
        exclusive: bool,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        list_keys(&self.tombstones, prefix, start, exclusive, limit)
    }

    fn tombstone(&self, object: &str) -> Result<Option<Tombstone>, StoreError> {
        let Some(record) = self
            .tombstones
            .get(object)
            .map_err(storage("reading a tombstone"))?
        else {
            return Ok(None);
        };
        Ok(Some(Tombstone::new(format::decode_tombstone(
            object,
            record.value(),
        )?)))
    }

    fn feed(&self, after: u64, limit: usize) -> Result<Vec<FeedItem>, StoreError> {
        let read = storage("reading the change feed");
        let mut items = Vec::new();
        for item in self
            .feed
            .range::<u64>((Bound::Excluded(after), Bound::Unbounded))
            .map_err(&read)?
            .take(limit)
        {
            let (key, record) = item.map_err(&read)?;
            let position = key.value();
            let FeedRecord {
                replica,
                first,
                last,
                object,
            } = format::decode_feed(position, record.value())?;
            items.push(FeedItem {
                position,
                object,
                replica,
                first,
                last,
                kind: if first == 0 {
                    FeedKind::Delete
                } else {
                    FeedKind::Append
                },
            });
        }
        Ok(items)
    }

    fn feed_head(&self) -> Result<u64, StoreError> {
        Ok(self
            .feed
            .last()
            .map_err(storage("reading the change feed"))?
            .map_or(0, |(key, _)| key.value()))
    }

    fn snapshot(&self, object: &str) -> Result<Option<Snapshot>, StoreError> {
        let Some(record) = self
            .snapshots
            .get(object)
            .map_err(storage("reading a snapshot"))?
        else {
            return Ok(None);
        };
        let (version_vector, bytes) = format::decode_snapshot(object, record.value())?;
        Ok(Some(Snapshot {
            version_vector,
            bytes: bytes.to_vec(),
        }))
    }
}

impl Txn for WriteTables<'_> {
    fn create_object(&mut self, object: &str) -> Result<(), StoreError> {
        self.wrote = true;
        self.objects
            .insert(object, ())
            .map_err(storage("writing an object"))?;
        Ok(())
    }

    fn put_entries(
        &mut self,
        object: &str,
        replica: ReplicaId,
        entries: &[Entry],
    ) -> Result<(), StoreError> {
        self.wrote = true;
        put_chunks(&mut self.log, object, replica, entries)
    }

    /// Drops the chunks wholly inside `from..=to`; a chunk that straddles
    /// either end is replaced by what it keeps outside the range (its head
    /// under its own key, its tail under `to + 1`).
    fn remove_entries(
        &mut self,
        object: &str,
        replica: ReplicaId,
        from: u64,
        to: u64,
    ) -> Result<(), StoreError> {
        if from > to {
            return Ok(());
        }
        let read = storage("dropping log entries");
        let r = replica.as_u64();
        let chunks = format::LogChunks::new(object, replica);
        let lo = chunk_holding(&self.log, object, r, from)?;
        let mut before = Vec::new();
        let mut after = Vec::new();
        let mut keep = |seq: u64, bytes: &[u8]| {
            if seq < from {
                before.push(Entry::new(seq, bytes));
            } else if seq > to {
                after.push(Entry::new(seq, bytes));
            }
        };
        // Only the first chunk in the range (if it starts before `from`) and
        // the last one (if it ends after `to`) hold entries to keep; only
        // those are decoded (and checked), so that a damaged chunk wholly
        // inside the range never stops its log from being compacted or its
        // object deleted. Whether the last one ends after `to` is read from
        // its entry count before the check: if that count is damaged, the
        // check refuses the chunk, or the chunk was unreadable anyway.
        if lo < from
            && let Some(record) = self.log.get((object, r, lo)).map_err(&read)?
        {
            for (seq, bytes) in chunks.decode(lo, record.value())?.iter() {
                keep(seq, bytes);
            }
        }
        if let Some(item) = self
            .log
            .range((object, r, lo)..=(object, r, to))
            .map_err(&read)?
            .next_back()
        {
            let (key, record) = item.map_err(&read)?;
            let first = key.value().2;
            let ends_after_to = format::chunk_entry_count(record.value())
                .is_some_and(|n| first.saturating_add(n.saturating_sub(1)) > to);
            if first >= from && ends_after_to {
                for (seq, bytes) in chunks.decode(first, record.value())?.iter() {
                    keep(seq, bytes);
                }
            }
        }
        // Nothing was written above: a damaged chunk refused there fails
        // only this job, not the batch it is committed with.
        self.wrote = true;
        self.log
            .retain_in((object, r, lo)..=(object, r, to), |_, _| false)
            .map_err(&read)?;
        put_chunks(&mut self.log, object, replica, &before)?;
        put_chunks(&mut self.log, object, replica, &after)
    }

    fn set_head(&mut self, object: &str, replica: ReplicaId, head: Head) -> Result<(), StoreError> {
        self.wrote = true;
        let record = format::encode_head(object, replica, head);
        self.heads
            .insert((object, replica.as_u64()), record.as_slice())
            .map_err(storage("writing a log head"))?;
        Ok(())
    }

    fn remove_object(&mut self, object: &str) -> Result<(), StoreError> {
        self.wrote = true;
        self.objects
            .remove(object)
            .map_err(storage("removing an object"))?;
        Ok(())
    }

    fn remove_head(&mut self, object: &str, replica: ReplicaId) -> Result<(), StoreError> {
        self.wrote = true;
        self.heads
            .remove((object, replica.as_u64()))
            .map_err(storage("removing a log head"))?;
        Ok(())
    }

    fn remove_snapshot(&mut self, object: &str) -> Result<(), StoreError> {
        self.wrote = true;
        self.snapshots
            .remove(object)
            .map_err(storage("removing a snapshot"))?;
        Ok(())
    }

    fn set_tombstone(&mut self, object: &str, tombstone: &Tombstone) -> Result<(), StoreError> {
        self.wrote = true;
        let record = format::encode_tombstone(object, &tombstone.version_vector);
        self.tombstones
            .insert(object, record.as_slice())
            .map_err(storage("writing a tombstone"))?;
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
        let position = View::feed_head(self)? + 1;
        let record = format::encode_feed(
            position,
            &FeedRecord {
                replica,
                first,
                last,
                object: object.to_owned(),
            },
        );
        self.feed
            .insert(position, record.as_slice())
            .map_err(storage("writing the change feed"))?;
        Ok(position)
    }

    fn set_snapshot(
        &mut self,
        object: &str,
        version_vector: &VersionVector,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.wrote = true;
        let record = format::encode_snapshot(object, version_vector, bytes);
        self.snapshots
            .insert(object, record.as_slice())
            .map_err(storage("writing a snapshot"))?;
        Ok(())
    }
}

/// The first seq of the chunk of log `(object, replica)` that holds `seq`:
/// the last chunk starting at or before it, or `seq` itself if none does.
fn chunk_holding(
    log: &impl ReadableTable<LogKey, Bytes>,
    object: &str,
    replica: u64,
    seq: u64,
) -> Result<u64, StoreError> {
    let read = storage("reading a log");
    match log
        .range((object, replica, 0)..=(object, replica, seq))
        .map_err(&read)?
        .next_back()
    {
        Some(item) => Ok(item.map_err(&read)?.0.value().2),
        None => Ok(seq),
    }
}

/// Writes a run of consecutive entries of a log as chunk records, split at
/// the chunk cap (see `FORMAT.md`, *Chunk record*).
fn put_chunks(
    log: &mut Table<'_, LogKey, Bytes>,
    object: &str,
    replica: ReplicaId,
    entries: &[Entry],
) -> Result<(), StoreError> {
    let chunks = format::LogChunks::new(object, replica);
    for run in format::chunk_runs(entries) {
        let Some(first) = run.first().map(|e| e.seq) else {
            continue;
        };
        let record = chunks.encode(first, run.iter().map(|e| e.bytes.as_slice()));
        log.insert((object, replica.as_u64(), first), record.as_slice())
            .map_err(storage("writing a log chunk"))?;
    }
    Ok(())
}

/// Up to `limit` keys of `table` from `start` on, while they start with `prefix`.
fn list_keys<V: redb::Value + 'static>(
    table: &impl ReadableTable<ObjectKey, V>,
    prefix: &str,
    start: &str,
    exclusive: bool,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let read = storage("listing objects");
    let lower = if exclusive {
        Bound::Excluded(start)
    } else {
        Bound::Included(start)
    };
    let mut keys = Vec::new();
    for item in table
        .range::<&str>((lower, Bound::Unbounded))
        .map_err(&read)?
    {
        let (key, _) = item.map_err(&read)?;
        let key = key.value();
        if !key.starts_with(prefix) || keys.len() >= limit {
            break;
        }
        keys.push(key.to_owned());
    }
    Ok(keys)
}
