//! The `text` suite: converge's collaborative text against automerge, yrs,
//! loro and diamond-types, and a plain rope as the floor, replaying editing
//! traces. Every workload is written once, generic over [`Subject`].

mod subjects;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use subjects::{
    Automerge, Converge, DNF, DiamondTypes, Floor, Loro, NOT_IMPLEMENTED, Subject, Yrs,
    far_deadline,
};

use crate::harness::Record;
use crate::trace::{self, Trace, Txn};
use crate::{Options, live_heap_bytes, peak_heap_bytes, reset_peak_heap};

/// The subjects, in table order.
pub(crate) const SUBJECTS: [&str; 6] = [
    "converge",
    "automerge",
    "yrs",
    "loro",
    "diamond-types",
    "floor",
];
/// The subjects converge is compared with (`ratio` = converge / best of these).
const PEERS: [&str; 4] = ["automerge", "yrs", "loro", "diamond-types"];

/// Metrics, in table order.
pub(crate) const APPLY_MS: &str = "apply_ms";
pub(crate) const APPLY_BATCH_MS: &str = "apply_batch_ms";
pub(crate) const ENCODED_BYTES: &str = "encoded_bytes";
pub(crate) const ENCODE_MS: &str = "encode_ms";
pub(crate) const LOAD_MS: &str = "load_ms";
pub(crate) const MERGE_MS: &str = "merge_ms";
pub(crate) const PEAK_BYTES: &str = "peak_bytes";
pub(crate) const HEAP_BYTES: &str = "heap_bytes";
pub(crate) const RECV_EACH_MS: &str = "recv_each_ms";
pub(crate) const RECV_BATCH_MS: &str = "recv_batch_ms";
const METRICS: [&str; 10] = [
    APPLY_MS,
    APPLY_BATCH_MS,
    ENCODED_BYTES,
    ENCODE_MS,
    LOAD_MS,
    MERGE_MS,
    PEAK_BYTES,
    HEAP_BYTES,
    RECV_EACH_MS,
    RECV_BATCH_MS,
];

/// Sizes of the synthetic `roots-N` cases: N replicas each typing one
/// character into the empty text, all concurrently (no common ancestor but
/// the empty version). A worst case for merging: every change conflicts
/// with every other.
const ROOTS: [usize; 2] = [1_000, 10_000];

/// A run longer than this is slow: it counts (no separate warm-up) and
/// only [`SLOW_RUNS`] runs are made (one if it took over twice this).
const SLOW: Duration = Duration::from_secs(10);
const SLOW_RUNS: usize = 3;

/// The default traces: every `*.json.gz` under `../shared/traces/sequential`
/// and `../shared/traces/concurrent`, relative to the workspace root.
pub(crate) fn default_traces() -> Result<Vec<PathBuf>, String> {
    let root = crate::harness::workspace_root().join("../shared/traces");
    let mut out = Vec::new();
    for dir in ["sequential", "concurrent"] {
        let dir = root.join(dir);
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".json.gz"))
            .collect();
        files.sort();
        out.extend(files);
    }
    if out.is_empty() {
        return Err(format!("no *.json.gz traces under {}", root.display()));
    }
    Ok(out)
}

/// How runs are made.
#[derive(Debug, Clone, Copy)]
struct Plan {
    runs: usize,
    limit: Duration,
}

/// Times `run` on fresh inputs from `setup`: one uncounted warm-up, then
/// `plan.runs` counted runs (see [`SLOW`] for slow subjects). `run` gets the
/// run's deadline; a run past `plan.limit` fails the measurement with a
/// [`DNF`] error. `check` validates and drops each output, untimed.
fn measure<I, O>(
    plan: Plan,
    mut setup: impl FnMut() -> Result<I, String>,
    mut run: impl FnMut(I, Instant) -> Result<O, String>,
    mut check: impl FnMut(O) -> Result<(), String>,
) -> Result<Vec<f64>, String> {
    let dnf = || format!("{DNF} in {} s", plan.limit.as_secs());
    let mut samples = Vec::new();
    let mut want = plan.runs;
    for i in 0.. {
        let input = setup()?;
        let start = Instant::now();
        let output = black_box(run(black_box(input), start + plan.limit));
        let took = start.elapsed();
        let output = output.map_err(|e| if e.starts_with(DNF) { dnf() } else { e })?;
        if took > plan.limit {
            return Err(dnf());
        }
        check(output)?;
        let ms = took.as_secs_f64() * 1e3;
        if i == 0 && took > SLOW {
            want = if took > 2 * SLOW { 1 } else { SLOW_RUNS };
            samples.push(ms);
        } else if i > 0 {
            samples.push(ms);
        }
        if samples.len() >= want {
            break;
        }
    }
    Ok(samples)
}

fn expect_text(what: &str, got: &str, want: &str) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let at = got
        .chars()
        .zip(want.chars())
        .take_while(|(a, b)| a == b)
        .count();
    Err(format!(
        "{what}: text differs from endContent at char {at} (length {} vs {})",
        got.chars().count(),
        want.chars().count()
    ))
}

/// Replays a sequential trace into a new document (untimed preparation).
fn replay<S: Subject>(trace: &Trace, batch: bool) -> Result<S, String> {
    let mut doc = S::new(1);
    doc.apply_txns(&trace.txns, batch, far_deadline())?;
    expect_text("replay", &doc.text(), &trace.end)?;
    Ok(doc)
}

/// Builds the full history of a concurrent trace on one replica: each agent
/// edits its own replica, which first merges exactly the transactions the
/// trace says it had seen; a collector replica receives every transaction.
fn replay_concurrent<S: Subject>(trace: &Trace) -> Result<S, String> {
    let txns = &trace.txns;
    let mut base = S::new(1);
    let mut next_replica = 2;
    let mut collector = base.fork(next_replica)?;
    next_replica += 1;
    struct Agent<S> {
        doc: S,
        applied: Vec<bool>,
        heads: Vec<usize>,
    }
    let mut agents: Vec<Option<Agent<S>>> = Vec::new();
    let mut updates: Vec<S::Update> = Vec::with_capacity(txns.len());
    let mut mark = vec![0usize; txns.len()];
    for (i, txn) in txns.iter().enumerate() {
        if agents.len() <= txn.agent {
            agents.resize_with(txn.agent + 1, || None);
        }
        if agents[txn.agent].is_none() {
            agents[txn.agent] = Some(Agent {
                doc: base.fork(next_replica)?,
                applied: vec![false; txns.len()],
                heads: Vec::new(),
            });
            next_replica += 1;
        }
        let agent = agents[txn.agent].as_mut().expect("just set");
        // The ancestors of `txn` this replica lacks, found by walking back
        // from its parents and stopping at transactions already applied.
        let stamp = i + 1;
        let (mut missing, mut reached_heads) = (Vec::new(), 0);
        let mut stack = txn.parents.clone();
        while let Some(t) = stack.pop() {
            if mark[t] == stamp {
                continue;
            }
            mark[t] = stamp;
            if agent.applied[t] {
                reached_heads += usize::from(agent.heads.contains(&t));
            } else {
                missing.push(t);
                stack.extend(&txns[t].parents);
            }
        }
        if reached_heads < agent.heads.len() {
            // The replica has seen something this transaction has not: start
            // a new replica (under a new id) at exactly the parents' version.
            *agent = Agent {
                doc: base.fork(next_replica)?,
                applied: vec![false; txns.len()],
                heads: Vec::new(),
            };
            next_replica += 1;
            all_ancestors(txns, &txn.parents, &mut missing);
        }
        missing.sort_unstable();
        for t in missing {
            agent.doc.apply_update(S::prepare(&updates[t]))?;
            agent.applied[t] = true;
            agent.heads.retain(|h| !txns[t].parents.contains(h));
            agent.heads.push(t);
        }
        let mut txn = txn.clone();
        if !trace.ascii {
            trace::byte_positions(&agent.doc.text(), &mut txn.patches)?;
        }
        let update = agent
            .doc
            .local_txn(&txn)
            .map_err(|e| format!("txn {i}: {e}"))?;
        agent.applied[i] = true;
        agent.heads.retain(|h| !txn.parents.contains(h));
        agent.heads.push(i);
        collector.apply_update(S::prepare(&update))?;
        updates.push(update);
    }
    expect_text("concurrent replay", &collector.text(), &trace.end)?;
    Ok(collector)
}

/// Every ancestor of `parents` (inclusive), into `out`.
fn all_ancestors(txns: &[Txn], parents: &[usize], out: &mut Vec<usize>) {
    out.clear();
    let mut seen = HashSet::new();
    let mut stack = parents.to_vec();
    while let Some(t) = stack.pop() {
        if seen.insert(t) {
            out.push(t);
            stack.extend(&txns[t].parents);
        }
    }
}

/// Every workload of one trace for subject `S`.
fn trace_cases<S: Subject>(
    trace: &Trace,
    plan: Plan,
    opts: &Options,
    out: &mut Vec<Record>,
) -> Result<(), String> {
    let case = trace.name.as_str();
    let record = |metric: &str, outcome| Record::new(case, S::NAME, metric, outcome);
    let end = trace.end.as_str();

    // The document the encoding and load workloads start from.
    let built: Result<S, String> = if trace.concurrent {
        if S::CRDT {
            replay_concurrent(trace)
        } else {
            Err("no CRDT".into())
        }
    } else {
        for (metric, batch) in [(APPLY_MS, false), (APPLY_BATCH_MS, true)] {
            if opts.wants_metric(metric) {
                let outcome = measure(
                    plan,
                    || Ok(()),
                    |(), deadline| {
                        let mut doc = S::new(1);
                        doc.apply_txns(&trace.txns, batch, deadline)?;
                        Ok(doc)
                    },
                    |mut doc| expect_text(metric, &doc.text(), end),
                );
                out.push(record(metric, outcome));
            }
        }
        replay(trace, false)
    };
    if !S::CRDT {
        return Ok(());
    }
    let mut built = built?;

    // Encoding, with history: size, a cold encode, and decoding it until
    // the text can be read.
    if [ENCODED_BYTES, ENCODE_MS, LOAD_MS]
        .iter()
        .any(|m| opts.wants_metric(m))
    {
        match built.encode() {
            Err(e) => {
                for m in [ENCODED_BYTES, ENCODE_MS, LOAD_MS] {
                    out.push(record(m, Err(e.clone())));
                }
            }
            Ok(bytes) => {
                out.push(record(ENCODED_BYTES, Ok(vec![bytes.len() as f64])));
                let outcome = measure(
                    plan,
                    || match built.cold_copy() {
                        Some(copy) => Ok(copy),
                        None if trace.concurrent => replay_concurrent(trace),
                        None => replay(trace, false),
                    },
                    |mut doc: S, _| Ok((doc.encode()?, doc)),
                    |(b, _)| {
                        if b.len() == bytes.len() {
                            Ok(())
                        } else {
                            Err(format!("encoding size {} then {}", bytes.len(), b.len()))
                        }
                    },
                );
                out.push(record(ENCODE_MS, outcome));
                let outcome = measure(
                    plan,
                    || Ok(()),
                    |(), _| {
                        let mut doc = S::load(&bytes)?;
                        let text = doc.text();
                        Ok((doc, text))
                    },
                    |(_, text)| expect_text("load", &text, end),
                );
                out.push(record(LOAD_MS, outcome));
            }
        }
    }

    if opts.wants_metric(MERGE_MS) {
        let outcome = merge_case(trace, plan, &mut built);
        out.push(record(MERGE_MS, outcome));
    }
    Ok(())
}

/// `merge_ms`. Concurrent trace: a replica holding the whole history sends
/// it all to a new replica; sequential trace: replica A applies the first
/// half of the transactions, B copies A and applies the second half, and A
/// merges B's changes. Timed: applying the changes until the text can be
/// read.
fn merge_case<S: Subject>(trace: &Trace, plan: Plan, full: &mut S) -> Result<Vec<f64>, String> {
    let (mut receiver, update) = if trace.concurrent {
        let mut empty = S::empty(1);
        let v = empty.version()?;
        (empty, full.updates_since(&v)?)
    } else {
        let half = trace.txns.len() / 2;
        let mut a = S::new(1);
        a.apply_txns(&trace.txns[..half], false, far_deadline())?;
        let mut b = a.fork(2)?;
        b.apply_txns(&trace.txns[half..], false, far_deadline())?;
        let v = a.version()?;
        (a, b.updates_since(&v)?)
    };
    let mut replica = 10;
    measure(
        plan,
        || {
            replica += 1;
            Ok((receiver.fork(replica)?, S::prepare(&update)))
        },
        |(mut doc, update), _| {
            doc.apply_update(update)?;
            let text = doc.text();
            Ok((doc, text))
        },
        |(_, text)| expect_text("merge", &text, &trace.end),
    )
}

/// The `roots-N` workloads for subject `S`: a replica receiving the N
/// concurrent changes one update at a time (`recv_each_ms`, as a live
/// editor receives them), and a new replica receiving all of them as one
/// update (`recv_batch_ms`). Timed until the text can be read; checked: N
/// characters.
fn roots_cases<S: Subject>(n: usize, plan: Plan, opts: &Options, out: &mut Vec<Record>) {
    let case = format!("roots-{n}");
    let want = "x".repeat(n);
    let outcome = (|| -> Result<(Vec<f64>, Vec<f64>), String> {
        let mut base = S::new(1);
        let txn = Txn {
            agent: 0,
            parents: Vec::new(),
            patches: vec![trace::Patch {
                pos: 0,
                del: 0,
                ins: "x".into(),
                bpos: 0,
                bdel: 0,
            }],
        };
        let mut updates = Vec::with_capacity(n);
        for i in 0..n {
            let mut writer = base.fork(100 + i as u64)?;
            updates.push(writer.local_txn(&txn)?);
        }
        let mut replica = 10;
        let each = if opts.wants_metric(RECV_EACH_MS) {
            measure(
                plan,
                || {
                    replica += 1;
                    let prepared: Vec<S::Prepared> = updates.iter().map(S::prepare).collect();
                    Ok((base.fork(replica)?, prepared))
                },
                |(mut doc, prepared), deadline| {
                    for (i, u) in prepared.into_iter().enumerate() {
                        if i % 64 == 0 && Instant::now() > deadline {
                            return Err(DNF.into());
                        }
                        doc.apply_update(u)?;
                    }
                    let text = doc.text();
                    Ok((doc, text))
                },
                |(_, text)| expect_text("recv_each", &text, &want),
            )?
        } else {
            Vec::new()
        };
        let batch = if opts.wants_metric(RECV_BATCH_MS) {
            let mut all = base.fork(3)?;
            for u in &updates {
                all.apply_update(S::prepare(u))?;
            }
            let v = base.version()?;
            let update = all.updates_since(&v)?;
            measure(
                plan,
                || {
                    replica += 1;
                    Ok((base.fork(replica)?, S::prepare(&update)))
                },
                |(mut doc, update), _| {
                    doc.apply_update(update)?;
                    let text = doc.text();
                    Ok((doc, text))
                },
                |(_, text)| expect_text("recv_batch", &text, &want),
            )?
        } else {
            Vec::new()
        };
        Ok((each, batch))
    })();
    for (metric, pick) in [(RECV_EACH_MS, 0), (RECV_BATCH_MS, 1)] {
        if opts.wants_metric(metric) {
            let result = match &outcome {
                Ok((each, batch)) => Ok(if pick == 0 {
                    each.clone()
                } else {
                    batch.clone()
                }),
                Err(e) => Err(e.clone()),
            };
            out.push(Record::new(&case, S::NAME, metric, result));
        }
    }
}

/// Runs every workload for every selected subject on `trace`.
fn run_trace(trace: &Trace, plan: Plan, opts: &Options, out: &mut Vec<Record>) {
    fn one<S: Subject>(trace: &Trace, plan: Plan, opts: &Options, out: &mut Vec<Record>) {
        if !opts.wants_subject(S::NAME) {
            return;
        }
        eprintln!("  {} ...", S::NAME);
        let start = out.len();
        if let Err(e) = trace_cases::<S>(trace, plan, opts, out) {
            // Preparation failed: every remaining metric fails with it.
            for m in METRICS
                .iter()
                .filter(|m| **m != PEAK_BYTES && **m != HEAP_BYTES)
            {
                if opts.wants_metric(m)
                    && !out[start..].iter().any(|r| r.metric == *m)
                    && (!trace.concurrent || ![APPLY_MS, APPLY_BATCH_MS].contains(m))
                {
                    out.push(Record::new(&trace.name, S::NAME, m, Err(e.clone())));
                }
            }
        }
    }
    one::<Converge>(trace, plan, opts, out);
    one::<Automerge>(trace, plan, opts, out);
    one::<Yrs>(trace, plan, opts, out);
    one::<Loro>(trace, plan, opts, out);
    one::<DiamondTypes>(trace, plan, opts, out);
    one::<Floor>(trace, plan, opts, out);
}

/// Loads the traces named in `opts` (or the default ones).
pub(crate) fn load_traces(opts: &Options) -> Result<Vec<Trace>, String> {
    let paths = if opts.inputs.is_empty() {
        default_traces()?
    } else {
        opts.inputs.clone()
    };
    let traces = paths
        .iter()
        .map(|p| trace::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(traces.into_iter().filter(|t| opts.wants(&t.name)).collect())
}

/// The timed workloads of every trace.
pub(crate) fn run(opts: &Options, traces: &[Trace]) -> Vec<Record> {
    let plan = Plan {
        runs: opts.runs,
        limit: opts.limit,
    };
    let mut out = Vec::new();
    for trace in traces {
        eprintln!(
            "{}: {} transactions, {} patches{}",
            trace.name,
            trace.txns.len(),
            trace.patches(),
            if trace.concurrent { ", concurrent" } else { "" }
        );
        run_trace(trace, plan, opts, &mut out);
    }
    for n in ROOTS {
        if !opts.wants(&format!("roots-{n}"))
            || !(opts.wants_metric(RECV_EACH_MS) || opts.wants_metric(RECV_BATCH_MS))
        {
            continue;
        }
        eprintln!("roots-{n}: {n} concurrent one-character changes");
        if opts.wants_subject("converge") {
            roots_cases::<Converge>(n, plan, opts, &mut out);
        }
        if opts.wants_subject("automerge") {
            roots_cases::<Automerge>(n, plan, opts, &mut out);
        }
        if opts.wants_subject("yrs") {
            roots_cases::<Yrs>(n, plan, opts, &mut out);
        }
        if opts.wants_subject("loro") {
            roots_cases::<Loro>(n, plan, opts, &mut out);
        }
        if opts.wants_subject("diamond-types") {
            roots_cases::<DiamondTypes>(n, plan, opts, &mut out);
        }
    }
    out
}

/// The memory pass for one subject (run in its own process, with the
/// counting allocator on): live heap bytes at the peak of replaying each
/// sequential trace (commit per trace transaction), and after it.
pub(crate) fn memory_records(subject: &str, traces: &[Trace]) -> Result<Vec<Record>, String> {
    fn one<S: Subject>(traces: &[Trace]) -> Vec<Record> {
        let mut out = Vec::new();
        for trace in traces.iter().filter(|t| !t.concurrent) {
            let before = live_heap_bytes();
            reset_peak_heap();
            let outcome = replay::<S>(trace, false).map(|doc| {
                let peak = peak_heap_bytes() - before;
                let after = live_heap_bytes() - before;
                drop(black_box(doc));
                (peak, after)
            });
            let (peak, after) = match outcome {
                Ok((p, a)) => (Ok(vec![p as f64]), Ok(vec![a as f64])),
                Err(e) => (Err(e.clone()), Err(e)),
            };
            out.push(Record::new(&trace.name, S::NAME, PEAK_BYTES, peak));
            out.push(Record::new(&trace.name, S::NAME, HEAP_BYTES, after));
        }
        out
    }
    Ok(match subject {
        "converge" => one::<Converge>(traces),
        "automerge" => one::<Automerge>(traces),
        "yrs" => one::<Yrs>(traces),
        "loro" => one::<Loro>(traces),
        "diamond-types" => one::<DiamondTypes>(traces),
        "floor" => one::<Floor>(traces),
        other => return Err(format!("unknown subject {other:?}")),
    })
}

/// One markdown table per trace: a row per metric, a column per subject,
/// and converge / the best peer.
pub(crate) fn markdown_tables(records: &[Record]) -> String {
    let mut cases: Vec<&str> = Vec::new();
    for r in records {
        if !cases.contains(&r.case.as_str()) {
            cases.push(&r.case);
        }
    }
    let mut out = String::new();
    let mut notes: Vec<String> = Vec::new();
    for case in cases {
        let _ = writeln!(out, "### {case}\n");
        let _ = writeln!(
            out,
            "| metric | {} | converge / best peer |",
            SUBJECTS.join(" | ")
        );
        let _ = writeln!(out, "|---|{}---:|", "---:|".repeat(SUBJECTS.len()));
        for metric in METRICS {
            let find = |s: &str| {
                records
                    .iter()
                    .find(|r| r.case == case && r.metric == metric && r.subject == s)
            };
            if SUBJECTS.iter().all(|s| find(s).is_none()) {
                continue;
            }
            let mut row = format!("| {metric} |");
            for s in SUBJECTS {
                let cell = match find(s) {
                    None => "–".to_owned(),
                    Some(r) => match (&r.median, &r.error) {
                        (Some(m), _) => format_value(*m, metric, r.samples.len()),
                        (None, Some(e)) => {
                            let short = short_error(e);
                            if short == "FAILED" {
                                notes.push(format!("{case} / {s} / {metric}: {e}"));
                            }
                            short.to_owned()
                        }
                        (None, None) => "FAILED".to_owned(),
                    },
                };
                let _ = write!(row, " {cell} |");
            }
            let best = PEERS
                .iter()
                .filter_map(|s| find(s).and_then(|r| r.median).map(|m| (m, *s)))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            let ratio = match (find("converge").and_then(|r| r.median), best) {
                (Some(c), Some((b, who))) if b > 0.0 => format!("{:.2} ({who})", c / b),
                _ => "–".to_owned(),
            };
            let _ = writeln!(out, "{row} {ratio} |");
        }
        out.push('\n');
    }
    out.push_str(
        "DNF: did not finish within the time limit; n/i: not implemented; \
         `(n)`: median of n runs where fewer than the default.\n",
    );
    for n in notes {
        let _ = writeln!(out, "- FAILED {n}");
    }
    out
}

fn short_error(e: &str) -> &'static str {
    if e.starts_with(DNF) {
        "DNF"
    } else if e.starts_with(NOT_IMPLEMENTED) {
        "n/i"
    } else {
        "FAILED"
    }
}

fn format_value(v: f64, metric: &str, samples: usize) -> String {
    let runs = if metric.ends_with("_ms") && samples < 5 {
        format!(" ({samples})")
    } else {
        String::new()
    };
    if metric.ends_with("_bytes") {
        let n = v.round() as i64;
        let digits = n.abs().to_string();
        let mut s = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                s.push(',');
            }
            s.push(c);
        }
        if n < 0 {
            s.insert(0, '-');
        }
        s
    } else if v < 1.0 {
        format!("{v:.3}{runs}")
    } else if v < 100.0 {
        format!("{v:.2}{runs}")
    } else {
        format!("{v:.0}{runs}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Patch;

    fn p(pos: usize, del: usize, ins: &str) -> Patch {
        Patch {
            pos,
            del,
            ins: ins.into(),
            bpos: pos,
            bdel: del,
        }
    }

    /// Two agents typing concurrently, then one merging the other's work.
    fn small_concurrent() -> Trace {
        let txn = |agent, parents: &[usize], patches| Txn {
            agent,
            parents: parents.to_vec(),
            patches,
        };
        Trace {
            name: "small".into(),
            end: "hello big world!".into(),
            txns: vec![
                txn(0, &[], vec![p(0, 0, "hello world")]),
                txn(1, &[0], vec![p(11, 0, "!")]),
                txn(0, &[0], vec![p(6, 0, "big ")]),
                txn(1, &[1, 2], vec![]),
            ],
            concurrent: true,
            ascii: true,
        }
    }

    fn small_sequential() -> Trace {
        let txns = [
            vec![p(0, 0, "abc")],
            vec![p(1, 1, "xy"), p(0, 0, "é")],
            vec![p(4, 0, "!")],
            vec![p(0, 1, "")],
        ];
        Trace {
            name: "seq".into(),
            end: "axy!c".into(),
            txns: txns
                .into_iter()
                .enumerate()
                .map(|(i, patches)| Txn {
                    agent: 0,
                    parents: i.checked_sub(1).into_iter().collect(),
                    patches,
                })
                .collect(),
            concurrent: false,
            ascii: true,
        }
    }

    fn every_workload<S: Subject>() {
        let opts = Options::for_tests();
        let plan = Plan {
            runs: 1,
            limit: Duration::from_secs(60),
        };
        let mut seq = small_sequential();
        seq.ascii = false;
        // Byte positions of the sequential trace, as `trace::load` sets them.
        let mut s = String::new();
        for txn in &mut seq.txns {
            trace::byte_positions(&s, &mut txn.patches).unwrap();
            for q in &txn.patches {
                s.replace_range(q.bpos..q.bpos + q.bdel, &q.ins);
            }
        }
        for trace in [small_concurrent(), seq] {
            let mut out = Vec::new();
            trace_cases::<S>(&trace, plan, &opts, &mut out).unwrap();
            for r in &out {
                let ok = r.median.is_some() || r.error.as_deref() == Some(NOT_IMPLEMENTED);
                assert!(ok, "{} {} {}: {:?}", r.case, r.subject, r.metric, r.error);
            }
        }
    }

    #[test]
    fn every_subject_runs_every_workload() {
        every_workload::<Converge>();
        every_workload::<Automerge>();
        every_workload::<Yrs>();
        every_workload::<Loro>();
        every_workload::<DiamondTypes>();
        every_workload::<Floor>();
    }

    #[test]
    fn a_wrong_text_fails_the_subject() {
        let mut trace = small_sequential();
        trace.end = "nope".into();
        let mut out = Vec::new();
        let plan = Plan {
            runs: 1,
            limit: Duration::from_secs(60),
        };
        trace_cases::<Floor>(&trace, plan, &Options::for_tests(), &mut out).unwrap();
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out.iter().all(|r| r.median.is_none()), "{out:?}");
        let t = markdown_tables(&out);
        assert!(t.contains("FAILED"), "{t}");
    }

    #[test]
    fn values_are_formatted() {
        assert_eq!(format_value(1234567.0, ENCODED_BYTES, 1), "1,234,567");
        assert_eq!(format_value(12.345, APPLY_MS, 3), "12.35 (3)");
        assert_eq!(format_value(1234.5, APPLY_MS, 7), "1234");
    }
}
