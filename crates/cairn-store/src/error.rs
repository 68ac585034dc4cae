//! `StoreError`: the one error type of the engine, with a stable code per kind.
//!
//! Front ends map these to their wire form in one place each; messages say
//! what happened and, where it helps, what to do next.

use std::path::PathBuf;
use std::sync::Arc;

use crate::id::EventId;

/// Every way an engine call can fail. Cloneable, so one failure can be
/// reported to every waiter it concerns (a commit group) as the same error,
/// I/O kind included.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A value from the outside broke a rule; nothing was written.
    #[error("invalid {field}: {rule}")]
    Invalid {
        /// The field that broke the rule (`topic`, `meta`, `ttl`, ...).
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
        /// The topic whose expectation failed.
        topic: String,
        /// The expectation as written (`none`, `7`, `unchanged-since:<id>`).
        expected: String,
        /// The topic's actual last seq, if it has events.
        actual_seq: Option<u64>,
        /// The id of the topic's last event, if any.
        actual_id: Option<EventId>,
    },
    /// An idempotency key was used before, within the window, for a
    /// different write (other topics, payloads or types); nothing was written.
    #[error("idempotency key {key:?} was used for a different write; use a new key for a new write")]
    IdempotencyConflict {
        /// The key as the store keeps it.
        key: String,
    },
    /// A payload or batch is bigger than allowed.
    #[error("{what} too large: {bytes} bytes, the maximum is {max}")]
    TooLarge {
        /// What was too large (`payload`, `batch`).
        what: &'static str,
        /// Its size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The thing asked for does not exist.
    #[error("{what} not found: {key}")]
    NotFound {
        /// The kind of thing (`event`, `content`, `consumer`).
        what: &'static str,
        /// Its key as given.
        key: String,
    },
    /// Content cannot be deleted while a stored event's payload is that content.
    #[error("{hash} is the payload of event {event}; remove the event first")]
    InUse {
        /// The content's hash (SRI).
        hash: String,
        /// An event whose payload it is.
        event: EventId,
    },
    /// Another process holds the store's lock.
    #[error("store {} is locked by another process{}; stop it or talk to it through its socket", dir.display(), holder.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Locked {
        /// The store directory.
        dir: PathBuf,
        /// What the lock file says about its holder (pid, command).
        holder: Option<String>,
    },
    /// The store is closing and takes no new writes.
    #[error("the store is shutting down")]
    ShuttingDown,

    /// The storage behind the store cannot be reached or refuses writes for
    /// now (a database restarting, failing over, or read-only): retry.
    #[error("storage unavailable: {detail}")]
    Unavailable {
        /// What happened, for a human.
        detail: String,
    },
    /// An earlier write failed in a way that makes the log's state uncertain
    /// (for example a failed fdatasync); writes are refused until reopen.
    #[error("the store refuses writes after an earlier failure ({reason}); close and reopen it")]
    Poisoned {
        /// What went wrong first.
        reason: String,
    },
    /// Data on disk is damaged.
    #[error("corrupt data at {location}: {detail}")]
    Corrupt {
        /// Where (a segment and offset, or a content hash).
        location: String,
        /// What is wrong.
        detail: String,
    },
    /// The index (fjall) failed.
    #[error("index error: {0}")]
    Index(String),
    /// An I/O error from the operating system.
    #[error("{context}: {source}")]
    Io {
        /// What the engine was doing.
        context: String,
        /// The underlying error, shared (not copied) between waiters.
        #[source]
        source: Arc<std::io::Error>,
    },
}

impl StoreError {
    /// A stable, machine-readable code for this kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Invalid { .. } => "invalid",
            StoreError::ExpectationFailed { .. } => "expectation_failed",
            StoreError::IdempotencyConflict { .. } => "idempotency_conflict",
            StoreError::TooLarge { .. } => "too_large",
            StoreError::NotFound { .. } => "not_found",
            StoreError::InUse { .. } => "in_use",
            StoreError::Locked { .. } => "locked",
            StoreError::ShuttingDown => "shutting_down",
            StoreError::Unavailable { .. } => "unavailable",
            StoreError::Poisoned { .. } => "poisoned",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Index(_) => "index",
            StoreError::Io { .. } => "io",
        }
    }

    pub(crate) fn invalid(field: &'static str, rule: impl Into<String>) -> StoreError {
        StoreError::Invalid { field, rule: rule.into() }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source: Arc::new(source) }
    }

    /// The kind of the underlying I/O error, if this is one.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            StoreError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    pub(crate) fn not_found(what: &'static str, key: impl Into<String>) -> StoreError {
        StoreError::NotFound { what, key: key.into() }
    }
}

impl From<fjall::Error> for StoreError {
    fn from(error: fjall::Error) -> StoreError {
        StoreError::Index(error.to_string())
    }
}

/// The engine's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
