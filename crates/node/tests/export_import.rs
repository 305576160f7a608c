//! `Node::export` and `Node::import`: a document's history moved between
//! nodes through its canonical encoding, stored in the importer's own log.

use std::sync::Arc;

use converge_crdt::ReplicaId;
use converge_node::{Node, NodeConfig, NodeError, PathChange};
use converge_store::MemoryStore;
use serde_json::json;

fn node(replica: u64) -> Node {
    Node::with_store(
        ReplicaId::from_u64(replica),
        Arc::new(MemoryStore::new()),
        NodeConfig::new("unused"),
    )
}

fn changes(v: serde_json::Value) -> Vec<PathChange> {
    serde_json::from_value(v).expect("changes")
}

#[tokio::test]
async fn import_merges_into_the_own_log_and_is_idempotent() {
    let (a, b) = (node(1), node(2));
    for i in 0..5 {
        a.change(
            "doc",
            &changes(json!([{"op": "set", "path": [format!("k{i}")], "value": i}])),
        )
        .await
        .expect("write on a");
    }
    let encoded = a.export("doc").await.expect("export");
    let mut watch_b = {
        b.change(
            "doc",
            &changes(json!([{"op": "set", "path": ["b"], "value": true}])),
        )
        .await
        .expect("write on b");
        b.watch("doc").await.expect("watch")
    };

    let outcome = b.import("doc", encoded.clone()).await.expect("import");
    assert_eq!(outcome.ops_added, 5);
    assert_eq!(outcome.entries, 1);
    let mut want = a.get("doc").await.expect("a");
    want["b"] = json!(true);
    assert_eq!(b.get("doc").await.expect("b"), want);
    assert!(
        watch_b.try_recv().is_ok(),
        "watchers see the imported edits"
    );
    // The entries are b's: a's log stays a's alone to write.
    let vv = b.store().version_vector("doc").expect("vv");
    assert_eq!(vv.get(ReplicaId::from_u64(2)), 2);
    assert_eq!(vv.get(ReplicaId::from_u64(1)), 0);
    assert_eq!(outcome.version, vv);

    // Twice: nothing new, nothing appended.
    let again = b.import("doc", encoded).await.expect("import again");
    assert_eq!((again.ops_added, again.entries), (0, 0));
    assert_eq!(b.store().version_vector("doc").expect("vv"), vv);

    // And back: a gets b's edit from b's export, not its own again.
    let back = a
        .import("doc", b.export("doc").await.expect("export b"))
        .await
        .expect("import into a");
    assert_eq!(back.ops_added, 1);
    assert_eq!(a.get("doc").await.expect("a"), want);
    // Loaded from the store afresh, the node holds the same document.
    let reopened = Node::with_store(
        ReplicaId::from_u64(2),
        b.store().clone(),
        NodeConfig::new("unused"),
    );
    assert_eq!(reopened.get("doc").await.expect("reopened"), want);
}

#[tokio::test]
async fn bad_bytes_are_refused_and_write_nothing() {
    let (a, b) = (node(1), node(2));
    a.change(
        "doc",
        &changes(json!([{"op": "set", "path": ["x"], "value": 1}])),
    )
    .await
    .expect("write");
    let encoded = a.export("doc").await.expect("export");
    let mut flipped = encoded.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    for bad in [
        Vec::new(),
        b"garbage".to_vec(),
        encoded[..encoded.len() - 1].to_vec(),
        flipped,
    ] {
        let err = b.import("doc", bad).await.expect_err("refused");
        assert!(matches!(err, NodeError::BadRequest(_)), "{err}");
    }
    assert!(
        b.store()
            .list_objects("", None, 10)
            .expect("list")
            .is_empty(),
        "nothing written"
    );
    assert!(matches!(
        a.export("nope").await,
        Err(NodeError::NotFound(_))
    ));
    // An empty document's encoding is valid and creates nothing.
    let empty = converge_doc::Doc::new(ReplicaId::from_u64(9)).encode();
    let outcome = b.import("doc", empty).await.expect("empty import");
    assert_eq!((outcome.ops_added, outcome.entries), (0, 0));
    assert!(matches!(b.get("doc").await, Err(NodeError::NotFound(_))));
}

#[tokio::test]
async fn a_large_history_is_stored_in_several_entries() {
    let (a, b) = (node(1), node(2));
    // One long run of one replica's operations: a single change in the
    // encoding, which the import splits into entries of bounded size.
    let chunk = "x".repeat(64 << 10);
    for i in 0..40 {
        a.change(
            "big",
            &changes(json!([{"op": "set", "path": [format!("k{i}")], "value": chunk}])),
        )
        .await
        .expect("write");
    }
    let outcome = b
        .import("big", a.export("big").await.expect("export"))
        .await
        .expect("import");
    assert_eq!(outcome.ops_added, 40);
    assert!(outcome.entries >= 8, "{} entries", outcome.entries);
    for seq in 1..=outcome.entries {
        let entry = b
            .store()
            .read("big", ReplicaId::from_u64(2), seq, 1)
            .expect("read");
        assert!(entry[0].bytes.len() < 512 << 10, "entry {seq}");
    }
    let reopened = Node::with_store(
        ReplicaId::from_u64(2),
        b.store().clone(),
        NodeConfig::new("unused"),
    );
    assert_eq!(
        reopened.get("big").await.expect("reopened"),
        a.get("big").await.expect("a")
    );
}
