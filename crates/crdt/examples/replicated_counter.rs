//! Three replicas of a PN-counter (say, likes minus dislikes) exchanging
//! only deltas, over a lossy, duplicating link; a final anti-entropy round
//! of full states repairs what was lost.
//!
//! Run: `cargo run -p converge-crdt --example replicated_counter`

use converge_crdt::{Crdt, PNCounter, ReplicaId};

fn main() {
    let ids: Vec<ReplicaId> = (1..=3).map(ReplicaId::from_u64).collect();
    let mut replicas: Vec<PNCounter> = vec![PNCounter::new(); 3];
    let mut expected = 0i64;
    // A tiny deterministic PRNG (xorshift) so the run is repeatable.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut sent, mut lost, mut duplicated) = (0, 0, 0);
    for _ in 0..1000 {
        let from = (next() % 3) as usize;
        let by = (next() % 11) as i64 - 4;
        expected += by;
        let delta = replicas[from].add(ids[from], by);
        for to in (0..3).filter(|t| *t != from) {
            sent += 1;
            match next() % 10 {
                0 => lost += 1, // dropped on the floor
                1 => {
                    duplicated += 1;
                    replicas[to].merge(&delta);
                    replicas[to].merge(&delta);
                }
                _ => replicas[to].merge(&delta),
            }
        }
    }
    println!("1000 updates; {sent} deltas sent, {lost} lost, {duplicated} delivered twice");
    for (i, r) in replicas.iter().enumerate() {
        println!("  replica {} sees {:>5} (before repair)", ids[i], r.value());
    }
    // Anti-entropy: everyone merges everyone's full state once.
    let snapshot = replicas.clone();
    for r in &mut replicas {
        for s in &snapshot {
            r.merge(s);
        }
    }
    for (i, r) in replicas.iter().enumerate() {
        println!("  replica {} sees {:>5} (after repair)", ids[i], r.value());
    }
    assert!(replicas.iter().all(|r| r.value() == i128::from(expected)));
    println!("all replicas agree on {expected}, the true total");
}
