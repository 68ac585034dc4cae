//! kill -9 while appending: a child process (this test binary, re-run with
//! `CAIRN_CRASH_CHILD` set) appends from several threads with sync `always`
//! and prints each acknowledged event; the parent kills it with SIGKILL at a
//! random moment, reopens the store and checks that every acknowledged event
//! is there with its exact id, seq and payload, that seqs are gapless, and
//! that `verify` finds nothing wrong. `CAIRN_CRASH_CYCLES` sets the number of
//! cycles (default 24; more under `CAIRN_SLOW_TESTS`). A second child loads
//! 96 MiB and is killed, and the open after it must replay only the log's
//! tail.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_store::{Batch, EventId, Expect, NewEvent, Options, Pattern, Query, Store, SyncMode};

use crate::topic;

const THREADS: usize = 4;

/// The child's body; does nothing unless run as the child.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("CAIRN_CRASH_CHILD") else { return };
    let options = Options { sync: SyncMode::Always, segment_bytes: 256 * 1024, ..Options::default() };
    let store = Store::open(&dir, options).unwrap();
    let stdout = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let store = store.clone();
            let stdout = stdout.clone();
            std::thread::spawn(move || {
                for n in 0.. {
                    let name = format!("crash.{thread}");
                    // Alternate single events, batches and large (content-store) payloads.
                    let size = if n % 17 == 0 { 6000 } else { 20 + n % 50 };
                    let payload = format!("{thread}:{n}:{}", "p".repeat(size));
                    let events = if n % 5 == 0 {
                        let batch = Batch {
                            events: vec![
                                NewEvent::new(topic(&name), payload.clone()),
                                NewEvent::new(topic(&name), format!("{payload}+")),
                            ],
                            ..Batch::default()
                        };
                        store.append_batch(batch).unwrap()
                    } else {
                        vec![store.append(NewEvent::new(topic(&name), payload), Expect::Any).unwrap()]
                    };
                    let mut out = stdout.lock().unwrap();
                    for event in events {
                        let payload = String::from_utf8(store.content(&event).unwrap().unwrap()).unwrap();
                        writeln!(out, "ACK {} {} {} {}", event.id, event.topic, event.seq, payload).unwrap();
                    }
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

fn cycles() -> usize {
    if let Ok(n) = std::env::var("CAIRN_CRASH_CYCLES") {
        return n.parse().expect("CAIRN_CRASH_CYCLES is a number");
    }
    if std::env::var_os("CAIRN_SLOW_TESTS").is_some() { 200 } else { 24 }
}

#[test]
fn kill_9_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: HashMap<EventId, (String, u64, String)> = HashMap::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    for cycle in 0..cycles() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let run_for = Duration::from_millis(30 + seed % 300);
        let mut child = Command::new(&exe)
            .args(["crash::crash_child", "--exact", "--nocapture", "--test-threads", "1"])
            .env("CAIRN_CRASH_CHILD", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = seen.clone();
        let reader = std::thread::spawn(move || {
            // Only whole lines count: the kill may cut the last one short.
            let mut lines = Vec::new();
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                if line.ends_with(b"\n") {
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    if let Some(rest) = text.strip_prefix("ACK ") {
                        lines.push(rest.to_owned());
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                line.clear();
            }
            lines
        });
        // The cycle's time, and some acknowledgements (a slow disk or a
        // slow start of the child must not leave the test with too few).
        let started = Instant::now();
        while started.elapsed() < run_for
            || (seen.load(std::sync::atomic::Ordering::Relaxed) < 5 && started.elapsed() < Duration::from_secs(10))
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        // SIGKILL: no destructor, no flush, mid-write.
        child.kill().unwrap();
        child.wait().unwrap();
        for line in reader.join().unwrap() {
            let mut parts = line.splitn(4, ' ');
            let id = EventId::parse(parts.next().unwrap()).unwrap();
            let topic = parts.next().unwrap().to_owned();
            let seq: u64 = parts.next().unwrap().parse().unwrap();
            let payload = parts.next().unwrap_or("").to_owned();
            acked.insert(id, (topic, seq, payload));
        }
        check(dir.path(), &acked, cycle);
    }
    assert!(acked.len() > 100, "the child acknowledged too little to prove anything: {}", acked.len());
}

fn check(dir: &std::path::Path, acked: &HashMap<EventId, (String, u64, String)>, cycle: usize) {
    let store = Store::open(dir, Options::default()).unwrap();
    for (id, (topic, seq, payload)) in acked {
        let event = store.get(*id).unwrap().unwrap_or_else(|| panic!("cycle {cycle}: acknowledged event {id} is lost"));
        assert_eq!((event.topic.as_str(), event.seq), (topic.as_str(), *seq), "cycle {cycle}: event {id}");
        let content = String::from_utf8(store.content(&event).unwrap().unwrap()).unwrap();
        assert_eq!(&content, payload, "cycle {cycle}: payload of {id}");
    }
    // Content by hash goes through the content references, which a crash
    // leaves to catch up behind the open (a lookup waits for them).
    for (id, (_, _, payload)) in acked.iter().filter(|(id, _)| id.to_bytes()[15] % 16 == 0) {
        let hash = cairn_store::Hash::of(payload.as_bytes());
        assert_eq!(store.cas_get(&hash).unwrap(), payload.as_bytes(), "cycle {cycle}: content of {id} by hash");
    }
    for thread in 0..THREADS {
        let name = format!("crash.{thread}");
        let seqs: Vec<u64> =
            store.read(&Query::new(Pattern::parse(&name).unwrap())).unwrap().map(|event| event.unwrap().seq).collect();
        assert!(seqs.iter().enumerate().all(|(i, s)| *s == i as u64), "cycle {cycle}: seqs of {name} have a gap");
    }
    let report = store.verify().unwrap();
    assert!(report.ok(), "cycle {cycle}: {:?}", report.problems);
}

/// The child of `overwrites_survive_kill_9_after_the_index_flushed`: one
/// state key overwritten with 64 KiB values (so fjall flushes its memtable
/// into tables every hundred or so), printing each acknowledged version.
#[test]
fn overwrite_child() {
    let Ok(dir) = std::env::var("CAIRN_OVERWRITE_CHILD") else { return };
    let store = Store::open(&dir, Options { sync: SyncMode::Always, ..Options::default() }).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let start: u64 = std::env::var("CAIRN_OVERWRITE_FROM").unwrap().parse().unwrap();
    let mut out = std::io::stdout();
    for version in start.. {
        let mut value = version.to_be_bytes().to_vec();
        value.resize(64 * 1024, b'v');
        let pending = store.state_write(vec![cairn_store::StateOp::Put(b"k".to_vec(), value)]).unwrap();
        runtime.block_on(pending).unwrap();
        writeln!(out, "ACK {version}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn overwrites_survive_kill_9_after_the_index_flushed() {
    // The index's own journal is dropped on open and the log replayed from
    // the checkpoint in fjall's tables; writes after such an open must win
    // over the older values the tables hold (with no journal file at all,
    // fjall kept its sequence numbers below its tables', so they lost).
    let dir = tempfile::tempdir().unwrap();
    let mut last = None;
    for cycle in 0..3 {
        let from = last.map_or(0, |version: u64| version + 1);
        let from_text = from.to_string();
        let (mut child, mut reader) = spawn_child(
            "crash::overwrite_child",
            &[("CAIRN_OVERWRITE_CHILD", dir.path().as_os_str()), ("CAIRN_OVERWRITE_FROM", from_text.as_ref())],
        );
        let mut line = String::new();
        // Past at least one flush of fjall's 8 MB memtable.
        let mut acked = None;
        while acked.is_none_or(|version| version < from + 300) {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0, "the child stopped");
            acked = line.trim().strip_prefix("ACK ").map(|version| version.parse::<u64>().unwrap()).or(acked);
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let store = Store::open(dir.path(), Options::default()).unwrap();
        let stored = store.state_scan(b"k").unwrap();
        let version = u64::from_be_bytes(stored[0].1[..8].try_into().unwrap());
        assert!(version >= acked.unwrap(), "cycle {cycle}: version {version} read back, {acked:?} acknowledged");
        last = Some(version);
    }
}

/// The child of the load test; does nothing unless run as the child. It
/// appends batches of 256 events of about 2 KiB (one record of about 512 KiB
/// each) and prints the count of batches acknowledged.
#[test]
fn load_child() {
    let Ok(dir) = std::env::var("CAIRN_LOAD_CHILD") else { return };
    let store = Store::open(&dir, Options { sync: SyncMode::None, ..Options::default() }).unwrap();
    let mut out = std::io::stdout();
    for batch in 0u64.. {
        let events =
            (0..256).map(|n| NewEvent::new(topic("load"), format!("{batch}:{n}:{}", "x".repeat(2000)))).collect();
        store.append_batch(Batch { events, ..Batch::default() }).unwrap();
        writeln!(out, "BATCH {batch}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn an_open_after_a_kill_during_a_load_replays_only_the_tail() {
    // Counted, not timed: the open replays the log after the index's
    // checkpoint. The index may lag 16 MiB (plus the batch that crossed
    // it), and is sealed every 8 MiB of log, the next seal waiting for the
    // last one's flush; so after 96 MiB of load the replay is a fraction of
    // the log however slowly fjall's worker flushes.
    const BATCHES: u64 = 192;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut reader) = spawn_child("crash::load_child", &[("CAIRN_LOAD_CHILD", dir.path().as_os_str())]);
    let mut line = String::new();
    let mut acked = 0;
    while acked < BATCHES {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the child stopped");
        acked = line.trim().strip_prefix("BATCH ").map_or(acked, |n| n.parse::<u64>().unwrap() + 1);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let report = store.recovery_report().clone();
    assert!(!report.clean_close && !report.rebuilt, "{report:?}");
    // Sync none: what the kill caught in the page cache is still there.
    let count = store.head(&topic("load")).unwrap().unwrap().count;
    assert!(count >= acked * 256, "{count} events, {acked} batches acknowledged");
    // Records of 512 KiB: 33 for the lag, 16 for the memtable being
    // filled, 16 for the one being flushed.
    assert!(report.records_replayed <= 65, "{} of {} records replayed", report.records_replayed, count / 256);
    drop(store);
}

/// Runs the test `name` of this binary as a child process with `env`; its
/// stdout to read line by line.
fn spawn_child(
    name: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}
