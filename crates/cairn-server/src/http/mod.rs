//! The HTTP API: one router for the Unix socket and TCP. `handle` is the
//! front door (authentication, metrics); `router` lists every route (each
//! also described in `openapi.rs`, which a test checks against this list).
//!
//! Conventions: JSON bodies; errors `{"error":{"code","message"}}` through
//! [`ApiError`]'s `IntoResponse`; query parameters parsed by [`Params`],
//! which names the bad field and refuses unknown ones; blocking engine
//! calls run on the blocking pool through [`blocking`].

mod admin;
mod cas;
mod compat;
mod consumers;
mod events;
pub(crate) mod openapi;
mod stream;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header, request::Parts};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use base64::Engine as _;
use cairn_store::Store;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::listen::Door;
use crate::server::App;

type State = axum::extract::State<Arc<App>>;

/// Every route. Keep `openapi.rs` in step (a test compares them).
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/topics", get(events::topics))
        .route("/v1/topics/{topic}", get(events::topic))
        .route("/v1/topics/{topic}/events", post(events::append).get(events::read_topic))
        .route("/v1/batch", post(events::batch))
        .route("/v1/events", get(events::read))
        .route("/v1/events/{id}", get(events::get_event).delete(events::delete_event))
        .route("/v1/cas", post(cas::put).put(cas::put))
        .route("/v1/cas/{hash}", get(cas::get).head(cas::head).delete(cas::delete))
        .route("/v1/consumers", get(consumers::list))
        .route("/v1/consumers/{name}", get(consumers::show).put(consumers::ack).delete(consumers::delete))
        .route("/v1/consumers/{name}/events", get(consumers::read))
        .route("/v1/users", get(admin::users).post(admin::user_add))
        .route("/v1/users/{name}", axum::routing::delete(admin::user_remove))
        .route("/v1/users/{name}/password", put(admin::user_passwd))
        .route("/v1/users/{name}/tokens", post(admin::token_issue))
        .route("/v1/tokens/{id}", axum::routing::delete(admin::token_revoke))
        .route("/v1/import", post(admin::import))
        .route("/v1/verify", post(admin::verify))
        .route("/v1/info", get(admin::info))
        .route("/healthz", get(admin::healthz))
        .route("/metrics", get(admin::metrics))
        .route("/openapi.json", get(openapi::serve))
        .route("/events", get(compat::list).head(compat::head).put(compat::append).post(compat::append))
        .route("/events/{id}", get(compat::get_event))
        .route("/storage", put(compat::storage_put).post(compat::storage_put))
        .route("/storage/", put(compat::storage_put).post(compat::storage_put))
        .route("/storage/{hash}", get(cas::get).delete(compat::storage_delete))
        .route("/info", get(admin::info))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

/// Paths that answer in the compatibility error form.
fn is_compat(path: &str) -> bool {
    path == "/events" || path.starts_with("/events/") || path.starts_with("/storage") || path == "/info"
}

/// The front door: authenticates, routes, counts.
pub(crate) async fn handle(
    app: Arc<App>,
    router: Router,
    door: Door,
    mut request: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let compat = is_compat(request.uri().path());
    let response = match authenticate(&app, &door, &request).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(infallible) => match infallible {},
            };
            if compat && (response.status().is_client_error() || response.status().is_server_error()) {
                compat::rewrite_error(response).await
            } else {
                response
            }
        }
        Err(error) if compat => compat::error_response(error),
        Err(error) => error.into_response(),
    };
    app.metrics.response(response.status().as_u16());
    response
}

async fn authenticate<B>(app: &Arc<App>, door: &Door, request: &Request<B>) -> ApiResult<Principal> {
    if matches!(door, Door::Unix) {
        return Ok(Principal::Local);
    }
    let credentials = request.headers().get(header::AUTHORIZATION).map(|value| value.to_str().unwrap_or(""));
    let Some(credentials) = credentials else {
        if app.config.insecure_no_auth || request.uri().path() == "/healthz" {
            return Ok(Principal::Anonymous);
        }
        return Err(ApiError::unauthorized("authentication required: HTTP Basic or a bearer token"));
    };
    if let Some(token) = credentials.strip_prefix("Bearer ") {
        return app.users.authenticate_token(token.trim()).map(Principal::User);
    }
    if let Some(encoded) = credentials.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| ApiError::unauthorized("malformed Basic credentials"))?;
        let (name, password) =
            decoded.split_once(':').ok_or_else(|| ApiError::unauthorized("malformed Basic credentials"))?;
        let (name, password) = (name.to_owned(), password.to_owned());
        let app = app.clone();
        // argon2id is deliberately slow: off the async threads.
        return tokio::task::spawn_blocking(move || app.users.authenticate_password(&name, &password))
            .await
            .map_err(|error| ApiError::internal(error.to_string()))?
            .map(Principal::User);
    }
    Err(ApiError::unauthorized("unsupported Authorization scheme: use Basic or Bearer"))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let mut response = (self.status, axum::Json(self.to_json())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"cairn\""));
        }
        response
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Principal, ApiError> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| ApiError::internal("request was not authenticated"))
    }
}

async fn no_route(request: Request<Body>) -> Response<Body> {
    let error = ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!("no route {} {}; GET /openapi.json lists them", request.method(), request.uri().path()),
    );
    if is_compat(request.uri().path()) { compat::error_response(error) } else { error.into_response() }
}

async fn method_not_allowed(request: Request<Body>) -> Response<Body> {
    let error = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}; GET /openapi.json lists the routes", request.method(), request.uri().path()),
    );
    if is_compat(request.uri().path()) { compat::error_response(error) } else { error.into_response() }
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
            .map_err(|error| ApiError::invalid("query string", error))
    }
}

impl Params {
    /// The value of `name`, if given (once).
    pub(crate) fn take(&mut self, name: &str) -> ApiResult<Option<String>> {
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
    pub(crate) fn flag(&mut self, name: &str) -> ApiResult<bool> {
        match self.take(name)?.as_deref() {
            None | Some("false" | "0") => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some(other) => Err(ApiError::invalid(name, format!("{other:?} is not true or false"))),
        }
    }

    /// A non-negative integer.
    pub(crate) fn number(&mut self, name: &str) -> ApiResult<Option<u64>> {
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

/// Runs a blocking engine call on the blocking pool.
pub(crate) async fn blocking<T, F>(app: &Arc<App>, work: F) -> ApiResult<T>
where
    F: FnOnce(&Store) -> ApiResult<T> + Send + 'static,
    T: Send + 'static,
{
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || work(&store)).await.map_err(|error| ApiError::internal(error.to_string()))?
}

/// Reads a whole body of at most `max` bytes; 413 (without reading on) when
/// it is bigger, by its Content-Length or as it arrives.
pub(crate) async fn read_body(headers: &HeaderMap, body: Body, what: &str, max: u64) -> ApiResult<Bytes> {
    if let Some(length) = headers.get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        && length > max
    {
        return Err(ApiError::too_large(what, max));
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(what, max)),
        Err(error) => Err(ApiError::invalid("body", format!("could not be read: {error}"))),
    }
}

/// A header's value as text, if present.
pub(crate) fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> ApiResult<Option<&'h str>> {
    headers
        .get(name)
        .map(|value| value.to_str().map_err(|_| ApiError::invalid(name, "is not visible ASCII")))
        .transpose()
}

/// Whether `If-None-Match` lists `etag` (or `*`).
pub(crate) fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    let Some(value) = headers.get(header::IF_NONE_MATCH).and_then(|value| value.to_str().ok()) else { return false };
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag.trim_start_matches("W/"))
}

/// A 304 with the entity tag.
pub(crate) fn not_modified_response(etag: &str) -> Response<Body> {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
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
pub(crate) fn to_json(value: &impl serde::Serialize) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|error| ApiError::internal(error.to_string()))
}
