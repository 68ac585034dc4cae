//! The holes the service layer closed (issue 11 §5), each tried against a
//! real `cairn serve` the way a hostile user would: two users of different
//! rights (`alice` reads and writes `orders.>`, `bob` `payments.>`), an
//! admin (`root`), and clients that are unauthenticated, oversized, slow or
//! malformed. Every test failed on the code before the service existed.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use crate::Cairn;
use crate::resp::{Raw, Value, ask, line};
use crate::serve::{Server, call, cpu_seconds, rss_kib};

/// Runs `cairn user …` on the store (no server yet) with a password.
fn user(cairn: &Cairn, args: &[&str], password: &str) -> Vec<serde_json::Value> {
    let mut full = vec!["user"];
    full.extend_from_slice(args);
    let output = cairn.command(&full).env("CAIRN_PASSWORD", password).output().unwrap();
    assert!(output.status.success(), "cairn user {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// A store with `root` (admin), `alice` (orders.>) and `bob` (payments.>).
fn three_users() -> Cairn {
    let cairn = Cairn::new();
    user(&cairn, &["add", "root", "--admin"], "root-pw");
    user(&cairn, &["add", "alice", "--read", "orders.>", "--write", "orders.>"], "alice-pw");
    user(&cairn, &["add", "bob", "--read", "payments.>", "--write", "payments.>"], "bob-pw");
    cairn
}

/// `AUTH name password` on a fresh connection.
fn resp_as(server: &Server, name: &str, password: &str) -> Raw {
    let mut raw = Raw::connect(server.resp());
    assert_eq!(ask(&mut raw, &[b"AUTH", name.as_bytes(), password.as_bytes()]), line("+OK"));
    raw
}

#[test]
fn glob_patterns_of_any_size_cannot_crash_the_server() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &["--insecure-no-auth"]);
    let mut raw = Raw::connect(server.resp());
    for n in 0..50 {
        assert!(matches!(ask(&mut raw, &[b"XADD", format!("k{n}").as_bytes(), b"*", b"f", b"v"]), Value::Bulk(_)));
    }
    // 30,000 stars overflowed the stack (recursion per star) and aborted
    // the whole server, on the default loopback port without credentials.
    let stars = "*".repeat(30_000);
    let started = Instant::now();
    let Value::Array(keys) = ask(&mut raw, &[b"KEYS", stars.as_bytes()]) else { panic!("KEYS answers an array") };
    assert!(keys.len() >= 50);
    let hostile = format!("{}b", "*a".repeat(200_000));
    assert_eq!(ask(&mut raw, &[b"KEYS", hostile.as_bytes()]), Value::Array(vec![]));
    let Value::Array(page) = ask(&mut raw, &[b"SCAN", b"0", b"MATCH", stars.as_bytes(), b"COUNT", b"1000"]) else {
        panic!("SCAN answers an array")
    };
    assert_eq!(page.len(), 2);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(ask(&mut raw, &[b"PING"]), line("+PONG"));
    let reply = std::process::Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(server.socket())
        .arg("http://localhost/healthz")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&reply.stdout).contains("ok"), "the HTTP side lives too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_belong_to_their_caller_and_a_different_write_is_a_conflict() {
    let cairn = three_users();
    let server = Server::start(&cairn, &[]);
    let alice = server.tcp().with_basic("alice", "alice-pw");
    let bob = server.tcp().with_basic("bob", "bob-pw");
    let key = [("idempotency-key", "order-17")];
    let first = call(&alice, "POST", "/v1/topics/orders.1/events", &key, "secret order").await;
    assert_eq!(first.status, 201);
    let first = first.json();
    // The same key from bob is bob's own: his event is written, and he
    // learns nothing of alice's (it returned her event, topic and all).
    let theirs = call(&bob, "POST", "/v1/topics/payments.1/events", &key, "a payment").await;
    assert_eq!(theirs.status, 201);
    assert_eq!((theirs.json()["topic"].as_str(), theirs.json()["user"].as_str()), (Some("payments.1"), Some("bob")));
    assert_ne!(theirs.json()["id"], first["id"]);
    // alice's retry returns her original; the key for another write is a conflict.
    let again = call(&alice, "POST", "/v1/topics/orders.1/events", &key, "secret order").await;
    assert_eq!(again.json()["id"], first["id"]);
    let other_body = call(&alice, "POST", "/v1/topics/orders.1/events", &key, "another order").await;
    assert_eq!((other_body.status, other_body.code()), (409, "idempotency_conflict".to_owned()));
    let other_topic = call(&alice, "POST", "/v1/topics/orders.2/events", &key, "secret order").await;
    assert_eq!((other_topic.status, other_topic.code()), (409, "idempotency_conflict".to_owned()));
    let orders = call(&alice, "GET", "/v1/events?topic=orders.%3E", &[], "").await.lines();
    assert_eq!(orders.len(), 1, "nothing else was written");
    // The compatibility routes' eventId is a key too: per caller.
    let json = [("content-type", "application/json")];
    let write = r#"{"eventType":"Paid","body":{"amount":5},"eventId":"e-1"}"#;
    let root = server.tcp().with_basic("root", "root-pw");
    assert_eq!(call(&root, "PUT", "/events", &json, write).await.status, 201);
    let guess = call(&bob, "PUT", "/events", &json, r#"{"eventType":"X","body":0,"eventId":"e-1"}"#).await;
    assert_eq!(guess.status, 403, "bob may not write the compatibility topic");
    let again =
        call(&root, "PUT", "/events", &json, r#"{"eventType":"Paid","body":{"amount":6},"eventId":"e-1"}"#).await;
    assert_eq!(again.status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_belong_to_their_owner() {
    let cairn = three_users();
    let server = Server::start(&cairn, &[]);
    let alice = server.tcp().with_basic("alice", "alice-pw");
    let bob = server.tcp().with_basic("bob", "bob-pw");
    let root = server.tcp().with_basic("root", "root-pw");
    let event = call(&alice, "POST", "/v1/topics/orders.1/events", &[], "x").await.json();
    let id = event["id"].as_str().unwrap().to_owned();
    assert_eq!(call(&alice, "PUT", &format!("/v1/consumers/billing?id={id}"), &[], "").await.status, 200);
    // bob sees no consumer of alice's, cannot move, rewind or delete it.
    assert_eq!(call(&bob, "GET", "/v1/consumers", &[], "").await.json(), serde_json::json!([]));
    assert_eq!(call(&bob, "GET", "/v1/consumers/billing", &[], "").await.status, 404);
    assert_eq!(call(&bob, "DELETE", "/v1/consumers/billing", &[], "").await.status, 404);
    assert_eq!(call(&bob, "GET", "/v1/consumers/billing?owner=user:alice", &[], "").await.status, 403);
    let rewind = call(&bob, "PUT", &format!("/v1/consumers/billing?owner=user:alice&id={id}"), &[], "").await;
    assert_eq!(rewind.status, 403);
    // His own `billing` is his own.
    assert_eq!(call(&bob, "PUT", &format!("/v1/consumers/billing?id={id}"), &[], "").await.status, 200);
    assert_eq!(call(&bob, "DELETE", "/v1/consumers/billing", &[], "").await.status, 204);
    let mine = call(&alice, "GET", "/v1/consumers/billing", &[], "").await.json();
    assert_eq!((mine["acked"].as_str(), mine["owner"].as_str()), (Some(id.as_str()), Some("user:alice")));
    // An admin sees everyone's, and acts on them by owner.
    let all = call(&root, "GET", "/v1/consumers", &[], "").await.json();
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert_eq!(call(&root, "DELETE", "/v1/consumers/billing?owner=user:alice", &[], "").await.status, 204);
    assert_eq!(call(&alice, "GET", "/v1/consumers/billing", &[], "").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_is_served_only_to_who_may_see_it() {
    let cairn = three_users();
    let server = Server::start(&cairn, &[]);
    let alice = server.tcp().with_basic("alice", "alice-pw");
    let bob = server.tcp().with_basic("bob", "bob-pw");
    let big = "s".repeat(10_000);
    let stored = call(&alice, "POST", "/v1/topics/orders.1/events", &[], big.clone()).await.json();
    let small = call(&alice, "POST", "/v1/topics/orders.1/events", &[], "pin 4711").await.json();
    for hash in [stored["hash"].as_str().unwrap(), small["hash"].as_str().unwrap()] {
        let path = format!("/v1/cas/{}", cairn_client::encode(hash));
        let reply = call(&alice, "GET", &path, &[], "").await;
        assert_eq!(reply.status, 200);
        assert!(
            !reply.header("cache-control").unwrap_or_default().contains("public"),
            "authenticated replies are private"
        );
        // bob cannot read it, nor confirm a guess with HEAD: not found, as for nothing.
        assert_eq!(call(&bob, "GET", &path, &[], "").await.status, 404);
        assert_eq!(call(&bob, "HEAD", &path, &[], "").await.status, 404);
        assert_eq!(call(&bob, "DELETE", &path, &[], "").await.status, 404);
    }
    let hex = |sri: &str| {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(sri.trim_start_matches("sha256-")).unwrap();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let small_hex = hex(small["hash"].as_str().unwrap());
    assert_eq!(call(&alice, "GET", &format!("/storage/{small_hex}"), &[], "").await.body, b"pin 4711");
    assert_eq!(call(&bob, "GET", &format!("/storage/{small_hex}"), &[], "").await.status, 404);
    // Content put on its own is its putter's: others can neither read nor delete it.
    let put = call(&bob, "PUT", "/v1/cas", &[], "bob's file").await.json();
    let path = format!("/v1/cas/{}", put["hex"].as_str().unwrap());
    assert_eq!(call(&bob, "GET", &path, &[], "").await.body, b"bob's file");
    assert_eq!(call(&alice, "GET", &path, &[], "").await.status, 404);
    assert_eq!(call(&alice, "DELETE", &path, &[], "").await.status, 404);
    // When both put the same bytes, each deletes only its own claim.
    call(&alice, "PUT", "/v1/cas", &[], "bob's file").await;
    assert_eq!(call(&alice, "DELETE", &path, &[], "").await.status, 204);
    assert_eq!(call(&bob, "GET", &path, &[], "").await.status, 200, "bob's claim holds");
    assert_eq!(call(&alice, "GET", &path, &[], "").await.status, 404);
    assert_eq!(call(&bob, "DELETE", &path, &[], "").await.status, 204);
    assert_eq!(call(&server.unix(), "GET", &path, &[], "").await.status, 404, "the bytes are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_or_removing_a_user_ends_live_sessions() {
    let cairn = three_users();
    let server = Server::start(&cairn, &["--resp-require-auth"]);
    let root = server.tcp().with_basic("root", "root-pw");
    let issued = call(&root, "POST", "/v1/users/alice/tokens", &[], "").await.json();
    let (token, token_id) = (issued["token"].as_str().unwrap().to_owned(), issued["id"].as_str().unwrap().to_owned());
    // A RESP connection and an HTTP follow stream on the token.
    let mut raw = Raw::connect(server.resp());
    assert_eq!(ask(&mut raw, &[b"AUTH", token.as_bytes()]), line("+OK"));
    assert!(matches!(ask(&mut raw, &[b"XADD", b"orders.1", b"*", b"n", b"1"]), Value::Bulk(_)));
    let alice = server.tcp().with_token(&token);
    let mut connection = alice.connect().await.unwrap();
    let mut follow = connection.send("GET", "/v1/events?topic=orders.%3E&follow=true", &[], "".into()).await.unwrap();
    assert_eq!(follow.status, 200);
    let first = follow.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("orders.1"));
    // Revoked: the stream ends with an error frame, the connection is told and closed.
    assert_eq!(call(&root, "DELETE", &format!("/v1/tokens/{token_id}"), &[], "").await.status, 204);
    let ended = crate::serve::until_end(&mut follow).await;
    assert!(ended.contains("revoked"), "{ended}");
    assert!(raw.line().starts_with("-NOAUTH"), "the RESP connection is told");
    assert!(raw.closed());
    // Nothing can be written on a revoked session.
    let mut late = Raw::connect(server.resp());
    late.command(&[b"AUTH", token.as_bytes()]);
    assert!(late.line().starts_with("-WRONGPASS"));
    // A removed user's password sessions end the same way.
    let mut bob = resp_as(&server, "bob", "bob-pw");
    assert_eq!(call(&root, "DELETE", "/v1/users/bob", &[], "").await.status, 204);
    assert!(bob.line().starts_with("-NOAUTH"));
    let events = call(&server.unix(), "GET", "/v1/events?topic=orders.%3E", &[], "").await.lines();
    assert_eq!(events.len(), 1);
}

#[test]
fn an_unauthenticated_redis_client_costs_little() {
    let cairn = three_users();
    let server = Server::start(&cairn, &["--resp-require-auth"]);
    let before = rss_kib(server.pid());
    // One command declaring a million arguments of 8 MiB: refused once the
    // declared bytes pass the unauthenticated bound, before they arrive.
    let mut raw = Raw::connect(server.resp());
    raw.send(b"*1048576\r\n");
    assert!(raw.line().starts_with("-ERR Protocol error"));
    assert!(raw.closed());
    let mut raw = Raw::connect(server.resp());
    raw.send(b"*3\r\n$4\r\nAUTH\r\n$8388608\r\n");
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..16 {
        if raw.writer.write_all(&chunk).is_err() {
            break;
        }
    }
    assert!(raw.line().starts_with("-ERR Protocol error"));
    // Ten such clients at once, each sending many small arguments.
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let mut raw = Raw::connect(server.resp());
            let mut command = b"*100000\r\n".to_vec();
            for _ in 0..2000 {
                command.extend_from_slice(b"$4\r\nabcd\r\n");
            }
            raw.send(&command);
            raw
        })
        .collect();
    for mut raw in clients {
        assert!(raw.line().starts_with("-ERR Protocol error"));
    }
    let grown = rss_kib(server.pid()).saturating_sub(before);
    assert!(grown < 32 * 1024, "RSS grew {grown} KiB for unauthenticated clients");
    // An authenticated client may send big commands.
    let mut alice = resp_as(&server, "alice", "alice-pw");
    let big = vec![b'x'; 1024 * 1024];
    assert!(matches!(ask(&mut alice, &[b"XADD", b"orders.big", b"*", b"f", &big]), Value::Bulk(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_bounded_in_memory_and_rate() {
    let cairn = three_users();
    let server = Server::start(&cairn, &["--resp-require-auth"]);
    let before = rss_kib(server.pid());
    // 100 concurrent wrong passwords: at most two argon2 checks run at once
    // (each ~19 MiB); it was 2 GB, one per request on the blocking pool.
    let guesses: Vec<_> = (0..100)
        .map(|n| {
            let tcp = server.tcp().with_basic("alice", &format!("guess-{n}"));
            tokio::spawn(async move { call(&tcp, "GET", "/v1/topics", &[], "").await.status })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for guess in guesses {
        *statuses.entry(guess.await.unwrap()).or_default() += 1;
    }
    let grown = rss_kib(server.pid()).saturating_sub(before);
    eprintln!("100 concurrent wrong passwords: RSS grew {grown} KiB, replies {statuses:?}");
    assert!(grown < 200 * 1024, "RSS grew {grown} KiB");
    assert!(statuses.keys().all(|status| [401, 429, 503].contains(status)), "{statuses:?}");
    assert!(statuses.contains_key(&429), "guessing backs off: {statuses:?}");
    // From this address, even the right password waits out the backoff.
    let right = server.tcp().with_basic("alice", "alice-pw");
    let reply = call(&right, "GET", "/v1/topics", &[], "").await;
    assert_eq!((reply.status, reply.code()), (429, "throttled".to_owned()));
    assert!(reply.header("retry-after").is_some());
    // The same over the Redis port: after a few failures, AUTH is refused
    // outright, the right password included.
    let mut raw = Raw::connect(server.resp());
    for n in 0..30 {
        raw.command(&[b"AUTH", b"bob", format!("guess-{n}").as_bytes()]);
        let reply = raw.line();
        assert!(reply.starts_with("-WRONGPASS") || reply.contains("too many failed logins"), "{reply}");
    }
    raw.command(&[b"AUTH", b"bob", b"bob-pw"]);
    assert!(raw.line().contains("too many failed logins"));
}

#[test]
fn store_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt as _;
    for umask in ["000", "022"] {
        let cairn = Cairn::new();
        let cairn_bin = env!("CARGO_BIN_EXE_cairn");
        let run = |args: &str, stdin: &str| {
            let script = format!("umask {umask}; printf '%s' \"$1\" | exec {cairn_bin} --store \"$0\" {args}");
            let status = std::process::Command::new("sh")
                .args(["-c", &script])
                .arg(cairn.store())
                .arg(stdin)
                .env("CAIRN_SYNC", "none")
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "cairn {args}");
        };
        run("append small", "tiny payload");
        run("append big", &"b".repeat(10_000));
        run("cas put", "standalone");
        run("user add alice", "pw");
        // A server started under the same umask: its socket.
        let mut command = cairn.command(&["serve", "--no-resp"]);
        command.env("CAIRN_UMASK_TEST", umask);
        let script = format!("umask {umask}; exec \"$@\"");
        let mut wrapped = std::process::Command::new("sh");
        wrapped.args(["-c", &script, "sh"]).arg(command.get_program()).args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        let server = Server::spawn(wrapped);
        let socket_mode = std::fs::metadata(server.socket()).unwrap().permissions().mode() & 0o777;
        assert_eq!(socket_mode, 0o600, "umask {umask}: the socket");
        server.terminate();
        let mut checked = 0;
        let mut stack = vec![cairn.store().to_path_buf()];
        while let Some(dir) = stack.pop() {
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            // fjall's own directories inside index/ follow the umask; index/ keeps them private.
            let inside_index = dir.strip_prefix(cairn.store()).unwrap().starts_with("index") && !dir.ends_with("index");
            if !inside_index {
                assert_eq!(mode, 0o700, "umask {umask}: {} is {mode:o}", dir.display());
            }
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let in_index = path.strip_prefix(cairn.store()).unwrap().starts_with("index");
                if !in_index {
                    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                    assert_eq!(mode, 0o600, "umask {umask}: {} is {mode:o}", path.display());
                    checked += 1;
                }
            }
        }
        assert!(checked >= 4, "segments, content, LOCK and users.json were checked");
        // The store directory keeps others out of every file in it,
        // fjall's included.
        assert_eq!(std::fs::metadata(cairn.store()).unwrap().permissions().mode() & 0o077, 0);
    }
}

#[test]
fn slow_request_bodies_do_not_hold_connection_slots() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &["--insecure-no-auth", "--max-connections", "20", "--body-timeout", "1s"]);
    let address = server.url().trim_start_matches("http://").to_owned();
    // 20 connections declare a 100-byte body and send 2 bytes of it.
    let slow: Vec<_> = (0..20)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(&address).unwrap();
            let head = format!("POST /v1/topics/t/events HTTP/1.1\r\nHost: {address}\r\nContent-Length: 100\r\n\r\nab");
            stream.write_all(head.as_bytes()).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            stream
        })
        .collect();
    let started = Instant::now();
    for mut stream in slow {
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "slow bodies held slots for {:?}", started.elapsed());
    // The slots are free again.
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    let request = format!(
        "POST /v1/topics/t/events HTTP/1.1\r\nHost: {address}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_cannot_be_erased_by_users() {
    let cairn = three_users();
    let server = Server::start(&cairn, &["--resp-require-auth"]);
    let root = server.tcp().with_basic("root", "root-pw");
    let start = call(&root, "GET", "/v1/events?topic=cairn.start", &[], "").await.lines();
    let id = start[0]["id"].as_str().unwrap().to_owned();
    // Not even an admin user, who may read and write everything else.
    assert_eq!(call(&root, "DELETE", &format!("/v1/events/{id}"), &[], "").await.status, 403);
    let mut raw = resp_as(&server, "root", "root-pw");
    let Value::Array(entries) = ask(&mut raw, &[b"XRANGE", b"cairn.start", b"-", b"+"]) else { panic!() };
    let Value::Array(first) = &entries[0] else { panic!() };
    let Value::Bulk(entry_id) = &first[0] else { panic!() };
    assert!(
        matches!(ask(&mut raw, &[b"XDEL", b"cairn.start", entry_id]), Value::Line(reply) if reply.starts_with("-NOPERM"))
    );
    assert!(
        matches!(ask(&mut raw, &[b"XTRIM", b"cairn.start", b"MAXLEN", b"0"]), Value::Line(reply) if reply.starts_with("-NOPERM"))
    );
    assert_eq!(call(&root, "GET", "/v1/events?topic=cairn.start", &[], "").await.lines().len(), 1);
    // The socket (the store's owner) may.
    assert_eq!(call(&server.unix(), "DELETE", &format!("/v1/events/{id}"), &[], "").await.status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_outside_the_read_patterns_stay_hidden() {
    let cairn = three_users();
    let server = Server::start(&cairn, &["--resp-require-auth"]);
    let alice = server.tcp().with_basic("alice", "alice-pw");
    let secret = call(&alice, "POST", "/v1/topics/orders.secret/events", &[], "x").await.json();
    let mut bob = resp_as(&server, "bob", "bob-pw");
    assert!(matches!(ask(&mut bob, &[b"XADD", b"payments.1", b"*", b"f", b"v"]), Value::Bulk(_)));
    let listed = |value: Value| match value {
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Bulk(bytes) => String::from_utf8(bytes).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(listed(ask(&mut bob, &[b"KEYS", b"*"])), ["payments.1"]);
    let Value::Array(scan) = ask(&mut bob, &[b"SCAN", b"0", b"COUNT", b"100"]) else { panic!() };
    assert_eq!(listed(scan.into_iter().nth(1).unwrap()), ["payments.1"]);
    assert_eq!(ask(&mut bob, &[b"DBSIZE"]), line(":1"));
    assert_eq!(ask(&mut bob, &[b"EXISTS", b"orders.secret", b"cairn.start"]), line(":0"));
    assert_eq!(ask(&mut bob, &[b"TYPE", b"orders.secret"]), line("+none"));
    let Value::Bulk(info) = ask(&mut bob, &[b"INFO", b"keyspace"]) else { panic!() };
    assert!(String::from_utf8_lossy(&info).contains("keys=1,"), "{}", String::from_utf8_lossy(&info));
    // Over HTTP, an event bob may not read is as absent as one that never was.
    let bob_http = server.tcp().with_basic("bob", "bob-pw");
    let unreadable = call(&bob_http, "GET", &format!("/v1/events/{}", secret["id"].as_str().unwrap()), &[], "").await;
    let missing = call(&bob_http, "GET", "/v1/events/03zzzzzzzzzzzzzzzzzzzzzzz", &[], "").await;
    assert_eq!((unreadable.status, missing.status), (404, 404));
    assert_eq!(unreadable.code(), missing.code());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_cannot_mint_tokens_or_take_the_password() {
    let cairn = three_users();
    let server = Server::start(&cairn, &[]);
    let by_password = server.tcp().with_basic("alice", "alice-pw");
    let issued = call(&by_password, "POST", "/v1/users/alice/tokens", &[], "").await;
    assert_eq!(issued.status, 201, "a password session issues its own tokens");
    let token = issued.json()["token"].as_str().unwrap().to_owned();
    let by_token = server.tcp().with_token(&token);
    assert_eq!(call(&by_token, "POST", "/v1/users/alice/tokens", &[], "").await.status, 403);
    let proof = r#"{"password":"alice-pw"}"#;
    assert_eq!(call(&by_token, "POST", "/v1/users/alice/tokens", &[], proof).await.status, 201);
    let wrong = r#"{"password":"nope"}"#;
    assert_eq!(call(&by_token, "POST", "/v1/users/alice/tokens", &[], wrong).await.status, 403);
    assert_eq!(call(&by_token, "POST", "/v1/users/bob/tokens", &[], proof).await.status, 403);
    let take_over = r#"{"password":"mine-now"}"#;
    assert_eq!(call(&by_token, "PUT", "/v1/users/alice/password", &[], take_over).await.status, 403);
    let with_old = r#"{"password":"mine-now","old_password":"alice-pw"}"#;
    assert_eq!(call(&by_token, "PUT", "/v1/users/alice/password", &[], with_old).await.status, 204);
    // A user revokes its own tokens, not another's.
    let bob = server.tcp().with_basic("bob", "bob-pw");
    let id = issued.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(call(&bob, "DELETE", &format!("/v1/tokens/{id}"), &[], "").await.status, 404);
    assert_eq!(call(&by_token, "DELETE", &format!("/v1/tokens/{id}"), &[], "").await.status, 204);
    assert_eq!(call(&by_token, "GET", "/v1/topics", &[], "").await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_follows_rfc_9110() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &["--insecure-no-auth"]);
    let tcp = server.tcp();
    let post = async |tag: &str, body: &str| {
        call(&tcp, "POST", "/v1/topics/doc/events", &[("if-match", tag)], body.to_owned()).await
    };
    // `*`: only when the topic has a current representation.
    assert_eq!(post("*", "v0").await.status, 412);
    let created = post("\"empty\"", "v1").await;
    assert_eq!(created.status, 201);
    assert_eq!(post("*", "v2").await.status, 201);
    let etag = call(&tcp, "GET", "/v1/topics/doc", &[], "").await.header("etag").unwrap().to_owned();
    // Weak and unknown tags never match strongly: 412, not 400.
    for tag in [
        format!("W/{etag}"),
        "\"nope\"".to_owned(),
        "nope".to_owned(),
        format!("\"{}\"", created.json()["id"].as_str().unwrap()),
    ] {
        let reply = post(&tag, "stale").await;
        assert_eq!((reply.status, reply.code()), (412, "precondition_failed".to_owned()), "{tag}");
        assert_eq!(reply.header("etag"), Some(etag.as_str()), "412 names the current tag");
    }
    // A list matches when any of its tags does.
    assert_eq!(post(&format!("\"other\", {etag}"), "v3").await.status, 201);
    assert_eq!(call(&tcp, "GET", "/v1/topics/doc", &[], "").await.json()["count"], 3);
    // The compatibility routes alike.
    let json = [("content-type", "application/json")];
    let reply = call(&tcp, "PUT", "/events", &[("if-match", "*"), json[0]], r#"{"eventType":"X","body":1}"#).await;
    assert_eq!(reply.status, 412);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_cannot_drive_the_server_through_a_browser() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &["--insecure-no-auth", "--allow-origin", "https://app.example"]);
    let address = server.url().trim_start_matches("http://").to_owned();
    let raw = |headers: &str| {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        let request =
            format!("POST /v1/topics/t/events HTTP/1.1\r\n{headers}Content-Length: 1\r\nConnection: close\r\n\r\nx");
        stream.write_all(request.as_bytes()).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply[9..12].parse::<u16>().unwrap()
    };
    let host = format!("Host: {address}\r\n");
    // A page on another site (CSRF) and a rebound name (DNS rebinding).
    assert_eq!(raw(&format!("{host}Origin: http://evil.example\r\n")), 403);
    assert_eq!(raw(&format!("{host}Origin: null\r\n")), 403);
    assert_eq!(raw(&format!("Host: evil.example:{}\r\n", address.rsplit(':').next().unwrap())), 403);
    // The server's own names, its own origin and an allowed one.
    assert_eq!(raw(&host), 201);
    assert_eq!(raw(&format!("Host: localhost:{}\r\n", address.rsplit(':').next().unwrap())), 201);
    assert_eq!(raw(&format!("{host}Origin: http://{address}\r\n")), 201);
    assert_eq!(raw(&format!("{host}Origin: https://app.example\r\n")), 201);
    assert_eq!(call(&server.unix(), "GET", "/v1/events?topic=t", &[], "").await.lines().len(), 4);
}

#[test]
fn parsing_costs_linear_time_in_the_input() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &["--insecure-no-auth", "--resp-command-bytes-max", "33554432"]);
    // 800,000 one-byte arguments in 1 KiB writes: 1.35 s of CPU when every
    // read re-parsed the command from its start.
    let mut raw = Raw::connect(server.resp());
    let mut command = b"*800002\r\n$4\r\nECHO\r\n$1\r\na\r\n".to_vec();
    for _ in 0..800_000 {
        command.extend_from_slice(b"$1\r\na\r\n");
    }
    let before = cpu_seconds(server.pid());
    for piece in command.chunks(1024) {
        raw.send(piece);
    }
    assert!(raw.line().starts_with("-ERR wrong number of arguments"));
    let spent = cpu_seconds(server.pid()) - before;
    assert!(spent < 0.8, "the server spent {spent:.2} s of CPU on one command");
    // One 16 MiB import line in 64 KiB pieces (5.6 s before), through the
    // socket (an import needs an admin).
    let mut stream = std::os::unix::net::UnixStream::connect(server.socket()).unwrap();
    let before = cpu_seconds(server.pid());
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = "POST /v1/import HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    let piece = vec![b'x'; 64 * 1024];
    for _ in 0..256 {
        if stream.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).is_err() || stream.write_all(&piece).is_err() {
            break;
        }
        let _ = stream.write_all(b"\r\n");
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    assert!(
        String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&reply[..reply.len().min(300)])
    );
    let spent = cpu_seconds(server.pid()) - before;
    assert!(spent < 2.0, "the server spent {spent:.2} s of CPU on one import line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_wide_counters_are_for_admins() {
    // Write counts, bytes on disk and connection counts tell a user of
    // writes and content it may not see.
    let cairn = three_users();
    let server = Server::start(&cairn, &["--resp-require-auth"]);
    let alice = server.tcp().with_basic("alice", "alice-pw");
    let root = server.tcp().with_basic("root", "root-pw");
    assert_eq!(call(&alice, "GET", "/metrics", &[], "").await.status, 403);
    let metrics = call(&root, "GET", "/metrics", &[], "").await;
    assert_eq!(metrics.status, 200);
    assert!(String::from_utf8_lossy(&metrics.body).contains("cairn_fsync"));
    let info = call(&alice, "GET", "/v1/info", &[], "").await.json();
    assert!(info.get("log_bytes").is_none() && info.get("events_appended_since_start").is_none(), "{info}");
    assert!(info["version"].is_string());
    let info = call(&root, "GET", "/v1/info", &[], "").await.json();
    assert!(info["log_bytes"].is_u64(), "{info}");
    let text = |value: Value| match value {
        Value::Bulk(bytes) => String::from_utf8(bytes).unwrap(),
        other => panic!("{other:?}"),
    };
    let alice_info = text(ask(&mut resp_as(&server, "alice", "alice-pw"), &[b"INFO"]));
    for hidden in ["cairn_log_bytes", "cairn_events_appended", "connected_clients", "process_id"] {
        assert!(!alice_info.contains(hidden), "{hidden} in {alice_info}");
    }
    let root_info = text(ask(&mut resp_as(&server, "root", "root-pw"), &[b"INFO"]));
    assert!(root_info.contains("cairn_log_bytes") && root_info.contains("connected_clients"), "{root_info}");
}

#[test]
fn unauthenticated_redis_connections_are_bounded_per_address_and_in_time() {
    let cairn = three_users();
    let server = Server::start(&cairn, &["--resp-require-auth"]);
    // 64 connections from one address may wait for AUTH; the 65th is refused.
    let mut waiting: Vec<Raw> = (0..64)
        .map(|_| {
            let mut raw = Raw::connect(server.resp());
            assert!(ask(&mut raw, &[b"PING"]) == line("-NOAUTH Authentication required."));
            raw
        })
        .collect();
    let mut refused = Raw::connect(server.resp());
    assert!(refused.line().starts_with("-ERR too many connections awaiting AUTH"));
    assert!(refused.closed());
    // One that authenticates frees its place.
    assert_eq!(ask(&mut waiting[0], &[b"AUTH", b"alice", b"alice-pw"]), line("+OK"));
    let mut next = Raw::connect(server.resp());
    assert_eq!(ask(&mut next, &[b"PING"]), line("-NOAUTH Authentication required."));
    // The rest are closed once their time to authenticate is up; the
    // authenticated one stays.
    let started = Instant::now();
    waiting[1].writer.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert!(waiting[1].line().starts_with("-NOAUTH Authentication required within"));
    assert!(waiting[1].closed());
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(ask(&mut waiting[0], &[b"PING"]), line("+PONG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_names_and_subscriptions_are_bounded() {
    let cairn = three_users();
    let server = Server::start(&cairn, &["--resp-require-auth"]);
    let mut alice = resp_as(&server, "alice", "alice-pw");
    // Nine events sharing one payload of nearly 8 MiB are stored once, but
    // a COUNT-less XRANGE of them would build a 72 MiB reply.
    let value = vec![b'x'; 8 * 1024 * 1024 - 16];
    for _ in 0..9 {
        assert!(matches!(ask(&mut alice, &[b"XADD", b"orders.big", b"*", b"f", &value]), Value::Bulk(_)));
    }
    let refused = ask(&mut alice, &[b"XRANGE", b"orders.big", b"-", b"+"]);
    assert!(
        matches!(&refused, Value::Line(reply) if reply.starts_with("-ERR") && reply.contains("COUNT")),
        "{refused:?}"
    );
    let Value::Array(page) = ask(&mut alice, &[b"XRANGE", b"orders.big", b"-", b"+", b"COUNT", b"3"]) else { panic!() };
    assert_eq!(page.len(), 3);
    // A read that resumes after its last entry stops short instead.
    let Value::Array(streams) = ask(&mut alice, &[b"XREAD", b"COUNT", b"100", b"STREAMS", b"orders.big", b"0"]) else {
        panic!()
    };
    let Value::Array(stream) = &streams[0] else { panic!() };
    let Value::Array(entries) = &stream[1] else { panic!() };
    assert!((1..9).contains(&entries.len()), "{} entries", entries.len());
    // Names that become part of stored keys are bounded.
    let long = vec![b'g'; 300];
    let reply = ask(&mut alice, &[b"XGROUP", b"CREATE", b"orders.big", &long, b"0"]);
    assert!(matches!(&reply, Value::Line(reply) if reply.starts_with("-ERR")), "{reply:?}");
    assert_eq!(ask(&mut alice, &[b"XGROUP", b"CREATE", b"orders.big", b"g", b"0"]), line("+OK"));
    let reply = ask(&mut alice, &[b"XREADGROUP", b"GROUP", b"g", &long, b"STREAMS", b"orders.big", b">"]);
    assert!(matches!(&reply, Value::Line(reply) if reply.starts_with("-ERR")), "{reply:?}");
    // One connection holds a bounded number of subscriptions (MeiliES's:
    // a connection that sent only AUTH and MeiliES's commands).
    let mut meilies = resp_as(&server, "alice", "alice-pw");
    let specs: Vec<Vec<u8>> = (0..257).map(|n| format!("orders.s{n}").into_bytes()).collect();
    let mut command: Vec<&[u8]> = vec![b"subscribe"];
    command.extend(specs.iter().map(Vec::as_slice));
    let reply = ask(&mut meilies, &command);
    assert!(matches!(&reply, Value::Line(reply) if reply.contains("at most 256 subscriptions")), "{reply:?}");
    // A batch is refused at its 100,001st event, not after building them all.
    let http = server.tcp().with_basic("alice", "alice-pw");
    let body = "{\"topic\":\"orders.b\"}\n".repeat(100_001);
    let reply = call(&http, "POST", "/v1/batch", &[("content-type", "application/x-ndjson")], body).await;
    assert_eq!(reply.status, 400);
    assert!(String::from_utf8_lossy(&reply.body).contains("at most 100000 events"));
    let body = format!("[{}]", vec!["{\"topic\":\"orders.b\"}"; 100_001].join(","));
    let reply = call(&http, "POST", "/v1/batch", &[("content-type", "application/json")], body).await;
    assert_eq!(reply.status, 400);
    assert!(String::from_utf8_lossy(&reply.body).contains("at most 100000 events"));
    assert_eq!(ask(&mut alice, &[b"XLEN", b"orders.b"]), line(":0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_snapshots_belong_to_their_owner() {
    let cairn = three_users();
    let server = Server::start(&cairn, &[]);
    let alice = server.tcp().with_basic("alice", "alice-pw");
    let bob = server.tcp().with_basic("bob", "bob-pw");
    let root = server.tcp().with_basic("root", "root-pw");
    let event = call(&alice, "POST", "/v1/topics/orders.1/events", &[], "x").await.json();
    let id = event["id"].as_str().unwrap().to_owned();
    let put = call(&alice, "PUT", &format!("/v1/consumers/totals/snapshot?id={id}"), &[], "alice's secret state").await;
    assert_eq!(put.status, 200);
    assert_eq!(put.json()["snapshot"], serde_json::json!({ "at": id, "bytes": 20 }));
    let got = call(&alice, "GET", "/v1/consumers/totals/snapshot", &[], "").await;
    assert_eq!((got.status, got.body.as_slice()), (200, b"alice's secret state".as_slice()));
    assert_eq!(got.header("cairn-snapshot-at"), Some(id.as_str()));
    // bob: his `totals` is his own, alice's is not his to read or replace.
    assert_eq!(call(&bob, "GET", "/v1/consumers/totals/snapshot", &[], "").await.status, 404);
    assert_eq!(call(&bob, "GET", "/v1/consumers/totals/snapshot?owner=user:alice", &[], "").await.status, 403);
    let replace = call(&bob, "PUT", &format!("/v1/consumers/totals/snapshot?owner=user:alice&id={id}"), &[], "x").await;
    assert_eq!(replace.status, 403);
    assert_eq!(call(&bob, "PUT", &format!("/v1/consumers/totals/snapshot?id={id}"), &[], "bob's").await.status, 200);
    let got = call(&alice, "GET", "/v1/consumers/totals/snapshot", &[], "").await;
    assert_eq!(got.body, b"alice's secret state");
    // An admin reads it by owner; a snapshot over 16 MiB is refused whole.
    let by_admin = call(&root, "GET", "/v1/consumers/totals/snapshot?owner=user:alice", &[], "").await;
    assert_eq!(by_admin.body, b"alice's secret state");
    let huge = vec![b'x'; 16 * 1024 * 1024 + 1];
    let mut connection = alice.connect().await.unwrap();
    let path = format!("/v1/consumers/totals/snapshot?id={id}");
    // The server may answer 413 and close while the body is still being sent.
    if let Ok(reply) = connection.send("PUT", &path, &[], huge.into()).await {
        assert_eq!(reply.status, 413);
    }
    assert_eq!(call(&alice, "PUT", "/v1/consumers/totals/snapshot", &[], "no id").await.status, 400);
    assert_eq!(call(&alice, "GET", "/v1/consumers/totals/snapshot", &[], "").await.body, b"alice's secret state");
    // Unauthenticated: nothing.
    assert_eq!(call(&server.tcp(), "GET", "/v1/consumers/totals/snapshot", &[], "").await.status, 401);
    // A user who may write nothing stores nothing.
    let reader = r#"{"name":"reader","password":"reader-pw","read":["orders.>"],"write":[]}"#;
    assert_eq!(call(&root, "POST", "/v1/users", &[], reader).await.status, 201);
    let reader = server.tcp().with_basic("reader", "reader-pw");
    let put = call(&reader, "PUT", &format!("/v1/consumers/mine/snapshot?id={id}"), &[], "x").await;
    assert_eq!(put.status, 403);
    // A removed user's snapshots go with it: a new user of the same name
    // inherits nothing.
    assert_eq!(call(&root, "DELETE", "/v1/users/bob", &[], "").await.status, 204);
    let new_bob = r#"{"name":"bob","password":"bob-2","read":["payments.>"],"write":["payments.>"]}"#;
    assert_eq!(call(&root, "POST", "/v1/users", &[], new_bob).await.status, 201);
    let bob = server.tcp().with_basic("bob", "bob-2");
    assert_eq!(call(&bob, "GET", "/v1/consumers/totals/snapshot", &[], "").await.status, 404);
    assert_eq!(call(&bob, "GET", "/v1/consumers", &[], "").await.json(), serde_json::json!([]));
}
