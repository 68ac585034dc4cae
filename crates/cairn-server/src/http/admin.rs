//! Users and tokens, import, verify, info, health and metrics.

use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use cairn_store::json::EventJson;

use super::{Params, Segment, State, blocking, json_response, read_body, to_json};
use crate::auth::{NewUser, Principal};
use crate::error::{ApiError, ApiResult};

/// Events per import call (as the CLI does locally).
const IMPORT_CHUNK_EVENTS: usize = 1000;
/// The longest line of an import.
const IMPORT_LINE_BYTES_MAX: usize = 48 * 1024 * 1024;

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes, shape: &str) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|error| ApiError::invalid("body", format!("expected {shape}: {error}")))
}

/// Blocking user-file work (argon2 is slow) off the async threads.
async fn users_call<T: Send + 'static>(
    app: &std::sync::Arc<crate::server::App>,
    work: impl FnOnce(&crate::auth::Users) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || work(&app.users))
        .await
        .map_err(|error| ApiError::internal(error.to_string()))?
}

/// `GET /v1/users` (admin).
pub(crate) async fn users(AxumState(app): State, principal: Principal, params: Params) -> ApiResult<Response<Body>> {
    params.finish()?;
    principal.check_admin()?;
    Ok(json_response(StatusCode::OK, to_json(&app.users.list())?, None))
}

/// `POST /v1/users` (admin): `{"name","password","read"?,"write"?,"admin"?}`.
pub(crate) async fn user_add(
    AxumState(app): State,
    principal: Principal,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    principal.check_admin()?;
    let body = read_body(&headers, body, "body", 64 * 1024).await?;
    let new: NewUser = parse_json(&body, r#"{"name","password","read"?,"write"?,"admin"?}"#)?;
    let info = users_call(&app, move |users| users.add(new)).await?;
    Ok(json_response(StatusCode::CREATED, to_json(&info)?, None))
}

/// `DELETE /v1/users/{name}` (admin).
pub(crate) async fn user_remove(
    AxumState(app): State,
    principal: Principal,
    Segment(name): Segment,
    params: Params,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    principal.check_admin()?;
    users_call(&app, move |users| users.remove(&name)).await?;
    Ok(super::no_content())
}

/// `PUT /v1/users/{name}/password` (admin, or the user itself): `{"password"}`.
pub(crate) async fn user_passwd(
    AxumState(app): State,
    principal: Principal,
    Segment(name): Segment,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    if principal.user_name() != Some(name.as_str()) {
        principal.check_admin()?;
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Password {
        password: String,
    }
    let body = read_body(&headers, body, "body", 64 * 1024).await?;
    let Password { password } = parse_json(&body, r#"{"password": "…"}"#)?;
    users_call(&app, move |users| users.passwd(&name, &password)).await?;
    Ok(super::no_content())
}

/// `POST /v1/users/{name}/tokens` (admin, or the user itself): a new bearer
/// token, shown only in this reply.
pub(crate) async fn token_issue(
    AxumState(app): State,
    principal: Principal,
    Segment(name): Segment,
    params: Params,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    if principal.user_name() != Some(name.as_str()) {
        principal.check_admin()?;
    }
    let issued = users_call(&app, move |users| users.issue_token(&name)).await?;
    Ok(json_response(StatusCode::CREATED, to_json(&issued)?, None))
}

/// `DELETE /v1/tokens/{id}` (admin): revokes a token by id (or by itself).
pub(crate) async fn token_revoke(
    AxumState(app): State,
    principal: Principal,
    Segment(id): Segment,
    params: Params,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    principal.check_admin()?;
    users_call(&app, move |users| users.revoke_token(&id)).await?;
    Ok(super::no_content())
}

/// `POST /v1/import` (admin): an export (NDJSON events with content),
/// keeping ids and seqs; replies `{"imported": n}` once durable.
pub(crate) async fn import(
    AxumState(app): State,
    principal: Principal,
    params: Params,
    body: Body,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    principal.check_admin()?;
    let mut body = body.into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = Vec::with_capacity(IMPORT_CHUNK_EVENTS);
    let mut line_number = 0usize;
    let mut total = 0u64;
    loop {
        let data = futures_util::StreamExt::next(&mut body).await;
        let finished = data.is_none();
        match data {
            Some(Ok(bytes)) => pending.extend_from_slice(&bytes),
            Some(Err(error)) => return Err(ApiError::invalid("body", format!("could not be read: {error}"))),
            None => {}
        }
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n').map(|at| start + at) {
            line_number += 1;
            parse_import_line(&pending[start..end], line_number, &mut chunk)?;
            start = end + 1;
        }
        pending.drain(..start);
        if finished && !pending.is_empty() {
            line_number += 1;
            parse_import_line(&std::mem::take(&mut pending), line_number, &mut chunk)?;
        }
        if pending.len() > IMPORT_LINE_BYTES_MAX {
            return Err(ApiError::too_large("import line", IMPORT_LINE_BYTES_MAX as u64));
        }
        if chunk.len() >= IMPORT_CHUNK_EVENTS || (finished && !chunk.is_empty()) {
            let events = std::mem::take(&mut chunk);
            let at = line_number;
            total += blocking(&app, move |store| {
                store.import(events).map(|events| events.len() as u64).map_err(|error| {
                    let mut error = ApiError::from(error);
                    error.message = format!("import up to line {at}: {}", error.message);
                    error
                })
            })
            .await?;
        }
        if finished {
            break;
        }
    }
    blocking(&app, |store| Ok(store.sync()?)).await?;
    Ok(json_response(StatusCode::OK, to_json(&serde_json::json!({ "imported": total }))?, None))
}

fn parse_import_line(line: &[u8], number: usize, chunk: &mut Vec<cairn_store::Imported>) -> ApiResult<()> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let json: EventJson = serde_json::from_slice(line)
        .map_err(|error| ApiError::invalid("body", format!("line {number}: not an exported event: {error}")))?;
    let imported = json.into_imported().map_err(|error| {
        let mut error = ApiError::from(error);
        error.message = format!("line {number}: {}", error.message);
        error
    })?;
    chunk.push(imported);
    Ok(())
}

/// `POST /v1/verify` (admin): checks every record and content hash.
pub(crate) async fn verify(AxumState(app): State, principal: Principal, params: Params) -> ApiResult<Response<Body>> {
    params.finish()?;
    principal.check_admin()?;
    let report = blocking(&app, |store| Ok(store.verify()?)).await?;
    Ok(json_response(StatusCode::OK, to_json(&report)?, None))
}

/// What `/v1/info` and `/info` show: version and store facts (no
/// environment, paths or settings an attacker could use).
pub(crate) fn info_json(app: &crate::server::App) -> serde_json::Value {
    let stats = app.store.stats();
    serde_json::json!({
        "name": "cairn",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": app.started.elapsed().as_secs(),
        "last_id": app.store.last_id(),
        "events_appended_since_start": stats.events_appended,
        "log_bytes": stats.log_bytes,
        "content_bytes": stats.content_bytes,
        "sync": app.config.sync.to_string(),
    })
}

/// `GET /v1/info`.
pub(crate) async fn info(AxumState(app): State, params: Params) -> ApiResult<Response<Body>> {
    params.finish()?;
    let json = blocking(&app.clone(), move |_| Ok(info_json(&app))).await?;
    Ok(json_response(StatusCode::OK, to_json(&json)?, None))
}

/// `GET /healthz`: 200 while serving, 503 while stopping. Open on TCP.
pub(crate) async fn healthz(AxumState(app): State) -> ApiResult<Response<Body>> {
    if *app.stopping.borrow() {
        return Err(cairn_store::StoreError::ShuttingDown.into());
    }
    Ok(json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec(), None))
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(AxumState(app): State, params: Params) -> ApiResult<Response<Body>> {
    params.finish()?;
    let text = blocking(&app.clone(), move |store| Ok(app.metrics.render(&store.stats()))).await?;
    let mut response = Response::new(Body::from(text));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(response)
}
