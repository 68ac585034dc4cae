//! Users and tokens, import, verify, info, health and metrics. Who may do
//! what is the service's business (`cairn_service::Service::user_add` and
//! friends); these handlers parse and render.

use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use cairn_service::{ImportRecord, Imported, NewUser, Service};

use super::{
    ApiError, ApiResult, Params, Segment, State, Who, json_response, next_chunk, parse_json, read_body, to_json,
};

/// Events per import call (as the CLI does locally).
const IMPORT_CHUNK_EVENTS: usize = 1000;
/// The longest line of an import.
const IMPORT_LINE_BYTES_MAX: usize = 48 * 1024 * 1024;
/// The largest body of a user-management request.
const USER_BODY_BYTES_MAX: u64 = 64 * 1024;

/// `GET /v1/users` (admin).
pub(crate) async fn users(AxumState(app): State, Who(principal): Who, params: Params) -> ApiResult<Response<Body>> {
    params.finish()?;
    let users = app.service.users_list(&principal).await?;
    Ok(json_response(StatusCode::OK, to_json(&users), None))
}

/// `POST /v1/users` (admin): `{"name","password","read"?,"write"?,"admin"?}`.
pub(crate) async fn user_add(
    AxumState(app): State,
    Who(principal): Who,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    let body = read_body(&app, &headers, body, "body", USER_BODY_BYTES_MAX).await?;
    let new: NewUser = parse_json(&body, r#"{"name","password","read"?,"write"?,"admin"?}"#)?;
    let info = app.service.user_add(&principal, new).await?;
    Ok(json_response(StatusCode::CREATED, to_json(&info), None))
}

/// `DELETE /v1/users/{name}` (admin).
pub(crate) async fn user_remove(
    AxumState(app): State,
    Who(principal): Who,
    Segment(name): Segment,
    params: Params,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    app.service.user_remove(&principal, &name).await?;
    Ok(super::no_content())
}

/// `PUT /v1/users/{name}/password`: `{"password", "old_password"?}`; an
/// admin sets anyone's, a user its own with the old one.
pub(crate) async fn user_passwd(
    AxumState(app): State,
    Who(principal): Who,
    Segment(name): Segment,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Password {
        password: String,
        #[serde(default)]
        old_password: Option<String>,
    }
    let body = read_body(&app, &headers, body, "body", USER_BODY_BYTES_MAX).await?;
    let Password { password, old_password } = parse_json(&body, r#"{"password": "…", "old_password"?: "…"}"#)?;
    app.service.user_passwd(&principal, &name, &password, old_password.as_deref()).await?;
    Ok(super::no_content())
}

/// `POST /v1/users/{name}/tokens`: a new bearer token, shown only in this
/// reply. An admin issues anyone's; a user its own, logged in with its
/// password (or giving it: `{"password"}`), never from a token.
pub(crate) async fn token_issue(
    AxumState(app): State,
    Who(principal): Who,
    Segment(name): Segment,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Proof {
        password: String,
    }
    let body = read_body(&app, &headers, body, "body", USER_BODY_BYTES_MAX).await?;
    let password =
        if body.is_empty() { None } else { Some(parse_json::<Proof>(&body, r#"{"password": "…"}"#)?.password) };
    let issued = app.service.token_issue(&principal, &name, password.as_deref()).await?;
    Ok(json_response(StatusCode::CREATED, to_json(&issued), None))
}

/// `DELETE /v1/tokens/{id}`: revokes a token by id (or by itself): an
/// admin any, a user its own.
pub(crate) async fn token_revoke(
    AxumState(app): State,
    Who(principal): Who,
    Segment(id): Segment,
    params: Params,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    app.service.token_revoke(&principal, &id).await?;
    Ok(super::no_content())
}

/// `POST /v1/import` (admin): an export (NDJSON events with content),
/// keeping ids and seqs; replies `{"imported": n}` once durable. Lines are
/// found in one pass over what arrives (linear in the body), and an idle
/// gap longer than the body timeout ends the request.
pub(crate) async fn import(
    AxumState(app): State,
    Who(principal): Who,
    params: Params,
    body: Body,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    principal.check_admin()?;
    let mut body = body.into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    // Bytes of `pending` known to hold no newline.
    let mut scanned = 0usize;
    let mut chunk = Vec::with_capacity(IMPORT_CHUNK_EVENTS);
    let mut extras = Vec::new();
    let mut line_number = 0usize;
    let mut total = 0u64;
    loop {
        let data = next_chunk(app.config.body_timeout, &mut body).await?;
        let finished = data.is_none();
        if let Some(bytes) = data {
            pending.extend_from_slice(&bytes);
        }
        let mut start = 0;
        while let Some(end) = pending[scanned..].iter().position(|&b| b == b'\n').map(|at| scanned + at) {
            line_number += 1;
            parse_import_line(&pending[start..end], line_number, &mut chunk, &mut extras)?;
            start = end + 1;
            scanned = start;
        }
        pending.drain(..start);
        scanned = pending.len();
        if finished && !pending.is_empty() {
            line_number += 1;
            parse_import_line(&std::mem::take(&mut pending), line_number, &mut chunk, &mut extras)?;
        }
        if pending.len() > IMPORT_LINE_BYTES_MAX {
            return Err(ApiError::too_large("import line", IMPORT_LINE_BYTES_MAX as u64));
        }
        if chunk.len() >= IMPORT_CHUNK_EVENTS || ((finished || !extras.is_empty()) && !chunk.is_empty()) {
            let events = std::mem::take(&mut chunk);
            let imported = app
                .service
                .import(&principal, events)
                .await
                .map_err(|error| ApiError::invalid("body", format!("import up to line {line_number}: {error}")));
            total += imported? as u64;
        }
        if extras.len() >= IMPORT_CHUNK_EVENTS || (finished && !extras.is_empty()) {
            app.service
                .import_extras(&principal, std::mem::take(&mut extras))
                .await
                .map_err(|error| ApiError::invalid("body", format!("import up to line {line_number}: {error}")))?;
        }
        if finished {
            break;
        }
    }
    app.service.sync(&principal).await?;
    Ok(json_response(StatusCode::OK, to_json(&serde_json::json!({ "imported": total })), None))
}

fn parse_import_line(
    line: &[u8],
    number: usize,
    chunk: &mut Vec<Imported>,
    extras: &mut Vec<ImportRecord>,
) -> ApiResult<()> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let record =
        Service::import_record(line).map_err(|error| ApiError::invalid("body", format!("line {number}: {error}")))?;
    match record {
        ImportRecord::Event(event) if extras.is_empty() => chunk.push(event),
        ImportRecord::Event(_) => {
            return Err(ApiError::invalid(
                "body",
                format!("line {number}: events come before content and state lines"),
            ));
        }
        extra => extras.push(extra),
    }
    Ok(())
}

/// `POST /v1/verify` (admin): checks every record and content hash.
pub(crate) async fn verify(AxumState(app): State, Who(principal): Who, params: Params) -> ApiResult<Response<Body>> {
    params.finish()?;
    let report = app.service.verify(&principal).await?;
    Ok(json_response(StatusCode::OK, to_json(&report), None))
}

/// `GET /v1/export/extras` (admin): what an export of the whole store
/// carries after its events, as NDJSON: content stored on its own, then
/// state records (consumers, groups, snapshots). `cairn export` through a
/// server appends it to the events.
pub(crate) async fn export_extras(
    AxumState(app): State,
    Who(principal): Who,
    params: Params,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    let (hashes, state) = app.service.export_extras(&principal).await?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    tokio::spawn(async move {
        for hash in hashes {
            let Ok(Some(line)) = app.service.export_content(&principal, hash).await else { continue };
            let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
            bytes.push(b'\n');
            if sender.send(bytes.into()).await.is_err() {
                return;
            }
        }
        for line in state {
            let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
            bytes.push(b'\n');
            if sender.send(bytes.into()).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(super::stream::channel_body(receiver));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
}

/// `POST /v1/backup?dir=/absolute/path` (admin): copies a consistent
/// snapshot of the store into a directory of the server's machine (new,
/// empty, or an earlier backup of this store: then only what is new).
pub(crate) async fn backup(
    AxumState(app): State,
    Who(principal): Who,
    mut params: Params,
) -> ApiResult<Response<Body>> {
    let dir = params.take("dir")?.ok_or_else(|| ApiError::invalid("dir", "is required: an absolute path"))?;
    params.finish()?;
    let dir = std::path::PathBuf::from(dir);
    if !dir.is_absolute() {
        return Err(ApiError::invalid("dir", "must be an absolute path on the server's machine"));
    }
    let progress = std::sync::Arc::new(cairn_service::BackupProgress::default());
    let report = app.service.backup(&principal, dir, progress).await?;
    Ok(json_response(StatusCode::OK, to_json(&report), None))
}

/// `POST /v1/compact?ratio=0.5` (admin): rewrites sealed log segments
/// without their removed events where those make at least `ratio` of a
/// segment (default 0: wherever there are any).
pub(crate) async fn compact(
    AxumState(app): State,
    Who(principal): Who,
    mut params: Params,
) -> ApiResult<Response<Body>> {
    let ratio = match params.take("ratio")? {
        None => 0.0,
        Some(text) => text
            .parse::<f64>()
            .ok()
            .filter(|ratio| (0.0..=1.0).contains(ratio))
            .ok_or_else(|| ApiError::invalid("ratio", "must be a number from 0 to 1"))?,
    };
    params.finish()?;
    let report = app.service.compact(&principal, ratio).await?;
    Ok(json_response(StatusCode::OK, to_json(&report), None))
}

/// `GET /v1/info` (and the compatibility `/info`): version and store facts.
pub(crate) async fn info(AxumState(app): State, Who(principal): Who, params: Params) -> ApiResult<Response<Body>> {
    params.finish()?;
    let info = app.service.info(&principal).await?;
    let mut json = serde_json::to_value(&info).unwrap_or_default();
    if let Some(object) = json.as_object_mut() {
        object.insert("sync".to_owned(), serde_json::Value::String(app.config.sync.to_string()));
    }
    Ok(json_response(StatusCode::OK, to_json(&json), None))
}

/// `GET /healthz`: 200 while serving, 503 while stopping. Open on TCP.
pub(crate) async fn healthz(AxumState(app): State) -> ApiResult<Response<Body>> {
    if *app.stopping.borrow() {
        return Err(ApiError::Service(cairn_service::ServiceError::ShuttingDown));
    }
    Ok(json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec(), None))
}

/// `GET /metrics`: Prometheus text format (admins: the counters are store-wide).
pub(crate) async fn metrics(AxumState(app): State, Who(principal): Who, params: Params) -> ApiResult<Response<Body>> {
    params.finish()?;
    let stats = app.service.stats(&principal).await?;
    let text = app.metrics.render(&stats);
    let mut response = Response::new(Body::from(text));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(response)
}
