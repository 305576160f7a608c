//! # converge-doc
//!
//! The collaborative document layer of converge. It owns the user-facing
//! data model: local edits become operations in a causal graph, remote
//! operations become edits to the local state. Pure: no IO, no clock.
//!
//! ## Main types
//!
//! - [`graph::Graph`]: the causal graph of operations, in run-length form.
//! - [`Doc`]: a JSON-like document of maps, lists, texts and counters,
//!   edited through the path-based change API ([`PathChange`]) or a
//!   transaction ([`Tx`]); it emits [`Patch`]es for local and remote edits
//!   and exchanges [`Change`]s (one per transaction) with other replicas.
//! - [`text::Text`]: a standalone collaborative text with a run-length
//!   history, for plain-text editing at close to plain-rope speed.
//!
//! Lists and texts merge with the Eg-walker algorithm over FugueMax
//! ordering, so concurrent insertions at one place never interleave
//! character by character. Encodings are versioned and checksummed, and
//! replicas holding the same operations encode them byte for byte alike.
//!
//! ## How the next features fit
//!
//! Every operation is kept, with its position in its author's version, in
//! one causal graph; the state is a function of a version. So: reading the
//! document *as of* a version is a replay to that version (the same replay
//! that merges); a *fork* is a copy of the log plus a version, and *merging
//! a branch* is `apply_changes` of what it has that the other lacks; *undo*
//! is a new local operation computed from the inverse of an earlier one
//! (re-inserting deleted elements, restoring a map key's previous value)
//! transformed to the current version. None of them needs a new storage
//! format.
//!
//! List items move with Kleppmann's design (*Moving elements in list
//! CRDTs*, 2020): a move inserts a new slot for the element and the
//! element shows in its greatest-ranked slot, so concurrent moves of one
//! item leave it in exactly one place; a delete concurrent with a move wins.
//!
//! Not done yet: a columnar (smaller) encoding for documents.

mod agents;
mod doc;
mod error;
mod framing;
pub mod graph;
mod seq;
pub mod text;

pub use agents::Agents;
pub use doc::{
    Change, ContainerKind, Content, Doc, DocLimits, OpBody, Patch, PatchAction, PathChange,
    PathSeg, PosUnit, Scalar, Tx, WireOp, decode_changes, encode_changes,
};
pub use error::{DocError, LoadError};

// The README's Rust examples run as doctests, so they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
