//! Events and topics: append (one, or an atomic batch), read and follow,
//! get and delete by id, the topic list and a topic's head.
//!
//! Append options come as headers or query parameters (not both):
//! `Cairn-Type`/`type`, `Cairn-Meta`/`meta`, `Cairn-Expect`/`expect`,
//! `Cairn-Ttl`/`ttl`, `Idempotency-Key`/`key`. `If-Match` takes a topic's
//! ETag (`"<last id>"`, or `"empty"`): the append fails with 412 if the
//! topic moved since.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Response, StatusCode, header};
use cairn_store::json::{BatchEventJson, EventJson};
use cairn_store::{Batch, Event, EventId, Expect, NewEvent, Pattern, StoreError, Topic, Ttl};

use super::stream::{self, ReadSpec};
use super::{
    Params, Segment, State, blocking, header_text, json_response, not_modified, not_modified_response, read_body,
    to_json,
};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::server::App;

/// The most bytes a batch request body may have (events, JSON, base64).
const BATCH_BODY_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// `POST /v1/topics/{topic}/events`: the body is the payload (empty: none).
pub(crate) async fn append(
    AxumState(app): State,
    principal: Principal,
    Segment(topic): Segment,
    mut params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    let topic = Topic::new(&topic)?;
    topic.check_user_writable()?;
    principal.check_write(&topic)?;
    let kind = option(&mut params, &headers, "type", "cairn-type")?;
    let meta =
        option(&mut params, &headers, "meta", "cairn-meta")?.map(|meta| cairn_store::check_meta(&meta)).transpose()?;
    let ttl =
        option(&mut params, &headers, "ttl", "cairn-ttl")?.map(|ttl| Ttl::parse(&ttl)).transpose()?.unwrap_or_default();
    let key = idempotency_key(&mut params, &headers)?;
    let expect =
        option(&mut params, &headers, "expect", "cairn-expect")?.map(|text| Expect::parse(&text)).transpose()?;
    params.finish()?;
    let if_match = if_match(&headers)?;
    let expect = match (expect, if_match) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("If-Match", "give If-Match or expect, not both")),
        (Some(expect), None) | (None, Some(expect)) => expect,
        (None, None) => Expect::Any,
    };
    let payload = read_body(&headers, body, "payload", app.store.options().payload_bytes_max).await?;
    let bytes = payload.len() as u64;
    let event = NewEvent {
        topic: Some(topic),
        kind,
        meta,
        payload: (!payload.is_empty()).then(|| payload.to_vec()),
        ttl,
        user: principal.user_name().map(str::to_owned),
    };
    let mut batch = Batch::single(event, expect);
    batch.idempotency_key = key;
    let events = app.store.append_batch_async(batch).await.map_err(|error| precondition(error, if_match.is_some()))?;
    count_append(&app, &events, bytes);
    let event = events.into_iter().next().ok_or_else(|| ApiError::internal("append returned no event"))?;
    let mut response = json_response(StatusCode::CREATED, to_json(&EventJson::from_event(&event, None))?, None);
    if let Ok(location) = format!("/v1/events/{}", event.id).parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `POST /v1/batch`: NDJSON (`application/x-ndjson`) or a JSON array of
/// `{"topic","type"?,"meta"?,"content"|"content_base64"?,"ttl"?,"expect"?}`,
/// committed atomically. The reply is the stored events as a JSON array.
pub(crate) async fn batch(
    AxumState(app): State,
    principal: Principal,
    mut params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    let key = idempotency_key(&mut params, &headers)?;
    params.finish()?;
    let kind = header_text(&headers, "content-type")?
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
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("a batch is application/json (an array) or application/x-ndjson, not {other:?}"),
            ));
        }
    };
    let body = read_body(&headers, body, "batch", BATCH_BODY_BYTES_MAX).await?;
    let events = parse_batch(&body, ndjson)?;
    let bytes = events.iter().map(|event| event.content.as_ref().map_or(0, String::len) as u64).sum();
    let batch = cairn_store::json::batch_from_json(events, principal.user_name(), key)?;
    for event in &batch.events {
        let topic = event.topic.as_ref().ok_or_else(|| ApiError::internal("batch event without topic"))?;
        topic.check_user_writable()?;
        principal.check_write(topic)?;
    }
    let events = app.store.append_batch_async(batch).await?;
    count_append(&app, &events, bytes);
    let json: Vec<EventJson> = events.iter().map(|event| EventJson::from_event(event, None)).collect();
    Ok(json_response(StatusCode::CREATED, to_json(&json)?, None))
}

fn parse_batch(body: &Bytes, ndjson: bool) -> ApiResult<Vec<BatchEventJson>> {
    if !ndjson {
        return serde_json::from_slice(body)
            .map_err(|error| ApiError::invalid("body", format!("not a JSON array of batch events: {error}")));
    }
    let mut events = Vec::new();
    for (idx, line) in body.split(|&byte| byte == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        events.push(
            serde_json::from_slice(line)
                .map_err(|error| ApiError::invalid("body", format!("line {}: not a batch event: {error}", idx + 1)))?,
        );
    }
    Ok(events)
}

fn count_append(app: &Arc<App>, events: &[Event], bytes: u64) {
    app.metrics.appends.fetch_add(1, Relaxed);
    app.metrics.appended_events.fetch_add(events.len() as u64, Relaxed);
    app.metrics.appended_bytes.fetch_add(bytes, Relaxed);
}

/// An append option from its query parameter or its header, not both.
fn option(params: &mut Params, headers: &HeaderMap, param: &str, header_name: &str) -> ApiResult<Option<String>> {
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
    let key = option(params, headers, "key", "idempotency-key")?;
    if let Some(key) = &key {
        cairn_store::check_idempotency_key(key)?;
    }
    Ok(key)
}

/// `If-Match` as an expectation: `"<id>"` is "unchanged since that event",
/// `"empty"` is "no event yet".
pub(crate) fn if_match(headers: &HeaderMap) -> ApiResult<Option<Expect>> {
    let Some(value) = header_text(headers, "if-match")? else { return Ok(None) };
    let tag = value.trim().trim_start_matches("W/").trim_matches('"');
    if tag == "empty" {
        return Ok(Some(Expect::Empty));
    }
    EventId::parse(tag).map(|id| Some(Expect::UnchangedSince(id))).map_err(|_| {
        ApiError::invalid("If-Match", format!("{value:?} is not a topic ETag (\"<event id>\" or \"empty\")"))
    })
}

/// A failed `If-Match` is 412 (a failed `expect` stays 409).
pub(crate) fn precondition(error: StoreError, from_if_match: bool) -> ApiError {
    let mut error = ApiError::from(error);
    if from_if_match && error.code == "expectation_failed" {
        error.status = StatusCode::PRECONDITION_FAILED;
        error.code = "precondition_failed";
    }
    error
}

/// A topic's ETag: its last event id, or `"empty"`.
pub(crate) fn topic_etag(last_id: Option<EventId>) -> String {
    match last_id {
        Some(id) => format!("\"{id}\""),
        None => "\"empty\"".to_owned(),
    }
}

/// `GET /v1/events?topic=<pattern>&…`: read (and follow) events.
pub(crate) async fn read(
    AxumState(app): State,
    principal: Principal,
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
    principal: Principal,
    Segment(topic): Segment,
    mut params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    let spec = ReadSpec::parse(&mut params, &headers, Pattern::Exact(Topic::new(&topic)?))?;
    params.finish()?;
    stream::respond(&app, &principal, &headers, spec).await
}

/// `GET /v1/events/{id}`: one event (`content=true` includes the payload).
pub(crate) async fn get_event(
    AxumState(app): State,
    principal: Principal,
    Segment(id): Segment,
    mut params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    let id = EventId::parse(&id)?;
    let content = params.flag("content")?;
    params.finish()?;
    let etag = format!("\"{id}{}\"", if content { "+content" } else { "" });
    let (event, payload) = blocking(&app, move |store| {
        let event = store.get(id)?.ok_or_else(|| ApiError::not_found("event", id))?;
        let payload = if content { store.content(&event)? } else { None };
        Ok((event, payload))
    })
    .await?;
    principal.check_read(&Pattern::Exact(event.topic.clone()))?;
    if not_modified(&headers, &etag) {
        return Ok(not_modified_response(&etag));
    }
    Ok(json_response(StatusCode::OK, to_json(&EventJson::from_event(&event, payload.as_deref()))?, Some(&etag)))
}

/// `DELETE /v1/events/{id}`: removes one event (others keep their seqs).
pub(crate) async fn delete_event(
    AxumState(app): State,
    principal: Principal,
    Segment(id): Segment,
) -> ApiResult<Response<Body>> {
    let id = EventId::parse(&id)?;
    blocking(&app, move |store| {
        let event = store.get(id)?.ok_or_else(|| ApiError::not_found("event", id))?;
        principal.check_write(&event.topic)?;
        Ok(store.remove(id)?)
    })
    .await?;
    Ok(super::no_content())
}

/// `GET /v1/topics`: every readable topic with its count, seqs and last id.
pub(crate) async fn topics(
    AxumState(app): State,
    principal: Principal,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    let etag = format!("W/\"{}\"", app.store.version());
    if not_modified(&headers, &etag) {
        return Ok(not_modified_response(&etag));
    }
    let topics = blocking(&app, |store| Ok(store.topics()?)).await?;
    let visible: Vec<_> =
        topics.into_iter().filter(|info| principal.check_read(&Pattern::Exact(info.topic.clone())).is_ok()).collect();
    Ok(json_response(StatusCode::OK, to_json(&visible)?, Some(&etag)))
}

/// `GET /v1/topics/{topic}`: a topic's head (count, first and last seq,
/// last id), with the ETag that `If-Match` on an append takes.
pub(crate) async fn topic(
    AxumState(app): State,
    principal: Principal,
    Segment(topic): Segment,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    let topic = Topic::new(&topic)?;
    principal.check_read(&Pattern::Exact(topic.clone()))?;
    let lookup = topic.clone();
    let info = blocking(&app, move |store| Ok(store.head(&lookup)?)).await?;
    let etag = topic_etag(info.as_ref().map(|info| info.last_id));
    let Some(info) = info else {
        let mut error = ApiError::not_found("topic", &topic);
        error.details = Some(serde_json::json!({ "etag": etag }));
        return Err(error);
    };
    if not_modified(&headers, &etag) {
        return Ok(not_modified_response(&etag));
    }
    Ok(json_response(StatusCode::OK, to_json(&info)?, Some(&etag)))
}
