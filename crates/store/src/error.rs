//! Typed errors, one enum per family of operations (STYLE.md habit 5).
//!
//! Every variant says what went wrong and, where the caller can act, what to
//! do about it. Errors that come from input (a gap, a conflicting duplicate,
//! an oversized entry) are reported before anything is written.

use converge_crdt::ReplicaId;
use thiserror::Error;

/// A boxed error from a storage engine (redb, PostgreSQL, ...), kept opaque so
/// that this crate's public types do not depend on any one engine.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Failures of the storage layer itself, shared by every operation.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage engine failed (I/O error, full disk, ...).
    #[error("storage engine failed while {context}: {source}")]
    Backend {
        /// What the store was doing.
        context: &'static str,
        /// The engine's error.
        #[source]
        source: BoxError,
    },
    /// Stored data failed its checksum or is structurally impossible.
    #[error(
        "the store is corrupt: {what}; restore it from a backup or delete it and resync from a replica"
    )]
    Corrupt {
        /// What was found to be corrupt, and where.
        what: String,
    },
    /// The store was written by a format version this build does not know.
    #[error(
        "the store uses on-disk format version {found}, but this build reads only version {supported}; \
         open it with a converge release that supports version {found}"
    )]
    UnsupportedFormat {
        /// The version found in the store's meta record.
        found: u16,
        /// The version this build reads and writes.
        supported: u16,
    },
    /// The file is a database, but not a converge store (or its meta record is damaged).
    #[error("{path} is not a converge store ({detail}); point the store at its own file")]
    NotAStore {
        /// The file that was opened.
        path: String,
        /// Why it was rejected.
        detail: String,
    },
    /// Another process holds the store open.
    #[error(
        "{path} is already open in another process; stop that process or use another data directory"
    )]
    Locked {
        /// The file that was opened.
        path: String,
    },
    /// The store's background writer has stopped (it panicked or the store is shutting down).
    #[error("the store is closed (its writer thread stopped); reopen the store")]
    Closed,
}

impl StoreError {
    // Used by the engine backends (redb today); unused when they are compiled out.
    #[cfg_attr(not(feature = "redb"), allow(dead_code))]
    pub(crate) fn backend(context: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            context,
            source: source.into(),
        }
    }
}

/// Why an object id was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ObjectIdError {
    /// The id is the empty string.
    #[error("an object id must not be empty")]
    Empty,
    /// The id is longer than [`crate::MAX_OBJECT_ID_BYTES`].
    #[error(
        "object id is {len} bytes, the limit is {max}; use a shorter id (e.g. a hash of the long name)"
    )]
    TooLong {
        /// Length of the id in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Errors of [`crate::Store::append`]. On any error nothing was written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The object id is invalid.
    #[error(transparent)]
    ObjectId(#[from] ObjectIdError),
    /// An entry has sequence number 0; log sequence numbers start at 1.
    #[error("entry at index {index} has seq 0; log sequence numbers start at 1")]
    ZeroSeq {
        /// Position of the entry in the batch.
        index: usize,
    },
    /// The batch's sequence numbers are not consecutive.
    #[error(
        "entry at index {index} has seq {found}, expected {expected}: a batch must carry consecutive seqs"
    )]
    NotConsecutive {
        /// Position of the offending entry in the batch.
        index: usize,
        /// The seq that would have been consecutive.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// An entry is larger than the configured limit.
    #[error(
        "entry seq {seq} is {len} bytes, the limit is {max}; split the change or raise StoreConfig::max_entry_bytes"
    )]
    EntryTooLarge {
        /// The entry's seq.
        seq: u64,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The batch starts after the end of the log: appending it would leave a gap.
    #[error("log {object}/{replica} ends at seq {last}, the batch starts at {found}; send seqs {} to {} first", last.saturating_add(1), found.saturating_sub(1))]
    Gap {
        /// The object.
        object: String,
        /// The replica whose log it is.
        replica: ReplicaId,
        /// The last seq in the log.
        last: u64,
        /// The first seq of the batch.
        found: u64,
    },
    /// An entry with this (replica, seq) is stored with different bytes.
    #[error(
        "log {object}/{replica} already holds seq {seq} with different bytes; \
         a replica id was reused or forged (give each replica a fresh id)"
    )]
    Conflict {
        /// The object.
        object: String,
        /// The replica whose log it is.
        replica: ReplicaId,
        /// The conflicting seq.
        seq: u64,
    },
    /// The object was deleted; it takes no more entries (deletion wins).
    #[error("object {object:?} was deleted; its id takes no more entries (write to a new id)")]
    Deleted {
        /// The object.
        object: String,
    },
    /// The storage layer failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Errors of the read operations ([`crate::Store::read`],
/// [`crate::Store::version_vector`], [`crate::Store::latest_snapshot`], ...).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The object id (or prefix) is invalid.
    #[error(transparent)]
    ObjectId(#[from] ObjectIdError),
    /// No object with this id is stored.
    #[error("no object {object:?} in this store")]
    UnknownObject {
        /// The object asked for.
        object: String,
    },
    /// `from_seq` was 0; log sequence numbers start at 1.
    #[error("from_seq must be at least 1; log sequence numbers start at 1")]
    ZeroSeq,
    /// `from_seq` is past the end of the log (more than one past its last seq).
    #[error("log {object}/{replica} ends at seq {last}; reading from {from_seq} is out of range (read from at most {})", last.saturating_add(1))]
    BeyondEnd {
        /// The object.
        object: String,
        /// The replica whose log it is.
        replica: ReplicaId,
        /// The requested start.
        from_seq: u64,
        /// The last seq in the log.
        last: u64,
    },
    /// The requested prefix was compacted away; fetch the snapshot first.
    #[error(
        "log {object}/{replica} was compacted up to seq {compacted}; fetch the latest snapshot, \
         then read from seq {}", compacted.saturating_add(1)
    )]
    SnapshotNeeded {
        /// The object.
        object: String,
        /// The replica whose log it is.
        replica: ReplicaId,
        /// The requested start.
        from_seq: u64,
        /// The last dropped seq; the log resumes at `compacted + 1`.
        compacted: u64,
    },
    /// The object was deleted; see [`crate::Store::tombstone`].
    #[error("object {object:?} was deleted")]
    Deleted {
        /// The object asked for.
        object: String,
    },
    /// The storage layer failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Errors of [`crate::Store::put_snapshot`] and [`crate::Store::compact`].
/// On any error nothing was written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The object id is invalid.
    #[error(transparent)]
    ObjectId(#[from] ObjectIdError),
    /// No object with this id is stored.
    #[error("no object {object:?} in this store")]
    UnknownObject {
        /// The object asked for.
        object: String,
    },
    /// The snapshot is larger than the configured limit.
    #[error("snapshot is {len} bytes, the limit is {max}; raise StoreConfig::max_snapshot_bytes")]
    TooLarge {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The new snapshot covers less than the stored one for some replica.
    /// Replacing it could orphan a compacted prefix, so it is refused.
    #[error(
        "the stored snapshot of {object:?} covers replica {replica} up to seq {stored}, the new one only \
         up to {offered}; a snapshot must cover at least what the previous one did"
    )]
    Regression {
        /// The object.
        object: String,
        /// A replica the new snapshot covers less of.
        replica: ReplicaId,
        /// What the stored snapshot covers.
        stored: u64,
        /// What the new snapshot covers.
        offered: u64,
    },
    /// The compaction horizon is not covered by the latest snapshot.
    #[error(
        "cannot compact {object:?}: the horizon reaches seq {horizon} of replica {replica}, the latest \
         snapshot covers only up to {covered}; put a snapshot covering the horizon first"
    )]
    NotCovered {
        /// The object.
        object: String,
        /// The replica the horizon overreaches.
        replica: ReplicaId,
        /// The horizon's seq for the replica.
        horizon: u64,
        /// What the latest snapshot covers (0 if there is none).
        covered: u64,
    },
    /// The object was deleted; it takes no more snapshots (deletion wins).
    #[error("object {object:?} was deleted; it takes no snapshot")]
    Deleted {
        /// The object.
        object: String,
    },
    /// The storage layer failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Errors of [`crate::Store::delete_object`]. On any error nothing was written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DeleteError {
    /// The object id is invalid.
    #[error(transparent)]
    ObjectId(#[from] ObjectIdError),
    /// The storage layer failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
