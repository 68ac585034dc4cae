//! Processors (`cairn proc`): real programs (sh, jq, awk, python3) run by
//! the real server, killed with SIGKILL mid-stream, restarted; checked
//! through the CLI, HTTP and the events they leave.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::Cairn;
use crate::serve::{Server, call};

/// Waits until `check` holds (polling), failing after `limit`.
fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn events(cairn: &Cairn, pattern: &str) -> Vec<serde_json::Value> {
    cairn.ok(&["cat", pattern, "--content"], b"")
}

fn listed(cairn: &Cairn, name: &str) -> serde_json::Value {
    cairn.ok(&["proc", "ls"], b"").into_iter().find(|proc| proc["name"] == name).unwrap_or_default()
}

fn meta<'a>(event: &'a serde_json::Value, field: &str) -> &'a str {
    event["meta"][field].as_str().unwrap_or_default()
}

fn kill9(pid: u64) {
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// A python3 handler: one output per input, a little slow, so kills land
/// mid-stream.
const SLOW_HANDLER: &str = r#"
import json, sys, time
for line in sys.stdin:
    event = json.loads(line)
    time.sleep(0.003)
    print(json.dumps({"content": event["content"].upper()}))
    print()
    sys.stdout.flush()
"#;

#[test]
fn a_handler_killed_mid_stream_and_a_server_killed_mid_stream_give_each_output_once() {
    let cairn = Cairn::new();
    let server = Server::start_raw(&cairn, &["serve", "--no-resp"]);
    let script = cairn.store().parent().unwrap().join("handler.py");
    std::fs::write(&script, SLOW_HANDLER).unwrap();
    let created = cairn.ok(
        &[
            "proc",
            "create",
            "upper",
            "--kind",
            "handler",
            "--topics",
            "in.>",
            "--",
            "python3",
            script.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(created[0]["state"], "active", "{created:?}");
    let inputs = 600;
    // Every tenth payload is over the inline limit, so it is loaded from
    // the content store while outputs arrive.
    let batch: String = (0..inputs)
        .map(|i| {
            let content = if i % 10 == 0 { format!("event {i} {}", "z".repeat(10_000)) } else { format!("event {i}") };
            format!("{{\"topic\":\"in.{}\",\"content\":\"{content}\"}}\n", i % 3)
        })
        .collect();
    cairn.ok(&["append", "--batch"], batch.as_bytes());
    // Kill the handler once it is under way: it restarts and goes on.
    wait_for(Duration::from_secs(20), "the first outputs", || !events(&cairn, "upper.out").is_empty());
    let first_pid = listed(&cairn, "upper")["pid"].as_u64().unwrap();
    kill9(first_pid);
    wait_for(Duration::from_secs(20), "a restart", || {
        listed(&cairn, "upper")["pid"].as_u64().is_some_and(|pid| pid != first_pid)
    });
    // Then the server, while the handler is still at work.
    let done_before = events(&cairn, "upper.out").len();
    assert!(done_before < inputs, "the handler finished before the server was killed; slow it down");
    server.kill9();
    let server = Server::start_raw(&cairn, &["serve", "--no-resp"]);
    wait_for(Duration::from_secs(60), "every output", || events(&cairn, "upper.out").len() >= inputs);
    std::thread::sleep(Duration::from_millis(300));
    let outputs = events(&cairn, "upper.out");
    let sources: Vec<&str> = outputs.iter().map(|event| meta(event, "source_id")).collect();
    let mut unique = sources.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(outputs.len(), inputs, "each input gives exactly one output");
    assert_eq!(unique.len(), inputs, "each source_id once");
    let inputs_by_id: HashMap<String, String> = events(&cairn, "in.>")
        .into_iter()
        .map(|event| (event["id"].as_str().unwrap().to_owned(), event["content"].as_str().unwrap().to_owned()))
        .collect();
    for output in &outputs {
        let source = &inputs_by_id[meta(output, "source_id")];
        assert_eq!(output["content"].as_str().unwrap(), source.to_uppercase());
        assert_eq!(meta(output, "proc_id"), created[0]["proc_id"].as_str().unwrap());
    }
    let lifecycle = events(&cairn, "cairn.proc.upper.>");
    assert!(lifecycle.iter().any(|event| event["topic"] == "cairn.proc.upper.fin.error"), "the kill is reported");
    drop(server);
}

#[test]
fn inputs_without_outputs_advance_and_a_broken_line_stops_the_handler() {
    let cairn = Cairn::new();
    let server = Server::start_raw(&cairn, &["serve", "--no-resp"]);
    // awk: outputs for inputs whose content is even, nothing for the rest
    // (Debian's awk is mawk, which reads ahead unless `-W interactive`).
    let awk = r#"{ if ($0 ~ /"content":"[0-9]*[02468]"/) print "{\"topic\":\"evens\",\"content\":\"even\"}"; print ""; fflush() }"#;
    cairn.ok(
        &["proc", "create", "evens", "--kind", "handler", "--topics", "n", "--", "awk", "-W", "interactive", awk],
        b"",
    );
    let batch: String = (1..=9).map(|i| format!("{{\"topic\":\"n\",\"content\":\"{i}\"}}\n")).collect();
    let appended = cairn.ok(&["append", "--batch"], batch.as_bytes());
    let last = appended.last().unwrap()["id"].as_str().unwrap().to_owned();
    wait_for(Duration::from_secs(10), "the position past the last input", || {
        listed(&cairn, "evens")["position"] == last.as_str()
    });
    assert_eq!(events(&cairn, "evens").len(), 4);
    // Each handler's own outputs never come back to it, even when its
    // topics match them.
    let loop_script = r#"while read -r line; do echo '{"topic":"loop.out","content":"x"}'; echo; done"#;
    cairn.ok(&["proc", "create", "loop", "--kind", "handler", "--topics", "loop.>", "--sh", loop_script], b"");
    cairn.ok(&["append", "loop.in"], b"go");
    wait_for(Duration::from_secs(10), "one output", || events(&cairn, "loop.out").len() == 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(events(&cairn, "loop.out").len(), 1, "its own output is not its input");

    // A line that is not an event stops it with the reason, and nothing
    // of that input is committed.
    cairn.ok(
        &[
            "proc",
            "create",
            "broken",
            "--kind",
            "handler",
            "--topics",
            "b",
            "--sh",
            "while read -r l; do echo nonsense; echo; done",
        ],
        b"",
    );
    cairn.ok(&["append", "b"], b"x");
    wait_for(Duration::from_secs(10), "fin.error", || !events(&cairn, "cairn.proc.broken.fin.error").is_empty());
    let error = &events(&cairn, "cairn.proc.broken.fin.error")[0];
    assert!(meta(error, "reason").contains("not a JSON event line"), "{error}");
    assert_eq!(listed(&cairn, "broken")["state"], "failed");
    assert!(events(&cairn, "broken.out").is_empty());
    // A handler registered through the socket cannot register processors
    // by its outputs: the store's topics are not outputs.
    let sneaky = r#"while read -r l; do echo '{"topic":"cairn.proc.evil.create","content":"{\"kind\":\"generator\",\"sh\":\"true\"}"}'; echo; done"#;
    cairn.ok(&["proc", "create", "sneaky", "--kind", "handler", "--topics", "s", "--sh", sneaky], b"");
    cairn.ok(&["append", "s"], b"x");
    wait_for(Duration::from_secs(10), "fin.error", || !events(&cairn, "cairn.proc.sneaky.fin.error").is_empty());
    let error = &events(&cairn, "cairn.proc.sneaky.fin.error")[0];
    assert!(meta(error, "reason").contains("may not be the store's own topics"), "{error}");
    assert!(events(&cairn, "cairn.proc.evil.>").is_empty());
    drop(server);
}

#[test]
fn generators_restart_with_backoff_and_duplex_ones_echo() {
    let cairn = Cairn::new();
    let server = Server::start_raw(&cairn, &["serve", "--no-resp"]);
    let spec = serde_json::json!({
        "kind": "generator",
        "sh": "echo tick; echo oops >&2; exit 3",
        "restart": {"backoff_ms": 50, "max_ms": 400},
    });
    let client = server.unix();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let created = runtime.block_on(call(&client, "POST", "/v1/procs/flaky", &[], spec.to_string()));
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    wait_for(Duration::from_secs(10), "three runs", || {
        listed(&cairn, "flaky")["restarts"].as_u64().unwrap_or_default() >= 2
    });
    assert!(events(&cairn, "flaky.recv").len() >= 3);
    let exits = events(&cairn, "cairn.proc.flaky.fin.error");
    assert!(exits.iter().any(|event| event["meta"]["code"] == 3), "{exits:?}");
    let logs = cairn.ok(&["proc", "logs", "flaky"], b"");
    assert!(logs.iter().any(|event| event["content"] == "oops"), "stderr is kept: {logs:?}");
    // The back-off grows: far fewer runs than a tight loop would make.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(events(&cairn, "flaky.recv").len() < 20);
    cairn.ok(&["proc", "term", "flaky"], b"");
    assert!(!events(&cairn, "cairn.proc.flaky.fin.term").is_empty());
    let count = events(&cairn, "flaky.recv").len();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(events(&cairn, "flaky.recv").len(), count, "a terminated generator stays stopped");

    // A duplex generator that never reads its stdin holds back its sends,
    // not the server: it stops promptly.
    cairn.ok(&["proc", "create", "deaf", "--kind", "generator", "--duplex", "--", "sleep", "60"], b"");
    let sends: String =
        (0..200).map(|i| format!("{{\"topic\":\"deaf.send\",\"content\":\"{i} {}\"}}\n", "y".repeat(2000))).collect();
    cairn.ok(&["append", "--batch"], sends.as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    cairn.ok(&["proc", "term", "deaf"], b"");
    assert!(started.elapsed() < Duration::from_secs(8), "term took {:?}", started.elapsed());
    assert!(!events(&cairn, "cairn.proc.deaf.fin.term").is_empty());

    cairn.ok(&["proc", "create", "echo", "--kind", "generator", "--duplex", "--", "cat"], b"");
    cairn.ok(&["append", "echo.send"], b"ping");
    cairn.ok(&["append", "echo.send"], b"pong\n");
    wait_for(Duration::from_secs(10), "the echoes", || events(&cairn, "echo.recv").len() == 2);
    let echoes: Vec<_> = events(&cairn, "echo.recv").iter().map(|event| event["content"].clone()).collect();
    assert_eq!(echoes, ["ping", "pong"]);
    // Stopping the server writes `stopped`; the next start runs it again,
    // and a send made meanwhile is delivered then.
    server.terminate();
    assert!(!events(&cairn, "cairn.proc.echo.stopped").is_empty());
    cairn.ok(&["append", "echo.send"], b"while down");
    let server = Server::start_raw(&cairn, &["serve", "--no-resp"]);
    wait_for(Duration::from_secs(10), "the echo after the restart", || events(&cairn, "echo.recv").len() == 3);
    drop(server);
}

#[test]
fn commands_answer_fail_time_out_and_answer_calls_made_while_down() {
    let cairn = Cairn::new();
    let server = Server::start_raw(&cairn, &["serve", "--no-resp"]);
    cairn.ok(&["proc", "create", "shout", "--kind", "command", "--", "jq", "-j", ".content | ascii_upcase"], b"");
    let script =
        r#"read -r line; case "$line" in *fail*) echo "it failed" >&2; exit 2;; *slow*) sleep 5;; esac; echo ok"#;
    cairn.ok(
        &["proc", "create", "tricky", "--kind", "command", "--timeout-ms", "500", "--concurrency", "2", "--sh", script],
        b"",
    );
    let call_id = cairn.ok(&["append", "shout.call"], b"hello")[0]["id"].as_str().unwrap().to_owned();
    wait_for(Duration::from_secs(10), "the response", || !events(&cairn, "shout.response").is_empty());
    let response = &events(&cairn, "shout.response")[0];
    assert_eq!(response["content"], "HELLO");
    assert_eq!(meta(response, "call_id"), call_id);
    cairn.ok(&["append", "tricky.call"], b"please fail");
    cairn.ok(&["append", "tricky.call"], b"be slow");
    cairn.ok(&["append", "tricky.call"], b"fine");
    wait_for(Duration::from_secs(10), "three answers", || {
        events(&cairn, "tricky.error").len() + events(&cairn, "tricky.response").len() == 3
    });
    let errors = events(&cairn, "tricky.error");
    let failed = errors.iter().find(|event| event["meta"]["code"] == 2).unwrap();
    assert!(meta(failed, "stderr").contains("it failed"));
    assert!(errors.iter().any(|event| event["meta"]["timeout"] == true));

    // Calls made while no server runs are answered once one does, and
    // calls answered before are not answered again.
    server.terminate();
    for i in 0..5 {
        cairn.ok(&["append", "shout.call"], format!("down {i}").as_bytes());
    }
    let server = Server::start_raw(&cairn, &["serve", "--no-resp"]);
    wait_for(Duration::from_secs(10), "six responses", || events(&cairn, "shout.response").len() == 6);
    std::thread::sleep(Duration::from_millis(300));
    let responses = events(&cairn, "shout.response");
    assert_eq!(responses.len(), 6);
    let mut calls: Vec<&str> = responses.iter().map(|event| meta(event, "call_id")).collect();
    calls.sort_unstable();
    calls.dedup();
    assert_eq!(calls.len(), 6, "each call answered once");
    drop(server);
}

#[test]
fn only_the_socket_admins_and_named_grants_register_and_a_broken_replacement_keeps_the_last_good() {
    let cairn = Cairn::new();
    for (args, password) in [
        (&["add", "root", "--admin"][..], "root-pw"),
        (&["add", "writer", "--read", ">", "--write", ">"], "writer-pw"),
        (&["add", "ops", "--read", ">", "--write", "cairn.proc.>", "--write", "ops.>"], "ops-pw"),
    ] {
        let mut full = vec!["user"];
        full.extend_from_slice(args);
        let output = cairn.command(&full).env("CAIRN_PASSWORD", password).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let server = Server::start(&cairn, &["--no-resp"]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let spec = r#"{"kind":"generator","sh":"echo hi; sleep 60"}"#;
    let post = |client: &cairn_client::Client, path: &str, body: &str| {
        runtime.block_on(call(client, "POST", path, &[("content-type", "application/json")], body.to_owned()))
    };
    // `>` does not grant running programs; nor does anonymity.
    let writer = server.tcp().with_basic("writer", "writer-pw");
    assert_eq!(post(&writer, "/v1/procs/w", spec).status, 403);
    let batch = r#"[{"topic":"cairn.proc.w.create","content":"{\"kind\":\"generator\",\"sh\":\"true\"}"}]"#;
    assert_eq!(post(&writer, "/v1/batch", batch).status, 403);
    assert_eq!(post(&server.tcp(), "/v1/procs/w", spec).status, 401);
    // Lifecycle topics are the store's alone, even for an admin.
    let root = server.tcp().with_basic("root", "root-pw");
    let forged = r#"[{"topic":"cairn.proc.w.active"}]"#;
    assert_eq!(post(&root, "/v1/batch", forged).status, 400);
    assert_eq!(post(&root, "/v1/procs/good", spec).status, 201);
    // A user granted cairn.proc.> may, and the processor runs with that
    // user's rights: its outputs outside them fail it.
    let ops = server.tcp().with_basic("ops", "ops-pw");
    let reply = post(&ops, "/v1/procs/opsgen", r#"{"kind":"generator","sh":"echo hi; sleep 60"}"#);
    assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.body));
    wait_for(Duration::from_secs(10), "its failure", || !events(&cairn, "cairn.proc.opsgen.fin.error").is_empty());
    let failure = &events(&cairn, "cairn.proc.opsgen.fin.error")[0];
    assert!(meta(failure, "reason").contains("may not write opsgen.recv"), "{failure}");
    let listed_by_writer: serde_json::Value = runtime.block_on(call(&writer, "GET", "/v1/procs", &[], "")).json();
    assert_eq!(listed_by_writer.as_array().unwrap().len(), 2, "readers of cairn.proc.> see the processors");

    // A registration is kept: no retention on it, by any route.
    let expiring =
        r#"[{"topic":"cairn.proc.w.create","ttl":"last:1","content":"{\"kind\":\"generator\",\"sh\":\"true\"}"}]"#;
    let reply = post(&root, "/v1/batch", expiring);
    assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(&reply.body));
    // A processor stops when its user may no longer register processors.
    let spec =
        r#"{"kind":"generator","lines":"json","sh":"echo '{\"topic\":\"ops.x\",\"content\":\"hi\"}'; sleep 60"}"#;
    assert_eq!(post(&ops, "/v1/procs/opsok", spec).status, 201);
    wait_for(Duration::from_secs(10), "its line", || !events(&cairn, "ops.x").is_empty());
    let removed = runtime.block_on(call(&root, "DELETE", "/v1/users/ops", &[], ""));
    assert_eq!(removed.status, 204, "{}", String::from_utf8_lossy(&removed.body));
    wait_for(Duration::from_secs(10), "its stop", || !events(&cairn, "cairn.proc.opsok.fin.error").is_empty());
    assert!(listed(&cairn, "opsok").is_null(), "no longer listed");

    // A replacement that cannot start leaves the running one alone.
    let first = listed(&cairn, "good")["proc_id"].as_str().unwrap().to_owned();
    let broken = post(&root, "/v1/procs/good", r#"{"kind":"generator","run":["/nonexistent/program"]}"#);
    assert_eq!(broken.status, 400);
    assert!(String::from_utf8_lossy(&broken.body).contains("could not start"));
    assert_eq!(listed(&cairn, "good")["proc_id"], first.as_str());
    assert_eq!(listed(&cairn, "good")["state"], "running");
    let malformed = post(&root, "/v1/procs/good", r#"{"kind":"generator"}"#);
    assert_eq!(malformed.status, 400);
    // One that starts replaces it.
    let second = post(&root, "/v1/procs/good", r#"{"kind":"generator","sh":"echo two; sleep 60"}"#).json();
    assert_eq!(second["state"], "active");
    let replaced = events(&cairn, "cairn.proc.good.replaced");
    assert_eq!(meta(&replaced[0], "proc_id"), first);
    assert_eq!(meta(&replaced[0], "by"), second["proc_id"].as_str().unwrap());
    // A bad name is refused before anything is appended.
    assert_eq!(post(&root, "/v1/procs/a.b", spec).status, 400);
    drop(server);
}

/// A python3 handler serving the app: `/events` streams three server-sent
/// events, `/forever` starts a stream and never ends it, `/bad` answers
/// with a status HTTP has not, anything else echoes the path and body.
const WEB_HANDLER: &str = r#"
import json, sys
def out(request, content, more=False, **meta):
    meta["request_id"] = request["id"]
    if more:
        meta["more"] = True
    print(json.dumps({"topic": "http.response", "meta": meta, "content": content}))
for line in sys.stdin:
    request = json.loads(line)
    path = request["meta"]["path"]
    if path == "/events":
        out(request, "", more=True, headers={"content-type": "text/event-stream"})
        for n in range(3):
            out(request, "data: %d\n\n" % n, more=True)
        out(request, "")
    elif path == "/forever":
        out(request, "data: start\n\n", more=True, headers={"content-type": "text/event-stream"})
    elif path == "/bad":
        out(request, "", status=99)
    else:
        out(request, "%s %s" % (path, request.get("content", "")), status=201, headers={"x-app": ["a", "b"]})
    print()
    sys.stdout.flush()
"#;

fn curl(args: &[&str]) -> (String, String) {
    let output =
        std::process::Command::new("curl").args(["-s", "-S", "-D", "/dev/stderr"]).args(args).output().unwrap();
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn http_requests_are_served_by_a_handler_from_the_store() {
    let cairn = Cairn::new();
    let server = Server::start_raw(
        &cairn,
        &["serve", "--no-resp", "--http-app", "127.0.0.1:0", "--http-app-timeout", "5s", "--max-connections", "64"],
    );
    let app = server.app().to_owned();
    // Nobody serves it yet: 504 after the timeout, the request kept.
    let (body, head) = curl(&[&format!("{app}/nobody")]);
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(body.contains("no http.response"), "{body}");
    let script = cairn.store().parent().unwrap().join("web.py");
    std::fs::write(&script, WEB_HANDLER).unwrap();
    cairn.ok(
        &[
            "proc",
            "create",
            "web",
            "--kind",
            "handler",
            "--topics",
            "http.request",
            "--",
            "python3",
            script.to_str().unwrap(),
        ],
        b"",
    );

    let (body, head) = curl(&["-X", "POST", "--data-binary", "hello", &format!("{app}/echo/me?x=1")]);
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    assert!(head.contains("x-app: a") && head.contains("x-app: b"), "{head}");
    assert_eq!(body, "/echo/me hello");
    let requests = events(&cairn, "http.request");
    let last = requests.last().unwrap();
    assert_eq!(last["meta"]["method"], "POST");
    assert_eq!(last["meta"]["query"], "x=1");
    assert_eq!(last["meta"]["headers"]["content-length"], "5");
    assert!(last["meta"]["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(last["ttl"], "time:1d");

    // A streamed response: server-sent events, chunk by chunk.
    let (body, head) = curl(&["-N", &format!("{app}/events")]);
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert_eq!(body, "data: 0\n\ndata: 1\n\ndata: 2\n\n");

    // A response HTTP cannot carry is the app's fault: 502.
    let (_, head) = curl(&[&format!("{app}/bad")]);
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");

    // A client that goes away mid-stream: http.disconnect names its request.
    let (body, _) = curl(&["-N", "-m", "4", &format!("{app}/forever")]);
    assert_eq!(body, "data: start\n\n");
    wait_for(Duration::from_secs(10), "http.disconnect", || !events(&cairn, "http.disconnect").is_empty());
    let forever = events(&cairn, "http.request").into_iter().find(|event| event["meta"]["path"] == "/forever").unwrap();
    let disconnect = &events(&cairn, "http.disconnect")[0];
    assert_eq!(meta(disconnect, "request_id"), forever["id"].as_str().unwrap());
    // Finished responses leave no disconnect behind.
    assert_eq!(events(&cairn, "http.disconnect").len(), 1);

    // A shell handler serves it just as well; a streamed (chunked) body
    // is chunked content, read while it arrives.
    cairn.ok(&["proc", "term", "web"], b"");
    let sh = r#"jq -rc --unbuffered '{topic: "http.response", meta: {request_id: .id, headers: {"x-chunked": ((.meta.chunked // false) | tostring)}}, content: ("sh " + .meta.path)}, ""'"#;
    cairn.ok(&["proc", "create", "websh", "--kind", "handler", "--topics", "http.request", "--sh", sh], b"");
    let (body, head) =
        curl(&["-H", "transfer-encoding: chunked", "--data-binary", "streamed body", &format!("{app}/upload")]);
    assert_eq!(body, "sh /upload", "{head}");
    assert!(head.contains("x-chunked: true"), "{head}");
    let upload = events(&cairn, "http.request").into_iter().find(|event| event["meta"]["path"] == "/upload").unwrap();
    // Its pieces go with the request (its retention), and are not kept by
    // hash for ever.
    let pieces = events(&cairn, &format!("cairn.chunks.{}", upload["id"].as_str().unwrap()));
    assert!(!pieces.is_empty());
    assert!(pieces.iter().all(|piece| piece["ttl"] == "time:1d"), "{pieces:?}");
    let socket = server.socket().to_str().unwrap().to_owned();
    let content_url = format!("http://cairn/v1/events/{}/content", upload["id"].as_str().unwrap());
    wait_for(Duration::from_secs(10), "the uploaded body", || {
        let read =
            std::process::Command::new("curl").args(["-s", "--unix-socket", &socket, &content_url]).output().unwrap();
        read.stdout == b"streamed body"
    });

    // Hostile clients: a body over the payload limit is refused unread,
    // and malformed requests get a 400 without touching the store.
    let (_, head) =
        curl(&["-X", "POST", "-H", "content-length: 999999999", "--data-binary", "x", &format!("{app}/big")]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let before = events(&cairn, "http.request").len();
    let mut stream = std::net::TcpStream::connect(app.trim_start_matches("http://")).unwrap();
    std::io::Write::write_all(&mut stream, b"NOT HTTP AT ALL\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(events(&cairn, "http.request").len(), before);
    drop(server);
}

#[test]
fn chunked_content_is_read_while_it_is_written() {
    use std::io::{BufRead as _, Read as _, Write as _};
    let cairn = Cairn::new();
    let server = Server::start_raw(&cairn, &["serve", "--no-resp"]);
    let socket = server.socket().to_str().unwrap().to_owned();
    let mut writer = cairn
        .command(&["append", "uploads", "--chunked", "--meta", r#"{"name":"log.txt"}"#])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = writer.stdin.take().unwrap();
    stdin.write_all(b"first piece\n").unwrap();
    stdin.flush().unwrap();
    // A follower sees the event as soon as it starts ...
    wait_for(Duration::from_secs(10), "the event", || !events(&cairn, "uploads").is_empty());
    let event = events(&cairn, "uploads").remove(0);
    assert_eq!(event["meta"]["chunked"], true);
    assert_eq!(event["meta"]["name"], "log.txt");
    let id = event["id"].as_str().unwrap().to_owned();
    // ... and streams its content while it is written.
    let mut reader = std::process::Command::new("curl")
        .args(["-s", "-N", "--unix-socket", &socket, &format!("http://cairn/v1/events/{id}/content")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(reader.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    assert_eq!(first, "first piece\n", "read before the writer finished");
    stdin.write_all(b"second piece\n").unwrap();
    stdin.write_all(&vec![b'z'; 100_000]).unwrap();
    drop(stdin);
    let output = writer.wait_with_output().unwrap();
    assert!(output.status.success());
    let done: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut rest = Vec::new();
    lines.read_to_end(&mut rest).unwrap();
    assert!(reader.wait().unwrap().success());
    let mut whole = first.into_bytes();
    whole.extend_from_slice(&rest);
    assert_eq!(whole.len(), 12 + 13 + 100_000);
    assert_eq!(done["size"], whole.len());
    assert_eq!(done["id"], id.as_str());
    // The hash is final now, and the content readable by it.
    let by_hash = std::process::Command::new("curl")
        .args(["-s", "--unix-socket", &socket])
        .arg(format!("http://cairn/v1/cas/{}", cairn_client::encode(done["hash"].as_str().unwrap())))
        .output()
        .unwrap();
    assert_eq!(by_hash.stdout, whole);

    // A body of 2,000 one-byte HTTP chunks is gathered into a few pieces,
    // not one durable event per byte.
    let mut raw = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let mut request =
        b"POST /v1/topics/tiny/events?chunked=true HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..2000 {
        request.extend_from_slice(b"1\r\nx\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    raw.write_all(&request).unwrap();
    let mut reply = String::new();
    raw.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    let tiny = events(&cairn, "tiny").remove(0);
    let pieces = events(&cairn, &format!("cairn.chunks.{}", tiny["id"].as_str().unwrap()));
    assert!(pieces.len() <= 5, "{} pieces for 2,000 bytes", pieces.len());
    assert_eq!(pieces.last().unwrap()["meta"]["size"], 2000);

    // Only a chunked append may mark an event chunked (a reader of a
    // forged one would wait for pieces that never come).
    let forged = cairn.run(&["append", "uploads", "--meta", r#"{"chunked":true}"#, "--empty"], b"");
    assert!(!forged.status.success());
    assert!(String::from_utf8_lossy(&forged.stderr).contains("reserved"));

    // A writer killed mid-way: its content ends as aborted, and a reader
    // gets an error, never a short body that looks whole.
    let mut writer = cairn
        .command(&["append", "uploads", "--chunked"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    writer.stdin.as_mut().unwrap().write_all(b"partial").unwrap();
    writer.stdin.as_mut().unwrap().flush().unwrap();
    wait_for(Duration::from_secs(10), "the second event", || events(&cairn, "uploads").len() == 2);
    std::thread::sleep(Duration::from_millis(200));
    writer.kill().unwrap();
    let _ = writer.wait();
    let second = events(&cairn, "uploads").remove(1);
    let path = format!("http://cairn/v1/events/{}/content", second["id"].as_str().unwrap());
    wait_for(Duration::from_secs(10), "the abort", || {
        let read = std::process::Command::new("curl")
            .args(["-s", "-m", "20", "--unix-socket", &socket, &path])
            .output()
            .unwrap();
        String::from_utf8_lossy(&read.stdout).contains("its writer stopped before the end")
    });
    drop(server);
}
