//! The web console and a browser's way in.
//!
//! The console is a page app of plain files (`crates/cairn-server/console/`),
//! embedded in the binary with `include_str!`: no build step, no CDN. It
//! calls the same `/v1` API as every client, so it can show a user only
//! what the service lets that user see. Its files need no credentials
//! (they hold no data); the API behind them does.
//!
//! A browser logs in with `POST /v1/session` (user and password, under the
//! service's login budget) and gets a random secret in an HttpOnly,
//! SameSite=Strict cookie (`Secure` with TLS) and, in the reply, the
//! session's check, which the page keeps per origin and sends with every
//! request (`sessions.rs` says why); `DELETE /v1/session` logs out;
//! `GET /v1/session` says who the caller is on any door. The front
//! door (`mod.rs`) accepts the cookie where no `Authorization` header is
//! given and refuses a state-changing request authenticated by it unless
//! the browser says it comes from this server's own page or a listed
//! origin (`Origin`): cross-site request forgery.

use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use cairn_service::Principal;

use super::{ApiError, ApiResult, Segment, State, Who, json_response, parse_json, read_body, to_json};
use crate::listen::Door;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "cairn_session";
/// The most bytes of a login request.
const LOGIN_BODY_BYTES_MAX: u64 = 4096;

/// The console's files: (name, media type, content).
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../../console/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../console/app.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("../../console/app.css")),
];

/// What the console's page may load and run: its own files only, so an
/// event's payload, which it shows as text, can never run as script.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
     connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn file(name: &str) -> ApiResult<Response<Body>> {
    let (_, kind, text) =
        FILES.iter().find(|(file, _, _)| *file == name).ok_or_else(|| ApiError::not_found("console file", name))?;
    let mut response = Response::new(Body::from(*text));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_POLICY));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    Ok(response)
}

/// `GET /` and `GET /console/`: the console's page.
pub(crate) async fn page() -> ApiResult<Response<Body>> {
    file("index.html")
}

/// `GET /console/{file}`: one of the console's files.
pub(crate) async fn asset(Segment(name): Segment) -> ApiResult<Response<Body>> {
    file(&name)
}

/// Whether a path is one of the console's files (served without credentials).
pub(crate) fn is_public(method: &axum::http::Method, path: &str) -> bool {
    (method == axum::http::Method::GET || method == axum::http::Method::HEAD)
        && (path == "/" || path == "/console/" || path.starts_with("/console/"))
        || (path == "/v1/session" && (method == axum::http::Method::POST || method == axum::http::Method::DELETE))
}

/// The values of this request's session cookies (another web server on the
/// same host can plant more of them, on other paths; all are given to the
/// service, which looks the session up by its check and ignores values
/// that are not of the form it gives).
pub(crate) fn cookies(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, value)| *name == COOKIE && !value.trim().is_empty())
        .map(|(_, value)| value.trim())
        .collect()
}

/// The session check a request carries: the `Cairn-Session-Check` header,
/// or a `session_check` query parameter (for `EventSource`, which cannot
/// send headers), which is taken out of the URI so routes never see it.
pub(crate) fn take_check<B>(request: &mut axum::http::Request<B>) -> Option<String> {
    let header =
        request.headers().get(&CHECK_HEADER).and_then(|value| value.to_str().ok()).map(|v| v.trim().to_owned());
    let param = take_check_param(request);
    header.or(param)
}

/// Takes `session_check` out of the request's query, if there.
fn take_check_param<B>(request: &mut axum::http::Request<B>) -> Option<String> {
    let query = request.uri().query()?;
    if !query.contains("session_check=") {
        return None;
    }
    let mut pairs = serde_urlencoded::from_str::<Vec<(String, String)>>(query).ok()?;
    let at = pairs.iter().position(|(name, _)| name == "session_check")?;
    let (_, check) = pairs.remove(at);
    let rest = serde_urlencoded::to_string(&pairs).ok()?;
    let path = request.uri().path();
    let rebuilt = if rest.is_empty() { path.to_owned() } else { format!("{path}?{rest}") };
    *request.uri_mut() = rebuilt.parse().ok()?;
    Some(check)
}

/// The header that carries a browser session's check.
pub(crate) static CHECK_HEADER: axum::http::HeaderName = axum::http::HeaderName::from_static("cairn-session-check");

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user: String,
    password: String,
}

/// Who a principal is, as the console shows it.
fn whoami(principal: &Principal) -> serde_json::Value {
    match principal {
        Principal::Local => serde_json::json!({ "kind": "local", "admin": true, "read": [">"], "write": [">"] }),
        Principal::Anonymous => {
            serde_json::json!({ "kind": "anonymous", "admin": false, "read": [">"], "write": [">"] })
        }
        Principal::User(session) => {
            let user = session.user();
            let list =
                |patterns: &[cairn_service::Pattern]| patterns.iter().map(ToString::to_string).collect::<Vec<_>>();
            serde_json::json!({
                "kind": "user",
                "user": user.name,
                "admin": user.admin,
                "read": list(&user.read),
                "write": list(&user.write),
            })
        }
    }
}

/// `POST /v1/session`: `{"user","password"}` in, a session cookie out.
pub(crate) async fn login(
    AxumState(app): State,
    door: axum::Extension<Door>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    let body = read_body(&app, &headers, body, "login", LOGIN_BODY_BYTES_MAX).await?;
    let Login { user, password } = parse_json(&body, "{\"user\": …, \"password\": …}")?;
    let from = match door.0 {
        Door::Tcp(peer) => Some(peer.ip()),
        Door::Unix => None,
    };
    let session = app.service.session_open(&user, &password, from).await?;
    let (secret, principal) = (&session.secret, &session.principal);
    let secure = if app.config.tls.is_some() { "; Secure" } else { "" };
    let max_age = cairn_service::SESSION_LIFETIME.as_secs();
    let cookie = format!("{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    let mut body = whoami(principal);
    body["session_check"] = serde_json::Value::String(session.check.clone());
    let mut response = json_response(StatusCode::OK, to_json(&body), None);
    let headers = response.headers_mut();
    headers
        .insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(|_| ApiError::invalid("session", "bad"))?);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /v1/session`: who the caller is and what they may read and write.
pub(crate) async fn show(AxumState(app): State, Who(principal): Who) -> ApiResult<Response<Body>> {
    if !app.service.is_current(&principal) {
        return Err(cairn_service::ServiceError::unauthenticated("the session's credentials were revoked").into());
    }
    Ok(json_response(StatusCode::OK, to_json(&whoami(&principal)), None))
}

/// `DELETE /v1/session`: ends the cookie's session (logout).
pub(crate) async fn logout(
    AxumState(app): State,
    check: Option<axum::Extension<SessionCheck>>,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    // Only the session whose check the page gives: another server on the
    // host cannot log the console out with a cookie it planted.
    if let Some(axum::Extension(SessionCheck(check))) = check {
        app.service.session_close(&cookies(&headers), &check);
    }
    let secure = if app.config.tls.is_some() { "; Secure" } else { "" };
    let expired = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    let mut response = super::no_content();
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// The request's session check (header or parameter), for the routes.
#[derive(Clone)]
pub(crate) struct SessionCheck(pub(crate) String);
