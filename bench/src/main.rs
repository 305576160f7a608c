//! `converge-bench`: converge measured side by side with peer crates.
//!
//! A plain harness (no criterion): every case runs several times on fresh
//! inputs built outside the timed region, and the median is reported as a
//! markdown table on stdout and as JSON in `target/bench/<suite>.json`.
//!
//! ```text
//! cargo run --release -p converge-bench -- crdt
//! cargo run --release -p converge-bench -- text [TRACE.json.gz ...]
//! cargo run --release -p converge-bench -- sync
//! cargo run --release -p converge-bench -- node
//! ```

mod crdt;
mod harness;
mod node;
mod store;
mod sync;
mod text;
mod trace;

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

/// The highest [`live_heap_bytes`] since the last [`reset_peak_heap`].
pub(crate) fn peak_heap_bytes() -> isize {
    assert!(ALLOC.is_enabled(), "allocation counting is off");
    ALLOC.peak_bytes()
}

/// Restarts peak tracking from the current live bytes.
pub(crate) fn reset_peak_heap() {
    ALLOC.reset_peak();
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
    /// Only these subjects (empty: all).
    pub(crate) subjects: Vec<String>,
    /// Only these metrics (empty: all).
    pub(crate) metrics: Vec<String>,
    /// Time limit of one run (suites with long runs).
    pub(crate) limit: std::time::Duration,
    /// Input files (the `text` suite's traces).
    pub(crate) inputs: Vec<std::path::PathBuf>,
}

impl Options {
    /// Whether the case named `case` is selected.
    pub(crate) fn wants(&self, case: &str) -> bool {
        self.only.as_deref().is_none_or(|o| case.contains(o))
    }

    /// Whether `subject` is selected.
    pub(crate) fn wants_subject(&self, subject: &str) -> bool {
        self.subjects.is_empty() || self.subjects.iter().any(|s| s == subject)
    }

    /// Whether `metric` is selected.
    pub(crate) fn wants_metric(&self, metric: &str) -> bool {
        self.metrics.is_empty() || self.metrics.iter().any(|m| m == metric)
    }

    /// The defaults.
    fn new() -> Self {
        Self {
            runs: DEFAULT_RUNS,
            memory_only: false,
            only: None,
            subjects: Vec::new(),
            metrics: Vec::new(),
            limit: std::time::Duration::from_secs(DEFAULT_LIMIT_SECS),
            inputs: Vec::new(),
        }
    }

    /// Defaults with one run per case, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self {
            runs: 1,
            ..Self::new()
        }
    }
}

/// A benchmark suite: its name, a one-line description, and its entry point.
#[derive(Debug)]
struct Suite {
    name: &'static str,
    about: &'static str,
    run: fn(&Options) -> Result<(), String>,
}

/// Every suite, in the order `usage` lists them.
const SUITES: &[Suite] = &[
    Suite {
        name: "crdt",
        about: "state-based CRDT merges, adds and memory vs crdts 7.3.2",
        run: run_crdt,
    },
    Suite {
        name: "text",
        about: "editing traces vs automerge, yrs, loro, diamond-types and a rope",
        run: run_text,
    },
    Suite {
        name: "store",
        about: "durable appends, scans, version vectors: RedbStore vs SQLite vs raw disk",
        run: store::run,
    },
    Suite {
        name: "sync",
        about: "sync protocol in memory: catch-up overhead, steady-state cost, convergence",
        run: sync::run,
    },
    Suite {
        name: "node",
        about: "converge serve on loopback: HTTP and sync writes/s, propagation, idle sessions",
        run: node::run,
    },
];

const DEFAULT_RUNS: usize = 7;
const DEFAULT_LIMIT_SECS: u64 = 60;

fn usage() -> String {
    let mut s = String::from(
        "usage: converge-bench <SUITE> [options] [FILE ...]\n\
         \n\
         Runs one benchmark suite in this process (build with --release), prints a\n\
         markdown table of medians and writes target/bench/<SUITE>.json.\n\
         FILEs: the text suite's traces (default: ../shared/traces/{sequential,concurrent}/*.json.gz).\n\
         \n\
         options:\n  \
           --runs N        counted runs per case (default 7, at least 5; one warm-up run on top)\n  \
           --only S        run only the cases whose name contains S (for profiling)\n  \
           --subject NAME  text: only this subject (repeatable)\n  \
           --metric NAME   text: only this metric (repeatable), e.g. apply_ms\n  \
           --limit SECS    text: time limit of one run (default 60)\n  \
           -h, --help      print this help\n\
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
    let mut suite: Option<&'static Suite> = None;
    let mut opts = Options::new();
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
            "--subject" => opts
                .subjects
                .push(it.next().ok_or("--subject needs a value")?.clone()),
            "--metric" => opts
                .metrics
                .push(it.next().ok_or("--metric needs a value")?.clone()),
            "--limit" => {
                let n = it.next().ok_or("--limit needs a value")?;
                let secs: u64 = n
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--limit: expected seconds > 0, got {n:?}"))?;
                opts.limit = std::time::Duration::from_secs(secs);
            }
            a if a.starts_with('-') => return Err(format!("unknown option {a:?}")),
            name => {
                if let Some(s) = suite {
                    if s.name == "text" {
                        opts.inputs.push(name.into());
                        continue;
                    }
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

/// Runs the text suite's memory pass in one child process per subject
/// (`<exe> text --memory-only --subject S [traces]`).
fn text_memory_in_children(opts: &Options) -> Result<Vec<Record>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut out = Vec::new();
    for subject in text::SUBJECTS.iter().filter(|s| opts.wants_subject(s)) {
        eprintln!("memory pass: {subject} ...");
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["text", "--memory-only", "--subject", subject]);
        if let Some(only) = &opts.only {
            cmd.args(["--only", only]);
        }
        cmd.args(&opts.inputs);
        let child = cmd
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("memory pass: {e}"))?;
        if !child.status.success() {
            return Err(format!(
                "memory pass of {subject} exited with {}",
                child.status
            ));
        }
        let records: Vec<Record> = serde_json::from_slice(&child.stdout)
            .map_err(|e| format!("memory pass output: {e}"))?;
        out.extend(records);
    }
    Ok(out)
}

fn run_text(opts: &Options) -> Result<(), String> {
    let traces = text::load_traces(opts)?;
    if opts.memory_only {
        let [subject] = opts.subjects.as_slice() else {
            return Err("--memory-only needs exactly one --subject".into());
        };
        ALLOC.enable();
        let records = text::memory_records(subject, &traces)?;
        let json = serde_json::to_string(&records).map_err(|e| e.to_string())?;
        println!("{json}");
        return Ok(());
    }
    let mut records = text::run(opts, &traces);
    if opts.wants_metric(text::PEAK_BYTES) || opts.wants_metric(text::HEAP_BYTES) {
        records.extend(text_memory_in_children(opts)?);
    }
    println!(
        "## text: converge vs automerge 0.12.0, yrs 0.28.1, loro 1.17.1, diamond-types 1.0.0 \
         (median of {} runs; time limit {} s per run)\n",
        opts.runs,
        opts.limit.as_secs()
    );
    print!("{}", text::markdown_tables(&records));
    let path = harness::write_json("text", &records).map_err(|e| format!("writing JSON: {e}"))?;
    println!("wrote {}", path.display());
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
        assert!(parse(&args("crdt a.json.gz")).is_err());
    }

    #[test]
    fn text_takes_traces_and_filters() {
        let (suite, opts) =
            parse(&args("text a.json.gz --subject yrs --limit 5 b.json.gz")).unwrap();
        assert_eq!(suite.name, "text");
        assert_eq!(opts.inputs.len(), 2);
        assert!(opts.wants_subject("yrs") && !opts.wants_subject("loro"));
        assert_eq!(opts.limit.as_secs(), 5);
    }
}
