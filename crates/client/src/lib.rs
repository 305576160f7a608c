//! # converge (the client library)
//!
//! A local replica of converge documents for an application: it keeps its
//! own embedded store, edits documents offline at local speed, and syncs
//! with a node (`converge serve`) whenever it can reach one. Closing and
//! reopening it keeps every local edit; edits made while offline are sent
//! on the next connection, and remote edits arrive as patches.
//!
//! ## Main types
//!
//! - [`Client`]: the replica, opened with a [`ClientConfig`] (its data
//!   directory, its upstream node, its replica id). Its
//!   [`connection`](Client::connection) reports a [`ConnectionState`];
//!   [`set_online`](Client::set_online) takes it offline and back without
//!   closing it.
//! - [`DocRef`]: one document of the client ([`Client::doc`]): read it
//!   as JSON or a typed value, change it in a transaction built with
//!   [`Changes`] (paths from [`path!`]), subscribe to its patches
//!   ([`Subscription`]), and wait until the node durably holds its edits
//!   ([`DocRef::wait_synced`]).
//!
//! Under the hood a client is a `converge_node::Node` without an HTTP
//! server and with one peer: its edits go to its own replica's log in its
//! own store, and the sync protocol (`converge-sync`) exchanges log
//! entries with the upstream both ways, resuming from version vectors and
//! reconnecting with backoff. Documents merge as `converge-doc` describes:
//! concurrent edits to one text interleave by runs, not characters; a
//! moved list item ends in one place; concurrent writes of one map key
//! resolve alike everywhere.
//!
//! ## Example
//!
//! ```
//! use converge::{Client, ClientConfig, path};
//! use serde_json::json;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! // No upstream: offline. With `.with_upstream("ws://127.0.0.1:7878/v1/sync")`
//! // the same edits would also sync with that node.
//! let client = Client::open(ClientConfig::new(dir.path())).await?;
//! let todos = client.doc("todos");
//! let mut patches = todos.subscribe().await?;
//! todos
//!     .change(|c| {
//!         c.set(path!["items"], json!([]));
//!         c.insert(path!["items"], 0, json!({"done": false}));
//!         c.splice_text(path!["items", 0, "title"], 0, 0, "buy milk");
//!     })
//!     .await?;
//! assert!(!patches.recv().await?.is_empty());
//! client.close().await?;
//!
//! // Reopened, the replica has every edit.
//! let client = Client::open(ClientConfig::new(dir.path())).await?;
//! assert_eq!(
//!     client.doc("todos").get().await?,
//!     json!({"items": [{"title": "buy milk", "done": false}]})
//! );
//! # client.close().await?;
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new()?.block_on(example())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `cargo run -p converge-client --example todo` runs two clients editing
//! one TODO list through an in-process node, one of them offline for a while.

mod changes;
mod client;

pub use changes::Changes;
pub use client::{
    Client, ClientConfig, ClientError, ConnectionState, DocRef, Subscription, SubscriptionError,
};
pub use converge_crdt::{ReplicaId, VersionVector};
pub use converge_doc::{DocError, Patch, PatchAction, PathChange, PathSeg};
pub use converge_node::Interest;
