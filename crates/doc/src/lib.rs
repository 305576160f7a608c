//! # converge-doc
//!
//! The collaborative document layer of converge. It owns the user-facing
//! data model: local edits become operations in a causal graph, remote
//! operations become edits to the local state. Pure: no IO, no clock.
//!
//! ## Main types
//!
//! - [`graph::Graph`]: the causal graph of operations, in run-length form.
//! - [`text::Text`]: a collaborative text, merged with the Eg-walker
//!   algorithm over FugueMax ordering, so concurrent insertions at one
//!   place never interleave character by character.
//!
//! Work in progress (issue 4): the JSON-like document tree (maps, lists,
//! counters, move), the path-based change API, patches, and the binary
//! encoding build on these pieces.

mod agents;
mod doc;
mod error;
pub mod graph;
mod seq;
pub mod text;

pub use agents::Agents;
pub use doc::{
    Change, ContainerKind, Content, Doc, DocLimits, OpBody, Patch, PatchAction, PathChange,
    PathSeg, Tx, WireOp,
};
pub use error::DocError;
