//! `converge store verify` on real data directories: a healthy store, one a
//! running node holds, a directory without a store, and a damaged record.

mod common;
use common::{Server, post};

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn verify(data: &Path, json: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
    cmd.args(["store", "verify", "--data"]).arg(data);
    if json {
        cmd.arg("--json");
    }
    cmd.env_remove("CONVERGE_DATA")
        .output()
        .expect("run converge store verify")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that the command failed with status 1 and said all of `says`.
fn assert_refused(out: &Output, says: &[&str]) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    for s in says {
        assert!(stderr.contains(s), "no {s:?} in stderr: {stderr}");
    }
}

/// Runs a node on `data`, writes a document holding `marker`, and stops the
/// node cleanly (its store is then closed and checkpointed).
fn node_with_a_document(data: &Path, marker: &str) {
    let s = Server::start(data, &[]);
    let body = format!(r#"[{{"op":"set","path":["note"],"value":"{marker}"}}]"#);
    let (status, answer) = post(&s, "/v1/docs/notes/changes", &body);
    assert_eq!(status, 200, "{answer}");
    assert!(s.terminate().success());
}

#[test]
fn a_healthy_store_verifies_and_reports_what_it_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    node_with_a_document(dir.path(), "healthy");
    let out = verify(dir.path(), true);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["ok"], true);
    // The document, plus the node's own membership entry.
    assert!(
        report["objects"].as_u64().is_some_and(|n| n >= 2),
        "{report}"
    );
    assert!(
        report["entries"].as_u64().is_some_and(|n| n >= 2),
        "{report}"
    );
    assert!(
        report["feed_items"].as_u64().is_some_and(|n| n >= 2),
        "{report}"
    );

    let out = verify(dir.path(), false);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains(": ok"), "{}", text(&out.stdout));
}

#[test]
fn a_store_in_use_or_missing_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &[]);
    assert_refused(
        &verify(dir.path(), false),
        &["already open in another process"],
    );
    assert!(s.terminate().success());

    let empty = tempfile::tempdir().expect("tempdir");
    assert_refused(&verify(empty.path(), false), &["holds no store"]);
    let left: Vec<_> = std::fs::read_dir(empty.path()).expect("read dir").collect();
    assert!(left.is_empty(), "verify created {left:?}");
}

#[test]
fn a_damaged_record_fails_verification() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = "Zq8vXw3Lp0rT";
    node_with_a_document(dir.path(), marker);
    let path = dir.path().join("store.redb");
    let mut bytes = std::fs::read(&path).expect("read store");
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .expect("the document's bytes are in the store file");
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write store");
    let shown = dir.path().display().to_string();
    assert_refused(
        &verify(dir.path(), false),
        &[&shown, "corrupt", "fails its checksum"],
    );
}
