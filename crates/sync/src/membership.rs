//! Cluster membership and the gossip policy, sans-IO.
//!
//! Membership is a replicated object ([`MEMBERS_OBJECT`]): every node
//! writes its own entry (replica id, advertised URL) into it, and the
//! object replicates like any other, so a node that learns of a member
//! passes it on to every node it syncs with. The runtime reads the object
//! and hands what it lists to [`Membership::set_listed`].
//!
//! [`Membership`] keeps what a node observes locally about each member —
//! its open sessions, when it was last seen, failed attempts and the
//! backoff before the next one — and decides whom to gossip with next
//! ([`Membership::choose`]): a random listed member with a URL that this
//! node has no session with and that is not backing off, with at most
//! [`GossipConfig::max_sessions`] gossip attempts at once. Members that
//! keep failing back off exponentially and are reported [`MemberState::Dead`]
//! once they have failed [`GossipConfig::dead_after_failures`] times in a
//! row and were not seen for [`GossipConfig::dead_after_ms`]; they are
//! retried at the longest backoff until they have been unreachable for
//! [`GossipConfig::forget_after_ms`], then forgotten: no longer dialled nor
//! listed. A forgotten member that comes back rewrites its entry (a node
//! does on every start, with a new `started_ms`), which makes it a fresh
//! member again; so does a session it opens itself.
//!
//! A member whose entry says it left ([`MemberEntry::left`], written by a
//! node that shuts down gracefully) is reported [`MemberState::Left`] and
//! not dialled, until it rewrites its entry on its next start.
//!
//! A gossip session dialled to a member's URL that is answered by another
//! replica ([`Membership::identity_mismatch`], typically a node restarted
//! on a wiped data directory at the same address) does not count as that
//! member's link: the attempt counts as a failure and the member is
//! reported [`MemberState::Mismatch`] with the replica that answered.
//!
//! Like [`crate::Session`], it reads no clock and draws no random number:
//! callers pass `now` (milliseconds on any monotonic scale) and random
//! values in, so tests are deterministic.

use std::collections::{BTreeMap, BTreeSet};

use converge_crdt::ReplicaId;

/// Object ids starting with this are the node's own (membership and any
/// later system state): users cannot write or delete them, and document
/// listings leave them out. They replicate like any object.
pub const SYSTEM_PREFIX: &str = "$sys/";

/// The membership object: a converge document whose root keys are replica
/// ids (16 hex digits), each holding `{"url": ws URL or null, "started_ms"}`
/// written by that replica only.
pub const MEMBERS_OBJECT: &str = "$sys/members";

/// Whether `object` is reserved for the node ([`SYSTEM_PREFIX`]).
pub fn is_system_object(object: &str) -> bool {
    object.starts_with(SYSTEM_PREFIX)
}

/// The default of [`GossipConfig::forget_after_ms`]: a day, long enough
/// to ride out an outage or a maintenance window, short enough that nodes
/// replaced long ago stop being dialled.
pub const DEFAULT_FORGET_AFTER_MS: u64 = 24 * 60 * 60 * 1000;

/// A member's entry as the membership object holds it (what the runtime
/// reads and hands to [`Membership::set_listed`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MemberEntry {
    /// The sync URL it advertises, if any.
    pub url: Option<String>,
    /// When it wrote the entry (its wall clock, milliseconds): a new value
    /// means it restarted, which clears what was observed of it.
    pub started_ms: u64,
    /// It shut down gracefully and said so: not dialled until it rewrites
    /// its entry.
    pub left: bool,
}

impl MemberEntry {
    /// An entry advertising `url`, written at `started_ms`, not left.
    pub fn new(url: Option<String>, started_ms: u64) -> Self {
        Self {
            url,
            started_ms,
            left: false,
        }
    }

    /// The same entry, marked as left (or not).
    pub fn with_left(mut self, left: bool) -> Self {
        self.left = left;
        self
    }
}

/// How a node gossips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GossipConfig {
    /// Mean time between two gossip rounds, in milliseconds (each round
    /// waits between half and one and a half of it).
    pub interval_ms: u64,
    /// Most gossip attempts (dialling or in session) at once.
    pub max_sessions: usize,
    /// The wait after a member's first failed attempt; it doubles after
    /// each further failure.
    pub min_backoff_ms: u64,
    /// The longest wait between attempts at a member that keeps failing.
    pub max_backoff_ms: u64,
    /// Failures in a row after which a member may be reported dead.
    pub dead_after_failures: u32,
    /// How long a failing member must have gone unseen to be reported dead.
    pub dead_after_ms: u64,
    /// How long a dead member must have been failing and unseen to be
    /// forgotten (no longer dialled nor listed); `None` never forgets.
    pub forget_after_ms: Option<u64>,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            interval_ms: 1_000,
            max_sessions: 2,
            min_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            dead_after_failures: 3,
            dead_after_ms: 10_000,
            forget_after_ms: Some(DEFAULT_FORGET_AFTER_MS),
        }
    }
}

/// A member's state as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberState {
    /// This node itself.
    Local,
    /// A sync session with it is open (either side dialled).
    Connected,
    /// Seen before (or not yet tried), not connected now, not failing.
    Alive,
    /// The last attempts at it failed; it is retried after a backoff.
    Suspect,
    /// It failed [`GossipConfig::dead_after_failures`] times in a row and
    /// was not seen for [`GossipConfig::dead_after_ms`]; retried rarely.
    Dead,
    /// It advertises no URL and is not connected: it can dial us, we
    /// cannot dial it.
    NoUrl,
    /// It shut down gracefully and marked its entry as left; not dialled
    /// until it starts again.
    Left,
    /// The last attempt at its URL was answered by another replica
    /// ([`MemberView::answered_as`]); retried after a backoff like a
    /// failure.
    Mismatch,
}

impl MemberState {
    /// The state's name as the status API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Connected => "connected",
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Dead => "dead",
            Self::NoUrl => "no_url",
            Self::Left => "left",
            Self::Mismatch => "mismatch",
        }
    }
}

/// One member as [`Membership::members`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberView {
    /// Its replica id.
    pub replica: ReplicaId,
    /// The URL it advertises, if any.
    pub url: Option<String>,
    /// Its state.
    pub state: MemberState,
    /// Sync sessions open with it now.
    pub sessions: u32,
    /// When a session with it was last open (`now` scale), if ever.
    pub last_seen: Option<u64>,
    /// How stale this node's view of it may be, in milliseconds: 0 while a
    /// session is open (entries stream live), else the time since it was
    /// last seen; `None` if never seen.
    pub lag_ms: Option<u64>,
    /// Failed attempts in a row.
    pub failures: u32,
    /// When it may be dialled again, if it is backing off.
    pub retry_at: Option<u64>,
    /// How far of its change feed this node holds (to resume from).
    pub feed_position: Option<u64>,
    /// The replica that answered the last attempt at its URL, if that was
    /// not this member.
    pub answered_as: Option<ReplicaId>,
}

#[derive(Debug, Clone, Default)]
struct Member {
    /// Listed in the membership object (sessions are also counted for
    /// replicas that are not, such as clients, in case they become listed).
    listed: bool,
    url: Option<String>,
    sessions: u32,
    last_seen: Option<u64>,
    failures: u32,
    retry_at: Option<u64>,
    feed_position: Option<u64>,
    /// Its entry's `started_ms`, to notice a restart.
    started_ms: u64,
    /// Its entry says it left.
    left: bool,
    /// When the current run of failures began.
    failing_since: Option<u64>,
    /// Who answered the last attempt at its URL, if not this member.
    answered_as: Option<ReplicaId>,
}

impl Member {
    /// Forgets what was observed of its reachability: a new address, a
    /// restart or a session of its own deserves a fresh start.
    fn clear_failures(&mut self) {
        self.failures = 0;
        self.retry_at = None;
        self.failing_since = None;
        self.answered_as = None;
    }
}

/// A node's local view of the cluster and its gossip policy (see the
/// module docs).
#[derive(Debug, Clone)]
pub struct Membership {
    local: ReplicaId,
    config: GossipConfig,
    members: BTreeMap<ReplicaId, Member>,
    /// Members with a gossip attempt in flight.
    gossiping: BTreeSet<ReplicaId>,
}

impl Membership {
    /// An empty view for the node `local`.
    pub fn new(local: ReplicaId, config: GossipConfig) -> Self {
        Self {
            local,
            config,
            members: BTreeMap::new(),
            gossiping: BTreeSet::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GossipConfig {
        &self.config
    }

    /// Records what the membership object lists: each member's entry.
    /// Members it no longer lists keep their local state but are no
    /// longer gossip candidates. A new URL or a new `started_ms` (the
    /// member restarted) clears the member's failures, so a forgotten
    /// member that comes back is dialled again.
    pub fn set_listed(&mut self, listed: impl IntoIterator<Item = (ReplicaId, MemberEntry)>) {
        for m in self.members.values_mut() {
            m.listed = false;
        }
        for (replica, entry) in listed {
            let m = self.members.entry(replica).or_default();
            if m.url != entry.url || m.started_ms != entry.started_ms {
                m.clear_failures();
            }
            m.listed = true;
            m.url = entry.url;
            m.started_ms = entry.started_ms;
            m.left = entry.left;
        }
    }

    /// Whether `replica` is listed in the membership object.
    pub fn is_listed(&self, replica: ReplicaId) -> bool {
        self.members.get(&replica).is_some_and(|m| m.listed)
    }

    /// A sync session with `replica` said hello (whichever side dialled):
    /// it is alive, and gossip leaves it alone while the session lasts.
    pub fn session_opened(&mut self, replica: ReplicaId, now: u64) {
        let m = self.members.entry(replica).or_default();
        m.sessions += 1;
        m.last_seen = Some(now);
        m.clear_failures();
    }

    /// A gossip session dialled to `member`'s URL was answered by
    /// `answered` instead (its hello named another replica): it is not
    /// `member`'s link, and [`Membership::gossip_ended`] counts the attempt
    /// as a failure of `member`.
    pub fn identity_mismatch(&mut self, member: ReplicaId, answered: ReplicaId) {
        if let Some(m) = self.members.get_mut(&member) {
            m.answered_as = Some(answered);
        }
    }

    /// A session that [`Membership::session_opened`] counted ended. A
    /// replica the membership object does not list (a client) is
    /// forgotten once its last session ends, so clients that come and go
    /// do not grow the table.
    pub fn session_closed(&mut self, replica: ReplicaId, now: u64) {
        if let Some(m) = self.members.get_mut(&replica) {
            m.sessions = m.sessions.saturating_sub(1);
            m.last_seen = Some(now);
            if m.sessions == 0 && !m.listed && !self.gossiping.contains(&replica) {
                self.members.remove(&replica);
            }
        }
    }

    /// This node durably holds `replica`'s change feed up to `position`.
    pub fn set_feed_position(&mut self, replica: ReplicaId, position: u64) {
        self.members.entry(replica).or_default().feed_position = Some(position);
    }

    /// Where to resume `replica`'s change feed from, if known.
    pub fn feed_position(&self, replica: ReplicaId) -> Option<u64> {
        self.members.get(&replica).and_then(|m| m.feed_position)
    }

    /// Gossip attempts in flight.
    pub fn gossip_sessions(&self) -> usize {
        self.gossiping.len()
    }

    /// Picks the member to gossip with now, if any, and counts the attempt
    /// as in flight until [`Membership::gossip_ended`]. Candidates are the
    /// listed members other than this node that have a URL, no open
    /// session, no attempt in flight and no backoff running past `now`,
    /// and that neither left nor are forgotten;
    /// `random` (any value from a uniform source) chooses among them. None
    /// while [`GossipConfig::max_sessions`] attempts are in flight.
    pub fn choose(&mut self, now: u64, random: u64) -> Option<(ReplicaId, String)> {
        if self.gossiping.len() >= self.config.max_sessions {
            return None;
        }
        let candidates: Vec<(ReplicaId, &String)> = self
            .members
            .iter()
            .filter(|(r, m)| {
                **r != self.local
                    && m.listed
                    && !m.left
                    && !self.is_forgotten(m, now)
                    && m.sessions == 0
                    && !self.gossiping.contains(r)
                    && m.retry_at.is_none_or(|at| at <= now)
            })
            .filter_map(|(r, m)| m.url.as_ref().map(|u| (*r, u)))
            .collect();
        let len = u64::try_from(candidates.len()).ok().filter(|&n| n > 0)?;
        let index = usize::try_from(random % len).ok()?;
        let (replica, url) = candidates.get(index)?;
        let chosen = (*replica, (*url).clone());
        self.gossiping.insert(chosen.0);
        Some(chosen)
    }

    /// The gossip attempt at `replica` ended: `reached` says whether a
    /// session opened (one answered by another replica, see
    /// [`Membership::identity_mismatch`], counts as a failure). A failure
    /// backs the member off: the wait doubles
    /// from [`GossipConfig::min_backoff_ms`] up to
    /// [`GossipConfig::max_backoff_ms`], of which the upper half is
    /// spread by `jitter` (in `[0, 1)`), so that nodes do not retry a
    /// member in step.
    pub fn gossip_ended(&mut self, replica: ReplicaId, now: u64, reached: bool, jitter: f64) {
        self.gossiping.remove(&replica);
        let config = self.config;
        let Some(m) = self.members.get_mut(&replica) else {
            return;
        };
        if reached && m.answered_as.is_none() {
            return;
        }
        m.failures = m.failures.saturating_add(1);
        m.failing_since.get_or_insert(now);
        let doublings = m.failures.saturating_sub(1).min(32);
        let backoff = config
            .min_backoff_ms
            .saturating_mul(1u64 << doublings)
            .min(config.max_backoff_ms);
        let jitter = jitter.clamp(0.0, 1.0);
        // Whole milliseconds are plenty; the cast cannot overflow as the
        // factor is at most 1.
        let wait = backoff / 2 + ((backoff / 2) as f64 * jitter) as u64;
        m.retry_at = Some(now.saturating_add(wait));
    }

    /// The wait before the next gossip round: the interval, spread by
    /// `jitter` (in `[0, 1)`) between half and one and a half of it.
    pub fn round_wait(&self, jitter: f64) -> u64 {
        let i = self.config.interval_ms;
        i / 2 + (i as f64 * jitter.clamp(0.0, 1.0)) as u64
    }

    /// The state of `replica` at `now`, if it is listed (and not
    /// forgotten) or is this node.
    pub fn state(&self, replica: ReplicaId, now: u64) -> Option<MemberState> {
        if replica == self.local {
            return Some(MemberState::Local);
        }
        let m = self
            .members
            .get(&replica)
            .filter(|m| m.listed && !self.is_forgotten(m, now))?;
        Some(self.state_of(m, now))
    }

    /// Whether `m` is dead: it failed [`GossipConfig::dead_after_failures`]
    /// times in a row and was not seen for [`GossipConfig::dead_after_ms`].
    fn is_dead(&self, m: &Member, now: u64) -> bool {
        m.sessions == 0
            && m.failures >= self.config.dead_after_failures
            && m.last_seen
                .is_none_or(|seen| now.saturating_sub(seen) >= self.config.dead_after_ms)
    }

    /// Whether `m` was dead long enough to be forgotten: it is dead, its
    /// failures began at least [`GossipConfig::forget_after_ms`] ago, and
    /// it was not seen in that time either.
    fn is_forgotten(&self, m: &Member, now: u64) -> bool {
        let Some(after) = self.config.forget_after_ms else {
            return false;
        };
        let long_ago = |at: u64| now.saturating_sub(at) >= after;
        self.is_dead(m, now)
            && m.failing_since.is_some_and(long_ago)
            && m.last_seen.is_none_or(long_ago)
    }

    /// How many listed members are forgotten at `now` (left out of
    /// [`Membership::members`]).
    pub fn forgotten(&self, now: u64) -> usize {
        self.members
            .iter()
            .filter(|(r, m)| **r != self.local && m.listed && self.is_forgotten(m, now))
            .count()
    }

    fn state_of(&self, m: &Member, now: u64) -> MemberState {
        if m.left {
            MemberState::Left
        } else if m.sessions > 0 {
            MemberState::Connected
        } else if m.answered_as.is_some() {
            MemberState::Mismatch
        } else if self.is_dead(m, now) {
            MemberState::Dead
        } else if m.failures > 0 {
            MemberState::Suspect
        } else if m.url.is_none() {
            MemberState::NoUrl
        } else {
            MemberState::Alive
        }
    }

    /// This node and every listed member that is not forgotten, in
    /// replica id order, as seen at `now`.
    pub fn members(&self, now: u64) -> Vec<MemberView> {
        let mut out = Vec::new();
        if !self.is_listed(self.local) {
            out.push(MemberView {
                replica: self.local,
                url: None,
                state: MemberState::Local,
                sessions: 0,
                last_seen: Some(now),
                lag_ms: Some(0),
                failures: 0,
                retry_at: None,
                feed_position: None,
                answered_as: None,
            });
        }
        let shown = self
            .members
            .iter()
            .filter(|(r, m)| m.listed && (**r == self.local || !self.is_forgotten(m, now)));
        for (replica, m) in shown {
            let local = *replica == self.local;
            let state = if local {
                MemberState::Local
            } else {
                self.state_of(m, now)
            };
            let lag_ms = if local || m.sessions > 0 {
                Some(0)
            } else {
                m.last_seen.map(|seen| now.saturating_sub(seen))
            };
            out.push(MemberView {
                replica: *replica,
                url: m.url.clone(),
                state,
                sessions: m.sessions,
                last_seen: if local { Some(now) } else { m.last_seen },
                lag_ms,
                failures: m.failures,
                retry_at: m.retry_at.filter(|&at| at > now),
                feed_position: m.feed_position,
                answered_as: if local { None } else { m.answered_as },
            });
        }
        out.sort_by_key(|v| v.replica);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u64) -> ReplicaId {
        ReplicaId::from_u64(n)
    }

    fn url(n: u64) -> Option<String> {
        Some(format!("ws://127.0.0.1:{n}/v1/sync"))
    }

    /// Entries advertising these URLs, all written at time 0.
    fn entries(
        listed: impl IntoIterator<Item = (ReplicaId, Option<String>)>,
    ) -> Vec<(ReplicaId, MemberEntry)> {
        listed
            .into_iter()
            .map(|(r, url)| (r, MemberEntry::new(url, 0)))
            .collect()
    }

    fn cluster(local: u64, others: &[u64]) -> Membership {
        let mut m = Membership::new(r(local), GossipConfig::default());
        m.set_listed(entries(
            std::iter::once(local)
                .chain(others.iter().copied())
                .map(|n| (r(n), url(n))),
        ));
        m
    }

    #[test]
    fn reserved_ids_are_recognised() {
        assert!(is_system_object(MEMBERS_OBJECT));
        assert!(is_system_object("$sys/anything"));
        assert!(!is_system_object("sys/members"));
        assert!(!is_system_object("$system"));
    }

    #[test]
    fn choose_never_picks_self_connected_or_urlless_members() {
        let mut m = cluster(1, &[2, 3]);
        m.set_listed(entries([
            (r(1), url(1)),
            (r(2), url(2)),
            (r(3), url(3)),
            (r(4), None),
        ]));
        m.session_opened(r(2), 0);
        // Whatever the random value, only 3 is a candidate.
        for random in 0..20 {
            let mut copy = m.clone();
            assert_eq!(
                copy.choose(0, random),
                Some((r(3), url(3).unwrap_or_default()))
            );
        }
        m.session_closed(r(2), 5);
        assert_eq!(m.state(r(2), 5), Some(MemberState::Alive));
        assert_eq!(m.state(r(4), 5), Some(MemberState::NoUrl));
        assert_eq!(m.state(r(1), 5), Some(MemberState::Local));
    }

    #[test]
    fn the_random_value_spreads_choices_over_candidates() {
        let m = cluster(1, &[2, 3, 4]);
        let picked: BTreeSet<ReplicaId> = (0..3)
            .filter_map(|random| m.clone().choose(0, random).map(|(r, _)| r))
            .collect();
        assert_eq!(picked, [r(2), r(3), r(4)].into_iter().collect());
    }

    #[test]
    fn attempts_in_flight_are_bounded_and_not_repeated() {
        let mut m = cluster(1, &[2, 3, 4, 5]);
        assert_eq!(m.config().max_sessions, 2);
        let first = m.choose(0, 0).map(|(r, _)| r);
        let second = m.choose(0, 0).map(|(r, _)| r);
        assert!(first.is_some() && second.is_some() && first != second);
        assert_eq!(m.choose(0, 0), None, "two attempts in flight already");
        assert_eq!(m.gossip_sessions(), 2);
        if let Some(first) = first {
            m.gossip_ended(first, 1, true, 0.0);
        }
        assert_eq!(m.gossip_sessions(), 1);
        assert!(m.choose(1, 0).is_some());
    }

    #[test]
    fn failing_members_back_off_exponentially_and_are_reported_dead() {
        let mut m = Membership::new(
            r(1),
            GossipConfig {
                min_backoff_ms: 100,
                max_backoff_ms: 1_000,
                dead_after_failures: 3,
                dead_after_ms: 5_000,
                ..GossipConfig::default()
            },
        );
        m.set_listed(entries([(r(1), url(1)), (r(2), url(2))]));
        let mut now = 0;
        let mut waits = Vec::new();
        for _ in 0..6 {
            assert_eq!(m.choose(now, 7).map(|(r, _)| r), Some(r(2)));
            // Jitter 0: the wait is the lower half of the backoff.
            m.gossip_ended(r(2), now, false, 0.0);
            let at = m.members(now)[1].retry_at.unwrap_or(now);
            assert_eq!(m.choose(at - 1, 7), None, "backing off until {at}");
            waits.push(at - now);
            now = at;
        }
        assert_eq!(waits, [50, 100, 200, 400, 500, 500]);
        assert_eq!(m.state(r(2), now), Some(MemberState::Dead));
        // Full jitter: the whole backoff.
        m.choose(now, 0);
        m.gossip_ended(r(2), now, false, 1.0);
        assert_eq!(m.members(now)[1].retry_at, Some(now + 1_000));
        // It comes back: one session clears its record.
        m.session_opened(r(2), now + 1);
        assert_eq!(m.state(r(2), now + 1), Some(MemberState::Connected));
        let view = &m.members(now + 1)[1];
        assert_eq!(
            (view.failures, view.retry_at, view.lag_ms),
            (0, None, Some(0))
        );
    }

    #[test]
    fn a_recently_seen_member_is_suspect_before_dead() {
        let mut m = cluster(1, &[2]);
        m.session_opened(r(2), 0);
        m.session_closed(r(2), 1_000);
        for i in 0..3 {
            m.choose(1_000 + i, 0);
            m.gossip_ended(r(2), 1_000 + i, false, 0.0);
        }
        assert_eq!(m.state(r(2), 2_000), Some(MemberState::Suspect));
        assert_eq!(m.state(r(2), 11_000), Some(MemberState::Dead));
        assert_eq!(m.members(11_000)[1].lag_ms, Some(10_000));
    }

    #[test]
    fn a_new_url_clears_the_backoff_and_unlisted_members_are_not_chosen() {
        let mut m = cluster(1, &[2]);
        m.choose(0, 0);
        m.gossip_ended(r(2), 0, false, 0.0);
        assert_eq!(m.choose(1, 0), None);
        m.set_listed(entries([(r(1), url(1)), (r(2), url(22))]));
        assert_eq!(m.choose(1, 0), Some((r(2), url(22).unwrap_or_default())));
        m.gossip_ended(r(2), 1, true, 0.0);
        m.set_listed(entries([(r(1), url(1))]));
        assert_eq!(m.choose(2, 0), None);
        assert_eq!(m.state(r(2), 2), None);
        assert_eq!(m.members(2).len(), 1);
    }

    #[test]
    fn sessions_of_unlisted_replicas_count_once_they_are_listed() {
        let mut m = cluster(1, &[]);
        m.session_opened(r(9), 10);
        assert!(m.members(10).iter().all(|v| v.replica != r(9)));
        m.set_listed(entries([(r(1), url(1)), (r(9), url(9))]));
        assert_eq!(m.state(r(9), 11), Some(MemberState::Connected));
        assert_eq!(m.choose(11, 0), None, "already connected");
    }

    #[test]
    fn unlisted_replicas_are_forgotten_when_their_sessions_end() {
        let mut m = cluster(1, &[2]);
        for client in 100..200 {
            m.session_opened(r(client), 0);
            m.set_feed_position(r(client), 5);
            m.session_closed(r(client), 1);
        }
        assert_eq!(m.members.len(), 2, "only the listed members are kept");
        m.session_opened(r(2), 1);
        m.session_closed(r(2), 2);
        assert_eq!(m.state(r(2), 2), Some(MemberState::Alive));
        assert_eq!(m.members(2)[1].last_seen, Some(2));
    }

    #[test]
    fn rounds_wait_half_to_one_and_a_half_intervals() {
        let m = cluster(1, &[]);
        assert_eq!(m.round_wait(0.0), 500);
        assert_eq!(m.round_wait(0.5), 1_000);
        assert_eq!(m.round_wait(2.0), 1_500, "jitter is clamped");
    }

    #[test]
    fn the_local_node_is_always_reported() {
        let m = Membership::new(r(1), GossipConfig::default());
        let v = m.members(3);
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].replica, v[0].state), (r(1), MemberState::Local));
    }

    #[test]
    fn a_member_that_left_is_not_dialled_until_it_rejoins() {
        let mut m = cluster(1, &[2]);
        m.choose(0, 0);
        m.gossip_ended(r(2), 0, false, 0.0);
        m.set_listed([
            (r(1), MemberEntry::new(url(1), 0)),
            (r(2), MemberEntry::new(url(2), 0).with_left(true)),
        ]);
        assert_eq!(m.state(r(2), 1), Some(MemberState::Left));
        assert_eq!(m.members(1)[1].state, MemberState::Left);
        assert_eq!(m.choose(1_000_000, 0), None, "a left member is not dialled");
        // Still connected while it says goodbye: reported left all the same.
        m.session_opened(r(2), 2);
        assert_eq!(m.state(r(2), 2), Some(MemberState::Left));
        m.session_closed(r(2), 3);
        // It starts again: a new entry, not left, is a fresh member.
        m.set_listed([
            (r(1), MemberEntry::new(url(1), 0)),
            (r(2), MemberEntry::new(url(2), 50)),
        ]);
        assert_eq!(m.state(r(2), 4), Some(MemberState::Alive));
        assert_eq!(m.choose(4, 0), Some((r(2), url(2).unwrap_or_default())));
    }

    fn forgetting(forget_after_ms: Option<u64>) -> Membership {
        let mut m = Membership::new(
            r(1),
            GossipConfig {
                min_backoff_ms: 100,
                max_backoff_ms: 1_000,
                dead_after_failures: 3,
                dead_after_ms: 1_000,
                forget_after_ms,
                ..GossipConfig::default()
            },
        );
        m.set_listed(entries([(r(1), url(1)), (r(2), url(2))]));
        m
    }

    /// Fails every attempt at member 2 from `from` until `until`; returns
    /// when the last attempt was.
    fn fail_until(m: &mut Membership, from: u64, until: u64) -> u64 {
        let mut now = from;
        let mut last = from;
        while now < until {
            if m.choose(now, 0).is_some() {
                m.gossip_ended(r(2), now, false, 0.0);
                last = now;
            }
            now += 50;
        }
        last
    }

    #[test]
    fn a_member_dead_for_forget_after_is_forgotten_until_it_rewrites_its_entry() {
        let mut m = forgetting(Some(10_000));
        m.session_opened(r(2), 0);
        m.session_closed(r(2), 1_000);
        // Failing from 1 000 on: dead soon, forgotten 10 s after both the
        // first failure and the last sighting.
        fail_until(&mut m, 1_000, 10_900);
        assert_eq!(m.state(r(2), 10_900), Some(MemberState::Dead));
        assert_eq!(m.members(10_900).len(), 2);
        assert_eq!(m.forgotten(10_900), 0);
        assert_eq!(m.state(r(2), 11_000), None, "forgotten");
        assert_eq!(m.members(11_000).len(), 1, "only this node is listed");
        assert_eq!(m.forgotten(11_000), 1);
        assert_eq!(
            m.choose(1_000_000, 0),
            None,
            "a forgotten member is not dialled"
        );
        // It starts again and rewrites its entry (a new started_ms).
        m.set_listed([
            (r(1), MemberEntry::new(url(1), 0)),
            (r(2), MemberEntry::new(url(2), 99)),
        ]);
        assert_eq!(m.state(r(2), 1_000_000), Some(MemberState::Alive));
        assert_eq!(
            m.choose(1_000_000, 0),
            Some((r(2), url(2).unwrap_or_default()))
        );
    }

    #[test]
    fn a_forgotten_member_that_dials_in_is_back_and_none_never_forgets() {
        let mut m = forgetting(Some(5_000));
        fail_until(&mut m, 0, 6_000);
        assert_eq!(m.state(r(2), 6_000), None);
        m.session_opened(r(2), 6_001);
        assert_eq!(m.state(r(2), 6_001), Some(MemberState::Connected));
        m.session_closed(r(2), 6_002);
        assert_eq!(m.state(r(2), 100_000), Some(MemberState::Alive));

        let mut never = forgetting(None);
        let last = fail_until(&mut never, 0, 100_000);
        assert_eq!(never.state(r(2), 10_000_000), Some(MemberState::Dead));
        assert!(never.choose(last + 1_000, 0).is_some(), "still retried");
    }

    #[test]
    fn an_attempt_answered_by_another_replica_is_a_mismatch_not_a_link() {
        let mut m = cluster(1, &[2]);
        assert_eq!(m.choose(0, 0).map(|(r, _)| r), Some(r(2)));
        // The URL of 2 answers as 9 (2 was replaced by a new replica).
        m.session_opened(r(9), 1);
        m.identity_mismatch(r(2), r(9));
        m.session_closed(r(9), 2);
        m.gossip_ended(r(2), 2, true, 0.0);
        assert_eq!(m.state(r(2), 3), Some(MemberState::Mismatch));
        let view = &m.members(3)[1];
        assert_eq!(
            (view.answered_as, view.failures, view.sessions),
            (Some(r(9)), 1, 0)
        );
        assert!(view.retry_at.is_some(), "backed off like a failure");
        assert_eq!(m.choose(3, 0), None);
        // Its URL answers as itself again: the mismatch is cleared.
        m.session_opened(r(2), 10_000);
        let view = &m.members(10_000)[1];
        assert_eq!(
            (view.state, view.answered_as, view.failures),
            (MemberState::Connected, None, 0)
        );
    }

    #[test]
    fn only_a_dead_member_is_forgotten() {
        // Forgetting after 500 ms, but dead only after 1 000 ms unseen.
        let mut m = forgetting(Some(500));
        m.session_opened(r(2), 0);
        m.session_closed(r(2), 0);
        fail_until(&mut m, 0, 900);
        assert_eq!(m.state(r(2), 900), Some(MemberState::Suspect));
        assert_eq!(
            m.state(r(2), 1_000),
            None,
            "dead, and failing for long enough"
        );
    }
}
