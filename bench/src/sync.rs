//! The `sync` suite: the `converge-sync` protocol, sans-IO, wired in memory.
//!
//! Sessions run over [`MemoryStore`]s; frames are handed from one session to
//! the other directly (no sockets) and a virtual clock is advanced by hand,
//! so the figures are the protocol's own: wall time of the session code and
//! the store, bytes and frames on the wire (each frame carries one message;
//! bytes include the 4-byte length prefix and the version byte), and, for
//! multi-replica convergence, rounds of a synchronous network.
//!
//! - `catchup`: B is behind A by [`CATCHUP_ENTRIES`] entries of
//!   [`PAYLOAD`] bytes over [`CATCHUP_OBJECTS`] objects; time until both
//!   sessions are idle (everything acknowledged), the wire bytes both ways
//!   divided by the payload bytes, and B's version vectors checked against A's.
//! - `steady-*`: [`STEADY_OBJECTS`] objects synced on both sides, then a few
//!   change at A; bytes and messages until both sides are idle again, over
//!   the live session (`live`), over a reconnect that resumes from the feed
//!   position (`resume`), and over a reconnect with a full vector comparison
//!   (`full`, the anti-entropy repair, for contrast).
//! - `convergence-*`: n replicas in a ring or a random connected topology,
//!   connected and idle; each writes [`BURST`] entries to shared objects at
//!   once; then the network runs in rounds (every frame queued anywhere is
//!   delivered one [`HOP_MS`] later) until every replica holds the same
//!   version vectors.

use std::fmt::Write as _;
use std::time::Instant;

use converge_store::{Entry, MemoryStore, ReplicaId, Store, VersionVector};
use converge_sync::{Config, Event, Interest, Limits, Message, Policy, Session};

use crate::Options;
use crate::harness::{MS, Record, time_runs, write_json};

const CONVERGE: &str = "converge";

/// Wire bytes both ways ÷ payload bytes.
const OVERHEAD: &str = "overhead_ratio";
const ENTRIES_PER_S: &str = "entries_per_s";
const BYTES: &str = "bytes";
const MESSAGES: &str = "messages";
const ROUNDS: &str = "rounds";
const SIM_MS: &str = "sim_ms";
/// Convergence: wire bytes ÷ the payload bytes every replica must receive.
const PER_NEEDED: &str = "bytes_per_needed";
/// Convergence: entries sent ÷ the entries every replica must receive.
const ENTRIES_PER_NEEDED: &str = "entries_per_needed";
/// Convergence: entries sent back to the replica that wrote them.
const ECHOES: &str = "echo_entries";

/// Payload bytes of every entry.
const PAYLOAD: usize = 50;
/// Catch-up: entries A holds and B lacks, and the objects they are spread over.
const CATCHUP_ENTRIES: usize = 1_000_000;
const CATCHUP_OBJECTS: usize = 1_000;
/// Catch-up: the replicas that wrote the objects (object `i` by writer `i % n`).
const CATCHUP_WRITERS: u64 = 4;
/// Steady state: objects synced on both sides (entries each), and the changed counts.
const STEADY_OBJECTS: usize = 10_000;
const STEADY_ENTRIES: usize = 5;
const STEADY_CHANGED: [usize; 2] = [10, 100];
/// Convergence: replica counts, shared objects, and entries each replica writes.
const REPLICAS: [usize; 3] = [3, 10, 50];
const SHARED_OBJECTS: usize = 10;
const BURST: usize = 100;
/// Convergence: one-way delay of a frame, the length of one round.
const HOP_MS: u64 = 10;
/// Give up on a simulation after this much virtual time.
const SIM_LIMIT_MS: u64 = 600_000;

fn replica(i: u64) -> ReplicaId {
    ReplicaId::from_u64(0x1000 + i)
}

/// A distinct payload for (object, replica, seq).
fn payload(object: usize, writer: u64, seq: u64) -> Vec<u8> {
    let mut p = format!("{object:08}/{writer:04}/{seq:012}/").into_bytes();
    p.resize(PAYLOAD, b'.');
    p
}

fn config(resume_after: Option<u64>) -> Config {
    let mut c = Config::new(Interest::Prefix(String::new()));
    c.resume_after = resume_after;
    c
}

/// Every object id in `store`.
fn objects(store: &MemoryStore) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    loop {
        let page = store
            .list_objects("", out.last().map(String::as_str), 1000)
            .map_err(|e| format!("list_objects: {e}"))?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

fn vv(store: &MemoryStore, object: &str) -> Result<VersionVector, String> {
    store
        .version_vector(object)
        .map_err(|e| format!("version_vector({object}): {e}"))
}

/// Whether `b` holds exactly `a`'s objects with `a`'s version vectors.
fn same_vvs(a: &MemoryStore, b: &MemoryStore) -> Result<(), String> {
    let (oa, ob) = (objects(a)?, objects(b)?);
    if oa != ob {
        return Err(format!("objects differ: {} vs {}", oa.len(), ob.len()));
    }
    for o in &oa {
        let (va, vb) = (vv(a, o)?, vv(b, o)?);
        if va != vb {
            return Err(format!("{o}: {va:?} vs {vb:?}"));
        }
    }
    Ok(())
}

/// Two sessions over two stores, frames passed directly.
struct Pair<'s> {
    now: u64,
    a: Session,
    b: Session,
    sa: &'s MemoryStore,
    sb: &'s MemoryStore,
    bytes: u64,
    messages: u64,
    /// The last feed position each side reported of its peer's feed.
    a_knows_b: Option<u64>,
    b_knows_a: Option<u64>,
}

impl<'s> Pair<'s> {
    fn new(now: u64, sa: &'s MemoryStore, sb: &'s MemoryStore, resume: [Option<u64>; 2]) -> Self {
        Self {
            now,
            a: Session::new(now, config(resume[0]), replica(0), Policy::trusted()),
            b: Session::new(now, config(resume[1]), replica(1), Policy::trusted()),
            sa,
            sb,
            bytes: 0,
            messages: 0,
            a_knows_b: resume[0],
            b_knows_a: resume[1],
        }
    }

    /// Moves frames both ways until neither side has any to send.
    fn exchange(&mut self) -> Result<(), String> {
        loop {
            let mut moved = false;
            while let Some(f) = self.a.poll_transmit() {
                moved = true;
                self.bytes += f.len() as u64;
                self.messages += 1;
                self.b
                    .handle_bytes(self.now, &f, self.sb)
                    .map_err(|e| format!("B: {e}"))?;
            }
            while let Some(f) = self.b.poll_transmit() {
                moved = true;
                self.bytes += f.len() as u64;
                self.messages += 1;
                self.a
                    .handle_bytes(self.now, &f, self.sa)
                    .map_err(|e| format!("A: {e}"))?;
            }
            self.events();
            if !moved {
                return Ok(());
            }
        }
    }

    fn events(&mut self) {
        while let Some(e) = self.a.poll_event() {
            if let Event::PeerFeedPosition { position, .. } = e {
                self.a_knows_b = Some(position);
            }
        }
        while let Some(e) = self.b.poll_event() {
            if let Event::PeerFeedPosition { position, .. } = e {
                self.b_knows_a = Some(position);
            }
        }
    }

    fn timers(&mut self) -> Result<(), String> {
        if self.a.poll_timeout().is_some_and(|t| t <= self.now) {
            self.a
                .handle_timeout(self.now, self.sa)
                .map_err(|e| format!("A: {e}"))?;
        }
        if self.b.poll_timeout().is_some_and(|t| t <= self.now) {
            self.b
                .handle_timeout(self.now, self.sb)
                .map_err(|e| format!("B: {e}"))?;
        }
        Ok(())
    }

    /// Runs timers and exchanges until both sides are idle, advancing the
    /// virtual clock to the next timer only when nothing moves.
    fn settle(&mut self) -> Result<(), String> {
        let start = self.now;
        loop {
            self.timers()?;
            self.exchange()?;
            if self.a.is_idle() && self.b.is_idle() {
                return Ok(());
            }
            let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .ok_or("both sessions closed")?;
            self.now = next.max(self.now + 1);
            if self.now - start > SIM_LIMIT_MS {
                return Err(format!("not idle after {SIM_LIMIT_MS} virtual ms"));
            }
        }
    }
}

// ---------------------------------------------------------------- catch-up

fn catchup_source(entries: usize) -> Result<MemoryStore, String> {
    let store = MemoryStore::new();
    let per_object = entries / CATCHUP_OBJECTS;
    for o in 0..CATCHUP_OBJECTS {
        let writer = o as u64 % CATCHUP_WRITERS;
        let batch: Vec<Entry> = (1..=per_object as u64)
            .map(|seq| Entry::new(seq, payload(o, writer, seq)))
            .collect();
        store
            .append(&format!("obj/{o:05}"), replica(10 + writer), &batch)
            .map_err(|e| format!("append: {e}"))?;
    }
    Ok(store)
}

struct Catchup {
    a: MemoryStore,
    b: MemoryStore,
    bytes: u64,
    messages: u64,
}

fn catchup(a: MemoryStore) -> Result<Catchup, String> {
    let b = MemoryStore::new();
    let (bytes, messages) = {
        let mut p = Pair::new(0, &a, &b, [None, None]);
        p.settle()?;
        (p.bytes, p.messages)
    };
    Ok(Catchup {
        a,
        b,
        bytes,
        messages,
    })
}

fn catchup_case(opts: &Options, records: &mut Vec<Record>) {
    let case = "catchup";
    let mut wire: Option<(u64, u64)> = None;
    let outcome = time_runs(
        opts.runs,
        || catchup_source(CATCHUP_ENTRIES),
        |a| a.and_then(catchup),
        |out| {
            let c = out.as_ref().map_err(Clone::clone)?;
            same_vvs(&c.a, &c.b)?;
            wire = Some((c.bytes, c.messages));
            Ok(())
        },
    );
    let payload_bytes = (CATCHUP_ENTRIES * PAYLOAD) as f64;
    let rate = outcome.clone().map(|ms| {
        ms.iter()
            .map(|ms| CATCHUP_ENTRIES as f64 / (ms / 1e3))
            .collect::<Vec<_>>()
    });
    let w = outcome
        .clone()
        .and_then(|_| wire.ok_or("no run".to_owned()));
    let one = |f: &dyn Fn((u64, u64)) -> f64| w.clone().map(|w| vec![f(w)]);
    records.push(Record::new(
        case,
        CONVERGE,
        OVERHEAD,
        one(&|(b, _)| b as f64 / payload_bytes),
    ));
    records.push(Record::new(case, CONVERGE, ENTRIES_PER_S, rate));
    records.push(Record::new(case, CONVERGE, MS, outcome));
    records.push(Record::new(case, CONVERGE, BYTES, one(&|(b, _)| b as f64)));
    records.push(Record::new(
        case,
        CONVERGE,
        MESSAGES,
        one(&|(_, m)| m as f64),
    ));
}

// ---------------------------------------------------------------- steady state

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Live,
    Resume,
    Full,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Resume => "resume",
            Self::Full => "full",
        }
    }
}

/// Bytes and messages exchanged to bring B up to date after `changed`
/// objects of [`STEADY_OBJECTS`] change at A.
fn steady(mode: Mode, changed: usize) -> Result<(u64, u64), String> {
    let (sa, sb) = (MemoryStore::new(), MemoryStore::new());
    for o in 0..STEADY_OBJECTS {
        let batch: Vec<Entry> = (1..=STEADY_ENTRIES as u64)
            .map(|seq| Entry::new(seq, payload(o, 0, seq)))
            .collect();
        sa.append(&format!("doc/{o:05}"), replica(0), &batch)
            .map_err(|e| format!("append: {e}"))?;
    }
    // The initial sync (not counted).
    let mut p = Pair::new(0, &sa, &sb, [None, None]);
    p.settle()?;
    same_vvs(&sa, &sb)?;
    // Spread the changes over the id space.
    let step = STEADY_OBJECTS / changed;
    let changed_ids: Vec<String> = (0..changed)
        .map(|k| format!("doc/{:05}", k * step))
        .collect();
    let write = |_: ()| -> Result<(), String> {
        for (k, id) in changed_ids.iter().enumerate() {
            let seq = STEADY_ENTRIES as u64 + 1;
            sa.append(
                id,
                replica(0),
                &[Entry::new(seq, payload(k * step, 0, seq))],
            )
            .map_err(|e| format!("append: {e}"))?;
        }
        Ok(())
    };
    let now = p.now + 1;
    let (bytes, messages) = match mode {
        Mode::Live => {
            write(())?;
            p.now = now;
            p.bytes = 0;
            p.messages = 0;
            p.a.handle_store_change(now, &sa)
                .map_err(|e| format!("A: {e}"))?;
            p.settle()?;
            (p.bytes, p.messages)
        }
        Mode::Resume | Mode::Full => {
            let resume = if mode == Mode::Resume {
                let r = [p.a_knows_b, p.b_knows_a];
                if r[1].is_none() {
                    return Err("B never got a feed position".into());
                }
                r
            } else {
                [None, None]
            };
            drop(p);
            write(())?;
            let mut q = Pair::new(now, &sa, &sb, resume);
            q.settle()?;
            (q.bytes, q.messages)
        }
    };
    same_vvs(&sa, &sb)?;
    for id in &changed_ids {
        if vv(&sb, id)?.get(replica(0)) != STEADY_ENTRIES as u64 + 1 {
            return Err(format!("{id} not updated at B"));
        }
    }
    Ok((bytes, messages))
}

fn steady_cases(records: &mut Vec<Record>) {
    for mode in [Mode::Live, Mode::Resume, Mode::Full] {
        for changed in STEADY_CHANGED {
            let case = format!("steady-{}-{changed}-of-10k", mode.name());
            let r = steady(mode, changed);
            let get = |f: fn((u64, u64)) -> u64| r.clone().map(|x| vec![f(x) as f64]);
            records.push(Record::new(&case, CONVERGE, BYTES, get(|x| x.0)));
            records.push(Record::new(&case, CONVERGE, MESSAGES, get(|x| x.1)));
        }
    }
}

// ---------------------------------------------------------------- convergence

#[derive(Clone, Copy, Debug)]
enum Topology {
    Ring,
    Random,
}

/// A small deterministic generator (splitmix64) for the random topology.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % n as u64) as usize
    }
}

fn edges(topology: Topology, n: usize) -> Vec<(usize, usize)> {
    let mut e = std::collections::BTreeSet::new();
    match topology {
        Topology::Ring => {
            for i in 0..n {
                let j = (i + 1) % n;
                e.insert((i.min(j), i.max(j)));
            }
        }
        Topology::Random => {
            // A random spanning tree plus about n/2 extra edges.
            let mut rng = Rng(n as u64);
            for i in 1..n {
                let j = rng.below(i);
                e.insert((j, i));
            }
            for _ in 0..n / 2 {
                let (a, b) = (rng.below(n), rng.below(n));
                if a != b {
                    e.insert((a.min(b), a.max(b)));
                }
            }
        }
    }
    e.into_iter().collect()
}

struct Conn {
    a: usize,
    b: usize,
    sa: Session,
    sb: Session,
    /// Frames sent in the previous round, to deliver in this one.
    to_b: Vec<Vec<u8>>,
    to_a: Vec<Vec<u8>>,
}

struct Net {
    now: u64,
    stores: Vec<MemoryStore>,
    conns: Vec<Conn>,
    bytes: u64,
    messages: u64,
    /// Entries carried by `Entries` messages (duplicates included).
    entries: u64,
    /// Of those, entries sent to the replica that wrote them.
    echoes: u64,
}

/// Counters of frames sent.
struct Sent<'n> {
    bytes: &'n mut u64,
    messages: &'n mut u64,
    entries: &'n mut u64,
    echoes: &'n mut u64,
}

impl Sent<'_> {
    /// Counts frame `f` sent to the replica numbered `to`.
    fn count(&mut self, f: &[u8], to: usize) {
        *self.bytes += f.len() as u64;
        *self.messages += 1;
        if let Ok((
            Message::Entries {
                entries,
                replica: r,
                ..
            },
            _,
        )) = converge_sync::codec::decode(f, &Limits::default())
        {
            *self.entries += entries.len() as u64;
            if r == replica(to as u64) {
                *self.echoes += entries.len() as u64;
            }
        }
    }
}

impl Net {
    fn counters(&mut self) -> Sent<'_> {
        Sent {
            bytes: &mut self.bytes,
            messages: &mut self.messages,
            entries: &mut self.entries,
            echoes: &mut self.echoes,
        }
    }

    fn new(n: usize, edges: &[(usize, usize)]) -> Self {
        let conns = edges
            .iter()
            .map(|&(a, b)| Conn {
                a,
                b,
                sa: Session::new(0, config(None), replica(a as u64), Policy::trusted()),
                sb: Session::new(0, config(None), replica(b as u64), Policy::trusted()),
                to_b: Vec::new(),
                to_a: Vec::new(),
            })
            .collect();
        Self {
            now: 0,
            stores: (0..n).map(|_| MemoryStore::new()).collect(),
            conns,
            bytes: 0,
            messages: 0,
            entries: 0,
            echoes: 0,
        }
    }

    /// One round: deliver what was sent last round, let stores that changed
    /// feed their other sessions, run due timers, collect what is sent now.
    fn round(&mut self) -> Result<(), String> {
        self.now += HOP_MS;
        let now = self.now;
        let mut touched = vec![false; self.stores.len()];
        for c in &mut self.conns {
            for f in std::mem::take(&mut c.to_b) {
                c.sb.handle_bytes(now, &f, &self.stores[c.b])
                    .map_err(|e| format!("{}: {e}", c.b))?;
                touched[c.b] = true;
            }
            for f in std::mem::take(&mut c.to_a) {
                c.sa.handle_bytes(now, &f, &self.stores[c.a])
                    .map_err(|e| format!("{}: {e}", c.a))?;
                touched[c.a] = true;
            }
        }
        let mut sent = Sent {
            bytes: &mut self.bytes,
            messages: &mut self.messages,
            entries: &mut self.entries,
            echoes: &mut self.echoes,
        };
        for c in &mut self.conns {
            for (s, node) in [(&mut c.sa, c.a), (&mut c.sb, c.b)] {
                if touched[node] {
                    s.handle_store_change(now, &self.stores[node])
                        .map_err(|e| format!("{node}: {e}"))?;
                }
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now, &self.stores[node])
                        .map_err(|e| format!("{node}: {e}"))?;
                }
                while s.poll_event().is_some() {}
            }
            while let Some(f) = c.sa.poll_transmit() {
                sent.count(&f, c.b);
                c.to_b.push(f);
            }
            while let Some(f) = c.sb.poll_transmit() {
                sent.count(&f, c.a);
                c.to_a.push(f);
            }
        }
        Ok(())
    }

    fn quiet(&self) -> bool {
        self.conns
            .iter()
            .all(|c| c.to_a.is_empty() && c.to_b.is_empty() && c.sa.is_idle() && c.sb.is_idle())
    }

    /// Whether every replica holds `want` for every shared object.
    fn converged(&self, want: &VersionVector) -> Result<bool, String> {
        for s in &self.stores {
            for o in 0..SHARED_OBJECTS {
                match s.version_vector(&format!("shared/{o}")) {
                    Ok(v) if v == *want => {}
                    _ => return Ok(false),
                }
            }
        }
        Ok(true)
    }
}

struct Converged {
    rounds: u64,
    sim_ms: u64,
    bytes: u64,
    messages: u64,
    entries: u64,
    echoes: u64,
}

fn convergence(topology: Topology, n: usize) -> Result<Converged, String> {
    let mut net = Net::new(n, &edges(topology, n));
    // Connect and let every session go idle (not counted).
    loop {
        net.round()?;
        if net.quiet() {
            break;
        }
        if net.now > SIM_LIMIT_MS {
            return Err("sessions never went idle".into());
        }
    }
    // The burst: every replica writes BURST entries over the shared objects at once.
    let per_object = BURST / SHARED_OBJECTS;
    let mut want = VersionVector::new();
    for (i, store) in net.stores.iter().enumerate() {
        for o in 0..SHARED_OBJECTS {
            let batch: Vec<Entry> = (1..=per_object as u64)
                .map(|seq| Entry::new(seq, payload(o, i as u64, seq)))
                .collect();
            store
                .append(&format!("shared/{o}"), replica(i as u64), &batch)
                .map_err(|e| format!("append: {e}"))?;
        }
        want.set(replica(i as u64), per_object as u64);
    }
    let start = net.now;
    let (bytes0, messages0, entries0, echoes0) = (net.bytes, net.messages, net.entries, net.echoes);
    for c in &mut net.conns {
        c.sa.handle_store_change(start, &net.stores[c.a])
            .map_err(|e| e.to_string())?;
        c.sb.handle_store_change(start, &net.stores[c.b])
            .map_err(|e| e.to_string())?;
    }
    let mut rounds = 0;
    // The writes' own frames are collected by the first round's end.
    let mut conns = std::mem::take(&mut net.conns);
    let mut sent = net.counters();
    for c in &mut conns {
        while let Some(f) = c.sa.poll_transmit() {
            sent.count(&f, c.b);
            c.to_b.push(f);
        }
        while let Some(f) = c.sb.poll_transmit() {
            sent.count(&f, c.a);
            c.to_a.push(f);
        }
    }
    net.conns = conns;
    while !net.converged(&want)? {
        net.round()?;
        rounds += 1;
        if net.now - start > SIM_LIMIT_MS {
            return Err(format!("not converged after {SIM_LIMIT_MS} virtual ms"));
        }
    }
    Ok(Converged {
        rounds,
        sim_ms: net.now - start,
        bytes: net.bytes - bytes0,
        messages: net.messages - messages0,
        entries: net.entries - entries0,
        echoes: net.echoes - echoes0,
    })
}

fn convergence_cases(records: &mut Vec<Record>) {
    for topology in [Topology::Ring, Topology::Random] {
        for n in REPLICAS {
            let name = match topology {
                Topology::Ring => "ring",
                Topology::Random => "random",
            };
            let case = format!("convergence-{name}-{n}");
            let r = convergence(topology, n);
            let get = |f: fn(&Converged) -> u64| {
                r.as_ref().map(|c| vec![f(c) as f64]).map_err(Clone::clone)
            };
            records.push(Record::new(&case, CONVERGE, ROUNDS, get(|c| c.rounds)));
            records.push(Record::new(&case, CONVERGE, SIM_MS, get(|c| c.sim_ms)));
            records.push(Record::new(&case, CONVERGE, MESSAGES, get(|c| c.messages)));
            records.push(Record::new(&case, CONVERGE, BYTES, get(|c| c.bytes)));
            // The least any protocol must move: every replica receives
            // every other replica's payload once.
            let needed = (n * (n - 1) * BURST * PAYLOAD) as f64;
            let ratio = r
                .as_ref()
                .map(|c| vec![c.bytes as f64 / needed])
                .map_err(Clone::clone);
            records.push(Record::new(&case, CONVERGE, PER_NEEDED, ratio));
            let needed = (n * (n - 1) * BURST) as f64;
            let ratio = r
                .as_ref()
                .map(|c| vec![c.entries as f64 / needed])
                .map_err(Clone::clone);
            records.push(Record::new(&case, CONVERGE, ENTRIES_PER_NEEDED, ratio));
            records.push(Record::new(&case, CONVERGE, ECHOES, get(|c| c.echoes)));
        }
    }
}

// ---------------------------------------------------------------- output

fn format_value(v: f64, metric: &str) -> String {
    match metric {
        OVERHEAD => format!("{v:.4}"),
        PER_NEEDED | ENTRIES_PER_NEEDED => format!("{v:.2}"),
        MS => format!("{v:.1}"),
        _ => format!("{v:.0}"),
    }
}

/// One row per case, one column per metric (in first-seen order).
fn markdown_table(records: &[Record]) -> String {
    let mut metrics: Vec<&str> = Vec::new();
    for r in records {
        if !metrics.contains(&r.metric.as_str()) {
            metrics.push(&r.metric);
        }
    }
    crate::harness::metric_table(records, &metrics, format_value)
}

fn value(records: &[Record], case: &str, metric: &str) -> Option<f64> {
    records
        .iter()
        .find(|r| r.case == case && r.metric == metric)
        .and_then(|r| r.median)
}

/// The team's targets, checked against `records`.
fn targets(records: &[Record]) -> String {
    let mut out = String::new();
    if let Some(r) = value(records, "catchup", OVERHEAD) {
        let ok = if r <= 1.10 { "met" } else { "MISSED" };
        let _ = writeln!(out, "- catch-up overhead {r:.4} (target <= 1.10): {ok}");
    }
    for mode in [Mode::Live, Mode::Resume, Mode::Full] {
        let case = |n: usize| format!("steady-{}-{n}-of-10k", mode.name());
        let [small, large] = STEADY_CHANGED;
        if let (Some(a), Some(b)) = (
            value(records, &case(small), BYTES),
            value(records, &case(large), BYTES),
        ) {
            let _ = writeln!(
                out,
                "- steady {}: {:.0} B per changed object at {small}, {:.0} at {large}; \
                 {large}/{small} changes cost {:.1}x the bytes",
                mode.name(),
                a / small as f64,
                b / large as f64,
                b / a
            );
        }
    }
    out
}

pub(crate) fn run(opts: &Options) -> Result<(), String> {
    let started = Instant::now();
    let mut records = Vec::new();
    if opts.wants("catchup") {
        eprintln!("sync: catchup ...");
        catchup_case(opts, &mut records);
    }
    if opts.wants("steady") {
        eprintln!("sync: steady ...");
        steady_cases(&mut records);
    }
    if opts.wants("convergence") {
        eprintln!("sync: convergence ...");
        convergence_cases(&mut records);
    }
    println!("## sync: converge-sync sessions wired in memory (MemoryStore, virtual clock)\n");
    println!(
        "catchup: {CATCHUP_ENTRIES} entries of {PAYLOAD} B over {CATCHUP_OBJECTS} objects, B empty; \
         wall time median of {} runs; bytes = both directions, frames included. \
         steady: {STEADY_OBJECTS} objects synced, then 10 / 100 change (live session, \
         reconnect resuming from the feed position, reconnect with full comparison). \
         convergence: {BURST} entries per replica over {SHARED_OBJECTS} shared objects, \
         {HOP_MS} ms per hop, rounds until every version vector is equal.\n",
        opts.runs
    );
    print!("{}", markdown_table(&records));
    println!("\n### targets\n\n{}", targets(&records));
    println!("suite took {:.0} s", started.elapsed().as_secs_f64());
    let path = write_json("sync", &records).map_err(|e| format!("writing JSON: {e}"))?;
    println!("wrote {}", path.display());
    for r in records.iter().filter(|r| r.error.is_some()) {
        eprintln!(
            "FAILED {} / {} / {}: {}",
            r.case,
            r.metric,
            r.subject,
            r.error.as_deref().unwrap_or_default()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_catchup_matches() {
        let c = catchup(catchup_source(10_000).unwrap()).unwrap();
        same_vvs(&c.a, &c.b).unwrap();
        let ratio = c.bytes as f64 / (10_000 * PAYLOAD) as f64;
        assert!(ratio < 1.5, "{ratio}");
    }

    #[test]
    fn topologies_are_connected() {
        for n in [3, 10, 50] {
            for t in [Topology::Ring, Topology::Random] {
                let e = edges(t, n);
                let mut seen = vec![false; n];
                seen[0] = true;
                for _ in 0..n {
                    for &(a, b) in &e {
                        if seen[a] || seen[b] {
                            seen[a] = true;
                            seen[b] = true;
                        }
                    }
                }
                assert!(seen.iter().all(|s| *s), "{t:?} {n}");
            }
        }
    }
}
