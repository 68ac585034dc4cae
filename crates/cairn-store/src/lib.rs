//! cairn-store: the cairn event store engine, embeddable, with no networking.
//!
//! A store is a directory. Events are appended to an append-only log of
//! CRC-framed records by a single writer that commits whatever is waiting as
//! one group (one write, one fdatasync). Indexes in fjall (by id, by topic
//! and seq, consumers, idempotency keys) are derived from the log and rebuilt
//! from its tail on open. Payloads above a small threshold live in a
//! content-addressed store (sha256). Subscriptions read history from storage,
//! then live events from an in-memory ring, with no gap at the switch.
//!
//! Code map:
//! - [`Store`] (`store.rs`): the API; validation at the edge.
//! - `log/`: `codec` (record format), `segment` (files, maps), `writer`
//!   (group commit), `recovery` (tail scan, torn-tail cut, replay).
//! - `index/`: fjall keyspaces, `Txn` (a batch that sees itself), `apply`
//!   (records → index; shared by writer and recovery).
//! - `read.rs` (queries), `live.rs` (recent events).
//! - `storage.rs`: the storage seam ([`Storage`]), the async contract a
//!   service needs from any backend; `local.rs` ([`Local`]) is this
//!   engine behind it, with the blocking policy; `subscription.rs` is the
//!   history-then-live algorithm, written once over the seam;
//!   `conformance.rs` checks any backend against the contract.
//! - `json.rs`: the JSON form of events shared by all front ends.
//! - `cas.rs` (content files), `verify.rs`, `limits.rs`, `error.rs`.
//! - `faults.rs`: fault injection for tests (crash, power loss, EIO, ENOSPC).
//! - Value types: `event.rs`, `topic.rs`, `id.rs`.
//!
//! This crate never opens a socket.

mod backup;
mod cas;
mod compact;
pub mod conformance;
mod error;
mod event;
pub mod faults;
mod id;
mod index;
pub mod json;
pub mod limits;
mod live;
mod local;
mod log;
mod private;
mod progress;
mod read;
mod storage;
mod store;
mod subscription;
mod topic;
mod verify;

/// Internals that `cairn-bench` measures on their own; not a stable API.
#[doc(hidden)]
pub mod bench {
    /// The CRC-32C every event frame is written and checked with.
    pub fn frame_crc(bytes: &[u8]) -> u32 {
        crate::log::crc::crc32c(bytes)
    }
}

/// Entry points for fuzz targets and property tests (`fuzz/`); not a
/// stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes a record body (its crc already checked) as recovery would.
    pub fn decode_record(body: &[u8]) -> bool {
        crate::log::codec::decode_record(body).is_ok()
    }

    /// Frames `body` as a record (length and crc) and reads it back as the
    /// tail scan does.
    pub fn frame_and_unframe(body: &[u8]) -> bool {
        let mut framed = Vec::new();
        crate::log::codec::frame(&mut framed, |out| out.extend_from_slice(body));
        matches!(crate::log::codec::unframe(&framed), Ok(Some(read)) if read == body)
    }

    /// Every value parser of the store's API, on one input.
    pub fn parse_values(text: &str) {
        let _ = crate::Topic::new(text);
        let _ = crate::Pattern::parse(text);
        let _ = crate::parse_duration_ms(text);
        let _ = crate::EventId::parse(text);
        let _ = crate::Hash::parse(text);
        let _ = crate::Expect::parse(text);
        let _ = crate::Ttl::parse(text);
        let _ = crate::check_meta(text);
        let _ = crate::SyncMode::parse(text);
    }

    /// One line of an NDJSON export, as `import` reads it.
    pub fn import_line(line: &[u8]) {
        if let Ok(json) = serde_json::from_slice::<crate::json::EventJson>(line) {
            let _ = json.into_imported();
        }
    }
}

pub use backup::{BACKUP_MANIFEST, BackupProgress, BackupReport, ExtraFiles};
pub use compact::CompactReport;
pub use error::{Result, StoreError};
pub use event::{
    Batch, Event, EventRef, Expect, Hash, InlineBytes, NewEvent, Payload, PayloadRef, Ttl, check_idempotency_key,
    check_meta, check_meta_value, check_new_event, check_type, check_user, fingerprint, parse_duration_ms,
};
pub use id::EventId;
pub use live::Live;
pub use local::Local;
pub use log::codec::StateOp;
pub use log::recovery::{RecoveryReport, Truncation};
pub use read::{Cursor, Query, ReadIter};
pub use storage::{BoxFuture, Exclusive, History, Item, Limits, Reader, StateEntries, Storage, Window};
pub use store::{
    DatabaseStats, Imported, Options, Pending, Store, StoreStats, SyncMode, TopicInfo, check_state_ops, lock_directory,
};
pub use subscription::{Delivery, SubscribeOptions, Subscription};
pub use topic::{Level, Pattern, SYSTEM_PREFIX, Topic};
pub use verify::VerifyReport;
