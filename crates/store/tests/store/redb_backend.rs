//! The redb backend: the conformance suite, and what is specific to a file:
//! format versioning, foreign files, locking, checksums, group commit.

use std::time::Duration;

use converge_store::conformance::Subject;
use converge_store::crash::CrashBackend;
use converge_store::format::{FORMAT_VERSION, decode_meta, encode_meta};
use converge_store::{
    AppendError, Entry, ReadError, RedbStore, ReplicaId, Store, StoreConfig, StoreError,
};
use redb::{ReadableTable, TableDefinition};

use crate::util::{LOG, TempRedb, check_logs, downgrade_log_to_entry_rows, entries, payload};

converge_store::conformance_tests!(TempRedb::fresh);

#[test]
fn reads_are_capped_by_size() {
    converge_store::conformance::reads_are_capped_by_size(&|config| {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open_with(dir.path().join("store.redb"), config).unwrap();
        TempRedb {
            store: Some(store),
            dir,
        }
    });
}

const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const A: ReplicaId = ReplicaId::from_u64(0xa);

/// Runs `change` on the raw redb database under a closed store.
fn tamper(path: &std::path::Path, change: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    change(&txn);
    txn.commit().unwrap();
}

/// Damages the chunk record that holds entry `seq` (the last chunk that
/// starts at or before it).
fn flip_last_byte_of_chunk_holding(
    path: &std::path::Path,
    object: &str,
    replica: ReplicaId,
    seq: u64,
) {
    tamper(path, |txn| {
        let mut log = txn.open_table(LOG).unwrap();
        let r = replica.as_u64();
        let (key, mut record) = {
            let (key, record) = log
                .range((object, r, 0)..=(object, r, seq))
                .unwrap()
                .next_back()
                .unwrap()
                .unwrap();
            (key.value().2, record.value().to_vec())
        };
        *record.last_mut().unwrap() ^= 0x01;
        log.insert((object, r, key), record.as_slice()).unwrap();
    });
}

#[test]
fn unknown_format_version_is_refused() {
    let mut temp = TempRedb::fresh();
    let path = temp.path();
    drop(temp.store.take());
    tamper(&path, |txn| {
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("format", encode_meta(99).as_slice()).unwrap();
    });
    match RedbStore::open(&path) {
        Err(
            e @ StoreError::UnsupportedFormat {
                found: 99,
                supported: FORMAT_VERSION,
            },
        ) => {
            assert!(e.to_string().contains("format version 99"), "{e}");
        }
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
    drop(temp);
}

/// A version 1 file (before tombstones) opens, keeps its data, and is
/// upgraded in place to the current version.
#[test]
fn a_version_1_store_is_upgraded_on_open() {
    let mut temp = TempRedb::fresh();
    let path = temp.path();
    temp.store()
        .append("doc", A, &entries("doc", A, 1..=3))
        .unwrap();
    drop(temp.store.take());
    let tombstones: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tombstones");
    tamper(&path, |txn| {
        downgrade_log_to_entry_rows(txn);
        assert!(txn.delete_table(tombstones).unwrap());
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("format", encode_meta(1).as_slice()).unwrap();
    });
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(
        store.read("doc", A, 1, 10).unwrap(),
        entries("doc", A, 1..=3)
    );
    store.delete_object("doc").unwrap();
    assert!(store.is_deleted("doc").unwrap());
    store.verify().unwrap();
    drop(store);
    let db = redb::Database::open(&path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let meta = txn.open_table(META).unwrap();
    let record = meta.get("format").unwrap().unwrap();
    assert_eq!(
        decode_meta(record.value()),
        converge_store::format::Meta::Store {
            version: FORMAT_VERSION
        }
    );
    drop(temp);
}

/// Deletion reclaims every record of the object: the log table holds only
/// the other objects' entries, and `verify` accounts for the tombstone.
#[test]
fn deletion_reclaims_the_log_and_verifies() {
    let temp = TempRedb::fresh();
    let store = temp.store();
    store.append("doc", A, &entries("doc", A, 1..=50)).unwrap();
    store.append("keep", A, &entries("keep", A, 1..=5)).unwrap();
    let before = temp.store.as_ref().unwrap().verify().unwrap();
    assert_eq!(before.entries, 55);
    let outcome = store.delete_object("doc").unwrap();
    assert_eq!(outcome.dropped, 50);
    let after = temp.store.as_ref().unwrap().verify().unwrap();
    assert_eq!(
        (after.objects, after.logs, after.entries, after.tombstones),
        (1, 1, 5, 1)
    );
    drop(temp);
}

#[test]
fn damaged_meta_record_is_refused() {
    let mut temp = TempRedb::fresh();
    let path = temp.path();
    drop(temp.store.take());
    tamper(&path, |txn| {
        let mut meta = txn.open_table(META).unwrap();
        let mut record = encode_meta(1);
        record[0] = b'X';
        meta.insert("format", record.as_slice()).unwrap();
    });
    assert!(matches!(
        RedbStore::open(&path),
        Err(StoreError::NotAStore { .. })
    ));
    drop(temp);
}

#[test]
fn foreign_files_are_not_stores() {
    let dir = tempfile::tempdir().unwrap();
    // A redb database of another application.
    let other = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&other).unwrap();
        let txn = db.begin_write().unwrap();
        let users: TableDefinition<'_, u64, u64> = TableDefinition::new("users");
        txn.open_table(users).unwrap().insert(1, 2).unwrap();
        txn.commit().unwrap();
    }
    match RedbStore::open(&other) {
        Err(e @ StoreError::NotAStore { .. }) => {
            assert!(e.to_string().contains("users"), "{e}");
        }
        other => panic!("expected NotAStore, got {other:?}"),
    }
    // A file that is no database at all.
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello, this is not a database\n".repeat(300)).unwrap();
    let opened = RedbStore::open(&text);
    assert!(
        matches!(opened, Err(StoreError::NotAStore { .. })),
        "{opened:?}"
    );
}

#[test]
fn a_second_open_is_locked() {
    let temp = TempRedb::fresh();
    match RedbStore::open(temp.path()) {
        Err(e @ StoreError::Locked { .. }) => {
            assert!(e.to_string().contains("already open"), "{e}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn configured_entry_limit_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::default().with_max_entry_bytes(10);
    let store = RedbStore::open_with(dir.path().join("s.redb"), config).unwrap();
    store.append("o", A, &[Entry::new(1, vec![7; 10])]).unwrap();
    assert!(matches!(
        store.append("o", A, &[Entry::new(2, vec![7; 11])]),
        Err(AppendError::EntryTooLarge {
            len: 11,
            max: 10,
            ..
        })
    ));
    assert_eq!(store.version_vector("o").unwrap().get(A), 1);
}

#[test]
fn damaged_tail_is_detected_on_open() {
    let mut temp = TempRedb::fresh();
    temp.store()
        .append("doc", A, &entries("doc", A, 1..=5))
        .unwrap();
    drop(temp.store.take());
    flip_last_byte_of_chunk_holding(&temp.path(), "doc", A, 5);
    match RedbStore::open(temp.path()) {
        Err(e @ StoreError::Corrupt { .. }) => {
            assert!(e.to_string().contains("checksum"), "{e}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn damaged_chunk_is_never_served() {
    let mut temp = TempRedb::fresh();
    // Two appends: entries 1 and 2 in one chunk, 3 in another.
    temp.store()
        .append("doc", A, &entries("doc", A, 1..=2))
        .unwrap();
    temp.store()
        .append("doc", A, &entries("doc", A, 3..=3))
        .unwrap();
    // Enough later writes that the damaged entry is outside the tail checked on open.
    for seq in 1..=80 {
        temp.store()
            .append("later", A, &entries("later", A, seq..=seq))
            .unwrap();
    }
    drop(temp.store.take());
    flip_last_byte_of_chunk_holding(&temp.path(), "doc", A, 2);
    let temp = temp.reopen();
    let store = temp.store();
    // The damaged chunk fails as a whole: neither of its entries is served.
    for from in [1, 2] {
        assert!(matches!(
            store.read("doc", A, from, 10),
            Err(ReadError::Store(StoreError::Corrupt { .. }))
        ));
    }
    assert_eq!(
        store.read("doc", A, 3, 10).unwrap(),
        entries("doc", A, 3..=3)
    );
    // A re-delivery cannot be compared with a damaged entry: reported, not accepted.
    assert!(matches!(
        store.append("doc", A, &entries("doc", A, 2..=4)),
        Err(AppendError::Store(StoreError::Corrupt { .. }))
    ));
    assert_eq!(store.version_vector("doc").unwrap().get(A), 3);
    // The rest of the store keeps working.
    store
        .append("later", A, &entries("later", A, 81..=81))
        .unwrap();
    check_logs(store, "later");
    // The damaged chunk does not stop its log being compacted past it, or
    // its object being deleted: a chunk wholly dropped is not read.
    let horizon = [(A, 2)].into_iter().collect();
    store.put_snapshot("doc", &horizon, b"snap").unwrap();
    store.compact("doc", &horizon).unwrap();
    assert_eq!(
        store.read("doc", A, 3, 10).unwrap(),
        entries("doc", A, 3..=3)
    );
    store.delete_object("doc").unwrap();
    assert!(matches!(
        store.read("doc", A, 3, 10),
        Err(ReadError::Deleted { .. })
    ));
}

#[test]
fn verify_reports_its_progress_up_to_what_it_checked() {
    let temp = TempRedb::fresh();
    let store = temp.store.as_ref().unwrap();
    // Over two pages of one log, so progress is reported along the way.
    for first in (1..=2500).step_by(500) {
        store
            .append("big", A, &entries("big", A, first..=first + 499))
            .unwrap();
    }
    store
        .append("small", A, &entries("small", A, 1..=3))
        .unwrap();
    let mut seen = Vec::new();
    let report = store.verify_with_progress(&mut |p| seen.push(p)).unwrap();
    assert_eq!(report, store.verify().unwrap());
    let first = seen.first().copied().unwrap();
    let last = seen.last().copied().unwrap();
    assert_eq!((first.entries, first.feed_items), (0, 0));
    assert_eq!((first.entries_total, first.feed_items_total), (2503, 6));
    assert_eq!((last.entries, last.feed_items), (2503, 6));
    assert!(seen.len() >= 4, "{seen:?}");
    assert!(
        seen.windows(2)
            .all(|w| w[0].entries <= w[1].entries && w[0].feed_items <= w[1].feed_items),
        "{seen:?}"
    );
}

#[test]
fn verify_checks_the_whole_store() {
    let mut temp = TempRedb::fresh();
    let b = ReplicaId::from_u64(0xb);
    let store = temp.store();
    store.append("doc", A, &entries("doc", A, 1..=10)).unwrap();
    store.append("doc", b, &entries("doc", b, 1..=3)).unwrap();
    store
        .append("other", A, &entries("other", A, 1..=2))
        .unwrap();
    let horizon = [(A, 4)].into_iter().collect();
    store.put_snapshot("doc", &horizon, b"snap").unwrap();
    store.compact("doc", &horizon).unwrap();
    let report = temp.store.as_ref().unwrap().verify().unwrap();
    assert_eq!(
        (
            report.objects,
            report.logs,
            report.entries,
            report.feed_items,
            report.snapshots
        ),
        (2, 3, 6 + 3 + 2, 3, 1)
    );
    drop(temp.store.take());

    // Each kind of damage, each on a fresh copy of the file.
    let pristine = std::fs::read(temp.path()).unwrap();
    type Damage = fn(&redb::WriteTransaction);
    let damages: [(&str, Damage); 4] = [
        // Compaction left doc/A's entries 5..=10 in one chunk, under seq 5.
        ("checksum", |txn| {
            let mut log = txn.open_table(LOG).unwrap();
            let key = ("doc", A.as_u64(), 5);
            let mut record = log.get(key).unwrap().unwrap().value().to_vec();
            record[0] ^= 0xff;
            log.insert(key, record.as_slice()).unwrap();
        }),
        ("lacks", |txn| {
            txn.open_table(LOG)
                .unwrap()
                .remove(("doc", A.as_u64(), 5))
                .unwrap();
        }),
        ("the log table holds", |txn| {
            let record = converge_store::format::LogChunks::new("doc", A)
                .encode(2, [&b"stale"[..]].into_iter());
            let mut log = txn.open_table(LOG).unwrap();
            log.insert(("doc", A.as_u64(), 2), record.as_slice())
                .unwrap();
        }),
        // A row outside every log's range that claims no entries.
        ("truncated or empty", |txn| {
            let mut log = txn.open_table(LOG).unwrap();
            log.insert(("doc", A.as_u64(), 2), &[0u8; 8][..]).unwrap();
        }),
    ];
    for (expected, damage) in damages {
        std::fs::write(temp.path(), &pristine).unwrap();
        tamper(&temp.path(), damage);
        // Recent damage is already caught on open; any damage by verify.
        match RedbStore::open(temp.path()).and_then(|store| store.verify()) {
            Err(e @ StoreError::Corrupt { .. }) => {
                assert!(e.to_string().contains(expected), "{e}");
            }
            other => panic!("expected Corrupt ({expected}), got {other:?}"),
        }
    }
}

/// `threads` writers (replicas 1..=threads) each append `appends`
/// one-entry batches to `object` in a loop, all at once.
fn append_from_threads(store: &RedbStore, object: &str, threads: u64, appends: u64) {
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                let replica = ReplicaId::from_u64(t + 1);
                for seq in 1..=appends {
                    let batch = [Entry::new(seq, payload(object, replica, seq))];
                    store.append(object, replica, &batch).unwrap();
                }
            });
        }
    });
}

#[test]
fn concurrent_appends_share_syncs() {
    const THREADS: u64 = 12;
    const APPENDS: u64 = 15;
    let backend = CrashBackend::new();
    let store =
        RedbStore::open_with_backends(backend.clone(), backend.wal(), StoreConfig::default())
            .unwrap();
    // A slow disk, so that appenders pile up behind each sync.
    backend.set_sync_delay(Duration::from_millis(3));
    let before = store.commit_stats();
    let syncs_before = backend.syncs();
    append_from_threads(&store, "shared", THREADS, APPENDS);
    let after = store.commit_stats();
    let jobs = after.jobs - before.jobs;
    let commits = after.commits - before.commits;
    assert_eq!(jobs, THREADS * APPENDS);
    assert!(
        commits * 3 <= jobs,
        "{jobs} appends took {commits} commits: group commit is not batching"
    );
    // Each commit costs redb a bounded number of syncs; far fewer than one per append.
    let syncs = backend.syncs() - syncs_before;
    assert!(syncs < jobs, "{syncs} syncs for {jobs} appends");
    let vv = check_logs(&store, "shared");
    assert_eq!(vv.len() as u64, THREADS);
    assert!(vv.iter().all(|(_, last)| last == APPENDS));
}

#[test]
fn steady_writers_all_share_each_sync() {
    // Writers that append in a loop come straight back after each answer:
    // the writer waits a moment for them, so a batch holds (nearly) all of
    // them rather than alternating between a few and the rest.
    const THREADS: u64 = 8;
    const APPENDS: u64 = 40;
    // Writers per commit on average: measured ~7.8 alone, lower when the
    // machine is busy; without the writer's wait, ~6, as the writers split
    // into alternating groups. How many writers the wait catches depends
    // on the OS scheduling them within it, so a busy machine (other test
    // binaries, parallel builds) can spoil one run: the property holds if
    // any of three fresh runs shows it, and a store without the wait fails
    // all three.
    let run = || {
        let backend = CrashBackend::new();
        let store =
            RedbStore::open_with_backends(backend.clone(), backend.wal(), StoreConfig::default())
                .unwrap();
        backend.set_sync_delay(Duration::from_millis(3));
        let before = store.commit_stats();
        append_from_threads(&store, "steady", THREADS, APPENDS);
        let after = store.commit_stats();
        let vv = check_logs(&store, "steady");
        assert!(vv.iter().all(|(_, last)| last == APPENDS));
        (after.jobs - before.jobs, after.commits - before.commits)
    };
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (jobs, commits) = run();
        assert_eq!(jobs, THREADS * APPENDS);
        // At least 6.5 of the 8 writers per commit on average.
        if jobs * 16 >= commits * THREADS * 13 {
            return;
        }
        seen.push(commits);
    }
    panic!(
        "{} appends by {THREADS} steady writers took {seen:?} commits in three runs",
        THREADS * APPENDS
    );
}

#[test]
fn rejected_job_does_not_disturb_its_batch() {
    let backend = CrashBackend::new();
    let store =
        RedbStore::open_with_backends(backend.clone(), backend.wal(), StoreConfig::default())
            .unwrap();
    backend.set_sync_delay(Duration::from_millis(3));
    store.append("o", A, &entries("o", A, 1..=1)).unwrap();
    // Good and bad appends race into shared batches; each gets its own answer.
    std::thread::scope(|scope| {
        for t in 0..6u64 {
            let store = &store;
            scope.spawn(move || {
                let replica = ReplicaId::from_u64(100 + t);
                for seq in 1..=10 {
                    store
                        .append("o", replica, &entries("o", replica, seq..=seq))
                        .unwrap();
                    let gap = store.append("o", replica, &entries("o", replica, seq + 2..=seq + 2));
                    assert!(matches!(gap, Err(AppendError::Gap { .. })), "{gap:?}");
                    let mut forged = entries("o", A, 1..=1);
                    forged[0].bytes.push(0);
                    let conflict = store.append("o", A, &forged);
                    assert!(
                        matches!(conflict, Err(AppendError::Conflict { .. })),
                        "{conflict:?}"
                    );
                }
            });
        }
    });
    let vv = check_logs(&store, "o");
    assert_eq!(vv.get(A), 1);
    assert!((100..106).all(|r| vv.get(ReplicaId::from_u64(r)) == 10));
}

#[test]
fn readers_see_every_acknowledged_append_while_it_is_applied() {
    // Appends are answered once their log record is synced and applied to
    // redb in the background: a reader racing the applier must still see
    // each acknowledged entry, once, and a feed without holes.
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let temp = TempRedb::fresh();
    let store = temp.store.as_ref().unwrap();
    let acked = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for seq in 1..=300 {
                // Append k = seq - 1 goes to object o(k % 7), as its entry k / 7 + 1.
                let object = format!("o{}", (seq - 1) % 7);
                let next = (seq - 1) / 7 + 1;
                store
                    .append(&object, A, &entries(&object, A, next..=next))
                    .unwrap();
                acked.store(seq, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        });
        let mut reads = 0;
        while !done.load(Ordering::SeqCst) || reads < 10 {
            reads += 1;
            let seq = acked.load(Ordering::SeqCst);
            if seq == 0 {
                continue;
            }
            let object = format!("o{}", (seq - 1) % 7);
            let want = (seq - 1) / 7 + 1;
            let held = store.version_vector(&object).unwrap().get(A);
            assert!(held >= want, "{object}: acked {want}, holds {held}");
            let tail = store.read(&object, A, want, 1).unwrap();
            assert_eq!(tail, entries(&object, A, want..=want));
            assert!(store.list_objects("o", None, 10).unwrap().contains(&object));
            let feed = store.changes_since(0, 1000).unwrap();
            assert!(feed.len() as u64 >= seq);
            for (i, item) in feed.iter().enumerate() {
                assert_eq!(item.position, i as u64 + 1, "the feed has a hole");
            }
        }
    });
    for o in 0..7 {
        check_logs(store, &format!("o{o}"));
    }
    store.verify().unwrap();
}

/// The `log` table's rows of one log: (first seq, entries in the chunk).
fn chunk_rows(path: &std::path::Path, object: &str, replica: ReplicaId) -> Vec<(u64, u64)> {
    let db = redb::Database::open(path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let log = txn.open_table(LOG).unwrap();
    let r = replica.as_u64();
    log.range((object, r, 0)..=(object, r, u64::MAX))
        .unwrap()
        .map(|item| {
            let (key, record) = item.unwrap();
            // (Meaningless for the entry rows of an old file: only counted.)
            let count = converge_store::format::chunk_entry_count(record.value()).unwrap_or(0);
            (key.value().2, count)
        })
        .collect()
}

fn meta_version(path: &std::path::Path) -> converge_store::format::Meta {
    let db = redb::Database::open(path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let meta = txn.open_table(META).unwrap();
    decode_meta(meta.get("format").unwrap().unwrap().value())
}

/// An append is one chunk row (several past the cap); compaction drops the
/// chunks under its horizon and rewrites the one it cuts as its tail.
#[test]
fn appends_are_chunk_rows_and_compaction_cuts_them() {
    let mut temp = TempRedb::fresh();
    let path = temp.path();
    let store = temp.store();
    // 2,500 small entries: capped at 1,024 entries a chunk.
    let small: Vec<Entry> = (1..=2500)
        .map(|s| Entry::new(s, vec![s as u8; 8]))
        .collect();
    store.append("small", A, &small).unwrap();
    // 40 entries of 1 KiB: capped at 15 KiB of record a chunk.
    let wide: Vec<Entry> = (1..=40)
        .map(|s| Entry::new(s, vec![s as u8; 1024]))
        .collect();
    store.append("wide", A, &wide).unwrap();
    for seq in 41..=43 {
        store
            .append("wide", A, &[Entry::new(seq, vec![1; 10])])
            .unwrap();
    }
    drop(temp.store.take());
    assert_eq!(
        chunk_rows(&path, "small", A),
        vec![(1, 1024), (1025, 1024), (2049, 452)]
    );
    assert_eq!(
        chunk_rows(&path, "wide", A),
        vec![(1, 14), (15, 14), (29, 12), (41, 1), (42, 1), (43, 1)]
    );

    let mut temp = temp.reopen();
    let store = temp.store();
    // Reads starting inside a chunk, across chunks, and capped by size.
    assert_eq!(store.read("small", A, 1000, 100).unwrap(), small[999..1099]);
    assert_eq!(store.read("small", A, 2500, 10).unwrap(), small[2499..]);
    assert_eq!(
        store.read("wide", A, 30, 20).unwrap(),
        wide[29..40]
            .iter()
            .cloned()
            .chain((41..=43).map(|s| Entry::new(s, vec![1; 10])))
            .collect::<Vec<_>>()
    );

    let horizon = [(A, 1500)].into_iter().collect();
    store.put_snapshot("small", &horizon, b"snap").unwrap();
    assert_eq!(store.compact("small", &horizon).unwrap().dropped, 1500);
    let horizon = [(A, 33)].into_iter().collect();
    store.put_snapshot("wide", &horizon, b"snap").unwrap();
    assert_eq!(store.compact("wide", &horizon).unwrap().dropped, 33);
    assert!(matches!(
        store.read("small", A, 1500, 1),
        Err(ReadError::SnapshotNeeded {
            compacted: 1500,
            ..
        })
    ));
    assert_eq!(store.read("small", A, 1501, 5000).unwrap(), small[1500..]);
    assert_eq!(store.read("wide", A, 34, 3).unwrap(), wide[33..36]);
    let report = temp.store.as_ref().unwrap().verify().unwrap();
    assert_eq!(report.entries, 1000 + 10);
    drop(temp.store.take());
    assert_eq!(
        chunk_rows(&path, "small", A),
        vec![(1501, 548), (2049, 452)]
    );
    assert_eq!(
        chunk_rows(&path, "wide", A),
        vec![(34, 7), (41, 1), (42, 1), (43, 1)]
    );

    // Deletion removes every chunk.
    let mut temp = temp.reopen();
    assert_eq!(temp.store().delete_object("small").unwrap().dropped, 1000);
    drop(temp.store.take());
    assert_eq!(chunk_rows(&path, "small", A), vec![]);
    assert_eq!(chunk_rows(&path, "wide", A).len(), 4);
    drop(temp);
}

/// A version 3 file (one log row per entry) opens, keeps every entry, and is
/// upgraded in place to chunk rows.
#[test]
fn a_version_3_store_is_upgraded_to_chunks_on_open() {
    let mut temp = TempRedb::fresh();
    let path = temp.path();
    let b = ReplicaId::from_u64(0xb);
    let store = temp.store();
    // A long log written in several appends, of varied entry sizes (some 40 KB).
    for first in (1..=3000).step_by(500) {
        store
            .append("doc", A, &entries("doc", A, first..=first + 499))
            .unwrap();
    }
    store.append("doc", b, &entries("doc", b, 1..=7)).unwrap();
    for seq in 1..=30 {
        store
            .append("ones", A, &entries("ones", A, seq..=seq))
            .unwrap();
    }
    // A compacted log, and a deleted object.
    store.append("cut", A, &entries("cut", A, 1..=20)).unwrap();
    let horizon = [(A, 12)].into_iter().collect();
    store.put_snapshot("cut", &horizon, b"snap").unwrap();
    store.compact("cut", &horizon).unwrap();
    store.append("gone", A, &entries("gone", A, 1..=5)).unwrap();
    store.delete_object("gone").unwrap();
    let before = temp.store.as_ref().unwrap().verify().unwrap();
    drop(temp.store.take());
    tamper(&path, |txn| {
        downgrade_log_to_entry_rows(txn);
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("format", encode_meta(3).as_slice()).unwrap();
    });
    assert_eq!(chunk_rows(&path, "doc", A).len(), 3000);

    let mut temp = temp.reopen();
    let store = temp.store();
    assert_eq!(check_logs(store, "doc").get(A), 3000);
    assert_eq!(check_logs(store, "ones").get(A), 30);
    assert_eq!(check_logs(store, "cut").get(A), 20);
    assert!(matches!(
        store.read("cut", A, 12, 1),
        Err(ReadError::SnapshotNeeded { compacted: 12, .. })
    ));
    assert!(store.is_deleted("gone").unwrap());
    assert_eq!(temp.store.as_ref().unwrap().verify().unwrap(), before);
    store
        .append("doc", A, &entries("doc", A, 3001..=3002))
        .unwrap();
    drop(temp.store.take());
    assert_eq!(
        meta_version(&path),
        converge_store::format::Meta::Store {
            version: FORMAT_VERSION
        }
    );
    // Runs of consecutive seqs became chunks, within the cap.
    let rows = chunk_rows(&path, "doc", A);
    assert!(rows.len() < 3000 / 10, "{} rows", rows.len());
    assert_eq!(rows.iter().map(|r| r.1).sum::<u64>(), 3002);
    assert!(rows.iter().all(|r| r.1 <= 1024));
    // Thirty one-entry rows became a few chunks (their entries' sizes vary
    // up to 1.5 KB, so the byte cap splits them).
    let ones = chunk_rows(&path, "ones", A);
    assert_eq!(ones.first().map(|r| r.0), Some(1));
    assert_eq!(ones.iter().map(|r| r.1).sum::<u64>(), 30);
    assert!(ones.len() <= 3, "{ones:?}");
    assert_eq!(chunk_rows(&path, "cut", A), vec![(13, 8)]);
    let temp = temp.reopen();
    assert_eq!(check_logs(temp.store(), "doc").get(A), 3002);
}

/// An old file with a damaged entry is not upgraded (sealing the damage
/// into a chunk would hide it): the open fails and the file is unchanged.
#[test]
fn an_upgrade_refuses_a_damaged_entry_and_changes_nothing() {
    let mut temp = TempRedb::fresh();
    let path = temp.path();
    temp.store()
        .append("doc", A, &entries("doc", A, 1..=5))
        .unwrap();
    drop(temp.store.take());
    tamper(&path, |txn| {
        downgrade_log_to_entry_rows(txn);
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("format", encode_meta(3).as_slice()).unwrap();
    });
    tamper(&path, |txn| {
        let mut log = txn.open_table(LOG).unwrap();
        let key = ("doc", A.as_u64(), 3);
        let mut record = log.get(key).unwrap().unwrap().value().to_vec();
        record[0] ^= 0x01;
        log.insert(key, record.as_slice()).unwrap();
    });
    match RedbStore::open(&path) {
        Err(e @ StoreError::Corrupt { .. }) => {
            assert!(e.to_string().contains("doc"), "{e}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        meta_version(&path),
        converge_store::format::Meta::Store { version: 3 }
    );
    assert_eq!(chunk_rows(&path, "doc", A).len(), 5);
    drop(temp);
}
