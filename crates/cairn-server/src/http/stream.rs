//! Streaming reads: stored events, or history then live events (the
//! service's follow), as NDJSON or Server-Sent Events.
//!
//! A producer task fills fixed-size chunks and hands them to the body
//! through a small bounded channel, so a client that does not read holds
//! at most a few chunks of memory: a stored read's producer waits; a
//! follow's subscription falls behind the live ring and later catches up
//! from storage. Writers never wait for readers. A stored read fetches its
//! next chunk of events while it writes the current one. Shutdown ends
//! follow streams cleanly (the body just ends); a revoked credential ends
//! them with an error frame.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use cairn_service::{Delivered, Event, EventId, FollowOptions, Item, Pattern, Principal, Query, ServiceError};
use tokio::sync::mpsc;

use super::{ApiError, ApiResult, Params, not_modified, not_modified_response};
use crate::metrics::Metrics;
use crate::server::App;

/// Bytes gathered before a chunk is handed to the connection.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks buffered per stream between producer and connection.
const CHUNKS_BUFFERED: usize = 4;
/// Events fetched from storage per step of a stored read.
const READ_CHUNK_EVENTS: usize = 2048;
/// Deliveries taken from a follow per step.
const FOLLOW_CHUNK_EVENTS: usize = 512;

/// How a stream is framed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Format {
    /// One JSON object per line.
    Ndjson,
    /// `text/event-stream`: `id:` is the event id, `data:` its JSON.
    Sse,
}

/// A read or follow, parsed from query parameters and headers.
pub(crate) struct ReadSpec {
    pub(crate) query: Query,
    pub(crate) follow: bool,
    pub(crate) threshold: bool,
    pub(crate) pulse: Option<Duration>,
    pub(crate) content: bool,
    pub(crate) format: Format,
}

impl ReadSpec {
    /// Parses `after`, `from_seq`, `last`, `limit`, `reverse`, `follow`,
    /// `threshold`, `pulse`, `content`; the pattern comes from the caller.
    /// With SSE, a `Last-Event-ID` header resumes after that event.
    pub(crate) fn parse(params: &mut Params, headers: &HeaderMap, pattern: Pattern) -> ApiResult<ReadSpec> {
        let after = params.take("after")?.map(|id| EventId::parse(&id)).transpose()?;
        let mut query = Query {
            pattern,
            after,
            from_seq: params.number("from_seq")?,
            last: params.number("last")?,
            limit: params.number("limit")?,
            reverse: params.flag("reverse")?,
        };
        let follow = params.flag("follow")?;
        let threshold = params.flag("threshold")?;
        let pulse = params.take("pulse")?.map(|text| parse_pulse(&text)).transpose()?;
        let content = params.flag("content")?;
        let format = if accepts_sse(headers) { Format::Sse } else { Format::Ndjson };
        if format == Format::Sse
            && let Some(resume) = super::header_text(headers, &super::LAST_EVENT_ID)?.filter(|id| !id.is_empty())
        {
            query.after =
                Some(EventId::parse(resume).map_err(|_| ApiError::invalid("Last-Event-ID", "is not an event id"))?);
            query.from_seq = None;
            query.last = None;
        }
        if !follow && (threshold || pulse.is_some()) {
            return Err(ApiError::invalid("threshold", "threshold and pulse need follow=true"));
        }
        if follow && query.reverse {
            return Err(ApiError::invalid("reverse", "a follow runs forward"));
        }
        query.validate()?;
        Ok(ReadSpec { query, follow, threshold, pulse, content, format })
    }
}

fn parse_pulse(text: &str) -> ApiResult<Duration> {
    let ms = match text.parse::<u64>() {
        Ok(ms) => ms,
        Err(_) => cairn_service::parse_duration_ms(text).map_err(|rule| ApiError::invalid("pulse", rule))?,
    };
    if ms == 0 {
        return Err(ApiError::invalid("pulse", "must be at least 1ms"));
    }
    Ok(Duration::from_millis(ms))
}

fn accepts_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.split(',').any(|kind| kind.trim().starts_with("text/event-stream")))
}

/// Answers a read: the service checks access, then the events stream.
pub(crate) async fn respond(
    app: &Arc<App>,
    principal: &Principal,
    headers: &HeaderMap,
    spec: ReadSpec,
) -> ApiResult<Response<Body>> {
    if spec.follow {
        return follow(app, principal, spec).await;
    }
    // Access is checked (by opening the read) before any 304.
    let what = format!("{:?} {} {:?}", spec.query, spec.content, spec.format);
    let etag = super::scoped_etag(app, principal, &what);
    let mut read = app.service.read(principal, spec.query.clone(), spec.content).await?;
    if not_modified(headers, &etag) {
        return Ok(not_modified_response(&etag));
    }
    let (sender, receiver) = mpsc::channel(CHUNKS_BUFFERED);
    let guard = StreamGuard::new(app);
    let format = spec.format;
    tokio::spawn(async move {
        let _guard = guard;
        let mut buf = Vec::with_capacity(CHUNK_BYTES + 4096);
        let mut next = read.next(READ_CHUNK_EVENTS).await;
        loop {
            let items = match next {
                Ok(items) if items.is_empty() => break,
                Ok(items) => items,
                Err(error) => {
                    write_error(&mut buf, format, &error.into());
                    break;
                }
            };
            // Fetch the next chunk while this one is written.
            let (written, fetched) =
                tokio::join!(write_items(&mut buf, format, &items, &sender), read.next(READ_CHUNK_EVENTS));
            if !written {
                return;
            }
            next = fetched;
        }
        if !buf.is_empty() {
            let _ = sender.send(Bytes::from(buf)).await;
        }
    });
    let mut response = body_response(receiver, spec.format);
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    Ok(response)
}

/// Writes `items` into `buf`, handing full chunks to `sender`; false once
/// the client is gone.
async fn write_items(buf: &mut Vec<u8>, format: Format, items: &[Item], sender: &mpsc::Sender<Bytes>) -> bool {
    for item in items {
        write_event(buf, format, &item.event, item.content.as_deref());
        if buf.len() >= CHUNK_BYTES && sender.send(Bytes::from(std::mem::take(buf))).await.is_err() {
            return false;
        }
    }
    true
}

async fn follow(app: &Arc<App>, principal: &Principal, spec: ReadSpec) -> ApiResult<Response<Body>> {
    let options =
        FollowOptions { threshold: spec.threshold, pulse: spec.pulse, content: spec.content, limit: spec.query.limit };
    let mut follow = app.service.follow(principal, spec.query, options).await?;
    let (sender, receiver) = mpsc::channel::<Bytes>(CHUNKS_BUFFERED);
    let guard = StreamGuard::new(app);
    let format = spec.format;
    tokio::spawn(async move {
        let guard = guard;
        let mut buf = Vec::with_capacity(CHUNK_BYTES + 4096);
        while !follow.is_done() {
            let deliveries = tokio::select! {
                () = sender.closed() => break,
                deliveries = follow.next(FOLLOW_CHUNK_EVENTS) => deliveries,
            };
            let failed = match deliveries {
                Ok(deliveries) => {
                    for delivery in &deliveries {
                        write_delivery(&mut buf, format, delivery);
                    }
                    false
                }
                Err(ServiceError::ShuttingDown) => break,
                Err(error) => {
                    write_error(&mut buf, format, &error.into());
                    true
                }
            };
            let chunk = Bytes::from(std::mem::take(&mut buf));
            match sender.try_send(chunk) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(chunk)) => {
                    guard.metrics().streams_behind.fetch_add(1, Relaxed);
                    let mut stopping = guard.0.service.stopping();
                    let sent = tokio::select! {
                        sent = sender.send(chunk) => sent.is_ok(),
                        _ = stopping.wait_for(|stopping| *stopping) => false,
                    };
                    guard.metrics().streams_behind.fetch_sub(1, Relaxed);
                    if !sent {
                        break;
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
            if failed {
                break;
            }
        }
    });
    let mut response = body_response(receiver, spec.format);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

fn write_delivery(buf: &mut Vec<u8>, format: Format, delivery: &Delivered) {
    match delivery {
        Delivered::Event(event, content) => write_event(buf, format, event, content.as_deref()),
        Delivered::Threshold => write_synthetic(buf, format, "cairn.threshold"),
        Delivered::Pulse => write_synthetic(buf, format, "cairn.pulse"),
    }
}

/// A body that sends the chunks a producer puts in `receiver`, ending
/// when the producer drops its sender.
pub(crate) fn channel_body(receiver: mpsc::Receiver<Bytes>) -> Body {
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), receiver))
    });
    Body::from_stream(stream)
}

fn body_response(receiver: mpsc::Receiver<Bytes>, format: Format) -> Response<Body> {
    let mut response = Response::new(channel_body(receiver));
    *response.status_mut() = StatusCode::OK;
    let kind = match format {
        Format::Ndjson => "application/x-ndjson",
        Format::Sse => "text/event-stream",
    };
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}

/// Writes one event frame (its payload already verified, when given).
pub(crate) fn write_event(buf: &mut Vec<u8>, format: Format, event: &Event, content: Option<&[u8]>) {
    if format == Format::Sse {
        use std::io::Write as _;
        buf.extend_from_slice(b"id: ");
        let _ = write!(buf, "{}", event.id);
        buf.extend_from_slice(b"\ndata: ");
    }
    cairn_service::json::write_event(buf, event, content);
    buf.extend_from_slice(if format == Format::Sse { b"\n\n" } else { b"\n" });
}

/// A synthetic frame (`cairn.threshold`, `cairn.pulse`); in SSE it carries
/// no `id:`, so a reconnect never resumes from it.
fn write_synthetic(buf: &mut Vec<u8>, format: Format, topic: &str) {
    let json = serde_json::json!({ "id": EventId::now().to_string(), "topic": topic, "seq": 0 });
    if format == Format::Sse {
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(topic.as_bytes());
        buf.extend_from_slice(b"\ndata: ");
    }
    buf.extend_from_slice(&super::to_json(&json));
    buf.extend_from_slice(if format == Format::Sse { b"\n\n" } else { b"\n" });
}

/// The last frame of a stream that failed after it started.
fn write_error(buf: &mut Vec<u8>, format: Format, error: &ApiError) {
    if let ApiError::Service(service) = error
        && service.is_internal()
    {
        tracing::error!("a stream failed: {error}");
    }
    if format == Format::Sse {
        buf.extend_from_slice(b"event: error\ndata: ");
    }
    buf.extend_from_slice(&super::to_json(&error.to_json()));
    buf.extend_from_slice(if format == Format::Sse { b"\n\n" } else { b"\n" });
}

/// Counts a stream as open while it lives.
struct StreamGuard(Arc<App>);

impl StreamGuard {
    fn new(app: &Arc<App>) -> StreamGuard {
        app.metrics.open_streams.fetch_add(1, Relaxed);
        StreamGuard(app.clone())
    }

    fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.metrics.open_streams.fetch_sub(1, Relaxed);
    }
}
