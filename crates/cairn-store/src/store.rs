//! `Store`: the engine's public API. Validates input at the edge, places
//! payloads (inline or content store), hands writes to the single writer and
//! waits for its acknowledgement, and serves reads from the index and log.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::cas::{self, Cas};
use crate::error::{Result, StoreError};
use crate::event::{self, Batch, Event, Expect, Hash, InlineBytes, NewEvent, Payload, Ttl};
use crate::id::{EventId, IdGenerator};
use crate::index::sparse::find_id;
use crate::index::{Checkpoint, Index, Ks, indexer, strip};
use crate::limits::{self, CONSUMER_NAME_BYTES_MAX, RECORD_BYTES_MAX, STATE_KEY_BYTES_MAX};
use crate::live::Live;
use crate::log::codec::StateOp;
use crate::log::recovery::{self, RecoveryReport};
use crate::log::segment::Segments;
use crate::log::writer::{Prepared, Request, Writer};
use crate::progress::Progress;
use crate::read::{Query, ReadIter};
use crate::subscription::{SubscribeOptions, Subscription};
use crate::topic::{Pattern, Topic};

/// When an append counts as durable (design §3).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum SyncMode {
    /// fdatasync before every acknowledgement (shared by a group).
    #[default]
    Always,
    /// fdatasync at most this often; acknowledged writes since the last one
    /// can be lost on power loss (not on a process crash).
    Interval(Duration),
    /// Never fdatasync (OS page cache only): for tests and bulk loads.
    None,
}

impl SyncMode {
    /// Parses `always`, `interval:<duration>`, `none`.
    pub fn parse(text: &str) -> Result<SyncMode> {
        match text {
            "always" => Ok(SyncMode::Always),
            "none" => Ok(SyncMode::None),
            _ => match text.strip_prefix("interval:") {
                Some(duration) => {
                    let ms = event::parse_duration_ms(duration).map_err(|rule| StoreError::invalid("sync", rule))?;
                    if ms == 0 {
                        return Err(StoreError::invalid("sync", "interval must be longer than zero"));
                    }
                    Ok(SyncMode::Interval(Duration::from_millis(ms)))
                }
                None => Err(StoreError::invalid(
                    "sync",
                    format!("{text:?} is not one of always, interval:<duration> (e.g. interval:100ms), none"),
                )),
            },
        }
    }
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncMode::Always => f.write_str("always"),
            SyncMode::Interval(interval) => write!(f, "interval:{}ms", interval.as_millis()),
            SyncMode::None => f.write_str("none"),
        }
    }
}

/// Settings of an open store.
#[derive(Clone, Debug)]
pub struct Options {
    /// Durability of appends.
    pub sync: SyncMode,
    /// Size at which the log rolls to a new segment, in bytes.
    pub segment_bytes: u64,
    /// Payloads up to this size are kept inline in the event record.
    pub inline_payload_bytes: u64,
    /// Largest payload accepted, in bytes.
    pub payload_bytes_max: u64,
    /// How long an idempotency key returns its original events.
    pub idempotency_window: Duration,
    /// How often expired (`time:<duration>`) events are removed (and, with
    /// `compact_ratio`, segments compacted).
    pub retention_interval: Duration,
    /// Compact a sealed segment in the background once this share of its
    /// bytes is removed events (0 to 1); `None`: only when asked
    /// ([`Store::compact`]).
    pub compact_ratio: Option<f64>,
    /// Compaction writes sealed segments compressed (zstd, in blocks), and
    /// compresses every sealed segment, removed events or not.
    pub compress: bool,
    /// Fault injection for tests (crashes, power loss, EIO, ENOSPC); `None`
    /// in real use.
    pub faults: Option<Arc<crate::faults::Faults>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sync: SyncMode::Always,
            segment_bytes: limits::SEGMENT_BYTES_DEFAULT,
            inline_payload_bytes: limits::INLINE_PAYLOAD_BYTES_DEFAULT,
            payload_bytes_max: limits::PAYLOAD_BYTES_MAX_DEFAULT,
            idempotency_window: Duration::from_millis(limits::IDEMPOTENCY_WINDOW_MS_DEFAULT),
            retention_interval: Duration::from_secs(1),
            compact_ratio: Some(limits::COMPACT_RATIO_DEFAULT),
            compress: true,
            faults: None,
        }
    }
}

impl Options {
    fn validate(&self) -> Result<()> {
        if !(limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_MAX / 2).contains(&self.segment_bytes) {
            return Err(StoreError::invalid(
                "segment_bytes",
                format!("must be between {} and {}", limits::SEGMENT_BYTES_MIN, limits::SEGMENT_BYTES_MAX / 2),
            ));
        }
        if self.compact_ratio.is_some_and(|ratio| !(0.0..=1.0).contains(&ratio)) {
            return Err(StoreError::invalid("compact_ratio", "must be between 0 and 1"));
        }
        if self.inline_payload_bytes > limits::INLINE_PAYLOAD_BYTES_CEILING {
            return Err(StoreError::invalid(
                "inline_payload_bytes",
                format!("must be at most {}", limits::INLINE_PAYLOAD_BYTES_CEILING),
            ));
        }
        if self.payload_bytes_max == 0 || self.payload_bytes_max > limits::PAYLOAD_BYTES_MAX_CEILING {
            return Err(StoreError::invalid(
                "payload_bytes_max",
                format!("must be between 1 and {}", limits::PAYLOAD_BYTES_MAX_CEILING),
            ));
        }
        Ok(())
    }
}

/// State shared by the API, the writer thread and subscriptions.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) options: Options,
    pub(crate) segments: Arc<Segments>,
    /// This store's id (`store-id`), kept by its backups and copies.
    pub(crate) store_id: String,
    pub(crate) index: Index,
    pub(crate) cas: Cas,
    pub(crate) live: Live,
    pub(crate) progress: Progress,
    pub(crate) stats: Stats,
    /// Notified by the writer whenever it takes requests off its queue, so
    /// async submitters wait for room without blocking a thread.
    pub(crate) queue_space: tokio::sync::Notify,
    /// Held by a compaction, and by what must not see a segment's
    /// generation change under it (backup, verify).
    pub(crate) compaction: Mutex<()>,
    poison: Mutex<Option<String>>,
}

/// Counters the writer keeps for monitoring (see [`Store::stats`]).
#[derive(Default, Debug)]
pub(crate) struct Stats {
    pub(crate) events: std::sync::atomic::AtomicU64,
    pub(crate) fsyncs: std::sync::atomic::AtomicU64,
    pub(crate) fsync_nanos: std::sync::atomic::AtomicU64,
    pub(crate) fsync_nanos_max: std::sync::atomic::AtomicU64,
    /// When the log and content directories were last measured, and their
    /// bytes: measured at most once per [`DISK_USAGE_FRESH`], by one caller
    /// at a time, however often stats are asked for.
    pub(crate) disk: Mutex<Option<(std::time::Instant, u64, u64)>>,
}

/// How long a measurement of the store's disk use is reused.
const DISK_USAGE_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// What the store has done since it was opened, and how big it is.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StoreStats {
    /// Events appended (or imported) since open.
    pub events_appended: u64,
    /// fdatasync calls on the log since open.
    pub fsyncs: u64,
    /// Total time spent in them, in seconds.
    pub fsync_seconds: f64,
    /// The longest one, in seconds.
    pub fsync_seconds_max: f64,
    /// Bytes of log committed since open.
    pub log_bytes_written: u64,
    /// Bytes in log segments on disk.
    pub log_bytes: u64,
    /// Bytes in the content store.
    pub content_bytes: u64,
    /// Whether the index still has background work on the content
    /// references (catching up after an open that left them behind, or
    /// moving those of an older store); lookups by hash wait for the
    /// catch-up.
    pub content_refs_catching_up: bool,
    /// A database backend's figures (none for the local engine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseStats>,
}

/// What a database backend (PostgreSQL) reports: its commits and its
/// connection pool.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DatabaseStats {
    /// Commit groups committed since open.
    pub commits: u64,
    /// Time spent committing them (from the first statement to the
    /// commit's answer), in seconds.
    pub commit_seconds: f64,
    /// The longest one, in seconds.
    pub commit_seconds_max: f64,
    /// Groups committed by the fast path with their rows written before
    /// the sequencer is taken (a writer alone on its database).
    pub commits_rows_first: u64,
    /// ... by the fast path, sequencer first (after meeting another writer,
    /// or groups that are not one statement).
    pub commits_lock_first: u64,
    /// ... by the slow path (reads under the lock, two round trips).
    pub commits_slow: u64,
    /// Fast-path groups that went again by the slow path: another writer
    /// committed first, or a lock was met.
    pub groups_redone: u64,
    /// Pooled connections open.
    pub pool_connections: usize,
    /// Of those, idle.
    pub pool_idle: usize,
    /// Callers waiting for a connection.
    pub pool_waiting: usize,
    /// Most pooled connections.
    pub pool_max: usize,
}

impl Shared {
    pub(crate) fn poison(&self, reason: &str) {
        tracing::error!("store refuses writes from now on: {reason}");
        let mut poison = self.poison.lock().expect("poison lock");
        if poison.is_none() {
            *poison = Some(reason.to_owned());
        }
    }

    pub(crate) fn poisoned(&self) -> Option<String> {
        self.poison.lock().expect("poison lock").clone()
    }

    /// The events first written under `key` (those still stored), and the
    /// fingerprint of that write (none for entries older than fingerprints),
    /// if within the window.
    pub(crate) fn idempotent_repeat(&self, key: &str) -> Result<Option<Repeat>> {
        let Some(value) = self.index.get(Ks::Idem, key.as_bytes())? else { return Ok(None) };
        let Some(time) = value.get(..8) else { return Ok(None) };
        let time_ms = u64::from_be_bytes(time.try_into().expect("8 bytes"));
        let window_ms = u64::try_from(self.options.idempotency_window.as_millis()).unwrap_or(u64::MAX);
        if now_ms().saturating_sub(time_ms) > window_ms {
            return Ok(None);
        }
        let (fingerprint, ids) = match value.len() % 16 {
            9 => (value[8..40].try_into().ok(), &value[41..]),
            _ => (None, &value[8..]),
        };
        let mut events = Vec::new();
        let _pin = self.segments.pin();
        for chunk in ids.chunks_exact(16) {
            let id = EventId::from_bytes(chunk.try_into().expect("16 bytes"));
            if let Some(pos) = find_id(&self.index, &self.segments, id)? {
                events.push(self.segments.read_event(pos)?);
            }
        }
        Ok(Some((events, fingerprint)))
    }

    /// Waits until the index covers everything committed so far.
    pub(crate) fn barrier(&self) -> Result<()> {
        self.progress.barrier()
    }

    pub(crate) fn get(&self, id: EventId) -> Result<Option<Event>> {
        self.barrier()?;
        let _pin = self.segments.pin();
        match find_id(&self.index, &self.segments, id)? {
            Some(pos) => self.segments.read_event(pos).map(Some),
            None => Ok(None),
        }
    }
}

/// What an idempotency key found: the original events still stored, and
/// the fingerprint of their write (none for entries older than fingerprints).
pub(crate) type Repeat = (Vec<Event>, Option<[u8; 32]>);

/// What the store knows of one topic.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TopicInfo {
    /// The topic.
    pub topic: Topic,
    /// Events still stored.
    pub count: u64,
    /// Seq of the oldest stored event, if any is stored.
    pub first_seq: Option<u64>,
    /// Seq of the newest event ever appended.
    pub last_seq: u64,
    /// Id of the newest event ever appended.
    pub last_id: EventId,
}

/// An event to import with its original id and seq (see [`Store::import`]).
#[derive(Clone, Debug)]
pub struct Imported {
    /// Its id; imports must come in increasing id order, after the store's last id.
    pub id: EventId,
    /// Its seq; per topic increasing (gaps allowed: removed events).
    pub seq: u64,
    /// The rest of the event.
    pub event: NewEvent,
}

/// An acknowledgement still to come: resolves once the request is durable
/// (under the sync mode) or has failed.
pub struct Pending<T>(PendingInner<T>);

enum PendingInner<T> {
    /// The local writer's reply.
    Writer(oneshot::Receiver<Result<T>>),
    /// Any other backend's acknowledgement (or a decided result).
    Future(crate::storage::BoxFuture<'static, Result<T>>),
}

impl<T> Pending<T> {
    pub(crate) fn writer(reply: oneshot::Receiver<Result<T>>) -> Pending<T> {
        Pending(PendingInner::Writer(reply))
    }

    /// An acknowledgement that `future` gives (for other backends).
    pub fn from_future(future: impl std::future::Future<Output = Result<T>> + Send + 'static) -> Pending<T> {
        Pending(PendingInner::Future(Box::pin(future)))
    }
}

impl<T> std::future::Future for Pending<T> {
    type Output = Result<T>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<T>> {
        match &mut self.0 {
            PendingInner::Writer(reply) => {
                std::pin::Pin::new(reply).poll(cx).map(|reply| reply.map_err(|_| StoreError::ShuttingDown)?)
            }
            PendingInner::Future(future) => future.as_mut().poll(cx),
        }
    }
}

/// An open store. Cheap to clone; closes when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    requests: Option<SyncSender<Request>>,
    writer: Option<JoinHandle<()>>,
    indexer: Option<JoinHandle<()>>,
    sweeper: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    report: RecoveryReport,
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.sweeper.take() {
            drop(stop);
            let _ = handle.join();
        }
        // The writer finishes the queued requests and syncs; then the indexer
        // indexes everything committed; then the index is flushed (unless
        // what it lacks is small), so the next open replays little or nothing.
        drop(self.requests.take());
        if let Some(handle) = self.writer.take()
            && handle.join().is_err()
        {
            tracing::error!("the writer thread panicked");
        }
        self.shared.progress.close();
        if let Some(handle) = self.indexer.take()
            && handle.join().is_err()
        {
            tracing::error!("the indexer thread panicked");
        }
        if self.shared.poisoned().is_none()
            && let Err(error) = self.shared.index.close()
        {
            tracing::warn!("failed to flush the index on close: {error}");
        }
        self.shared.live.close();
    }
}

impl Store {
    /// Opens (creating if missing) the store in `dir` and takes its lock.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Store> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        crate::private::ensure_private_dir(&dir)
            .map_err(StoreError::io(format!("create store directory {}", dir.display())))?;
        let lock = lock_directory(&dir)?;
        let store_id = store_id(&dir)?;
        let log_dir = dir.join("log");
        crate::private::ensure_private_dir(&log_dir).map_err(StoreError::io("create log directory"))?;
        crate::private::ensure_private_dir(&dir.join("index")).map_err(StoreError::io("create index directory"))?;
        let segments = Arc::new(Segments::new(log_dir));
        let index = Index::open(&dir.join("index"))?;
        if options.faults.as_ref().is_some_and(|faults| faults.take_lost_refs()) {
            index.clear_refs()?;
        }
        let cas = Cas::open(dir.join("cas"))?;
        let (tail, report) = recovery::recover(&segments, &index, &cas)?;
        // Written at offsets the writer keeps, not appended (see `LogFile`).
        let file = OpenOptions::new()
            .write(true)
            .open(segments.path(tail.segment))
            .map_err(StoreError::io("open the log's last segment"))?;
        let file = crate::faults::LogFile::new(file, &segments.path(tail.segment), options.faults.clone())
            .map_err(StoreError::io("open the log's last segment"))?;
        segments.map(tail.segment, tail.offset.max(options.segment_bytes))?;
        let last_id = tail.last_id;
        let end = Checkpoint { segment: tail.segment, offset: tail.offset };
        let shared = Arc::new(Shared {
            dir,
            options: options.clone(),
            segments,
            store_id,
            index,
            cas,
            live: Live::new(last_id),
            progress: Progress::new(end, last_id, tail.refs.behind, tail.refs.lagging(), tail.refs.marked),
            stats: Stats::default(),
            queue_space: tokio::sync::Notify::new(),
            compaction: Mutex::new(()),
            poison: Mutex::new(None),
        });
        let indexer_shared = shared.clone();
        let (heads, refs) = (tail.heads, tail.refs);
        let indexer = std::thread::Builder::new()
            .name("cairn-indexer".to_owned())
            .spawn(move || indexer::run(indexer_shared, heads, last_id, refs))
            .map_err(StoreError::io("start the indexer thread"))?;
        let writer = Writer::new(shared.clone(), file, end, IdGenerator::new(last_id));
        let (requests, receiver) = mpsc::sync_channel(limits::WRITER_QUEUE_DEPTH);
        let writer = std::thread::Builder::new()
            .name("cairn-writer".to_owned())
            .spawn(move || writer.run(receiver))
            .map_err(StoreError::io("start the writer thread"))?;
        let sweeper = spawn_sweeper(shared.clone(), requests.clone(), &options)?;
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                requests: Some(requests),
                writer: Some(writer),
                indexer: Some(indexer),
                sweeper: Some(sweeper),
                report,
                _lock: lock,
            }),
        })
    }

    /// What opening found and repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// The options it was opened with.
    pub fn options(&self) -> &Options {
        &self.inner.shared.options
    }

    /// Id of the newest committed event (`EventId::MIN` for an empty store).
    pub fn last_id(&self) -> EventId {
        self.inner.shared.live.last()
    }

    /// Appends one event with an expectation on its topic.
    pub fn append(&self, event: NewEvent, expect: Expect) -> Result<Event> {
        let mut events = self.append_batch(Batch::single(event, expect))?;
        Ok(events.remove(0))
    }

    /// Appends a batch atomically; blocks until it is durable. Do not call
    /// from async code: use [`Store::append_batch_async`] there.
    pub fn append_batch(&self, batch: Batch) -> Result<Vec<Event>> {
        let (request, reply) = self.append_request(batch, false)?;
        self.submit(request)?;
        reply.blocking_recv().map_err(|_| StoreError::ShuttingDown)?
    }

    /// Appends a batch atomically; resolves once it is durable.
    pub async fn append_batch_async(&self, batch: Batch) -> Result<Vec<Event>> {
        let (request, reply) = self.append_request(batch, false)?;
        self.submit(request)?;
        reply.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Submits a batch at once and returns its acknowledgement to await:
    /// a caller with several appends in hand (a pipelining connection)
    /// submits them all before waiting, so they share one commit.
    pub fn append_start(&self, batch: Batch) -> Result<Pending<Vec<Event>>> {
        let (request, reply) = self.append_request(batch, false)?;
        self.submit(request)?;
        Ok(Pending::writer(reply))
    }

    /// Writes front-end state (consumer groups) durably through the log, in
    /// submission order, and returns the acknowledgement to await. Keys and
    /// values are opaque; [`Store::state_scan`] reads them back.
    pub fn state_write(&self, ops: Vec<StateOp>) -> Result<Pending<()>> {
        let (request, receiver) = state_request(ops)?;
        self.submit(request)?;
        Ok(Pending::writer(receiver))
    }

    /// Submits without blocking the calling thread: waits (asynchronously)
    /// for room in the writer's queue when it is full.
    pub(crate) async fn submit_async(&self, request: Request) -> Result<()> {
        let mut request = request;
        let mut waited = false;
        loop {
            if let Some(reason) = self.inner.shared.poisoned() {
                return Err(StoreError::Poisoned { reason });
            }
            let requests = self.inner.requests.as_ref().ok_or(StoreError::ShuttingDown)?;
            // The common case first: room in the queue, no waiter to register.
            let full = match requests.try_send(request) {
                Ok(()) => return Ok(()),
                Err(mpsc::TrySendError::Disconnected(_)) => return Err(StoreError::ShuttingDown),
                Err(mpsc::TrySendError::Full(back)) => back,
            };
            // Registered before the second attempt, so a wake-up between
            // the attempt and the wait is not lost.
            let notified = self.inner.shared.queue_space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match requests.try_send(full) {
                Ok(()) => return Ok(()),
                Err(mpsc::TrySendError::Disconnected(_)) => return Err(StoreError::ShuttingDown),
                Err(mpsc::TrySendError::Full(back)) => {
                    request = back;
                    if !waited {
                        tracing::debug!("the writer's queue is full: waiting for room");
                    }
                    waited = true;
                    notified.await;
                }
            }
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Every state entry whose key starts with `prefix`, by key, as of every
    /// acknowledged [`Store::state_write`].
    pub fn state_scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.shared.barrier()?;
        let mut out = Vec::new();
        for guard in self.inner.shared.index.prefix(Ks::State, prefix) {
            let (key, value) = guard.into_inner()?;
            out.push((strip(&key).to_vec(), value.to_vec()));
        }
        Ok(out)
    }

    /// Appends to the store's own `cairn.*` topics (for servers: `cairn.start`).
    pub fn append_system(&self, batch: Batch) -> Result<Vec<Event>> {
        let (request, reply) = self.append_request(batch, true)?;
        self.submit(request)?;
        reply.blocking_recv().map_err(|_| StoreError::ShuttingDown)?
    }

    pub(crate) fn append_request(
        &self,
        batch: Batch,
        system: bool,
    ) -> Result<(Request, oneshot::Receiver<Result<Vec<Event>>>)> {
        batch.check_shape()?;
        // Each event is taken out of its slot (left default), so neither the
        // input nor a half of it is copied to another vector.
        let prepare_into = |events: &mut [NewEvent], out: &mut Prepared| -> Result<()> {
            events.iter_mut().try_for_each(|new_event| self.prepare(std::mem::take(new_event), system, out))
        };
        let mut events = batch.events;
        let mut prepared = Prepared::with_capacity(events.len());
        // A large batch is prepared on two threads (its hashes are most of
        // the work): the caller's thread and a scoped helper, each half in
        // order; the first error in batch order wins.
        if events.len() >= PARALLEL_PREPARE_EVENTS {
            let half = events.len() / 2;
            let (first, second) = events.split_at_mut(half);
            let (done, rest) = std::thread::scope(|scope| {
                let helper = std::thread::Builder::new()
                    .name("cairn-prepare".to_owned())
                    .spawn_scoped(scope, move || {
                        let mut out = Prepared::with_capacity(second.len());
                        prepare_into(second, &mut out).map(|()| out)
                    })
                    .ok();
                let done = prepare_into(first, &mut prepared);
                let rest = helper.map(|helper| helper.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
                (done, rest)
            });
            done?;
            match rest {
                Some(rest) => {
                    let rest = rest?;
                    prepared.events.extend(rest.events);
                    prepared.stored.extend(rest.stored);
                }
                // No thread to be had: the second half here, after the first.
                None => prepare_into(&mut events[half..], &mut prepared)?,
            }
        } else {
            prepare_into(&mut events, &mut prepared)?;
        }
        prepared.measure(batch.idempotency_key.as_deref())?;
        let expect = batch.expect.into_iter().map(|(topic, expect)| (topic.as_str().to_owned(), expect)).collect();
        let (reply, receiver) = oneshot::channel();
        Ok((Request::Append { events: prepared, expect, key: batch.idempotency_key, reply }, receiver))
    }

    /// Validates an event and places its payload (it may run on a helper
    /// thread, see `append_request`).
    fn prepare(&self, new_event: NewEvent, system: bool, out: &mut Prepared) -> Result<()> {
        let options = &self.inner.shared.options;
        let (mut event, bytes) = event::check_new_event(new_event, system, options.payload_bytes_max)?;
        if let (Some(bytes), Some(hash)) = (bytes, event.hash) {
            if event.size <= options.inline_payload_bytes || event.ttl == Ttl::Ephemeral {
                event.payload = Payload::Inline(bytes.into());
            } else {
                self.inner.shared.cas.put(&hash, &bytes)?;
                event.payload = Payload::Stored;
                out.stored.push((hash, bytes));
            }
        }
        out.events.push(event);
        Ok(())
    }

    /// Appends events with their original ids and seqs (restoring an
    /// export). Ids must increase and be after the store's last id.
    pub fn import(&self, events: Vec<Imported>) -> Result<Vec<Event>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut prepared = Prepared::with_capacity(events.len());
        for imported in events {
            if imported.event.ttl == Ttl::Ephemeral {
                return Err(StoreError::invalid(
                    "ttl",
                    "ephemeral events are never stored, so they cannot be imported",
                ));
            }
            self.prepare(imported.event, true, &mut prepared)?;
            let event = prepared.events.last_mut().expect("just prepared");
            event.id = imported.id;
            event.seq = imported.seq;
            event.imported = true;
        }
        prepared.measure(None)?;
        let (reply, receiver) = oneshot::channel();
        self.submit(Request::Import { events: prepared, reply })?;
        receiver.blocking_recv().map_err(|_| StoreError::ShuttingDown)?
    }

    fn submit(&self, request: Request) -> Result<()> {
        if let Some(reason) = self.inner.shared.poisoned() {
            return Err(StoreError::Poisoned { reason });
        }
        let requests = self.inner.requests.as_ref().ok_or(StoreError::ShuttingDown)?;
        requests.send(request).map_err(|_| StoreError::ShuttingDown)
    }

    fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        let (reply, receiver) = oneshot::channel();
        self.submit(make(reply))?;
        receiver.blocking_recv().map_err(|_| StoreError::ShuttingDown)?
    }

    /// The event with `id`, if stored.
    pub fn get(&self, id: EventId) -> Result<Option<Event>> {
        self.inner.shared.get(id)
    }

    /// The payload of `event`: a stored one read from the content store and
    /// verified against its hash; an inline one as the event holds it. Its
    /// bytes and hash were checked against the frame's CRC-32C when the
    /// event was read from the log (every read checks it), and the hash was
    /// computed by the engine from those bytes when they were appended, so a
    /// sha256 here would only repeat that (it was half of the instructions
    /// of an XRANGE entry; `verify` still recomputes every hash). That holds
    /// for events this store returned; an event built or changed by the
    /// caller gets its own payload back unchecked.
    pub fn content(&self, event: &Event) -> Result<Option<Vec<u8>>> {
        match (&event.payload, event.hash) {
            (Payload::None, _) => Ok(None),
            (Payload::Inline(bytes), _) => Ok(Some(bytes.to_vec())),
            (Payload::Stored, Some(hash)) => match self.inner.shared.cas.read(&hash)? {
                Some(bytes) => Ok(Some(bytes)),
                None => Err(StoreError::Corrupt {
                    location: format!("content {}", hash.sri()),
                    detail: format!("the content file of event {} is missing", event.id),
                }),
            },
            (Payload::Stored, None) => Err(StoreError::Corrupt {
                location: format!("event {}", event.id),
                detail: "stored payload without a hash".to_owned(),
            }),
        }
    }

    /// [`Store::content`] without copying a payload kept in the log: the
    /// event's own bytes, shared.
    pub(crate) fn content_view(&self, event: &Event) -> Result<Option<InlineBytes>> {
        match &event.payload {
            Payload::Inline(bytes) => Ok(Some(bytes.clone())),
            _ => Ok(self.content(event)?.map(InlineBytes::from)),
        }
    }

    /// What the store knows of `topic`, if it ever had an event.
    pub fn head(&self, topic: &Topic) -> Result<Option<TopicInfo>> {
        let shared = &self.inner.shared;
        shared.barrier()?;
        let Some(head) = shared.index.head(topic.as_str())? else { return Ok(None) };
        Ok(Some(self.topic_info(topic.clone(), head)?))
    }

    fn topic_info(&self, topic: Topic, head: crate::index::Head) -> Result<TopicInfo> {
        let shared = &self.inner.shared;
        let pattern = Pattern::Exact(topic.clone());
        let first_seq = if head.count == 0 {
            None
        } else {
            let mut scan = crate::read::Scan::open(
                &shared.index,
                &shared.segments,
                &pattern,
                None,
                Some(head.trimmed_below),
                false,
            )?;
            scan.next_located(&shared.segments)?.map(|located| located.seq)
        };
        Ok(TopicInfo { topic, count: head.count, first_seq, last_seq: head.last_seq, last_id: head.last_id })
    }

    /// Every topic that ever had an event, by name.
    pub fn topics(&self) -> Result<Vec<TopicInfo>> {
        self.inner.shared.barrier()?;
        let mut out = Vec::new();
        for guard in self.inner.shared.index.prefix(Ks::Heads, b"") {
            let (key, value) = guard.into_inner()?;
            let name = std::str::from_utf8(strip(&key)).map_err(|_| bad_index("heads"))?;
            let topic = Topic::new(name).map_err(|_| bad_index("heads"))?;
            let head = crate::index::Head::from_bytes(&value).ok_or_else(|| bad_index("heads"))?;
            out.push(self.topic_info(topic, head)?);
        }
        Ok(out)
    }

    /// Stored events matching `query`, read lazily.
    pub fn read(&self, query: &Query) -> Result<ReadIter> {
        self.inner.shared.barrier()?;
        ReadIter::open(&self.inner.shared.index, self.inner.shared.segments.clone(), query)
    }

    /// Stored events matching `query`, read in place: no copies, for
    /// embedders that look at each event once (see [`crate::Cursor`]).
    pub fn cursor(&self, query: &Query) -> Result<crate::Cursor> {
        self.inner.shared.barrier()?;
        crate::Cursor::open(&self.inner.shared.index, self.inner.shared.segments.clone(), query)
    }

    /// This store behind the storage seam, as services and subscriptions
    /// use it (blocking calls on the blocking pool).
    pub fn storage(&self) -> Arc<dyn crate::Storage> {
        Arc::new(crate::Local::new(self.clone()))
    }

    /// History matching `query` (from `after`, `from_seq`, `last`, or the
    /// beginning), then live events, with no gap and no duplicate (the one
    /// algorithm over the seam, [`Subscription::start`]).
    pub async fn subscribe(&self, query: &Query, options: SubscribeOptions) -> Result<Subscription> {
        Subscription::start(self.storage(), query, options).await
    }

    /// Live events only: everything committed after this call.
    pub fn subscribe_live(&self, pattern: Pattern, options: SubscribeOptions) -> Subscription {
        Subscription::live(self.storage(), pattern, options)
    }

    /// Removes one event by id (its seq is never reused). Errors with
    /// `NotFound` when it is not stored.
    pub fn remove(&self, id: EventId) -> Result<()> {
        if self.get(id)?.is_none() {
            return Err(StoreError::not_found("event", id.to_string()));
        }
        self.call(|reply| Request::Remove { ids: vec![id], reply })
    }

    /// Removes the stored events among `ids` in one durable record; returns
    /// how many were stored (the others are skipped, not an error).
    pub fn remove_many(&self, ids: &[EventId]) -> Result<usize> {
        let mut stored = Vec::with_capacity(ids.len());
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        for &id in ids {
            if seen.insert(id) && self.get(id)?.is_some() {
                stored.push(id);
            }
        }
        if stored.is_empty() {
            return Ok(0);
        }
        let n = stored.len();
        for chunk in stored.chunks(RECORD_BYTES_MAX / 32) {
            self.call(|reply| Request::Remove { ids: chunk.to_vec(), reply })?;
        }
        Ok(n)
    }

    /// Stores content on its own; returns its hash. Content put this way is
    /// kept until deleted: only content that events referred to is collected.
    pub fn cas_put(&self, bytes: &[u8]) -> Result<Hash> {
        let hash = Hash::of(bytes);
        self.inner.shared.cas.put(&hash, bytes)?;
        Ok(hash)
    }

    /// The content with `hash`, verified; `NotFound` if the store has none.
    pub fn cas_get(&self, hash: &Hash) -> Result<Vec<u8>> {
        let shared = &self.inner.shared;
        shared.barrier()?;
        if let Some(bytes) = shared.cas.read(hash)? {
            return Ok(bytes);
        }
        if let Some(event) = self.event_with_hash(hash)?
            && let Some(bytes) = self.content(&event)?
        {
            // Asked for by its hash: the bytes are hashed again, so what
            // comes back hashes to what was asked, CRC or not.
            cas::verify(hash, &bytes, || format!("inline payload of event {}", event.id))?;
            return Ok(bytes);
        }
        Err(StoreError::not_found("content", hash.sri()))
    }

    /// A stored event whose payload has `hash`, found through the content
    /// references (keyed by a prefix of the hash, so the full hash is checked).
    /// Call after the read barrier; waits for the references to catch up
    /// after an open that left them behind (see `index/refs.rs`).
    fn event_with_hash(&self, hash: &Hash) -> Result<Option<Event>> {
        let shared = &self.inner.shared;
        shared.progress.wait_refs()?;
        let _pin = shared.segments.pin();
        let mut found = None;
        crate::index::refs::visit_ids(&shared.index, hash, |id| {
            // The caller passed the read barrier already.
            let Some(pos) = find_id(&shared.index, &shared.segments, id)? else { return Ok(false) };
            let event = shared.segments.read_event(pos)?;
            if event.hash == Some(*hash) {
                found = Some(event);
            }
            Ok(found.is_some())
        })?;
        Ok(found)
    }

    /// The distinct topics of stored events whose payload is `hash`,
    /// looking at no more than `max` of those events (content shared by
    /// very many events costs a bounded amount).
    pub fn content_topics(&self, hash: &Hash, max: usize) -> Result<Vec<Topic>> {
        let shared = &self.inner.shared;
        shared.barrier()?;
        shared.progress.wait_refs()?;
        let _pin = shared.segments.pin();
        let mut topics: Vec<Topic> = Vec::new();
        let mut looked = 0;
        crate::index::refs::visit_ids(&shared.index, hash, |id| {
            looked += 1;
            if let Some(pos) = find_id(&shared.index, &shared.segments, id)? {
                let event = shared.segments.read_event(pos)?;
                if event.hash == Some(*hash) && !topics.contains(&event.topic) {
                    topics.push(event.topic);
                }
            }
            Ok(looked >= max)
        })?;
        Ok(topics)
    }

    /// Whether the store holds content with `hash`.
    pub fn cas_has(&self, hash: &Hash) -> Result<bool> {
        let shared = &self.inner.shared;
        shared.barrier()?;
        // Files whose last reference went while the references caught up
        // are collected when they are current.
        shared.progress.wait_refs()?;
        Ok(shared.cas.has_file(hash) || self.event_with_hash(hash)?.is_some())
    }

    /// Counters since open, and the size of the log and the content store
    /// (walks the content directory: for monitoring, not hot paths).
    pub fn stats(&self) -> StoreStats {
        use std::sync::atomic::Ordering::Relaxed;
        let shared = &self.inner.shared;
        let nanos = |value: u64| value as f64 / 1e9;
        let (log_bytes, content_bytes) = self.disk_usage();
        StoreStats {
            events_appended: shared.stats.events.load(Relaxed),
            fsyncs: shared.stats.fsyncs.load(Relaxed),
            fsync_seconds: nanos(shared.stats.fsync_nanos.load(Relaxed)),
            fsync_seconds_max: nanos(shared.stats.fsync_nanos_max.load(Relaxed)),
            log_bytes_written: shared.progress.committed_bytes(),
            log_bytes,
            content_bytes,
            content_refs_catching_up: shared.progress.refs_work(),
            database: None,
        }
    }

    /// Bytes of the log and content directories (see `Stats::disk`).
    fn disk_usage(&self) -> (u64, u64) {
        let shared = &self.inner.shared;
        let mut disk = shared.stats.disk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match *disk {
            Some((at, log, content)) if at.elapsed() < DISK_USAGE_FRESH => (log, content),
            _ => {
                let (log, content) = (dir_bytes(&shared.dir.join("log")), dir_bytes(&shared.dir.join("cas")));
                *disk = Some((std::time::Instant::now(), log, content));
                (log, content)
            }
        }
    }

    /// Deletes content that was put on its own ([`Store::cas_put`]) and that
    /// no stored event refers to. Returns false if there was no such file;
    /// errors with `InUse` while an event refers to it.
    ///
    /// Safe against concurrent appends of the same bytes: the file is first
    /// moved aside; a sync through the writer makes every append planned
    /// before the move committed (appends planned after it put the file
    /// again); only then are the references checked, and the file is put
    /// back if any exists.
    pub fn cas_delete(&self, hash: &Hash) -> Result<bool> {
        let shared = &self.inner.shared;
        // Not while the references catch up: the file would be out of
        // reach for as long as that takes.
        shared.progress.wait_refs()?;
        let Some(aside) = shared.cas.set_aside(hash)? else { return Ok(false) };
        let referenced = self.sync().and_then(|()| {
            shared.barrier()?;
            self.event_with_hash(hash)
        });
        match referenced {
            Ok(None) => {
                shared.cas.discard(&aside)?;
                Ok(true)
            }
            Ok(Some(event)) => {
                shared.cas.restore(hash, &aside)?;
                Err(StoreError::InUse { hash: hash.sri(), event: event.id })
            }
            Err(error) => {
                shared.cas.restore(hash, &aside)?;
                Err(error)
            }
        }
    }

    /// A value that changes whenever the log changes (appends, removals,
    /// acks): an entity tag for reads.
    pub fn version(&self) -> String {
        let committed = self.inner.shared.progress.committed_end();
        format!("{}.{}", committed.segment, committed.offset)
    }

    /// Records durably that consumer `name` has handled everything up to `id`.
    pub fn ack(&self, name: &str, id: EventId) -> Result<()> {
        check_consumer_name(name)?;
        if id > self.last_id() {
            return Err(StoreError::invalid(
                "id",
                format!("{id} is after the newest event; acks name events that exist"),
            ));
        }
        self.call(|reply| Request::Ack { name: name.to_owned(), id, reply })
    }

    /// The last id consumer `name` acknowledged.
    pub fn consumer(&self, name: &str) -> Result<Option<EventId>> {
        check_consumer_name(name)?;
        self.inner.shared.barrier()?;
        self.inner.shared.index.consumer(name)
    }

    /// Every consumer and its position.
    pub fn consumers(&self) -> Result<Vec<(String, EventId)>> {
        self.inner.shared.barrier()?;
        let mut out = Vec::new();
        for guard in self.inner.shared.index.prefix(Ks::Consumers, b"") {
            let (key, value) = guard.into_inner()?;
            let name = String::from_utf8(strip(&key).to_vec()).map_err(|_| bad_index("consumers"))?;
            let id = <[u8; 16]>::try_from(&*value).map_err(|_| bad_index("consumers"))?;
            out.push((name, EventId::from_bytes(id)));
        }
        Ok(out)
    }

    /// Deletes consumer `name`; false if there was none.
    pub fn consumer_delete(&self, name: &str) -> Result<bool> {
        if self.consumer(name)?.is_none() {
            return Ok(false);
        }
        self.call(|reply| Request::ConsumerDelete { name: name.to_owned(), reply })?;
        Ok(true)
    }

    /// A query that resumes consumer `name` after its last ack.
    pub fn consumer_query(&self, name: &str, pattern: Pattern) -> Result<Query> {
        let after = self.consumer(name)?;
        Ok(Query { after, ..Query::new(pattern) })
    }

    /// Removes events whose `time:` retention ran out now (the background
    /// sweep does this every `retention_interval`). Returns how many.
    pub fn expire_now(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let n = self
                .inner
                .shared
                .progress
                .request_expire(now_ms())
                .blocking_recv()
                .map_err(|_| StoreError::ShuttingDown)??;
            total += n;
            if n < limits::EXPIRE_EVENTS_PER_STEP {
                return Ok(total);
            }
        }
    }

    /// Returns once everything acknowledged so far is fdatasynced, whatever
    /// the sync mode.
    pub fn sync(&self) -> Result<()> {
        self.call(|reply| Request::Sync { reply })
    }

    /// Compacts, now, every sealed segment whose removed events make at
    /// least `ratio` of its bytes (0: any), without blocking writers or
    /// readers (see `compact.rs`). Returns what it did.
    pub fn compact(&self, ratio: f64) -> Result<crate::compact::CompactReport> {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(StoreError::invalid("ratio", "must be between 0 and 1"));
        }
        let requests = self.inner.requests.as_ref().ok_or(StoreError::ShuttingDown)?;
        // What is committed is indexed first, so the newest sealed segment counts.
        self.inner.shared.barrier()?;
        crate::compact::run(&self.inner.shared, requests, ratio, &mut HashMap::new(), Duration::ZERO, None, &|| false)
    }

    /// Checks every record, the order invariants and every content hash.
    pub fn verify(&self) -> Result<crate::verify::VerifyReport> {
        self.inner.shared.barrier()?;
        crate::verify::verify(&self.inner.shared)
    }

    /// Closes the store, waiting for the writer to finish (also done on drop
    /// of the last clone). Fails if other clones are still alive.
    pub fn close(self) -> Result<()> {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => {
                drop(inner);
                Ok(())
            }
            Err(_) => Err(StoreError::invalid("close", "other handles to the store are still open")),
        }
    }
}

/// Bytes of the files under `dir`, recursively (0 where unreadable).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |meta| meta.len()),
            Err(_) => 0,
        })
        .sum()
}

fn check_consumer_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= CONSUMER_NAME_BYTES_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':'));
    if !valid {
        return Err(StoreError::invalid(
            "consumer",
            format!("{name:?}: names are 1-{CONSUMER_NAME_BYTES_MAX} bytes of A-Z a-z 0-9 _ - . / :"),
        ));
    }
    Ok(())
}

fn bad_index(keyspace: &str) -> StoreError {
    StoreError::Corrupt { location: format!("index keyspace {keyspace}"), detail: "malformed entry".to_owned() }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The store's id, made (a random SCRU128) the first time.
fn store_id(dir: &Path) -> Result<String> {
    let path = dir.join(crate::backup::STORE_ID);
    match fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(StoreError::io("read the store's id")(error)),
    }
    let id = scru128::new_string();
    crate::private::place_file(dir, crate::backup::STORE_ID, format!("{id}\n").as_bytes())?;
    crate::log::segment::sync_dir(dir)?;
    Ok(id)
}

/// How long an open waits for a busy lock before it reports `locked`.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

/// Takes the store's exclusive lock (`<dir>/LOCK`) and writes who holds it.
/// Held while the returned file is open. A server on another backend takes
/// it too, so its directory (socket, users) has one user at a time.
pub fn lock_directory(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let mut file = crate::private::file_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(StoreError::io(format!("open {}", path.display())))?;
    // A lock that is busy is tried again for a moment before giving up. A
    // process that starts a child shares its open files with the child from
    // the fork until the exec closes them, so a store just closed by one
    // thread of a process can stay locked for an instant while another thread
    // starts a program; and a holder that is exiting releases its lock as it
    // ends. Neither should make an open fail.
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    let taken = loop {
        match file.try_lock() {
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            taken => break taken,
        }
    };
    match taken {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim().to_owned();
            return Err(StoreError::Locked { dir: dir.to_path_buf(), holder: (!holder.is_empty()).then_some(holder) });
        }
        Err(fs::TryLockError::Error(error)) => return Err(StoreError::io("lock the store")(error)),
    }
    let command: Vec<String> = std::env::args().take(3).collect();
    let holder = format!("pid {} ({})", std::process::id(), command.join(" "));
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(holder.as_bytes()))
        .map_err(StoreError::io("write the lock file"))?;
    Ok(file)
}

/// The background thread: retention sweeps, then compaction (when on),
/// every `retention_interval`. Stopped (and joined) before the writer.
fn spawn_sweeper(
    shared: Arc<Shared>,
    requests: SyncSender<Request>,
    options: &Options,
) -> Result<(mpsc::Sender<()>, JoinHandle<()>)> {
    let (stop, stopped) = mpsc::channel::<()>();
    let (interval, ratio) = (options.retention_interval, options.compact_ratio);
    let handle = std::thread::Builder::new()
        .name("cairn-retention".to_owned())
        .spawn(move || {
            let mut checked = HashMap::new();
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                match shared.progress.request_expire(now_ms()).blocking_recv() {
                    Ok(Err(error)) => tracing::warn!("retention sweep failed: {error}"),
                    Err(_) => return,
                    Ok(Ok(_)) => {}
                }
                let Some(ratio) = ratio else { continue };
                let stop = || matches!(stopped.try_recv(), Err(mpsc::TryRecvError::Disconnected));
                let compress_after = Duration::from_secs(limits::COMPRESS_AFTER_SECS);
                // A pass gives the sweeps their turn every few seconds.
                let budget = Some(Duration::from_secs(5));
                let pass = crate::compact::run(&shared, &requests, ratio, &mut checked, compress_after, budget, &stop);
                if let Err(error) = pass {
                    tracing::warn!("compaction failed: {error}");
                }
            }
        })
        .map_err(StoreError::io("start the retention thread"))?;
    Ok((stop, handle))
}

/// A state change as a writer request, checked against the record limit.
pub(crate) fn state_request(ops: Vec<StateOp>) -> Result<(Request, oneshot::Receiver<Result<()>>)> {
    check_state_ops(&ops)?;
    let (reply, receiver) = oneshot::channel();
    Ok((Request::State { ops, reply }, receiver))
}

/// Checks state writes as every backend does: keys of 1 to
/// [`STATE_KEY_BYTES_MAX`] bytes, and all of them within one record.
pub fn check_state_ops(ops: &[StateOp]) -> Result<()> {
    for op in ops {
        let (StateOp::Put(key, _) | StateOp::Delete(key)) = op;
        if key.is_empty() || key.len() > STATE_KEY_BYTES_MAX {
            return Err(StoreError::invalid("key", format!("state keys are 1-{STATE_KEY_BYTES_MAX} bytes")));
        }
    }
    let bytes: usize = ops
        .iter()
        .map(|op| match op {
            StateOp::Put(key, value) => 9 + key.len() + value.len(),
            StateOp::Delete(key) => 5 + key.len(),
        })
        .sum();
    if bytes > RECORD_BYTES_MAX {
        return Err(StoreError::TooLarge { what: "state change", bytes: bytes as u64, max: RECORD_BYTES_MAX as u64 });
    }
    Ok(())
}

/// Batches of at least this many events are prepared on two threads. A
/// thread starts in tens of µs; half of preparing 4,096 small events (a
/// sha256 each, about 150 ns with SHA-NI here) is about 0.3 ms.
const PARALLEL_PREPARE_EVENTS: usize = 4096;
