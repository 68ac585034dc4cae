//! Durable consumers: named positions (the last acknowledged id) and reads
//! that resume after them. Names are shared by everyone who may read;
//! deleting one needs an admin.

use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Response, StatusCode};
use cairn_store::{EventId, Pattern};

use super::stream::{self, ReadSpec};
use super::{Params, Segment, State, blocking, json_response, read_body, to_json};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};

fn position(name: &str, acked: EventId) -> serde_json::Value {
    serde_json::json!({ "name": name, "acked": acked })
}

/// `GET /v1/consumers`: every consumer and its position.
pub(crate) async fn list(AxumState(app): State, params: Params) -> ApiResult<Response<Body>> {
    params.finish()?;
    let consumers = blocking(&app, |store| Ok(store.consumers()?)).await?;
    let json: Vec<_> = consumers.iter().map(|(name, acked)| position(name, *acked)).collect();
    Ok(json_response(StatusCode::OK, to_json(&json)?, None))
}

/// `GET /v1/consumers/{name}`: its position.
pub(crate) async fn show(AxumState(app): State, Segment(name): Segment, params: Params) -> ApiResult<Response<Body>> {
    params.finish()?;
    let lookup = name.clone();
    let acked = blocking(&app, move |store| Ok(store.consumer(&lookup)?)).await?;
    let acked = acked.ok_or_else(|| ApiError::not_found("consumer", &name))?;
    Ok(json_response(StatusCode::OK, to_json(&position(&name, acked))?, None))
}

/// `PUT /v1/consumers/{name}`: acknowledges everything up to an id, given as
/// `?id=` or a body `{"id": "…"}`; durable when the reply comes.
pub(crate) async fn ack(
    AxumState(app): State,
    Segment(name): Segment,
    mut params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    let from_param = params.take("id")?;
    params.finish()?;
    let body = read_body(&headers, body, "body", 4096).await?;
    let id = match (from_param, body.is_empty()) {
        (Some(id), true) => id,
        (None, false) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Ack {
                id: String,
            }
            serde_json::from_slice::<Ack>(&body)
                .map_err(|error| ApiError::invalid("body", format!("expected {{\"id\": \"<event id>\"}}: {error}")))?
                .id
        }
        (Some(_), false) => return Err(ApiError::invalid("id", "give it as ?id= or in the body, not both")),
        (None, true) => return Err(ApiError::invalid("id", "missing: give ?id=<event id> or a body {\"id\": \"…\"}")),
    };
    let id = EventId::parse(&id)?;
    let ack_name = name.clone();
    blocking(&app, move |store| Ok(store.ack(&ack_name, id)?)).await?;
    Ok(json_response(StatusCode::OK, to_json(&position(&name, id))?, None))
}

/// `DELETE /v1/consumers/{name}` (admin).
pub(crate) async fn delete(
    AxumState(app): State,
    principal: Principal,
    Segment(name): Segment,
    params: Params,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    principal.check_admin()?;
    let lookup = name.clone();
    if !blocking(&app, move |store| Ok(store.consumer_delete(&lookup)?)).await? {
        return Err(ApiError::not_found("consumer", name));
    }
    Ok(super::no_content())
}

/// `GET /v1/consumers/{name}/events?topic=…`: reads (or follows) after the
/// consumer's last ack; the same parameters as `/v1/events` except `after`.
pub(crate) async fn read(
    AxumState(app): State,
    principal: Principal,
    Segment(name): Segment,
    mut params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    let pattern = params.take("topic")?.map(|text| Pattern::parse(&text)).transpose()?.unwrap_or_else(Pattern::all);
    if params.take("after")?.is_some() {
        return Err(ApiError::invalid("after", "a consumer read starts after the consumer's last ack"));
    }
    let lookup = name.clone();
    let acked = blocking(&app, move |store| Ok(store.consumer(&lookup)?)).await?;
    let mut spec = ReadSpec::parse(&mut params, &headers, pattern)?;
    params.finish()?;
    if spec.query.after.is_none() {
        spec.query.after = acked;
    }
    stream::respond(&app, &principal, &headers, spec).await
}
