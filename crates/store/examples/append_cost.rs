//! Drives durable appends from one thread, for profiling the append path
//! (`valgrind --tool=callgrind`): `append_cost DIR APPENDS ENTRIES_PER_APPEND`.
//! Prints the mean, p99 and slowest append (the slowest is usually the one
//! that found the log full and waited for a checkpoint), and how long the
//! clean close took (its final checkpoint). Put DIR on tmpfs to see CPU,
//! not the disk.
//!
//! `cargo run --release -p converge-store --example append_cost -- /dev/shm/x 10000 1`

use std::time::Instant;

use converge_store::{Entry, RedbStore, ReplicaId, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or("usage: DIR APPENDS ENTRIES")?);
    let appends: u64 = args.next().ok_or("usage: DIR APPENDS ENTRIES")?.parse()?;
    if appends == 0 {
        return Err("APPENDS must be at least 1".into());
    }
    let batch: u64 = args.next().ok_or("usage: DIR APPENDS ENTRIES")?.parse()?;
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("append-cost-{}.redb", std::process::id()));
    let store = RedbStore::open(&path)?;
    let replica = ReplicaId::from_u64(1);
    let started = Instant::now();
    let mut latencies = Vec::new();
    for call in 0..appends {
        let first = call * batch + 1;
        let entries: Vec<Entry> = (first..first + batch)
            .map(|seq| Entry::new(seq, vec![(seq % 251) as u8; 100]))
            .collect();
        let one = Instant::now();
        store.append("obj", replica, &entries)?;
        latencies.push(one.elapsed().as_secs_f64() * 1e6);
    }
    let elapsed = started.elapsed();
    let stats = store.commit_stats();
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = latencies.last().copied().unwrap_or(0.0);
    let closing = Instant::now();
    drop(store);
    println!(
        "{appends} appends of {batch}: {:.1} µs each (p99 {p99:.0} µs, max {max:.0} µs), {} commits; close {:.1} ms",
        elapsed.as_secs_f64() * 1e6 / appends as f64,
        stats.commits,
        closing.elapsed().as_secs_f64() * 1e3,
    );
    std::fs::remove_file(&path)?;
    let mut wal = path.into_os_string();
    wal.push("-wal");
    std::fs::remove_file(wal)?;
    Ok(())
}
