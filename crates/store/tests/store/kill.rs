//! Crash safety with real processes: a child appends from several threads and
//! prints every acknowledged (object, replica, seq); the test kills it with
//! SIGKILL at random moments, reopens the store, and checks that every
//! acknowledged entry is present and intact, the logs contiguous, and that
//! appends still work. Then it starts the next child on the same file.
//!
//! The child is this same test binary, re-run with `--exact kill::child
//! --ignored` and the store path in `CONVERGE_KILL_CHILD_STORE`, so no extra
//! binary ships with the crate.
//!
//! One more child thread stores through `append_many`, several objects per
//! call, and prints `REQ object replica first last` before each call: after
//! the kill, no log of those objects may end inside a request of that round.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use converge_store::{AppendRequest, ReadError, RedbStore, ReplicaId, Store};

use crate::util::{check_logs, entries, payload};

const CHILD_ENV: &str = "CONVERGE_KILL_CHILD_STORE";
const OBJECTS: [&str; 3] = ["alpha", "beta", "gamma"];
const THREADS: u64 = 4;
/// The objects of the `append_many` thread, and its replica.
const MANY: [&str; 4] = ["many-0", "many-1", "many-2", "many-3"];
const MANY_REPLICA: u64 = 50;

/// Prints one line with one write, so a kill cannot interleave two lines.
fn print_line(line: &str) {
    std::io::stdout()
        .lock()
        .write_all(line.as_bytes())
        .expect("child: print");
}

/// The child's `append_many` thread: calls of 1 to 5 requests over
/// [`MANY`], 1 to 3 entries each.
fn append_many_forever(store: &RedbStore) {
    let replica = ReplicaId::from_u64(MANY_REPLICA);
    let mut last: Vec<u64> = MANY
        .iter()
        .map(|o| match store.version_vector(o) {
            Ok(vv) => vv.get(replica),
            Err(ReadError::UnknownObject { .. }) => 0,
            Err(e) => panic!("child: version vector: {e}"),
        })
        .collect();
    let mut rng = fastrand::Rng::new();
    loop {
        let mut planned = Vec::new();
        for _ in 0..rng.usize(1..=5) {
            let o = rng.usize(..MANY.len());
            let n = rng.u64(1..=3);
            let first = last[o] + 1;
            last[o] += n;
            planned.push((MANY[o], entries(MANY[o], replica, first..=last[o])));
        }
        let mut lines = String::new();
        for (object, batch) in &planned {
            let (first, end) = (batch[0].seq, batch[batch.len() - 1].seq);
            lines.push_str(&format!("REQ {object} {MANY_REPLICA} {first} {end}\n"));
        }
        print_line(&lines);
        let requests: Vec<AppendRequest<'_>> = planned
            .iter()
            .map(|(object, batch)| AppendRequest::new(object, replica, batch))
            .collect();
        let mut acks = String::new();
        for ((object, batch), result) in planned.iter().zip(store.append_many(&requests)) {
            result.expect("child: append_many");
            let end = batch[batch.len() - 1].seq;
            acks.push_str(&format!("ACK {object} {MANY_REPLICA} {end}\n"));
        }
        print_line(&acks);
    }
}

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
        scope.spawn(|| append_many_forever(&store));
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
                    print_line(&format!("ACK {object} {} {last}\n", replica.as_u64()));
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

/// The `append_many` requests a child submitted: (object, replica, first, last).
fn parse_requests(output: &[u8]) -> Vec<(String, u64, u64, u64)> {
    let text = String::from_utf8_lossy(output);
    let whole = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    whole
        .lines()
        .filter_map(|line| {
            let mut words = line.split(' ');
            if words.next() != Some("REQ") {
                return None;
            }
            let object = words.next()?.to_owned();
            let mut number = || words.next()?.parse::<u64>().ok();
            Some((object, number()?, number()?, number()?))
        })
        .collect()
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
    let mut total_requests = 0;
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
        let requests = parse_requests(&output);
        total_requests += requests.len();

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
        // Each `append_many` request is wholly there or wholly gone.
        for (object, replica, first, last) in &requests {
            let held = store
                .version_vector(object)
                .map_or(0, |vv| vv.get(ReplicaId::from_u64(*replica)));
            assert!(
                held < *first || held >= *last,
                "round {round}: {object} holds seq {held}, inside the request {first}..={last}"
            );
        }
        store
            .verify()
            .unwrap_or_else(|e| panic!("round {round}: verify after kill -9: {e}"));
        for object in OBJECTS.iter().chain(&MANY) {
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
        "{rounds} kills, {total_acks} acknowledged appends, {total_requests} append_many \
         requests submitted, {:?}",
        started.elapsed()
    );
    assert!(
        total_requests > rounds as usize,
        "too few append_many requests ({total_requests}) for the kills to mean anything"
    );
    assert!(
        total_acks > rounds as usize,
        "too few acknowledged appends ({total_acks}) for the kills to mean anything"
    );
}
