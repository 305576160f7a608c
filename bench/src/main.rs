//! `converge-bench`: converge measured side by side with peer crates.
//!
//! A plain harness (no criterion): every case runs several times on fresh
//! inputs built outside the timed region, and the median is reported as a
//! markdown table on stdout and as JSON in `target/bench/<suite>.json`.
//!
//! ```text
//! cargo run --release -p converge-bench -- crdt
//! ```

mod crdt;
mod harness;
mod store;

use std::process::ExitCode;

use converge_bench_alloc::CountingAlloc;

use crate::harness::Record;

/// The system allocator with a live-byte counter that stays off (one
/// relaxed load per call) in timed runs; only the memory pass, in its own
/// child process, turns it on.
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

/// Bytes currently allocated on the heap (requested sizes, excluding the
/// allocator's own per-block overhead). Only meaningful in the memory pass.
pub(crate) fn live_heap_bytes() -> isize {
    assert!(ALLOC.is_enabled(), "allocation counting is off");
    ALLOC.live_bytes()
}

/// Command-line options shared by every suite.
#[derive(Debug)]
pub(crate) struct Options {
    /// Counted runs per case (a warm-up run comes on top).
    pub(crate) runs: usize,
    /// Only run the suite's memory pass and print its records as JSON
    /// (used when the suite re-invokes itself in a child process).
    pub(crate) memory_only: bool,
    /// Only run cases whose name contains this (profiling one case).
    pub(crate) only: Option<String>,
}

impl Options {
    /// Whether the case named `case` is selected.
    pub(crate) fn wants(&self, case: &str) -> bool {
        self.only.as_deref().is_none_or(|o| case.contains(o))
    }
}

/// A benchmark suite: its name, a one-line description, and its entry point.
#[derive(Debug)]
struct Suite {
    name: &'static str,
    about: &'static str,
    run: fn(&Options) -> Result<(), String>,
}

/// Every suite, in the order `usage` lists them. `text`, `sync`
/// and `node` join here as their crates land.
const SUITES: &[Suite] = &[
    Suite {
        name: "crdt",
        about: "state-based CRDT merges, adds and memory vs crdts 7.3.2",
        run: run_crdt,
    },
    Suite {
        name: "store",
        about: "durable appends, scans, version vectors: RedbStore vs SQLite vs raw disk",
        run: store::run,
    },
];

const DEFAULT_RUNS: usize = 7;

fn usage() -> String {
    let mut s = String::from(
        "usage: converge-bench <SUITE> [--runs N] [--only SUBSTRING]\n\
         \n\
         Runs one benchmark suite in this process (build with --release), prints a\n\
         markdown table of medians and writes target/bench/<SUITE>.json.\n\
         \n\
         options:\n  \
           --runs N   counted runs per case (default 7, at least 5; one warm-up run on top)\n  \
           --only S   run only the cases whose name contains S (for profiling)\n  \
           -h, --help print this help\n\
         \n\
         suites:\n",
    );
    for suite in SUITES {
        s.push_str(&format!("  {:<8} {}\n", suite.name, suite.about));
    }
    s
}

/// Parses `args` (without the program name) into a suite and options.
fn parse(args: &[String]) -> Result<(&'static Suite, Options), String> {
    let mut suite = None;
    let mut opts = Options {
        runs: DEFAULT_RUNS,
        memory_only: false,
        only: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => {
                let n = it.next().ok_or("--runs needs a value")?;
                opts.runs = n
                    .parse()
                    .ok()
                    .filter(|n| *n >= 5)
                    .ok_or_else(|| format!("--runs: expected a number >= 5, got {n:?}"))?;
            }
            "--memory-only" => opts.memory_only = true,
            "--only" => opts.only = Some(it.next().ok_or("--only needs a value")?.clone()),
            a if a.starts_with('-') => return Err(format!("unknown option {a:?}")),
            name => {
                if suite.is_some() {
                    return Err(format!("more than one suite given ({name:?})"));
                }
                suite = Some(
                    SUITES
                        .iter()
                        .find(|s| s.name == name)
                        .ok_or_else(|| format!("unknown suite {name:?}"))?,
                );
            }
        }
    }
    let suite = suite.ok_or("no suite given")?;
    Ok((suite, opts))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let (suite, opts) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("error: {e}\n\n{}", usage());
            return ExitCode::from(2);
        }
    };
    if cfg!(debug_assertions) && !opts.memory_only {
        eprintln!("warning: debug build; timings are meaningless (use --release)");
    }
    match (suite.run)(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: suite {}: {e}", suite.name);
            ExitCode::FAILURE
        }
    }
}

/// Runs the memory pass in a child process (`<exe> <suite> --memory-only`),
/// so that its allocations and heap state never touch the timed runs, and
/// parses the records it prints.
fn memory_in_child(suite: &str) -> Result<Vec<Record>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let out = std::process::Command::new(exe)
        .args([suite, "--memory-only"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("memory pass: {e}"))?;
    if !out.status.success() {
        return Err(format!("memory pass exited with {}", out.status));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("memory pass output: {e}"))
}

fn run_crdt(opts: &Options) -> Result<(), String> {
    if opts.memory_only {
        ALLOC.enable();
        let records = crdt::memory_records();
        let json = serde_json::to_string(&records).map_err(|e| e.to_string())?;
        println!("{json}");
        return Ok(());
    }
    let memory = if opts.wants("orset-100k") {
        memory_in_child("crdt")?
    } else {
        Vec::new()
    };
    let records = crdt::run(opts, memory);
    println!(
        "## crdt: converge vs crdts 7.3.2 (median of {} runs; counters of 1000 replicas: {} runs)\n",
        opts.runs,
        opts.runs.max(51)
    );
    print!("{}", harness::markdown_table(&records, crdt::SUBJECTS));
    println!("\nratio < 1: converge is faster / smaller.");
    let path = harness::write_json("crdt", &records).map_err(|e| format!("writing JSON: {e}"))?;
    println!("wrote {}", path.display());
    for r in records.iter().filter(|r| r.error.is_some()) {
        eprintln!(
            "FAILED {} / {}: {}",
            r.case,
            r.subject,
            r.error.as_deref().unwrap_or_default()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_suite_and_options() {
        let (suite, opts) = parse(&args("crdt --runs 9")).unwrap();
        assert_eq!(suite.name, "crdt");
        assert_eq!(opts.runs, 9);
        assert!(!opts.memory_only);
    }

    #[test]
    fn rejects_unknown_suite_and_bad_runs() {
        assert!(parse(&args("nope")).unwrap_err().contains("unknown suite"));
        assert!(parse(&args("")).is_err());
        assert!(parse(&args("crdt --runs 2")).is_err());
        assert!(parse(&args("crdt --bogus")).is_err());
    }
}
