//! The wire codec: length-prefixed frames, each carrying one versioned message.
//!
//! ```text
//! frame = len: u32 LE | body (len bytes)
//! body  = version: u8 | message (postcard)
//! ```
//!
//! Decoding follows STYLE.md habit 4: [`check`] only says whether a whole
//! frame is buffered (an incomplete frame is a normal answer, not a
//! failure) and rejects an oversized length *before* anything is buffered
//! or allocated for it; [`decode`] then parses the body, rejects unknown
//! versions, malformed or trailing bytes, and checks the message against
//! [`Limits`] before returning it.

use crate::message::{LimitError, Limits, Message};

/// The wire version this build reads and writes.
pub const PROTOCOL_VERSION: u8 = 2;

/// Bytes of the length prefix.
pub const HEADER_BYTES: usize = 4;

/// Why bytes from a peer are not (yet) a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// More bytes are needed to complete the frame; not an error of the peer.
    #[error("incomplete frame: {needed} more bytes needed")]
    Incomplete {
        /// How many more bytes at least.
        needed: usize,
    },
    /// The length prefix announces a frame larger than the limit.
    #[error("frame of {len} bytes announced, the limit is {max}; the peer must chunk its data")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame with an empty body.
    #[error("empty frame: every frame carries a version byte and a message")]
    EmptyFrame,
    /// The frame's version byte names a version this build does not speak.
    #[error(
        "protocol version {found} is not supported (this build speaks version {supported}); upgrade the older side"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u8,
        /// The version this build speaks.
        supported: u8,
    },
    /// The body is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message decoded but bytes were left over in its frame.
    #[error("{0} trailing bytes after the message in its frame")]
    TrailingBytes(usize),
    /// The message passed a limit or contradicts itself.
    #[error("message rejected: {0}")]
    Limit(#[from] LimitError),
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded message would pass the frame limit.
    #[error("message encodes to {len} bytes, the frame limit is {max}")]
    FrameTooLarge {
        /// The encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The serializer failed (it does not, for these types, short of memory).
    #[error("could not encode: {0}")]
    Serialize(String),
}

/// Encodes `msg` as one frame, header included.
pub fn encode(msg: &Message, limits: &Limits) -> Result<Vec<u8>, EncodeError> {
    let mut frame = vec![0u8; HEADER_BYTES];
    frame.push(PROTOCOL_VERSION);
    let frame =
        postcard::to_extend(msg, frame).map_err(|e| EncodeError::Serialize(e.to_string()))?;
    let body = frame.len() - HEADER_BYTES;
    if body > limits.max_frame_bytes {
        return Err(EncodeError::FrameTooLarge {
            len: body,
            max: limits.max_frame_bytes,
        });
    }
    let mut frame = frame;
    // The limit is far below u32::MAX (checked above against a usize that
    // `Limits` keeps small), so the cast cannot truncate in practice; saturate anyway.
    let len = u32::try_from(body).unwrap_or(u32::MAX);
    frame[..HEADER_BYTES].copy_from_slice(&len.to_le_bytes());
    Ok(frame)
}

/// Whether `buf` starts with a whole frame: its total length (header
/// included) if so, [`DecodeError::Incomplete`] if more bytes are needed, or
/// [`DecodeError::FrameTooLarge`] as soon as the header shows it is too big.
pub fn check(buf: &[u8], limits: &Limits) -> Result<usize, DecodeError> {
    let Some(header) = buf.first_chunk::<HEADER_BYTES>() else {
        return Err(DecodeError::Incomplete {
            needed: HEADER_BYTES - buf.len(),
        });
    };
    let len = u32::from_le_bytes(*header) as usize;
    if len > limits.max_frame_bytes {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: limits.max_frame_bytes,
        });
    }
    let total = HEADER_BYTES + len;
    if buf.len() < total {
        return Err(DecodeError::Incomplete {
            needed: total - buf.len(),
        });
    }
    Ok(total)
}

/// Decodes the frame at the start of `buf`: the message and the number of
/// bytes it took.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<(Message, usize), DecodeError> {
    let total = check(buf, limits)?;
    let msg = decode_body(&buf[HEADER_BYTES..total], limits)?;
    Ok((msg, total))
}

/// Decodes a frame body (version byte and message).
pub fn decode_body(body: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
    let Some((&version, rest)) = body.split_first() else {
        return Err(DecodeError::EmptyFrame);
    };
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: PROTOCOL_VERSION,
        });
    }
    // postcard reads lengths from the body and fails when they run past it,
    // so no claimed length can allocate more than the (bounded) body.
    let (msg, left): (Message, _) =
        postcard::take_from_bytes(rest).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !left.is_empty() {
        return Err(DecodeError::TrailingBytes(left.len()));
    }
    msg.validate(limits)?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ErrorCode, Interest};
    use converge_crdt::{ReplicaId, VersionVector};

    fn samples() -> Vec<Message> {
        let vv: VersionVector = [(ReplicaId::from_u64(1), 3), (ReplicaId::from_u64(9), 1)]
            .into_iter()
            .collect();
        vec![
            Message::Hello {
                version: 1,
                replica: ReplicaId::from_u64(7),
                interest: Interest::Prefix("todos/".into()),
                resume_after: Some(42),
            },
            Message::Hello {
                version: 1,
                replica: ReplicaId::from_u64(7),
                interest: Interest::Objects(vec!["a".into(), "b".into()]),
                resume_after: None,
            },
            Message::Have {
                items: vec![("a".into(), vv.clone())],
            },
            Message::HaveDone,
            Message::Entries {
                n: 1,
                object: "a".into(),
                replica: ReplicaId::from_u64(1),
                from_seq: 1,
                entries: vec![b"x".to_vec(), b"yz".to_vec()],
            },
            Message::Ack { upto: 5 },
            Message::Deleted {
                n: 4,
                object: "a".into(),
            },
            Message::EntryBegin {
                n: 5,
                id: 2,
                object: "a".into(),
                replica: ReplicaId::from_u64(1),
                seq: 7,
                total_len: 5 << 20,
            },
            Message::SnapshotBegin {
                n: 2,
                id: 1,
                object: "a".into(),
                version_vector: vv,
                total_len: 3,
            },
            Message::SnapshotChunk {
                n: 3,
                id: 1,
                offset: 0,
                bytes: b"abc".to_vec(),
            },
            Message::Checkpoint { n: 3, position: 10 },
            Message::Presence {
                object: "a".into(),
                payload: b"cursor 4".to_vec(),
                ttl_ms: 5000,
            },
            Message::Error {
                code: ErrorCode::PROTOCOL,
                reason: "bad".into(),
            },
            Message::KeepAlive,
        ]
    }

    #[test]
    fn every_message_round_trips() {
        let limits = Limits::default();
        for msg in samples() {
            let frame = encode(&msg, &limits).unwrap();
            let (back, used) = decode(&frame, &limits).unwrap();
            assert_eq!(back, msg);
            assert_eq!(used, frame.len());
        }
    }

    #[test]
    fn golden_bytes_of_a_keepalive_and_an_ack() {
        // The wire format is frozen per version: these bytes must not change.
        let limits = Limits::default();
        assert_eq!(
            encode(&Message::KeepAlive, &limits).unwrap(),
            [2, 0, 0, 0, 2, 10]
        );
        assert_eq!(
            encode(&Message::Ack { upto: 300 }, &limits).unwrap(),
            [4, 0, 0, 0, 2, 4, 0xac, 0x02]
        );
        // Version 2 adds messages after the last of version 1.
        assert_eq!(
            encode(
                &Message::Deleted {
                    n: 1,
                    object: "a".into()
                },
                &limits
            )
            .unwrap(),
            [5, 0, 0, 0, 2, 11, 1, 1, b'a']
        );
    }

    #[test]
    fn every_prefix_is_incomplete_not_an_error() {
        let limits = Limits::default();
        for msg in samples() {
            let frame = encode(&msg, &limits).unwrap();
            for cut in 0..frame.len() {
                assert!(
                    matches!(
                        decode(&frame[..cut], &limits),
                        Err(DecodeError::Incomplete { .. })
                    ),
                    "{msg:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn oversized_frame_is_rejected_from_its_header() {
        let limits = Limits::default().with_max_frame_bytes(4096);
        let header = 4097u32.to_le_bytes();
        assert_eq!(
            check(&header, &limits),
            Err(DecodeError::FrameTooLarge {
                len: 4097,
                max: 4096
            })
        );
        let big = Message::Presence {
            object: "a".into(),
            payload: vec![0; 8000],
            ttl_ms: 1,
        };
        assert!(matches!(
            encode(&big, &limits),
            Err(EncodeError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn unknown_version_empty_and_trailing_bytes_are_typed_errors() {
        let limits = Limits::default();
        assert_eq!(
            decode(&[2, 0, 0, 0, 9, 10], &limits).unwrap_err(),
            DecodeError::UnsupportedVersion {
                found: 9,
                supported: PROTOCOL_VERSION
            }
        );
        assert_eq!(
            decode(&[0, 0, 0, 0], &limits).unwrap_err(),
            DecodeError::EmptyFrame
        );
        assert_eq!(
            decode(&[3, 0, 0, 0, 2, 10, 0], &limits).unwrap_err(),
            DecodeError::TrailingBytes(1)
        );
        assert!(matches!(
            decode(&[2, 0, 0, 0, 2, 200], &limits).unwrap_err(),
            DecodeError::Malformed(_)
        ));
    }

    #[test]
    fn limits_are_checked_after_decoding() {
        let limits = Limits::default().with_max_batch_entries(2);
        let batch = Message::Entries {
            n: 1,
            object: "a".into(),
            replica: ReplicaId::from_u64(1),
            from_seq: 1,
            entries: vec![vec![1], vec![2], vec![3]],
        };
        let frame = encode(&batch, &Limits::default()).unwrap();
        assert!(matches!(
            decode(&frame, &limits).unwrap_err(),
            DecodeError::Limit(LimitError::TooLong {
                what: "entries batch",
                ..
            })
        ));
        let zero = Message::Entries {
            n: 1,
            object: "a".into(),
            replica: ReplicaId::from_u64(1),
            from_seq: 0,
            entries: vec![vec![1]],
        };
        let frame = encode(&zero, &limits).unwrap();
        assert!(matches!(
            decode(&frame, &limits).unwrap_err(),
            DecodeError::Limit(LimitError::Invalid(_))
        ));
        let long = Message::Have {
            items: vec![("x".repeat(2000), VersionVector::new())],
        };
        let frame = encode(&long, &limits).unwrap();
        assert!(matches!(
            decode(&frame, &limits).unwrap_err(),
            DecodeError::Limit(LimitError::TooLong {
                what: "object id",
                ..
            })
        ));
    }

    #[test]
    fn random_bytes_and_mutations_never_panic() {
        let limits = Limits::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let frames: Vec<Vec<u8>> = samples()
            .iter()
            .map(|m| encode(m, &limits).unwrap())
            .collect();
        for _ in 0..20_000 {
            let mut buf = frames[rng.usize(..frames.len())].clone();
            for _ in 0..rng.usize(1..4) {
                match rng.u8(..3) {
                    0 if !buf.is_empty() => {
                        let i = rng.usize(..buf.len());
                        buf[i] = rng.u8(..);
                    }
                    1 => buf.truncate(rng.usize(..=buf.len())),
                    _ => buf.push(rng.u8(..)),
                }
            }
            let _ = decode(&buf, &limits);
            let noise: Vec<u8> = (0..rng.usize(..64)).map(|_| rng.u8(..)).collect();
            let _ = decode(&noise, &limits);
        }
    }
}
