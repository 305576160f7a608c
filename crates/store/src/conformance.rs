//! The behaviour every [`Store`] backend must have, as a reusable test suite.
//!
//! A backend's tests implement [`Subject`] for a handle that owns the store
//! (and whatever keeps it alive, such as a temporary directory), then call
//! [`conformance_tests!`](crate::conformance_tests) with a constructor:
//!
//! ```text
//! converge_store::conformance_tests!(|| MyHandle::fresh());
//! ```
//!
//! which expands to one `#[test]` per check below, so a failure names the
//! behaviour that broke. Every check starts from a fresh, empty store.

use std::thread;

use converge_crdt::{ReplicaId, VersionVector};

use crate::{
    AppendError, AppendOutcome, AppendRequest, DeleteError, Entry, FeedItem, FeedKind,
    MAX_OBJECT_ID_BYTES, MemoryStore, ObjectIdError, ReadError, SnapshotError, Store, StoreConfig,
};

/// A store under test, with a way to close and reopen it.
pub trait Subject: Sized {
    /// The store.
    fn store(&self) -> &dyn Store;
    /// Closes the store and opens it again from what it persisted. Backends
    /// without persistence return themselves unchanged.
    fn reopen(self) -> Self {
        self
    }
}

impl Subject for MemoryStore {
    fn store(&self) -> &dyn Store {
        self
    }
}

/// Expands to one `#[test]` per conformance check, each running on a fresh
/// store from the given constructor (an expression of type `Fn() -> S` where
/// `S: Subject`).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            append_then_read_in_order,
            redelivery_is_a_noop,
            conflicting_duplicate_is_rejected,
            gap_is_rejected,
            bad_batches_are_rejected,
            object_ids_are_checked,
            unknown_object_is_reported,
            out_of_range_reads_are_reported,
            logs_are_independent,
            list_objects_with_prefix_and_paging,
            change_feed_reports_arrivals,
            append_many_answers_each_request,
            snapshot_and_compaction,
            snapshot_ahead_of_log_advances_it,
            concurrent_appenders,
            extreme_seqs_do_not_overflow,
            survives_reopen,
            deletion_leaves_a_tombstone,
            deletion_is_idempotent_and_final,
            tombstones_are_listed_and_survive_reopen,
        );
    };
    (@each $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::conformance::$check(&$make);
            }
        )*
    };
}

const A: ReplicaId = ReplicaId::from_u64(0xa);
const B: ReplicaId = ReplicaId::from_u64(0xb);

/// Deterministic entry bytes, different for every (replica, seq).
fn bytes(replica: ReplicaId, seq: u64) -> Vec<u8> {
    format!("{replica}:{seq}:{}", "x".repeat((seq % 7) as usize)).into_bytes()
}

fn batch(replica: ReplicaId, seqs: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    seqs.map(|seq| Entry::new(seq, bytes(replica, seq)))
        .collect()
}

fn vv(pairs: &[(ReplicaId, u64)]) -> VersionVector {
    pairs.iter().copied().collect()
}

/// Appends and reads back in order, whole and in pages.
pub fn append_then_read_in_order<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    let outcome = store.append("doc", A, &batch(A, 1..=3)).unwrap();
    assert_eq!(outcome.appended, 3);
    store.append("doc", A, &batch(A, 4..=4)).unwrap();
    store.append("doc", A, &batch(A, 5..=6)).unwrap();
    assert_eq!(store.read("doc", A, 1, 100).unwrap(), batch(A, 1..=6));
    assert_eq!(store.read("doc", A, 1, 2).unwrap(), batch(A, 1..=2));
    assert_eq!(store.read("doc", A, 3, 2).unwrap(), batch(A, 3..=4));
    assert_eq!(
        store.read("doc", A, 6, usize::MAX).unwrap(),
        batch(A, 6..=6)
    );
    assert_eq!(store.version_vector("doc").unwrap(), vv(&[(A, 6)]));
    // An empty batch is a no-op, even for an unknown object.
    let outcome = store.append("empty", A, &[]).unwrap();
    assert_eq!(outcome.appended, 0);
    assert!(matches!(
        store.read("empty", A, 1, 1),
        Err(ReadError::UnknownObject { .. })
    ));
}

/// Re-delivering entries already held changes nothing; an overlapping batch
/// appends only its new part.
pub fn redelivery_is_a_noop<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    store.append("doc", A, &batch(A, 1..=5)).unwrap();
    let head = store.feed_head().unwrap();
    let outcome = store.append("doc", A, &batch(A, 1..=5)).unwrap();
    assert_eq!((outcome.appended, outcome.position), (0, None));
    let outcome = store.append("doc", A, &batch(A, 2..=3)).unwrap();
    assert_eq!(outcome.appended, 0);
    assert_eq!(
        store.feed_head().unwrap(),
        head,
        "a re-delivery is no arrival"
    );
    let outcome = store.append("doc", A, &batch(A, 3..=7)).unwrap();
    assert_eq!(outcome.appended, 2);
    let item = &store.changes_since(head, 10).unwrap()[0];
    assert_eq!((item.first, item.last), (6, 7));
    assert_eq!(store.read("doc", A, 1, 100).unwrap(), batch(A, 1..=7));
}

/// The same (replica, seq) with other bytes is a conflict, and the batch
/// writes nothing, not even its new entries.
pub fn conflicting_duplicate_is_rejected<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    store.append("doc", A, &batch(A, 1..=5)).unwrap();
    let head = store.feed_head().unwrap();
    let mut forged = batch(A, 4..=7);
    forged[0].bytes = b"forged".to_vec();
    match store.append("doc", A, &forged) {
        Err(AppendError::Conflict {
            object,
            replica,
            seq,
        }) => {
            assert_eq!((object.as_str(), replica, seq), ("doc", A, 4));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.version_vector("doc").unwrap(), vv(&[(A, 5)]));
    assert_eq!(store.read("doc", A, 1, 100).unwrap(), batch(A, 1..=5));
    assert_eq!(store.feed_head().unwrap(), head);
    // The error message says what happened.
    let message = store.append("doc", A, &forged).unwrap_err().to_string();
    assert!(message.contains("different bytes"), "{message}");
}

/// A batch that starts past the end of the log is a gap, never accepted.
pub fn gap_is_rejected<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    store.append("doc", A, &batch(A, 1..=2)).unwrap();
    match store.append("doc", A, &batch(A, 4..=5)) {
        Err(AppendError::Gap { last, found, .. }) => assert_eq!((last, found), (2, 4)),
        other => panic!("expected a gap, got {other:?}"),
    }
    match store.append("doc", B, &batch(B, 2..=2)) {
        Err(AppendError::Gap { last, found, .. }) => assert_eq!((last, found), (0, 2)),
        other => panic!("expected a gap, got {other:?}"),
    }
    assert!(matches!(
        store.append("new", A, &batch(A, 3..=3)),
        Err(AppendError::Gap { .. })
    ));
    assert_eq!(store.version_vector("doc").unwrap(), vv(&[(A, 2)]));
    assert!(matches!(
        store.version_vector("new"),
        Err(ReadError::UnknownObject { .. })
    ));
}

/// Malformed batches are rejected as a whole.
pub fn bad_batches_are_rejected<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    store.append("doc", A, &batch(A, 1..=1)).unwrap();
    let mut skipping = batch(A, 2..=4);
    skipping[2].seq = 5;
    assert!(matches!(
        store.append("doc", A, &skipping),
        Err(AppendError::NotConsecutive {
            index: 2,
            expected: 4,
            found: 5
        })
    ));
    assert!(matches!(
        store.append("doc", A, &[Entry::new(0, b"zero".to_vec())]),
        Err(AppendError::ZeroSeq { .. })
    ));
    let max = StoreConfig::default().max_entry_bytes;
    let oversized = vec![
        Entry::new(2, b"ok".to_vec()),
        Entry::new(3, vec![0u8; max + 1]),
    ];
    match store.append("doc", A, &oversized) {
        Err(AppendError::EntryTooLarge {
            seq,
            len,
            max: limit,
        }) => {
            assert_eq!((seq, len, limit), (3, max + 1, max));
        }
        other => panic!("expected EntryTooLarge, got {other:?}"),
    }
    assert_eq!(store.version_vector("doc").unwrap(), vv(&[(A, 1)]));
    assert_eq!(store.read("doc", A, 1, 10).unwrap(), batch(A, 1..=1));
}

/// Object ids must be non-empty and at most [`MAX_OBJECT_ID_BYTES`] long.
pub fn object_ids_are_checked<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    let longest = "o".repeat(MAX_OBJECT_ID_BYTES);
    let too_long = "o".repeat(MAX_OBJECT_ID_BYTES + 1);
    store.append(&longest, A, &batch(A, 1..=1)).unwrap();
    assert_eq!(store.read(&longest, A, 1, 1).unwrap(), batch(A, 1..=1));
    assert!(matches!(
        store.append("", A, &batch(A, 1..=1)),
        Err(AppendError::ObjectId(ObjectIdError::Empty))
    ));
    assert!(matches!(
        store.append(&too_long, A, &batch(A, 1..=1)),
        Err(AppendError::ObjectId(ObjectIdError::TooLong { .. }))
    ));
    assert!(matches!(
        store.read(&too_long, A, 1, 1),
        Err(ReadError::ObjectId(ObjectIdError::TooLong { .. }))
    ));
    assert!(matches!(
        store.put_snapshot(&too_long, &VersionVector::new(), b""),
        Err(SnapshotError::ObjectId(ObjectIdError::TooLong { .. }))
    ));
    assert_eq!(store.list_objects("", None, 10).unwrap(), vec![longest]);
}

/// Reads of an object never stored report it.
pub fn unknown_object_is_reported<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    store.append("known", A, &batch(A, 1..=1)).unwrap();
    assert!(matches!(
        store.read("unknown", A, 1, 1),
        Err(ReadError::UnknownObject { object }) if object == "unknown"
    ));
    assert!(matches!(
        store.version_vector("unknown"),
        Err(ReadError::UnknownObject { .. })
    ));
    assert!(matches!(
        store.latest_snapshot("unknown"),
        Err(ReadError::UnknownObject { .. })
    ));
    assert!(matches!(
        store.compact("unknown", &VersionVector::new()),
        Err(SnapshotError::UnknownObject { .. })
    ));
    assert_eq!(store.latest_snapshot("known").unwrap(), None);
}

/// Reads outside the log are typed errors; reading from one past the end is empty.
pub fn out_of_range_reads_are_reported<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    store.append("doc", A, &batch(A, 1..=3)).unwrap();
    assert!(matches!(
        store.read("doc", A, 0, 1),
        Err(ReadError::ZeroSeq)
    ));
    assert_eq!(store.read("doc", A, 4, 10).unwrap(), vec![]);
    assert_eq!(store.read("doc", A, 1, 0).unwrap(), vec![]);
    match store.read("doc", A, 5, 10) {
        Err(ReadError::BeyondEnd { from_seq, last, .. }) => assert_eq!((from_seq, last), (5, 3)),
        other => panic!("expected BeyondEnd, got {other:?}"),
    }
    assert!(matches!(
        store.read("doc", A, u64::MAX, 10),
        Err(ReadError::BeyondEnd { .. })
    ));
    // A replica with no log in a known object: empty, and nothing beyond.
    assert_eq!(store.read("doc", B, 1, 10).unwrap(), vec![]);
    assert!(matches!(
        store.read("doc", B, 2, 10),
        Err(ReadError::BeyondEnd { last: 0, .. })
    ));
}

/// Each (object, replica) log is separate.
pub fn logs_are_independent<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    store.append("x", A, &batch(A, 1..=3)).unwrap();
    store.append("x", B, &batch(B, 1..=1)).unwrap();
    store.append("y", B, &batch(B, 1..=2)).unwrap();
    // Object ids that are prefixes of each other do not mix.
    store.append("xx", A, &batch(A, 1..=1)).unwrap();
    assert_eq!(store.version_vector("x").unwrap(), vv(&[(A, 3), (B, 1)]));
    assert_eq!(store.version_vector("y").unwrap(), vv(&[(B, 2)]));
    assert_eq!(store.version_vector("xx").unwrap(), vv(&[(A, 1)]));
    assert_eq!(store.read("x", B, 1, 10).unwrap(), batch(B, 1..=1));
    assert_eq!(store.read("y", B, 1, 10).unwrap(), batch(B, 1..=2));
    assert_eq!(store.read("y", A, 1, 10).unwrap(), vec![]);
}

/// Objects are listed in byte order, filtered by prefix, in pages.
pub fn list_objects_with_prefix_and_paging<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    for object in ["a/2", "b/1", "a/1", "a", "a/3", "ab"] {
        store.append(object, A, &batch(A, 1..=1)).unwrap();
    }
    let all = store.list_objects("", None, 100).unwrap();
    assert_eq!(all, ["a", "a/1", "a/2", "a/3", "ab", "b/1"]);
    assert_eq!(store.list_objects("a/", None, 2).unwrap(), ["a/1", "a/2"]);
    assert_eq!(store.list_objects("a/", Some("a/2"), 2).unwrap(), ["a/3"]);
    assert_eq!(
        store.list_objects("a/", Some("a/3"), 2).unwrap(),
        Vec::<String>::new()
    );
    // A cursor before the prefix starts at the prefix.
    assert_eq!(store.list_objects("a/", Some("0"), 1).unwrap(), ["a/1"]);
    assert_eq!(
        store.list_objects("c", None, 10).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        store.list_objects("", None, 0).unwrap(),
        Vec::<String>::new()
    );
    // Paging through everything visits each object once.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_objects("", after.as_deref(), 4).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        paged.extend(page);
    }
    assert_eq!(paged, all);
}

/// The change feed numbers arrivals from 1 and serves everything after a position.
pub fn change_feed_reports_arrivals<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    assert_eq!(store.feed_head().unwrap(), 0);
    assert_eq!(store.changes_since(0, 10).unwrap(), vec![]);
    let p1 = store.append("x", A, &batch(A, 1..=2)).unwrap().position;
    let p2 = store.append("y", B, &batch(B, 1..=1)).unwrap().position;
    let p3 = store.append("x", A, &batch(A, 3..=5)).unwrap().position;
    assert_eq!((p1, p2, p3), (Some(1), Some(2), Some(3)));
    assert_eq!(store.feed_head().unwrap(), 3);
    let item = |position, object: &str, replica, first, last| FeedItem {
        position,
        object: object.to_owned(),
        replica,
        first,
        last,
        kind: FeedKind::Append,
    };
    assert_eq!(
        store.changes_since(0, 10).unwrap(),
        vec![
            item(1, "x", A, 1, 2),
            item(2, "y", B, 1, 1),
            item(3, "x", A, 3, 5)
        ]
    );
    assert_eq!(
        store.changes_since(1, 1).unwrap(),
        vec![item(2, "y", B, 1, 1)]
    );
    assert_eq!(store.changes_since(3, 10).unwrap(), vec![]);
    assert_eq!(store.changes_since(u64::MAX, 10).unwrap(), vec![]);
    // Rejected appends are no arrivals.
    let _ = store.append("x", A, &batch(A, 9..=9));
    assert_eq!(store.feed_head().unwrap(), 3);
}

/// `append_many` treats each request as its own append, in order: bad ones
/// are refused with the error `append` gives and write nothing, good ones
/// land (a later request for the same log sees the earlier ones), and the
/// change feed numbers the arrivals in request order.
pub fn append_many_answers_each_request<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    store.append("x", A, &batch(A, 1..=1)).unwrap();
    let head = store.feed_head().unwrap();
    let x2 = batch(A, 2..=3);
    let gap = batch(A, 9..=9);
    let y1 = batch(B, 1..=2);
    let x4 = batch(A, 4..=4);
    let conflict = vec![Entry::new(1, b"other bytes".to_vec())];
    let again = batch(A, 1..=4);
    let results = store.append_many(&[
        AppendRequest::new("x", A, &x2),
        AppendRequest::new("x", A, &gap),
        AppendRequest::new("y", B, &y1),
        AppendRequest::new("x", A, &x4),
        AppendRequest::new("y", B, &conflict),
        AppendRequest::new("x", A, &again),
        AppendRequest::new("bad\0id", A, &x2),
    ]);
    assert_eq!(results.len(), 7);
    let appended = |r: &Result<AppendOutcome, AppendError>| r.as_ref().ok().map(|o| o.appended);
    assert_eq!(appended(&results[0]), Some(2));
    assert!(
        matches!(results[1], Err(AppendError::Gap { .. })),
        "{:?}",
        results[1]
    );
    assert_eq!(appended(&results[2]), Some(2));
    assert_eq!(appended(&results[3]), Some(1));
    assert!(
        matches!(results[4], Err(AppendError::Conflict { .. })),
        "{:?}",
        results[4]
    );
    assert_eq!(
        appended(&results[5]),
        Some(0),
        "re-delivery within the call"
    );
    assert!(results[6].is_err(), "a bad object id is refused");
    let positions: Vec<Option<u64>> = results
        .iter()
        .map(|r| r.as_ref().ok().and_then(|o| o.position))
        .collect();
    assert_eq!(
        positions,
        vec![
            Some(head + 1),
            None,
            Some(head + 2),
            Some(head + 3),
            None,
            None,
            None
        ]
    );
    assert_eq!(store.read("x", A, 1, 100).unwrap(), batch(A, 1..=4));
    assert_eq!(store.read("y", B, 1, 100).unwrap(), batch(B, 1..=2));
    assert_eq!(store.feed_head().unwrap(), head + 3);
    assert!(store.append_many(&[]).is_empty());
    // What was acknowledged is durable.
    let subject = subject.reopen();
    let store = subject.store();
    assert_eq!(store.read("x", A, 1, 100).unwrap(), batch(A, 1..=4));
    assert_eq!(store.version_vector("y").unwrap(), vv(&[(B, 2)]));
}

/// Snapshots are stored and replaced; compaction drops covered prefixes and
/// reading them then asks for the snapshot.
pub fn snapshot_and_compaction<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    store.append("doc", A, &batch(A, 1..=5)).unwrap();
    store.append("doc", B, &batch(B, 1..=2)).unwrap();
    // Nothing may be compacted without a covering snapshot.
    assert!(matches!(
        store.compact("doc", &vv(&[(A, 1)])),
        Err(SnapshotError::NotCovered { covered: 0, .. })
    ));
    let covered = vv(&[(A, 3), (B, 2)]);
    store.put_snapshot("doc", &covered, b"state@A3B2").unwrap();
    let snapshot = store.latest_snapshot("doc").unwrap().unwrap();
    assert_eq!(
        (snapshot.version_vector, snapshot.bytes),
        (covered, b"state@A3B2".to_vec())
    );
    assert!(matches!(
        store.compact("doc", &vv(&[(A, 4)])),
        Err(SnapshotError::NotCovered {
            horizon: 4,
            covered: 3,
            ..
        })
    ));
    let outcome = store.compact("doc", &vv(&[(A, 3), (B, 1)])).unwrap();
    assert_eq!(outcome.dropped, 4);
    match store.read("doc", A, 2, 10) {
        Err(ReadError::SnapshotNeeded {
            compacted,
            from_seq,
            ..
        }) => {
            assert_eq!((compacted, from_seq), (3, 2));
        }
        other => panic!("expected SnapshotNeeded, got {other:?}"),
    }
    assert!(matches!(
        store.read("doc", B, 1, 10),
        Err(ReadError::SnapshotNeeded { compacted: 1, .. })
    ));
    assert_eq!(store.read("doc", A, 4, 10).unwrap(), batch(A, 4..=5));
    assert_eq!(store.read("doc", B, 2, 10).unwrap(), batch(B, 2..=2));
    assert_eq!(store.version_vector("doc").unwrap(), vv(&[(A, 5), (B, 2)]));
    // Compaction is idempotent, and re-delivery below the horizon is harmless.
    assert_eq!(store.compact("doc", &vv(&[(A, 3)])).unwrap().dropped, 0);
    assert_eq!(
        store.append("doc", A, &batch(A, 2..=6)).unwrap().appended,
        1
    );
    // A snapshot must cover what the previous one did.
    assert!(matches!(
        store.put_snapshot("doc", &vv(&[(A, 2), (B, 2)]), b"old"),
        Err(SnapshotError::Regression {
            stored: 3,
            offered: 2,
            ..
        })
    ));
    assert_eq!(
        store.latest_snapshot("doc").unwrap().unwrap().bytes,
        b"state@A3B2"
    );
    store
        .put_snapshot("doc", &vv(&[(A, 6), (B, 2)]), b"newer")
        .unwrap();
    assert_eq!(
        store.latest_snapshot("doc").unwrap().unwrap().bytes,
        b"newer"
    );
    assert_eq!(
        store
            .compact("doc", &vv(&[(A, 6), (B, 2)]))
            .unwrap()
            .dropped,
        4
    );
    assert_eq!(store.read("doc", A, 7, 10).unwrap(), vec![]);
    store.append("doc", A, &batch(A, 7..=7)).unwrap();
    assert_eq!(store.read("doc", A, 7, 10).unwrap(), batch(A, 7..=7));
}

/// A snapshot that covers more than the log holds (received from a peer)
/// advances the log: appends continue after it.
pub fn snapshot_ahead_of_log_advances_it<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    store.append("doc", A, &batch(A, 1..=2)).unwrap();
    let head = store.feed_head().unwrap();
    store
        .put_snapshot("doc", &vv(&[(A, 5), (B, 3)]), b"peer state")
        .unwrap();
    assert_eq!(store.version_vector("doc").unwrap(), vv(&[(A, 5), (B, 3)]));
    assert!(matches!(
        store.read("doc", A, 1, 10),
        Err(ReadError::SnapshotNeeded { compacted: 5, .. })
    ));
    assert_eq!(store.read("doc", B, 4, 10).unwrap(), vec![]);
    assert!(matches!(
        store.append("doc", A, &batch(A, 7..=7)),
        Err(AppendError::Gap {
            last: 5,
            found: 7,
            ..
        })
    ));
    assert_eq!(
        store.append("doc", A, &batch(A, 4..=6)).unwrap().appended,
        1
    );
    assert_eq!(store.read("doc", A, 6, 10).unwrap(), batch(A, 6..=6));
    // The advance is in the change feed, so a peer following it learns of it.
    let items = store.changes_since(head, 10).unwrap();
    let ranges: Vec<_> = items.iter().map(|i| (i.replica, i.first, i.last)).collect();
    assert_eq!(ranges, vec![(A, 3, 5), (B, 1, 3), (A, 6, 6)]);
    // A new object can start from a snapshot.
    store.put_snapshot("fresh", &vv(&[(B, 4)]), b"s").unwrap();
    assert_eq!(store.version_vector("fresh").unwrap(), vv(&[(B, 4)]));
    assert_eq!(store.list_objects("", None, 10).unwrap(), ["doc", "fresh"]);
}

/// Many threads append at once; every append lands, in order, with its own feed position.
pub fn concurrent_appenders<S: Subject>(make: &dyn Fn() -> S) {
    const THREADS: u64 = 8;
    const APPENDS: u64 = 25;
    let subject = make();
    let store = subject.store();
    thread::scope(|scope| {
        for t in 0..THREADS {
            scope.spawn(move || {
                let replica = ReplicaId::from_u64(t + 1);
                let object = format!("obj{}", t % 3);
                for seq in 1..=APPENDS {
                    let outcome = store
                        .append(&object, replica, &batch(replica, seq..=seq))
                        .unwrap();
                    assert_eq!(outcome.appended, 1);
                }
            });
        }
    });
    for t in 0..THREADS {
        let replica = ReplicaId::from_u64(t + 1);
        let object = format!("obj{}", t % 3);
        assert_eq!(
            store.read(&object, replica, 1, 1000).unwrap(),
            batch(replica, 1..=APPENDS)
        );
    }
    let feed = store.changes_since(0, 10_000).unwrap();
    assert_eq!(feed.len() as u64, THREADS * APPENDS);
    let positions: Vec<u64> = feed.iter().map(|i| i.position).collect();
    assert_eq!(positions, (1..=THREADS * APPENDS).collect::<Vec<_>>());
}

/// Seqs at the top of the `u64` range are errors or no-ops, never overflows.
pub fn extreme_seqs_do_not_overflow<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    let max = u64::MAX;
    assert!(matches!(
        store.append("doc", A, &[Entry::new(max, b"x".to_vec())]),
        Err(AppendError::Gap { .. })
    ));
    assert!(matches!(
        store.append(
            "doc",
            A,
            &[Entry::new(max, b"x".to_vec()), Entry::new(0, b"y".to_vec())]
        ),
        Err(AppendError::NotConsecutive { .. })
    ));
    // A snapshot (from a hostile or buggy peer) claiming the whole seq space.
    store.put_snapshot("doc", &vv(&[(A, max)]), b"all").unwrap();
    assert_eq!(store.version_vector("doc").unwrap(), vv(&[(A, max)]));
    let read = store.read("doc", A, 1, 10).unwrap_err();
    assert!(matches!(read, ReadError::SnapshotNeeded { compacted, .. } if compacted == max));
    let message = store.read("doc", A, max, 1).unwrap_err().to_string();
    assert!(message.contains("compacted"), "{message}");
    assert_eq!(
        store
            .append("doc", A, &[Entry::new(max, b"x".to_vec())])
            .unwrap()
            .appended,
        0
    );
    assert_eq!(store.compact("doc", &vv(&[(A, max)])).unwrap().dropped, 0);
    let subject = subject.reopen();
    assert_eq!(
        subject.store().version_vector("doc").unwrap(),
        vv(&[(A, max)])
    );
}

/// Everything stored is there after closing and reopening.
pub fn survives_reopen<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    store.append("doc", A, &batch(A, 1..=4)).unwrap();
    store.append("other", B, &batch(B, 1..=2)).unwrap();
    store.put_snapshot("doc", &vv(&[(A, 2)]), b"snap").unwrap();
    store.compact("doc", &vv(&[(A, 2)])).unwrap();
    let feed = store.changes_since(0, 100).unwrap();

    let subject = subject.reopen();
    let store = subject.store();
    assert_eq!(store.read("doc", A, 3, 10).unwrap(), batch(A, 3..=4));
    assert!(matches!(
        store.read("doc", A, 1, 10),
        Err(ReadError::SnapshotNeeded { .. })
    ));
    assert_eq!(store.read("other", B, 1, 10).unwrap(), batch(B, 1..=2));
    assert_eq!(
        store.latest_snapshot("doc").unwrap().unwrap().bytes,
        b"snap"
    );
    assert_eq!(store.changes_since(0, 100).unwrap(), feed);
    assert_eq!(store.list_objects("", None, 10).unwrap(), ["doc", "other"]);
    let next = store.append("doc", A, &batch(A, 5..=5)).unwrap();
    assert_eq!(next.position, Some(feed.len() as u64 + 1));
    assert_eq!(store.version_vector("doc").unwrap(), vv(&[(A, 5)]));
}

/// Deleting an object reclaims its logs and snapshot and leaves a
/// tombstone with what was held; every operation on it then says so.
pub fn deletion_leaves_a_tombstone<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    store.append("doc", A, &batch(A, 1..=4)).unwrap();
    store.append("doc", B, &batch(B, 1..=2)).unwrap();
    store.append("other", A, &batch(A, 1..=1)).unwrap();
    store.put_snapshot("doc", &vv(&[(A, 2)]), b"snap").unwrap();
    store.compact("doc", &vv(&[(A, 2)])).unwrap();
    assert!(!store.is_deleted("doc").unwrap());
    assert_eq!(store.tombstone("doc").unwrap(), None);
    let head = store.feed_head().unwrap();

    let outcome = store.delete_object("doc").unwrap();
    assert!(outcome.deleted);
    assert_eq!(outcome.dropped, 4, "A 3..=4 and B 1..=2 were in the log");
    assert_eq!(outcome.position, Some(head + 1));
    assert_eq!(outcome.tombstone.version_vector, vv(&[(A, 4), (B, 2)]));
    assert!(store.is_deleted("doc").unwrap());
    assert_eq!(store.tombstone("doc").unwrap(), Some(outcome.tombstone));

    let deleted = |e: &ReadError| matches!(e, ReadError::Deleted { object } if object == "doc");
    assert!(deleted(&store.read("doc", A, 3, 10).unwrap_err()));
    assert!(deleted(&store.version_vector("doc").unwrap_err()));
    assert!(deleted(&store.latest_snapshot("doc").unwrap_err()));
    assert!(matches!(
        store.append("doc", A, &batch(A, 5..=5)),
        Err(AppendError::Deleted { .. })
    ));
    // Re-delivering what it held is refused too: deletion wins.
    assert!(matches!(
        store.append("doc", B, &batch(B, 1..=2)),
        Err(AppendError::Deleted { .. })
    ));
    assert!(matches!(
        store.put_snapshot("doc", &vv(&[(A, 9)]), b"later"),
        Err(SnapshotError::Deleted { .. })
    ));
    assert!(matches!(
        store.compact("doc", &vv(&[(A, 1)])),
        Err(SnapshotError::Deleted { .. })
    ));
    assert_eq!(store.list_objects("", None, 10).unwrap(), ["other"]);
    assert_eq!(store.read("other", A, 1, 10).unwrap(), batch(A, 1..=1));
    // The deletion is an arrival in the change feed; nothing else is.
    let items = store.changes_since(head, 10).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0].object.as_str(), items[0].kind),
        ("doc", FeedKind::Delete)
    );
    assert_eq!((items[0].first, items[0].last), (0, 0));
}

/// Deleting again changes nothing; an object never stored can be deleted
/// (a peer's deletion may come first) and then never comes into existence.
pub fn deletion_is_idempotent_and_final<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    store.append("doc", A, &batch(A, 1..=2)).unwrap();
    let first = store.delete_object("doc").unwrap();
    let head = store.feed_head().unwrap();
    let again = store.delete_object("doc").unwrap();
    assert!(!again.deleted);
    assert_eq!((again.dropped, again.position), (0, None));
    assert_eq!(again.tombstone, first.tombstone);
    assert_eq!(store.feed_head().unwrap(), head, "no second arrival");

    let fresh = store.delete_object("never").unwrap();
    assert!(fresh.deleted);
    assert!(fresh.tombstone.version_vector.is_empty());
    assert!(matches!(
        store.append("never", A, &batch(A, 1..=1)),
        Err(AppendError::Deleted { .. })
    ));
    assert!(matches!(
        store.put_snapshot("never", &vv(&[(A, 1)]), b"s"),
        Err(SnapshotError::Deleted { .. })
    ));
    assert!(matches!(
        store.version_vector("never"),
        Err(ReadError::Deleted { .. })
    ));
    // An empty batch writes nothing, so it is no error even here.
    assert_eq!(store.append("never", A, &[]).unwrap().appended, 0);
    assert!(matches!(
        store.delete_object(""),
        Err(DeleteError::ObjectId(ObjectIdError::Empty))
    ));
    assert_eq!(
        store.list_objects("", None, 10).unwrap(),
        Vec::<String>::new()
    );
}

/// Tombstones are listed by prefix in pages, and survive a reopen.
pub fn tombstones_are_listed_and_survive_reopen<S: Subject>(make: &dyn Fn() -> S) {
    let subject = make();
    let store = subject.store();
    for object in ["a/1", "a/2", "a/3", "b"] {
        store.append(object, A, &batch(A, 1..=3)).unwrap();
    }
    for object in ["a/3", "a/1", "b", "z"] {
        store.delete_object(object).unwrap();
    }
    assert_eq!(
        store.list_tombstones("", None, 10).unwrap(),
        ["a/1", "a/3", "b", "z"]
    );
    assert_eq!(store.list_tombstones("a/", None, 1).unwrap(), ["a/1"]);
    assert_eq!(
        store.list_tombstones("a/", Some("a/1"), 5).unwrap(),
        ["a/3"]
    );
    assert_eq!(store.list_objects("", None, 10).unwrap(), ["a/2"]);
    let feed = store.changes_since(0, 100).unwrap();

    let subject = subject.reopen();
    let store = subject.store();
    assert_eq!(
        store.list_tombstones("", None, 10).unwrap(),
        ["a/1", "a/3", "b", "z"]
    );
    assert_eq!(
        store.tombstone("a/1").unwrap().unwrap().version_vector,
        vv(&[(A, 3)])
    );
    assert!(matches!(
        store.append("a/1", A, &batch(A, 4..=4)),
        Err(AppendError::Deleted { .. })
    ));
    assert_eq!(store.changes_since(0, 100).unwrap(), feed);
    assert_eq!(store.read("a/2", A, 1, 10).unwrap(), batch(A, 1..=3));
}

/// A read stops at [`StoreConfig::max_read_bytes`], but always returns at
/// least one entry. Not part of [`conformance_tests!`](crate::conformance_tests)
/// because it needs a configured store: call it with a constructor that
/// applies the given config.
pub fn reads_are_capped_by_size<S: Subject>(make: &dyn Fn(StoreConfig) -> S) {
    let subject = make(StoreConfig::default().with_max_read_bytes(100));
    let store = subject.store();
    let sized = |seq: u64, len: usize| Entry::new(seq, vec![seq as u8; len]);
    let log = vec![
        sized(1, 40),
        sized(2, 40),
        sized(3, 40),
        sized(4, 500),
        sized(5, 10),
    ];
    store.append("doc", A, &log).unwrap();
    assert_eq!(store.read("doc", A, 1, 10).unwrap(), log[0..2]);
    assert_eq!(store.read("doc", A, 3, 10).unwrap(), log[2..3]);
    // One entry larger than the cap still comes back, alone.
    assert_eq!(store.read("doc", A, 4, 10).unwrap(), log[3..4]);
    assert_eq!(store.read("doc", A, 5, 10).unwrap(), log[4..5]);
    // Paging until empty visits the whole log.
    let mut next = 1;
    let mut seen = Vec::new();
    loop {
        let page = store.read("doc", A, next, 10).unwrap();
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        seen.extend(page);
    }
    assert_eq!(seen, log);
}

#[cfg(test)]
mod tests {
    crate::conformance_tests!(crate::MemoryStore::new);

    #[test]
    fn reads_are_capped_by_size() {
        super::reads_are_capped_by_size(&crate::MemoryStore::with_config);
    }
}
