//! The CLI tour, command by command, through the real binary.

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{Cairn, KillOnDrop};

#[test]
fn append_cat_get_head_topics() {
    let cairn = Cairn::new();
    let first = cairn.ok(&["append", "orders.1", "--type", "OrderPlaced", "--meta", r#"{"by":"ann"}"#], b"{\"sku\":1}");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["topic"], "orders.1");
    assert_eq!(first[0]["seq"], 0);
    assert_eq!(first[0]["type"], "OrderPlaced");
    assert_eq!(first[0]["meta"]["by"], "ann");
    let id = first[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 25);
    cairn.ok(&["append", "orders.2"], b"two");
    cairn.ok(&["append", "orders.1", "--expect", "0"], b"three");

    let all = cairn.ok(&["cat", "--content"], b"");
    let contents: Vec<&str> = all.iter().map(|e| e["content"].as_str().unwrap()).collect();
    assert_eq!(contents, ["{\"sku\":1}", "two", "three"]);
    assert_eq!(cairn.ok(&["cat", "orders.1"], b"").len(), 2);
    assert_eq!(cairn.ok(&["cat", "orders.*", "--last", "1", "--content"], b"")[0]["content"], "three");
    assert_eq!(cairn.ok(&["cat", "--reverse", "--limit", "1", "--content"], b"")[0]["content"], "three");
    assert_eq!(cairn.ok(&["cat", "--after", &id], b"").len(), 2);
    assert_eq!(cairn.ok(&["cat", "orders.1", "--from-seq", "1"], b"").len(), 1);

    let got = cairn.ok(&["get", &id, "--content"], b"");
    assert_eq!(got[0]["content"], "{\"sku\":1}");
    let head = cairn.ok(&["head", "orders.1", "--content"], b"");
    assert_eq!((head[0]["seq"].as_u64(), head[0]["content"].as_str()), (Some(1), Some("three")));
    let topics = cairn.ok(&["topics"], b"");
    assert_eq!(topics.len(), 2);
    assert_eq!(topics[0]["topic"], "orders.1");
    assert_eq!(topics[0]["count"], 2);
    assert_eq!(topics[0]["last_seq"], 1);
}

#[test]
fn expectation_failure_names_the_actual_seq() {
    let cairn = Cairn::new();
    cairn.ok(&["append", "acct.7", "--expect", "none"], b"open");
    let stderr = cairn.fails(&["append", "acct.7", "--expect", "none"], b"again", 1);
    assert!(stderr.contains("expectation failed") && stderr.contains("actual last seq 0"), "{stderr}");
    assert_eq!(cairn.ok(&["cat"], b"").len(), 1);
}

#[test]
fn batch_is_atomic_and_idempotency_key_repeats() {
    let cairn = Cairn::new();
    let lines =
        b"{\"topic\":\"a\",\"content\":\"1\"}\n{\"topic\":\"b\",\"content_base64\":\"/4A=\",\"type\":\"Bin\"}\n";
    let written = cairn.ok(&["append", "--batch", "--key", "k1"], lines);
    assert_eq!(written.len(), 2);
    let again = cairn.ok(&["append", "--batch", "--key", "k1"], lines);
    assert_eq!(written, again, "a retry with the same key returns the original events");
    assert_eq!(cairn.ok(&["cat"], b"").len(), 2);
    assert_eq!(cairn.ok(&["get", written[1]["id"].as_str().unwrap(), "--content"], b"")[0]["content_base64"], "/4A=");
    // One bad expectation and nothing of the batch is written.
    let bad = b"{\"topic\":\"c\",\"content\":\"x\"}\n{\"topic\":\"a\",\"content\":\"y\",\"expect\":\"5\"}\n";
    cairn.fails(&["append", "--batch"], bad, 1);
    assert_eq!(cairn.ok(&["cat"], b"").len(), 2);
}

#[test]
fn rm_keeps_other_seqs() {
    let cairn = Cairn::new();
    let ids: Vec<String> = (0..3)
        .map(|n| cairn.ok(&["append", "t"], format!("{n}").as_bytes())[0]["id"].as_str().unwrap().to_owned())
        .collect();
    cairn.ok(&["rm", &ids[1]], b"");
    let seqs: Vec<u64> = cairn.ok(&["cat"], b"").iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [0, 2]);
    let stderr = cairn.fails(&["get", &ids[1]], b"", 1);
    assert!(stderr.contains("not found"), "{stderr}");
    cairn.fails(&["rm", &ids[1]], b"", 1);
}

#[test]
fn cas_put_get_binary_to_a_file() {
    let cairn = Cairn::new();
    let bytes: Vec<u8> = (0..200_000u32).map(|n| (n * 7 % 251) as u8).collect();
    let output = cairn.run(&["cas", "put"], &bytes);
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("sha256-"), "{hash}");
    let file = cairn.store().parent().unwrap().join("out.bin");
    let status = cairn.command(&["cas", "get", &hash]).stdout(std::fs::File::create(&file).unwrap()).status().unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    // Hex works too, and large event payloads are readable by hash.
    let event = cairn.ok(&["append", "files"], &bytes);
    assert_eq!(event[0]["hash"], hash.as_str());
}

#[test]
fn consumers_ack_show_list_rm_and_resume() {
    let cairn = Cairn::new();
    let ids: Vec<String> = (0..4)
        .map(|n| cairn.ok(&["append", "jobs"], format!("{n}").as_bytes())[0]["id"].as_str().unwrap().to_owned())
        .collect();
    cairn.ok(&["consumer", "ack", "mailer", &ids[1]], b"");
    assert_eq!(cairn.ok(&["consumer", "show", "mailer"], b"")[0]["acked"], ids[1].as_str());
    assert_eq!(cairn.ok(&["consumer", "list"], b"").len(), 1);
    let rest: Vec<String> = cairn
        .ok(&["cat", "jobs", "--consumer", "mailer"], b"")
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(rest, ids[2..]);
    cairn.ok(&["consumer", "rm", "mailer"], b"");
    cairn.fails(&["consumer", "show", "mailer"], b"", 1);
}

/// A projection's state kept with its position, through the store itself
/// and through a running server's socket (the same commands, the same output).
fn snapshots_keep_state_with_the_position(cairn: &Cairn) {
    let ids: Vec<String> = (0..4)
        .map(|n| cairn.ok(&["append", "sums"], format!("{n}").as_bytes())[0]["id"].as_str().unwrap().to_owned())
        .collect();
    let state = b"{\"total\":1}\n\x00binary too";
    cairn.ok(&["consumer", "snapshot", "put", "totals", &ids[1]], state);
    let shown = &cairn.ok(&["consumer", "show", "totals"], b"")[0];
    assert_eq!(shown["acked"], ids[1].as_str());
    assert_eq!(shown["snapshot"], serde_json::json!({ "at": ids[1], "bytes": state.len() }));
    assert_eq!(cairn.run(&["consumer", "snapshot", "get", "totals"], b"").stdout, state);
    let rest: Vec<_> =
        cairn.ok(&["cat", "sums", "--consumer", "totals"], b"").iter().map(|e| e["id"].clone()).collect();
    assert_eq!(rest, [ids[2].as_str(), ids[3].as_str()]);
    // An ack moves the consumer, not the snapshot; a new snapshot replaces it.
    cairn.ok(&["consumer", "ack", "totals", &ids[2]], b"");
    let shown = &cairn.ok(&["consumer", "show", "totals"], b"")[0];
    assert_eq!(
        (shown["acked"].as_str(), shown["snapshot"]["at"].as_str()),
        (Some(ids[2].as_str()), Some(ids[1].as_str()))
    );
    cairn.ok(&["consumer", "snapshot", "put", "totals", &ids[3]], b"{\"total\":6}");
    assert_eq!(cairn.run(&["consumer", "snapshot", "get", "totals"], b"").stdout, b"{\"total\":6}");
    assert_eq!(cairn.ok(&["consumer", "show", "totals"], b"")[0]["acked"], ids[3].as_str());
    // Bad input is refused and changes nothing.
    assert!(cairn.fails(&["consumer", "snapshot", "put", "totals", "nonsense"], b"x", 1).contains("id"));
    let future = "7zzzzzzzzzzzzzzzzzzzzzzzz";
    cairn.fails(&["consumer", "snapshot", "put", "totals", future], b"x", 1);
    assert_eq!(cairn.run(&["consumer", "snapshot", "get", "totals"], b"").stdout, b"{\"total\":6}");
    // Removing the consumer removes its snapshot.
    cairn.ok(&["consumer", "rm", "totals"], b"");
    assert!(cairn.fails(&["consumer", "snapshot", "get", "totals"], b"", 1).contains("totals"));
}

#[test]
fn consumer_snapshots_on_a_store() {
    snapshots_keep_state_with_the_position(&Cairn::new());
}

#[test]
fn consumer_snapshots_through_a_server() {
    let cairn = Cairn::new();
    let _server = crate::serve::Server::start(&cairn, &[]);
    snapshots_keep_state_with_the_position(&cairn);
}

#[test]
fn export_import_is_byte_identical() {
    let source = Cairn::new();
    source.ok(&["append", "a", "--type", "T", "--meta", r#"{"x":[1,2]}"#], b"alpha");
    source.ok(&["append", "b", "--ttl", "last:5"], &[0u8, 159, 146, 150]);
    source.ok(&["append", "big"], &vec![b'z'; 50_000]);
    let removed = source.ok(&["append", "a"], b"gone")[0]["id"].as_str().unwrap().to_owned();
    source.ok(&["append", "a"], b"after");
    source.ok(&["rm", &removed], b"");
    let export = source.run(&["export"], b"").stdout;
    let target = Cairn::new();
    assert_eq!(target.ok(&["import"], &export)[0]["imported"], 4);
    assert_eq!(target.run(&["export"], b"").stdout, export);
    let report = target.ok(&["verify"], b"");
    assert_eq!(report[0]["problems"].as_array().unwrap().len(), 0);
    // Importing the same export again is refused (ids must move forward).
    target.fails(&["import"], &export, 1);
}

#[test]
fn verify_names_damaged_content() {
    let cairn = Cairn::new();
    let event = cairn.ok(&["append", "files"], &vec![b'q'; 10_000]);
    assert!(cairn.run(&["verify"], b"").status.success());
    let hash = cairn_hex(event[0]["hash"].as_str().unwrap());
    let path = cairn.store().join("cas/sha256").join(&hash[..2]).join(&hash);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let output = cairn.run(&["verify"], b"");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains(&hash), "verify names the damaged file");
    let stderr = cairn.fails(&["get", event[0]["id"].as_str().unwrap(), "--content"], b"", 1);
    assert!(stderr.contains("corrupt"), "a damaged payload is an error, never wrong bytes: {stderr}");
}

fn cairn_hex(sri: &str) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(sri.trim_start_matches("sha256-")).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn follow_prints_history_threshold_and_pulses_until_interrupted() {
    let cairn = Cairn::new();
    cairn.ok(&["append", "t"], b"old");
    let child = cairn
        .command(&["cat", "--follow", "--threshold", "--pulse", "50", "--content"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut topics = Vec::new();
    while topics.len() < 3 && Instant::now() < deadline {
        let line = lines.next().unwrap().unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        topics.push(value["topic"].as_str().unwrap().to_owned());
    }
    assert_eq!(topics, ["t", "cairn.threshold", "cairn.pulse"]);
    // While it follows, it owns the store: a second opener is told who.
    let stderr = cairn.fails(&["topics"], b"", 1);
    assert!(stderr.contains("locked") && stderr.contains(&format!("pid {}", child.0.id())), "{stderr}");
    // SIGINT ends it cleanly.
    send_sigint(child.0.id());
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

fn send_sigint(pid: u32) {
    let status = std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

#[test]
fn follow_with_limit_stops() {
    let cairn = Cairn::new();
    for n in 0..3 {
        cairn.ok(&["append", "t"], format!("{n}").as_bytes());
    }
    let events = cairn.ok(&["cat", "--follow", "--limit", "2"], b"");
    assert_eq!(events.len(), 2);
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    let cairn = Cairn::new();
    for sub in [
        vec!["append"],
        vec!["cat"],
        vec!["get"],
        vec!["head"],
        vec!["topics"],
        vec!["rm"],
        vec!["cas", "put"],
        vec!["cas", "get"],
        vec!["consumer", "ack"],
        vec!["consumer", "show"],
        vec!["consumer", "list"],
        vec!["consumer", "rm"],
        vec!["consumer", "snapshot", "put"],
        vec!["consumer", "snapshot", "get"],
        vec!["verify"],
        vec!["export"],
        vec!["import"],
    ] {
        let mut args = sub.clone();
        args.push("--help");
        let output = cairn.run(&args, b"");
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(output.status.success(), "{sub:?}");
        assert!(text.contains("Example"), "{sub:?} --help has no example:\n{text}");
    }
}

#[test]
fn closed_stdout_is_not_an_error() {
    let cairn = Cairn::new();
    let lines: String = (0..3000).map(|n| format!("{{\"topic\":\"t\",\"content\":\"{n}\"}}\n")).collect();
    cairn.ok(&["append", "--batch"], lines.as_bytes());
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("'{}' --store '{}' cat --content | head -1", env!("CARGO_BIN_EXE_cairn"), cairn.store().display()))
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(output.stderr.is_empty(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// An export of the whole store carries consumers with their snapshots,
/// consumer groups and content stored on its own, locally and through a
/// server, and an import brings them back.
#[test]
fn export_carries_consumers_groups_and_standalone_content() {
    let source = Cairn::new();
    let first = source.ok(&["append", "orders"], b"one")[0]["id"].as_str().unwrap().to_owned();
    source.ok(&["append", "orders"], b"two");
    source.ok(&["consumer", "ack", "reporting", &first], b"");
    source.ok(&["consumer", "snapshot", "put", "reporting", &first], b"{\"total\":1}");
    let put = source.run(&["cas", "put"], b"standalone bytes");
    let hash = String::from_utf8(put.stdout).unwrap().trim().to_owned();
    {
        let server = crate::serve::Server::start(&source, &[]);
        let mut raw = crate::resp::Raw::connect(server.resp());
        raw.command(&[b"XGROUP", b"CREATE", b"orders", b"workers", b"0"]);
        raw.expect(b"+OK\r\n");
        raw.command(&[b"XREADGROUP", b"GROUP", b"workers", b"w1", b"COUNT", b"1", b"STREAMS", b"orders", b">"]);
        let _ = raw.frame();
        // Through the server, `cairn export` is the same as on the store.
        let remote = source.run(&["export"], b"");
        assert!(remote.status.success());
        drop(raw);
        drop(server);
        assert_eq!(remote.stdout, source.run(&["export"], b"").stdout);
    }
    let export = source.run(&["export"], b"").stdout;
    let text = String::from_utf8_lossy(&export);
    assert!(text.contains("\"cairn_content\"") && text.contains("\"cairn_state\""), "{text}");
    let target = Cairn::new();
    target.ok(&["import"], &export);
    let consumer = target.ok(&["consumer", "show", "reporting"], b"");
    assert_eq!(consumer[0]["acked"], first.as_str(), "{consumer:?}");
    let snapshot = target.run(&["consumer", "snapshot", "get", "reporting"], b"");
    assert_eq!(snapshot.stdout, b"{\"total\":1}");
    assert_eq!(target.run(&["cas", "get", &hash], b"").stdout, b"standalone bytes");
    assert_eq!(target.run(&["export"], b"").stdout, export, "a second export is the same");
    let server = crate::serve::Server::start(&target, &[]);
    let mut raw = crate::resp::Raw::connect(server.resp());
    raw.command(&[b"XPENDING", b"orders", b"workers"]);
    let crate::resp::Value::Array(summary) = raw.frame() else { panic!() };
    assert_eq!(summary[0], crate::resp::Value::Line(":1".to_owned()), "{summary:?}");
    // A damaged content line is refused with its line named.
    let bad = format!("{{\"cairn_content\":{{\"hash\":\"{hash}\",\"content_base64\":\"AAAA\"}}}}\n");
    let stderr = Cairn::new().fails(&["import"], bad.as_bytes(), 1);
    assert!(stderr.contains("line 1") && stderr.contains("does not hash"), "{stderr}");
}
