//! Two clients editing one TODO list through a node, one of them offline
//! for a while, then converging.
//!
//! Starts a node in process on a temporary directory, opens two clients
//! (Alice and Bob) on their own directories, and has them add, toggle,
//! edit the text of and reorder items, waiting until the node has saved
//! an edit ([`converge::DocRef::wait_synced`]). Bob goes offline
//! ([`Client::set_online`]), both sides edit, Bob comes back online, and
//! both lists end equal.
//!
//! ```sh
//! cargo run -p converge-client --example todo
//! ```

use std::error::Error;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use converge::{Client, ClientConfig, ConnectionState, path};
use converge_node::{Node, NodeConfig};
use serde_json::{Value, json};

/// What the example's steps fail with.
type BoxError = Box<dyn Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (alice, bob) = run().await?;
    assert_eq!(alice, bob, "the two clients did not converge");
    println!("converged: both clients hold the same list");
    Ok(())
}

/// Runs the whole story and returns the list as Alice and as Bob finally
/// see it (the test of this crate checks them too).
pub(crate) async fn run() -> Result<(Value, Value), BoxError> {
    let dir = tempfile::tempdir()?;

    // A node, as `converge serve` runs it, on a free port.
    let node_dir = dir.path().join("node");
    let node = tokio::task::spawn_blocking(move || Node::open(NodeConfig::new(node_dir))).await??;
    let node = Arc::new(node);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/v1/sync", listener.local_addr()?);
    let (stop_node, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(converge_node::serve(listener, node, async move {
        let _ = stopped.await;
    }));
    println!("node listening on {url}");

    let alice =
        Client::open(ClientConfig::new(dir.path().join("alice")).with_upstream(&url)).await?;
    let bob_dir = dir.path().join("bob");
    let bob = Client::open(ClientConfig::new(&bob_dir).with_upstream(&url)).await?;

    // Alice writes the list: each title is a text, so that concurrent
    // edits of one title merge instead of one replacing the other.
    alice
        .doc("todos")
        .change(|c| {
            c.set(path!["items"], json!([]));
            for (i, title) in ["milk", "eggs", "bread"].into_iter().enumerate() {
                c.insert(path!["items"], i, json!({"done": false}));
                c.splice_text(path!["items", i, "title"], 0, 0, title);
            }
        })
        .await?;
    // Saved on the node: Alice could close her laptop now.
    if !alice
        .doc("todos")
        .wait_synced(Duration::from_secs(10))
        .await?
    {
        return Err("the node never saved Alice's list".into());
    }
    println!("Alice's list is saved on the node");
    converge(&alice, &bob).await?;
    show("Bob received Alice's list", &bob).await?;

    // Bob ticks off the eggs; Alice sees the patch arrive.
    let mut alice_patches = alice.doc("todos").subscribe().await?;
    bob.doc("todos")
        .change(|c| c.set(path!["items", 1, "done"], true))
        .await?;
    let patches = tokio::time::timeout(Duration::from_secs(10), alice_patches.recv()).await??;
    println!(
        "Alice got patches from Bob: {}",
        serde_json::to_string(&*patches)?
    );

    // Bob goes offline (say, "work offline" in his app).
    bob.set_online(false);
    let mut state = bob.connection();
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| *s == ConnectionState::Offline),
    )
    .await??;
    println!("Bob is offline: {:?}", bob.connection_state());

    // Meanwhile Alice adds coffee, moves bread to the top and renames milk.
    alice
        .doc("todos")
        .change(|c| {
            c.insert(path!["items"], 3, json!({"done": false}));
            c.splice_text(path!["items", 3, "title"], 0, 0, "coffee");
            c.move_item(path!["items"], 2, 0);
            // bread, milk, eggs, coffee: milk is now at 1.
            c.splice_text(path!["items", 1, "title"], 0, 0, "oat ");
        })
        .await?;
    // Offline, Bob edits the same title, ticks milk off and moves eggs up.
    bob.doc("todos")
        .change(|c| {
            c.splice_text(path!["items", 0, "title"], 4, 0, " (2 l)");
            c.set(path!["items", 0, "done"], true);
            c.move_item(path!["items"], 1, 0);
        })
        .await?;
    show("Alice, while Bob is offline", &alice).await?;
    show("Bob, offline", &bob).await?;

    // Bob goes back online: both sides exchange what the other lacks.
    bob.set_online(true);
    if !bob
        .doc("todos")
        .wait_synced(Duration::from_secs(10))
        .await?
    {
        return Err("Bob's offline edits never reached the node".into());
    }
    converge(&alice, &bob).await?;
    let (a, b) = (
        alice.doc("todos").get().await?,
        bob.doc("todos").get().await?,
    );
    show("Alice, after Bob came back", &alice).await?;
    show("Bob, after he came back", &bob).await?;

    alice.close().await?;
    bob.close().await?;
    let _ = stop_node.send(());
    server.await??;
    Ok((a, b))
}

/// Waits (up to 20 s) until both clients hold the same list.
async fn converge(a: &Client, b: &Client) -> Result<(), BoxError> {
    let converged = poll(Duration::from_secs(20), || async {
        let (x, y) = (a.doc("todos").get().await, b.doc("todos").get().await);
        matches!((x, y), (Ok(x), Ok(y)) if x == y && x != json!({}))
    })
    .await;
    if converged {
        Ok(())
    } else {
        Err("the clients did not converge within 20 s".into())
    }
}

/// Polls `check` every 20 ms until it holds (true) or `limit` passes (false).
async fn poll<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Prints a client's list, one item a line.
async fn show(who: &str, client: &Client) -> Result<(), BoxError> {
    println!("{who}:");
    let list = client.doc("todos").get().await?;
    for item in list["items"].as_array().map_or(&[][..], Vec::as_slice) {
        let done = if item["done"] == json!(true) {
            "x"
        } else {
            " "
        };
        println!("  [{done}] {}", item["title"].as_str().unwrap_or("?"));
    }
    Ok(())
}
