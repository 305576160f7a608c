//! Shows group commit at work: durable appends per second to a redb store in
//! a temporary directory, with 1, 4 and 16 appending threads, and how many
//! commits (disk syncs) they took. Not a benchmark: a quick look.
//!
//! `cargo run --release -p converge-store --example group_commit [THREADS...]`
//! (default 1 4 16; `CONVERGE_GROUP_COMMIT_SECS` sets each run's seconds).

use std::time::{Duration, Instant};

use converge_store::{Entry, RedbStore, ReplicaId, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("converge-group-commit-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut counts: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    if counts.is_empty() {
        counts = vec![1, 4, 16];
    }
    let secs: f64 = match std::env::var("CONVERGE_GROUP_COMMIT_SECS") {
        Ok(s) => s.parse()?,
        Err(_) => 1.0,
    };
    for (run, threads) in counts.into_iter().enumerate() {
        let path = dir.join(format!("store-{run}-{threads}.redb"));
        let store = RedbStore::open(&path)?;
        let run = Duration::from_secs_f64(secs);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for t in 0..threads {
                let store = &store;
                scope.spawn(move || {
                    let replica = ReplicaId::from_u64(t + 1);
                    let mut seq = 0;
                    while started.elapsed() < run {
                        seq += 1;
                        let entry = Entry::new(seq, vec![b'x'; 200]);
                        if let Err(e) = store.append("doc", replica, &[entry]) {
                            eprintln!("append failed: {e}");
                            return;
                        }
                    }
                });
            }
        });
        let elapsed = started.elapsed().as_secs_f64();
        let stats = store.commit_stats();
        println!(
            "{threads:>2} threads: {:>7.0} durable appends/s, {:>6.0} commits/s, {:.1} appends per commit",
            stats.jobs as f64 / elapsed,
            stats.commits as f64 / elapsed,
            stats.jobs as f64 / stats.commits.max(1) as f64,
        );
        drop(store);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
