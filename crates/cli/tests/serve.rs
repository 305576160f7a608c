//! `converge serve` as a real process on loopback: the HTTP contract,
//! bad input, persistence across kill -9, watching, and nodes syncing with
//! each other over WebSocket (`--peer`), through a partition and its heal;
//! configuration files, graceful shutdown on SIGTERM; and the client
//! commands (`doc watch`, `export`, `import`) against running nodes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::{
    Server, agent, exit_within, get, members, post, post_as, replica_of, signal, wait_until,
};

#[test]
fn http_contract_and_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &["--demo"]);
    let (status, demo) = get(&s, "/v1/docs/demo");
    assert_eq!(status, 200);
    assert_eq!(demo["title"], "Groceries");

    let (status, body) = post(
        &s,
        "/v1/docs/todo/changes",
        r#"[
        {"op":"set","path":["items"],"value":[{"t":"a"},{"t":"b"},{"t":"c"}]},
        {"op":"splice","path":["text"],"index":0,"delete":0,"insert":"hello"},
        {"op":"increment","path":["n"],"by":5}
    ]"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["version"].as_object().is_some_and(|v| v.len() == 1));
    let (status, body) = post(
        &s,
        "/v1/docs/todo/changes",
        r#"[{"op":"move","path":["items"],"index":0,"count":1,"to":2}]"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        get(&s, "/v1/docs/todo").1["items"],
        json!([{"t": "b"}, {"t": "c"}, {"t": "a"}])
    );
    let (status, body) = post(
        &s,
        "/v1/docs/todo/changes",
        r#"[
        {"op":"move","path":["items"],"index":2,"count":1,"to":0},
        {"op":"delete","path":["items",1]},
        {"op":"splice","path":["text"],"index":5,"delete":0,"insert":" world"},
        {"op":"increment","path":["n"],"by":-2}
    ]"#,
    );
    assert_eq!(status, 200, "{body}");
    let (_, doc) = get(&s, "/v1/docs/todo");
    assert_eq!(
        doc,
        json!({"items": [{"t": "a"}, {"t": "c"}], "text": "hello world", "n": 3})
    );

    // Bad input: clear errors, nothing written.
    let before = get(&s, "/v1/docs/todo").1;
    for (body, code) in [
        ("not json", "bad_json"),
        (r#"{"op":"set"}"#, "bad_json"),
        (r#"[{"op":"set","path":["x"]}]"#, "bad_json"),
        (
            r#"[{"op":"set","path":["ok"],"value":1},{"op":"delete","path":["missing"]}]"#,
            "invalid_change",
        ),
        (
            r#"[{"op":"splice","path":["items"],"index":9,"delete":0,"insert":[1]}]"#,
            "invalid_change",
        ),
    ] {
        let (status, err) = post(&s, "/v1/docs/todo/changes", body);
        assert!((400..500).contains(&status), "{body}: {status}");
        assert_eq!(err["error"]["code"], code, "{body}: {err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    assert_eq!(
        get(&s, "/v1/docs/todo").1,
        before,
        "refused requests wrote nothing"
    );
    let long_id = "x".repeat(2000);
    assert_eq!(get(&s, &format!("/v1/docs/{long_id}")).0, 400);
    assert_eq!(get(&s, "/v1/docs/nope").0, 404);
    assert_eq!(get(&s, "/v1/nothing").0, 404);

    let (_, list) = get(&s, "/v1/docs");
    assert_eq!(list["docs"], json!(["demo", "todo"]));
    let (status, st) = get(&s, "/v1/status");
    assert_eq!(status, 200);
    assert!(st["replica"].as_str().is_some_and(|r| r.len() == 16));
    let health = agent()
        .get(&format!("{}/healthz", s.base))
        .call()
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    let mut metrics = agent()
        .get(&format!("{}/metrics", s.base))
        .call()
        .expect("metrics");
    let text = metrics.body_mut().read_to_string().expect("metrics text");
    assert!(text.contains("converge_entries_appended_total"), "{text}");
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &[]);
    let replica = get(&s, "/v1/status").1["replica"].clone();
    let mut acked = 0;
    for i in 0..30 {
        let (status, _) = post(
            &s,
            "/v1/docs/log/changes",
            &format!(r#"[{{"op":"set","path":["k{i}"],"value":{i}}}]"#),
        );
        assert_eq!(status, 200);
        acked += 1;
    }
    s.kill9();
    let s = Server::start(dir.path(), &[]);
    assert_eq!(
        get(&s, "/v1/status").1["replica"],
        replica,
        "the replica id is kept"
    );
    let (_, doc) = get(&s, "/v1/docs/log");
    assert_eq!(doc.as_object().map(|o| o.len()), Some(acked), "{doc}");
    // And it keeps accepting writes after the restart.
    let (status, body) = post(
        &s,
        "/v1/docs/log/changes",
        r#"[{"op":"set","path":["after"],"value":true}]"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(&s, "/v1/docs/log").1["after"], true);
}

#[test]
fn parallel_writers_all_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &[]);
    let base = s.base.clone();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let base = base.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let mut r = agent()
                        .post(&format!("{base}/v1/docs/shared/changes"))
                        .header("content-type", "application/json")
                        .send(format!(r#"[{{"op":"increment","path":["count"],"by":1}},{{"op":"set","path":["t{t}-{i}"],"value":true}}]"#))
                        .expect("POST");
                    assert_eq!(r.status().as_u16(), 200, "{:?}", r.body_mut().read_to_string());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    let (_, doc) = get(&s, "/v1/docs/shared");
    assert_eq!(doc["count"], 80);
    assert_eq!(doc.as_object().map(|o| o.len()), Some(81));
}

#[test]
fn watch_streams_patches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &["--demo"]);
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET /v1/docs/demo/watch HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("request");
    // Give the subscription a moment to be registered before writing.
    std::thread::sleep(Duration::from_millis(200));
    let (status, _) = post(
        &s,
        "/v1/docs/demo/changes",
        r#"[{"op":"set","path":["title"],"value":"Hardware"}]"#,
    );
    assert_eq!(status, 200);
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("Hardware") {
        let n = stream.read(&mut buf).expect("read the event stream");
        assert!(n > 0, "stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("event: patches"), "{seen}");
    assert!(seen.contains(r#""action":"put""#), "{seen}");
}

/// One write to the shared document: bump the counter, set a unique key.
fn write_one(base: &str, key: &str) {
    let mut r = agent()
        .post(&format!("{base}/v1/docs/shared/changes"))
        .header("content-type", "application/json")
        .send(format!(
            r#"[{{"op":"increment","path":["count"],"by":1}},{{"op":"set","path":["{key}"],"value":true}}]"#
        ))
        .expect("POST");
    assert_eq!(
        r.status().as_u16(),
        200,
        "{key}: {:?}",
        r.body_mut().read_to_string()
    );
}

/// Writes `per_thread` keys from `threads` threads on each node at once;
/// returns the acknowledged keys.
fn parallel_writes(nodes: &[&Server], threads: usize, per_thread: usize, tag: &str) -> Vec<String> {
    let handles: Vec<_> = nodes
        .iter()
        .enumerate()
        .flat_map(|(n, s)| {
            (0..threads).map(move |t| {
                let base = s.base.clone();
                let tag = tag.to_string();
                std::thread::spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let key = format!("{tag}-n{n}-t{t}-{i}");
                            write_one(&base, &key);
                            key
                        })
                        .collect::<Vec<_>>()
                })
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("writer"))
        .collect()
}

/// Polls until every node returns the same document holding `keys` and a
/// count of `count`; panics with the last documents after `within`.
fn await_convergence(nodes: &[&Server], keys: &[String], count: usize, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let docs: Vec<Value> = nodes.iter().map(|s| get(s, "/v1/docs/shared").1).collect();
        let same = docs.windows(2).all(|w| w[0] == w[1]);
        let complete =
            docs[0]["count"] == count && keys.iter().all(|k| docs[0][k.as_str()] == true);
        if same && complete {
            return docs[0].clone();
        }
        if Instant::now() > deadline {
            let lens: Vec<_> = docs
                .iter()
                .map(|d| (d["count"].clone(), d.as_object().map_or(0, |o| o.len())))
                .collect();
            let status: Vec<_> = nodes.iter().map(|s| get(s, "/v1/status").1).collect();
            panic!(
                "no convergence within {within:?}: (count, keys) per node {lens:?}; status {status:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A chain A <- B <- C (B dials A, C dials B), so A's and C's entries
/// travel through B.
/// Three nodes in a line, a <- b <- c, without gossip: entries between a
/// and c relay through b.
fn chain(dirs: &[tempfile::TempDir; 3]) -> (Server, Server, Server) {
    let off = ["--gossip-interval", "off"];
    let a = Server::start(dirs[0].path(), &off);
    let b = Server::start(dirs[1].path(), &[&off[..], &["--peer", &a.ws()]].concat());
    let c = Server::start(dirs[2].path(), &[&off[..], &["--peer", &b.ws()]].concat());
    (a, b, c)
}

/// Creates the shared document's counter on `s` and waits until every node
/// has it, so that no two nodes create it concurrently (two concurrent
/// creations of one key are a conflict: one counter wins).
fn seed_counter(s: &Server, nodes: &[&Server]) {
    write_one(&s.base, "seed");
    await_convergence(nodes, &["seed".to_string()], 1, Duration::from_secs(15));
}

#[test]
fn three_nodes_with_parallel_writers_converge() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    let (a, b, c) = chain(&dirs);
    let nodes = [&a, &b, &c];
    seed_counter(&a, &nodes);
    let mut keys = parallel_writes(&nodes, 3, 12, "w");
    keys.push("seed".into());
    let doc = await_convergence(&nodes, &keys, keys.len(), Duration::from_secs(30));
    assert_eq!(
        doc.as_object().map(|o| o.len()),
        Some(keys.len() + 1),
        "{doc}"
    );
    let (_, status) = get(&b, "/v1/status");
    let peers = &status["sync"]["peers"];
    assert_eq!(peers[0]["url"], a.ws(), "{status}");
    assert_eq!(peers[0]["connected"], true, "{status}");
    assert!(peers[0]["feed_position"].as_u64().is_some(), "{status}");
    assert_eq!(get(&a, "/v1/status").1["sync"]["incoming_sessions"], 1);
}

#[test]
fn a_killed_node_catches_up_after_restart() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    let (a, b, c) = chain(&dirs);
    seed_counter(&a, &[&a, &b, &c]);
    let mut keys = parallel_writes(&[&a, &b, &c], 2, 8, "before");
    keys.push("seed".into());
    await_convergence(&[&a, &b, &c], &keys, keys.len(), Duration::from_secs(20));
    // Writes C acknowledged but may not have shipped yet, then kill -9.
    keys.extend(parallel_writes(&[&c], 2, 5, "last"));
    c.kill9();
    keys.extend(parallel_writes(&[&a, &b], 2, 8, "while-down"));
    let c = Server::start(dirs[2].path(), &["--peer", &b.ws()]);
    // Write on the restarted node while it catches up.
    keys.extend(parallel_writes(&[&a, &c], 2, 5, "after"));
    let doc = await_convergence(&[&a, &b, &c], &keys, keys.len(), Duration::from_secs(30));
    assert_eq!(
        doc.as_object().map(|o| o.len()),
        Some(keys.len() + 1),
        "{doc}"
    );
}

/// Reads from a raw sync WebSocket until the server closes it; `false` if
/// it is still open after `within`.
async fn closed_within<S>(ws: &mut S, within: Duration) -> bool
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                // The server's hello and its error frame come first.
                Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(other)) => panic!("unexpected message {other:?}"),
            }
        }
    })
    .await
    .is_ok()
}

#[test]
fn bad_sync_input_closes_only_that_connection() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let (da, db) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = Server::start(da.path(), &[]);
    let b = Server::start(db.path(), &["--peer", &a.ws()]);
    write_one(&b.base, "before");
    await_convergence(&[&a, &b], &["before".into()], 1, Duration::from_secs(15));

    // A frame of a protocol version nobody speaks: length, version 99, body.
    let mut unknown_version = 9u32.to_le_bytes().to_vec();
    unknown_version.push(99);
    unknown_version.extend_from_slice(b"whatever");
    let inputs: Vec<(&str, Message)> = vec![
        (
            "garbage",
            Message::Binary(b"\xff\xff\xff\xffnot a frame".to_vec().into()),
        ),
        ("unknown version", Message::Binary(unknown_version.into())),
        (
            "half a frame",
            Message::Binary(vec![200, 0, 0, 0, 1, 2].into()),
        ),
        ("oversized", Message::Binary(vec![0u8; 4 << 20].into())),
        ("text", Message::Text("hello".into())),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for (what, msg) in inputs {
            let (mut ws, _) = tokio_tungstenite::connect_async(a.ws())
                .await
                .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
            // The server may already have closed on an oversized message.
            let _ = ws.send(msg).await;
            assert!(
                closed_within(&mut ws, Duration::from_secs(10)).await,
                "{what}: the connection stays open"
            );
        }
    });

    // The node still serves HTTP, and its peer still syncs both ways.
    assert_eq!(get(&a, "/healthz").0, 200);
    write_one(&b.base, "after-b");
    write_one(&a.base, "after-a");
    await_convergence(
        &[&a, &b],
        &["before".into(), "after-a".into(), "after-b".into()],
        3,
        Duration::from_secs(15),
    );
    assert_eq!(
        get(&b, "/v1/status").1["sync"]["peers"][0]["connected"],
        true
    );
}

fn delete(s: &Server, path: &str) -> (u16, Value) {
    let mut r = agent()
        .delete(&format!("{}{path}", s.base))
        .call()
        .expect("DELETE");
    let status = r.status().as_u16();
    (status, r.body_mut().read_json().unwrap_or(Value::Null))
}

#[test]
fn deleting_a_document_reaches_every_node_and_it_stays_deleted() {
    let (da, db) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = Server::start(da.path(), &[]);
    let b = Server::start(db.path(), &["--peer", &a.ws()]);
    let (status, _) = post(
        &a,
        "/v1/docs/gone/changes",
        r#"[{"op":"set","path":["x"],"value":1}]"#,
    );
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&b, "/v1/docs/gone").0 != 200 {
        assert!(Instant::now() < deadline, "the document never reached b");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(delete(&b, "/v1/docs/gone"), (200, json!({"deleted": true})));
    assert_eq!(
        delete(&b, "/v1/docs/gone"),
        (200, json!({"deleted": false})),
        "idempotent"
    );
    assert_eq!(get(&b, "/v1/docs/gone").0, 410);
    let (status, err) = post(
        &b,
        "/v1/docs/gone/changes",
        r#"[{"op":"set","path":["x"],"value":2}]"#,
    );
    assert_eq!(
        (status, err["error"]["code"].clone()),
        (410, json!("deleted"))
    );
    while get(&a, "/v1/docs/gone").0 != 410 {
        assert!(Instant::now() < deadline, "the deletion never reached a");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        post(
            &a,
            "/v1/docs/gone/changes",
            r#"[{"op":"set","path":["y"],"value":3}]"#
        )
        .0,
        410
    );
    assert_eq!(
        get(&a, "/v1/docs").1["docs"],
        json!([]),
        "deleted documents are not listed"
    );
}

// ---- signals and configuration --------------------------------------------

#[test]
fn sigterm_and_sigint_close_sessions_and_streams_and_exit_0_with_data_durable() {
    let (da, db) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let mut a = Server::start(da.path(), &["--demo"]);
    let b = Server::start(db.path(), &["--peer", &a.ws()]);
    write_one(&a.base, "before");
    await_convergence(&[&a, &b], &["before".into()], 1, Duration::from_secs(15));
    // A watcher holds a server-sent event stream open: shutdown must end it
    // rather than wait for the client.
    let addr = a.base.trim_start_matches("http://").to_string();
    let mut watcher = TcpStream::connect(&addr).expect("connect");
    write!(
        watcher,
        "GET /v1/docs/demo/watch HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("request");
    let mut head = [0u8; 64];
    watcher
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let n = watcher.read(&mut head).expect("the stream's head");
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    for i in 0..10 {
        write_one(&a.base, &format!("k{i}"));
    }

    signal(&a.child, "TERM");
    let status = exit_within(&mut a.child, Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    // The watcher's stream ended (EOF or reset), and b saw its session close.
    let mut rest = Vec::new();
    let _ = watcher.read_to_end(&mut rest);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&b, "/v1/status").1["sync"]["peers"][0]["connected"] == true {
        assert!(Instant::now() < deadline, "b still thinks it is connected");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Everything acknowledged is there after a restart, and it syncs again
    // (on the same address, where b keeps dialling).
    let addr = a.base.trim_start_matches("http://").to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
    cmd.args(["serve", "--listen", &addr, "--data"])
        .arg(da.path());
    let a = Server::spawn(cmd);
    let (_, doc) = get(&a, "/v1/docs/shared");
    assert_eq!(doc["count"], 11, "{doc}");
    write_one(&a.base, "after");
    let mut keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    keys.extend(["before".to_string(), "after".to_string()]);
    await_convergence(&[&a, &b], &keys, 12, Duration::from_secs(20));

    // Ctrl-C (SIGINT) is the same clean stop.
    let mut a = a;
    signal(&a.child, "INT");
    let status = exit_within(&mut a.child, Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
}

#[test]
fn config_file_env_and_flags_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("converge.toml");
    std::fs::write(
        &config,
        format!(
            "# a node\ndata = {:?}\nlisten = \"127.0.0.1:0\"\nreplica_id = \"00000000000000aa\"\ndemo = true\n",
            data.display().to_string()
        ),
    )
    .expect("write config");

    // From the file alone (given through the environment variable).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
    cmd.arg("serve").env("CONVERGE_CONFIG", &config);
    let s = Server::spawn(cmd);
    assert_eq!(get(&s, "/v1/status").1["replica"], "00000000000000aa");
    assert_eq!(get(&s, "/v1/docs/demo").0, 200, "demo = true applied");
    drop(s);

    // A flag beats the file: another data directory, its own replica.
    let other = dir.path().join("other");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
    cmd.args(["serve", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(&other)
        .args(["--replica-id", "00000000000000bb"]);
    let s = Server::spawn(cmd);
    assert_eq!(get(&s, "/v1/status").1["replica"], "00000000000000bb");
    drop(s);
    // An environment variable beats the file too.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
    cmd.args(["serve", "--config"])
        .arg(&config)
        .env("CONVERGE_DATA", &other)
        .env("CONVERGE_REPLICA_ID", "00000000000000bb");
    let s = Server::spawn(cmd);
    assert_eq!(get(&s, "/v1/status").1["replica"], "00000000000000bb");
    drop(s);

    // An unknown key is refused, by name, before anything starts.
    std::fs::write(&config, "data = \"x\"\nlisten_addr = \"127.0.0.1:0\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_addr"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(["serve", "--help"])
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for key in [
        "--config",
        "CONVERGE_CONFIG",
        "--shutdown-timeout-secs",
        "key: peers",
    ] {
        assert!(help.contains(key), "{key} not in {help}");
    }
}

// ---- client commands ------------------------------------------------------

/// Runs `converge ARGS`.
fn converge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(args)
        .env_remove("CONVERGE_URL")
        .output()
        .expect("run converge")
}

/// Runs `converge ARGS --json` and parses the summary it prints.
fn converge_json(args: &[&str]) -> Value {
    let out = converge(&[args, &["--json"]].concat());
    assert!(
        out.status.success(),
        "converge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON summary")
}

/// Reads a child's stdout lines on a thread, so tests can wait with a deadline.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Keeps setting `title` to new values until `lines` shows one; returns
/// that line. (The watcher subscribes at some moment we cannot see.)
fn edit_until_seen(s: &Server, lines: &mpsc::Receiver<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    for i in 0.. {
        assert!(Instant::now() < deadline, "the watcher printed nothing");
        let (status, _) = post(
            s,
            "/v1/docs/demo/changes",
            &format!(r#"[{{"op":"set","path":["title"],"value":"T{i}"}}]"#),
        );
        assert_eq!(status, 200);
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            return line;
        }
    }
    unreachable!()
}

#[test]
fn doc_list_follows_the_paging_unless_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &[]);
    for id in ["a1", "a2", "a3", "a4", "a5", "b1"] {
        let (status, _) = post(
            &s,
            &format!("/v1/docs/{id}/changes"),
            r#"[{"op":"set","path":["x"],"value":1}]"#,
        );
        assert_eq!(status, 200);
    }
    let list = |extra: &[&str]| {
        let out = converge(
            &[
                &["doc", "list", "--url", &s.base, "--list-page", "2"],
                extra,
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    assert_eq!(list(&[]), "a1\na2\na3\na4\na5\nb1\n");
    assert_eq!(list(&["--prefix", "a"]), "a1\na2\na3\na4\na5\n");
    assert_eq!(list(&["--limit", "3"]), "a1\na2\na3\n");
    assert_eq!(list(&["--prefix", "a", "--limit", "9"]).lines().count(), 5);
    let json = converge_json(&["doc", "list", "--url", &s.base, "--list-page", "4"]);
    assert_eq!(json, json!({"docs": ["a1", "a2", "a3", "a4", "a5", "b1"]}));
}

// `converge doc list | head` used to panic in println! once head exited.
#[test]
fn doc_commands_exit_quietly_into_a_closed_pipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &["--demo"]);
    for args in [
        &["doc", "list", "--list-page", "1"][..],
        &["doc", "get", "demo"],
        &["doc", "get", "demo", "--json"],
        &["status"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_converge"))
            .args(args)
            .args(["--url", &s.base])
            .env_remove("CONVERGE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run converge");
        // Close the reading end before the command has printed anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "converge {args:?}: {:?} {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "converge {args:?}: {stderr}");
    }
}

#[test]
fn doc_watch_prints_patches_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &["--demo"]);
    for json in [false, true] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
        cmd.args(["doc", "watch", "demo", "--url", &s.base]);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn watch");
        let lines = lines_of(&mut child);
        let line = edit_until_seen(&s, &lines);
        if json {
            let patch: Value = serde_json::from_str(&line).expect("one JSON patch per line");
            // The node's own form, as `GET /v1/docs/{id}/watch` sends it.
            assert_eq!(patch["path"], json!([]), "{line}");
            let action = &patch["action"];
            assert_eq!(action["action"], "put", "{line}");
            assert_eq!(action["key"], "title", "{line}");
            assert!(action["value"].as_str().is_some_and(|v| v.starts_with('T')));
        } else {
            assert!(line.starts_with("/ put title = \"T"), "{line}");
        }
        // Ctrl-C is the way out: exit 0.
        signal(&child, "INT");
        let status = exit_within(&mut child, Duration::from_secs(10));
        assert!(status.success(), "{status}");
    }

    let out = converge(&["doc", "watch", "nope", "--url", &s.base]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no document \"nope\""), "{err}");
    let out = converge(&["doc", "watch", "demo", "--url", "http://127.0.0.1:1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the node"), "{err}");
}

fn post_bytes(s: &Server, path: &str, body: &[u8]) -> (u16, Value) {
    post_as(s, path, "application/octet-stream", body)
}

fn get_bytes(s: &Server, path: &str) -> (u16, Vec<u8>) {
    let mut r = agent()
        .get(&format!("{}{path}", s.base))
        .call()
        .expect("GET");
    let status = r.status().as_u16();
    (
        status,
        r.body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .expect("body"),
    )
}

#[test]
fn export_and_import_move_documents_between_nodes() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    let a = Server::start(dirs[0].path(), &["--demo"]);
    // More documents than one page of the node's list, to exercise paging
    // is too slow here; a few, with awkward ids, and some history.
    for id in ["notes", "a%2Fb", "x y"] {
        for i in 0..3 {
            let (status, body) = post(
                &a,
                &format!("/v1/docs/{}/changes", id.replace(' ', "%20")),
                &format!(
                    r#"[{{"op":"set","path":["k{i}"],"value":{i}}},{{"op":"splice","path":["t"],"index":0,"delete":0,"insert":"ab"}}]"#
                ),
            );
            assert_eq!(status, 200, "{body}");
        }
    }
    let ids = get(&a, "/v1/docs").1["docs"].clone();
    assert_eq!(ids, json!(["a/b", "demo", "notes", "x y"]));

    // The HTTP side: the encoding, and bad bytes refused with nothing written.
    let (status, encoded) = get_bytes(&a, "/v1/docs/notes/export");
    assert_eq!(status, 200);
    assert_eq!(get_bytes(&a, "/v1/docs/nope/export").0, 404);
    let b = Server::start(dirs[1].path(), &[]);
    for bad in [&b"garbage"[..], &encoded[..encoded.len() - 3], b""] {
        let (status, err) = post_bytes(&b, "/v1/docs/fresh/import", bad);
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["error"]["code"], "bad_request", "{err}");
    }
    assert_eq!(get(&b, "/v1/docs/fresh").0, 404, "nothing written");

    // The whole store to one file, two documents to a directory.
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("all.cvx");
    let file_s = file.to_str().expect("utf-8 path");
    // (Pages of 3 ids, to cover paging through the list.)
    let summary = converge_json(&[
        "export",
        "--url",
        &a.base,
        "--out",
        file_s,
        "--list-page",
        "3",
    ]);
    assert_eq!(summary["documents"], 4, "{summary}");
    assert_eq!(summary["layout"], "file");
    let dir = work.path().join("some/");
    let dir_s = dir.to_str().expect("utf-8 path");
    let summary = converge_json(&["export", "a/b", "x y", "--url", &a.base, "--out", dir_s]);
    assert_eq!(summary["documents"], 2, "{summary}");
    assert!(dir.join("a%2Fb.cvdoc").is_file() && dir.join("x%20y.cvdoc").is_file());
    let failed = work.path().join("failed.cvx");
    let failed_s = failed.to_str().expect("utf-8 path");
    let out = converge(&[
        "export", "notes", "nope", "--url", &a.base, "--out", failed_s,
    ]);
    assert!(!out.status.success(), "an unknown id is an error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no document \"nope\""), "{err}");
    assert!(
        std::fs::read_dir(work.path()).expect("ls").all(|e| !e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .starts_with("failed")),
        "no partial file left behind"
    );

    // Into an empty node: identical documents; a second time: no change.
    let summary = converge_json(&["import", file_s, "--url", &b.base]);
    assert_eq!(
        (summary["documents"].clone(), summary["changed"].clone()),
        (json!(4), json!(4)),
        "{summary}"
    );
    for id in ["demo", "notes", "a%2Fb", "x%20y"] {
        assert_eq!(
            get(&a, &format!("/v1/docs/{id}")).1,
            get(&b, &format!("/v1/docs/{id}")).1,
            "{id}"
        );
    }
    let version = get(&b, "/v1/status").1["feed_head"].clone();
    let summary = converge_json(&["import", file_s, "--url", &b.base]);
    assert_eq!(
        (summary["changed"].clone(), summary["ops_added"].clone()),
        (json!(0), json!(0)),
        "{summary}"
    );
    let summary = converge_json(&["import", dir_s, "--url", &b.base]);
    assert_eq!(summary["changed"], 0, "{summary}");
    let one = dir.join("a%2Fb.cvdoc");
    let one_s = one.to_str().expect("utf-8 path");
    let summary = converge_json(&["import", one_s, "--url", &b.base]);
    assert_eq!(
        (summary["documents"].clone(), summary["changed"].clone()),
        (json!(1), json!(0)),
        "{summary}"
    );
    assert_eq!(
        get(&b, "/v1/status").1["feed_head"],
        version,
        "nothing appended"
    );
    let out = converge(&["import", file_s, "--url", &b.base]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("imported 4 documents") && text.contains("4 already up to date"),
        "{text}"
    );

    // The imported entries replicate: a node syncing with b gets them, and
    // a, which wrote the originals, syncs with b without a conflict.
    let c = Server::start(dirs[2].path(), &["--peer", &b.ws(), "--peer", &a.ws()]);
    // One after the other: two nodes creating the counter concurrently
    // would conflict (one counter wins).
    write_one(&a.base, "from-a");
    await_convergence(
        &[&a, &b, &c],
        &["from-a".into()],
        1,
        Duration::from_secs(20),
    );
    write_one(&b.base, "from-b");
    await_convergence(
        &[&a, &b, &c],
        &["from-a".into(), "from-b".into()],
        2,
        Duration::from_secs(20),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&c, "/v1/docs/notes").1 != get(&a, "/v1/docs/notes").1 {
        assert!(Instant::now() < deadline, "notes never reached c");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A document deleted on the target is skipped: its id takes no writes.
    assert_eq!(delete(&c, "/v1/docs/notes").0, 200);
    let summary = converge_json(&["import", file_s, "--url", &c.base]);
    assert_eq!(summary["skipped_deleted"], json!(["notes"]), "{summary}");
    assert_eq!(summary["documents"], 3, "{summary}");
    // A damaged file imports nothing.
    let mut bytes = std::fs::read(&file).expect("read");
    let last = bytes.len() - 20;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).expect("write");
    let fresh = tempfile::tempdir().expect("tempdir");
    let d = Server::start(fresh.path(), &[]);
    let out = converge(&["import", file_s, "--url", &d.base]);
    assert!(!out.status.success());
    assert_eq!(get(&d, "/v1/docs").1["docs"], json!([]), "nothing imported");
}

// ---- partition and heal ---------------------------------------------------

/// A TCP proxy that forwards to `upstream` until cut: cutting closes every
/// connection through it and refuses new ones (accepts and closes them)
/// until healed.
struct Proxy {
    addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    _runtime: tokio::runtime::Runtime,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, _) = tokio::sync::watch::channel(false);
        let cuts = cut.clone();
        runtime.spawn(async move {
            loop {
                let Ok((mut downstream, _)) = listener.accept().await else {
                    continue;
                };
                let mut cut = cuts.subscribe();
                if *cut.borrow_and_update() {
                    continue; // dropped: refused
                }
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut downstream, &mut up) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                    // Both sockets drop here: each side sees the connection end.
                });
            }
        });
        Self {
            addr,
            cut,
            _runtime: runtime,
        }
    }

    fn ws(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    // `send_replace`: `send` changes nothing while no connection listens.
    fn cut(&self) {
        self.cut.send_replace(true);
    }

    fn heal(&self) {
        self.cut.send_replace(false);
    }
}

/// A writer thread on one node: sets a new key per write (prefixed with the
/// phase it was sent in) and records the ones the node acknowledged.
struct Writer {
    acked: Arc<Mutex<Vec<String>>>,
    handle: std::thread::JoinHandle<()>,
}

fn writer(s: &Server, node: usize, phase: &Arc<AtomicU8>, stop: &Arc<AtomicBool>) -> Writer {
    let (base, phase, stop) = (s.base.clone(), phase.clone(), stop.clone());
    let acked = Arc::new(Mutex::new(Vec::new()));
    let record = acked.clone();
    let handle = std::thread::spawn(move || {
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            let key = format!("p{}-n{node}-{i}", phase.load(Ordering::SeqCst));
            i += 1;
            let sent = agent()
                .post(&format!("{base}/v1/docs/shared/changes"))
                .header("content-type", "application/json")
                .send(format!(
                    r#"[{{"op":"increment","path":["count"],"by":1}},{{"op":"set","path":["{key}"],"value":true}}]"#
                ));
            if sent.is_ok_and(|r| r.status().as_u16() == 200) {
                record.lock().expect("acked").push(key);
            }
        }
    });
    Writer { acked, handle }
}

impl Writer {
    fn count(&self, prefix: &str) -> usize {
        let acked = self.acked.lock().expect("acked");
        acked.iter().filter(|k| k.starts_with(prefix)).count()
    }
}

#[test]
fn a_partitioned_node_converges_after_heal_without_losing_acknowledged_writes() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    // Without gossip: c would otherwise learn a's and b's addresses and
    // dial them past the proxy that partitions it.
    let off = ["--gossip-interval", "off"];
    let a = Server::start(dirs[0].path(), &off);
    let b = Server::start(dirs[1].path(), &[&off[..], &["--peer", &a.ws()]].concat());
    let b_addr: SocketAddr = b
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("b's address");
    // c reaches b, and through it a, only through the proxy.
    let proxy = Proxy::start(b_addr);
    let c = Server::start(
        dirs[2].path(),
        &[&off[..], &["--peer", &proxy.ws()]].concat(),
    );
    let nodes = [&a, &b, &c];
    seed_counter(&a, &nodes);

    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<Writer> = nodes
        .iter()
        .enumerate()
        .map(|(n, s)| writer(s, n, &phase, &stop))
        .collect();
    wait_until(
        "writes before the partition",
        Duration::from_secs(10),
        || writers.iter().all(|w| w.count("p0-") >= 3),
    );

    proxy.cut();
    let connected = |s: &Server| get(s, "/v1/status").1["sync"]["peers"][0]["connected"] == true;
    wait_until("c notices the cut", Duration::from_secs(10), || {
        !connected(&c)
    });
    wait_until("b notices the cut", Duration::from_secs(10), || {
        get(&b, "/v1/status").1["sync"]["incoming_sessions"] == 0
    });
    // From here on, writes are made while the sides cannot talk.
    phase.store(1, Ordering::SeqCst);
    // c keeps trying to reconnect, and is refused.
    wait_until(
        "c's reconnection is refused",
        Duration::from_secs(10),
        || {
            get(&c, "/v1/status").1["sync"]["peers"][0]["last_error"]
                .as_str()
                .is_some_and(|e| e.starts_with("cannot connect"))
        },
    );
    wait_until(
        "writes on both sides of the partition",
        Duration::from_secs(15),
        || writers.iter().all(|w| w.count("p1-") >= 40),
    );
    let (_, on_c) = get(&c, "/v1/docs/shared");
    let (_, on_a) = get(&a, "/v1/docs/shared");
    let keys = |doc: &Value, prefix: &str| {
        doc.as_object()
            .map_or(0, |o| o.keys().filter(|k| k.starts_with(prefix)).count())
    };
    assert_eq!(
        keys(&on_c, "p1-n0-") + keys(&on_c, "p1-n1-"),
        0,
        "c is cut off"
    );
    assert_eq!(keys(&on_a, "p1-n2-"), 0, "a does not hear from c");
    wait_until("a and b still sync", Duration::from_secs(10), || {
        keys(&get(&a, "/v1/docs/shared").1, "p1-n1-") > 0
    });

    proxy.heal();
    phase.store(2, Ordering::SeqCst);
    wait_until("writes after the heal", Duration::from_secs(15), || {
        writers.iter().all(|w| w.count("p2-") >= 3)
    });
    stop.store(true, Ordering::SeqCst);
    let mut acked = vec!["seed".to_string()];
    for w in writers {
        w.handle.join().expect("writer");
        acked.extend(w.acked.lock().expect("acked").iter().cloned());
    }
    // Identical everywhere, with every acknowledged write. (A write whose
    // answer was lost may be there too; each write is one transaction, so
    // the counter must match the keys written either way.)
    let mut docs = Vec::new();
    wait_until(
        "convergence after the heal",
        Duration::from_secs(20),
        || {
            docs = nodes.iter().map(|s| get(s, "/v1/docs/shared").1).collect();
            docs.windows(2).all(|w| w[0] == w[1])
                && acked.iter().all(|k| docs[0][k.as_str()] == true)
        },
    );
    let doc = &docs[0];
    let written = doc.as_object().map_or(0, |o| o.len() - 1);
    assert!(written >= acked.len(), "{doc}");
    assert_eq!(doc["count"], written, "{doc}");
    let (_, status) = get(&c, "/v1/status");
    let peer = &status["sync"]["peers"][0];
    assert_eq!(peer["connected"], true, "{status}");
    assert!(
        peer["connects"].as_u64().is_some_and(|n| n >= 2),
        "{status}"
    );
}

#[test]
fn members_find_each_other_through_one_seed_and_gossip_on_after_it_dies() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    let fast = ["--gossip-interval", "200ms"];
    let a = Server::start(dirs[0].path(), &fast);
    let b = Server::start(dirs[1].path(), &[&fast[..], &["--peer", &a.ws()]].concat());
    let c = Server::start(dirs[2].path(), &[&fast[..], &["--peer", &a.ws()]].concat());
    let (ra, rb, rc) = (replica_of(&a), replica_of(&b), replica_of(&c));

    // B and C were told only of A: they learn each other, with the URLs
    // each advertises (its bound address), from the membership object.
    wait_until("b and c learn each other", Duration::from_secs(10), || {
        let (on_b, on_c) = (members(&b), members(&c));
        on_b.get(&rc).is_some_and(|m| m["url"] == c.ws())
            && on_c.get(&rb).is_some_and(|m| m["url"] == b.ws())
            && on_b.contains_key(&ra)
    });
    let on_b = members(&b);
    assert_eq!(on_b[&rb]["state"], "local", "{on_b:?}");
    assert_eq!(on_b[&ra]["state"], "connected", "{on_b:?}");
    // Gossip reaches C directly, though B was never told of it.
    wait_until("b gossips with c", Duration::from_secs(10), || {
        members(&b)[&rc]["state"] == "connected"
    });
    let (_, status) = get(&b, "/v1/status");
    assert_eq!(status["membership"]["gossip"], true, "{status}");
    assert_eq!(status["membership"]["interval_ms"], 200, "{status}");
    // The membership object is the node's: users can neither write,
    // delete nor import it, and listings leave it out.
    let (code, body) = post(
        &b,
        "/v1/docs/$sys%2Fmembers/changes",
        r#"[{"op":"set","path":["x"],"value":1}]"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("reserved")),
        "{body}"
    );
    assert_eq!(delete(&b, "/v1/docs/$sys%2Fmembers").0, 400);
    let (code, body) = post_bytes(&b, "/v1/docs/$sys%2Fmembers/import", b"x");
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("reserved")),
        "{body}"
    );
    write_one(&b.base, "before");
    wait_until("the write reaches c", Duration::from_secs(10), || {
        get(&c, "/v1/docs/shared").1["before"] == true
    });
    assert_eq!(get(&b, "/v1/docs").1["docs"], json!(["shared"]));
    assert_eq!(
        get(&b, "/v1/docs?limit=1").1["docs"],
        json!(["shared"]),
        "a page skips it"
    );

    // The seed dies: B's writes still reach C, by gossip between them.
    a.kill9();
    write_one(&b.base, "after-a-died");
    wait_until(
        "b's write reaches c without a",
        Duration::from_secs(10),
        || get(&c, "/v1/docs/shared").1["after-a-died"] == true,
    );
    wait_until("c sees a failing", Duration::from_secs(10), || {
        let m = &members(&c)[&ra];
        m["state"] != "connected" && m["failures"].as_u64().is_some_and(|n| n >= 1)
    });
    let m = &members(&c)[&ra];
    assert!(
        m["retry_in_ms"].as_u64().is_some() || m["state"] == "dead",
        "a dead member is backed off: {m}"
    );
    // `converge status` prints the members.
    let out = converge(&["status", "--url", &c.base]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for r in [&ra, &rb, &rc] {
        assert!(text.contains(&format!("member    {r} ")), "{text}");
    }
    assert!(text.contains(&format!("member    {rc} local")), "{text}");
}
