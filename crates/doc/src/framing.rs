//! The header every encoding of this crate starts with: magic, format
//! version, CRC-32 of the body (integers little-endian).

use crate::error::LoadError;

const HEADER_LEN: usize = 10;

/// Wraps `body` (written after a zeroed header by `write`) with the header.
pub(crate) fn frame(
    magic: [u8; 4],
    version: u16,
    write: impl FnOnce(Vec<u8>) -> Vec<u8>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let mut out = write(out);
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[6..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks the header and returns the body.
pub(crate) fn unframe(
    magic: [u8; 4],
    version: u16,
    bytes: &[u8],
    max_bytes: usize,
) -> Result<&[u8], LoadError> {
    if bytes.len() > max_bytes {
        return Err(LoadError::TooLarge(format!(
            "{} bytes, limit {max_bytes}",
            bytes.len()
        )));
    }
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(LoadError::Truncated(bytes.len()));
    };
    let [m0, m1, m2, m3, v0, v1, c0, c1, c2, c3] = *header;
    if [m0, m1, m2, m3] != magic {
        return Err(LoadError::BadMagic);
    }
    let found = u16::from_le_bytes([v0, v1]);
    if found != version {
        return Err(LoadError::UnsupportedVersion {
            found,
            supported: version,
        });
    }
    if crc32fast::hash(body) != u32::from_le_bytes([c0, c1, c2, c3]) {
        return Err(LoadError::Checksum);
    }
    Ok(body)
}

/// Postcard-encodes `value` after `out`.
pub(crate) fn postcard_extend<T: serde::Serialize>(value: &T, out: Vec<u8>) -> Vec<u8> {
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        // Our encoded types use only what postcard supports (no
        // `deserialize_any`, no unknown-length maps): it cannot fail.
        Err(e) => unreachable!("postcard cannot fail on this crate's types: {e}"),
    }
}
