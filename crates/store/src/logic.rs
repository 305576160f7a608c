//! The rules of the store, written once over two small table traits that
//! every backend implements: [`View`] for reads and [`Txn`] for writes inside
//! one atomic transaction.
//!
//! Each write operation checks everything first and writes only after every
//! check has passed, so a rejected operation writes nothing even when it
//! shares a transaction with others (group commit relies on this).

use converge_crdt::{ReplicaId, VersionVector};

use crate::format::Head;
use crate::{
    AppendError, AppendOutcome, CompactOutcome, DeleteError, DeleteOutcome, Entry, FeedItem,
    ReadError, Snapshot, SnapshotError, StoreConfig, StoreError, Tombstone, validate_object_id,
};

/// Read access to the tables, in one consistent snapshot of the store.
pub(crate) trait View {
    /// Whether `object` exists.
    fn object_exists(&self, object: &str) -> Result<bool, StoreError>;
    /// The head of a log; the default head if the log is empty.
    fn head(&self, object: &str, replica: ReplicaId) -> Result<Head, StoreError>;
    /// The heads of all logs of `object`.
    fn heads(&self, object: &str) -> Result<Vec<(ReplicaId, Head)>, StoreError>;
    /// Entries `from..=to` of a log that are present, checksums verified, in
    /// order; stops early (and says so) before an entry that would take the
    /// total size past `max_bytes`, but returns at least one entry.
    fn entries(
        &self,
        object: &str,
        replica: ReplicaId,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Page, StoreError>;
    /// Up to `limit` object ids `>= start` (or `> start` if `exclusive`), in order,
    /// stopping at the first that does not start with `prefix`.
    fn objects(
        &self,
        prefix: &str,
        start: &str,
        exclusive: bool,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;
    /// Up to `limit` feed items after `after`.
    fn feed(&self, after: u64, limit: usize) -> Result<Vec<FeedItem>, StoreError>;
    /// The last feed position, 0 if none.
    fn feed_head(&self) -> Result<u64, StoreError>;
    /// The stored snapshot of `object`.
    fn snapshot(&self, object: &str) -> Result<Option<Snapshot>, StoreError>;
    /// The tombstone of `object`, if it was deleted.
    fn tombstone(&self, object: &str) -> Result<Option<Tombstone>, StoreError>;
    /// Like [`View::objects`], over the ids of deleted objects.
    fn tombstones(
        &self,
        prefix: &str,
        start: &str,
        exclusive: bool,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;
}

/// Entries read from a log.
pub(crate) struct Page {
    /// The entries, in seq order.
    pub(crate) entries: Vec<Entry>,
    /// Whether reading stopped at the size cap rather than at the end of the range.
    pub(crate) capped: bool,
}

impl Page {
    /// Adds `entry` unless that would pass `max_bytes` (the first entry is
    /// always added); returns false when the page is full.
    pub(crate) fn push(&mut self, entry: Entry, max_bytes: &mut usize) -> bool {
        if !self.entries.is_empty() && entry.bytes.len() > *max_bytes {
            self.capped = true;
            return false;
        }
        *max_bytes = max_bytes.saturating_sub(entry.bytes.len());
        self.entries.push(entry);
        true
    }
}

/// Write access inside one atomic transaction.
pub(crate) trait Txn: View {
    /// Registers a new object.
    fn create_object(&mut self, object: &str) -> Result<(), StoreError>;
    /// Stores a run of new entries of a log (consecutive seqs, right after
    /// its last): at once, so that a backend can store them together (the
    /// redb backend writes one chunk row per run, not one row per entry).
    fn put_entries(
        &mut self,
        object: &str,
        replica: ReplicaId,
        entries: &[Entry],
    ) -> Result<(), StoreError>;
    /// Removes entries `from..=to` of a log.
    fn remove_entries(
        &mut self,
        object: &str,
        replica: ReplicaId,
        from: u64,
        to: u64,
    ) -> Result<(), StoreError>;
    /// Sets the head of a log.
    fn set_head(&mut self, object: &str, replica: ReplicaId, head: Head) -> Result<(), StoreError>;
    /// Unregisters an object.
    fn remove_object(&mut self, object: &str) -> Result<(), StoreError>;
    /// Removes the head of a log.
    fn remove_head(&mut self, object: &str, replica: ReplicaId) -> Result<(), StoreError>;
    /// Removes the snapshot of `object`, if any.
    fn remove_snapshot(&mut self, object: &str) -> Result<(), StoreError>;
    /// Stores the tombstone of `object`.
    fn set_tombstone(&mut self, object: &str, tombstone: &Tombstone) -> Result<(), StoreError>;
    /// Appends a change feed item at the next position and returns the
    /// position. A deletion item has replica 0 and `first == last == 0`.
    fn push_feed(
        &mut self,
        object: &str,
        replica: ReplicaId,
        first: u64,
        last: u64,
    ) -> Result<u64, StoreError>;
    /// Replaces the snapshot of `object`.
    fn set_snapshot(
        &mut self,
        object: &str,
        version_vector: &VersionVector,
        bytes: &[u8],
    ) -> Result<(), StoreError>;
}

/// The checks of an append that need no stored state: run by the caller's
/// thread before queueing, so bad input never reaches the writer.
pub(crate) fn check_batch(
    config: &StoreConfig,
    object: &str,
    entries: &[Entry],
) -> Result<(), AppendError> {
    validate_object_id(object)?;
    let Some(first) = entries.first() else {
        return Ok(());
    };
    if first.seq == 0 {
        return Err(AppendError::ZeroSeq { index: 0 });
    }
    for (index, entry) in entries.iter().enumerate() {
        let expected = u64::try_from(index)
            .ok()
            .and_then(|i| first.seq.checked_add(i));
        if expected != Some(entry.seq) {
            return Err(AppendError::NotConsecutive {
                index,
                expected: expected.unwrap_or(u64::MAX),
                found: entry.seq,
            });
        }
        if entry.bytes.len() > config.max_entry_bytes {
            return Err(AppendError::EntryTooLarge {
                seq: entry.seq,
                len: entry.bytes.len(),
                max: config.max_entry_bytes,
            });
        }
    }
    Ok(())
}

/// Appends a batch (see [`crate::Store::append`]); `check_batch` must have passed.
pub(crate) fn append(
    tx: &mut impl Txn,
    object: &str,
    replica: ReplicaId,
    entries: &[Entry],
) -> Result<AppendOutcome, AppendError> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(AppendOutcome::default());
    };
    refuse_deleted(&*tx, object).map_err(|e| match e {
        Refused::Deleted => AppendError::Deleted {
            object: object.to_owned(),
        },
        Refused::Store(e) => e.into(),
    })?;
    let head = tx.head(object, replica)?;
    if first.seq > head.last.saturating_add(1) {
        return Err(AppendError::Gap {
            object: object.to_owned(),
            replica,
            last: head.last,
            found: first.seq,
        });
    }
    // Entries the log already holds: compare them, and find where the new ones start.
    let held = entries.iter().take_while(|e| e.seq <= head.last).count();
    let compare_from = entries
        .iter()
        .position(|e| e.seq > head.compacted)
        .unwrap_or(entries.len())
        .min(held);
    if compare_from < held {
        let stored = tx
            .entries(
                object,
                replica,
                entries[compare_from].seq,
                entries[held - 1].seq,
                usize::MAX,
            )?
            .entries;
        if stored.len() != held - compare_from {
            return Err(StoreError::Corrupt {
                what: format!(
                    "log {object}/{replica} is missing entries between seq {} and its head {}",
                    head.compacted.saturating_add(1),
                    head.last
                ),
            }
            .into());
        }
        for (offered, stored) in entries[compare_from..held].iter().zip(&stored) {
            if offered.bytes != stored.bytes {
                return Err(AppendError::Conflict {
                    object: object.to_owned(),
                    replica,
                    seq: offered.seq,
                });
            }
        }
    }
    let new = &entries[held..];
    let Some(new_first) = new.first() else {
        return Ok(AppendOutcome::default());
    };

    // Every check passed: write.
    if !tx.object_exists(object)? {
        tx.create_object(object)?;
    }
    tx.put_entries(object, replica, new)?;
    tx.set_head(
        object,
        replica,
        Head {
            last: last.seq,
            compacted: head.compacted,
        },
    )?;
    let position = tx.push_feed(object, replica, new_first.seq, last.seq)?;
    Ok(AppendOutcome {
        appended: last.seq - new_first.seq + 1,
        position: Some(position),
    })
}

/// Stores a snapshot (see [`crate::Store::put_snapshot`]).
pub(crate) fn put_snapshot(
    tx: &mut impl Txn,
    config: &StoreConfig,
    object: &str,
    version_vector: &VersionVector,
    bytes: &[u8],
) -> Result<(), SnapshotError> {
    validate_object_id(object)?;
    if bytes.len() > config.max_snapshot_bytes {
        return Err(SnapshotError::TooLarge {
            len: bytes.len(),
            max: config.max_snapshot_bytes,
        });
    }
    refuse_deleted(&*tx, object).map_err(|e| match e {
        Refused::Deleted => SnapshotError::Deleted {
            object: object.to_owned(),
        },
        Refused::Store(e) => e.into(),
    })?;
    if let Some(stored) = tx.snapshot(object)? {
        for (replica, stored) in stored.version_vector.iter() {
            let offered = version_vector.get(replica);
            if offered < stored {
                return Err(SnapshotError::Regression {
                    object: object.to_owned(),
                    replica,
                    stored,
                    offered,
                });
            }
        }
    }

    // Every check passed: write.
    if !tx.object_exists(object)? {
        tx.create_object(object)?;
    }
    tx.set_snapshot(object, version_vector, bytes)?;
    for (replica, covered) in version_vector.iter() {
        let head = tx.head(object, replica)?;
        if covered <= head.last {
            continue;
        }
        // The snapshot holds more of this replica than its log: the log now
        // resumes after the snapshot, and what it held is covered by it.
        if head.last > head.compacted {
            tx.remove_entries(object, replica, head.compacted + 1, head.last)?;
        }
        tx.set_head(
            object,
            replica,
            Head {
                last: covered,
                compacted: covered,
            },
        )?;
        tx.push_feed(object, replica, head.last + 1, covered)?;
    }
    Ok(())
}

/// Drops log prefixes under a snapshot (see [`crate::Store::compact`]).
pub(crate) fn compact(
    tx: &mut impl Txn,
    object: &str,
    horizon: &VersionVector,
) -> Result<CompactOutcome, SnapshotError> {
    validate_object_id(object)?;
    if !tx.object_exists(object)? {
        if tx.tombstone(object)?.is_some() {
            return Err(SnapshotError::Deleted {
                object: object.to_owned(),
            });
        }
        return Err(SnapshotError::UnknownObject {
            object: object.to_owned(),
        });
    }
    let covered = tx
        .snapshot(object)?
        .map(|s| s.version_vector)
        .unwrap_or_default();
    for (replica, seq) in horizon.iter() {
        if seq > covered.get(replica) {
            return Err(SnapshotError::NotCovered {
                object: object.to_owned(),
                replica,
                horizon: seq,
                covered: covered.get(replica),
            });
        }
    }

    // Every check passed: write.
    let mut dropped = 0;
    for (replica, seq) in horizon.iter() {
        let head = tx.head(object, replica)?;
        let upto = seq.min(head.last);
        if upto <= head.compacted {
            continue;
        }
        tx.remove_entries(object, replica, head.compacted + 1, upto)?;
        tx.set_head(
            object,
            replica,
            Head {
                last: head.last,
                compacted: upto,
            },
        )?;
        dropped += upto - head.compacted;
    }
    Ok(CompactOutcome { dropped })
}

/// Why a write to an object is refused before anything else is checked.
enum Refused {
    Deleted,
    Store(StoreError),
}

/// Refuses writes to a deleted object. A live object has no tombstone, so
/// the tombstone is only looked up for objects not registered.
fn refuse_deleted(view: &impl View, object: &str) -> Result<(), Refused> {
    if view.object_exists(object).map_err(Refused::Store)? {
        return Ok(());
    }
    match view.tombstone(object).map_err(Refused::Store)? {
        Some(_) => Err(Refused::Deleted),
        None => Ok(()),
    }
}

/// Deletes an object (see [`crate::Store::delete_object`]).
pub(crate) fn delete_object(tx: &mut impl Txn, object: &str) -> Result<DeleteOutcome, DeleteError> {
    validate_object_id(object)?;
    if let Some(tombstone) = tx.tombstone(object)? {
        return Ok(DeleteOutcome {
            deleted: false,
            dropped: 0,
            position: None,
            tombstone,
        });
    }
    let heads = if tx.object_exists(object)? {
        tx.heads(object)?
    } else {
        Vec::new()
    };
    let tombstone = Tombstone::new(
        heads
            .iter()
            .filter(|(_, head)| head.last > 0)
            .map(|(replica, head)| (*replica, head.last))
            .collect(),
    );

    // Every check passed: write.
    let mut dropped = 0;
    for (replica, head) in &heads {
        if head.last > head.compacted {
            tx.remove_entries(object, *replica, head.compacted + 1, head.last)?;
            dropped += head.last - head.compacted;
        }
        tx.remove_head(object, *replica)?;
    }
    tx.remove_snapshot(object)?;
    tx.remove_object(object)?;
    tx.set_tombstone(object, &tombstone)?;
    let position = tx.push_feed(object, ReplicaId::from_u64(0), 0, 0)?;
    Ok(DeleteOutcome {
        deleted: true,
        dropped,
        position: Some(position),
        tombstone,
    })
}

fn known(view: &impl View, object: &str) -> Result<(), ReadError> {
    validate_object_id(object)?;
    if !view.object_exists(object)? {
        if view.tombstone(object)?.is_some() {
            return Err(ReadError::Deleted {
                object: object.to_owned(),
            });
        }
        return Err(ReadError::UnknownObject {
            object: object.to_owned(),
        });
    }
    Ok(())
}

/// Reads a log (see [`crate::Store::read`]).
pub(crate) fn read(
    view: &impl View,
    config: &StoreConfig,
    object: &str,
    replica: ReplicaId,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<Entry>, ReadError> {
    known(view, object)?;
    if from_seq == 0 {
        return Err(ReadError::ZeroSeq);
    }
    let head = view.head(object, replica)?;
    if from_seq <= head.compacted {
        return Err(ReadError::SnapshotNeeded {
            object: object.to_owned(),
            replica,
            from_seq,
            compacted: head.compacted,
        });
    }
    if from_seq > head.last.saturating_add(1) {
        return Err(ReadError::BeyondEnd {
            object: object.to_owned(),
            replica,
            from_seq,
            last: head.last,
        });
    }
    if limit == 0 || from_seq > head.last {
        return Ok(Vec::new());
    }
    let span = u64::try_from(limit - 1).unwrap_or(u64::MAX);
    let to = head.last.min(from_seq.saturating_add(span));
    let Page { entries, capped } =
        view.entries(object, replica, from_seq, to, config.max_read_bytes)?;
    let contiguous = entries
        .iter()
        .zip(from_seq..)
        .all(|(entry, seq)| entry.seq == seq);
    if !contiguous || (!capped && entries.len() as u64 != to - from_seq + 1) {
        return Err(StoreError::Corrupt {
            what: format!(
                "log {object}/{replica} is missing entries between seq {from_seq} and {to}, below its head {}",
                head.last
            ),
        }
        .into());
    }
    Ok(entries)
}

/// The version vector of an object (see [`crate::Store::version_vector`]).
pub(crate) fn version_vector(view: &impl View, object: &str) -> Result<VersionVector, ReadError> {
    known(view, object)?;
    Ok(view
        .heads(object)?
        .into_iter()
        .filter(|(_, head)| head.last > 0)
        .map(|(replica, head)| (replica, head.last))
        .collect())
}

/// The tombstone of an object (see [`crate::Store::tombstone`]).
pub(crate) fn tombstone(view: &impl View, object: &str) -> Result<Option<Tombstone>, ReadError> {
    validate_object_id(object)?;
    Ok(view.tombstone(object)?)
}

/// Lists deleted objects (see [`crate::Store::list_tombstones`]).
pub(crate) fn list_tombstones(
    view: &impl View,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, ReadError> {
    let (start, exclusive) = match list_range(prefix, after, limit)? {
        Some(range) => range,
        None => return Ok(Vec::new()),
    };
    Ok(view.tombstones(prefix, start, exclusive, limit)?)
}

/// Where a listing starts: `None` for an empty listing.
fn list_range<'a>(
    prefix: &'a str,
    after: Option<&'a str>,
    limit: usize,
) -> Result<Option<(&'a str, bool)>, ReadError> {
    if !prefix.is_empty() {
        validate_object_id(prefix)?;
    }
    if let Some(after) = after {
        validate_object_id(after)?;
    }
    if limit == 0 {
        return Ok(None);
    }
    Ok(Some(match after {
        Some(after) if after >= prefix => (after, true),
        _ => (prefix, false),
    }))
}

/// Lists objects (see [`crate::Store::list_objects`]).
pub(crate) fn list_objects(
    view: &impl View,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, ReadError> {
    let (start, exclusive) = match list_range(prefix, after, limit)? {
        Some(range) => range,
        None => return Ok(Vec::new()),
    };
    Ok(view.objects(prefix, start, exclusive, limit)?)
}

/// The latest snapshot (see [`crate::Store::latest_snapshot`]).
pub(crate) fn latest_snapshot(
    view: &impl View,
    object: &str,
) -> Result<Option<Snapshot>, ReadError> {
    known(view, object)?;
    Ok(view.snapshot(object)?)
}
