//! The measuring loop, results, and their output (markdown table + JSON).
//!
//! Every timed run gets fresh inputs built (or cloned) outside the timed
//! region; its output is checked and dropped outside it too. A subject whose
//! output fails the check is reported as failed, with no time.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Metric name for wall-clock time of one run, in milliseconds.
pub(crate) const MS: &str = "ms";

/// One measured figure: a (case, subject, metric) triple and its median.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Workload name, e.g. `orset-merge-100k`.
    pub(crate) case: String,
    /// The library measured, e.g. `converge` or `crdts`.
    pub(crate) subject: String,
    /// Unit of `median`: `ms` or `bytes_per_element`.
    pub(crate) metric: String,
    /// The median of `samples`; `None` when the subject failed.
    pub(crate) median: Option<f64>,
    /// Every counted sample, in run order (warm-up excluded).
    pub(crate) samples: Vec<f64>,
    /// Why the subject failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

impl Record {
    /// A record from the outcome of a measurement.
    pub(crate) fn new(
        case: &str,
        subject: &str,
        metric: &str,
        outcome: Result<Vec<f64>, String>,
    ) -> Self {
        let (median, samples, error) = match outcome {
            Ok(samples) => (Some(median(&samples)), samples, None),
            Err(e) => (None, Vec::new(), Some(e)),
        };
        Self {
            case: case.to_owned(),
            subject: subject.to_owned(),
            metric: metric.to_owned(),
            median,
            samples,
            error,
        }
    }
}

/// The median of `samples` (mean of the middle two for an even count).
pub(crate) fn median(samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    if s.len() % 2 == 1 {
        s[mid]
    } else {
        f64::midpoint(s[mid - 1], s[mid])
    }
}

/// Times `run` over `runs` fresh inputs (plus one uncounted warm-up run).
///
/// `setup` builds each run's input and `check` validates each run's output;
/// neither is timed, nor is dropping the output. Returns the samples in
/// milliseconds, or the first check failure.
pub(crate) fn time_runs<I, O>(
    runs: usize,
    mut setup: impl FnMut() -> I,
    mut run: impl FnMut(I) -> O,
    mut check: impl FnMut(&O) -> Result<(), String>,
) -> Result<Vec<f64>, String> {
    let mut samples = Vec::with_capacity(runs);
    for i in 0..=runs {
        let input = setup();
        let start = Instant::now();
        let output = black_box(run(black_box(input)));
        let ms = start.elapsed().as_secs_f64() * 1e3;
        check(&output)?;
        drop(output);
        if i > 0 {
            samples.push(ms);
        }
    }
    Ok(samples)
}

/// Checks a condition, describing the mismatch when it fails.
pub(crate) fn expect_eq<T: PartialEq + std::fmt::Debug>(
    what: &str,
    got: T,
    want: T,
) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, expected {want:?}"))
    }
}

/// Renders `records` as a markdown table with one row per (case, metric):
/// `case | <subject>… | ratio first/second`.
pub(crate) fn markdown_table(records: &[Record], subjects: [&str; 2]) -> String {
    let mut rows: Vec<(&str, &str)> = Vec::new();
    for r in records {
        if !rows.contains(&(r.case.as_str(), r.metric.as_str())) {
            rows.push((r.case.as_str(), r.metric.as_str()));
        }
    }
    let [a, b] = subjects;
    let mut out = String::new();
    let _ = writeln!(out, "| case | {a} | {b} | ratio {a}/{b} |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for (case, metric) in rows {
        let find = |s: &str| {
            records
                .iter()
                .find(|r| r.case == case && r.metric == metric && r.subject == s)
        };
        let (ra, rb) = (find(a), find(b));
        let cell = |r: Option<&Record>| match r {
            None => "–".to_owned(),
            Some(Record {
                median: Some(m), ..
            }) => format_value(*m, metric),
            Some(_) => "FAILED".to_owned(),
        };
        let ratio = match (ra.and_then(|r| r.median), rb.and_then(|r| r.median)) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
            _ => "–".to_owned(),
        };
        let label = if metric == MS {
            format!("{case} (ms)")
        } else {
            format!("{case} ({metric})")
        };
        let _ = writeln!(out, "| {label} | {} | {} | {ratio} |", cell(ra), cell(rb));
    }
    out
}

/// A one-subject table: one row per case (in first-seen order), one column
/// per metric in `metrics`; `–` where a case lacks the metric, `FAILED`
/// where its result failed the check.
pub(crate) fn metric_table(
    records: &[Record],
    metrics: &[&str],
    format: fn(f64, &str) -> String,
) -> String {
    let mut cases: Vec<&str> = Vec::new();
    for r in records {
        if !cases.contains(&r.case.as_str()) {
            cases.push(&r.case);
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "| case | {} |", metrics.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(metrics.len()));
    for case in cases {
        let cells: Vec<String> = metrics
            .iter()
            .map(
                |m| match records.iter().find(|r| r.case == case && r.metric == *m) {
                    None => "–".to_owned(),
                    Some(Record {
                        median: Some(v), ..
                    }) => format(*v, m),
                    Some(_) => "FAILED".to_owned(),
                },
            )
            .collect();
        let _ = writeln!(out, "| {case} | {} |", cells.join(" | "));
    }
    out
}

fn format_value(v: f64, metric: &str) -> String {
    if metric == MS {
        if v < 1.0 {
            format!("{v:.4}")
        } else {
            format!("{v:.2}")
        }
    } else {
        format!("{v:.1}")
    }
}

/// The workspace root (the parent of this crate's manifest directory).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Writes `{"suite": suite, "results": records}` to
/// `<workspace>/target/bench/<suite>.json`; returns the path.
pub(crate) fn write_json(suite: &str, records: &[Record]) -> std::io::Result<PathBuf> {
    #[derive(Serialize)]
    struct Output<'a> {
        suite: &'a str,
        results: &'a [Record],
    }
    let dir = workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{suite}.json"));
    let json = serde_json::to_string_pretty(&Output {
        suite,
        results: records,
    })
    .map_err(std::io::Error::other)?;
    std::fs::write(&path, json + "\n")?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn failed_check_is_reported_not_timed() {
        let out = time_runs(3, || 1, |x| x + 1, |&y| expect_eq("y", y, 3));
        assert_eq!(out, Err("y: got 2, expected 3".to_owned()));
    }

    #[test]
    fn table_has_ratio_and_failure_cells() {
        let recs = [
            Record::new("c", "converge", MS, Ok(vec![1.0, 2.0, 3.0])),
            Record::new("c", "crdts", MS, Ok(vec![4.0])),
            Record::new("d", "converge", MS, Err("bad".into())),
            Record::new("d", "crdts", MS, Ok(vec![4.0])),
        ];
        let t = markdown_table(&recs, ["converge", "crdts"]);
        assert!(t.contains("| c (ms) | 2.00 | 4.00 | 0.50 |"), "{t}");
        assert!(t.contains("| d (ms) | FAILED | 4.00 | – |"), "{t}");
    }
}
