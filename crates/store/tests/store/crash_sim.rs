//! Crash testing in memory: appenders run until the simulated disk loses
//! power at a seeded moment; the store is reopened from what a real crash
//! would leave (the image as of the last completed sync), and every
//! acknowledged write must be there, intact, with the logs contiguous;
//! every acknowledged deletion must still be a tombstone. One thread
//! stores through `append_many`, several objects' appends per call: each of
//! its requests must be wholly present or wholly absent after the crash.

use std::collections::BTreeMap;
use std::sync::Mutex;

use converge_store::crash::CrashBackend;
use converge_store::{AppendRequest, RedbStore, ReplicaId, Store, StoreConfig, VersionVector};

use crate::util::{check_logs, entries};

const OBJECTS: [&str; 2] = ["left", "right"];

/// Highest acknowledged seq per (object, replica); an acknowledged deletion
/// is recorded under replica 0.
type Acked = BTreeMap<(String, ReplicaId), u64>;

const DELETED: ReplicaId = ReplicaId::from_u64(0);

/// The objects the `append_many` thread writes, several per call.
const MANY: [&str; 5] = ["many/0", "many/1", "many/2", "many/3", "many/4"];
/// The replica whose logs the `append_many` thread writes.
const MANY_REPLICA: ReplicaId = ReplicaId::from_u64(40);

/// Every request the `append_many` thread submitted since the last crash
/// (object, first seq, last seq), acknowledged or not.
type Submitted = Vec<(&'static str, u64, u64)>;

/// The `append_many` thread: calls of 1 to 6 requests over [`MANY`] (an
/// object may come twice in one call: the later request extends the log
/// past the earlier), 1 to 3 entries each, until the power goes.
fn append_many_until_power_loss(
    store: &RedbStore,
    backend: &CrashBackend,
    seed: u64,
    acked: &Mutex<Acked>,
    submitted: &Mutex<Submitted>,
) {
    let mut rng = fastrand::Rng::with_seed(seed * 31 + 99);
    let mut last: BTreeMap<&str, u64> = MANY
        .iter()
        .map(|o| {
            let held = store
                .version_vector(o)
                .map(|vv| vv.get(MANY_REPLICA))
                .unwrap_or(0);
            (*o, held)
        })
        .collect();
    loop {
        let mut planned = Vec::new();
        for _ in 0..rng.usize(1..=6) {
            let object = MANY[rng.usize(..MANY.len())];
            let first = last[object] + 1;
            let n = rng.u64(1..=3);
            last.insert(object, first + n - 1);
            planned.push((object, entries(object, MANY_REPLICA, first..=first + n - 1)));
        }
        let requests: Vec<AppendRequest<'_>> = planned
            .iter()
            .map(|(object, batch)| AppendRequest::new(object, MANY_REPLICA, batch))
            .collect();
        submitted.lock().unwrap().extend(
            planned
                .iter()
                .map(|(object, batch)| (*object, batch[0].seq, batch[batch.len() - 1].seq)),
        );
        let results = store.append_many(&requests);
        assert_eq!(results.len(), requests.len());
        for ((object, batch), result) in planned.iter().zip(&results) {
            match result {
                Ok(outcome) => {
                    assert_eq!(outcome.appended, batch.len() as u64, "seed {seed}");
                    acked.lock().unwrap().insert(
                        (object.to_string(), MANY_REPLICA),
                        batch[batch.len() - 1].seq,
                    );
                }
                Err(e) => {
                    assert!(
                        backend.is_down(),
                        "seed {seed}: append_many failed with the power on: {e}"
                    );
                    return;
                }
            }
        }
    }
}

fn run_until_power_loss(
    store: &RedbStore,
    backend: &CrashBackend,
    seed: u64,
    acked: &Mutex<Acked>,
    submitted: &Mutex<Submitted>,
) {
    std::thread::scope(|scope| {
        scope.spawn(|| append_many_until_power_loss(store, backend, seed, acked, submitted));
        for t in 0..3u64 {
            scope.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(seed * 31 + t);
                let object = OBJECTS[(t % 2) as usize];
                let replica = ReplicaId::from_u64(t + 1);
                let mut last = store
                    .version_vector(object)
                    .map(|vv| vv.get(replica))
                    .unwrap_or(0);
                loop {
                    let n = rng.u64(1..=3);
                    let batch = entries(object, replica, last + 1..=last + n);
                    if let Err(e) = store.append(object, replica, &batch) {
                        assert!(
                            backend.is_down(),
                            "seed {seed}: append failed with the power on: {e}"
                        );
                        return;
                    }
                    last += n;
                    acked
                        .lock()
                        .unwrap()
                        .insert((object.to_owned(), replica), last);
                    if t == 1 && rng.u8(..) < 10 {
                        // Now and then, write a short-lived object and delete it.
                        let doomed = format!("doomed/{seed}/{last}");
                        let done = store
                            .append(&doomed, replica, &entries(&doomed, replica, 1..=2))
                            .map_err(|e| e.to_string())
                            .and_then(|_| store.delete_object(&doomed).map_err(|e| e.to_string()));
                        if let Err(e) = done {
                            assert!(
                                backend.is_down(),
                                "seed {seed}: deletion failed with the power on: {e}"
                            );
                            return;
                        }
                        acked.lock().unwrap().insert((doomed, DELETED), 0);
                    }
                    if t == 0 && rng.u8(..) < 20 {
                        // Now and then, snapshot and compact what this thread wrote.
                        let horizon: VersionVector = [(replica, last / 2)].into_iter().collect();
                        let done = store
                            .put_snapshot(object, &horizon, b"snapshot")
                            .map_err(|e| e.to_string())
                            .and_then(|()| {
                                store.compact(object, &horizon).map_err(|e| e.to_string())
                            });
                        if let Err(e) = done {
                            assert!(
                                backend.is_down(),
                                "seed {seed}: compaction failed with the power on: {e}"
                            );
                            return;
                        }
                    }
                }
            });
        }
    });
}

#[test]
fn acknowledged_writes_survive_simulated_power_loss() {
    crash_loop(|backend, _| backend.crashed());
}

#[test]
fn acknowledged_writes_survive_torn_unsynced_writes() {
    crash_loop(|backend, seed| backend.crashed_torn(seed));
}

fn crash_loop(crash: impl Fn(&CrashBackend, u64) -> CrashBackend) {
    let acked = Mutex::new(Acked::new());
    let submitted = Mutex::new(Submitted::new());
    let mut backend = CrashBackend::new();
    // CONVERGE_CRASH_SEEDS runs more (or fewer) crashes than CI's 40.
    let seeds: u64 = std::env::var("CONVERGE_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    for seed in 0..seeds {
        let store =
            RedbStore::open_with_backends(backend.clone(), backend.wal(), StoreConfig::default())
                .unwrap_or_else(|e| panic!("seed {seed}: reopening after a crash failed: {e}"));
        // Check everything acknowledged so far, across all earlier crashes.
        for ((object, replica), seq) in acked.lock().unwrap().iter() {
            if *replica == DELETED {
                assert!(
                    store.is_deleted(object).unwrap(),
                    "seed {seed}: the deletion of {object} was acknowledged but is lost"
                );
                continue;
            }
            let held = store.version_vector(object).unwrap().get(*replica);
            assert!(
                held >= *seq,
                "seed {seed}: {object}/{replica} acked {seq}, holds {held}"
            );
        }
        // Each request of the last run's `append_many` calls is wholly there
        // or wholly gone: no log ends inside one.
        for (object, first, last) in submitted.lock().unwrap().drain(..) {
            let held = store
                .version_vector(object)
                .map_or(0, |vv| vv.get(MANY_REPLICA));
            assert!(
                held < first || held >= last,
                "seed {seed}: {object} holds seq {held}, inside the request {first}..={last}"
            );
        }
        store
            .verify()
            .unwrap_or_else(|e| panic!("seed {seed}: verify after a crash: {e}"));
        for object in OBJECTS.iter().chain(&MANY) {
            if store.version_vector(object).is_ok() {
                check_logs(&store, object);
            }
        }
        // Lose power after a seeded number of writes and syncs.
        let budget = fastrand::Rng::with_seed(seed).u64(5..400);
        backend.fail_after(budget);
        run_until_power_loss(&store, &backend, seed, &acked, &submitted);
        assert!(
            backend.is_down(),
            "seed {seed}: appenders stopped before the crash"
        );
        drop(store);
        backend = crash(&backend, seed);
    }
    let total: u64 = acked.lock().unwrap().values().sum();
    eprintln!("acked {total} entries over {seeds} crashes");
    assert!(
        total > 40,
        "too few acknowledged appends ({total}) to mean anything"
    );
    let many: u64 = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|((_, replica), _)| *replica == MANY_REPLICA)
        .map(|(_, seq)| seq)
        .sum();
    assert!(
        many > 40,
        "too few acknowledged append_many requests ({many} entries) to mean anything"
    );
}
