//! Drives `append_many` from one thread, as a node-wide committer would, for
//! profiling its per-request cost (`valgrind --tool=callgrind`):
//! `append_many_cost DIR CALLS REQUESTS MODE`. Each call appends one 100-byte
//! entry to each of REQUESTS objects: with MODE `many` as one `append_many`
//! call, with MODE `single` as REQUESTS separate `append` calls (the
//! baseline). Prints the time per request. Put DIR on tmpfs to see CPU, not
//! the disk.
//!
//! `cargo run --release -p converge-store --example append_many_cost -- /dev/shm/x 200 256 many`

use std::time::Instant;

use converge_store::{AppendRequest, Entry, RedbStore, ReplicaId, Store};

const USAGE: &str = "usage: DIR CALLS REQUESTS many|single";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or(USAGE)?);
    let calls: u64 = args.next().ok_or(USAGE)?.parse()?;
    let width: usize = args.next().ok_or(USAGE)?.parse()?;
    let many = match args.next().as_deref() {
        Some("many") => true,
        Some("single") => false,
        _ => return Err(USAGE.into()),
    };
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("append-many-cost-{}.redb", std::process::id()));
    let store = RedbStore::open(&path)?;
    let replica = ReplicaId::from_u64(1);
    let objects: Vec<String> = (0..width).map(|i| format!("obj-{i:05}")).collect();
    let started = Instant::now();
    for seq in 1..=calls {
        let batch = [Entry::new(seq, vec![(seq % 251) as u8; 100])];
        if many {
            let requests: Vec<AppendRequest<'_>> = objects
                .iter()
                .map(|o| AppendRequest::new(o, replica, &batch))
                .collect();
            for result in store.append_many(&requests) {
                result?;
            }
        } else {
            for object in &objects {
                store.append(object, replica, &batch)?;
            }
        }
    }
    let elapsed = started.elapsed();
    let stats = store.commit_stats();
    drop(store);
    let requests = calls * width as u64;
    println!(
        "{calls} calls × {width} requests ({}): {:.2} µs per request, {} commits",
        if many { "append_many" } else { "append" },
        elapsed.as_secs_f64() * 1e6 / requests as f64,
        stats.commits,
    );
    std::fs::remove_file(&path)?;
    let mut wal = path.into_os_string();
    wal.push("-wal");
    std::fs::remove_file(wal)?;
    Ok(())
}
