//! Users, Basic and bearer authentication on TCP, per-topic access, and TLS.

use crate::Cairn;
use crate::serve::{Server, call};

/// Runs `cairn user …` with a password in the environment.
fn user(cairn: &Cairn, args: &[&str], password: &str) -> Vec<serde_json::Value> {
    let mut full = vec!["user"];
    full.extend_from_slice(args);
    let output = cairn.command(&full).env("CAIRN_PASSWORD", password).output().unwrap();
    assert!(output.status.success(), "cairn user {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_requires_credentials_and_patterns_limit_users() {
    let cairn = Cairn::new();
    // Users made on the store directly, before a server runs.
    let added = user(&cairn, &["add", "alice", "--read", "orders.>", "--write", "orders.>"], "wonderland");
    assert_eq!(added[0]["read"], serde_json::json!(["orders.>"]));
    let server = Server::start(&cairn, &[]);
    // ... and through the socket while it runs.
    user(&cairn, &["add", "root", "--admin"], "hunter2");
    let listed = user(&cairn, &["list"], "");
    assert_eq!(listed.iter().map(|u| u["name"].as_str().unwrap()).collect::<Vec<_>>(), ["alice", "root"]);
    assert!(!serde_json::to_string(&listed).unwrap().contains("argon2"), "list shows no password hashes");
    let file = std::fs::read_to_string(cairn.store().join("users.json")).unwrap();
    assert!(file.contains("$argon2id$") && !file.contains("wonderland"));

    let anonymous = server.tcp();
    let reply = call(&anonymous, "GET", "/v1/events", &[], "").await;
    assert_eq!((reply.status, reply.header("www-authenticate")), (401, Some("Basic realm=\"cairn\"")));
    assert_eq!(call(&anonymous, "GET", "/healthz", &[], "").await.status, 200);
    let wrong = server.tcp().with_basic("alice", "nope");
    assert_eq!(call(&wrong, "GET", "/v1/events?topic=orders.1", &[], "").await.status, 401);
    assert_eq!(call(&server.tcp().with_basic("nobody", "x"), "GET", "/v1/topics", &[], "").await.status, 401);

    let alice = server.tcp().with_basic("alice", "wonderland");
    let event = call(&alice, "POST", "/v1/topics/orders.1/events", &[], "mine").await;
    assert_eq!(event.status, 201);
    assert_eq!(event.json()["user"], "alice", "the user is stamped on its events");
    let denied = call(&alice, "POST", "/v1/topics/payroll/events", &[], "theirs").await;
    assert_eq!((denied.status, denied.code()), (403, "forbidden".to_owned()));
    let batch = r#"[{"topic":"orders.2","content":"a"},{"topic":"payroll","content":"b"}]"#;
    assert_eq!(call(&alice, "POST", "/v1/batch", &[("content-type", "application/json")], batch).await.status, 403);
    assert_eq!(call(&alice, "GET", "/v1/events", &[], "").await.status, 403);
    assert_eq!(call(&alice, "GET", "/v1/events?topic=orders.*", &[], "").await.status, 200);
    assert_eq!(call(&alice, "GET", "/v1/users", &[], "").await.status, 403);
    // Alice sees only her topics in the list.
    let topics = call(&alice, "GET", "/v1/topics", &[], "").await.json();
    assert_eq!(
        topics.as_array().unwrap().iter().map(|t| t["topic"].as_str().unwrap()).collect::<Vec<_>>(),
        ["orders.1"]
    );
    // Nothing denied was written.
    let all = call(&server.unix(), "GET", "/v1/events?topic=payroll", &[], "").await;
    assert_eq!(all.body, b"");
    assert_eq!(call(&server.unix(), "GET", "/v1/events?topic=orders.2", &[], "").await.body, b"");

    // Tokens: issued, used, revoked.
    let root = server.tcp().with_basic("root", "hunter2");
    let issued = call(&root, "POST", "/v1/users/alice/tokens", &[], "").await.json();
    let token = issued["token"].as_str().unwrap().to_owned();
    let bearer = server.tcp().with_token(&token);
    assert_eq!(call(&bearer, "GET", "/v1/events?topic=orders.1", &[], "").await.status, 200);
    assert_eq!(call(&bearer, "GET", "/v1/events", &[], "").await.status, 403);
    let id = issued["id"].as_str().unwrap();
    assert_eq!(call(&root, "DELETE", &format!("/v1/tokens/{id}"), &[], "").await.status, 204);
    assert_eq!(call(&bearer, "GET", "/v1/events?topic=orders.1", &[], "").await.status, 401);
    // A CLI token through --remote.
    let cli_token = user(&cairn, &["token", "issue", "alice"], "")[0]["token"].as_str().unwrap().to_owned();
    let output = cairn
        .command(&["--remote", server.url(), "cat", "orders.1", "--content"])
        .env("CAIRN_TOKEN", &cli_token)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("\"content\":\"mine\""));
    let output = cairn.command(&["--remote", server.url(), "cat"]).env("CAIRN_TOKEN", &cli_token).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("may not read"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Password change (a user's own needs the old one) and removal.
    let body = r#"{"password":"looking-glass"}"#;
    assert_eq!(call(&alice, "PUT", "/v1/users/alice/password", &[], body).await.status, 403);
    let wrong = r#"{"password":"looking-glass","old_password":"guess"}"#;
    assert_eq!(call(&alice, "PUT", "/v1/users/alice/password", &[], wrong).await.status, 403);
    let with_old = r#"{"password":"looking-glass","old_password":"wonderland"}"#;
    assert_eq!(call(&alice, "PUT", "/v1/users/alice/password", &[], with_old).await.status, 204);
    assert_eq!(call(&alice, "GET", "/v1/events?topic=orders.1", &[], "").await.status, 401);
    let alice = server.tcp().with_basic("alice", "looking-glass");
    assert_eq!(call(&alice, "GET", "/v1/events?topic=orders.1", &[], "").await.status, 200);
    assert_eq!(call(&alice, "PUT", "/v1/users/root/password", &[], body).await.status, 403);
    assert_eq!(call(&root, "DELETE", "/v1/users/alice", &[], "").await.status, 204);
    assert_eq!(call(&alice, "GET", "/v1/events?topic=orders.1", &[], "").await.status, 401);
    // Bad user input.
    let bad = call(&root, "POST", "/v1/users", &[], r#"{"name":"b@d","password":"x"}"#).await;
    assert_eq!(bad.code(), "invalid");
    let dup = call(&root, "POST", "/v1/users", &[], r#"{"name":"root","password":"x"}"#).await;
    assert_eq!(dup.status, 409);
    let pattern = call(&root, "POST", "/v1/users", &[], r#"{"name":"c","password":"x","read":["a..b"]}"#).await;
    assert_eq!(pattern.code(), "invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_self_signed_certificate() {
    let cairn = Cairn::new();
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let server = Server::start(
        &cairn,
        &["--insecure-no-auth", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    let url = server.url().replace("127.0.0.1", "localhost");
    assert!(url.starts_with("https://"), "{url}");
    let client = cairn_client::Client::tcp(&url, Some(&cert)).unwrap();
    let reply = call(&client, "POST", "/v1/topics/secure/events", &[], "over tls").await;
    assert_eq!(reply.status, 201);
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = cairn_client::Client::tcp(&url.replace("https://", "http://"), None).unwrap();
    let mut connection = plain.connect().await.unwrap();
    assert!(connection.send("GET", "/healthz", &[], "".into()).await.is_err());
    // An untrusted certificate is refused by the client.
    let untrusting = cairn_client::Client::tcp(&url, Some(std::path::Path::new("/etc/ssl/certs/ca-certificates.crt")));
    if let Ok(untrusting) = untrusting {
        assert!(untrusting.connect().await.is_err());
    }
}
