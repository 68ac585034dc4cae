//! The evt hub protocol on WebSocket (`/v1/hub`), through a real WebSocket
//! client: publish, subscribe, monitors (with `new`), conflicts per key,
//! stat, and two users of different rights.

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::Cairn;
use crate::serve::Server;

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(server: &Server, credentials: Option<&str>) -> Result<Socket, String> {
    let address = server.url().trim_start_matches("http://").to_owned();
    let mut request = format!("ws://{address}/v1/hub").into_client_request().unwrap();
    if let Some(credentials) = credentials {
        let value = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials));
        request.headers_mut().insert("authorization", value.parse().unwrap());
    }
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    tokio_tungstenite::client_async(request, stream).await.map(|(socket, _)| socket).map_err(|error| error.to_string())
}

/// Sends `subj#tok\n<json>` and returns the reply to it (skipping pushes).
async fn ask(socket: &mut Socket, head: &str, body: serde_json::Value) -> serde_json::Value {
    socket.send(Message::Text(format!("{head}\n{body}").into())).await.unwrap();
    loop {
        let (subject, json) = next(socket).await;
        if subject == head {
            return json;
        }
    }
}

/// The next text message as (head, json).
async fn next(socket: &mut Socket) -> (String, serde_json::Value) {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("a message in time");
        if let Some(Ok(Message::Text(text))) = message {
            let (head, body) = text.split_once('\n').unwrap();
            return (head.to_owned(), serde_json::from_str(body).unwrap());
        }
        assert!(matches!(message, Some(Ok(_))), "the connection ended: {message:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_publishes_subscribes_monitors_and_refuses_conflicts() {
    let cairn = Cairn::new();
    for (args, password) in [
        (&["add", "alice", "--read", "orders.>", "--write", "orders.>"][..], "alice-pw"),
        (&["add", "bob", "--read", "payments.>", "--write", "payments.>"], "bob-pw"),
    ] {
        let mut full = vec!["user"];
        full.extend_from_slice(args);
        let output = cairn.command(&full).env("CAIRN_PASSWORD", password).output().unwrap();
        assert!(output.status.success());
    }
    let server = Server::start(&cairn, &["--no-resp"]);
    assert!(connect(&server, None).await.is_err(), "no credentials, no hub");
    let mut watcher = connect(&server, Some("alice:alice-pw")).await.unwrap();
    let mut writer = connect(&server, Some("alice:alice-pw")).await.unwrap();

    let stat = ask(&mut watcher, "evt.stat#1", serde_json::Value::Null).await;
    assert_eq!(stat["res"]["rev"], "0001-01-01T00:00:00Z");
    assert!(stat["res"]["on"].as_u64().unwrap() >= 2);
    let zero = "0001-01-01T00:00:00Z";
    let sub = ask(&mut watcher, "evt.sub#2", serde_json::json!({"rev": zero, "tops": ["orders.1"]})).await;
    assert_eq!(sub["res"], true);
    let mon = ask(
        &mut watcher,
        "evt.mon#3",
        serde_json::json!({"rev": zero, "watch": [{"top": "orders.1", "keys": ["new"]}]}),
    )
    .await;
    let mon_id = mon["res"].as_u64().unwrap();

    // A transaction: the sender gets its events in the reply ...
    let published = ask(
        &mut writer,
        "evt.pub#7",
        serde_json::json!({"acts": [{"top": "orders.1", "key": "k1", "cmd": "new", "arg": {"a": 1}}]}),
    )
    .await;
    let res = &published["res"];
    let rev = res["rev"].as_str().unwrap().to_owned();
    assert!(rev.ends_with('Z') && rev.len() == 24, "{rev}");
    assert_eq!(res["evs"][0]["key"], "k1");
    assert_eq!(res["evs"][0]["cmd"], "new");
    assert_eq!(res["evs"][0]["arg"], serde_json::json!({"a": 1}));
    assert_eq!(res["evs"][0]["rev"], rev.as_str());
    // ... subscribers get them pushed, and the monitor's `new` notes them.
    let (mut got_event, mut got_note) = (false, false);
    while !(got_event && got_note) {
        let (head, update) = next(&mut watcher).await;
        assert_eq!(head, "evt.update");
        if update["evs"].as_array().is_some_and(|evs| evs.iter().any(|ev| ev["key"] == "k1")) {
            got_event = true;
        }
        if update["note"]
            .as_array()
            .is_some_and(|notes| notes.iter().any(|note| note["mon"] == mon_id && note["watch"][0]["key"] == "k1"))
        {
            got_note = true;
        }
    }

    // Conflicts per key against the base.
    let first = ask(
        &mut writer,
        "evt.pub#8",
        serde_json::json!({"base": rev, "acts": [{"top": "orders.1", "key": "k1", "cmd": "mod", "arg": {"a": 2}}]}),
    )
    .await;
    assert!(first["res"]["rev"].is_string(), "{first}");
    let stale = ask(
        &mut writer,
        "evt.pub#9",
        serde_json::json!({"base": rev, "acts": [{"top": "orders.1", "key": "k1", "cmd": "mod", "arg": {"a": 3}}]}),
    )
    .await;
    assert!(stale["err"].as_str().unwrap().contains("orders.1 k1"), "{stale}");
    let other = ask(
        &mut writer,
        "evt.pub#10",
        serde_json::json!({"base": rev, "acts": [{"top": "orders.1", "key": "k2", "cmd": "new", "arg": {}}]}),
    )
    .await;
    assert!(other["res"].is_object(), "another key does not conflict: {other}");

    // Another user: not alice's topics.
    let mut bob = connect(&server, Some("bob:bob-pw")).await.unwrap();
    let refused = ask(
        &mut bob,
        "evt.pub#1",
        serde_json::json!({"acts": [{"top": "orders.1", "key": "x", "cmd": "new", "arg": {}}]}),
    )
    .await;
    assert!(refused["err"].as_str().unwrap().contains("may not write"), "{refused}");
    let refused = ask(&mut bob, "evt.sub#2", serde_json::json!({"rev": zero, "tops": ["orders.1"]})).await;
    assert!(refused["err"].is_string(), "{refused}");
    // Bad input gets an error and the connection goes on.
    let bad = ask(&mut bob, "evt.pub#3", serde_json::json!({"acts": "nope"})).await;
    assert!(bad["err"].is_string());
    let unknown = ask(&mut bob, "evt.zap#4", serde_json::Value::Null).await;
    assert!(unknown["err"].as_str().unwrap().contains("unknown subject"));
    // A subject starting with `_` closes the connection.
    bob.send(Message::Text("_bye#5\n".into())).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match bob.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "closed");

    // cairn-client's hub client, on the socket.
    let mut local = server.unix().hub().await.unwrap();
    let stat = local.call("evt.stat", &serde_json::Value::Null).await.unwrap();
    assert!(stat["rev"].as_str().unwrap().ends_with('Z'));
    local.call("evt.sub", &serde_json::json!({"rev": 0, "tops": ["orders.1"]})).await.unwrap();
    let update = local.update().await.unwrap().unwrap();
    assert!(update["evs"].as_array().unwrap().iter().any(|ev| ev["key"] == "k1"), "history after rev 0: {update}");
    let refused = local.call("evt.pub", &serde_json::json!({"acts": []})).await;
    assert!(refused.is_err());
    local.close().await;

    // Reconnect and resume: after the last rev seen, exactly what was missed.
    let seen = other["res"]["rev"].as_str().unwrap().to_owned();
    let missed = ask(
        &mut writer,
        "evt.pub#11",
        serde_json::json!({"acts": [{"top": "orders.1", "key": "k3", "cmd": "new", "arg": {"c": 3}}]}),
    )
    .await;
    assert!(missed["res"].is_object(), "{missed}");
    let mut again = server.tcp().with_basic("alice", "alice-pw").hub().await.unwrap();
    again.call("evt.sub", &serde_json::json!({"rev": seen, "tops": ["orders.1"]})).await.unwrap();
    let update = tokio::time::timeout(Duration::from_secs(10), again.update()).await.unwrap().unwrap().unwrap();
    let keys: Vec<&str> = update["evs"].as_array().unwrap().iter().map(|ev| ev["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["k3"], "{update}");
    again.close().await;
    drop(server);
}
