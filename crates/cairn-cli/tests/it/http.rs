//! The HTTP API of a real `cairn serve`, over the Unix socket and TCP:
//! every route, ETags, SSE resume, the compatibility routes, OpenAPI
//! against the router, and errors.

use std::collections::BTreeSet;

use crate::Cairn;
use crate::serve::{Server, call};

const INSECURE: &[&str] = &["--insecure-no-auth"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_get_delete_topics_over_both_doors() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, INSECURE);
    let (unix, tcp) = (server.unix(), server.tcp());

    let headers = [("cairn-type", "OrderPlaced"), ("cairn-meta", r#"{"by":"ann"}"#), ("cairn-expect", "none")];
    let first = call(&unix, "POST", "/v1/topics/orders.1/events", &headers, "one").await;
    assert_eq!(first.status, 201, "{}", String::from_utf8_lossy(&first.body));
    let location = first.header("location").map(str::to_owned);
    let first = first.json();
    // Where the new event is.
    assert_eq!(location, Some(format!("/v1/events/{}", first["id"].as_str().unwrap())));
    assert_eq!(
        (first["seq"].as_u64(), first["type"].as_str(), first["meta"]["by"].as_str()),
        (Some(0), Some("OrderPlaced"), Some("ann"))
    );
    let second = call(&tcp, "POST", "/v1/topics/orders.1/events?type=Paid&expect=0", &[], "two").await.json();
    assert_eq!(second["seq"], 1);
    // A topic with '/' travels percent-encoded.
    assert_eq!(call(&tcp, "POST", "/v1/topics/a%2Fb/events", &[], "x").await.json()["topic"], "a/b");
    // An empty body is an event without payload.
    let bare = call(&unix, "POST", "/v1/topics/bare/events", &[], "").await.json();
    assert!(bare.get("hash").is_none());

    let read = call(&tcp, "GET", "/v1/events?topic=orders.*&content=true", &[], "").await;
    assert_eq!(read.header("content-type"), Some("application/x-ndjson"));
    let contents: Vec<_> = read.lines().iter().map(|e| e["content"].as_str().unwrap().to_owned()).collect();
    assert_eq!(contents, ["one", "two"]);
    let topic_read = call(&unix, "GET", "/v1/topics/orders.1/events?from_seq=1", &[], "").await.lines();
    assert_eq!(topic_read.len(), 1);
    assert_eq!(
        call(&unix, "GET", "/v1/events?topic=orders.1&reverse=true&limit=1", &[], "").await.lines()[0]["seq"],
        1
    );
    assert_eq!(call(&unix, "GET", "/v1/events?topic=orders.1&last=1", &[], "").await.lines()[0]["seq"], 1);
    let after = first["id"].as_str().unwrap();
    assert_eq!(call(&unix, "GET", &format!("/v1/events?topic=orders.1&after={after}"), &[], "").await.lines().len(), 1);

    // Get by id, with content and an immutable ETag.
    let id = second["id"].as_str().unwrap();
    let got = call(&tcp, "GET", &format!("/v1/events/{id}?content=true"), &[], "").await;
    assert_eq!(got.json()["content"], "two");
    let etag = got.header("etag").unwrap().to_owned();
    assert_eq!(
        call(&tcp, "GET", &format!("/v1/events/{id}?content=true"), &[("if-none-match", &etag)], "").await.status,
        304
    );

    // Topics and a topic's head.
    let topics = call(&unix, "GET", "/v1/topics", &[], "").await.json();
    let names: Vec<_> = topics.as_array().unwrap().iter().map(|t| t["topic"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["a/b", "bare", "cairn.start", "orders.1"]);
    let head = call(&unix, "GET", "/v1/topics/orders.1", &[], "").await;
    assert_eq!((head.json()["count"].as_u64(), head.header("etag")), (Some(2), Some(format!("\"{id}\"").as_str())));
    assert_eq!(call(&unix, "GET", "/v1/topics/nothing", &[], "").await.status, 404);

    // Delete keeps seqs.
    assert_eq!(call(&tcp, "DELETE", &format!("/v1/events/{after}"), &[], "").await.status, 204);
    assert_eq!(call(&tcp, "GET", &format!("/v1/events/{after}"), &[], "").await.status, 404);
    assert_eq!(call(&tcp, "DELETE", &format!("/v1/events/{after}"), &[], "").await.code(), "not_found");
    let left = call(&unix, "GET", "/v1/events?topic=orders.1", &[], "").await.lines();
    assert_eq!(left.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_atomic_and_idempotent() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, INSECURE);
    let unix = server.unix();
    let json = [("content-type", "application/json")];
    let array = r#"[{"topic":"a","content":"1"},{"topic":"b","content_base64":"AAE=","type":"T","expect":"none"}]"#;
    let reply = call(&unix, "POST", "/v1/batch", &json, array).await;
    assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.json().as_array().unwrap().len(), 2);
    // One failing expectation: nothing of the batch is written.
    let ndjson = [("content-type", "application/x-ndjson"), ("idempotency-key", "k1")];
    let failing = "{\"topic\":\"a\",\"content\":\"2\"}\n{\"topic\":\"b\",\"content\":\"3\",\"expect\":\"none\"}\n";
    let reply = call(&unix, "POST", "/v1/batch", &ndjson, failing).await;
    assert_eq!((reply.status, reply.code()), (409, "expectation_failed".to_owned()));
    assert_eq!(reply.json()["error"]["actual_seq"], 0);
    assert_eq!(call(&unix, "GET", "/v1/events?topic=a", &[], "").await.lines().len(), 1);
    // An idempotent retry returns the original events.
    let good = "{\"topic\":\"a\",\"content\":\"2\"}\n{\"topic\":\"b\",\"content\":\"3\"}\n";
    let once = call(&unix, "POST", "/v1/batch", &ndjson, good).await.json();
    let twice = call(&unix, "POST", "/v1/batch", &ndjson, good).await.json();
    assert_eq!(once, twice);
    assert_eq!(call(&unix, "GET", "/v1/events?topic=a", &[], "").await.lines().len(), 2);
    // Bad batches.
    assert_eq!(call(&unix, "POST", "/v1/batch", &[("content-type", "text/plain")], "x").await.status, 415);
    assert_eq!(call(&unix, "POST", "/v1/batch", &json, "[{\"topic\":\"a\"").await.code(), "invalid");
    assert_eq!(call(&unix, "POST", "/v1/batch", &json, "[]").await.code(), "invalid");
    let unknown = call(&unix, "POST", "/v1/batch", &json, r#"[{"topic":"a","colour":"red"}]"#).await;
    assert!(String::from_utf8_lossy(&unknown.body).contains("colour"), "{}", String::from_utf8_lossy(&unknown.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_requests() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, INSECURE);
    let tcp = server.tcp();
    // An empty topic's ETag is "empty".
    let created = call(&tcp, "POST", "/v1/topics/doc/events", &[("if-match", "\"empty\"")], "v1").await;
    assert_eq!(created.status, 201);
    let head = call(&tcp, "GET", "/v1/topics/doc", &[], "").await;
    let etag = head.header("etag").unwrap().to_owned();
    assert_eq!(call(&tcp, "GET", "/v1/topics/doc", &[("if-none-match", &etag)], "").await.status, 304);
    assert_eq!(call(&tcp, "POST", "/v1/topics/doc/events", &[("if-match", &etag)], "v2").await.status, 201);
    // The head moved: the old ETag fails with 412 and writes nothing.
    let stale = call(&tcp, "POST", "/v1/topics/doc/events", &[("if-match", &etag)], "v3").await;
    assert_eq!((stale.status, stale.code()), (412, "precondition_failed".to_owned()));
    assert_eq!(call(&tcp, "GET", "/v1/topics/doc", &[], "").await.json()["count"], 2);
    // A read's ETag changes with the store.
    let read = call(&tcp, "GET", "/v1/events?topic=doc", &[], "").await;
    let read_tag = read.header("etag").unwrap().to_owned();
    assert_eq!(call(&tcp, "GET", "/v1/events?topic=doc", &[("if-none-match", &read_tag)], "").await.status, 304);
    call(&tcp, "POST", "/v1/topics/other/events", &[], "x").await;
    assert_eq!(call(&tcp, "GET", "/v1/events?topic=doc", &[("if-none-match", &read_tag)], "").await.status, 200);
    // If-Match with expect is ambiguous.
    let both = call(&tcp, "POST", "/v1/topics/doc/events?expect=1", &[("if-match", "\"empty\"")], "x").await;
    assert_eq!(both.code(), "invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_and_sse_resume_without_gap_or_duplicate() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, INSECURE);
    let tcp = server.tcp();
    for n in 0..3 {
        call(&tcp, "POST", "/v1/topics/feed/events", &[], format!("e{n}")).await;
    }
    // SSE: history then live; the ids are event ids.
    let mut connection = tcp.connect().await.unwrap();
    let sse = [("accept", "text/event-stream")];
    let mut stream = connection
        .request("GET", "/v1/events?topic=feed&follow=true&threshold=true&content=true", &sse, "".into())
        .await
        .unwrap();
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    let mut text = String::new();
    while !text.contains("cairn.threshold") {
        text.push_str(&String::from_utf8_lossy(&stream.chunk().await.unwrap().unwrap()));
    }
    call(&tcp, "POST", "/v1/topics/feed/events", &[], "e3").await;
    while text.matches("id: ").count() < 4 {
        text.push_str(&String::from_utf8_lossy(&stream.chunk().await.unwrap().unwrap()));
    }
    let ids: Vec<&str> = text.lines().filter_map(|line| line.strip_prefix("id: ")).collect();
    assert_eq!(ids.len(), 4, "{text}");
    drop(stream);
    drop(connection);
    // Events written while disconnected arrive after a reconnect with
    // Last-Event-ID, none twice.
    for n in 4..6 {
        call(&tcp, "POST", "/v1/topics/feed/events", &[], format!("e{n}")).await;
    }
    let resume = [("accept", "text/event-stream"), ("last-event-id", ids[1])];
    let mut connection = tcp.connect().await.unwrap();
    let mut stream =
        connection.request("GET", "/v1/events?topic=feed&follow=true&content=true", &resume, "".into()).await.unwrap();
    let mut text = String::new();
    while text.matches("data: ").count() < 4 {
        text.push_str(&String::from_utf8_lossy(&stream.chunk().await.unwrap().unwrap()));
    }
    let contents: Vec<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str::<serde_json::Value>(data).unwrap()["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(contents, ["e2", "e3", "e4", "e5"]);

    // NDJSON follow with a limit ends by itself.
    let reply = call(&tcp, "GET", "/v1/events?topic=feed&follow=true&limit=2", &[], "").await;
    assert_eq!(reply.lines().len(), 2);
    // Bad combinations.
    assert_eq!(call(&tcp, "GET", "/v1/events?threshold=true", &[], "").await.code(), "invalid");
    assert_eq!(call(&tcp, "GET", "/v1/events?follow=true&reverse=true", &[], "").await.code(), "invalid");
    assert_eq!(call(&tcp, "GET", "/v1/events?topic=a.*&from_seq=1", &[], "").await.code(), "invalid");
    assert_eq!(call(&tcp, "GET", "/v1/events?follow=true&pulse=0", &[], "").await.code(), "invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_store_and_consumers() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, INSECURE);
    let tcp = server.tcp();
    let blob: Vec<u8> = (0..10_000u32).map(|n| (n % 251) as u8).collect();
    let put = call(&tcp, "PUT", "/v1/cas", &[], blob.clone()).await;
    assert_eq!(put.status, 201);
    let (sri, hex) = (put.json()["hash"].as_str().unwrap().to_owned(), put.json()["hex"].as_str().unwrap().to_owned());
    let encoded = cairn_client::encode(&sri);
    assert_eq!(call(&tcp, "GET", &format!("/v1/cas/{encoded}"), &[], "").await.body, blob);
    assert_eq!(call(&tcp, "GET", &format!("/v1/cas/{hex}"), &[], "").await.body, blob);
    let head = call(&tcp, "HEAD", &format!("/v1/cas/{hex}"), &[], "").await;
    assert_eq!((head.status, head.header("content-length")), (200, Some("10000")));
    assert_eq!(call(&tcp, "GET", "/v1/cas/sha256-nope", &[], "").await.code(), "invalid");
    let missing = "0".repeat(64);
    assert_eq!(call(&tcp, "GET", &format!("/v1/cas/{missing}"), &[], "").await.status, 404);
    assert_eq!(call(&tcp, "HEAD", &format!("/v1/cas/{missing}"), &[], "").await.status, 404);
    // Content an event uses cannot be deleted; content put alone can.
    let event = call(&tcp, "POST", "/v1/topics/files/events", &[], blob.clone()).await.json();
    assert_eq!(call(&tcp, "DELETE", &format!("/v1/cas/{hex}"), &[], "").await.code(), "in_use");
    let alone = call(&tcp, "PUT", "/v1/cas", &[], "alone").await.json()["hex"].as_str().unwrap().to_owned();
    assert_eq!(call(&tcp, "DELETE", &format!("/v1/cas/{alone}"), &[], "").await.status, 204);
    assert_eq!(call(&tcp, "GET", &format!("/v1/cas/{alone}"), &[], "").await.status, 404);
    assert_eq!(call(&tcp, "DELETE", &format!("/v1/cas/{alone}"), &[], "").await.status, 404);

    // Consumers: ack, show, list, read after the ack, delete.
    let later = call(&tcp, "POST", "/v1/topics/files/events", &[], "later").await.json();
    let id = event["id"].as_str().unwrap();
    assert_eq!(call(&tcp, "PUT", &format!("/v1/consumers/mailer?id={id}"), &[], "").await.status, 200);
    assert_eq!(call(&tcp, "GET", "/v1/consumers/mailer", &[], "").await.json()["acked"], id);
    let body = format!(r#"{{"id":"{id}"}}"#);
    assert_eq!(call(&tcp, "PUT", "/v1/consumers/other", &[], body).await.status, 200);
    assert_eq!(call(&tcp, "GET", "/v1/consumers", &[], "").await.json().as_array().unwrap().len(), 2);
    let rest = call(&tcp, "GET", "/v1/consumers/mailer/events?topic=files", &[], "").await.lines();
    assert_eq!(rest.iter().map(|e| e["id"].clone()).collect::<Vec<_>>(), [later["id"].clone()]);
    assert_eq!(call(&tcp, "GET", "/v1/consumers/mailer/events?after=x", &[], "").await.code(), "invalid");
    assert_eq!(call(&tcp, "PUT", "/v1/consumers/mailer", &[], "").await.code(), "invalid");
    assert_eq!(call(&tcp, "PUT", "/v1/consumers/mailer?id=03zzzzzzzzzzzzzzzzzzzzzzz", &[], "").await.code(), "invalid");
    // Consumers belong to who acked them: the socket's `mailer` is its own;
    // it sees every owner's, and acts on another's by naming the owner.
    assert_eq!(call(&server.unix(), "GET", "/v1/consumers/mailer", &[], "").await.status, 404);
    let all = call(&server.unix(), "GET", "/v1/consumers", &[], "").await.json();
    assert_eq!(all[0]["owner"], "anonymous");
    let theirs = "/v1/consumers/mailer?owner=anonymous";
    assert_eq!(call(&server.unix(), "GET", theirs, &[], "").await.json()["acked"], id);
    assert_eq!(call(&tcp, "GET", "/v1/consumers/mailer?owner=local", &[], "").await.status, 403);
    assert_eq!(call(&tcp, "DELETE", "/v1/consumers/mailer", &[], "").await.status, 204);
    assert_eq!(call(&tcp, "GET", "/v1/consumers/mailer", &[], "").await.status, 404);
    assert_eq!(call(&server.unix(), "DELETE", "/v1/consumers/other?owner=anonymous", &[], "").await.status, 204);
    assert_eq!(call(&tcp, "GET", "/v1/consumers", &[], "").await.json().as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compatibility_routes() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, INSECURE);
    let tcp = server.tcp();
    let json = [("content-type", "application/json")];
    let first =
        call(&tcp, "PUT", "/events", &json, r#"{"eventType":"Created","body":{"n":1},"eventId":"client-1"}"#).await;
    assert_eq!(first.status, 201);
    let first = first.json();
    assert_eq!(
        (first["eventType"].as_str(), first["body"]["n"].as_u64(), first["createdBy"].as_str()),
        (Some("Created"), Some(1), Some("local"))
    );
    assert!(first["createdAt"].as_str().unwrap().ends_with('Z'));
    // A repeated eventId returns the original, writing nothing.
    let again = call(&tcp, "POST", "/events", &json, r#"{"eventType":"Created","body":{"n":1},"eventId":"client-1"}"#)
        .await
        .json();
    assert_eq!(again, first);
    let second = call(&tcp, "POST", "/events", &json, r#"{"eventType":"Renamed","body":"text"}"#).await.json();
    let third = call(&tcp, "POST", "/events", &json, r#"{"eventType":"Deleted","body":null}"#).await.json();
    let all = call(&tcp, "GET", "/events", &[], "").await.json();
    assert_eq!(all.as_array().unwrap().len(), 3);
    let (a, b, c) =
        (first["eventId"].as_str().unwrap(), second["eventId"].as_str().unwrap(), third["eventId"].as_str().unwrap());
    let range = call(&tcp, "GET", &format!("/events?from={b}&to={c}"), &[], "").await.json();
    assert_eq!(range.as_array().unwrap().iter().map(|e| e["eventId"].as_str().unwrap()).collect::<Vec<_>>(), [b, c]);
    let upto = call(&tcp, "GET", &format!("/events?to={a}"), &[], "").await.json();
    assert_eq!(upto.as_array().unwrap().len(), 1);
    assert_eq!(call(&tcp, "GET", &format!("/events/{b}"), &[], "").await.json()["body"], "text");
    // A client's eventId names its event everywhere.
    assert_eq!(a, "client-1");
    assert_eq!(call(&tcp, "GET", "/events/client-1", &[], "").await.json(), first);
    let from_client = call(&tcp, "GET", "/events?from=client-1&to=client-1", &[], "").await.json();
    assert_eq!(from_client.as_array().unwrap().len(), 1);
    assert_eq!(call(&tcp, "GET", "/events/client-2", &[], "").await.status, 404);
    // HEAD, ETag, 304, 412.
    let head = call(&tcp, "HEAD", "/events", &[], "").await;
    let etag = head.header("etag").unwrap().to_owned();
    assert_eq!(etag, format!("\"{c}\""));
    assert_eq!(call(&tcp, "HEAD", "/events", &[("if-none-match", &etag)], "").await.status, 304);
    assert_eq!(call(&tcp, "GET", "/events", &[("if-none-match", &etag)], "").await.status, 304);
    let ok = call(&tcp, "PUT", "/events", &[("if-match", &etag)], r#"{"eventType":"X","body":1}"#).await;
    assert_eq!(ok.status, 201);
    let stale = call(&tcp, "PUT", "/events", &[("if-match", &etag)], r#"{"eventType":"X","body":2}"#).await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.json()["status"], "error");
    assert!(stale.json()["errorMessage"].as_str().unwrap().contains("expectation"));
    // Storage.
    let stored = call(&tcp, "PUT", "/storage/", &[("content-type", "application/pdf")], "%PDF-1.4 fake").await.json();
    assert_eq!(stored["status"], "ok");
    let hex = stored["hash"].as_str().unwrap();
    assert_eq!(hex.len(), 64);
    assert_eq!(stored["url"], format!("/storage/{hex}"));
    assert_eq!(call(&tcp, "GET", &format!("/storage/{hex}"), &[], "").await.body, b"%PDF-1.4 fake");
    assert_eq!(call(&tcp, "DELETE", &format!("/storage/{hex}"), &[], "").await.json()["status"], "ok");
    let gone = call(&tcp, "GET", &format!("/storage/{hex}"), &[], "").await;
    assert_eq!((gone.status, gone.json()["status"].as_str()), (404, Some("error")));
    // Errors take the compatibility form everywhere under these paths.
    for (method, path, body) in
        [("PUT", "/events", "{"), ("GET", "/events/nope", ""), ("GET", "/events?from=x", ""), ("PATCH", "/events", "")]
    {
        let reply = call(&tcp, method, path, &json, body).await;
        assert!(reply.status >= 400);
        assert_eq!(reply.json()["status"], "error", "{method} {path}");
        assert!(reply.json()["errorMessage"].as_str().is_some());
    }
    // Info: version and store facts, no environment.
    let info = call(&tcp, "GET", "/info", &[], "").await;
    let text = String::from_utf8_lossy(&info.body).to_string();
    assert!(info.json()["version"].is_string());
    assert!(!text.contains(&cairn.store().display().to_string()) && !text.contains("PATH"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_exactly_the_routes() {
    // The router's routes, from its source.
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../cairn-server/src/http/mod.rs")).unwrap();
    let mut routed = BTreeSet::new();
    for line in source.lines().map(str::trim).filter(|line| line.starts_with(".route(\"")) {
        let path = line.split('"').nth(1).unwrap();
        for method in ["get", "post", "put", "delete", "head"] {
            if line.contains(&format!("({method}("))
                || line.contains(&format!(" {method}("))
                || line.contains(&format!(".{method}("))
                || line.contains(&format!("::{method}("))
            {
                routed.insert((method.to_owned(), path.to_owned()));
            }
        }
    }
    assert!(routed.len() > 30, "{routed:?}");

    let cairn = Cairn::new();
    let server = Server::start(&cairn, INSECURE);
    let unix = server.unix();
    let document = call(&unix, "GET", "/openapi.json", &[], "").await.json();
    assert_eq!(document["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, methods) in document["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    assert_eq!(routed, documented, "router and OpenAPI differ");
    // Every documented route answers on the real server (not the router's
    // fallbacks).
    for (method, path) in &documented {
        let concrete = path
            .replace("{topic}", "t")
            .replace("{id}", "03hbhgms0zw4uzyevsf5646b8")
            .replace("{hash}", &"0".repeat(64))
            .replace("{name}", "n")
            .replace("{group}", "g")
            .replace("{file}", "f");
        let reply = call(&unix, &method.to_uppercase(), &concrete, &[("content-type", "application/json")], "").await;
        assert_ne!(reply.status, 405, "{method} {path}");
        if reply.status == 404 && method != "head" {
            let text = String::from_utf8_lossy(&reply.body);
            assert!(!text.contains("no_route") && !text.contains("no route"), "{method} {path}: {text}");
        }
    }
    // Healthz and metrics.
    assert_eq!(call(&server.tcp(), "GET", "/healthz", &[], "").await.json()["status"], "ok");
    let metrics = String::from_utf8(call(&unix, "GET", "/metrics", &[], "").await.body).unwrap();
    for name in [
        "cairn_appends_total",
        "cairn_fsyncs_total",
        "cairn_fsync_seconds_total",
        "cairn_open_streams",
        "cairn_streams_behind",
        "cairn_store_log_bytes",
    ] {
        assert!(metrics.contains(&format!("\n{name} ")), "{name} missing:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, INSECURE);
    let tcp = server.tcp();
    let cases: &[(&str, &str, u16, &str)] = &[
        ("POST", "/v1/topics/bad..topic/events", 400, "topic"),
        ("POST", "/v1/topics/cairn.mine/events", 400, "reserved"),
        ("POST", "/v1/topics/t/events?expect=maybe", 400, "expect"),
        ("POST", "/v1/topics/t/events?ttl=soon", 400, "ttl"),
        ("POST", "/v1/topics/t/events?meta=%5B1%5D", 400, "meta"),
        ("POST", "/v1/topics/t/events?type=a&type=b", 400, "more than once"),
        ("GET", "/v1/events?topic=a.%3E.b", 400, "pattern"),
        ("GET", "/v1/events?limit=-1", 400, "limit"),
        ("GET", "/v1/events?follow=perhaps", 400, "follow"),
        ("GET", "/v1/events?after=123", 400, "id"),
        ("GET", "/v1/events/not-an-id", 400, "id"),
        ("GET", "/v1/cas/xyz", 400, "hash"),
        ("GET", "/v1/nothing", 404, "no route"),
        ("PATCH", "/v1/events", 405, "not allowed"),
        ("GET", "/v1/topics/%FF", 400, "path"),
    ];
    for (method, path, status, needle) in cases {
        let reply = call(&tcp, method, path, &[], "").await;
        let text = String::from_utf8_lossy(&reply.body).to_string();
        assert_eq!(reply.status, *status, "{method} {path}: {text}");
        assert!(text.contains(needle), "{method} {path}: {text}");
        assert!(reply.json()["error"]["message"].is_string());
    }
    // A body over the maximum is refused by its length, unread.
    let mut connection = tcp.connect().await.unwrap();
    let big = [("content-length", "9999999999")];
    let reply = connection.send("POST", "/v1/topics/t/events", &big, "".into()).await.unwrap();
    assert_eq!(reply.status, 413);
    // And when streamed without a length.
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let chunk = bytes_of(1024 * 1024);
        for _ in 0..12 {
            if sender.send(chunk.clone()).await.is_err() {
                return;
            }
        }
    });
    let mut connection = tcp.connect().await.unwrap();
    let sent = connection.send("POST", "/v1/topics/t/events", &[], cairn_client::RequestBody::Stream(receiver)).await;
    match sent {
        Ok(reply) => assert_eq!(reply.status, 413),
        // The server answers 413 and closes while the client is still
        // sending: the client may see the closed connection first (as a
        // broken pipe, a reset, or hyper's failed body write).
        Err(error) => {
            let text = error.to_string().to_lowercase();
            assert!(
                text.contains("broken pipe") || text.contains("reset") || text.contains("error writing a body"),
                "{error}"
            );
        }
    }
    // Nothing of all this was written.
    assert_eq!(call(&tcp, "GET", "/v1/events?topic=t", &[], "").await.body, b"");
}

fn bytes_of(n: usize) -> bytes::Bytes {
    bytes::Bytes::from(vec![b'x'; n])
}

/// Runs curl with `args`; returns stdout (curl must be installed).
fn curl(args: &[&str]) -> String {
    let output = std::process::Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().unwrap();
    assert!(output.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn curl_transcript_over_the_socket_and_tcp() {
    let cairn = Cairn::new();
    cairn.ok(&["user", "add", "alice", "--read", "orders.>", "--write", "orders.>"], b"s3cret\n");
    let server = Server::start(&cairn, &[]);
    let socket = server.socket().to_str().unwrap().to_owned();
    let base = "http://localhost";
    // The socket needs no credentials.
    let appended = curl(&[
        "--unix-socket",
        &socket,
        &format!("{base}/v1/topics/greetings/events"),
        "-d",
        "hi there",
        "-H",
        "Cairn-Type: Greeting",
    ]);
    let event: serde_json::Value = serde_json::from_str(&appended).unwrap();
    assert_eq!(
        (event["topic"].as_str(), event["seq"].as_u64(), event["type"].as_str()),
        (Some("greetings"), Some(0), Some("Greeting"))
    );
    let read = curl(&["--unix-socket", &socket, &format!("{base}/v1/events?topic=greetings&content=true")]);
    let line: serde_json::Value = serde_json::from_str(read.trim()).unwrap();
    assert_eq!(line["content"], "hi there");
    // TCP: 401 without credentials, then Basic auth within alice's patterns.
    let url = server.url();
    let status = curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("{url}/v1/topics")]);
    assert_eq!(status, "401");
    let appended = curl(&["-u", "alice:s3cret", &format!("{url}/v1/topics/orders.1/events"), "-d", r#"{"sku":1}"#]);
    assert!(appended.contains(r#""topic":"orders.1""#), "{appended}");
    let status = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-u",
        "alice:s3cret",
        &format!("{url}/v1/topics/other/events"),
        "-d",
        "x",
    ]);
    assert_eq!(status, "403");
    // ETag and 304 as curl sees them.
    let headers = curl(&["--unix-socket", &socket, "-I", &format!("{base}/v1/topics/greetings")]);
    let etag = headers.lines().find_map(|l| l.strip_prefix("etag: ")).unwrap().trim().to_owned();
    let status = curl(&[
        "--unix-socket",
        &socket,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &format!("If-None-Match: {etag}"),
        &format!("{base}/v1/topics/greetings"),
    ]);
    assert_eq!(status, "304");
}

/// splitmix64, for reproducible random requests.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// One random request built from the real surface: routes with good and bad
/// path parts, known and unknown parameters with good and bad values,
/// headers, and bodies (JSON, NDJSON, binary, empty).
fn random_request(rng: &mut Rng, host: &str) -> Vec<u8> {
    const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"];
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
        "/v1/users",
        "/v1/users/{}",
        "/v1/users/{}/password",
        "/v1/users/{}/tokens",
        "/v1/tokens/{}",
        "/v1/import",
        "/v1/verify",
        "/v1/compact",
        "/v1/info",
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/events",
        "/events/{}",
        "/storage/",
        "/storage/{}",
        "/info",
        "/nope",
        "/v1/",
        "//",
        "/v1/topics/{}/events/extra",
    ];
    const PARTS: &[&str] = &[
        "orders.1",
        "a%2Fb",
        "bad%20topic",
        "%ff%fe",
        "..",
        "%2e%2e",
        "0372hq7d8m0x0f0hk3rnms0ao",
        "not-an-id",
        "sha256-LCa0a2j%2Fxo%2F5m0U8HTBBNBNCLXBkg7%2Bg%2BYpeiGJm564%3D",
        "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        "cairn.start",
        "x",
        "",
    ];
    const PARAMS: &[&str] = &[
        "topic",
        "ratio",
        "after",
        "from_seq",
        "last",
        "limit",
        "reverse",
        "threshold",
        "pulse",
        "content",
        "type",
        "meta",
        "expect",
        "ttl",
        "key",
        "from",
        "to",
        "bogus",
        "follow",
    ];
    const VALUES: &[&str] = &[
        "orders.%3E",
        "*",
        "1",
        "0",
        "-1",
        "18446744073709551616",
        "true",
        "false",
        "yes",
        "%7B%7D",
        "%7B",
        "any",
        "none",
        "5",
        "time:5m",
        "last:0",
        "ephemeral",
        "abc",
        "",
        "%00",
        "0372hq7d8m0x0f0hk3rnms0ao",
    ];
    const HEADERS: &[&str] = &[
        "Content-Type: application/json",
        "Content-Type: application/x-ndjson",
        "Content-Type: text/plain",
        "Accept: text/event-stream",
        "Cairn-Type: T",
        "Cairn-Meta: {\"a\":1}",
        "Cairn-Meta: nope",
        "Cairn-Expect: 3",
        "Cairn-Expect: zz",
        "Cairn-Ttl: last:2",
        "If-Match: \"nope\"",
        "If-None-Match: *",
        "Last-Event-ID: junk",
        "Idempotency-Key: k1",
        "Authorization: Basic !!!",
        "Authorization: Bearer x",
    ];
    const BODIES: &[&str] = &[
        "",
        "hello",
        "{}",
        "[]",
        "{\"topic\":\"a\"}",
        "{\"topic\":\"a\",\"content\":\"x\"}\n{\"topic\":\"b\"}",
        "[{\"topic\":\"a\",\"content_base64\":\"!!\"}]",
        "{\"eventType\":\"X\",\"body\":1}",
        "{\"name\":\"u\"}",
        "{\"id\":\"x\",\"topic\":\"t\",\"seq\":0}",
        "\u{0}\u{1}\u{ff}",
        "{\"password\":\"\"}",
    ];
    let method = rng.pick(METHODS);
    let mut path = rng.pick(ROUTES).replace("{}", rng.pick(PARTS));
    let n_params = rng.next() % 4;
    for n in 0..n_params {
        let name = rng.pick(PARAMS);
        let value = if name == "follow" { "false" } else { rng.pick(VALUES) };
        path.push(if n == 0 { '?' } else { '&' });
        path.push_str(&format!("{name}={value}"));
    }
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for _ in 0..rng.next() % 4 {
        request.push_str(rng.pick(HEADERS));
        request.push_str("\r\n");
    }
    let body = rng.pick(BODIES);
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    request.into_bytes()
}

/// Random requests over the whole HTTP surface: each gets a well-formed
/// reply that is not a server error, the server stays up, the store stays
/// sound. `CAIRN_HTTP_CASES=N` (default 400); `CAIRN_HTTP_SEED=S` replays.
#[test]
fn random_requests_over_the_http_surface_never_hurt_the_server() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, INSECURE);
    let address = server.url().trim_start_matches("http://").to_owned();
    let seed = std::env::var("CAIRN_HTTP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let cases: u64 = std::env::var("CAIRN_HTTP_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(400);
    let mut rng = Rng(seed);
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for case in 0..cases {
        use std::io::{Read as _, Write as _};
        let request = random_request(&mut rng, &address);
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        stream.write_all(&request).unwrap();
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        let head = String::from_utf8_lossy(&reply[..reply.len().min(200)]).to_string();
        let shown = String::from_utf8_lossy(&request).to_string();
        let status: u16 = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("seed {seed} case {case}: no status for {shown:?}: {head:?}"));
        assert!(status < 500, "seed {seed} case {case}: {status} for {shown:?}: {head:?}");
        *statuses.entry(status).or_default() += 1;
    }
    eprintln!("{cases} random requests (seed {seed}), replies by status: {statuses:?}");
    assert!(statuses.keys().any(|s| *s < 300) && statuses.keys().any(|s| *s >= 400), "{statuses:?}");
    let mut probe = std::net::TcpStream::connect(&address).unwrap();
    std::io::Write::write_all(&mut probe, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut probe, &mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    drop(server);
    let verify = cairn.ok(&["verify"], b"");
    assert_eq!(verify[0]["problems"], serde_json::json!([]));
}
