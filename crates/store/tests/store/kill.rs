//! Crash safety with real processes: a child appends from several threads and
//! prints every acknowledged (object, replica, seq); the test kills it with
//! SIGKILL at random moments, reopens the store, and checks that every
//! acknowledged entry is present and intact, the logs contiguous, and that
//! appends still work. Then it starts the next child on the same file.
//!
//! The child is this same test binary, re-run with `--exact kill::child
//! --ignored` and the store path in `CONVERGE_KILL_CHILD_STORE`, so no extra
//! binary ships with the crate.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use converge_store::{ReadError, RedbStore, ReplicaId, Store};

use crate::util::{check_logs, entries, payload};

const CHILD_ENV: &str = "CONVERGE_KILL_CHILD_STORE";
const OBJECTS: [&str; 3] = ["alpha", "beta", "gamma"];
const THREADS: u64 = 4;

/// The child process: appends forever, printing `ACK object replica seq`
/// after each append returns. Does nothing unless started by the test below.
#[test]
#[ignore = "run by kill_9_never_loses_acknowledged_appends as a child process"]
fn child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = RedbStore::open(&path).expect("child: open the store");
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let store = &store;
            scope.spawn(move || {
                let object = OBJECTS[(t % OBJECTS.len() as u64) as usize];
                let replica = ReplicaId::from_u64(t + 1);
                let mut last = match store.version_vector(object) {
                    Ok(vv) => vv.get(replica),
                    Err(ReadError::UnknownObject { .. }) => 0,
                    Err(e) => panic!("child: version vector: {e}"),
                };
                let mut rng = fastrand::Rng::new();
                loop {
                    let n = rng.u64(1..=4);
                    let batch = entries(object, replica, last + 1..=last + n);
                    store
                        .append(object, replica, &batch)
                        .expect("child: append");
                    last += n;
                    // One write per line, so a kill cannot interleave two lines.
                    let line = format!("ACK {object} {} {last}\n", replica.as_u64());
                    std::io::stdout()
                        .lock()
                        .write_all(line.as_bytes())
                        .expect("child: print");
                }
            });
        }
    });
}

/// Highest acknowledged seq per (object, replica): a log is contiguous, so
/// everything up to it was acknowledged too.
type Acked = BTreeMap<(String, u64), u64>;

fn parse_acks(output: &[u8], acked: &mut Acked) -> usize {
    let text = String::from_utf8_lossy(output);
    // The last line may be cut off by the kill: only whole lines count.
    let whole = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    let mut count = 0;
    for line in whole.lines() {
        let mut words = line.split(' ');
        if words.next() != Some("ACK") {
            continue; // The test harness's own output.
        }
        let (Some(object), Some(replica), Some(seq)) = (words.next(), words.next(), words.next())
        else {
            panic!("malformed ack line {line:?}");
        };
        let replica: u64 = replica.parse().expect("ack replica");
        let seq: u64 = seq.parse().expect("ack seq");
        let slot = acked.entry((object.to_owned(), replica)).or_default();
        assert!(seq > *slot, "acks of {object}/{replica} went backwards");
        *slot = seq;
        count += 1;
    }
    count
}

#[test]
fn kill_9_never_loses_acknowledged_appends() {
    let rounds: u32 = std::env::var("CONVERGE_KILL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let exe = std::env::current_exe().unwrap();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut acked = Acked::new();
    let mut total_acks = 0;
    let started = Instant::now();
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "kill::child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child");
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut output = Vec::new();
            // Reads until the child dies and the pipe closes.
            let _ = stdout.read_to_end(&mut output);
            output
        });
        std::thread::sleep(Duration::from_millis(rng.u64(20..120)));
        child.kill().expect("SIGKILL the child");
        let status = child.wait().unwrap();
        // Killed by us, not dead of its own (a panic would exit with 101).
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: the child died of something else: {status}"
        );
        let output = reader.join().unwrap();
        total_acks += parse_acks(&output, &mut acked);

        let store = RedbStore::open(&path)
            .unwrap_or_else(|e| panic!("round {round}: reopening after kill -9 failed: {e}"));
        for ((object, replica), seq) in &acked {
            let held = store
                .version_vector(object)
                .unwrap_or_else(|e| panic!("round {round}: {object}: {e}"))
                .get(ReplicaId::from_u64(*replica));
            assert!(
                held >= *seq,
                "round {round}: {object}/{replica} was acknowledged up to {seq}, holds {held}"
            );
        }
        store
            .verify()
            .unwrap_or_else(|e| panic!("round {round}: verify after kill -9: {e}"));
        for object in OBJECTS {
            if store.version_vector(object).is_err() {
                continue;
            }
            let vv = check_logs(&store, object);
            // New appends work after the crash.
            let parent = ReplicaId::from_u64(1000);
            let next = vv.get(parent) + 1;
            store
                .append(object, parent, &entries(object, parent, next..=next))
                .unwrap_or_else(|e| panic!("round {round}: append after restart: {e}"));
            assert_eq!(
                store.read(object, parent, next, 1).unwrap()[0].bytes,
                payload(object, parent, next)
            );
        }
    }
    eprintln!(
        "{rounds} kills, {total_acks} acknowledged appends, {:?}",
        started.elapsed()
    );
    assert!(
        total_acks > rounds as usize,
        "too few acknowledged appends ({total_acks}) for the kills to mean anything"
    );
}
