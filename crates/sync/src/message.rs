//! The protocol's messages, and the limits every message read from a peer
//! is checked against.
//!
//! The table in `PROTOCOL.md` next to this crate's sources says when each
//! message is sent and what the receiver does with it.

use converge_crdt::{ReplicaId, VersionVector};
use serde::{Deserialize, Serialize};

/// What a side wants from its peer: the objects whose entries it subscribes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Interest {
    /// These objects, by id.
    Objects(Vec<String>),
    /// Every object whose id starts with this prefix (`""` is everything).
    Prefix(String),
}

impl Interest {
    /// Whether `object` is covered.
    pub fn matches(&self, object: &str) -> bool {
        match self {
            Self::Objects(ids) => ids.iter().any(|id| id == object),
            Self::Prefix(prefix) => object.starts_with(prefix.as_str()),
        }
    }
}

/// An error code carried by [`Message::Error`]. A `u16` on the wire, so
/// that codes added later still decode; the constants are the known ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The peer broke the protocol (a malformed frame or message, a message out of place).
    pub const PROTOCOL: Self = Self(1);
    /// The peer speaks a protocol version this side does not.
    pub const VERSION: Self = Self(2);
    /// A frame, batch, string or collection passed a limit.
    pub const LIMIT: Self = Self(3);
    /// The peer wrote entries for a replica it may not write as.
    pub const UNAUTHORISED: Self = Self(4);
    /// The peer sent an entry that contradicts a stored one (same replica and seq, other bytes).
    pub const CONFLICT: Self = Self(5);
    /// This side's store failed; try again later.
    pub const STORE: Self = Self(6);
    /// Nothing was heard from the peer for too long.
    pub const TIMEOUT: Self = Self(7);
    /// The side is shutting down or closed the session on purpose.
    pub const SHUTDOWN: Self = Self(8);
}

/// One protocol message. Numbered messages (`n`) are data: they count
/// against the flow-control window until the peer acknowledges them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First message each way: who this side is and what it wants.
    Hello {
        /// The protocol version the sender speaks ([`crate::PROTOCOL_VERSION`]).
        version: u16,
        /// The sender's own replica id.
        replica: ReplicaId,
        /// What the sender subscribes to.
        interest: Interest,
        /// Resume from this position of the receiver's change feed, if the
        /// sender holds everything up to it (see [`Message::Checkpoint`]).
        resume_after: Option<u64>,
    },
    /// What the sender holds of some objects in its interest. The peer
    /// answers by sending what the sender lacks; also used to ask for a gap.
    Have {
        /// (object, version vector) pairs.
        items: Vec<(String, VersionVector)>,
    },
    /// The sender has listed every object of its interest in `Have`
    /// messages; objects it did not name, it does not hold.
    HaveDone,
    /// Consecutive entries of one replica's log of one object.
    Entries {
        /// Data message number.
        n: u64,
        /// The object.
        object: String,
        /// The replica whose log they are.
        replica: ReplicaId,
        /// The seq of the first entry.
        from_seq: u64,
        /// The entries' bytes, in seq order.
        entries: Vec<Vec<u8>>,
    },
    /// Data messages up to `upto` were received and what they carried is durable.
    Ack {
        /// The highest data message number processed.
        upto: u64,
    },
    /// A snapshot follows in chunks (the peer's needed prefix was compacted away).
    SnapshotBegin {
        /// Data message number.
        n: u64,
        /// Names this transfer in its chunks.
        id: u64,
        /// The object.
        object: String,
        /// What the snapshot covers.
        version_vector: VersionVector,
        /// The snapshot's length in bytes.
        total_len: u64,
    },
    /// One chunk of a snapshot (or of an entry, after
    /// [`Message::EntryBegin`]), in order.
    SnapshotChunk {
        /// Data message number.
        n: u64,
        /// The transfer.
        id: u64,
        /// Where the chunk starts in the snapshot.
        offset: u64,
        /// The chunk.
        bytes: Vec<u8>,
    },
    /// Everything of the receiver's interest up to `position` of the
    /// sender's change feed went out in data messages up to `n` (or was
    /// known to be held by the receiver already, and so not sent).
    Checkpoint {
        /// The last data message number it covers.
        n: u64,
        /// The sender's change feed position.
        position: u64,
    },
    /// Ephemeral state (a cursor, "online") relayed, never stored.
    Presence {
        /// The object it concerns.
        object: String,
        /// The application's bytes.
        payload: Vec<u8>,
        /// How long it holds, in milliseconds, unless renewed.
        ttl_ms: u32,
    },
    /// The sender closes the session for this reason.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// What happened, for humans.
        reason: String,
    },
    /// Nothing else to say; proves the sender is alive.
    KeepAlive,
    // Variants added after version 1's first release go last, so that the
    // postcard indices of the earlier ones (and their golden bytes) stay.
    /// The object was deleted: the receiver deletes it too (keeping a
    /// tombstone) instead of sending its entries back. Deletion wins.
    Deleted {
        /// Data message number.
        n: u64,
        /// The object.
        object: String,
    },
    /// One entry too large for a frame follows in chunks
    /// ([`Message::SnapshotChunk`]s naming the same `id`).
    EntryBegin {
        /// Data message number.
        n: u64,
        /// Names this transfer in its chunks (shared with snapshot transfers).
        id: u64,
        /// The object.
        object: String,
        /// The replica whose log it is.
        replica: ReplicaId,
        /// The entry's seq.
        seq: u64,
        /// The entry's length in bytes.
        total_len: u64,
    },
}

impl Message {
    /// The data message number, for messages that count against the window.
    pub fn data_number(&self) -> Option<u64> {
        match self {
            Self::Entries { n, .. }
            | Self::Deleted { n, .. }
            | Self::EntryBegin { n, .. }
            | Self::SnapshotBegin { n, .. }
            | Self::SnapshotChunk { n, .. } => Some(*n),
            _ => None,
        }
    }

    /// Checks the message against `limits` (strings, collections, batches,
    /// payloads) and its own consistency. The codec calls this on every
    /// decoded message, so a message that fails is never acted on.
    pub fn validate(&self, limits: &Limits) -> Result<(), LimitError> {
        match self {
            Self::Hello { interest, .. } => match interest {
                Interest::Prefix(p) => limits.string("interest prefix", p),
                Interest::Objects(ids) => {
                    limits.collection("interest objects", ids.len())?;
                    ids.iter().try_for_each(|id| limits.object(id))
                }
            },
            Self::Have { items } => {
                limits.collection("have items", items.len())?;
                items.iter().try_for_each(|(object, vv)| {
                    limits.object(object)?;
                    limits.version_vector(vv)
                })
            }
            Self::Entries {
                object,
                from_seq,
                entries,
                ..
            } => {
                limits.object(object)?;
                if entries.is_empty() {
                    return Err(LimitError::Invalid("an entries batch is empty"));
                }
                if entries.len() > limits.max_batch_entries {
                    return Err(LimitError::TooLong {
                        what: "entries batch",
                        len: entries.len(),
                        max: limits.max_batch_entries,
                    });
                }
                if *from_seq == 0 {
                    return Err(LimitError::Invalid("an entries batch starts at seq 0"));
                }
                if from_seq.checked_add(entries.len() as u64).is_none() {
                    return Err(LimitError::Invalid(
                        "an entries batch runs past the last seq",
                    ));
                }
                Ok(())
            }
            Self::SnapshotBegin {
                object,
                version_vector,
                ..
            } => {
                limits.object(object)?;
                limits.version_vector(version_vector)
            }
            Self::Deleted { object, .. } => limits.object(object),
            Self::EntryBegin { object, seq, .. } => {
                limits.object(object)?;
                if *seq == 0 {
                    return Err(LimitError::Invalid("a chunked entry has seq 0"));
                }
                Ok(())
            }
            Self::SnapshotChunk { bytes, .. } => {
                if bytes.is_empty() {
                    return Err(LimitError::Invalid("a snapshot chunk is empty"));
                }
                Ok(())
            }
            Self::Presence {
                object, payload, ..
            } => {
                limits.object(object)?;
                if payload.len() > limits.max_presence_bytes {
                    return Err(LimitError::TooLong {
                        what: "presence payload",
                        len: payload.len(),
                        max: limits.max_presence_bytes,
                    });
                }
                Ok(())
            }
            Self::Error { reason, .. } => limits.string("error reason", reason),
            Self::HaveDone | Self::Ack { .. } | Self::Checkpoint { .. } | Self::KeepAlive => Ok(()),
        }
    }
}

/// The limits applied to everything read from a peer (and to what is sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The largest frame body, in bytes. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// The most entries in one [`Message::Entries`]. Default 1024.
    pub max_batch_entries: usize,
    /// The longest string (object id, prefix, reason), in bytes. Default
    /// [`converge_store::MAX_OBJECT_ID_BYTES`].
    pub max_string_bytes: usize,
    /// The longest collection (objects in an interest, `Have` items,
    /// replicas in a version vector). Default 4096.
    pub max_collection_len: usize,
    /// The largest presence payload, in bytes. Default 16 KiB.
    pub max_presence_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1 << 20,
            max_batch_entries: 1024,
            max_string_bytes: converge_store::MAX_OBJECT_ID_BYTES,
            max_collection_len: 4096,
            max_presence_bytes: 16 << 10,
        }
    }
}

impl Limits {
    /// Sets [`Limits::max_frame_bytes`] (at least 4 KiB, so every control
    /// message and a one-entry batch of a small entry fit).
    pub fn with_max_frame_bytes(mut self, max: usize) -> Self {
        self.max_frame_bytes = max.max(4096);
        self
    }

    /// Sets [`Limits::max_batch_entries`] (at least 1).
    pub fn with_max_batch_entries(mut self, max: usize) -> Self {
        self.max_batch_entries = max.max(1);
        self
    }

    /// Sets [`Limits::max_collection_len`] (at least 1).
    pub fn with_max_collection_len(mut self, max: usize) -> Self {
        self.max_collection_len = max.max(1);
        self
    }

    fn string(&self, what: &'static str, s: &str) -> Result<(), LimitError> {
        if s.len() > self.max_string_bytes {
            return Err(LimitError::TooLong {
                what,
                len: s.len(),
                max: self.max_string_bytes,
            });
        }
        Ok(())
    }

    fn object(&self, object: &str) -> Result<(), LimitError> {
        if object.is_empty() {
            return Err(LimitError::Invalid("an object id is empty"));
        }
        self.string("object id", object)
    }

    fn collection(&self, what: &'static str, len: usize) -> Result<(), LimitError> {
        if len > self.max_collection_len {
            return Err(LimitError::TooLong {
                what,
                len,
                max: self.max_collection_len,
            });
        }
        Ok(())
    }

    fn version_vector(&self, vv: &VersionVector) -> Result<(), LimitError> {
        self.collection("version vector", vv.len())?;
        if vv.iter().any(|(_, c)| c == 0) {
            return Err(LimitError::Invalid("a version vector holds a zero entry"));
        }
        Ok(())
    }
}

/// A message passed a limit or is inconsistent in itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// A string or collection is longer than allowed.
    #[error("{what} is {len} long, the limit is {max}")]
    TooLong {
        /// What was too long.
        what: &'static str,
        /// Its length (bytes for strings, items for collections).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The message contradicts itself or the protocol.
    #[error("{0}")]
    Invalid(&'static str),
}
