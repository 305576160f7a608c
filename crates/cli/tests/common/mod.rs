//! What the real-process tests share: a `converge serve` child process,
//! HTTP helpers, signals, and polling. Each test file uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `converge serve` process, killed when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    /// `http://host:port`, from the line where it says it listens.
    pub(crate) base: String,
}

impl Server {
    /// `converge serve` on any loopback port with `data`, plus `extra` flags.
    pub(crate) fn start(data: &Path, extra: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra);
        Self::spawn(cmd)
    }

    /// Runs `cmd` (a `converge serve` command line) and waits for the line
    /// that says where it listens.
    pub(crate) fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
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
    pub(crate) fn ws(&self) -> String {
        format!("{}/v1/sync", self.base.replace("http://", "ws://"))
    }

    /// `host:port`, for `--listen` of a node restarted on the same address.
    pub(crate) fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    pub(crate) fn kill9(mut self) {
        // SIGKILL: no chance to flush anything not already durable.
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, then the exit status (within 15 s).
    pub(crate) fn terminate(mut self) -> ExitStatus {
        signal(&self.child, "TERM");
        exit_within(&mut self.child, Duration::from_secs(15))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP agent that returns error statuses as responses.
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// `GET path`: the status and the JSON body (null if none).
pub(crate) fn get(s: &Server, path: &str) -> (u16, Value) {
    let mut r = agent()
        .get(&format!("{}{path}", s.base))
        .call()
        .expect("GET");
    let status = r.status().as_u16();
    (status, r.body_mut().read_json().unwrap_or(Value::Null))
}

/// POSTs a JSON `body` to `path`: the status and the JSON answer (null if none).
pub(crate) fn post(s: &Server, path: &str, body: &str) -> (u16, Value) {
    post_as(s, path, "application/json", body.as_bytes())
}

/// POSTs `body` of `content_type` to `path`: the status and the JSON
/// answer (null if none).
pub(crate) fn post_as(s: &Server, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    let mut r = agent()
        .post(&format!("{}{path}", s.base))
        .header("content-type", content_type)
        .send(body)
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.body_mut().read_json().unwrap_or(Value::Null))
}

/// Sends `signal` (e.g. "TERM") to the process.
pub(crate) fn signal(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill -{signal} failed");
}

/// Waits for the process to exit; panics if it is still running after `within`.
pub(crate) fn exit_within(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "still running {within:?} after the signal"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` until it holds; panics with `what` after `within`.
pub(crate) fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The members `s` lists in its status: replica -> the member's JSON.
pub(crate) fn members(s: &Server) -> std::collections::BTreeMap<String, Value> {
    let (_, status) = get(s, "/v1/status");
    status["membership"]["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["replica"].as_str()?.to_string(), m.clone())))
        .collect()
}

/// The replica id `s` reports in its status.
pub(crate) fn replica_of(s: &Server) -> String {
    get(s, "/v1/status").1["replica"]
        .as_str()
        .expect("a replica id")
        .to_string()
}
