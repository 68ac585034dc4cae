//! xs's own clients: xs's HTTP API on `<store>/sock`, checked against the
//! replies xs itself gives (its `src/api.rs`: frame JSON with every field
//! in xs's order, `null` when absent, no trailing newline on single
//! objects; 404 with an empty body; 204 for a removal even of nothing;
//! `text/plain` hashes; NDJSON or SSE streams with `xs.threshold` and
//! `xs.pulse`), through curl as the `xs` command line sends them.

use std::process::Command;

use base64::Engine as _;

use crate::Cairn;
use crate::serve::Server;

struct Xs {
    socket: String,
}

impl Xs {
    /// `curl` on the xs socket: (status, content type, body).
    fn call(&self, args: &[&str]) -> (u16, String, String) {
        let output = Command::new("curl")
            .args(["-s", "-m", "5", "--unix-socket", &self.socket, "-w", "\n%{http_code} %{content_type}"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, tail) = text.rsplit_once('\n').unwrap();
        let (status, kind) = tail.split_once(' ').unwrap_or((tail, ""));
        (status.parse().unwrap_or(0), kind.to_owned(), body.to_owned())
    }
}

/// An xs frame's shape: exactly these keys, in this order.
fn assert_frame(text: &str) -> serde_json::Value {
    let keys: Vec<&str> = ["\"topic\":", "\"id\":", "\"hash\":", "\"meta\":", "\"ttl\":"]
        .into_iter()
        .filter(|key| text.contains(key))
        .collect();
    assert_eq!(keys.len(), 5, "{text}");
    let at = |key: &str| text.find(key).unwrap();
    assert!(at("\"topic\":") < at("\"id\":") && at("\"id\":") < at("\"hash\":"), "{text}");
    assert!(at("\"hash\":") < at("\"meta\":") && at("\"meta\":") < at("\"ttl\":"), "{text}");
    serde_json::from_str(text).unwrap()
}

#[test]
fn xs_clients_get_the_replies_xs_gives() {
    let cairn = Cairn::new();
    let server = Server::start_raw(&cairn, &["serve", "--no-resp"]);
    let xs = Xs { socket: cairn.store().join("sock").to_str().unwrap().to_owned() };
    let url = |path: &str| format!("http://localhost{path}");

    // xs version
    let (status, kind, body) = xs.call(&[&url("/version")]);
    assert_eq!((status, kind.as_str()), (200, "application/json"));
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["version"].is_string());

    // xs append ./store note --meta '{"k":1}' --ttl last:3 < hello (a chunked body, as xs sends it)
    let meta = base64::engine::general_purpose::STANDARD.encode(r#"{"k":1}"#);
    let (status, kind, body) = xs.call(&[
        "-X",
        "POST",
        "-H",
        &format!("xs-meta: {meta}"),
        "-H",
        "transfer-encoding: chunked",
        "--data-binary",
        "hello",
        &url("/append/note?ttl=last:3"),
    ]);
    assert_eq!((status, kind.as_str()), (200, "application/json"), "{body}");
    assert!(!body.ends_with('\n'));
    let note = assert_frame(&body);
    assert_eq!(note["topic"], "note");
    assert_eq!(note["hash"], "sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=");
    assert_eq!(note["meta"], serde_json::json!({"k": 1}));
    assert_eq!(note["ttl"], "last:3");
    let id = note["id"].as_str().unwrap().to_owned();
    // An empty body: no hash; no ttl given: forever.
    let (_, _, body) = xs.call(&["-X", "POST", &url("/append/empty")]);
    let empty = assert_frame(&body);
    assert_eq!(
        (empty["hash"].clone(), empty["meta"].clone(), empty["ttl"].clone()),
        (serde_json::Value::Null, serde_json::Value::Null, "forever".into())
    );
    // Bad meta and ttl: 400 with xs's words.
    let (status, _, body) = xs.call(&["-X", "POST", "-H", "xs-meta: !!", &url("/append/note")]);
    assert_eq!(status, 400);
    assert!(body.starts_with("xs-meta isn't valid Base64"), "{body}");
    assert_eq!(xs.call(&["-X", "POST", &url("/append/note?ttl=soon")]).0, 400);

    // xs get ./store <id>
    let (status, kind, body) = xs.call(&[&url(&format!("/{id}"))]);
    assert_eq!((status, kind.as_str()), (200, "application/json"));
    assert_eq!(assert_frame(&body), note);
    assert_eq!(xs.call(&[&url("/03hdc3apotz67hozbezd40l3v")]), (404, String::new(), String::new()));
    let (status, _, body) = xs.call(&[&url("/not-an-id")]);
    assert_eq!(status, 400);
    assert!(body.starts_with("Invalid frame ID"), "{body}");

    // xs cat ./store [-T note]: NDJSON, one frame per line
    let (status, kind, body) = xs.call(&[&url("/?topic=note")]);
    assert_eq!((status, kind.as_str()), (200, "application/x-ndjson"));
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(assert_frame(lines[0]), note);
    let (_, _, body) = xs.call(&[&url("/?topic=note,empty&limit=5")]);
    assert_eq!(body.lines().count(), 2);
    let (_, _, body) = xs.call(&[&url(&format!("/?after={id}&topic=*"))]);
    assert_eq!(assert_frame(body.lines().next().unwrap())["topic"], "empty");
    // xs cat -f: history, xs.threshold, then live
    let (_, _, body) = xs.call(&["-N", "-m", "3", &url("/?follow=true&topic=note")]);
    let frames: Vec<serde_json::Value> = body.lines().map(assert_frame).collect();
    assert_eq!(frames.len(), 2, "{body}");
    assert_eq!(frames[1]["topic"], "xs.threshold");
    assert_eq!(frames[1]["ttl"], "ephemeral");
    // xs cat --sse -p 200 --new: SSE blocks, pulses, no threshold
    let (_, kind, body) = xs.call(&["-N", "-m", "3", "-H", "Accept: text/event-stream", &url("/?follow=200&new=true")]);
    assert_eq!(kind, "text/event-stream");
    let block = body.split("\n\n").next().unwrap();
    let (id_line, data_line) = block.split_once('\n').unwrap();
    let pulse = assert_frame(data_line.strip_prefix("data: ").unwrap());
    assert_eq!(pulse["topic"], "xs.pulse");
    assert_eq!(id_line, format!("id: {}", pulse["id"].as_str().unwrap()));
    assert!(!body.contains("xs.threshold"));

    // xs last ./store note / -n 2
    let (status, kind, body) = xs.call(&[&url("/last/note")]);
    assert_eq!((status, kind.as_str()), (200, "application/json"));
    assert!(!body.ends_with('\n'));
    assert_eq!(assert_frame(&body), note);
    let (_, kind, body) = xs.call(&[&url("/last?last=2")]);
    assert_eq!(kind, "application/x-ndjson");
    let topics: Vec<String> =
        body.lines().map(|line| assert_frame(line)["topic"].as_str().unwrap().to_owned()).collect();
    assert_eq!(topics, ["note", "empty"]);
    assert_eq!(xs.call(&[&url("/last/nothing")]), (404, String::new(), String::new()));

    // xs cas-post ./store < blob; xs cas ./store <hash> (over HTTP, and
    // from the files the local `xs cas` reads)
    let (status, kind, hash) = xs.call(&["-X", "POST", "--data-binary", "blob", &url("/cas")]);
    assert_eq!((status, kind.as_str()), (200, "text/plain"));
    assert!(hash.starts_with("sha256-") && !hash.ends_with('\n'), "{hash}");
    assert_eq!(xs.call(&["-X", "POST", &url("/cas")]), (400, String::new(), "Empty body".to_owned()));
    let (status, _, body) = xs.call(&[&url(&format!("/cas/{hash}"))]);
    assert_eq!((status, body.as_str()), (200, "blob"));
    let hex: String = base64::engine::general_purpose::STANDARD
        .decode(hash.trim_start_matches("sha256-"))
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let file = cairn.store().join("cacache/content-v2/sha256").join(&hex[0..2]).join(&hex[2..4]).join(&hex[4..]);
    assert_eq!(std::fs::read(file).unwrap(), b"blob");

    // xs import ./store < frame (its content posted first)
    let frame = format!(
        r#"{{"topic":"imported","id":"{}","hash":"{hash}","meta":{{"from":"xs"}},"ttl":"forever"}}"#,
        id_later()
    );
    let (status, _, body) = xs.call(&["-X", "POST", "--data-binary", &frame, &url("/import")]);
    assert_eq!(status, 200, "{body}");
    let imported = assert_frame(&body);
    assert_eq!(imported["hash"], hash.as_str());
    assert_eq!(imported["meta"]["from"], "xs");

    // xs remove ./store <id>: 204, also for what is not there
    assert_eq!(xs.call(&["-X", "DELETE", &url(&format!("/{id}"))]).0, 204);
    assert_eq!(xs.call(&["-X", "DELETE", &url(&format!("/{id}"))]).0, 204);
    assert_eq!(xs.call(&[&url(&format!("/{id}"))]).0, 404);
    // And the same events through cairn's own API.
    assert_eq!(cairn.ok(&["cat", "imported", "--content"], b"")[0]["content"], "blob");
    drop(server);
}

/// An id after every id the store gave so far (imports keep their ids and
/// must come after the store's last): a second from now.
fn id_later() -> String {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() + 1000;
    cairn_service::EventId::from_u128(millis << 80).to_string()
}
