//! A server's life and its clients: the CLI through the socket (same output
//! as local), graceful shutdown, kill -9 during load on every interface, stale and
//! live sockets, settings precedence, and hostile clients.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::serve::{Server, call, rss_kib, signal};
use crate::{Cairn, KillOnDrop};

fn stdout(cairn: &Cairn, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let output = cairn.run(args, stdin);
    assert!(output.status.success(), "cairn {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

#[test]
fn the_cli_through_the_socket_prints_what_it_prints_locally() {
    let cairn = Cairn::new();
    let a = stdout(&cairn, &["append", "orders.1", "--type", "Placed", "--meta", r#"{"k":1}"#], b"{\"sku\":1}");
    let id = serde_json::from_slice::<serde_json::Value>(&a).unwrap()["id"].as_str().unwrap().to_owned();
    stdout(&cairn, &["append", "orders.2"], &[0, 159, 146, 150]);
    stdout(
        &cairn,
        &["append", "--batch", "--key", "b1"],
        b"{\"topic\":\"x\",\"content\":\"1\"}\n{\"topic\":\"y\",\"content\":\"2\"}\n",
    );
    stdout(&cairn, &["consumer", "ack", "c1", &id], b"");
    let reads: Vec<Vec<&str>> = vec![
        vec!["cat", "orders.>", "--content"],
        vec!["cat", "orders.*", "--reverse", "--limit", "1"],
        vec!["cat", "orders.1", "--from-seq", "0", "--content"],
        vec!["cat", "--consumer", "c1", "orders.>"],
        vec!["get", &id, "--content"],
        vec!["head", "orders.1", "--content"],
        vec!["export", "orders.>"],
        vec!["consumer", "show", "c1"],
        vec!["consumer", "list"],
        vec!["topics"],
    ];
    let local: Vec<Vec<u8>> = reads.iter().map(|args| stdout(&cairn, args, b"")).collect();
    let server = Server::start_raw(&cairn, &["serve"]);
    for (args, expected) in reads.iter().zip(&local) {
        let through = stdout(&cairn, args, b"");
        // `topics` now also lists cairn.start.
        if args[0] == "topics" {
            let through = String::from_utf8(through).unwrap();
            let expected = String::from_utf8(expected.clone()).unwrap();
            let kept: Vec<&str> = through.lines().filter(|line| !line.contains("\"cairn.")).collect();
            assert_eq!(kept, expected.lines().collect::<Vec<_>>());
            continue;
        }
        assert_eq!(String::from_utf8_lossy(&through), String::from_utf8_lossy(expected), "cairn {args:?}");
    }
    // Writes and errors through the socket.
    let appended: serde_json::Value =
        serde_json::from_slice(&stdout(&cairn, &["append", "orders.1", "--expect", "0"], b"next")).unwrap();
    assert_eq!(appended["seq"], 1);
    let stderr = cairn.fails(&["append", "orders.1", "--expect", "0"], b"again", 1);
    assert!(stderr.contains("expectation failed") && stderr.contains("actual last seq 1"), "{stderr}");
    let retried = stdout(
        &cairn,
        &["append", "--batch", "--key", "b1"],
        b"{\"topic\":\"x\",\"content\":\"1\"}\n{\"topic\":\"y\",\"content\":\"2\"}\n",
    );
    assert_eq!(String::from_utf8(retried).unwrap().lines().count(), 2);
    assert_eq!(
        stdout(&cairn, &["cat", "x"], b"").iter().filter(|&&b| b == b'\n').count(),
        1,
        "the idempotent retry wrote nothing"
    );
    let hash = String::from_utf8(stdout(&cairn, &["cas", "put"], b"blob")).unwrap();
    assert_eq!(stdout(&cairn, &["cas", "get", hash.trim()], b""), b"blob");
    stdout(&cairn, &["rm", &id], b"");
    assert!(cairn.fails(&["get", &id], b"", 1).contains("not found"));
    let verify: serde_json::Value = serde_json::from_slice(&stdout(&cairn, &["verify"], b"")).unwrap();
    assert_eq!(verify["problems"], serde_json::json!([]));
    stdout(&cairn, &["consumer", "rm", "c1"], b"");
    let exported = stdout(&cairn, &["export"], b"");
    let other = Cairn::new();
    let imported = other.ok(&["import"], &exported);
    assert!(imported[0]["imported"].as_u64().unwrap() >= 5);

    // `cat --follow` through the socket: history, threshold, live, SIGINT.
    let child = cairn.command(&["cat", "orders.2", "--follow", "--threshold"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut child = KillOnDrop(child);
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    assert!(lines.next().unwrap().unwrap().contains("\"orders.2\""));
    assert!(lines.next().unwrap().unwrap().contains("cairn.threshold"));
    stdout(&cairn, &["append", "orders.2"], b"live");
    assert!(lines.next().unwrap().unwrap().contains("\"seq\":1"));
    signal(&child.0, "INT");
    assert!(child.0.wait().unwrap().success());
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_loses_nothing_and_ends_streams() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &["--insecure-no-auth", "--sync", "always"]);
    let unix = server.unix();
    // A follower, open across the shutdown.
    let mut follower = unix.connect().await.unwrap();
    let mut stream = follower.request("GET", "/v1/events?topic=load&follow=true", &[], "".into()).await.unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let (client, acked) = (unix.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let Ok(mut connection) = client.connect().await else { return };
            for n in 0.. {
                let body = format!("w{writer}-{n}");
                match connection.send("POST", "/v1/topics/load/events", &[], body.clone().into_bytes().into()).await {
                    Ok(reply) if reply.status == 201 => {
                        let json: serde_json::Value = reply.json().await.unwrap();
                        acked.lock().unwrap().push((json["id"].as_str().unwrap().to_owned(), body));
                    }
                    _ => return,
                }
            }
        }));
    }
    // At least 300 ms of load, and some acknowledgements whatever the
    // disk's speed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() <= 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(status.success(), "{status:?}");
    for writer in writers {
        writer.await.unwrap();
    }
    // The follower's stream ended cleanly (no error frame).
    let mut seen = Vec::new();
    while let Ok(Some(chunk)) = stream.chunk().await {
        seen.extend_from_slice(&chunk);
    }
    assert!(!String::from_utf8_lossy(&seen).contains("\"error\""));
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 10, "only {} appends", acked.len());
    let stored: BTreeMap<String, String> = cairn
        .ok(&["cat", "load", "--content"], b"")
        .into_iter()
        .map(|e| (e["id"].as_str().unwrap().to_owned(), e["content"].as_str().unwrap().to_owned()))
        .collect();
    for (id, body) in &acked {
        assert_eq!(stored.get(id), Some(body), "acknowledged event {id} lost");
    }
    let system = cairn.ok(&["cat", "cairn.>"], b"");
    assert_eq!(system.iter().map(|e| e["topic"].as_str().unwrap()).collect::<Vec<_>>(), ["cairn.start", "cairn.stop"]);
    assert!(!cairn.store().join("cairn.sock").exists(), "the socket is removed on a clean stop");
}

/// Acknowledgements clients received before a kill -9.
#[derive(Default)]
struct Acked {
    /// HTTP appends: id, seq, body.
    http: Vec<(String, u64, String)>,
    /// XADDs: key, entry id, value.
    resp: Vec<(String, String, String)>,
    /// XACKed entry ids of the group `workers` on `r.jobs`.
    xacked: Vec<String>,
}

/// The crash harness: kill -9 of `cairn serve` at random moments while
/// clients append over the Unix socket and TCP (HTTP) and the Redis
/// protocol, and a consumer-group worker reads and XACKs; after each
/// restart every acknowledgement must hold. `CAIRN_SERVER_CRASH_CYCLES=N`
/// (default 3); `scripts/crash-long` runs many in release and prints the
/// totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_load_on_every_interface_loses_nothing_acknowledged() {
    let cairn = Cairn::new();
    let cycles: usize = std::env::var("CAIRN_SERVER_CRASH_CYCLES").ok().and_then(|n| n.parse().ok()).unwrap_or(3);
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut checked_after_restart = 0;
    for cycle in 0..cycles {
        // The socket file of the killed server is stale: the next start replaces it.
        let server = Server::start(&cairn, &["--insecure-no-auth", "--sync", "always"]);
        if cycle > 0 {
            checked_after_restart += check_group(&server, &acked.lock().unwrap().xacked);
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for writer in 0..4 {
            let client = if writer % 2 == 0 { server.unix() } else { server.tcp() };
            let acked = acked.clone();
            writers.push(tokio::spawn(async move {
                let Ok(mut connection) = client.connect().await else { return };
                for n in 0.. {
                    let body = format!("c{cycle}-w{writer}-{n}");
                    let path = format!("/v1/topics/t.{}/events", writer % 3);
                    match connection.send("POST", &path, &[], body.clone().into_bytes().into()).await {
                        Ok(reply) if reply.status == 201 => {
                            let Ok(json) = reply.json::<serde_json::Value>().await else { return };
                            let id = json["id"].as_str().unwrap().to_owned();
                            acked.lock().unwrap().http.push((id, json["seq"].as_u64().unwrap(), body));
                        }
                        _ => return,
                    }
                }
            }));
        }
        let addr = server.resp();
        let mut threads = Vec::new();
        for writer in 0..3 {
            let (acked, stop) = (acked.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let Ok(mut con) = redis::Client::open(format!("redis://{addr}/")).and_then(|c| c.get_connection())
                else {
                    return;
                };
                let key = if writer == 0 { "r.jobs".to_owned() } else { format!("r.{writer}") };
                for n in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let value = format!("c{cycle}-x{writer}-{n}");
                    match redis::cmd("XADD").arg(&key).arg("*").arg("v").arg(&value).query::<String>(&mut con) {
                        Ok(id) => acked.lock().unwrap().resp.push((key.clone(), id, value)),
                        Err(_) => return,
                    }
                }
            }));
        }
        // A consumer-group worker: read, then XACK what it read.
        let (worker_acked, worker_stop) = (acked.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let Ok(mut con) = redis::Client::open(format!("redis://{addr}/")).and_then(|c| c.get_connection()) else {
                return;
            };
            let _ = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg("r.jobs")
                .arg("workers")
                .arg("0")
                .arg("MKSTREAM")
                .query::<()>(&mut con);
            while !worker_stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply: redis::RedisResult<Option<redis::streams::StreamReadReply>> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("workers")
                    .arg("w")
                    .arg("COUNT")
                    .arg(20)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg("r.jobs")
                    .arg(">")
                    .query(&mut con);
                let Ok(reply) = reply else { return };
                let ids: Vec<String> =
                    reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).map(|e| e.id).collect();
                if ids.is_empty() {
                    continue;
                }
                match redis::cmd("XACK").arg("r.jobs").arg("workers").arg(&ids).query::<u64>(&mut con) {
                    Ok(_) => worker_acked.lock().unwrap().xacked.extend(ids),
                    Err(_) => return,
                }
            }
        }));
        // A pseudo-random moment: between 150 and 650 ms into the load,
        // and once this round has some acknowledgements of each kind
        // (however slow the disk).
        let counts = || {
            let acked = acked.lock().unwrap();
            (acked.http.len(), acked.resp.len())
        };
        let at_start = counts();
        let jitter = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() % 500;
        tokio::time::sleep(Duration::from_millis(150 + u64::from(jitter))).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while (counts().0 < at_start.0 + 20 || counts().1 < at_start.1 + 20) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for writer in writers {
            writer.await.unwrap();
        }
        for thread in threads {
            thread.join().unwrap();
        }
    }
    // A last restart checks the group, then the store is read directly.
    let server = Server::start(&cairn, &["--insecure-no-auth"]);
    checked_after_restart += check_group(&server, &acked.lock().unwrap().xacked);
    let stored_resp = resp_entries(&server, &["r.jobs", "r.1", "r.2"]);
    drop(server);
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.http.len() > 50 && acked.resp.len() > 50,
        "too few appends: {} and {}",
        acked.http.len(),
        acked.resp.len()
    );
    let stored: BTreeMap<String, (u64, String)> = cairn
        .ok(&["cat", "t.*", "--content"], b"")
        .into_iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                (e["seq"].as_u64().unwrap(), e["content"].as_str().unwrap().to_owned()),
            )
        })
        .collect();
    for (id, seq, body) in &acked.http {
        assert_eq!(stored.get(id), Some(&(*seq, body.clone())), "acknowledged event {id} lost or changed");
    }
    for (key, id, value) in &acked.resp {
        assert_eq!(
            stored_resp.get(&(key.clone(), id.clone())),
            Some(value),
            "acknowledged entry {key} {id} lost or changed"
        );
    }
    let verify = cairn.ok(&["verify"], b"");
    assert_eq!(verify[0]["problems"], serde_json::json!([]));
    eprintln!(
        "crash harness: {cycles} kill -9 cycles, {} acknowledged events checked ({} HTTP, {} Redis), {} XACKs checked over {} restarts, 0 violations",
        acked.http.len() + acked.resp.len(),
        acked.http.len(),
        acked.resp.len(),
        acked.xacked.len(),
        checked_after_restart,
    );
}

/// Checks that no XACKed entry is pending in the group after a restart;
/// returns 1 (a restart checked).
fn check_group(server: &Server, xacked: &[String]) -> usize {
    let mut con = redis::Client::open(format!("redis://{}/", server.resp())).unwrap().get_connection().unwrap();
    let pending: redis::RedisResult<Vec<(String, String, u64, u64)>> =
        redis::cmd("XPENDING").arg("r.jobs").arg("workers").arg("-").arg("+").arg(1_000_000).query(&mut con);
    // Before the first XGROUP CREATE there is no group yet.
    let Ok(pending) = pending else { return 1 };
    let pending: std::collections::HashSet<String> = pending.into_iter().map(|(id, ..)| id).collect();
    for id in xacked {
        assert!(!pending.contains(id), "XACKed entry {id} is pending again after kill -9");
    }
    1
}

/// Every entry of `keys`: (key, id) → value of field `v`.
fn resp_entries(server: &Server, keys: &[&str]) -> BTreeMap<(String, String), String> {
    let mut con = redis::Client::open(format!("redis://{}/", server.resp())).unwrap().get_connection().unwrap();
    let mut out = BTreeMap::new();
    for key in keys {
        let range: redis::streams::StreamRangeReply =
            redis::cmd("XRANGE").arg(*key).arg("-").arg("+").query(&mut con).unwrap();
        for entry in range.ids {
            let value: String = entry.get("v").unwrap();
            out.insert(((*key).to_owned(), entry.id.clone()), value);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_flags_then_environment_then_file() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cairn.toml");
    std::fs::write(&config, "compat_topic = \"from-file\"\ninsecure_no_auth = true\nhttp = \"127.0.0.1:0\"\n").unwrap();
    let config = config.to_str().unwrap();
    let server = Server::start_raw(&cairn, &["serve", "--config", config, "--http", "127.0.0.1:0"]);
    let tcp = server.tcp();
    assert_eq!(call(&tcp, "PUT", "/events", &[], r#"{"eventType":"A","body":1}"#).await.status, 201);
    assert_eq!(cairn_topics(&server).await, ["cairn.start", "from-file"]);
    drop(server);
    // The environment beats the file; a flag beats the environment.
    let mut command = cairn.command(&["serve", "--config", config, "--http", "127.0.0.1:0"]);
    command.env("CAIRN_COMPAT_TOPIC", "from-env");
    let server = crate::serve::Server::spawn(command);
    call(&server.tcp(), "PUT", "/events", &[], r#"{"eventType":"A","body":1}"#).await;
    assert!(cairn_topics(&server).await.contains(&"from-env".to_owned()));
    drop(server);
    let mut command =
        cairn.command(&["serve", "--config", config, "--http", "127.0.0.1:0", "--compat-topic", "from-flag"]);
    command.env("CAIRN_COMPAT_TOPIC", "from-env");
    let server = crate::serve::Server::spawn(command);
    call(&server.tcp(), "PUT", "/events", &[], r#"{"eventType":"A","body":1}"#).await;
    assert!(cairn_topics(&server).await.contains(&"from-flag".to_owned()));
    drop(server);
    // A bad file is a clear error.
    std::fs::write(dir.path().join("bad.toml"), "colour = 1\n").unwrap();
    let output = cairn.command(&["serve", "--config", dir.path().join("bad.toml").to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("colour"), "{}", String::from_utf8_lossy(&output.stderr));
}

async fn cairn_topics(server: &Server) -> Vec<String> {
    let topics = call(&server.unix(), "GET", "/v1/topics", &[], "").await.json();
    topics.as_array().unwrap().iter().map(|t| t["topic"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_hurt_the_server() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &["--insecure-no-auth", "--header-timeout", "500ms", "--max-connections", "64"]);
    let address = server.url().trim_start_matches("http://").to_owned();
    // Slow loris: half a request head, then nothing; the server hangs up.
    let mut slow = std::net::TcpStream::connect(&address).unwrap();
    slow.write_all(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(5), "slow client kept for {:?}", started.elapsed());
    // An oversized head: an error status, not a crash.
    let mut huge = std::net::TcpStream::connect(&address).unwrap();
    let head = format!("GET /v1/events HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(200_000));
    let _ = huge.write_all(head.as_bytes());
    let mut reply = Vec::new();
    let _ = huge.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 431"), "{reply}");
    // More connections than allowed: the extra ones get 503 and close. (On
    // a server of their own whose header timeout does not free the idle
    // ones' slots while the test is still opening them.)
    let other = Cairn::new();
    let limited = Server::start(&other, &["--insecure-no-auth", "--header-timeout", "60s", "--max-connections", "64"]);
    let limited_address = limited.url().trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(std::net::TcpStream::connect(&limited_address).unwrap());
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = std::net::TcpStream::connect(&limited_address).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = String::new();
    let _ = extra.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    // The trusted socket has its own pool: still served.
    assert_eq!(call(&limited.unix(), "GET", "/healthz", &[], "").await.status, 200);
    drop(idle);
    // Once they are gone, TCP serves again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply =
            async { limited.tcp().connect().await.ok()?.send("GET", "/healthz", &[], "".into()).await.ok() }.await;
        if reply.is_some_and(|reply| reply.status == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "TCP not served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A follower that never reads does not stall writers or grow memory.
    // First a round of writes without it: the live ring, the index's
    // memtable and the allocator reach their working size.
    let unix = server.unix();
    let mut connection = unix.connect().await.unwrap();
    let batch: String =
        (0..500).map(|_| format!("{{\"topic\":\"flood\",\"content\":\"{}\"}}\n", "z".repeat(1000))).collect();
    let mut flood = async || {
        let started = Instant::now();
        for _ in 0..60 {
            let reply = connection
                .send(
                    "POST",
                    "/v1/batch",
                    &[("content-type", "application/x-ndjson")],
                    batch.clone().into_bytes().into(),
                )
                .await
                .unwrap();
            assert_eq!(reply.status, 201);
            let _ = reply.bytes().await;
        }
        started.elapsed()
    };
    let unhindered = flood().await;
    let rss_before = rss_kib(server.pid());
    let mut stalled = std::net::TcpStream::connect(&address).unwrap();
    let follow = format!("GET /v1/events?topic=flood&follow=true&content=true HTTP/1.1\r\nHost: {address}\r\n\r\n");
    stalled.write_all(follow.as_bytes()).unwrap();
    let mut growth = Vec::new();
    for _ in 0..3 {
        let hindered = flood().await;
        assert!(
            hindered < unhindered * 3 + Duration::from_secs(2),
            "writers stalled: {hindered:?} against {unhindered:?}"
        );
        growth.push(rss_kib(server.pid()).saturating_sub(rss_before));
    }
    let metrics = String::from_utf8(call(&unix, "GET", "/metrics", &[], "").await.body).unwrap();
    assert!(metrics.contains("\ncairn_streams_behind 1"), "{metrics}");
    // 90 MB were written past the stalled follower. Memory takes a one-off
    // step (allocator arenas; measured ~25 MiB) and then grows only as
    // without a follower (the index's memtable: ~5 MiB per round here),
    // not with the bytes the follower has not read.
    assert!(growth[0] < 64 * 1024, "anonymous RSS grew by {} KiB", growth[0]);
    assert!(growth[2] - growth[1] < 10 * 1024, "anonymous RSS kept growing (KiB): {growth:?}");
    // It is still served: reading now, it gets every event in order.
    stalled.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = BufReader::new(stalled);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 && line.trim() != "0" {
        if line.trim().is_empty() {
            break;
        }
        line.clear();
    }
    let mut seqs = 0u64;
    let mut buf = String::new();
    while seqs < 120_000 {
        buf.clear();
        if reader.read_line(&mut buf).unwrap() == 0 {
            break;
        }
        // Chunk-size lines of the chunked encoding are not events.
        if let Some(event) =
            buf.trim().starts_with('{').then(|| serde_json::from_str::<serde_json::Value>(buf.trim()).unwrap())
        {
            assert_eq!(event["seq"].as_u64(), Some(seqs), "out of order or missing");
            seqs += 1;
        }
    }
    assert_eq!(seqs, 120_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections_are_served_or_refused_cleanly() {
    let cairn = Cairn::new();
    let server =
        Server::start(&cairn, &["--insecure-no-auth", "--max-connections", "1000", "--header-timeout", "120s"]);
    let address = server.url().trim_start_matches("http://").to_owned();
    // 10,000 connection attempts in a burst: 7,000 over HTTP, 3,000 over the Redis port.
    let started = Instant::now();
    let http: Vec<std::net::TcpStream> = (0..7000).map(|_| std::net::TcpStream::connect(&address).unwrap()).collect();
    let resp: Vec<std::net::TcpStream> =
        (0..3000).map(|_| std::net::TcpStream::connect(server.resp()).unwrap()).collect();
    eprintln!("10,000 connections made in {:?}", started.elapsed());
    // Until the server has answered every connection over the limit (on a
    // loaded machine its accept loop may take a while to get through them).
    let answered = |streams: &[std::net::TcpStream]| {
        streams
            .iter()
            .filter(|stream| {
                stream.set_nonblocking(true).unwrap();
                stream.peek(&mut [0u8; 1]).is_ok()
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered(&http) < 6000 || answered(&resp) < 2000 {
        assert!(
            Instant::now() < deadline,
            "the refusals did not all arrive: {} and {}",
            answered(&http),
            answered(&resp)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // And a moment for any more than that, which the counts below catch.
    std::thread::sleep(Duration::from_millis(200));
    // Every connection over the limit is told why and closed; the others
    // stay open, waiting for a request.
    let sort = |streams: Vec<std::net::TcpStream>, expected: &str| {
        let (mut refused, mut open) = (0, Vec::new());
        for mut stream in streams {
            stream.set_nonblocking(true).unwrap();
            let mut reply = String::new();
            match stream.read_to_string(&mut reply) {
                Ok(_) => {
                    assert!(reply.starts_with(expected), "{reply:?}");
                    refused += 1;
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock && reply.is_empty() => {
                    stream.set_nonblocking(false).unwrap();
                    open.push(stream);
                }
                Err(error) => panic!("{error}: {reply:?}"),
            }
        }
        (refused, open)
    };
    let (refused, http) = sort(http, "HTTP/1.1 503");
    assert_eq!((refused, http.len()), (6000, 1000));
    let (refused, resp) = sort(resp, "-ERR max number of clients reached");
    assert_eq!((refused, resp.len()), (2000, 1000));
    // The accepted ones are served: a request on an HTTP connection, a
    // command on a Redis one.
    let (mut http, mut resp) = (http, resp);
    let mut first = http.remove(0);
    first.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    first.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    first.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let mut redis = resp.remove(0);
    redis.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    redis.write_all(b"PING\r\n").unwrap();
    let mut pong = [0u8; 7];
    redis.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    // The server stops cleanly with two thousand connections still open.
    assert!(server.terminate().success());
    drop((http, resp, redis));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_snapshot_and_its_position_survive_kill9_together() {
    // Snapshots are put back to back (each naming the id it was made at, as
    // its content) while the server is killed: after each restart the
    // consumer's snapshot and position are one pair, at or after the last
    // acknowledged put, never a mix of two puts.
    let cairn = Cairn::new();
    let mut server = Server::start(&cairn, &[]);
    let mut ids = Vec::new();
    for n in 0..400 {
        let event = call(&server.unix(), "POST", "/v1/topics/sums/events", &[], format!("{n}")).await.json();
        ids.push(event["id"].as_str().unwrap().to_owned());
    }
    let mut last_acked: Option<usize> = None;
    let mut next = 0;
    for cycle in 0..3 {
        let client = server.unix();
        let acked = Arc::new(Mutex::new(last_acked));
        let putter = {
            let (acked, ids) = (acked.clone(), ids.clone());
            tokio::spawn(async move {
                for (n, id) in ids.iter().enumerate().skip(next) {
                    let body = format!("state at {id} ").repeat(1000);
                    let path = format!("/v1/consumers/totals/snapshot?id={id}");
                    let Ok(mut connection) = client.connect().await else { return };
                    let Ok(response) = connection.send("PUT", &path, &[], body.into_bytes().into()).await else {
                        return;
                    };
                    if response.status == 200 {
                        *acked.lock().unwrap() = Some(n);
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(150 + 100 * cycle)).await;
        server.kill9();
        let _ = putter.await;
        last_acked = *acked.lock().unwrap();
        server = Server::start(&cairn, &[]);
        let got = call(&server.unix(), "GET", "/v1/consumers/totals/snapshot", &[], "").await;
        let Some(acked) = last_acked else {
            assert!(got.status == 404 || got.status == 200);
            continue;
        };
        assert_eq!(got.status, 200, "the acknowledged snapshot is there (cycle {cycle})");
        let at = got.header("cairn-snapshot-at").unwrap().to_owned();
        assert_eq!(String::from_utf8(got.body).unwrap(), format!("state at {at} ").repeat(1000));
        let position = ids.iter().position(|id| *id == at).unwrap();
        assert!(position >= acked, "snapshot at {position}, but {acked} was acknowledged");
        let shown = call(&server.unix(), "GET", "/v1/consumers/totals", &[], "").await.json();
        assert_eq!(shown["acked"], at.as_str(), "the position is the snapshot's");
        next = position + 1;
    }
    assert!(last_acked.is_some(), "some puts were acknowledged");
}
