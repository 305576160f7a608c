//! Shared helpers: a temporary redb store, deterministic entry bytes.

use std::path::PathBuf;

use converge_store::conformance::Subject;
use converge_store::{Entry, ReadError, RedbStore, ReplicaId, Store};
use tempfile::TempDir;

/// A [`RedbStore`] in a temporary directory that is removed on drop.
pub(crate) struct TempRedb {
    pub(crate) store: Option<RedbStore>,
    pub(crate) dir: TempDir,
}

impl TempRedb {
    pub(crate) fn fresh() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let store = RedbStore::open(dir.path().join("store.redb")).expect("open a new store");
        Self {
            store: Some(store),
            dir,
        }
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.path().join("store.redb")
    }
}

impl Subject for TempRedb {
    fn store(&self) -> &dyn Store {
        self.store.as_ref().expect("the store is open")
    }

    fn reopen(mut self) -> Self {
        drop(self.store.take());
        self.store = Some(RedbStore::open(self.path()).expect("reopen the store"));
        self
    }
}

/// The bytes of entry `seq` of `replica`'s log in `object`: deterministic,
/// different for every key, of varied length (some span several pages).
pub(crate) fn payload(object: &str, replica: ReplicaId, seq: u64) -> Vec<u8> {
    let len = if seq.is_multiple_of(97) {
        40_000
    } else {
        (seq * 37 % 1500) as usize
    };
    let mut bytes = format!("{object}/{replica}/{seq}:").into_bytes();
    let mut x = seq ^ replica.as_u64().rotate_left(17) ^ object.len() as u64;
    bytes.extend((0..len).map(|_| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 56) as u8
    }));
    bytes
}

/// Entries `seqs` of a log, with [`payload`] bytes.
pub(crate) fn entries(
    object: &str,
    replica: ReplicaId,
    seqs: std::ops::RangeInclusive<u64>,
) -> Vec<Entry> {
    seqs.map(|seq| Entry::new(seq, payload(object, replica, seq)))
        .collect()
}

/// Checks that every log of `object` is contiguous from its first readable
/// seq to its head and holds exactly the [`payload`] bytes; returns the
/// version vector.
pub(crate) fn check_logs(store: &dyn Store, object: &str) -> converge_store::VersionVector {
    let vv = store.version_vector(object).expect("version vector");
    for (replica, last) in vv.iter() {
        // A compacted prefix is served by the snapshot: check from after it.
        let mut next = match store.read(object, replica, 1, 1) {
            Err(ReadError::SnapshotNeeded { compacted, .. }) => compacted + 1,
            _ => 1,
        };
        loop {
            let page = store
                .read(object, replica, next, 500)
                .unwrap_or_else(|e| panic!("read {object}/{replica} from {next}: {e}"));
            if page.is_empty() {
                break;
            }
            for entry in &page {
                assert_eq!(entry.seq, next, "log {object}/{replica} is not contiguous");
                assert!(
                    entry.bytes == payload(object, replica, entry.seq),
                    "entry {object}/{replica}/{} has wrong bytes",
                    entry.seq
                );
                next += 1;
            }
        }
        assert_eq!(
            next - 1,
            last,
            "log {object}/{replica} ends before its head"
        );
    }
    vv
}

/// The `log` table, as redb sees it (chunk records since format version 4,
/// entry records before).
pub(crate) const LOG: redb::TableDefinition<'_, (&str, u64, u64), &[u8]> =
    redb::TableDefinition::new("log");

/// Rewrites the `log` table the way format versions 1 to 3 held it, one
/// entry record per row, from the chunk records a current store wrote: the
/// tests build an old file by writing a new one and tampering with it.
pub(crate) fn downgrade_log_to_entry_rows(txn: &redb::WriteTransaction) {
    use converge_store::format::{LogChunks, encode_entry};
    use redb::ReadableTable;
    let mut log = txn.open_table(LOG).unwrap();
    let mut rows = Vec::new();
    for item in log.iter().unwrap() {
        let (key, record) = item.unwrap();
        let (object, replica, first) = key.value();
        let replica = ReplicaId::from_u64(replica);
        let chunk = LogChunks::new(object, replica)
            .decode(first, record.value())
            .unwrap();
        for (seq, bytes) in chunk.iter() {
            rows.push((object.to_owned(), replica, seq, bytes.to_vec()));
        }
    }
    log.retain(|_, _| false).unwrap();
    for (object, replica, seq, bytes) in rows {
        let record = encode_entry(&object, replica, seq, &bytes);
        log.insert((object.as_str(), replica.as_u64(), seq), record.as_slice())
            .unwrap();
    }
}
