//! Cluster membership with real `converge serve` processes on loopback:
//! a graceful leave (SIGTERM) and the rejoin on restart, forgetting a
//! member dead past `--forget-after` and finding it again when it comes
//! back, and a member's URL answered by another replica (a node restarted
//! on a wiped data directory).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{Server, members, replica_of, wait_until};

/// `converge serve` on `listen` (port 0: any) with `data`, gossiping every
/// 200 ms unless `extra` says otherwise, plus `extra` flags.
fn start_on(listen: &str, data: &Path, extra: &[&str]) -> Server {
    let fast: &[&str] = if extra.contains(&"--gossip-interval") {
        &[]
    } else {
        &["--gossip-interval", "200ms"]
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
    cmd.args(["serve", "--listen", listen])
        .args(fast)
        .arg("--data")
        .arg(data)
        .args(extra);
    Server::spawn(cmd)
}

fn start(data: &Path, extra: &[&str]) -> Server {
    start_on("127.0.0.1:0", data, extra)
}

/// `GET path`'s JSON body.
fn get(s: &Server, path: &str) -> Value {
    common::get(s, path).1
}

fn state_on(s: &Server, replica: &str) -> Value {
    members(s)
        .get(replica)
        .map_or(Value::Null, |m| m["state"].clone())
}

#[test]
fn a_gracefully_stopped_node_is_left_everywhere_and_rejoins_on_restart() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    let a = start(dirs[0].path(), &[]);
    let b = start(dirs[1].path(), &["--peer", &a.ws()]);
    let c = start(dirs[2].path(), &["--peer", &a.ws()]);
    let rc = replica_of(&c);
    wait_until("b gossips with c", Duration::from_secs(10), || {
        state_on(&b, &rc) == "connected"
    });

    // SIGTERM: c marks itself left and pushes that before it exits.
    let exited = c.terminate();
    assert!(exited.success(), "{exited:?}");
    wait_until("a and b list c as left", Duration::from_secs(3), || {
        state_on(&a, &rc) == "left" && state_on(&b, &rc) == "left"
    });
    // Nobody dials it: over ten gossip rounds no attempt fails.
    std::thread::sleep(Duration::from_secs(2));
    for s in [&a, &b] {
        let m = &members(s)[&rc];
        assert_eq!(m["state"], "left", "{m}");
        assert_eq!(m["failures"], 0, "a left member is not dialled: {m}");
    }
    let text = String::from_utf8_lossy(
        &Command::new(env!("CARGO_BIN_EXE_converge"))
            .args(["status", "--url", &b.base])
            .output()
            .expect("converge status")
            .stdout,
    )
    .to_string();
    assert!(text.contains(&format!("member    {rc} left ")), "{text}");

    // The mark is durable in c's own store.
    let alone = start(dirs[2].path(), &["--gossip-interval", "off"]);
    let entry = &get(&alone, "/v1/docs/$sys%2Fmembers")[&rc];
    assert_eq!(entry["left"], true, "{entry}");
    assert!(alone.terminate().success());

    // Restarted on its data directory (same replica), it rejoins.
    let c = start(dirs[2].path(), &["--peer", &a.ws()]);
    assert_eq!(replica_of(&c), rc);
    wait_until("b sees c back", Duration::from_secs(10), || {
        matches!(state_on(&b, &rc).as_str(), Some("connected" | "alive"))
    });
    assert_eq!(members(&b)[&rc]["url"], c.ws());
}

#[test]
fn a_member_dead_past_forget_after_is_forgotten_until_it_comes_back() {
    let dirs = [(); 2].map(|()| tempfile::tempdir().expect("tempdir"));
    let a = start(dirs[0].path(), &["--forget-after", "1s"]);
    let b = start(dirs[1].path(), &["--peer", &a.ws()]);
    let rb = replica_of(&b);
    wait_until("a lists b", Duration::from_secs(10), || {
        state_on(&a, &rb) == "connected"
    });
    let status = get(&a, "/v1/status");
    assert_eq!(status["membership"]["forget_after_ms"], 1000, "{status}");

    // Killed without a word: dead (3 failures, 10 s unseen), then forgotten.
    b.kill9();
    wait_until("a forgets b", Duration::from_secs(30), || {
        !members(&a).contains_key(&rb)
    });
    let status = get(&a, "/v1/status");
    assert_eq!(status["membership"]["forgotten"], 1, "{status}");
    let failures = |s: &Server| get(s, "/v1/status")["membership"]["gossip_sessions"].clone();
    // Not dialled any more: no gossip attempt is in flight, round after round.
    for _ in 0..10 {
        assert_eq!(failures(&a), 0);
        std::thread::sleep(Duration::from_millis(100));
    }

    // It comes back on its data directory: it rewrites its entry, and a
    // lists and dials it again.
    let b = start(dirs[1].path(), &[]);
    assert_eq!(replica_of(&b), rb);
    // b knows a from its stored membership and dials it.
    wait_until("a finds b again", Duration::from_secs(10), || {
        state_on(&a, &rb) == "connected"
    });
    assert_eq!(get(&a, "/v1/status")["membership"]["forgotten"], 0);
}

#[test]
fn a_url_answered_by_another_replica_is_a_mismatch_and_the_new_one_is_listed() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    let a = start(dirs[0].path(), &[]);
    let b = start(dirs[1].path(), &["--peer", &a.ws()]);
    let (rb, at) = (replica_of(&b), b.addr());
    wait_until("a lists b", Duration::from_secs(10), || {
        state_on(&a, &rb) == "connected"
    });

    // b's host is rebuilt: a new data directory (a new replica) on the
    // same address, not told of a: only a's gossip can reach it.
    b.kill9();
    let b2 = start_on(&at, dirs[2].path(), &[]);
    let rb2 = replica_of(&b2);
    assert_ne!(rb, rb2);
    // Once the gossip round at b's URL is over, it counts as b's failure.
    wait_until("a notices the mismatch", Duration::from_secs(15), || {
        members(&a).get(&rb).is_some_and(|m| {
            m["state"] == "mismatch"
                && m["answered_as"] == rb2.as_str()
                && m["failures"].as_u64().is_some_and(|n| n >= 1)
        })
    });
    let m = &members(&a)[&rb];
    assert_eq!(m["sessions"], 0, "not counted as b's link: {m}");
    // The new replica joined through that session and is listed under its
    // own id, at the address.
    wait_until("a lists the new replica", Duration::from_secs(10), || {
        members(&a)
            .get(&rb2)
            .is_some_and(|m| m["url"] == b2.ws() && m["state"] != "mismatch")
    });
}

#[test]
fn a_member_that_leaves_is_listed_left_at_once_not_at_the_next_round() {
    // Rounds every 10 s: only the push and the immediate re-read of the
    // membership object can show the change within a second.
    let slow = ["--gossip-interval", "10s"];
    let dirs = [(); 2].map(|()| tempfile::tempdir().expect("tempdir"));
    let a = start(dirs[0].path(), &slow);
    let b = start(dirs[1].path(), &[&slow[..], &["--peer", &a.ws()]].concat());
    let rb = replica_of(&b);
    wait_until("a lists b", Duration::from_secs(5), || {
        state_on(&a, &rb) == "connected"
    });
    assert!(b.terminate().success());
    wait_until("a lists b as left", Duration::from_secs(1), || {
        state_on(&a, &rb) == "left"
    });
}
