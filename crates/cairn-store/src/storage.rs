//! The storage seam: everything a front-end service needs from storage, as
//! one async trait, so a second backend (PostgreSQL) can stand in for the
//! local engine without touching any front end.
//!
//! The local engine implements it in `local.rs` ([`crate::Local`]); the
//! subscription algorithm (history, then live, no gap and no duplicate at
//! the switch) is written once over it (`subscription.rs`); and
//! `conformance.rs` checks any implementation against the contract below.
//!
//! Contract (what every implementation guarantees, and the conformance
//! suite checks):
//! - ids strictly increase in commit order, across restarts; a reader never
//!   sees id N+1 before id N;
//! - seqs are gapless per topic at write time; removal never renumbers;
//! - expectations (`none`, `exists`, `<seq>`, `unchanged-since:<id>`) are
//!   checked atomically with the write, and a failed one writes nothing;
//! - a batch commits all or nothing, across topics;
//! - an idempotency key returns the original events within the window;
//! - retention: ephemeral events reach live followers and are never
//!   stored; `last:<n>` keeps the newest n; expired `time:` events go;
//! - a read after an acknowledged write sees it;
//! - state records are durable, applied in submission order, and scanned
//!   by prefix;
//! - `history` plus the live window give every committed event to a
//!   subscriber once, in order.
//!
//! Implementations never block an async worker thread: blocking work runs
//! on a blocking pool (the local engine) or is truly asynchronous.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;

use crate::backup::{BackupProgress, BackupReport};
use crate::error::Result;
use crate::event::{Batch, Event, Hash, InlineBytes};
use crate::id::EventId;
use crate::log::codec::StateOp;
use crate::read::Query;
use crate::store::{Imported, Pending, StoreStats, TopicInfo};
use crate::topic::{Pattern, Topic};
use crate::verify::VerifyReport;

/// A boxed future, as the seam's async methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// State entries as `(key, value)` pairs, by key.
pub type StateEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// What a backend needs from a front end and a front end from a backend.
pub trait Storage: Send + Sync + 'static {
    /// The bounds this storage enforces.
    fn limits(&self) -> Limits;

    /// Queues an atomic batch and resolves once it is queued (in call
    /// order: a caller that awaits each submission before the next keeps
    /// its writes in order); the returned [`Pending`] resolves once the
    /// batch is durable. `system` allows the store's own `cairn.` topics.
    fn submit(&self, batch: Batch, system: bool) -> BoxFuture<'_, Result<Pending<Vec<Event>>>>;

    /// Removes the stored events among `ids` durably; returns how many were
    /// stored (the others are skipped).
    fn remove(&self, ids: Vec<EventId>) -> BoxFuture<'_, Result<usize>>;

    /// Restores exported events with their ids and seqs.
    fn import(&self, events: Vec<Imported>) -> BoxFuture<'_, Result<usize>>;

    /// Queues puts and deletes of opaque state keys (front ends' durable
    /// state: consumers, content owners); resolves once queued, in call
    /// order; the [`Pending`] resolves once they are durable.
    fn state_submit(&self, ops: Vec<StateOp>) -> BoxFuture<'_, Result<Pending<()>>>;

    /// Every state entry whose key starts with `prefix`, by key, as of
    /// every acknowledged state write.
    fn state_scan(&self, prefix: Vec<u8>) -> BoxFuture<'_, Result<StateEntries>>;

    /// Resolves once everything acknowledged so far is on disk, whatever
    /// the sync mode.
    fn sync(&self) -> BoxFuture<'_, Result<()>>;

    /// Removes the events whose `time:` retention ran out; returns how many.
    fn expire_now(&self) -> BoxFuture<'_, Result<usize>>;

    /// The stored event with `id`.
    fn get(&self, id: EventId) -> BoxFuture<'_, Result<Option<Event>>>;

    /// Stored events matching `query`, read in chunks, with their payloads
    /// (verified) when `content`.
    fn read(&self, query: Query, content: bool) -> BoxFuture<'_, Result<Box<dyn Reader>>>;

    /// What storage knows of `topic`, if it ever had an event.
    fn head(&self, topic: Topic) -> BoxFuture<'_, Result<Option<TopicInfo>>>;

    /// Every topic that ever had an event, by name.
    fn topics(&self) -> BoxFuture<'_, Result<Vec<TopicInfo>>>;

    /// The payload of `event`, verified: against its hash, or, for a payload
    /// the backend checked when it read the event from a store it wrote
    /// (the engine's inline payloads, under their frame's CRC with the hash
    /// it computed from them), by that check.
    fn content<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;

    /// Stores content on its own; returns its hash.
    fn cas_put(&self, bytes: Vec<u8>) -> BoxFuture<'_, Result<Hash>>;

    /// Content by hash (stored on its own, or an event's payload), verified.
    fn cas_get(&self, hash: Hash) -> BoxFuture<'_, Result<Option<Vec<u8>>>>;

    /// Deletes content stored on its own; false if there was none;
    /// `StoreError::InUse` while a stored event's payload is that content.
    fn cas_delete(&self, hash: Hash) -> BoxFuture<'_, Result<bool>>;

    /// The topics of (up to `max`) stored events whose payload is `hash`.
    fn content_topics(&self, hash: Hash, max: usize) -> BoxFuture<'_, Result<Vec<Topic>>>;

    /// Id of the newest committed event (`EventId::MIN` when empty).
    fn last_id(&self) -> EventId;

    /// A signal that changes when a commit may have added events matching
    /// `pattern`, and when storage closes.
    fn watch(&self, pattern: &Pattern) -> watch::Receiver<u64>;

    /// Up to `max` recently committed events after `cursor` matching
    /// `pattern` (ephemeral ones included), from memory; `Window::Behind`
    /// when memory no longer holds everything after `cursor`.
    fn live_after(&self, cursor: EventId, pattern: &Pattern, max: usize) -> Window;

    /// Up to `max` stored events after `after` matching `pattern`, in id
    /// order, and how far that answer is complete: when fewer than `max`
    /// come back, every stored matching event with an id up to
    /// `History::through` was among them. `through` is never below a
    /// commit acknowledged before the call.
    fn history(&self, pattern: Pattern, after: EventId, max: usize) -> BoxFuture<'_, Result<History>>;

    /// Whether storage is closing (subscriptions end).
    fn is_closed(&self) -> bool;

    /// A value that changes whenever stored data changes: an entity tag.
    fn version(&self) -> String;

    /// Counters and sizes, for monitoring.
    fn stats(&self) -> BoxFuture<'_, StoreStats>;

    /// Checks everything stored (records, order, hashes).
    fn verify(&self) -> BoxFuture<'_, Result<VerifyReport>>;

    /// Copies a consistent snapshot that opens as a local store into
    /// `dest` while writers run (incremental into the same directory), with
    /// `extra_files` (name, bytes) written before it is marked complete; a
    /// backend whose data lives elsewhere refuses (its own tools back it up).
    fn backup(
        &self,
        dest: PathBuf,
        progress: Arc<BackupProgress>,
        extra_files: crate::backup::ExtraFiles,
    ) -> BoxFuture<'_, Result<BackupReport>>;

    /// Gives back the disk that removed events hold, where at least `ratio`
    /// of a unit of storage is removed (0: wherever anything is).
    fn compact(&self, ratio: f64) -> BoxFuture<'_, Result<crate::CompactReport>>;

    /// A lock named `name` that every process using this storage shares,
    /// held until the returned guard drops; `None` where one process owns
    /// the storage (the local engine: its own locks are enough). Front ends
    /// that keep state in memory (consumer groups) take it around a change.
    fn exclusive(&self, _name: &'static str) -> BoxFuture<'_, Result<Option<Exclusive>>> {
        Box::pin(async { Ok(None) })
    }
}

/// A held lock of [`Storage::exclusive`]; released when dropped.
pub type Exclusive = Box<dyn std::any::Any + Send + Sync>;

/// A lazily read sequence of stored events.
pub trait Reader: Send {
    /// Up to `max` more events, fewer once their payloads reach
    /// [`READ_CHUNK_CONTENT_BYTES`](crate::limits::READ_CHUNK_CONTENT_BYTES)
    /// (at least one); empty once the read is over.
    fn next(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Item>>>;
}

/// An event as a read returns it, with its payload when asked for.
#[derive(Clone, Debug)]
pub struct Item {
    /// The event.
    pub event: Event,
    /// Its payload, verified, if asked for and it has one: for a payload
    /// kept in the log, the event's own bytes (a view, not a copy).
    pub content: Option<InlineBytes>,
}

/// Bounds of a storage, for front ends to check early and to report.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest payload of one event, in bytes.
    pub payload_bytes_max: u64,
}

/// What the live window holds after a cursor.
#[derive(Debug)]
pub enum Window {
    /// Matching events after the cursor, and the new cursor (the newest id
    /// looked at, matching or not).
    Events(Vec<Arc<Event>>, EventId),
    /// Memory no longer holds everything after the cursor: read history.
    Behind,
}

/// A chunk of history (see [`Storage::history`]).
#[derive(Debug)]
pub struct History {
    /// Stored matching events after the cursor, in id order.
    pub events: Vec<Arc<Event>>,
    /// With fewer than `max` events: everything up to here was looked at.
    pub through: EventId,
}
