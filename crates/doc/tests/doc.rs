//! The JSON document: a model test against plain JSON, convergence of
//! concurrent replicas, patches that replay to the same state, and bad input.

use converge_crdt::{ReplicaId, VersionVector};
use converge_doc::{Doc, DocError, Patch, PatchAction, PathChange, PathSeg};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value as Json, json};

fn key(k: &str) -> PathSeg {
    PathSeg::Key(k.to_string())
}

/// Applies a patch to a plain JSON mirror.
fn apply_patch(root: &mut Json, patch: &Patch) {
    let mut target = root;
    for seg in &patch.path {
        target = match seg {
            PathSeg::Key(k) => target.get_mut(k.as_str()).expect("patch path exists"),
            PathSeg::Index(i) => target.get_mut(*i).expect("patch path exists"),
        };
    }
    match (&patch.action, target) {
        (PatchAction::Put { key, value }, Json::Object(m)) => {
            if value.is_null() {
                m.remove(key);
            } else {
                m.insert(key.clone(), value.clone());
            }
        }
        (PatchAction::Insert { index, value }, Json::Array(a)) => a.insert(*index, value.clone()),
        (PatchAction::Remove { index }, Json::Array(a)) => {
            a.remove(*index);
        }
        (PatchAction::Insert { index, value }, Json::String(s)) => {
            let mut chars: Vec<char> = s.chars().collect();
            chars.insert(
                *index,
                value
                    .as_str()
                    .and_then(|v| v.chars().next())
                    .expect("a char"),
            );
            *s = chars.into_iter().collect();
        }
        (PatchAction::Remove { index }, Json::String(s)) => {
            let mut chars: Vec<char> = s.chars().collect();
            chars.remove(*index);
            *s = chars.into_iter().collect();
        }
        (PatchAction::Increment { by }, n @ Json::Number(_)) => {
            *n = json!(n.as_i64().expect("counter") + by);
        }
        (action, target) => panic!("patch {action:?} does not fit {target}"),
    }
}

#[test]
fn todo_list_round_trip() {
    let mut a = Doc::new(ReplicaId::from_u64(1));
    let patches = a
        .apply(&[
            PathChange::Set {
                path: vec![key("todos")],
                value: json!([]),
            },
            PathChange::Splice {
                path: vec![key("todos")],
                index: 0,
                delete: 0,
                insert: json!([{"title": "milk", "done": false}, {"title": "eggs", "done": false}]),
            },
            PathChange::Increment {
                path: vec![key("edits")],
                by: 2,
            },
        ])
        .unwrap();
    assert_eq!(
        a.to_json(),
        json!({"todos": [{"title": "milk", "done": false}, {"title": "eggs", "done": false}], "edits": 2})
    );
    let mut mirror = json!({});
    for p in &patches {
        apply_patch(&mut mirror, p);
    }
    assert_eq!(mirror, a.to_json());

    let mut b = Doc::new(ReplicaId::from_u64(2));
    b.apply_changes(&a.changes_since(b.version())).unwrap();
    assert_eq!(b.to_json(), a.to_json());
    // Concurrent: a ticks milk, b renames it and adds an item.
    a.apply(&[PathChange::Set {
        path: vec![key("todos"), 0.into(), key("done")],
        value: json!(true),
    }])
    .unwrap();
    b.apply(&[
        PathChange::Set {
            path: vec![key("todos"), 0.into(), key("title")],
            value: json!("oat milk"),
        },
        PathChange::Splice {
            path: vec![key("todos")],
            index: 2,
            delete: 0,
            insert: json!([{"title": "tea"}]),
        },
        PathChange::Increment {
            path: vec![key("edits")],
            by: 1,
        },
    ])
    .unwrap();
    let (fa, fb) = (a.changes_since(b.version()), b.changes_since(a.version()));
    let mut mirror_a = a.to_json();
    for p in a.apply_changes(&fb).unwrap() {
        apply_patch(&mut mirror_a, &p);
    }
    b.apply_changes(&fa).unwrap();
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(mirror_a, a.to_json(), "remote patches rebuild the state");
    assert_eq!(
        a.to_json(),
        json!({"todos": [{"title": "oat milk", "done": true}, {"title": "eggs", "done": false}, {"title": "tea"}], "edits": 3})
    );
}

#[test]
fn concurrent_map_writes_keep_conflicts_readable() {
    let mut a = Doc::new(ReplicaId::from_u64(1));
    let mut b = Doc::new(ReplicaId::from_u64(2));
    a.apply(&[PathChange::Set {
        path: vec![key("color")],
        value: json!("red"),
    }])
    .unwrap();
    b.apply(&[PathChange::Set {
        path: vec![key("color")],
        value: json!("blue"),
    }])
    .unwrap();
    let (fa, fb) = (a.changes_since(b.version()), b.changes_since(a.version()));
    a.apply_changes(&fb).unwrap();
    b.apply_changes(&fa).unwrap();
    assert_eq!(a.to_json(), b.to_json());
    let conflicts = a.conflicts(&[key("color")]).unwrap();
    assert_eq!(conflicts.len(), 2);
    assert_eq!(
        Some(conflicts[1].clone()),
        a.get(&[key("color")]),
        "the winner is listed last"
    );
    // A write that saw both resolves the conflict.
    a.apply(&[PathChange::Set {
        path: vec![key("color")],
        value: json!("green"),
    }])
    .unwrap();
    b.apply_changes(&a.changes_since(b.version())).unwrap();
    assert_eq!(b.conflicts(&[key("color")]).unwrap(), vec![json!("green")]);
}

#[test]
fn text_containers_merge_without_interleaving() {
    let mut a = Doc::new(ReplicaId::from_u64(1));
    a.apply(&[PathChange::Splice {
        path: vec![key("note")],
        index: 0,
        delete: 0,
        insert: json!("[]"),
    }])
    .unwrap();
    let mut b = Doc::new(ReplicaId::from_u64(2));
    b.apply_changes(&a.changes_since(b.version())).unwrap();
    a.apply(&[PathChange::Splice {
        path: vec![key("note")],
        index: 1,
        delete: 0,
        insert: json!("abc"),
    }])
    .unwrap();
    b.apply(&[PathChange::Splice {
        path: vec![key("note")],
        index: 1,
        delete: 0,
        insert: json!("xyz"),
    }])
    .unwrap();
    let (fa, fb) = (a.changes_since(b.version()), b.changes_since(a.version()));
    a.apply_changes(&fb).unwrap();
    b.apply_changes(&fa).unwrap();
    assert_eq!(a.to_json(), b.to_json());
    let note = a.get(&[key("note")]).unwrap();
    assert!(
        note == json!("[abcxyz]") || note == json!("[xyzabc]"),
        "{note}"
    );
}

fn list(d: &Doc) -> Json {
    d.get(&[key("l")]).unwrap_or(Json::Null)
}

fn sync_both(a: &mut Doc, b: &mut Doc) {
    let (fa, fb) = (a.changes_since(b.version()), b.changes_since(a.version()));
    a.apply_changes(&fb).unwrap();
    b.apply_changes(&fa).unwrap();
}

#[test]
fn moving_list_items() {
    let mut a = Doc::new(ReplicaId::from_u64(1));
    a.apply(&[PathChange::Set {
        path: vec![key("l")],
        value: json!(["a", "b", "c", "d", "e"]),
    }])
    .unwrap();
    let mv = |index, count, to| PathChange::Move {
        path: vec![key("l")],
        index,
        count,
        to,
    };
    a.apply(&[mv(0, 2, 3)]).unwrap();
    assert_eq!(list(&a), json!(["c", "d", "e", "a", "b"]));
    a.apply(&[mv(3, 2, 0)]).unwrap();
    assert_eq!(list(&a), json!(["a", "b", "c", "d", "e"]));
    a.apply(&[mv(4, 1, 1)]).unwrap();
    assert_eq!(list(&a), json!(["a", "e", "b", "c", "d"]));
    assert!(a.apply(&[mv(4, 2, 0)]).is_err());
    assert!(a.apply(&[mv(0, 1, 5)]).is_err());
    // A moved map element keeps its identity: paths and edits follow it.
    a.apply(&[PathChange::Set {
        path: vec![key("m")],
        value: json!([{"n": 1}, {"n": 2}]),
    }])
    .unwrap();
    a.apply(&[PathChange::Move {
        path: vec![key("m")],
        index: 0,
        count: 1,
        to: 1,
    }])
    .unwrap();
    a.apply(&[PathChange::Set {
        path: vec![key("m"), 1.into(), key("n")],
        value: json!(10),
    }])
    .unwrap();
    assert_eq!(a.get(&[key("m")]), Some(json!([{"n": 2}, {"n": 10}])));
    let mut b = Doc::new(ReplicaId::from_u64(2));
    b.apply_changes(&a.changes_since(b.version())).unwrap();
    assert_eq!(b.to_json(), a.to_json());
}

#[test]
fn concurrent_moves_of_one_item_leave_it_in_one_place() {
    let mut a = Doc::new(ReplicaId::from_u64(1));
    a.apply(&[PathChange::Set {
        path: vec![key("l")],
        value: json!(["a", "b", "c", "d"]),
    }])
    .unwrap();
    let mut b = Doc::new(ReplicaId::from_u64(2));
    b.apply_changes(&a.changes_since(b.version())).unwrap();
    let mut c = Doc::new(ReplicaId::from_u64(3));
    c.apply_changes(&a.changes_since(c.version())).unwrap();
    a.apply(&[PathChange::Move {
        path: vec![key("l")],
        index: 0,
        count: 1,
        to: 3,
    }])
    .unwrap();
    b.apply(&[PathChange::Move {
        path: vec![key("l")],
        index: 0,
        count: 1,
        to: 1,
    }])
    .unwrap();
    c.apply(&[PathChange::Delete {
        path: vec![key("l"), 2.into()],
    }])
    .unwrap();
    sync_both(&mut a, &mut b);
    sync_both(&mut b, &mut c);
    sync_both(&mut a, &mut c);
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(b.to_json(), c.to_json());
    let items = list(&a);
    let items = items.as_array().unwrap();
    assert_eq!(
        items.iter().filter(|x| **x == json!("a")).count(),
        1,
        "{items:?}"
    );
    assert_eq!(
        items.len(),
        3,
        "c deleted, a in exactly one place: {items:?}"
    );
}

#[test]
fn delete_wins_over_a_concurrent_move() {
    let mut a = Doc::new(ReplicaId::from_u64(1));
    a.apply(&[PathChange::Set {
        path: vec![key("l")],
        value: json!(["a", "b", "c"]),
    }])
    .unwrap();
    let mut b = Doc::new(ReplicaId::from_u64(2));
    b.apply_changes(&a.changes_since(b.version())).unwrap();
    a.apply(&[PathChange::Move {
        path: vec![key("l")],
        index: 0,
        count: 1,
        to: 2,
    }])
    .unwrap();
    b.apply(&[PathChange::Delete {
        path: vec![key("l"), 0.into()],
    }])
    .unwrap();
    sync_both(&mut a, &mut b);
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(list(&a), json!(["b", "c"]));
}

#[test]
fn text_positions_convert_between_units() {
    use converge_doc::PosUnit::{Chars, Utf8, Utf16};
    let mut d = Doc::new(ReplicaId::from_u64(1));
    d.apply(&[PathChange::Splice {
        path: vec![key("t")],
        index: 0,
        delete: 0,
        insert: json!("aé😀b"),
    }])
    .unwrap();
    let t = [key("t")];
    assert_eq!(d.text_position(&t, 3, Chars, Utf16).unwrap(), 4);
    assert_eq!(d.text_position(&t, 4, Utf16, Chars).unwrap(), 3);
    assert_eq!(d.text_position(&t, 3, Chars, Utf8).unwrap(), 7);
    assert!(
        d.text_position(&t, 3, Utf16, Chars).is_err(),
        "inside a surrogate pair"
    );
    assert!(d.text_position(&t, 9, Chars, Utf8).is_err());
    assert!(d.text_position(&[key("missing")], 0, Chars, Utf8).is_err());
}

#[test]
fn bad_changes_change_nothing() {
    let mut a = Doc::new(ReplicaId::from_u64(1));
    a.apply(&[PathChange::Set {
        path: vec![key("list")],
        value: json!([1, 2]),
    }])
    .unwrap();
    let before = a.to_json();
    let version = a.version().clone();
    // The second change of the transaction fails: the first is rolled back too.
    let err = a
        .apply(&[
            PathChange::Set {
                path: vec![key("x")],
                value: json!(1),
            },
            PathChange::Splice {
                path: vec![key("list")],
                index: 5,
                delete: 0,
                insert: json!([3]),
            },
        ])
        .unwrap_err();
    assert!(matches!(err, DocError::OutOfBounds { .. }), "{err}");
    assert_eq!(a.to_json(), before);
    assert_eq!(a.version(), &version);
    assert!(matches!(
        a.apply(&[PathChange::Delete {
            path: vec![key("nope")]
        }]),
        Err(DocError::PathNotFound { .. })
    ));
    assert!(
        a.apply(&[PathChange::Increment {
            path: vec![key("list")],
            by: 1
        }])
        .is_err()
    );
    assert!(
        a.apply(&[PathChange::Set {
            path: vec![],
            value: json!(1)
        }])
        .is_err()
    );
    // Remote changes that do not apply are refused whole.
    let mut b = Doc::new(ReplicaId::from_u64(2));
    let mut changes = a.changes_since(&VersionVector::new());
    if let Some(op) = changes[0].ops.last_mut() {
        op.body = converge_doc::OpBody::Delete { pos: 99 };
    }
    assert!(b.apply_changes(&changes).is_err());
    assert_eq!(b.to_json(), json!({}));
    assert!(b.version().is_empty());
    // JSON change forms parse as the HTTP API documents them.
    let parsed: Vec<PathChange> = serde_json::from_value(json!([
        {"op": "set", "path": ["a", 0, "b"], "value": 1},
        {"op": "splice", "path": ["t"], "index": 0, "delete": 1, "insert": "hi"},
        {"op": "increment", "path": ["n"], "by": -2},
        {"op": "delete", "path": ["a"]}
    ]))
    .unwrap();
    assert_eq!(parsed.len(), 4);
    assert!(serde_json::from_value::<PathChange>(json!({"op": "frobnicate", "path": []})).is_err());
}

#[test]
fn changes_out_of_order_are_held_until_their_dependencies_arrive() {
    let mut a = Doc::new(ReplicaId::from_u64(1));
    for i in 0..5 {
        a.apply(&[PathChange::Increment {
            path: vec![key("n")],
            by: i,
        }])
        .unwrap();
    }
    let mut changes = a.changes_since(&VersionVector::new());
    // Split into single-op changes delivered backwards.
    assert_eq!(changes.len(), 1);
    let c = changes.remove(0);
    let singles: Vec<_> = (0..c.ops.len())
        .map(|i| converge_doc::Change {
            id: converge_crdt::Dot::new(c.id.replica, c.id.counter + i as u64),
            parents: if i == 0 {
                c.parents.clone()
            } else {
                vec![converge_crdt::Dot::new(
                    c.id.replica,
                    c.id.counter + i as u64 - 1,
                )]
            },
            ops: vec![c.ops[i].clone()],
        })
        .collect();
    let mut b = Doc::new(ReplicaId::from_u64(2));
    for s in singles.iter().rev().take(singles.len() - 1) {
        b.receive_changes(vec![s.clone()]).unwrap();
        assert!(
            b.version().is_empty(),
            "nothing applies before its dependencies"
        );
    }
    assert_eq!(b.pending_changes(), singles.len() - 1);
    b.receive_changes(vec![singles[0].clone()]).unwrap();
    assert_eq!(b.pending_changes(), 0);
    assert_eq!(b.to_json(), a.to_json());
    // The strict form reports the missing dependency instead.
    let mut c2 = Doc::new(ReplicaId::from_u64(3));
    assert!(matches!(
        c2.apply_changes(&singles[1..2]),
        Err(DocError::MissingDependency { .. } | DocError::Gap { .. })
    ));
}

// ---- random concurrent editing -------------------------------------------

#[derive(Debug, Clone)]
enum Action {
    Edit(usize, u8, u8, u8),
    Sync(usize, usize),
}

fn action(n: usize) -> impl Strategy<Value = Action> {
    prop_oneof![
        5 => (0..n, any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(r, a, b, c)| Action::Edit(r, a, b, c)),
        2 => (0..n, 0..n).prop_map(|(a, b)| Action::Sync(a, b)),
    ]
}

/// Turns random bytes into a change that fits the document as it is.
fn random_change(doc: &Doc, a: u8, b: u8, c: u8) -> PathChange {
    let keys = ["x", "y", "list", "text", "n"];
    let k = keys[a as usize % keys.len()];
    match (k, b % 4) {
        ("list", _) => match doc.get(&[key("list")]) {
            Some(Json::Array(items)) if !items.is_empty() && b.is_multiple_of(3) => {
                let i = c as usize % items.len();
                PathChange::Splice {
                    path: vec![key("list")],
                    index: i,
                    delete: 1,
                    insert: json!([]),
                }
            }
            Some(Json::Array(items)) => {
                let i = c as usize % (items.len() + 1);
                PathChange::Splice {
                    path: vec![key("list")],
                    index: i,
                    delete: 0,
                    insert: json!([c, {"n": b}]),
                }
            }
            _ => PathChange::Set {
                path: vec![key("list")],
                value: json!([c]),
            },
        },
        ("text", _) => match doc.get(&[key("text")]) {
            Some(Json::String(s)) if !s.is_empty() && b.is_multiple_of(3) => {
                let len = s.chars().count();
                let i = c as usize % len;
                PathChange::Splice {
                    path: vec![key("text")],
                    index: i,
                    delete: 1.min(len - i),
                    insert: json!(""),
                }
            }
            Some(Json::String(s)) => {
                let i = c as usize % (s.chars().count() + 1);
                PathChange::Splice {
                    path: vec![key("text")],
                    index: i,
                    delete: 0,
                    insert: json!(["é", "ab", "z"][b as usize % 3]),
                }
            }
            _ => PathChange::Splice {
                path: vec![key("text")],
                index: 0,
                delete: 0,
                insert: json!("hi"),
            },
        },
        ("n", _) => match doc.get(&[key("n")]) {
            Some(Json::Number(_)) | None => PathChange::Increment {
                path: vec![key("n")],
                by: i64::from(c) - 100,
            },
            _ => PathChange::Delete {
                path: vec![key("n")],
            },
        },
        (k, 0) if doc.get(&[key(k)]).is_some() => PathChange::Delete { path: vec![key(k)] },
        (k, 1) => PathChange::Set {
            path: vec![key(k)],
            value: json!({"inner": c}),
        },
        (k, _) => PathChange::Set {
            path: vec![key(k)],
            value: json!(c),
        },
    }
}

fn sync(
    docs: &mut [Doc],
    mirrors: &mut [Json],
    from: usize,
    to: usize,
) -> Result<(), TestCaseError> {
    if from == to {
        return Ok(());
    }
    let changes = docs[from].changes_since(docs[to].version());
    let patches = docs[to]
        .apply_changes(&changes)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for p in &patches {
        apply_patch(&mut mirrors[to], p);
    }
    prop_assert_eq!(
        &mirrors[to],
        &docs[to].to_json(),
        "patches must rebuild the state"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(150)))]

    /// Replicas editing concurrently converge, their patches rebuild their
    /// state, and a fresh replica fed everything at once agrees.
    #[test]
    fn replicas_converge(actions in prop::collection::vec(action(3), 0..50)) {
        let n = 3;
        let mut docs: Vec<Doc> = (1..=n as u64).map(|i| Doc::new(ReplicaId::from_u64(i))).collect();
        let mut mirrors = vec![json!({}); n];
        for a in actions {
            match a {
                Action::Edit(r, x, y, z) => {
                    let change = random_change(&docs[r], x, y, z);
                    let patches = docs[r].apply(std::slice::from_ref(&change))
                        .map_err(|e| TestCaseError::fail(format!("{change:?}: {e}")))?;
                    for p in &patches {
                        apply_patch(&mut mirrors[r], p);
                    }
                    prop_assert_eq!(&mirrors[r], &docs[r].to_json());
                }
                Action::Sync(a, b) => sync(&mut docs, &mut mirrors, a, b)?,
            }
        }
        for i in 0..n - 1 {
            sync(&mut docs, &mut mirrors, i, n - 1)?;
        }
        for i in 0..n - 1 {
            sync(&mut docs, &mut mirrors, n - 1, i)?;
        }
        for d in &docs[1..] {
            prop_assert_eq!(docs[0].to_json(), d.to_json());
        }
        let mut fresh = Doc::new(ReplicaId::from_u64(99));
        fresh.apply_changes(&docs[0].changes_since(&VersionVector::new())).unwrap();
        prop_assert_eq!(fresh.to_json(), docs[0].to_json());
        // Identical encodings everywhere, and they load back.
        let bytes = docs[0].encode();
        for d in docs.iter().chain([&fresh]) {
            prop_assert_eq!(&d.encode(), &bytes, "equal replicas must encode identically");
        }
        let loaded = Doc::load(&bytes, ReplicaId::from_u64(98)).unwrap();
        prop_assert_eq!(loaded.to_json(), docs[0].to_json());
    }
}

/// Cases per property: `PROPTEST_CASES` when set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` changes by `n` replicas, each setting its own key of the root map
/// on the empty version: `n` concurrent heads.
fn concurrent_root_sets(n: u64) -> Vec<converge_doc::Change> {
    use converge_crdt::Dot;
    use converge_doc::{Change, Content, OpBody, Scalar, WireOp};
    (1..=n)
        .map(|r| Change {
            id: Dot::new(ReplicaId::from_u64(r), 1),
            parents: Vec::new(),
            ops: vec![WireOp {
                container: None,
                body: OpBody::MapSet {
                    key: format!("k{r}"),
                    value: Content::Scalar(Scalar::Int(r as i64)),
                },
            }],
        })
        .collect()
}

// Concurrent writes of one key cost the key's live values each: 20 000 of
// them took 8.5 s in release. They are bounded by
// `DocLimits::max_key_conflicts`.
#[test]
fn concurrent_writes_of_one_key_are_bounded() {
    let mut changes = concurrent_root_sets(1025);
    for c in &mut changes {
        if let converge_doc::OpBody::MapSet { key, .. } = &mut c.ops[0].body {
            *key = "k".into();
        }
    }
    let mut doc = Doc::new(ReplicaId::from_u64(0));
    doc.apply_changes(&changes[..1024]).unwrap();
    assert_eq!(doc.conflicts(&[key("k")]).map(|v| v.len()), Some(1024));
    let err = doc.apply_changes(&changes[1024..]).unwrap_err();
    assert!(matches!(err, DocError::InvalidChange { .. }), "{err}");
    assert_eq!(doc.history_len(), 1024, "nothing changes on error");
    // A later write that has seen them all replaces them.
    let mut all = Doc::new(ReplicaId::from_u64(0));
    all.apply_changes(&changes[..1024]).unwrap();
    all.apply(&[PathChange::Set {
        path: vec![key("k")],
        value: json!(0),
    }])
    .unwrap();
    assert_eq!(all.conflicts(&[key("k")]).map(|v| v.len()), Some(1));
}

// Many concurrent heads used to make applying, loading and receiving
// quadratic (a scan, then a copy, of the frontier per change): 100 000
// root changes took three to four seconds in release, now a few tenths.
#[test]
fn concurrent_root_changes_apply_load_and_receive() {
    let n = 20_000;
    let changes = concurrent_root_sets(n);
    let mut doc = Doc::new(ReplicaId::from_u64(0));
    doc.apply_changes(&changes).unwrap();
    let json = doc.to_json();
    assert_eq!(json.as_object().map(|m| m.len()), Some(n as usize));
    assert_eq!(json["k7"], json!(7));
    let loaded = Doc::load(&doc.encode(), ReplicaId::from_u64(0)).unwrap();
    assert_eq!(loaded.to_json(), json);
    let mut received = Doc::new(ReplicaId::from_u64(0));
    for chunk in changes.chunks(1000).rev() {
        received.receive_changes(chunk.to_vec()).unwrap();
    }
    assert_eq!(received.to_json(), json);
    assert_eq!(received.pending_changes(), 0);
}
