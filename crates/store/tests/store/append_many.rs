//! `RedbStore::append_many`: one call is one job for the writer, so its
//! requests share one log record and one sync (and the sync of concurrent
//! appenders); a call too large for the log is one durable redb commit.
//! Either way each request is answered on its own.

use std::time::Duration;

use converge_store::crash::CrashBackend;
use converge_store::{AppendError, AppendRequest, Entry, RedbStore, ReplicaId, Store, StoreConfig};

use crate::util::{check_logs, entries};

const A: ReplicaId = ReplicaId::from_u64(0xa);

fn open(disk: &CrashBackend) -> RedbStore {
    RedbStore::open_with_backends(disk.database(), disk.wal(), StoreConfig::default()).unwrap()
}

fn objects(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("obj/{i:03}")).collect()
}

#[test]
fn one_call_is_one_log_write_and_one_sync() {
    let disk = CrashBackend::new();
    let store = open(&disk);
    store.append("warm", A, &entries("warm", A, 1..=1)).unwrap();
    let names = objects(200);
    let batches: Vec<Vec<Entry>> = names.iter().map(|o| entries(o, A, 1..=1)).collect();
    let requests: Vec<AppendRequest<'_>> = names
        .iter()
        .zip(&batches)
        .map(|(o, b)| AppendRequest::new(o, A, b))
        .collect();
    // The log's own writes and syncs: the applier's redb commits, in the
    // background, may sync the database file when it grows.
    let (stats, log) = (store.commit_stats(), disk.wal().file_io());
    let results = store.append_many(&requests);
    let after = disk.wal().file_io();
    assert_eq!(
        after.writes - log.writes,
        1,
        "one log write for the whole call"
    );
    assert_eq!(
        after.syncs - log.syncs,
        1,
        "one log sync for the whole call"
    );
    let after = store.commit_stats();
    assert_eq!(
        (after.jobs - stats.jobs, after.commits - stats.commits),
        (1, 1)
    );
    // Feed positions follow the request order.
    for (i, result) in results.iter().enumerate() {
        let outcome = result.as_ref().unwrap();
        assert_eq!(outcome.appended, 1);
        assert_eq!(outcome.position, Some(2 + i as u64));
    }
    // Acknowledged means durable: a crash right now keeps every request.
    let crashed = disk.crashed();
    drop(store);
    let store = open(&crashed);
    for name in &names {
        assert_eq!(check_logs(&store, name).get(A), 1, "{name}");
    }
    assert_eq!(store.feed_head().unwrap(), 201);
    store.verify().unwrap();
}

#[test]
fn a_call_too_large_for_the_log_is_one_database_commit() {
    // 24 requests of 64 KiB entries: a record over the log's 1 MiB limit,
    // so the call is committed to redb durably, still answered per request.
    let disk = CrashBackend::new();
    let store = open(&disk);
    let names = objects(24);
    let big = |seq: u64| vec![Entry::new(seq, vec![seq as u8; 64 << 10])];
    let mut batches: Vec<(String, Vec<Entry>)> =
        names.iter().map(|o| (o.clone(), big(1))).collect();
    batches.push((names[0].clone(), big(3))); // a gap
    batches.push((names[1].clone(), big(2))); // extends an earlier request
    let mut conflict = big(1);
    conflict[0].bytes[0] ^= 1;
    batches.push((names[2].clone(), conflict));
    let requests: Vec<AppendRequest<'_>> = batches
        .iter()
        .map(|(o, b)| AppendRequest::new(o, A, b))
        .collect();
    let results = store.append_many(&requests);
    assert_eq!(results.len(), 27);
    assert!(
        results[..24]
            .iter()
            .all(|r| r.as_ref().unwrap().appended == 1)
    );
    assert!(
        matches!(results[24], Err(AppendError::Gap { .. })),
        "{:?}",
        results[24]
    );
    assert_eq!(results[25].as_ref().unwrap().position, Some(25));
    assert!(
        matches!(results[26], Err(AppendError::Conflict { .. })),
        "{:?}",
        results[26]
    );
    let crashed = disk.crashed();
    drop(store);
    let store = open(&crashed);
    let held: Vec<u64> = names
        .iter()
        .map(|o| store.version_vector(o).unwrap().get(A))
        .collect();
    assert_eq!(held[..3], [1, 2, 1]);
    assert!(held[3..].iter().all(|&h| h == 1));
    assert_eq!(store.read(&names[2], A, 1, 1).unwrap(), big(1));
    store.verify().unwrap();
}

#[test]
fn append_many_shares_syncs_with_concurrent_appenders() {
    const ROUNDS: u64 = 12;
    let disk = CrashBackend::new();
    let store = open(&disk);
    // A slow disk, so that the callers pile up behind each sync.
    disk.set_sync_delay(Duration::from_millis(3));
    let names = objects(40);
    let stats = store.commit_stats();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let store = &store;
            scope.spawn(move || {
                let replica = ReplicaId::from_u64(100 + t);
                for seq in 1..=ROUNDS {
                    store
                        .append("single", replica, &entries("single", replica, seq..=seq))
                        .unwrap();
                }
            });
        }
        let (store, names) = (&store, &names);
        scope.spawn(move || {
            for seq in 1..=ROUNDS {
                let batches: Vec<Vec<Entry>> =
                    names.iter().map(|o| entries(o, A, seq..=seq)).collect();
                let requests: Vec<AppendRequest<'_>> = names
                    .iter()
                    .zip(&batches)
                    .map(|(o, b)| AppendRequest::new(o, A, b))
                    .collect();
                for result in store.append_many(&requests) {
                    assert_eq!(result.unwrap().appended, 1);
                }
            }
        });
    });
    let after = store.commit_stats();
    let (jobs, commits) = (after.jobs - stats.jobs, after.commits - stats.commits);
    assert_eq!(jobs, 5 * ROUNDS, "one job per append_many call");
    assert!(
        commits * 2 <= jobs,
        "{jobs} jobs took {commits} commits: append_many does not join the group commit"
    );
    for name in &names {
        assert_eq!(check_logs(&store, name).get(A), ROUNDS);
    }
    assert!(
        check_logs(&store, "single")
            .iter()
            .all(|(_, last)| last == ROUNDS)
    );
    store.verify().unwrap();
}

#[test]
fn bad_requests_are_refused_before_the_writer_and_change_nothing() {
    let disk = CrashBackend::new();
    let store = open(&disk);
    let good = entries("ok", A, 1..=2);
    let skipping = vec![Entry::new(1, b"a".to_vec()), Entry::new(3, b"b".to_vec())];
    let zero = vec![Entry::new(0, b"z".to_vec())];
    let long = "x".repeat(2000);
    let syncs = disk.syncs();
    let log = disk.wal().file_io();
    let results = store.append_many(&[
        AppendRequest::new("ok", A, &skipping),
        AppendRequest::new("", A, &good),
        AppendRequest::new("ok", A, &zero),
        AppendRequest::new(&long, A, &good),
        AppendRequest::new("empty", A, &[]),
    ]);
    assert!(matches!(
        results[0],
        Err(AppendError::NotConsecutive { .. })
    ));
    assert!(
        matches!(results[1], Err(AppendError::ObjectId(_))),
        "{:?}",
        results[1]
    );
    assert!(matches!(results[2], Err(AppendError::ZeroSeq { .. })));
    assert!(results[3].is_err());
    assert_eq!(results[4].as_ref().unwrap().appended, 0);
    assert_eq!(disk.syncs(), syncs, "nothing to make durable");
    assert_eq!(disk.wal().file_io(), log, "nothing written to the log");
    assert_eq!(store.feed_head().unwrap(), 0);
    assert!(store.list_objects("", None, 10).unwrap().is_empty());
    assert!(store.append_many(&[]).is_empty());
}
