//! Arbitrary bytes from a peer, to the sync codec and to a session: the
//! codec answers a valid message (which re-encodes to itself) or a typed
//! error; a session either goes on or closes cleanly (an `Error` frame for
//! the peer, `Event::Closed`, then silence), and a frame it rejects stores
//! nothing. Never a panic. The first byte picks the session's setup and how
//! the rest is cut into reads; the rest is the byte stream.
#![no_main]

use converge_crdt::ReplicaId;
use converge_store::{Entry, MemoryStore, Store};
use converge_sync::codec::{self, DecodeError};
use converge_sync::{Config, Event, Interest, Limits, Message, PROTOCOL_VERSION, Policy, Session};
use libfuzzer_sys::fuzz_target;

const A: ReplicaId = ReplicaId::from_u64(0xa);
const B: ReplicaId = ReplicaId::from_u64(0xb);

fn check_codec(mut stream: &[u8], limits: &Limits) {
    loop {
        match codec::decode(stream, limits) {
            Ok((msg, used)) => {
                assert!(used > 0 && used <= stream.len());
                assert!(msg.validate(limits).is_ok(), "decoded messages are valid");
                let again = codec::encode(&msg, limits).expect("a decoded message re-encodes");
                let (back, _) = codec::decode(&again, limits).expect("and decodes");
                assert_eq!(back, msg);
                stream = &stream[used..];
            }
            Err(DecodeError::Incomplete { needed }) => {
                assert!(needed > 0);
                return;
            }
            Err(_) => return,
        }
    }
}

fn contents(store: &MemoryStore) -> (u64, Vec<String>) {
    let head = store.feed_head().expect("a memory store reads");
    (
        head,
        store
            .list_objects("", None, 100)
            .expect("a memory store lists"),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, stream)) = data.split_first() else {
        return;
    };
    // Small limits, so that the limit checks are within the fuzzer's reach.
    let limits = Limits::default()
        .with_max_frame_bytes(4096)
        .with_max_batch_entries(8)
        .with_max_collection_len(8);
    check_codec(stream, &limits);

    let store = MemoryStore::new();
    store
        .append("o", A, &[Entry::new(1, b"one".to_vec())])
        .expect("a fresh store takes an append");
    let policy = if setup & 1 == 0 {
        Policy::trusted()
    } else {
        Policy::writer([B])
    };
    let mut config = Config::new(Interest::Prefix(String::new()));
    config.limits = limits;
    config.max_pending_bytes = 1024;
    config.max_snapshot_bytes = 1024;
    config.max_entry_bytes = 1024;
    let mut s = Session::new(0, config, A, policy);
    let mut now = 0;
    s.handle_timeout(now, &store)
        .expect("the first timer lists");
    if setup & 2 != 0 {
        let hello = Message::Hello {
            version: u16::from(PROTOCOL_VERSION),
            replica: B,
            interest: Interest::Prefix(String::new()),
            resume_after: None,
        };
        let frame = codec::encode(&hello, &limits).expect("a hello fits");
        s.handle_bytes(now, &frame, &store)
            .expect("a valid hello opens the session");
    }
    while s.poll_transmit().is_some() {}
    while s.poll_event().is_some() {}

    let before = contents(&store);
    // Whether the stream is exactly one frame, and whether the codec rejects it.
    let (one_frame, rejected) = match codec::decode(stream, &limits) {
        Err(DecodeError::Incomplete { .. }) => (false, false),
        Err(_) => (true, true),
        Ok((_, used)) => (used == stream.len(), false),
    };
    let piece = usize::from(setup >> 2) + 1;
    let mut closed_by = None;
    for chunk in stream.chunks(piece) {
        now += 1; // Well inside every timer: errors come from the bytes.
        let result = s.handle_bytes(now, chunk, &store);
        let _ = s.handle_timeout(now, &store);
        let out: Vec<Vec<u8>> = std::iter::from_fn(|| s.poll_transmit()).collect();
        let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
        if closed_by.is_some() {
            assert!(
                result.is_ok() && out.is_empty(),
                "a closed session stays silent"
            );
            continue;
        }
        let Err(e) = result else {
            continue;
        };
        assert!(s.is_closed(), "an error closes the session: {e}");
        assert!(events.contains(&Event::Closed { reason: e.clone() }), "{e}");
        if !matches!(e, converge_sync::SessionError::ClosedByPeer { .. }) {
            let last = out.last().expect("an Error frame for the peer");
            assert!(matches!(
                codec::decode(last, &limits),
                Ok((Message::Error { .. }, _))
            ));
        }
        closed_by = Some(e);
    }
    if rejected {
        assert!(
            closed_by.is_some(),
            "a frame the codec rejects closes the session"
        );
    }
    // A frame the codec or the session rejects is not written, not in part.
    if one_frame && closed_by.is_some() {
        assert_eq!(
            contents(&store),
            before,
            "a rejected frame stored something"
        );
    }
});
