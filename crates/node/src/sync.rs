//! Replication with peers: the tokio driver of [`converge_sync::Session`].
//!
//! One task per connection owns one session and pumps it (STYLE habit 2):
//!
//! - each WebSocket binary message is one sync frame, fed to
//!   [`Session::handle_bytes`];
//! - [`Session::poll_transmit`] frames go out as binary messages;
//! - [`Session::poll_timeout`] arms a tokio sleep that calls
//!   [`Session::handle_timeout`];
//! - every append to the node's store (a local write, or entries another
//!   session stored) is read once from the change feed by the node's
//!   [`FeedHub`](crate::feed::FeedHub), which wakes the tasks whose peers
//!   want it; the task calls [`Session::handle_store_change`] so new
//!   entries stream at once, reading the feed through a
//!   [`SessionStore`] that leaves out what the peer does not want;
//! - [`Event::ObjectUpdated`] brings the open document up to date
//!   ([`Node::refresh`]) and wakes the other sessions, so entries relay
//!   through this node to its other peers.
//!
//! The store is synchronous and a redb append blocks until durable.
//! [`Session::handle_bytes`] is the only call that may write (entries,
//! snapshots, deletions the peer sent). A message of `Entries` frames (what
//! a writing client sends) is handled on the task with the appends recorded
//! ([`crate::commit::Deferring`]), then committed through the node's
//! committer together with every other writer's, and only then is what the
//! session queued (its ack) sent. Any other message that may write runs on
//! a blocking thread: the session is moved into `spawn_blocking` and back.
//! Timers and store changes only read (the change feed, entries to send,
//! up to one window), so they run on the task itself: a trip through the
//! blocking pool per session per append was most of the node's CPU with
//! 256 writing clients (the `node` bench's `sync-writes-256`).
//!
//! Incoming connections arrive on `GET /v1/sync` (at most
//! [`NodeConfig::max_sync_sessions`] at once); outgoing ones are made by one
//! task per configured peer, which reconnects with exponential backoff and
//! resumes from the peer's change feed position it last confirmed (kept in
//! memory: a restart compares version vectors once). Gossip
//! ([`crate::gossip`]) opens further outgoing sessions to random cluster
//! members for a while each; every session, whichever side dialled, counts
//! as a link to its peer in the membership view once the peer said hello.
//!
//! Peers are trusted ([`Policy::trusted`]): any peer may write as any
//! replica. Authentication of peers is future work.
//!
//! Without a listener (an embedded client), [`sync_with_peers`] runs the
//! outgoing side alone, and [`Node::peer_connection`] reports each peer's
//! [`PeerConnection`] as it changes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge_crdt::{ReplicaId, VersionVector};
use converge_sync::{Config, Event, Interest, Limits, Message, Policy, Session, SessionError};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::commit::Deferring;
use crate::feed::SessionStore;
use crate::gossip::{GossipRound, LEAVE_PUSH_TIMEOUT, Members, SessionLink};
use crate::node::{Node, NodeConfig};

/// Least time between two reads of the change feed that a session makes
/// because the store changed: bounds the feed reads of N sessions under
/// N writers, at the cost of up to this much propagation delay.
const STORE_PUMP_GAP: Duration = Duration::from_millis(2);

/// Whether a WebSocket message is one small frame of a kind that cannot
/// make the session write to the store (acks, checkpoints, keep-alives,
/// presence), so it can be handled without a trip through the blocking
/// pool (most of a writing client's messages are these). Anything else, or
/// anything that does not decode, goes to a blocking thread as before.
fn only_reads(bytes: &[u8]) -> bool {
    const SMALL: usize = 512;
    bytes.len() <= SMALL
        && converge_sync::codec::decode(bytes, &Limits::default()).is_ok_and(|(msg, len)| {
            len == bytes.len()
                && matches!(
                    msg,
                    Message::Ack { .. }
                        | Message::Checkpoint { .. }
                        | Message::KeepAlive
                        | Message::Presence { .. }
                )
        })
}

/// Whether a WebSocket message holds only `Entries` frames, besides
/// frames that [`only_reads`] lets through, and is not large: the session
/// then handles it on its task, with its appends recorded
/// ([`Deferring`]) and committed through the node's committer before
/// anything it answers is sent. Larger messages amortise a blocking
/// hand-off well enough and take the plain path.
fn only_entries(bytes: &[u8]) -> bool {
    const LARGE: usize = 1 << 20;
    if bytes.len() > LARGE {
        return false;
    }
    let limits = Limits::default();
    let mut rest = bytes;
    let mut entries = false;
    while !rest.is_empty() {
        let Ok((msg, len)) = converge_sync::codec::decode(rest, &limits) else {
            return false;
        };
        match msg {
            Message::Entries { .. } => entries = true,
            Message::Ack { .. }
            | Message::Checkpoint { .. }
            | Message::KeepAlive
            | Message::Presence { .. } => {}
            _ => return false,
        }
        rest = rest.get(len..).unwrap_or_default();
    }
    entries
}

/// The interest of a hello at the start of `bytes` (a peer's first
/// message), if that is what they hold; the session decodes it again and
/// decides whether to accept it.
fn peer_interest(bytes: &[u8]) -> Option<Interest> {
    match converge_sync::codec::decode(bytes, &Limits::default()) {
        Ok((Message::Hello { interest, .. }, _)) => Some(interest),
        _ => None,
    }
}

/// Where the connection to one configured peer stands, as
/// [`Node::peer_connection`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerConnection {
    /// Dialling the peer (the first time, or again after a backoff).
    Connecting,
    /// A sync session with the peer is open: entries flow both ways.
    Connected {
        /// The peer's replica id, from its hello.
        peer: ReplicaId,
    },
    /// The last attempt failed or the connection ended; the next attempt
    /// is made after `retry_in`.
    Backoff {
        /// The wait before the next attempt (it doubles after each
        /// failure, up to 5 s, with jitter).
        retry_in: Duration,
        /// Why the last attempt or connection ended.
        error: String,
    },
    /// Syncing with this peer stopped for good: the node shut down.
    Stopped,
    /// Set offline ([`Node::set_peer_online`]): not dialled until set
    /// online again.
    Offline,
}

/// Runs the outgoing side of replication alone: keeps a connection to
/// each of the node's configured peers ([`NodeConfig::peers`]),
/// reconnecting with backoff and resuming where each left off, until
/// `shutdown` completes; then closes the sessions and returns once every
/// peer task has ended.
///
/// This is what `serve` does besides listening; an embedded
/// replica that only dials out (a client of a node) calls this instead.
/// Stopping is final for the node: its peers are not dialled again.
pub async fn sync_with_peers(node: Arc<Node>, shutdown: impl Future<Output = ()>) {
    let peers: Vec<_> = (0..node.sync().peers.len())
        .map(|i| tokio::spawn(run_peer(node.clone(), i)))
        .collect();
    shutdown.await;
    node.sync().stop();
    for p in peers {
        // A peer task ends once its session said goodbye; one that
        // panicked has nothing left to wait for.
        let _ = p.await;
    }
}

impl Node {
    /// The state of the connection to the `index`th configured peer
    /// ([`NodeConfig::peers`]), updated as it changes; `None` if there is
    /// no such peer. It stays [`PeerConnection::Connecting`] until a task
    /// ([`sync_with_peers`] or `serve`) dials the peer.
    pub fn peer_connection(&self, index: usize) -> Option<watch::Receiver<PeerConnection>> {
        self.sync().peers.get(index).map(|p| p.link.subscribe())
    }

    /// Takes the `index`th configured peer offline (`false`: its session
    /// closes and it is not dialled) or back online (`true`, the default:
    /// dialled again at once). Edits made meanwhile are kept and sent on
    /// the next session. Returns `false` if there is no such peer.
    pub fn set_peer_online(&self, index: usize, online: bool) -> bool {
        let Some(p) = self.sync().peers.get(index) else {
            return false;
        };
        p.online
            .send_if_modified(|o| std::mem::replace(o, online) != online);
        true
    }

    /// What the `index`th configured peer is known to hold durably of
    /// `object`, as its sync sessions learnt it (its `Have`s and its
    /// acknowledgements of the entries sent to it); `None` if nothing is
    /// known or there is no such peer. Only with
    /// [`NodeConfig::track_peer_durable`]. Knowledge is kept across
    /// sessions with the same peer replica, and dropped when another
    /// replica answers at the peer's URL.
    pub fn peer_durable(&self, index: usize, object: &str) -> Option<VersionVector> {
        let p = self.sync().peers.get(index)?;
        let durable = p.durable.lock().unwrap_or_else(|e| e.into_inner());
        durable.get(object).cloned()
    }

    /// Changes whenever [`Node::peer_durable`] of the `index`th peer may
    /// have risen; `None` if there is no such peer.
    pub fn peer_durable_changes(&self, index: usize) -> Option<watch::Receiver<u64>> {
        self.sync()
            .peers
            .get(index)
            .map(|p| p.durable_changed.subscribe())
    }
}

/// Largest WebSocket message accepted: one frame at the protocol's limit.
pub(crate) fn max_ws_message() -> usize {
    Limits::default().max_frame_bytes + 64
}

/// Replication state shared by the node's sync tasks.
// Without the HTTP listener, no incoming sessions are admitted or reported.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) struct SyncHub {
    /// The zero of the sessions' millisecond clock.
    epoch: Instant,
    /// Permits for incoming sessions.
    sessions: Arc<Semaphore>,
    max_sessions: usize,
    /// Outgoing peers, in configuration order.
    peers: Vec<Arc<PeerState>>,
    /// Set to `true` once to close every session.
    stop: watch::Sender<bool>,
    /// The cluster as this node sees it, and the gossip policy.
    pub(crate) members: Members,
}

impl SyncHub {
    pub(crate) fn new(replica: ReplicaId, config: &NodeConfig) -> Self {
        Self {
            epoch: Instant::now(),
            sessions: Arc::new(Semaphore::new(config.max_sync_sessions)),
            max_sessions: config.max_sync_sessions,
            peers: config
                .peers
                .iter()
                .map(|url| Arc::new(PeerState::new(url.clone())))
                .collect(),
            stop: watch::channel(false).0,
            members: Members::new(replica, config),
        }
    }

    /// Milliseconds since the hub was made: the sessions' `now`.
    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn instant_at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// A permit for one more incoming session, if under the limit.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn try_admit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.sessions.clone().try_acquire_owned().ok()
    }

    /// Closes every session (with a shutdown message) and stops reconnecting.
    pub(crate) fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Becomes `true` when the node stops (see [`SyncHub::stop`]): long-lived
    /// HTTP streams (watchers) end on it so that a graceful shutdown does
    /// not wait for them forever.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// What `/v1/status` shows.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn status(&self) -> SyncStatus {
        SyncStatus {
            incoming_sessions: self.max_sessions - self.sessions.available_permits(),
            peers: self.peers.iter().map(|p| p.snapshot()).collect(),
        }
    }
}

/// Replication as `/v1/status` reports it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SyncStatus {
    incoming_sessions: usize,
    peers: Vec<PeerStatus>,
}

/// One outgoing peer as reported.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PeerStatus {
    url: String,
    connected: bool,
    /// The peer's replica id, once it said hello.
    replica: Option<String>,
    /// Everything of the peer's change feed up to here is held durably.
    feed_position: Option<u64>,
    /// Successful connections so far.
    connects: u64,
    last_error: Option<String>,
}

/// An outgoing peer's live state.
pub(crate) struct PeerState {
    url: String,
    status: Mutex<PeerStatus>,
    /// The connection's state for [`Node::peer_connection`].
    link: watch::Sender<PeerConnection>,
    /// Whether to sync with it ([`Node::set_peer_online`]).
    online: watch::Sender<bool>,
    /// What it holds durably, per object ([`Node::peer_durable`]).
    durable: Mutex<HashMap<String, VersionVector>>,
    /// Bumped when `durable` rises.
    durable_changed: watch::Sender<u64>,
}

impl PeerState {
    fn new(url: String) -> Self {
        Self {
            status: Mutex::new(PeerStatus {
                url: url.clone(),
                ..PeerStatus::default()
            }),
            link: watch::channel(PeerConnection::Connecting).0,
            online: watch::channel(true).0,
            durable: Mutex::new(HashMap::new()),
            durable_changed: watch::channel(0).0,
            url,
        }
    }

    /// Records that the peer holds at least `vv` of `object`.
    fn note_durable(&self, object: String, vv: &VersionVector) {
        {
            let mut durable = self.durable.lock().unwrap_or_else(|e| e.into_inner());
            let known = durable.entry(object).or_default();
            if known.dominates(vv) {
                return;
            }
            known.merge(vv);
        }
        self.durable_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn update(&self, f: impl FnOnce(&mut PeerStatus)) {
        // A poisoned lock only means a panic elsewhere mid-update of plain
        // status fields: keep using them.
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
    }

    fn snapshot(&self) -> PeerStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A WebSocket message as the driver sees it, whichever library carried it.
pub(crate) enum WsIn {
    /// A binary message: one sync frame.
    Binary(Vec<u8>),
    /// Ping, pong: nothing to do.
    Ignore,
    /// Text, or anything else the protocol has no use for.
    Unexpected,
    /// The peer closed.
    Close,
}

/// Why a connection ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The session closed (error, timeout, shutdown, or by the peer).
    Session(SessionError),
    /// The transport failed or ended without a closing message.
    Transport(String),
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Session(e) => write!(f, "{e}"),
            Self::Transport(e) => write!(f, "connection lost: {e}"),
        }
    }
}

/// Serves one incoming connection until it ends.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) async fn serve_connection<S, E>(node: Arc<Node>, socket: S)
where
    S: Stream<Item = Result<WsIn, E>> + Sink<Vec<u8>> + Unpin,
    E: std::fmt::Display,
    <S as Sink<Vec<u8>>>::Error: std::fmt::Display,
{
    let config = Config::new(Interest::Prefix(String::new()));
    let ending = drive(&node, socket, config, None, None).await;
    tracing::debug!(%ending, "incoming sync session ended");
}

/// Keeps a connection to the peer at `url` (the `index`th configured peer)
/// until the node stops: reconnects with exponential backoff and jitter.
pub(crate) async fn run_peer(node: Arc<Node>, index: usize) {
    let Some(peer) = node.sync().peers.get(index).cloned() else {
        return;
    };
    let mut stop = node.sync().stop.subscribe();
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = Duration::from_millis(100);
    let mut online = peer.online.subscribe();
    loop {
        if *stop.borrow() {
            peer.link.send_replace(PeerConnection::Stopped);
            return;
        }
        if !*online.borrow_and_update() {
            peer.link.send_replace(PeerConnection::Offline);
            tokio::select! {
                _ = online.wait_for(|o| *o) => {}
                _ = stop.changed() => {}
            }
            backoff = Duration::from_millis(100);
            continue;
        }
        peer.link.send_replace(PeerConnection::Connecting);
        let connected = tokio::select! {
            r = connect(&peer.url) => r,
            _ = stop.changed() => {
                peer.link.send_replace(PeerConnection::Stopped);
                return;
            }
        };
        let (lived_long, error) = match connected {
            Ok(ws) => {
                let mut config = Config::new(node.config().peer_interest.clone());
                config.resume_after = peer.snapshot().feed_position;
                config.report_peer_durable = node.config().track_peer_durable;
                let socket = client_socket(ws);
                let started = Instant::now();
                let ending = drive(&node, socket, config, Some(&peer), None).await;
                tracing::info!(peer = %peer.url, %ending, "sync connection ended");
                let error = ending.to_string();
                peer.update(|s| {
                    s.connected = false;
                    s.last_error = Some(error.clone());
                });
                (started.elapsed() > Duration::from_secs(2), error)
            }
            Err(e) => {
                tracing::debug!(peer = %peer.url, error = %e, "cannot connect to peer");
                let error = format!("cannot connect: {e}");
                peer.update(|s| s.last_error = Some(error.clone()));
                (false, error)
            }
        };
        if *stop.borrow() {
            // The session ended because the node stops: no backoff to report.
            peer.link.send_replace(PeerConnection::Stopped);
            return;
        }
        if !*online.borrow() {
            continue; // Set offline: no backoff either.
        }
        if lived_long {
            backoff = Duration::from_millis(100);
        }
        // Full jitter over the upper half: peers that dropped together do
        // not all come back in the same instant.
        let wait = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        peer.link.send_replace(PeerConnection::Backoff {
            retry_in: wait,
            error,
        });
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {
                peer.link.send_replace(PeerConnection::Stopped);
                return;
            }
            _ = online.wait_for(|o| !*o) => {}
        }
    }
}

/// An outgoing WebSocket to a peer's sync endpoint.
pub(crate) type ClientWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Dials the sync endpoint at `url`, giving up after 10 s (a black-holed
/// address would otherwise hang for the OS's TCP timeout).
pub(crate) async fn connect(url: &str) -> Result<ClientWs, tokio_tungstenite::tungstenite::Error> {
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    let ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(max_ws_message()))
        .max_frame_size(Some(max_ws_message()));
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(ws_config), true);
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(r) => r.map(|(ws, _response)| ws),
        Err(_) => Err(tokio_tungstenite::tungstenite::Error::Io(
            std::io::ErrorKind::TimedOut.into(),
        )),
    }
}

/// Adapts a tokio-tungstenite client stream to the driver's shape.
pub(crate) fn client_socket<T>(
    ws: tokio_tungstenite::WebSocketStream<T>,
) -> impl Stream<Item = Result<WsIn, tokio_tungstenite::tungstenite::Error>>
+ Sink<Vec<u8>, Error = tokio_tungstenite::tungstenite::Error>
+ Unpin
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::Message;
    ws.map(|m| {
        m.map(|m| match m {
            Message::Binary(b) => WsIn::Binary(b.into()),
            Message::Ping(_) | Message::Pong(_) => WsIn::Ignore,
            Message::Close(_) => WsIn::Close,
            Message::Text(_) | Message::Frame(_) => WsIn::Unexpected,
        })
    })
    .with(|frame: Vec<u8>| std::future::ready(Ok(Message::Binary(frame.into()))))
}

/// What a blocking step hands back: the session and its result.
type Stepped = (Box<Session>, Result<(), SessionError>);

/// Runs `f` on the session on a blocking thread (it may read or append the
/// store, which blocks until durable).
async fn step(
    store: &SessionStore,
    session: Box<Session>,
    f: impl FnOnce(&mut Session, &dyn converge_store::Store) -> Result<(), SessionError>
    + Send
    + 'static,
) -> Result<Stepped, Ending> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let mut session = session;
        let r = f(&mut session, &store);
        (session, r)
    })
    .await
    .map_err(|e| Ending::Transport(format!("session task failed: {e}")))
}

/// Pumps one session over one WebSocket until either ends, or until the
/// end of the gossip round if it is one, or until `peer` is set offline.
/// When the node stops while leaving the cluster, the session first
/// pushes what is unacknowledged (the `left` entry), for at most
/// [`LEAVE_PUSH_TIMEOUT`].
pub(crate) async fn drive<S, E>(
    node: &Arc<Node>,
    mut socket: S,
    config: Config,
    peer: Option<&PeerState>,
    gossip: Option<GossipRound>,
) -> Ending
where
    S: Stream<Item = Result<WsIn, E>> + Sink<Vec<u8>> + Unpin,
    E: std::fmt::Display,
    <S as Sink<Vec<u8>>>::Error: std::fmt::Display,
{
    let hub = node.sync();
    let mut stop = hub.stop.subscribe();
    // Woken when the store gained entries this session's peer may want;
    // the session reads the change feed through `store`.
    let feed = node.feed().subscribe();
    let mut store = SessionStore::new(node.store().clone(), node.feed().clone());
    // The interest of the peer's hello, until the session accepts it.
    let mut hello_interest: Option<Interest> = None;
    // A store change seen but not yet handed to the session, and the
    // earliest time the session may read the store again for one.
    let mut store_changed = false;
    let mut next_store_pump = Instant::now();
    let mut session = Box::new(Session::new(
        hub.now(),
        config,
        node.replica(),
        Policy::trusted(),
    ));
    let mut closed: Option<SessionError> = None;
    // Counts the session as a link to its peer in the membership view
    // once the peer said hello, until the session ends.
    let mut link: Option<SessionLink<'_>> = None;
    let mut close_at = gossip.map(|g| g.close_at);
    // Set offline: a configured peer's session closes.
    let mut online = peer.map(|p| p.online.subscribe());
    // Stopping while the node leaves: until when to push what is left.
    let mut draining: Option<Instant> = None;
    // The last frame's appends went through the committer, which pulled
    // the change feed for them already.
    let mut committed_appends = false;
    if *stop.borrow_and_update() {
        session.close("the node is shutting down");
    }
    loop {
        // Flush what the session wants to say (one flush for all frames:
        // an ack and a checkpoint leave in one write), then act on what
        // happened.
        let mut fed = false;
        while let Some(frame) = session.poll_transmit() {
            if let Err(e) = socket.feed(frame).await {
                return Ending::Transport(e.to_string());
            }
            fed = true;
        }
        if fed && let Err(e) = socket.flush().await {
            return Ending::Transport(e.to_string());
        }
        let mut updated = false;
        while let Some(event) = session.poll_event() {
            match event {
                Event::Connected { peer: id } => {
                    if id == node.replica() {
                        session.close("a node does not sync with itself");
                        continue;
                    }
                    tracing::info!(peer = %id, "sync session open");
                    if let Some(round) = gossip
                        && round.member != id
                    {
                        tracing::warn!(member = %round.member, answered = %id, "a member's URL answered as another replica (restarted on a new data directory?); not counted as that member's link");
                        hub.members.with(|m| m.identity_mismatch(round.member, id));
                    }
                    if link.is_none() {
                        link = Some(SessionLink::open(hub, id));
                    }
                    if let Some(interest) = hello_interest.take() {
                        feed.set_interest(&interest);
                        store.set_interest(interest);
                    }
                    if let Some(p) = peer {
                        if p.snapshot().replica != Some(id.to_string()) {
                            // Another replica than before: what the old
                            // one held says nothing about this one.
                            p.durable.lock().unwrap_or_else(|e| e.into_inner()).clear();
                        }
                        p.update(|s| {
                            s.connected = true;
                            s.replica = Some(id.to_string());
                            s.connects += 1;
                            s.last_error = None;
                        });
                        p.link.send_replace(PeerConnection::Connected { peer: id });
                    }
                }
                Event::ObjectUpdated { object } => {
                    updated = true;
                    if let Err(e) = node.refresh(&object).await {
                        tracing::warn!(object, error = %e, "cannot apply remote entries to the open document");
                    }
                    hub.members.object_updated(&object);
                }
                Event::ObjectDeleted { object } => {
                    tracing::info!(object, "document deleted by a peer");
                    node.evict(&object);
                    updated = true;
                }
                Event::PeerFeedPosition { peer: id, position } => {
                    hub.members.with(|m| m.set_feed_position(id, position));
                    if let Some(p) = peer {
                        p.update(|s| s.feed_position = Some(position));
                    }
                }
                Event::PeerDurable {
                    object,
                    version_vector,
                } => {
                    if let Some(p) = peer {
                        p.note_durable(object, &version_vector);
                    }
                }
                Event::PeerConflict {
                    object,
                    replica,
                    seq,
                } => {
                    tracing::error!(object, %replica, seq, "peer sent an entry contradicting a stored one");
                }
                Event::Closed { reason } => closed = Some(reason),
                _ => {}
            }
        }
        let pulled = std::mem::take(&mut committed_appends);
        if updated {
            metrics::counter!("converge_sync_objects_updated_total").increment(1);
            if !pulled {
                node.notify_appended();
            }
        }
        if let Some(until) = draining
            && (session.is_idle() || Instant::now() >= until)
        {
            draining = None;
            session.close("the node is shutting down");
            continue;
        }
        if session.is_closed() {
            // Whatever the session queued last (its Error frame) is out.
            while let Some(frame) = session.poll_transmit() {
                let _ = socket.send(frame).await;
            }
            let _ = socket.close().await;
            return Ending::Session(closed.unwrap_or_else(|| SessionError::Local("closed".into())));
        }
        let deadline = session.poll_timeout().map(|at| hub.instant_at(at));
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let store_pump = async {
            if store_changed {
                tokio::time::sleep_until(next_store_pump).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let round_over = async move {
            match close_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let drained = async move {
            match draining {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let offline = async {
            match online.as_mut() {
                Some(o) => {
                    let _ = o.wait_for(|o| !*o).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = socket.next() => {
                let bytes = match msg {
                    Some(Ok(WsIn::Binary(b))) => b,
                    Some(Ok(WsIn::Ignore)) => continue,
                    Some(Ok(WsIn::Unexpected)) => {
                        session.close("the sync protocol speaks binary WebSocket messages only");
                        continue;
                    }
                    Some(Ok(WsIn::Close)) | None => {
                        return Ending::Transport("the peer closed the connection".into());
                    }
                    Some(Err(e)) => return Ending::Transport(e.to_string()),
                };
                if session.peer().is_none() && hello_interest.is_none() {
                    hello_interest = peer_interest(&bytes);
                }
                let now = hub.now();
                let inline = only_reads(&bytes);
                let deferred = !inline && only_entries(&bytes);
                let handle = move |s: &mut Session, store: &dyn converge_store::Store| {
                    s.handle_bytes(now, &bytes, store)?;
                    // One WebSocket message carries whole frames: a partial
                    // frame left over would wait forever.
                    if s.queue_sizes().recv_bytes > 0 {
                        s.close("a WebSocket message must carry whole sync frames");
                    }
                    Ok(())
                };
                let r = if inline {
                    handle(&mut session, &store)
                } else if deferred {
                    // Appends recorded, committed with everyone else's,
                    // and only then is anything the session queued sent:
                    // no ack before the entries are durable.
                    let deferring = Deferring::new(&store);
                    let r = handle(&mut session, &deferring);
                    let appends = deferring.into_appends();
                    if !appends.is_empty() {
                        let committed = node.committer().commit(appends).await;
                        if let Some(e) = committed.into_iter().find_map(Result::err) {
                            tracing::warn!(error = %e, "entries from the peer could not be stored");
                            // Whatever the session queued may claim them:
                            // send none of it.
                            let _ = socket.close().await;
                            return Ending::Transport(format!(
                                "entries from the peer could not be stored: {e}"
                            ));
                        }
                        // The committer pulled the feed for them.
                        committed_appends = true;
                    }
                    r
                } else {
                    match step(&store, session, handle).await {
                        Ok((s, r)) => {
                            session = s;
                            r
                        }
                        Err(e) => return e,
                    }
                };
                if let Err(e) = r {
                    tracing::debug!(error = %e, "sync session failed");
                }
            }
            // Read-only session calls (see the module docs): no blocking
            // thread. Errors close the session and surface as its event.
            () = sleep => {
                // The timer reads the feed too: catch appends nobody announced.
                node.feed().pull_if_idle(&**node.store());
                let _ = session.handle_timeout(hub.now(), &store);
            }
            // Appends wake the sessions whose peers want them, and each
            // reads the change feed: at most one read per STORE_PUMP_GAP
            // per session, so that under many writers a session reads many
            // appends at once.
            () = feed.changed(), if !store_changed => {
                let at = Instant::now();
                if at >= next_store_pump {
                    next_store_pump = at + STORE_PUMP_GAP;
                    let _ = session.handle_store_change(hub.now(), &store);
                } else {
                    store_changed = true;
                }
            }
            () = store_pump => {
                store_changed = false;
                next_store_pump = Instant::now() + STORE_PUMP_GAP;
                let _ = session.handle_store_change(hub.now(), &store);
            }
            _ = stop.changed() => {
                if hub.members.is_leaving() && draining.is_none() {
                    // Push the `left` entry (and anything else pending)
                    // before closing: a bounded wait, checked each turn.
                    draining = Some(Instant::now() + LEAVE_PUSH_TIMEOUT);
                    node.feed().pull_if_idle(&**node.store());
                    let _ = session.handle_store_change(hub.now(), &store);
                } else {
                    session.close("the node is shutting down");
                }
            }
            () = drained => {}
            () = offline => {
                online = None;
                session.close("going offline");
            }
            () = round_over => {
                close_at = None;
                session.close("gossip round over");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_store::{AppendError, AppendOutcome, AppendRequest, Entry, MemoryStore, Store};
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::sync::mpsc;

    /// The node's end of an in-memory connection.
    struct TestSocket {
        from_client: mpsc::UnboundedReceiver<WsIn>,
        to_client: mpsc::UnboundedSender<Vec<u8>>,
    }

    impl Stream for TestSocket {
        type Item = Result<WsIn, String>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.from_client.poll_recv(cx).map(|m| m.map(Ok))
        }
    }

    impl Sink<Vec<u8>> for TestSocket {
        type Error = String;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, frame: Vec<u8>) -> Result<(), String> {
            // The client may have stopped listening: that is fine here.
            let _ = self.to_client.send(frame);
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A memory store whose `append_many` (the committer's path) fails.
    struct FailingCommits(MemoryStore);

    impl Store for FailingCommits {
        fn append(
            &self,
            object: &str,
            replica: ReplicaId,
            entries: &[Entry],
        ) -> Result<AppendOutcome, AppendError> {
            self.0.append(object, replica, entries)
        }
        fn append_many(
            &self,
            requests: &[AppendRequest<'_>],
        ) -> Vec<Result<AppendOutcome, AppendError>> {
            requests
                .iter()
                .map(|_| {
                    Err(AppendError::Store(converge_store::StoreError::Backend {
                        context: "a test",
                        source: "the disk is full".into(),
                    }))
                })
                .collect()
        }
        fn read(
            &self,
            object: &str,
            replica: ReplicaId,
            from_seq: u64,
            limit: usize,
        ) -> Result<Vec<Entry>, converge_store::ReadError> {
            self.0.read(object, replica, from_seq, limit)
        }
        fn version_vector(&self, object: &str) -> Result<VersionVector, converge_store::ReadError> {
            self.0.version_vector(object)
        }
        fn list_objects(
            &self,
            prefix: &str,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<String>, converge_store::ReadError> {
            self.0.list_objects(prefix, after, limit)
        }
        fn changes_since(
            &self,
            after: u64,
            limit: usize,
        ) -> Result<Vec<converge_store::FeedItem>, converge_store::StoreError> {
            self.0.changes_since(after, limit)
        }
        fn feed_head(&self) -> Result<u64, converge_store::StoreError> {
            self.0.feed_head()
        }
        fn put_snapshot(
            &self,
            object: &str,
            version_vector: &VersionVector,
            bytes: &[u8],
        ) -> Result<(), converge_store::SnapshotError> {
            self.0.put_snapshot(object, version_vector, bytes)
        }
        fn latest_snapshot(
            &self,
            object: &str,
        ) -> Result<Option<converge_store::Snapshot>, converge_store::ReadError> {
            self.0.latest_snapshot(object)
        }
        fn compact(
            &self,
            object: &str,
            horizon: &VersionVector,
        ) -> Result<converge_store::CompactOutcome, converge_store::SnapshotError> {
            self.0.compact(object, horizon)
        }
        fn delete_object(
            &self,
            object: &str,
        ) -> Result<converge_store::DeleteOutcome, converge_store::DeleteError> {
            self.0.delete_object(object)
        }
        fn tombstone(
            &self,
            object: &str,
        ) -> Result<Option<converge_store::Tombstone>, converge_store::ReadError> {
            self.0.tombstone(object)
        }
        fn list_tombstones(
            &self,
            prefix: &str,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<String>, converge_store::ReadError> {
            self.0.list_tombstones(prefix, after, limit)
        }
    }

    const CLIENT: ReplicaId = ReplicaId::from_u64(0xc1);

    /// A client session holding `writes` entries of its own log of
    /// "doc" talks to a node on `store` through the driver, until the
    /// client is idle (the node acknowledged everything) or the node's end
    /// stops. Returns the driver's ending, if it ended, and the highest
    /// data message the node acknowledged.
    async fn client_writes(store: Arc<dyn Store>, writes: u64) -> (Option<Ending>, u64) {
        let node = Arc::new(Node::with_store(
            ReplicaId::from_u64(0x40de),
            store,
            NodeConfig::new("unused"),
        ));
        let (to_node, from_client) = mpsc::unbounded_channel();
        let (to_client, mut from_node) = mpsc::unbounded_channel();
        let driver = tokio::spawn({
            let node = node.clone();
            async move {
                let config = Config::new(Interest::Prefix(String::new()));
                let socket = TestSocket {
                    from_client,
                    to_client,
                };
                drive(&node, socket, config, None, None).await
            }
        });
        let local = MemoryStore::new();
        for seq in 1..=writes {
            local
                .append("doc", CLIENT, &[Entry::new(seq, vec![seq as u8; 8])])
                .expect("client append");
        }
        let mut client = Session::new(
            0,
            Config::new(Interest::Objects(vec!["doc".into()])),
            CLIENT,
            Policy::trusted(),
        );
        let mut acked = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let _ = client.handle_store_change(node.sync().now(), &local);
            while let Some(frame) = client.poll_transmit() {
                if to_node.send(WsIn::Binary(frame)).is_err() {
                    break;
                }
            }
            if client.is_idle() && client.peer().is_some() {
                return (None, acked);
            }
            tokio::select! {
                frame = from_node.recv() => match frame {
                    Some(frame) => {
                        if let Ok((Message::Ack { upto }, _)) =
                            converge_sync::codec::decode(&frame, &Limits::default())
                        {
                            acked = acked.max(upto);
                        }
                        let _ = client.handle_bytes(node.sync().now(), &frame, &local);
                    }
                    None => {
                        let ending = driver.await.expect("driver");
                        return (Some(ending), acked);
                    }
                },
                () = tokio::time::sleep_until(deadline) => panic!("no outcome within 10 s"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_are_acknowledged_once_committed() {
        let store = Arc::new(MemoryStore::new());
        let (ending, acked) = client_writes(store.clone(), 5).await;
        assert!(ending.is_none(), "{ending:?}");
        assert!(acked > 0);
        assert_eq!(store.version_vector("doc").expect("doc").get(CLIENT), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_that_fail_to_commit_are_never_acknowledged() {
        let store = Arc::new(FailingCommits(MemoryStore::new()));
        let (ending, acked) = client_writes(store.clone(), 5).await;
        let ending = ending.map(|e| e.to_string()).unwrap_or_default();
        assert!(ending.contains("could not be stored"), "{ending}");
        assert_eq!(acked, 0, "no ack for entries that are not stored");
        assert!(store.version_vector("doc").is_err(), "nothing stored");
    }
}
