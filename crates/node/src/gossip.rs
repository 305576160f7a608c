//! Membership and gossip: the tokio side of [`converge_sync::membership`].
//!
//! The membership object ([`MEMBERS_OBJECT`]) is a converge document whose
//! root keys are replica ids; each node writes only its own key,
//! `{"url": advertised URL or null, "started_ms": wall clock at start,
//! "left": true once it shut down gracefully}`, so writes never conflict and the object replicates (and relays) like any
//! document: a node learns every member from any node it syncs with.
//!
//! [`run_gossip`] runs beside the configured peers' tasks in `serve`:
//!
//! 1. it writes the node's own entry on start (a restarted node rejoins:
//!    a new `started_ms`, `left` cleared) and whenever it is missing or
//!    stale (never removes it);
//! 2. every round (the interval, with jitter) it reads the object into the
//!    node's [`Membership`], asks it for one random member it has no
//!    session with and that is not backing off, and opens a sync session
//!    with it for [`GOSSIP_SESSION_INTERVALS`] intervals, resuming from the
//!    member's change feed position;
//! 3. a failed dial backs that member off (exponentially, up to a minute),
//!    so dead members are marked and not hammered; one dead for
//!    [`NodeConfig::forget_after`] is forgotten until it rewrites its entry;
//! 4. a gossip session whose hello names another replica than the member
//!    dialled is not that member's link: a warning is logged and the
//!    member is shown as `mismatch` (see [`GossipRound`]).
//!
//! On a graceful shutdown ([`leave`]) the node marks its entry as left,
//! durably, before the sessions close; they push it to the connected
//! peers first (bounded by [`LEAVE_PUSH_TIMEOUT`]), so the others stop
//! dialling it at their next round and list it as `left`.
//!
//! Every sync session, incoming or outgoing, counts as a link to its peer
//! ([`SessionLink`]): gossip does not dial a member already connected.
//!
//! Only `serve` gossips: without the `http` feature (an embedded client,
//! which no one can dial) the loop's parts are unused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge_crdt::ReplicaId;
use converge_doc::{PathChange, PathSeg};
use converge_sync::Config;
use converge_sync::membership::{
    GossipConfig, MEMBERS_OBJECT, MemberEntry, MemberView, Membership,
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::node::{Node, NodeConfig, NodeError};
use crate::sync::{SyncHub, client_socket, connect, drive};

#[cfg_attr(not(feature = "http"), allow(dead_code))]
/// A gossip session stays open this many intervals: long enough to catch
/// up and stream a while, short enough that sessions rotate over members.
pub(crate) const GOSSIP_SESSION_INTERVALS: u32 = 5;

/// On a graceful shutdown, how long the sync sessions may take to push
/// the node's `left` entry (and anything else unacknowledged) to their
/// peers before they close anyway.
pub(crate) const LEAVE_PUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// A gossip session's purpose, for [`crate::sync::drive`]: the member it
/// dialled (a hello naming another replica is a mismatch) and when the
/// round is over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GossipRound {
    pub(crate) member: ReplicaId,
    pub(crate) close_at: Instant,
}

/// The node's membership view, shared by its sync tasks.
pub(crate) struct Members {
    table: Mutex<Membership>,
    enabled: bool,
    /// This run's `started_ms`, written in the node's entry.
    started_ms: u64,
    /// Set once the node marked itself as left: the entry is not written
    /// back, and sessions push what is unacknowledged before closing.
    leaving: AtomicBool,
    /// Woken when a peer updated the membership object, so the view
    /// follows at once (a member that left is not dialled again).
    listing_changed: tokio::sync::Notify,
}

impl Members {
    pub(crate) fn new(local: ReplicaId, config: &NodeConfig) -> Self {
        let mut gossip = GossipConfig::default();
        if let Some(i) = config.gossip_interval {
            gossip.interval_ms = u64::try_from(i.as_millis()).unwrap_or(u64::MAX).max(1);
        }
        gossip.max_sessions = config.max_gossip_sessions.max(1);
        gossip.forget_after_ms = config
            .forget_after
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let started_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            table: Mutex::new(Membership::new(local, gossip)),
            enabled: config.gossip_interval.is_some(),
            started_ms,
            leaving: AtomicBool::new(false),
            listing_changed: tokio::sync::Notify::new(),
        }
    }

    /// A sync session stored entries of `object`: if it is the membership
    /// object, the gossip loop reads it again now rather than at its next
    /// round.
    pub(crate) fn object_updated(&self, object: &str) {
        if self.enabled && object == MEMBERS_OBJECT {
            self.listing_changed.notify_one();
        }
    }

    /// Whether the node marked itself as left (it is shutting down).
    pub(crate) fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// Runs `f` on the table. A poisoned lock only means a panic elsewhere
    /// mid-update of plain bookkeeping: keep using it.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Membership) -> R) -> R {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut t)
    }

    /// What `/v1/status` shows.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn status(&self, now: u64) -> MembersStatus {
        self.with(|t| MembersStatus {
            gossip: self.enabled,
            interval_ms: t.config().interval_ms,
            forget_after_ms: t.config().forget_after_ms,
            gossip_sessions: t.gossip_sessions(),
            forgotten: t.forgotten(now),
            members: t
                .members(now)
                .into_iter()
                .map(|v| MemberStatus::new(v, now))
                .collect(),
        })
    }
}

/// Membership as `/v1/status` reports it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MembersStatus {
    /// Whether this node gossips.
    gossip: bool,
    interval_ms: u64,
    /// How long a member stays dead before it is forgotten; null: never.
    forget_after_ms: Option<u64>,
    /// Gossip attempts in flight.
    gossip_sessions: usize,
    /// Members left out of `members`: dead for `forget_after_ms`.
    forgotten: usize,
    members: Vec<MemberStatus>,
}

/// One member as reported.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MemberStatus {
    replica: String,
    url: Option<String>,
    state: &'static str,
    sessions: u32,
    /// 0 while connected, else milliseconds since last connected; null if never.
    lag_ms: Option<u64>,
    failures: u32,
    retry_in_ms: Option<u64>,
    feed_position: Option<u64>,
    /// The replica that answered at this member's URL instead of it (state
    /// `mismatch`).
    answered_as: Option<String>,
}

impl MemberStatus {
    fn new(v: MemberView, now: u64) -> Self {
        Self {
            replica: v.replica.to_string(),
            url: v.url,
            state: v.state.as_str(),
            sessions: v.sessions,
            lag_ms: v.lag_ms,
            failures: v.failures,
            retry_in_ms: v.retry_at.map(|at| at.saturating_sub(now)),
            feed_position: v.feed_position,
            answered_as: v.answered_as.map(|r| r.to_string()),
        }
    }
}

/// Counts one open sync session with `replica` in the membership view
/// while it lives.
pub(crate) struct SessionLink<'a> {
    hub: &'a SyncHub,
    replica: ReplicaId,
}

impl<'a> SessionLink<'a> {
    pub(crate) fn open(hub: &'a SyncHub, replica: ReplicaId) -> Self {
        let now = hub.now();
        hub.members.with(|m| m.session_opened(replica, now));
        Self { hub, replica }
    }
}

impl Drop for SessionLink<'_> {
    fn drop(&mut self) {
        let now = self.hub.now();
        self.hub
            .members
            .with(|m| m.session_closed(self.replica, now));
    }
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
/// The members the object lists. Keys that are not replica ids and
/// values of the wrong shape (a peer's bad write) are skipped, never a panic.
pub(crate) fn parse_members(doc: &Value) -> Vec<(ReplicaId, MemberEntry)> {
    let Some(map) = doc.as_object() else {
        return Vec::new();
    };
    map.iter()
        .filter_map(|(key, value)| {
            let replica = key.parse::<ReplicaId>().ok()?;
            let entry = value.as_object()?;
            let url = entry
                .get("url")
                .and_then(Value::as_str)
                .filter(|u| u.starts_with("ws://"))
                .map(String::from);
            let started_ms = entry.get("started_ms").and_then(Value::as_u64);
            let left = entry.get("left").and_then(Value::as_bool) == Some(true);
            Some((
                replica,
                MemberEntry::new(url, started_ms.unwrap_or(0)).with_left(left),
            ))
        })
        .collect()
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
/// The change that writes this node's own entry.
fn own_entry(replica: ReplicaId, entry: &MemberEntry) -> Vec<PathChange> {
    vec![PathChange::Set {
        path: vec![PathSeg::Key(replica.to_string())],
        value: json!({"url": entry.url, "started_ms": entry.started_ms, "left": entry.left}),
    }]
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
/// Reads the membership object into the node's view, writing the node's
/// own entry first unless it is this run's (unless the node is leaving).
async fn refresh_members(node: &Node) -> Result<(), NodeError> {
    let doc = match node.get(MEMBERS_OBJECT).await {
        Ok(doc) => doc,
        Err(NodeError::NotFound(_)) => Value::Null,
        Err(e) => return Err(e),
    };
    let mut listed = parse_members(&doc);
    let members = &node.sync().members;
    let wanted = MemberEntry::new(node.config().advertise.clone(), members.started_ms);
    let current = listed
        .iter()
        .find(|(r, _)| *r == node.replica())
        .map(|(_, e)| e);
    if current != Some(&wanted) && !members.is_leaving() {
        node.change_any(MEMBERS_OBJECT, &own_entry(node.replica(), &wanted))
            .await?;
        tracing::info!(url = ?wanted.url, "announced this node in the membership");
        listed.retain(|(r, _)| *r != node.replica());
        listed.push((node.replica(), wanted));
    }
    members.with(|m| m.set_listed(listed));
    Ok(())
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
/// Marks the node's membership entry as left, durably, before a graceful
/// shutdown closes the sync sessions (which then push it to their peers
/// within [`LEAVE_PUSH_TIMEOUT`]). Does nothing unless the node gossips.
/// Failing to write it is logged, not fatal: the others then find the
/// node dead instead.
pub(crate) async fn leave(node: &Node) {
    let members = &node.sync().members;
    if !members.enabled {
        return;
    }
    members.leaving.store(true, Ordering::Release);
    let entry =
        MemberEntry::new(node.config().advertise.clone(), members.started_ms).with_left(true);
    match node
        .change_any(MEMBERS_OBJECT, &own_entry(node.replica(), &entry))
        .await
    {
        Ok(_) => tracing::info!("marked this node as left in the membership"),
        Err(e) => tracing::warn!(error = %e, "cannot mark this node as left"),
    }
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
/// Announces the node in the membership object and gossips with a random
/// member every interval (see the module docs) until the node stops;
/// returns once its gossip sessions have ended. Does nothing unless
/// [`NodeConfig::gossip_interval`] is set.
pub(crate) async fn run_gossip(node: Arc<Node>) {
    let Some(interval) = node.config().gossip_interval else {
        return;
    };
    let hub = node.sync();
    let mut stop = hub.stopping();
    let mut sessions = JoinSet::new();
    let session_time = interval
        .saturating_mul(GOSSIP_SESSION_INTERVALS)
        .max(Duration::from_secs(1));
    let mut next_round = Instant::now();
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        if let Err(e) = refresh_members(&node).await {
            tracing::warn!(error = %e, "cannot read or update the membership object");
        }
        if Instant::now() >= next_round {
            while sessions.try_join_next().is_some() {}
            let now = hub.now();
            if let Some((replica, url)) = hub.members.with(|m| m.choose(now, fastrand::u64(..))) {
                tracing::debug!(peer = %replica, url, "gossip round");
                sessions.spawn(gossip_with(node.clone(), replica, url, session_time));
            }
            let wait = hub.members.with(|m| m.round_wait(fastrand::f64()));
            next_round = Instant::now() + Duration::from_millis(wait);
        }
        tokio::select! {
            () = tokio::time::sleep_until(next_round) => {}
            // A peer changed the membership: read it now, gossip on time.
            () = hub.members.listing_changed.notified() => {}
            _ = stop.changed() => break,
        }
    }
    // Sessions close on the node's stop signal; give them a moment.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
/// One gossip session with `replica` at `url`, for at most `lifetime`.
async fn gossip_with(node: Arc<Node>, replica: ReplicaId, url: String, lifetime: Duration) {
    let hub = node.sync();
    let mut stop = hub.stopping();
    let connected = tokio::select! {
        r = connect(&url) => r,
        _ = stop.changed() => {
            hub.members.with(|m| m.gossip_ended(replica, hub.now(), true, 0.0));
            return;
        }
    };
    let reached = match connected {
        Ok(ws) => {
            // The configured peers' interest: feed positions are recorded
            // from every session with a member, so they must all ask alike.
            let mut config = Config::new(node.config().peer_interest.clone());
            config.resume_after = hub.members.with(|m| m.feed_position(replica));
            let round = GossipRound {
                member: replica,
                close_at: Instant::now() + lifetime,
            };
            let ending = drive(&node, client_socket(ws), config, None, Some(round)).await;
            tracing::debug!(peer = %replica, %ending, "gossip session ended");
            true
        }
        Err(e) => {
            tracing::debug!(peer = %replica, url, error = %e, "cannot reach member");
            false
        }
    };
    let now = hub.now();
    hub.members
        .with(|m| m.gossip_ended(replica, now, reached, fastrand::f64()));
}

#[cfg(test)]
mod tests {
    use converge_doc::Doc;

    use super::*;

    fn entry(doc: &mut Doc, replica: ReplicaId, url: &str) {
        let change = own_entry(replica, &MemberEntry::new(Some(url.into()), 7));
        doc.apply(&change).expect("applies");
    }

    /// Two nodes write their own entries concurrently; whichever order the
    /// changes arrive in, both replicas list both members, identically.
    #[test]
    fn concurrent_announcements_merge_in_any_order() {
        let (a, b) = (ReplicaId::from_u64(0xa), ReplicaId::from_u64(0xb));
        let mut da = Doc::new(a);
        let mut db = Doc::new(b);
        entry(&mut da, a, "ws://10.0.0.1:7878/v1/sync");
        entry(&mut db, b, "ws://10.0.0.2:7878/v1/sync");
        // A moves to a new address before hearing from B.
        entry(&mut da, a, "ws://10.0.0.9:7878/v1/sync");
        let from_a = da.changes_since(&converge_crdt::VersionVector::new());
        let from_b = db.changes_since(&converge_crdt::VersionVector::new());
        da.receive_changes(from_b.clone()).expect("b's changes");
        db.receive_changes(from_a.clone()).expect("a's changes");
        // Re-delivery is harmless.
        db.receive_changes(from_a).expect("again");
        assert_eq!(da.to_json(), db.to_json());
        let mut listed = parse_members(&db.to_json());
        listed.sort_by_key(|(r, _)| *r);
        assert_eq!(
            listed,
            [
                (
                    a,
                    MemberEntry::new(Some("ws://10.0.0.9:7878/v1/sync".into()), 7)
                ),
                (
                    b,
                    MemberEntry::new(Some("ws://10.0.0.2:7878/v1/sync".into()), 7)
                ),
            ]
        );
        // A leaves: its entry says so, everywhere it replicates.
        let left = MemberEntry::new(Some("ws://10.0.0.9:7878/v1/sync".into()), 7).with_left(true);
        let seen = da.version().clone();
        da.apply(&own_entry(a, &left)).expect("applies");
        db.receive_changes(da.changes_since(&seen)).expect("a left");
        let listed = parse_members(&db.to_json());
        assert!(listed.contains(&(a, left)), "{listed:?}");
    }

    #[test]
    fn malformed_entries_are_skipped() {
        let doc = json!({
            "00000000000000aa": {"url": "ws://h:1/v1/sync", "started_ms": 1},
            "00000000000000bb": {"url": null},
            "00000000000000cc": {"url": "http://not-a-sync-url"},
            "not-a-replica": {"url": "ws://h:2/v1/sync"},
            "00000000000000dd": "a string, not an entry",
        });
        let mut listed = parse_members(&doc);
        listed.sort_by_key(|(r, _)| *r);
        let urls: Vec<_> = listed
            .iter()
            .map(|(r, m)| (r.to_string(), m.url.clone()))
            .collect();
        assert_eq!(
            urls,
            [
                (
                    "00000000000000aa".to_string(),
                    Some("ws://h:1/v1/sync".to_string())
                ),
                ("00000000000000bb".to_string(), None),
                ("00000000000000cc".to_string(), None),
            ]
        );
        assert!(parse_members(&Value::Null).is_empty());
        assert!(parse_members(&json!([1, 2])).is_empty());
    }
}
