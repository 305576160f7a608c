//! Model-based test: random operation sequences (valid appends, re-deliveries,
//! overlaps, gaps, conflicts, snapshots, compactions, deletions, reads,
//! listings) run
//! against the memory store and the redb store side by side; every answer
//! must be the same, and so must the final state after a reopen.

use converge_store::crash::CrashBackend;
use converge_store::{Entry, MemoryStore, RedbStore, ReplicaId, Store, StoreConfig, VersionVector};

const OBJECTS: [&str; 4] = ["a", "a/b", "c", "d"];

fn bytes(replica: ReplicaId, seq: u64, forged: bool) -> Vec<u8> {
    format!("{replica}/{seq}{}", if forged { "!" } else { "" }).into_bytes()
}

/// A comparable summary of a result: the value, or the error's variant name.
fn outcome<T: std::fmt::Debug, E: std::fmt::Debug>(result: Result<T, E>) -> String {
    match result {
        Ok(value) => format!("ok {value:?}"),
        Err(error) => {
            let debug = format!("{error:?}");
            let variant = debug.split([' ', '(', '{']).next().unwrap_or_default();
            format!("err {variant}")
        }
    }
}

fn run(seed: u64, memory: &MemoryStore, redb: &RedbStore) {
    let mut rng = fastrand::Rng::with_seed(seed);
    for step in 0..150 {
        let object = OBJECTS[rng.usize(..OBJECTS.len())];
        let replica = ReplicaId::from_u64(rng.u64(1..=3));
        let head = memory
            .version_vector(object)
            .map(|vv| vv.get(replica))
            .unwrap_or(0);
        let (what, a, b) = match rng.u8(..11) {
            0..=4 => {
                // Mostly valid appends, sometimes overlapping, gapped or forged.
                let start = match rng.u8(..6) {
                    0 => head.saturating_sub(rng.u64(0..3)).max(1),
                    1 => head + 2,
                    _ => head + 1,
                };
                let forged = rng.u8(..8) == 0;
                let batch: Vec<Entry> = (start..start + rng.u64(0..4))
                    .map(|seq| Entry::new(seq, bytes(replica, seq, forged && seq <= head)))
                    .collect();
                (
                    format!("append {object} {replica} {batch:?}"),
                    outcome(memory.append(object, replica, &batch)),
                    outcome(redb.append(object, replica, &batch)),
                )
            }
            5 => {
                let from = rng.u64(0..head + 3);
                let limit = rng.usize(0..5);
                (
                    format!("read {object} {replica} {from} {limit}"),
                    outcome(memory.read(object, replica, from, limit)),
                    outcome(redb.read(object, replica, from, limit)),
                )
            }
            6 => {
                let vv: VersionVector = memory
                    .version_vector(object)
                    .map(|vv| {
                        vv.iter()
                            .map(|(r, s)| (r, s.saturating_sub(rng.u64(0..2))))
                            .collect()
                    })
                    .unwrap_or_default();
                let vv = if rng.bool() {
                    let mut ahead = vv;
                    ahead.set(replica, head + rng.u64(0..3));
                    ahead
                } else {
                    vv
                };
                (
                    format!("put_snapshot {object} {vv:?}"),
                    outcome(memory.put_snapshot(object, &vv, b"state")),
                    outcome(redb.put_snapshot(object, &vv, b"state")),
                )
            }
            7 => {
                let horizon: VersionVector =
                    [(replica, rng.u64(0..head + 2))].into_iter().collect();
                (
                    format!("compact {object} {horizon:?}"),
                    outcome(memory.compact(object, &horizon)),
                    outcome(redb.compact(object, &horizon)),
                )
            }
            // Rare, so that most objects live long enough to matter.
            10 if rng.u8(..4) == 0 => (
                format!("delete_object {object}"),
                outcome(memory.delete_object(object)),
                outcome(redb.delete_object(object)),
            ),
            8 | 10 => (
                format!("version_vector/latest_snapshot {object}"),
                outcome(memory.version_vector(object)) + &outcome(memory.latest_snapshot(object)),
                outcome(redb.version_vector(object)) + &outcome(redb.latest_snapshot(object)),
            ),
            _ => {
                let after = rng.u64(0..40);
                (
                    format!("changes_since {after} / list_objects"),
                    outcome(memory.changes_since(after, 5))
                        + &outcome(memory.list_objects("a", None, 2))
                        + &outcome(memory.list_tombstones("", None, 5)),
                    outcome(redb.changes_since(after, 5))
                        + &outcome(redb.list_objects("a", None, 2))
                        + &outcome(redb.list_tombstones("", None, 5)),
                )
            }
        };
        assert_eq!(a, b, "seed {seed}, step {step}: {what}");
    }
}

#[test]
fn memory_and_redb_agree_on_random_operations() {
    for seed in 0..12 {
        let memory = MemoryStore::new();
        let backend = CrashBackend::new();
        let redb =
            RedbStore::open_with_backends(backend.clone(), backend.wal(), StoreConfig::default())
                .unwrap();
        run(seed, &memory, &redb);
        drop(redb);
        // Reopened from what was synced, the redb store holds the same state.
        let redb = {
            let crashed = backend.crashed();
            RedbStore::open_with_backends(crashed.clone(), crashed.wal(), StoreConfig::default())
        }
        .unwrap();
        redb.verify().unwrap();
        assert_eq!(
            outcome(memory.changes_since(0, 10_000)),
            outcome(redb.changes_since(0, 10_000)),
            "seed {seed}: change feeds differ after reopen"
        );
        for object in OBJECTS {
            assert_eq!(
                outcome(memory.version_vector(object)),
                outcome(redb.version_vector(object)),
                "seed {seed}: {object}"
            );
            assert_eq!(
                outcome(memory.tombstone(object)),
                outcome(redb.tombstone(object)),
                "seed {seed}: {object}"
            );
        }
    }
}
