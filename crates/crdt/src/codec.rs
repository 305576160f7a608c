//! Versioned, checksummed binary encoding of CRDT states and deltas.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `b"CVcr"` |
//! | 2 | format version (currently 1) |
//! | 4 | CRC-32 (IEEE) of the payload |
//! | n | payload: the value in postcard encoding |
//!
//! Decoding checks the magic, the version, the length limit, the checksum,
//! that the payload parses with nothing left over, and every type's
//! invariants (sorted, compact, every live dot in its causal context). Any
//! failure is a [`DecodeError`]; decoding never panics.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Validate;

/// The magic prefix of every encoded state.
pub const MAGIC: [u8; 4] = *b"CVcr";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;
/// Default limit on encoded size accepted by [`decode`]: 64 MiB.
pub const DEFAULT_MAX_LEN: usize = 64 << 20;

const HEADER_LEN: usize = 10;

/// Why bytes could not be decoded into a CRDT value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the header needs.
    #[error("encoded state is truncated: {len} bytes, the header alone needs {HEADER_LEN}")]
    Truncated {
        /// Bytes given.
        len: usize,
    },
    /// The bytes do not start with [`MAGIC`]: not a converge CRDT state.
    #[error("not a converge CRDT state (bad magic bytes {found:02x?})")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// Written by a format version this build does not know.
    #[error("unsupported CRDT state format version {found} (this build reads version {VERSION})")]
    UnsupportedVersion {
        /// The version in the header.
        found: u16,
    },
    /// Larger than the configured limit.
    #[error("encoded state is {len} bytes, over the limit of {max} bytes")]
    TooLarge {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The checksum does not match: the bytes were corrupted.
    #[error("encoded state is corrupt: checksum {found:08x} does not match {expected:08x}")]
    Checksum {
        /// The checksum in the header.
        expected: u32,
        /// The checksum of the payload as received.
        found: u32,
    },
    /// The payload does not parse as the expected type, has trailing bytes,
    /// or breaks an invariant of the type.
    #[error("encoded state is malformed: {0}")]
    Malformed(String),
}

/// Encodes `value` with the versioned header.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    // Serializing our own types into a Vec cannot fail: every type here
    // has a serde representation postcard supports (no maps with
    // unknown length, no `deserialize_any`).
    let out = match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(e) => unreachable!("postcard cannot fail on CRDT types: {e}"),
    };
    let mut out = out;
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[6..10].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a value written by [`encode`], accepting at most
/// [`DEFAULT_MAX_LEN`] bytes.
pub fn decode<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_with_limit(bytes, DEFAULT_MAX_LEN)
}

/// Decodes a value written by [`encode`], accepting at most `max_len` bytes.
pub fn decode_with_limit<T: DeserializeOwned + Validate>(
    bytes: &[u8],
    max_len: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max_len {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    let Some((header, payload)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::Truncated { len: bytes.len() });
    };
    let [m0, m1, m2, m3, v0, v1, c0, c1, c2, c3] = *header;
    if [m0, m1, m2, m3] != MAGIC {
        return Err(DecodeError::BadMagic {
            found: [m0, m1, m2, m3],
        });
    }
    let version = u16::from_le_bytes([v0, v1]);
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    let expected = u32::from_le_bytes([c0, c1, c2, c3]);
    let found = crc32fast::hash(payload);
    if expected != found {
        return Err(DecodeError::Checksum { expected, found });
    }
    let (value, rest) = postcard::take_from_bytes::<T>(payload)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} unexpected bytes after the value",
            rest.len()
        )));
    }
    value.validate().map_err(DecodeError::Malformed)?;
    Ok(value)
}
