//! `converge`: run a node, or talk to one over its HTTP API.
//!
//! `serve` runs a node ([`serve`]); every other command is a client of a
//! node's HTTP API, pointed at it with `--url` (or `CONVERGE_URL`), printing
//! a human-readable form by default and JSON with `--json` ([`client`],
//! [`transfer`]). `store` works on a stopped node's data directory
//! ([`store`]).

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// `println!` for command output: writes a line to standard output through
/// [`client::print_line`], which treats a closed pipe (`| head`) as a quiet
/// exit 0, not a panic. Evaluates to a `Result`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::client::print_line(format_args!($($arg)*))
    };
}

mod client;
mod serve;
mod store;
mod transfer;

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
    /// Run a node: the embedded store in DATA, HTTP and sync on LISTEN.
    ///
    /// Settings come from flags, then environment variables, then the
    /// TOML file given with --config, then the defaults shown here.
    Serve(serve::ServeArgs),
    /// Read, edit, watch or list documents on a node.
    Doc {
        #[command(subcommand)]
        command: client::DocCommand,
        #[command(flatten)]
        target: client::Target,
    },
    /// Show a node's status: replica id, documents open, sync peers, and
    /// the cluster members it knows with their state and lag.
    Status {
        #[command(flatten)]
        target: client::Target,
    },
    /// Save documents from a node, with their whole history, to a file or a
    /// directory (see `converge import`).
    Export(transfer::ExportArgs),
    /// Merge documents saved by `converge export` into a node. Importing
    /// twice changes nothing.
    Import(transfer::ImportArgs),
    /// Offline tools for a node's data directory (the node stopped).
    Store {
        #[command(subcommand)]
        command: store::StoreCommand,
    },
}

fn main() -> Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Serve(args) => {
            let serve_matches = matches
                .subcommand_matches("serve")
                .ok_or_else(|| anyhow::anyhow!("the serve command's arguments are missing"))?;
            serve::run(args, serve_matches)
        }
        Command::Doc { command, target } => client::doc(&target, command),
        Command::Status { target } => client::status(&target),
        Command::Export(args) => transfer::export(args),
        Command::Import(args) => transfer::import(args),
        Command::Store { command } => store::run(command),
    }
}
