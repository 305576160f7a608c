//! The client against real nodes in process: offline persistence, two
//! clients converging through a node, a node restart while a client edits,
//! and a node that appears after the client (issue 6, "Client library").

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use converge::{Client, ClientConfig, ConnectionState, Interest, PatchAction, ReplicaId, path};
use converge_node::{Node, NodeConfig};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The example (`cargo run -p converge-client --example todo`), run as a test.
#[allow(dead_code)]
#[path = "../examples/todo.rs"]
mod todo_example;

/// How long any awaited condition may take before the test fails.
const LIMIT: Duration = Duration::from_secs(20);

/// A node serving `/v1/sync` (and its HTTP API) on a data directory.
struct TestNode {
    node: Arc<Node>,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

impl TestNode {
    /// Opens the node on `dir` and listens on `addr` (port 0: any free one).
    async fn start(dir: &Path, addr: SocketAddr) -> Self {
        let config = NodeConfig::new(dir);
        let node = tokio::task::spawn_blocking(move || Node::open(config))
            .await
            .expect("open task")
            .expect("open the node");
        let node = Arc::new(node);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the node's port");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(converge_node::serve(listener, node.clone(), async move {
            let _ = stopped.await;
        }));
        Self {
            node,
            addr,
            stop,
            server,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    /// Stops serving and closes the store, so the directory can be reopened.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.server
            .await
            .expect("server task")
            .expect("server ends cleanly");
        // Sessions end on their own once told to stop; each holds the node.
        let node = self.node;
        let unique = poll(|| {
            let count = Arc::strong_count(&node);
            async move { count == 1 }
        })
        .await;
        assert!(unique, "the node's sync sessions did not end");
        tokio::task::spawn_blocking(move || drop(node))
            .await
            .expect("close the store");
    }

    async fn get(&self, id: &str) -> Option<Value> {
        self.node.get(id).await.ok()
    }
}

/// Polls `check` every 20 ms until it holds (true) or [`LIMIT`] passes (false).
async fn poll<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !check().await {
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Waits until the client's connection state satisfies `f`.
async fn wait_state(client: &Client, what: &str, f: impl FnMut(&ConnectionState) -> bool) {
    let mut rx: watch::Receiver<ConnectionState> = client.connection();
    tokio::time::timeout(LIMIT, rx.wait_for(f))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the client never became {what}: {:?}",
                client.connection_state()
            )
        })
        .expect("the connection state is still reported");
}

fn dir_in(root: &tempfile::TempDir, name: &str) -> PathBuf {
    root.path().join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_persist_across_close_and_reopen() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = dir_in(&root, "client");
    let client = Client::open(ClientConfig::new(&dir)).await.expect("open");
    assert_eq!(client.connection_state(), ConnectionState::Offline);
    let replica = client.replica();

    // A subscriber sees local changes too.
    let notes = client.doc("notes");
    assert_eq!(
        notes.get().await.expect("get"),
        json!({}),
        "unwritten documents read empty"
    );
    let mut patches = notes
        .subscribe()
        .await
        .expect("subscribe before the document exists");
    notes
        .change(|c| {
            c.splice_text(path!["title"], 0, 0, "shopping");
            c.set(path!["tags"], json!(["home"]));
        })
        .await
        .expect("first change");
    let batch = tokio::time::timeout(LIMIT, patches.recv())
        .await
        .expect("a patch batch in time")
        .expect("a batch");
    assert!(
        batch
            .iter()
            .any(|p| matches!(&p.action, PatchAction::Put { key, .. } if key == "tags")),
        "{batch:?}"
    );
    notes
        .change(|c| {
            c.splice_text(path!["title"], 8, 0, " list");
            c.increment(path!["edits"], 2);
        })
        .await
        .expect("second change");
    let bad = notes.change(|c| c.set(path!["tags", 5], "x")).await;
    assert!(matches!(bad, Err(converge::ClientError::Doc(_))), "{bad:?}");
    client.close().await.expect("close");

    let client = Client::open(ClientConfig::new(&dir)).await.expect("reopen");
    assert_eq!(
        client.replica(),
        replica,
        "the replica id is kept in the directory"
    );
    let notes = client.doc("notes");
    let expected = json!({"title": "shopping list", "tags": ["home"], "edits": 2});
    assert_eq!(notes.get().await.expect("get"), expected);
    assert_eq!(
        notes.get_at(&path!["tags", 0]).await.expect("get_at"),
        Some(json!("home"))
    );
    assert_eq!(
        client.documents().await.expect("list"),
        vec!["notes".to_string()]
    );
    // Two transactions were written, the refused one was not; the log goes on.
    assert_eq!(notes.version().await.expect("version").get(replica), 2);
    let mut stream = notes.subscribe().await.expect("subscribe").into_stream();
    let vv = notes
        .change(|c| c.increment(path!["edits"], 1))
        .await
        .expect("third change");
    assert_eq!(vv.get(replica), 3);
    let batch = tokio::time::timeout(LIMIT, tokio_stream::StreamExt::next(&mut stream))
        .await
        .expect("a batch in time")
        .expect("the stream goes on")
        .expect("not lagging");
    assert_eq!(
        batch.as_slice(),
        &[converge::Patch {
            path: path!["edits"],
            action: PatchAction::Increment { by: 1 },
        }][..],
        "the counter's patch"
    );

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Notes {
        title: String,
        edits: i64,
    }
    let typed: Notes = notes.get_as().await.expect("typed read");
    assert_eq!(
        typed,
        Notes {
            title: "shopping list".into(),
            edits: 3
        }
    );
    client.close().await.expect("close again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_converge_through_a_node_and_remote_patches_reach_subscribers() {
    let root = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir_in(&root, "node"), "127.0.0.1:0".parse().expect("addr")).await;
    let a = Client::open(ClientConfig::new(dir_in(&root, "a")).with_upstream(node.url()))
        .await
        .expect("open a");
    let b = Client::open(ClientConfig::new(dir_in(&root, "b")).with_upstream(node.url()))
        .await
        .expect("open b");
    wait_state(&a, "connected", ConnectionState::is_connected).await;
    wait_state(&b, "connected", ConnectionState::is_connected).await;
    assert_eq!(
        a.connection_state(),
        ConnectionState::Connected {
            upstream: node.node.replica()
        }
    );

    // b subscribes before the document reaches it.
    let mut b_patches = b.subscribe("todos").await.expect("subscribe on b");
    a.doc("todos")
        .change(|c| {
            c.set(path!["items"], json!([]));
            c.insert(path!["items"], 0, json!({"title": "milk", "done": false}));
        })
        .await
        .expect("write on a");
    let batch = tokio::time::timeout(LIMIT, b_patches.recv())
        .await
        .expect("a's change reaches b's subscriber in time")
        .expect("a batch");
    assert!(
        batch
            .iter()
            .any(|p| matches!(&p.action, PatchAction::Put { key, .. } if key == "items")),
        "{batch:?}"
    );

    // Both write at once; everyone ends with both writes.
    // Handles are Copy: their futures can be joined straight away.
    let (ra, rb) = tokio::join!(
        a.doc("todos").change(|c| c.insert(
            path!["items"],
            1,
            json!({"title": "eggs", "done": false})
        )),
        b.doc("todos")
            .change(|c| c.set(path!["items", 0, "done"], true)),
    );
    ra.expect("a's second write");
    rb.expect("b's write");
    let converged = poll(|| async {
        let (x, y) = (
            a.doc("todos").get().await.ok(),
            b.doc("todos").get().await.ok(),
        );
        let n = node.get("todos").await;
        x.is_some()
            && x == y
            && y == n
            && x.as_ref()
                .is_some_and(|v| v["items"].as_array().is_some_and(|i| i.len() == 2))
    })
    .await;
    let final_a = a.doc("todos").get().await.expect("a");
    assert!(
        converged,
        "no convergence: a {final_a}, b {:?}",
        b.doc("todos").get().await
    );
    assert_eq!(final_a["items"][0], json!({"title": "milk", "done": true}));
    assert_eq!(final_a["items"][1], json!({"title": "eggs", "done": false}));
    assert_eq!(
        a.doc("todos").version().await.expect("version a"),
        b.doc("todos").version().await.expect("version b")
    );

    a.close().await.expect("close a");
    b.close().await.expect("close b");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_offline_across_a_node_restart_syncs_its_edits_afterwards() {
    let root = tempfile::tempdir().expect("temp dir");
    let node_dir = dir_in(&root, "node");
    let client_dir = dir_in(&root, "client");
    let node = TestNode::start(&node_dir, "127.0.0.1:0".parse().expect("addr")).await;
    let (addr, url) = (node.addr, node.url());
    let client = Client::open(ClientConfig::new(&client_dir).with_upstream(&url))
        .await
        .expect("open");
    let doc = client.doc("doc");
    doc.change(|c| c.set(path!["before"], 1))
        .await
        .expect("write while online");
    assert!(
        poll(|| async { node.get("doc").await == Some(json!({"before": 1})) }).await,
        "the node never got the first write"
    );

    // The node goes away: the client notices and keeps editing.
    node.stop().await;
    wait_state(&client, "disconnected", |s| !s.is_connected()).await;
    doc.change(|c| c.set(path!["during"], 2))
        .await
        .expect("write while the node is down");
    // It even closes and reopens while the node is down.
    client.close().await.expect("close");
    let client = Client::open(ClientConfig::new(&client_dir).with_upstream(&url))
        .await
        .expect("reopen");
    wait_state(&client, "in backoff", |s| {
        matches!(s, ConnectionState::Backoff { .. })
    })
    .await;
    let doc = client.doc("doc");
    doc.change(|c| c.splice_text(path!["text"], 0, 0, "offline"))
        .await
        .expect("write after reopening");

    // The node restarts on the same directory and port.
    let node = TestNode::start(&node_dir, addr).await;
    wait_state(&client, "reconnected", ConnectionState::is_connected).await;
    let expected = json!({"before": 1, "during": 2, "text": "offline"});
    assert!(
        poll(|| async { node.get("doc").await.as_ref() == Some(&expected) }).await,
        "the node has {:?}, not the client's edits",
        node.get("doc").await
    );
    let vv = node.node.log_version("doc").await.expect("node's version");
    assert_eq!(
        vv.get(client.replica()),
        3,
        "all three of the client's entries"
    );

    // And it flows the other way after the restart too.
    node.node
        .change(
            "doc",
            &[converge::PathChange::Set {
                path: path!["from_node"],
                value: json!(true),
            }],
        )
        .await
        .expect("write on the node");
    assert!(
        poll(|| async {
            doc.get()
                .await
                .ok()
                .is_some_and(|v| v["from_node"] == json!(true))
        })
        .await,
        "the client never got the node's write"
    );
    client.close().await.expect("close");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_with_backoff_when_the_node_appears_later() {
    let root = tempfile::tempdir().expect("temp dir");
    // A free port with nothing listening on it yet.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let client = Client::open(
        ClientConfig::new(dir_in(&root, "client"))
            .with_upstream(format!("http://{addr}"))
            .with_replica(ReplicaId::from_u64(77)),
    )
    .await
    .expect("open without a node");
    wait_state(
        &client,
        "in backoff",
        |s| matches!(s, ConnectionState::Backoff { error, .. } if error.contains("cannot connect")),
    )
    .await;
    client
        .doc("queue")
        .change(|c| c.insert(path!["jobs"], 0, "first"))
        .await
        .expect_err("no list there yet");
    client
        .doc("queue")
        .change(|c| c.set(path!["jobs"], json!(["first"])))
        .await
        .expect("offline write");

    let node = TestNode::start(&dir_in(&root, "node"), addr).await;
    wait_state(&client, "connected", ConnectionState::is_connected).await;
    assert!(
        poll(|| async { node.get("queue").await == Some(json!({"jobs": ["first"]})) }).await,
        "the node never got the offline write"
    );
    let vv = node.node.log_version("queue").await.expect("version");
    assert_eq!(
        vv.get(ReplicaId::from_u64(77)),
        1,
        "written as the configured replica"
    );
    let connection = client.connection();
    client.close().await.expect("close");
    assert_eq!(*connection.borrow(), ConnectionState::Closed);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_receives_its_interest_only_and_sends_its_deletions() {
    let root = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start(&dir_in(&root, "node"), "127.0.0.1:0".parse().expect("addr")).await;
    let set = |key: &str, value: Value| {
        vec![converge::PathChange::Set {
            path: path![key],
            value,
        }]
    };
    node.node
        .change("team-b/plan", &set("x", json!(1)))
        .await
        .expect("write team b's plan");
    node.node
        .change("team-a/plan", &set("x", json!(2)))
        .await
        .expect("write team a's plan");
    let client = Client::open(
        ClientConfig::new(dir_in(&root, "client"))
            .with_upstream(node.url())
            .with_interest(Interest::Prefix("team-a/".into())),
    )
    .await
    .expect("open");
    let plan = client.doc("team-a/plan");
    assert!(
        poll(|| async { plan.get().await.ok() == Some(json!({"x": 2})) }).await,
        "team a's plan never arrived"
    );
    assert_eq!(
        client.documents().await.expect("list"),
        vec!["team-a/plan".to_string()],
        "only the interest is received"
    );

    // Documents of its own outside the interest still go up.
    client
        .doc("notes")
        .change(|c| c.set(path!["mine"], true))
        .await
        .expect("write notes");
    assert!(
        poll(|| async { node.get("notes").await == Some(json!({"mine": true})) }).await,
        "the node never got the client's notes"
    );

    // A deletion is final on the node too.
    assert!(plan.delete().await.expect("delete"));
    assert!(
        !plan.delete().await.expect("delete again"),
        "already deleted"
    );
    assert!(
        poll(|| async {
            matches!(
                node.node.get("team-a/plan").await,
                Err(converge_node::NodeError::Deleted(_))
            )
        })
        .await,
        "the node never learnt of the deletion"
    );
    let refused = plan.change(|c| c.set(path!["x"], 3)).await;
    assert!(
        matches!(refused, Err(converge::ClientError::Deleted(_))),
        "{refused:?}"
    );
    client.close().await.expect("close");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn todo_example_converges() {
    let (alice, bob) = todo_example::run().await.expect("the example runs");
    assert_eq!(alice, bob);
    let items = alice["items"].as_array().expect("a list of items");
    let titles: Vec<&str> = items.iter().filter_map(|i| i["title"].as_str()).collect();
    // Both sides' title edits merged; Alice's coffee is there; each item once.
    assert_eq!(titles.len(), 4, "{titles:?}");
    for t in ["eggs", "bread", "oat milk (2 l)", "coffee"] {
        assert!(titles.contains(&t), "{t} missing from {titles:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_serves_one_client_at_a_time() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = dir_in(&root, "client");
    let first = Client::open(ClientConfig::new(&dir)).await.expect("open");
    let second = Client::open(ClientConfig::new(&dir)).await;
    assert!(
        matches!(second, Err(converge::ClientError::DataDir { .. })),
        "{second:?}"
    );
    let other = Client::open(ClientConfig::new(&dir).with_replica(ReplicaId::from_u64(5))).await;
    assert!(
        matches!(other, Err(converge::ClientError::DataDir { .. })),
        "{other:?}"
    );
    first.close().await.expect("close");
    Client::open(ClientConfig::new(&dir))
        .await
        .expect("open after close")
        .close()
        .await
        .expect("close again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_synced_tells_when_the_node_holds_the_edits_and_offline_keeps_them() {
    let root = tempfile::tempdir().expect("temp dir");
    let client_dir = dir_in(&root, "client");
    let node = TestNode::start(&dir_in(&root, "node"), "127.0.0.1:0".parse().expect("addr")).await;
    let client = Client::open(ClientConfig::new(&client_dir).with_upstream(node.url()))
        .await
        .expect("open");
    let doc = client.doc("doc");
    assert!(doc.is_synced().await.expect("check"), "no edits yet");
    doc.change(|c| c.set(path!["a"], 1)).await.expect("write");
    assert!(doc.wait_synced(LIMIT).await.expect("wait"), "never synced");
    // Synced means durable on the node: its store has the entry.
    let held = node.node.log_version("doc").await.expect("node's version");
    assert_eq!(held.get(client.replica()), 1);

    // Offline: the session closes, nothing is dialled, edits stay local.
    client.set_online(false);
    wait_state(&client, "offline", |s| *s == ConnectionState::Offline).await;
    doc.change(|c| c.set(path!["b"], 2))
        .await
        .expect("write offline");
    assert!(!doc.is_synced().await.expect("check"));
    assert!(
        !doc.wait_synced(Duration::from_millis(500))
            .await
            .expect("wait"),
        "synced while offline"
    );
    assert_eq!(client.connection_state(), ConnectionState::Offline);
    assert_eq!(node.get("doc").await, Some(json!({"a": 1})));
    assert!(
        !client
            .wait_synced(Duration::from_millis(50))
            .await
            .expect("wait all")
    );

    // Back online: the edit made meanwhile goes up.
    client.set_online(true);
    assert!(
        doc.wait_synced(LIMIT).await.expect("wait"),
        "never synced after going online"
    );
    assert!(client.connection_state().is_connected());
    let held = node.node.log_version("doc").await.expect("node's version");
    assert_eq!(held.get(client.replica()), 2);
    assert!(
        poll(|| async { node.get("doc").await == Some(json!({"a": 1, "b": 2})) }).await,
        "the node has {:?}",
        node.get("doc").await
    );
    client.close().await.expect("close");

    // Reopened, the client learns what the node holds from its first
    // exchange, without new edits.
    let client = Client::open(ClientConfig::new(&client_dir).with_upstream(node.url()))
        .await
        .expect("reopen");
    assert!(client.wait_synced(LIMIT).await.expect("wait all"));
    client.close().await.expect("close");

    // Without an upstream, local edits are never synced.
    let offline = Client::open(ClientConfig::new(dir_in(&root, "alone")))
        .await
        .expect("open");
    offline
        .doc("doc")
        .change(|c| c.set(path!["x"], 1))
        .await
        .expect("write");
    offline.set_online(true);
    assert!(
        !offline
            .doc("doc")
            .wait_synced(Duration::from_millis(50))
            .await
            .expect("wait")
    );
    offline.close().await.expect("close");
    node.stop().await;
}
