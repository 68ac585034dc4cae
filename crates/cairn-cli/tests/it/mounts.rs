//! Several stores, one server: `--mount` and `/v1/mounts`, each mount on
//! its own socket with its own processors, mounted and unmounted while the
//! server runs, kept across restarts.

use std::time::{Duration, Instant};

use crate::Cairn;
use crate::serve::{Server, call};

/// A `cairn` command on another store directory.
fn on(dir: &std::path::Path, args: &[&str], stdin: &[u8]) -> Vec<serde_json::Value> {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
    command.arg("--store").arg(dir).args(args).env("CAIRN_SYNC", "none");
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "cairn {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_come_and_go_while_the_server_runs() {
    let cairn = Cairn::new();
    let base = cairn.store().parent().unwrap().to_owned();
    let (one, two) = (base.join("one"), base.join("two"));
    for (args, password) in [(&["add", "root", "--admin"][..], "root-pw"), (&["add", "alice"], "alice-pw")] {
        let mut full = vec!["user"];
        full.extend_from_slice(args);
        let output = cairn.command(&full).env("CAIRN_PASSWORD", password).output().unwrap();
        assert!(output.status.success());
    }
    let mount_one = format!("one={}", one.display());
    let server = Server::start(&cairn, &["--no-resp", "--mount", &mount_one]);
    // The mount has its own socket and store.
    assert!(one.join("cairn.sock").exists());
    on(&one, &["append", "in.one"], b"first");
    assert_eq!(on(&one, &["cat", "in.one", "--content"], b"")[0]["content"], "first");
    assert!(cairn.ok(&["cat", "in.one"], b"").is_empty(), "not in the main store");

    // Mounting needs an admin.
    let body = serde_json::json!({ "dir": two.display().to_string() }).to_string();
    let alice = server.tcp().with_basic("alice", "alice-pw");
    assert_eq!(call(&alice, "POST", "/v1/mounts/two", &[], body.clone()).await.status, 403);
    assert_eq!(call(&alice, "GET", "/v1/mounts", &[], "").await.status, 403);
    let root = server.tcp().with_basic("root", "root-pw");
    let relative = call(&root, "POST", "/v1/mounts/two", &[], r#"{"dir":"relative/path"}"#).await;
    assert_eq!(relative.status, 400);
    // Not into or around a store, and not over a directory of other files.
    let main = serde_json::json!({ "dir": std::path::absolute(cairn.store()).unwrap().join("log") }).to_string();
    assert_eq!(call(&root, "POST", "/v1/mounts/inside", &[], main).await.status, 400);
    let around = serde_json::json!({ "dir": base.display().to_string() }).to_string();
    assert_eq!(call(&root, "POST", "/v1/mounts/around", &[], around).await.status, 400);
    let busy = base.join("papers");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("thesis.txt"), "mine").unwrap();
    let busy = serde_json::json!({ "dir": busy.display().to_string() }).to_string();
    let reply = call(&root, "POST", "/v1/mounts/papers", &[], busy).await;
    assert_eq!(reply.status, 400);
    assert!(String::from_utf8_lossy(&reply.body).contains("holds files but no cairn store"));
    let mounted = call(&root, "POST", "/v1/mounts/two", &[], body.clone()).await;
    assert_eq!(mounted.status, 201, "{}", String::from_utf8_lossy(&mounted.body));
    let listed = call(&root, "GET", "/v1/mounts", &[], "").await.json();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    // Its own processors, in its own store.
    on(&two, &["proc", "create", "hello", "--kind", "generator", "--sh", "echo hi; sleep 60"], b"");
    wait_for("the generator's line", || !on(&two, &["cat", "hello.recv"], b"").is_empty());
    assert!(cairn.ok(&["cat", "hello.recv"], b"").is_empty());
    // A mount's socket mounts nothing.
    let nested = serde_json::json!({ "dir": base.join("three").display().to_string() }).to_string();
    let reply =
        call(&cairn_client::Client::unix(two.join("cairn.sock")), "POST", "/v1/mounts/three", &[], nested).await;
    assert_eq!(reply.status, 400);

    // Unmounted while the server runs: its processors stop, its store
    // closes, its socket goes; the CLI then opens it itself.
    assert_eq!(call(&root, "DELETE", "/v1/mounts/two", &[], "").await.status, 204);
    assert!(!two.join("cairn.sock").exists());
    let stopped = on(&two, &["cat", "cairn.proc.hello.stopped"], b"");
    assert_eq!(stopped.len(), 1);
    assert_eq!(call(&root, "DELETE", "/v1/mounts/two", &[], "").await.status, 404);

    // Mounted again, it comes back after a restart (the --mount one only
    // while given).
    assert_eq!(call(&root, "POST", "/v1/mounts/two", &[], body).await.status, 201);
    server.terminate();
    let server = Server::start(&cairn, &["--no-resp"]);
    wait_for("mount two after the restart", || two.join("cairn.sock").exists());
    assert!(!one.join("cairn.sock").exists());
    wait_for("the generator running again", || on(&two, &["cat", "hello.recv"], b"").len() >= 2);
    drop(server);
}
