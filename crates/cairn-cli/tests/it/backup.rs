//! `cairn backup` and `POST /v1/backup`: an online copy made while a
//! writer runs, which opens as a store holding every event acknowledged
//! before it began, with users, tokens, consumers, groups and content;
//! incremental into the same directory.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::Cairn;
use crate::resp::{Raw, Value};
use crate::serve::{Server, call};

fn copy_at(path: &std::path::Path) -> Cairn {
    Cairn { _dir: tempfile::tempdir().unwrap(), store: path.to_path_buf() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_holds_every_acknowledged_event_and_opens_as_a_store() {
    let cairn = Cairn::new();
    cairn.ok(&["user", "add", "admin", "--admin"], b"adminpw\n");
    cairn.ok(&["user", "add", "alice", "--read", "a.>", "--write", "a.>"], b"pw\n");
    let token = cairn.ok(&["user", "token", "issue", "alice"], b"")[0]["token"].as_str().unwrap().to_owned();
    let server = Server::start(&cairn, &[]);
    let socket = server.unix();
    // Before: events (one with a payload kept as a content file), a
    // consumer, a consumer group with a pending entry, standalone content.
    for n in 0..50 {
        let reply = call(&socket, "POST", "/v1/topics/a.before/events", &[], format!("{{\"n\":{n}}}")).await;
        assert_eq!(reply.status, 201);
    }
    let large = vec![b'L'; 64 * 1024];
    let reply = call(&socket, "POST", "/v1/topics/a.large/events", &[], large.clone()).await;
    assert_eq!(reply.status, 201);
    let first = reply.json()["id"].as_str().unwrap().to_owned();
    let reply = call(&socket, "PUT", &format!("/v1/consumers/reporting?id={first}"), &[], Vec::new()).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let reply = call(&socket, "POST", "/v1/cas", &[], b"standalone content".to_vec()).await;
    let standalone = reply.json()["hash"].as_str().unwrap().to_owned();
    let mut raw = Raw::connect(server.resp());
    raw.command(&[b"XGROUP", b"CREATE", b"a.before", b"workers", b"0"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"XREADGROUP", b"GROUP", b"workers", b"w1", b"COUNT", b"3", b"STREAMS", b"a.before", b">"]);
    let _ = raw.frame();

    // A writer runs throughout; each acknowledgement is timed.
    let acknowledged: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (acknowledged, stop, socket) = (acknowledged.clone(), stop.clone(), server.unix());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply = call(&socket, "POST", "/v1/topics/a.load/events", &[], format!("{{\"n\":{n}}}")).await;
                assert_eq!(reply.status, 201);
                let id = reply.json()["id"].as_str().unwrap().to_owned();
                acknowledged.lock().unwrap().push((Instant::now(), id));
                n += 1;
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let target = tempfile::tempdir().unwrap();
    let dest = target.path().join("copy");
    let path = format!("/v1/backup?dir={}", cairn_client::encode(dest.to_str().unwrap()));
    // Only an administrator; the path must be absolute.
    let alice = server.tcp().with_basic("alice", "pw");
    assert_eq!(call(&alice, "POST", &path, &[], Vec::new()).await.status, 403);
    assert_eq!(call(&server.tcp(), "POST", &path, &[], Vec::new()).await.status, 401);
    // The export's extras (every user's state and standalone content) alike.
    assert_eq!(call(&alice, "GET", "/v1/export/extras", &[], Vec::new()).await.status, 403);
    assert_eq!(call(&server.tcp(), "GET", "/v1/export/extras", &[], Vec::new()).await.status, 401);
    assert_eq!(call(&socket, "POST", "/v1/backup?dir=relative/dir", &[], Vec::new()).await.status, 400);
    let began = Instant::now();
    let reply = call(&socket, "POST", &path, &[], Vec::new()).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let first_run = reply.json();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Again while the writer runs: only what is new is copied.
    let admin = server.tcp().with_basic("admin", "adminpw");
    let began_second = Instant::now();
    let reply = call(&admin, "POST", &path, &[], Vec::new()).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let second_run = reply.json();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    assert!(first_run["log_bytes_copied"].as_u64().unwrap() > 0);
    assert_eq!(first_run["content_files_copied"], 2, "{first_run}");
    assert_eq!(second_run["content_files_copied"], 0, "{second_run}");
    let (copied, total) = (second_run["log_bytes_copied"].as_u64().unwrap(), second_run["log_bytes"].as_u64().unwrap());
    let before = first_run["log_bytes"].as_u64().unwrap();
    assert_eq!(copied, total - before, "the second run copies only the log written since the first");
    // A directory that is not a backup of this store is refused.
    let other = target.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("file"), b"x").unwrap();
    let path_other = format!("/v1/backup?dir={}", cairn_client::encode(other.to_str().unwrap()));
    let refused = call(&socket, "POST", &path_other, &[], Vec::new()).await;
    assert_eq!(refused.status, 400, "{}", String::from_utf8_lossy(&refused.body));
    // Never into the store, however the path is written.
    let store = std::fs::canonicalize(cairn.store()).unwrap();
    for sneaky in [
        format!("/proc/self/root{}/log/0000000099.seg", store.display()),
        format!("{}/../store/cas/new", store.display()),
    ] {
        let path = format!("/v1/backup?dir={}", cairn_client::encode(&sneaky));
        let refused = call(&socket, "POST", &path, &[], Vec::new()).await;
        assert_eq!(refused.status, 400, "{sneaky}: {}", String::from_utf8_lossy(&refused.body));
        assert!(!std::path::Path::new(&sneaky).exists(), "{sneaky} was created");
    }
    // A directory others may write to is refused, and left as it was.
    let shared = target.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let path_shared = format!("/v1/backup?dir={}", cairn_client::encode(shared.to_str().unwrap()));
    let refused = call(&socket, "POST", &path_shared, &[], Vec::new()).await;
    assert_eq!(refused.status, 400, "{}", String::from_utf8_lossy(&refused.body));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&shared).unwrap().permissions());
    assert_eq!(mode & 0o7777, 0o1777);
    drop(raw);
    drop(server);

    // The copy opens as a store: verify is clean, and it holds every event
    // acknowledged before the second backup began.
    let copy = copy_at(&dest);
    let report = copy.ok(&["verify"], b"");
    assert_eq!(report[0]["problems"], serde_json::json!([]), "{report:?}");
    let ids: HashSet<String> =
        copy.ok(&["cat", "a.>"], b"").iter().map(|event| event["id"].as_str().unwrap().to_owned()).collect();
    let acknowledged = acknowledged.lock().unwrap().clone();
    let before_first = acknowledged.iter().filter(|(at, _)| *at < began).count();
    assert!(before_first > 0, "the writer acknowledged nothing before the backup");
    for (at, id) in acknowledged.iter() {
        if *at < began_second {
            assert!(ids.contains(id), "{id}, acknowledged before the backup, is missing from it");
        }
    }
    let large_events = copy.ok(&["cat", "a.large", "--content"], b"");
    assert_eq!(large_events[0]["content"].as_str().unwrap().len(), large.len());
    let output = copy.run(&["cas", "get", &standalone], b"");
    assert!(output.status.success());
    assert_eq!(output.stdout, b"standalone content");
    let consumers = copy.ok(&["consumer", "list"], b"");
    assert!(consumers.iter().any(|c| c["name"] == "reporting" && c["acked"] == first.as_str()), "{consumers:?}");
    // Users, tokens and consumer groups come along: a server on the copy.
    let server = Server::start(&copy, &[]);
    let alice = server.tcp().with_token(&token);
    let reply = call(&alice, "GET", "/v1/topics/a.before", &[], Vec::new()).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let mut raw = Raw::connect(server.resp());
    raw.command(&[b"XPENDING", b"a.before", b"workers"]);
    let Value::Array(summary) = raw.frame() else { panic!() };
    assert_eq!(summary[0], Value::Line(":3".to_owned()), "{summary:?}");
}
