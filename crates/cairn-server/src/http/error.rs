//! HTTP errors: a service error, or one of HTTP's own (no route, a bad
//! method or media type, a slow body, a refused origin), rendered in one
//! place: the native form `{"error":{"code","message",…}}`, or on the
//! compatibility routes `{"status":"error","errorMessage":…}`.
//!
//! The error travels with its response (an extension), so the front door
//! renders a compatibility route's error from the error itself, never by
//! re-reading a body. A storage failure is logged here, once; client
//! faults are not logged and carry no internals.

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};
use axum::response::IntoResponse;
use cairn_service::ServiceError;

/// A failure to report to an HTTP client.
#[derive(Debug, Clone)]
pub(crate) enum ApiError {
    /// What the service said.
    Service(ServiceError),
    /// No route has this path.
    NoRoute { method: String, path: String },
    /// The route exists, the method does not.
    MethodNotAllowed { method: String, path: String },
    /// The body's media type is not one the route takes.
    UnsupportedMediaType(String),
    /// The body did not arrive in time.
    BodyTimeout,
    /// A browser-reachable door refused the request's Origin or Host.
    CrossOrigin(String),
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> ApiError {
        ApiError::Service(error)
    }
}

impl From<cairn_service::StoreError> for ApiError {
    fn from(error: cairn_service::StoreError) -> ApiError {
        ApiError::Service(error.into())
    }
}

impl ApiError {
    /// 400 for a bad request field.
    pub(crate) fn invalid(field: &'static str, rule: impl Into<String>) -> ApiError {
        ApiError::Service(ServiceError::invalid(field, rule))
    }

    /// 404.
    pub(crate) fn not_found(what: &'static str, key: impl std::fmt::Display) -> ApiError {
        ApiError::Service(ServiceError::not_found(what, key))
    }

    /// 413 while reading a body.
    pub(crate) fn too_large(what: &'static str, max: u64) -> ApiError {
        ApiError::Service(ServiceError::TooLarge { what, bytes: 0, max })
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::Service(error) => status(error),
            ApiError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::CrossOrigin(_) => StatusCode::FORBIDDEN,
        }
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::Service(error) => error.code(),
            ApiError::NoRoute { .. } => "no_route",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::BodyTimeout => "body_timeout",
            ApiError::CrossOrigin(_) => "cross_origin",
        }
    }

    pub(crate) fn message(&self) -> String {
        match self {
            ApiError::Service(error) => error.to_string(),
            ApiError::NoRoute { method, path } => format!("no route {method} {path}; GET /openapi.json lists them"),
            ApiError::MethodNotAllowed { method, path } => {
                format!("{method} is not allowed on {path}; GET /openapi.json lists the routes")
            }
            ApiError::UnsupportedMediaType(message) => message.clone(),
            ApiError::BodyTimeout => "the request body did not arrive in time".to_owned(),
            ApiError::CrossOrigin(message) => message.clone(),
        }
    }

    /// Extra fields of the native form.
    fn details(&self) -> Option<serde_json::Value> {
        match self {
            ApiError::Service(ServiceError::ExpectationFailed { topic, actual_seq, actual_id, .. }) => {
                Some(serde_json::json!({
                    "topic": topic,
                    "actual_seq": actual_seq,
                    "actual_id": actual_id.map(|id| id.to_string()),
                }))
            }
            ApiError::Service(ServiceError::PreconditionFailed { etag, .. }) => {
                Some(serde_json::json!({ "etag": etag }))
            }
            ApiError::Service(ServiceError::Throttled { retry_after }) => Some(
                serde_json::json!({ "retry_after_ms": u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX) }),
            ),
            _ => None,
        }
    }

    /// The native JSON body.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut error = serde_json::json!({ "code": self.code(), "message": self.message() });
        if let (Some(serde_json::Value::Object(extra)), Some(object)) = (self.details(), error.as_object_mut()) {
            object.extend(extra);
        }
        serde_json::json!({ "error": error })
    }

    /// The compatibility routes' form.
    pub(crate) fn compat_response(&self) -> Response<Body> {
        let body = serde_json::json!({ "status": "error", "errorMessage": self.message() });
        self.respond(serde_json::to_vec(&body).unwrap_or_default())
    }

    fn respond(&self, body: Vec<u8>) -> Response<Body> {
        let status = self.status();
        if let ApiError::Service(error) = self
            && error.is_internal()
        {
            tracing::error!("request failed: {error}");
        }
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            ApiError::Service(ServiceError::Unauthenticated { .. }) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"cairn\""));
            }
            ApiError::Service(ServiceError::Throttled { retry_after }) => {
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
            }
            ApiError::Service(
                ServiceError::Overloaded { .. } | ServiceError::ShuttingDown | ServiceError::Unavailable { .. },
            ) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Service(ServiceError::PreconditionFailed { etag, .. }) => {
                if let Ok(value) = HeaderValue::from_str(etag) {
                    headers.insert(header::ETAG, value);
                }
            }
            ApiError::BodyTimeout => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response.extensions_mut().insert(self.clone());
        response
    }
}

/// The status of each service error kind: the one place it is decided.
fn status(error: &ServiceError) -> StatusCode {
    match error {
        ServiceError::Invalid { .. } => StatusCode::BAD_REQUEST,
        ServiceError::ExpectationFailed { .. }
        | ServiceError::Conflict { .. }
        | ServiceError::IdempotencyConflict { .. }
        | ServiceError::InUse { .. }
        | ServiceError::Exists { .. } => StatusCode::CONFLICT,
        ServiceError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
        ServiceError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ServiceError::NotFound { .. } => StatusCode::NOT_FOUND,
        ServiceError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
        ServiceError::Forbidden { .. } => StatusCode::FORBIDDEN,
        ServiceError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
        ServiceError::Overloaded { .. } | ServiceError::ShuttingDown | ServiceError::Unavailable { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let body = serde_json::to_vec(&self.to_json()).unwrap_or_default();
        self.respond(body)
    }
}
