//! [`MemoryStore`]: the whole store in memory, behind one mutex.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use converge_crdt::{ReplicaId, VersionVector};

use crate::format::Head;
use crate::logic::{self, Page, Txn, View};
use crate::{
    AppendError, AppendOutcome, AppendRequest, CompactOutcome, DeleteError, DeleteOutcome, Entry,
    FeedItem, FeedKind, ReadError, Snapshot, SnapshotError, Store, StoreConfig, StoreError,
    Tombstone,
};

/// A [`Store`] that keeps everything in memory: for tests and for replicas
/// that need no durability. Nothing survives the value being dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    config: StoreConfig,
    state: Mutex<State>,
}

/// The tables of a [`MemoryStore`] (also a plain in-memory [`View`] and
/// [`Txn`] for the tests of other backends' layers).
#[derive(Debug, Default)]
pub(crate) struct State {
    objects: BTreeSet<String>,
    heads: BTreeMap<(String, ReplicaId), Head>,
    log: BTreeMap<(String, ReplicaId, u64), Vec<u8>>,
    feed: BTreeMap<u64, FeedItem>,
    snapshots: BTreeMap<String, Snapshot>,
    tombstones: BTreeMap<String, Tombstone>,
}

impl MemoryStore {
    /// An empty store with the default [`StoreConfig`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with the given limits.
    pub fn with_config(config: StoreConfig) -> Self {
        Self {
            config,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every write checks before it mutates, so a panic under the lock
        // (a bug) cannot leave a half-applied write behind: keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn append(
        &self,
        object: &str,
        replica: ReplicaId,
        entries: &[Entry],
    ) -> Result<AppendOutcome, AppendError> {
        logic::check_batch(&self.config, object, entries)?;
        logic::append(&mut *self.state(), object, replica, entries)
    }

    /// Takes the lock once for the whole call, so the requests are applied
    /// together, in order, with no other write between them.
    fn append_many(
        &self,
        requests: &[AppendRequest<'_>],
    ) -> Vec<Result<AppendOutcome, AppendError>> {
        let mut state = self.state();
        requests
            .iter()
            .map(|r| {
                logic::check_batch(&self.config, r.object, r.entries)?;
                logic::append(&mut *state, r.object, r.replica, r.entries)
            })
            .collect()
    }

    fn read(
        &self,
        object: &str,
        replica: ReplicaId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, ReadError> {
        logic::read(
            &*self.state(),
            &self.config,
            object,
            replica,
            from_seq,
            limit,
        )
    }

    fn version_vector(&self, object: &str) -> Result<VersionVector, ReadError> {
        logic::version_vector(&*self.state(), object)
    }

    fn list_objects(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, ReadError> {
        logic::list_objects(&*self.state(), prefix, after, limit)
    }

    fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<FeedItem>, StoreError> {
        self.state().feed(after, limit)
    }

    fn feed_head(&self) -> Result<u64, StoreError> {
        View::feed_head(&*self.state())
    }

    fn put_snapshot(
        &self,
        object: &str,
        version_vector: &VersionVector,
        bytes: &[u8],
    ) -> Result<(), SnapshotError> {
        logic::put_snapshot(
            &mut *self.state(),
            &self.config,
            object,
            version_vector,
            bytes,
        )
    }

    fn latest_snapshot(&self, object: &str) -> Result<Option<Snapshot>, ReadError> {
        logic::latest_snapshot(&*self.state(), object)
    }

    fn compact(
        &self,
        object: &str,
        horizon: &VersionVector,
    ) -> Result<CompactOutcome, SnapshotError> {
        logic::compact(&mut *self.state(), object, horizon)
    }

    fn delete_object(&self, object: &str) -> Result<DeleteOutcome, DeleteError> {
        logic::delete_object(&mut *self.state(), object)
    }

    fn tombstone(&self, object: &str) -> Result<Option<Tombstone>, ReadError> {
        logic::tombstone(&*self.state(), object)
    }

    fn list_tombstones(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, ReadError> {
        logic::list_tombstones(&*self.state(), prefix, after, limit)
    }
}

/// Up to `limit` keys of `keys` from `start` on, while they start with `prefix`.
fn range_of<'a>(keys: impl Iterator<Item = &'a String>, prefix: &str, limit: usize) -> Vec<String> {
    keys.take_while(|o| o.starts_with(prefix))
        .take(limit)
        .cloned()
        .collect()
}

fn lower(start: &str, exclusive: bool) -> Bound<&str> {
    if exclusive {
        Bound::Excluded(start)
    } else {
        Bound::Included(start)
    }
}

impl View for State {
    fn object_exists(&self, object: &str) -> Result<bool, StoreError> {
        Ok(self.objects.contains(object))
    }

    fn head(&self, object: &str, replica: ReplicaId) -> Result<Head, StoreError> {
        Ok(self
            .heads
            .get(&(object.to_owned(), replica))
            .copied()
            .unwrap_or_default())
    }

    fn heads(&self, object: &str) -> Result<Vec<(ReplicaId, Head)>, StoreError> {
        let from = (object.to_owned(), ReplicaId::from_u64(0));
        Ok(self
            .heads
            .range(from..)
            .take_while(|((o, _), _)| o == object)
            .map(|((_, replica), head)| (*replica, *head))
            .collect())
    }

    fn entries(
        &self,
        object: &str,
        replica: ReplicaId,
        from: u64,
        to: u64,
        mut max_bytes: usize,
    ) -> Result<Page, StoreError> {
        let key = |seq| (object.to_owned(), replica, seq);
        let mut page = Page {
            entries: Vec::new(),
            capped: false,
        };
        for ((_, _, seq), bytes) in self.log.range(key(from)..=key(to)) {
            if !page.push(Entry::new(*seq, bytes.clone()), &mut max_bytes) {
                break;
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
        let keys = self
            .objects
            .range::<str, _>((lower(start, exclusive), Bound::Unbounded));
        Ok(range_of(keys, prefix, limit))
    }

    fn tombstones(
        &self,
        prefix: &str,
        start: &str,
        exclusive: bool,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let keys = self
            .tombstones
            .range::<str, _>((lower(start, exclusive), Bound::Unbounded))
            .map(|(k, _)| k);
        Ok(range_of(keys, prefix, limit))
    }

    fn tombstone(&self, object: &str) -> Result<Option<Tombstone>, StoreError> {
        Ok(self.tombstones.get(object).cloned())
    }

    fn feed(&self, after: u64, limit: usize) -> Result<Vec<FeedItem>, StoreError> {
        Ok(self
            .feed
            .range((Bound::Excluded(after), Bound::Unbounded))
            .take(limit)
            .map(|(_, item)| item.clone())
            .collect())
    }

    fn feed_head(&self) -> Result<u64, StoreError> {
        Ok(self.feed.keys().next_back().copied().unwrap_or(0))
    }

    fn snapshot(&self, object: &str) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.snapshots.get(object).cloned())
    }
}

impl Txn for State {
    fn create_object(&mut self, object: &str) -> Result<(), StoreError> {
        self.objects.insert(object.to_owned());
        Ok(())
    }

    fn put_entries(
        &mut self,
        object: &str,
        replica: ReplicaId,
        entries: &[Entry],
    ) -> Result<(), StoreError> {
        for entry in entries {
            self.log
                .insert((object.to_owned(), replica, entry.seq), entry.bytes.clone());
        }
        Ok(())
    }

    fn remove_entries(
        &mut self,
        object: &str,
        replica: ReplicaId,
        from: u64,
        to: u64,
    ) -> Result<(), StoreError> {
        for seq in from..=to {
            self.log.remove(&(object.to_owned(), replica, seq));
        }
        Ok(())
    }

    fn set_head(&mut self, object: &str, replica: ReplicaId, head: Head) -> Result<(), StoreError> {
        self.heads.insert((object.to_owned(), replica), head);
        Ok(())
    }

    fn remove_object(&mut self, object: &str) -> Result<(), StoreError> {
        self.objects.remove(object);
        Ok(())
    }

    fn remove_head(&mut self, object: &str, replica: ReplicaId) -> Result<(), StoreError> {
        self.heads.remove(&(object.to_owned(), replica));
        Ok(())
    }

    fn remove_snapshot(&mut self, object: &str) -> Result<(), StoreError> {
        self.snapshots.remove(object);
        Ok(())
    }

    fn set_tombstone(&mut self, object: &str, tombstone: &Tombstone) -> Result<(), StoreError> {
        self.tombstones.insert(object.to_owned(), tombstone.clone());
        Ok(())
    }

    fn push_feed(
        &mut self,
        object: &str,
        replica: ReplicaId,
        first: u64,
        last: u64,
    ) -> Result<u64, StoreError> {
        let position = View::feed_head(self)? + 1;
        self.feed.insert(
            position,
            FeedItem {
                position,
                object: object.to_owned(),
                replica,
                first,
                last,
                kind: if first == 0 {
                    FeedKind::Delete
                } else {
                    FeedKind::Append
                },
            },
        );
        Ok(position)
    }

    fn set_snapshot(
        &mut self,
        object: &str,
        version_vector: &VersionVector,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.snapshots.insert(
            object.to_owned(),
            Snapshot {
                version_vector: version_vector.clone(),
                bytes: bytes.to_vec(),
            },
        );
        Ok(())
    }
}
