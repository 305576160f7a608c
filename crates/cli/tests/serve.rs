//! `converge serve` as a real process on loopback: the HTTP contract,
//! bad input, persistence across kill -9, watching, and nodes syncing with
//! each other over WebSocket (`--peer`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(data: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_converge"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn converge serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Self { child, base }
    }

    /// The node's sync endpoint, for `--peer`.
    fn ws(&self) -> String {
        format!("{}/v1/sync", self.base.replace("http://", "ws://"))
    }

    fn kill9(mut self) {
        // SIGKILL: no chance to flush anything not already durable.
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

fn get(s: &Server, path: &str) -> (u16, Value) {
    let mut r = agent()
        .get(&format!("{}{path}", s.base))
        .call()
        .expect("GET");
    let status = r.status().as_u16();
    (status, r.body_mut().read_json().unwrap_or(Value::Null))
}

fn post(s: &Server, path: &str, body: &str) -> (u16, Value) {
    let mut r = agent()
        .post(&format!("{}{path}", s.base))
        .header("content-type", "application/json")
        .send(body)
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.body_mut().read_json().unwrap_or(Value::Null))
}

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
fn chain(dirs: &[tempfile::TempDir; 3]) -> (Server, Server, Server) {
    let a = Server::start(dirs[0].path(), &[]);
    let b = Server::start(dirs[1].path(), &["--peer", &a.ws()]);
    let c = Server::start(dirs[2].path(), &["--peer", &b.ws()]);
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
