//! The `store` suite: converge's embedded store ([`RedbStore`]) against the
//! raw disk (the floor) and SQLite (rusqlite 0.41, bundled, WAL,
//! `synchronous=FULL`), all on the same disk in one run.
//!
//! Durable appends are time-boxed: every writer thread appends in a loop
//! while the coordinator samples a shared completion counter after a
//! [`WARMUP`] and over one [`WINDOW`], giving one ops/s sample. The disk's
//! sync cost drifts, so subjects take turns, one window each per round, and
//! the median over [`ROUNDS`] rounds is reported. Reads (a 1M-entry scan and
//! version-vector lookups) use the usual warm-up + `--runs` repetitions.
//! Every workload's result is checked (what was written is there, in order).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

use converge_store::{AppendRequest, Entry, RedbStore, ReplicaId, Store};
use rusqlite::{Connection, TransactionBehavior, params};

use crate::Options;
use crate::harness::{Record, time_runs, workspace_root, write_json};

const FLOOR: &str = "floor";
const CONVERGE: &str = "converge";
const SQLITE: &str = "sqlite";

/// Append calls per second (each call one durable commit for its caller).
const OPS: &str = "ops_per_s";
/// Payload megabytes (10^6) per second.
const MBS: &str = "mb_per_s";
/// Entries read per second.
const ENTRIES_PER_S: &str = "entries_per_s";
/// Latency percentiles of one lookup, in microseconds.
const P50: &str = "us_p50";
const P99: &str = "us_p99";
/// Group-commit batching seen by the store's writer (jobs / commits).
const PER_COMMIT: &str = "appends_per_commit";

/// Bytes per entry in every workload.
const ENTRY_BYTES: usize = 100;
/// Concurrent writers in the group-commit workload.
const WRITERS: usize = 16;
/// Entries per append in the batch workload.
const BATCH: usize = 100;
/// Objects per call in the `append-many` workload (one entry each), as a
/// node-wide committer gathers many clients' appends into one call.
const MANY: usize = 256;
/// Entries in the scanned log.
const SCAN_ENTRIES: u64 = 1_000_000;
/// Entries per append when loading the scanned log (untimed by the scan).
const LOAD_BATCH: u64 = 10_000;
/// Entries per `read` page when scanning.
const SCAN_PAGE: usize = 10_000;
/// Objects in the version-vector workload, and replicas per object.
const VV_OBJECTS: usize = 10_000;
const VV_REPLICAS: u64 = 4;
/// Threads loading the version-vector store (group commit makes it fast).
const VV_LOADERS: usize = 128;
/// Size and count of the writes in the bandwidth floor.
const BANDWIDTH_CHUNK: usize = 1 << 20;
const BANDWIDTH_CHUNKS: usize = 128;

/// Warm-up before the window of a time-boxed loop.
const WARMUP: Duration = Duration::from_millis(300);
/// Length of the window of a time-boxed loop (one sample).
const WINDOW: Duration = Duration::from_secs(2);
/// Rounds of the append workloads: every subject runs once per round.
const ROUNDS: usize = 5;

/// The rows of the table, in order, with what each subject does there.
const ROWS: &[(&str, &str)] = &[
    ("append-1-writer", OPS),
    ("append-16-writers", OPS),
    ("append-batch-100", OPS),
    ("append-many-256", OPS),
    ("fdatasync-preallocated", OPS),
    ("load-1m", MBS),
    ("scan-1m", ENTRIES_PER_S),
    ("version-vector-10k", P50),
    ("version-vector-10k", P99),
    ("append-1-writer", PER_COMMIT),
    ("append-16-writers", PER_COMMIT),
    ("append-batch-100", PER_COMMIT),
    ("append-many-256", PER_COMMIT),
];

/// The entry `seq` of a log: 100 bytes, the seq then a filler derived from it.
fn entry(seq: u64) -> Entry {
    let mut bytes = vec![(seq % 251) as u8; ENTRY_BYTES];
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    Entry::new(seq, bytes)
}

fn entries(first: u64, n: usize) -> Vec<Entry> {
    (first..first + n as u64).map(entry).collect()
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

// ---------------------------------------------------------------------------
// The time-boxed driver.

/// Runs `threads` workers for [`WARMUP`] then one [`WINDOW`], and returns
/// the rate of completed calls per second in the window.
///
/// Each worker builds its operation with `make(thread)` on its own thread
/// (so it may hold a per-thread connection), then calls it with 1, 2, 3...
/// until told to stop. The first error stops every worker and is returned.
fn windowed<F, W>(threads: usize, make: F) -> Result<Vec<f64>, String>
where
    F: Fn(usize) -> Result<W, String> + Sync,
    W: FnMut(u64) -> Result<(), String>,
{
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failure = Mutex::new(None::<String>);
    let fail = |e: String| {
        failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(e);
        stop.store(true, Ordering::Relaxed);
    };
    let ready = Barrier::new(threads + 1);
    let samples = std::thread::scope(|s| {
        for t in 0..threads {
            let (make, done, stop, fail, ready) = (&make, &done, &stop, &fail, &ready);
            s.spawn(move || {
                let op = make(t).map_err(fail).ok();
                ready.wait();
                let Some(mut op) = op else { return };
                let mut call = 0;
                while !stop.load(Ordering::Relaxed) {
                    call += 1;
                    if let Err(e) = op(call) {
                        fail(e);
                        return;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        ready.wait();
        std::thread::sleep(WARMUP);
        let (count, at) = (done.load(Ordering::Relaxed), Instant::now());
        std::thread::sleep(WINDOW);
        let (now_count, now) = (done.load(Ordering::Relaxed), Instant::now());
        stop.store(true, Ordering::Relaxed);
        vec![(now_count - count) as f64 / (now - at).as_secs_f64()]
    });
    match failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
        Some(e) => Err(e),
        None => Ok(samples),
    }
}

// ---------------------------------------------------------------------------
// The floor: the raw file.

/// Rate of `write(bytes)` + `fdatasync` on a plain file: appending to a file
/// that grows (`preallocated == false`, like a log), or overwriting the same
/// bytes of a preallocated file (no file-size metadata to sync).
fn floor_syncs(dir: &Path, bytes: usize, preallocated: bool) -> Result<Vec<f64>, String> {
    let path = dir.join(format!("floor-{bytes}-{preallocated}.bin"));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(err)?;
    if preallocated {
        file.write_all(&vec![0; 1 << 20]).map_err(err)?;
        file.sync_all().map_err(err)?;
    }
    let buf = vec![b'x'; bytes];
    let file = Mutex::new(file);
    let samples = windowed(1, |_| {
        let mut file = file.lock().map_err(err)?;
        let buf = &buf;
        Ok(move |_| {
            if preallocated {
                use std::os::unix::fs::FileExt as _;
                file.write_all_at(buf, 0).map_err(err)?;
            } else {
                file.write_all(buf).map_err(err)?;
            }
            file.sync_data().map_err(err)
        })
    });
    std::fs::remove_file(&path).map_err(err)?;
    samples
}

/// Buffered sequential write bandwidth: 128 writes of 1 MiB, then one
/// `fdatasync` (included: the bytes are on disk when the clock stops).
fn floor_bandwidth(dir: &Path, runs: usize) -> Result<Vec<f64>, String> {
    let path = dir.join("floor-bandwidth.bin");
    let chunk = vec![b'y'; BANDWIDTH_CHUNK];
    let mb = (BANDWIDTH_CHUNK * BANDWIDTH_CHUNKS) as f64 / 1e6;
    let ms = time_runs(
        runs,
        || File::create(&path),
        |file| -> Result<(), String> {
            let mut file = file.map_err(err)?;
            for _ in 0..BANDWIDTH_CHUNKS {
                file.write_all(&chunk).map_err(err)?;
            }
            file.sync_data().map_err(err)
        },
        |r| r.clone(),
    )?;
    std::fs::remove_file(&path).map_err(err)?;
    Ok(ms.into_iter().map(|ms| mb / (ms / 1e3)).collect())
}

// ---------------------------------------------------------------------------
// converge.

/// The object that thread `t` writes as its `i`th of `width` per call.
fn append_object(t: usize, i: usize, width: usize) -> String {
    if width == 1 {
        format!("obj-{t}")
    } else {
        format!("obj-{t}-{i:04}")
    }
}

/// Durable appends: `threads` writers, each to its own objects and replica,
/// `batch` entries per log per call; with `width` > 1, each call is one
/// `append_many` of `width` requests, one per object. Returns the rates (calls
/// per second) and the writer's batching.
fn converge_appends(
    dir: &Path,
    threads: usize,
    batch: usize,
    width: usize,
) -> Result<(Vec<f64>, f64), String> {
    let path = dir.join(format!("converge-append-{threads}-{batch}-{width}.redb"));
    let store = RedbStore::open(&path).map_err(err)?;
    let last: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
    let samples = windowed(threads, |t| {
        let (store, last) = (&store, &last[t]);
        let objects: Vec<String> = (0..width).map(|i| append_object(t, i, width)).collect();
        let replica = ReplicaId::from_u64(t as u64 + 1);
        Ok(move |call: u64| {
            let first = (call - 1) * batch as u64 + 1;
            let batch_entries = entries(first, batch);
            let appended: Vec<u64> = if width == 1 {
                vec![
                    store
                        .append(&objects[0], replica, &batch_entries)
                        .map_err(err)?
                        .appended,
                ]
            } else {
                let requests: Vec<AppendRequest<'_>> = objects
                    .iter()
                    .map(|o| AppendRequest::new(o, replica, &batch_entries))
                    .collect();
                store
                    .append_many(&requests)
                    .into_iter()
                    .map(|r| r.map(|o| o.appended))
                    .collect::<Result<_, _>>()
                    .map_err(err)?
            };
            if let Some(short) = appended.iter().find(|&&n| n != batch as u64) {
                return Err(format!("appended {short} of {batch}"));
            }
            last.store(first + batch as u64 - 1, Ordering::Relaxed);
            Ok(())
        })
    })?;
    for (t, last) in last.iter().enumerate() {
        let last = last.load(Ordering::Relaxed);
        let replica = ReplicaId::from_u64(t as u64 + 1);
        for i in 0..width {
            let object = append_object(t, i, width);
            let held = store.version_vector(&object).map_err(err)?.get(replica);
            if held != last {
                return Err(format!("{object}: holds seq {held}, wrote {last}"));
            }
            let tail = store.read(&object, replica, last, 1).map_err(err)?;
            if tail != [entry(last)] {
                return Err(format!("{object}: entry {last} reads back wrong"));
            }
        }
    }
    let stats = store.commit_stats();
    drop(store);
    converge_remove(&path)?;
    Ok((samples, stats.jobs as f64 / stats.commits.max(1) as f64))
}

/// The store for the scan: one log of [`SCAN_ENTRIES`], appended in batches
/// of [`LOAD_BATCH`] (the load rate is returned, in payload MB/s).
fn converge_load(path: &Path) -> Result<(RedbStore, f64), String> {
    let store = RedbStore::open(path).map_err(err)?;
    let replica = ReplicaId::from_u64(1);
    let start = Instant::now();
    for first in (1..=SCAN_ENTRIES).step_by(LOAD_BATCH as usize) {
        store
            .append("scan", replica, &entries(first, LOAD_BATCH as usize))
            .map_err(err)?;
    }
    let mb = (SCAN_ENTRIES as usize * ENTRY_BYTES) as f64 / 1e6;
    Ok((store, mb / start.elapsed().as_secs_f64()))
}

fn converge_scan(store: &RedbStore) -> Result<u64, String> {
    let replica = ReplicaId::from_u64(1);
    let mut next = 1;
    loop {
        let page = store.read("scan", replica, next, SCAN_PAGE).map_err(err)?;
        if page.is_empty() {
            return Ok(next - 1);
        }
        for e in &page {
            check_scanned(next, e.seq, &e.bytes)?;
            next += 1;
        }
    }
}

/// Checks one scanned entry (cheap: its seq and the seq in its bytes).
fn check_scanned(want: u64, seq: u64, bytes: &[u8]) -> Result<(), String> {
    let inner = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes);
    if seq == want && inner == Some(want) && bytes.len() == ENTRY_BYTES {
        Ok(())
    } else {
        Err(format!("scan: expected entry {want}, got seq {seq}"))
    }
}

/// How many entries the version-vector workload gives `replica` of object `o`.
fn vv_len(o: usize, replica: u64) -> u64 {
    1 + (o as u64 + replica) % 5
}

fn vv_object(o: usize) -> String {
    format!("obj-{o:05}")
}

fn converge_vv_store(path: &Path) -> Result<RedbStore, String> {
    let store = RedbStore::open(path).map_err(err)?;
    let failure = Mutex::new(None);
    std::thread::scope(|s| {
        for t in 0..VV_LOADERS {
            let (store, failure) = (&store, &failure);
            s.spawn(move || {
                for o in (t..VV_OBJECTS).step_by(VV_LOADERS) {
                    for r in 1..=VV_REPLICAS {
                        let batch = entries(1, vv_len(o, r) as usize);
                        let replica = ReplicaId::from_u64(r);
                        if let Err(e) = store.append(&vv_object(o), replica, &batch) {
                            *failure.lock().unwrap_or_else(PoisonError::into_inner) =
                                Some(e.to_string());
                            return;
                        }
                    }
                }
            });
        }
    });
    match failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
        Some(e) => Err(e),
        None => Ok(store),
    }
}

// ---------------------------------------------------------------------------
// SQLite.

const SQL_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS log (
    object TEXT NOT NULL,
    replica INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (object, replica, seq)
) WITHOUT ROWID;";
const SQL_INSERT: &str = "INSERT INTO log (object, replica, seq, data) VALUES (?1, ?2, ?3, ?4)";

/// A connection in WAL mode with `synchronous=FULL` (checked) and a long
/// busy timeout: concurrent writers wait for the write lock, never fail.
fn sqlite_open(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(60)).map_err(err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    let sync: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .map_err(err)?;
    if mode != "wal" || sync != 2 {
        return Err(format!("sqlite: journal_mode {mode}, synchronous {sync}"));
    }
    conn.execute_batch(SQL_SCHEMA).map_err(err)?;
    Ok(conn)
}

/// One append call: one `BEGIN IMMEDIATE` transaction inserting the batch.
fn sqlite_append(
    conn: &mut Connection,
    object: &str,
    replica: u64,
    batch: &[Entry],
) -> Result<(), String> {
    sqlite_append_many(conn, replica, &[(object, batch)])
}

/// One transaction inserting every (object, entries) request's rows.
fn sqlite_append_many(
    conn: &mut Connection,
    replica: u64,
    requests: &[(&str, &[Entry])],
) -> Result<(), String> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    {
        let mut insert = tx.prepare_cached(SQL_INSERT).map_err(err)?;
        for (object, batch) in requests {
            for e in *batch {
                insert
                    .execute(params![object, replica as i64, e.seq as i64, e.bytes])
                    .map_err(err)?;
            }
        }
    }
    tx.commit().map_err(err)
}

/// Removes a converge store: the database and its write-ahead log.
fn converge_remove(path: &Path) -> Result<(), String> {
    remove_with_suffixes(path, &["", "-wal"])
}

fn sqlite_remove(path: &Path) -> Result<(), String> {
    remove_with_suffixes(path, &["", "-wal", "-shm"])
}

fn remove_with_suffixes(path: &Path, suffixes: &[&str]) -> Result<(), String> {
    for suffix in suffixes {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
            _ => {}
        }
    }
    Ok(())
}

/// SQLite's side of [`converge_appends`]: each call is one `BEGIN IMMEDIATE`
/// transaction inserting `batch` rows into each of `width` objects.
fn sqlite_appends(
    dir: &Path,
    threads: usize,
    batch: usize,
    width: usize,
) -> Result<Vec<f64>, String> {
    let path = dir.join(format!("sqlite-append-{threads}-{batch}-{width}.db"));
    let check = sqlite_open(&path)?;
    let last: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
    let samples = windowed(threads, |t| {
        let mut conn = sqlite_open(&path)?;
        let last = &last[t];
        let objects: Vec<String> = (0..width).map(|i| append_object(t, i, width)).collect();
        let replica = t as u64 + 1;
        Ok(move |call: u64| {
            let first = (call - 1) * batch as u64 + 1;
            let batch_entries = entries(first, batch);
            let requests: Vec<(&str, &[Entry])> = objects
                .iter()
                .map(|o| (o.as_str(), batch_entries.as_slice()))
                .collect();
            sqlite_append_many(&mut conn, replica, &requests)?;
            last.store(first + batch as u64 - 1, Ordering::Relaxed);
            Ok(())
        })
    })?;
    for (t, last) in last.iter().enumerate() {
        let last = last.load(Ordering::Relaxed) as i64;
        for i in 0..width {
            let object = append_object(t, i, width);
            let (n, max): (i64, Option<i64>) = check
                .query_row(
                    "SELECT COUNT(*), MAX(seq) FROM log WHERE object = ?1 AND replica = ?2",
                    params![object, t as i64 + 1],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(err)?;
            if n != last || max.unwrap_or(0) != last {
                return Err(format!(
                    "{object}: holds {n} entries up to {max:?}, wrote {last}"
                ));
            }
        }
    }
    // Checkpoint so that removing the files is all the cleanup there is.
    check
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .map_err(err)?;
    drop(check);
    sqlite_remove(&path)?;
    Ok(samples)
}

fn sqlite_load(path: &Path) -> Result<(Connection, f64), String> {
    let mut conn = sqlite_open(path)?;
    let start = Instant::now();
    for first in (1..=SCAN_ENTRIES).step_by(LOAD_BATCH as usize) {
        sqlite_append(&mut conn, "scan", 1, &entries(first, LOAD_BATCH as usize))?;
    }
    let mb = (SCAN_ENTRIES as usize * ENTRY_BYTES) as f64 / 1e6;
    Ok((conn, mb / start.elapsed().as_secs_f64()))
}

/// The same paged scan as converge's `read`: pages of [`SCAN_PAGE`] entries
/// from the next seq, each row copied out as (seq, bytes).
fn sqlite_scan(conn: &Connection) -> Result<u64, String> {
    let mut page = conn
        .prepare_cached(
            "SELECT seq, data FROM log WHERE object = ?1 AND replica = ?2 AND seq >= ?3
             ORDER BY seq LIMIT ?4",
        )
        .map_err(err)?;
    let mut next = 1u64;
    loop {
        let rows: Vec<(i64, Vec<u8>)> = page
            .query_map(params!["scan", 1i64, next as i64, SCAN_PAGE as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(err)?
            .collect::<Result<_, _>>()
            .map_err(err)?;
        if rows.is_empty() {
            return Ok(next - 1);
        }
        for (seq, bytes) in &rows {
            check_scanned(next, *seq as u64, bytes)?;
            next += 1;
        }
    }
}

fn sqlite_vv_store(path: &Path) -> Result<Connection, String> {
    let mut conn = sqlite_open(path)?;
    let tx = conn.transaction().map_err(err)?;
    {
        let mut insert = tx.prepare_cached(SQL_INSERT).map_err(err)?;
        for o in 0..VV_OBJECTS {
            for r in 1..=VV_REPLICAS {
                for e in entries(1, vv_len(o, r) as usize) {
                    insert
                        .execute(params![vv_object(o), r as i64, e.seq as i64, e.bytes])
                        .map_err(err)?;
                }
            }
        }
    }
    tx.commit().map_err(err)?;
    Ok(conn)
}

const SQL_VV: &str = "SELECT replica, MAX(seq) FROM log WHERE object = ?1 GROUP BY replica";

// ---------------------------------------------------------------------------
// Version-vector latency.

/// A permutation of `0..n` (xorshift-driven Fisher–Yates), so lookups do not
/// walk the key space in order.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed | 1;
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Looks up every object once per run, in a fresh random order, timing each
/// lookup on its own; `lookup` returns the (replica, last seq) pairs, which
/// are checked outside the clock. Returns the p50 and p99 samples of each run.
fn vv_latency(
    runs: usize,
    mut lookup: impl FnMut(&str) -> Result<Vec<(u64, u64)>, String>,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let objects: Vec<String> = (0..VV_OBJECTS).map(vv_object).collect();
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let mut micros = Vec::with_capacity(VV_OBJECTS);
        for o in shuffled(VV_OBJECTS, 0x9e37_79b9 + run as u64) {
            let start = Instant::now();
            let vv = std::hint::black_box(lookup(&objects[o])?);
            micros.push(start.elapsed().as_secs_f64() * 1e6);
            let mut vv = vv;
            vv.sort_unstable();
            let want: Vec<(u64, u64)> = (1..=VV_REPLICAS).map(|r| (r, vv_len(o, r))).collect();
            if vv != want {
                return Err(format!(
                    "{}: version vector {vv:?}, expected {want:?}",
                    objects[o]
                ));
            }
        }
        if run > 0 {
            micros.sort_by(f64::total_cmp);
            p50.push(percentile(&micros, 0.50));
            p99.push(percentile(&micros, 0.99));
        }
    }
    Ok((p50, p99))
}

// ---------------------------------------------------------------------------
// The suite.

fn scan_rate(ms: Vec<f64>) -> Vec<f64> {
    ms.into_iter()
        .map(|ms| SCAN_ENTRIES as f64 / (ms / 1e3))
        .collect()
}

fn check_count(got: &Result<u64, String>) -> Result<(), String> {
    match got {
        Ok(n) if *n == SCAN_ENTRIES => Ok(()),
        Ok(n) => Err(format!("scan: read {n} entries, expected {SCAN_ENTRIES}")),
        Err(e) => Err(e.clone()),
    }
}

/// Pushes a record, and logs progress on stderr.
fn push(
    out: &mut Vec<Record>,
    case: &str,
    subject: &str,
    metric: &str,
    r: Result<Vec<f64>, String>,
) {
    let record = Record::new(case, subject, metric, r);
    match (&record.median, &record.error) {
        (Some(m), _) => eprintln!("  {case} / {subject}: {m:.1} {metric}"),
        (None, e) => eprintln!(
            "  {case} / {subject}: FAILED {}",
            e.as_deref().unwrap_or("")
        ),
    }
    out.push(record);
}

/// One append workload: its case name, writer threads, entries per log per
/// call, objects per call (1: `append`; more: one `append_many` request each).
type Shape = (&'static str, usize, usize, usize);

/// The durable-append workloads. The disk here is shared and its sync cost
/// drifts by several times within minutes, so the subjects take turns: each
/// round runs one window of every subject (fresh files, order rotated), and
/// each subject's median is over [`ROUNDS`] rounds.
fn append_cases(opts: &Options, dir: &Path, out: &mut Vec<Record>) {
    const SHAPES: [Shape; 4] = [
        ("append-1-writer", 1, 1, 1),
        ("append-16-writers", WRITERS, 1, 1),
        ("append-batch-100", 1, BATCH, 1),
        ("append-many-256", 1, 1, MANY),
    ];
    for (case, threads, batch, width) in SHAPES {
        if !opts.wants(case) {
            continue;
        }
        // (case, subject): the preallocated floor rides along with 1 writer.
        let mut turns: Vec<(&str, &str)> = vec![(case, CONVERGE), (case, SQLITE)];
        if threads == 1 {
            turns.insert(0, (case, FLOOR));
        }
        if threads == 1 && batch == 1 && width == 1 {
            turns.push(("fdatasync-preallocated", FLOOR));
        }
        let mut samples: Vec<Result<Vec<f64>, String>> = vec![Ok(Vec::new()); turns.len()];
        let mut per_commit = Vec::new();
        for round in 0..ROUNDS {
            for i in 0..turns.len() {
                let i = (i + round) % turns.len();
                let (turn_case, subject) = turns[i];
                let Ok(so_far) = &mut samples[i] else {
                    continue;
                };
                let got = match (turn_case, subject) {
                    ("fdatasync-preallocated", _) => floor_syncs(dir, ENTRY_BYTES, true),
                    (_, FLOOR) => floor_syncs(dir, batch * width * ENTRY_BYTES, false),
                    (_, CONVERGE) => converge_appends(dir, threads, batch, width).map(|(s, c)| {
                        per_commit.push(c);
                        s
                    }),
                    _ => sqlite_appends(dir, threads, batch, width),
                };
                match got {
                    Ok(s) => so_far.extend(s),
                    Err(e) => samples[i] = Err(e),
                }
            }
        }
        for ((turn_case, subject), got) in turns.into_iter().zip(samples) {
            push(out, turn_case, subject, OPS, got);
        }
        if !per_commit.is_empty() {
            push(out, case, CONVERGE, PER_COMMIT, Ok(per_commit));
        }
    }
}

fn scan_cases(opts: &Options, dir: &Path, out: &mut Vec<Record>) {
    if !opts.wants("load-1m") && !opts.wants("scan-1m") {
        return;
    }
    push(out, "load-1m", FLOOR, MBS, floor_bandwidth(dir, 3));
    let path = dir.join("converge-scan.redb");
    match converge_load(&path) {
        Ok((store, mbs)) => {
            push(out, "load-1m", CONVERGE, MBS, Ok(vec![mbs]));
            let ms = time_runs(opts.runs, || (), |()| converge_scan(&store), check_count);
            push(out, "scan-1m", CONVERGE, ENTRIES_PER_S, ms.map(scan_rate));
        }
        Err(e) => push(out, "load-1m", CONVERGE, MBS, Err(e)),
    }
    let _ = converge_remove(&path);
    let path = dir.join("sqlite-scan.db");
    match sqlite_load(&path) {
        Ok((conn, mbs)) => {
            push(out, "load-1m", SQLITE, MBS, Ok(vec![mbs]));
            let ms = time_runs(opts.runs, || (), |()| sqlite_scan(&conn), check_count);
            push(out, "scan-1m", SQLITE, ENTRIES_PER_S, ms.map(scan_rate));
        }
        Err(e) => push(out, "load-1m", SQLITE, MBS, Err(e)),
    }
    let _ = sqlite_remove(&path);
}

fn vv_cases(opts: &Options, dir: &Path, out: &mut Vec<Record>) {
    let case = "version-vector-10k";
    if !opts.wants(case) {
        return;
    }
    let mut both = |subject: &str, r: Result<(Vec<f64>, Vec<f64>), String>| match r {
        Ok((p50, p99)) => {
            push(out, case, subject, P50, Ok(p50));
            push(out, case, subject, P99, Ok(p99));
        }
        Err(e) => push(out, case, subject, P50, Err(e)),
    };
    let path = dir.join("converge-vv.redb");
    let r = converge_vv_store(&path).and_then(|store| {
        vv_latency(opts.runs, |object| {
            let vv = store.version_vector(object).map_err(err)?;
            Ok(vv.iter().map(|(r, seq)| (r.as_u64(), seq)).collect())
        })
    });
    both(CONVERGE, r);
    let _ = converge_remove(&path);
    let path = dir.join("sqlite-vv.db");
    let r = sqlite_vv_store(&path).and_then(|conn| {
        let mut query = conn.prepare_cached(SQL_VV).map_err(err)?;
        vv_latency(opts.runs, |object| {
            query
                .query_map([object], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })
                .map_err(err)?
                .collect::<Result<_, _>>()
                .map_err(err)
        })
    });
    both(SQLITE, r);
    let _ = sqlite_remove(&path);
}

/// Whether a larger value of `metric` is better.
fn higher_is_better(metric: &str) -> bool {
    !metric.starts_with("us_")
}

fn find<'a>(records: &'a [Record], case: &str, subject: &str, metric: &str) -> Option<&'a Record> {
    records
        .iter()
        .find(|r| r.case == case && r.subject == subject && r.metric == metric)
}

fn value(records: &[Record], case: &str, subject: &str, metric: &str) -> Option<f64> {
    find(records, case, subject, metric).and_then(|r| r.median)
}

fn cell(records: &[Record], case: &str, subject: &str, metric: &str) -> String {
    match find(records, case, subject, metric) {
        None => "–".to_owned(),
        Some(Record {
            median: Some(m), ..
        }) if *m >= 100.0 => format!("{m:.0}"),
        Some(Record {
            median: Some(m), ..
        }) => format!("{m:.2}"),
        Some(_) => "FAILED".to_owned(),
    }
}

/// The markdown table: one row per (case, metric), the three subjects, then
/// converge / floor and converge's speed-up over SQLite (> 1: converge faster).
pub(crate) fn markdown_table(records: &[Record]) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| case | metric | floor | converge | sqlite | converge/floor | converge vs sqlite |"
    );
    let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|");
    for &(case, metric) in ROWS {
        if [FLOOR, CONVERGE, SQLITE]
            .iter()
            .all(|s| find(records, case, s, metric).is_none())
        {
            continue;
        }
        let c = value(records, case, CONVERGE, metric);
        let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if x > 0.0 && y > 0.0 => format!("{:.2}×", x / y),
            _ => "–".to_owned(),
        };
        let to_floor = ratio(c, value(records, case, FLOOR, metric));
        let s = value(records, case, SQLITE, metric);
        let vs_sqlite = if higher_is_better(metric) {
            ratio(c, s)
        } else {
            ratio(s, c)
        };
        let _ = writeln!(
            t,
            "| {case} | {metric} | {} | {} | {} | {to_floor} | {vs_sqlite} |",
            cell(records, case, FLOOR, metric),
            cell(records, case, CONVERGE, metric),
            cell(records, case, SQLITE, metric),
        );
    }
    t
}

/// The team's targets, each met or missed, as markdown bullets.
fn targets(records: &[Record]) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let mut line = |what: &str, got: Option<f64>, want: f64| {
        let verdict = match got {
            Some(g) if g >= want => format!("{g:.2} (met, target ≥ {want})"),
            Some(g) => format!("{g:.2} (MISSED, target ≥ {want})"),
            None => "not measured".to_owned(),
        };
        let _ = writeln!(t, "- {what}: {verdict}");
    };
    let one = value(records, "append-1-writer", CONVERGE, OPS);
    let floor = value(records, "append-1-writer", FLOOR, OPS);
    let sixteen = value(records, "append-16-writers", CONVERGE, OPS);
    line(
        "1 writer / raw fdatasync rate",
        one.zip(floor).map(|(a, b)| a / b),
        0.8,
    );
    line(
        "16 writers / 1 writer",
        sixteen.zip(one).map(|(a, b)| a / b),
        8.0,
    );
    for &(case, metric) in ROWS {
        if metric == PER_COMMIT {
            continue;
        }
        let c = value(records, case, CONVERGE, metric);
        let s = value(records, case, SQLITE, metric);
        if c.is_none() && s.is_none() {
            continue;
        }
        let speedup = c.zip(s).map(|(c, s)| {
            if higher_is_better(metric) {
                c / s
            } else {
                s / c
            }
        });
        line(&format!("{case} ({metric}) vs sqlite"), speedup, 1.0);
    }
    t
}

/// The `store` suite's entry point.
pub(crate) fn run(opts: &Options) -> Result<(), String> {
    let parent = workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&parent).map_err(err)?;
    let dir = tempfile::Builder::new()
        .prefix("store-tmp-")
        .tempdir_in(&parent)
        .map_err(err)?;
    eprintln!("store suite: files under {}", dir.path().display());
    let started = Instant::now();
    let mut records = Vec::new();
    append_cases(opts, dir.path(), &mut records);
    scan_cases(opts, dir.path(), &mut records);
    vv_cases(opts, dir.path(), &mut records);
    println!(
        "## store: converge (RedbStore) vs SQLite (rusqlite 0.41, WAL, synchronous=FULL) \
         vs the raw disk\n"
    );
    println!(
        "Entries of {ENTRY_BYTES} B; files in {} (same disk for every subject). Durable appends: median of {ROUNDS} \
         rounds (subjects take turns; one {} s window after {} ms warm-up each); \
         reads: median of {} runs.\n",
        parent.display(),
        WINDOW.as_secs(),
        WARMUP.as_millis(),
        opts.runs,
    );
    print!("{}", markdown_table(&records));
    if let Some(f) = value(&records, "append-1-writer", FLOOR, OPS) {
        println!(
            "\nfdatasync of a growing file here: {:.2} ms per sync.",
            1e3 / f
        );
    }
    println!("\n### targets\n\n{}", targets(&records));
    println!("suite took {:.0} s", started.elapsed().as_secs_f64());
    let path = write_json("store", &records).map_err(|e| format!("writing JSON: {e}"))?;
    println!("wrote {}", path.display());
    for r in records.iter().filter(|r| r.error.is_some()) {
        eprintln!(
            "FAILED {} / {}: {}",
            r.case,
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
    fn shuffled_is_a_permutation() {
        let mut p = shuffled(1000, 7);
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn entries_carry_their_seq() {
        let e = entries(5, 3);
        assert_eq!(e.len(), 3);
        assert!(check_scanned(7, e[2].seq, &e[2].bytes).is_ok());
        assert!(check_scanned(6, e[2].seq, &e[2].bytes).is_err());
    }

    #[test]
    fn table_ratios_point_the_right_way() {
        let recs = [
            Record::new("append-1-writer", FLOOR, OPS, Ok(vec![400.0])),
            Record::new("append-1-writer", CONVERGE, OPS, Ok(vec![300.0])),
            Record::new("append-1-writer", SQLITE, OPS, Ok(vec![150.0])),
            Record::new("version-vector-10k", CONVERGE, P50, Ok(vec![2.0])),
            Record::new("version-vector-10k", SQLITE, P50, Ok(vec![4.0])),
        ];
        let t = markdown_table(&recs);
        assert!(
            t.contains("| append-1-writer | ops_per_s | 400 | 300 | 150 | 0.75× | 2.00× |"),
            "{t}"
        );
        assert!(
            t.contains("| version-vector-10k | us_p50 | – | 2.00 | 4.00 | – | 2.00× |"),
            "{t}"
        );
        let goals = targets(&recs);
        assert!(goals.contains("0.75 (MISSED, target ≥ 0.8)"), "{goals}");
    }
}
