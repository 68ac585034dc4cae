//! Consumer groups over HTTP (the Redis protocol's XGROUP, XINFO, XPENDING,
//! XACK and XCLAIM, for the web console and any HTTP client): their lag,
//! pending entries per consumer and the oldest one's age, and the actions
//! ack, claim and set position. Entries are named by stream ids
//! (`<ms>-<seq>`), as in the Redis protocol; group and consumer names are
//! shown as text (invalid UTF-8 replaced). The service authorizes each
//! call: reading a group needs read access to its topic, acting on it
//! needs what XACK needs.

use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Response, StatusCode};
use bytes::Bytes;
use cairn_service::{Claim, GroupStart, Principal, StreamId, Topic};
use serde_json::{Value, json};

use super::{ApiError, ApiResult, Params, State, Who, json_response, parse_json, read_body, to_json};
use crate::server::App;

/// A route's `{topic}` and `{group}`, percent-decoded, with a JSON error
/// when they are not UTF-8 (a group named over the Redis protocol with
/// bytes that are not UTF-8 is shown in lossy form and cannot be named here).
pub(crate) struct GroupPath(String, String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for GroupPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<GroupPath, ApiError> {
        let axum::extract::Path((topic, group)) =
            axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|rejection| ApiError::invalid("path", rejection.body_text()))?;
        Ok(GroupPath(topic, group))
    }
}

/// Most pending entries one request lists.
const PENDING_ROWS_MAX: u64 = 1000;
/// The most bytes of an action's body.
const ACTION_BODY_BYTES_MAX: u64 = 256 * 1024;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The age of a group's oldest pending entry, in ms, if it has one.
async fn oldest_pending_ms(app: &App, who: &Principal, topic: &Topic, group: &[u8]) -> ApiResult<Option<u64>> {
    let rows = app.service.group_pending_rows(who, topic, group, StreamId::MIN, StreamId::MAX, 1, None, 0).await?;
    Ok(rows.first().map(|row| row.idle_ms))
}

async fn groups_of(app: &App, who: &Principal, topic: &Topic) -> ApiResult<Vec<Value>> {
    let mut out = Vec::new();
    for info in app.service.group_infos(who, topic).await?.unwrap_or_default() {
        let oldest = oldest_pending_ms(app, who, topic, &info.name).await?;
        out.push(json!({
            "topic": topic.as_str(),
            "group": text(&info.name),
            "consumers": info.consumers,
            "pending": info.pending,
            "oldest_pending_ms": oldest,
            "last_delivered": info.last_delivered.to_string(),
            "entries_read": info.entries_read,
            "lag": info.lag,
        }));
    }
    Ok(out)
}

/// `GET /v1/groups`: every group on a topic the caller may read, with its
/// lag, pending count and the age of its oldest pending entry.
pub(crate) async fn list(AxumState(app): State, Who(principal): Who, params: Params) -> ApiResult<Response<Body>> {
    params.finish()?;
    let mut out = Vec::new();
    for topic in app.service.group_topics(&principal).await? {
        out.extend(groups_of(&app, &principal, &topic).await?);
    }
    Ok(json_response(StatusCode::OK, to_json(&out), None))
}

/// `GET /v1/topics/{topic}/groups/{group}`: the group, its consumers, and
/// its pending entries from `start` (a stream id), at most `count`.
pub(crate) async fn show(
    AxumState(app): State,
    Who(principal): Who,
    GroupPath(topic, group): GroupPath,
    mut params: Params,
) -> ApiResult<Response<Body>> {
    let start = params.take("start")?.map(|text| StreamId::parse(text.as_bytes(), 0)).transpose()?;
    let count = params.number("count")?.unwrap_or(100);
    params.finish()?;
    if count == 0 || count > PENDING_ROWS_MAX {
        return Err(ApiError::invalid("count", format!("must be from 1 to {PENDING_ROWS_MAX}")));
    }
    let topic = Topic::new(&topic)?;
    let name = group.as_bytes();
    let members = app.service.group_members(&principal, &topic, name).await?;
    let info = groups_of(&app, &principal, &topic).await?.into_iter().find(|row| row["group"] == group);
    let info = info.ok_or_else(|| ApiError::not_found("group", &group))?;
    let start = start.unwrap_or(StreamId::MIN);
    let rows =
        app.service.group_pending_rows(&principal, &topic, name, start, StreamId::MAX, count as usize, None, 0).await?;
    let consumers: Vec<Value> = members
        .iter()
        .map(|member| {
            json!({
                "name": text(&member.name),
                "pending": member.pending,
                "idle_ms": member.idle_ms,
                "inactive_ms": member.inactive_ms,
            })
        })
        .collect();
    let pending: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "id": row.id.to_string(),
                "consumer": text(&row.consumer),
                "idle_ms": row.idle_ms,
                "deliveries": row.deliveries,
            })
        })
        .collect();
    let mut out = info;
    out["members"] = Value::Array(consumers);
    out["pending_entries"] = Value::Array(pending);
    Ok(json_response(StatusCode::OK, to_json(&out), None))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Ids {
    ids: Vec<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    consumer: String,
    ids: Vec<String>,
    #[serde(default)]
    min_idle_ms: u64,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Position {
    id: String,
}

/// An action's topic and its JSON body of the given shape (no parameters).
async fn action<T: serde::de::DeserializeOwned>(
    app: &App,
    topic: &str,
    params: Params,
    headers: &HeaderMap,
    body: Body,
    what: &'static str,
    shape: &str,
) -> ApiResult<(Topic, T)> {
    params.finish()?;
    let topic = Topic::new(topic)?;
    let body = read_body(app, headers, body, what, ACTION_BODY_BYTES_MAX).await?;
    Ok((topic, parse_json(&body, shape)?))
}

fn stream_ids(ids: &[String]) -> ApiResult<Vec<StreamId>> {
    if ids.is_empty() {
        return Err(ApiError::invalid("ids", "name at least one entry"));
    }
    ids.iter().map(|id| Ok(StreamId::parse(id.as_bytes(), 0)?)).collect()
}

/// `POST /v1/topics/{topic}/groups/{group}/ack`: `{"ids": [...]}` acked;
/// answers how many were pending.
pub(crate) async fn ack(
    AxumState(app): State,
    Who(principal): Who,
    GroupPath(topic, group): GroupPath,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    let (topic, Ids { ids }) = action(&app, &topic, params, &headers, body, "ack", "{\"ids\": [stream ids]}").await?;
    let acked = app.service.group_ack(&principal, &topic, group.as_bytes(), &stream_ids(&ids)?).await?;
    Ok(json_response(StatusCode::OK, to_json(&json!({ "acked": acked })), None))
}

/// `POST /v1/topics/{topic}/groups/{group}/claim`: `{"consumer", "ids",
/// "min_idle_ms"?}`; answers the entries now held by `consumer`.
pub(crate) async fn claim(
    AxumState(app): State,
    Who(principal): Who,
    GroupPath(topic, group): GroupPath,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    let (topic, ClaimBody { consumer, ids, min_idle_ms }) =
        action(&app, &topic, params, &headers, body, "claim", "{\"consumer\", \"ids\", \"min_idle_ms\"?}").await?;
    let delivered_ms = cairn_service::EventId::now().timestamp_ms();
    let claim = Claim { ids: stream_ids(&ids)?, min_idle_ms, delivered_ms, justid: true, ..Claim::default() };
    let consumer = Bytes::from(consumer.into_bytes());
    let claimed = app.service.group_claim(&principal, &topic, group.as_bytes(), &consumer, claim).await?;
    let ids: Vec<String> = claimed.iter().map(|entry| entry.id.to_string()).collect();
    Ok(json_response(StatusCode::OK, to_json(&json!({ "claimed": ids })), None))
}

/// `PUT /v1/topics/{topic}/groups/{group}/position`: `{"id": "<ms>-<seq>"}`
/// (or `"$"`, the newest entry) becomes the group's last delivered entry.
pub(crate) async fn position(
    AxumState(app): State,
    Who(principal): Who,
    GroupPath(topic, group): GroupPath,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    let (topic, Position { id }) =
        action(&app, &topic, params, &headers, body, "position", "{\"id\": a stream id or \"$\"}").await?;
    let start = if id == "$" { GroupStart::Newest } else { GroupStart::After(StreamId::parse(id.as_bytes(), 0)?) };
    app.service.group_set_id(&principal, &topic, group.as_bytes(), start).await?;
    Ok(super::no_content())
}
