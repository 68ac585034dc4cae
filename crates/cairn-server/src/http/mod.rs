//! The HTTP API: one router for the Unix socket and TCP. `handle` is the
//! front door (browser checks, authentication, metrics); `router` lists
//! every route (each also described in `openapi.rs`, which a test checks
//! against this list). Handlers are thin: parse the request, call the
//! service (`cairn_service::Service`, which authorizes), render the reply.
//!
//! Conventions: JSON bodies; errors through [`ApiError`] (`error.rs`, the
//! one renderer); query parameters parsed by [`Params`], which names the
//! bad field and refuses unknown ones; bodies read by [`read_body`], with a
//! size limit and a deadline.

mod admin;
mod cas;
mod compat;
mod console;
mod consumers;
pub(crate) mod error;
mod events;
mod groups;
pub(crate) mod hub;
mod keyed;
mod mounts;
pub(crate) mod openapi;
mod procs;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header, request::Parts};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use base64::Engine as _;
use cairn_service::{Principal, ServiceError};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

pub(crate) use self::error::{ApiError, ApiResult};
use crate::listen::Door;
use crate::server::App;

type State = axum::extract::State<Arc<App>>;

/// Every route. Keep `openapi.rs` in step (a test compares them).
/// The largest hub message (a transaction of up to 10,000 actions).
pub(crate) const HUB_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/topics", get(events::topics))
        .route("/v1/topics/{topic}", get(events::topic))
        .route("/v1/topics/{topic}/events", post(events::append).get(events::read_topic))
        .route("/v1/batch", post(events::batch))
        .route("/v1/events", get(events::read))
        .route("/v1/events/{id}", get(events::get_event).delete(events::delete_event))
        .route("/v1/events/{id}/content", get(events::content))
        .route("/v1/cas", post(cas::put).put(cas::put))
        .route("/v1/cas/{hash}", get(cas::get).head(cas::head).delete(cas::delete))
        .route("/v1/consumers", get(consumers::list))
        .route("/v1/consumers/{name}", get(consumers::show).put(consumers::ack).delete(consumers::delete))
        .route("/v1/consumers/{name}/events", get(consumers::read))
        .route("/v1/consumers/{name}/snapshot", get(consumers::snapshot_get).put(consumers::snapshot_put))
        .route("/v1/groups", get(groups::list))
        .route("/v1/topics/{topic}/groups/{group}", get(groups::show))
        .route("/v1/topics/{topic}/groups/{group}/ack", post(groups::ack))
        .route("/v1/topics/{topic}/groups/{group}/claim", post(groups::claim))
        .route("/v1/topics/{topic}/groups/{group}/position", put(groups::position))
        .route("/v1/users", get(admin::users).post(admin::user_add))
        .route("/v1/users/{name}", axum::routing::delete(admin::user_remove))
        .route("/v1/users/{name}/password", put(admin::user_passwd))
        .route("/v1/users/{name}/tokens", post(admin::token_issue))
        .route("/v1/tokens/{id}", axum::routing::delete(admin::token_revoke))
        .route("/v1/import", post(admin::import))
        .route("/v1/verify", post(admin::verify))
        .route("/v1/backup", post(admin::backup))
        .route("/v1/compact", post(admin::compact))
        .route("/v1/export/extras", get(admin::export_extras))
        .route("/v1/hub", get(hub::upgrade))
        .route("/v1/transactions", post(keyed::publish))
        .route("/v1/state/{topic}", get(keyed::states))
        .route("/v1/state/{topic}/{key}", get(keyed::state))
        .route("/v1/mounts", get(mounts::list))
        .route("/v1/mounts/{name}", post(mounts::mount).delete(mounts::unmount))
        .route("/v1/procs", get(procs::list))
        .route("/v1/procs/{name}", post(procs::create).delete(procs::term))
        .route("/v1/procs/{name}/logs", get(procs::logs))
        .route("/v1/info", get(admin::info))
        .route("/healthz", get(admin::healthz))
        .route("/metrics", get(admin::metrics))
        .route("/openapi.json", get(openapi::serve))
        .route("/events", get(compat::list).head(compat::head).put(compat::append).post(compat::append))
        .route("/events/{id}", get(compat::get_event))
        .route("/storage", put(compat::storage_put).post(compat::storage_put))
        .route("/storage/", put(compat::storage_put).post(compat::storage_put))
        .route("/storage/{hash}", get(compat::storage_get).delete(compat::storage_delete))
        .route("/info", get(admin::info))
        .route("/", get(console::page))
        .route("/console/", get(console::page))
        .route("/console/{file}", get(console::asset))
        .route("/v1/session", get(console::show).post(console::login).delete(console::logout))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

/// Paths that answer in the compatibility error form.
fn is_compat(path: &str) -> bool {
    path == "/events" || path.starts_with("/events/") || path.starts_with("/storage") || path == "/info"
}

/// The front door: answers CORS preflights, refuses cross-site requests,
/// authenticates, routes, renders compatibility errors, counts.
pub(crate) async fn handle(
    app: Arc<App>,
    router: Router,
    door: Door,
    mut request: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let compat = is_compat(request.uri().path());
    let cors = cors_origin(&app, &door, request.headers());
    if let Some(origin) = &cors
        && request.method() == axum::http::Method::OPTIONS
        && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let response = preflight(origin);
        app.metrics.response(response.status().as_u16());
        return response;
    }
    // A page's script (fetch, EventSource) says so; the browser's own
    // login dialog is for navigations only.
    let from_script = request
        .headers()
        .get(&SEC_FETCH_MODE)
        .and_then(|mode| mode.to_str().ok())
        .is_some_and(|mode| !mode.eq_ignore_ascii_case("navigate"));
    // The console's files, login and logout need no credentials, so none
    // are checked (a wrong password on them costs no password check).
    let public = console::is_public(request.method(), request.uri().path());
    let check = console::take_check(&mut request);
    if let Some(check) = &check {
        request.extensions_mut().insert(console::SessionCheck(check.clone()));
    }
    let admitted = match check_browser(&app, &door, request.uri().path(), request.headers()) {
        Ok(()) if public => Ok(None),
        Ok(()) => match authenticate(&app, &door, &request, check.as_deref()).await {
            Ok((principal, by_cookie)) => check_forgery(&request, by_cookie).map(|()| Some(principal)),
            Err(error) => Err(error),
        },
        Err(error) => Err(error),
    };
    let mut response = match admitted {
        Ok(principal) => {
            if let Some(principal) = principal {
                request.extensions_mut().insert(principal);
            }
            request.extensions_mut().insert(door);
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(infallible) => match infallible {},
            };
            match response.extensions().get::<ApiError>() {
                Some(error) if compat => error.compat_response(),
                _ => response,
            }
        }
        Err(error) if compat => error.compat_response(),
        Err(error) => error.into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if !public {
        // What one caller was shown is never served from a cache to another.
        headers.append(header::VARY, HeaderValue::from_static("authorization, cookie, cairn-session-check"));
        if !headers.contains_key(header::CACHE_CONTROL) {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
        }
    }
    if from_script {
        headers.remove(header::WWW_AUTHENTICATE);
    }
    if let Some(origin) = cors {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("etag, location, retry-after"));
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
    app.metrics.response(response.status().as_u16());
    response
}

/// Request headers a page on a `--cors-origin` may send.
const CORS_HEADERS: &str = "authorization, content-type, cairn-type, cairn-meta, cairn-expect, cairn-ttl, \
     idempotency-key, if-match, if-none-match, last-event-id, cairn-session-check";

/// The request's `Origin` when it is one `--cors-origin` names (TCP only).
fn cors_origin(app: &App, door: &Door, headers: &HeaderMap) -> Option<HeaderValue> {
    let Door::Tcp(_) = door else { return None };
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    app.config.cors_origins.iter().any(|listed| listed.eq_ignore_ascii_case(text)).then(|| origin.clone())
}

/// The answer to a CORS preflight from a listed origin: it needs no
/// credentials (browsers send none) and does nothing.
fn preflight(origin: &HeaderValue) -> Response<Body> {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(CORS_HEADERS));
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
    response
}

/// Refuses a state-changing request authenticated only by the session
/// cookie unless the browser names its origin (which `check_browser` has
/// already found to be this server's or a listed one): a browser always
/// sends `Origin` on such requests, so one without it did not come from a
/// page this server trusts.
fn check_forgery<B>(request: &Request<B>, by_cookie: bool) -> ApiResult<()> {
    let safe = matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    if by_cookie && !safe && !request.headers().contains_key(header::ORIGIN) {
        return Err(ApiError::CrossOrigin(
            "a state-changing request authenticated by the session cookie must carry an Origin header".to_owned(),
        ));
    }
    Ok(())
}

/// Browser-reachable doors (TCP) refuse a request whose `Origin` is
/// another site (a page making the browser send it: CSRF), and, while
/// TCP needs no authentication, one whose `Host` is not this server (DNS
/// rebinding; `/healthz`, which tells nothing, answers any name for load
/// balancers). `--allow-origin` and `--allow-host` widen the lists.
fn check_browser(app: &App, door: &Door, path: &str, headers: &HeaderMap) -> ApiResult<()> {
    let Door::Tcp(_) = door else { return Ok(()) };
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).map(str::to_ascii_lowercase);
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
        let same_site = origin
            .split_once("://")
            .filter(|(scheme, _)| matches!(*scheme, "http" | "https"))
            .is_some_and(|(_, authority)| host.as_deref() == Some(authority));
        if !same_site && !app.config.allow_origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(&origin)) {
            return Err(ApiError::CrossOrigin(format!(
                "requests from the web page at origin {origin:?} are refused (--allow-origin lets a site in)"
            )));
        }
    }
    if (app.config.insecure_no_auth || !app.config.allow_hosts.is_empty()) && path != "/healthz" {
        let known = host.as_deref().is_some_and(|host| app.known_host(host));
        if !known {
            return Err(ApiError::CrossOrigin(format!(
                "Host {:?} is not this server's name (--allow-host adds names)",
                host.unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// The caller, and whether only the browser session's cookie says so
/// (with the session's check, `check`).
async fn authenticate<B>(
    app: &Arc<App>,
    door: &Door,
    request: &Request<B>,
    check: Option<&str>,
) -> ApiResult<(Principal, bool)> {
    let Door::Tcp(peer) = door else { return Ok((Principal::Local, false)) };
    let credentials = request.headers().get(header::AUTHORIZATION).map(|value| value.to_str().unwrap_or(""));
    let Some(credentials) = credentials else {
        let cookies = console::cookies(request.headers());
        let session = match check {
            Some(check) if !cookies.is_empty() => Some(app.service.session_get(&cookies, check)),
            _ => None,
        };
        match session {
            Some(Ok(principal)) => return Ok((principal, true)),
            // Where no credentials are needed, a cookie that is no session
            // (planted, stale) is no reason to refuse.
            _ if app.config.insecure_no_auth || request.uri().path() == "/healthz" => {
                return Ok((Principal::Anonymous, false));
            }
            Some(Err(error)) => return Err(error.into()),
            None if !cookies.is_empty() => {
                return Err(ServiceError::unauthenticated(
                    "a browser session needs its check (Cairn-Session-Check) with the cookie; log in again",
                )
                .into());
            }
            None => {}
        }
        return Err(ServiceError::unauthenticated("authentication required: HTTP Basic or a bearer token").into());
    };
    let service = &app.service;
    if let Some(token) = credentials.strip_prefix("Bearer ") {
        return Ok((service.login_token(token.trim())?, false));
    }
    if let Some(encoded) = credentials.strip_prefix("Basic ") {
        let malformed = || ApiError::Service(ServiceError::unauthenticated("malformed Basic credentials"));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(malformed)?;
        let (name, password) = decoded.split_once(':').ok_or_else(malformed)?;
        return Ok((service.login_password(name, password, Some(peer.ip())).await?, false));
    }
    Err(ServiceError::unauthenticated("unsupported Authorization scheme: use Basic or Bearer").into())
}

/// The caller, as the front door authenticated them.
pub(crate) struct Who(pub(crate) Principal);

impl<S: Send + Sync> FromRequestParts<S> for Who {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Who, ApiError> {
        let principal = parts.extensions.get::<Principal>().cloned();
        principal.map(Who).ok_or_else(|| ServiceError::unauthenticated("request was not authenticated").into())
    }
}

async fn no_route(request: Request<Body>) -> Response<Body> {
    ApiError::NoRoute { method: request.method().to_string(), path: request.uri().path().to_owned() }.into_response()
}

async fn method_not_allowed(request: Request<Body>) -> Response<Body> {
    ApiError::MethodNotAllowed { method: request.method().to_string(), path: request.uri().path().to_owned() }
        .into_response()
}

/// A path segment, percent-decoded, with a JSON error when it is not UTF-8.
pub(crate) struct Segment(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Segment, ApiError> {
        let axum::extract::Path(value) = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::invalid("path", rejection.body_text()))?;
        Ok(Segment(value))
    }
}

/// Query parameters, taken one by one; leftovers are an error.
pub(crate) struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Params, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .map(Params)
            .map_err(|error| ApiError::invalid("query string", error.to_string()))
    }
}

impl Params {
    /// The value of `name`, if given (once).
    pub(crate) fn take(&mut self, name: &'static str) -> ApiResult<Option<String>> {
        let mut found = None;
        let mut idx = 0;
        while idx < self.0.len() {
            if self.0[idx].0 == name {
                let (_, value) = self.0.remove(idx);
                if found.replace(value).is_some() {
                    return Err(ApiError::invalid(name, "is given more than once"));
                }
            } else {
                idx += 1;
            }
        }
        Ok(found)
    }

    /// A flag: absent is false; present is `true`, `1`, empty (true) or `false`, `0`.
    pub(crate) fn flag(&mut self, name: &'static str) -> ApiResult<bool> {
        match self.take(name)?.as_deref() {
            None | Some("false" | "0") => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some(other) => Err(ApiError::invalid(name, format!("{other:?} is not true or false"))),
        }
    }

    /// A non-negative integer.
    pub(crate) fn number(&mut self, name: &'static str) -> ApiResult<Option<u64>> {
        self.take(name)?
            .map(|text| {
                text.parse::<u64>()
                    .map_err(|_| ApiError::invalid(name, format!("{text:?} is not a non-negative integer")))
            })
            .transpose()
    }

    /// Refuses parameters nobody took.
    pub(crate) fn finish(self) -> ApiResult<()> {
        match self.0.first() {
            None => Ok(()),
            Some((name, _)) => Err(ApiError::invalid("query string", format!("unknown parameter {name:?}"))),
        }
    }
}

/// Reads a whole body of at most `max` bytes within the server's body
/// timeout: 413 (without reading on) when it is bigger, by its
/// Content-Length or as it arrives; 408 (and the connection closes) when
/// it arrives too slowly, so slow senders cannot hold connection slots.
pub(crate) async fn read_body(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    what: &'static str,
    max: u64,
) -> ApiResult<Bytes> {
    if let Some(length) = headers.get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        && length > max
    {
        return Err(ApiError::too_large(what, max));
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let collect = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(app.config.body_timeout, collect).await {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(what, max)),
        Ok(Err(error)) => Err(ApiError::invalid("body", format!("could not be read: {error}"))),
    }
}

/// The next chunk of a streamed body, within the body timeout (an idle
/// gap longer than it ends the request).
pub(crate) async fn next_chunk(timeout: Duration, body: &mut axum::body::BodyDataStream) -> ApiResult<Option<Bytes>> {
    match tokio::time::timeout(timeout, futures_util::StreamExt::next(body)).await {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(None) => Ok(None),
        Ok(Some(Ok(bytes))) => Ok(Some(bytes)),
        Ok(Some(Err(error))) => Err(ApiError::invalid("body", format!("could not be read: {error}"))),
    }
}

/// Request headers looked up by name, named once: a lookup by `&str`
/// parses the name every time (about 330 instructions under callgrind; an
/// HTTP append looked up five). Statics, so that an error can name one.
pub(crate) static SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
pub(crate) static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
pub(crate) static CONTENT_TYPE: HeaderName = header::CONTENT_TYPE;
static IF_MATCH: HeaderName = header::IF_MATCH;

/// A header's value as text, if present.
pub(crate) fn header_text<'h>(headers: &'h HeaderMap, name: &'static HeaderName) -> ApiResult<Option<&'h str>> {
    headers
        .get(name)
        .map(|value| value.to_str().map_err(|_| ApiError::invalid(name.as_str(), "is not visible ASCII")))
        .transpose()
}

/// Whether `If-None-Match` lists `etag` (or `*`), by weak comparison.
pub(crate) fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    let Some(value) = headers.get(header::IF_NONE_MATCH).and_then(|value| value.to_str().ok()) else { return false };
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag.trim_start_matches("W/"))
}

/// `If-Match` as the service's condition (RFC 9110 §13.1.1): `*`, or a
/// list of entity tags compared strongly (a weak tag never matches; an
/// unknown one matches nothing: 412 from the service, never 400).
pub(crate) fn if_match(headers: &HeaderMap) -> ApiResult<Option<cairn_service::IfMatch>> {
    let Some(value) = header_text(headers, &IF_MATCH)? else { return Ok(None) };
    if value.trim() == "*" {
        return Ok(Some(cairn_service::IfMatch::Any));
    }
    let tags = value.split(',').map(str::trim).filter(|tag| !tag.starts_with("W/")).map(str::to_owned).collect();
    Ok(Some(cairn_service::IfMatch::Tags(tags)))
}

/// A 304 with the entity tag.
pub(crate) fn not_modified_response(etag: &str) -> Response<Body> {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// A weak entity tag for what `who` is shown for `what` (the request's
/// query) at the store's current version: scoped, so one caller's tag never
/// validates a representation another caller was given.
pub(crate) fn scoped_etag(app: &App, who: &Principal, what: &str) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::hash::DefaultHasher::new();
    (who.scope(), what).hash(&mut hasher);
    format!("W/\"{}-{:016x}\"", app.service.version(), hasher.finish())
}

/// 204 No Content.
pub(crate) fn no_content() -> Response<Body> {
    StatusCode::NO_CONTENT.into_response()
}

/// A JSON response with an optional entity tag.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>, etag: Option<&str>) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(value) = etag.and_then(|etag| HeaderValue::from_str(etag).ok()) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// Serializes a value to JSON bytes.
pub(crate) fn to_json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("values of this API serialize")
}

/// Parses a JSON body of the given shape.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes, shape: &str) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|error| ApiError::invalid("body", format!("expected {shape}: {error}")))
}
