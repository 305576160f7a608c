//! `converge store`: offline tools for a node's data directory.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use converge_node::Node;

/// What `converge store` can do.
#[derive(Subcommand)]
pub(crate) enum StoreCommand {
    /// Check every record of the store in a data directory (checksums, logs
    /// contiguous, heads, change feed, snapshots, tombstones). Run it with
    /// the node stopped, after a suspected disk problem; it reads the whole
    /// store. Exits with status 1 if anything is wrong.
    Verify {
        /// Data directory of the node [env: CONVERGE_DATA].
        #[arg(long, env = "CONVERGE_DATA", default_value = "converge-data")]
        data: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `converge store` command.
pub(crate) fn run(command: StoreCommand) -> Result<()> {
    match command {
        StoreCommand::Verify { data, json } => {
            let report = Node::verify_data_dir(&data)?;
            if json {
                let value = serde_json::json!({
                    "ok": true,
                    "objects": report.objects,
                    "logs": report.logs,
                    "entries": report.entries,
                    "feed_items": report.feed_items,
                    "snapshots": report.snapshots,
                    "tombstones": report.tombstones,
                });
                outln!("{value}")?;
            } else {
                outln!("store in {}: ok", data.display())?;
                outln!(
                    "  {} objects, {} logs, {} entries, {} change feed items, {} snapshots, {} tombstones",
                    report.objects,
                    report.logs,
                    report.entries,
                    report.feed_items,
                    report.snapshots,
                    report.tombstones
                )?;
            }
            Ok(())
        }
    }
}
