//! Keyed records over HTTP: transactions (`POST /v1/transactions`) and
//! each key's latest state (`GET /v1/state/{topic}`, `/{key}`), thin calls
//! of the service's `publish`, `key_states` and `key_state`.

use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Response, StatusCode};
use cairn_service::json::EventJson;
use cairn_service::{Topic, Trans};

use super::{ApiError, ApiResult, Params, State, Who, json_response, parse_json, read_body, to_json};

/// `POST /v1/transactions`: `{id?, base?, created?, extra?, acts: [{top,
/// key, cmd, arg?}]}` committed as one batch; `{rev, evs}`, or 409 naming
/// each key that changed after `base`. On a satellite, a transaction on
/// the hub's topics is queued for the hub: 202 `{rev, evs: [], queued}`.
pub(crate) async fn publish(
    AxumState(app): State,
    Who(principal): Who,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    let bytes = read_body(&app, &headers, body, "transaction", app.service.limits().payload_bytes_max).await?;
    let trans: Trans = parse_json(&bytes, "{id?, base?, created?, extra?, acts: [{top, key, cmd, arg?}]}")?;
    let committed = app.service.publish(&principal, trans).await?;
    if let Some(tx) = committed.queued {
        // A satellite queued it for its hub: 202, not yet decided.
        let body = serde_json::json!({ "rev": committed.rev, "evs": [], "queued": tx });
        return Ok(json_response(StatusCode::ACCEPTED, to_json(&body), None));
    }
    let evs: Vec<EventJson> = committed.events.iter().map(|event| EventJson::from_event(event, None)).collect();
    Ok(json_response(StatusCode::OK, to_json(&serde_json::json!({ "rev": committed.rev, "evs": evs })), None))
}

/// `GET /v1/state/{topic}`: its keys with their state, in key order
/// (`after`, `limit` to page).
pub(crate) async fn states(
    AxumState(app): State,
    Who(principal): Who,
    super::Segment(topic): super::Segment,
    mut params: Params,
) -> ApiResult<Response<Body>> {
    let after = params.take("after")?;
    let limit = params.number("limit")?.unwrap_or(1000).clamp(1, 10_000);
    params.finish()?;
    let topic = Topic::new(&topic)?;
    let states = app.service.key_states(&principal, &topic, after.as_deref(), limit as usize).await?;
    Ok(json_response(StatusCode::OK, to_json(&states), None))
}

/// `GET /v1/state/{topic}/{key}`: its state, rev and last event id; with
/// `rev`, as of that revision (replayed).
pub(crate) async fn state(
    AxumState(app): State,
    Who(principal): Who,
    KeyPath(topic, key): KeyPath,
    mut params: Params,
) -> ApiResult<Response<Body>> {
    let at = params.number("rev")?;
    params.finish()?;
    let topic = Topic::new(&topic)?;
    let state = app.service.key_state(&principal, &topic, &key, at).await?;
    let state = state.ok_or_else(|| ApiError::not_found("key", format!("{topic} {key}")))?;
    Ok(json_response(StatusCode::OK, to_json(&state), None))
}

/// `{topic}/{key}` from the path, each percent-decoded; 400 naming the path
/// otherwise.
pub(crate) struct KeyPath(String, String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<KeyPath, ApiError> {
        let axum::extract::Path((topic, key)) =
            axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|rejection| ApiError::invalid("path", rejection.body_text()))?;
        Ok(KeyPath(topic, key))
    }
}
