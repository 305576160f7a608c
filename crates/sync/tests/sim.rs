//! Deterministic simulation of a cluster syncing through `converge-sync`
//! sessions: N replicas with random writers over a random topology, with
//! dropped, duplicated, reordered and delayed frames, partitions that heal,
//! crash-restarts (sessions and in-flight frames lost, the durable store
//! kept), replicas joining late, compaction with snapshots, and deletions
//! of objects (some while other replicas still write to them). After the
//! faults stop, every replica must converge to the same state within a
//! bounded time: the same objects deleted everywhere, nothing left of a
//! deleted object anywhere, and no acknowledged write to a live object
//! missing. No session queue may ever pass its bound.
//!
//! Why our own simulator and not turmoil: the sync core is sans-IO, so the
//! whole "network" is a priority queue of frames; driving sessions directly
//! needs no runtime, runs hundreds of seeds a minute, and lets a fault hit
//! any single frame (turmoil simulates sockets under tokio, which suits
//! end-to-end tests of the node runtime instead).
//!
//! - `cargo test -p converge-sync --test sim` runs 500 seeds (3 to 7 replicas).
//! - `CONVERGE_SIM_SEEDS=5000` runs more; `CONVERGE_SIM_FIRST_SEED=k` shifts them.
//! - `CONVERGE_SIM_SEED=1234` runs one seed verbosely (a failure prints this).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use converge_crdt::{ReplicaId, VersionVector};
use converge_store::{Entry, MemoryStore, ReadError, Snapshot, Store};
use converge_sync::{Config, Event, Interest, Limits, Policy, Session, SnapshotMerge};

/// Simulated milliseconds per step.
const TICK: u64 = 10;
/// How long faults go on.
const FAULT_MS: u64 = 8_000;
/// The bound on convergence after the faults stop.
const HEAL_MS: u64 = 30_000;
const OBJECTS: usize = 6;

type State = BTreeSet<(u64, u64, Vec<u8>)>;

fn encode_state(state: &State) -> Vec<u8> {
    let v: Vec<&(u64, u64, Vec<u8>)> = state.iter().collect();
    postcard::to_allocvec(&v).expect("a set of tuples encodes")
}

fn decode_state(bytes: &[u8]) -> Option<State> {
    let v: Vec<(u64, u64, Vec<u8>)> = postcard::from_bytes(bytes).ok()?;
    Some(v.into_iter().collect())
}

/// The fold of the simulated objects: the set of all entries.
struct UnionMerge;

impl SnapshotMerge for UnionMerge {
    fn merge(&self, _object: &str, local: &Snapshot, incoming: &Snapshot) -> Option<Vec<u8>> {
        let mut s = decode_state(&local.bytes)?;
        s.extend(decode_state(&incoming.bytes)?);
        Some(encode_state(&s))
    }
}

/// An object's state at a replica: the snapshot's entries plus the log's;
/// `None` if the replica deleted it.
fn live_state_of(store: &MemoryStore, object: &str) -> Option<(VersionVector, State)> {
    match store.version_vector(object) {
        Err(ReadError::Deleted { .. }) => {
            // Deleted means nothing of it is left to read.
            assert!(matches!(
                store.read(object, ReplicaId::from_u64(0x100), 1, 1),
                Err(ReadError::Deleted { .. })
            ));
            assert!(matches!(
                store.latest_snapshot(object),
                Err(ReadError::Deleted { .. })
            ));
            None
        }
        _ => Some(state_of(store, object)),
    }
}

/// An object's state at a replica: the snapshot's entries plus the log's.
fn state_of(store: &MemoryStore, object: &str) -> (VersionVector, State) {
    let vv = match store.version_vector(object) {
        Ok(vv) => vv,
        Err(ReadError::UnknownObject { .. } | ReadError::Deleted { .. }) => {
            return Default::default();
        }
        Err(e) => panic!("version_vector: {e}"),
    };
    let mut state = match store.latest_snapshot(object).expect("latest_snapshot") {
        Some(s) => decode_state(&s.bytes).expect("snapshots decode"),
        None => State::new(),
    };
    for (replica, last) in vv.iter() {
        let mut from = 1;
        while from <= last {
            match store.read(object, replica, from, 1000) {
                Ok(entries) if entries.is_empty() => break,
                Ok(entries) => {
                    for e in &entries {
                        state.insert((replica.as_u64(), e.seq, e.bytes.clone()));
                    }
                    from = entries.last().map_or(last, |e| e.seq) + 1;
                }
                Err(ReadError::SnapshotNeeded { compacted, .. }) => from = compacted + 1,
                Err(e) => panic!("read: {e}"),
            }
        }
    }
    (vv, state)
}

struct Node {
    id: ReplicaId,
    store: Arc<MemoryStore>,
    up: bool,
    joined: bool,
    down_until: u64,
    /// Per peer, the position in its change feed this node holds everything up to.
    cursors: HashMap<usize, u64>,
}

struct Conn {
    id: u64,
    a: usize,
    b: usize,
    sa: Session,
    sb: Session,
}

struct Frame {
    at: u64,
    order: u64,
    conn: u64,
    to_b: bool,
    bytes: Vec<u8>,
}

struct Sim {
    rng: fastrand::Rng,
    verbose: bool,
    now: u64,
    nodes: Vec<Node>,
    edges: Vec<(usize, usize)>,
    cut: BTreeSet<(usize, usize)>,
    conns: Vec<Conn>,
    next_conn: u64,
    frames: Vec<Frame>,
    order: u64,
    faults: bool,
    drop_p: f64,
    dup_p: f64,
    acked: Vec<(String, u64, u64, Vec<u8>)>,
    /// Objects some replica deleted (acknowledged deletions).
    deleted: BTreeSet<String>,
    stats: Stats,
}

#[derive(Default, Debug)]
struct Stats {
    frames: u64,
    dropped: u64,
    duplicated: u64,
    crashes: u64,
    snapshots: u64,
    closes: u64,
    resumes: u64,
    deletions: u64,
    refused_writes: u64,
}

fn config(resume_after: Option<u64>) -> Config {
    let mut c = Config::new(Interest::Prefix(String::new()));
    // Small frames and windows so that chunking and flow control are exercised.
    c.limits = Limits::default().with_max_frame_bytes(4096);
    c.window_messages = 8;
    c.window_bytes = 16 << 10;
    c.batch_entries = 16;
    c.max_pending_bytes = 32 << 10;
    c.keepalive_ms = 500;
    c.idle_timeout_ms = 2_000;
    c.ack_timeout_ms = 700;
    c.repair_interval_ms = Some(3_000);
    c.feed_poll_ms = 200;
    c.resume_after = resume_after;
    c
}

impl Sim {
    fn new(seed: u64, verbose: bool) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let n = rng.usize(3..=7);
        let nodes = (0..n)
            .map(|i| Node {
                id: ReplicaId::from_u64(0x100 + i as u64),
                store: Arc::new(MemoryStore::new()),
                up: true,
                // Some replicas join late; the first is always there.
                joined: i == 0 || rng.u8(..4) != 0,
                down_until: 0,
                cursors: HashMap::new(),
            })
            .collect();
        // A random connected topology: a random spanning tree plus extra edges.
        let mut edges = BTreeSet::new();
        for i in 1..n {
            let j = rng.usize(..i);
            edges.insert((j, i));
        }
        for _ in 0..rng.usize(..n * 2) {
            let (a, b) = (rng.usize(..n), rng.usize(..n));
            if a != b {
                edges.insert((a.min(b), a.max(b)));
            }
        }
        let drop_p = [0.0, 0.01, 0.05, 0.15][rng.usize(..4)];
        let dup_p = [0.0, 0.02, 0.1][rng.usize(..3)];
        let sim = Self {
            rng,
            verbose,
            now: 0,
            nodes,
            edges: edges.into_iter().collect(),
            cut: BTreeSet::new(),
            conns: Vec::new(),
            next_conn: 1,
            frames: Vec::new(),
            order: 0,
            faults: true,
            drop_p,
            dup_p,
            acked: Vec::new(),
            deleted: BTreeSet::new(),
            stats: Stats::default(),
        };
        if verbose {
            eprintln!(
                "sim: {n} replicas, edges {:?}, drop {drop_p}, dup {dup_p}, joined {:?}",
                sim.edges,
                sim.nodes.iter().map(|n| n.joined).collect::<Vec<_>>()
            );
        }
        sim
    }

    fn log(&self, msg: impl FnOnce() -> String) {
        if self.verbose {
            eprintln!("[{:>6} ms] {}", self.now, msg());
        }
    }

    fn step(&mut self) {
        self.now += TICK;
        if self.faults {
            self.inject_faults();
        }
        self.restart_nodes();
        self.write();
        self.connect();
        self.deliver();
        self.timers();
        self.flush();
        self.check_bounds();
    }

    fn inject_faults(&mut self) {
        let n = self.nodes.len();
        // Partitions come and go.
        if self.rng.u16(..200) == 0 {
            let (a, b) = (self.rng.usize(..n), self.rng.usize(..n));
            if a != b {
                let pair = (a.min(b), a.max(b));
                self.cut.insert(pair);
                self.log(|| format!("partition {pair:?}"));
            }
        }
        if !self.cut.is_empty() && self.rng.u16(..150) == 0 {
            self.cut.clear();
            self.log(|| "partitions heal".into());
        }
        // Crashes: lose sessions and in-flight frames, keep the durable store.
        if self.rng.u16(..400) == 0 {
            let i = self.rng.usize(..n);
            if self.nodes[i].up {
                let until = self.now + self.rng.u64(100..2_000);
                self.crash(i, until);
            }
        }
        // Late joiners arrive.
        if self.rng.u16(..300) == 0 {
            let i = self.rng.usize(..n);
            if !self.nodes[i].joined {
                self.nodes[i].joined = true;
                self.log(|| format!("node {i} joins"));
            }
        }
    }

    fn crash(&mut self, i: usize, until: u64) {
        self.stats.crashes += 1;
        self.nodes[i].up = false;
        self.nodes[i].down_until = until;
        let gone: Vec<u64> = self
            .conns
            .iter()
            .filter(|c| c.a == i || c.b == i)
            .map(|c| c.id)
            .collect();
        self.conns.retain(|c| c.a != i && c.b != i);
        self.frames.retain(|f| !gone.contains(&f.conn));
        self.log(|| format!("node {i} crashes until {until}"));
    }

    fn restart_nodes(&mut self) {
        let now = self.now;
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if !node.up && (now >= node.down_until || !self.faults) {
                node.up = true;
                if self.verbose {
                    eprintln!("[{now:>6} ms] node {i} restarts from its store");
                }
            }
        }
    }

    fn write(&mut self) {
        let n = self.nodes.len();
        if !self.faults || self.rng.u8(..3) != 0 {
            return;
        }
        let i = self.rng.usize(..n);
        if !self.nodes[i].up || !self.nodes[i].joined {
            return;
        }
        let object = format!("obj/{}", self.rng.usize(..OBJECTS));
        if self.rng.u16(..150) == 0 {
            // Delete the object here; other replicas may still be writing
            // to it (deletion wins once they hear of it).
            let outcome = self.nodes[i]
                .store
                .delete_object(&object)
                .expect("a local deletion succeeds");
            self.stats.deletions += u64::from(outcome.deleted);
            self.deleted.insert(object.clone());
            self.log(|| format!("node {i} deletes {object}"));
            self.store_changed(i);
            return;
        }
        let node = &self.nodes[i];
        let seq = match node.store.version_vector(&object) {
            Ok(vv) => vv.get(node.id) + 1,
            Err(ReadError::Deleted { .. }) => {
                // The object is gone here: the application gets an error.
                self.stats.refused_writes += 1;
                return;
            }
            Err(_) => 1,
        };
        let len = if self.rng.u8(..60) == 0 {
            // Larger than a (4 KiB) frame: sent in chunks.
            self.rng.usize(5_000..20_000)
        } else if self.rng.u8(..20) == 0 {
            1500
        } else {
            self.rng.usize(1..40)
        };
        let bytes: Vec<u8> = (0..len).map(|_| self.rng.u8(..)).collect();
        node.store
            .append(&object, node.id, &[Entry::new(seq, bytes.clone())])
            .expect("a local append succeeds");
        // The append returned: the write is acknowledged to its writer.
        self.acked.push((object, node.id.as_u64(), seq, bytes));
        // Occasionally compact: snapshot the object's state, drop its log.
        if self.rng.u8(..25) == 0 {
            self.compact(i);
        }
        self.store_changed(i);
    }

    fn compact(&mut self, i: usize) {
        let object = format!("obj/{}", self.rng.usize(..OBJECTS));
        let store = &self.nodes[i].store;
        let Some((vv, state)) = live_state_of(store, &object) else {
            return;
        };
        if vv.is_empty() {
            return;
        }
        store
            .put_snapshot(&object, &vv, &encode_state(&state))
            .expect("a snapshot of the whole state covers the previous one");
        store
            .compact(&object, &vv)
            .expect("the snapshot covers the horizon");
        self.stats.snapshots += 1;
        self.log(|| format!("node {i} compacts {object} at {vv:?}"));
    }

    fn store_changed(&mut self, i: usize) {
        let now = self.now;
        let store = self.nodes[i].store.clone();
        for c in &mut self.conns {
            let s = if c.a == i {
                &mut c.sa
            } else if c.b == i {
                &mut c.sb
            } else {
                continue;
            };
            let _ = s.handle_store_change(now, &*store);
        }
    }

    fn connect(&mut self) {
        for k in 0..self.edges.len() {
            let (a, b) = self.edges[k];
            let live = |n: &Node| n.up && n.joined;
            if !live(&self.nodes[a]) || !live(&self.nodes[b]) || self.cut.contains(&(a, b)) {
                continue;
            }
            if self.conns.iter().any(|c| c.a == a && c.b == b) {
                continue;
            }
            if self.faults && self.rng.u8(..10) != 0 {
                continue; // Reconnect after a while, not at once.
            }
            let ra = self.nodes[a].cursors.get(&b).copied();
            let rb = self.nodes[b].cursors.get(&a).copied();
            self.stats.resumes += u64::from(ra.is_some()) + u64::from(rb.is_some());
            let merge: Arc<dyn SnapshotMerge> = Arc::new(UnionMerge);
            let sa = Session::new(self.now, config(ra), self.nodes[a].id, Policy::trusted())
                .with_snapshot_merge(merge.clone());
            let sb = Session::new(self.now, config(rb), self.nodes[b].id, Policy::trusted())
                .with_snapshot_merge(merge);
            let id = self.next_conn;
            self.next_conn += 1;
            self.conns.push(Conn { id, a, b, sa, sb });
            self.log(|| format!("connect {a}-{b} (conn {id}, resume {ra:?}/{rb:?})"));
        }
    }

    fn deliver(&mut self) {
        let now = self.now;
        let mut due: Vec<Frame> = Vec::new();
        let mut i = 0;
        while i < self.frames.len() {
            if self.frames[i].at <= now {
                due.push(self.frames.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|f| (f.at, f.order));
        let mut touched = BTreeSet::new();
        for f in due {
            let Some(c) = self.conns.iter_mut().find(|c| c.id == f.conn) else {
                continue;
            };
            let (s, node) = if f.to_b {
                (&mut c.sb, c.b)
            } else {
                (&mut c.sa, c.a)
            };
            if s.handle_bytes(now, &f.bytes, &*self.nodes[node].store)
                .is_ok()
            {
                touched.insert(node);
            }
        }
        self.drain_events();
        // Entries that arrived at a node stream on to its other peers.
        for node in touched {
            self.store_changed(node);
        }
    }

    fn timers(&mut self) {
        let now = self.now;
        for c in &mut self.conns {
            for (s, node) in [(&mut c.sa, c.a), (&mut c.sb, c.b)] {
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    let _ = s.handle_timeout(now, &*self.nodes[node].store);
                }
            }
        }
        self.drain_events();
    }

    fn drain_events(&mut self) {
        let mut closed = Vec::new();
        for c in &mut self.conns {
            for (s, me, peer) in [(&mut c.sa, c.a, c.b), (&mut c.sb, c.b, c.a)] {
                while let Some(e) = s.poll_event() {
                    match e {
                        Event::PeerFeedPosition { position, .. } => {
                            self.nodes[me].cursors.insert(peer, position);
                        }
                        Event::Closed { reason } => {
                            if self.verbose {
                                eprintln!(
                                    "[{:>6} ms] node {me} closes conn {}: {reason}",
                                    self.now, c.id
                                );
                            }
                            closed.push(c.id);
                        }
                        Event::PeerConflict { .. } | Event::SnapshotUnmergeable { .. } => {
                            panic!("node {me}: unexpected {e:?}")
                        }
                        _ => {}
                    }
                }
            }
        }
        if !closed.is_empty() {
            self.stats.closes += closed.len() as u64;
            self.conns.retain(|c| !closed.contains(&c.id));
            self.frames.retain(|f| !closed.contains(&f.conn));
        }
    }

    fn flush(&mut self) {
        let mut out = Vec::new();
        for c in &mut self.conns {
            let cut = self.cut.contains(&(c.a, c.b));
            for (s, to_b) in [(&mut c.sa, true), (&mut c.sb, false)] {
                while let Some(bytes) = s.poll_transmit() {
                    out.push((c.id, to_b, cut, bytes));
                }
            }
        }
        for (conn, to_b, cut, bytes) in out {
            self.stats.frames += 1;
            if self.faults && (cut || self.rng.f64() < self.drop_p) {
                self.stats.dropped += 1;
                continue;
            }
            let copies = if self.faults && self.rng.f64() < self.dup_p {
                self.stats.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                // A random delay reorders frames while faults are on.
                let delay = if self.faults {
                    self.rng.u64(1..80)
                } else {
                    TICK
                };
                self.order += 1;
                self.frames.push(Frame {
                    at: self.now + delay,
                    order: self.order,
                    conn,
                    to_b,
                    bytes: bytes.clone(),
                });
            }
        }
    }

    fn check_bounds(&self) {
        for c in &self.conns {
            for s in [&c.sa, &c.sb] {
                let q = s.queue_sizes();
                let cfg = s.config();
                assert!(q.inflight_messages <= cfg.window_messages, "{q:?}");
                // One message may overshoot the byte window (it opens when under).
                assert!(
                    q.inflight_bytes <= cfg.window_bytes + cfg.limits.max_frame_bytes + 4,
                    "{q:?}"
                );
                assert!(q.pending_bytes <= cfg.max_pending_bytes, "{q:?}");
                assert!(q.assembly_bytes <= 2 * cfg.max_snapshot_bytes, "{q:?}");
                assert!(q.peer_objects <= cfg.max_objects, "{q:?}");
                assert!(q.peer_holds <= cfg.max_objects, "{q:?}");
                assert!(q.events <= cfg.max_events + 8, "{q:?}");
                assert!(q.out_frames <= 2 * cfg.window_messages + 8, "{q:?}");
                assert!(q.recv_bytes <= cfg.limits.max_frame_bytes + 4, "{q:?}");
                assert!(q.work <= 2 * 128 + 64, "{q:?}");
            }
        }
    }

    /// `None` when every replica holds the same state with every
    /// acknowledged write; otherwise what differs.
    fn divergence(&self) -> Option<String> {
        let mut objects: BTreeSet<String> = self.acked.iter().map(|a| a.0.clone()).collect();
        objects.extend(self.deleted.iter().cloned());
        for object in &objects {
            let states: Vec<Option<(VersionVector, State)>> = self
                .nodes
                .iter()
                .map(|n| live_state_of(&n.store, object))
                .collect();
            let deleted: Vec<usize> = (0..states.len()).filter(|&i| states[i].is_none()).collect();
            if self.deleted.contains(object) && deleted.len() != states.len() {
                return Some(format!(
                    "{object} was deleted, but only nodes {deleted:?} of {} hold its tombstone",
                    states.len()
                ));
            }
            if !deleted.is_empty() && deleted.len() != states.len() {
                return Some(format!("{object} is deleted only at nodes {deleted:?}"));
            }
            if !deleted.is_empty() {
                continue; // Deleted everywhere: acknowledged writes to it lost to the deletion.
            }
            let states: Vec<(VersionVector, State)> = states.into_iter().flatten().collect();
            for (i, s) in states.iter().enumerate().skip(1) {
                if *s != states[0] {
                    return Some(format!(
                        "{object}: node 0 has {:?} ({} entries), node {i} has {:?} ({} entries)",
                        states[0].0,
                        states[0].1.len(),
                        s.0,
                        s.1.len()
                    ));
                }
            }
            for (o, r, seq, bytes) in &self.acked {
                if o == object && !states[0].1.contains(&(*r, *seq, bytes.clone())) {
                    return Some(format!("acknowledged write {o}/{r:x}/{seq} is missing"));
                }
            }
        }
        None
    }
}

/// Runs one seed; `Err` describes a failure.
fn run(seed: u64, verbose: bool) -> Result<(u64, Stats), String> {
    let mut sim = Sim::new(seed, verbose);
    while sim.now < FAULT_MS {
        sim.step();
    }
    sim.faults = false;
    sim.cut.clear();
    for n in &mut sim.nodes {
        n.joined = true;
    }
    sim.log(|| "faults stop; the network heals".into());
    let healed_at = sim.now;
    loop {
        sim.step();
        if sim.now.is_multiple_of(100) && sim.divergence().is_none() {
            let took = sim.now - healed_at;
            if verbose {
                eprintln!("converged {took} ms after healing; {:?}", sim.stats);
            }
            return Ok((took, sim.stats));
        }
        if sim.now - healed_at > HEAL_MS {
            return Err(format!(
                "no convergence {HEAL_MS} ms after healing: {}; {:?}",
                sim.divergence().unwrap_or_default(),
                sim.stats
            ));
        }
    }
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn run_seeds(seeds: impl Iterator<Item = u64>) {
    let mut worst = 0;
    let mut count = 0;
    let mut totals = Stats::default();
    for seed in seeds {
        let outcome = std::panic::catch_unwind(|| run(seed, false));
        match outcome {
            Ok(Ok((took, stats))) => {
                worst = worst.max(took);
                count += 1;
                totals.frames += stats.frames;
                totals.dropped += stats.dropped;
                totals.duplicated += stats.duplicated;
                totals.crashes += stats.crashes;
                totals.snapshots += stats.snapshots;
                totals.resumes += stats.resumes;
                totals.closes += stats.closes;
                totals.deletions += stats.deletions;
                totals.refused_writes += stats.refused_writes;
            }
            Ok(Err(e)) => panic!(
                "seed {seed} failed: {e}\nreplay: CONVERGE_SIM_SEED={seed} cargo test -p converge-sync --test sim -- --nocapture"
            ),
            Err(_) => panic!(
                "seed {seed} panicked (message above)\nreplay: CONVERGE_SIM_SEED={seed} cargo test -p converge-sync --test sim -- --nocapture"
            ),
        }
    }
    eprintln!("sim: {count} seeds converged; slowest {worst} ms after healing; {totals:?}");
}

/// The CI run: 500 seeds by default, in two halves that run in parallel.
fn half(parity: u64) {
    if let Some(seed) = env("CONVERGE_SIM_SEED") {
        if parity == 0
            && let Err(e) = run(seed, true)
        {
            panic!("seed {seed}: {e}");
        }
        return;
    }
    let n = env("CONVERGE_SIM_SEEDS").unwrap_or(500);
    let first = env("CONVERGE_SIM_FIRST_SEED").unwrap_or(0);
    run_seeds((first..first + n).filter(|s| s % 2 == parity));
}

#[test]
fn sim_even_seeds() {
    half(0);
}

#[test]
fn sim_odd_seeds() {
    half(1);
}
