//! `ServiceError`: every way a service operation fails, protocol-neutral.
//!
//! No HTTP status and no wire form lives here: each front end renders these
//! in one place (`cairn-server`'s `http/error.rs` as JSON or the
//! compatibility form, `resp/error.rs` as error lines; the CLI as one line
//! on stderr). Each kind has a stable code. A client's fault carries what
//! to do next; a storage failure (`Storage`) is the one kind a human must
//! look at, and front ends log it.

use std::time::Duration;

use cairn_store::{EventId, StoreError};

/// A failed service call.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// A value from the caller broke a rule; nothing was done.
    #[error("invalid {field}: {rule}")]
    Invalid {
        /// The field (parameter, header, argument) that broke the rule.
        field: &'static str,
        /// The rule, in words.
        rule: String,
    },
    /// The topic's state did not match the write's expectation; nothing was written.
    #[error(
        "expectation failed on topic {topic}: expected {expected}, actual last seq {}",
        actual_seq.map_or_else(|| "none (empty topic)".to_owned(), |seq| seq.to_string())
    )]
    ExpectationFailed {
        /// The topic.
        topic: String,
        /// The expectation as written.
        expected: String,
        /// The topic's last seq, if it has events.
        actual_seq: Option<u64>,
        /// The id of its last event, if any.
        actual_id: Option<EventId>,
    },
    /// A conditional write's entity tags did not match the topic's current
    /// one (HTTP `If-Match`); nothing was written.
    #[error(
        "precondition failed on topic {topic}: the expectation on its entity tag failed; the current one is {etag}"
    )]
    PreconditionFailed {
        /// The topic.
        topic: String,
        /// Its current entity tag.
        etag: String,
    },
    /// Keys a transaction touches changed after its base revision; nothing
    /// was written.
    #[error("conflict: keys changed after the base revision: {}", keys.join(", "))]
    Conflict {
        /// Each conflicting key: `<topic> <key> (rev <current>)`.
        keys: Vec<String>,
    },
    /// An idempotency key was used before for a different write.
    #[error(
        "idempotency key {key:?} was used for a different write (other topics or content); use a new key for a new write"
    )]
    IdempotencyConflict {
        /// The key.
        key: String,
    },
    /// Content is still the payload of a stored event.
    #[error("{what} is in use: {reason}")]
    InUse {
        /// What (`content`).
        what: &'static str,
        /// Why, in words.
        reason: String,
    },
    /// The thing to create exists already.
    #[error("{what} {key} exists already")]
    Exists {
        /// The kind of thing (`user`, `group`).
        what: &'static str,
        /// Its name.
        key: String,
    },
    /// A payload, body or batch is bigger than allowed.
    #[error("{what} too large: {}the maximum is {max} bytes", known_size(*bytes))]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size (0 when not known: the limit was crossed while reading).
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The thing asked for does not exist, or the caller may not know of it.
    #[error("{what} not found: {key}")]
    NotFound {
        /// The kind of thing.
        what: &'static str,
        /// Its key as given.
        key: String,
    },
    /// The caller did not prove who they are (or the proof was revoked).
    #[error("{reason}")]
    Unauthenticated {
        /// Why.
        reason: String,
    },
    /// The caller is known but may not do this.
    #[error("{reason}")]
    Forbidden {
        /// Why.
        reason: String,
    },
    /// Too many failed logins from this client or for this user: try again later.
    #[error("too many failed logins; try again in {} ms", retry_after.as_millis())]
    Throttled {
        /// When another attempt may be made.
        retry_after: Duration,
    },
    /// The service is too busy to take this now (bounded work queues are full).
    #[error("the server is busy ({reason}); try again shortly")]
    Overloaded {
        /// Which bound was hit.
        reason: &'static str,
    },
    /// The service is stopping.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The storage behind the service is out of reach for now (its
    /// database restarting, failing over or read-only): try again.
    #[error("{reason}; try again shortly")]
    Unavailable {
        /// What happened.
        reason: String,
    },
    /// Storage failed (damage, a failed fsync, the disk): needs a human.
    #[error("{0}")]
    Storage(StoreError),
}

impl ServiceError {
    /// A stable, machine-readable code for this kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Invalid { .. } => "invalid",
            ServiceError::ExpectationFailed { .. } => "expectation_failed",
            ServiceError::PreconditionFailed { .. } => "precondition_failed",
            ServiceError::IdempotencyConflict { .. } => "idempotency_conflict",
            ServiceError::Conflict { .. } => "conflict",
            ServiceError::InUse { .. } => "in_use",
            ServiceError::Exists { .. } => "exists",
            ServiceError::TooLarge { .. } => "too_large",
            ServiceError::NotFound { .. } => "not_found",
            ServiceError::Unauthenticated { .. } => "unauthorized",
            ServiceError::Forbidden { .. } => "forbidden",
            ServiceError::Throttled { .. } => "throttled",
            ServiceError::Overloaded { .. } => "overloaded",
            ServiceError::ShuttingDown => "shutting_down",
            ServiceError::Unavailable { .. } => "unavailable",
            ServiceError::Storage(error) => error.code(),
        }
    }

    /// An invalid value.
    pub fn invalid(field: &'static str, rule: impl Into<String>) -> ServiceError {
        ServiceError::Invalid { field, rule: rule.into() }
    }

    /// Something that does not exist (or must look so to this caller).
    pub fn not_found(what: &'static str, key: impl std::fmt::Display) -> ServiceError {
        ServiceError::NotFound { what, key: key.to_string() }
    }

    /// Not allowed.
    pub fn forbidden(reason: impl Into<String>) -> ServiceError {
        ServiceError::Forbidden { reason: reason.into() }
    }

    /// Not authenticated.
    pub fn unauthenticated(reason: impl Into<String>) -> ServiceError {
        ServiceError::Unauthenticated { reason: reason.into() }
    }

    /// Whether this is the server's problem rather than the caller's (to log).
    pub fn is_internal(&self) -> bool {
        matches!(self, ServiceError::Storage(_))
    }
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> ServiceError {
        match error {
            StoreError::Invalid { field, rule } => ServiceError::Invalid { field, rule },
            StoreError::ExpectationFailed { topic, expected, actual_seq, actual_id } => {
                ServiceError::ExpectationFailed { topic, expected, actual_seq, actual_id }
            }
            StoreError::TooLarge { what, bytes, max } => ServiceError::TooLarge { what, bytes, max },
            StoreError::NotFound { what, key } => ServiceError::NotFound { what, key },
            StoreError::InUse { hash, event } => ServiceError::InUse {
                what: "content",
                reason: format!("{hash} is the payload of event {event}; remove the event first"),
            },
            StoreError::ShuttingDown => ServiceError::ShuttingDown,
            StoreError::Unavailable { detail } => {
                ServiceError::Unavailable { reason: format!("storage unavailable: {detail}") }
            }
            other => ServiceError::Storage(other),
        }
    }
}

/// A service call's result.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// "N bytes, " when a size is known (0: the limit was crossed while reading).
fn known_size(bytes: u64) -> String {
    if bytes == 0 { String::new() } else { format!("{bytes} bytes, ") }
}
