//! `converge`: run a node, or talk to one over its HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use converge_crdt::ReplicaId;
use converge_node::{Node, NodeConfig, NodeError};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "converge",
    version,
    about = "Replicated data that converges without coordination"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: the embedded store in DATA, HTTP on LISTEN.
    Serve(ServeArgs),
    /// Read, edit or list documents on a node.
    Doc {
        #[command(subcommand)]
        command: DocCommand,
        /// The node's base URL.
        #[arg(
            long,
            env = "CONVERGE_URL",
            default_value = "http://127.0.0.1:7878",
            global = true
        )]
        url: String,
        /// Print raw JSON instead of a human-readable form.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Show a node's status.
    Status {
        /// The node's base URL.
        #[arg(long, env = "CONVERGE_URL", default_value = "http://127.0.0.1:7878")]
        url: String,
        /// Print raw JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Data directory (created if missing).
    #[arg(long, env = "CONVERGE_DATA", default_value = "converge-data")]
    data: PathBuf,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "CONVERGE_LISTEN", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Replica id (16 hex digits); by default the data directory's, or a new random one.
    #[arg(long, env = "CONVERGE_REPLICA_ID")]
    replica_id: Option<ReplicaId>,
    /// Create a demo TODO document named `demo` if it does not exist.
    #[arg(long)]
    demo: bool,
    /// A peer to sync with, e.g. ws://10.0.0.2:7878/v1/sync (repeatable;
    /// the environment variable takes a comma-separated list). The node
    /// keeps reconnecting while the peer is down.
    #[arg(long = "peer", env = "CONVERGE_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    peers: Vec<String>,
    /// Most sync sessions served at once on /v1/sync (default 256); each
    /// open session holds a connection, so raise the open-files limit too.
    #[arg(long, env = "CONVERGE_MAX_SYNC_SESSIONS")]
    max_sync_sessions: Option<usize>,
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

#[derive(Subcommand)]
enum DocCommand {
    /// Print a document.
    Get {
        /// Document id.
        id: String,
    },
    /// Apply changes (a JSON array, see the HTTP API) to a document.
    Edit {
        /// Document id.
        id: String,
        /// The changes, e.g. '[{"op":"set","path":["title"],"value":"hi"}]'.
        changes: String,
    },
    /// List documents.
    List {
        /// Only ids starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Doc { command, url, json } => doc(&url, command, json),
        Command::Status { url, json } => {
            let status = get_json(&format!("{url}/v1/status"))?;
            if json {
                println!("{status}");
            } else {
                println!("replica   {}", status["replica"].as_str().unwrap_or("?"));
                println!("open docs {}", status["open_docs"]);
                println!("feed head {}", status["feed_head"]);
                let sync = &status["sync"];
                println!("sessions  {} incoming", sync["incoming_sessions"]);
                for p in sync["peers"].as_array().into_iter().flatten() {
                    let state = if p["connected"] == true {
                        "connected"
                    } else {
                        "down"
                    };
                    print!(
                        "peer      {} {state}, feed position {}",
                        p["url"].as_str().unwrap_or("?"),
                        p["feed_position"]
                    );
                    match p["last_error"].as_str() {
                        Some(e) if p["connected"] != true => println!(" ({e})"),
                        _ => println!(),
                    }
                }
            }
            Ok(())
        }
    }
}

fn serve(args: ServeArgs) -> Result<()> {
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
    runtime.block_on(async move {
        let mut config = NodeConfig::new(&args.data);
        config.replica = args.replica_id;
        config.peers = args.peers.clone();
        if let Some(max) = args.max_sync_sessions {
            config.max_sync_sessions = max;
        }
        let node = Arc::new(
            Node::open(config)
                .with_context(|| format!("opening data directory {}", args.data.display()))?,
        );
        if args.demo {
            seed_demo(&node).await?;
        }
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        tracing::info!(replica = %node.replica(), data = %args.data.display(), "node started");
        // Tests and scripts read this line to find the port.
        println!(
            "converge listening on http://{addr} (replica {})",
            node.replica()
        );
        converge_node::serve(listener, node, shutdown_signal())
            .await
            .context("serving HTTP")?;
        tracing::info!("shut down cleanly");
        Ok(())
    })
}

async fn shutdown_signal() {
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
    tracing::info!("shutting down: finishing requests in flight");
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

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn get_json(url: &str) -> Result<Value> {
    let resp = agent()
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    answer(resp, &format!("GET {url}"))
}

/// The JSON body of a node's answer, or its error message as an error.
fn answer(mut resp: ureq::http::Response<ureq::Body>, what: &str) -> Result<Value> {
    let status = resp.status();
    let body: Value = resp
        .body_mut()
        .read_json()
        .with_context(|| format!("reading the answer of {what}"))?;
    if !status.is_success() {
        bail!(
            "{status}: {}",
            body["error"]["message"]
                .as_str()
                .unwrap_or("request failed")
        );
    }
    Ok(body)
}

fn doc(url: &str, command: DocCommand, raw: bool) -> Result<()> {
    match command {
        DocCommand::Get { id } => {
            let body = get_json(&format!("{url}/v1/docs/{id}"))?;
            println!(
                "{}",
                if raw {
                    body.to_string()
                } else {
                    serde_json::to_string_pretty(&body)?
                }
            );
        }
        DocCommand::Edit { id, changes } => {
            let parsed: Value =
                serde_json::from_str(&changes).context("the changes are not valid JSON")?;
            let resp = agent()
                .post(&format!("{url}/v1/docs/{id}/changes"))
                .send_json(&parsed)
                .with_context(|| format!("POST {url}/v1/docs/{id}/changes"))?;
            let body = answer(resp, &format!("POST {url}/v1/docs/{id}/changes"))?;
            if raw {
                println!("{body}");
            } else {
                println!("applied; version {}", body["version"]);
            }
        }
        DocCommand::List { prefix } => {
            let body = get_json(&format!("{url}/v1/docs?prefix={prefix}"))?;
            if raw {
                println!("{body}");
            } else if let Some(ids) = body["docs"].as_array() {
                for id in ids {
                    println!("{}", id.as_str().unwrap_or("?"));
                }
            }
        }
    }
    Ok(())
}
