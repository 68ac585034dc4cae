//! cairn-service: the one protocol-neutral service every front end calls
//! (HTTP, the compatibility routes, the Redis protocol with its MeiliES
//! commands, the CLI), so authorization, user stamping, limits and the
//! blocking policy live in one place. Front ends parse, call, render.
//!
//! Code map:
//! - [`Service`] (`service.rs`): events (append, read, get, head, topics,
//!   remove, trim, delete a topic, import, verify, info); every operation
//!   takes the caller's [`Principal`].
//! - `follow.rs`: history then live, bounded, with payloads, ending on
//!   shutdown and on revocation ([`Follow`]).
//! - `content.rs`: content by hash, served only to who may see it.
//! - `consumers/`: cursors (`mod.rs`) and consumer groups (`group.rs`, a
//!   pure state machine; `groups.rs`, its operations), one durable
//!   mechanism (state records through the seam).
//! - `accounts.rs`, `users.rs`, `logins.rs`: users and tokens, who may
//!   manage them, password checks under a budget.
//! - `sessions.rs`: browser sessions (a login kept in a cookie), bounded.
//! - `principal.rs`: who is asking and what they may read and write.
//! - `glob.rs`: Redis glob patterns, iterative and bounded.
//! - `stream_id.rs`: positions within a topic (`<ms>-<seq>`).
//! - `error.rs`: [`ServiceError`], with no wire form in it.
//!
//! Storage is reached only through the seam, `cairn_store::Storage`; the
//! value types come from `cairn-store` and are re-exported here, so front
//! ends need no other crate. This crate never opens a socket.

mod accounts;
mod chunked;
mod consumers;
mod content;
mod error;
mod follow;
mod glob;
mod keyed;
mod logins;
mod portable;
mod principal;
mod satellite;
mod service;
mod sessions;
mod stream_id;
mod users;

pub use cairn_store::json;
pub use cairn_store::limits;
pub use cairn_store::{
    BACKUP_MANIFEST, BackupProgress, BackupReport, Batch, Event, EventId, Expect, Hash, Imported, InlineBytes, Limits,
    NewEvent, Options as StoreOptions, Pattern, Payload, Query, RecoveryReport, SYSTEM_PREFIX, Storage, StoreError,
    StoreStats, SyncMode, Topic, TopicInfo, Truncation, Ttl, VerifyReport, check_meta, lock_directory,
    parse_duration_ms,
};
pub use chunked::{CHUNKS_PREFIX, Chunked, ChunkedAppend, ChunkedRead, is_chunked};
pub use consumers::group::Claim;
pub use consumers::groups::{
    AutoClaimed, Entry, GroupInfo, GroupRead, GroupStart, MemberInfo, PendingRow, PendingSummary,
};
pub use consumers::{
    CONSUMER_NAME_BYTES_MAX, Cursor, GROUP_NAME_BYTES_MAX, SNAPSHOT_BYTES_MAX, Snapshot, check_consumer_name,
};
pub use error::{Result, ServiceError};
pub use follow::{Delivered, Follow, FollowOptions};
pub use glob::Glob;
pub use keyed::{Act, ActMeta, Cmd, Committed, KeyState, Trans, action_meta, action_of};
pub use logins::{LOGIN_CHECKS_CONCURRENT, LOGIN_CHECKS_QUEUED_MAX};
pub use portable::ImportRecord;
pub use principal::{PROCESSOR_PREFIX, Principal, Session, User, covers, is_processor_control};
pub use satellite::{QUEUE_TOPIC, QueuedTrans, REJECTED_TOPIC, Rejection, Replicated};
pub use service::{
    Appending, Budget, IDEMPOTENCY_KEY_BYTES_MAX, IfMatch, Info, Item, REPLY_BYTES_MAX, REPLY_ENTRY_BYTES, Read,
    Service, ServiceOptions, Trim, check_idempotency_key, parse_hash, topic_etag,
};
pub use sessions::{BrowserSession, SESSION_IDLE, SESSION_LIFETIME, SESSIONS_MAX, SESSIONS_PER_USER_MAX};
pub use stream_id::StreamId;
pub use users::{IssuedToken, NewUser, USERS_FILE, UserInfo, Users};

/// Opens the local engine on `dir` (creating it) and a service over it;
/// returns what recovery cut from an unfinished write, if anything.
pub async fn open_local(
    dir: std::path::PathBuf,
    store: StoreOptions,
    options: ServiceOptions,
) -> Result<(Service, Option<Truncation>)> {
    let opened = tokio::task::spawn_blocking(move || cairn_store::Store::open(&dir, store))
        .await
        .map_err(|_| ServiceError::ShuttingDown)??;
    let truncated = opened.recovery_report().truncated.clone();
    Ok((Service::local(opened, options).await?, truncated))
}

impl Service {
    /// Drops this handle off the async threads: the last handle of a local
    /// store closes it (the writer finishes, the index is flushed), which
    /// blocks.
    pub async fn close(self) {
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }
}
