//! HTTP served from the store (`--http-app ADDR`): every request becomes
//! an `http.request` event (meta: `method`, `path`, `query`, `headers`,
//! `remote`; the body as its payload, or, streamed or over 1 MiB, as
//! chunked content that follows the event piece by piece), and the server
//! answers with the
//! `http.response` events whose meta `request_id` names it: the first
//! gives `status` (default 200) and `headers`, its payload the body; with
//! `more: true` the response stays open and each further event's payload
//! is the next chunk (streamed responses, SSE), until one without `more`.
//! No response within the timeout: 504. A client that goes away before
//! its response is complete: an `http.disconnect` event.
//!
//! The responses are followed by one task (live, from before the first
//! request is appended) that hands each to its waiting request; one that
//! arrives in the instant between a request's append and its registration
//! waits in a small buffer. Work for a peer is bounded: connections (the
//! server's limit), the request head (64 KiB) and its read time, the body
//! (the payload limit, and the body timeout), the time to the first
//! response, and the chunks queued for a slow client (64; then its
//! response ends).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use cairn_service::{
    Batch, Delivered, Event, EventId, Expect, FollowOptions, NewEvent, Pattern, Principal, Service, Topic, Ttl,
};
use http_body_util::BodyExt as _;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

/// A request body up to this many bytes (by its Content-Length) is the
/// event's payload; a larger or streamed one is chunked content.
const WHOLE_BODY_MAX: u64 = 1024 * 1024;
/// A streamed request body must end within this long.
const BODY_DEADLINE: Duration = Duration::from_secs(300);
/// Chunks queued for one response at most.
const CHUNKS_QUEUED_MAX: usize = 64;
/// Responses kept for a request not registered yet, at most ...
const UNCLAIMED_MAX: usize = 1024;
/// ... holding at most this many bytes of payload ...
const UNCLAIMED_BYTES_MAX: usize = 16 * 1024 * 1024;
/// ... and for this long.
const UNCLAIMED_FOR: Duration = Duration::from_secs(5);

type Chunk = (Arc<Event>, Option<Vec<u8>>);

/// The app door's state.
struct Door {
    service: Service,
    timeout: Duration,
    body_timeout: Duration,
    ttl: Ttl,
    waiting: Mutex<HashMap<EventId, mpsc::Sender<Chunk>>>,
    unclaimed: Mutex<VecDeque<(Instant, EventId, Chunk)>>,
}

/// Serves the app's port until `stop`.
pub(crate) async fn serve(
    service: Service,
    listener: TcpListener,
    config: (Duration, Ttl),
    limits: (usize, Duration, Duration),
    mut stop: watch::Receiver<bool>,
) {
    let (timeout, ttl) = config;
    let (max_connections, header_timeout, body_timeout) = limits;
    let door = Arc::new(Door {
        service: service.clone(),
        timeout,
        body_timeout,
        ttl,
        waiting: Mutex::new(HashMap::new()),
        unclaimed: Mutex::new(VecDeque::new()),
    });
    let responses = Pattern::Exact(Topic::new("http.response").expect("valid topic"));
    let options = FollowOptions { content: true, ..FollowOptions::default() };
    let follow = match service.follow_live(&Principal::Local, responses, options) {
        Ok(follow) => follow,
        Err(error) => {
            tracing::error!("http app: following http.response: {error}");
            return;
        }
    };
    tokio::spawn(dispatch(door.clone(), Some(follow), stop.clone()));
    let permits = Arc::new(Semaphore::new(max_connections));
    loop {
        let accepted = tokio::select! {
            () = crate::server::stopped(&mut stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!("http app: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let (door, stop) = (door.clone(), stop.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let handle = move |request| {
                let door = door.clone();
                async move { door.handle(request, peer).await }
            };
            crate::listen::serve_http1(stream, header_timeout, handle, stop).await;
            drop(permit);
        });
    }
}

/// Hands each `http.response` to the request it names; after a failed
/// read it follows again (requests waiting meanwhile may time out).
async fn dispatch(door: Arc<Door>, mut follow: Option<cairn_service::Follow>, mut stop: watch::Receiver<bool>) {
    loop {
        let Some(current) = follow.as_mut() else {
            tokio::select! {
                () = crate::server::stopped(&mut stop) => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let responses = Pattern::Exact(Topic::new("http.response").expect("valid topic"));
            let options = FollowOptions { content: true, ..FollowOptions::default() };
            follow = door.service.follow_live(&Principal::Local, responses, options).ok();
            continue;
        };
        let delivered = tokio::select! {
            () = crate::server::stopped(&mut stop) => return,
            delivered = current.next(64) => delivered,
        };
        let delivered = match delivered {
            Ok(delivered) => delivered,
            Err(cairn_service::ServiceError::ShuttingDown) => return,
            Err(error) => {
                tracing::error!("http app: following http.response: {error}; following again");
                follow = None;
                continue;
            }
        };
        for item in delivered {
            let Delivered::Event(event, content) = item else { continue };
            let Some(request) =
                meta_of(&event).get("request_id").and_then(|id| id.as_str()).and_then(|id| EventId::parse(id).ok())
            else {
                continue;
            };
            door.deliver(request, (event, content));
        }
    }
}

/// Drops what waited in `unclaimed` longer than `UNCLAIMED_FOR`.
fn prune(unclaimed: &mut VecDeque<(Instant, EventId, Chunk)>) {
    while unclaimed.front().is_some_and(|(at, _, _)| at.elapsed() > UNCLAIMED_FOR) {
        unclaimed.pop_front();
    }
}

fn meta_of(event: &Event) -> serde_json::Value {
    event.meta.as_deref().and_then(|meta| serde_json::from_str(meta).ok()).unwrap_or_default()
}

impl Door {
    fn deliver(&self, request: EventId, chunk: Chunk) {
        // Both locks, in `register`'s order: a request registering now
        // either is in `waiting` here or finds the chunk in `unclaimed`.
        let mut waiting = self.waiting.lock().expect("waiting lock");
        match waiting.get(&request) {
            Some(sender) => {
                // A client that does not keep up loses its response (it
                // ends broken), never the server its memory.
                if sender.try_send(chunk).is_err() {
                    waiting.remove(&request);
                }
            }
            None => {
                // Only a request just appended can still register: its
                // id is at most a few seconds old.
                if request.timestamp_ms() + UNCLAIMED_FOR.as_millis() as u64 <= EventId::now().timestamp_ms() {
                    return;
                }
                let mut unclaimed = self.unclaimed.lock().expect("unclaimed lock");
                prune(&mut unclaimed);
                let bytes = |chunk: &Chunk| chunk.1.as_ref().map_or(0, Vec::len);
                let mut held: usize = unclaimed.iter().map(|(_, _, chunk)| bytes(chunk)).sum();
                while !unclaimed.is_empty()
                    && (unclaimed.len() >= UNCLAIMED_MAX || held + bytes(&chunk) > UNCLAIMED_BYTES_MAX)
                {
                    if let Some((_, _, dropped)) = unclaimed.pop_front() {
                        held -= bytes(&dropped);
                    }
                }
                unclaimed.push_back((Instant::now(), request, chunk));
            }
        }
    }

    /// Registers a request's channel and hands it what arrived before.
    fn register(&self, request: EventId) -> mpsc::Receiver<Chunk> {
        let (send, receive) = mpsc::channel(CHUNKS_QUEUED_MAX);
        let mut waiting = self.waiting.lock().expect("waiting lock");
        let mut unclaimed = self.unclaimed.lock().expect("unclaimed lock");
        prune(&mut unclaimed);
        unclaimed.retain(|(_, id, chunk)| {
            if *id == request {
                let _ = send.try_send(chunk.clone());
                false
            } else {
                true
            }
        });
        waiting.insert(request, send);
        receive
    }

    async fn handle(self: Arc<Door>, request: Request<hyper::body::Incoming>, peer: SocketAddr) -> Response<Body> {
        match self.answer(request, peer).await {
            Ok(response) => response,
            Err((status, message)) => plain(status, &message),
        }
    }

    async fn answer(
        self: &Arc<Door>,
        request: Request<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, (StatusCode, String)> {
        let (parts, body) = request.into_parts();
        let max = self.service.limits().payload_bytes_max;
        let declared = parts.headers.get("content-length").and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|declared| declared > max) {
            // Refused by its length, unread.
            return Err((StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is over {max} bytes")));
        }
        let mut headers = serde_json::Map::new();
        for (name, value) in &parts.headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match headers.get_mut(name.as_str()) {
                Some(serde_json::Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(&value);
                }
                _ => {
                    headers.insert(name.as_str().to_owned(), value.into());
                }
            }
        }
        let meta = serde_json::json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "headers": headers,
            "remote": peer.to_string(),
        });
        let mut event = NewEvent {
            topic: Some(Topic::new("http.request").expect("valid topic")),
            meta: Some(meta.to_string()),
            ttl: self.ttl,
            ..NewEvent::default()
        };
        let streamed = parts.headers.contains_key("transfer-encoding")
            || declared.is_some_and(|declared| declared > WHOLE_BODY_MAX);
        let request = if streamed {
            // A large or streamed body is chunked content: the request is an
            // event at once, and its body follows piece by piece (a handler
            // reads it with GET /v1/events/{id}/content).
            let mut chunked =
                self.service.append_chunked(&Principal::Local, event).await.map_err(|error| {
                    (StatusCode::SERVICE_UNAVAILABLE, format!("the request was not stored: {error}"))
                })?;
            let id = chunked.event().id;
            let body_timeout = self.body_timeout;
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + BODY_DEADLINE;
                match crate::pump::pump(&mut chunked, body, body_timeout, deadline).await {
                    Ok(()) => {
                        if let Err(error) = chunked.finish().await {
                            tracing::warn!("http app: the body of request {id}: {error}");
                        }
                    }
                    Err(stopped) => chunked.abort(&stopped.reason()).await,
                }
            });
            id
        } else {
            let limited = http_body_util::Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
            let body = match tokio::time::timeout(self.body_timeout, limited.collect()).await {
                Err(_) => return Err((StatusCode::REQUEST_TIMEOUT, "the request body took too long".to_owned())),
                Ok(Err(_)) => {
                    return Err((StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is over {max} bytes")));
                }
                Ok(Ok(collected)) => collected.to_bytes(),
            };
            event.payload = (!body.is_empty()).then(|| body.to_vec());
            let appended =
                self.service.append(&Principal::Local, Batch::single(event, Expect::Any)).await.map_err(|error| {
                    (StatusCode::SERVICE_UNAVAILABLE, format!("the request was not stored: {error}"))
                })?;
            appended[0].id
        };
        let mut chunks = self.register(request);
        let mut guard = Disconnect { door: Some(self.clone()), request };
        let first = match tokio::time::timeout(self.timeout, chunks.recv()).await {
            Ok(Some(first)) => first,
            Ok(None) | Err(_) => {
                guard.answered();
                return Err((
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("no http.response for request {request} within {} ms", self.timeout.as_millis()),
                ));
            }
        };
        let meta = meta_of(&first.0);
        let more = meta.get("more").and_then(serde_json::Value::as_bool) == Some(true);
        let response = match head_of(&meta) {
            Ok(response) => response,
            Err(error) => {
                // Answered (with the app's fault), not abandoned.
                guard.answered();
                return Err(error);
            }
        };
        let head = first.1.unwrap_or_default();
        if !more {
            guard.answered();
            return response.body(Body::from(head)).map_err(|error| (StatusCode::BAD_GATEWAY, error.to_string()));
        }
        // A streamed response: the first payload, then each further one,
        // until one without `more`, the client goes away, or it falls
        // behind (its queue full).
        let stream = futures_util::stream::unfold(
            (Some(head), chunks, guard, false),
            |(head, mut chunks, mut guard, done)| async move {
                if let Some(head) = head {
                    return Some((Ok::<_, std::io::Error>(bytes::Bytes::from(head)), (None, chunks, guard, done)));
                }
                if done {
                    return None;
                }
                let Some((event, content)) = chunks.recv().await else {
                    // Dropped for falling behind: a broken body, not one
                    // that looks complete.
                    let cut = std::io::Error::other("the response fell behind and was cut");
                    return Some((Err(cut), (None, chunks, guard, true)));
                };
                let last = meta_of(&event).get("more").and_then(serde_json::Value::as_bool) != Some(true);
                if last {
                    guard.answered();
                }
                Some((Ok(bytes::Bytes::from(content.unwrap_or_default())), (None, chunks, guard, last)))
            },
        );
        response.body(Body::from_stream(stream)).map_err(|error| (StatusCode::BAD_GATEWAY, error.to_string()))
    }
}

/// A response's status and headers from the first `http.response`'s meta.
fn head_of(meta: &serde_json::Value) -> Result<axum::http::response::Builder, (StatusCode, String)> {
    let mut response = Response::builder().status(status_of(meta)?);
    if let Some(serde_json::Value::Object(given)) = meta.get("headers") {
        for (name, value) in given {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| (StatusCode::BAD_GATEWAY, format!("http.response: bad header name {name:?}")))?;
            let values: Vec<&serde_json::Value> = match value {
                serde_json::Value::Array(values) => values.iter().collect(),
                value => vec![value],
            };
            for value in values {
                let text = match value {
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                let value = HeaderValue::from_str(&text)
                    .map_err(|_| (StatusCode::BAD_GATEWAY, format!("http.response: bad value for header {name}")))?;
                response = response.header(name.clone(), value);
            }
        }
    }
    Ok(response)
}

fn status_of(meta: &serde_json::Value) -> Result<StatusCode, (StatusCode, String)> {
    match meta.get("status") {
        None => Ok(StatusCode::OK),
        Some(status) => status
            .as_u64()
            .and_then(|status| u16::try_from(status).ok())
            .and_then(|status| StatusCode::from_u16(status).ok())
            .ok_or_else(|| (StatusCode::BAD_GATEWAY, format!("http.response: bad status {status}"))),
    }
}

fn plain(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(format!("{message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Unregisters a request when dropped, and appends `http.disconnect` if
/// its response was not complete (the client went away).
struct Disconnect {
    door: Option<Arc<Door>>,
    request: EventId,
}

impl Disconnect {
    /// The response is complete: no disconnect to tell.
    fn answered(&mut self) {
        if let Some(door) = self.door.take() {
            door.waiting.lock().expect("waiting lock").remove(&self.request);
        }
    }
}

impl Drop for Disconnect {
    fn drop(&mut self) {
        let Some(door) = self.door.take() else { return };
        door.waiting.lock().expect("waiting lock").remove(&self.request);
        let request = self.request;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let meta = serde_json::json!({ "request_id": request.to_string() });
            let event = NewEvent {
                topic: Some(Topic::new("http.disconnect").expect("valid topic")),
                meta: Some(meta.to_string()),
                ttl: door.ttl,
                ..NewEvent::default()
            };
            if let Err(error) = door.service.append(&Principal::Local, Batch::single(event, Expect::Any)).await {
                tracing::debug!("http app: http.disconnect for {request}: {error}");
            }
        });
    }
}
