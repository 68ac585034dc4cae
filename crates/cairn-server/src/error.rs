//! `ApiError`: every failure a front end reports, with its HTTP status and
//! stable code. Engine errors map here in one place ([`From<StoreError>`]);
//! the HTTP layer renders it as `{"error":{"code","message"}}` (or the
//! compatibility form) and the Redis front end as an `-ERR` line.

use axum::http::StatusCode;
use cairn_store::StoreError;

/// A failure to report to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`invalid`, `not_found`, ...).
    pub code: &'static str,
    /// What happened, for people.
    pub message: String,
    /// Extra JSON fields (an expectation failure's actual seq and id).
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), details: None }
    }

    /// 400 for a bad request field.
    pub fn invalid(field: &str, rule: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("invalid {field}: {rule}"))
    }

    /// 404.
    pub fn not_found(what: &str, key: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found: {key}"))
    }

    /// 401, with the reason.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: authenticated, but not allowed this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 413.
    pub fn too_large(what: &str, max: u64) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("{what} too large: the maximum is {max} bytes"),
        )
    }

    /// 500 for a bug or an environment failure not worth its own code.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The JSON body of the native API.
    pub fn to_json(&self) -> serde_json::Value {
        let mut error = serde_json::json!({ "code": self.code, "message": self.message });
        if let (Some(serde_json::Value::Object(extra)), Some(object)) = (&self.details, error.as_object_mut()) {
            object.extend(extra.clone());
        }
        serde_json::json!({ "error": error })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        let status = match &error {
            StoreError::Invalid { .. } => StatusCode::BAD_REQUEST,
            StoreError::ExpectationFailed { .. } => StatusCode::CONFLICT,
            StoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
            StoreError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Locked { .. }
            | StoreError::Poisoned { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Index(_)
            | StoreError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("request failed: {error}");
        }
        let details = match &error {
            StoreError::ExpectationFailed { topic, actual_seq, actual_id, .. } => Some(serde_json::json!({
                "topic": topic,
                "actual_seq": actual_seq,
                "actual_id": actual_id.map(|id| id.to_string()),
            })),
            _ => None,
        };
        ApiError { status, code: error.code(), message: error.to_string(), details }
    }
}

/// A handler's result.
pub type ApiResult<T> = Result<T, ApiError>;
impl std::error::Error for ApiError {}
