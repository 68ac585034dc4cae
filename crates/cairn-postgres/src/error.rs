//! PostgreSQL errors as the store's errors: what a client can retry
//! (unreachable, restarting, read-only) is `Unavailable`; a bad
//! configuration (permissions) says what to grant.

use std::sync::Arc;

use cairn_store::StoreError;
use tokio_postgres::error::SqlState;

/// Maps an error of `context` (what cairn was doing).
pub(crate) fn pg_error(context: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |error| convert(context, &error)
}

pub(crate) fn convert(context: &str, error: &tokio_postgres::Error) -> StoreError {
    let Some(db) = error.as_db_error() else {
        // No answer from the server: the connection broke or never opened.
        return StoreError::Unavailable { detail: format!("PostgreSQL, {context}: {}", describe(error)) };
    };
    let code = db.code();
    if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        return StoreError::Unavailable {
            detail: format!("PostgreSQL is read-only ({context}): is this a standby? {}", db.message()),
        };
    }
    if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        return StoreError::Io {
            context: format!("PostgreSQL, {context}"),
            source: Arc::new(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} (cairn's database user needs to create tables in its schema, and to select, insert, \
                     update and delete its cairn_* tables)",
                    db.message()
                ),
            )),
        };
    }
    if *code == SqlState::LOCK_NOT_AVAILABLE || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT {
        return StoreError::Unavailable { detail: format!("PostgreSQL, {context}: {}", db.message()) };
    }
    let class = &code.code()[..2];
    // 08: connection exception; 57: operator intervention (shutdown,
    // restart, crash recovery); 53: insufficient resources; 40: a
    // transaction rolled back (serialization, deadlock): all retryable.
    if matches!(class, "08" | "57" | "53" | "40") {
        return StoreError::Unavailable { detail: format!("PostgreSQL, {context}: {}", db.message()) };
    }
    StoreError::Io {
        context: format!("PostgreSQL, {context}"),
        source: Arc::new(std::io::Error::other(format!("{} ({})", db.message(), code.code()))),
    }
}

/// The error and its cause ("error connecting to server: Connection refused").
fn describe(error: &tokio_postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

/// Maps a pool error.
pub(crate) fn pool_error(context: &'static str) -> impl Fn(deadpool_postgres::PoolError) -> StoreError {
    move |error| match error {
        deadpool_postgres::PoolError::Backend(error) => convert(context, &error),
        other => StoreError::Unavailable { detail: format!("PostgreSQL, {context}: {other}") },
    }
}
