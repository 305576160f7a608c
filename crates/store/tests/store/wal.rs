//! The write-ahead log: acknowledged appends that only the log holds are
//! replayed on open; a torn or damaged tail ends the log at the last intact
//! record (never served, never a failed open); a log that does not belong to
//! its database is refused.

use converge_store::conformance::Subject;
use converge_store::crash::CrashBackend;
use converge_store::format::{
    FORMAT_VERSION, WAL_HEADER_LEN, WalAppend, decode_meta, encode_meta, wal_record_len,
};
use converge_store::{Entry, RedbStore, ReplicaId, Store, StoreConfig, StoreError};
use redb::{ReadableDatabase, TableDefinition};

use crate::util::{TempRedb, check_logs, downgrade_log_to_entry_rows, entries};

const A: ReplicaId = ReplicaId::from_u64(0xa);
const B: ReplicaId = ReplicaId::from_u64(0xb);
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

fn open(disk: &CrashBackend) -> Result<RedbStore, StoreError> {
    RedbStore::open_with_backends(disk.database(), disk.wal(), StoreConfig::default())
}

/// Appends `n` single-entry batches to `doc`/A, one log record each (a
/// single caller never shares a batch), and returns what a crash right after
/// would leave, with the size of every record.
fn crashed_after_appends(n: u64) -> (CrashBackend, Vec<usize>) {
    let disk = CrashBackend::new();
    let store = open(&disk).unwrap();
    let mut sizes = Vec::new();
    for seq in 1..=n {
        let batch = entries("doc", A, seq..=seq);
        let outcome = store.append("doc", A, &batch).unwrap();
        sizes.push(wal_record_len(&[WalAppend {
            object: "doc",
            replica: A,
            position: outcome.position.unwrap(),
            entries: &batch,
        }]));
    }
    // Taken while the store is open: no clean close, no final checkpoint.
    let crashed = disk.crashed();
    drop(store);
    (crashed, sizes)
}

fn held(store: &RedbStore) -> u64 {
    store.version_vector("doc").map_or(0, |vv| vv.get(A))
}

#[test]
fn acknowledged_appends_only_in_the_log_are_replayed() {
    let (crashed, _) = crashed_after_appends(30);
    // The database alone does not hold them: they are in the log only.
    let alone = CrashBackend::new();
    let image = {
        let mut image = Vec::new();
        crashed.database().tamper(|bytes| image = bytes.clone());
        image
    };
    alone.database().tamper(|bytes| *bytes = image);
    let store = open(&alone).unwrap();
    assert_eq!(
        held(&store),
        0,
        "the database alone should not hold the appends"
    );
    drop(store);

    let store = open(&crashed).unwrap();
    assert_eq!(held(&store), 30);
    check_logs(&store, "doc");
    store.verify().unwrap();
    // The feed is as it was acknowledged: positions 1..=30, in order.
    let feed = store.changes_since(0, 100).unwrap();
    assert_eq!(feed.len(), 30);
    assert!(
        feed.iter()
            .zip(1..)
            .all(|(item, p)| item.position == p && item.last == p)
    );
    // Appends continue after the replayed ones, and survive a second crash.
    store.append("doc", A, &entries("doc", A, 31..=31)).unwrap();
    store.append("doc", B, &entries("doc", B, 1..=2)).unwrap();
    let again = crashed.crashed();
    drop(store);
    let store = open(&again).unwrap();
    assert_eq!(held(&store), 31);
    assert_eq!(store.version_vector("doc").unwrap().get(B), 2);
    assert_eq!(store.feed_head().unwrap(), 32);
    store.verify().unwrap();
}

#[test]
fn a_torn_log_tail_recovers_the_intact_records() {
    let (crashed, sizes) = crashed_after_appends(12);
    let ends: Vec<usize> = sizes
        .iter()
        .scan(WAL_HEADER_LEN, |end, size| {
            *end += size;
            Some(*end)
        })
        .collect();
    let full = *ends.last().unwrap();
    let mut cuts: Vec<usize> = (WAL_HEADER_LEN..=full).step_by(37).collect();
    cuts.extend(ends.iter().flat_map(|&end| [end - 1, end, end + 1]));
    for cut in cuts {
        let disk = crashed.crashed();
        disk.wal().tamper(|bytes| bytes.truncate(cut));
        let store = open(&disk).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let intact = ends.iter().filter(|&&end| end <= cut).count() as u64;
        assert_eq!(held(&store), intact, "cut at {cut}");
        if intact > 0 {
            check_logs(&store, "doc");
        }
        store.verify().unwrap();
        // The store works on: the next append takes the next seq.
        store
            .append("doc", A, &entries("doc", A, intact + 1..=intact + 1))
            .unwrap();
    }
}

#[test]
fn a_damaged_log_record_ends_the_log_and_is_never_served() {
    let (crashed, sizes) = crashed_after_appends(6);
    let mut start = WAL_HEADER_LEN;
    for (index, size) in sizes.iter().enumerate() {
        for at in [
            start,
            start + 5,
            start + 12,
            start + size / 2,
            start + size - 1,
        ] {
            let disk = crashed.crashed();
            disk.wal().tamper(|bytes| bytes[at] ^= 0x20);
            let store = open(&disk).unwrap_or_else(|e| panic!("flip at {at}: {e}"));
            assert_eq!(held(&store), index as u64, "flip at {at} in record {index}");
            if index > 0 {
                check_logs(&store, "doc");
            }
            store.verify().unwrap();
        }
        start += size;
    }
    // Damage past the last record (the zero-filled rest) changes nothing.
    let disk = crashed.crashed();
    disk.wal().tamper(|bytes| {
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20;
    });
    assert_eq!(held(&open(&disk).unwrap()), 6);
}

#[test]
fn a_damaged_log_header_is_refused() {
    let (crashed, _) = crashed_after_appends(3);
    crashed.wal().tamper(|bytes| bytes[3] ^= 0x01);
    match open(&crashed) {
        Err(e @ StoreError::Corrupt { .. }) => {
            assert!(e.to_string().contains("damaged header"), "{e}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn the_log_of_another_store_is_refused() {
    let (mine, _) = crashed_after_appends(3);
    let (theirs, _) = crashed_after_appends(2);
    let mut log = Vec::new();
    theirs.wal().tamper(|bytes| log = bytes.clone());
    mine.wal().tamper(|bytes| *bytes = log);
    match open(&mine) {
        Err(e @ StoreError::Corrupt { .. }) => {
            assert!(e.to_string().contains("another store"), "{e}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_clean_close_leaves_nothing_to_replay() {
    let disk = CrashBackend::new();
    let store = open(&disk).unwrap();
    store.append("doc", A, &entries("doc", A, 1..=5)).unwrap();
    drop(store);
    // The database alone holds everything: the close checkpointed it.
    disk.wal().tamper(Vec::clear);
    let store = open(&disk).unwrap();
    assert_eq!(held(&store), 5);
    check_logs(&store, "doc");
}

#[test]
fn many_appends_wrap_the_log_around_checkpoints() {
    // More than the log's capacity (8 MiB), so it is checkpointed and
    // rewritten from its start; then a crash replays only the latest round.
    let disk = CrashBackend::new();
    let store = open(&disk).unwrap();
    let big = vec![7u8; 200_000];
    for seq in 1..=60 {
        store
            .append("big", A, &[Entry::new(seq, big.clone())])
            .unwrap();
        store
            .append("doc", A, &entries("doc", A, seq..=seq))
            .unwrap();
    }
    assert!(
        disk.wal().file_len() <= 9 << 20,
        "the log outgrew its capacity"
    );
    let crashed = disk.crashed();
    drop(store);
    let store = open(&crashed).unwrap();
    assert_eq!(store.version_vector("big").unwrap().get(A), 60);
    assert_eq!(held(&store), 60);
    check_logs(&store, "doc");
    store.verify().unwrap();
}

#[test]
fn the_log_file_lives_next_to_the_database() {
    let mut temp = TempRedb::fresh();
    temp.store()
        .append("doc", A, &entries("doc", A, 1..=3))
        .unwrap();
    let wal = temp.dir.path().join("store.redb-wal");
    assert!(wal.exists());
    drop(temp.store.take());
    let temp = temp.reopen();
    check_logs(temp.store(), "doc");
}

/// A version 2 file (before the write-ahead log) opens, keeps its data, and
/// is upgraded in place.
#[test]
fn a_version_2_store_is_upgraded_on_open() {
    let mut temp = TempRedb::fresh();
    let path = temp.path();
    temp.store()
        .append("doc", A, &entries("doc", A, 1..=3))
        .unwrap();
    drop(temp.store.take());
    std::fs::remove_file(temp.dir.path().join("store.redb-wal")).unwrap();
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        downgrade_log_to_entry_rows(&txn);
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("format", encode_meta(2).as_slice()).unwrap();
            meta.remove("wal").unwrap();
        }
        txn.commit().unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(
        store.read("doc", A, 1, 10).unwrap(),
        entries("doc", A, 1..=3)
    );
    store.append("doc", A, &entries("doc", A, 4..=4)).unwrap();
    drop(store);
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    let record = meta.get("format").unwrap().unwrap();
    assert_eq!(
        decode_meta(record.value()),
        converge_store::format::Meta::Store {
            version: FORMAT_VERSION
        }
    );
    assert!(meta.get("wal").unwrap().is_some());
    drop((meta, txn, db));
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(held(&store), 4);
    drop(temp);
}

/// A version 3 store that crashed with acknowledged appends only in its
/// write-ahead log: the upgrade keeps its checkpoint, so the log (whose
/// layout version 4 did not change) is replayed into the chunk rows.
#[test]
fn a_crashed_version_3_store_is_upgraded_and_its_log_replayed() {
    let disk = CrashBackend::new();
    {
        let store = open(&disk).unwrap();
        store.append("doc", A, &entries("doc", A, 1..=600)).unwrap();
        store.append("doc", B, &entries("doc", B, 1..=3)).unwrap();
    }
    let store = open(&disk).unwrap();
    for seq in 601..=620 {
        store
            .append("doc", A, &entries("doc", A, seq..=seq))
            .unwrap();
    }
    // Taken while the store is open: the last appends are in the log only.
    let crashed = disk.crashed();
    drop(store);
    {
        let db = redb::Database::builder()
            .create_with_backend(crashed.database())
            .unwrap();
        let txn = db.begin_write().unwrap();
        downgrade_log_to_entry_rows(&txn);
        {
            use redb::ReadableTableMetadata;
            let rows = txn.open_table(crate::util::LOG).unwrap().len().unwrap();
            assert!(rows < 623, "the database alone holds all {rows} entries");
        }
        txn.open_table(META)
            .unwrap()
            .insert("format", encode_meta(3).as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = open(&crashed).unwrap();
    assert_eq!(check_logs(&store, "doc").get(A), 620);
    assert_eq!(store.version_vector("doc").unwrap().get(B), 3);
    store.verify().unwrap();
    let feed = store.changes_since(0, 100).unwrap();
    assert_eq!(feed.len(), 22);
    drop(store);
    let store = open(&crashed).unwrap();
    assert_eq!(held(&store), 620);
}
