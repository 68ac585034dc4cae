//! `cairn-node`: the engine embedded in a Node.js process (N-API, napi-rs).
//!
//! This is the native half; `index.js` is the package's API and the only
//! caller. Every call goes through the same `Service` the command line runs
//! on a local store (as `Principal::Local`), so validation, limits and error
//! kinds are the CLI's and the server's. Calls are async: they run on
//! napi's tokio runtime, never on the JS thread, and concurrent appends share
//! the writer's group commit. Events cross as JSON text in the form the CLI
//! prints (`json::write_event`), parsed once by V8; payloads and snapshots as
//! buffers.
//!
//! Errors reach JS as `Error`s whose message is `<code>\u{1}<text>`; the JS
//! half turns them into `CairnError`s with `code` (the service's error kinds,
//! plus `closed` for a call on a closed store).
//!
//! Closing: `close` waits for calls in flight, ends reads and subscriptions,
//! and drops the store on a blocking thread (the writer syncs, the index is
//! flushed), so the lock is free when its promise resolves. `closeSync` does
//! the same on the JS thread, for `process.on('exit')`.

// The glue napi-derive generates is unsafe code.
#![allow(unsafe_code)]

use std::sync::{Arc, Weak};

use cairn_service::{
    Batch, Delivered, EventId, FollowOptions, Hash, Item, NewEvent, Pattern, Principal, Query, Service, ServiceError,
    ServiceOptions, StoreOptions, SyncMode, Topic,
};
use napi::bindgen_prelude::{Buffer, Uint32Array, Utf16String};
use napi_derive::napi;
use tokio::sync::{Mutex, RwLock};

const LOCAL: Principal = Principal::Local;

/// A JS error carrying the service's error kind.
fn js_error(error: ServiceError) -> napi::Error {
    coded(error.code(), &error.to_string())
}

fn coded(code: &str, text: &str) -> napi::Error {
    napi::Error::new(napi::Status::GenericFailure, format!("{code}\u{1}{text}"))
}

fn closed() -> napi::Error {
    coded("closed", "the store is closed")
}

fn invalid(field: &str, text: impl std::fmt::Display) -> napi::Error {
    coded("invalid", &format!("{field}: {text}"))
}

type Result<T> = std::result::Result<T, napi::Error>;

/// A read or a subscription the store ends when it closes.
trait Handle: Send + Sync {
    fn end(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

/// A read's or a subscription's state.
enum Slot<T> {
    Open(T),
    /// Read to its end, or closed by its owner.
    Done,
    /// Ended because the store closed.
    Closed,
}

impl<T: Send> Handle for Mutex<Slot<T>> {
    fn end(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let mut slot = self.lock().await;
            if matches!(*slot, Slot::Open(_)) {
                *slot = Slot::Closed;
            }
        })
    }
}

struct Shared {
    /// `None` once closed. Each call holds a read guard while it runs, so
    /// `close` (the write guard) waits for calls in flight.
    service: RwLock<Option<Service>>,
    /// Reads and subscriptions, ended on close (each holds the service).
    handles: std::sync::Mutex<Vec<Weak<dyn Handle>>>,
    /// Set once the store is closed (dropped: its lock is free).
    closed: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn register(&self, handle: Weak<dyn Handle>) {
        let mut handles = self.handles.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Forget ended ones now and then (at each power of two: amortised
        // constant work per registration).
        if handles.len().is_power_of_two() {
            handles.retain(|handle| handle.strong_count() > 0);
        }
        handles.push(handle);
    }

    fn take_handles(&self) -> Vec<Arc<dyn Handle>> {
        let mut handles = self.handles.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        handles.drain(..).filter_map(|handle| handle.upgrade()).collect()
    }
}

/// An open store.
#[napi]
pub struct NativeStore {
    shared: Arc<Shared>,
}

/// Opens (creating if missing) the store in `dir`. `sync` is `always` (the
/// default), `none` or `interval:<ms>`.
#[napi]
pub async fn open(dir: String, sync: Option<String>) -> Result<NativeStore> {
    let sync = SyncMode::parse(sync.as_deref().unwrap_or("always")).map_err(|e| js_error(e.into()))?;
    let options = StoreOptions { sync, ..StoreOptions::default() };
    let (service, _) =
        cairn_service::open_local(dir.into(), options, ServiceOptions::default()).await.map_err(js_error)?;
    Ok(NativeStore {
        shared: Arc::new(Shared {
            service: RwLock::new(Some(service)),
            handles: std::sync::Mutex::new(Vec::new()),
            closed: tokio::sync::watch::Sender::new(false),
        }),
    })
}

/// A page of events (a JSON array of events in the CLI's form).
#[napi(object)]
pub struct Page {
    /// The events, as a JSON array.
    pub events: String,
    /// A subscription's history is over (live events follow).
    pub caught_up: bool,
    /// Nothing more will come.
    pub done: bool,
}

/// Characters of an id's text form.
const ID_CHARS: usize = 25;

/// Where a batch's events landed: their ids (25 characters each, in batch
/// order, one string: a hundred thousand JS objects cost more than the
/// append) and seqs, and a single event's hash.
#[napi(object)]
pub struct Appended {
    /// The ids, concatenated.
    pub ids: String,
    /// The seqs.
    pub seqs: napi::bindgen_prelude::Float64Array,
    /// The hash of a single event's payload (`sha256-…`).
    pub hash: Option<String>,
    /// Each event's topic, when they are not the batch's events one for one
    /// (an idempotent repeat after some of them were removed).
    pub topics: Option<Vec<String>>,
}

/// Consecutive pieces of one UTF-16 text.
struct Columns<'a> {
    rest: &'a [u16],
    field: &'static str,
}

impl<'a> Columns<'a> {
    fn new(text: &'a [u16], field: &'static str) -> Columns<'a> {
        // (napi's copy has no terminator: it truncates to what was written.)
        Columns { rest: text, field }
    }

    /// The next `len` UTF-16 units.
    fn next_units(&mut self, len: u32) -> Result<&'a [u16]> {
        let Some((piece, rest)) = self.rest.split_at_checked(len as usize) else {
            return Err(invalid("events", "the lengths do not add up to the text"));
        };
        self.rest = rest;
        Ok(piece)
    }

    /// The next `len` UTF-16 units as UTF-8 bytes.
    fn next(&mut self, len: u32) -> Result<Vec<u8>> {
        let units = self.next_units(len)?;
        self.decode(units)
    }

    /// `units` as UTF-8 bytes: ASCII (most text) unit by unit, which the
    /// compiler vectorizes; anything else through `String::from_utf16`, which
    /// goes character by character (for 100,000 short JSON texts, ASCII this
    /// way took a third of the time).
    fn decode(&self, units: &[u16]) -> Result<Vec<u8>> {
        if units.iter().all(|&unit| unit < 0x80) {
            return Ok(units.iter().map(|&unit| unit as u8).collect());
        }
        String::from_utf16(units)
            .map(String::into_bytes)
            .map_err(|_| invalid(self.field, "is not valid text (a lone surrogate)"))
    }
}

/// A consumer's position.
#[napi(object)]
pub struct ConsumerPosition {
    /// Its name.
    pub name: String,
    /// The last event it acknowledged.
    pub acked: String,
}

/// A consumer's snapshot.
#[napi(object)]
pub struct SnapshotData {
    /// The event it was made at (the consumer resumes after it).
    pub at: String,
    /// Its bytes.
    pub bytes: Buffer,
}

fn events_json<'a>(items: impl IntoIterator<Item = (&'a cairn_service::Event, Option<&'a [u8]>)>) -> String {
    let mut out = vec![b'['];
    for (n, (event, content)) in items.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        cairn_service::json::write_event(&mut out, event, content);
    }
    out.push(b']');
    String::from_utf8(out).expect("write_event writes JSON text")
}

fn parse_id(text: &str) -> Result<EventId> {
    EventId::parse(text).map_err(|e| js_error(e.into()))
}

fn parse_pattern(text: &str) -> Result<Pattern> {
    Pattern::parse(text).map_err(|e| js_error(e.into()))
}

fn count(field: &str, value: Option<i64>) -> Result<Option<u64>> {
    value.map(|n| u64::try_from(n).map_err(|_| invalid(field, "must not be negative"))).transpose()
}

#[napi]
impl NativeStore {
    /// Appends `events` (a JSON array of `append --batch` lines) as one
    /// atomic batch with the optional idempotency `key`; where each event
    /// landed.
    #[napi]
    pub async fn append_batch(&self, events: String, key: Option<String>) -> Result<Appended> {
        let lines: Vec<cairn_service::json::BatchEventJson> =
            serde_json::from_str(&events).map_err(|e| invalid("event", e))?;
        let batch = cairn_service::json::batch_from_json(lines, None, key).map_err(|e| js_error(e.into()))?;
        self.append_prepared(batch).await
    }

    /// `append_batch` for events that are only a topic and text content,
    /// given as two strings of all topics and all contents with the length
    /// of each (in UTF-16 units, as JS counts): no JSON text is made and
    /// parsed, and two strings cross instead of two per event (for 100,000
    /// events, 100 ms through JSON and 55 ms as arrays of strings). One
    /// topic length (with more contents) gives every event that topic.
    #[napi]
    pub async fn append_columns(
        &self,
        topics: Utf16String,
        topic_lengths: Uint32Array,
        contents: Utf16String,
        content_lengths: Uint32Array,
        key: Option<String>,
    ) -> Result<Appended> {
        // One topic length stands for one topic for every event.
        let one_topic = topic_lengths.len() == 1;
        if !one_topic && topic_lengths.len() != content_lengths.len() {
            return Err(invalid("events", "as many topics as contents"));
        }
        let mut topics = Columns::new(&topics, "topic");
        let mut contents = Columns::new(&contents, "content");
        let mut batch =
            Batch { idempotency_key: key, events: Vec::with_capacity(content_lengths.len()), ..Batch::default() };
        let one = if one_topic { Some(topics.next_units(topic_lengths[0])?) } else { None };
        let mut last: Option<(&[u16], Topic)> = None;
        for (n, &content_len) in content_lengths.iter().enumerate() {
            let name = match one {
                Some(name) => name,
                None => topics.next_units(topic_lengths[n])?,
            };
            // Consecutive events mostly share a topic: checked once, and
            // compared as the units they came in.
            let topic = match &last {
                Some((previous, topic)) if *previous == name => topic.clone(),
                _ => {
                    let text = String::from_utf8(topics.decode(name)?).expect("decoded from UTF-16");
                    let topic = Topic::new(&text).map_err(|error| match error {
                        cairn_service::StoreError::Invalid { field, rule } => {
                            invalid(field, format_args!("event {}: {rule}", n + 1))
                        }
                        other => js_error(other.into()),
                    })?;
                    last = Some((name, topic.clone()));
                    topic
                }
            };
            batch.events.push(NewEvent::new(topic, contents.next(content_len)?));
        }
        if !topics.rest.is_empty() || !contents.rest.is_empty() {
            return Err(invalid("events", "the lengths do not add up to the text"));
        }
        self.append_prepared(batch).await
    }

    async fn append_prepared(&self, batch: Batch) -> Result<Appended> {
        let asked = batch.events.len();
        if batch.events.is_empty() {
            return Err(invalid("events", "a batch needs at least one event"));
        }
        if let Some(key) = &batch.idempotency_key {
            cairn_service::check_idempotency_key(key).map_err(js_error)?;
        }
        let guard = self.shared.service.read().await;
        let service = guard.as_ref().ok_or_else(closed)?;
        let appended = service.append(&LOCAL, batch).await.map_err(js_error)?;
        let mut ids = String::with_capacity(appended.len() * ID_CHARS);
        let mut seqs = Vec::with_capacity(appended.len());
        let mut hashes = String::new();
        for event in &appended {
            ids.push_str(std::str::from_utf8(&event.id.encode()).expect("ids are ASCII"));
            seqs.push(event.seq as f64);
            if appended.len() == 1 {
                hashes = event.hash.map(|hash| hash.sri()).unwrap_or_default();
            }
        }
        // A repeat of an idempotent batch answers with the first append's
        // events still stored, which may be fewer: then say whose they are.
        let topics = (appended.len() != asked).then(|| appended.iter().map(|e| e.topic.as_str().to_owned()).collect());
        // Freeing a large batch's events (two allocations each) is left to
        // a blocking thread: the caller has its answer 6 ms sooner at 100,000.
        if appended.len() >= 4096 {
            drop(tokio::task::spawn_blocking(move || drop(appended)));
        }
        Ok(Appended { ids, seqs: seqs.into(), hash: (!hashes.is_empty()).then_some(hashes), topics })
    }

    /// Starts a read (see `index.js` for the query's fields).
    #[napi]
    #[allow(clippy::too_many_arguments)]
    pub async fn read(
        &self,
        pattern: String,
        after: Option<String>,
        from_seq: Option<i64>,
        last: Option<i64>,
        limit: Option<i64>,
        reverse: Option<bool>,
        content: Option<bool>,
    ) -> Result<NativeRead> {
        let query = Query {
            pattern: parse_pattern(&pattern)?,
            after: after.as_deref().map(parse_id).transpose()?,
            from_seq: count("fromSeq", from_seq)?,
            last: count("last", last)?,
            limit: count("limit", limit)?,
            reverse: reverse.unwrap_or(false),
        };
        let guard = self.shared.service.read().await;
        let service = guard.as_ref().ok_or_else(closed)?;
        let read = service.read(&LOCAL, query, content.unwrap_or(true)).await.map_err(js_error)?;
        let inner = Arc::new(Mutex::new(Slot::Open(read)));
        self.shared.register(Arc::downgrade(&inner) as Weak<dyn Handle>);
        Ok(NativeRead { inner })
    }

    /// Starts a subscription: history from `after` or `fromSeq` (or the
    /// beginning), then live events.
    #[napi]
    pub async fn subscribe(
        &self,
        pattern: String,
        after: Option<String>,
        from_seq: Option<i64>,
        content: Option<bool>,
    ) -> Result<NativeFollow> {
        let query = Query {
            after: after.as_deref().map(parse_id).transpose()?,
            from_seq: count("fromSeq", from_seq)?,
            ..Query::new(parse_pattern(&pattern)?)
        };
        let options = FollowOptions { threshold: true, pulse: None, content: content.unwrap_or(true), limit: None };
        let guard = self.shared.service.read().await;
        let service = guard.as_ref().ok_or_else(closed)?;
        let follow = service.follow(&LOCAL, query, options).await.map_err(js_error)?;
        let inner = Arc::new(Mutex::new(Slot::Open(follow)));
        self.shared.register(Arc::downgrade(&inner) as Weak<dyn Handle>);
        Ok(NativeFollow { inner, closed: tokio::sync::watch::Sender::new(false) })
    }

    /// One event with its payload, as JSON, or null.
    #[napi]
    pub async fn get(&self, id: String) -> Result<Option<String>> {
        let id = parse_id(&id)?;
        let guard = self.shared.service.read().await;
        let service = guard.as_ref().ok_or_else(closed)?;
        match service.get(&LOCAL, id, true).await {
            Ok(Item { event, content }) => Ok(Some(events_json([(&event, content.as_deref())]))),
            Err(ServiceError::NotFound { .. }) => Ok(None),
            Err(error) => Err(js_error(error)),
        }
    }

    /// A topic's head (count, first and last seq, last id) as JSON, or null.
    #[napi]
    pub async fn head(&self, topic: String) -> Result<Option<String>> {
        let topic = Topic::new(&topic).map_err(|e| js_error(e.into()))?;
        let guard = self.shared.service.read().await;
        let service = guard.as_ref().ok_or_else(closed)?;
        let head = service.head(&LOCAL, &topic).await.map_err(js_error)?;
        Ok(head.map(|info| serde_json::to_string(&info).expect("a head serializes")))
    }

    /// Every topic's head, as a JSON array.
    #[napi]
    pub async fn topics(&self) -> Result<String> {
        let guard = self.shared.service.read().await;
        let service = guard.as_ref().ok_or_else(closed)?;
        let topics = service.topics(&LOCAL).await.map_err(js_error)?;
        Ok(serde_json::to_string(&topics).expect("heads serialize"))
    }

    /// Stores `bytes` by their sha256; the hash (`sha256-<base64>`).
    #[napi]
    pub async fn content_put(&self, bytes: Buffer) -> Result<String> {
        let bytes = bytes.to_vec();
        let guard = self.shared.service.read().await;
        let service = guard.as_ref().ok_or_else(closed)?;
        Ok(service.cas_put(&LOCAL, bytes).await.map_err(js_error)?.sri())
    }

    /// The content with `hash` (`sha256-<base64>` or hex), or null.
    #[napi]
    pub async fn content_get(&self, hash: String) -> Result<Option<Buffer>> {
        let hash = Hash::parse(&hash).map_err(|e| js_error(e.into()))?;
        let guard = self.shared.service.read().await;
        let service = guard.as_ref().ok_or_else(closed)?;
        match service.cas_get(&LOCAL, &hash).await {
            Ok(bytes) => Ok(Some(bytes.into())),
            Err(ServiceError::NotFound { .. }) => Ok(None),
            Err(error) => Err(js_error(error)),
        }
    }

    /// Where consumer `name` stands, or null.
    #[napi]
    pub async fn consumer(&self, name: String) -> Result<Option<ConsumerPosition>> {
        let guard = self.shared.service.read().await;
        let service = guard.as_ref().ok_or_else(closed)?;
        let cursor = service.consumer(&LOCAL, None, &name).await.map_err(js_error)?;
        Ok(cursor.map(|cursor| ConsumerPosition { name: cursor.name, acked: cursor.acked.to_string() }))
    }

    /// Moves consumer `name` to `id`, durably.
    #[napi]
    pub async fn ack(&self, name: String, id: String) -> Result<()> {
        let id = parse_id(&id)?;
        let guard = self.shared.service.read().await;
        let service = guard.as_ref().ok_or_else(closed)?;
        service.consumer_ack(&LOCAL, None, &name, id).await.map_err(js_error)?;
        Ok(())
    }

    /// Stores `bytes` as consumer `name`'s snapshot made at `at` and moves
    /// the consumer to `at`, in one atomic durable step.
    #[napi]
    pub async fn snapshot_put(&self, name: String, at: String, bytes: Buffer) -> Result<()> {
        let at = parse_id(&at)?;
        let bytes = bytes.to_vec();
        let guard = self.shared.service.read().await;
        let service = guard.as_ref().ok_or_else(closed)?;
        service.consumer_snapshot_put(&LOCAL, None, &name, at, &bytes).await.map_err(js_error)?;
        Ok(())
    }

    /// Consumer `name`'s snapshot, or null.
    #[napi]
    pub async fn snapshot_get(&self, name: String) -> Result<Option<SnapshotData>> {
        let guard = self.shared.service.read().await;
        let service = guard.as_ref().ok_or_else(closed)?;
        let snapshot = service.consumer_snapshot(&LOCAL, None, &name).await.map_err(js_error)?;
        Ok(snapshot.map(|snapshot| SnapshotData { at: snapshot.at.to_string(), bytes: snapshot.bytes.into() }))
    }

    /// Closes the store: waits for calls in flight, ends reads and
    /// subscriptions, and releases the store (its lock too) before it
    /// resolves. Closing twice does nothing.
    #[napi]
    pub async fn close(&self) -> Result<()> {
        match self.take().await {
            Some(service) => {
                service.close().await;
                self.shared.closed.send_replace(true);
            }
            // Another close took it: resolve when that one is done.
            None => drop(self.shared.closed.subscribe().wait_for(|closed| *closed).await),
        }
        Ok(())
    }

    /// `close` on the JS thread, for `process.on('exit')`: also waits (30 s
    /// at most) for a `close` already under way.
    #[napi]
    pub fn close_sync(&self) {
        let shared = self.shared.clone();
        let closing = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async move {
                    match take(&shared).await {
                        Some(service) => {
                            drop(service);
                            shared.closed.send_replace(true);
                        }
                        None => {
                            let mut closed = shared.closed.subscribe();
                            let wait = closed.wait_for(|closed| *closed);
                            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), wait).await;
                        }
                    }
                });
            }
        });
        let _ = closing.join();
    }

    async fn take(&self) -> Option<Service> {
        take(&self.shared).await
    }
}

/// Takes the service out of `shared` once the calls in flight are done (no
/// later call can start a read or a subscription), stops subscriptions
/// waiting for events, and ends every read and subscription.
async fn take(shared: &Shared) -> Option<Service> {
    let service = shared.service.write().await.take()?;
    service.shutdown();
    for handle in shared.take_handles() {
        handle.end().await;
    }
    Some(service)
}

/// A read in progress.
#[napi]
pub struct NativeRead {
    inner: Arc<Mutex<Slot<cairn_service::Read>>>,
}

#[napi]
impl NativeRead {
    /// Up to `max` more events; `done` at the end.
    #[napi]
    pub async fn next(&self, max: u32) -> Result<Page> {
        let mut guard = self.inner.lock().await;
        let read = match &mut *guard {
            Slot::Open(read) => read,
            Slot::Done => return Ok(Page { events: "[]".into(), caught_up: true, done: true }),
            // Not the end of the data: a read cut short must not look whole.
            Slot::Closed => return Err(coded("closed", "the store was closed during the read")),
        };
        let items = read.next(max.max(1) as usize).await.map_err(js_error)?;
        let done = items.is_empty();
        if done {
            *guard = Slot::Done;
        }
        let events = events_json(items.iter().map(|item| (&item.event, item.content.as_deref())));
        Ok(Page { events, caught_up: done, done })
    }

    /// Ends the read early.
    #[napi]
    pub async fn close(&self) {
        let mut slot = self.inner.lock().await;
        if matches!(*slot, Slot::Open(_)) {
            *slot = Slot::Done;
        }
    }
}

/// A subscription: history, then live events.
#[napi]
pub struct NativeFollow {
    inner: Arc<Mutex<Slot<cairn_service::Follow>>>,
    /// Set by `close`, which must not wait behind a `next` waiting for
    /// live events (that wait is cancel-safe).
    closed: tokio::sync::watch::Sender<bool>,
}

#[napi]
impl NativeFollow {
    /// Waits for the next events (up to `max`); `caughtUp` once history is
    /// over, `done` once the subscription ended (closed).
    #[napi]
    pub async fn next(&self, max: u32) -> Result<Page> {
        let ended = || Page { events: "[]".into(), caught_up: false, done: true };
        let mut closed = self.closed.subscribe();
        let mut guard = self.inner.lock().await;
        // Closing the store ends its subscriptions: that is their end.
        let Slot::Open(follow) = &mut *guard else { return Ok(ended()) };
        let next = tokio::select! {
            next = follow.next(max.max(1) as usize) => next,
            _ = closed.wait_for(|closed| *closed) => Err(ServiceError::ShuttingDown),
        };
        let delivered = match next {
            Ok(delivered) => delivered,
            Err(ServiceError::ShuttingDown) => {
                *guard = Slot::Done;
                return Ok(ended());
            }
            Err(error) => return Err(js_error(error)),
        };
        let mut caught_up = false;
        let mut events = Vec::with_capacity(delivered.len());
        for delivery in &delivered {
            match delivery {
                Delivered::Event(event, content) => events.push((event.as_ref(), content.as_deref())),
                Delivered::Threshold => caught_up = true,
                Delivered::Pulse => {}
            }
        }
        Ok(Page { events: events_json(events), caught_up, done: false })
    }

    /// Ends the subscription (a `next` waiting for events returns `done`).
    #[napi]
    pub async fn close(&self) {
        self.closed.send_replace(true);
        *self.inner.lock().await = Slot::Done;
    }
}
