//! Compaction through a real server: killed at each of its steps while
//! writers run, nothing acknowledged is lost and one generation of each
//! segment is left; a retention topic stays within a bounded disk; `cairn
//! compact` and `POST /v1/compact` are for administrators.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Cairn;
use crate::serve::{Server, call};

/// Log files by segment number: each must have exactly one.
fn segment_files(store: &Path) -> BTreeMap<String, Vec<String>> {
    let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(store.join("log")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        files.entry(name[..10].to_owned()).or_default().push(name);
    }
    files
}

fn log_bytes(store: &Path) -> u64 {
    std::fs::read_dir(store.join("log")).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()
}

/// Appends to `keep` (recording what is acknowledged) and to `churn` (kept
/// to its last 2), and reads both back, until the server stops answering or
/// `limit` passes.
async fn load(server: &Server, limit: Duration) -> Vec<(String, u64)> {
    let acknowledged: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let deadline = Instant::now() + limit;
    let mut writers = Vec::new();
    for writer in 0..2 {
        let (client, acknowledged) = (server.unix(), acknowledged.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < deadline {
                let Ok(mut connection) = client.connect().await else { return };
                let body = format!("{{\"writer\":{writer},\"n\":{n},\"pad\":\"{}\"}}", "p".repeat(100));
                let churn = connection
                    .send("POST", "/v1/topics/churn/events?ttl=last:2", &[], body.clone().into_bytes().into())
                    .await;
                let Ok(churn) = churn else { return };
                if churn.bytes().await.is_err() {
                    return;
                }
                let Ok(reply) = connection.send("POST", "/v1/topics/keep/events", &[], body.into_bytes().into()).await
                else {
                    return;
                };
                let status = reply.status;
                let Ok(body) = reply.bytes().await else { return };
                if status == 201 {
                    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let id = event["id"].as_str().unwrap().to_owned();
                    acknowledged.lock().unwrap().push((id, event["seq"].as_u64().unwrap()));
                }
                n += 1;
            }
        }));
    }
    // Readers meanwhile: a whole read of `keep` (nothing of it is ever
    // removed) is seqs 0, 1, 2… with no gap and no repeat, and a read of
    // everything has strictly increasing ids, while segments are compacted
    // under them. A read cut short by the server's end counts up to there.
    for path in ["/v1/topics/keep/events", "/v1/events"] {
        let client = server.unix();
        writers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let Ok(mut connection) = client.connect().await else { return };
                let Ok(reply) = connection.send("GET", path, &[], Vec::new().into()).await else { return };
                let body = reply.bytes().await.unwrap_or_default();
                let mut previous: Option<(String, u64)> = None;
                for line in body.split(|b| *b == b'\n') {
                    let Ok(event) = serde_json::from_slice::<serde_json::Value>(line) else { break };
                    let (id, seq) = (event["id"].as_str().unwrap().to_owned(), event["seq"].as_u64().unwrap());
                    if let Some((previous_id, previous_seq)) = &previous {
                        assert!(id > *previous_id, "{path}: id {id} after {previous_id}");
                        if path.contains("keep") {
                            assert_eq!(seq, previous_seq + 1, "{path}: seq {seq} after {previous_seq}");
                        }
                    } else if path.contains("keep") {
                        assert_eq!(seq, 0, "{path}: the first seq");
                    }
                    previous = Some((id, seq));
                }
            }
        }));
    }
    for task in writers {
        task.await.unwrap();
    }
    std::mem::take(&mut *acknowledged.lock().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_at_any_step_of_a_compaction_loses_nothing() {
    for step in ["written", "renamed", "logged", "indexed", "flushed", "removed"] {
        let cairn = Cairn::new();
        let args = ["serve", "--no-resp", "--segment-bytes", "8192", "--compact-ratio", "0.3"];
        let mut command = cairn.command(&args);
        command.env("CAIRN_TEST_COMPACT_ABORT", step);
        let server = Server::spawn(command);
        let acknowledged = load(&server, Duration::from_secs(20)).await;
        let status = server.wait_exit(Duration::from_secs(20));
        assert!(!status.success(), "step {step}: the server aborted ({status})");
        assert!(acknowledged.len() > 20, "step {step}: {} acknowledged", acknowledged.len());

        // Restarted: every acknowledged event is there with its id and seq.
        let server = Server::start_raw(&cairn, &["serve", "--no-resp", "--segment-bytes", "8192"]);
        let reply = call(&server.unix(), "GET", "/v1/topics/keep/events", &[], "").await;
        assert_eq!(reply.status, 200);
        let stored: std::collections::HashMap<String, u64> = reply
            .lines()
            .iter()
            .map(|event| (event["id"].as_str().unwrap().to_owned(), event["seq"].as_u64().unwrap()))
            .collect();
        for (id, seq) in &acknowledged {
            assert_eq!(stored.get(id), Some(seq), "step {step}: acknowledged event {id} (seq {seq})");
        }
        let report = call(&server.unix(), "POST", "/v1/verify", &[], "").await.json();
        assert_eq!(report["problems"], serde_json::json!([]), "step {step}: {report}");
        // The compaction that was cut short is finished or undone: one file per segment.
        for (segment, files) in segment_files(cairn.store()) {
            assert_eq!(files.len(), 1, "step {step}: segment {segment} has {files:?}");
        }
        // And compacting goes on from there.
        let reply = call(&server.unix(), "POST", "/v1/compact?ratio=0", &[], "").await;
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        let report = call(&server.unix(), "POST", "/v1/verify", &[], "").await.json();
        assert_eq!(report["problems"], serde_json::json!([]), "step {step}: {report}");
        server.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_topic_stays_within_a_bounded_disk() {
    // Short in CI; CAIRN_SOAK_SECS=3600 for the hour the issue names.
    let seconds: u64 = std::env::var("CAIRN_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &["--no-resp", "--segment-bytes", "32768"]);
    let client = server.unix();
    let mut connection = client.connect().await.unwrap();
    let (mut written, mut n) = (0u64, 0u64);
    // The log's largest size in each second, from the fourth on (once the
    // first `ticks` expired and the sweeps that run each second compacted).
    let mut peaks: Vec<u64> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        let body = format!("{{\"n\":{n},\"reading\":\"{}\"}}", "r".repeat(200));
        written += body.len() as u64;
        let path =
            if n % 2 == 0 { "/v1/topics/metrics/events?ttl=last:10" } else { "/v1/topics/ticks/events?ttl=time:1s" };
        let reply = connection.send("POST", path, &[], body.into_bytes().into()).await.unwrap();
        assert_eq!(reply.status, 201);
        reply.bytes().await.unwrap();
        n += 1;
        let second = started.elapsed().as_secs() as usize;
        if second >= 3 && n % 16 == 0 {
            peaks.resize(second - 2, 0);
            let last = peaks.last_mut().unwrap();
            *last = (*last).max(log_bytes(cairn.store()));
        }
    }
    // What stays is what the retention keeps (a second of `ticks`), what
    // the sweep has not reached (a second) and the active segment: the
    // same whatever the run's length, while the bytes written grow.
    eprintln!("retention soak: {written} bytes written in {seconds} s; the log's size each second: {peaks:?}");
    let first = peaks[0];
    for peak in &peaks {
        assert!(*peak < first + first / 2 + 64 * 1024, "the log grows: {peaks:?} ({written} bytes written)");
    }
    assert!(written > first + first / 2, "{written} bytes written, the log holds {first}");
    let reply = call(&server.unix(), "GET", "/v1/topics/metrics/events", &[], "").await;
    assert_eq!(reply.lines().len(), 10);
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacting_needs_an_administrator() {
    let cairn = Cairn::new();
    cairn.ok(&["user", "add", "admin", "--admin"], b"adminpw\n");
    cairn.ok(&["user", "add", "alice", "--read", ">", "--write", ">"], b"pw\n");
    let server = Server::start(&cairn, &["--no-resp", "--segment-bytes", "4096"]);
    for n in 0..200 {
        let reply = call(&server.unix(), "POST", "/v1/topics/t/events?ttl=last:1", &[], format!("{n}")).await;
        assert_eq!(reply.status, 201);
    }
    let alice = server.tcp().with_basic("alice", "pw");
    assert_eq!(call(&alice, "POST", "/v1/compact", &[], "").await.status, 403);
    assert_eq!(call(&server.tcp(), "POST", "/v1/compact", &[], "").await.status, 401);
    assert_eq!(call(&server.unix(), "POST", "/v1/compact?ratio=2", &[], "").await.status, 400);
    assert_eq!(call(&server.unix(), "POST", "/v1/compact?ratio=x", &[], "").await.status, 400);
    let admin = server.tcp().with_basic("admin", "adminpw");
    let reply = call(&admin, "POST", "/v1/compact?ratio=0.1", &[], "").await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    // The CLI through the socket prints the same report.
    let report = cairn.ok(&["compact"], b"");
    assert!(report[0]["segments"].is_u64(), "{report:?}");
    let reply = call(&server.unix(), "GET", "/v1/topics/t/events", &[], "").await;
    assert_eq!(reply.lines().len(), 1);
    assert_eq!(reply.lines()[0]["seq"], 199);
    server.terminate();
    // Locally too.
    let report = cairn.ok(&["compact", "--ratio", "0.5"], b"");
    assert!(report[0]["bytes_after"].is_u64(), "{report:?}");
    let failed = cairn.run(&["compact", "--ratio", "1.5"], b"");
    assert!(!failed.status.success());
}
