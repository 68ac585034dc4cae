//! xs's own clients: on `<store>/sock` (the socket the `xs` command line
//! uses for a store directory) the server answers xs's HTTP API as xs does,
//! so the unmodified `xs append`, `cat`, `last`, `get`, `remove`,
//! `cas-post`, `import` and `version` work against a cairn store. Frames
//! are xs's `{topic, id, hash, meta, ttl}` (every field present, `null`
//! when absent, in that order); `xs.threshold` and `xs.pulse` are its
//! synthetic frames. `xs cas` reads xs's content files directly (cacache's
//! `content-v2` layout beside the socket), so content that arrives through
//! this door is also written there. `xs eval` needs Nushell: not served.
//!
//! The socket is trusted as `cairn.sock` is (mode 0600 in the store's
//! 0700 directory): requests run as the socket's principal.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode};
use base64::Engine as _;
use cairn_service::{
    Batch, Delivered, Event, EventId, Expect, FollowOptions, Hash, Imported, NewEvent, Pattern, Principal, Query,
    Service, Topic, Ttl,
};
use http_body_util::BodyExt as _;
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, mpsc, watch};

/// `GET /last` returns at most this many frames (they are gathered in
/// memory).
const LAST_MAX: u64 = 100_000;

/// The socket's name in the store directory (xs's).
pub(crate) const SOCKET_NAME: &str = "sock";

struct Door {
    service: Service,
    store: PathBuf,
    body_timeout: Duration,
}

/// Serves xs's API on `listener` until `stop`.
pub(crate) async fn serve(
    service: Service,
    store: PathBuf,
    listener: UnixListener,
    limits: (usize, Duration, Duration),
    mut stop: watch::Receiver<bool>,
) {
    let (max_connections, header_timeout, body_timeout) = limits;
    let door = Arc::new(Door { service, store, body_timeout });
    let permits = Arc::new(Semaphore::new(max_connections));
    loop {
        let accepted = tokio::select! {
            () = crate::server::stopped(&mut stop) => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
        let (door, stop) = (door.clone(), stop.clone());
        tokio::spawn(async move {
            let handle = move |request| {
                let door = door.clone();
                async move { door.handle(request).await }
            };
            crate::listen::serve_http1(stream, header_timeout, handle, stop).await;
            drop(permit);
        });
    }
    let _ = std::fs::remove_file(door.store.join(SOCKET_NAME));
}

/// A reply: status and text (xs's errors are plain text, no type).
type Failure = (StatusCode, String);

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
}

fn typed(body: impl Into<Body>, kind: &'static str) -> Response<Body> {
    let mut response = Response::new(body.into());
    response.headers_mut().insert("content-type", HeaderValue::from_static(kind));
    response
}

/// Query parameters as xs reads them (last one wins; no decoding errors).
fn params(query: Option<&str>) -> Vec<(String, String)> {
    query.map(|query| serde_urlencoded::from_str(query).unwrap_or_default()).unwrap_or_default()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().rev().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

/// An event as xs's frame, byte for byte: `{"topic","id","hash","meta","ttl"}`.
pub(crate) fn frame(event: &Event) -> String {
    let topic = serde_json::to_string(event.topic.as_str()).expect("a string serializes");
    let hash = event.hash.map_or_else(|| "null".to_owned(), |hash| format!("\"{}\"", hash.sri()));
    let meta = event.meta.clone().unwrap_or_else(|| "null".to_owned());
    format!(r#"{{"topic":{topic},"id":"{}","hash":{hash},"meta":{meta},"ttl":"{}"}}"#, event.id, ttl(event.ttl))
}

fn synthetic(topic: &str) -> String {
    format!(r#"{{"topic":"{topic}","id":"{}","hash":null,"meta":null,"ttl":"ephemeral"}}"#, EventId::now())
}

/// A retention as xs writes it (`time:` in milliseconds).
fn ttl(ttl: Ttl) -> String {
    match ttl {
        Ttl::Forever => "forever".to_owned(),
        Ttl::Ephemeral => "ephemeral".to_owned(),
        Ttl::Time { ms } => format!("time:{ms}"),
        Ttl::Last { n } => format!("last:{n}"),
    }
}

/// xs's topic filter: comma-separated exact topics, `prefix.*`, or `*`.
fn patterns(text: &str) -> Result<Vec<Pattern>, Failure> {
    let bad = |error: cairn_service::StoreError| (StatusCode::BAD_REQUEST, error.to_string());
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| match part {
            "*" => Ok(Pattern::all()),
            _ => match part.strip_suffix(".*") {
                Some(prefix) => Pattern::parse(&format!("{prefix}.>")).map_err(bad),
                None => Topic::new(part).map(Pattern::Exact).map_err(bad),
            },
        })
        .collect()
}

/// The one pattern a query reads, and the patterns its events must match
/// (several: read everything, keep what matches).
fn query_pattern(patterns: &[Pattern]) -> (Pattern, Vec<Pattern>) {
    match patterns {
        [] => (Pattern::all(), Vec::new()),
        [one] => (one.clone(), Vec::new()),
        many => (Pattern::all(), many.to_vec()),
    }
}

fn id_of(text: &str) -> Result<EventId, Failure> {
    EventId::parse(text).map_err(|error| (StatusCode::BAD_REQUEST, format!("Invalid frame ID: {error}")))
}

impl Door {
    async fn handle(self: Arc<Door>, request: Request<hyper::body::Incoming>) -> Response<Body> {
        match self.route(request).await {
            Ok(response) => response,
            Err((status, message)) => text(status, message),
        }
    }

    async fn route(&self, request: Request<hyper::body::Incoming>) -> Result<Response<Body>, Failure> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = params(request.uri().query());
        let sse = request.headers().get("accept").is_some_and(|accept| accept.as_bytes() == b"text/event-stream");
        match (&method, path.as_str()) {
            (&Method::GET, "/version") => {
                let version = serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }).to_string();
                Ok(typed(version, "application/json"))
            }
            (&Method::GET, "/") => self.cat(&query, sse).await,
            (&Method::GET, "/last") => self.last(None, &query).await,
            (&Method::GET, p) if p.starts_with("/last/") => self.last(Some(&p["/last/".len()..]), &query).await,
            (&Method::GET, p) if p.starts_with("/cas/") => self.cas_get(&p["/cas/".len()..]).await,
            (&Method::POST, "/cas") => {
                let body = self.body(request).await?;
                if body.is_empty() {
                    return Err((StatusCode::BAD_REQUEST, "Empty body".to_owned()));
                }
                let hash = self.service.cas_put(&Principal::Local, body.clone()).await.map_err(internal)?;
                self.keep_for_xs(&hash, body).await;
                Ok(typed(hash.sri(), "text/plain"))
            }
            (&Method::POST, "/import") => {
                let body = self.body(request).await?;
                self.import(&body).await
            }
            (&Method::POST, "/eval") => Err((
                StatusCode::NOT_IMPLEMENTED,
                "xs eval runs Nushell scripts; cairn runs processors instead (cairn proc)".to_owned(),
            )),
            (&Method::POST, p) if p.starts_with("/append/") => {
                let topic = p["/append/".len()..].to_owned();
                let meta = match request.headers().get("xs-meta") {
                    None => None,
                    Some(value) => Some(decode_meta(value.as_bytes())?),
                };
                let ttl = match param(&query, "ttl") {
                    None => Ttl::Forever,
                    Some(text) => Ttl::parse(text).map_err(|error| (StatusCode::BAD_REQUEST, error.to_string()))?,
                };
                let body = self.body(request).await?;
                self.append(&topic, meta, ttl, body).await
            }
            (&Method::GET, p) => {
                let id = id_of(p.trim_start_matches('/'))?;
                match self.service.get(&Principal::Local, id, false).await {
                    Ok(item) => Ok(typed(frame(&item.event), "application/json")),
                    Err(cairn_service::ServiceError::NotFound { .. }) => Err((StatusCode::NOT_FOUND, String::new())),
                    Err(error) => Err(internal(error)),
                }
            }
            (&Method::DELETE, p) => {
                let id = id_of(p.trim_start_matches('/'))?;
                match self.service.remove(&Principal::Local, id).await {
                    Ok(()) | Err(cairn_service::ServiceError::NotFound { .. }) => {
                        let mut response = Response::new(Body::empty());
                        *response.status_mut() = StatusCode::NO_CONTENT;
                        Ok(response)
                    }
                    Err(error) => Err(internal(error)),
                }
            }
            _ => Err((StatusCode::NOT_FOUND, String::new())),
        }
    }

    /// The request body, up to the payload limit, within the body timeout.
    async fn body(&self, request: Request<hyper::body::Incoming>) -> Result<Vec<u8>, Failure> {
        let max = self.service.limits().payload_bytes_max;
        let limited = http_body_util::Limited::new(request.into_body(), usize::try_from(max).unwrap_or(usize::MAX));
        match tokio::time::timeout(self.body_timeout, limited.collect()).await {
            Err(_) => Err((StatusCode::REQUEST_TIMEOUT, "the request body took too long".to_owned())),
            Ok(Err(_)) => Err((StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {max} bytes"))),
            Ok(Ok(collected)) => Ok(collected.to_bytes().to_vec()),
        }
    }

    async fn append(
        &self,
        topic: &str,
        meta: Option<String>,
        ttl: Ttl,
        body: Vec<u8>,
    ) -> Result<Response<Body>, Failure> {
        // xs answers a bad topic with a 500 and the reason.
        let topic = Topic::new(topic).map_err(|error| (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?;
        let kept = (!body.is_empty()).then(|| body.clone());
        let event = NewEvent { topic: Some(topic), meta, payload: kept, ttl, ..NewEvent::default() };
        let mut appended =
            self.service.append(&Principal::Local, Batch::single(event, Expect::Any)).await.map_err(internal)?;
        let event = appended.remove(0);
        if let Some(hash) = event.hash {
            self.keep_for_xs(&hash, body).await;
        }
        Ok(typed(frame(&event), "application/json"))
    }

    /// `GET /`: history, and with `follow` the threshold, then live frames.
    async fn cat(&self, query: &[(String, String)], sse: bool) -> Result<Response<Body>, Failure> {
        let bad = |what: &str| (StatusCode::BAD_REQUEST, what.to_owned());
        let (follow, pulse) = match param(query, "follow") {
            None | Some("false" | "no") => (false, None),
            Some("" | "true" | "yes") => (true, None),
            Some(ms) => match ms.parse::<u64>() {
                Ok(ms) => (true, Some(Duration::from_millis(ms.max(1)))),
                Err(_) => return Err(bad("Invalid value for follow option")),
            },
        };
        let new = param(query, "new").is_some_and(|value| !matches!(value, "false" | "no" | "0"));
        let number = |name: &str| -> Result<Option<u64>, Failure> {
            param(query, name).map(|n| n.parse::<u64>().map_err(|error| bad(&format!("{name}: {error}")))).transpose()
        };
        let (limit, last) = (number("limit")?, number("last")?);
        let after = match (param(query, "from"), param(query, "after")) {
            (Some(from), _) => Some(EventId::from_u128(id_of(from)?.to_u128().saturating_sub(1))),
            (None, Some(after)) => Some(id_of(after)?),
            (None, None) => None,
        };
        let patterns = patterns(param(query, "topic").unwrap_or("*"))?;
        let (pattern, only) = query_pattern(&patterns);
        let render = move |line: String| -> String {
            if sse {
                let id = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|frame| frame["id"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                format!("id: {id}\ndata: {line}\n\n")
            } else {
                format!("{line}\n")
            }
        };
        let keep = move |event: &Event| only.is_empty() || only.iter().any(|p| p.matches(event.topic.as_str()));
        let (send, receive) = mpsc::channel::<bytes::Bytes>(16);
        let service = self.service.clone();
        let limit_n = limit.unwrap_or(u64::MAX);
        if follow || new {
            let options = FollowOptions { threshold: !new, pulse, ..FollowOptions::default() };
            let mut follow = if new {
                service.follow_live(&Principal::Local, pattern, options)
            } else {
                let query = Query { after: if last.is_some() { None } else { after }, last, ..Query::new(pattern) };
                service.follow(&Principal::Local, query, options).await
            }
            .map_err(internal)?;
            tokio::spawn(async move {
                let mut sent = 0;
                while sent < limit_n {
                    // A client that left ends the follow even when nothing
                    // matches for it.
                    let delivered = tokio::select! {
                        () = send.closed() => return,
                        delivered = follow.next(64) => delivered,
                    };
                    let Ok(delivered) = delivered else { return };
                    let mut out = String::new();
                    for item in delivered {
                        match item {
                            Delivered::Event(event, _) if keep(&event) && sent < limit_n => {
                                sent += 1;
                                out.push_str(&render(frame(&event)));
                            }
                            Delivered::Event(..) => {}
                            Delivered::Threshold => out.push_str(&render(synthetic("xs.threshold"))),
                            Delivered::Pulse => out.push_str(&render(synthetic("xs.pulse"))),
                        }
                    }
                    if !out.is_empty() && send.send(bytes::Bytes::from(out)).await.is_err() {
                        return;
                    }
                }
            });
        } else {
            let query = Query { after: if last.is_some() { None } else { after }, last, limit, ..Query::new(pattern) };
            let mut read = service.read(&Principal::Local, query, false).await.map_err(internal)?;
            tokio::spawn(async move {
                loop {
                    let Ok(chunk) = read.next(512).await else { return };
                    if chunk.is_empty() {
                        return;
                    }
                    let out: String =
                        chunk.iter().filter(|item| keep(&item.event)).map(|item| render(frame(&item.event))).collect();
                    if send.send(bytes::Bytes::from(out)).await.is_err() {
                        return;
                    }
                }
            });
        }
        let stream = futures_util::stream::unfold(receive, |mut receive| async move {
            receive.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), receive))
        });
        let kind = if sse { "text/event-stream" } else { "application/x-ndjson" };
        Ok(typed(Body::from_stream(stream), kind))
    }

    /// `GET /last[/{topic}]`: the newest `last` frames (one: a JSON object;
    /// more: NDJSON; none: 404), or with `follow` those then live frames.
    async fn last(&self, topic: Option<&str>, query: &[(String, String)]) -> Result<Response<Body>, Failure> {
        let n = param(query, "last").and_then(|n| n.parse::<u64>().ok()).unwrap_or(1).clamp(1, LAST_MAX);
        let follow = param(query, "follow").is_some();
        let patterns = patterns(topic.unwrap_or("*"))?;
        if follow {
            let mut cat = vec![("follow".to_owned(), "true".to_owned()), ("last".to_owned(), n.to_string())];
            if let Some(topic) = topic {
                cat.push(("topic".to_owned(), topic.to_owned()));
            }
            return self.cat(&cat, false).await;
        }
        let (pattern, only) = query_pattern(&patterns);
        // Several patterns: newest first through everything, keeping the
        // first `n` that match (bounded by `n`, not by the store).
        let mut events: Vec<Event> = Vec::new();
        if only.is_empty() {
            let read = Query { last: Some(n), ..Query::new(pattern) };
            let items = self.service.read_all(&Principal::Local, read, false).await.map_err(internal)?;
            events.extend(items.into_iter().map(|item| item.event));
        } else {
            let read = Query { reverse: true, ..Query::new(pattern) };
            let mut reader = self.service.read(&Principal::Local, read, false).await.map_err(internal)?;
            'read: loop {
                let chunk = reader.next(512).await.map_err(internal)?;
                if chunk.is_empty() {
                    break;
                }
                for item in chunk {
                    if only.iter().any(|p| p.matches(item.event.topic.as_str())) {
                        events.push(item.event);
                        if events.len() as u64 >= n {
                            break 'read;
                        }
                    }
                }
            }
            events.reverse();
        }
        match events.iter().collect::<Vec<_>>().as_slice() {
            [] => Err((StatusCode::NOT_FOUND, String::new())),
            [one] if n == 1 => Ok(typed(frame(one), "application/json")),
            many => {
                let body: String = many.iter().map(|event| format!("{}\n", frame(event))).collect();
                Ok(typed(body, "application/x-ndjson"))
            }
        }
    }

    async fn cas_get(&self, text: &str) -> Result<Response<Body>, Failure> {
        let hash =
            Hash::parse(text).map_err(|_| (StatusCode::BAD_REQUEST, format!("Invalid CAS hash format: {text}")))?;
        match self.service.cas_get(&Principal::Local, &hash).await {
            Ok(bytes) => Ok(Response::new(Body::from(bytes))),
            // xs answers a missing blob with its store's error, a 500.
            Err(error) => Err((StatusCode::INTERNAL_SERVER_ERROR, error.to_string())),
        }
    }

    /// `POST /import`: one frame, kept with its id (after the store's
    /// last); its content must be stored already (`xs cas-post`).
    async fn import(&self, body: &[u8]) -> Result<Response<Body>, Failure> {
        #[derive(serde::Deserialize)]
        struct FrameJson {
            topic: String,
            id: String,
            #[serde(default)]
            hash: Option<String>,
            #[serde(default)]
            meta: Option<serde_json::Value>,
            #[serde(default)]
            ttl: Option<String>,
        }
        let given: FrameJson = serde_json::from_slice(body)
            .map_err(|error| (StatusCode::BAD_REQUEST, format!("Invalid frame JSON: {error}")))?;
        let bad = |error: String| (StatusCode::BAD_REQUEST, error);
        let topic = Topic::new(&given.topic).map_err(|error| (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?;
        let id = id_of(&given.id)?;
        let payload = match &given.hash {
            None => None,
            Some(text) => {
                let hash = Hash::parse(text).map_err(|error| bad(error.to_string()))?;
                Some(self.service.cas_get(&Principal::Local, &hash).await.map_err(|error| {
                    bad(format!("the frame's content {text} is not stored here (xs cas-post it first): {error}"))
                })?)
            }
        };
        let ttl = match given.ttl.as_deref() {
            None => Ttl::Forever,
            Some(text) => Ttl::parse(text).map_err(|error| bad(error.to_string()))?,
        };
        let meta = given.meta.filter(|meta| !meta.is_null()).map(|meta| meta.to_string());
        let head = self.service.head(&Principal::Local, &topic).await.map_err(internal)?;
        let seq = head.map_or(0, |head| head.last_seq + 1);
        let event = NewEvent { topic: Some(topic), meta, payload, ttl, ..NewEvent::default() };
        self.service
            .import(&Principal::Local, vec![Imported { id, seq, event }])
            .await
            .map_err(|error| bad(error.to_string()))?;
        let item = self.service.get(&Principal::Local, id, false).await.map_err(internal)?;
        Ok(typed(frame(&item.event), "application/json"))
    }

    /// Writes content where `xs cas` looks for it on a local store:
    /// cacache's `content-v2/sha256/<2>/<2>/<rest of hex>` under `cacache/`
    /// (written aside, synced, renamed; private like every store file).
    async fn keep_for_xs(&self, hash: &Hash, bytes: Vec<u8>) {
        let (store, hash) = (self.store.clone(), *hash);
        let written = tokio::task::spawn_blocking(move || write_cacache(&store, &hash, &bytes)).await;
        if let Ok(Err(error)) = written {
            tracing::warn!("xs content file for {}: {error}", hash.sri());
        }
    }
}

fn write_cacache(store: &Path, hash: &Hash, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let hex = hash.hex();
    let dir = store.join("cacache").join("content-v2").join("sha256").join(&hex[0..2]).join(&hex[2..4]);
    let path = dir.join(&hex[4..]);
    if path.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
    static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let staged = dir.join(format!(".{}.{}.{n}", &hex[4..], std::process::id()));
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&staged)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    std::fs::rename(&staged, &path)
}

fn decode_meta(value: &[u8]) -> Result<String, Failure> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, message);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|error| bad(format!("xs-meta isn't valid Base64: {error}")))?;
    let text = String::from_utf8(bytes).map_err(|error| bad(format!("xs-meta isn't valid UTF-8: {error}")))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|error| bad(format!("xs-meta isn't valid JSON: {error}")))?;
    // cairn keeps meta as an object.
    cairn_service::check_meta(&json.to_string()).map_err(|error| bad(error.to_string()))
}

fn internal(error: cairn_service::ServiceError) -> Failure {
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}
