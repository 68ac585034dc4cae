//! A bounded soak of a real `cairn serve` on loopback: idle followers (of
//! topics nobody writes), active followers of every written topic, a few
//! followers that stall (never read until the end), and writers appending as
//! fast as they can. Checks: writers keep their pace when followers attach
//! and stall, the server's memory stays bounded, and every follower, the
//! stalled ones included, receives every event in order (none is dropped
//! silently).
//!
//! Short by default; the long form is
//! `CAIRN_SOAK_SECS=600 CAIRN_SOAK_IDLE=1000 CAIRN_SOAK_ACTIVE=100 CAIRN_SOAK_WRITERS=16`
//! (in release: `cargo test --release -p cairn-cli --test it soak -- --nocapture`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use cairn_client::{Client, Response};

use crate::Cairn;
use crate::serve::{Server, rss_kib};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// Reads a follow stream until it has seen `expected` events (read from the
/// watch), checking each topic's seqs arrive in order with no gap.
async fn follow(mut stream: Response, mut expected: tokio::sync::watch::Receiver<Option<u64>>) -> u64 {
    let mut next_seq: HashMap<String, u64> = HashMap::new();
    let mut seen = 0u64;
    let mut partial = Vec::new();
    loop {
        if let Some(total) = *expected.borrow()
            && seen >= total
        {
            return seen;
        }
        let next = tokio::select! {
            // The writers are done: look again whether everything arrived.
            Ok(()) = expected.changed() => continue,
            next = tokio::time::timeout(Duration::from_secs(60), stream.chunk()) => next,
        };
        let chunk = match next {
            Ok(Ok(Some(chunk))) => chunk,
            other => panic!("follower stopped after {seen} events: {:?}", other.map(|r| r.map(|c| c.map(|c| c.len())))),
        };
        partial.extend_from_slice(&chunk);
        while let Some(end) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            let event: serde_json::Value = serde_json::from_slice(&line).unwrap();
            let topic = event["topic"].as_str().unwrap().to_owned();
            let seq = event["seq"].as_u64().unwrap();
            let want = next_seq.entry(topic.clone()).or_insert(0);
            assert_eq!(seq, *want, "{topic}: an event out of order or missing");
            *want += 1;
            seen += 1;
        }
    }
}

async fn open_follow(client: &Client, topic: &str) -> (cairn_client::Connection, Response) {
    let mut connection = client.connect().await.unwrap();
    let path = format!("/v1/events?topic={}&follow=true", cairn_client::encode(topic));
    let stream = connection.request("GET", &path, &[], "".into()).await.unwrap();
    assert_eq!(stream.status, 200);
    (connection, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_followers_idle_active_and_stalled_while_writers_append() {
    let secs = setting("CAIRN_SOAK_SECS", 3);
    let (n_idle, n_active, n_writers) =
        (setting("CAIRN_SOAK_IDLE", 200), setting("CAIRN_SOAK_ACTIVE", 10), setting("CAIRN_SOAK_WRITERS", 4));
    let n_stalled = (n_active / 5).max(1);
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &["--insecure-no-auth"]);
    let tcp = server.tcp();
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    // Writers first, alone, to measure their pace.
    let mut writers = Vec::new();
    for writer in 0..n_writers {
        let (client, stop, appended) = (tcp.clone(), stop.clone(), appended.clone());
        writers.push(tokio::spawn(async move {
            let mut connection = client.connect().await.unwrap();
            let path = format!("/v1/topics/soak.{writer}/events");
            while !stop.load(Relaxed) {
                let reply = connection.send("POST", &path, &[], b"x".to_vec().into()).await.unwrap();
                assert_eq!(reply.status, 201);
                let _ = reply.bytes().await;
                appended.fetch_add(1, Relaxed);
            }
        }));
    }
    let window = Duration::from_millis(1000);
    let before = appended.load(Relaxed);
    tokio::time::sleep(window).await;
    let alone = appended.load(Relaxed) - before;
    // Idle and stalled followers attach: writers must keep their pace.
    let (total_sender, total) = tokio::sync::watch::channel(None);
    let mut idle = Vec::new();
    for n in 0..n_idle {
        idle.push(open_follow(&tcp, &format!("idle.{n}")).await);
    }
    let mut stalled = Vec::new();
    for _ in 0..n_stalled {
        stalled.push(open_follow(&tcp, "soak.>").await);
    }
    let rss_start = rss_kib(server.pid());
    let mut rss_peak = rss_start;
    let mut slowest = u64::MAX;
    for _ in 0..2 {
        let before = appended.load(Relaxed);
        tokio::time::sleep(window).await;
        slowest = slowest.min(appended.load(Relaxed) - before);
        rss_peak = rss_peak.max(rss_kib(server.pid()));
    }
    // Active followers (from the first event, then live) for the rest.
    let mut active = Vec::new();
    for _ in 0..n_active {
        let (connection, stream) = open_follow(&tcp, "soak.>").await;
        let total = total.clone();
        active.push(tokio::spawn(async move {
            let _connection = connection;
            follow(stream, total).await
        }));
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(window).await;
        rss_peak = rss_peak.max(rss_kib(server.pid()));
    }
    stop.store(true, Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let events = appended.load(Relaxed);
    total_sender.send(Some(events)).unwrap();
    // Every active follower got every event, in order.
    for follower in active {
        assert_eq!(follower.await.unwrap(), events);
    }
    // The stalled followers, reading now, get every event too.
    for (connection, stream) in stalled {
        let _connection = connection;
        assert_eq!(follow(stream, total.clone()).await, events);
    }
    // The idle ones are still open and served.
    let metrics = crate::serve::call(&server.unix(), "GET", "/metrics", &[], "").await;
    let metrics = String::from_utf8(metrics.body).unwrap();
    let open_streams: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("cairn_open_streams "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(open_streams >= n_idle, "idle followers dropped: {open_streams} streams open, {n_idle} idle");
    drop(idle);
    eprintln!(
        "soak: {secs} s, {n_writers} writers, {n_idle} idle + {n_active} active + {n_stalled} stalled followers; {events} events; writers' pace alone {alone}/s, slowest second with idle and stalled followers {slowest}/s; anonymous RSS {rss_start} KiB at start, peak {rss_peak} KiB"
    );
    // Stalled and idle followers do not hold the writers up (a follower
    // that blocked them would bring them near zero); the bound leaves room
    // for the other test sharing the two cores in some seconds only.
    assert!(slowest * 4 >= alone, "writers slowed from {alone}/s to {slowest}/s with stalled followers");
    assert!(rss_peak - rss_start < 128 * 1024, "memory grew from {rss_start} to {rss_peak} KiB");
    assert!(server.terminate().success());
}
