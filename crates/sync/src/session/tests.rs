//! Two sessions over an in-memory wire, driven by virtual time (STYLE.md habit 8).

use super::*;
use converge_store::MemoryStore;

const A: ReplicaId = ReplicaId::from_u64(0xa);
const B: ReplicaId = ReplicaId::from_u64(0xb);

fn everything() -> Config {
    Config::new(Interest::Prefix(String::new()))
}

struct Pair {
    now: u64,
    x: Session,
    y: Session,
    sx: MemoryStore,
    sy: MemoryStore,
    /// Frames x sent, and y sent.
    sent: (usize, usize),
    /// Entries messages x sent, and y sent.
    data: (usize, usize),
}

fn is_entries(f: &[u8]) -> bool {
    matches!(
        codec::decode(f, &Limits::default()),
        Ok((Message::Entries { .. }, _))
    )
}

impl Pair {
    fn new(cx: Config, cy: Config) -> Self {
        Self::with_stores(cx, cy, MemoryStore::new(), MemoryStore::new())
    }

    fn with_stores(cx: Config, cy: Config, sx: MemoryStore, sy: MemoryStore) -> Self {
        let mut x = Session::new(0, cx, A, Policy::trusted());
        let mut y = Session::new(0, cy, B, Policy::trusted());
        if x.config().resume_after.is_none() {
            assert_eq!(x.poll_timeout(), Some(0), "a new session is due at once");
        }
        x.handle_timeout(0, &sx).unwrap();
        y.handle_timeout(0, &sy).unwrap();
        Self {
            now: 0,
            x,
            y,
            sx,
            sy,
            sent: (0, 0),
            data: (0, 0),
        }
    }

    /// Moves every queued frame once each way; whether anything moved.
    fn step(&mut self) -> bool {
        self.now += 1;
        let mut moved = false;
        while let Some(f) = self.x.poll_transmit() {
            self.sent.0 += 1;
            self.data.0 += usize::from(is_entries(&f));
            moved = true;
            let _ = self.y.handle_bytes(self.now, &f, &self.sy);
        }
        while let Some(f) = self.y.poll_transmit() {
            self.sent.1 += 1;
            self.data.1 += usize::from(is_entries(&f));
            moved = true;
            let _ = self.x.handle_bytes(self.now, &f, &self.sx);
        }
        moved
    }

    /// Steps until quiet, at most 1000 times (a livelock fails instead of hanging).
    fn drive(&mut self) {
        for _ in 0..1000 {
            if !self.step() {
                return;
            }
        }
        panic!("no quiescence after 1000 steps");
    }

    fn events_x(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.x.poll_event()).collect()
    }
}

fn append(
    store: &MemoryStore,
    object: &str,
    replica: ReplicaId,
    seqs: std::ops::RangeInclusive<u64>,
) {
    let entries: Vec<Entry> = seqs
        .map(|s| Entry::new(s, format!("{object}/{replica}/{s}").into_bytes()))
        .collect();
    store.append(object, replica, &entries).unwrap();
}

fn frame(msg: &Message) -> Vec<u8> {
    codec::encode(msg, &Limits::default()).unwrap()
}

fn hello(replica: ReplicaId) -> Vec<u8> {
    frame(&Message::Hello {
        version: u16::from(codec::PROTOCOL_VERSION),
        replica,
        interest: Interest::Prefix(String::new()),
        resume_after: None,
    })
}

#[test]
fn two_replicas_exchange_what_each_lacks() {
    let mut p = Pair::new(everything(), everything());
    append(&p.sx, "todos", A, 1..=5);
    append(&p.sy, "todos", B, 1..=3);
    append(&p.sy, "notes", B, 1..=2);
    p.drive();
    for s in [&p.sx, &p.sy] {
        assert_eq!(s.version_vector("todos").unwrap().get(A), 5);
        assert_eq!(s.version_vector("todos").unwrap().get(B), 3);
        assert_eq!(s.version_vector("notes").unwrap().get(B), 2);
    }
    assert!(p.x.is_idle() && p.y.is_idle());
    let ev = p.events_x();
    assert!(ev.contains(&Event::Connected { peer: B }));
    assert!(ev.contains(&Event::ObjectUpdated {
        object: "notes".into()
    }));
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Nothing of a deleted object remains, and it is deleted.
fn assert_deleted(store: &MemoryStore, object: &str) {
    assert!(store.is_deleted(object).unwrap(), "{object} is not deleted");
    assert!(matches!(
        store.version_vector(object),
        Err(ReadError::Deleted { .. })
    ));
    assert!(
        !store
            .list_objects("", None, 100)
            .unwrap()
            .iter()
            .any(|o| o == object)
    );
}

#[test]
fn a_deletion_propagates_live_and_is_not_resurrected() {
    let mut p = Pair::new(everything(), everything());
    append(&p.sx, "doc", A, 1..=5);
    append(&p.sy, "doc", B, 1..=3);
    append(&p.sx, "keep", A, 1..=1);
    p.drive();
    assert_eq!(p.sy.version_vector("doc").unwrap().get(A), 5);
    events(&mut p.y);

    // y deletes while x keeps writing concurrently: deletion wins.
    p.sy.delete_object("doc").unwrap();
    append(&p.sx, "doc", A, 6..=7);
    p.y.handle_store_change(p.now, &p.sy).unwrap();
    p.x.handle_store_change(p.now, &p.sx).unwrap();
    p.drive();
    assert_deleted(&p.sx, "doc");
    assert_deleted(&p.sy, "doc");
    assert!(events(&mut p.x).contains(&Event::ObjectDeleted {
        object: "doc".into()
    }));
    assert_eq!(p.sx.version_vector("keep").unwrap().get(A), 1);
    assert_eq!(p.sy.version_vector("keep").unwrap().get(A), 1);
    // Repair rounds later (keep-alives keep the session open), still
    // deleted on both sides.
    for _ in 0..14 {
        p.now += 5_000;
        p.x.handle_timeout(p.now, &p.sx).unwrap();
        p.y.handle_timeout(p.now, &p.sy).unwrap();
        p.drive();
    }
    assert_deleted(&p.sx, "doc");
    assert_deleted(&p.sy, "doc");
    assert!(p.x.is_idle() && p.y.is_idle());
}

#[test]
fn a_tombstone_meets_entries_on_connect_and_wins() {
    // x deleted "doc" (and "never", which y does not hold) before they met;
    // y holds entries of "doc" that x never saw.
    let (sx, sy) = (MemoryStore::new(), MemoryStore::new());
    append(&sx, "doc", A, 1..=2);
    sx.delete_object("doc").unwrap();
    sx.delete_object("never").unwrap();
    append(&sy, "doc", B, 1..=4);
    append(&sy, "live", B, 1..=1);
    let mut p = Pair::with_stores(everything(), everything(), sx, sy);
    p.drive();
    for s in [&p.sx, &p.sy] {
        assert_deleted(s, "doc");
        assert_deleted(s, "never");
        assert_eq!(s.version_vector("live").unwrap().get(B), 1);
    }
    // The same the other way round: y's tombstone, x's entries.
    let (sx, sy) = (MemoryStore::new(), MemoryStore::new());
    append(&sx, "doc", A, 1..=3);
    sy.delete_object("doc").unwrap();
    let mut p = Pair::with_stores(everything(), everything(), sx, sy);
    p.drive();
    assert_deleted(&p.sx, "doc");
    assert_deleted(&p.sy, "doc");
}

#[test]
fn a_lost_deletion_is_sent_again() {
    let mut p = Pair::new(everything(), everything());
    append(&p.sx, "doc", A, 1..=2);
    p.drive();
    p.sx.delete_object("doc").unwrap();
    p.x.handle_store_change(p.now, &p.sx).unwrap();
    // The deletion is lost on the wire.
    let mut lost = 0;
    while let Some(f) = p.x.poll_transmit() {
        lost += 1;
        let _ = f;
    }
    assert!(lost > 0);
    assert!(!p.sy.is_deleted("doc").unwrap());
    p.now += 10_000;
    p.x.handle_timeout(p.now, &p.sx).unwrap();
    p.y.handle_timeout(p.now, &p.sy).unwrap();
    p.drive();
    assert_deleted(&p.sy, "doc");
}

#[test]
fn an_entry_larger_than_a_frame_goes_in_chunks() {
    // 3 MiB entries under the default 1 MiB frame limit, between small ones.
    let big = |seq: u64| Entry::new(seq, vec![seq as u8; 3 << 20]);
    let mut p = Pair::new(everything(), everything());
    let small = |seq: u64| Entry::new(seq, vec![seq as u8; 10]);
    p.sx.append("doc", A, &[small(1), big(2), small(3), big(4)])
        .unwrap();
    p.drive();
    assert_eq!(
        p.sy.read("doc", A, 1, 10).unwrap(),
        vec![small(1), big(2), small(3), big(4)]
    );
    assert!(p.x.is_idle() && p.y.is_idle());
    assert!(!p.x.is_closed() && !p.y.is_closed());
    // Live, too: a big entry written later streams the same way.
    p.sx.append("doc", A, &[big(5)]).unwrap();
    p.x.handle_store_change(p.now, &p.sx).unwrap();
    p.drive();
    assert_eq!(p.sy.read("doc", A, 5, 10).unwrap(), vec![big(5)]);
}

#[test]
fn a_chunked_entry_over_the_receivers_limit_closes_the_session() {
    let mut small = everything();
    small.max_entry_bytes = 2 << 20;
    let mut p = Pair::new(everything(), small);
    p.sx.append("doc", A, &[Entry::new(1, vec![7u8; 3 << 20])])
        .unwrap();
    p.drive();
    assert!(p.y.is_closed());
    let closed = events(&mut p.y).into_iter().find_map(|e| match e {
        Event::Closed { reason } => Some(reason),
        _ => None,
    });
    assert!(
        matches!(closed, Some(SessionError::Limit(ref m)) if m.contains("max_entry_bytes")),
        "{closed:?}"
    );
    assert!(matches!(
        p.sy.version_vector("doc"),
        Err(ReadError::UnknownObject { .. })
    ));
}

#[test]
fn a_thousand_object_subscription_costs_one_round() {
    let objects: Vec<String> = (0..2000).map(|i| format!("doc/{i:04}")).collect();
    let server = MemoryStore::new();
    for o in &objects {
        append(&server, o, B, 1..=1);
    }
    let client = everything_with(Interest::Objects(objects.clone()));
    let mut p = Pair::with_stores(client, everything(), MemoryStore::new(), server);
    // One flight from the client (hello, haves, have-done), one answer.
    while let Some(f) = p.x.poll_transmit() {
        p.y.handle_bytes(1, &f, &p.sy).unwrap();
    }
    let mut entries = 0;
    while let Some(f) = p.y.poll_transmit() {
        if let Ok((Message::Entries { .. }, _)) = codec::decode(&f, &Limits::default()) {
            entries += 1;
        }
        p.x.handle_bytes(1, &f, &p.sx).unwrap();
    }
    assert!(entries > 0, "data flows after one round trip");
    p.drive();
    for o in &objects {
        assert_eq!(p.sx.version_vector(o).unwrap().get(B), 1, "{o}");
    }
}

fn everything_with(interest: Interest) -> Config {
    Config::new(interest)
}

#[test]
fn only_the_subscribed_objects_are_sent() {
    let mut p = Pair::new(
        everything_with(Interest::Prefix("todos/".into())),
        everything(),
    );
    append(&p.sy, "todos/1", B, 1..=2);
    append(&p.sy, "secret", B, 1..=2);
    p.drive();
    assert_eq!(p.sx.version_vector("todos/1").unwrap().get(B), 2);
    assert!(p.sx.version_vector("secret").is_err());
}

#[test]
fn live_mode_streams_new_local_entries() {
    let mut p = Pair::new(everything(), everything());
    p.drive();
    append(&p.sy, "todos", B, 1..=3);
    p.y.handle_store_change(p.now, &p.sy).unwrap();
    p.drive();
    assert_eq!(p.sx.version_vector("todos").unwrap().get(B), 3);
    append(&p.sy, "todos", B, 4..=4);
    p.y.handle_store_change(p.now, &p.sy).unwrap();
    p.drive();
    assert_eq!(p.sx.version_vector("todos").unwrap().get(B), 4);
}

#[test]
fn a_slow_receiver_bounds_what_the_sender_has_in_flight() {
    let mut cy = everything();
    cy.window_messages = 4;
    cy.batch_entries = 10;
    let mut p = Pair::new(everything(), cy);
    append(&p.sy, "big", B, 1..=1000);
    // Deliver x's hello and haves, but none of x's acks afterwards.
    while let Some(f) = p.x.poll_transmit() {
        p.y.handle_bytes(1, &f, &p.sy).unwrap();
    }
    let mut frames = Vec::new();
    while let Some(f) = p.y.poll_transmit() {
        frames.push(f);
    }
    let data = frames
        .iter()
        .filter(|f| {
            matches!(
                codec::decode(f, &Limits::default()),
                Ok((Message::Entries { .. }, _))
            )
        })
        .count();
    assert_eq!(
        data, 4,
        "the window holds the sender to 4 unacknowledged batches"
    );
    assert_eq!(p.y.queue_sizes().inflight_messages, 4);
    for f in frames {
        p.x.handle_bytes(2, &f, &p.sx).unwrap();
    }
    // Acks reopen the window; everything arrives.
    p.drive();
    assert_eq!(p.sx.version_vector("big").unwrap().get(B), 1000);
}

#[test]
fn lost_data_is_resent_after_the_ack_timeout() {
    let mut p = Pair::new(everything(), everything());
    p.drive();
    append(&p.sy, "todos", B, 1..=3);
    p.y.handle_store_change(p.now, &p.sy).unwrap();
    // The network loses the batch.
    let mut lost = 0;
    while let Some(f) = p.y.poll_transmit() {
        lost += usize::from(is_entries(&f));
    }
    assert_eq!(lost, 1);
    let at = p.now + 1 + p.y.config().ack_timeout_ms;
    assert!(p.y.poll_timeout().unwrap() <= at);
    p.now = at;
    p.y.handle_timeout(at, &p.sy).unwrap();
    p.drive();
    assert_eq!(p.sx.version_vector("todos").unwrap().get(B), 3);
}

#[test]
fn out_of_order_entries_wait_for_the_gap() {
    let store = MemoryStore::new();
    let mut s = Session::new(0, everything(), A, Policy::trusted());
    s.handle_bytes(0, &hello(B), &store).unwrap();
    let batch = |n, from: u64| {
        frame(&Message::Entries {
            n,
            object: "o".into(),
            replica: B,
            from_seq: from,
            entries: vec![vec![from as u8], vec![from as u8 + 1]],
        })
    };
    s.handle_bytes(1, &batch(2, 3), &store).unwrap();
    assert!(store.version_vector("o").is_err(), "seqs 3-4 wait for 1-2");
    assert_eq!(s.queue_sizes().pending_bytes, 2);
    // The gap is requested with what this side holds.
    let mut asked = false;
    while let Some(f) = s.poll_transmit() {
        if let Ok((Message::Have { items }, _)) = codec::decode(&f, &Limits::default()) {
            asked |= items.iter().any(|(o, vv)| o == "o" && vv.is_empty());
        }
    }
    assert!(asked);
    s.handle_bytes(2, &batch(1, 1), &store).unwrap();
    assert_eq!(store.version_vector("o").unwrap().get(B), 4);
    assert_eq!(s.queue_sizes().pending_bytes, 0);
}

#[test]
fn a_client_may_write_only_as_itself() {
    let store = MemoryStore::new();
    let mut s = Session::new(0, everything(), A, Policy::writer([B]));
    s.handle_bytes(0, &hello(B), &store).unwrap();
    let forged = frame(&Message::Entries {
        n: 1,
        object: "o".into(),
        replica: ReplicaId::from_u64(0xc),
        from_seq: 1,
        entries: vec![b"evil".to_vec()],
    });
    let err = s.handle_bytes(1, &forged, &store).unwrap_err();
    assert!(matches!(err, SessionError::Unauthorised { .. }), "{err}");
    assert!(store.version_vector("o").is_err(), "nothing written");
    assert!(s.is_closed());
    let last = std::iter::from_fn(|| s.poll_transmit()).last().unwrap();
    assert!(matches!(
        codec::decode(&last, &Limits::default()),
        Ok((
            Message::Error {
                code: ErrorCode::UNAUTHORISED,
                ..
            },
            _
        ))
    ));
    // Its own entries are welcome.
    let store = MemoryStore::new();
    let mut s = Session::new(0, everything(), A, Policy::writer([B]));
    s.handle_bytes(0, &hello(B), &store).unwrap();
    let own = frame(&Message::Entries {
        n: 1,
        object: "o".into(),
        replica: B,
        from_seq: 1,
        entries: vec![b"mine".to_vec()],
    });
    s.handle_bytes(1, &own, &store).unwrap();
    assert_eq!(store.version_vector("o").unwrap().get(B), 1);
}

#[test]
fn a_relayed_copy_with_other_bytes_is_rejected_and_reported() {
    let store = MemoryStore::new();
    let c = ReplicaId::from_u64(0xc);
    store
        .append("o", c, &[Entry::new(1, b"original".to_vec())])
        .unwrap();
    let mut s = Session::new(0, everything(), A, Policy::trusted());
    s.handle_bytes(0, &hello(B), &store).unwrap();
    let tampered = frame(&Message::Entries {
        n: 1,
        object: "o".into(),
        replica: c,
        from_seq: 1,
        entries: vec![b"tampered".to_vec()],
    });
    let err = s.handle_bytes(1, &tampered, &store).unwrap_err();
    assert!(
        matches!(err, SessionError::Conflict { seq: 1, .. }),
        "{err}"
    );
    let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
    assert!(events.contains(&Event::PeerConflict {
        object: "o".into(),
        replica: c,
        seq: 1
    }));
    assert_eq!(store.read("o", c, 1, 1).unwrap()[0].bytes, b"original");
}

#[test]
fn bad_frames_close_the_session_with_a_typed_error() {
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (vec![3, 0, 0, 0, 2, 0xff, 0xff], ErrorCode::PROTOCOL),
        (vec![2, 0, 0, 0, 7, 10], ErrorCode::VERSION),
        ((64u32 << 20).to_le_bytes().to_vec(), ErrorCode::LIMIT),
        (vec![0, 0, 0, 0], ErrorCode::PROTOCOL),
    ];
    for (bytes, code) in cases {
        let store = MemoryStore::new();
        let mut s = Session::new(0, everything(), A, Policy::trusted());
        s.handle_bytes(0, &hello(B), &store).unwrap();
        let err = s.handle_bytes(1, &bytes, &store).unwrap_err();
        assert!(matches!(err, SessionError::Decode(_)), "{err}");
        assert!(s.is_closed());
        let last = std::iter::from_fn(|| s.poll_transmit()).last().unwrap();
        match codec::decode(&last, &Limits::default()) {
            Ok((Message::Error { code: c, reason }, _)) => assert_eq!(c, code, "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            std::iter::from_fn(|| s.poll_event()).last(),
            Some(Event::Closed { .. })
        ));
        // Closed is final: more bytes do nothing.
        s.handle_bytes(2, &hello(B), &store).unwrap();
        assert!(s.poll_transmit().is_none());
    }
}

#[test]
fn a_hello_of_another_version_is_refused() {
    let store = MemoryStore::new();
    let mut s = Session::new(0, everything(), A, Policy::trusted());
    let h = frame(&Message::Hello {
        version: 3,
        replica: B,
        interest: Interest::Prefix(String::new()),
        resume_after: None,
    });
    let err = s.handle_bytes(0, &h, &store).unwrap_err();
    assert_eq!(
        err,
        SessionError::Version {
            found: 3,
            supported: 2
        }
    );
}

#[test]
fn a_silent_peer_times_out() {
    let store = MemoryStore::new();
    let mut s = Session::new(0, everything(), A, Policy::trusted());
    let mut now = 0;
    while !s.is_closed() {
        now = s.poll_timeout().unwrap();
        let _ = s.handle_timeout(now, &store);
        while s.poll_transmit().is_some() {}
    }
    assert_eq!(now, s.config().idle_timeout_ms);
}

#[test]
fn a_compacted_prefix_arrives_as_a_chunked_snapshot() {
    let mut cy = everything();
    cy.limits = Limits::default().with_max_frame_bytes(4096);
    let mut cx = everything();
    cx.limits = cy.limits;
    let mut p = Pair::new(cx, cy);
    append(&p.sy, "doc", B, 1..=10);
    let vv = p.sy.version_vector("doc").unwrap();
    let state = vec![7u8; 20_000];
    p.sy.put_snapshot("doc", &vv, &state).unwrap();
    p.sy.compact("doc", &vv).unwrap();
    append(&p.sy, "doc", B, 11..=12);
    p.drive();
    assert_eq!(p.sx.latest_snapshot("doc").unwrap().unwrap().bytes, state);
    assert_eq!(p.sx.version_vector("doc").unwrap().get(B), 12);
    assert!(
        p.sent.1 > 20_000 / 4096,
        "the snapshot went in chunks under the frame limit"
    );
    assert!(
        p.events_x()
            .iter()
            .any(|e| matches!(e, Event::SnapshotInstalled { .. }))
    );
}

#[test]
fn a_reconnect_resumes_from_the_peer_feed_position() {
    let mut p = Pair::new(everything(), everything());
    for i in 0..50 {
        append(&p.sy, &format!("o{i}"), B, 1..=3);
    }
    p.drive();
    let position = p
        .events_x()
        .into_iter()
        .find_map(|e| match e {
            Event::PeerFeedPosition { peer: B, position } => Some(position),
            _ => None,
        })
        .expect("a checkpoint once caught up");
    assert_eq!(position, p.sy.feed_head().unwrap());
    // Disconnect; one object changes; reconnect with the cursor.
    append(&p.sy, "o7", B, 4..=4);
    let mut cx = everything();
    cx.resume_after = Some(position);
    let (sx, sy) = (std::mem::take(&mut p.sx), std::mem::take(&mut p.sy));
    let mut q = Pair::with_stores(cx, everything(), sx, sy);
    q.drive();
    assert_eq!(q.sx.version_vector("o7").unwrap().get(B), 4);
    assert_eq!(
        q.data.1, 1,
        "resuming costs what changed (one batch), not 50 objects"
    );
}

#[test]
fn presence_is_relayed_with_an_expiry() {
    let mut p = Pair::new(everything(), everything());
    p.drive();
    p.y.send_presence("doc", b"cursor at 4", 3000);
    p.drive();
    let now = p.now;
    let presence = p.events_x().into_iter().find_map(|e| match e {
        Event::Presence {
            object,
            from,
            payload,
            expires_at,
        } => Some((object, from, payload, expires_at)),
        _ => None,
    });
    let (object, from, payload, expires_at) = presence.expect("presence arrives");
    assert_eq!(
        (object.as_str(), from, payload.as_slice()),
        ("doc", B, &b"cursor at 4"[..])
    );
    assert!(expires_at > 3000 && expires_at <= now + 3000);
    assert!(p.sx.version_vector("doc").is_err(), "never stored");
}

#[test]
fn random_bytes_and_mutated_frames_never_panic_a_session() {
    let mut rng = fastrand::Rng::with_seed(11);
    let valid = [
        hello(B),
        frame(&Message::Entries {
            n: 1,
            object: "o".into(),
            replica: B,
            from_seq: 1,
            entries: vec![b"x".to_vec()],
        }),
        frame(&Message::SnapshotBegin {
            n: 2,
            id: 1,
            object: "o".into(),
            version_vector: [(B, 1)].into_iter().collect(),
            total_len: 3,
        }),
        frame(&Message::SnapshotChunk {
            n: 3,
            id: 1,
            offset: 0,
            bytes: b"abc".to_vec(),
        }),
        frame(&Message::Have {
            items: vec![("o".into(), VersionVector::new())],
        }),
        frame(&Message::HaveDone),
        frame(&Message::Ack { upto: 9 }),
        frame(&Message::Checkpoint { n: 1, position: 4 }),
    ];
    for round in 0..3000 {
        let store = MemoryStore::new();
        append(&store, "o", A, 1..=3);
        let mut s = Session::new(0, everything(), A, Policy::trusted());
        let mut now = 0;
        for _ in 0..rng.usize(1..8) {
            let mut f = valid[rng.usize(..valid.len())].clone();
            if rng.bool() {
                for _ in 0..rng.usize(1..4) {
                    match rng.u8(..3) {
                        0 if !f.is_empty() => {
                            let i = rng.usize(..f.len());
                            f[i] = rng.u8(..);
                        }
                        1 => f.truncate(rng.usize(..=f.len())),
                        _ => f.push(rng.u8(..)),
                    }
                }
            }
            if round % 7 == 0 {
                f = (0..rng.usize(..40)).map(|_| rng.u8(..)).collect();
            }
            now += rng.u64(..5000);
            let _ = s.handle_bytes(now, &f, &store);
            let _ = s.handle_timeout(now, &store);
            while s.poll_transmit().is_some() {}
            while s.poll_event().is_some() {}
        }
    }
}

// See issue 5: a session that stored entries from its peer then tailed its
// own store's change feed and served the same entries straight back.
#[test]
fn entries_from_the_peer_are_not_served_back_to_it() {
    const C: ReplicaId = ReplicaId::from_u64(0xc);
    let mut p = Pair::new(everything(), everything());
    // "todos" is listed (so tracked by vector), "notes" only appears later
    // (served from the feed as ranges): both paths are covered.
    append(&p.sy, "todos", B, 1..=2);
    p.drive();
    assert_eq!(p.sx.version_vector("todos").unwrap().get(B), 2);
    p.data = (0, 0);
    // y writes, and relays C's entries as if from a third replica.
    append(&p.sy, "todos", B, 3..=5);
    append(&p.sy, "notes", B, 1..=4);
    append(&p.sy, "notes", C, 1..=2);
    p.y.handle_store_change(p.now, &p.sy).unwrap();
    for _ in 0..20 {
        p.step();
        // As a node does: x's store changed, so all its sessions look at the feed.
        p.x.handle_store_change(p.now, &p.sx).unwrap();
    }
    for (object, replica, upto) in [("todos", B, 5), ("notes", B, 4), ("notes", C, 2)] {
        assert_eq!(p.sx.version_vector(object).unwrap().get(replica), upto);
    }
    assert!(p.data.1 > 0, "y sent its entries");
    assert_eq!(p.data.0, 0, "x sent none of them back");
    assert_eq!(p.x.queue_sizes().peer_holds, 2);
    // A later write at x still goes out, and only it.
    append(&p.sx, "notes", A, 1..=1);
    p.x.handle_store_change(p.now, &p.sx).unwrap();
    p.drive();
    assert_eq!(p.sy.version_vector("notes").unwrap().get(A), 1);
    assert_eq!(p.data.0, 1);
    assert!(p.x.is_idle() && p.y.is_idle());
}

#[test]
fn a_snapshot_and_its_suffix_from_the_peer_are_not_served_back() {
    let mut cy = everything();
    cy.limits = Limits::default().with_max_frame_bytes(4096);
    let mut cx = everything();
    cx.limits = cy.limits;
    let mut p = Pair::new(cx, cy);
    p.drive();
    // After the listing, y compacts and writes more: x is served live, a
    // snapshot (x lacks the compacted prefix) and then the suffix.
    append(&p.sy, "doc", B, 1..=10);
    let vv = p.sy.version_vector("doc").unwrap();
    p.sy.put_snapshot("doc", &vv, &[7u8; 9000]).unwrap();
    p.sy.compact("doc", &vv).unwrap();
    append(&p.sy, "doc", B, 11..=12);
    p.y.handle_store_change(p.now, &p.sy).unwrap();
    let mut x_data = 0;
    for _ in 0..30 {
        p.now += 1;
        while let Some(f) = p.y.poll_transmit() {
            let _ = p.x.handle_bytes(p.now, &f, &p.sx);
        }
        p.x.handle_store_change(p.now, &p.sx).unwrap();
        while let Some(f) = p.x.poll_transmit() {
            let decoded = codec::decode(&f, &p.x.config().limits);
            x_data += usize::from(matches!(decoded, Ok((m, _)) if m.data_number().is_some()));
            let _ = p.y.handle_bytes(p.now, &f, &p.sy);
        }
    }
    assert_eq!(p.sx.version_vector("doc").unwrap().get(B), 12);
    assert!(p.sx.latest_snapshot("doc").unwrap().is_some());
    assert_eq!(x_data, 0, "x sent y nothing of what came from y");
    assert!(p.x.is_idle() && p.y.is_idle());
}

fn durable_events(events: Vec<Event>) -> Vec<(String, VersionVector)> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::PeerDurable {
                object,
                version_vector,
            } => Some((object, version_vector)),
            _ => None,
        })
        .collect()
}

fn vv(items: &[(ReplicaId, u64)]) -> VersionVector {
    let mut vv = VersionVector::new();
    for (r, n) in items {
        vv.set(*r, *n);
    }
    vv
}

#[test]
fn what_the_peer_holds_durably_is_reported_from_haves_and_acks() {
    let mut cx = everything();
    cx.report_peer_durable = true;
    let (sx, sy) = (MemoryStore::new(), MemoryStore::new());
    append(&sx, "todos", A, 1..=3);
    append(&sy, "notes", B, 1..=2);
    let mut p = Pair::with_stores(cx, everything(), sx, sy);
    p.drive();
    let reported = durable_events(p.events_x());
    // y's `Have` says what it holds; its ack says it stored x's entries.
    assert!(
        reported.contains(&("notes".into(), vv(&[(B, 2)]))),
        "{reported:?}"
    );
    assert_eq!(
        reported.iter().rfind(|(o, _)| o == "todos"),
        Some(&("todos".into(), vv(&[(A, 3)]))),
        "{reported:?}"
    );
    // A new local edit: reported once y acknowledges it, not before.
    append(&p.sx, "todos", A, 4..=5);
    p.x.handle_store_change(p.now, &p.sx).unwrap();
    let mut unacked = Vec::new();
    while let Some(f) = p.x.poll_transmit() {
        unacked.push(f);
    }
    assert!(durable_events(p.events_x()).is_empty());
    for f in unacked {
        p.y.handle_bytes(p.now, &f, &p.sy).unwrap();
    }
    assert!(
        durable_events(p.events_x()).is_empty(),
        "nothing acknowledged yet"
    );
    p.drive();
    assert_eq!(
        durable_events(p.events_x()),
        [("todos".into(), vv(&[(A, 5)]))]
    );
    // y (not asking for reports) reports nothing.
    assert!(durable_events(std::iter::from_fn(|| p.y.poll_event()).collect()).is_empty());
}

#[test]
fn acknowledged_entries_after_a_gap_in_what_is_known_are_not_reported() {
    let mut cx = everything();
    cx.report_peer_durable = true;
    let mut s = Session::new(0, cx, A, Policy::trusted());
    let store = MemoryStore::new();
    append(&store, "o", A, 1..=4);
    s.handle_timeout(0, &store).unwrap();
    // The peer resumes from the head of the feed (so it gets no listing)
    // and holds nothing it says.
    let head = store.feed_head().unwrap();
    s.handle_bytes(
        1,
        &frame(&Message::Hello {
            version: u16::from(codec::PROTOCOL_VERSION),
            replica: B,
            interest: Interest::Prefix(String::new()),
            resume_after: Some(head),
        }),
        &store,
    )
    .unwrap();
    while s.poll_transmit().is_some() {}
    while s.poll_event().is_some() {}
    assert_eq!(s.queue_sizes().inflight_messages, 0);
    let sent = |n, first, last| Inflight {
        n,
        bytes: 0,
        sent: Sent::Entries {
            object: "o".into(),
            replica: A,
            first,
            last,
        },
    };
    // An ack of entries that do not continue what is known (nothing) is
    // no proof of a prefix: only seq 1 onwards counts.
    s.inflight.push_back(sent(1, 3, 4));
    s.handle_bytes(3, &frame(&Message::Ack { upto: 1 }), &store)
        .unwrap();
    assert!(durable_events(std::iter::from_fn(|| s.poll_event()).collect()).is_empty());
    s.inflight.push_back(sent(2, 1, 2));
    s.handle_bytes(4, &frame(&Message::Ack { upto: 2 }), &store)
        .unwrap();
    assert_eq!(
        durable_events(std::iter::from_fn(|| s.poll_event()).collect()),
        [("o".into(), vv(&[(A, 2)]))]
    );
}
