//! cairn on PostgreSQL end to end: real `cairn serve --postgres` processes
//! on one database of a private cluster (`cairn_postgres::Cluster`), with
//! writers over HTTP and the Redis protocol and followers on every process.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cairn_client::Client;
use cairn_postgres::Cluster;

use crate::Cairn;
use crate::serve::{Server, call};

/// A new database in `cluster`, by URL.
fn database(cluster: &Cluster, name: &str) -> String {
    cluster.psql(&format!("create database {name}")).unwrap();
    cluster.url(name)
}

/// A server on `url`, with its own directory (socket, lock, users).
fn server(url: &str) -> (Cairn, Server) {
    let cairn = Cairn::new();
    let mut command = cairn.command(&["serve", "--http", "127.0.0.1:0", "--insecure-no-auth"]);
    command.env("CAIRN_POSTGRES", url);
    let server = Server::spawn(command);
    (cairn, server)
}

/// Runs `cairn <args>` on the database at `url` directly (no server on
/// `cairn`'s directory), expecting success; returns its stdout.
fn on_database(cairn: &Cairn, url: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut command = cairn.command(args);
    command.env("CAIRN_POSTGRES", url).stdin(std::process::Stdio::piped());
    let mut child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "cairn {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// An event as a follower saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    id: String,
    topic: String,
    seq: u64,
}

/// Follows `>` on `client` until `total` events of topics starting `w.`
/// arrived (or 120 s passed).
async fn follow(client: Client, total: usize) -> Vec<Seen> {
    let mut connection = client.connect().await.unwrap();
    let mut stream = connection.request("GET", "/v1/events?topic=w.%3E&follow=true", &[], "".into()).await.unwrap();
    assert_eq!(stream.status, 200);
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut seen, mut buffer) = (Vec::new(), Vec::new());
    while seen.len() < total {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.chunk()).await;
        let chunk = chunk.unwrap_or_else(|_| panic!("a follower saw {} of {total} events", seen.len()));
        let Some(chunk) = chunk.unwrap() else { panic!("a follow ended after {} of {total} events", seen.len()) };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let event: serde_json::Value = serde_json::from_slice(&line).unwrap();
            seen.push(Seen {
                id: event["id"].as_str().unwrap().to_owned(),
                topic: event["topic"].as_str().unwrap().to_owned(),
                seq: event["seq"].as_u64().unwrap(),
            });
        }
    }
    seen
}

/// Checks one follower's view: ids strictly increase, and each topic's seqs
/// run from 0 with no gap or repeat.
fn check_order(seen: &[Seen]) {
    let mut seqs: HashMap<&str, u64> = HashMap::new();
    for pair in seen.windows(2) {
        assert!(pair[0].id < pair[1].id, "ids out of order: {pair:?}");
    }
    for event in seen {
        let expected = seqs.get(event.topic.as_str()).map_or(0, |seq| seq + 1);
        assert_eq!(event.seq, expected, "a gap or repeat in {}", event.topic);
        seqs.insert(&event.topic, event.seq);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_one_database_agree_on_one_order() {
    let cluster = Cluster::start(&[]).unwrap();
    let url = database(&cluster, "three");
    let servers: Vec<(Cairn, Server)> = (0..3).map(|_| server(&url)).collect();
    const EACH: usize = 150;
    // Per server: two HTTP writers and one Redis writer.
    let total = servers.len() * 3 * EACH;
    let followers: Vec<_> = servers.iter().map(|(_, server)| tokio::spawn(follow(server.tcp(), total))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut http_writers = Vec::new();
    let mut resp_writers = Vec::new();
    for (s, (_, server)) in servers.iter().enumerate() {
        for w in 0..2 {
            let tcp = server.tcp();
            http_writers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for n in 0..EACH {
                    let reply = call(&tcp, "POST", &format!("/v1/topics/w.{s}.h{w}/events"), &[], format!("{n}")).await;
                    assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.body));
                    acked.push(reply.json()["id"].as_str().unwrap().to_owned());
                }
                acked
            }));
        }
        let address = server.resp();
        resp_writers.push(tokio::task::spawn_blocking(move || {
            let mut redis = redis::Client::open(format!("redis://{address}/")).unwrap().get_connection().unwrap();
            let topic = format!("w.{s}.r");
            (0..EACH)
                .map(|n| {
                    let id: String = redis::cmd("XADD").arg(&topic).arg("*").arg("n").arg(n).query(&mut redis).unwrap();
                    let seq: u64 = id.split_once('-').unwrap().1.parse().unwrap();
                    (topic.clone(), seq)
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut acked_ids = HashSet::new();
    for writer in http_writers {
        acked_ids.extend(writer.await.unwrap());
    }
    let mut acked_entries = HashSet::new();
    for writer in resp_writers {
        acked_entries.extend(writer.await.unwrap());
    }
    let mut views = Vec::new();
    for follower in followers {
        views.push(follower.await.unwrap());
    }
    for view in &views {
        check_order(view);
        assert_eq!(view, &views[0], "every follower sees the same events in the same order");
    }
    let ids: HashSet<&str> = views[0].iter().map(|seen| seen.id.as_str()).collect();
    assert!(acked_ids.iter().all(|id| ids.contains(id.as_str())), "every acknowledged HTTP append is seen");
    let entries: HashSet<(String, u64)> = views[0].iter().map(|seen| (seen.topic.clone(), seen.seq)).collect();
    assert!(acked_entries.iter().all(|entry| entries.contains(entry)), "every acknowledged XADD is seen");
    // A read through any process gives the same events.
    for (_, server) in &servers {
        let reply = call(&server.tcp(), "GET", "/v1/events?topic=w.%3E", &[], "").await;
        assert_eq!(reply.lines().len(), total);
    }
    for (_, server) in servers {
        assert!(server.terminate().success());
    }
}

/// Appends `count` events to `topic` through `tcp`, each under its own
/// idempotency key, retrying each until it is acknowledged (or the server
/// is gone); returns the acknowledged ids and the error codes seen.
async fn persistent_writer(tcp: Client, topic: String, count: usize) -> (Vec<String>, Vec<String>) {
    let (mut acked, mut errors) = (Vec::new(), Vec::new());
    for n in 0..count {
        let key = format!("{topic}-{n}");
        let path = format!("/v1/topics/{topic}/events?key={key}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "{topic}: append {n} never succeeded: {errors:?}");
            let attempt = async {
                let mut connection = tcp.connect().await.ok()?;
                let response = connection
                    .send("POST", &path, &[], cairn_client::RequestBody::from(format!("{n}").into_bytes()))
                    .await
                    .ok()?;
                let status = response.status;
                let body = response.bytes().await.ok()?;
                Some((status, body))
            };
            match attempt.await {
                Some((201 | 200, body)) => {
                    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    acked.push(reply["id"].as_str().unwrap().to_owned());
                    break;
                }
                Some((status, body)) => {
                    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    errors.push(format!("{status} {}", reply["error"]["code"].as_str().unwrap_or("?")));
                }
                // The server is gone (killed): this writer is done.
                None => return (acked, errors),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    (acked, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_a_server_dies_or_postgres_restarts() {
    let cluster = Cluster::start(&[]).unwrap();
    let url = database(&cluster, "outage");
    let (_a_dir, a) = server(&url);
    let (_b_dir, b) = server(&url);
    const EACH: usize = 400;
    let writers: Vec<_> = [("a", &a), ("b", &b)]
        .into_iter()
        .flat_map(|(name, server)| {
            (0..2).map(move |w| tokio::spawn(persistent_writer(server.tcp(), format!("w.{name}{w}"), EACH)))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.restart().unwrap();
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    for writer in writers {
        let (ids, seen) = writer.await.unwrap();
        acked.extend(ids);
        errors.extend(seen);
    }
    // The restart came while b's writers ran: they got clear, retryable
    // errors, and then went on.
    assert!(!errors.is_empty(), "the restart was not noticed");
    assert!(errors.iter().all(|error| error == "503 unavailable"), "{errors:?}");
    // Everything acknowledged is there once, through b and a new a.
    let (_c_dir, c) = server(&url);
    for server in [&b, &c] {
        let reply = call(&server.tcp(), "GET", "/v1/events?topic=w.%3E", &[], "").await;
        let stored: Vec<String> = reply.lines().iter().map(|event| event["id"].as_str().unwrap().to_owned()).collect();
        let unique: HashSet<&String> = stored.iter().collect();
        assert_eq!(unique.len(), stored.len(), "no event is stored twice");
        for id in &acked {
            assert!(unique.contains(id), "acknowledged event {id} was lost");
        }
        let seen: Vec<Seen> = reply
            .lines()
            .iter()
            .map(|event| Seen {
                id: event["id"].as_str().unwrap().to_owned(),
                topic: event["topic"].as_str().unwrap().to_owned(),
                seq: event["seq"].as_u64().unwrap(),
            })
            .collect();
        check_order(&seen);
    }
    let b_topics = call(&b.tcp(), "GET", "/v1/topics/w.b0", &[], "").await;
    assert_eq!(b_topics.json()["count"], EACH, "b's writers finished");
    assert!(b.terminate().success());
    assert!(c.terminate().success());
}

/// Asserts two exports are the same, naming the first line that differs
/// (shortened: payloads are long).
fn same_export(left: &[u8], right: &[u8], what: &str) {
    let (left, right) = (String::from_utf8_lossy(left), String::from_utf8_lossy(right));
    let short = |line: Option<&str>| line.map(|line| line.chars().take(300).collect::<String>());
    for (n, (a, b)) in left.lines().zip(right.lines()).enumerate() {
        assert_eq!(short(Some(a)), short(Some(b)), "{what}: line {n} differs");
        assert_eq!(a, b, "{what}: line {n} differs after its first 300 characters");
    }
    assert_eq!(left.lines().count(), right.lines().count(), "{what}: {:?}", short(right.lines().last()));
}

/// `cairn export` output, checked.
fn export(cairn: &Cairn) -> Vec<u8> {
    let output = cairn.run(&["export"], b"");
    assert!(output.status.success(), "export: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_move_a_store_both_ways_byte_for_byte() {
    let cluster = Cluster::start(&[("fsync", "off")]).unwrap();
    // A local store with typed, meta'd, large (stored apart), empty and
    // retained events on several topics, one of them removed.
    let local = Cairn::new();
    let big = "b".repeat(100_000);
    let lines = format!(
        "{{\"topic\":\"orders.1\",\"content\":\"one\",\"type\":\"Placed\",\"meta\":{{\"by\":\"x\"}}}}\n\
         {{\"topic\":\"orders.2\",\"content\":\"{big}\"}}\n\
         {{\"topic\":\"orders.1\"}}\n\
         {{\"topic\":\"cells\",\"content\":\"c\",\"ttl\":\"last:5\"}}\n\
         {{\"topic\":\"orders.1\",\"content_base64\":\"AAEC/w==\"}}\n"
    );
    let appended = local.ok(&["append", "--batch"], lines.as_bytes());
    let removed = appended[2]["id"].as_str().unwrap();
    local.ok(&["rm", removed], b"");
    let first = export(&local);
    assert_eq!(String::from_utf8_lossy(&first).lines().filter(|line| line.contains("\"topic\"")).count(), 4);

    // Into PostgreSQL by the command line on the database (no server yet:
    // a server's start is an event of its own), and out again.
    let url = database(&cluster, "moved");
    let on_postgres = Cairn::new();
    let run = |args: &[&str], stdin: &[u8]| on_database(&on_postgres, &url, args, stdin);
    run(&["import"], &first);
    let second = run(&["export"], b"");
    same_export(&first, &second, "PostgreSQL's export is the local one");

    // And back into a new local store.
    let back = Cairn::new();
    let restored = back.run(&["import"], &second);
    assert!(restored.status.success(), "import: {}", String::from_utf8_lossy(&restored.stderr));
    same_export(&second, &export(&back), "the local store's export is PostgreSQL's");

    // Served: the imported events, appends after them, an import over them
    // refused, the database's figures in /metrics.
    let mut command = on_postgres.command(&["serve", "--http", "127.0.0.1:0", "--insecure-no-auth"]);
    command.env("CAIRN_POSTGRES", &url);
    let server = Server::spawn(command);
    let served = call(&server.unix(), "GET", "/v1/events?topic=orders.%3E", &[], "").await;
    assert_eq!(served.lines().len(), 3, "the imported events, served");
    let next = on_postgres.ok(&["append", "orders.1"], b"after");
    assert_eq!(next[0]["seq"], 3);
    let again = on_postgres.run(&["import"], &first);
    assert!(!again.status.success(), "importing ids already there is refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("after the store's last id"));
    let metrics = call(&server.tcp(), "GET", "/metrics", &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(text.contains("cairn_database_commits_total"), "{text}");
    assert!(text.contains("cairn_database_pool_connections{state=\"idle\"}"), "{text}");
    // Every group committed by one of the writer's paths; the first ones
    // read under the lock (nothing cached yet); none redone, alone.
    let value = |name: &str| -> u64 {
        let line = text.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("no {name}: {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let path = |name: &str| value(&format!("cairn_database_commits_by_path_total{{path=\"{name}\"}}"));
    assert!(path("slow") >= 1, "{text}");
    assert_eq!(path("rows_first") + path("lock_first") + path("slow"), value("cairn_database_commits_total "));
    assert_eq!(value("cairn_database_groups_redone_total "), 0);
    // Backup and compaction are PostgreSQL's business: refused, clearly.
    let backup = call(&server.unix(), "POST", "/v1/backup?dir=/tmp/nowhere", &[], "").await;
    assert_eq!(backup.code(), "invalid");
    assert!(String::from_utf8_lossy(&backup.body).contains("PostgreSQL"));
    assert!(server.terminate().success());
}

#[test]
fn clear_errors_when_the_database_is_missing_or_newer() {
    let cluster = Cluster::start(&[("fsync", "off")]).unwrap();
    // Nothing listens: the server says so and exits.
    let cairn = Cairn::new();
    let output = cairn
        .command(&["serve", "--no-resp"])
        .env("CAIRN_POSTGRES", "postgres://postgres@127.0.0.1:1/none")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("PostgreSQL") && stderr.contains("unavailable"), "{stderr}");
    assert!(!stderr.contains("postgres://"), "the URL (it may hold a password) is not printed: {stderr}");
    // A database migrated by a newer cairn is refused, and so is the
    // start of a server on it.
    let url = database(&cluster, "newer");
    let (_dir, server) = server(&url);
    assert!(server.terminate().success());
    cluster.psql_in("newer", "update cairn_schema set version = 99").unwrap();
    let output = cairn.command(&["serve", "--no-resp"]).env("CAIRN_POSTGRES", &url).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("schema version 99, newer than this cairn"), "{stderr}");
}

/// Waits (at most 10 s) until `check` holds.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_tokens_live_in_the_database_for_every_server() {
    let cluster = Cluster::start(&[("fsync", "off")]).unwrap();
    let url = database(&cluster, "users");
    // A directory with a user of its own: copied in when a server first
    // serves the database from it.
    let a_dir = Cairn::new();
    a_dir.ok(&["user", "add", "carol", "--read", "c.>", "--write", "c.>"], b"carolpw\n");
    // The command line on the database (no server yet) copies them in too.
    let direct =
        |cairn: &Cairn, args: &[&str], stdin: &[u8]| String::from_utf8(on_database(cairn, &url, args, stdin)).unwrap();
    assert!(direct(&a_dir, &["user", "list"], b"").contains("carol"), "carol copied into the database");
    let start = |cairn: &Cairn| {
        let mut command = cairn.command(&["serve", "--http", "127.0.0.1:0"]);
        command.env("CAIRN_POSTGRES", &url);
        Server::spawn(command)
    };
    let a = start(&a_dir);
    let b_dir = Cairn::new();
    let b = start(&b_dir);
    let on = |server: &Server, user: &str, password: &str| server.tcp().with_basic(user, password);
    eventually("carol, copied from a's directory, logs in on b", async || {
        call(&on(&b, "carol", "carolpw"), "GET", "/v1/topics/c.1", &[], "").await.status == 404
    })
    .await;
    // A user added through a's socket logs in on b.
    a_dir.ok(&["user", "add", "alice", "--read", "a.>", "--write", "a.>"], b"alicepw\n");
    eventually("alice logs in on b", async || {
        call(&on(&b, "alice", "alicepw"), "POST", "/v1/topics/a.1/events", &[], "x").await.status == 201
    })
    .await;
    assert_eq!(call(&on(&b, "alice", "wrong"), "GET", "/v1/topics/a.1", &[], "").await.status, 401);
    assert_eq!(
        call(&on(&b, "alice", "alicepw"), "GET", "/v1/topics/c.1", &[], "").await.status,
        403,
        "her patterns hold"
    );
    // A token issued through b works on a; a follow on a with it ends when
    // b revokes it, and the token is refused everywhere.
    let token = b_dir.ok(&["user", "token", "issue", "alice"], b"")[0]["token"].as_str().unwrap().to_owned();
    let id = token_id(&b_dir, "alice");
    let with_token = a.tcp().with_token(&token);
    eventually("the token works on a", async || {
        call(&with_token, "GET", "/v1/topics/a.1", &[], "").await.status == 200
    })
    .await;
    let mut connection = with_token.connect().await.unwrap();
    let mut follow = connection.request("GET", "/v1/events?topic=a.%3E&follow=true", &[], "".into()).await.unwrap();
    assert_eq!(follow.status, 200);
    b_dir.ok(&["user", "token", "revoke", &id], b"");
    let ended = tokio::time::timeout(Duration::from_secs(10), crate::serve::until_end(&mut follow)).await;
    assert!(ended.is_ok(), "the revoked token's stream on a ended");
    eventually("the revoked token is refused on a", async || {
        call(&with_token, "GET", "/v1/topics/a.1", &[], "").await.status == 401
    })
    .await;
    // Added by the command line on the database while the servers run.
    direct(&Cairn::new(), &["user", "add", "erin", "--read", "e.>", "--write", "e.>"], b"erinpw\n");
    eventually("erin logs in on a", async || {
        call(&on(&a, "erin", "erinpw"), "GET", "/v1/topics/e.1", &[], "").await.status == 404
    })
    .await;
    // Removed through a: refused on b.
    a_dir.ok(&["user", "rm", "alice"], b"");
    eventually("alice is refused on b", async || {
        call(&on(&b, "alice", "alicepw"), "GET", "/v1/topics/a.1", &[], "").await.status == 401
    })
    .await;
    // Users are not part of an export.
    let export = a_dir.run(&["export"], b"");
    assert!(!String::from_utf8_lossy(&export.stdout).contains("carol"), "no user in an export");
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

/// The id of `user`'s only token.
fn token_id(cairn: &Cairn, user: &str) -> String {
    let users = cairn.ok(&["user", "list"], b"");
    let user = users.iter().find(|entry| entry["name"] == user).unwrap();
    user["tokens"][0].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups_are_one_group_across_servers() {
    let cluster = Cluster::start(&[("fsync", "off")]).unwrap();
    let url = database(&cluster, "groups");
    let (_a_dir, a) = server(&url);
    let (_b_dir, b) = server(&url);
    let (a_resp, b_resp) = (a.resp(), b.resp());
    let seen = tokio::task::spawn_blocking(move || {
        let connect = |address| redis::Client::open(format!("redis://{address}/")).unwrap().get_connection().unwrap();
        let (mut on_a, mut on_b) = (connect(a_resp), connect(b_resp));
        for n in 0..200 {
            let _: String = redis::cmd("XADD").arg("jobs").arg("*").arg("n").arg(n).query(&mut on_a).unwrap();
        }
        let _: String =
            redis::cmd("XGROUP").arg("CREATE").arg("jobs").arg("workers").arg("0").query(&mut on_a).unwrap();
        // Consumers on both servers take turns, five at a time: every entry
        // goes to exactly one of them.
        let mut seen: Vec<(String, String)> = Vec::new();
        loop {
            let mut got = 0;
            for (name, connection) in [("on-a", &mut on_a), ("on-b", &mut on_b)] {
                let reply: redis::Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("workers")
                    .arg(name)
                    .arg("COUNT")
                    .arg(5)
                    .arg("STREAMS")
                    .arg("jobs")
                    .arg(">")
                    .query(connection)
                    .unwrap();
                for id in entry_ids(&reply) {
                    seen.push((name.to_owned(), id));
                    got += 1;
                }
            }
            if got == 0 {
                break;
            }
        }
        // Acknowledged through the other server than the one that handed
        // it out: the pending count, seen from either, drops.
        let first_of_a = seen.iter().find(|(name, _)| name == "on-a").unwrap().1.clone();
        let acked: i64 = redis::cmd("XACK").arg("jobs").arg("workers").arg(&first_of_a).query(&mut on_b).unwrap();
        assert_eq!(acked, 1);
        let pending: redis::Value = redis::cmd("XPENDING").arg("jobs").arg("workers").query(&mut on_a).unwrap();
        let redis::Value::Array(summary) = pending else { panic!("{pending:?}") };
        assert_eq!(summary[0], redis::Value::Int(199));
        seen
    })
    .await
    .unwrap();
    assert_eq!(seen.len(), 200, "every entry was handed out");
    let unique: HashSet<&String> = seen.iter().map(|(_, id)| id).collect();
    assert_eq!(unique.len(), 200, "no entry went to two consumers");
    assert!(seen.iter().any(|(name, _)| name == "on-a") && seen.iter().any(|(name, _)| name == "on-b"));
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

/// The entry ids of an XREADGROUP reply (RESP2 arrays).
fn entry_ids(reply: &redis::Value) -> Vec<String> {
    let redis::Value::Array(streams) = reply else { return Vec::new() };
    let mut ids = Vec::new();
    for stream in streams {
        let redis::Value::Array(parts) = stream else { continue };
        let Some(redis::Value::Array(entries)) = parts.get(1) else { continue };
        for entry in entries {
            if let redis::Value::Array(fields) = entry
                && let Some(redis::Value::BulkString(id)) = fields.first()
            {
                ids.push(String::from_utf8_lossy(id).into_owned());
            }
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_and_missing_rights_are_named() {
    let cluster = Cluster::start(&[("fsync", "off")]).unwrap();
    let url = database(&cluster, "guarded");
    let (_dir, server) = server(&url);
    let tcp = server.tcp();
    assert_eq!(call(&tcp, "POST", "/v1/topics/t/events", &[], "before").await.status, 201);
    // Read-only (as a standby is): writes are refused as retryable, reads go on.
    cluster.psql("alter database guarded set default_transaction_read_only = on").unwrap();
    cluster.psql("select pg_terminate_backend(pid) from pg_stat_activity where datname = 'guarded'").unwrap();
    let mut refused = None;
    for _ in 0..50 {
        let reply = call(&tcp, "POST", "/v1/topics/t/events", &[], "during").await;
        assert_ne!(reply.status, 201, "a read-only database took an append");
        // The connections the terminate ended answer first ("connection
        // closed"); new ones then meet the read-only database.
        if reply.status == 503 && String::from_utf8_lossy(&reply.body).contains("read-only") {
            refused = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = refused.expect("a read-only database refuses appends");
    assert_eq!(refused.code(), "unavailable");
    assert!(String::from_utf8_lossy(&refused.body).contains("read-only"), "{}", String::from_utf8_lossy(&refused.body));
    let read = call(&tcp, "GET", "/v1/events?topic=t", &[], "").await;
    assert_eq!(read.lines().len(), 1, "reads go on");
    cluster.psql("alter database guarded reset default_transaction_read_only").unwrap();
    cluster.psql("select pg_terminate_backend(pid) from pg_stat_activity where datname = 'guarded'").unwrap();
    let mut written = false;
    for _ in 0..50 {
        if call(&tcp, "POST", "/v1/topics/t/events", &[], "after").await.status == 201 {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(written, "writes resume once the database is writable");
    assert!(server.terminate().success());

    // A role without rights on cairn's tables: the server says what to grant.
    cluster.psql("create role visitor login").unwrap();
    let visitor = url.replace("postgres@", "visitor@");
    let cairn = Cairn::new();
    let output = cairn.command(&["serve", "--no-resp"]).env("CAIRN_POSTGRES", &visitor).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("permission denied") && stderr.contains("needs to"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processors_run_on_one_server_and_move_when_it_dies() {
    let cluster = Cluster::start(&[("fsync", "off")]).unwrap();
    let url = database(&cluster, "procs");
    let (_a_dir, a) = server(&url);
    let (_b_dir, b) = server(&url);
    let spec = r#"{"kind":"command","sh":"cat > /dev/null; echo answered","concurrency":2}"#;
    let created = call(&a.unix(), "POST", "/v1/procs/shout", &[], spec).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let answers = async |server: &Server| -> Vec<String> {
        let reply = call(&server.unix(), "GET", "/v1/topics/shout.response/events", &[], "").await;
        reply.lines().iter().map(|event| event["meta"]["call_id"].as_str().unwrap().to_owned()).collect()
    };
    let running = async |server: &Server| -> bool {
        let list = call(&server.unix(), "GET", "/v1/procs", &[], "").await.json();
        list.as_array().unwrap().iter().any(|proc| proc["name"] == "shout")
    };
    for n in 0..20 {
        let on = if n % 2 == 0 { &a } else { &b };
        let reply = call(&on.tcp(), "POST", "/v1/topics/shout.call/events", &[], format!("call {n}")).await;
        assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.body));
    }
    eventually("20 answers", async || answers(&a).await.len() >= 20).await;
    // Exactly one server runs it.
    let (on_a, on_b) = (running(&a).await, running(&b).await);
    assert!(on_a != on_b, "running on a: {on_a}, on b: {on_b}");
    // Its server dies: the other takes over, and every call is answered once.
    let (dead, alive) = if on_a { (a, b) } else { (b, a) };
    dead.kill9();
    for n in 20..30 {
        let reply = call(&alive.tcp(), "POST", "/v1/topics/shout.call/events", &[], format!("call {n}")).await;
        assert_eq!(reply.status, 201);
    }
    eventually("30 answers", async || answers(&alive).await.len() >= 30).await;
    assert!(running(&alive).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut calls = answers(&alive).await;
    assert_eq!(calls.len(), 30);
    calls.sort_unstable();
    calls.dedup();
    assert_eq!(calls.len(), 30, "each call answered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_taking_turns_on_one_topic_keep_its_seqs() {
    let cluster = Cluster::start(&[("fsync", "off")]).unwrap();
    let url = database(&cluster, "turns");
    let (_a_dir, a) = server(&url);
    let (_b_dir, b) = server(&url);
    // a appends to `turns`, b too, then a to another topic (its fast path
    // fails: b moved the sequencer; the slow path reads that topic only),
    // then a to `turns` again: its tail of `turns` must not be the one it
    // remembered from before b's append (that gave a duplicate seq, 500).
    let mut seqs = Vec::new();
    for n in 0..50 {
        for (on, topic) in [(&a, "turns"), (&b, "turns"), (&a, "other")] {
            let reply = call(&on.tcp(), "POST", &format!("/v1/topics/{topic}/events"), &[], format!("{n}")).await;
            assert_eq!(reply.status, 201, "append {n} to {topic}: {}", String::from_utf8_lossy(&reply.body));
            if topic == "turns" {
                seqs.push(reply.json()["seq"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(seqs, (0..100).collect::<Vec<u64>>());
}
