//! Streaming reads: stored events (a blocking producer) or history then
//! live events (an async follower), as NDJSON or Server-Sent Events.
//!
//! Both producers hand the body fixed-size chunks through a small bounded
//! channel, so a client that does not read holds at most a few chunks of
//! memory: a stored read waits, a follower's subscription falls behind the
//! live ring and later catches up from storage. Writers never wait for
//! readers. Shutdown ends follow streams cleanly (the body just ends).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use cairn_store::{Delivery, Event, EventId, Pattern, Query, Store, SubscribeOptions};
use futures_util::FutureExt as _;
use tokio::sync::mpsc;

use super::{Params, blocking, not_modified, not_modified_response};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::server::App;

/// Bytes gathered before a chunk is handed to the connection.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks buffered per stream between producer and connection.
const CHUNKS_BUFFERED: usize = 4;

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
    pub(crate) options: SubscribeOptions,
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
            && let Some(resume) = super::header_text(headers, "last-event-id")?.filter(|id| !id.is_empty())
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
        Ok(ReadSpec { query, follow, options: SubscribeOptions { threshold, pulse }, content, format })
    }
}

fn parse_pulse(text: &str) -> ApiResult<Duration> {
    let ms = match text.parse::<u64>() {
        Ok(ms) => ms,
        Err(_) => cairn_store::parse_duration_ms(text).map_err(|rule| ApiError::invalid("pulse", rule))?,
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

/// Answers a read: checks access, then streams.
pub(crate) async fn respond(
    app: &Arc<App>,
    principal: &Principal,
    headers: &HeaderMap,
    spec: ReadSpec,
) -> ApiResult<Response<Body>> {
    principal.check_read(&spec.query.pattern)?;
    if spec.follow {
        return follow(app, spec).await;
    }
    let etag = format!("W/\"{}\"", app.store.version());
    if not_modified(headers, &etag) {
        return Ok(not_modified_response(&etag));
    }
    let query = spec.query.clone();
    let events = blocking(app, move |store| Ok(store.read(&query)?)).await?;
    let (sender, receiver) = mpsc::channel(CHUNKS_BUFFERED);
    let store = app.store.clone();
    let guard = StreamGuard::new(app);
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        let mut buf = Vec::with_capacity(CHUNK_BYTES + 4096);
        for event in events {
            let written = event
                .map_err(ApiError::from)
                .and_then(|event| write_event(&mut buf, spec.format, &store, &event, spec.content));
            if let Err(error) = written {
                write_error(&mut buf, spec.format, &error);
                break;
            }
            if buf.len() >= CHUNK_BYTES && sender.blocking_send(Bytes::from(std::mem::take(&mut buf))).is_err() {
                return;
            }
        }
        if !buf.is_empty() {
            let _ = sender.blocking_send(Bytes::from(buf));
        }
    });
    let mut response = body_response(receiver, spec.format);
    response
        .headers_mut()
        .insert(header::ETAG, HeaderValue::from_str(&etag).map_err(|e| ApiError::internal(e.to_string()))?);
    Ok(response)
}

async fn follow(app: &Arc<App>, spec: ReadSpec) -> ApiResult<Response<Body>> {
    let (query, options) = (Query { limit: None, ..spec.query.clone() }, spec.options);
    let mut subscription = app.store.subscribe(&query, options).await?;
    let (sender, receiver) = mpsc::channel::<Bytes>(CHUNKS_BUFFERED);
    let store = app.store.clone();
    let guard = StreamGuard::new(app);
    let mut stopping = app.stopping.clone();
    let mut remaining = spec.query.limit.unwrap_or(u64::MAX);
    tokio::spawn(async move {
        let guard = guard;
        let mut buf = Vec::with_capacity(CHUNK_BYTES + 4096);
        while remaining > 0 {
            let delivery = tokio::select! {
                biased;
                () = crate::server::stopped(&mut stopping) => break,
                () = sender.closed() => break,
                delivery = subscription.next() => delivery,
            };
            let mut failed = !deliver(&mut buf, spec.format, &store, delivery, spec.content, &mut remaining);
            // Whatever is ready now goes in the same chunk.
            while !failed && remaining > 0 && buf.len() < CHUNK_BYTES {
                match subscription.next().now_or_never() {
                    Some(delivery) => {
                        failed = !deliver(&mut buf, spec.format, &store, delivery, spec.content, &mut remaining)
                    }
                    None => break,
                }
            }
            let chunk = Bytes::from(std::mem::take(&mut buf));
            match sender.try_send(chunk) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(chunk)) => {
                    guard.metrics().streams_behind.fetch_add(1, Relaxed);
                    let sent = tokio::select! {
                        sent = sender.send(chunk) => sent.is_ok(),
                        () = crate::server::stopped(&mut stopping) => false,
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

/// Writes one delivery; false (after writing an error frame) if it failed.
fn deliver(
    buf: &mut Vec<u8>,
    format: Format,
    store: &Store,
    delivery: cairn_store::Result<Delivery>,
    content: bool,
    remaining: &mut u64,
) -> bool {
    let written = match delivery {
        Ok(Delivery::Event(event)) => {
            *remaining -= 1;
            write_event(buf, format, store, &event, content)
        }
        Ok(Delivery::Threshold) => write_synthetic(buf, format, "cairn.threshold"),
        Ok(Delivery::Pulse) => write_synthetic(buf, format, "cairn.pulse"),
        Err(cairn_store::StoreError::ShuttingDown) => return false,
        Err(error) => Err(error.into()),
    };
    match written {
        Ok(()) => true,
        Err(error) => {
            write_error(buf, format, &error);
            false
        }
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

/// Writes one event frame.
pub(crate) fn write_event(
    buf: &mut Vec<u8>,
    format: Format,
    store: &Store,
    event: &Event,
    content: bool,
) -> ApiResult<()> {
    // Verified against its hash, inline or not.
    let payload = if content { store.content(event)? } else { None };
    if format == Format::Sse {
        use std::io::Write as _;
        buf.extend_from_slice(b"id: ");
        let _ = write!(buf, "{}", event.id);
        buf.extend_from_slice(b"\ndata: ");
    }
    cairn_store::json::write_event(buf, event, payload.as_deref());
    buf.extend_from_slice(if format == Format::Sse { b"\n\n" } else { b"\n" });
    Ok(())
}

/// A synthetic frame (`cairn.threshold`, `cairn.pulse`); in SSE it carries
/// no `id:`, so a reconnect never resumes from it.
fn write_synthetic(buf: &mut Vec<u8>, format: Format, topic: &str) -> ApiResult<()> {
    let json = serde_json::json!({ "id": EventId::now().to_string(), "topic": topic, "seq": 0 });
    if format == Format::Sse {
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(topic.as_bytes());
        buf.extend_from_slice(b"\ndata: ");
    }
    serde_json::to_writer(&mut *buf, &json).map_err(|error| ApiError::internal(error.to_string()))?;
    buf.extend_from_slice(if format == Format::Sse { b"\n\n" } else { b"\n" });
    Ok(())
}

/// The last frame of a stream that failed after it started.
fn write_error(buf: &mut Vec<u8>, format: Format, error: &ApiError) {
    if format == Format::Sse {
        buf.extend_from_slice(b"event: error\ndata: ");
    }
    let _ = serde_json::to_writer(&mut *buf, &error.to_json());
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
