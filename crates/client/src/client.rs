//! The client: a local replica on its own store, syncing with one upstream node.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use converge_crdt::{ReplicaId, VersionVector};
use converge_doc::{DocError, Patch, PathChange, PathSeg};
use converge_node::{Interest, Node, NodeConfig, NodeError, PeerConnection};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

use crate::changes::Changes;

/// How a [`Client`] is set up: where its replica lives and which node it
/// syncs with.
///
/// ```
/// use converge::ClientConfig;
///
/// let config = ClientConfig::new("/tmp/my-app-replica").with_upstream("ws://127.0.0.1:7878/v1/sync");
/// assert_eq!(config.upstream.as_deref(), Some("ws://127.0.0.1:7878/v1/sync"));
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Directory holding the client's store and replica id (created if
    /// missing). One client at a time may use it.
    pub data_dir: PathBuf,
    /// The node to sync with: `ws://HOST:PORT/v1/sync`, or `http://HOST:PORT`
    /// (the sync path is added). `None` keeps the client offline: it edits
    /// and stores, and syncs once reopened with an upstream.
    pub upstream: Option<String>,
    /// The replica id local edits are written as; by default the one saved
    /// in `data_dir`, or a new random one saved there on first open. Two
    /// clients must never share one.
    pub replica: Option<ReplicaId>,
    /// The documents the client receives from upstream: by default all the
    /// node holds; `Interest::Prefix("user-42/".into())` narrows it to one
    /// user's. Every document written locally is sent up either way.
    pub interest: Interest,
}

impl ClientConfig {
    /// An offline client on `data_dir`, with the replica id saved there.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            upstream: None,
            replica: None,
            interest: Interest::Prefix(String::new()),
        }
    }

    /// Syncs with the node at `url` (see [`ClientConfig::upstream`]).
    pub fn with_upstream(mut self, url: impl Into<String>) -> Self {
        self.upstream = Some(url.into());
        self
    }

    /// Receives only the documents of `interest` from upstream (see
    /// [`ClientConfig::interest`]).
    pub fn with_interest(mut self, interest: Interest) -> Self {
        self.interest = interest;
        self
    }

    /// Writes local edits as `replica` (see [`ClientConfig::replica`]).
    pub fn with_replica(mut self, replica: ReplicaId) -> Self {
        self.replica = Some(replica);
        self
    }
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The upstream address cannot be used.
    #[error("upstream {url:?}: {why}")]
    Upstream {
        /// The address as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The data directory cannot be used (another client has it open, it
    /// belongs to another replica id, or it is not writable).
    #[error("data directory {path}: {message}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The change does not apply to the document (a wrong path, an index
    /// out of bounds); nothing was written.
    #[error(transparent)]
    Doc(#[from] DocError),
    /// The request is invalid (a bad document id, too many changes at
    /// once); nothing was written.
    #[error("{0}")]
    InvalidInput(String),
    /// The document was deleted; its id takes no more writes.
    #[error("document {0:?} was deleted; its id takes no more writes (use a new id)")]
    Deleted(String),
    /// The document does not have the shape asked of it ([`DocRef::get_as`]).
    #[error("the document does not have the shape asked for: {0}")]
    Shape(#[from] serde_json::Error),
    /// The store failed, or a task running it did; the call may be retried.
    #[error("storage failed: {0}")]
    Storage(String),
}

impl From<NodeError> for ClientError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Doc(e) => Self::Doc(e),
            NodeError::BadRequest(m) => Self::InvalidInput(m),
            NodeError::Deleted(id) => Self::Deleted(id),
            NodeError::DataDir { path, message } => Self::DataDir { path, message },
            other => Self::Storage(other.to_string()),
        }
    }
}

/// Where the client's connection to its upstream node stands
/// ([`Client::connection`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// The client does not sync: no upstream is configured, or it was set
    /// offline ([`Client::set_online`]). It edits locally all the same.
    Offline,
    /// Dialling the upstream (the first time, or again after a backoff).
    Connecting,
    /// A sync session is open: local edits go up and remote ones come
    /// down as they happen.
    Connected {
        /// The upstream node's replica id.
        upstream: ReplicaId,
    },
    /// The upstream could not be reached or the connection dropped; the
    /// next attempt is made after `retry_in` (doubling up to 5 s). Edits
    /// keep working meanwhile and are sent on reconnection.
    Backoff {
        /// The wait before the next attempt.
        retry_in: Duration,
        /// Why the last attempt or connection ended.
        error: String,
    },
    /// The client was closed.
    Closed,
}

impl ConnectionState {
    /// Whether a sync session with the upstream is open.
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected { .. })
    }

    fn from_peer(state: &PeerConnection) -> Self {
        match state {
            PeerConnection::Connecting => Self::Connecting,
            PeerConnection::Connected { peer } => Self::Connected { upstream: *peer },
            PeerConnection::Backoff { retry_in, error } => Self::Backoff {
                retry_in: *retry_in,
                error: error.clone(),
            },
            PeerConnection::Offline => Self::Offline,
            // `Stopped`, and whatever a later node reports.
            _ => Self::Closed,
        }
    }
}

/// How long [`Client::close`] waits for the sync session to say goodbye.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A local replica of many documents, on its own embedded store, that
/// syncs with one upstream node whenever it can reach it.
///
/// Every edit is durable in the client's store when the call returns,
/// online or not; the sync session sends it upstream as soon as it is
/// connected and brings remote edits in, which reach
/// [`DocRef::subscribe`]rs as patches. See the [crate docs](crate) for an
/// example.
#[derive(Debug)]
pub struct Client {
    node: Arc<Node>,
    state: Arc<watch::Sender<ConnectionState>>,
    /// Dropping it (with the client) or sending on it stops the sync task.
    shutdown: Option<oneshot::Sender<()>>,
    sync: Option<JoinHandle<()>>,
}

impl Client {
    /// Opens (or creates) the replica in `config.data_dir` and, with an
    /// upstream, starts syncing with it in the background. Does not wait
    /// for the connection: the client works offline from the start, and
    /// [`Client::connection`] tells when it is connected.
    ///
    /// Runs on tokio: call it (and the other methods) within a tokio
    /// runtime, which also runs the sync task and the store's blocking work.
    pub async fn open(config: ClientConfig) -> Result<Self, ClientError> {
        let upstream = config.upstream.as_deref().map(upstream_url).transpose()?;
        let mut node_config = NodeConfig::new(config.data_dir);
        node_config.replica = config.replica;
        node_config.peers = upstream.into_iter().collect();
        node_config.peer_interest = config.interest;
        // What the upstream holds durably, for `DocRef::wait_synced`.
        node_config.track_peer_durable = true;
        // Opening creates directories and opens (maybe recovers) the store.
        let node = tokio::task::spawn_blocking(move || Node::open(node_config))
            .await
            .map_err(|e| ClientError::Storage(format!("the open task failed: {e}")))??;
        let node = Arc::new(node);
        let Some(mut link) = node.peer_connection(0) else {
            return Ok(Self {
                node,
                state: Arc::new(watch::channel(ConnectionState::Offline).0),
                shutdown: None,
                sync: None,
            });
        };
        let state = Arc::new(watch::channel(ConnectionState::Connecting).0);
        let forward = state.clone();
        tokio::spawn(async move {
            // Ends when the node, and with it the peer's state, is gone.
            loop {
                let now = ConnectionState::from_peer(&link.borrow_and_update());
                forward.send_replace(now);
                if link.changed().await.is_err() {
                    break;
                }
            }
            forward.send_replace(ConnectionState::Closed);
        });
        let (shutdown, stop) = oneshot::channel::<()>();
        let sync = tokio::spawn(converge_node::sync_with_peers(node.clone(), async move {
            // A send or a drop of the client: either way, stop.
            let _ = stop.await;
        }));
        Ok(Self {
            node,
            state,
            shutdown: Some(shutdown),
            sync: Some(sync),
        })
    }

    /// Stops syncing (saying goodbye to the upstream) and closes the store,
    /// so the data directory can be opened again at once. Every edit made
    /// before is already durable: nothing is lost by dropping a client
    /// instead, but its store then closes in the background, when the
    /// sync session has ended.
    pub async fn close(self) -> Result<(), ClientError> {
        let Self {
            node,
            state,
            shutdown,
            sync,
        } = self;
        if let Some(shutdown) = shutdown {
            let _ = shutdown.send(());
        }
        if let Some(mut sync) = sync
            && tokio::time::timeout(CLOSE_TIMEOUT, &mut sync)
                .await
                .is_err()
        {
            sync.abort();
            tracing::warn!("the sync session did not close in time; dropped it");
        }
        state.send_replace(ConnectionState::Closed);
        // The peer tasks have ended, so this is the last handle, and
        // dropping it closes the store (which may write): off the runtime.
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        let mut node = node;
        loop {
            match Arc::try_unwrap(node) {
                Ok(node) => {
                    return tokio::task::spawn_blocking(move || drop(node))
                        .await
                        .map_err(|e| {
                            ClientError::Storage(format!("closing the store failed: {e}"))
                        });
                }
                Err(still_shared) if tokio::time::Instant::now() < deadline => {
                    node = still_shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    return Err(ClientError::Storage(
                        "a sync task still holds the store; it closes when that task ends".into(),
                    ));
                }
            }
        }
    }

    /// The replica id this client's edits are written as.
    pub fn replica(&self) -> ReplicaId {
        self.node.replica()
    }

    /// A handle on document `id` (which need not exist yet: a document
    /// nobody wrote reads as an empty object, and the first change creates it).
    pub fn doc<'a>(&'a self, id: &'a str) -> DocRef<'a> {
        DocRef { client: self, id }
    }

    /// Patches of document `id` from local and remote changes; the same
    /// as `client.doc(id).subscribe()`.
    pub async fn subscribe(&self, id: &str) -> Result<Subscription, ClientError> {
        self.doc(id).subscribe().await
    }

    /// The ids of every document this replica holds, in order.
    pub async fn documents(&self) -> Result<Vec<String>, ClientError> {
        const PAGE: usize = 1000;
        let mut ids: Vec<String> = Vec::new();
        loop {
            let page = self
                .node
                .list(String::new(), ids.last().cloned(), PAGE)
                .await?;
            let full = page.len() == PAGE;
            ids.extend(page);
            if !full {
                return Ok(ids);
            }
        }
    }

    /// The connection to the upstream, now and as it changes: a
    /// [`watch::Receiver`], so `wait_for` waits for a state and `changed`
    /// for the next one.
    pub fn connection(&self) -> watch::Receiver<ConnectionState> {
        self.state.subscribe()
    }

    /// The connection to the upstream right now.
    pub fn connection_state(&self) -> ConnectionState {
        self.state.borrow().clone()
    }

    /// Goes offline (`false`) or back online (`true`) without closing:
    /// offline, the sync session closes and the upstream is not dialled
    /// ([`ConnectionState::Offline`]); edits keep working and are durable
    /// locally, and go up with everything else once back online, which
    /// dials at once. A client starts online; without an upstream this
    /// does nothing.
    ///
    /// ```
    /// # async fn run(client: &converge::Client) -> Result<(), converge::ClientError> {
    /// use converge::path;
    /// use std::time::Duration;
    ///
    /// client.set_online(false); // e.g. the user chose "work offline"
    /// client.doc("todos").change(|c| c.set(path!["title"], "Groceries")).await?;
    /// client.set_online(true);
    /// let saved = client.doc("todos").wait_synced(Duration::from_secs(5)).await?;
    /// # let _ = saved;
    /// # Ok(()) }
    /// ```
    pub fn set_online(&self, online: bool) {
        self.node.set_peer_online(0, online);
    }

    /// Waits until the upstream node durably holds every local edit of
    /// every document (see [`DocRef::wait_synced`]), for at most
    /// `timeout`. Returns whether it does.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<bool, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        for id in self.documents().await? {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.doc(&id).wait_synced(left).await {
                Ok(true) => {}
                // Deleted meanwhile: its tombstone is not an edit to wait for.
                Err(ClientError::Deleted(_)) => {}
                other => return other,
            }
        }
        Ok(true)
    }
}

/// A document of a [`Client`]: read it, change it, subscribe to its patches.
///
/// A pair of references ([`Client::doc`]), so it is `Copy` and its methods
/// take it by value: their futures borrow the client, not the handle, and
/// can be joined or stored (`tokio::join!(client.doc("a").get(),
/// client.doc("b").get())`). The client cannot be closed while handles exist.
#[derive(Debug, Clone, Copy)]
pub struct DocRef<'a> {
    client: &'a Client,
    id: &'a str,
}

impl<'a> DocRef<'a> {
    /// Applies the changes `build` lists as one transaction, durably: all of
    /// them or (on error) none. Positions are those of the document as the
    /// earlier changes of the same transaction leave it. Returns the
    /// document's version (entries held per replica) afterwards.
    ///
    /// ```
    /// # async fn run(client: &converge::Client) -> Result<(), converge::ClientError> {
    /// use converge::path;
    /// use serde_json::json;
    ///
    /// let todos = client.doc("todos");
    /// todos.change(|c| {
    ///     c.set(path!["items"], json!([]));
    ///     c.insert(path!["items"], 0, json!({"title": "milk", "done": false}));
    /// }).await?;
    /// todos.change(|c| c.set(path!["items", 0, "done"], true)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn change(
        self,
        build: impl FnOnce(&mut Changes),
    ) -> Result<VersionVector, ClientError> {
        let mut changes = Changes::default();
        build(&mut changes);
        self.apply(changes.as_slice()).await
    }

    /// Applies path-based changes as one transaction (the forms of the
    /// node's HTTP API), like [`DocRef::change`].
    pub async fn apply(self, changes: &[PathChange]) -> Result<VersionVector, ClientError> {
        Ok(self.client.node.change(self.id, changes).await?)
    }

    /// Deletes the document for good: a tombstone the client keeps and
    /// sends upstream, so the id takes no more writes on any replica
    /// (deletion wins over concurrent edits). Returns whether this call
    /// deleted it (`false`: it was deleted already). Subscriptions end.
    pub async fn delete(self) -> Result<bool, ClientError> {
        Ok(self.client.node.delete(self.id).await?)
    }

    /// The document's id.
    pub fn id(self) -> &'a str {
        self.id
    }

    /// The document as JSON (texts read as strings, counters as numbers);
    /// an empty object if nobody has written it yet.
    pub async fn get(self) -> Result<Value, ClientError> {
        match self.client.node.get(self.id).await {
            Ok(v) => Ok(v),
            Err(NodeError::NotFound(_)) => Ok(Value::Object(serde_json::Map::new())),
            Err(e) => Err(e.into()),
        }
    }

    /// The value at `path`, if there is one.
    pub async fn get_at(self, path: &[PathSeg]) -> Result<Option<Value>, ClientError> {
        let mut value = self.get().await?;
        for seg in path {
            let next = match (seg, &mut value) {
                (PathSeg::Key(k), Value::Object(m)) => m.remove(k),
                (PathSeg::Index(i), Value::Array(a)) if *i < a.len() => Some(a.swap_remove(*i)),
                _ => None,
            };
            let Some(next) = next else {
                return Ok(None);
            };
            value = next;
        }
        Ok(Some(value))
    }

    /// The document deserialized into `T` (a typed view of its JSON).
    pub async fn get_as<T: DeserializeOwned>(self) -> Result<T, ClientError> {
        Ok(serde_json::from_value(self.get().await?)?)
    }

    /// The document's version: how many entries of each replica's log the
    /// client holds (empty if nobody has written it yet). Two replicas with
    /// the same version hold the same document.
    pub async fn version(self) -> Result<VersionVector, ClientError> {
        match self.client.node.log_version(self.id).await {
            Ok(v) => Ok(v),
            Err(NodeError::NotFound(_)) => Ok(VersionVector::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the upstream node durably holds every edit this client made
    /// to the document (so closing the client or losing its disk loses
    /// none of them), as far as the sync sessions learnt: from what the
    /// node said it holds and its acknowledgements of the entries sent.
    /// `true` for a document without local edits; `false` without an
    /// upstream as long as there are some. A deleted document is
    /// [`ClientError::Deleted`] (its tombstone is sent like an edit, but
    /// not tracked).
    pub async fn is_synced(self) -> Result<bool, ClientError> {
        let own = self.client.replica();
        let made = self.version().await?.get(own);
        let held = self
            .client
            .node
            .peer_durable(0, self.id)
            .map_or(0, |vv| vv.get(own));
        Ok(held >= made)
    }

    /// Waits, at most `timeout`, until the upstream node durably holds
    /// every edit this client made to the document so far
    /// ([`DocRef::is_synced`]). Returns whether it does: `false` on
    /// timeout (offline, or the node unreachable); the edits are kept and
    /// sent later either way.
    ///
    /// ```
    /// # async fn run(client: &converge::Client) -> Result<(), converge::ClientError> {
    /// use converge::path;
    /// use std::time::Duration;
    ///
    /// let todos = client.doc("todos");
    /// todos.change(|c| c.set(path!["title"], "Groceries")).await?;
    /// if !todos.wait_synced(Duration::from_secs(5)).await? {
    ///     eprintln!("not saved on the server yet; it will be once connected");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait_synced(self, timeout: Duration) -> Result<bool, ClientError> {
        let Some(mut changes) = self.client.node.peer_durable_changes(0) else {
            return self.is_synced().await;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if self.is_synced().await? {
                return Ok(true);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or the node (and its peer state) is gone.
                Ok(Err(_)) | Err(_) => return self.is_synced().await,
            }
        }
    }

    /// Patches describing every later change of the document, local ones
    /// (one batch per transaction) and remote ones (one batch per arrival
    /// of entries from upstream). Works before the document exists: its
    /// first change, or first sync, is reported.
    pub async fn subscribe(self) -> Result<Subscription, ClientError> {
        let rx = self.client.node.watch_new(self.id).await?;
        Ok(Subscription { rx })
    }
}

/// A stream of patch batches of one document ([`DocRef::subscribe`]).
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Vec<Patch>>>,
}

impl Subscription {
    /// The next batch of patches, in the order the changes were applied.
    pub async fn recv(&mut self) -> Result<Arc<Vec<Patch>>, SubscriptionError> {
        self.rx.recv().await.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(skipped) => SubscriptionError::Lagged { skipped },
            broadcast::error::RecvError::Closed => SubscriptionError::Closed,
        })
    }

    /// The batches as a [`Stream`](tokio_stream::Stream), for code that
    /// combines streams; it ends where [`Subscription::recv`] would report
    /// [`SubscriptionError::Closed`].
    pub fn into_stream(
        self,
    ) -> impl tokio_stream::Stream<Item = Result<Arc<Vec<Patch>>, SubscriptionError>> + Send + Unpin
    {
        use tokio_stream::StreamExt;
        use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
        tokio_stream::wrappers::BroadcastStream::new(self.rx).map(|batch| {
            batch.map_err(
                |BroadcastStreamRecvError::Lagged(skipped)| SubscriptionError::Lagged { skipped },
            )
        })
    }
}

/// Why a [`Subscription`] has no next batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// The subscriber fell behind and `skipped` batches were dropped; the
    /// next `recv` continues after them. Re-read the document
    /// ([`DocRef::get`]) to resynchronise a view.
    #[error("fell behind: {skipped} batches of patches skipped; re-read the document")]
    Lagged {
        /// Batches dropped.
        skipped: u64,
    },
    /// The document was deleted, or reloaded from the store after an
    /// error, or the client closed: subscribe again (and re-read).
    #[error("the subscription ended (document deleted or reloaded, or client closed)")]
    Closed,
}

/// The sync URL of an upstream given as `ws://HOST:PORT[/PATH]` or
/// `http://HOST:PORT[/PATH]`; without a path, the node's `/v1/sync`.
fn upstream_url(url: &str) -> Result<String, ClientError> {
    let bad = |why: &str| ClientError::Upstream {
        url: url.to_string(),
        why: why.to_string(),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected ws://HOST:PORT/v1/sync or http://HOST:PORT"))?;
    match scheme {
        "ws" | "http" => {}
        "wss" | "https" => return Err(bad("TLS is not supported yet: use ws:// or http://")),
        _ => return Err(bad("expected a ws:// or http:// address")),
    }
    let (host, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let path = if path.is_empty() || path == "/" {
        "/v1/sync"
    } else {
        path
    };
    Ok(format!("ws://{host}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_normalise_to_the_sync_endpoint() {
        let ok = |u: &str| upstream_url(u).expect(u);
        assert_eq!(
            ok("ws://127.0.0.1:7878/v1/sync"),
            "ws://127.0.0.1:7878/v1/sync"
        );
        assert_eq!(ok("http://127.0.0.1:7878"), "ws://127.0.0.1:7878/v1/sync");
        assert_eq!(ok("http://example.com/"), "ws://example.com/v1/sync");
        assert_eq!(ok("ws://h:1/custom"), "ws://h:1/custom");
        for bad in [
            "127.0.0.1:7878",
            "wss://h/v1/sync",
            "ftp://h",
            "ws:///v1/sync",
        ] {
            assert!(
                matches!(upstream_url(bad), Err(ClientError::Upstream { .. })),
                "{bad} was accepted"
            );
        }
    }
}
