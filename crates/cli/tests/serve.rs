//! `converge serve` as a real process on loopback: the HTTP contract,
//! bad input, persistence across kill -9, watching.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
