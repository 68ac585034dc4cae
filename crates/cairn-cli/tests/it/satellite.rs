//! Satellites of the evt hub (issue 18 §5-§6), all real processes: a hub
//! with users, two satellites (`--satellite-of`) that replicate it, queue
//! transactions while it is stopped (one of them restarted meanwhile),
//! and reconcile when it is back: every accepted transaction on the hub in
//! each satellite's order, the rejected one reported on its satellite, the
//! three states equal. And a kill -9 of the hub in the middle of a
//! reconciliation: nothing accepted lost, nothing applied twice.

use std::time::{Duration, Instant};

use cairn_client::Client;

use crate::Cairn;
use crate::serve::{Server, call};

fn user(cairn: &Cairn, args: &[&str], password: &str) {
    let mut full = vec!["user"];
    full.extend_from_slice(args);
    let output = cairn.command(&full).env("CAIRN_PASSWORD", password).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// A TCP port free now (the hub is restarted on the same one), below the
/// kernel's ephemeral range (32768 and up), so no server of another test
/// binding port 0 is handed it meanwhile.
fn free_port() -> u16 {
    let mut seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    loop {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = 20_000 + (seed % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn start_hub(hub: &Cairn, port: u16) -> Server {
    // The port was free a moment ago; a restart may find it in TIME_WAIT
    // for no one (the server sets SO_REUSEADDR), so one attempt suffices.
    Server::start_raw(hub, &["serve", "--http", &format!("127.0.0.1:{port}"), "--no-resp"])
}

fn start_satellite(satellite: &Cairn, port: u16, user: &str, password: &str) -> Server {
    let url = format!("ws://127.0.0.1:{port}/v1/hub");
    let mut command = satellite.command(&[
        "serve",
        "--no-resp",
        "--satellite-of",
        &url,
        "--satellite-topics",
        "orders.>",
        "--satellite-user",
        user,
    ]);
    command.env("CAIRN_PASSWORD", password);
    Server::spawn(command)
}

async fn publish(client: &Client, tx: serde_json::Value) -> (u16, serde_json::Value) {
    let reply = call(client, "POST", "/v1/transactions", &[("content-type", "application/json")], tx.to_string()).await;
    let json = serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null);
    (reply.status, json)
}

/// Every key of `orders.x` as (key, state, rev, provisional).
async fn states(client: &Client) -> Vec<(String, serde_json::Value, u64, bool)> {
    let reply = call(client, "GET", "/v1/state/orders.x?limit=10000", &[], "").await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&reply.body).unwrap();
    list.into_iter()
        .map(|state| {
            (
                state["key"].as_str().unwrap().to_owned(),
                state["state"].clone(),
                state["rev"].as_u64().unwrap(),
                state["provisional"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// The events of `topic` (NDJSON), oldest first.
async fn events(client: &Client, topic: &str) -> Vec<serde_json::Value> {
    let reply = call(client, "GET", &format!("/v1/topics/{topic}/events?content=true"), &[], "").await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    String::from_utf8(reply.body)
        .unwrap()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Polls `check` until it holds (20 s at most).
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "not in time: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn confirmed(states: &[(String, serde_json::Value, u64, bool)]) -> Vec<(String, serde_json::Value, u64)> {
    states.iter().map(|(key, state, rev, _)| (key.clone(), state.clone(), *rev)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_satellites_queue_while_the_hub_is_away_and_converge_with_it() {
    let hub_store = Cairn::new();
    user(&hub_store, &["add", "sat", "--read", "orders.>", "--write", "orders.>"], "sat-pw");
    user(&hub_store, &["add", "reader", "--read", "orders.>", "--write", "elsewhere.>"], "reader-pw");
    let port = free_port();
    let hub = start_hub(&hub_store, port);
    let (one_store, two_store) = (Cairn::new(), Cairn::new());
    let one = start_satellite(&one_store, port, "sat", "sat-pw");
    let mut two = start_satellite(&two_store, port, "sat", "sat-pw");

    // Online: a transaction on one satellite reaches the hub and the other.
    let (status, queued) = publish(
        &one.unix(),
        serde_json::json!({"acts": [{"top": "orders.x", "key": "k1", "cmd": "new", "arg": {"a": 1}}]}),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    assert!(queued["queued"].is_string());
    eventually("k1 on the hub and both satellites", async || {
        for server in [&hub, &one, &two] {
            let states = states(&server.unix()).await;
            if states.len() != 1 || states[0].3 {
                return false;
            }
        }
        true
    })
    .await;
    let k1_rev = states(&hub.unix()).await[0].2;
    assert_eq!(states(&two.unix()).await[0].2, k1_rev, "the hub's rev, replicated");

    // A writer's id: its retry is one transaction on the hub.
    let retried =
        serde_json::json!({"id": "order-7", "acts": [{"top": "orders.x", "key": "k7", "cmd": "new", "arg": {}}]});
    for _ in 0..2 {
        let (status, reply) = publish(&one.unix(), retried.clone()).await;
        assert_eq!((status, reply["queued"].as_str()), (202, Some("order-7")), "{reply}");
    }
    eventually("k7 on the hub", async || states(&hub.unix()).await.len() == 2).await;
    let on_hub = events(&hub.unix(), "orders.x").await;
    assert_eq!(on_hub.iter().filter(|event| event["meta"]["key"] == "k7").count(), 1, "{on_hub:?}");
    assert_ne!(on_hub[1]["meta"]["tx"], "order-7", "the hub sees the satellite's own id, not the writer's");
    let removed = serde_json::json!({"acts": [{"top": "orders.x", "key": "k7", "cmd": "del"}]});
    assert_eq!(publish(&one.unix(), removed).await.0, 202);
    eventually("k7 removed everywhere", async || {
        states(&hub.unix()).await.len() == 1 && states(&two.unix()).await.len() == 1
    })
    .await;

    // Replicated topics are the replication's alone.
    let plain = call(&one.unix(), "POST", "/v1/topics/orders.x/events", &[], "x").await;
    assert_eq!(plain.status, 403, "{}", String::from_utf8_lossy(&plain.body));
    // A satellite logged in as a user of the hub who may only read: it
    // replicates, and the hub refuses its transactions, which it reports.
    let three_store = Cairn::new();
    let three = start_satellite(&three_store, port, "reader", "reader-pw");
    let (status, reply) = publish(
        &three.unix(),
        serde_json::json!({"acts": [{"top": "orders.x", "key": "k9", "cmd": "new", "arg": {}}]}),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    eventually("the refusal reported", async || events(&three.unix(), "cairn.sat.rejected").await.len() == 1).await;
    let refused = &events(&three.unix(), "cairn.sat.rejected").await[0];
    assert!(refused["meta"]["reason"].as_str().unwrap().contains("may not write"), "{refused}");
    eventually("three replicated k1 and dropped k9", async || {
        let states = states(&three.unix()).await;
        states.len() == 1 && states[0].0 == "k1" && !states[0].3
    })
    .await;
    drop(three);

    // The hub goes away; both satellites keep taking transactions.
    hub.terminate();
    let on = |key: &str, cmd: &str, arg: serde_json::Value| serde_json::json!({"base": k1_rev, "acts": [{"top": "orders.x", "key": key, "cmd": cmd, "arg": arg}]});
    let mut ids = [Vec::new(), Vec::new()];
    for (n, satellite) in [&one, &two].into_iter().enumerate() {
        // The conflicting pair: both change k1 against the rev they saw.
        let txs = [
            on("k1", "mod", serde_json::json!({ format!("by{n}"): true })),
            on(&format!("own{n}.a"), "new", serde_json::json!({"n": n})),
            on(&format!("own{n}.b"), "new", serde_json::json!({"n": n})),
        ];
        for tx in txs {
            let (status, reply) = publish(&satellite.unix(), tx).await;
            assert_eq!(status, 202, "{reply}");
            ids[n].push(reply["queued"].as_str().unwrap().to_owned());
        }
        // A change of a key created while offline (no base: no hub rev
        // was seen for it).
        let tx = serde_json::json!({"acts": [{"top": "orders.x", "key": format!("own{n}.b"), "cmd": "mod", "arg": {"m": 1}}]});
        let (status, reply) = publish(&satellite.unix(), tx).await;
        assert_eq!(status, 202);
        ids[n].push(reply["queued"].as_str().unwrap().to_owned());
    }
    // Provisional, and visible as such.
    let local = states(&one.unix()).await;
    let k1 = local.iter().find(|state| state.0 == "k1").unwrap();
    assert_eq!((k1.1["by0"].as_bool(), k1.3), (Some(true), true), "{local:?}");
    assert!(local.iter().any(|state| state.0 == "own0.a" && state.3));

    // One satellite restarts while the hub is away: its queue is kept.
    two.terminate();
    two = start_satellite(&two_store, port, "sat", "sat-pw");
    let local = states(&two.unix()).await;
    assert!(local.iter().any(|state| state.0 == "own1.b" && state.3 && state.1["m"] == 1), "{local:?}");

    // The hub is back: both send what they queued.
    let hub = start_hub(&hub_store, port);
    let reader = hub.tcp().with_basic("reader", "reader-pw");
    eventually("the queues drained", async || {
        let (a, b) = (states(&one.unix()).await, states(&two.unix()).await);
        a.len() == 5 && b.len() == 5 && !a.iter().chain(&b).any(|state| state.3)
    })
    .await;
    let hub_states = states(&reader).await;
    eventually("three equal states", async || {
        confirmed(&states(&one.unix()).await) == confirmed(&hub_states)
            && confirmed(&states(&two.unix()).await) == confirmed(&hub_states)
    })
    .await;
    let keys: Vec<&str> = hub_states.iter().map(|state| state.0.as_str()).collect();
    assert_eq!(keys, ["k1", "own0.a", "own0.b", "own1.a", "own1.b"]);
    assert_eq!(hub_states[4].1, serde_json::json!({"n": 1, "m": 1}));

    // Exactly one of the conflicting pair won; the other is reported, with
    // its reason and key, on its own satellite only.
    let k1 = &hub_states[0].1;
    let winner = usize::from(k1.get("by1").is_some());
    assert!(k1.get(format!("by{}", 1 - winner)).is_none(), "both conflicting changes applied: {k1}");
    let loser = [&one, &two][1 - winner];
    let rejected = events(&loser.unix(), "cairn.sat.rejected").await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let meta = &rejected[0]["meta"];
    assert_eq!(meta["tx"], ids[1 - winner][0].as_str());
    assert!(meta["reason"].as_str().unwrap().contains("k1"), "{meta}");
    assert!(meta["keys"][0].as_str().unwrap().starts_with("orders.x k1"), "{meta}");
    assert!(events(&[&one, &two][winner].unix(), "cairn.sat.rejected").await.is_empty());

    // Every accepted transaction is on the hub once, in its satellite's order.
    let log = events(&reader, "orders.x").await;
    for (n, own) in ids.iter().enumerate() {
        let order: Vec<&str> = log
            .iter()
            .filter_map(|event| event["meta"]["tx"].as_str())
            .filter(|tx| own.iter().any(|id| id == tx))
            .collect();
        let expected: Vec<&str> = own.iter().map(String::as_str).filter(|id| n == winner || *id != own[0]).collect();
        assert_eq!(order, expected, "satellite {n}'s transactions on the hub");
    }
    // k1, k7 and its removal, the winner of the pair, and two new and a
    // mod from each.
    assert_eq!(log.len(), 3 + 1 + 2 * 3, "{log:#?}");
    // The satellites' copies carry the hub's ids.
    let copy = events(&one.unix(), "orders.x").await;
    let hub_ids: Vec<&serde_json::Value> = log.iter().map(|event| &event["id"]).collect();
    let copied: Vec<&serde_json::Value> = copy.iter().map(|event| &event["meta"]["hub"]).collect();
    assert_eq!(copied, hub_ids);
    // And its hub protocol shows them, with the hub's revs.
    let mut local = one.unix().hub().await.unwrap();
    let sub = local.call("evt.sub", &serde_json::json!({"rev": 0, "tops": ["orders.x"]})).await.unwrap();
    assert_eq!(sub, true);
    let update = tokio::time::timeout(Duration::from_secs(10), local.update()).await.unwrap().unwrap().unwrap();
    assert_eq!(update["evs"][0]["hub"], log[0]["id"], "{update}");
    let mut hub_link = reader.hub().await.unwrap();
    hub_link.call("evt.sub", &serde_json::json!({"rev": 0, "tops": ["orders.x"]})).await.unwrap();
    let hub_update = tokio::time::timeout(Duration::from_secs(10), hub_link.update()).await.unwrap().unwrap().unwrap();
    assert_eq!(update["evs"][0]["rev"], hub_update["evs"][0]["rev"]);
    assert_eq!(hub_update["evs"][0]["usr"], "sat");
    local.close().await;
    hub_link.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_during_a_reconciliation_loses_nothing_accepted_and_applies_nothing_twice() {
    const N: usize = 2000;
    let hub_store = Cairn::new();
    user(&hub_store, &["add", "sat", "--read", "orders.>", "--write", "orders.>"], "sat-pw");
    let port = free_port();
    let satellite_store = Cairn::new();
    let satellite = start_satellite(&satellite_store, port, "sat", "sat-pw");
    // Queued while no hub has ever run.
    let client = satellite.unix();
    for n in 0..N {
        let tx = serde_json::json!({"acts": [{"top": "orders.x", "key": format!("k{n:04}"), "cmd": "new", "arg": {"n": n}}]});
        assert_eq!(publish(&client, tx).await.0, 202);
    }
    let hub = start_hub(&hub_store, port);
    // Killed once it took some of them (sent 500 at a time).
    // Polled closely: the reconciliation takes a fraction of a second.
    let deadline = Instant::now() + Duration::from_secs(20);
    let taken = loop {
        let reply = call(&hub.unix(), "GET", "/v1/topics/orders.x", &[], "").await;
        let taken = serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|head| head["count"].as_u64())
            .unwrap_or(0);
        if taken > 0 {
            break taken;
        }
        assert!(Instant::now() < deadline, "the hub took nothing");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    hub.kill9();
    assert!(taken < N as u64, "the kill came after the reconciliation ({taken} taken)");
    let hub = start_hub(&hub_store, port);
    eventually("the queue drained", async || {
        let states = states(&client).await;
        states.len() == N && !states.iter().any(|state| state.3)
    })
    .await;
    let log = events(&hub.unix(), "orders.x").await;
    assert_eq!(log.len(), N, "each transaction applied once");
    let mut keys: Vec<&str> = log.iter().map(|event| event["meta"]["key"].as_str().unwrap()).collect();
    keys.dedup();
    assert_eq!(keys.len(), N);
    assert!(events(&client, "cairn.sat.rejected").await.is_empty());
    assert_eq!(confirmed(&states(&hub.unix()).await), confirmed(&states(&client).await));

    // A transaction sent again is answered as the first time, not applied.
    let first = &log[0];
    let again = serde_json::json!({"trans": [{
        "id": first["meta"]["tx"],
        "acts": [{"top": "orders.x", "key": first["meta"]["key"], "cmd": "new", "arg": {"n": 0}}],
    }]});
    let mut link = hub.tcp().with_basic("sat", "sat-pw").hub().await.unwrap();
    let answer = link.call("evt.sat", &again).await.unwrap();
    assert_eq!(answer[0]["ids"], serde_json::json!([first["id"]]), "{answer}");
    assert_eq!(events(&hub.unix(), "orders.x").await.len(), N);
    // A refusal is an answer too: the same id is refused again, whatever
    // changed since.
    let missing = serde_json::json!({"trans": [{
        "id": "late", "acts": [{"top": "orders.x", "key": "later", "cmd": "mod", "arg": {"a": 1}}],
    }]});
    let first = link.call("evt.sat", &missing).await.unwrap();
    assert!(first[0]["err"].as_str().unwrap().contains("does not exist"), "{first}");
    assert_eq!(first[0]["retry"], false);
    let create = serde_json::json!({"acts": [{"top": "orders.x", "key": "later", "cmd": "new", "arg": {}}]});
    link.call("evt.pub", &create).await.unwrap();
    let again = link.call("evt.sat", &missing).await.unwrap();
    assert!(again[0]["err"].as_str().unwrap().contains("does not exist"), "{again}");
    assert_eq!(events(&hub.unix(), "orders.x").await.len(), N + 1);
    link.close().await;
}
