//! The replica: documents loaded from and written to the store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use converge_crdt::{Dot, ReplicaId, VersionVector};
use converge_doc::{Change, Doc, DocError, Patch, PathChange, decode_changes, encode_changes};
use converge_store::{
    AppendError, Entry, ReadError, RedbStore, Store, StoreError, VerifyProgress, VerifyReport,
    validate_object_id,
};
use converge_sync::Interest;
use converge_sync::membership::{SYSTEM_PREFIX, is_system_object};
use tokio::sync::{broadcast, watch};

use crate::commit::{Append, Committer};
use crate::feed::FeedHub;
use crate::sync::SyncHub;

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Directory holding the store and the node's identity (created if missing).
    pub data_dir: PathBuf,
    /// The replica id; by default the one stored in the data directory, or
    /// a new random one saved there on first start.
    pub replica: Option<ReplicaId>,
    /// Most changes in one request.
    pub max_changes_per_request: usize,
    /// Peers to connect to and sync with (`ws://HOST:PORT/v1/sync`).
    pub peers: Vec<String>,
    /// The objects this node asks of the peers it dials: by default every
    /// one. A replica holding a slice of a node's documents (a client)
    /// narrows it; it still sends every object of its own the peer wants.
    pub peer_interest: Interest,
    /// Most sync sessions accepted at once on `/v1/sync`.
    pub max_sync_sessions: usize,
    /// This node's sync endpoint as other nodes should dial it
    /// (`ws://HOST:PORT/v1/sync`), written into the membership object;
    /// `None`: other nodes learn of this node but cannot dial it.
    pub advertise: Option<String>,
    /// Mean time between gossip rounds (with jitter); `None` (the
    /// default for an embedded node) disables membership and gossip.
    /// Only `serve` gossips.
    pub gossip_interval: Option<std::time::Duration>,
    /// Most gossip sessions (beyond the configured peers) at once.
    pub max_gossip_sessions: usize,
    /// How long a cluster member must stay dead (unreachable) before this
    /// node forgets it: stops dialling it and leaves it out of the status.
    /// It is dialled again once it rewrites its entry (on its next start).
    /// `None` never forgets. Default: a day.
    pub forget_after: Option<std::time::Duration>,
    /// Track what each configured peer durably holds of every document, as
    /// its sync sessions learn it ([`Node::peer_durable`]): a client uses
    /// it to wait until its edits are saved upstream. Default off.
    pub track_peer_durable: bool,
}

impl NodeConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            replica: None,
            max_changes_per_request: 10_000,
            peers: Vec::new(),
            peer_interest: Interest::Prefix(String::new()),
            max_sync_sessions: 256,
            advertise: None,
            gossip_interval: None,
            max_gossip_sessions: 2,
            forget_after: Some(std::time::Duration::from_millis(
                converge_sync::membership::DEFAULT_FORGET_AFTER_MS,
            )),
            track_peer_durable: false,
        }
    }
}

/// Why a node operation failed. Each maps to an HTTP status in the API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// No document with this id.
    #[error("no document {0:?}")]
    NotFound(String),
    /// The document was deleted; its id takes no more writes.
    #[error("document {0:?} was deleted; its id takes no more writes (use a new id)")]
    Deleted(String),
    /// The request is invalid (bad id, bad change, too large); nothing was written.
    #[error("{0}")]
    BadRequest(String),
    /// The document refused the change; nothing was written.
    #[error(transparent)]
    Doc(#[from] DocError),
    /// The store failed; the request may be retried.
    #[error("storage failed: {0}")]
    Storage(String),
    /// The data directory cannot be used.
    #[error("data directory {path}: {message}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> Self {
        Self::Storage(e.to_string())
    }
}

/// One open document: its state, its next log seq, and its watchers.
///
/// Local changes are applied to `doc` at once and queued in `unflushed`;
/// one writer at a time (`flushing`) appends the whole queue durably and
/// publishes the outcome on `durable`. A writer answers only once its entry
/// is durable and watchers get patches only then, but reads of `doc` see a
/// change up to one commit before it is durable.
struct OpenDoc {
    doc: Doc,
    /// This node's next entry seq in the document's log.
    next_seq: u64,
    /// Entries applied to `doc` but not yet appended, in seq order.
    unflushed: Vec<Unflushed>,
    /// Whether a writer is appending a batch now.
    flushing: bool,
    /// A flush failed: the document is being dropped; writers must retry.
    failed: bool,
    /// How far this node's entries are durable, for the waiting writers.
    durable: watch::Sender<Durable>,
    /// The log entries folded into `doc`: replica -> last seq read. Entries
    /// that peers append are read from here on ([`Node::refresh`]).
    seen: VersionVector,
    patches: broadcast::Sender<Arc<Vec<Patch>>>,
}

/// A local change applied to the document and waiting to be appended.
struct Unflushed {
    entry: Entry,
    /// Its patches, sent to watchers once the entry is durable.
    patches: Vec<Patch>,
    /// Operations it carries (metrics).
    ops: u64,
}

/// The durable state of an open document's own log, as writers wait for it.
#[derive(Default)]
struct Durable {
    /// This node's entries up to this seq are durable.
    upto: u64,
    /// The store's version vector of the document after that append.
    version: Arc<VersionVector>,
    /// Entries from a seq on that will never be durable.
    failed: Option<FlushFailure>,
}

/// A failed flush: entries from `from` on were not stored.
struct FlushFailure {
    from: u64,
    kind: FailureKind,
    message: String,
}

/// Which [`NodeError`] a failed flush gives its writers.
#[derive(Clone, Copy)]
enum FailureKind {
    Deleted,
    BadRequest,
    Storage,
}

impl FlushFailure {
    fn new(from: u64, e: &NodeError) -> Self {
        let (kind, message) = match e {
            NodeError::Deleted(id) => (FailureKind::Deleted, id.clone()),
            NodeError::BadRequest(m) => (FailureKind::BadRequest, m.clone()),
            other => (FailureKind::Storage, other.to_string()),
        };
        Self {
            from,
            kind,
            message,
        }
    }

    fn error(&self) -> NodeError {
        let m = self.message.clone();
        match self.kind {
            FailureKind::Deleted => NodeError::Deleted(m),
            FailureKind::BadRequest => NodeError::BadRequest(m),
            FailureKind::Storage => NodeError::Storage(m),
        }
    }
}

/// What [`Node::import`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportOutcome {
    /// Operations the node did not hold before (0: it held everything).
    pub ops_added: u64,
    /// Entries appended to this node's log to carry them.
    pub entries: u64,
    /// The document's log version vector afterwards.
    pub version: VersionVector,
}

/// Imported changes are cut into entries of about this size, well under the
/// store's entry limit and the sync protocol's frame size, so that a large
/// import stores and replicates like ordinary edits.
const IMPORT_ENTRY_BYTES: usize = 256 << 10;

/// A replica hosting many documents on a durable store.
pub struct Node {
    replica: ReplicaId,
    store: Arc<dyn Store>,
    docs: Mutex<HashMap<String, Arc<tokio::sync::Mutex<OpenDoc>>>>,
    config: NodeConfig,
    /// The change feed fan-out: pulled after every append that added
    /// entries, local or from a peer, so that the sync sessions whose peers
    /// want them stream the new entries (live mode).
    feed: Arc<FeedHub>,
    /// Every durable append of the node's documents and sync sessions goes
    /// through it: one `append_many` for all that is queued.
    committer: Arc<Committer>,
    sync: SyncHub,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

const REPLICA_FILE: &str = "replica-id";
const STORE_FILE: &str = "store.redb";

impl Node {
    /// Opens (or creates) a node on `config.data_dir` with the embedded store.
    pub fn open(config: NodeConfig) -> Result<Self, NodeError> {
        let dir = &config.data_dir;
        let data_err = |message: String| NodeError::DataDir {
            path: dir.clone(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| data_err(format!("cannot create it: {e}")))?;
        let id_path = dir.join(REPLICA_FILE);
        let replica = match (config.replica, std::fs::read_to_string(&id_path)) {
            (Some(r), Ok(saved)) if saved.trim() != r.to_string() => {
                return Err(data_err(format!(
                    "it belongs to replica {}, not {r}: use another directory or drop --replica-id",
                    saved.trim()
                )));
            }
            (Some(r), _) => r,
            (None, Ok(saved)) => saved
                .trim()
                .parse()
                .map_err(|e| data_err(format!("{REPLICA_FILE} is unreadable: {e}")))?,
            (None, Err(_)) => ReplicaId::random(),
        };
        if !id_path.exists() {
            std::fs::write(&id_path, format!("{replica}\n"))
                .map_err(|e| data_err(format!("cannot save the replica id: {e}")))?;
        }
        let store = RedbStore::open(dir.join(STORE_FILE)).map_err(|e| data_err(e.to_string()))?;
        Ok(Self::with_store(replica, Arc::new(store), config))
    }

    /// Checks the store in a node's data directory, offline: opens it as a
    /// node would (replaying its write-ahead log), then reads every record
    /// and checks it (see [`RedbStore::verify`]), calling `progress` as it
    /// goes. Creates nothing: a directory without a store is an error, and
    /// so is a store a running node holds open.
    pub fn verify_data_dir(
        dir: &Path,
        progress: &mut dyn FnMut(VerifyProgress),
    ) -> Result<VerifyReport, NodeError> {
        let data_err = |message: String| NodeError::DataDir {
            path: dir.to_path_buf(),
            message,
        };
        let path = dir.join(STORE_FILE);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Err(data_err(format!("{STORE_FILE} is not a file"))),
            Err(e) => return Err(data_err(format!("holds no store ({STORE_FILE}: {e})"))),
        }
        let store = RedbStore::open(&path).map_err(|e| data_err(e.to_string()))?;
        store
            .verify_with_progress(progress)
            .map_err(|e| data_err(e.to_string()))
    }

    /// A node on any store (tests use [`converge_store::MemoryStore`]).
    pub fn with_store(replica: ReplicaId, store: Arc<dyn Store>, config: NodeConfig) -> Self {
        let sync = SyncHub::new(replica, &config);
        let feed = Arc::new(FeedHub::new());
        let committer = Committer::new(&store, feed.clone());
        Self {
            replica,
            store,
            docs: Mutex::new(HashMap::new()),
            config,
            feed,
            committer,
            sync,
        }
    }

    /// This node's replica id.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Replication state: peers, sessions, shutdown.
    pub(crate) fn sync(&self) -> &SyncHub {
        &self.sync
    }

    /// The change feed fan-out the sync sessions listen to.
    pub(crate) fn feed(&self) -> &Arc<FeedHub> {
        &self.feed
    }

    /// The node's commit queue.
    pub(crate) fn committer(&self) -> &Arc<Committer> {
        &self.committer
    }

    /// Tells sync sessions that the store gained entries.
    pub(crate) fn notify_appended(&self) {
        self.feed.pull(&*self.store);
    }

    /// Number of documents open in memory.
    pub fn open_docs(&self) -> usize {
        self.docs.lock().map_or(0, |d| d.len())
    }

    /// The document as JSON.
    pub async fn get(&self, id: &str) -> Result<serde_json::Value, NodeError> {
        let open = self.open_doc(id, false).await?;
        let guard = open.lock().await;
        Ok(guard.doc.to_json())
    }

    /// Applies `changes` as one change on this node's replica, durably.
    /// Returns the document's log version vector afterwards. Ids under
    /// [`SYSTEM_PREFIX`] (the node's membership) are refused.
    pub async fn change(
        &self,
        id: &str,
        changes: &[PathChange],
    ) -> Result<VersionVector, NodeError> {
        refuse_system_object(id)?;
        self.change_any(id, changes).await
    }

    /// [`Node::change`] on any object, system objects included.
    pub(crate) async fn change_any(
        &self,
        id: &str,
        changes: &[PathChange],
    ) -> Result<VersionVector, NodeError> {
        if changes.len() > self.config.max_changes_per_request {
            return Err(NodeError::BadRequest(format!(
                "{} changes in one request exceed the limit of {}",
                changes.len(),
                self.config.max_changes_per_request
            )));
        }
        let open = self.open_doc(id, true).await?;
        let mut guard = open.lock().await;
        if guard.failed {
            drop(guard);
            // Normally evicted by the writer that saw the flush fail; this
            // covers that writer having been cancelled.
            self.evict(id);
            return Err(NodeError::Storage(
                "an earlier write to this document failed; retry".into(),
            ));
        }
        let before = guard.doc.version().clone();
        let patches = guard.doc.apply(changes)?;
        let new = guard.doc.changes_since(&before);
        if new.is_empty() {
            drop(guard);
            return self.log_version(id).await;
        }
        let seq = guard.next_seq;
        guard.next_seq += 1;
        guard.unflushed.push(Unflushed {
            entry: Entry::new(seq, encode_changes(&new)),
            patches,
            ops: new.iter().map(|c| c.ops.len() as u64).sum(),
        });
        let durable = guard.durable.subscribe();
        drop(guard);
        self.await_durable(id, &open, durable, seq).await
    }

    /// Waits until a flush of `open` covers this node's entry `seq`,
    /// flushing whenever no one else is: every writer of a hot document
    /// shares one durable append instead of queueing behind its lock.
    /// Returns the document's log version vector after that flush.
    async fn await_durable(
        &self,
        id: &str,
        open: &Arc<tokio::sync::Mutex<OpenDoc>>,
        mut durable: watch::Receiver<Durable>,
        seq: u64,
    ) -> Result<VersionVector, NodeError> {
        loop {
            match &*durable.borrow_and_update() {
                Durable {
                    failed: Some(f), ..
                } if f.from <= seq => return Err(f.error()),
                Durable { upto, version, .. } if *upto >= seq => {
                    return Ok((**version).clone());
                }
                _ => {}
            }
            let batch = {
                let mut guard = open.lock().await;
                if guard.flushing || guard.unflushed.is_empty() {
                    None
                } else {
                    guard.flushing = true;
                    Some(std::mem::take(&mut guard.unflushed))
                }
            };
            match batch {
                Some(batch) => {
                    // A task of its own: dropping this request (its client
                    // went away) must not leave the document flushing forever.
                    let flushed = tokio::spawn(flush(
                        self.committer.clone(),
                        self.store.clone(),
                        self.replica,
                        id.to_string(),
                        open.clone(),
                        batch,
                    ))
                    .await;
                    if !matches!(flushed, Ok(true)) {
                        self.evict(id);
                    }
                }
                None => {
                    // The flusher sends when done; a closed channel cannot
                    // happen while `open` holds the sender.
                    let _ = durable.changed().await;
                }
            }
        }
    }

    /// The document `id` with its whole history, in converge-doc's canonical
    /// encoding ([`Doc::encode`]): what [`Node::import`] takes back, on this
    /// node or any other.
    pub async fn export(&self, id: &str) -> Result<Vec<u8>, NodeError> {
        let open = self.open_doc(id, false).await?;
        let guard = open.lock().await;
        Ok(guard.doc.encode())
    }

    /// Merges a document encoding ([`Doc::encode`], as [`Node::export`]
    /// gives) into the document `id`, creating it if needed, durably.
    ///
    /// The bytes are validated whole first (decoded and replayed into a
    /// scratch document): bad bytes are a [`NodeError::BadRequest`] and
    /// nothing is written. Then the changes this node lacks are applied and
    /// appended as entries of **this node's own log**, like a local edit, so
    /// they replicate to peers. They are not written into their authors'
    /// logs: a replica's log seqs are that replica's alone, and an entry
    /// made up here at a seq its author later uses for other bytes would be
    /// a conflict that splits the log for good (DESIGN.md: a replica only
    /// ever appends to its own log). Operations keep their authors' ids, so
    /// a peer that also gets them from their authors holds them once.
    ///
    /// Importing what the node already holds appends nothing.
    pub async fn import(&self, id: &str, bytes: Vec<u8>) -> Result<ImportOutcome, NodeError> {
        validate_object_id(id).map_err(|e| NodeError::BadRequest(e.to_string()))?;
        refuse_system_object(id)?;
        let replica = self.replica;
        // Replaying a history is CPU work: keep it off the async threads.
        let incoming = tokio::task::spawn_blocking(move || Doc::load(&bytes, replica))
            .await
            .map_err(|e| NodeError::Storage(format!("import task failed: {e}")))?
            .map_err(|e| {
                NodeError::BadRequest(format!("not a valid converge document encoding: {e}"))
            })?;
        if incoming.history_len() == 0 {
            // Nothing to merge: do not open (and so create) the document.
            return Ok(ImportOutcome {
                ops_added: 0,
                entries: 0,
                version: self.log_version_or_empty(id).await?,
            });
        }
        let open = self.open_doc(id, true).await?;
        let mut guard = open.lock().await;
        let missing = incoming.changes_since(guard.doc.version());
        if missing.is_empty() {
            drop(guard);
            return Ok(ImportOutcome {
                ops_added: 0,
                entries: 0,
                version: self.log_version_or_empty(id).await?,
            });
        }
        if guard.failed {
            drop(guard);
            self.evict(id);
            return Err(NodeError::Storage(
                "an earlier write to this document failed; retry".into(),
            ));
        }
        let ops_added = missing.iter().map(|c| c.ops.len() as u64).sum();
        let patches = guard.doc.apply_changes(&missing)?;
        let first = guard.next_seq;
        let entries: Vec<Entry> = chunk_changes(missing, IMPORT_ENTRY_BYTES)
            .into_iter()
            .zip(first..)
            .map(|(chunk, seq)| Entry::new(seq, encode_changes(&chunk)))
            .collect();
        let count = entries.len() as u64;
        let last = first + count - 1;
        guard.next_seq = last + 1;
        // Through the document's append queue, behind any change waiting
        // there, so that seqs reach the store in order; the patches go out
        // with the last entry, once all are durable.
        let mut patches = Some(patches);
        for entry in entries {
            let is_last = entry.seq == last;
            guard.unflushed.push(Unflushed {
                entry,
                patches: if is_last {
                    patches.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
                ops: 0,
            });
        }
        let durable = guard.durable.subscribe();
        drop(guard);
        let version = self.await_durable(id, &open, durable, last).await?;
        metrics::counter!("converge_ops_imported_total").increment(ops_added);
        Ok(ImportOutcome {
            ops_added,
            entries: count,
            version,
        })
    }

    /// Patches of `id` as they happen (the document must exist).
    pub async fn watch(&self, id: &str) -> Result<broadcast::Receiver<Arc<Vec<Patch>>>, NodeError> {
        let open = self.open_doc(id, false).await?;
        let guard = open.lock().await;
        Ok(guard.patches.subscribe())
    }

    /// Patches of `id` as they happen, like [`Node::watch`], but also for a
    /// document that has no entries yet: it is opened empty (nothing is
    /// written) so that the first local change or the first entries a peer
    /// brings reach the receiver. An embedded client subscribes this way
    /// before its first sync. Until something is written, [`Node::get`]
    /// reads such a document as empty rather than not found, so a server
    /// answering HTTP should keep to [`Node::watch`].
    pub async fn watch_new(
        &self,
        id: &str,
    ) -> Result<broadcast::Receiver<Arc<Vec<Patch>>>, NodeError> {
        let open = self.open_doc(id, true).await?;
        let guard = open.lock().await;
        Ok(guard.patches.subscribe())
    }

    /// Document ids starting with `prefix`, after `after`, at most `limit`.
    pub async fn list(
        &self,
        prefix: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<String>, NodeError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.list_objects(&prefix, after.as_deref(), limit))
            .await
            .map_err(|e| NodeError::Storage(e.to_string()))?
            .map_err(read_error)
    }

    /// The store's version vector of `id` (log seqs per replica).
    pub async fn log_version(&self, id: &str) -> Result<VersionVector, NodeError> {
        let store = self.store.clone();
        let object = id.to_string();
        tokio::task::spawn_blocking(move || store.version_vector(&object))
            .await
            .map_err(|e| NodeError::Storage(e.to_string()))?
            .map_err(read_error)
    }

    /// [`Node::log_version`], but empty for a document that has no entry yet.
    async fn log_version_or_empty(&self, id: &str) -> Result<VersionVector, NodeError> {
        match self.log_version(id).await {
            Err(NodeError::NotFound(_)) => Ok(VersionVector::new()),
            other => other,
        }
    }

    /// Brings the open document `id` up to date with its logs in the store
    /// (after a peer appended entries): reads each replica's entries past
    /// those already folded, hands them to the document, and sends the
    /// patches to watchers. A document that is not open needs nothing: it
    /// loads from the store on first use.
    pub async fn refresh(&self, id: &str) -> Result<(), NodeError> {
        let Some(open) = self.docs.lock().ok().and_then(|d| d.get(id).cloned()) else {
            return Ok(());
        };
        let mut guard = open.lock().await;
        let store = self.store.clone();
        // Every entry of ours up to `next_seq` is in the document already,
        // durable or still being flushed: never read those back.
        let mut seen = guard.seen.clone();
        seen.set(
            self.replica,
            seen.get(self.replica).max(guard.next_seq.saturating_sub(1)),
        );
        let object = id.to_string();
        let read = tokio::task::spawn_blocking(move || read_new(&*store, &object, &seen))
            .await
            .map_err(|e| NodeError::Storage(format!("read task failed: {e}")))
            .and_then(|r| r);
        let (changes, seen) = match read {
            Ok(r) => r,
            Err(e) => {
                drop(guard);
                self.evict(id);
                return Err(e);
            }
        };
        if changes.is_empty() && seen == guard.seen {
            return Ok(());
        }
        // Our own log only grows through `change` unless a peer hands back
        // entries this store lost (a data directory restored from an old
        // copy): never reuse a seq that exists elsewhere.
        guard.next_seq = guard.next_seq.max(seen.get(self.replica) + 1);
        guard.seen = seen;
        match receive_in_chunks(&mut guard.doc, changes) {
            Ok(patches) => {
                metrics::counter!("converge_remote_changes_applied_total").increment(1);
                if !patches.is_empty() {
                    let _ = guard.patches.send(Arc::new(patches));
                }
                Ok(())
            }
            Err(e) => {
                // The in-memory state may be half-updated: reload on next use.
                drop(guard);
                self.evict(id);
                Err(NodeError::Doc(e))
            }
        }
    }

    /// Deletes document `id` for good (a durable tombstone that peers
    /// receive, so it never comes back). Returns whether this call deleted it.
    pub async fn delete(&self, id: &str) -> Result<bool, NodeError> {
        validate_object_id(id).map_err(|e| NodeError::BadRequest(e.to_string()))?;
        refuse_system_object(id)?;
        let store = self.store.clone();
        let object = id.to_string();
        let outcome = tokio::task::spawn_blocking(move || store.delete_object(&object))
            .await
            .map_err(|e| NodeError::Storage(format!("delete task failed: {e}")))?
            .map_err(|e| match e {
                converge_store::DeleteError::ObjectId(e) => NodeError::BadRequest(e.to_string()),
                other => NodeError::Storage(other.to_string()),
            })?;
        self.evict(id);
        if outcome.deleted {
            // Sessions follow the change feed: tell them a deletion is there.
            self.notify_appended();
        }
        Ok(outcome.deleted)
    }

    /// Drops the open copy of `id` (it was deleted, or went stale).
    pub(crate) fn evict(&self, id: &str) {
        if let Ok(mut docs) = self.docs.lock() {
            docs.remove(id);
        }
    }

    /// The open document `id`, loading it from the store on first use.
    async fn open_doc(
        &self,
        id: &str,
        create: bool,
    ) -> Result<Arc<tokio::sync::Mutex<OpenDoc>>, NodeError> {
        validate_object_id(id).map_err(|e| NodeError::BadRequest(e.to_string()))?;
        if let Some(d) = self.docs.lock().ok().and_then(|d| d.get(id).cloned()) {
            return Ok(d);
        }
        let store = self.store.clone();
        let (object, replica, create_missing) = (id.to_string(), self.replica, create);
        let loaded = tokio::task::spawn_blocking(move || {
            load_doc(&*store, &object, replica, create_missing)
        })
        .await
        .map_err(|e| NodeError::Storage(e.to_string()))??;
        let (open, inserted) = {
            let mut docs = self
                .docs
                .lock()
                .map_err(|_| NodeError::Storage("document table poisoned".into()))?;
            // Another request may have loaded it meanwhile: keep the first.
            match docs.entry(id.to_string()) {
                std::collections::hash_map::Entry::Occupied(e) => (e.get().clone(), false),
                std::collections::hash_map::Entry::Vacant(e) => (
                    e.insert(Arc::new(tokio::sync::Mutex::new(loaded))).clone(),
                    true,
                ),
            }
        };
        if inserted {
            // A peer may have appended between the load and the insert,
            // when no refresh could find the document open.
            self.refresh(id).await?;
        }
        Ok(open)
    }
}

/// Appends `batch` (the document's unflushed entries, in seq order) in
/// one durable append through the node's committer, then publishes the
/// outcome to the waiting writers. Returns whether it succeeded; on
/// failure the caller drops the document.
async fn flush(
    committer: Arc<Committer>,
    store: Arc<dyn Store>,
    replica: ReplicaId,
    id: String,
    open: Arc<tokio::sync::Mutex<OpenDoc>>,
    batch: Vec<Unflushed>,
) -> bool {
    let entries: Vec<Entry> = batch.iter().map(|u| u.entry.clone()).collect();
    let (first, last) = (
        entries.first().map_or(0, |e| e.seq),
        entries.last().map_or(0, |e| e.seq),
    );
    let committed = committer
        .commit(vec![Append {
            object: id.clone(),
            replica,
            entries,
        }])
        .await
        .pop();
    // The version vector is read here, right after the append: a store
    // read, off the committer's path to the next sync.
    let outcome = match committed {
        Some(Ok(_)) => store.version_vector(&id).map_err(read_error),
        Some(Err(e)) => Err(append_error(e)),
        None => Err(NodeError::Storage("the committer gave no answer".into())),
    };
    let mut guard = open.lock().await;
    guard.flushing = false;
    match outcome {
        Ok(version) => {
            let own = guard.seen.get(replica).max(last);
            guard.seen.set(replica, own);
            for u in batch {
                metrics::counter!("converge_entries_appended_total").increment(1);
                metrics::counter!("converge_ops_applied_total").increment(u.ops);
                if !u.patches.is_empty() {
                    // No watcher is fine: send only fails when nobody listens.
                    let _ = guard.patches.send(Arc::new(u.patches));
                }
            }
            guard.durable.send_modify(|d| {
                d.upto = last;
                d.version = Arc::new(version);
            });
            // The committer told the sync sessions (it pulled the feed).
            true
        }
        Err(e) => {
            // The document holds changes that are not stored: drop it
            // (it reloads from the store on next use) and fail every
            // write from this batch on, including those queued behind it.
            guard.failed = true;
            guard.unflushed.clear();
            guard.durable.send_modify(|d| {
                d.failed = Some(FlushFailure::new(first, &e));
            });
            false
        }
    }
}

/// Reads every log of `object` and rebuilds the document.
fn load_doc(
    store: &dyn Store,
    object: &str,
    replica: ReplicaId,
    create: bool,
) -> Result<OpenDoc, NodeError> {
    let vv = match store.version_vector(object) {
        Ok(vv) => vv,
        Err(ReadError::UnknownObject { .. }) if create => VersionVector::new(),
        Err(ReadError::UnknownObject { .. }) => {
            return Err(NodeError::NotFound(object.to_string()));
        }
        Err(e) => return Err(read_error(e)),
    };
    let mut doc = Doc::new(replica);
    let (changes, seen) = read_new(store, object, &VersionVector::new())?;
    // Entries of different replicas may depend on each other: hold and retry.
    receive_in_chunks(&mut doc, changes)?;
    if doc.pending_changes() > 0 {
        // Peers deliver each replica's log in order but the logs in any
        // order, so an entry may be stored before one of another replica
        // it depends on. The document holds it until that arrives.
        tracing::debug!(
            object,
            pending = doc.pending_changes(),
            "stored changes wait for their dependencies"
        );
    }
    let (patches, _) = broadcast::channel(256);
    let next_seq = vv.get(replica).max(seen.get(replica)) + 1;
    let durable = Durable {
        upto: next_seq - 1,
        ..Durable::default()
    };
    Ok(OpenDoc {
        doc,
        next_seq,
        unflushed: Vec::new(),
        flushing: false,
        failed: false,
        durable: watch::channel(durable).0,
        seen,
        patches,
    })
}

/// Changes handed to the document at once when folding stored logs.
/// `Doc::receive_changes` refuses a batch that could overflow its pending
/// limit (10,000 by default) before applying any of it, so a document
/// whose logs held more changes could not be loaded at all (the `node`
/// bench's `sync-writes-1` found it). Logs are read in seq order, so in
/// chunks everything in order applies at once and never waits.
const RECEIVE_CHUNK: usize = 1024;

/// `doc.receive_changes(changes)`, [`RECEIVE_CHUNK`] changes at a time.
fn receive_in_chunks(doc: &mut Doc, changes: Vec<Change>) -> Result<Vec<Patch>, DocError> {
    let mut patches = Vec::new();
    let mut changes = changes.into_iter().peekable();
    while changes.peek().is_some() {
        let chunk: Vec<Change> = changes.by_ref().take(RECEIVE_CHUNK).collect();
        patches.extend(doc.receive_changes(chunk)?);
    }
    Ok(patches)
}

/// The changes in `object`'s logs past `seen`, decoded, and the new `seen`.
fn read_new(
    store: &dyn Store,
    object: &str,
    seen: &VersionVector,
) -> Result<(Vec<Change>, VersionVector), NodeError> {
    let vv = match store.version_vector(object) {
        Ok(vv) => vv,
        Err(ReadError::UnknownObject { .. }) => return Ok((Vec::new(), seen.clone())),
        Err(e) => return Err(read_error(e)),
    };
    let mut seen = seen.clone();
    let mut changes = Vec::new();
    for (r, last) in vv.iter() {
        let mut seq = seen.get(r) + 1;
        while seq <= last {
            let entries = store.read(object, r, seq, 1024).map_err(read_error)?;
            if entries.is_empty() {
                break;
            }
            for e in &entries {
                let batch = decode_changes(&e.bytes, 64 << 20).map_err(|err| {
                    NodeError::Storage(format!(
                        "entry {object}/{r}/{} does not decode: {err}",
                        e.seq
                    ))
                })?;
                changes.extend(batch);
                seq = e.seq + 1;
            }
            seen.set(r, seq - 1);
        }
    }
    Ok((changes, seen))
}

/// Refuses a user's write to an object the node keeps for itself.
fn refuse_system_object(id: &str) -> Result<(), NodeError> {
    if is_system_object(id) {
        return Err(NodeError::BadRequest(format!(
            "object ids starting with {SYSTEM_PREFIX:?} are reserved for the node ({id:?} is written by the node itself)"
        )));
    }
    Ok(())
}

fn read_error(e: ReadError) -> NodeError {
    match e {
        ReadError::UnknownObject { object } => NodeError::NotFound(object),
        ReadError::Deleted { object } => NodeError::Deleted(object),
        ReadError::ObjectId(e) => NodeError::BadRequest(e.to_string()),
        other => NodeError::Storage(other.to_string()),
    }
}

fn append_error(e: AppendError) -> NodeError {
    match e {
        AppendError::Deleted { object } => NodeError::Deleted(object),
        AppendError::ObjectId(e) => NodeError::BadRequest(e.to_string()),
        AppendError::EntryTooLarge { .. } => NodeError::BadRequest(e.to_string()),
        other => NodeError::Storage(other.to_string()),
    }
}

/// Cuts `changes` (in causal order) into consecutive runs whose encodings
/// are about `target` bytes at most, for one entry each. A change larger
/// than that is first split at operation boundaries: the second part starts
/// at the next counter with the first part's last operation as its only
/// parent, which is the same history (within a change each operation's
/// parent is the one before).
fn chunk_changes(changes: Vec<Change>, target: usize) -> Vec<Vec<Change>> {
    let mut runs = Vec::new();
    let (mut run, mut size) = (Vec::new(), 0);
    for c in changes.into_iter().flat_map(|c| split_change(c, target)) {
        let len = encode_changes(std::slice::from_ref(&c)).len();
        if !run.is_empty() && size + len > target {
            runs.push(std::mem::take(&mut run));
            size = 0;
        }
        size += len;
        run.push(c);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// `c` as changes of about `target` encoded bytes (see [`chunk_changes`]).
fn split_change(c: Change, target: usize) -> Vec<Change> {
    let len = encode_changes(std::slice::from_ref(&c)).len();
    if len <= target || c.ops.len() < 2 {
        return vec![c];
    }
    let per = c.ops.len().div_ceil(len.div_ceil(target.max(1)));
    let Change { id, parents, ops } = c;
    let mut out: Vec<Change> = Vec::new();
    let mut ops = ops.into_iter().peekable();
    let mut counter = id.counter;
    while ops.peek().is_some() {
        let piece: Vec<_> = ops.by_ref().take(per).collect();
        let parents = if out.is_empty() {
            parents.clone()
        } else {
            vec![Dot::new(id.replica, counter - 1)]
        };
        let n = piece.len() as u64;
        out.push(Change {
            id: Dot::new(id.replica, counter),
            parents,
            ops: piece,
        });
        counter += n;
    }
    out
}
