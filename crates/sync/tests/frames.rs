//! Property tests of what a peer can send: random bytes and mutated valid
//! frames reach the codec and a session, which must answer with a message
//! or a typed error, never a panic; a session that rejects a frame closes
//! cleanly (an `Error` frame for the peer, `Event::Closed`) and nothing of
//! the rejected frame is stored. The fuzz target `fuzz/fuzz_targets/sync_frame.rs`
//! runs the same checks unbounded.

use converge_crdt::{ReplicaId, VersionVector};
use converge_store::{Entry, MemoryStore, Store};
use converge_sync::codec::{self, DecodeError};
use converge_sync::{
    Config, ErrorCode, Event, Interest, Limits, Message, PROTOCOL_VERSION, Policy, Session,
    SessionError,
};
use proptest::prelude::*;

const A: ReplicaId = ReplicaId::from_u64(0xa);
const B: ReplicaId = ReplicaId::from_u64(0xb);

fn replica() -> impl Strategy<Value = ReplicaId> {
    prop_oneof![Just(A), Just(B), any::<u64>().prop_map(ReplicaId::from_u64)]
}

fn object() -> impl Strategy<Value = String> {
    prop_oneof![Just("o".to_owned()), "[a-z/]{0,12}"]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn vv() -> impl Strategy<Value = VersionVector> {
    proptest::collection::vec((replica(), 0..6u64), 0..4).prop_map(|v| v.into_iter().collect())
}

/// Any message, valid or not against the limits (zero seqs, empty batches).
fn message() -> impl Strategy<Value = Message> {
    let interest = prop_oneof![
        object().prop_map(Interest::Prefix),
        proptest::collection::vec(object(), 0..3).prop_map(Interest::Objects),
    ];
    prop_oneof![
        (replica(), interest, proptest::option::of(0..10u64)).prop_map(
            |(replica, interest, resume_after)| Message::Hello {
                version: u16::from(PROTOCOL_VERSION),
                replica,
                interest,
                resume_after,
            }
        ),
        proptest::collection::vec((object(), vv()), 0..3).prop_map(|items| Message::Have { items }),
        Just(Message::HaveDone),
        (
            0..8u64,
            object(),
            replica(),
            0..6u64,
            proptest::collection::vec(bytes(12), 0..4)
        )
            .prop_map(|(n, object, replica, from_seq, entries)| Message::Entries {
                n,
                object,
                replica,
                from_seq,
                entries,
            }),
        (0..8u64).prop_map(|upto| Message::Ack { upto }),
        (0..8u64, 0..3u64, object(), vv(), 0..20u64).prop_map(
            |(n, id, object, version_vector, total_len)| Message::SnapshotBegin {
                n,
                id,
                object,
                version_vector,
                total_len,
            }
        ),
        (0..8u64, 0..3u64, 0..20u64, bytes(12)).prop_map(|(n, id, offset, bytes)| {
            Message::SnapshotChunk {
                n,
                id,
                offset,
                bytes,
            }
        }),
        (0..8u64, 0..10u64).prop_map(|(n, position)| Message::Checkpoint { n, position }),
        (object(), bytes(12), any::<u32>()).prop_map(|(object, payload, ttl_ms)| {
            Message::Presence {
                object,
                payload,
                ttl_ms,
            }
        }),
        (any::<u16>(), "[a-z ]{0,10}").prop_map(|(code, reason)| Message::Error {
            code: ErrorCode(code),
            reason,
        }),
        Just(Message::KeepAlive),
        (0..8u64, object()).prop_map(|(n, object)| Message::Deleted { n, object }),
        (0..8u64, 0..3u64, object(), replica(), 0..6u64, 0..20u64).prop_map(
            |(n, id, object, replica, seq, total_len)| Message::EntryBegin {
                n,
                id,
                object,
                replica,
                seq,
                total_len,
            }
        ),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    /// Rewrites the length prefix.
    Length(u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => prop_oneof![4 => 0..64u32, 1 => any::<u32>()].prop_map(Mutation::Length),
    ]
}

fn mutate(mut f: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match *m {
            Mutation::Set(i, b) if !f.is_empty() => {
                let i = i % f.len();
                f[i] = b;
            }
            Mutation::Set(..) => {}
            Mutation::Truncate(i) => f.truncate(i % (f.len() + 1)),
            Mutation::Insert(i, b) => f.insert(i % (f.len() + 1), b),
            Mutation::Length(len) if f.len() >= 4 => f[..4].copy_from_slice(&len.to_le_bytes()),
            Mutation::Length(_) => {}
        }
    }
    f
}

/// A frame as a peer could send it: noise, a valid message's frame, or a
/// mutated one (the encoder refuses nothing here: limits are checked on decode).
fn frame() -> impl Strategy<Value = Vec<u8>> {
    let valid = || {
        message().prop_map(|m| {
            codec::encode(&m, &Limits::default()).expect("small messages fit in a frame")
        })
    };
    // Noise behind a right length prefix (and version byte) reaches the
    // message decoder, where plain noise mostly announces a huge frame.
    let body = (any::<bool>(), bytes(48)).prop_map(|(versioned, noise)| {
        let mut body = if versioned {
            vec![PROTOCOL_VERSION]
        } else {
            Vec::new()
        };
        body.extend(noise);
        let len = u32::try_from(body.len()).expect("a short body");
        let mut f = len.to_le_bytes().to_vec();
        f.extend(body);
        f
    });
    prop_oneof![
        1 => bytes(64),
        2 => body,
        2 => valid(),
        3 => (valid(), proptest::collection::vec(mutation(), 1..4))
            .prop_map(|(f, ms)| mutate(f, &ms)),
    ]
}

fn hello(replica: ReplicaId) -> Vec<u8> {
    let msg = Message::Hello {
        version: u16::from(PROTOCOL_VERSION),
        replica,
        interest: Interest::Prefix(String::new()),
        resume_after: None,
    };
    codec::encode(&msg, &Limits::default()).expect("a hello fits in a frame")
}

/// A store with some content, and a session of replica A over it whose peer
/// B may write only as itself (so forged authors are exercised) or anything.
fn setup(greeted: bool, trusted: bool) -> (MemoryStore, Session) {
    let store = MemoryStore::new();
    store
        .append("o", A, &[Entry::new(1, b"one".to_vec())])
        .expect("a fresh store takes an append");
    let policy = if trusted {
        Policy::trusted()
    } else {
        Policy::writer([B])
    };
    let mut s = Session::new(0, Config::new(Interest::Prefix(String::new())), A, policy);
    s.handle_timeout(0, &store).expect("the first timer lists");
    while s.poll_transmit().is_some() {}
    if greeted {
        s.handle_bytes(1, &hello(B), &store)
            .expect("a valid hello opens the session");
        while s.poll_transmit().is_some() {}
    }
    while s.poll_event().is_some() {}
    (store, s)
}

/// What the store holds, to compare before and after.
fn contents(store: &MemoryStore) -> (u64, Vec<String>) {
    let head = store.feed_head().expect("a memory store reads");
    let objects = store
        .list_objects("", None, 100)
        .expect("a memory store lists");
    (head, objects)
}

/// Checks a session that returned `err`: closed, an `Error` frame queued
/// for the peer (unless the peer closed), `Event::Closed` with that error.
fn assert_closed_cleanly(s: &mut Session, err: &SessionError) {
    assert!(s.is_closed(), "{err}");
    let out: Vec<Vec<u8>> = std::iter::from_fn(|| s.poll_transmit()).collect();
    if !matches!(err, SessionError::ClosedByPeer { .. }) {
        let last = out.last().expect("an error frame for the peer");
        assert!(
            matches!(
                codec::decode(last, &Limits::default()),
                Ok((Message::Error { .. }, _))
            ),
            "{err}: the last frame is not an Error"
        );
    }
    let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
    assert!(
        events.contains(&Event::Closed {
            reason: err.clone()
        }),
        "{err}: {events:?}"
    );
    // Closed is final.
    assert!(s.poll_timeout().is_none());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn the_codec_answers_a_message_or_a_typed_error(f in frame()) {
        let limits = Limits::default();
        match codec::decode(&f, &limits) {
            Ok((msg, used)) => {
                prop_assert!(used <= f.len());
                prop_assert!(msg.validate(&limits).is_ok());
                let again = codec::encode(&msg, &limits).expect("a decoded message re-encodes");
                prop_assert_eq!(codec::decode(&again, &limits).map(|(m, _)| m), Ok(msg));
            }
            Err(DecodeError::Incomplete { needed }) => prop_assert!(needed > 0),
            Err(_) => {
                // Rejected from this frame alone: more bytes do not help.
                let mut longer = f.clone();
                longer.extend_from_slice(&[0; 16]);
                let incomplete = matches!(
                    codec::decode(&longer, &limits),
                    Err(DecodeError::Incomplete { .. })
                );
                prop_assert!(!incomplete, "a rejected frame became incomplete");
            }
        }
    }

    #[test]
    fn a_session_fed_any_frame_closes_cleanly_or_goes_on(
        f in frame(),
        greeted in any::<bool>(),
        trusted in any::<bool>(),
        split in any::<usize>(),
    ) {
        let limits = Limits::default();
        let decoded = codec::decode(&f, &limits);
        // Whole.
        let (store, mut s) = setup(greeted, trusted);
        let before = contents(&store);
        let whole = s.handle_bytes(2, &f, &store);
        match (&decoded, &whole) {
            (Err(DecodeError::Incomplete { .. }), _) => {
                prop_assert!(whole.is_ok());
                prop_assert!(!s.is_closed());
                prop_assert_eq!(s.queue_sizes().recv_bytes, f.len());
            }
            (Err(e), _) => {
                prop_assert_eq!(whole.clone(), Err(SessionError::Decode(e.clone())));
            }
            (Ok(_), _) => {}
        }
        let one_frame = match &decoded {
            Ok((_, used)) => *used == f.len(),
            Err(_) => true,
        };
        if let Err(e) = &whole {
            assert_closed_cleanly(&mut s, e);
            if one_frame {
                prop_assert_eq!(contents(&store), before, "a rejected frame stored something");
            }
        }
        // The same bytes in two pieces end the same way.
        let (store2, mut s2) = setup(greeted, trusted);
        let cut = split % (f.len() + 1);
        let first = s2.handle_bytes(2, &f[..cut], &store2);
        let second = s2.handle_bytes(2, &f[cut..], &store2);
        prop_assert_eq!(first.and(second), whole);
        prop_assert_eq!(s2.is_closed(), s.is_closed());
        prop_assert_eq!(contents(&store2), contents(&store));
    }
}
