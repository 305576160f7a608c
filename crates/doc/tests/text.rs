//! Text: replay of the public editing traces, a model test against a plain
//! string, and convergence of concurrent replicas.

use std::io::Read;
use std::path::PathBuf;

use converge_crdt::{Dot, ReplicaId, VersionVector};
use converge_doc::DocError;
use converge_doc::text::{Limits, LoadError, LoadLimits, OpKind, Text, TextChange};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;

fn traces_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/traces")
}

fn load(path: &PathBuf) -> Value {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut json = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut json)
        .expect("gunzip trace");
    serde_json::from_str(&json).expect("trace is JSON")
}

fn patches(txn: &Value) -> impl Iterator<Item = (usize, usize, &str)> {
    txn["patches"].as_array().expect("patches").iter().map(|p| {
        (
            p[0].as_u64().expect("pos") as usize,
            p[1].as_u64().expect("del") as usize,
            p[2].as_str().expect("ins"),
        )
    })
}

/// Every sequential trace replayed as local edits yields its `endContent`.
#[test]
fn sequential_traces_replay() {
    let dir = traces_dir().join("sequential");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("traces dir") {
        let path = entry.expect("entry").path();
        let trace = load(&path);
        let mut text = Text::new(ReplicaId::from_u64(1));
        for txn in trace["txns"].as_array().expect("txns") {
            for (pos, del, ins) in patches(txn) {
                text.delete(pos, del).expect("delete in bounds");
                text.insert(pos, ins).expect("insert in bounds");
            }
        }
        let end = trace["endContent"].as_str().expect("endContent");
        assert_eq!(text.to_string(), end, "{}", path.display());
        // Encoding round trip, and a replica built from the change stream.
        let bytes = text.encode();
        eprintln!(
            "{}: {} ops, encoded {} bytes",
            path.display(),
            text.oplog().unwrap().len(),
            bytes.len()
        );
        let loaded = Text::load(&bytes, ReplicaId::from_u64(2)).expect("loads");
        assert_eq!(loaded.to_string(), end);
        assert_eq!(loaded.version(), text.version());
        let mut copy = Text::new(ReplicaId::from_u64(3));
        copy.apply_changes(&text.changes_since(&VersionVector::new()).unwrap())
            .expect("applies");
        assert_eq!(copy.to_string(), end);
        n += 1;
    }
    assert!(n >= 4, "expected the four sequential traces, found {n}");
}

/// Turns a concurrent trace into changes, one list per transaction.
fn concurrent_changes(trace: &Value) -> Vec<Vec<TextChange>> {
    let txns = trace["txns"].as_array().expect("txns");
    let mut counters: Vec<u64> = vec![0; trace["numAgents"].as_u64().unwrap_or(8) as usize];
    // The id of each transaction's last operation.
    let mut last_op: Vec<Option<Dot>> = Vec::new();
    let mut out = Vec::new();
    for txn in txns {
        let agent = txn["agent"].as_u64().expect("agent") as usize;
        let replica = ReplicaId::from_u64(agent as u64 + 1);
        let mut parents: Vec<Dot> = txn["parents"]
            .as_array()
            .expect("parents")
            .iter()
            .filter_map(|p| last_op[p.as_u64().expect("parent") as usize])
            .collect();
        let mut changes = Vec::new();
        for (pos, del, ins) in patches(txn) {
            let mut push = |kind, len: usize, text: &str| {
                let id = Dot::new(replica, counters[agent] + 1);
                counters[agent] += len as u64;
                changes.push(TextChange {
                    id,
                    parents: std::mem::replace(
                        &mut parents,
                        vec![Dot::new(replica, counters[agent])],
                    ),
                    kind,
                    pos,
                    len,
                    fwd: true,
                    text: text.to_string(),
                });
            };
            if del > 0 {
                push(OpKind::Delete, del, "");
            }
            let n = ins.chars().count();
            if n > 0 {
                push(OpKind::Insert, n, ins);
            }
        }
        // A transaction with no patches keeps its parents' version.
        let last = changes
            .last()
            .map(|c: &TextChange| Dot::new(c.id.replica, c.id.counter + c.len as u64 - 1));
        last_op.push(last.or_else(|| parents.last().copied()));
        out.push(changes);
    }
    out
}

/// The concurrent trace, delivered one transaction at a time in two
/// different causal orders, yields its `endContent` both times.
#[test]
fn concurrent_trace_replays_in_any_causal_order() {
    let path = traces_dir().join("concurrent/friendsforever.json.gz");
    let trace = load(&path);
    let expected = trace["endContent"].as_str().expect("endContent");
    let txns = concurrent_changes(&trace);

    let mut text = Text::new(ReplicaId::from_u64(99));
    for changes in &txns {
        text.apply_changes(changes).expect("trace applies");
    }
    assert_eq!(text.to_string(), expected);

    // Second order: each agent's transactions held back as long as causality allows.
    let raw = trace["txns"].as_array().expect("txns");
    let mut done = vec![false; txns.len()];
    let mut order = Vec::new();
    while order.len() < txns.len() {
        for prefer in [1u64, 0] {
            for (i, t) in raw.iter().enumerate() {
                let ready = !done[i]
                    && t["parents"]
                        .as_array()
                        .expect("parents")
                        .iter()
                        .all(|p| done[p.as_u64().expect("p") as usize]);
                if ready && t["agent"].as_u64() == Some(prefer) {
                    done[i] = true;
                    order.push(i);
                }
            }
        }
    }
    let mut other = Text::new(ReplicaId::from_u64(98));
    for i in order {
        other.apply_changes(&txns[i]).expect("trace applies");
    }
    assert_eq!(other.to_string(), expected);

    // Both encodings load back to the same text.
    for t in [&text, &other] {
        let loaded = Text::load(&t.encode(), ReplicaId::from_u64(97)).expect("loads");
        assert_eq!(loaded.to_string(), expected);
    }
}

#[test]
fn corrupt_encodings_are_rejected() {
    let mut a = Text::new(ReplicaId::from_u64(1));
    a.insert(0, "héllo wörld").unwrap();
    a.delete(2, 3).unwrap();
    let mut b = Text::new(ReplicaId::from_u64(2));
    b.apply_changes(&a.changes_since(&VersionVector::new()).unwrap())
        .unwrap();
    b.insert(1, "XY").unwrap();
    a.insert(0, ">").unwrap();
    a.apply_changes(&b.changes_since(a.version()).unwrap())
        .unwrap();
    let good = a.encode();
    assert_eq!(
        Text::load(&good, ReplicaId::from_u64(3))
            .unwrap()
            .to_string(),
        a.to_string()
    );
    for cut in 0..good.len() {
        assert!(
            Text::load(&good[..cut], ReplicaId::from_u64(3)).is_err(),
            "cut at {cut}"
        );
    }
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x41;
        assert!(
            Text::load(&bad, ReplicaId::from_u64(3)).is_err(),
            "flip at {i}"
        );
    }
}

/// Loads `text`'s encoding as another replica and checks that it holds the
/// same text and history (and re-encodes to the same bytes).
fn assert_round_trips(text: &Text) -> Text {
    let bytes = text.encode();
    let loaded = Text::load(&bytes, ReplicaId::from_u64(77)).expect("loads");
    assert_eq!(loaded.to_string(), text.to_string());
    assert_eq!(loaded.version(), text.version());
    assert_eq!(loaded.oplog().unwrap().len(), text.oplog().unwrap().len());
    assert_eq!(loaded.encode(), bytes, "re-encoding is stable");
    loaded
}

#[test]
fn empty_text_round_trips() {
    let empty = Text::new(ReplicaId::from_u64(1));
    let loaded = assert_round_trips(&empty);
    assert!(loaded.is_empty() && loaded.oplog().unwrap().is_empty());
    // Header; op and replica counts, text length; an empty blob of texts
    // (codec, two lengths); a raw blob of three empty column sections.
    assert_eq!(empty.encode().len(), 10 + 3 + 3 + (3 + 3));
}

#[test]
fn history_that_deletes_everything_round_trips() {
    let mut t = Text::new(ReplicaId::from_u64(1));
    t.insert(0, "abcdefghij").unwrap();
    // Backspace from the end, delete-key from the start, then one at a time.
    for _ in 0..3 {
        t.delete(t.len_chars() - 1, 1).unwrap();
    }
    t.delete(0, 2).unwrap();
    t.delete(0, 1).unwrap();
    t.delete(0, 1).unwrap();
    t.delete(1, 1).unwrap();
    t.delete(0, 1).unwrap();
    t.delete(0, 1).unwrap();
    assert!(t.is_empty());
    let loaded = assert_round_trips(&t);
    assert!(loaded.is_empty());
    assert_eq!(loaded.oplog().unwrap().len(), 20);
}

#[test]
fn unicode_text_round_trips() {
    let mut t = Text::new(ReplicaId::from_u64(1));
    // Long enough for the inserted text to be compressed.
    let line = "héllo wörld — γειά σου κόσμε — こんにちは 🌍🚀\n";
    for i in 0..20 {
        t.insert(i * 3, line).unwrap();
    }
    t.delete(5, 40).unwrap();
    t.insert(7, "ß").unwrap();
    for _ in 0..4 {
        t.delete(30, 1).unwrap(); // delete key
    }
    for k in 0..4 {
        t.delete(60 - k, 1).unwrap(); // backspace over multi-byte chars
    }
    let loaded = assert_round_trips(&t);
    // The loaded replica edits on: its positions still count characters.
    let mut edited = loaded.clone();
    edited.insert(1, "€").unwrap();
    assert_eq!(edited.to_string().chars().nth(1), Some('€'));
}

#[test]
fn concurrent_history_round_trips_and_loaded_replicas_keep_merging() {
    let mut a = Text::new(ReplicaId::from_u64(1));
    a.insert(0, "shared base text").unwrap();
    let mut b = Text::new(ReplicaId::from_u64(2));
    b.apply_changes(&a.changes_since(b.version()).unwrap())
        .unwrap();
    a.insert(6, "AAA").unwrap();
    b.delete(0, 7).unwrap();
    b.insert(0, "BB").unwrap();
    let (from_a, from_b) = (
        a.changes_since(b.version()).unwrap(),
        b.changes_since(a.version()).unwrap(),
    );
    a.apply_changes(&from_b).unwrap();
    b.apply_changes(&from_a).unwrap();
    assert_eq!(a.to_string(), b.to_string());
    // Both replicas write the same bytes for the same history.
    assert_eq!(a.encode(), b.encode());
    let mut loaded = assert_round_trips(&a);
    b.insert(1, "later").unwrap();
    loaded
        .apply_changes(&b.changes_since(loaded.version()).unwrap())
        .unwrap();
    assert_eq!(loaded.to_string(), b.to_string());
}

#[test]
fn version_1_encodings_are_refused_clearly() {
    let mut t = Text::new(ReplicaId::from_u64(1));
    t.insert(0, "x").unwrap();
    let mut bytes = t.encode();
    bytes[4..6].copy_from_slice(&1u16.to_le_bytes());
    match Text::load(&bytes, ReplicaId::from_u64(2)) {
        Err(LoadError::UnsupportedVersion {
            found: 1,
            supported: 3,
        }) => {}
        other => panic!("expected an unsupported-version error, got {other:?}"),
    }
}

/// Hand-made format version 2 bodies with a valid checksum: each breaks
/// one rule (version 2 loads eagerly: every rule is checked on load).
#[test]
fn hostile_bodies_are_refused() {
    let frame = |body: &[u8]| {
        let mut out = b"CVtx".to_vec();
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        out.extend_from_slice(body);
        out
    };
    let replica = 7u64.to_le_bytes();
    // Columns as a raw blob, then the text blob `(codec, size, bytes)`.
    let with_checkout = |ops: u8,
                         agents: &[u8],
                         graph: &[u8],
                         op_runs: &[u8],
                         text: (u8, u8, &[u8]),
                         checkout: &[u8]| {
        let mut cols = vec![ops, 1];
        cols.extend_from_slice(&replica);
        for section in [agents, graph, op_runs, checkout] {
            cols.push(section.len() as u8);
            cols.extend_from_slice(section);
        }
        let mut b = vec![0, cols.len() as u8, cols.len() as u8];
        b.extend_from_slice(&cols);
        b.extend_from_slice(&[text.0, text.1, text.2.len() as u8]);
        b.extend_from_slice(text.2);
        b
    };
    let body =
        |ops, agents, graph, op_runs, text| with_checkout(ops, agents, graph, op_runs, text, &[]);
    // A valid one first: "ab" typed at 0 (one run of two inserts).
    let good = body(2, &[2], &[2 << 2], &[0b001], (0, 2, b"ab"));
    let loaded = Text::load(&frame(&good), ReplicaId::from_u64(1)).expect("valid body loads");
    assert_eq!(loaded.to_string(), "ab");
    let cases: [(&str, Vec<u8>); 9] = [
        (
            "authors short",
            body(2, &[1], &[2 << 2], &[0b001], (0, 2, b"ab")),
        ),
        (
            "graph short",
            body(2, &[2], &[1 << 2], &[0b001], (0, 2, b"ab")),
        ),
        (
            "parent forward",
            body(2, &[2], &[2 << 2 | 1, 1], &[0b001], (0, 2, b"ab")),
        ),
        (
            "ops short",
            body(2, &[2], &[2 << 2], &[0b000], (0, 1, b"a")),
        ),
        (
            "text short",
            body(2, &[2], &[2 << 2], &[0b001], (0, 1, b"a")),
        ),
        (
            "text long",
            body(2, &[2], &[2 << 2], &[0b001], (0, 3, b"abc")),
        ),
        (
            "bad codec",
            body(2, &[2], &[2 << 2], &[0b001], (9, 2, b"ab")),
        ),
        (
            "bad deflate",
            body(2, &[2], &[2 << 2], &[0b001], (1, 2, &[0xff, 0xff])),
        ),
        (
            "insert past end",
            body(2, &[2], &[2 << 2], &[0b101, 2], (0, 2, b"ab")),
        ),
    ];
    for (why, bad) in cases {
        assert!(
            Text::load(&frame(&bad), ReplicaId::from_u64(1)).is_err(),
            "{why}"
        );
    }
    // Checkouts: "ab" typed, stored with its checkout (one run, ops 0..2).
    let ab = |checkout: &[u8]| {
        frame(&with_checkout(
            2,
            &[2],
            &[2 << 2],
            &[0b001],
            (0, 2, b"ab"),
            checkout,
        ))
    };
    let loaded = Text::load(&ab(&[1, 0, 1]), ReplicaId::from_u64(1)).expect("checkout loads");
    assert_eq!(loaded.to_string(), "ab");
    for (why, checkout) in [
        ("past the log", &[1, 0, 2][..]),
        ("an op twice", &[2, 0, 0, 1, 0]),
        ("trailing bytes", &[1, 0, 1, 5]),
        ("truncated", &[2, 0, 0]),
    ] {
        assert!(
            Text::load(&ab(checkout), ReplicaId::from_u64(1)).is_err(),
            "{why}"
        );
    }
    // "a" typed then deleted: a checkout may not name the delete.
    let deleted = |checkout: &[u8]| {
        frame(&with_checkout(
            2,
            &[2],
            &[2 << 2],
            &[0b00, 0b110],
            (0, 1, b"a"),
            checkout,
        ))
    };
    let empty = Text::load(&deleted(&[0]), ReplicaId::from_u64(1)).expect("loads");
    assert!(empty.is_empty());
    assert!(Text::load(&deleted(&[1, 2, 0]), ReplicaId::from_u64(1)).is_err());
    // A checkout that is well-formed but disagrees with the history ("b"
    // where the history says "ab") cannot be told apart without a replay;
    // changes that do not fit it are refused, never a panic.
    let mut lying = Text::load(&ab(&[1, 2, 0]), ReplicaId::from_u64(1)).expect("loads");
    assert_eq!(lying.to_string(), "b");
    let mut honest = Text::load(&ab(&[1, 0, 1]), ReplicaId::from_u64(9)).unwrap();
    honest.insert(2, "!").unwrap();
    assert!(
        lying
            .apply_changes(&honest.changes_since(lying.version()).unwrap())
            .is_err()
    );
    assert_eq!(lying.to_string(), "b");

    // Past the op limit: a typed "too large" error, before any work.
    let limits = LoadLimits {
        max_ops: 1,
        ..LoadLimits::default()
    };
    assert!(matches!(
        Text::load_with_limits(&frame(&good), ReplicaId::from_u64(1), &limits),
        Err(LoadError::TooLarge(_))
    ));
}

/// Frames a body as format `version` with a valid checksum.
fn frame_as(version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = b"CVtx".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// A hand-made format version 3 body, every blob raw: `ops` operations by
/// replica 7 (`count` of them by its summary), the text and the inserted
/// text, the columns.
fn v3_body(
    ops: u8,
    count: u8,
    text: &[u8],
    agents: &[u8],
    graph: &[u8],
    op_runs: &[u8],
    inserted: &[u8],
) -> Vec<u8> {
    let mut b = vec![ops, 1];
    b.extend_from_slice(&7u64.to_le_bytes());
    b.push(count);
    b.push(text.len() as u8);
    let texts = [text, inserted].concat();
    let mut cols = Vec::new();
    for section in [agents, graph, op_runs] {
        cols.push(section.len() as u8);
        cols.extend_from_slice(section);
    }
    for blob in [&texts, &cols] {
        b.extend_from_slice(&[0, blob.len() as u8, blob.len() as u8]);
        b.extend_from_slice(blob);
    }
    b
}

/// Format version 3 loads the text and leaves the history encoded: what
/// the summary and the blobs' framing say is checked on load; a history
/// that does not decode is refused on first use, through `oplog`,
/// `changes_since` and edits, and the text stays as loaded.
#[test]
fn version_3_checks_the_summary_on_load_and_the_history_on_first_use() {
    let good = v3_body(2, 2, b"ab", &[2], &[2 << 2], &[0b001], b"ab");
    let mut loaded = Text::load(&frame_as(3, &good), ReplicaId::from_u64(1)).expect("loads");
    assert_eq!(loaded.to_string(), "ab");
    assert_eq!(loaded.version().get(ReplicaId::from_u64(7)), 2);
    assert_eq!(
        loaded.encode(),
        frame_as(3, &good),
        "unchanged: the same bytes"
    );
    assert_eq!(loaded.oplog().unwrap().len(), 2);
    loaded.insert(2, "c").unwrap();
    assert_eq!(loaded.to_string(), "abc");
    assert_eq!(
        Text::load(&loaded.encode(), ReplicaId::from_u64(2))
            .unwrap()
            .to_string(),
        "abc"
    );

    let mut trailing = good.clone();
    trailing.push(0);
    let mut long_text = good.clone();
    // The text's length: 5, in a blob of 4 bytes.
    long_text[11] = 5;
    let mut deflated = v3_body(2, 2, b"", &[2], &[2 << 2], &[0b001], b"");
    // The texts blob: "abab" deflated (a stored block) but claiming 6
    // bytes, and a 5-byte text: the stream ends first.
    let stored = [1, 4, 0, 0xfb, 0xff, b'a', b'b', b'a', b'b'];
    deflated.splice(
        11..15,
        [5, 1, 6, stored.len() as u8].into_iter().chain(stored),
    );
    let refused_on_load: [(&str, Vec<u8>); 8] = [
        (
            "counts do not add up",
            v3_body(2, 1, b"ab", &[2], &[2 << 2], &[0b001], b"ab"),
        ),
        (
            "no operations by a replica",
            v3_body(0, 0, b"", &[], &[], &[], b""),
        ),
        (
            "text not UTF-8",
            v3_body(2, 2, &[0xff, 0xfe], &[2], &[2 << 2], &[0b001], b"ab"),
        ),
        ("trailing bytes", trailing),
        ("text past its blob", long_text),
        ("text past its deflated blob", deflated),
        ("truncated", good[..good.len() - 1].to_vec()),
        ("summary cut", good[..5].to_vec()),
    ];
    for (why, bad) in refused_on_load {
        assert!(
            Text::load(&frame_as(3, &bad), ReplicaId::from_u64(1)).is_err(),
            "{why}"
        );
    }

    let refused_on_use: [(&str, Vec<u8>); 6] = [
        (
            "authors short",
            v3_body(2, 2, b"ab", &[1], &[2 << 2], &[0b001], b"ab"),
        ),
        (
            "parent forward",
            v3_body(2, 2, b"ab", &[2], &[2 << 2 | 1, 1], &[0b001], b"ab"),
        ),
        (
            "ops short",
            v3_body(2, 2, b"ab", &[2], &[2 << 2], &[0b000], b"a"),
        ),
        (
            "inserted text long",
            v3_body(2, 2, b"ab", &[2], &[2 << 2], &[0b001], b"abc"),
        ),
        (
            "text longer than the history makes",
            v3_body(2, 2, b"abc", &[2], &[2 << 2], &[0b001], b"ab"),
        ),
        (
            "insert past end",
            v3_body(2, 2, b"ab", &[2], &[2 << 2], &[0b101, 2], b"ab"),
        ),
    ];
    for (why, bad) in refused_on_use {
        let bytes = frame_as(3, &bad);
        let mut t = Text::load(&bytes, ReplicaId::from_u64(1)).expect(why);
        let shown = t.to_string();
        assert!(matches!(t.oplog(), Err(LoadError::Malformed(_))), "{why}");
        assert!(t.changes_since(&VersionVector::new()).is_err(), "{why}");
        // A peer that has everything needs nothing: no decoding.
        let all = t.version().clone();
        assert_eq!(t.changes_since(&all).unwrap(), vec![], "{why}");
        assert!(
            matches!(
                t.insert(0, "x"),
                Err(DocError::History(LoadError::Malformed(_)))
            ),
            "{why}"
        );
        assert!(matches!(t.delete(0, 1), Err(DocError::History(_))), "{why}");
        let mut other = Text::new(ReplicaId::from_u64(9));
        other.insert(0, "z").unwrap();
        assert!(
            matches!(
                t.apply_changes(&other.changes_since(&VersionVector::new()).unwrap()),
                Err(DocError::History(_))
            ),
            "{why}"
        );
        // Nothing changed, and the error stays.
        assert_eq!(t.to_string(), shown, "{why}");
        assert_eq!(t.encode(), bytes, "{why}");
        assert!(t.oplog().is_err(), "{why}");
    }
}

/// Loading leaves a history encoded until it is needed, and reads it right
/// when it is: merging into a loaded replica, and from it.
#[test]
fn loaded_histories_decode_when_needed() {
    let doc = golden_doc();
    let loaded = Text::load(&doc.encode(), ReplicaId::from_u64(5)).unwrap();
    // Changes a peer lacks come from the decoded history.
    let mut peer = Text::new(ReplicaId::from_u64(6));
    peer.apply_changes(&loaded.changes_since(peer.version()).unwrap())
        .unwrap();
    assert_eq!(peer.to_string(), doc.to_string());
    // Changes already held leave the history encoded and the text as is.
    let mut again = Text::load(&doc.encode(), ReplicaId::from_u64(5)).unwrap();
    again
        .apply_changes(&doc.changes_since(&VersionVector::new()).unwrap())
        .unwrap();
    assert_eq!(again.encode(), doc.encode());
    // New ones merge.
    peer.insert(3, "PEER").unwrap();
    again
        .apply_changes(&peer.changes_since(again.version()).unwrap())
        .unwrap();
    assert_eq!(again.to_string(), peer.to_string());
    assert_eq!(again.version(), peer.version());
}

/// The document behind the golden encodings: two replicas, concurrent
/// edits, deletes, non-ASCII text, and enough of it to be compressed.
fn golden_doc() -> Text {
    let mut a = Text::new(ReplicaId::from_u64(1));
    a.insert(0, "héllo wörld, ").unwrap();
    a.insert(
        13,
        &"the quick brown fox jumps over the lazy dog; ".repeat(3),
    )
    .unwrap();
    a.delete(2, 3).unwrap();
    let mut b = Text::new(ReplicaId::from_u64(2));
    b.apply_changes(&a.changes_since(&VersionVector::new()).unwrap())
        .unwrap();
    b.insert(1, "XY").unwrap();
    b.delete(20, 10).unwrap();
    a.insert(0, ">").unwrap();
    a.insert(50, "ünïcode").unwrap();
    a.apply_changes(&b.changes_since(a.version()).unwrap())
        .unwrap();
    a
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `golden_doc()` as format version 2 wrote it.
const GOLDEN_V2: &str = "\
435674780200801c2a71004242ab010201000000000000000200000000000000\
03be021904fc0431090d91091fa3020c2d62056f8f01221708ae0200af0200bc\
0201bf0200060f1414c80106d5015f01a20150b5cac11140301005d0567e013a\
30a30e8e2421585942041d39b939b96d6366f4e0fc9e95938811e5f6a4132cd6\
600aadea51798e0e356fe8c230cee0d5f88fa93c76686ed21f73268f934bb136\
79f102";

/// `golden_doc()` as format version 3 writes it.
const GOLDEN_V3: &str = "\
43567478030081185d6dab010201000000000000009f0102000000000000000c\
950101b70265ad8f311240301444aff20fe006669c83120941e41322b8512a9d\
4af72f6646918686d1eebc9ddd178938210796762d5900a3e0d09b2a9fa1366d\
37004e5c5fa14cd7850e455b8e8c03c332f46c039946aba0c0c7d60758909312\
6fa7fe1f7a0547de3f4e4e00171703be021904fc0431090d91091fa3020c2d62\
056f8f0122";

/// Old encodings keep loading, to the same text and history.
#[test]
fn golden_encodings_load() {
    let doc = golden_doc();
    let all = doc.changes_since(&VersionVector::new()).unwrap();
    for (version, bytes) in [(2u16, hex(GOLDEN_V2)), (3, hex(GOLDEN_V3))] {
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), version);
        let loaded = Text::load(&bytes, ReplicaId::from_u64(3)).expect("golden loads");
        assert_eq!(loaded.to_string(), doc.to_string(), "v{version}");
        assert_eq!(loaded.version(), doc.version(), "v{version}");
        assert_eq!(
            loaded.changes_since(&VersionVector::new()).unwrap(),
            all,
            "v{version}"
        );
        // Either re-encodes as the current version, which loads the same.
        let again = Text::load(&loaded.encode(), ReplicaId::from_u64(4)).unwrap();
        assert_eq!(again.to_string(), doc.to_string());
        assert_eq!(again.changes_since(&VersionVector::new()).unwrap(), all);
    }
}

#[test]
fn concurrent_typing_at_one_place_does_not_interleave() {
    let mut a = Text::new(ReplicaId::from_u64(1));
    a.insert(0, "[]").unwrap();
    let mut b = Text::new(ReplicaId::from_u64(2));
    b.apply_changes(&a.changes_since(&VersionVector::new()).unwrap())
        .unwrap();
    for (i, c) in "abc".chars().enumerate() {
        a.insert(1 + i, &c.to_string()).unwrap();
    }
    for (i, c) in "xyz".chars().enumerate() {
        b.insert(1 + i, &c.to_string()).unwrap();
    }
    let (fa, fb) = (
        a.changes_since(b.version()).unwrap(),
        b.changes_since(a.version()).unwrap(),
    );
    a.apply_changes(&fb).unwrap();
    b.apply_changes(&fa).unwrap();
    assert_eq!(a.to_string(), b.to_string());
    assert!(
        ["[abcxyz]", "[xyzabc]"].contains(&a.to_string().as_str()),
        "{a}"
    );
}

#[test]
fn insert_next_to_concurrently_deleted_text_lands_where_meant() {
    let mut a = Text::new(ReplicaId::from_u64(1));
    a.insert(0, "hello world").unwrap();
    let mut b = Text::new(ReplicaId::from_u64(2));
    b.apply_changes(&a.changes_since(&VersionVector::new()).unwrap())
        .unwrap();
    a.delete(5, 6).unwrap(); // "hello"
    b.insert(11, "!").unwrap(); // "hello world!"
    b.insert(6, "big ").unwrap(); // "hello big world!"
    let (fa, fb) = (
        a.changes_since(b.version()).unwrap(),
        b.changes_since(a.version()).unwrap(),
    );
    a.apply_changes(&fb).unwrap();
    b.apply_changes(&fa).unwrap();
    assert_eq!(a.to_string(), "hellobig !");
    assert_eq!(b.to_string(), a.to_string());
}

#[test]
fn bad_changes_are_refused_and_change_nothing() {
    let mut a = Text::new(ReplicaId::from_u64(1));
    a.insert(0, "abc").unwrap();
    let good = a.changes_since(&VersionVector::new()).unwrap();
    let mut b = Text::new(ReplicaId::from_u64(2));
    // Out of bounds in its version.
    let mut bad = good.clone();
    bad[0].pos = 10;
    assert!(b.apply_changes(&bad).is_err());
    assert_eq!(b.to_string(), "");
    assert!(b.version().is_empty(), "nothing was kept");
    // Gap: the second half without the first.
    a.insert(3, "def").unwrap();
    let later = a
        .changes_since(&[(ReplicaId::from_u64(1), 3)].into_iter().collect())
        .unwrap();
    assert!(b.apply_changes(&later).is_err());
    // Text that does not match the length.
    let mut bad = good.clone();
    bad[0].text = "ab".into();
    assert!(b.apply_changes(&bad).is_err());
    // Local edits out of bounds.
    assert!(b.insert(1, "x").is_err());
    assert!(b.delete(0, 1).is_err());
    // The good changes still apply afterwards; applying twice is a no-op.
    b.apply_changes(&good).unwrap();
    b.apply_changes(&good).unwrap();
    assert_eq!(b.to_string(), "abc");
}

#[test]
fn position_conversions() {
    let mut t = Text::new(ReplicaId::from_u64(1));
    t.insert(0, "aé😀b").unwrap();
    // chars: a é 😀 b ; utf8: 1 2 4 1 ; utf16: 1 1 2 1
    let chars = [0, 1, 2, 3, 4];
    let utf8 = [0, 1, 3, 7, 8];
    let utf16 = [0, 1, 2, 4, 5];
    for i in 0..5 {
        assert_eq!(t.chars_to_utf8(chars[i]).unwrap(), utf8[i]);
        assert_eq!(t.utf8_to_chars(utf8[i]).unwrap(), chars[i]);
        assert_eq!(t.chars_to_utf16(chars[i]).unwrap(), utf16[i]);
        assert_eq!(t.utf16_to_chars(utf16[i]).unwrap(), chars[i]);
    }
    assert!(t.utf16_to_chars(3).is_err(), "inside a surrogate pair");
    assert!(t.utf8_to_chars(2).is_err(), "inside a character");
    assert!(t.chars_to_utf8(5).is_err());
    assert!(t.utf16_to_chars(6).is_err());
    // Large texts span many rope chunks.
    let long: String = "x😀".repeat(5000);
    t.insert(4, &long).unwrap();
    assert_eq!(t.chars_to_utf16(4 + 10_000).unwrap(), 5 + 15_000);
    assert_eq!(t.utf16_to_chars(5 + 15_000).unwrap(), 4 + 10_000);
    assert_eq!(t.chars_to_utf8(4 + 10_000).unwrap(), 8 + 25_000);
}

#[derive(Debug, Clone)]
enum Action {
    Insert(usize, usize, String),
    Delete(usize, usize, usize),
    Sync(usize, usize),
}

fn action() -> impl Strategy<Value = Action> {
    actions_over(3, any::<usize>().boxed())
}

/// Actions by `n` replicas at positions drawn from `pos` (modulo the length).
fn actions_over(n: usize, pos: BoxedStrategy<usize>) -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0..n, pos.clone(), "[a-zé😀]{1,4}").prop_map(|(r, p, s)| Action::Insert(r, p, s)),
        2 => (0..n, pos, 1..4usize).prop_map(|(r, p, n)| Action::Delete(r, p, n)),
        1 => (0..n, 0..n).prop_map(|(a, b)| Action::Sync(a, b)),
    ]
}

fn sync(texts: &mut [Text], from: usize, to: usize) {
    if from == to {
        return;
    }
    let changes = texts[from].changes_since(texts[to].version()).unwrap();
    texts[to]
        .apply_changes(&changes)
        .expect("changes from a replica apply");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(200)))]

    /// Corrupting the body (with a fixed-up checksum, so the decoder's own
    /// checks are what stands) yields an error or a valid text, never a panic.
    #[test]
    fn corrupt_bodies_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut a = Text::new(ReplicaId::from_u64(1));
        a.insert(0, "hello wörld, hello text").unwrap();
        a.delete(3, 4).unwrap();
        let mut b = Text::new(ReplicaId::from_u64(2));
        b.apply_changes(&a.changes_since(&VersionVector::new()).unwrap()).unwrap();
        b.insert(2, "zz").unwrap();
        a.insert(5, "yy").unwrap();
        a.apply_changes(&b.changes_since(a.version()).unwrap()).unwrap();
        let mut bytes = a.encode();
        for (i, x) in &flips {
            let i = 10 + i.index(bytes.len() - 10);
            bytes[i] ^= x | 1;
        }
        let crc = crc32fast::hash(&bytes[10..]);
        bytes[6..10].copy_from_slice(&crc.to_le_bytes());
        if let Ok(mut t) = Text::load(&bytes, ReplicaId::from_u64(3)) {
            // Whatever loaded is internally consistent: it can be re-encoded and reloaded.
            let again = Text::load(&t.encode(), ReplicaId::from_u64(4)).unwrap();
            prop_assert_eq!(again.to_string(), t.to_string());
            let shown = t.to_string();
            if t.oplog().is_ok() {
                // A history that decodes takes edits, and re-encodes.
                t.insert(0, "!").unwrap();
                let again = Text::load(&t.encode(), ReplicaId::from_u64(4)).unwrap();
                prop_assert_eq!(again.to_string(), format!("!{shown}"));
                prop_assert!(again.oplog().is_ok());
            } else {
                // One that does not refuses them, changing nothing.
                prop_assert!(matches!(t.insert(0, "!"), Err(DocError::History(_))));
                prop_assert!(t.changes_since(&VersionVector::new()).is_err());
                prop_assert_eq!(t.to_string(), shown);
            }
        }
    }

    /// One replica editing alone matches a plain string after every step.
    #[test]
    fn matches_a_string(actions in prop::collection::vec(action(), 0..60)) {
        let mut text = Text::new(ReplicaId::from_u64(1));
        let mut model: Vec<char> = Vec::new();
        for a in actions {
            match a {
                Action::Insert(_, p, s) => {
                    let p = p % (model.len() + 1);
                    text.insert(p, &s).unwrap();
                    model.splice(p..p, s.chars());
                }
                Action::Delete(_, p, n) if !model.is_empty() => {
                    let p = p % model.len();
                    let n = n.min(model.len() - p);
                    text.delete(p, n).unwrap();
                    model.drain(p..p + n);
                }
                _ => {}
            }
            prop_assert_eq!(text.to_string(), model.iter().collect::<String>());
        }
    }

    /// Three replicas editing concurrently and syncing at random converge,
    /// whatever the order.
    #[test]
    fn replicas_converge(actions in prop::collection::vec(action(), 0..50)) {
        check_convergence(3, actions)?;
    }

    /// Four replicas typing mostly at the same few places: the hardest case
    /// for ordering concurrent insertions.
    #[test]
    fn replicas_converge_at_hot_spots(
        actions in prop::collection::vec(actions_over(4, (0usize..3).boxed()), 0..60),
    ) {
        check_convergence(4, actions)?;
    }
}

/// `n` new replicas after performing `actions` (positions taken modulo the
/// text's length; deletes of an empty text skipped).
fn run_actions(n: usize, actions: Vec<Action>) -> Vec<Text> {
    let mut texts: Vec<Text> = (1..=n as u64)
        .map(|i| Text::new(ReplicaId::from_u64(i)))
        .collect();
    for a in actions {
        match a {
            Action::Insert(r, p, s) => {
                let p = p % (texts[r].len_chars() + 1);
                texts[r].insert(p, &s).unwrap();
            }
            Action::Delete(r, p, n) if !texts[r].is_empty() => {
                let len = texts[r].len_chars();
                let p = p % len;
                texts[r].delete(p, n.min(len - p)).unwrap();
            }
            Action::Sync(a, b) => sync(&mut texts, a, b),
            _ => {}
        }
    }
    texts
}

fn check_convergence(n: usize, actions: Vec<Action>) -> Result<(), TestCaseError> {
    let mut texts = run_actions(n, actions);
    // Gather everything on the last replica, then spread it back.
    for i in 0..n - 1 {
        sync(&mut texts, i, n - 1);
    }
    for i in 0..n - 1 {
        sync(&mut texts, n - 1, i);
    }
    for t in &texts[1..] {
        prop_assert_eq!(texts[0].to_string(), t.to_string());
    }
    // A replica that receives everything at once from scratch agrees too.
    let mut fresh = Text::new(ReplicaId::from_u64(99));
    fresh
        .apply_changes(&texts[n - 1].changes_since(&VersionVector::new()).unwrap())
        .unwrap();
    prop_assert_eq!(fresh.to_string(), texts[0].to_string());
    Ok(())
}

/// Cases per property: `PROPTEST_CASES` when set (to run harder), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` one-character inserts by `n` replicas, each on the empty version,
/// with a different character per replica (so that order shows).
fn concurrent_root_inserts(n: u64) -> Vec<TextChange> {
    (1..=n)
        .map(|r| TextChange {
            id: Dot::new(ReplicaId::from_u64(r), 1),
            parents: Vec::new(),
            kind: OpKind::Insert,
            pos: 0,
            len: 1,
            fwd: true,
            text: char::from_u32(0x4e00 + r as u32).unwrap().to_string(),
        })
        .collect()
}

/// Concurrent changes received one at a time (each merge continuing the
/// previous one's replay) give the text a batch gives, whatever the order.
#[test]
fn concurrent_changes_received_one_at_a_time_match_a_batch() {
    let changes = concurrent_root_inserts(300);
    // Changes made after seeing all 300 name 300 parents.
    let roomy = || Limits {
        max_parents: 1000,
        ..Default::default()
    };
    let mut batch = Text::new(ReplicaId::from_u64(1000)).with_limits(roomy());
    batch.apply_changes(&changes).unwrap();
    assert_eq!(batch.len_chars(), 300);
    let mut each = Text::new(ReplicaId::from_u64(1001)).with_limits(roomy());
    for c in &changes {
        each.apply_changes(std::slice::from_ref(c)).unwrap();
    }
    assert_eq!(each.to_string(), batch.to_string());
    let mut backwards = Text::new(ReplicaId::from_u64(1002));
    for c in changes.iter().rev() {
        backwards.apply_changes(std::slice::from_ref(c)).unwrap();
    }
    assert_eq!(backwards.to_string(), batch.to_string());
    // Deletes made concurrently by others, received one at a time.
    let mut deleters: Vec<TextChange> = Vec::new();
    for r in 0..20u64 {
        let mut t = Text::new(ReplicaId::from_u64(2000 + r));
        t.apply_changes(&changes).unwrap();
        t.delete((r as usize * 7) % 280, 3).unwrap();
        t.insert((r as usize * 11) % 280, "ab").unwrap();
        deleters.extend(t.changes_since(batch.version()).unwrap());
    }
    for c in &deleters {
        each.apply_changes(std::slice::from_ref(c)).unwrap();
    }
    batch.apply_changes(&deleters).unwrap();
    assert_eq!(each.to_string(), batch.to_string());
}

/// Many replicas inserting at one place in the middle of a shared text,
/// concurrently: every arrival order gives the same text, with the
/// inserts together between their neighbours (the merge passes over
/// whole chunks of such siblings; this checks it places them as one by one).
#[test]
fn many_concurrent_inserts_at_one_place_agree_in_any_order() {
    let mut base = Text::new(ReplicaId::from_u64(1));
    base.insert(0, "hello world").unwrap();
    let shared = base.changes_since(&VersionVector::new()).unwrap();
    let mut changes = Vec::new();
    for r in 0..400u64 {
        let mut t = Text::new(ReplicaId::from_u64(10 + (r * 7919) % 400));
        t.apply_changes(&shared).unwrap();
        let ch = char::from_u32(0x4e00 + r as u32).unwrap();
        t.insert(5, &ch.to_string()).unwrap();
        changes.extend(t.changes_since(base.version()).unwrap());
    }
    let roomy = || Limits {
        max_parents: 1000,
        ..Default::default()
    };
    let receive = |order: &[usize], each: bool| {
        let mut t = Text::new(ReplicaId::from_u64(5000)).with_limits(roomy());
        t.apply_changes(&shared).unwrap();
        let picked: Vec<TextChange> = order.iter().map(|i| changes[*i].clone()).collect();
        if each {
            for c in &picked {
                t.apply_changes(std::slice::from_ref(c)).unwrap();
            }
        } else {
            t.apply_changes(&picked).unwrap();
        }
        t.to_string()
    };
    let forward: Vec<usize> = (0..changes.len()).collect();
    let backward: Vec<usize> = forward.iter().rev().copied().collect();
    let mixed: Vec<usize> = (0..changes.len())
        .map(|i| (i * 37) % changes.len())
        .collect();
    let want = receive(&backward, true);
    assert!(want.starts_with("hello") && want.ends_with(" world"));
    assert_eq!(want.chars().count(), 11 + 400);
    for (order, each) in [
        (&forward, false),
        (&forward, true),
        (&mixed, false),
        (&mixed, true),
        (&backward, false),
    ] {
        assert_eq!(receive(order, each), want);
    }
}

/// A local edit or a refused change between receives leaves no stale
/// replay state behind: later merges still agree with a fresh replica.
#[test]
fn local_edits_and_refused_changes_between_receives() {
    let changes = concurrent_root_inserts(40);
    let mut a = Text::new(ReplicaId::from_u64(500));
    for (i, c) in changes.iter().enumerate() {
        a.apply_changes(std::slice::from_ref(c)).unwrap();
        if i % 7 == 3 {
            a.insert(i % a.len_chars(), "L").unwrap();
        }
        if i % 5 == 1 {
            a.delete(0, 1).unwrap();
        }
        if i % 6 == 2 {
            // Out of bounds in its version: refused, nothing kept.
            let mut bad = concurrent_root_inserts(1)[0].clone();
            bad.id = Dot::new(ReplicaId::from_u64(900 + i as u64), 1);
            bad.pos = 5;
            assert!(a.apply_changes(&[bad]).is_err());
        }
    }
    let mut fresh = Text::new(ReplicaId::from_u64(501));
    fresh
        .apply_changes(&a.changes_since(&VersionVector::new()).unwrap())
        .unwrap();
    assert_eq!(fresh.to_string(), a.to_string());
}

/// Checking that changes extend their replica's chain is budgeted: a batch
/// that needs more than `Limits::max_chain_check` graph runs is refused
/// whole, and the same batch passes under the default limit.
#[test]
fn chain_checks_are_budgeted() {
    // Two replicas taking turns: each change's check walks past the other's.
    let mut a = Text::new(ReplicaId::from_u64(1));
    let mut b = Text::new(ReplicaId::from_u64(2));
    for i in 0..50 {
        a.insert(0, "a").unwrap();
        b.apply_changes(&a.changes_since(b.version()).unwrap())
            .unwrap();
        b.insert(i, "b").unwrap();
        a.apply_changes(&b.changes_since(a.version()).unwrap())
            .unwrap();
    }
    let all = a.changes_since(&VersionVector::new()).unwrap();
    let limits = Limits {
        max_chain_check: 20,
        ..Default::default()
    };
    let mut tight = Text::new(ReplicaId::from_u64(3)).with_limits(limits);
    let err = tight.apply_changes(&all).unwrap_err();
    assert!(err.to_string().contains("max_chain_check"), "{err}");
    assert!(
        tight.is_empty() && tight.version().is_empty(),
        "nothing kept"
    );
    let mut roomy = Text::new(ReplicaId::from_u64(4));
    roomy.apply_changes(&all).unwrap();
    assert_eq!(roomy.to_string(), a.to_string());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(40)))]

    /// Many replicas edit concurrently (syncing now and then); then each
    /// replica's changes reach a receiver one change at a time, in a
    /// random order of replicas. Every receiver ends with the same text.
    #[test]
    fn many_replicas_merging_in_random_orders_converge(
        actions in prop::collection::vec(actions_over(8, any::<usize>().boxed()), 0..80),
        orders in prop::collection::vec(Just((0..8usize).collect::<Vec<_>>()).prop_shuffle(), 3),
    ) {
        let n = 8;
        let texts = run_actions(n, actions);
        let mut results = Vec::new();
        for (k, order) in orders.iter().enumerate() {
            let mut rx = Text::new(ReplicaId::from_u64(100 + k as u64));
            for &r in order {
                // One change at a time, each in causal order.
                for c in texts[r].changes_since(rx.version()).unwrap() {
                    rx.apply_changes(std::slice::from_ref(&c)).unwrap();
                }
            }
            results.push(rx.to_string());
        }
        let mut batch = Text::new(ReplicaId::from_u64(200));
        for t in &texts {
            let changes = t.changes_since(batch.version()).unwrap();
            batch.apply_changes(&changes).unwrap();
        }
        for r in &results {
            prop_assert_eq!(r, &batch.to_string());
        }
    }
}
