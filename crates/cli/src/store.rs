//! `converge store`: offline tools for a node's data directory.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use converge_node::{Node, VerifyProgress};
use indicatif::{ProgressBar, ProgressStyle};

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
            let bar = std::io::stderr().is_terminal().then(|| {
                let bar = ProgressBar::new(0);
                if let Ok(style) = ProgressStyle::with_template(
                    "verifying [{bar:30}] {pos}/{len} entries and feed items ({elapsed}, {eta} left)",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar
            });
            let mut show = |p: VerifyProgress| {
                if let Some(bar) = &bar {
                    bar.set_length(p.entries_total.saturating_add(p.feed_items_total));
                    bar.set_position(p.entries.saturating_add(p.feed_items));
                }
            };
            let checked = Node::verify_data_dir(&data, &mut show);
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let report = checked?;
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
