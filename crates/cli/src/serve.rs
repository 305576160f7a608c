//! `converge serve`: settings (flags > environment > TOML file > defaults),
//! the node's lifetime, and a bounded graceful shutdown.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::ArgMatches;
use clap::parser::ValueSource;
use converge_crdt::ReplicaId;
use converge_node::{Node, NodeConfig, NodeError};
use serde::Deserialize;
use serde_json::json;

/// The flags of `converge serve`. Each may also come from its environment
/// variable or from the `--config` file (key in brackets in the help).
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// A TOML file with any of the settings below, by their key names
    /// (`data`, `listen`, `replica_id`, `peers`, `advertise`,
    /// `gossip_interval`, `max_gossip_sessions`, `forget_after`, `demo`,
    /// `max_sync_sessions`, `max_changes_per_request`,
    /// `shutdown_timeout_secs`). Flags and environment variables override
    /// it; an unknown key is an error.
    #[arg(long, env = "CONVERGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory, created if missing [key: data].
    #[arg(long, env = "CONVERGE_DATA", default_value = "converge-data")]
    data: PathBuf,
    /// Address for HTTP and sync; port 0 picks a free port (the address is
    /// printed) [key: listen].
    #[arg(long, env = "CONVERGE_LISTEN", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Replica id (16 hex digits); by default the data directory's, or a
    /// new random one saved there [key: replica_id].
    #[arg(long, env = "CONVERGE_REPLICA_ID")]
    replica_id: Option<ReplicaId>,
    /// Create a demo TODO document named `demo` if it does not exist
    /// [key: demo].
    #[arg(long)]
    demo: bool,
    /// A peer to sync with, e.g. ws://10.0.0.2:7878/v1/sync (repeatable;
    /// the environment variable takes a comma-separated list). The node
    /// keeps reconnecting while the peer is down [key: peers, a list].
    #[arg(long = "peer", env = "CONVERGE_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    peers: Vec<String>,
    /// This node's sync URL as other nodes should dial it, written into the
    /// cluster's membership so that every node can reach it (e.g.
    /// ws://10.0.0.1:7878/v1/sync). By default ws://LISTEN/v1/sync when
    /// --listen is a concrete address (not 0.0.0.0 or ::); else none, and
    /// other nodes know of this node but cannot dial it [key: advertise].
    #[arg(long, env = "CONVERGE_ADVERTISE", value_parser = parse_peer)]
    advertise: Option<String>,
    /// How often to sync with a random cluster member this node has no
    /// session with, e.g. 1s or 500ms (each round waits 0.5 to 1.5 times
    /// it); members learnt from the membership, not only --peer ones, so a
    /// node that knows one seed finds the whole cluster. `off` (or 0)
    /// disables membership and gossip [key: gossip_interval].
    #[arg(long, env = "CONVERGE_GOSSIP_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    gossip_interval: Interval,
    /// Most gossip sessions open at once, beyond the --peer ones [key:
    /// max_gossip_sessions].
    #[arg(long, env = "CONVERGE_MAX_GOSSIP_SESSIONS", default_value_t = 2)]
    max_gossip_sessions: usize,
    /// Forget a cluster member that stays dead (unreachable, its dials
    /// failing) this long, e.g. 24h, 30m, 90s: it is no longer dialled and
    /// no longer listed in the status. If it comes back it rewrites its
    /// membership entry (every node does on start), and is dialled again.
    /// `never` keeps retrying dead members forever (at the longest
    /// backoff, a minute). Members that shut down gracefully are marked
    /// `left` and not dialled at all [key: forget_after].
    #[arg(long, env = "CONVERGE_FORGET_AFTER", default_value = "24h", value_parser = parse_forget_after)]
    forget_after: ForgetAfter,
    /// Most sync sessions accepted at once [key: max_sync_sessions].
    #[arg(long, env = "CONVERGE_MAX_SYNC_SESSIONS", default_value_t = 256)]
    max_sync_sessions: usize,
    /// Most changes in one HTTP request [key: max_changes_per_request].
    #[arg(
        long,
        env = "CONVERGE_MAX_CHANGES_PER_REQUEST",
        default_value_t = 10_000
    )]
    max_changes_per_request: usize,
    /// On SIGINT or SIGTERM, how long to let requests and sync sessions
    /// finish before exiting anyway, in seconds (then the exit status is 1;
    /// closing the store takes at most 3 s more) [key:
    /// shutdown_timeout_secs].
    #[arg(long, env = "CONVERGE_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    shutdown_timeout_secs: u64,
}

/// The `--config` file: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data: Option<PathBuf>,
    listen: Option<SocketAddr>,
    replica_id: Option<String>,
    peers: Option<Vec<String>>,
    advertise: Option<String>,
    gossip_interval: Option<String>,
    max_gossip_sessions: Option<usize>,
    forget_after: Option<String>,
    demo: Option<bool>,
    max_sync_sessions: Option<usize>,
    max_changes_per_request: Option<usize>,
    shutdown_timeout_secs: Option<u64>,
}

/// The settings a node runs with, once every source is merged.
#[derive(Debug, PartialEq)]
struct Settings {
    data: PathBuf,
    listen: SocketAddr,
    replica_id: Option<ReplicaId>,
    peers: Vec<String>,
    advertise: Option<String>,
    gossip_interval: Interval,
    max_gossip_sessions: usize,
    forget_after: ForgetAfter,
    demo: bool,
    max_sync_sessions: usize,
    max_changes_per_request: usize,
    shutdown_timeout: Duration,
}

/// A peer URL: plain `ws://` (TLS is not supported yet).
fn parse_peer(s: &str) -> Result<String, String> {
    let s = s.trim();
    match s.strip_prefix("ws://") {
        Some(rest) if !rest.is_empty() => Ok(s.to_string()),
        _ if s.starts_with("wss://") => {
            Err("wss:// (TLS) is not supported yet; use ws://HOST:PORT/v1/sync".into())
        }
        _ => Err(format!(
            "{s:?} is not a ws:// URL; use ws://HOST:PORT/v1/sync"
        )),
    }
}

/// A gossip interval: `None` is off.
type Interval = Option<Duration>;

/// `500ms`, `2s`, or a bare number of seconds; `off` or zero disables.
fn parse_interval(s: &str) -> Result<Interval, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not an interval; use e.g. 1s, 500ms or off");
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let (digits, unit_ms) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 1)
    } else if let Some(secs) = s.strip_suffix('s') {
        (secs, 1000)
    } else {
        (s, 1000)
    };
    let n: u64 = digits.trim().parse().map_err(|_| bad())?;
    let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

/// How long a dead member is kept: `None` is forever.
type ForgetAfter = Option<Duration>;

/// `24h`, `30m`, `90s`, `500ms` (at least a second), or `never`.
fn parse_forget_after(s: &str) -> Result<ForgetAfter, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a duration; use e.g. 24h, 30m, 90s or never");
    if s.eq_ignore_ascii_case("never") || s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let (digits, unit_ms) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 1)
    } else if let Some(secs) = s.strip_suffix('s') {
        (secs, 1000)
    } else if let Some(mins) = s.strip_suffix('m') {
        (mins, 60_000)
    } else if let Some(hours) = s.strip_suffix('h') {
        (hours, 3_600_000)
    } else {
        return Err(bad());
    };
    let n: u64 = digits.trim().parse().map_err(|_| bad())?;
    let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
    if ms < 1000 {
        return Err(format!(
            "{s:?} is too short to tell a dead member from a slow one; use at least 1s (or never)"
        ));
    }
    Ok(Some(Duration::from_millis(ms)))
}

/// The sync URL to advertise by default for a node bound to `addr`: none
/// for a wildcard address, which other hosts cannot dial.
fn default_advertise(addr: SocketAddr) -> Option<String> {
    (!addr.ip().is_unspecified()).then(|| format!("ws://{addr}/v1/sync"))
}

/// Reads and checks a config file.
fn read_config(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in the config file {}", path.display()))
}

/// Merges the sources: a flag or environment variable (clap has already
/// put flags before the environment) wins over the file, the file over the
/// defaults.
fn resolve(args: ServeArgs, matches: &ArgMatches, file: FileConfig) -> Result<Settings> {
    // Whether `id` was given on the command line or in the environment.
    let given = |id: &str| {
        matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    fn pick<T>(given: bool, arg: T, file: Option<T>) -> T {
        match (given, file) {
            (false, Some(f)) => f,
            _ => arg,
        }
    }
    let replica_id = match (args.replica_id, file.replica_id) {
        (Some(r), _) => Some(r),
        (None, Some(r)) => Some(r.parse().map_err(|e| {
            anyhow::anyhow!("replica_id {r:?} in the config file: {e} (16 hex digits)")
        })?),
        (None, None) => None,
    };
    let peers = match file.peers {
        Some(peers) if !given("peers") => peers
            .iter()
            .map(|p| parse_peer(p).map_err(|e| anyhow::anyhow!("peers in the config file: {e}")))
            .collect::<Result<_>>()?,
        _ => args.peers,
    };
    let advertise = match (args.advertise, file.advertise) {
        (Some(a), _) => Some(a),
        (None, Some(a)) => {
            Some(parse_peer(&a).map_err(|e| anyhow::anyhow!("advertise in the config file: {e}"))?)
        }
        (None, None) => None,
    };
    let gossip_interval = match file.gossip_interval {
        Some(i) if !given("gossip_interval") => parse_interval(&i)
            .map_err(|e| anyhow::anyhow!("gossip_interval in the config file: {e}"))?,
        _ => args.gossip_interval,
    };
    let forget_after = match file.forget_after {
        Some(f) if !given("forget_after") => parse_forget_after(&f)
            .map_err(|e| anyhow::anyhow!("forget_after in the config file: {e}"))?,
        _ => args.forget_after,
    };
    let settings = Settings {
        data: pick(given("data"), args.data, file.data),
        listen: pick(given("listen"), args.listen, file.listen),
        replica_id,
        peers,
        advertise,
        gossip_interval,
        max_gossip_sessions: pick(
            given("max_gossip_sessions"),
            args.max_gossip_sessions,
            file.max_gossip_sessions,
        ),
        forget_after,
        demo: args.demo || file.demo.unwrap_or(false),
        max_sync_sessions: pick(
            given("max_sync_sessions"),
            args.max_sync_sessions,
            file.max_sync_sessions,
        ),
        max_changes_per_request: pick(
            given("max_changes_per_request"),
            args.max_changes_per_request,
            file.max_changes_per_request,
        ),
        shutdown_timeout: Duration::from_secs(pick(
            given("shutdown_timeout_secs"),
            args.shutdown_timeout_secs,
            file.shutdown_timeout_secs,
        )),
    };
    if settings.max_sync_sessions == 0
        || settings.max_changes_per_request == 0
        || settings.max_gossip_sessions == 0
    {
        bail!(
            "max_sync_sessions, max_changes_per_request and max_gossip_sessions must be at least 1"
        );
    }
    Ok(settings)
}

/// Runs `converge serve` until SIGINT or SIGTERM.
pub(crate) fn run(args: ServeArgs, matches: &ArgMatches) -> Result<()> {
    let file = match &args.config {
        Some(path) => read_config(path)?,
        None => FileConfig::default(),
    };
    let settings = resolve(args, matches, file)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve(settings));
    // Blocking store calls still running (none, once serve returned in
    // time) get a moment, not forever.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(settings: Settings) -> Result<()> {
    // Bound first: the advertised URL defaults to the actual port.
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let mut config = NodeConfig::new(&settings.data);
    config.replica = settings.replica_id;
    config.peers = settings.peers.clone();
    config.max_sync_sessions = settings.max_sync_sessions;
    config.max_changes_per_request = settings.max_changes_per_request;
    config.advertise = settings
        .advertise
        .clone()
        .or_else(|| default_advertise(addr));
    config.gossip_interval = settings.gossip_interval;
    config.max_gossip_sessions = settings.max_gossip_sessions;
    config.forget_after = settings.forget_after;
    if config.advertise.is_none() && config.gossip_interval.is_some() {
        tracing::warn!(%addr, "no --advertise URL: other nodes will know of this node but cannot dial it");
    }
    let node = Arc::new(
        Node::open(config)
            .with_context(|| format!("opening data directory {}", settings.data.display()))?,
    );
    if settings.demo {
        seed_demo(&node).await?;
    }
    tracing::info!(replica = %node.replica(), data = %settings.data.display(), "node started");
    // Tests and scripts read this line to find the port. Nobody reading it
    // (a closed pipe) is no reason to stop serving, nor to panic.
    let _ = writeln!(
        std::io::stdout().lock(),
        "converge listening on http://{addr} (replica {})",
        node.replica()
    );
    let (signalled_tx, mut signalled) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown_signal().await;
        let _ = signalled_tx.send(true);
    };
    let served = converge_node::serve(listener, node.clone(), shutdown);
    // Once a signal came, requests and sessions get `grace` to finish.
    let grace = settings.shutdown_timeout;
    let overdue = async move {
        let _ = signalled.wait_for(|s| *s).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = served => served.context("serving HTTP")?,
        () = overdue => bail!("shutdown took longer than {grace:?}: exiting with work unfinished (acknowledged writes are durable)"),
    }
    close(node, Duration::from_secs(2)).await;
    Ok(())
}

/// Drops the last handle on the node, so the store closes cleanly (redb
/// then skips its recovery check on the next open). Every acknowledged
/// write is already durable: appends return only once synced to disk.
async fn close(node: Arc<Node>, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    let mut node = node;
    loop {
        match Arc::try_unwrap(node) {
            Ok(node) => {
                drop(node);
                tracing::info!("store closed; shut down cleanly");
                return;
            }
            Err(shared) if tokio::time::Instant::now() < deadline => {
                // A session task winding down still holds it.
                node = shared;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                tracing::warn!("the store is still in use at exit; it is checked on next open");
                return;
            }
        }
    }
}

/// Resolves on the first SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub(crate) async fn stop_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

async fn shutdown_signal() {
    stop_signal().await;
    tracing::info!("shutting down: closing sessions, finishing requests in flight");
}

async fn seed_demo(node: &Node) -> Result<()> {
    match node.get("demo").await {
        Ok(_) => return Ok(()),
        Err(NodeError::NotFound(_)) => {}
        Err(e) => return Err(e).context("reading the demo document"),
    }
    let changes: Vec<converge_node::PathChange> = serde_json::from_value(json!([
        {"op": "set", "path": ["title"], "value": "Groceries"},
        {"op": "set", "path": ["todos"], "value": [
            {"title": "milk", "done": false},
            {"title": "bread", "done": true},
            {"title": "coffee", "done": false}
        ]},
        {"op": "splice", "path": ["notes"], "index": 0, "delete": 0, "insert": "Shared shopping list"},
        {"op": "increment", "path": ["edits"], "by": 1}
    ]))
    .context("demo changes")?;
    node.change("demo", &changes)
        .await
        .context("creating the demo document")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::Cli;

    /// Parses `converge serve ARGS` and merges in `file`, without touching
    /// the process environment.
    fn settings(args: &[&str], file: &str) -> Result<Settings> {
        let matches = Cli::command()
            .try_get_matches_from(["converge", "serve"].iter().chain(args))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let serve = matches.subcommand_matches("serve").expect("serve");
        let crate::Command::Serve(parsed) =
            Cli::from_arg_matches(&matches).expect("parsed").command
        else {
            panic!("not serve");
        };
        let file: FileConfig = toml::from_str(file)?;
        resolve(parsed, serve, file)
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let s = settings(&[], "").expect("settings");
        assert_eq!(s.data, PathBuf::from("converge-data"));
        assert_eq!(s.listen, "127.0.0.1:7878".parse().expect("addr"));
        assert_eq!((s.replica_id, s.demo), (None, false));
        assert!(s.peers.is_empty());
        assert_eq!(s.max_sync_sessions, 256);
        assert_eq!(s.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(s.advertise, None);
        assert_eq!(s.gossip_interval, Some(Duration::from_secs(1)));
        assert_eq!(s.max_gossip_sessions, 2);
        assert_eq!(s.forget_after, Some(Duration::from_secs(24 * 3600)));
    }

    #[test]
    fn forget_after_parses_and_layers() {
        assert_eq!(
            parse_forget_after("24h"),
            Ok(Some(Duration::from_secs(86_400)))
        );
        assert_eq!(
            parse_forget_after("30m"),
            Ok(Some(Duration::from_secs(1_800)))
        );
        assert_eq!(parse_forget_after("90s"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(
            parse_forget_after("1500ms"),
            Ok(Some(Duration::from_millis(1_500)))
        );
        assert_eq!(parse_forget_after("never"), Ok(None));
        for bad in [
            "",
            "soon",
            "10",
            "0s",
            "500ms",
            "-1h",
            "99999999999999999999h",
        ] {
            assert!(parse_forget_after(bad).is_err(), "{bad}");
        }
        let s = settings(&[], "forget_after = \"2h\"").expect("settings");
        assert_eq!(s.forget_after, Some(Duration::from_secs(7_200)));
        let s = settings(&["--forget-after", "never"], "forget_after = \"2h\"").expect("settings");
        assert_eq!(s.forget_after, None, "the flag wins");
        let err = settings(&[], "forget_after = \"1d\"").expect_err("bad duration");
        assert!(err.to_string().contains("forget_after"), "{err}");
        assert!(settings(&["--forget-after", "0s"], "").is_err());
    }

    #[test]
    fn gossip_settings_parse_and_layer() {
        assert_eq!(
            parse_interval("500ms"),
            Ok(Some(Duration::from_millis(500)))
        );
        assert_eq!(parse_interval("2s"), Ok(Some(Duration::from_secs(2))));
        assert_eq!(parse_interval("3"), Ok(Some(Duration::from_secs(3))));
        assert_eq!(parse_interval("off"), Ok(None));
        assert_eq!(parse_interval("0ms"), Ok(None));
        for bad in ["", "fast", "1h", "-1s", "99999999999999999999s"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
        let file = r#"
            advertise = "ws://10.0.0.1:7878/v1/sync"
            gossip_interval = "250ms"
            max_gossip_sessions = 4
        "#;
        let s = settings(&[], file).expect("settings");
        assert_eq!(s.advertise.as_deref(), Some("ws://10.0.0.1:7878/v1/sync"));
        assert_eq!(s.gossip_interval, Some(Duration::from_millis(250)));
        assert_eq!(s.max_gossip_sessions, 4);
        let s = settings(
            &[
                "--gossip-interval",
                "off",
                "--advertise",
                "ws://h:1/v1/sync",
            ],
            file,
        )
        .expect("settings");
        assert_eq!(s.gossip_interval, None, "the flag wins");
        assert_eq!(s.advertise.as_deref(), Some("ws://h:1/v1/sync"));
        let err = settings(&[], "advertise = \"http://x\"").expect_err("bad url");
        assert!(err.to_string().contains("advertise"), "{err}");
        let err = settings(&[], "gossip_interval = \"soon\"").expect_err("bad interval");
        assert!(err.to_string().contains("gossip_interval"), "{err}");
        assert!(settings(&["--max-gossip-sessions", "0"], "").is_err());
    }

    #[test]
    fn the_advertised_url_defaults_to_a_concrete_listen_address() {
        let at = |a: &str| default_advertise(a.parse().expect("addr"));
        assert_eq!(
            at("10.1.2.3:7878").as_deref(),
            Some("ws://10.1.2.3:7878/v1/sync")
        );
        assert_eq!(at("[::1]:9").as_deref(), Some("ws://[::1]:9/v1/sync"));
        assert_eq!(at("0.0.0.0:7878"), None);
        assert_eq!(at("[::]:7878"), None);
    }

    #[test]
    fn the_file_overrides_defaults_and_flags_override_the_file() {
        let file = r#"
            data = "/var/lib/converge"
            listen = "0.0.0.0:9000"
            replica_id = "00000000000000ab"
            peers = ["ws://10.0.0.2:7878/v1/sync"]
            demo = true
            max_sync_sessions = 8
            shutdown_timeout_secs = 3
        "#;
        let s = settings(&[], file).expect("settings");
        assert_eq!(s.data, PathBuf::from("/var/lib/converge"));
        assert_eq!(s.listen, "0.0.0.0:9000".parse().expect("addr"));
        assert_eq!(s.replica_id, Some(ReplicaId::from_u64(0xab)));
        assert_eq!(s.peers, ["ws://10.0.0.2:7878/v1/sync"]);
        assert!(s.demo);
        assert_eq!(s.max_sync_sessions, 8);
        assert_eq!(s.max_changes_per_request, 10_000, "default kept");
        assert_eq!(s.shutdown_timeout, Duration::from_secs(3));

        let s = settings(
            &[
                "--data",
                "here",
                "--listen",
                "127.0.0.1:1",
                "--peer",
                "ws://b/v1/sync",
                "--replica-id",
                "00000000000000cd",
                "--max-sync-sessions",
                "256",
            ],
            file,
        )
        .expect("settings");
        assert_eq!(s.data, PathBuf::from("here"));
        assert_eq!(s.listen, "127.0.0.1:1".parse().expect("addr"));
        assert_eq!(s.peers, ["ws://b/v1/sync"]);
        assert_eq!(s.replica_id, Some(ReplicaId::from_u64(0xcd)));
        assert_eq!(
            s.max_sync_sessions, 256,
            "a flag equal to the default still wins"
        );
    }

    #[test]
    fn bad_config_files_name_the_problem() {
        let err = toml::from_str::<FileConfig>("data = \"x\"\nlisten_on = \"a\"\n")
            .expect_err("unknown key");
        assert!(err.to_string().contains("listen_on"), "{err}");
        let err = toml::from_str::<FileConfig>("listen = \"nowhere\"").expect_err("bad address");
        assert!(err.to_string().contains("listen"), "{err}");
        let err = settings(&[], "peers = [\"http://x\"]").expect_err("bad peer");
        assert!(err.to_string().contains("ws://"), "{err}");
        let err = settings(&[], "replica_id = \"zz\"").expect_err("bad id");
        assert!(err.to_string().contains("replica_id"), "{err}");
    }
}
