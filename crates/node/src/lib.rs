//! # converge-node
//!
//! The runtime: a replica process on tokio that hosts many documents on the
//! embedded store and serves them over an HTTP JSON API. It is the only
//! crate that knows about async IO; documents ([`converge_doc`]) and the
//! store ([`converge_store`]) stay synchronous and are driven from here.
//!
//! ## Main types
//!
//! - [`Node`]: the replica (its id, its store, the documents it has open).
//! - `router`: the HTTP API on top of a node, and `serve` to run it
//!   until a shutdown signal (both with the default `http` feature).
//! - [`sync_with_peers`]: replication with the configured peers without
//!   a listener, for embedded replicas such as `converge-client`.
//!
//! ## HTTP API
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/docs` | list documents (`?prefix=&after=&limit=`) |
//! | `GET /v1/docs/{id}` | the document as JSON (404 if unknown) |
//! | `POST /v1/docs/{id}/changes` | a JSON array of changes, applied as one change; answers with the new version vector once durable |
//! | `GET /v1/docs/{id}/watch` | server-sent events, one per batch of patches; the stream ends when the node shuts down |
//! | `GET /v1/docs/{id}/export` | the document with its whole history, in converge-doc's canonical encoding ([`converge_doc::Doc::encode`]), as `application/octet-stream` |
//! | `POST /v1/docs/{id}/import` | merges such an encoding (body up to 64 MiB) into the document, creating it if needed; answers `{"ops_added", "entries", "version"}` once durable; bad bytes are a 400 and write nothing; importing twice adds nothing |
//! | `GET /v1/status` | replica id, documents, store figures, sync peers, cluster members (`membership`: state (`local`, `connected`, `alive`, `suspect`, `dead`, `no_url`, `left`, `mismatch` with `answered_as`), URL, lag per member; how many are `forgotten`) |
//! | `GET /v1/sync` | WebSocket: the sync protocol (`converge-sync`), one frame per binary message |
//! | `GET /healthz` | liveness |
//! | `GET /metrics` | Prometheus metrics |
//!
//! Errors are JSON: `{"error": {"code": "...", "message": "..."}}` with a 4xx
//! or 5xx status; a refused request writes nothing.
//!
//! Imported operations keep their authors' ids but are stored as entries of
//! the importing node's own log (see [`Node::import`] for why), so they
//! replicate like a local edit and a peer holding them already skips them.
//!
//! ## Replication
//!
//! Nodes sync over WebSocket with the `converge-sync` protocol: every node
//! accepts sessions on `/v1/sync` and keeps one connection to each peer in
//! [`NodeConfig::peers`], reconnecting with backoff. Entries peers append go
//! to the store, then into the open documents, whose watchers get the
//! patches. With [`NodeConfig::gossip_interval`] set (`serve` only), the
//! node also writes itself into the membership object (`$sys/members`,
//! see [`converge_sync::membership`]) and, every interval, syncs with a
//! random member it has no session with, so a node that knows one seed
//! learns the whole cluster. On a graceful shutdown `serve` marks the node
//! as left in that object and pushes it to its peers before closing; a
//! member dead for [`NodeConfig::forget_after`] is forgotten until it
//! rewrites its entry (see the `gossip` module). Peers are trusted (any peer may write as any replica):
//! authentication is future work. Each connection is one task pumping a
//! sans-IO session; reads run on the task.
//!
//! ## Durable writes
//!
//! Every append of a local write, and of the entries a peer sends, goes
//! through one node-wide committer: writers queue their appends and await
//! the answer, and a blocking task (two at most) drains the queue into one
//! `Store::append_many` call (one log write and one sync on the embedded
//! store). A write is answered, and a sync ack sent, only once its
//! append is durable.

#[cfg(feature = "http")]
mod api;
mod commit;
mod feed;
mod gossip;
mod node;
mod sync;

// Replication without a listener, for embedders (converge-client).
pub use converge_sync::Interest;
pub use sync::{PeerConnection, sync_with_peers};

#[cfg(feature = "http")]
pub use api::{router, serve};
pub use converge_doc::PathChange;
pub use converge_store::{VerifyProgress, VerifyReport};
pub use node::{ImportOutcome, Node, NodeConfig, NodeError};
