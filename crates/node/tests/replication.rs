//! Two nodes in one process, syncing over loopback WebSocket: entries a
//! peer appends reach the open document and its watchers.

use std::sync::Arc;
use std::time::Duration;

use converge_crdt::ReplicaId;
use converge_node::{Node, NodeConfig, PathChange};
use converge_store::MemoryStore;
use serde_json::json;

async fn start(replica: u64, peers: Vec<String>) -> (Arc<Node>, String) {
    let mut config = NodeConfig::new("unused");
    config.peers = peers;
    let node = Arc::new(Node::with_store(
        ReplicaId::from_u64(replica),
        Arc::new(MemoryStore::new()),
        config,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(converge_node::serve(
        listener,
        node.clone(),
        std::future::pending(),
    ));
    (node, format!("ws://{addr}/v1/sync"))
}

fn set(key: &str, value: i64) -> Vec<PathChange> {
    vec![PathChange::Set {
        path: vec![key.into()],
        value: json!(value),
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_entries_reach_open_documents_and_watchers() {
    let (a, a_url) = start(1, Vec::new()).await;
    let (b, _) = start(2, vec![a_url]).await;
    a.change("doc", &set("x", 1)).await.expect("write on a");

    // b learns the document from a.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.get("doc").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never got the document"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut watch = b.watch("doc").await.expect("watch on b");

    // A write on a arrives at b's open document as patches.
    a.change("doc", &set("y", 2))
        .await
        .expect("second write on a");
    let patches = tokio::time::timeout(Duration::from_secs(10), watch.recv())
        .await
        .expect("a patch within 10 s")
        .expect("the channel is open");
    let text = serde_json::to_string(&*patches).expect("patches as JSON");
    assert!(text.contains(r#""key":"y""#), "{text}");
    assert_eq!(b.get("doc").await.expect("doc"), json!({"x": 1, "y": 2}));

    // b's own writes continue its own log after the remote entries.
    let vv = b.change("doc", &set("z", 3)).await.expect("write on b");
    assert_eq!(vv.get(ReplicaId::from_u64(2)), 1);
    assert_eq!(vv.get(ReplicaId::from_u64(1)), 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.get("doc").await.expect("doc on a") != json!({"x": 1, "y": 2, "z": 3}) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a never got b's write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writers of one document share durable appends (issue 6's hot-document
/// benchmark): every write is answered once durable with a version vector
/// that covers it, the log holds exactly one entry per write, and watchers
/// get every write's patch, each writer's in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_document_all_land_in_order() {
    const WRITERS: usize = 32;
    const WRITES: i64 = 20;
    let (a, _) = start(1, Vec::new()).await;
    a.change("hot", &set("start", 0))
        .await
        .expect("first write");
    let mut watch = a.watch("hot").await.expect("watch");
    // Read patches while the writers run (the channel holds 256).
    let reader = tokio::spawn(async move {
        let mut last = vec![-1i64; WRITERS];
        for _ in 0..WRITERS * WRITES as usize {
            let patches = tokio::time::timeout(Duration::from_secs(10), watch.recv())
                .await
                .expect("a patch within 10 s")
                .expect("no lag");
            let v = serde_json::to_value(&*patches).expect("patches as JSON");
            let action = &v[0]["action"];
            let key = action["key"].as_str().expect("a put");
            let w: usize = key[1..].parse().expect("writer number");
            let value = action["value"].as_i64().expect("a number");
            assert_eq!(value, last[w] + 1, "writer {w} out of order: {v}");
            last[w] = value;
        }
        last
    });
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let a = a.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..WRITES {
                    let vv = a
                        .change("hot", &set(&format!("w{w}"), i))
                        .await
                        .expect("write");
                    seqs.push(vv.get(ReplicaId::from_u64(1)));
                }
                seqs
            })
        })
        .collect();
    for w in writers {
        let seqs = w.await.expect("writer");
        // Each answer covers the writer's own write, so they only grow.
        assert!(seqs.windows(2).all(|p| p[0] < p[1]), "{seqs:?}");
    }
    let vv = a.log_version("hot").await.expect("log version");
    assert_eq!(
        vv.get(ReplicaId::from_u64(1)),
        1 + (WRITERS as u64) * WRITES as u64
    );
    let doc = a.get("hot").await.expect("doc");
    for w in 0..WRITERS {
        assert_eq!(doc[format!("w{w}")], json!(WRITES - 1), "{doc}");
    }
    let last = reader.await.expect("reader");
    assert!(last.iter().all(|&v| v == WRITES - 1), "{last:?}");
}

/// A document whose logs hold more changes than the document's pending
/// limit (10,000) loads: the node folds them in chunks. Found by the `node`
/// bench (`sync-writes-1`), whose sync clients write tens of thousands of
/// changes to one document that the node opens only when it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_with_more_changes_than_the_pending_limit_loads() {
    use converge_doc::{Doc, encode_changes};
    use converge_store::{Entry, Store};
    let writer = ReplicaId::from_u64(7);
    let store = Arc::new(MemoryStore::new());
    let mut doc = Doc::new(writer);
    for i in 1..=12_000u64 {
        let before = doc.version().clone();
        doc.apply(&set("n", i as i64)).expect("apply");
        let new = doc.changes_since(&before);
        store
            .append("big", writer, &[Entry::new(i, encode_changes(&new))])
            .expect("append");
    }
    let node = Node::with_store(ReplicaId::from_u64(1), store, NodeConfig::new("unused"));
    assert_eq!(node.get("big").await.expect("load"), json!({"n": 12_000}));
}
