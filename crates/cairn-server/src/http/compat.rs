//! Compatibility routes for clients of the minimal Haskell backend (seed
//! 004): `/events`, `/storage`, `/info`. Thin views of the same service:
//! the events live on one topic (`--compat-topic`, default `events`), an
//! event's `eventType` is its type, its `body` (any JSON) is its payload. A
//! client's `eventId` is kept in the event's meta (`{"eventId": …}`), is
//! the `eventId` the routes show for it, names it in `GET /events/{id}`
//! and in `from`/`to`, and is its idempotency key (a retry returns the
//! original event within the store's idempotency window). Errors take the
//! form `{"status":"error","errorMessage":…}` with the native statuses
//! (rendered by `error.rs`, chosen by `handle` for these paths).

use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use cairn_service::{Batch, Event, EventId, Hash, Item, NewEvent, Pattern, Principal, Query, topic_etag};
use serde_json::value::RawValue;

use super::{
    ApiError, ApiResult, Params, Segment, State, Who, if_match, json_response, not_modified, not_modified_response,
    read_body, to_json,
};
use crate::server::App;

/// Events read per step of a listing.
const LIST_CHUNK_EVENTS: usize = 1024;

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
async fn find(app: &App, principal: &Principal, id: &str) -> ApiResult<Item> {
    let topic = &app.config.compat_topic;
    if let Ok(cairn_id) = EventId::parse(id) {
        match app.service.get(principal, cairn_id, true).await {
            Ok(item) if item.event.topic == *topic => return Ok(item),
            Ok(_) | Err(cairn_service::ServiceError::NotFound { .. }) => {}
            Err(error) => return Err(error.into()),
        }
    }
    let query = Query { reverse: true, ..Query::new(Pattern::Exact(topic.clone())) };
    let mut read = app.service.read(principal, query, false).await?;
    loop {
        let items = read.next(LIST_CHUNK_EVENTS).await?;
        if items.is_empty() {
            return Err(ApiError::not_found("event", id));
        }
        if let Some(item) =
            items.into_iter().find(|item| item.event.meta.is_some() && client_id(&item.event).as_deref() == Some(id))
        {
            let content = app.service.content(principal, &item.event).await?;
            return Ok(Item { content: content.map(cairn_service::InlineBytes::from), ..item });
        }
    }
}

/// `PUT`/`POST /events`: `{"eventType","body","eventId"?}`.
pub(crate) async fn append(
    AxumState(app): State,
    Who(principal): Who,
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
    let max = app.service.limits().payload_bytes_max + 64 * 1024;
    let bytes = read_body(&app, &headers, body, "event", max).await?;
    let new: NewCompatEvent = serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::invalid("body", format!(r#"expected {{"eventType": "…", "body": …, "eventId"?: "…"}}: {error}"#))
    })?;
    if let Some(key) = &new.event_id {
        cairn_service::check_idempotency_key(key)?;
    }
    let meta = new.event_id.as_ref().map(|id| serde_json::json!({ "eventId": id }).to_string());
    let event = NewEvent {
        topic: Some(app.config.compat_topic.clone()),
        kind: Some(new.event_type),
        meta,
        payload: Some(new.body.get().as_bytes().to_vec()),
        ..NewEvent::default()
    };
    let mut batch = Batch::single(event, cairn_service::Expect::Any);
    batch.idempotency_key = new.event_id;
    let events = match if_match(&headers)? {
        Some(condition) => app.service.append_if_match(&principal, batch, &condition).await?,
        None => app.service.append(&principal, batch).await?,
    };
    let event = events.first().ok_or_else(|| ApiError::not_found("event", "appended"))?;
    let payload = match event.inline_payload() {
        Some(bytes) => Some(bytes.to_vec()),
        None => app.service.content(&principal, event).await?,
    };
    Ok(json_response(StatusCode::CREATED, to_json(&compat_event(event, payload.as_deref())), None))
}

async fn compat_etag(app: &App, principal: &Principal) -> ApiResult<String> {
    let head = app.service.head(principal, &app.config.compat_topic).await?;
    Ok(topic_etag(head.as_ref()))
}

/// `HEAD /events`: the ETag of the newest event (`If-None-Match` → 304).
pub(crate) async fn head(
    AxumState(app): State,
    Who(principal): Who,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    let etag = compat_etag(&app, &principal).await?;
    if not_modified(&headers, &etag) {
        return Ok(not_modified_response(&etag));
    }
    let mut response = Response::new(Body::empty());
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    Ok(response)
}

/// `GET /events?from=<id>&to=<id>`: a JSON array of events, both ends
/// inclusive, oldest first.
pub(crate) async fn list(
    AxumState(app): State,
    Who(principal): Who,
    mut params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    let from = params.take("from")?;
    let to = params.take("to")?;
    params.finish()?;
    let from = match from {
        Some(id) => Some(find(&app, &principal, &id).await?.event.id),
        None => None,
    };
    let to = match to {
        Some(id) => Some(find(&app, &principal, &id).await?.event.id),
        None => None,
    };
    let etag = compat_etag(&app, &principal).await?;
    if not_modified(&headers, &etag) {
        return Ok(not_modified_response(&etag));
    }
    let after = from.and_then(|id| id.to_u128().checked_sub(1)).map(EventId::from_u128);
    let query = Query { after, ..Query::new(Pattern::Exact(app.config.compat_topic.clone())) };
    let mut read = app.service.read(&principal, query, true).await?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut buf = b"[".to_vec();
        let mut first = true;
        'read: loop {
            let items = match read.next(LIST_CHUNK_EVENTS).await {
                Ok(items) if items.is_empty() => break,
                Ok(items) => items,
                Err(error) => {
                    // The array stays unterminated: a client sees invalid
                    // JSON rather than a silently short list.
                    tracing::error!("compat read failed mid-stream: {error}");
                    let _ = sender.send(Bytes::from(buf)).await;
                    return;
                }
            };
            for item in items {
                if to.is_some_and(|to| item.event.id > to) {
                    break 'read;
                }
                if !std::mem::take(&mut first) {
                    buf.push(b',');
                }
                buf.extend_from_slice(&to_json(&compat_event(&item.event, item.content.as_deref())));
                if buf.len() >= 64 * 1024 && sender.send(Bytes::from(std::mem::take(&mut buf))).await.is_err() {
                    return;
                }
            }
        }
        buf.push(b']');
        let _ = sender.send(Bytes::from(buf)).await;
    });
    let mut response = Response::new(super::stream::channel_body(receiver));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    Ok(response)
}

/// `GET /events/{id}`: one event of the compatibility topic.
pub(crate) async fn get_event(
    AxumState(app): State,
    Who(principal): Who,
    Segment(id): Segment,
    params: Params,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    let item = find(&app, &principal, &id).await?;
    let etag = format!("\"{}\"", item.event.id);
    Ok(json_response(StatusCode::OK, to_json(&compat_event(&item.event, item.content.as_deref())), Some(&etag)))
}

/// `PUT /storage/`: stores the body; `{"status":"ok","hash":"<hex>","url"}`.
pub(crate) async fn storage_put(
    AxumState(app): State,
    Who(principal): Who,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    let bytes = read_body(&app, &headers, body, "content", app.service.limits().payload_bytes_max).await?;
    let hash = app.service.cas_put(&principal, bytes.to_vec()).await?;
    let json = serde_json::json!({ "status": "ok", "hash": hash.hex(), "url": format!("/storage/{}", hash.hex()) });
    Ok(json_response(StatusCode::OK, to_json(&json), None))
}

/// `GET /storage/{hash}`: the bytes, as `/v1/cas/{hash}` serves them.
pub(crate) async fn storage_get(
    state: State,
    who: Who,
    segment: Segment,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    super::cas::get(state, who, segment, params, headers).await
}

/// `DELETE /storage/{hash}`: `{"status":"ok"}`; 409 while an event uses it.
pub(crate) async fn storage_delete(
    AxumState(app): State,
    Who(principal): Who,
    Segment(hash): Segment,
    params: Params,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    let hash = Hash::parse(&hash)?;
    app.service.cas_delete(&principal, &hash).await?;
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
