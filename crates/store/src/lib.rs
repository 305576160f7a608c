//! # converge-store
//!
//! The durable home of every replicated object: per-(object, replica)
//! append-only logs plus snapshots, behind one synchronous trait, [`Store`].
//! This crate owns durability; it knows nothing of tokio, sockets or the sync
//! protocol, and moves entries as opaque bytes.
//!
//! ## Main types
//!
//! - [`Store`]: append to a log, read it back in order, the object's
//!   [`VersionVector`], list objects, the change feed, snapshots and compaction.
//! - [`MemoryStore`]: everything in memory (tests, ephemeral replicas).
//! - [`RedbStore`]: the embedded default, no server, built on redb: a
//!   database file and its write-ahead log. Appends are durable when they
//!   return: one sequential log write and one sync each, shared by
//!   concurrent appenders (group commit), and one of each for a whole
//!   [`Store::append_many`] call; redb is synced at checkpoints.
//!   Every record carries a CRC-32; the latest writes are checked on open,
//!   a torn log tail is cut, and [`RedbStore::verify`] checks everything.
//! - [`Tombstone`]: what [`Store::delete_object`] leaves behind, so that a
//!   deleted object stays deleted.
//! - Errors: [`AppendError`], [`ReadError`], [`SnapshotError`],
//!   [`DeleteError`], and the shared [`StoreError`].
//! - [`conformance`]: the behaviour every backend must have, as a reusable
//!   test suite.
//! - [`crash::CrashBackend`]: a storage double for the database and its log
//!   that keeps written and synced bytes apart, to reopen a store from what a
//!   crash would leave.
//!
//! The on-disk format is described in `FORMAT.md` next to this crate's sources.
//!
//! ## Features
//!
//! - `redb` (default): [`RedbStore`] and [`crash`]. Turn it off (as the
//!   pure `converge-sync` crate does) to depend on the trait, its types and
//!   [`MemoryStore`] without compiling a storage engine.
//!
//! ## Example
//!
//! ```
//! use converge_crdt::ReplicaId;
//! use converge_store::{Entry, MemoryStore, ReadError, Store};
//!
//! let store = MemoryStore::new();
//! let alice = ReplicaId::from_u64(0xa11ce);
//! store.append("todos", alice, &[Entry::new(1, b"buy milk".to_vec())])?;
//! store.append("todos", alice, &[Entry::new(2, b"walk dog".to_vec())])?;
//! // Re-delivery of an entry already held is harmless.
//! store.append("todos", alice, &[Entry::new(2, b"walk dog".to_vec())])?;
//!
//! let entries = store.read("todos", alice, 1, 100)?;
//! assert_eq!(entries.len(), 2);
//! assert_eq!(store.version_vector("todos")?.get(alice), 2);
//! assert!(matches!(store.read("nope", alice, 1, 1), Err(ReadError::UnknownObject { .. })));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
#[cfg(feature = "redb")]
mod handoff;
mod logic;
mod memory;
#[cfg(feature = "redb")]
mod overlay;
#[cfg(feature = "redb")]
mod redb_store;
#[cfg(feature = "redb")]
mod wal;

pub mod conformance;
#[cfg(feature = "redb")]
pub mod crash;
pub mod format;

pub use converge_crdt::{ReplicaId, VersionVector};
pub use error::{
    AppendError, BoxError, DeleteError, ObjectIdError, ReadError, SnapshotError, StoreError,
};
pub use memory::MemoryStore;
#[cfg(feature = "redb")]
pub use redb_store::{CommitStats, RedbStore, VerifyProgress, VerifyReport};

/// The longest object id accepted, in bytes.
pub const MAX_OBJECT_ID_BYTES: usize = 1024;

/// One entry of a replica's log: its sequence number and its bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Position in the replica's log, starting at 1.
    pub seq: u64,
    /// The entry as the replica wrote it; stored and served verbatim.
    pub bytes: Vec<u8>,
}

impl Entry {
    /// An entry with the given seq and bytes.
    pub fn new(seq: u64, bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            seq,
            bytes: bytes.into(),
        }
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Entry(seq {}, {} bytes)", self.seq, self.bytes.len())
    }
}

/// One log's part of a [`Store::append_many`] call: what
/// [`Store::append`] takes as arguments.
#[derive(Debug, Clone, Copy)]
pub struct AppendRequest<'a> {
    /// The object.
    pub object: &'a str,
    /// The replica whose log grows.
    pub replica: ReplicaId,
    /// Entries with consecutive seqs, as for [`Store::append`].
    pub entries: &'a [Entry],
}

impl<'a> AppendRequest<'a> {
    /// A request to append `entries` to `replica`'s log in `object`.
    pub fn new(object: &'a str, replica: ReplicaId, entries: &'a [Entry]) -> Self {
        Self {
            object,
            replica,
            entries,
        }
    }
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AppendOutcome {
    /// How many entries were new (the rest were already held).
    pub appended: u64,
    /// The change feed position of this append, if it added anything.
    pub position: Option<u64>,
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CompactOutcome {
    /// How many log entries were dropped.
    pub dropped: u64,
}

/// What a deletion did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DeleteOutcome {
    /// Whether this call deleted the object (false: it was already deleted).
    pub deleted: bool,
    /// How many log entries were reclaimed.
    pub dropped: u64,
    /// The change feed position of the deletion, if this call deleted it.
    pub position: Option<u64>,
    /// The tombstone now stored.
    pub tombstone: Tombstone,
}

/// The durable record that an object was deleted. An object id, once
/// deleted, stays deleted: its logs and snapshot are gone, appends and
/// snapshots are refused, and it is never listed again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Tombstone {
    /// What this store held of the object when it deleted it (empty if it
    /// held nothing, e.g. when the deletion came from a peer first).
    /// Informational: deletion wins over every write, before or after.
    pub version_vector: VersionVector,
}

impl Tombstone {
    /// A tombstone recording that `version_vector` was held at deletion.
    pub fn new(version_vector: VersionVector) -> Self {
        Self { version_vector }
    }
}

/// What a change feed item records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FeedKind {
    /// A replica's log of the object grew by `first..=last`.
    Append,
    /// The object was deleted (`replica` is 0, `first` and `last` are 0).
    Delete,
}

/// One item of the change feed: a replica's log of an object grew by
/// `first..=last`, or the object was deleted (see [`FeedItem::kind`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedItem {
    /// The local arrival position; strictly increasing, starting at 1.
    pub position: u64,
    /// The object.
    pub object: String,
    /// The replica whose log grew.
    pub replica: ReplicaId,
    /// First new seq.
    pub first: u64,
    /// Last new seq.
    pub last: u64,
    /// Whether the log grew or the object was deleted.
    pub kind: FeedKind,
}

/// A snapshot of an object's folded state, tagged with what it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The entries folded into the snapshot.
    pub version_vector: VersionVector,
    /// The encoded state, verbatim.
    pub bytes: Vec<u8>,
}

/// Limits a store enforces on what it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreConfig {
    /// The largest entry accepted, in bytes. Default 16 MiB.
    pub max_entry_bytes: usize,
    /// The largest snapshot accepted, in bytes. Default 256 MiB.
    pub max_snapshot_bytes: usize,
    /// The most entry bytes one [`Store::read`] returns (it always returns at
    /// least one entry, however large). Default 16 MiB.
    pub max_read_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_entry_bytes: 16 << 20,
            max_snapshot_bytes: 256 << 20,
            max_read_bytes: 16 << 20,
        }
    }
}

impl StoreConfig {
    /// Sets [`StoreConfig::max_entry_bytes`].
    pub fn with_max_entry_bytes(mut self, max: usize) -> Self {
        self.max_entry_bytes = max;
        self
    }

    /// Sets [`StoreConfig::max_read_bytes`].
    pub fn with_max_read_bytes(mut self, max: usize) -> Self {
        self.max_read_bytes = max;
        self
    }

    /// Sets [`StoreConfig::max_snapshot_bytes`].
    pub fn with_max_snapshot_bytes(mut self, max: usize) -> Self {
        self.max_snapshot_bytes = max;
        self
    }
}

/// The durable home of replicated objects: per-(object, replica) append-only
/// logs plus snapshots.
///
/// Every method is synchronous and may block on IO; async callers should run
/// them on blocking threads. All writes are atomic: on error nothing was
/// written. A write that returns `Ok` is durable (for persistent backends).
///
/// An object comes into existence with its first append or snapshot, and
/// ends with [`Store::delete_object`], which leaves a durable tombstone: after
/// it, the object id is dead for good (see [`Tombstone`]).
pub trait Store: Send + Sync {
    /// Appends `entries`, which must carry consecutive seqs, to the log of
    /// `replica` in `object`.
    ///
    /// Entries already held are skipped if their bytes are identical (so
    /// re-delivery is harmless) and reported as [`AppendError::Conflict`] if
    /// not. Entries below a compacted horizon are taken as held. A batch that
    /// starts after the end of the log is an [`AppendError::Gap`]. The batch
    /// is atomic: all new entries are written, or none. A deleted object
    /// refuses every non-empty batch with [`AppendError::Deleted`].
    fn append(
        &self,
        object: &str,
        replica: ReplicaId,
        entries: &[Entry],
    ) -> Result<AppendOutcome, AppendError>;

    /// Appends to several logs in one call: each request as [`Store::append`]
    /// would (atomic and validated on its own, so one failing request leaves
    /// the others to succeed), applied in request order (a later request for
    /// the same log sees the earlier ones), with the results in that order.
    ///
    /// This is how a process that gathers many writers' appends (a node
    /// serving hundreds of clients) stores them with one hand-off and, on a
    /// backend with group commit, one durable sync for all of them. The
    /// default implementation appends one request after the other.
    fn append_many(
        &self,
        requests: &[AppendRequest<'_>],
    ) -> Vec<Result<AppendOutcome, AppendError>> {
        requests
            .iter()
            .map(|r| self.append(r.object, r.replica, r.entries))
            .collect()
    }

    /// Reads up to `limit` entries of `replica`'s log in `object`, in order,
    /// from `from_seq` on. Reading from one past the end gives an empty list.
    ///
    /// A read returns fewer than `limit` entries when they would pass
    /// [`StoreConfig::max_read_bytes`] (never none while entries remain), so
    /// read page by page until a page comes back empty.
    fn read(
        &self,
        object: &str,
        replica: ReplicaId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, ReadError>;

    /// What the store holds of `object`: replica → last seq held (in the log
    /// or covered by the snapshot).
    fn version_vector(&self, object: &str) -> Result<VersionVector, ReadError>;

    /// Up to `limit` object ids that start with `prefix`, in byte order,
    /// after `after` (exclusive) if given: pass the last id of a page to get
    /// the next one.
    fn list_objects(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, ReadError>;

    /// Up to `limit` change feed items with a position greater than `after`,
    /// in position order. Pass 0 to read from the start.
    fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<FeedItem>, StoreError>;

    /// The position of the latest change feed item (0 if none).
    fn feed_head(&self) -> Result<u64, StoreError>;

    /// Stores a snapshot of `object` covering `version_vector`, replacing the
    /// previous one, which it must cover too ([`SnapshotError::Regression`]).
    ///
    /// Where the snapshot covers more of a replica than its log holds, the
    /// log is advanced to the snapshot (as if compacted): the entries are held
    /// through the snapshot, and appends continue after it.
    fn put_snapshot(
        &self,
        object: &str,
        version_vector: &VersionVector,
        bytes: &[u8],
    ) -> Result<(), SnapshotError>;

    /// The latest snapshot of `object`, if any.
    fn latest_snapshot(&self, object: &str) -> Result<Option<Snapshot>, ReadError>;

    /// Drops the log entries of `object` at or below `horizon`, which the
    /// latest snapshot must cover. Reading a dropped entry then reports
    /// [`ReadError::SnapshotNeeded`].
    fn compact(
        &self,
        object: &str,
        horizon: &VersionVector,
    ) -> Result<CompactOutcome, SnapshotError>;

    /// Deletes `object`: durably records a [`Tombstone`] (with the version
    /// vector held now), reclaims its logs and snapshot, and adds a
    /// [`FeedKind::Delete`] item to the change feed.
    ///
    /// Afterwards appends, snapshots and compactions of the object are
    /// refused (`Deleted` errors), reads and [`Store::version_vector`] report
    /// [`ReadError::Deleted`], and [`Store::list_objects`] skips it. Deletion
    /// wins over concurrent and later writes: the id is never revived.
    /// Deleting is idempotent (a second call reports `deleted: false`), and
    /// an object never stored can be deleted too (a peer's deletion may
    /// arrive before its entries do).
    fn delete_object(&self, object: &str) -> Result<DeleteOutcome, DeleteError>;

    /// The tombstone of `object`, if it was deleted.
    fn tombstone(&self, object: &str) -> Result<Option<Tombstone>, ReadError>;

    /// Whether `object` was deleted.
    fn is_deleted(&self, object: &str) -> Result<bool, ReadError> {
        Ok(self.tombstone(object)?.is_some())
    }

    /// Up to `limit` ids of deleted objects that start with `prefix`, in byte
    /// order, after `after` (exclusive) if given; pages like
    /// [`Store::list_objects`].
    fn list_tombstones(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, ReadError>;
}

/// Checks an object id: non-empty and at most [`MAX_OBJECT_ID_BYTES`] long.
pub fn validate_object_id(object: &str) -> Result<(), ObjectIdError> {
    if object.is_empty() {
        return Err(ObjectIdError::Empty);
    }
    if object.len() > MAX_OBJECT_ID_BYTES {
        return Err(ObjectIdError::TooLong {
            len: object.len(),
            max: MAX_OBJECT_ID_BYTES,
        });
    }
    Ok(())
}
