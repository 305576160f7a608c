//! # converge-sync
//!
//! The sync protocol, sans-IO: how two replicas (client and server, two
//! servers, two peers) bring each other up to date. This crate owns the
//! messages, their versioned codec with size limits, and the per-connection
//! session state machine. It opens no socket, spawns no task and reads no
//! clock: callers feed it bytes, timer expiries and `now`, and it reads and
//! appends through the [`converge_store::Store`] they pass in. The same
//! code runs in the tokio runtime and in the deterministic simulator
//! (`tests/sim.rs`).
//!
//! ## Main types
//!
//! - [`Session`]: one connection's state machine, configured by a
//!   [`Config`] and bound by a [`Policy`]; it reports [`Event`]s and closes
//!   with a [`SessionError`].
//! - [`Message`] and [`codec`]: the wire format (`u32` length prefix,
//!   version byte, postcard body), checked against [`Limits`] before use.
//! - [`PresenceTable`]: ephemeral per-object state with expiry, for relaying
//!   presence without storing it.
//! - [`Membership`] ([`membership`]): the cluster's members as a node sees
//!   them, and the gossip policy (whom to dial next, backoff of dead members).
//!
//! The protocol (message table, state diagram, flow control, anti-entropy)
//! is described in `PROTOCOL.md` next to this crate's sources.
//!
//! ## Example
//!
//! Two replicas over an in-memory "wire":
//!
//! ```
//! use converge_crdt::ReplicaId;
//! use converge_store::{Entry, MemoryStore, Store};
//! use converge_sync::{Config, Interest, Policy, Session};
//!
//! let (a, b) = (ReplicaId::from_u64(1), ReplicaId::from_u64(2));
//! let (sa, sb) = (MemoryStore::new(), MemoryStore::new());
//! sa.append("todos", a, &[Entry::new(1, b"buy milk".to_vec())])?;
//!
//! let config = Config::new(Interest::Prefix(String::new()));
//! let mut x = Session::new(0, config.clone(), a, Policy::trusted());
//! let mut y = Session::new(0, config, b, Policy::trusted());
//! for now in 0..10 {
//!     while let Some(frame) = x.poll_transmit() {
//!         y.handle_bytes(now, &frame, &sb)?;
//!     }
//!     while let Some(frame) = y.poll_transmit() {
//!         x.handle_bytes(now, &frame, &sa)?;
//!     }
//! }
//! assert_eq!(sb.read("todos", a, 1, 10)?, vec![Entry::new(1, b"buy milk".to_vec())]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod codec;
pub mod membership;
mod message;
mod presence;
mod session;

pub use codec::{DecodeError, EncodeError, PROTOCOL_VERSION};
pub use membership::{GossipConfig, MemberEntry, MemberState, MemberView, Membership};
pub use message::{ErrorCode, Interest, LimitError, Limits, Message};
pub use presence::PresenceTable;
pub use session::{Config, Event, Policy, QueueSizes, Session, SessionError, SnapshotMerge};
