//! Events and topics: append (one, or an atomic batch), read and follow,
//! get and delete by id, the topic list and a topic's head.
//!
//! Append options come as headers or query parameters (not both):
//! `Cairn-Type`/`type`, `Cairn-Meta`/`meta`, `Cairn-Expect`/`expect`,
//! `Cairn-Ttl`/`ttl`, `Idempotency-Key`/`key`. `If-Match` takes a topic's
//! ETag (`"<last id>"`, `"empty"`, or `*`): the append fails with 412 if
//! the topic is not in that state.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderName, Response, StatusCode, header};
use cairn_service::json::{BatchEventJson, EventJson};
use cairn_service::limits::BATCH_EVENTS_MAX;
use cairn_service::{Batch, Event, EventId, Expect, NewEvent, Pattern, Topic, Ttl, topic_etag};

use super::stream::{self, ReadSpec};
use super::{
    ApiError, ApiResult, Params, Segment, State, Who, header_text, if_match, json_response, not_modified,
    not_modified_response, read_body, to_json,
};
use crate::server::App;

/// The most bytes a batch request body may have (events, JSON, base64).
const BATCH_BODY_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// `POST /v1/topics/{topic}/events`: the body is the payload (empty: none).
pub(crate) async fn append(
    AxumState(app): State,
    Who(principal): Who,
    Segment(topic): Segment,
    mut params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    let topic = Topic::new(&topic)?;
    let kind = option(&mut params, &headers, "type", &CAIRN_TYPE)?;
    let meta =
        option(&mut params, &headers, "meta", &CAIRN_META)?.map(|meta| cairn_service::check_meta(&meta)).transpose()?;
    let ttl =
        option(&mut params, &headers, "ttl", &CAIRN_TTL)?.map(|ttl| Ttl::parse(&ttl)).transpose()?.unwrap_or_default();
    let key = idempotency_key(&mut params, &headers)?;
    let expect =
        option(&mut params, &headers, "expect", &CAIRN_EXPECT)?.map(|text| Expect::parse(&text)).transpose()?;
    let chunked = params.flag("chunked")?;
    params.finish()?;
    let condition = if_match(&headers)?;
    if chunked {
        if expect.is_some() || condition.is_some() || key.is_some() {
            return Err(ApiError::invalid("chunked", "takes no expectation, If-Match or idempotency key"));
        }
        let event = NewEvent { topic: Some(topic), kind, meta, payload: None, ttl, user: None };
        return append_chunked(&app, &principal, event, body).await;
    }
    if expect.is_some() && condition.is_some() {
        return Err(ApiError::invalid("If-Match", "give If-Match or expect, not both"));
    }
    let payload = read_body(&app, &headers, body, "payload", app.service.limits().payload_bytes_max).await?;
    let bytes = payload.len() as u64;
    let event = NewEvent {
        topic: Some(topic),
        kind,
        meta,
        payload: (!payload.is_empty()).then(|| payload.to_vec()),
        ttl,
        user: None,
    };
    let mut batch = Batch::single(event, expect.unwrap_or_default());
    batch.idempotency_key = key;
    let events = match &condition {
        Some(condition) => app.service.append_if_match(&principal, batch, condition).await?,
        None => app.service.append(&principal, batch).await?,
    };
    count_append(&app, &events, bytes);
    let event = events.into_iter().next().ok_or_else(|| ApiError::not_found("event", "appended"))?;
    let mut body = Vec::with_capacity(256);
    cairn_service::json::write_event(&mut body, &event, None);
    let mut response = json_response(StatusCode::CREATED, body, None);
    // Written out, not formatted: `format!` and parsing the text cost
    // about 1k instructions, per append.
    let mut location = Vec::with_capacity(36);
    location.extend_from_slice(b"/v1/events/");
    location.extend_from_slice(&event.id.encode());
    if let Ok(location) = axum::http::HeaderValue::from_maybe_shared(Bytes::from(location)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A chunked upload must end within this long (each pause also within the
/// body timeout).
const CHUNKED_BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3600);

/// `POST /v1/topics/{topic}/events?chunked=true`: the event is appended at
/// once (followers see it), then each piece of the body as it arrives;
/// answers when the body ends, with the event and its content's final
/// `hash` and `size`. A body that stops (the client gone, too slow, too
/// large) ends the content as aborted.
async fn append_chunked(
    app: &crate::server::App,
    principal: &cairn_service::Principal,
    event: NewEvent,
    body: Body,
) -> ApiResult<Response<Body>> {
    let mut chunked = app.service.append_chunked(principal, event).await?;
    let deadline = tokio::time::Instant::now() + CHUNKED_BODY_DEADLINE;
    if let Err(stopped) = crate::pump::pump(&mut chunked, body, app.config.body_timeout, deadline).await {
        chunked.abort(&stopped.reason()).await;
        return Err(match stopped {
            crate::pump::Stopped::Store(error) => error.into(),
            crate::pump::Stopped::Stalled => ApiError::BodyTimeout,
            crate::pump::Stopped::Broken => ApiError::invalid("body", "the request body failed"),
        });
    }
    let done = chunked.finish().await?;
    let mut json = serde_json::to_value(EventJson::from_event(&done.event, None)).unwrap_or_default();
    json["hash"] = done.hash.sri().into();
    json["size"] = done.size.into();
    let mut response = json_response(StatusCode::CREATED, to_json(&json), None);
    if let Ok(location) = format!("/v1/events/{}", done.event.id).parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /v1/events/{id}/content`: the event's payload as raw bytes; for
/// chunked content, each piece as it is written, to the end.
pub(crate) async fn content(
    AxumState(app): State,
    Who(principal): Who,
    Segment(id): Segment,
    params: Params,
) -> ApiResult<Response<Body>> {
    let id = EventId::parse(&id)?;
    params.finish()?;
    let mut read = app.service.chunked_read(&principal, id).await?;
    let first = read.next().await?;
    let stream = futures_util::stream::unfold((first, Some(read)), |(first, read)| async move {
        if let Some(first) = first {
            return Some((Ok::<_, std::io::Error>(bytes::Bytes::from(first)), (None, read)));
        }
        let mut read = read?;
        match read.next().await {
            Ok(Some(piece)) => Some((Ok(bytes::Bytes::from(piece)), (None, Some(read)))),
            Ok(None) => None,
            // Cut short: the client sees a broken body, not a whole one.
            Err(error) => Some((Err(std::io::Error::other(error.to_string())), (None, None))),
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/octet-stream"));
    Ok(response)
}

/// `POST /v1/batch`: NDJSON (`application/x-ndjson`) or a JSON array of
/// `{"topic","type"?,"meta"?,"content"|"content_base64"?,"ttl"?,"expect"?}`,
/// committed atomically. The reply is the stored events as a JSON array.
pub(crate) async fn batch(
    AxumState(app): State,
    Who(principal): Who,
    mut params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    let key = idempotency_key(&mut params, &headers)?;
    params.finish()?;
    let kind = header_text(&headers, &super::CONTENT_TYPE)?
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ndjson = match kind.as_str() {
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/jsonlines" => true,
        "application/json" => false,
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "a batch is application/json (an array) or application/x-ndjson, not {other:?}"
            )));
        }
    };
    // Refused before the body is read, for a caller who may write nothing.
    if !principal.writes_something() {
        return Err(ApiError::Service(cairn_service::ServiceError::forbidden(format!(
            "user {} may not write anything",
            principal.user_name().unwrap_or_default()
        ))));
    }
    let body = read_body(&app, &headers, body, "batch", BATCH_BODY_BYTES_MAX).await?;
    let events = parse_batch(&body, ndjson)?;
    let bytes = events.iter().map(|event| event.content.as_ref().map_or(0, String::len) as u64).sum();
    let batch = cairn_service::json::batch_from_json(events, None, key)?;
    let events = app.service.append(&principal, batch).await?;
    count_append(&app, &events, bytes);
    Ok(json_response(StatusCode::CREATED, events_json(&events), None))
}

/// Appended events as the JSON array a response carries, written straight
/// into the body (`json::write_event`, the bytes serde writes for
/// `EventJson`), not through an `EventJson` per event, which formats the id
/// and the hash into strings of their own. (A single append's answer is one
/// `write_event`.)
fn events_json(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.len() * 160 + 2);
    out.push(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        cairn_service::json::write_event(&mut out, event, None);
    }
    out.push(b']');
    out
}

/// Parses a batch body, stopping at the first event over the batch limit
/// (parsing it all first would build millions of events from a large
/// body of tiny ones).
fn parse_batch(body: &Bytes, ndjson: bool) -> ApiResult<Vec<BatchEventJson>> {
    let too_many = || ApiError::invalid("body", format!("a batch holds at most {BATCH_EVENTS_MAX} events"));
    if !ndjson {
        return serde_json::from_slice::<BoundedBatch>(body).map(|batch| batch.0).map_err(|error| {
            if error.to_string().starts_with(TOO_MANY) {
                too_many()
            } else {
                ApiError::invalid("body", format!("not a JSON array of batch events: {error}"))
            }
        });
    }
    let mut events = Vec::new();
    for (idx, line) in body.split(|&byte| byte == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if events.len() == BATCH_EVENTS_MAX {
            return Err(too_many());
        }
        events.push(
            serde_json::from_slice(line)
                .map_err(|error| ApiError::invalid("body", format!("line {}: not a batch event: {error}", idx + 1)))?,
        );
    }
    Ok(events)
}

const TOO_MANY: &str = "too many events";

/// A JSON array of batch events, refused once it holds more than a batch may.
struct BoundedBatch(Vec<BatchEventJson>);

impl<'de> serde::Deserialize<'de> for BoundedBatch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Events;
        impl<'de> serde::de::Visitor<'de> for Events {
            type Value = BoundedBatch;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of batch events")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<BoundedBatch, A::Error> {
                let mut events = Vec::new();
                while let Some(event) = seq.next_element()? {
                    if events.len() == BATCH_EVENTS_MAX {
                        return Err(serde::de::Error::custom(TOO_MANY));
                    }
                    events.push(event);
                }
                Ok(BoundedBatch(events))
            }
        }
        deserializer.deserialize_seq(Events)
    }
}

fn count_append(app: &Arc<App>, events: &[Event], bytes: u64) {
    app.metrics.appends.fetch_add(1, Relaxed);
    app.metrics.appended_events.fetch_add(events.len() as u64, Relaxed);
    app.metrics.appended_bytes.fetch_add(bytes, Relaxed);
}

/// The append options' headers (named once, see `SEC_FETCH_MODE`).
static CAIRN_TYPE: HeaderName = HeaderName::from_static("cairn-type");
static CAIRN_META: HeaderName = HeaderName::from_static("cairn-meta");
static CAIRN_TTL: HeaderName = HeaderName::from_static("cairn-ttl");
static CAIRN_EXPECT: HeaderName = HeaderName::from_static("cairn-expect");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// An append option from its query parameter or its header, not both.
fn option(
    params: &mut Params,
    headers: &HeaderMap,
    param: &'static str,
    header_name: &'static HeaderName,
) -> ApiResult<Option<String>> {
    let from_param = params.take(param)?;
    let from_header = header_text(headers, header_name)?.map(str::to_owned);
    match (from_param, from_header) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            param,
            format!("give it as the {header_name} header or the {param} parameter, not both"),
        )),
        (value, None) | (None, value) => Ok(value),
    }
}

fn idempotency_key(params: &mut Params, headers: &HeaderMap) -> ApiResult<Option<String>> {
    let key = option(params, headers, "key", &IDEMPOTENCY_KEY)?;
    if let Some(key) = &key {
        cairn_service::check_idempotency_key(key)?;
    }
    Ok(key)
}

/// `GET /v1/events?topic=<pattern>&…`: read (and follow) events.
pub(crate) async fn read(
    AxumState(app): State,
    Who(principal): Who,
    mut params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    let pattern = params.take("topic")?.map(|text| Pattern::parse(&text)).transpose()?.unwrap_or_else(Pattern::all);
    let spec = ReadSpec::parse(&mut params, &headers, pattern)?;
    params.finish()?;
    stream::respond(&app, &principal, &headers, spec).await
}

/// `GET /v1/topics/{topic}/events`: read (and follow) one topic.
pub(crate) async fn read_topic(
    AxumState(app): State,
    Who(principal): Who,
    Segment(topic): Segment,
    mut params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    let spec = ReadSpec::parse(&mut params, &headers, Pattern::Exact(Topic::new(&topic)?))?;
    params.finish()?;
    stream::respond(&app, &principal, &headers, spec).await
}

/// `GET /v1/events/{id}`: one event (`content=true` includes the payload);
/// 404 for an event the caller may not read, as for one that does not exist.
pub(crate) async fn get_event(
    AxumState(app): State,
    Who(principal): Who,
    Segment(id): Segment,
    mut params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    let id = EventId::parse(&id)?;
    let content = params.flag("content")?;
    params.finish()?;
    let item = app.service.get(&principal, id, content).await?;
    let etag = format!("\"{id}{}\"", if content { "+content" } else { "" });
    if not_modified(&headers, &etag) {
        return Ok(not_modified_response(&etag));
    }
    let json = to_json(&EventJson::from_event(&item.event, item.content.as_deref()));
    Ok(json_response(StatusCode::OK, json, Some(&etag)))
}

/// `DELETE /v1/events/{id}`: removes one event (others keep their seqs).
pub(crate) async fn delete_event(
    AxumState(app): State,
    Who(principal): Who,
    Segment(id): Segment,
) -> ApiResult<Response<Body>> {
    let id = EventId::parse(&id)?;
    app.service.remove(&principal, id).await?;
    Ok(super::no_content())
}

/// Most topics one page of `GET /v1/topics` may ask for.
const TOPICS_PAGE_MAX: u64 = 10_000;

/// `GET /v1/topics`: the readable topics by name with their count, seqs
/// and last id; `pattern` (a topic pattern) and `contains` (a substring)
/// filter, `after` (a name) and `limit` page.
pub(crate) async fn topics(
    AxumState(app): State,
    Who(principal): Who,
    uri: axum::http::Uri,
    mut params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    let pattern = params.take("pattern")?.map(|text| Pattern::parse(&text)).transpose()?;
    let contains = params.take("contains")?;
    let after = params.take("after")?;
    let limit = params.number("limit")?;
    params.finish()?;
    if limit.is_some_and(|limit| limit == 0 || limit > TOPICS_PAGE_MAX) {
        return Err(ApiError::invalid("limit", format!("must be from 1 to {TOPICS_PAGE_MAX}")));
    }
    let etag = super::scoped_etag(&app, &principal, uri.query().unwrap_or(""));
    let mut topics = app.service.topics(&principal).await?;
    if not_modified(&headers, &etag) {
        return Ok(not_modified_response(&etag));
    }
    topics.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    let selected = topics
        .iter()
        .filter(|info| after.as_deref().is_none_or(|after| info.topic.as_str() > after))
        .filter(|info| pattern.as_ref().is_none_or(|pattern| pattern.matches(info.topic.as_str())))
        .filter(|info| contains.as_deref().is_none_or(|part| info.topic.as_str().contains(part)))
        .take(limit.map_or(usize::MAX, |limit| limit as usize))
        .collect::<Vec<_>>();
    Ok(json_response(StatusCode::OK, to_json(&selected), Some(&etag)))
}

/// `GET /v1/topics/{topic}`: a topic's head (count, first and last seq,
/// last id), with the ETag that `If-Match` on an append takes.
pub(crate) async fn topic(
    AxumState(app): State,
    Who(principal): Who,
    Segment(topic): Segment,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    let topic = Topic::new(&topic)?;
    let info = app.service.head(&principal, &topic).await?;
    let etag = topic_etag(info.as_ref());
    let Some(info) = info else {
        let mut response = ApiError::not_found("topic", &topic).into_response();
        if let Ok(value) = etag.parse() {
            response.headers_mut().insert(header::ETAG, value);
        }
        return Ok(response);
    };
    if not_modified(&headers, &etag) {
        return Ok(not_modified_response(&etag));
    }
    Ok(json_response(StatusCode::OK, to_json(&info), Some(&etag)))
}

use axum::response::IntoResponse as _;
