//! Errors of the document layer.

use converge_crdt::{Dot, ReplicaId};

/// Why a document operation or an imported change was refused. Nothing is
/// changed when an error is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocError {
    /// A position past the end of a text or list.
    #[error("position {pos} is out of bounds: the sequence has {len} items")]
    OutOfBounds {
        /// The position asked for.
        pos: usize,
        /// The length at that moment.
        len: usize,
    },
    /// A change names a parent this replica does not hold yet: deliver the
    /// missing changes first.
    #[error("change {op:?} depends on {dep:?}, which has not arrived: apply earlier changes first")]
    MissingDependency {
        /// The change's first operation.
        op: Dot,
        /// The missing parent.
        dep: Dot,
    },
    /// A change skips operations of its replica.
    #[error(
        "changes of replica {replica} must arrive in order: expected counter {expected}, got {found}"
    )]
    Gap {
        /// The replica.
        replica: ReplicaId,
        /// The next counter this replica expects.
        expected: u64,
        /// The counter the change starts at.
        found: u64,
    },
    /// Too many changes are waiting for their dependencies.
    #[error(
        "more than {limit} changes are waiting for missing dependencies: deliver the earlier changes first"
    )]
    TooManyPending {
        /// The configured limit.
        limit: usize,
    },
    /// A path that leads nowhere in the document.
    #[error("nothing at path {path}")]
    PathNotFound {
        /// The path, up to the first step that failed.
        path: String,
    },
    /// A path or value that does not fit the document there.
    #[error("invalid change: {why}")]
    InvalidPath {
        /// What is wrong.
        why: String,
    },
    /// A change that is malformed or that does not apply to the version it
    /// names (for example, a position past the end).
    #[error("invalid change {op:?}: {why}")]
    InvalidChange {
        /// The change's first operation.
        op: Dot,
        /// What is wrong.
        why: String,
    },
    /// The history of a loaded text, decoded on first need, is malformed
    /// (see `Text::oplog`).
    #[error("the loaded history does not decode: {0}")]
    History(#[from] LoadError),
}

/// Why bytes could not be loaded as a text or document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Shorter than the header.
    #[error("encoding is truncated ({0} bytes)")]
    Truncated(usize),
    /// Not this kind of encoding (text and document encodings differ too).
    #[error("not the expected converge encoding (bad magic bytes)")]
    BadMagic,
    /// A format version this build cannot read.
    #[error("unsupported format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The version in the header.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// The checksum does not match.
    #[error("encoding is corrupt: checksum mismatch")]
    Checksum,
    /// Over a configured limit.
    #[error("encoding exceeds a limit: {0}")]
    TooLarge(String),
    /// Well-formed bytes describing an impossible history.
    #[error("encoding is malformed: {0}")]
    Malformed(String),
}
