//! The web console: its browser login (cookie sessions, forgery checks,
//! CORS) over raw HTTP, then the console itself in a real Chromium driven
//! by playwright-core (`tests/console/console.mjs`; `.ci/run` installs
//! Debian's chromium and `tests/console/install` the pinned playwright-core).

use std::time::{Duration, Instant};

use crate::Cairn;
use crate::resp::Raw;
use crate::serve::{Reply, Server};

/// A 2x2 PNG.
const PNG_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAEElEQVR4nGP4zwAE/xkgFAAb8gP91pbyKwAAAABJRU5ErkJggg==";

async fn call(server: &Server, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    crate::serve::call(&server.tcp(), method, path, headers, body.as_bytes()).await
}

/// Users: `admin`; `alice` reads and writes `orders.>`; `bob` reads `public.>`.
fn users(cairn: &Cairn) {
    cairn.ok(&["user", "add", "admin", "--admin"], b"adminpw\n");
    cairn.ok(&["user", "add", "alice", "--read", "orders.>", "--write", "orders.>"], b"alicepw\n");
    cairn.ok(&["user", "add", "bob", "--read", "public.>", "--write", "public.>"], b"bobpw\n");
}

fn cookie_of(reply: &Reply) -> String {
    let set = reply.header("set-cookie").expect("a session cookie");
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"), "{set}");
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sessions_are_cookies_guarded_against_forgery() {
    let cairn = Cairn::new();
    users(&cairn);
    let server = Server::start(&cairn, &["--cors-origin", "http://app.example:3000"]);
    let host = server.url().trim_start_matches("http://").to_owned();
    let own_origin = format!("http://{host}");
    let json = [("content-type", "application/json")];

    // The console's files need no credentials and say what may run.
    for path in ["/", "/console/", "/console/app.js", "/console/app.css"] {
        let reply = call(&server, "GET", path, &[], "").await;
        assert_eq!(reply.status, 200, "{path}");
        let policy = reply.header("content-security-policy").unwrap();
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    }
    let mut size = 0;
    for path in ["/", "/console/app.js", "/console/app.css"] {
        size += call(&server, "GET", path, &[], "").await.body.len();
    }
    assert!(size < 300 * 1024, "the console is {size} bytes");
    assert_eq!(call(&server, "GET", "/console/nothing.js", &[], "").await.status, 404);
    assert_eq!(call(&server, "GET", "/console/..%2Fapp.js", &[], "").await.status, 404);

    // Without credentials the API is closed, and a page's script is not
    // offered the browser's own login dialog.
    let closed = call(&server, "GET", "/v1/session", &[], "").await;
    assert_eq!(closed.status, 401);
    assert!(closed.header("www-authenticate").is_some());
    let scripted = call(&server, "GET", "/v1/session", &[("sec-fetch-mode", "cors")], "").await;
    assert_eq!(scripted.status, 401);
    assert_eq!(scripted.header("www-authenticate"), None);

    // Login: wrong passwords and malformed bodies are refused, with no cookie.
    let wrong = call(&server, "POST", "/v1/session", &json, r#"{"user":"alice","password":"nope"}"#).await;
    assert_eq!((wrong.status, wrong.header("set-cookie")), (401, None));
    for bad in ["", "{", r#"{"user":"alice"}"#, r#"{"user":"a","password":"b","x":1}"#] {
        let reply = call(&server, "POST", "/v1/session", &json, bad).await;
        assert_eq!(reply.status, 400, "{bad}: {}", String::from_utf8_lossy(&reply.body));
    }
    let huge = format!(r#"{{"user":"alice","password":"{}"}}"#, "x".repeat(10_000));
    assert_eq!(call(&server, "POST", "/v1/session", &json, &huge).await.status, 413);
    let login = call(&server, "POST", "/v1/session", &json, r#"{"user":"alice","password":"alicepw"}"#).await;
    assert_eq!(login.status, 200);
    assert_eq!(login.json()["user"], "alice");
    let cookie = cookie_of(&login);
    let check = login.json()["session_check"].as_str().unwrap().to_owned();
    let session = [("cookie", cookie.as_str()), ("cairn-session-check", check.as_str())];
    // The cookie alone, or with a wrong check, is no session: browsers hand
    // cookies to every port of a host, the check stays with the page.
    for alone in [vec![("cookie", cookie.as_str())], vec![("cookie", cookie.as_str()), ("cairn-session-check", "0")]] {
        assert_eq!(call(&server, "GET", "/v1/session", &alone, "").await.status, 401);
    }
    // Another server on the host may plant cookies of its own: the one
    // whose check the page gives is found among them.
    let fake = "0".repeat(64);
    let planted =
        format!("cairn_session=planted; cairn_session={fake}; {}; {cookie}", ["cairn_session=x"; 6].join("; "));
    let with_planted = [("cookie", planted.as_str()), ("cairn-session-check", check.as_str())];
    assert_eq!(call(&server, "GET", "/v1/session", &with_planted, "").await.json()["user"], "alice");
    // A page's EventSource gives the check as a parameter, which no route sees.
    let by_param = format!("/v1/events?topic=orders.eu&session_check={check}&limit=1");
    assert_eq!(call(&server, "GET", &by_param, &[("cookie", cookie.as_str())], "").await.status, 200);
    let me = call(&server, "GET", "/v1/session", &session, "").await;
    assert_eq!((me.status, me.json()["read"][0].as_str()), (200, Some("orders.>")));

    // The cookie carries alice's rights, no more.
    let topics = call(&server, "GET", "/v1/topics", &session, "").await;
    assert_eq!(topics.status, 200);
    let forbidden = call(&server, "GET", "/v1/events?topic=secret.%3E", &session, "").await;
    assert_eq!(forbidden.status, 403);

    // A state-changing request by cookie needs the browser's Origin, and
    // it must be this server's own (or a listed one).
    let append = "/v1/topics/orders.eu/events";
    let no_origin = call(&server, "POST", append, &session, "x").await;
    assert_eq!((no_origin.status, no_origin.code()), (403, "cross_origin".to_owned()));
    let foreign =
        call(&server, "POST", append, &[session[0], session[1], ("origin", "http://evil.example")], "x").await;
    assert_eq!(foreign.status, 403);
    let own = call(&server, "POST", append, &[session[0], session[1], ("origin", &own_origin)], "x").await;
    assert_eq!(own.status, 201, "{}", String::from_utf8_lossy(&own.body));
    assert_eq!(own.json()["user"], "alice");
    let listed =
        call(&server, "POST", append, &[session[0], session[1], ("origin", "http://app.example:3000")], "y").await;
    assert_eq!(listed.status, 201);
    assert_eq!(listed.header("access-control-allow-origin"), Some("http://app.example:3000"));
    assert_eq!(listed.header("access-control-allow-credentials"), Some("true"));
    // Bearer and Basic clients are not browsers: no Origin needed.
    let basic = call(&server, "POST", append, &[("authorization", "Basic YWxpY2U6YWxpY2Vwdw==")], "z").await;
    assert_eq!(basic.status, 201);
    assert_eq!(basic.header("access-control-allow-origin"), None);

    // CORS preflights: answered for a listed origin without credentials,
    // refused for others.
    let preflight = [("origin", "http://app.example:3000"), ("access-control-request-method", "POST")];
    let answered = call(&server, "OPTIONS", append, &preflight, "").await;
    assert_eq!(answered.status, 204);
    assert_eq!(answered.header("access-control-allow-origin"), Some("http://app.example:3000"));
    assert!(answered.header("access-control-allow-headers").unwrap().contains("last-event-id"));
    let other = [("origin", "http://evil.example"), ("access-control-request-method", "POST")];
    let refused = call(&server, "OPTIONS", append, &other, "").await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("access-control-allow-origin"), None);

    // Caches: replies are private, vary with the credentials, and a tag one
    // caller was given never validates another's reply; access is checked
    // before a 304.
    let mine = call(&server, "GET", "/v1/topics", &session, "").await;
    assert!(mine.header("vary").unwrap().contains("cookie"), "{:?}", mine.header("vary"));
    assert_eq!(mine.header("cache-control"), Some("private, no-cache"));
    let tag = mine.header("etag").unwrap().to_owned();
    assert_eq!(
        call(&server, "GET", "/v1/topics", &[session[0], session[1], ("if-none-match", &tag)], "").await.status,
        304
    );
    let admin = [("authorization", "Basic YWRtaW46YWRtaW5wdw==")];
    let admins = call(&server, "GET", "/v1/topics", &[admin[0], ("if-none-match", &tag)], "").await;
    assert_eq!(admins.status, 200);
    let read = call(&server, "GET", "/v1/events?topic=orders.eu", &session, "").await;
    let read_tag = read.header("etag").unwrap().to_owned();
    let bob = [("authorization", "Basic Ym9iOmJvYnB3"), ("if-none-match", read_tag.as_str())];
    assert_eq!(call(&server, "GET", "/v1/events?topic=orders.eu", &bob, "").await.status, 403);
    // A browser session is not a password session: it cannot mint a token.
    let mint =
        call(&server, "POST", "/v1/users/alice/tokens", &[session[0], session[1], ("origin", &own_origin)], "").await;
    assert_eq!(mint.status, 403, "{}", String::from_utf8_lossy(&mint.body));

    // A bad cookie is refused, not taken for anonymous.
    let stale = call(&server, "GET", "/v1/topics", &[("cookie", "cairn_session=0123")], "").await;
    assert_eq!(stale.status, 401);

    // Logout ends the session, and its open follow streams at once; a
    // password change ends the others.
    let second = call(&server, "POST", "/v1/session", &json, r#"{"user":"alice","password":"alicepw"}"#).await;
    let second_check = second.json()["session_check"].as_str().unwrap().to_owned();
    let second = cookie_of(&second);
    let second = [("cookie", second.as_str()), ("cairn-session-check", second_check.as_str())];
    let mut connection = server.tcp().connect().await.unwrap();
    let path = "/v1/events?topic=orders.%3E&follow=true";
    let mut follow = connection.send("GET", path, &session, Vec::new().into()).await.unwrap();
    assert_eq!(follow.status, 200);
    assert!(String::from_utf8_lossy(&follow.chunk().await.unwrap().unwrap()).contains("orders.eu"));
    let out = call(&server, "DELETE", "/v1/session", &[session[0], session[1], ("origin", &own_origin)], "").await;
    assert_eq!(out.status, 204);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(call(&server, "GET", "/v1/topics", &session, "").await.status, 401);
    let ended = crate::serve::until_end(&mut follow).await;
    assert!(ended.contains("session ended"), "{ended}");
    assert_eq!(call(&server, "GET", "/v1/topics", &second, "").await.status, 200);
    cairn.ok(&["user", "passwd", "alice"], b"newpw\n");
    assert_eq!(call(&server, "GET", "/v1/topics", &second, "").await.status, 401);

    // Logout with the check given as a parameter (as a page without
    // headers would) ends the session too.
    let third = call(&server, "POST", "/v1/session", &json, r#"{"user":"alice","password":"newpw"}"#).await;
    let third_check = third.json()["session_check"].as_str().unwrap().to_owned();
    let third = cookie_of(&third);
    let logout = format!("/v1/session?session_check={third_check}");
    let out = call(&server, "DELETE", &logout, &[("cookie", &third), ("origin", &own_origin)], "").await;
    assert_eq!(out.status, 204);
    let gone = [("cookie", third.as_str()), ("cairn-session-check", third_check.as_str())];
    assert_eq!(call(&server, "GET", "/v1/session", &gone, "").await.status, 401);

    // The Unix socket stays trusted and needs no session.
    let local = crate::serve::call(&server.unix(), "GET", "/v1/session", &[], "").await;
    assert_eq!(local.json()["kind"], "local");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups_over_http_need_the_topic() {
    let cairn = Cairn::new();
    users(&cairn);
    let batch: String = (0..5).map(|n| format!("{{\"topic\":\"orders.eu\",\"content\":\"{n}\"}}\n")).collect();
    cairn.ok(&["append", "--batch"], batch.as_bytes());
    let server = Server::start(&cairn, &[]);
    let mut raw = Raw::connect(server.resp());
    raw.command(&[b"XGROUP", b"CREATE", b"orders.eu", b"workers", b"0"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"XREADGROUP", b"GROUP", b"workers", b"w1", b"COUNT", b"2", b"STREAMS", b"orders.eu", b">"]);
    let _ = raw.frame();
    let alice = [("authorization", "Basic YWxpY2U6YWxpY2Vwdw=="), ("content-type", "application/json")];
    let bob = [("authorization", "Basic Ym9iOmJvYnB3"), ("content-type", "application/json")];

    let groups = call(&server, "GET", "/v1/groups", &alice, "").await.json();
    assert_eq!(groups[0]["group"], "workers");
    assert_eq!((groups[0]["lag"].as_u64(), groups[0]["pending"].as_u64()), (Some(3), Some(2)));
    assert!(groups[0]["oldest_pending_ms"].as_u64().is_some());
    assert_eq!(call(&server, "GET", "/v1/groups", &bob, "").await.json(), serde_json::json!([]));
    let path = "/v1/topics/orders.eu/groups/workers";
    let shown = call(&server, "GET", path, &alice, "").await.json();
    assert_eq!(shown["members"][0]["name"], "w1");
    let pending: Vec<String> =
        shown["pending_entries"].as_array().unwrap().iter().map(|row| row["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(pending.len(), 2);
    assert_eq!(call(&server, "GET", path, &bob, "").await.status, 403);

    let ids = serde_json::json!({ "ids": [pending[0]] }).to_string();
    assert_eq!(call(&server, "POST", &format!("{path}/ack"), &bob, &ids).await.status, 403);
    let acked = call(&server, "POST", &format!("{path}/ack"), &alice, &ids).await;
    assert_eq!(acked.json()["acked"], 1);
    let claim = serde_json::json!({ "consumer": "w2", "ids": [pending[1]] }).to_string();
    let claimed = call(&server, "POST", &format!("{path}/claim"), &alice, &claim).await.json();
    assert_eq!(claimed["claimed"][0], pending[1]);
    let moved = call(&server, "PUT", &format!("{path}/position"), &alice, r#"{"id":"$"}"#).await;
    assert_eq!(moved.status, 204);
    let after = call(&server, "GET", path, &alice, "").await.json();
    assert_eq!((after["lag"].as_u64(), after["pending"].as_u64()), (Some(0), Some(1)));
    assert_eq!(after["pending_entries"][0]["consumer"], "w2");

    // Bad input: clear errors, nothing changed.
    for (method, route, body) in [
        ("POST", "ack", r#"{"ids":[]}"#),
        ("POST", "ack", r#"{"ids":["x-y"]}"#),
        ("POST", "ack", "["),
        ("POST", "claim", r#"{"ids":["1-0"]}"#),
        ("PUT", "position", r#"{"id":"later"}"#),
    ] {
        let reply = call(&server, method, &format!("{path}/{route}"), &alice, body).await;
        assert_eq!(reply.status, 400, "{route} {body}: {}", String::from_utf8_lossy(&reply.body));
    }
    assert_eq!(call(&server, "GET", &format!("{path}?count=0"), &alice, "").await.status, 400);
    let missing = call(&server, "GET", "/v1/topics/orders.eu/groups/nobody", &alice, "").await;
    assert_eq!(missing.status, 404);
}

/// `tests/console`: the browser script and its pinned playwright-core.
fn console_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/console")
}

/// A port free at the moment.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn the_console_in_a_real_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install chromium (.ci/run installs it), or set CHROMIUM"
    );
    let install = std::process::Command::new(console_dir().join("install")).output().unwrap();
    assert!(install.status.success(), "tests/console/install: {}", String::from_utf8_lossy(&install.stderr));

    let cairn = Cairn::new();
    users(&cairn);
    let mut batch = String::new();
    for n in 0..10_000 {
        batch.push_str(&format!(
            "{{\"topic\":\"orders.eu\",\"type\":\"order.placed\",\"content\":\"{{\\\"n\\\":{n},\\\"item\\\":\\\"widget\\\"}}\"}}\n"
        ));
    }
    batch.push_str("{\"topic\":\"orders.us\",\"content\":\"{}\"}\n");
    batch.push_str("{\"topic\":\"public.news\",\"content\":\"hello\"}\n");
    cairn.ok(&["append", "--batch"], batch.as_bytes());
    // Many topics, so the list pages.
    let many: String =
        (0..2_000).map(|n| format!("{{\"topic\":\"orders.many.{n:05}\",\"content\":\"x\"}}\n")).collect();
    cairn.ok(&["append", "--batch"], many.as_bytes());
    // The scale the console is built for: a topic of 1,000,000 events and
    // 10,000 topics (only the admin reads them).
    for part in 0..10 {
        let lines: String = (part * 100_000..(part + 1) * 100_000)
            .map(|n| format!("{{\"topic\":\"scale.big\",\"content\":\"{n}\"}}\n"))
            .collect();
        cairn.ok(&["append", "--batch"], lines.as_bytes());
    }
    let topics: String = (0..10_000).map(|n| format!("{{\"topic\":\"scale.t.{n:05}\",\"content\":\"x\"}}\n")).collect();
    cairn.ok(&["append", "--batch"], topics.as_bytes());
    let secret = cairn.ok(&["append", "secret.plans"], b"launch on friday")[0]["id"].as_str().unwrap().to_owned();
    let png = base64_decode(PNG_BASE64);
    let image =
        cairn.ok(&["append", "orders.images", "--type", "image/png"], &png)[0]["id"].as_str().unwrap().to_owned();

    let cors_port = free_port();
    let cors = format!("http://127.0.0.1:{cors_port}");
    let server = Server::start(&cairn, &["--cors-origin", &cors]);
    let mut raw = Raw::connect(server.resp());
    raw.command(&[b"XGROUP", b"CREATE", b"orders.eu", b"workers", b"0"]);
    raw.expect(b"+OK\r\n");
    raw.command(&[b"XREADGROUP", b"GROUP", b"workers", b"w1", b"COUNT", b"3", b"STREAMS", b"orders.eu", b">"]);
    let _ = raw.frame();

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let mut child = std::process::Command::new("node")
        .arg("console.mjs")
        .current_dir(console_dir())
        .env("URL", server.url())
        .env("CAIRN", env!("CARGO_BIN_EXE_cairn"))
        .env("STORE", cairn.store())
        .env("SECRET_ID", &secret)
        .env("IMAGE_ID", &image)
        .env("CORS_PORT", cors_port.to_string())
        .env("SHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let deadline = Instant::now() + Duration::from_secs(240);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.lines().last() == Some("done"),
        "the browser test failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for view in
        ["login", "topics", "topic", "event", "event-image", "tail", "consumers", "group", "server", "scale", "bob"]
    {
        assert!(shots.join(format!("{view}.png")).exists(), "no screenshot of {view}");
    }
    eprintln!("{stdout}screenshots: {}", shots.display());
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_cookie_does_not_lock_out_where_no_credentials_are_needed() {
    let cairn = Cairn::new();
    let server = Server::start(&cairn, &["--insecure-no-auth"]);
    let planted = [("cookie", "cairn_session=planted")];
    assert_eq!(call(&server, "GET", "/v1/topics", &planted, "").await.status, 200);
    assert_eq!(call(&server, "GET", "/healthz", &planted, "").await.status, 200);
}
