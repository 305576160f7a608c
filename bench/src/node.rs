//! The `node` suite: real `converge serve` processes on loopback.
//!
//! Each case starts fresh node processes (the release `converge` binary,
//! built by this suite through cargo unless `CONVERGE_BIN` names one) on
//! temporary data directories, so that a node's CPU time and memory (from
//! `/proc/PID/stat` and `/proc/PID/status`) are its own, not the clients'.
//! The clients run in this process on a 2-worker tokio runtime:
//!
//! - `http-writes-N`: N clients, each on its own keep-alive HTTP/1.1
//!   connection (a minimal client over `TcpStream`: one request in flight
//!   per connection, `Content-Length` bodies), each posting one change per
//!   request to its own document and waiting for the answer (durable).
//!   `http-writes-256-hot`: the same 256 clients all on one document.
//! - `sync-writes-N`: N sync-protocol clients over WebSocket, each a
//!   replica with its own [`Doc`], [`MemoryStore`] and [`Session`]: a write
//!   is one document change appended to the client's log, streamed to the
//!   node, and done when the node acknowledged it (the node acknowledges
//!   after its durable append), one write in flight per client.
//! - `propagation`: node B syncs from node A (`--peer`); a client watches a
//!   document on B (server-sent events) while another writes it on A over
//!   HTTP; the delay from sending the write to A to seeing it on B.
//! - `idle-sessions-10k`: [`IDLE_SESSIONS`] sync clients connect and go
//!   idle; the node's RSS growth divided by the sessions, and its CPU use
//!   while they are idle.
//!
//! Write cases are time-boxed: after a [`WARMUP`], completions and
//! latencies are counted over one [`WINDOW`]; [`ROUNDS`] rounds on the same
//! node, new connections each round; the median over rounds is reported
//! (percentiles: the median of each round's percentile). After the rounds,
//! every client's last acknowledged value is read back from the node.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use converge_crdt::ReplicaId;
use converge_doc::{Doc, PathChange, encode_changes};
use converge_store::{Entry, MemoryStore, Store};
use converge_sync::{Config, Event, Interest, Policy, Session};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::Options;
use crate::harness::{Record, workspace_root, write_json};

const CONVERGE: &str = "converge";

/// Completed writes per second (each one durable before it completes).
const OPS: &str = "ops_per_s";
/// Latency percentiles of one write (or of propagation), in milliseconds.
const P50: &str = "p50_ms";
const P99: &str = "p99_ms";
/// The node process's CPU time (user + system) per completed write.
const CPU_PER_OP: &str = "node_cpu_us_per_op";
/// Node RSS growth per open idle session.
const PER_SESSION: &str = "bytes_per_session";
/// Node RSS with the idle sessions open.
const RSS_MIB: &str = "rss_mib";
/// Node CPU use while the sessions are idle (100 = one core).
const IDLE_CPU: &str = "idle_cpu_percent";

/// Concurrent clients of the write cases.
const CLIENTS: [usize; 3] = [1, 16, 256];
/// Clients of the hot-document case.
const HOT_CLIENTS: usize = 256;
/// Open sessions in the idle case.
const IDLE_SESSIONS: usize = 10_000;
/// Connections opened at once while filling the idle case.
const CONNECTING: usize = 64;
/// Writes per propagation round, and the pause between them.
const PROPAGATION_WRITES: usize = 100;
const PROPAGATION_GAP: Duration = Duration::from_millis(10);

/// Warm-up before the window of a write round.
const WARMUP: Duration = Duration::from_millis(500);
/// Length of the counted window of a write round.
const WINDOW: Duration = Duration::from_secs(3);
/// Rounds of every write case and of the propagation case.
const ROUNDS: usize = 3;
/// Longest wait for anything that should take a moment (connecting, a
/// document appearing on a peer).
const PATIENCE: Duration = Duration::from_secs(60);
/// Linux's `USER_HZ`: the unit of `/proc/PID/stat` CPU times (100 on every
/// mainstream configuration; reading `sysconf` would need `libc`).
const CLOCK_TICKS: f64 = 100.0;

/// The targets of issue 6.
const TARGET_OPS: f64 = 20_000.0;
const TARGET_PROPAGATION_P99_MS: f64 = 50.0;
const TARGET_SESSION_BYTES: f64 = 20.0 * 1024.0;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

// ---------------------------------------------------------------------------
// Node processes.

/// The `converge` binary: `$CONVERGE_BIN`, else built now (release, this
/// target directory) so that it is never older than the node's sources.
fn converge_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("CONVERGE_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building the converge binary (cargo build --release -p converge-cli) ...");
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "converge-cli"])
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p converge-cli: {status}"));
    }
    // This bench binary lives in <target>/release: so does converge.
    let exe = std::env::current_exe().map_err(err)?;
    let bin = exe.with_file_name("converge");
    if !bin.exists() {
        return Err(format!("{} not found after building", bin.display()));
    }
    Ok(bin)
}

/// A running `converge serve` on a temporary data directory; killed on drop.
struct NodeProcess {
    child: Child,
    addr: SocketAddr,
    _stdout: BufReader<ChildStdout>,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    /// Starts a node on `127.0.0.1:0` syncing from `peers`, and reads the
    /// address it prints.
    fn start(bin: &Path, root: &Path, peers: &[String]) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("node-")
            .tempdir_in(root)
            .map_err(err)?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--data")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(["--max-sync-sessions", &(IDLE_SESSIONS * 2).to_string()])
            .env("RUST_LOG", "warn")
            .env_remove("CONVERGE_PEERS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for p in peers {
            cmd.args(["--peer", p]);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let parsed = stdout
            .read_line(&mut line)
            .map_err(err)
            .and_then(|_| parse_listening(&line));
        match parsed {
            Ok((addr, _replica)) => Ok(Self {
                child,
                addr,
                _stdout: stdout,
                _dir: dir,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("node did not start ({e}); it printed {line:?}"))
            }
        }
    }

    fn sync_url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    /// Resident set size, from `/proc/PID/status`.
    fn rss_bytes(&self) -> Result<u64, String> {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).map_err(err)?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or("no VmRSS in /proc/PID/status")?;
        Ok(kb * 1024)
    }

    /// CPU seconds used so far (user + system, all threads).
    fn cpu_secs(&self) -> Result<f64, String> {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).map_err(err)?;
        // Fields after the command name (which may hold spaces) in parentheses.
        let rest = stat.rsplit_once(')').ok_or("bad /proc/PID/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or("bad /proc/PID/stat")
        };
        Ok((ticks(11)? + ticks(12)?) as f64 / CLOCK_TICKS)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `converge listening on http://ADDR (replica ID)` -> (ADDR, ID).
fn parse_listening(line: &str) -> Result<(SocketAddr, String), String> {
    let rest = line
        .trim()
        .strip_prefix("converge listening on http://")
        .ok_or("no address line")?;
    let (addr, rest) = rest.split_once(' ').ok_or("no replica")?;
    let replica = rest
        .strip_prefix("(replica ")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or("no replica")?;
    Ok((addr.parse().map_err(err)?, replica.to_owned()))
}

// ---------------------------------------------------------------------------
// A minimal HTTP/1.1 client: one keep-alive connection, one request at a time.

/// One keep-alive connection to a node.
struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Result<Self, String> {
        let stream = TcpStream::connect(addr).await.map_err(err)?;
        stream.set_nodelay(true).map_err(err)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends a request and reads the whole answer: (status, body).
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), String> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.stream.write_all(&req).await.map_err(err)?;
        let (status, head_len, headers) = self.read_head().await?;
        let len = content_length(&headers).ok_or_else(|| {
            format!("{method} {path}: an answer without content-length: {headers}")
        })?;
        while self.buf.len() < head_len + len {
            self.fill().await?;
        }
        let body = self.buf[head_len..head_len + len].to_vec();
        self.buf.drain(..head_len + len);
        Ok((status, body))
    }

    /// Reads until the end of the response head: (status, head length, head).
    async fn read_head(&mut self) -> Result<(u16, usize, String), String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad status line in {head:?}"))?;
                return Ok((status, end + 4, head));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await.map_err(err)?;
        if n == 0 {
            return Err("the node closed the connection".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// POSTs `changes` to document `doc`; fails unless answered 200.
    async fn post_changes(&mut self, doc: &str, changes: &Value) -> Result<(), String> {
        let body = serde_json::to_vec(changes).map_err(err)?;
        let (status, answer) = self
            .request("POST", &format!("/v1/docs/{doc}/changes"), &body)
            .await?;
        if status != 200 {
            return Err(format!(
                "POST {doc}: {status} {}",
                String::from_utf8_lossy(&answer)
            ));
        }
        Ok(())
    }

    /// GETs document `doc` as JSON, or `None` if the node answers 404.
    async fn get_doc(&mut self, doc: &str) -> Result<Option<Value>, String> {
        let (status, body) = self.request("GET", &format!("/v1/docs/{doc}"), b"").await?;
        match status {
            200 => serde_json::from_slice(&body).map(Some).map_err(err),
            404 => Ok(None),
            _ => Err(format!(
                "GET {doc}: {status} {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

fn set_change(key: &str, value: Value) -> Value {
    json!([{"op": "set", "path": [key], "value": value}])
}

// ---------------------------------------------------------------------------
// A sync-protocol client: a replica of its own, over WebSocket.

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A client replica writing one document through the sync protocol.
struct SyncClient {
    ws: Ws,
    session: Session,
    store: MemoryStore,
    doc: Doc,
    object: String,
    replica: ReplicaId,
    epoch: Instant,
    connected: bool,
}

impl SyncClient {
    /// Connects to `url` as `replica`, subscribed to `object` only, and
    /// waits until the session is open and idle.
    async fn connect(url: &str, replica: ReplicaId, object: String) -> Result<Self, String> {
        // Small buffers: ten thousand of these live in this process.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(8 << 10)
            .write_buffer_size(8 << 10);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config), true)
            .await
            .map_err(|e| format!("connecting to {url}: {e}"))?;
        let epoch = Instant::now();
        let config = Config::new(Interest::Objects(vec![object.clone()]));
        let mut client = Self {
            ws,
            session: Session::new(0, config, replica, Policy::trusted()),
            store: MemoryStore::new(),
            doc: Doc::new(replica),
            object,
            replica,
            epoch,
            connected: false,
        };
        let deadline = Instant::now() + PATIENCE;
        client
            .pump_until(deadline, |c| c.connected && c.session.is_idle())
            .await?;
        Ok(client)
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Makes one change (`n` = `value`), appends it to this replica's log
    /// and returns once the node acknowledged it (durably stored).
    async fn write(&mut self, value: u64) -> Result<(), String> {
        let before = self.doc.version().clone();
        let change = PathChange::Set {
            path: vec!["n".into()],
            value: json!(value),
        };
        self.doc.apply(&[change]).map_err(err)?;
        let new = self.doc.changes_since(&before);
        let seq = self.doc.version().get(self.replica);
        self.store
            .append(
                &self.object,
                self.replica,
                &[Entry::new(seq, encode_changes(&new))],
            )
            .map_err(err)?;
        let now = self.now();
        self.session
            .handle_store_change(now, &self.store)
            .map_err(err)?;
        if self.session.is_idle() {
            return Err("the session did not send the new entry".into());
        }
        let deadline = Instant::now() + PATIENCE;
        self.pump_until(deadline, |c| c.session.is_idle()).await
    }

    /// Pumps the session (frames out, frames in, timers) until `done`.
    async fn pump_until(
        &mut self,
        deadline: Instant,
        done: impl Fn(&Self) -> bool,
    ) -> Result<(), String> {
        loop {
            self.flush().await?;
            if done(self) {
                return Ok(());
            }
            self.step(Some(deadline)).await?;
        }
    }

    /// Sends what the session queued and takes in its events.
    async fn flush(&mut self) -> Result<(), String> {
        let mut sent = false;
        while let Some(frame) = self.session.poll_transmit() {
            self.ws
                .feed(Message::Binary(frame.into()))
                .await
                .map_err(err)?;
            sent = true;
        }
        if sent {
            self.ws.flush().await.map_err(err)?;
        }
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Connected { .. } => self.connected = true,
                Event::Closed { reason } => return Err(format!("session closed: {reason}")),
                _ => {}
            }
        }
        Ok(())
    }

    /// Waits for one input (a frame or a timer) and hands it to the session.
    async fn step(&mut self, deadline: Option<Instant>) -> Result<(), String> {
        let timer = self
            .session
            .poll_timeout()
            .map(|at| self.epoch + Duration::from_millis(at));
        let wake = match (timer, deadline) {
            (Some(t), Some(d)) => Some(t.min(d)),
            (t, d) => t.or(d),
        };
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = self.ws.next() => {
                let bytes = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(()),
                    Some(Ok(other)) => return Err(format!("unexpected message {other:?}")),
                    Some(Err(e)) => return Err(format!("connection failed: {e}")),
                    None => return Err("the node closed the connection".into()),
                };
                let now = self.now();
                self.session.handle_bytes(now, &bytes, &self.store).map_err(err)?;
            }
            () = sleep => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err("timed out waiting for the node".into());
                }
                let now = self.now();
                self.session.handle_timeout(now, &self.store).map_err(err)?;
            }
        }
        Ok(())
    }

    /// Keeps the session alive (keep-alives, acks) until `stop` is set.
    async fn idle_until(&mut self, stop: &AtomicBool) -> Result<(), String> {
        while !stop.load(Ordering::Relaxed) {
            self.flush().await?;
            // Wake at least every 100 ms to look at `stop`.
            let check = Instant::now() + Duration::from_millis(100);
            match self.step(Some(check)).await {
                Ok(()) => {}
                Err(_) if Instant::now() >= check => {}
                Err(e) => return Err(e),
            }
        }
        let _ = self.ws.close(None).await;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Time-boxed write rounds.

/// What one client did in the counted window.
#[derive(Default)]
struct ClientLog {
    latencies_ms: Vec<f64>,
    /// The last value the node acknowledged.
    last: Option<u64>,
}

/// One round's figures.
struct RoundFigures {
    ops_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_op: f64,
}

/// Runs `clients` writers (`writer(i, recording, stop)`, which connects
/// first and returns its log) for [`WARMUP`] + [`WINDOW`] and measures.
async fn round<F, Fut>(
    node: &NodeProcess,
    clients: usize,
    writer: F,
) -> Result<(RoundFigures, Vec<ClientLog>), String>
where
    F: Fn(usize, Arc<AtomicBool>, Arc<AtomicBool>, Arc<AtomicUsize>) -> Fut,
    Fut: Future<Output = Result<ClientLog, String>> + Send + 'static,
{
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|i| tokio::spawn(writer(i, recording.clone(), stop.clone(), ready.clone())))
        .collect();
    // Connections first (not timed), then the warm-up, then the window.
    let patience = Instant::now() + PATIENCE;
    while ready.load(Ordering::Relaxed) < clients {
        if Instant::now() > patience || tasks.iter().any(|t| t.is_finished()) {
            stop.store(true, Ordering::Relaxed);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(WARMUP).await;
    }
    let cpu0 = node.cpu_secs()?;
    let t0 = Instant::now();
    recording.store(true, Ordering::Relaxed);
    if !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(WINDOW).await;
    }
    recording.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = node.cpu_secs()?;
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::with_capacity(clients);
    for t in tasks {
        logs.push(t.await.map_err(err)??);
    }
    let mut all: Vec<f64> = logs
        .iter()
        .flat_map(|l| l.latencies_ms.iter().copied())
        .collect();
    if all.is_empty() {
        return Err("no write completed in the window".into());
    }
    all.sort_by(f64::total_cmp);
    let ops = all.len() as f64;
    Ok((
        RoundFigures {
            ops_per_s: ops / elapsed,
            p50_ms: percentile(&all, 0.50),
            p99_ms: percentile(&all, 0.99),
            cpu_us_per_op: (cpu1 - cpu0) * 1e6 / ops,
        },
        logs,
    ))
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl ClientLog {
    /// Notes a write of `value` that started at `start` and just completed
    /// (timed only while `recording`).
    fn done(&mut self, recording: &AtomicBool, start: Instant, value: u64) {
        if recording.load(Ordering::Relaxed) {
            self.latencies_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        self.last = Some(value);
    }
}

/// The HTTP document of client `i`: its own, or the hot one.
fn http_doc(i: usize, hot: bool) -> String {
    if hot {
        "hot".into()
    } else {
        format!("h{i:04}")
    }
}

/// `http-writes-N` (`hot`: all on one document): rounds, then a check that
/// every client's last acknowledged value is in the node's document.
async fn http_case(
    node: &NodeProcess,
    clients: usize,
    hot: bool,
) -> Result<Vec<RoundFigures>, String> {
    let addr = node.addr;
    let mut figures = Vec::new();
    let mut last: Vec<Option<u64>> = vec![None; clients];
    for r in 0..ROUNDS {
        // Values grow across rounds so a stale value cannot pass the check.
        let base = (r as u64) << 40;
        let (fig, logs) = round(node, clients, |i, recording, stop, ready| async move {
            let mut http = Http::connect(addr).await?;
            ready.fetch_add(1, Ordering::Relaxed);
            let (doc, key) = (http_doc(i, hot), format!("c{i}"));
            let mut log = ClientLog::default();
            let mut value = base;
            while !stop.load(Ordering::Relaxed) {
                value += 1;
                let start = Instant::now();
                http.post_changes(&doc, &set_change(&key, json!(value)))
                    .await?;
                log.done(&recording, start, value);
            }
            Ok(log)
        })
        .await?;
        for (i, log) in logs.into_iter().enumerate() {
            if log.last.is_some() {
                last[i] = log.last;
            }
        }
        figures.push(fig);
    }
    let mut http = Http::connect(addr).await?;
    for (i, want) in last.iter().enumerate() {
        let Some(want) = want else { continue };
        let doc = http_doc(i, hot);
        let got = http
            .get_doc(&doc)
            .await?
            .ok_or(format!("{doc} is missing"))?;
        if got[format!("c{i}")] != json!(want) {
            return Err(format!(
                "{doc}: c{i} is {}, expected {want}",
                got[format!("c{i}")]
            ));
        }
    }
    Ok(figures)
}

/// The document of sync client `i` in round `r`.
fn sync_doc(r: usize, i: usize) -> String {
    format!("s{r}-{i:04}")
}

/// `sync-writes-N`: rounds of sync clients, then the same read-back check
/// over HTTP (the node folds the clients' entries into documents).
async fn sync_case(node: &NodeProcess, clients: usize) -> Result<Vec<RoundFigures>, String> {
    let url = node.sync_url();
    let mut figures = Vec::new();
    // (document, last acknowledged value) of every client of every round.
    let mut last: Vec<(String, u64)> = Vec::new();
    for r in 0..ROUNDS {
        let url = url.clone();
        let (fig, logs) = round(node, clients, |i, recording, stop, ready| {
            let url = url.clone();
            async move {
                // A new replica and document per round: a new replica's
                // first write to an old document would be concurrent with
                // the old writer's, and need not win.
                let replica = ReplicaId::from_u64(((r as u64 + 1) << 32) | i as u64);
                let mut client = SyncClient::connect(&url, replica, sync_doc(r, i)).await?;
                ready.fetch_add(1, Ordering::Relaxed);
                let mut log = ClientLog::default();
                let mut value = 0;
                while !stop.load(Ordering::Relaxed) {
                    value += 1;
                    let start = Instant::now();
                    client.write(value).await?;
                    log.done(&recording, start, value);
                }
                let _ = client.ws.close(None).await;
                Ok(log)
            }
        })
        .await?;
        for (i, log) in logs.into_iter().enumerate() {
            if let Some(v) = log.last {
                last.push((sync_doc(r, i), v));
            }
        }
        figures.push(fig);
    }
    let mut http = Http::connect(node.addr).await?;
    for (doc, want) in &last {
        let got = http
            .get_doc(doc)
            .await?
            .ok_or(format!("{doc} is missing"))?;
        if got["n"] != json!(want) {
            return Err(format!("{doc}: n is {}, expected {want}", got["n"]));
        }
    }
    Ok(figures)
}

// ---------------------------------------------------------------------------
// Propagation.

/// Reads server-sent events of `doc` on `addr` and reports every `tok-N`
/// value it sees with the time it arrived.
async fn watch_tokens(
    addr: SocketAddr,
    doc: &str,
    seen: tokio::sync::mpsc::UnboundedSender<(u64, Instant)>,
) -> Result<(), String> {
    let mut http = Http::connect(addr).await?;
    let req = format!("GET /v1/docs/{doc}/watch HTTP/1.1\r\nhost: bench\r\n\r\n");
    http.stream.write_all(req.as_bytes()).await.map_err(err)?;
    let (status, head_len, head) = http.read_head().await?;
    if status != 200 {
        return Err(format!("watch {doc}: {status} {head}"));
    }
    http.buf.drain(..head_len);
    const TOKEN: &[u8] = b"tok-";
    const DIGITS: usize = 9;
    loop {
        // Events are whole chunks of the body, so a token is never split
        // by chunk framing; it may be split across reads: keep the tail.
        while let Some(at) = find(&http.buf, TOKEN) {
            let digits = at + TOKEN.len();
            if http.buf.len() < digits + DIGITS {
                break;
            }
            let now = Instant::now();
            let n = std::str::from_utf8(&http.buf[digits..digits + DIGITS])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("a malformed token in the event stream")?;
            if seen.send((n, now)).is_err() {
                return Ok(());
            }
            http.buf.drain(..digits + DIGITS);
        }
        let keep = http.buf.len().saturating_sub(TOKEN.len() + DIGITS);
        http.buf.drain(..keep);
        http.fill().await?;
    }
}

/// `propagation`: writes on A, seen on B; one sample per write.
async fn propagation_case(a: &NodeProcess, b: &NodeProcess) -> Result<Vec<(f64, f64)>, String> {
    const DOC: &str = "prop";
    let mut writer = Http::connect(a.addr).await?;
    writer
        .post_changes(DOC, &set_change("start", json!(true)))
        .await?;
    let mut reader = Http::connect(b.addr).await?;
    let deadline = Instant::now() + PATIENCE;
    while reader.get_doc(DOC).await?.is_none() {
        if Instant::now() > deadline {
            return Err("the document never reached node B".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let b_addr = b.addr;
    let watcher = tokio::spawn(async move { watch_tokens(b_addr, DOC, tx).await });
    // Let the watch subscribe before the first write.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut rounds = Vec::new();
    let mut token = 0u64;
    for _ in 0..ROUNDS {
        let mut sent = Vec::with_capacity(PROPAGATION_WRITES);
        for _ in 0..PROPAGATION_WRITES {
            token += 1;
            let change = set_change(&format!("k{token}"), json!(format!("tok-{token:09}")));
            sent.push((token, Instant::now()));
            writer.post_changes(DOC, &change).await?;
            tokio::time::sleep(PROPAGATION_GAP).await;
        }
        let mut delays = Vec::with_capacity(sent.len());
        let mut pending: std::collections::HashMap<u64, Instant> = sent.into_iter().collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some((n, at))) => {
                    if let Some(t0) = pending.remove(&n) {
                        delays.push(at.duration_since(t0).as_secs_f64() * 1e3);
                    }
                }
                Ok(None) => break,
                Err(_) => break,
            }
        }
        if !pending.is_empty() {
            watcher.abort();
            return Err(format!(
                "{} of {PROPAGATION_WRITES} writes never showed on node B within 5 s",
                pending.len()
            ));
        }
        delays.sort_by(f64::total_cmp);
        rounds.push((percentile(&delays, 0.50), percentile(&delays, 0.99)));
    }
    watcher.abort();
    Ok(rounds)
}

// ---------------------------------------------------------------------------
// Idle sessions.

/// `idle-sessions-10k`: (bytes per session, RSS MiB, idle CPU %).
async fn idle_case(node: &NodeProcess) -> Result<(f64, f64, f64), String> {
    // A first request, so the runtime and the store are up before the baseline.
    let mut http = Http::connect(node.addr).await?;
    http.request("GET", "/v1/status", b"").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = node.rss_bytes()?;
    let url = node.sync_url();
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicUsize::new(0));
    let connecting = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
    let started = Instant::now();
    let tasks: Vec<_> = (0..IDLE_SESSIONS)
        .map(|i| {
            let (url, stop, ready, connecting) =
                (url.clone(), stop.clone(), ready.clone(), connecting.clone());
            tokio::spawn(async move {
                let permit = connecting.acquire_owned().await.map_err(err)?;
                let replica = ReplicaId::from_u64(0x1D1E_0000_0000 | i as u64);
                let mut client = SyncClient::connect(&url, replica, format!("idle{i:05}")).await?;
                drop(permit);
                ready.fetch_add(1, Ordering::Relaxed);
                client.idle_until(&stop).await
            })
        })
        .collect();
    let deadline = Instant::now() + PATIENCE * 3;
    while ready.load(Ordering::Relaxed) < IDLE_SESSIONS {
        if Instant::now() > deadline || tasks.iter().any(|t| t.is_finished()) {
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                if let Ok(Err(e)) = t.await {
                    return Err(format!(
                        "{} of {IDLE_SESSIONS} sessions opened: {e}",
                        ready.load(Ordering::Relaxed)
                    ));
                }
            }
            return Err(format!(
                "only {} of {IDLE_SESSIONS} sessions opened",
                ready.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "  {IDLE_SESSIONS} sessions open after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Let the listings and first keep-alives settle, then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, t0) = (node.cpu_secs()?, Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cpu = (node.cpu_secs()? - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let after = node.rss_bytes()?;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.map_err(err)??;
    }
    let per_session = after.saturating_sub(before) as f64 / IDLE_SESSIONS as f64;
    Ok((per_session, after as f64 / (1 << 20) as f64, idle_cpu))
}

// ---------------------------------------------------------------------------
// The suite.

fn push(out: &mut Vec<Record>, case: &str, metric: &str, samples: Result<Vec<f64>, String>) {
    let r = Record::new(case, CONVERGE, metric, samples);
    match (r.median, &r.error) {
        (Some(m), _) => eprintln!("  {case}: {m:.1} {metric}"),
        (None, e) => eprintln!("  {case}: FAILED {}", e.as_deref().unwrap_or_default()),
    }
    out.push(r);
}

fn push_rounds(out: &mut Vec<Record>, case: &str, rounds: Result<Vec<RoundFigures>, String>) {
    let pick = |f: fn(&RoundFigures) -> f64| {
        rounds
            .as_ref()
            .map(|rs| rs.iter().map(f).collect::<Vec<_>>())
            .map_err(Clone::clone)
    };
    push(out, case, OPS, pick(|r| r.ops_per_s));
    push(out, case, P50, pick(|r| r.p50_ms));
    push(out, case, P99, pick(|r| r.p99_ms));
    push(out, case, CPU_PER_OP, pick(|r| r.cpu_us_per_op));
}

fn cases(opts: &Options, bin: &Path, root: &Path, rt: &tokio::runtime::Runtime) -> Vec<Record> {
    let mut out = Vec::new();
    let start = || NodeProcess::start(bin, root, &[]);
    for &n in &CLIENTS {
        let case = format!("http-writes-{n}");
        if opts.wants(&case) {
            eprintln!("{case} ...");
            let r = start().and_then(|node| rt.block_on(http_case(&node, n, false)));
            push_rounds(&mut out, &case, r);
        }
    }
    let case = format!("http-writes-{HOT_CLIENTS}-hot");
    if opts.wants(&case) {
        eprintln!("{case} ...");
        let r = start().and_then(|node| rt.block_on(http_case(&node, HOT_CLIENTS, true)));
        push_rounds(&mut out, &case, r);
    }
    for &n in &CLIENTS {
        let case = format!("sync-writes-{n}");
        if opts.wants(&case) {
            eprintln!("{case} ...");
            let r = start().and_then(|node| rt.block_on(sync_case(&node, n)));
            push_rounds(&mut out, &case, r);
        }
    }
    if opts.wants("propagation") {
        eprintln!("propagation ...");
        let r = start().and_then(|a| {
            let b = NodeProcess::start(bin, root, &[a.sync_url()])?;
            rt.block_on(propagation_case(&a, &b))
        });
        let pick = |f: fn(&(f64, f64)) -> f64| {
            r.as_ref()
                .map(|rs| rs.iter().map(f).collect::<Vec<_>>())
                .map_err(Clone::clone)
        };
        push(&mut out, "propagation", P50, pick(|r| r.0));
        push(&mut out, "propagation", P99, pick(|r| r.1));
    }
    let case = "idle-sessions-10k";
    if opts.wants(case) {
        eprintln!("{case} ...");
        let r = start().and_then(|node| rt.block_on(idle_case(&node)));
        let pick =
            |f: fn(&(f64, f64, f64)) -> f64| r.as_ref().map(|x| vec![f(x)]).map_err(Clone::clone);
        push(&mut out, case, PER_SESSION, pick(|r| r.0));
        push(&mut out, case, RSS_MIB, pick(|r| r.1));
        push(&mut out, case, IDLE_CPU, pick(|r| r.2));
    }
    out
}

const COLUMNS: [&str; 7] = [OPS, P50, P99, CPU_PER_OP, PER_SESSION, RSS_MIB, IDLE_CPU];

fn value(records: &[Record], case: &str, metric: &str) -> Option<f64> {
    records
        .iter()
        .find(|r| r.case == case && r.metric == metric)
        .and_then(|r| r.median)
}

/// One row per case, one column per metric.
fn markdown_table(records: &[Record]) -> String {
    crate::harness::metric_table(records, &COLUMNS, format_value)
}

fn format_value(v: f64, metric: &str) -> String {
    match metric {
        OPS | PER_SESSION => format!("{v:.0}"),
        P50 | P99 => format!("{v:.2}"),
        _ => format!("{v:.1}"),
    }
}

/// Issue 6's targets, each met or missed.
fn targets(records: &[Record]) -> String {
    let mut out = String::new();
    let mut line = |what: &str, got: Option<f64>, ok: fn(f64) -> bool, unit: &str| {
        let verdict = match got {
            Some(v) if ok(v) => format!("met ({v:.1} {unit})"),
            Some(v) => format!("**missed** ({v:.1} {unit})"),
            None => "not measured".to_owned(),
        };
        let _ = writeln!(out, "- {what}: {verdict}");
    };
    let at_least = |v: f64| v >= TARGET_OPS;
    line(
        "≥ 20k durable changes/s, 256 HTTP clients",
        value(records, "http-writes-256", OPS),
        at_least,
        "ops/s",
    );
    line(
        "≥ 20k durable changes/s, 256 HTTP clients on one document",
        value(records, "http-writes-256-hot", OPS),
        at_least,
        "ops/s",
    );
    line(
        "≥ 20k durable changes/s, 256 sync clients",
        value(records, "sync-writes-256", OPS),
        at_least,
        "ops/s",
    );
    line(
        "propagation p99 < 50 ms",
        value(records, "propagation", P99),
        |v| v < TARGET_PROPAGATION_P99_MS,
        "ms",
    );
    line(
        "≤ 20 KiB per idle session",
        value(records, "idle-sessions-10k", PER_SESSION).map(|b| b / 1024.0),
        |v| v * 1024.0 <= TARGET_SESSION_BYTES,
        "KiB",
    );
    out
}

/// Runs the suite.
pub(crate) fn run(opts: &Options) -> Result<(), String> {
    let bin = converge_binary()?;
    let root = workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&root).map_err(err)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(err)?;
    let started = Instant::now();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let records = cases(opts, &bin, &root, &rt);
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "## node: `converge serve` on loopback ({ROUNDS} rounds of {:.1} s after a {:.1} s warm-up; \
         median over rounds)\n",
        WINDOW.as_secs_f64(),
        WARMUP.as_secs_f64()
    );
    print!("{}", markdown_table(&records));
    println!("\n### targets\n\n{}", targets(&records));
    println!(
        "load average before: {}, after: {}; suite took {:.0} s",
        load.trim(),
        load_after.trim(),
        started.elapsed().as_secs_f64()
    );
    let path = write_json("node", &records).map_err(|e| format!("writing JSON: {e}"))?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        let (addr, replica) =
            parse_listening("converge listening on http://127.0.0.1:4321 (replica 00ab)\n")
                .unwrap();
        assert_eq!(addr.port(), 4321);
        assert_eq!(replica, "00ab");
        assert!(parse_listening("hello").is_err());
    }

    #[test]
    fn reads_content_length_and_percentiles() {
        assert_eq!(
            content_length("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nx: y"),
            Some(12)
        );
        assert_eq!(content_length("HTTP/1.1 200 OK\r\nx: y"), None);
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.5), 50.0);
        assert_eq!(percentile(&s, 0.99), 99.0);
    }
}
