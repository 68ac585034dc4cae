//! Compatibility routes for clients of the minimal Haskell backend (seed
//! 004): `/events`, `/storage`, `/info`. Thin views of the same store: the
//! events live on one topic (`--compat-topic`, default `events`), an event's
//! `eventType` is its type, its `body` (any JSON) is its payload. A
//! client's `eventId` is kept in the event's meta (`{"eventId": …}`), is
//! the `eventId` the routes show for it, names it in `GET /events/{id}`
//! and in `from`/`to`, and is its idempotency key (a retry returns the
//! original event within the store's idempotency window). Errors are
//! `{"status":"error","errorMessage":…}` with the native statuses; `handle`
//! rewrites native errors on these paths, so every error takes this form.

use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use cairn_store::{Batch, Event, EventId, Hash, NewEvent, Pattern, Query};
use serde_json::value::RawValue;

use super::events::{if_match, precondition, topic_etag};
use super::{Params, Segment, State, blocking, json_response, not_modified, not_modified_response, read_body, to_json};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::server::App;

/// The compatibility form of an error.
pub(crate) fn error_response(error: ApiError) -> Response<Body> {
    let body = serde_json::json!({ "status": "error", "errorMessage": error.message });
    let mut response = json_response(error.status, serde_json::to_vec(&body).unwrap_or_default(), None);
    if error.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"cairn\""));
    }
    response
}

/// Rewrites a native error response (`{"error":{"code","message"}}`) into
/// the compatibility form.
pub(crate) async fn rewrite_error(response: Response<Body>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let bytes = http_body_util::BodyExt::collect(body).await.map(|collected| collected.to_bytes()).unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|json| json.pointer("/error/message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let mut response = error_response(ApiError::new(parts.status, "compat", message));
    for name in [header::WWW_AUTHENTICATE, header::ETAG] {
        if let Some(value) = parts.headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

/// An event in the compatibility form.
#[derive(serde::Serialize)]
struct CompatEvent<'a> {
    #[serde(rename = "eventId")]
    event_id: String,
    #[serde(rename = "eventType")]
    event_type: Option<&'a str>,
    body: Box<RawValue>,
    #[serde(rename = "createdBy")]
    created_by: &'a str,
    #[serde(rename = "createdAt")]
    created_at: String,
}

fn compat_event<'a>(event: &'a Event, payload: Option<&[u8]>) -> CompatEvent<'a> {
    // The body is the payload when it is JSON; otherwise a JSON string.
    let body = payload
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(|text| RawValue::from_string(text.to_owned()).ok())
        .or_else(|| {
            let text = payload.map(String::from_utf8_lossy).unwrap_or_default();
            RawValue::from_string(serde_json::Value::String(text.into_owned()).to_string()).ok()
        })
        .unwrap_or_else(|| RawValue::from_string("null".to_owned()).expect("null is JSON"));
    CompatEvent {
        event_id: client_id(event).unwrap_or_else(|| event.id.to_string()),
        event_type: event.kind.as_deref(),
        body,
        created_by: event.user.as_deref().unwrap_or("local"),
        created_at: rfc3339(event.timestamp_ms()),
    }
}

/// The `eventId` a client gave the event, kept in its meta.
fn client_id(event: &Event) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "eventId")]
        event_id: Option<String>,
    }
    let meta = event.meta.as_deref()?;
    serde_json::from_str::<Meta>(meta).ok()?.event_id
}

/// The event named `id` on the compatibility topic: cairn's own id, or
/// else an `eventId` a client gave (found by scanning the topic from its
/// newest event; client ids are the rarer case).
fn find(store: &cairn_store::Store, topic: &cairn_store::Topic, id: &str) -> ApiResult<Event> {
    if let Ok(cairn_id) = EventId::parse(id)
        && let Some(event) = store.get(cairn_id)?.filter(|event| event.topic == *topic)
    {
        return Ok(event);
    }
    let query = Query { reverse: true, ..Query::new(Pattern::Exact(topic.clone())) };
    for event in store.read(&query)? {
        let event = event?;
        if event.meta.is_some() && client_id(&event).as_deref() == Some(id) {
            return Ok(event);
        }
    }
    Err(ApiError::not_found("event", id))
}

/// `PUT`/`POST /events`: `{"eventType","body","eventId"?}`.
pub(crate) async fn append(
    AxumState(app): State,
    principal: Principal,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NewCompatEvent {
        #[serde(rename = "eventType")]
        event_type: String,
        body: Box<RawValue>,
        #[serde(rename = "eventId", default)]
        event_id: Option<String>,
    }
    let topic = app.config.compat_topic.clone();
    principal.check_write(&topic)?;
    let max = app.store.options().payload_bytes_max + 64 * 1024;
    let bytes = read_body(&headers, body, "event", max).await?;
    let new: NewCompatEvent = serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::invalid("body", format!(r#"expected {{"eventType": "…", "body": …, "eventId"?: "…"}}: {error}"#))
    })?;
    if let Some(key) = &new.event_id {
        cairn_store::check_idempotency_key(key)?;
    }
    let expect = if_match(&headers)?;
    let meta = new.event_id.as_ref().map(|id| serde_json::json!({ "eventId": id }).to_string());
    let event = NewEvent {
        topic: Some(topic),
        kind: Some(new.event_type),
        meta,
        payload: Some(new.body.get().as_bytes().to_vec()),
        user: principal.user_name().map(str::to_owned),
        ..NewEvent::default()
    };
    let mut batch = Batch::single(event, expect.unwrap_or_default());
    batch.idempotency_key = new.event_id;
    let events = app.store.append_batch_async(batch).await.map_err(|error| precondition(error, expect.is_some()))?;
    let event = events.first().ok_or_else(|| ApiError::internal("append returned no event"))?;
    let payload = event.inline_payload().map(<[u8]>::to_vec);
    let payload = match payload {
        Some(bytes) => Some(bytes),
        None => {
            let (store, event) = (app.store.clone(), event.clone());
            tokio::task::spawn_blocking(move || store.content(&event))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))??
        }
    };
    Ok(json_response(StatusCode::CREATED, to_json(&compat_event(event, payload.as_deref()))?, None))
}

async fn compat_etag(app: &std::sync::Arc<App>) -> ApiResult<String> {
    let topic = app.config.compat_topic.clone();
    let head = blocking(app, move |store| Ok(store.head(&topic)?)).await?;
    Ok(topic_etag(head.map(|info| info.last_id)))
}

/// `HEAD /events`: the ETag of the newest event (`If-None-Match` → 304).
pub(crate) async fn head(
    AxumState(app): State,
    principal: Principal,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    principal.check_read(&Pattern::Exact(app.config.compat_topic.clone()))?;
    let etag = compat_etag(&app).await?;
    if not_modified(&headers, &etag) {
        return Ok(not_modified_response(&etag));
    }
    let mut response = Response::new(Body::empty());
    response
        .headers_mut()
        .insert(header::ETAG, HeaderValue::from_str(&etag).map_err(|e| ApiError::internal(e.to_string()))?);
    Ok(response)
}

/// `GET /events?from=<id>&to=<id>`: a JSON array of events, both ends
/// inclusive, oldest first.
pub(crate) async fn list(
    AxumState(app): State,
    principal: Principal,
    mut params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    let from = params.take("from")?;
    let to = params.take("to")?;
    params.finish()?;
    let pattern = Pattern::Exact(app.config.compat_topic.clone());
    principal.check_read(&pattern)?;
    let topic = app.config.compat_topic.clone();
    let (from, to) = blocking(&app, move |store| {
        let resolve = |id: Option<String>| id.map(|id| find(store, &topic, &id).map(|event| event.id)).transpose();
        Ok((resolve(from)?, resolve(to)?))
    })
    .await?;
    let etag = compat_etag(&app).await?;
    if not_modified(&headers, &etag) {
        return Ok(not_modified_response(&etag));
    }
    let after = from.and_then(|id| id.to_u128().checked_sub(1)).map(EventId::from_u128);
    let query = Query { after, ..Query::new(pattern) };
    let events = blocking(&app, move |store| Ok(store.read(&query)?)).await?;
    let store = app.store.clone();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::task::spawn_blocking(move || {
        let mut buf = b"[".to_vec();
        let mut first = true;
        for event in events {
            let item = event.map_err(ApiError::from).and_then(|event| {
                if to.is_some_and(|to| event.id > to) {
                    return Ok(None);
                }
                let payload = store.content(&event)?;
                Ok(Some(to_json(&compat_event(&event, payload.as_deref()))?))
            });
            match item {
                Ok(Some(json)) => {
                    if !std::mem::take(&mut first) {
                        buf.push(b',');
                    }
                    buf.extend_from_slice(&json);
                }
                Ok(None) => break,
                Err(error) => {
                    // The array stays unterminated: a client sees invalid
                    // JSON rather than a silently short list.
                    tracing::error!("compat read failed mid-stream: {error}");
                    let _ = sender.blocking_send(Bytes::from(buf));
                    return;
                }
            }
            if buf.len() >= 64 * 1024 && sender.blocking_send(Bytes::from(std::mem::take(&mut buf))).is_err() {
                return;
            }
        }
        buf.push(b']');
        let _ = sender.blocking_send(Bytes::from(buf));
    });
    let mut response = Response::new(super::stream::channel_body(receiver));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert(header::ETAG, HeaderValue::from_str(&etag).map_err(|e| ApiError::internal(e.to_string()))?);
    Ok(response)
}

/// `GET /events/{id}`: one event of the compatibility topic.
pub(crate) async fn get_event(
    AxumState(app): State,
    principal: Principal,
    Segment(id): Segment,
    params: Params,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    let topic = app.config.compat_topic.clone();
    principal.check_read(&Pattern::Exact(topic.clone()))?;
    let (event, payload) = blocking(&app, move |store| {
        let event = find(store, &topic, &id)?;
        let payload = store.content(&event)?;
        Ok((event, payload))
    })
    .await?;
    let etag = format!("\"{}\"", event.id);
    Ok(json_response(StatusCode::OK, to_json(&compat_event(&event, payload.as_deref()))?, Some(&etag)))
}

/// `PUT /storage/`: stores the body; `{"status":"ok","hash":"<hex>","url"}`.
pub(crate) async fn storage_put(
    AxumState(app): State,
    principal: Principal,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    super::cas::check_any_write(&principal)?;
    let bytes = read_body(&headers, body, "content", app.store.options().payload_bytes_max).await?;
    let hash = blocking(&app, move |store| Ok(store.cas_put(&bytes)?)).await?;
    let json = serde_json::json!({ "status": "ok", "hash": hash.hex(), "url": format!("/storage/{}", hash.hex()) });
    Ok(json_response(StatusCode::OK, to_json(&json)?, None))
}

/// `DELETE /storage/{hash}`: `{"status":"ok"}`; 409 while an event uses it.
pub(crate) async fn storage_delete(
    AxumState(app): State,
    principal: Principal,
    Segment(hash): Segment,
    params: Params,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    super::cas::check_any_write(&principal)?;
    let hash = Hash::parse(&hash)?;
    blocking(&app, move |store| super::cas::delete_content(store, &hash)).await?;
    Ok(json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec(), None))
}

/// `2026-11-28T09:35:16.123Z` from Unix milliseconds.
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(super::rfc3339(1_795_858_516_123), "2026-11-28T09:35:16.123Z");
    }
}
