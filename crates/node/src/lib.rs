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
//! - [`router`]: the HTTP API on top of a node, and [`serve`] to run it
//!   until a shutdown signal.
//!
//! ## HTTP API
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/docs` | list documents (`?prefix=&after=&limit=`) |
//! | `GET /v1/docs/{id}` | the document as JSON (404 if unknown) |
//! | `POST /v1/docs/{id}/changes` | a JSON array of changes, applied as one change; answers with the new version vector once durable |
//! | `GET /v1/docs/{id}/watch` | server-sent events, one per patch |
//! | `GET /v1/status` | replica id, documents, store figures |
//! | `GET /healthz` | liveness |
//! | `GET /metrics` | Prometheus metrics |
//!
//! Errors are JSON: `{"error": {"code": "...", "message": "..."}}` with a 4xx
//! or 5xx status; a refused request writes nothing.
//!
//! Replication with peers and clients (WebSocket, gossip) comes with the
//! sync layer.

mod api;
mod node;

pub use api::{router, serve};
pub use converge_doc::PathChange;
pub use node::{Node, NodeConfig, NodeError};
