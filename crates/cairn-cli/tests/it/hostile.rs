//! Seeded random requests from a hostile user over the whole HTTP surface
//! and the whole Redis command surface, aimed at another user's data.
//!
//! `alice` (reads and writes `orders.>`) has events with secret payloads,
//! a consumer, a consumer group with pending entries, content put on its
//! own and a token. `bob` (`payments.>`) sends random requests built from
//! every route and command, with alice's topics, ids, hashes, consumer,
//! group and token id as arguments. Every reply must be a non-5xx (or a
//! Redis reply), must carry none of alice's secrets, and afterwards
//! alice's data must be exactly as it was: bob read, learned about, moved
//! and deleted nothing of hers. `CAIRN_HOSTILE_CASES=N` (default 300 per
//! door) and `CAIRN_HOSTILE_SEED=S` (printed) replay a run.

use std::io::{Read as _, Write as _};

use base64::Engine as _;

use crate::Cairn;
use crate::http::Rng;
use crate::resp::{Raw, Value, ask};
use crate::serve::{Server, call};

/// Secrets of alice's that no reply to bob may contain (and her token).
const MARKERS: &[&str] = &["ALICE-SECRET", "\"user\":\"alice\"", "\"owner\":\"user:alice\"", "alice-pw", "$argon2"];

/// Alice's things, seeded before bob's run.
struct Alice {
    ids: Vec<String>,
    stream_ids: Vec<String>,
    hashes: Vec<String>,
    token_id: String,
    token: String,
}

fn user(cairn: &Cairn, args: &[&str], password: &str) {
    let mut full = vec!["user"];
    full.extend_from_slice(args);
    let output = cairn.command(&full).env("CAIRN_PASSWORD", password).output().unwrap();
    assert!(output.status.success(), "cairn user {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

fn seed() -> u64 {
    let seed = std::env::var("CAIRN_HOSTILE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("hostile requests with CAIRN_HOSTILE_SEED={seed}");
    seed
}

fn cases() -> u64 {
    std::env::var("CAIRN_HOSTILE_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(300)
}

/// Starts a server with root, alice and bob, and alice's data.
async fn world() -> (Cairn, Server, Alice) {
    let cairn = Cairn::new();
    user(&cairn, &["add", "root", "--admin"], "root-pw");
    user(&cairn, &["add", "alice", "--read", "orders.>", "--write", "orders.>"], "alice-pw");
    user(&cairn, &["add", "bob", "--read", "payments.>", "--write", "payments.>"], "bob-pw");
    let server = Server::start(&cairn, &["--resp-require-auth", "--allow-delete"]);
    let alice = server.tcp().with_basic("alice", "alice-pw");
    let mut ids = Vec::new();
    let mut hashes = Vec::new();
    for n in 0..4 {
        let body = if n == 3 { format!("ALICE-SECRET-{n}-{}", "x".repeat(8000)) } else { format!("ALICE-SECRET-{n}") };
        let event = call(&alice, "POST", "/v1/topics/orders.1/events", &[], body).await.json();
        ids.push(event["id"].as_str().unwrap().to_owned());
        hashes.push(event["hash"].as_str().unwrap().to_owned());
    }
    let own = call(&alice, "PUT", "/v1/cas", &[], "ALICE-SECRET-file").await.json();
    hashes.push(own["hash"].as_str().unwrap().to_owned());
    assert_eq!(call(&alice, "PUT", &format!("/v1/consumers/billing?id={}", ids[1]), &[], "").await.status, 200);
    let path = format!("/v1/consumers/billing/snapshot?id={}", ids[0]);
    assert_eq!(call(&alice, "PUT", &path, &[], "ALICE-SECRET-snapshot").await.status, 200);
    let token = call(&alice, "POST", "/v1/users/alice/tokens", &[], "").await.json();
    let mut raw = Raw::connect(server.resp());
    assert!(matches!(ask(&mut raw, &[b"AUTH", b"alice", b"alice-pw"]), Value::Line(ok) if ok == "+OK"));
    assert!(matches!(ask(&mut raw, &[b"XGROUP", b"CREATE", b"orders.1", b"shipping", b"0"]), Value::Line(_)));
    let read =
        ask(&mut raw, &[b"XREADGROUP", b"GROUP", b"shipping", b"w1", b"COUNT", b"2", b"STREAMS", b"orders.1", b">"]);
    let mut stream_ids = Vec::new();
    collect_ids(&read, &mut stream_ids);
    assert_eq!(stream_ids.len(), 2, "{read:?}");
    // A processor an admin runs: its program line is a secret too.
    let root = server.tcp().with_basic("root", "root-pw");
    let spec = r#"{"kind":"generator","sh":"echo ALICE-SECRET-proc >&2; sleep 600"}"#;
    assert_eq!(call(&root, "POST", "/v1/procs/billing", &[], spec).await.status, 201);
    // It runs, and its log line is there, before the snapshot (both come
    // on their own time).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let logs = call(&root, "GET", "/v1/procs/billing/logs?content=true", &[], "").await.body;
        let list = call(&root, "GET", "/v1/procs", &[], "").await.body;
        if String::from_utf8_lossy(&logs).contains("ALICE-SECRET-proc")
            && String::from_utf8_lossy(&list).contains(r#""state":"running""#)
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the processor's log line did not arrive");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let token_id = token["id"].as_str().unwrap().to_owned();
    let token = token["token"].as_str().unwrap().to_owned();
    (cairn, server, Alice { ids, stream_ids, hashes, token_id, token })
}

fn collect_ids(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Bulk(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            if text.split_once('-').is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok()) {
                out.push(text.into_owned());
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_ids(item, out)),
        Value::Line(_) => {}
    }
}

/// Everything of alice's, as alice and an admin see it: must not change.
async fn snapshot(server: &Server) -> Vec<String> {
    let alice = server.tcp().with_basic("alice", "alice-pw");
    let root = server.tcp().with_basic("root", "root-pw");
    let mut seen = Vec::new();
    for (client, path) in [
        (&alice, "/v1/events?topic=orders.%3E&content=true"),
        (&alice, "/v1/consumers"),
        (&alice, "/v1/consumers/billing"),
        (&alice, "/v1/consumers/billing/snapshot"),
        (&root, "/v1/users"),
        (&root, "/v1/consumers"),
        (&root, "/v1/procs"),
        (&root, "/v1/procs/billing/logs?content=true"),
    ] {
        let reply = call(client, "GET", path, &[], "").await;
        assert_eq!(reply.status, 200, "{path}");
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        // bob's own entries (his tokens, his consumers) may change.
        let text = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Array(items)) => items
                .into_iter()
                .filter(|item| item["name"] != "bob" && item["owner"] != "user:bob")
                .map(|item| item.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            _ => text,
        };
        seen.push(text);
    }
    let mut raw = Raw::connect(server.resp());
    ask(&mut raw, &[b"AUTH", b"alice", b"alice-pw"]);
    for command in [
        &[&b"XPENDING"[..], b"orders.1", b"shipping", b"-", b"+", b"100"][..],
        &[b"XINFO", b"GROUPS", b"orders.1"],
        &[b"XLEN", b"orders.1"],
    ] {
        let reply = ask(&mut raw, command);
        // Idle times move with the clock: keep the shape and the ids.
        let mut ids = Vec::new();
        collect_ids(&reply, &mut ids);
        seen.push(format!("{}: {ids:?}", String::from_utf8_lossy(command[0])));
    }
    seen
}

fn check_reply(text: &str, what: &str, alice: &Alice) {
    for marker in MARKERS.iter().copied().chain([alice.token.as_str()]) {
        assert!(!text.contains(marker), "{what}: the reply shows {marker:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_user_over_http_reaches_nothing_of_another_user() {
    let (_cairn, server, alice) = world().await;
    let before = snapshot(&server).await;
    let address = server.url().trim_start_matches("http://").to_owned();
    let encoded_hashes: Vec<String> = alice.hashes.iter().map(|h| cairn_client::encode(h)).collect();
    let hex_hashes: Vec<String> = alice
        .hashes
        .iter()
        .map(|sri| {
            let bytes = base64::engine::general_purpose::STANDARD.decode(sri.trim_start_matches("sha256-")).unwrap();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        })
        .collect();
    let mut parts: Vec<&str> =
        vec!["orders.1", "orders.2", "orders.%3E", "cairn.start", "billing", "alice", "root", "bob", "shipping"];
    parts.extend(alice.ids.iter().map(String::as_str));
    parts.extend(encoded_hashes.iter().map(String::as_str));
    parts.extend(hex_hashes.iter().map(String::as_str));
    parts.push(&alice.token_id);
    const ROUTES: &[&str] = &[
        "/v1/topics",
        "/v1/topics/{}",
        "/v1/topics/{}/events",
        "/v1/batch",
        "/v1/events",
        "/v1/events/{}",
        "/v1/cas",
        "/v1/cas/{}",
        "/v1/consumers",
        "/v1/consumers/{}",
        "/v1/consumers/{}/events",
        "/v1/consumers/{}/snapshot",
        "/v1/groups",
        "/v1/topics/{}/groups/shipping",
        "/v1/topics/{}/groups/shipping/ack",
        "/v1/topics/{}/groups/shipping/claim",
        "/v1/topics/{}/groups/shipping/position",
        "/v1/session",
        "/v1/users",
        "/v1/users/{}",
        "/v1/users/{}/password",
        "/v1/users/{}/tokens",
        "/v1/tokens/{}",
        "/v1/import",
        "/v1/verify",
        "/v1/compact",
        "/v1/info",
        "/v1/procs",
        "/v1/procs/{}",
        "/v1/procs/{}/logs",
        "/v1/mounts",
        "/v1/mounts/{}",
        "/metrics",
        "/events",
        "/events/{}",
        "/storage/",
        "/storage/{}",
    ];
    const METHODS: &[&str] = &["GET", "GET", "POST", "PUT", "DELETE", "HEAD"];
    const PARAMS: &[&str] =
        &["topic", "after", "owner", "id", "content", "follow", "last", "from", "to", "key", "ratio"];
    let first_id = alice.ids[0].clone();
    let values: Vec<String> = vec![
        "orders.%3E".into(),
        "%3E".into(),
        "orders.1".into(),
        "user:alice".into(),
        "local".into(),
        "true".into(),
        "1".into(),
        first_id.clone(),
    ];
    let bodies: Vec<String> = vec![
        String::new(),
        "payload".into(),
        r#"{"password":"mine-now"}"#.into(),
        r#"{"password":"mine-now","old_password":"alice-pw"}"#.into(),
        r#"{"name":"mallory","password":"p","admin":true}"#.into(),
        format!(r#"{{"id":"{first_id}"}}"#),
        r#"[{"topic":"orders.1","content":"forged"}]"#.into(),
        r#"{"eventType":"X","body":1,"eventId":"e"}"#.into(),
        format!(r#"{{"id":"{first_id}","topic":"orders.9","seq":0}}"#),
        r#"{"id":"$"}"#.into(),
        r#"{"ids":["0-0","99999999999999-0"]}"#.into(),
        r#"{"consumer":"bob","ids":["0-1"]}"#.into(),
        r#"{"user":"alice","password":"wrong"}"#.into(),
        r#"{"kind":"generator","sh":"echo pwned"}"#.into(),
        r#"[{"topic":"cairn.proc.billing.term"}]"#.into(),
        r#"{"dir":"/tmp/bob-mount"}"#.into(),
    ];
    const CREDENTIALS: &[&str] = &["bob:bob-pw", "bob:bob-pw", "bob:bob-pw", "", "bearer"];
    let bob_token = {
        let bob = server.tcp().with_basic("bob", "bob-pw");
        call(&bob, "POST", "/v1/users/bob/tokens", &[], "").await.json()["token"].as_str().unwrap().to_owned()
    };
    let mut rng = Rng(seed());
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for case in 0..cases() {
        let method = rng.pick(METHODS);
        let mut path = rng.pick(ROUTES).replace("{}", rng.pick(&parts));
        for n in 0..rng.next() % 3 {
            path.push(if n == 0 { '?' } else { '&' });
            let value = &values[(rng.next() % values.len() as u64) as usize];
            path.push_str(&format!("{}={value}", rng.pick(PARAMS)));
        }
        let body = &bodies[(rng.next() % bodies.len() as u64) as usize];
        let auth = match rng.pick(CREDENTIALS) {
            "" => String::new(),
            "bearer" => format!("Authorization: Bearer {bob_token}\r\n"),
            pair => format!("Authorization: Basic {}\r\n", base64::engine::general_purpose::STANDARD.encode(pair)),
        };
        let kind = if body.starts_with('[') || body.starts_with('{') { "application/json" } else { "text/plain" };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        let text = String::from_utf8_lossy(&reply).into_owned();
        let status: u16 = text.get(9..12).and_then(|code| code.parse().ok()).unwrap_or(0);
        let shown = format!("case {case}: {method} {path} {body}");
        assert!((200..500).contains(&status), "{shown}: {}", &text[..text.len().min(400)]);
        check_reply(&text, &shown, &alice);
        *statuses.entry(status).or_default() += 1;
    }
    eprintln!("bob's replies by status: {statuses:?}");
    assert!(statuses.keys().any(|s| *s < 300) && statuses.keys().any(|s| *s >= 400), "{statuses:?}");
    assert_eq!(snapshot(&server).await, before, "alice's data is as it was");
    // And alice still logs in with her password and her token.
    let alice_http = server.tcp().with_basic("alice", "alice-pw");
    assert_eq!(call(&alice_http, "GET", "/v1/topics", &[], "").await.status, 200);
}

#[test]
fn a_hostile_user_over_the_redis_protocol_reaches_nothing_of_another_user() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (_cairn, server, alice) = runtime.block_on(world());
    let before = runtime.block_on(snapshot(&server));
    let mut bob = Raw::connect(server.resp());
    assert!(matches!(ask(&mut bob, &[b"AUTH", b"bob", b"bob-pw"]), Value::Line(ok) if ok == "+OK"));
    assert!(matches!(ask(&mut bob, &[b"XADD", b"payments.1", b"*", b"f", b"v"]), Value::Bulk(_)));
    let id = |n: usize| alice.stream_ids[n % alice.stream_ids.len()].as_bytes().to_vec();
    let templates: Vec<Vec<Vec<u8>>> = {
        let words = |list: &[&[u8]]| list.iter().map(|w| w.to_vec()).collect::<Vec<_>>();
        vec![
            words(&[b"KEYS", b"*"]),
            words(&[b"KEYS", b"orders*"]),
            words(&[b"SCAN", b"0", b"MATCH", b"*", b"COUNT", b"100"]),
            words(&[b"DBSIZE"]),
            words(&[b"EXISTS", b"orders.1"]),
            words(&[b"TYPE", b"orders.1"]),
            words(&[b"INFO", b"keyspace"]),
            words(&[b"XLEN", b"orders.1"]),
            words(&[b"XRANGE", b"orders.1", b"-", b"+"]),
            words(&[b"XREVRANGE", b"orders.1", b"+", b"-", b"COUNT", b"1"]),
            words(&[b"XREAD", b"COUNT", b"5", b"STREAMS", b"orders.1", b"0"]),
            words(&[b"XREAD", b"BLOCK", b"1", b"STREAMS", b"payments.1", b"orders.1", b"$", b"$"]),
            words(&[b"XREADGROUP", b"GROUP", b"shipping", b"w1", b"STREAMS", b"orders.1", b">"]),
            words(&[b"XREADGROUP", b"GROUP", b"shipping", b"w1", b"STREAMS", b"orders.1", b"0"]),
            words(&[b"XGROUP", b"CREATE", b"orders.1", b"mine", b"0"]),
            words(&[b"XGROUP", b"DESTROY", b"orders.1", b"shipping"]),
            words(&[b"XGROUP", b"SETID", b"orders.1", b"shipping", b"0"]),
            words(&[b"XGROUP", b"DELCONSUMER", b"orders.1", b"shipping", b"w1"]),
            vec![b"XACK".to_vec(), b"orders.1".to_vec(), b"shipping".to_vec(), id(0)],
            words(&[b"XPENDING", b"orders.1", b"shipping"]),
            words(&[b"XPENDING", b"orders.1", b"shipping", b"-", b"+", b"10"]),
            vec![b"XCLAIM".to_vec(), b"orders.1".to_vec(), b"shipping".to_vec(), b"bob".to_vec(), b"0".to_vec(), id(1)],
            words(&[b"XAUTOCLAIM", b"orders.1", b"shipping", b"bob", b"0", b"0"]),
            words(&[b"XINFO", b"STREAM", b"orders.1"]),
            words(&[b"XINFO", b"GROUPS", b"orders.1"]),
            words(&[b"XINFO", b"CONSUMERS", b"orders.1", b"shipping"]),
            vec![b"XDEL".to_vec(), b"orders.1".to_vec(), id(0)],
            words(&[b"XTRIM", b"orders.1", b"MAXLEN", b"0"]),
            words(&[b"XADD", b"orders.1", b"*", b"forged", b"1"]),
            words(&[b"XADD", b"orders.1", b"MAXLEN", b"0", b"*", b"forged", b"1"]),
            words(&[b"XADD", b"cairn.proc.billing.term", b"*", b"f", b"v"]),
            words(&[b"XADD", b"cairn.proc.mine.create", b"*", b"kind", b"generator"]),
            words(&[b"DEL", b"orders.1"]),
            words(&[b"publish", b"orders.1", b"forged", b"1"]),
            words(&[b"last-event-number", b"orders.1"]),
            words(&[b"stream-names"]),
            words(&[b"subscribe", b"orders.1:0"]),
            words(&[b"subscribe", b"$all:0"]),
            words(&[b"PUBLISH", b"orders.1", b"forged"]),
            words(&[b"PUBSUB", b"CHANNELS"]),
            words(&[b"PUBSUB", b"NUMSUB", b"orders.1"]),
            words(&[b"PUBSUB", b"NUMPAT"]),
            words(&[b"WATCH", b"orders.1"]),
            words(&[b"AUTH", b"alice", b"wrong"]),
            words(&[b"CLIENT", b"LIST"]),
        ]
    };
    let mut rng = Rng(seed());
    for case in 0..cases() {
        let command = &templates[(rng.next() % templates.len() as u64) as usize];
        let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
        let reply = ask(&mut bob, &args);
        let shown = format!("case {case}: {:?}", args.iter().map(|a| String::from_utf8_lossy(a)).collect::<Vec<_>>());
        check_reply(&format!("{reply:?}"), &shown, &alice);
        let mut ids = Vec::new();
        collect_ids(&reply, &mut ids);
        assert!(
            ids.iter().all(|id| !alice.stream_ids.contains(id) || args.contains(&id.as_bytes())),
            "{shown}: {reply:?}"
        );
        if args[0] == b"AUTH" {
            // A failed AUTH leaves the connection as it was (bob).
            continue;
        }
    }
    assert_eq!(runtime.block_on(snapshot(&server)), before, "alice's streams and groups are as they were");
}
