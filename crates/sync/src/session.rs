//! The session state machine: one per connection, either side.
//!
//! A [`Session`] is fed bytes ([`Session::handle_bytes`]), timer expiries
//! ([`Session::handle_timeout`]) and news of local appends
//! ([`Session::handle_store_change`]); it reads and appends through the
//! [`Store`] passed to those calls. The caller then drains, in any order:
//!
//! - [`Session::poll_transmit`]: frames to write to the connection, until `None`;
//! - [`Session::poll_event`]: what happened, until `None`;
//! - [`Session::poll_timeout`]: when to call [`Session::handle_timeout`] next.
//!
//! Call all three after every `handle_*` call. Nothing in here reads a
//! clock: `now` is milliseconds on any monotonic scale the caller picks.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use converge_crdt::{ReplicaId, VersionVector};
use converge_store::{AppendError, Entry, FeedKind, ReadError, Snapshot, SnapshotError, Store};

use crate::codec::{self, DecodeError};
use crate::message::{ErrorCode, Interest, Limits, Message};

/// How far a session may go: limits, windows and timers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Limits on frames and messages, both ways.
    pub limits: Limits,
    /// What this side subscribes to.
    pub interest: Interest,
    /// The peer's change feed position this side holds everything up to
    /// (from an earlier [`Event::PeerFeedPosition`]); `None` for a full
    /// vector comparison.
    pub resume_after: Option<u64>,
    /// The most unacknowledged data bytes in flight. Default 1 MiB.
    pub window_bytes: usize,
    /// The most unacknowledged data messages in flight. Default 32.
    pub window_messages: usize,
    /// The most entries per batch sent (capped by [`Limits::max_batch_entries`]). Default 256.
    pub batch_entries: usize,
    /// The most bytes of out-of-order entries held while a gap is filled. Default 1 MiB.
    pub max_pending_bytes: usize,
    /// The most objects tracked per session. Default 100 000.
    pub max_objects: usize,
    /// The largest snapshot reassembled. Default 64 MiB.
    pub max_snapshot_bytes: usize,
    /// The largest entry sent or reassembled (an entry larger than a frame
    /// goes in chunks). Default 16 MiB, as `StoreConfig::max_entry_bytes`.
    pub max_entry_bytes: usize,
    /// The most queued events (presence beyond it is dropped). Default 1024.
    pub max_events: usize,
    /// Milliseconds between keep-alives. Default 10 s.
    pub keepalive_ms: u64,
    /// Close the session when nothing was heard for this long. Default 30 s.
    pub idle_timeout_ms: u64,
    /// Resend what is unacknowledged after this long without an ack. Default 5 s.
    pub ack_timeout_ms: u64,
    /// Compare all version vectors again this often (anti-entropy repair). Default 60 s.
    pub repair_interval_ms: Option<u64>,
    /// Read the local change feed at least this often while serving. Default 1 s.
    pub feed_poll_ms: u64,
    /// Report [`Event::PeerDurable`]: what the peer is known to hold
    /// durably, from its `Have`s and its acknowledgements of the entries
    /// sent to it (a client waiting for its edits to be saved upstream).
    /// Default off: it costs an event per acknowledgement.
    pub report_peer_durable: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            interest: Interest::Prefix(String::new()),
            resume_after: None,
            window_bytes: 1 << 20,
            window_messages: 32,
            batch_entries: 256,
            max_pending_bytes: 1 << 20,
            max_objects: 100_000,
            max_snapshot_bytes: 64 << 20,
            max_entry_bytes: 16 << 20,
            max_events: 1024,
            keepalive_ms: 10_000,
            idle_timeout_ms: 30_000,
            ack_timeout_ms: 5_000,
            repair_interval_ms: Some(60_000),
            feed_poll_ms: 1_000,
            report_peer_durable: false,
        }
    }
}

impl Config {
    /// A default configuration subscribing to `interest`.
    pub fn new(interest: Interest) -> Self {
        Self {
            interest,
            ..Self::default()
        }
    }
}

/// Which replicas a peer may write as, and whether it may relay others' entries.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Policy {
    /// The replicas the peer is authorised to write as; `None` for any.
    pub authors: Option<BTreeSet<ReplicaId>>,
    /// Whether entries of other replicas are accepted as relayed copies.
    /// They are checked against what is stored: the same (replica, seq)
    /// with other bytes is rejected and reported.
    pub relay: bool,
}

impl Policy {
    /// A trusted peer (server to server): any replica, relays accepted.
    pub fn trusted() -> Self {
        Self {
            authors: None,
            relay: true,
        }
    }

    /// A client that writes only as `replicas` and relays nothing.
    pub fn writer(replicas: impl IntoIterator<Item = ReplicaId>) -> Self {
        Self {
            authors: Some(replicas.into_iter().collect()),
            relay: false,
        }
    }

    fn allows(&self, replica: ReplicaId) -> bool {
        self.relay || self.authors.as_ref().is_none_or(|a| a.contains(&replica))
    }
}

/// Joins two snapshots of one object that neither covers the other: the
/// fold knows how, the sync layer does not (it sees opaque bytes).
pub trait SnapshotMerge: Send + Sync {
    /// The encoded state covering both `local` and `incoming`, or `None` if
    /// they cannot be merged.
    fn merge(&self, object: &str, local: &Snapshot, incoming: &Snapshot) -> Option<Vec<u8>>;
}

/// Something that happened in a session, for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The peer said hello.
    Connected {
        /// The peer's replica id.
        peer: ReplicaId,
    },
    /// Entries or a snapshot from the peer were stored for this object.
    ObjectUpdated {
        /// The object.
        object: String,
    },
    /// The peer told us the object was deleted, and this side deleted it
    /// too (it keeps a tombstone; see [`Store::delete_object`]).
    ObjectDeleted {
        /// The object.
        object: String,
    },
    /// A snapshot from the peer was stored (the peer had compacted what we lacked).
    SnapshotInstalled {
        /// The object.
        object: String,
        /// What the stored snapshot now covers.
        version_vector: VersionVector,
    },
    /// Two snapshots could not be merged; the object stays behind until
    /// the fold can merge them (no [`SnapshotMerge`] was given, or it refused).
    SnapshotUnmergeable {
        /// The object.
        object: String,
    },
    /// The peer sent an entry that contradicts a stored one. The session closes.
    PeerConflict {
        /// The object.
        object: String,
        /// The replica whose log it is.
        replica: ReplicaId,
        /// The contradicted seq.
        seq: u64,
    },
    /// This side durably holds everything of its interest up to `position`
    /// of the peer's change feed: remember it, and pass it as
    /// [`Config::resume_after`] when reconnecting to this peer.
    PeerFeedPosition {
        /// The peer.
        peer: ReplicaId,
        /// The peer's change feed position.
        position: u64,
    },
    /// The peer durably holds at least `version_vector` of `object`: it
    /// said so in a `Have`, or acknowledged entries that continue what it
    /// was known to hold. Only with [`Config::report_peer_durable`]; it
    /// only rises within a session.
    PeerDurable {
        /// The object.
        object: String,
        /// What the peer holds of it, as far as this session knows.
        version_vector: VersionVector,
    },
    /// Ephemeral state from the peer; relay it, never store it, forget it at `expires_at`.
    Presence {
        /// The object it concerns.
        object: String,
        /// The peer it came from.
        from: ReplicaId,
        /// The application's bytes.
        payload: Vec<u8>,
        /// When it lapses unless renewed (same scale as `now`).
        expires_at: u64,
    },
    /// The session is closed; drain [`Session::poll_transmit`], then drop the connection.
    Closed {
        /// Why.
        reason: SessionError,
    },
}

/// Why a session closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer sent bytes that are not a valid frame or message.
    #[error("the peer sent a bad frame: {0}")]
    Decode(#[from] DecodeError),
    /// The peer sent a valid message at the wrong time.
    #[error("protocol violation by the peer: {0}")]
    Protocol(String),
    /// The peer speaks another protocol version.
    #[error(
        "the peer speaks protocol version {found}, this side {supported}; upgrade the older side"
    )]
    Version {
        /// The peer's version.
        found: u16,
        /// Ours.
        supported: u16,
    },
    /// The peer wrote entries for a replica it is not authorised for.
    #[error("the peer may not write as replica {replica} (session policy); check its credentials")]
    Unauthorised {
        /// The replica.
        replica: ReplicaId,
    },
    /// The peer sent an entry contradicting a stored one.
    #[error(
        "the peer sent {object}/{replica} seq {seq} with bytes other than those stored; a replica id was reused or forged"
    )]
    Conflict {
        /// The object.
        object: String,
        /// The replica.
        replica: ReplicaId,
        /// The seq.
        seq: u64,
    },
    /// A limit of this side's configuration was passed.
    #[error("limit passed: {0}")]
    Limit(String),
    /// The local store failed; retry later.
    #[error("the local store failed: {0}")]
    Store(String),
    /// Nothing was heard from the peer within the idle timeout.
    #[error("nothing heard from the peer for {0} ms")]
    Timeout(u64),
    /// The peer closed the session.
    #[error("the peer closed the session (code {}): {reason}", code.0)]
    ClosedByPeer {
        /// Its code.
        code: ErrorCode,
        /// Its reason.
        reason: String,
    },
    /// This side closed the session ([`Session::close`]).
    #[error("closed locally: {0}")]
    Local(String),
}

impl SessionError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Decode(DecodeError::UnsupportedVersion { .. }) | Self::Version { .. } => {
                ErrorCode::VERSION
            }
            Self::Decode(DecodeError::FrameTooLarge { .. } | DecodeError::Limit(_))
            | Self::Limit(_) => ErrorCode::LIMIT,
            Self::Decode(_) | Self::Protocol(_) => ErrorCode::PROTOCOL,
            Self::Unauthorised { .. } => ErrorCode::UNAUTHORISED,
            Self::Conflict { .. } => ErrorCode::CONFLICT,
            Self::Store(_) => ErrorCode::STORE,
            Self::Timeout(_) => ErrorCode::TIMEOUT,
            Self::ClosedByPeer { .. } | Self::Local(_) => ErrorCode::SHUTDOWN,
        }
    }
}

/// Sizes of a session's queues, to check that none passes its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct QueueSizes {
    /// Frames queued to transmit.
    pub out_frames: usize,
    /// Unacknowledged data messages.
    pub inflight_messages: usize,
    /// Unacknowledged data bytes.
    pub inflight_bytes: usize,
    /// Bytes of out-of-order entries waiting for a gap.
    pub pending_bytes: usize,
    /// Bytes of snapshots being reassembled.
    pub assembly_bytes: usize,
    /// Objects tracked for the peer.
    pub peer_objects: usize,
    /// Objects of which the peer is known to hold some entries (not sent back to it).
    pub peer_holds: usize,
    /// Objects, feed ranges and deletions waiting to be sent.
    pub work: usize,
    /// Objects the peer is known to have deleted (so they are not told again).
    pub peer_tombstones: usize,
    /// Events waiting to be polled.
    pub events: usize,
    /// Bytes received but not yet a whole frame.
    pub recv_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    Open,
    Closed,
}

/// Where an enumeration of an [`Interest`] stands.
#[derive(Debug, Clone)]
enum Cursor {
    Index(usize),
    After(Option<String>),
    /// Listing the deleted objects of a prefix, after the live ones.
    Deleted(Option<String>),
}

#[derive(Debug)]
enum Sent {
    Entries {
        object: String,
        replica: ReplicaId,
        first: u64,
        last: u64,
    },
    Snapshot {
        object: String,
    },
    Deleted {
        object: String,
    },
}

#[derive(Debug)]
struct Inflight {
    n: u64,
    bytes: usize,
    sent: Sent,
}

#[derive(Debug)]
struct SnapOut {
    id: u64,
    object: String,
    /// For a chunked entry: its replica and seq (the bytes are in `snapshot`).
    entry: Option<(ReplicaId, u64)>,
    snapshot: Snapshot,
    offset: usize,
    begun: bool,
}

#[derive(Debug)]
struct Assembly {
    id: u64,
    object: String,
    /// For a chunked entry: its replica and seq; else a snapshot.
    entry: Option<(ReplicaId, u64)>,
    version_vector: VersionVector,
    total: usize,
    buf: Vec<u8>,
}

/// Batches held for one log while a gap before them is filled, by first seq.
type Held = BTreeMap<u64, Vec<Vec<u8>>>;

/// Objects listed per store page.
const PAGE: usize = 128;
/// Feed items read per store call.
const FEED_PAGE: usize = 64;
/// Room kept in a frame for a message's fields besides its entries or chunk.
const FRAME_OVERHEAD: usize = 2048;

/// One sync session with one peer.
///
/// Feed it bytes ([`Session::handle_bytes`]), timer expiries
/// ([`Session::handle_timeout`], due at once for a new session) and news
/// of local appends ([`Session::handle_store_change`]); it reads and
/// appends through the [`Store`] passed to those calls. After every
/// `handle_*` call, drain [`Session::poll_transmit`] (frames to write) and
/// [`Session::poll_event`] until `None`, and re-arm the timer from
/// [`Session::poll_timeout`]. Nothing in here reads a clock: `now` is
/// milliseconds on any monotonic scale the caller picks.
pub struct Session {
    config: Config,
    local: ReplicaId,
    policy: Policy,
    merge: Option<Arc<dyn SnapshotMerge>>,
    state: State,
    peer: Option<(ReplicaId, Interest)>,
    peer_hello: Option<Message>,

    recv: Vec<u8>,
    out: VecDeque<Vec<u8>>,
    ack_due: Option<u64>,
    have_due: BTreeMap<String, VersionVector>,
    keepalive_due: bool,
    presence_out: VecDeque<Message>,
    events: VecDeque<Event>,
    updated: BTreeSet<String>,

    last_recv: u64,
    next_keepalive: u64,
    next_repair: Option<u64>,
    next_feed_poll: u64,

    /// Enumerating our own interest to send `Have` (subscribe or repair).
    have_listing: Option<Cursor>,

    // Serving the peer's interest.
    peer_vv: HashMap<String, (VersionVector, u32)>,
    /// What the peer is known to hold, per object it subscribes to, from
    /// the entries, chunked entries and snapshots it sent us (read from
    /// its store, so held there). `peer_vv` starts from the peer's `Have`s
    /// and follows what we sent (lowered when data is lost); this is
    /// evidence of the rest: it only rises, and nothing it covers is sent,
    /// so entries the peer gave us are not served straight back to it by
    /// the feed tail. An optimisation only: past `max_objects` objects (or
    /// `max_collection_len` replicas in one) nothing more is recorded.
    peer_holds: HashMap<String, VersionVector>,
    /// What the peer durably holds, for [`Config::report_peer_durable`]
    /// (bounded by `max_objects`).
    peer_durable: HashMap<String, VersionVector>,
    round: u32,
    serve_listing: Option<(Cursor, u32)>,
    serving: bool,
    work: BTreeSet<String>,
    ranges: VecDeque<(String, ReplicaId, u64, u64)>,
    feed_pos: u64,
    feed_caught_up: bool,
    checkpointed: u64,
    snap_out: Option<SnapOut>,
    /// Deletions to tell the peer (bounded by `max_objects`).
    tomb_due: BTreeSet<String>,
    /// Objects the peer told us, or we told it, are deleted (bounded by
    /// `max_objects`): not told again in this session.
    peer_tombs: BTreeSet<String>,
    next_n: u64,
    next_snap_id: u64,
    inflight: VecDeque<Inflight>,
    inflight_bytes: usize,
    last_ack_progress: u64,

    // Receiving.
    recv_floor: u64,
    recv_high: u64,
    recv_above: BTreeSet<u64>,
    checkpoint_poisoned: bool,
    pending: BTreeMap<(String, ReplicaId), Held>,
    pending_bytes: usize,
    assemblies: VecDeque<Assembly>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("state", &self.state)
            .field("queues", &self.queue_sizes())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A new session for replica `local` at time `now`, whose peer is bound
    /// by `policy`. Its hello is queued at once: poll [`Session::poll_transmit`].
    pub fn new(now: u64, config: Config, local: ReplicaId, policy: Policy) -> Self {
        let mut config = config;
        config.batch_entries = config
            .batch_entries
            .clamp(1, config.limits.max_batch_entries);
        let hello = Message::Hello {
            version: u16::from(codec::PROTOCOL_VERSION),
            replica: local,
            interest: config.interest.clone(),
            resume_after: config.resume_after,
        };
        let have_listing = config
            .resume_after
            .is_none()
            .then(|| start(&config.interest));
        let next_repair = config.repair_interval_ms.map(|i| now.saturating_add(i));
        let mut session = Self {
            local,
            policy,
            merge: None,
            state: State::AwaitHello,
            peer: None,
            peer_hello: None,
            recv: Vec::new(),
            out: VecDeque::new(),
            ack_due: None,
            have_due: BTreeMap::new(),
            keepalive_due: false,
            presence_out: VecDeque::new(),
            events: VecDeque::new(),
            updated: BTreeSet::new(),
            last_recv: now,
            next_keepalive: now.saturating_add(config.keepalive_ms),
            next_repair,
            next_feed_poll: now,
            have_listing,
            peer_vv: HashMap::new(),
            peer_holds: HashMap::new(),
            peer_durable: HashMap::new(),
            round: 0,
            serve_listing: None,
            serving: false,
            work: BTreeSet::new(),
            ranges: VecDeque::new(),
            feed_pos: 0,
            feed_caught_up: false,
            checkpointed: 0,
            snap_out: None,
            tomb_due: BTreeSet::new(),
            peer_tombs: BTreeSet::new(),
            next_n: 1,
            next_snap_id: 1,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            last_ack_progress: now,
            recv_floor: 0,
            recv_high: 0,
            recv_above: BTreeSet::new(),
            checkpoint_poisoned: false,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            assemblies: VecDeque::new(),
            config,
        };
        session.queue(&hello);
        session
    }

    /// Uses `merge` to join snapshots that neither covers the other.
    pub fn with_snapshot_merge(mut self, merge: Arc<dyn SnapshotMerge>) -> Self {
        self.merge = Some(merge);
        self
    }

    /// Feeds bytes received from the peer. Whole frames are decoded and
    /// acted on; a partial frame is kept for the next call. A bad frame or
    /// message closes the session (the error is returned, queued for the
    /// peer, and reported as [`Event::Closed`]); nothing of it is written.
    pub fn handle_bytes(
        &mut self,
        now: u64,
        bytes: &[u8],
        store: &dyn Store,
    ) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Ok(());
        }
        if self.state == State::Open {
            // Before the peer's hello nothing proves it is there: a session
            // whose hello never arrives times out.
            self.last_recv = now;
        }
        self.recv.extend_from_slice(bytes);
        let mut used = 0;
        let result = loop {
            match codec::decode(&self.recv[used..], &self.config.limits) {
                Ok((msg, len)) => {
                    used += len;
                    if let Err(e) = self.handle_message(now, msg, store) {
                        break Err(e);
                    }
                    if self.state == State::Closed {
                        break Ok(());
                    }
                }
                Err(DecodeError::Incomplete { .. }) => break Ok(()),
                Err(e) => break Err(SessionError::Decode(e)),
            }
        };
        self.recv.drain(..used);
        let result = result.and_then(|()| self.pump(now, store));
        self.fail_on(result)
    }

    /// Advances timers: keep-alives, the idle timeout, resending after a
    /// lost ack, periodic repair, and reading the change feed.
    pub fn handle_timeout(&mut self, now: u64, store: &dyn Store) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Ok(());
        }
        if now >= self.last_recv.saturating_add(self.config.idle_timeout_ms) {
            return self.fail_on(Err(SessionError::Timeout(self.config.idle_timeout_ms)));
        }
        if now >= self.next_keepalive {
            self.keepalive_due = true;
            self.next_keepalive = now.saturating_add(self.config.keepalive_ms);
        }
        if let (Some(at), Some(interval)) = (self.next_repair, self.config.repair_interval_ms)
            && now >= at
            && self.state == State::Open
        {
            if self.have_listing.is_none() {
                self.have_listing = Some(start(&self.config.interest));
            }
            self.next_repair = Some(now.saturating_add(interval));
        }
        if !self.inflight.is_empty()
            && now
                >= self
                    .last_ack_progress
                    .saturating_add(self.config.ack_timeout_ms)
        {
            self.resend_inflight(now);
        }
        if now >= self.next_feed_poll {
            self.next_feed_poll = now.saturating_add(self.config.feed_poll_ms);
        }
        let result = self.pump(now, store);
        self.fail_on(result)
    }

    /// The store gained entries (a local write, or an append by another
    /// session): stream what the peer subscribed to (live mode).
    pub fn handle_store_change(&mut self, now: u64, store: &dyn Store) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Ok(());
        }
        let result = self.pump(now, store);
        self.fail_on(result)
    }

    /// Sends ephemeral state about `object` to the peer, valid for `ttl_ms`.
    /// Never stored; dropped (oldest first) if the caller sends faster than
    /// it transmits.
    pub fn send_presence(&mut self, object: &str, payload: &[u8], ttl_ms: u32) {
        let msg = Message::Presence {
            object: object.to_owned(),
            payload: payload.to_vec(),
            ttl_ms,
        };
        if self.state == State::Closed || msg.validate(&self.config.limits).is_err() {
            return;
        }
        if self.presence_out.len() >= self.config.window_messages {
            self.presence_out.pop_front();
        }
        self.presence_out.push_back(msg);
    }

    /// Closes the session on purpose: a closing message is queued for the peer.
    pub fn close(&mut self, reason: &str) {
        if self.state != State::Closed {
            let _ = self.fail_on(Err(SessionError::Local(reason.to_owned())));
        }
    }

    /// The next frame to write to the connection.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.state != State::Closed {
            if let Some(upto) = self.ack_due.take() {
                return self.encode(&Message::Ack { upto });
            }
            if !self.have_due.is_empty() {
                let max = self.config.limits.max_collection_len.min(PAGE);
                let mut items = Vec::new();
                while items.len() < max {
                    let Some(item) = self.have_due.pop_first() else {
                        break;
                    };
                    items.push(item);
                }
                return self.encode(&Message::Have { items });
            }
            if let Some(msg) = self.presence_out.pop_front() {
                return self.encode(&msg);
            }
        }
        if let Some(frame) = self.out.pop_front() {
            return Some(frame);
        }
        if self.state != State::Closed && std::mem::take(&mut self.keepalive_due) {
            return self.encode(&Message::KeepAlive);
        }
        None
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(object) = self.updated.pop_first() {
            return Some(Event::ObjectUpdated { object });
        }
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] should next be called, if ever.
    ///
    /// A new session is due at once: its first [`Session::handle_timeout`]
    /// lists the subscription into `Have` messages that leave with the hello.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.state == State::Closed {
            return None;
        }
        let mut at = self
            .last_recv
            .saturating_add(self.config.idle_timeout_ms)
            .min(self.next_keepalive);
        if let Some(repair) = self.next_repair {
            at = at.min(repair);
        }
        if !self.inflight.is_empty() {
            at = at.min(
                self.last_ack_progress
                    .saturating_add(self.config.ack_timeout_ms),
            );
        }
        if self.serving || self.have_listing.is_some() {
            at = at.min(self.next_feed_poll);
        }
        Some(at)
    }

    /// Whether the session is closed (drain [`Session::poll_transmit`] first).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The peer's replica id, once it said hello.
    pub fn peer(&self) -> Option<ReplicaId> {
        self.peer.as_ref().map(|(r, _)| *r)
    }

    /// The sizes of the session's queues (for bounded-memory checks and metrics).
    pub fn queue_sizes(&self) -> QueueSizes {
        QueueSizes {
            out_frames: self.out.len(),
            inflight_messages: self.inflight.len(),
            inflight_bytes: self.inflight_bytes,
            pending_bytes: self.pending_bytes,
            assembly_bytes: self.assemblies.iter().map(|a| a.buf.len()).sum(),
            peer_objects: self.peer_vv.len(),
            peer_holds: self.peer_holds.len(),
            work: self.work.len() + self.ranges.len() + self.tomb_due.len(),
            peer_tombstones: self.peer_tombs.len(),
            events: self.events.len(),
            recv_bytes: self.recv.len(),
        }
    }

    /// Whether this side has nothing left to send the peer right now:
    /// listings done, nothing queued, nothing unacknowledged.
    pub fn is_idle(&self) -> bool {
        self.serving
            && self.serve_listing.is_none()
            && self.have_listing.is_none()
            && self.work.is_empty()
            && self.ranges.is_empty()
            && self.snap_out.is_none()
            && self.tomb_due.is_empty()
            && self.inflight.is_empty()
            && self.out.is_empty()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn fail_on(&mut self, result: Result<(), SessionError>) -> Result<(), SessionError> {
        let Err(error) = result else { return Ok(()) };
        if self.state == State::Closed {
            return Err(error);
        }
        self.state = State::Closed;
        self.out.clear();
        if !matches!(error, SessionError::ClosedByPeer { .. }) {
            let mut reason = error.to_string();
            truncate_utf8(&mut reason, self.config.limits.max_string_bytes);
            let msg = Message::Error {
                code: error.code(),
                reason,
            };
            if let Ok(frame) = codec::encode(&msg, &self.config.limits) {
                self.out.push_back(frame);
            }
        }
        self.events.push_back(Event::Closed {
            reason: error.clone(),
        });
        Err(error)
    }

    fn encode(&self, msg: &Message) -> Option<Vec<u8>> {
        // Every message built here was checked against the limits (control
        // messages are small; data messages are sized to fit), so this only
        // fails on a bug; dropping the frame then is safe: sync is idempotent
        // and repair resends.
        codec::encode(msg, &self.config.limits).ok()
    }

    fn queue(&mut self, msg: &Message) {
        if let Some(frame) = self.encode(msg) {
            self.out.push_back(frame);
        }
    }

    fn handle_message(
        &mut self,
        now: u64,
        msg: Message,
        store: &dyn Store,
    ) -> Result<(), SessionError> {
        if let Message::Hello { .. } = &msg {
            return self.handle_hello(now, msg, store);
        }
        if let Message::Error { code, reason } = msg {
            return Err(SessionError::ClosedByPeer { code, reason });
        }
        if self.state != State::Open {
            // A frame overtook the hello (possible on datagram transports):
            // drop it; acknowledgement timeouts and repair resend its content.
            self.checkpoint_poisoned = true;
            return Ok(());
        }
        if let Some(n) = msg.data_number() {
            self.note_data(n);
        }
        match msg {
            Message::Hello { .. } | Message::Error { .. } | Message::KeepAlive => Ok(()),
            Message::Have { items } => self.handle_have(items),
            Message::HaveDone => {
                // A new round compares everything again, tombstones too: a
                // `Deleted` lost under a later acknowledged message is only
                // found again this way (there is no gap to notice it by).
                self.peer_tombs.clear();
                self.serve_listing = Some((self.peer_start(), self.round));
                self.round = self.round.wrapping_add(1);
                self.serving = true;
                Ok(())
            }
            Message::Entries {
                object,
                replica,
                from_seq,
                entries,
                ..
            } => self.handle_entries(object, replica, from_seq, entries, store),
            Message::Deleted { object, .. } => self.handle_deleted(object, store),
            Message::Ack { upto } => {
                let mut durable = BTreeSet::new();
                while self.inflight.front().is_some_and(|i| i.n <= upto) {
                    if let Some(done) = self.inflight.pop_front() {
                        self.inflight_bytes -= done.bytes;
                        self.last_ack_progress = now;
                        if let Sent::Entries {
                            object,
                            replica,
                            first,
                            last,
                        } = done.sent
                            && self.note_durable(&object, replica, first, last)
                        {
                            durable.insert(object);
                        }
                    }
                }
                for object in durable {
                    self.report_durable(object);
                }
                Ok(())
            }
            Message::SnapshotBegin {
                id,
                object,
                version_vector,
                total_len,
                ..
            } => self.handle_snapshot_begin(id, object, version_vector, total_len, store),
            Message::EntryBegin {
                id,
                object,
                replica,
                seq,
                total_len,
                ..
            } => self.handle_entry_begin(id, object, (replica, seq), total_len, store),
            Message::SnapshotChunk {
                id, offset, bytes, ..
            } => self.handle_snapshot_chunk(id, offset, bytes, store),
            Message::Checkpoint { n, position } => {
                if !self.checkpoint_poisoned
                    && self.recv_floor >= n
                    && self.pending.is_empty()
                    && let Some(peer) = self.peer()
                {
                    self.events
                        .push_back(Event::PeerFeedPosition { peer, position });
                }
                Ok(())
            }
            Message::Presence {
                object,
                payload,
                ttl_ms,
            } => {
                if let Some(from) = self.peer()
                    && self.events.len() < self.config.max_events
                {
                    self.events.push_back(Event::Presence {
                        object,
                        from,
                        payload,
                        expires_at: now.saturating_add(u64::from(ttl_ms)),
                    });
                }
                Ok(())
            }
        }
    }

    fn handle_hello(
        &mut self,
        now: u64,
        msg: Message,
        store: &dyn Store,
    ) -> Result<(), SessionError> {
        if let Some(first) = &self.peer_hello {
            // A duplicated hello is harmless; a different one is not.
            if *first == msg {
                return Ok(());
            }
            return Err(SessionError::Protocol("a second, different hello".into()));
        }
        let Message::Hello {
            version,
            replica,
            interest,
            resume_after,
        } = msg.clone()
        else {
            return Ok(());
        };
        let supported = u16::from(codec::PROTOCOL_VERSION);
        if version != supported {
            return Err(SessionError::Version {
                found: version,
                supported,
            });
        }
        self.peer_hello = Some(msg);
        self.peer = Some((replica, interest));
        self.state = State::Open;
        self.last_recv = now;
        self.events.push_back(Event::Connected { peer: replica });
        let head = store.feed_head().map_err(store_err)?;
        self.feed_pos = head;
        match resume_after {
            Some(p) if p <= head => {
                // Cost in proportion to what changed: tail the feed from
                // where the peer left off; repair catches anything else.
                self.feed_pos = p;
                self.serving = true;
            }
            Some(_) => {
                // The peer's cursor is beyond our feed (a replaced store):
                // send everything, the peer skips what it holds.
                self.serving = true;
                self.serve_listing = Some((self.peer_start(), self.round));
                self.round = self.round.wrapping_add(1);
            }
            None => {} // Wait for the peer's `Have`s and `HaveDone`.
        }
        Ok(())
    }

    fn handle_have(&mut self, items: Vec<(String, VersionVector)>) -> Result<(), SessionError> {
        if self.config.report_peer_durable {
            for (object, vv) in &items {
                let known = self.peer_durable.get(object);
                let room = known.is_some() || self.peer_durable.len() < self.config.max_objects;
                if room && known.is_none_or(|k| !k.dominates(vv)) {
                    self.peer_durable
                        .entry(object.clone())
                        .or_default()
                        .merge(vv);
                    self.report_durable(object.clone());
                }
            }
        }
        for (object, vv) in items {
            if !self.peer_wants(&object) {
                continue;
            }
            self.track(&object)?;
            if let Some(slot) = self.peer_vv.get_mut(&object) {
                *slot = (vv, self.round);
            }
            self.work.insert(object);
        }
        Ok(())
    }

    fn handle_entries(
        &mut self,
        object: String,
        replica: ReplicaId,
        from_seq: u64,
        entries: Vec<Vec<u8>>,
        store: &dyn Store,
    ) -> Result<(), SessionError> {
        if !self.policy.allows(replica) {
            return Err(SessionError::Unauthorised { replica });
        }
        // The peer read these from its store: it holds them (the codec
        // checked that the batch is not empty and its seqs do not overflow).
        let last = from_seq
            .saturating_add(entries.len() as u64)
            .saturating_sub(1);
        self.note_held(&object, replica, last);
        if !self.config.interest.matches(&object) {
            return Ok(()); // Not subscribed: ignore (it is acknowledged all the same).
        }
        if self.apply(&object, replica, from_seq, &entries, store)? {
            self.drain_pending(&object, replica, store)?;
            return Ok(());
        }
        // A gap: hold the batch (bounded) and ask for what is missing.
        let size: usize = entries.iter().map(Vec::len).sum();
        if self.pending_bytes + size <= self.config.max_pending_bytes {
            self.pending_bytes += size;
            let held = self.pending.entry((object.clone(), replica)).or_default();
            if let Some(old) = held.insert(from_seq, entries) {
                self.pending_bytes -= old.iter().map(Vec::len).sum::<usize>();
            }
        } else {
            self.checkpoint_poisoned = true;
        }
        self.request(&object, store)
    }

    /// Appends a batch; `Ok(false)` on a gap.
    fn apply(
        &mut self,
        object: &str,
        replica: ReplicaId,
        from_seq: u64,
        entries: &[Vec<u8>],
        store: &dyn Store,
    ) -> Result<bool, SessionError> {
        let batch: Vec<Entry> = (from_seq..)
            .zip(entries)
            .map(|(seq, bytes)| Entry::new(seq, bytes.clone()))
            .collect();
        match store.append(object, replica, &batch) {
            Ok(outcome) => {
                if outcome.appended > 0 && self.updated.len() < self.config.max_objects {
                    self.updated.insert(object.to_owned());
                }
                Ok(true)
            }
            Err(AppendError::Gap { .. }) => Ok(false),
            Err(AppendError::Deleted { .. }) => {
                // Deletion wins: drop the entries, and tell the peer, which
                // evidently still holds the object.
                self.peer_tombs.remove(object);
                self.tomb(object);
                Ok(true)
            }
            Err(AppendError::Conflict {
                object,
                replica,
                seq,
            }) => {
                self.events.push_back(Event::PeerConflict {
                    object: object.clone(),
                    replica,
                    seq,
                });
                Err(SessionError::Conflict {
                    object,
                    replica,
                    seq,
                })
            }
            Err(AppendError::Store(e)) => Err(store_err(e)),
            Err(e) => Err(SessionError::Protocol(e.to_string())),
        }
    }

    fn drain_pending(
        &mut self,
        object: &str,
        replica: ReplicaId,
        store: &dyn Store,
    ) -> Result<(), SessionError> {
        let key = (object.to_owned(), replica);
        while let Some(held) = self.pending.get_mut(&key) {
            let Some((from_seq, entries)) = held.pop_first() else {
                self.pending.remove(&key);
                break;
            };
            if held.is_empty() {
                self.pending.remove(&key);
            }
            self.pending_bytes -= entries.iter().map(Vec::len).sum::<usize>();
            if !self.apply(object, replica, from_seq, &entries, store)? {
                // Still a gap: put it back and stop.
                self.pending_bytes += entries.iter().map(Vec::len).sum::<usize>();
                self.pending
                    .entry(key.clone())
                    .or_default()
                    .insert(from_seq, entries);
                break;
            }
        }
        Ok(())
    }

    fn request(&mut self, object: &str, store: &dyn Store) -> Result<(), SessionError> {
        let vv = match store.version_vector(object) {
            Ok(vv) => vv,
            Err(ReadError::UnknownObject { .. }) => VersionVector::new(),
            Err(ReadError::Deleted { .. }) => {
                self.drop_pending(object);
                self.peer_tombs.remove(object);
                self.tomb(object);
                return Ok(());
            }
            Err(e) => return Err(store_err(e)),
        };
        if self.have_due.len() < self.config.max_objects || self.have_due.contains_key(object) {
            self.have_due.insert(object.to_owned(), vv);
        }
        Ok(())
    }

    fn handle_snapshot_begin(
        &mut self,
        id: u64,
        object: String,
        version_vector: VersionVector,
        total_len: u64,
        store: &dyn Store,
    ) -> Result<(), SessionError> {
        let total = usize::try_from(total_len).unwrap_or(usize::MAX);
        if total > self.config.max_snapshot_bytes {
            return Err(SessionError::Limit(format!(
                "snapshot of {object:?} is {total_len} bytes, this side takes at most {}",
                self.config.max_snapshot_bytes
            )));
        }
        // The peer's store holds what its snapshot covers.
        self.note_holds(&object, &version_vector);
        if !self.config.interest.matches(&object) {
            return Ok(());
        }
        self.begin_assembly(id, object, None, version_vector, total, store)
    }

    fn handle_entry_begin(
        &mut self,
        id: u64,
        object: String,
        (replica, seq): (ReplicaId, u64),
        total_len: u64,
        store: &dyn Store,
    ) -> Result<(), SessionError> {
        let total = usize::try_from(total_len).unwrap_or(usize::MAX);
        if total > self.config.max_entry_bytes {
            return Err(SessionError::Limit(format!(
                "entry {object}/{replica} seq {seq} is {total_len} bytes, this side takes at most {}; raise Config::max_entry_bytes",
                self.config.max_entry_bytes
            )));
        }
        // Checked before anything is buffered, as for a batch.
        if !self.policy.allows(replica) {
            return Err(SessionError::Unauthorised { replica });
        }
        // The peer read it from its store: it holds the log up to `seq`.
        self.note_held(&object, replica, seq);
        if !self.config.interest.matches(&object) {
            return Ok(());
        }
        self.begin_assembly(
            id,
            object,
            Some((replica, seq)),
            VersionVector::new(),
            total,
            store,
        )
    }

    /// Starts reassembling a snapshot or a chunked entry (at most two at a time).
    fn begin_assembly(
        &mut self,
        id: u64,
        object: String,
        entry: Option<(ReplicaId, u64)>,
        version_vector: VersionVector,
        total: usize,
        store: &dyn Store,
    ) -> Result<(), SessionError> {
        if self.assemblies.iter().any(|a| a.object == object) {
            self.checkpoint_poisoned = true;
        }
        self.assemblies.retain(|a| a.object != object);
        if self.assemblies.len() >= 2 {
            self.assemblies.pop_front();
            self.checkpoint_poisoned = true;
        }
        let assembly = Assembly {
            id,
            object,
            entry,
            version_vector,
            total,
            buf: Vec::new(),
        };
        if total == 0 {
            return self.install(assembly, store);
        }
        self.assemblies.push_back(assembly);
        Ok(())
    }

    fn handle_snapshot_chunk(
        &mut self,
        id: u64,
        offset: u64,
        bytes: Vec<u8>,
        store: &dyn Store,
    ) -> Result<(), SessionError> {
        let Some(i) = self.assemblies.iter().position(|a| a.id == id) else {
            self.checkpoint_poisoned = true;
            return Ok(()); // Its beginning was lost; a gap will ask again.
        };
        let a = &mut self.assemblies[i];
        if offset != a.buf.len() as u64 {
            // A chunk went missing: give up on this transfer and ask again.
            let object = a.object.clone();
            self.assemblies.remove(i);
            self.checkpoint_poisoned = true;
            return self.request(&object, store);
        }
        if a.buf.len() + bytes.len() > a.total {
            return Err(SessionError::Protocol(format!(
                "snapshot chunks of {:?} run past its announced {} bytes",
                a.object, a.total
            )));
        }
        a.buf.extend_from_slice(&bytes);
        if a.buf.len() == a.total
            && let Some(done) = self.assemblies.remove(i)
        {
            return self.install(done, store);
        }
        Ok(())
    }

    fn install(&mut self, a: Assembly, store: &dyn Store) -> Result<(), SessionError> {
        if let Some((replica, seq)) = a.entry {
            // A whole entry: from here on, exactly a one-entry batch.
            return self.handle_entries(a.object, replica, seq, vec![a.buf], store);
        }
        let local = match store.latest_snapshot(&a.object) {
            Ok(s) => s,
            Err(ReadError::UnknownObject { .. }) => None,
            Err(ReadError::Deleted { .. }) => {
                self.peer_tombs.remove(&a.object);
                self.tomb(&a.object);
                return Ok(());
            }
            Err(e) => return Err(store_err(e)),
        };
        let (vv, bytes) = match local {
            None => (a.version_vector, a.buf),
            Some(l) if a.version_vector.dominates(&l.version_vector) => (a.version_vector, a.buf),
            Some(l) if l.version_vector.dominates(&a.version_vector) => return Ok(()),
            Some(l) => {
                let incoming = Snapshot {
                    version_vector: a.version_vector,
                    bytes: a.buf,
                };
                let merged = self
                    .merge
                    .as_ref()
                    .and_then(|m| m.merge(&a.object, &l, &incoming));
                let Some(bytes) = merged else {
                    self.checkpoint_poisoned = true;
                    self.events
                        .push_back(Event::SnapshotUnmergeable { object: a.object });
                    return Ok(());
                };
                let mut vv = l.version_vector;
                vv.merge(&incoming.version_vector);
                (vv, bytes)
            }
        };
        match store.put_snapshot(&a.object, &vv, &bytes) {
            Ok(()) => {}
            Err(SnapshotError::Regression { .. }) => return Ok(()),
            Err(SnapshotError::Deleted { object }) => {
                self.peer_tombs.remove(&object);
                self.tomb(&object);
                return Ok(());
            }
            Err(SnapshotError::Store(e)) => return Err(store_err(e)),
            Err(e) => return Err(SessionError::Limit(e.to_string())),
        }
        self.events.push_back(Event::SnapshotInstalled {
            object: a.object.clone(),
            version_vector: vv.clone(),
        });
        if self.updated.len() < self.config.max_objects {
            self.updated.insert(a.object.clone());
        }
        let held: Vec<ReplicaId> = self
            .pending
            .range((a.object.clone(), ReplicaId::from_u64(0))..)
            .take_while(|((o, _), _)| *o == a.object)
            .map(|((_, r), _)| *r)
            .collect();
        for replica in held {
            self.drain_pending(&a.object, replica, store)?;
        }
        Ok(())
    }

    /// The peer says `object` was deleted: delete it here too.
    fn handle_deleted(&mut self, object: String, store: &dyn Store) -> Result<(), SessionError> {
        // Taken for objects this side subscribes to, and for objects it
        // serves the peer (which is how a peer that deleted an object stops
        // this side from sending it back).
        if !self.config.interest.matches(&object) && !self.peer_wants(&object) {
            return Ok(());
        }
        let outcome = store.delete_object(&object).map_err(store_err)?;
        self.drop_pending(&object);
        self.tomb_due.remove(&object);
        self.have_due.remove(&object);
        if self.peer_tombs.len() < self.config.max_objects {
            self.peer_tombs.insert(object.clone());
        }
        if outcome.deleted && self.events.len() < self.config.max_events {
            self.events.push_back(Event::ObjectDeleted { object });
        }
        Ok(())
    }

    /// Forgets everything held for a deleted object on the receiving side.
    fn drop_pending(&mut self, object: &str) {
        let held: Vec<(String, ReplicaId)> = self
            .pending
            .range((object.to_owned(), ReplicaId::from_u64(0))..)
            .take_while(|((o, _), _)| o == object)
            .map(|(k, _)| k.clone())
            .collect();
        for key in held {
            if let Some(batches) = self.pending.remove(&key) {
                self.pending_bytes -= batches.values().flatten().map(Vec::len).sum::<usize>();
            }
        }
        self.assemblies.retain(|a| a.object != object);
    }

    /// Queues telling the peer that `object` is deleted, unless it knows.
    fn tomb(&mut self, object: &str) {
        if self.peer_tombs.contains(object) {
            return;
        }
        if self.tomb_due.len() < self.config.max_objects {
            self.tomb_due.insert(object.to_owned());
        }
    }

    fn send_deleted(&mut self) {
        let Some(object) = self.tomb_due.pop_first() else {
            return;
        };
        let n = self.next_n;
        self.next_n += 1;
        let msg = Message::Deleted {
            n,
            object: object.clone(),
        };
        if self.peer_tombs.len() < self.config.max_objects {
            self.peer_tombs.insert(object.clone());
        }
        self.send_data(n, &msg, Sent::Deleted { object });
    }

    fn note_data(&mut self, n: u64) {
        self.recv_high = self.recv_high.max(n);
        self.ack_due = Some(self.recv_high);
        if n <= self.recv_floor {
            return;
        }
        if n == self.recv_floor + 1 {
            self.recv_floor = n;
            while self.recv_above.remove(&(self.recv_floor + 1)) {
                self.recv_floor += 1;
            }
            return;
        }
        self.recv_above.insert(n);
        if self.recv_above.len() > self.config.window_messages.saturating_mul(4) {
            // Too many holes to track: data was lost, and no checkpoint of
            // this session can be trusted any more.
            self.checkpoint_poisoned = true;
            self.recv_above.clear();
            self.recv_floor = self.recv_high;
        }
    }

    fn peer_wants(&self, object: &str) -> bool {
        self.peer.as_ref().is_some_and(|(_, i)| i.matches(object))
    }

    fn peer_start(&self) -> Cursor {
        match &self.peer {
            Some((_, interest)) => start(interest),
            None => Cursor::Index(usize::MAX),
        }
    }

    /// Starts tracking what the peer holds of `object`.
    fn track(&mut self, object: &str) -> Result<(), SessionError> {
        if self.peer_vv.contains_key(object) {
            return Ok(());
        }
        if self.peer_vv.len() >= self.config.max_objects {
            return Err(SessionError::Limit(format!(
                "the subscription covers more than {} objects; split it over sessions or raise Config::max_objects",
                self.config.max_objects
            )));
        }
        self.peer_vv
            .insert(object.to_owned(), (VersionVector::new(), self.round));
        Ok(())
    }

    /// Records that the peer holds `object`'s log of `replica` up to `upto`.
    fn note_held(&mut self, object: &str, replica: ReplicaId, upto: u64) {
        if !self.peer_wants(object) {
            return; // Never served to the peer: nothing to spare.
        }
        let max_replicas = self.config.limits.max_collection_len;
        if !self.peer_holds.contains_key(object) && self.peer_holds.len() >= self.config.max_objects
        {
            return;
        }
        let vv = self.peer_holds.entry(object.to_owned()).or_default();
        if vv.get(replica) >= upto || (vv.get(replica) == 0 && vv.len() >= max_replicas) {
            return;
        }
        vv.set(replica, upto);
    }

    /// The peer acknowledged entries `first..=last` of `replica`'s log of
    /// `object`: if they continue what it was known to hold durably, it
    /// now holds them too. Returns whether that rose.
    fn note_durable(&mut self, object: &str, replica: ReplicaId, first: u64, last: u64) -> bool {
        if !self.config.report_peer_durable {
            return false;
        }
        if !self.peer_durable.contains_key(object)
            && self.peer_durable.len() >= self.config.max_objects
        {
            return false;
        }
        let vv = self.peer_durable.entry(object.to_owned()).or_default();
        let held = vv.get(replica);
        if held.saturating_add(1) < first || held >= last {
            return false;
        }
        vv.set(replica, last);
        true
    }

    fn report_durable(&mut self, object: String) {
        if let Some(vv) = self.peer_durable.get(&object) {
            let version_vector = vv.clone();
            self.events.push_back(Event::PeerDurable {
                object,
                version_vector,
            });
        }
    }

    /// Records that the peer holds at least `held` of `object`.
    fn note_holds(&mut self, object: &str, held: &VersionVector) {
        for (replica, upto) in held.iter() {
            self.note_held(object, replica, upto);
        }
    }

    /// The least the peer holds of `object`'s log of `replica`.
    fn held(&self, object: &str, replica: ReplicaId) -> u64 {
        self.peer_holds.get(object).map_or(0, |vv| vv.get(replica))
    }

    fn window_open(&self) -> bool {
        self.inflight.len() < self.config.window_messages
            && self.inflight_bytes < self.config.window_bytes
    }

    fn resend_inflight(&mut self, now: u64) {
        for i in std::mem::take(&mut self.inflight) {
            match i.sent {
                Sent::Entries {
                    object,
                    replica,
                    first,
                    last,
                } => {
                    if self
                        .snap_out
                        .as_ref()
                        .is_some_and(|s| s.object == object && s.entry == Some((replica, first)))
                    {
                        self.snap_out = None;
                    }
                    self.replan(object, replica, first, last);
                }
                Sent::Deleted { object } => {
                    self.peer_tombs.remove(&object);
                    self.tomb(&object);
                }
                Sent::Snapshot { object } => {
                    if self.snap_out.as_ref().is_some_and(|s| s.object == object) {
                        self.snap_out = None;
                    }
                    if let Some((vv, _)) = self.peer_vv.get_mut(&object) {
                        *vv = VersionVector::new();
                    }
                    self.work.insert(object);
                }
            }
        }
        self.inflight_bytes = 0;
        self.last_ack_progress = now;
    }

    /// Plans `first..=last` of a log again (its data message was lost).
    fn replan(&mut self, object: String, replica: ReplicaId, first: u64, last: u64) {
        match self.peer_vv.get_mut(&object) {
            Some((vv, _)) => {
                if vv.get(replica) >= first {
                    vv.set(replica, first - 1);
                }
                self.work.insert(object);
            }
            None => self.ranges.push_back((object, replica, first, last)),
        }
    }

    /// Does what can be done now: list our interest into `Have`s, and send
    /// the peer what it lacks while the window allows.
    fn pump(&mut self, now: u64, store: &dyn Store) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Ok(());
        }
        // Our `Have`s go out with the hello, without waiting for the peer's:
        // subscribing costs one round trip.
        self.pump_have(store)?;
        if self.state != State::Open {
            return Ok(());
        }
        // Deletions go out whether or not this side serves yet: they answer
        // entries the peer pushed for an object deleted here.
        while self.window_open() && !self.tomb_due.is_empty() {
            self.send_deleted();
        }
        if !self.serving {
            return Ok(());
        }
        let _ = now;
        while self.window_open() {
            if self.snap_out.is_some() {
                self.send_chunk();
                continue;
            }
            if !self.tomb_due.is_empty() {
                self.send_deleted();
                continue;
            }
            if let Some((object, replica, first, last)) = self.ranges.pop_front() {
                self.send_range(&object, replica, first, last, store)?;
                continue;
            }
            if let Some(object) = self.work.pop_first() {
                self.diff(&object, store)?;
                continue;
            }
            if self.serve_listing.is_some() {
                self.list_page(store)?;
                continue;
            }
            if !self.read_feed(store)? {
                break;
            }
        }
        if self.serve_listing.is_none()
            && self.work.is_empty()
            && self.ranges.is_empty()
            && self.snap_out.is_none()
            && self.tomb_due.is_empty()
            && self.feed_caught_up
            && self.feed_pos > self.checkpointed
        {
            self.checkpointed = self.feed_pos;
            let msg = Message::Checkpoint {
                n: self.next_n - 1,
                position: self.feed_pos,
            };
            self.queue(&msg);
        }
        Ok(())
    }

    fn pump_have(&mut self, store: &dyn Store) -> Result<(), SessionError> {
        while let Some(cursor) = self.have_listing.take() {
            if self.out.len() > self.config.window_messages {
                self.have_listing = Some(cursor);
                return Ok(());
            }
            let interest = self.config.interest.clone();
            let (objects, next) = page(&interest, cursor, store)?;
            let mut items = Vec::with_capacity(objects.len());
            for object in objects {
                match store.version_vector(&object) {
                    Ok(vv) => items.push((object, vv)),
                    Err(ReadError::UnknownObject { .. }) => {}
                    // Named in our interest but deleted here: tell the peer.
                    Err(ReadError::Deleted { .. }) => self.tomb(&object),
                    Err(e) => return Err(store_err(e)),
                }
            }
            if !items.is_empty() {
                self.queue(&Message::Have { items });
            }
            match next {
                Some(c) => self.have_listing = Some(c),
                None => self.queue(&Message::HaveDone),
            }
        }
        Ok(())
    }

    fn list_page(&mut self, store: &dyn Store) -> Result<(), SessionError> {
        let Some((cursor, round)) = self.serve_listing.take() else {
            return Ok(());
        };
        let Some((_, interest)) = self.peer.clone() else {
            return Ok(());
        };
        if let (Interest::Prefix(prefix), Cursor::Deleted(after)) = (&interest, &cursor) {
            // After the live objects, the deleted ones: the peer learns of
            // every tombstone in its interest, held there or not.
            let deleted = store
                .list_tombstones(prefix, after.as_deref(), PAGE)
                .map_err(store_err)?;
            for object in &deleted {
                self.tomb(object);
            }
            if deleted.len() == PAGE {
                self.serve_listing = Some((Cursor::Deleted(deleted.last().cloned()), round));
            }
            return Ok(());
        }
        let (objects, next) = page(&interest, cursor, store)?;
        let next = match (&interest, next) {
            (Interest::Prefix(_), None) => Some(Cursor::Deleted(None)),
            (_, next) => next,
        };
        for object in objects {
            self.track(&object)?;
            if let Some(slot) = self.peer_vv.get_mut(&object)
                && slot.1 != round
            {
                // The peer did not name it in this round: it holds none of it.
                *slot = (VersionVector::new(), round);
            }
            self.work.insert(object);
        }
        self.serve_listing = next.map(|c| (c, round));
        Ok(())
    }

    /// Reads the change feed; `false` when there is nothing more to read now.
    fn read_feed(&mut self, store: &dyn Store) -> Result<bool, SessionError> {
        if self.work.len() + self.ranges.len() + self.tomb_due.len() >= PAGE {
            return Ok(false);
        }
        let items = store
            .changes_since(self.feed_pos, FEED_PAGE)
            .map_err(store_err)?;
        self.feed_caught_up = items.len() < FEED_PAGE;
        if items.is_empty() {
            return Ok(false);
        }
        for item in items {
            self.feed_pos = item.position;
            if !self.peer_wants(&item.object) {
                continue;
            }
            if item.kind == FeedKind::Delete {
                self.tomb(&item.object);
                continue;
            }
            if self.peer_vv.contains_key(&item.object) {
                self.work.insert(item.object);
            } else {
                self.ranges
                    .push_back((item.object, item.replica, item.first, item.last));
            }
        }
        Ok(true)
    }

    fn diff(&mut self, object: &str, store: &dyn Store) -> Result<(), SessionError> {
        let local = match store.version_vector(object) {
            Ok(vv) => vv,
            Err(ReadError::UnknownObject { .. }) => return Ok(()),
            Err(ReadError::Deleted { .. }) => {
                self.tomb(object);
                return Ok(());
            }
            Err(e) => return Err(store_err(e)),
        };
        self.track(object)?;
        let mut theirs = self
            .peer_vv
            .get(object)
            .map(|(vv, _)| vv.clone())
            .unwrap_or_default();
        if let Some(held) = self.peer_holds.get(object) {
            theirs.merge(held);
        }
        let Some((replica, range)) = local.missing_from(&theirs).into_iter().next() else {
            return Ok(());
        };
        match self.send_entries(object, replica, *range.start(), *range.end(), store)? {
            Some(last) => {
                if let Some((vv, _)) = self.peer_vv.get_mut(object) {
                    vv.set(replica, last);
                }
                self.work.insert(object.to_owned());
            }
            None => self.start_snapshot(object, store)?,
        }
        Ok(())
    }

    fn send_range(
        &mut self,
        object: &str,
        replica: ReplicaId,
        first: u64,
        last: u64,
        store: &dyn Store,
    ) -> Result<(), SessionError> {
        // Skip what the peer is known to hold (above all, what it sent us).
        let first = first.max(self.held(object, replica).saturating_add(1));
        if first > last {
            return Ok(());
        }
        match self.send_entries(object, replica, first, last, store)? {
            Some(sent) if sent < last => {
                self.ranges
                    .push_front((object.to_owned(), replica, sent + 1, last));
            }
            Some(_) => {}
            None => self.start_snapshot(object, store)?,
        }
        Ok(())
    }

    /// Sends one batch of `first..=last` (or less); the last seq sent, or
    /// `None` if the prefix was compacted away (a snapshot is needed).
    fn send_entries(
        &mut self,
        object: &str,
        replica: ReplicaId,
        first: u64,
        last: u64,
        store: &dyn Store,
    ) -> Result<Option<u64>, SessionError> {
        let want = usize::try_from(last - first + 1)
            .unwrap_or(usize::MAX)
            .min(self.config.batch_entries);
        let read = match store.read(object, replica, first, want) {
            Ok(entries) => entries,
            Err(ReadError::SnapshotNeeded { .. }) => return Ok(None),
            Err(ReadError::UnknownObject { .. } | ReadError::BeyondEnd { .. }) => {
                return Ok(Some(last));
            }
            Err(ReadError::Deleted { .. }) => {
                self.tomb(object);
                return Ok(Some(last));
            }
            Err(e) => return Err(store_err(e)),
        };
        let budget = self
            .config
            .limits
            .max_frame_bytes
            .saturating_sub(FRAME_OVERHEAD);
        let mut size = 0;
        let mut entries = Vec::new();
        for e in read {
            if e.seq > last {
                break;
            }
            size += e.bytes.len() + 10;
            if size > budget && !entries.is_empty() {
                break;
            }
            if size > budget {
                if e.bytes.len() > self.config.max_entry_bytes {
                    return Err(SessionError::Limit(format!(
                        "entry {object}/{replica} seq {} is {} bytes, more than Config::max_entry_bytes ({})",
                        e.seq,
                        e.bytes.len(),
                        self.config.max_entry_bytes
                    )));
                }
                // Too large for a frame: send it alone, in chunks.
                let seq = e.seq;
                let id = self.next_snap_id;
                self.next_snap_id += 1;
                self.snap_out = Some(SnapOut {
                    id,
                    object: object.to_owned(),
                    entry: Some((replica, seq)),
                    snapshot: Snapshot {
                        version_vector: VersionVector::new(),
                        bytes: e.bytes,
                    },
                    offset: 0,
                    begun: false,
                });
                return Ok(Some(seq));
            }
            entries.push(e.bytes);
        }
        if entries.is_empty() {
            return Ok(Some(last));
        }
        let sent = first + entries.len() as u64 - 1;
        let n = self.next_n;
        self.next_n += 1;
        let msg = Message::Entries {
            n,
            object: object.to_owned(),
            replica,
            from_seq: first,
            entries,
        };
        self.send_data(
            n,
            &msg,
            Sent::Entries {
                object: object.to_owned(),
                replica,
                first,
                last: sent,
            },
        );
        Ok(Some(sent))
    }

    fn start_snapshot(&mut self, object: &str, store: &dyn Store) -> Result<(), SessionError> {
        let snapshot = match store.latest_snapshot(object) {
            Ok(Some(s)) => s,
            Err(ReadError::Deleted { .. }) => {
                self.tomb(object);
                return Ok(());
            }
            Ok(None) | Err(ReadError::UnknownObject { .. }) => {
                return Err(SessionError::Store(format!(
                    "the log of {object:?} is compacted but no snapshot is stored"
                )));
            }
            Err(e) => return Err(store_err(e)),
        };
        self.track(object)?;
        if let Some((vv, _)) = self.peer_vv.get_mut(object) {
            vv.merge(&snapshot.version_vector);
        }
        // Then the suffix after the snapshot.
        self.work.insert(object.to_owned());
        let id = self.next_snap_id;
        self.next_snap_id += 1;
        self.snap_out = Some(SnapOut {
            id,
            object: object.to_owned(),
            entry: None,
            snapshot,
            offset: 0,
            begun: false,
        });
        Ok(())
    }

    fn send_chunk(&mut self) {
        let Some(mut s) = self.snap_out.take() else {
            return;
        };
        let n = self.next_n;
        self.next_n += 1;
        let sent = match s.entry {
            Some((replica, seq)) => Sent::Entries {
                object: s.object.clone(),
                replica,
                first: seq,
                last: seq,
            },
            None => Sent::Snapshot {
                object: s.object.clone(),
            },
        };
        if !s.begun
            && let Some((replica, seq)) = s.entry
        {
            s.begun = true;
            let msg = Message::EntryBegin {
                n,
                id: s.id,
                object: s.object.clone(),
                replica,
                seq,
                total_len: s.snapshot.bytes.len() as u64,
            };
            self.send_data(n, &msg, sent);
        } else if !s.begun {
            s.begun = true;
            let msg = Message::SnapshotBegin {
                n,
                id: s.id,
                object: s.object.clone(),
                version_vector: s.snapshot.version_vector.clone(),
                total_len: s.snapshot.bytes.len() as u64,
            };
            self.send_data(n, &msg, sent);
        } else {
            let chunk = self
                .config
                .limits
                .max_frame_bytes
                .saturating_sub(FRAME_OVERHEAD)
                .max(1);
            let end = (s.offset + chunk).min(s.snapshot.bytes.len());
            let msg = Message::SnapshotChunk {
                n,
                id: s.id,
                offset: s.offset as u64,
                bytes: s.snapshot.bytes[s.offset..end].to_vec(),
            };
            s.offset = end;
            self.send_data(n, &msg, sent);
        }
        if s.offset < s.snapshot.bytes.len() {
            self.snap_out = Some(s);
        }
    }

    fn send_data(&mut self, n: u64, msg: &Message, sent: Sent) {
        let Some(frame) = self.encode(msg) else {
            return;
        };
        self.inflight_bytes += frame.len();
        self.inflight.push_back(Inflight {
            n,
            bytes: frame.len(),
            sent,
        });
        self.out.push_back(frame);
    }
}

fn start(interest: &Interest) -> Cursor {
    match interest {
        Interest::Objects(_) => Cursor::Index(0),
        Interest::Prefix(_) => Cursor::After(None),
    }
}

/// One page of the objects an interest covers, and where the next starts.
fn page(
    interest: &Interest,
    cursor: Cursor,
    store: &dyn Store,
) -> Result<(Vec<String>, Option<Cursor>), SessionError> {
    match (interest, cursor) {
        (Interest::Objects(ids), Cursor::Index(i)) => {
            let end = i.saturating_add(PAGE).min(ids.len());
            let page = ids.get(i..end).map(<[String]>::to_vec).unwrap_or_default();
            Ok((page, (end < ids.len()).then_some(Cursor::Index(end))))
        }
        (Interest::Prefix(prefix), Cursor::After(after)) => {
            let page = store
                .list_objects(prefix, after.as_deref(), PAGE)
                .map_err(store_err)?;
            let next = (page.len() == PAGE).then(|| Cursor::After(page.last().cloned()));
            Ok((page, next))
        }
        _ => Ok((Vec::new(), None)),
    }
}

fn store_err(e: impl std::fmt::Display) -> SessionError {
    SessionError::Store(e.to_string())
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
}

#[cfg(test)]
mod tests;
