//! Durable consumers (cursors): named positions (the last acknowledged id)
//! and reads that resume after them. A cursor belongs to its owner: names
//! are per owner, and only the socket and admins see or act on another's
//! (with `?owner=user:<name>`).

use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use cairn_service::{Cursor, EventId, Pattern, SNAPSHOT_BYTES_MAX};

use super::stream::{self, ReadSpec};
use super::{ApiError, ApiResult, Params, Segment, State, Who, json_response, parse_json, read_body, to_json};

fn position(cursor: &Cursor) -> serde_json::Value {
    serde_json::json!({ "name": cursor.name, "owner": cursor.owner, "acked": cursor.acked })
}

/// A cursor with what it knows of its snapshot (`cairn consumer show`
/// prints the same).
fn position_with(cursor: &Cursor, snapshot: Option<(EventId, u64)>) -> serde_json::Value {
    let mut json = position(cursor);
    if let Some((at, bytes)) = snapshot {
        json["snapshot"] = serde_json::json!({ "at": at, "bytes": bytes });
    }
    json
}

/// `GET /v1/consumers`: the caller's consumers (every one, for the socket
/// and admins).
pub(crate) async fn list(AxumState(app): State, Who(principal): Who, params: Params) -> ApiResult<Response<Body>> {
    params.finish()?;
    let cursors = app.service.consumers(&principal).await?;
    let json: Vec<_> = cursors.iter().map(position).collect();
    Ok(json_response(StatusCode::OK, to_json(&json), None))
}

/// `GET /v1/consumers/{name}`: its position.
pub(crate) async fn show(
    AxumState(app): State,
    Who(principal): Who,
    Segment(name): Segment,
    mut params: Params,
) -> ApiResult<Response<Body>> {
    let owner = params.take("owner")?;
    params.finish()?;
    let cursor = app.service.consumer(&principal, owner.as_deref(), &name).await?;
    let cursor = cursor.ok_or_else(|| ApiError::not_found("consumer", &name))?;
    let snapshot = app.service.consumer_snapshot_info(&principal, owner.as_deref(), &name).await?;
    Ok(json_response(StatusCode::OK, to_json(&position_with(&cursor, snapshot)), None))
}

/// `PUT /v1/consumers/{name}/snapshot?id=<event id>`: stores the body as
/// the consumer's snapshot made at `id` and moves the consumer to `id`, in
/// one atomic durable step.
pub(crate) async fn snapshot_put(
    AxumState(app): State,
    Who(principal): Who,
    Segment(name): Segment,
    mut params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    let id =
        params.take("id")?.ok_or_else(|| ApiError::invalid("id", "missing: the event id the snapshot was made at"))?;
    let owner = params.take("owner")?;
    params.finish()?;
    let id = EventId::parse(&id)?;
    let bytes = read_body(&app, &headers, body, "snapshot", SNAPSHOT_BYTES_MAX as u64).await?;
    let cursor = app.service.consumer_snapshot_put(&principal, owner.as_deref(), &name, id, &bytes).await?;
    Ok(json_response(StatusCode::OK, to_json(&position_with(&cursor, Some((id, bytes.len() as u64)))), None))
}

/// `GET /v1/consumers/{name}/snapshot`: the snapshot's bytes, with the id
/// it was made at in `Cairn-Snapshot-At`.
pub(crate) async fn snapshot_get(
    AxumState(app): State,
    Who(principal): Who,
    Segment(name): Segment,
    mut params: Params,
) -> ApiResult<Response<Body>> {
    let owner = params.take("owner")?;
    params.finish()?;
    let snapshot = app.service.consumer_snapshot(&principal, owner.as_deref(), &name).await?;
    let snapshot = snapshot.ok_or_else(|| ApiError::not_found("consumer snapshot", &name))?;
    let at = snapshot.at.to_string();
    let mut response = Response::new(Body::from(snapshot.bytes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("cairn-snapshot-at", HeaderValue::from_str(&at).expect("an id is a header value"));
    Ok(response)
}

/// `PUT /v1/consumers/{name}`: acknowledges everything up to an id, given as
/// `?id=` or a body `{"id": "…"}`; durable when the reply comes.
pub(crate) async fn ack(
    AxumState(app): State,
    Who(principal): Who,
    Segment(name): Segment,
    mut params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    let from_param = params.take("id")?;
    let owner = params.take("owner")?;
    params.finish()?;
    let body = read_body(&app, &headers, body, "body", 4096).await?;
    let id = match (from_param, body.is_empty()) {
        (Some(id), true) => id,
        (None, false) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Ack {
                id: String,
            }
            parse_json::<Ack>(&body, "{\"id\": \"<event id>\"}")?.id
        }
        (Some(_), false) => return Err(ApiError::invalid("id", "give it as ?id= or in the body, not both")),
        (None, true) => return Err(ApiError::invalid("id", "missing: give ?id=<event id> or a body {\"id\": \"…\"}")),
    };
    let id = EventId::parse(&id)?;
    let cursor = app.service.consumer_ack(&principal, owner.as_deref(), &name, id).await?;
    Ok(json_response(StatusCode::OK, to_json(&position(&cursor)), None))
}

/// `DELETE /v1/consumers/{name}`: deletes the caller's consumer.
pub(crate) async fn delete(
    AxumState(app): State,
    Who(principal): Who,
    Segment(name): Segment,
    mut params: Params,
) -> ApiResult<Response<Body>> {
    let owner = params.take("owner")?;
    params.finish()?;
    if !app.service.consumer_delete(&principal, owner.as_deref(), &name).await? {
        return Err(ApiError::not_found("consumer", name));
    }
    Ok(super::no_content())
}

/// `GET /v1/consumers/{name}/events?topic=…`: reads (or follows) after the
/// consumer's last ack; the same parameters as `/v1/events` except `after`.
pub(crate) async fn read(
    AxumState(app): State,
    Who(principal): Who,
    Segment(name): Segment,
    mut params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    let pattern = params.take("topic")?.map(|text| Pattern::parse(&text)).transpose()?.unwrap_or_else(Pattern::all);
    if params.take("after")?.is_some() {
        return Err(ApiError::invalid("after", "a consumer read starts after the consumer's last ack"));
    }
    let owner = params.take("owner")?;
    let cursor = app.service.consumer(&principal, owner.as_deref(), &name).await?;
    let mut spec = ReadSpec::parse(&mut params, &headers, pattern)?;
    params.finish()?;
    if spec.query.after.is_none() {
        spec.query.after = cursor.map(|cursor| cursor.acked);
    }
    stream::respond(&app, &principal, &headers, spec).await
}
