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
    let seconds: u64 = std::env::var("CAIRN_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &["--no-resp", "--segment-bytes", "32768"]);
    let client = server.unix();
    let mut connection = client.connect().await.unwrap();
    // The rate of writes depends on how busy the machine is, so the bound is
    // in terms of what the log took in lately (the server's own counter of
    // log bytes committed), sampled four times a second: what stays is what
    // the retention keeps (a second of `ticks`), what the sweeps that run
    // each second have not reached, segments not yet dead enough to rewrite
    // and the active segment: about three seconds of writes on this machine.
    // Without compaction the log would hold all of it, three times the window
    // by the run's end.
    const WINDOW: Duration = Duration::from_secs(4);
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let mut checked = 0;
    let mut largest = 0;
    let mut n = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        let body = format!("{{\"n\":{n},\"reading\":\"{}\"}}", "r".repeat(200));
        let path = if n.is_multiple_of(2) {
            "/v1/topics/metrics/events?ttl=last:10"
        } else {
            "/v1/topics/ticks/events?ttl=time:1s"
        };
        let reply = connection.send("POST", path, &[], body.into_bytes().into()).await.unwrap();
        assert_eq!(reply.status, 201);
        reply.bytes().await.unwrap();
        n += 1;
        if samples.last().is_some_and(|(at, _)| at.elapsed() < Duration::from_millis(250)) {
            continue;
        }
        let on_disk = log_bytes(cairn.store());
        let now = (Instant::now(), log_written(&server).await);
        if let Some(&(_, before)) = samples.iter().rev().find(|(at, _)| now.0 - *at >= WINDOW) {
            let lately = now.1 - before;
            assert!(
                on_disk < lately + 256 * 1024,
                "the log holds {on_disk} bytes, more than the {lately} it took in over the last {WINDOW:?}"
            );
            checked += 1;
            largest = largest.max(on_disk);
        }
        samples.push(now);
    }
    let written = samples.last().unwrap().1;
    eprintln!(
        "retention soak: {written} log bytes written in {seconds} s, {checked} checks, at most {largest} on disk"
    );
    assert!(checked >= 4, "only {checked} samples past the window");
    assert!(written > 2 * largest, "{written} log bytes written, the log held up to {largest}");
    let reply = call(&server.unix(), "GET", "/v1/topics/metrics/events", &[], "").await;
    assert_eq!(reply.lines().len(), 10);
    server.terminate();
}

/// The server's count of log bytes committed since it started.
async fn log_written(server: &Server) -> u64 {
    let metrics = String::from_utf8(call(&server.unix(), "GET", "/metrics", &[], "").await.body).unwrap();
    let line = metrics.lines().find(|l| l.starts_with("cairn_log_written_bytes_total ")).expect("the counter");
    line.rsplit(' ').next().unwrap().parse().unwrap()
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
