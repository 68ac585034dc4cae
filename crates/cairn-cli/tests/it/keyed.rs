//! Keyed records (issue 18 §1-§3, over HTTP): transactions that commit as
//! one batch under one rev, conflicts per key against a base, evt's merge
//! rules, each key's latest state (paged, and at a past rev), with two
//! users of different rights.

use crate::Cairn;
use crate::serve::{Server, call};

fn user(cairn: &Cairn, args: &[&str], password: &str) {
    let mut full = vec!["user"];
    full.extend_from_slice(args);
    let output = cairn.command(&full).env("CAIRN_PASSWORD", password).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_conflict_per_key_and_keep_each_keys_state() {
    let cairn = Cairn::new();
    user(&cairn, &["add", "alice", "--read", "orders.>", "--write", "orders.>"], "alice-pw");
    user(&cairn, &["add", "bob", "--read", "payments.>", "--write", "payments.>"], "bob-pw");
    let server = Server::start(&cairn, &["--no-resp"]);
    let alice = server.tcp().with_basic("alice", "alice-pw");
    let bob = server.tcp().with_basic("bob", "bob-pw");
    let publish = async |client: &cairn_client::Client, tx: serde_json::Value| {
        call(client, "POST", "/v1/transactions", &[("content-type", "application/json")], tx.to_string()).await
    };
    let state = async |key: &str| call(&alice, "GET", &format!("/v1/state/orders.1/{key}"), &[], "").await;

    // One transaction, one batch, one rev; its audit on every event.
    let first = publish(
        &alice,
        serde_json::json!({"created": 5, "extra": {"why": "test"}, "acts": [
            {"top": "orders.1", "key": "k1", "cmd": "new", "arg": {"a": 1}},
            {"top": "orders.1", "key": "k2", "cmd": "new", "arg": {"b": 1}},
        ]}),
    )
    .await;
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    let first = first.json();
    let rev1 = first["rev"].as_u64().unwrap();
    let evs = first["evs"].as_array().unwrap();
    assert_eq!(evs.len(), 2);
    for ev in evs {
        assert_eq!(ev["meta"]["rev"], rev1);
        assert_eq!(ev["meta"]["extra"]["why"], "test");
        assert_eq!(ev["meta"]["created"], 5);
        assert_eq!(ev["user"], "alice");
    }
    assert_eq!(evs[0]["meta"]["key"], "k1");
    assert_eq!(evs[0]["meta"]["cmd"], "new");
    assert_eq!(state("k1").await.json()["state"], serde_json::json!({"a": 1}));

    // A later transaction gets a larger rev.
    let second = publish(
        &alice,
        serde_json::json!({"base": rev1, "acts": [{"top": "orders.1", "key": "k1", "cmd": "mod", "arg": {"a": 2}}]}),
    )
    .await;
    let rev2 = second.json()["rev"].as_u64().unwrap();
    assert!(rev2 > rev1);

    // A stale base conflicts on the key that changed, naming it; another
    // key of the same topic does not.
    let stale = publish(
        &alice,
        serde_json::json!({"base": rev1, "acts": [
            {"top": "orders.1", "key": "k1", "cmd": "mod", "arg": {"a": 3}},
        ]}),
    )
    .await;
    assert_eq!(stale.status, 409);
    let message = String::from_utf8_lossy(&stale.body).into_owned();
    assert!(message.contains(&format!("orders.1 k1 (rev {rev2})")), "{message}");
    assert_eq!(state("k1").await.json()["state"]["a"], 2, "nothing written");
    let other = publish(
        &alice,
        serde_json::json!({"base": rev1, "acts": [{"top": "orders.1", "key": "k2", "cmd": "mod", "arg": {"b": 2}}]}),
    )
    .await;
    assert_eq!(other.status, 200);

    // evt's merge rules, in one transaction each.
    let ok = async |acts: serde_json::Value| {
        let reply = publish(&alice, serde_json::json!({ "acts": acts })).await;
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    };
    ok(serde_json::json!([{"top": "orders.1", "key": "k2", "cmd": "del"}, {"top": "orders.1", "key": "k2", "cmd": "new", "arg": {"c": 1}}])).await;
    let k2 = state("k2").await.json();
    assert_eq!(k2["state"], serde_json::json!({"c": 1}), "del+new is a mod");
    let k2_events = call(&alice, "GET", "/v1/topics/orders.1/events?last=1", &[], "").await.lines();
    assert_eq!(k2["id"], k2_events[0]["id"], "the key's last event is its last action's");
    ok(serde_json::json!([{"top": "orders.1", "key": "k3", "cmd": "new", "arg": {"x": 1}}, {"top": "orders.1", "key": "k3", "cmd": "mod", "arg": {"y": 2}}])).await;
    assert_eq!(state("k3").await.json()["state"], serde_json::json!({"x": 1, "y": 2}), "new+mod is a new");
    ok(serde_json::json!([{"top": "orders.1", "key": "k1", "cmd": "mod", "arg": {"a": 9}}, {"top": "orders.1", "key": "k1", "cmd": "mod", "arg": {"z": 1}}])).await;
    assert_eq!(
        state("k1").await.json()["state"],
        serde_json::json!({"a": 9, "z": 1}),
        "mod+mod overwrites field by field"
    );
    ok(serde_json::json!([{"top": "orders.1", "key": "k3", "cmd": "mod", "arg": {"x": 5}}, {"top": "orders.1", "key": "k3", "cmd": "del"}])).await;
    assert_eq!(state("k3").await.status, 404, "anything+del is a del");
    for (acts, says) in [
        (
            serde_json::json!([{"top": "orders.1", "key": "k3", "cmd": "mod", "arg": {"x": 1}}]),
            "mod of a key that does not exist",
        ),
        (serde_json::json!([{"top": "orders.1", "key": "k3", "cmd": "del"}]), "del of a key that does not exist"),
        (serde_json::json!([{"top": "orders.1", "key": "k1", "cmd": "new", "arg": {}}]), "new on a key that exists"),
        (
            serde_json::json!([{"top": "orders.1", "key": "k1", "cmd": "del"}, {"top": "orders.1", "key": "k1", "cmd": "mod", "arg": {}}]),
            "mod of a key",
        ),
    ] {
        let reply = publish(&alice, serde_json::json!({ "acts": acts })).await;
        assert_eq!(reply.status, 400);
        assert!(String::from_utf8_lossy(&reply.body).contains(says), "{}", String::from_utf8_lossy(&reply.body));
    }
    assert_eq!(
        state("k1").await.json()["state"],
        serde_json::json!({"a": 9, "z": 1}),
        "a refused transaction writes nothing"
    );
    let future = publish(
        &alice,
        serde_json::json!({"base": u64::MAX / 2, "acts": [{"top": "orders.1", "key": "k1", "cmd": "mod", "arg": {}}]}),
    )
    .await;
    assert_eq!(future.status, 400);

    // Transactions at the same moment commit as a group, each checked
    // against the ones before it: of 16 writers with the same base on one
    // key, exactly one wins; 16 on 16 new keys all win, with 16 revs.
    let base = state("k1").await.json()["rev"].as_u64().unwrap();
    let racing: Vec<_> = (0..16)
        .map(|n| {
            let alice = alice.clone();
            tokio::spawn(async move {
                let tx = serde_json::json!({"base": base, "acts": [{"top": "orders.1", "key": "k1", "cmd": "mod", "arg": {"n": n}}]});
                call(&alice, "POST", "/v1/transactions", &[], tx.to_string()).await.status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in racing {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|status| **status == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|status| **status == 409).count(), 15, "{statuses:?}");
    let fresh: Vec<_> = (0..16)
        .map(|n| {
            let alice = alice.clone();
            tokio::spawn(async move {
                let tx =
                    serde_json::json!({"acts": [{"top": "orders.2", "key": format!("n{n}"), "cmd": "new", "arg": {}}]});
                call(&alice, "POST", "/v1/transactions", &[], tx.to_string()).await.json()["rev"].as_u64().unwrap()
            })
        })
        .collect();
    let mut revs = Vec::new();
    for task in fresh {
        revs.push(task.await.unwrap());
    }
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(revs.len(), 16, "one rev per transaction");
    let k1 = state("k1").await.json();
    assert!(k1["state"]["n"].is_number(), "{k1}");
    let mod_rev = k1["rev"].as_u64().unwrap();
    assert!(mod_rev > base);

    // Paged listing, and the state at a past rev (replayed).
    let page = call(&alice, "GET", "/v1/state/orders.1?limit=1", &[], "").await.json();
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["key"], "k1");
    let next = call(&alice, "GET", "/v1/state/orders.1?after=k1", &[], "").await.json();
    assert_eq!(next.as_array().unwrap().iter().map(|s| s["key"].clone()).collect::<Vec<_>>(), ["k2"]);
    let then = call(&alice, "GET", &format!("/v1/state/orders.1/k1?rev={rev1}"), &[], "").await.json();
    assert_eq!(then["state"], serde_json::json!({"a": 1}));
    assert_eq!(then["rev"], rev1);

    // Another user's topics: no writing, no reading state.
    let forbidden =
        publish(&bob, serde_json::json!({"acts": [{"top": "orders.1", "key": "k9", "cmd": "new", "arg": {}}]})).await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(call(&bob, "GET", "/v1/state/orders.1/k1", &[], "").await.status, 403);
    assert_eq!(call(&bob, "GET", "/v1/state/orders.1", &[], "").await.status, 403);
    assert_eq!(call(&server.tcp(), "GET", "/v1/state/orders.1", &[], "").await.status, 401);
    // Malformed transactions get clear errors.
    for body in [
        r#"{"acts": []}"#,
        r#"{"acts": [{"top": "orders.1", "key": "", "cmd": "new"}]}"#,
        r#"{"acts": [{"top": "orders.1", "key": "a", "cmd": "zap"}]}"#,
        "nonsense",
    ] {
        let reply = call(&alice, "POST", "/v1/transactions", &[], body).await;
        assert_eq!(reply.status, 400, "{body}");
    }

    // The states outlive a restart, and the CLI shows them.
    server.terminate();
    let lines = cairn.ok(&["state", "orders.1"], b"");
    assert_eq!(lines.iter().map(|s| s["key"].clone()).collect::<Vec<_>>(), ["k1", "k2"]);
    let k1 = cairn.ok(&["state", "orders.1", "k1", "--rev", &rev1.to_string()], b"");
    assert_eq!(k1[0]["state"], serde_json::json!({"a": 1}));
}
