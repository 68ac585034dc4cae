//! `Service`: the one place every front end calls. Each operation takes the
//! caller's [`Principal`], checks that its session still holds, authorizes
//! it (read and write patterns, the reserved `cairn.` prefix, admin),
//! stamps appended events with the user, scopes idempotency keys by the
//! caller, and reaches storage only through the seam ([`Storage`]), whose
//! implementations keep blocking work off async threads.
//!
//! Reads answer "not found" for what the caller may not read, exactly as
//! for what does not exist, so no answer tells an unreadable thing exists.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

pub use cairn_store::Item;
use cairn_store::json::EventJson;
use cairn_store::{
    Batch, Event, EventId, Expect, Hash, Imported, InlineBytes, Limits, NewEvent, Pattern, Pending, Query, StoreStats,
    Topic, TopicInfo, Ttl, VerifyReport,
};
use cairn_store::{Reader, Storage, Store};
use tokio::sync::watch;

use crate::consumers::groups::Groups;
use crate::error::{Result, ServiceError};
use crate::logins::Logins;
use crate::principal::Principal;
use crate::sessions::Sessions;
use crate::stream_id::StreamId;
use crate::users::{NAME_BYTES_MAX, PASSWORD_BYTES_MAX, Users};

/// Longest idempotency key a caller may give, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
/// Events read per chunk by operations that scan (trims, topic deletes).
const SCAN_CHUNK_EVENTS: usize = 4096;

/// Settings of a service beyond its storage.
#[derive(Clone, Debug, Default)]
pub struct ServiceOptions {
    /// Whether a whole topic's events may be removed at once (Redis `DEL`).
    pub allow_delete: bool,
    /// On a satellite: the hub's topics it replicates (written only by
    /// the replication; transactions on them are queued for the hub).
    pub replicated: Vec<cairn_store::Pattern>,
}

/// The service: cheap to clone, shared by every front end of a server.
#[derive(Clone)]
pub struct Service {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) users: Users,
    pub(crate) logins: Logins,
    pub(crate) sessions: Sessions,
    pub(crate) groups: Groups,
    /// Keyed transactions commit one at a time (`keyed.rs`).
    pub(crate) hub: tokio::sync::Mutex<()>,
    /// Keyed transactions waiting for the next group.
    pub(crate) hub_queue: std::sync::Mutex<Vec<crate::keyed::Queued>>,
    /// The next place in `hub_queue`.
    pub(crate) hub_seq: std::sync::atomic::AtomicU64,
    /// Wakes a satellite's link when a transaction is queued for the hub.
    pub(crate) sat_wake: tokio::sync::Notify,
    /// A satellite's secret, once read or made.
    pub(crate) sat_secret: tokio::sync::OnceCell<String>,
    pub(crate) options: ServiceOptions,
    pub(crate) started: Instant,
    pub(crate) stopping: watch::Sender<bool>,
}

/// An append on its way: resolves once durable (see [`Service::submit`]).
pub struct Appending {
    pending: Pending<Vec<Event>>,
    key: Option<String>,
}

impl std::future::Future for Appending {
    type Output = Result<Vec<Event>>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let key = self.key.take();
        match std::pin::Pin::new(&mut self.pending).poll(cx) {
            std::task::Poll::Pending => {
                self.key = key;
                std::task::Poll::Pending
            }
            std::task::Poll::Ready(result) => std::task::Poll::Ready(match result {
                Err(cairn_store::StoreError::IdempotencyConflict { .. }) => {
                    Err(ServiceError::IdempotencyConflict { key: key.unwrap_or_default() })
                }
                Err(error) => Err(error.into()),
                Ok(events) if events.is_empty() => Err(ServiceError::NotFound {
                    what: "event",
                    key: format!("the events of idempotency key {:?} were removed", key.unwrap_or_default()),
                }),
                Ok(events) => Ok(events),
            }),
        }
    }
}

/// An `If-Match` condition on a topic's entity tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: the topic has a current representation (it has had events).
    Any,
    /// One of these strong entity tags (as written, with quotes).
    Tags(Vec<String>),
}

/// What trimming removes from a topic's oldest end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trim {
    /// Keep only the newest this many.
    MaxLen(u64),
    /// Remove entries before this id.
    MinId(StreamId),
}

/// What `info` shows: the version and store facts, no environment, paths
/// or settings an attacker could use. Store-wide counters only to whoever
/// sees the whole store ([`Principal::sees_all`]): to others they would
/// tell of writes and content they may not see.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Info {
    /// `cairn`.
    pub name: &'static str,
    /// The release.
    pub version: &'static str,
    /// Seconds since the service started.
    pub uptime_seconds: u64,
    /// The newest event's id (ids are global positions: any writer learns
    /// them from its own events).
    pub last_id: EventId,
    /// Events appended since open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_appended_since_start: Option<u64>,
    /// Bytes of log on disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<u64>,
    /// Bytes of content on disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_bytes: Option<u64>,
}

/// A read in chunks (see [`Service::read`]).
pub struct Read {
    reader: Box<dyn Reader>,
}

impl Read {
    /// Up to `max` more events (with payloads when asked); empty at the end.
    pub async fn next(&mut self, max: usize) -> Result<Vec<Item>> {
        Ok(self.reader.next(max).await?)
    }
}

impl Service {
    /// A service over `storage` with these users. Users kept in shared
    /// storage are read again every second (changes made through other
    /// servers), while the service lives.
    pub fn new(storage: Arc<dyn Storage>, users: Users, options: ServiceOptions) -> Service {
        let service = Service::build(storage, users, options);
        if let (Some(shared), Ok(runtime)) =
            (service.inner.users.shared_storage(), tokio::runtime::Handle::try_current())
        {
            let inner = Arc::downgrade(&service.inner);
            runtime.spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    let Some(inner) = inner.upgrade() else { return };
                    let generation = inner.users.generation();
                    match shared.state_scan(vec![crate::users::USER_RECORD_PREFIX]).await {
                        Ok(entries) => {
                            if let Err(error) = inner.users.refresh(entries, generation) {
                                tracing::warn!("the users in storage could not be read: {error}");
                            }
                        }
                        Err(error) => tracing::debug!("reading the users in storage failed (retrying): {error}"),
                    }
                }
            });
        }
        service
    }

    fn build(storage: Arc<dyn Storage>, users: Users, options: ServiceOptions) -> Service {
        Service {
            inner: Arc::new(Inner {
                groups: Groups::default(),
                hub: tokio::sync::Mutex::new(()),
                hub_queue: std::sync::Mutex::new(Vec::new()),
                hub_seq: std::sync::atomic::AtomicU64::new(0),
                sat_wake: tokio::sync::Notify::new(),
                sat_secret: tokio::sync::OnceCell::new(),
                storage,
                users,
                logins: Logins::default(),
                sessions: Sessions::default(),
                options,
                started: Instant::now(),
                stopping: watch::channel(false).0,
            }),
        }
    }

    /// A service over the local engine: loads `<store>/users.json`, and
    /// moves consumer positions kept by older versions in the engine's own
    /// cursors into the service's consumers (owned by the socket).
    pub async fn local(store: Store, options: ServiceOptions) -> Result<Service> {
        let dir = store.dir().to_path_buf();
        let opened = store.clone();
        let (users, legacy) =
            tokio::task::spawn_blocking(move || -> Result<_> { Ok((Users::open(&dir)?, opened.consumers()?)) })
                .await
                .map_err(|error| ServiceError::invalid("store", error.to_string()))??;
        let service = Service::new(store.storage(), users, options);
        if !legacy.is_empty() {
            service.adopt_engine_cursors(&store, legacy).await?;
        }
        Ok(service)
    }

    pub(crate) fn storage(&self) -> &dyn Storage {
        &*self.inner.storage
    }

    /// The value of state key `key` exactly (the seam scans by prefix).
    pub(crate) async fn state_get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>> {
        let found = self.storage().state_scan(key.clone()).await?;
        Ok(found.into_iter().find(|(k, _)| *k == key).map(|(_, value)| value))
    }

    /// The storage's bounds.
    pub fn limits(&self) -> Limits {
        self.inner.storage.limits()
    }

    /// The users (for listing and tests).
    pub fn users(&self) -> &Users {
        &self.inner.users
    }

    /// Tells every follow and subscription of this service to end.
    pub fn shutdown(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// A signal that turns true when the service shuts down.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stopping.subscribe()
    }

    /// Refuses a session whose credential was revoked since it began.
    pub(crate) fn admit(&self, who: &Principal) -> Result<()> {
        match who {
            Principal::User(session) if !self.inner.users.is_current(session) => Err(ServiceError::unauthenticated(
                "the session's credentials were revoked (token revoked, password changed or user removed); log in again",
            )),
            Principal::User(session) if !self.inner.sessions.holds(session) => {
                Err(ServiceError::unauthenticated("the browser session ended (logged out or expired); log in again"))
            }
            _ => Ok(()),
        }
    }

    /// Whether `who`'s session still holds (see [`Users::is_current`]).
    pub fn is_current(&self, who: &Principal) -> bool {
        self.admit(who).is_ok()
    }

    /// A signal that changes whenever users or tokens change: long-lived
    /// sessions re-check themselves on it.
    pub fn session_changes(&self) -> watch::Receiver<u64> {
        self.inner.users.changes()
    }

    /// Logs in with a user name and password, from a client address if
    /// known: bounded (concurrent checks, per-address and per-user backoff)
    /// and the same cost for unknown users (see `logins.rs`).
    pub async fn login_password(&self, name: &str, password: &str, from: Option<IpAddr>) -> Result<Principal> {
        let wrong = || ServiceError::unauthenticated("wrong user name or password");
        if name.is_empty() || name.len() > NAME_BYTES_MAX || password.len() > PASSWORD_BYTES_MAX {
            return Err(wrong());
        }
        if let Some(session) = self.inner.users.cached(name, password) {
            return Ok(Principal::User(session));
        }
        let logins = &self.inner.logins;
        logins.admit(name, from)?;
        let (service, user, secret) = (self.clone(), name.to_owned(), password.to_owned());
        let verified = logins
            .run(move || {
                // Failures may have come in while this waited: back off
                // without the work, then.
                service.inner.logins.admit(&user, from)?;
                Ok::<_, ServiceError>(service.inner.users.verify_password(&user, &secret))
            })
            .await??;
        match verified {
            Some(session) => {
                logins.succeeded(name, from);
                Ok(Principal::User(session))
            }
            None => {
                logins.failed(name, from);
                Err(wrong())
            }
        }
    }

    /// Logs in with a bearer token.
    pub fn login_token(&self, token: &str) -> Result<Principal> {
        self.inner
            .users
            .verify_token(token)
            .map(Principal::User)
            .ok_or_else(|| ServiceError::unauthenticated("unknown or revoked token"))
    }

    /// Submits an atomic batch and resolves once it is queued, so a caller
    /// that awaits each submission keeps its writes in order (a pipelining
    /// connection submits them all, then awaits each [`Appending`]).
    /// Every topic must be writable by `who` (never the store's own);
    /// expectations may name only topics `who` may read or write; events
    /// are stamped with `who`'s user; an idempotency key is `who`'s own.
    pub async fn submit(&self, who: &Principal, batch: Batch) -> Result<Appending> {
        self.submit_checked(who, batch, false).await
    }

    /// [`Service::submit`] for a chunked append's event, the one write
    /// whose meta may say `chunked`; resolves once durable.
    pub(crate) async fn submit_marked(&self, who: &Principal, batch: Batch) -> Result<Vec<Event>> {
        self.submit_checked(who, batch, true).await?.await
    }

    async fn submit_checked(&self, who: &Principal, mut batch: Batch, chunked: bool) -> Result<Appending> {
        self.admit(who)?;
        let user = who.user_name().map(str::to_owned);
        for event in &mut batch.events {
            let topic = event.topic.as_ref().ok_or_else(|| ServiceError::invalid("topic", "is required"))?;
            who.check_write(topic)?;
            self.check_not_replicated(topic)?;
            if !chunked {
                crate::chunked::check_not_chunked(event.meta.as_deref())?;
            }
            // Registrations are the audit trail of what runs: kept.
            if topic.is_system() && event.ttl != Ttl::Forever {
                return Err(ServiceError::invalid("ttl", format!("{topic}: registrations are kept (ttl forever)")));
            }
            event.user.clone_from(&user);
        }
        for topic in batch.expect.keys() {
            if !who.can_write(topic) && !who.can_read_topic(topic) {
                who.check_write(topic)?;
            }
        }
        let key = batch.idempotency_key.take();
        if let Some(key) = &key {
            check_idempotency_key(key)?;
            batch.idempotency_key = Some(format!("{}\0{key}", who.scope()));
        }
        // The only store topics `check_write` lets through are processor
        // registrations, authorized above.
        let system = batch.events.iter().any(|event| event.topic.as_ref().is_some_and(Topic::is_system));
        let pending = self.inner.storage.submit(batch, system).await?;
        Ok(Appending { pending, key })
    }

    /// Appends an atomic batch; resolves once durable.
    pub async fn append(&self, who: &Principal, batch: Batch) -> Result<Vec<Event>> {
        self.submit(who, batch).await?.await
    }

    /// Appends to one topic if its entity tag matches `condition`
    /// (RFC 9110 `If-Match`: `*` needs the topic to exist; otherwise one of
    /// the tags must be its current one, strongly); `PreconditionFailed`
    /// otherwise, also when the topic moves between the check and the write.
    pub async fn append_if_match(&self, who: &Principal, mut batch: Batch, condition: &IfMatch) -> Result<Vec<Event>> {
        self.admit(who)?;
        let topic = match batch.events.first().and_then(|event| event.topic.clone()) {
            Some(topic) if batch.events.iter().all(|event| event.topic.as_ref() == Some(&topic)) => topic,
            _ => return Err(ServiceError::invalid("If-Match", "applies to appends to one topic")),
        };
        who.check_write(&topic)?;
        self.check_not_replicated(&topic)?;
        let head = self.inner.storage.head(topic.clone()).await?;
        let current = topic_etag(head.as_ref());
        let precondition = |etag: String| ServiceError::PreconditionFailed { topic: topic.to_string(), etag };
        let expect = match (condition, &head) {
            (IfMatch::Any, Some(_)) => Expect::Exists,
            (IfMatch::Tags(tags), head) if tags.contains(&current) => {
                head.as_ref().map_or(Expect::Empty, |head| Expect::UnchangedSince(head.last_id))
            }
            _ => return Err(precondition(current)),
        };
        batch.expect.insert(topic.clone(), expect);
        match self.append(who, batch).await {
            Err(ServiceError::ExpectationFailed { .. }) => {
                let head = self.inner.storage.head(topic.clone()).await?;
                Err(precondition(topic_etag(head.as_ref())))
            }
            other => other,
        }
    }

    /// Appends `batch` as [`Service::append`] does for `who`, with `system`
    /// events on the processors' own `cairn.proc.` topics in the same
    /// atomic batch (a handler's outputs and its position past the input
    /// that caused them, so both commit or neither does), under
    /// `system_expect` (expectations on those topics only). The outputs may
    /// not be store topics, registrations included: a processor never
    /// registers processors.
    pub async fn append_with_system(
        &self,
        who: &Principal,
        batch: Batch,
        system: Vec<NewEvent>,
        system_expect: BTreeMap<Topic, Expect>,
    ) -> Result<Vec<Event>> {
        self.admit(who)?;
        let user = who.user_name().map(str::to_owned);
        let mut batch = batch;
        for event in &mut batch.events {
            let topic = event.topic.as_ref().ok_or_else(|| ServiceError::invalid("topic", "is required"))?;
            if topic.is_system() {
                return Err(ServiceError::invalid(
                    "topic",
                    format!("{topic}: a processor's outputs may not be the store's own topics"),
                ));
            }
            who.check_write(topic)?;
            self.check_not_replicated(topic)?;
            event.user.clone_from(&user);
        }
        if !batch.expect.is_empty() || batch.idempotency_key.is_some() {
            return Err(ServiceError::invalid(
                "batch",
                "a processor's outputs take no expectations or idempotency key",
            ));
        }
        for event in &system {
            match &event.topic {
                Some(topic) if topic.as_str().starts_with(crate::principal::PROCESSOR_PREFIX) => {}
                _ => return Err(ServiceError::invalid("topic", "system events here are the processors' own")),
            }
        }
        for topic in system_expect.keys() {
            if !system.iter().any(|event| event.topic.as_ref() == Some(topic)) {
                return Err(ServiceError::invalid("expect", "names a topic of the system events only"));
            }
        }
        batch.expect = system_expect;
        batch.events.extend(system);
        let pending = self.inner.storage.submit(batch, true).await?;
        Ok(pending.await?)
    }

    /// Refuses who is not an admin (or the socket), for server state the
    /// service does not hold (the server's mounts).
    pub fn check_admin(&self, who: &Principal) -> Result<()> {
        self.admit(who)?;
        who.check_admin()
    }

    /// Records a change of the server's mounts (`cairn.mounts`: further
    /// store directories the server serves, each on its own socket);
    /// admins and the socket only. `meta` is the change.
    pub async fn record_mount(&self, who: &Principal, meta: serde_json::Value) -> Result<Event> {
        self.admit(who)?;
        who.check_admin()?;
        self.append_system("cairn.mounts", meta).await
    }

    /// The lock named `name` that every server on the same storage shares
    /// (PostgreSQL), held until the guard drops; `None` where one process
    /// owns the storage. For work that one server of several must do
    /// alone (running processors).
    pub async fn shared_lock(&self, name: &'static str) -> Result<Option<cairn_store::Exclusive>> {
        Ok(self.inner.storage.exclusive(name).await?)
    }

    /// The principal a processor registered by `user` runs as: the socket
    /// for a registration through the socket or the store directory, the
    /// user's rights otherwise (`Unauthenticated` once the user is gone).
    pub fn processor_principal(&self, user: Option<&str>) -> Result<Principal> {
        match user {
            None => Ok(Principal::Local),
            Some(name) => self
                .inner
                .users
                .processor_session(name)
                .map(Principal::User)
                .ok_or_else(|| ServiceError::unauthenticated(format!("user {name} no longer exists"))),
        }
    }

    /// Appends to the store's own `cairn.` topics (the server's lifecycle
    /// events); no caller can.
    pub async fn append_system(&self, topic: &str, meta: serde_json::Value) -> Result<Event> {
        let topic = Topic::new(topic)?;
        if !topic.is_system() {
            return Err(ServiceError::invalid("topic", format!("{topic} is not one of the store's own topics")));
        }
        let event = NewEvent { topic: Some(topic), meta: Some(meta.to_string()), ..NewEvent::default() };
        let mut events = self.inner.storage.submit(Batch::single(event, Expect::Any), true).await?.await?;
        Ok(events.remove(0))
    }

    /// Stored events matching `query`, read in chunks, with their payloads
    /// if `content`; the pattern must be within `who`'s read patterns.
    pub async fn read(&self, who: &Principal, query: Query, content: bool) -> Result<Read> {
        self.admit(who)?;
        who.check_read(&query.pattern)?;
        let reader = self.inner.storage.read(query, content).await?;
        Ok(Read { reader })
    }

    /// Every event `query` reads, with payloads if `content` (for bounded
    /// queries: set a limit).
    pub async fn read_all(&self, who: &Principal, query: Query, content: bool) -> Result<Vec<Item>> {
        let mut read = self.read(who, query, content).await?;
        let mut out = Vec::new();
        loop {
            let chunk = read.next(SCAN_CHUNK_EVENTS).await?;
            if chunk.is_empty() {
                return Ok(out);
            }
            out.extend(chunk);
        }
    }

    /// The event with `id`, if stored and readable by `who` (otherwise
    /// `NotFound`, the same answer for both).
    pub async fn get(&self, who: &Principal, id: EventId, content: bool) -> Result<Item> {
        self.admit(who)?;
        let event = self
            .inner
            .storage
            .get(id)
            .await?
            .filter(|event| who.can_read_topic(&event.topic))
            .ok_or_else(|| ServiceError::not_found("event", id))?;
        let content = if content { self.inner.storage.content(&event).await? } else { None };
        Ok(Item { event, content: content.map(InlineBytes::from) })
    }

    /// The payload of an event `who` read.
    pub async fn content(&self, who: &Principal, event: &Event) -> Result<Option<Vec<u8>>> {
        self.admit(who)?;
        if !who.can_read_topic(&event.topic) {
            return Err(ServiceError::not_found("event", event.id));
        }
        Ok(self.inner.storage.content(event).await?)
    }

    /// What is known of `topic`; it must be readable by `who`.
    pub async fn head(&self, who: &Principal, topic: &Topic) -> Result<Option<TopicInfo>> {
        self.admit(who)?;
        who.check_read(&Pattern::Exact(topic.clone()))?;
        Ok(self.inner.storage.head(topic.clone()).await?)
    }

    /// The topics `who` may read.
    pub async fn topics(&self, who: &Principal) -> Result<Vec<TopicInfo>> {
        self.admit(who)?;
        let topics = self.inner.storage.topics().await?;
        Ok(topics.into_iter().filter(|info| who.can_read_topic(&info.topic)).collect())
    }

    /// A value that changes whenever stored data changes (an entity tag).
    pub fn version(&self) -> String {
        self.inner.storage.version()
    }

    /// The id of the newest event.
    pub fn last_id(&self) -> EventId {
        self.inner.storage.last_id()
    }

    /// Refuses removing events of `topic`: the store's own topics keep
    /// their events (the audit trail) for all but the trusted socket;
    /// others need write access.
    fn check_remove(&self, who: &Principal, topic: &Topic) -> Result<()> {
        self.check_not_replicated(topic)?;
        match who {
            Principal::Local => Ok(()),
            _ if topic.is_system() => Err(ServiceError::forbidden(format!(
                "{topic} is one of the store's own topics: its events (the audit trail) are removed only through the socket"
            ))),
            _ => who.check_write(topic),
        }
    }

    /// Removes one event by id (others keep their seqs). `NotFound` also
    /// when `who` may neither read nor write its topic.
    pub async fn remove(&self, who: &Principal, id: EventId) -> Result<()> {
        self.admit(who)?;
        let event = self.inner.storage.get(id).await?;
        let event = event
            .filter(|event| who.can_read_topic(&event.topic) || who.can_write(&event.topic))
            .ok_or_else(|| ServiceError::not_found("event", id))?;
        self.check_remove(who, &event.topic)?;
        if self.inner.storage.remove(vec![id]).await? == 0 {
            return Err(ServiceError::not_found("event", id));
        }
        Ok(())
    }

    /// Every stored event of `topic` (for removals: write access suffices).
    async fn all_of(&self, topic: &Topic) -> Result<Vec<Event>> {
        let mut reader = self.inner.storage.read(Query::new(Pattern::Exact(topic.clone())), false).await?;
        let mut out = Vec::new();
        loop {
            let chunk = reader.next(SCAN_CHUNK_EVENTS).await?;
            if chunk.is_empty() {
                return Ok(out);
            }
            out.extend(chunk.into_iter().map(|item| item.event));
        }
    }

    /// Removes the entries of `topic` with these ids (Redis `XDEL`);
    /// returns how many were stored.
    pub async fn remove_entries(&self, who: &Principal, topic: &Topic, ids: &[StreamId]) -> Result<usize> {
        self.admit(who)?;
        self.check_remove(who, topic)?;
        let mut remove = Vec::new();
        let mut largest = None;
        for id in ids {
            let query = Query { from_seq: Some(id.seq), limit: Some(1), ..Query::new(Pattern::Exact(topic.clone())) };
            let found = self.inner.storage.read(query, false).await?.next(1).await?;
            if let Some(item) = found.first().filter(|item| StreamId::of(&item.event) == *id) {
                remove.push(item.event.id);
                largest = largest.max(Some(*id));
            }
        }
        let removed = self.inner.storage.remove(remove).await?;
        if let Some(largest) = largest {
            self.note_deleted(topic, largest).await?;
        }
        Ok(removed)
    }

    /// Removes entries from the oldest end of `topic` (Redis `XTRIM`, and
    /// `XADD … MAXLEN|MINID`); returns how many.
    pub async fn trim(&self, who: &Principal, topic: &Topic, trim: Trim) -> Result<usize> {
        self.admit(who)?;
        self.check_remove(who, topic)?;
        let ids: Vec<EventId> = match trim {
            Trim::MaxLen(keep) => {
                let count = self.inner.storage.head(topic.clone()).await?.map_or(0, |head| head.count);
                let excess = count.saturating_sub(keep);
                if excess == 0 {
                    return Ok(0);
                }
                let query = Query { limit: Some(excess), ..Query::new(Pattern::Exact(topic.clone())) };
                let mut reader = self.inner.storage.read(query, false).await?;
                let mut ids = Vec::new();
                loop {
                    let chunk = reader.next(SCAN_CHUNK_EVENTS).await?;
                    if chunk.is_empty() {
                        break ids;
                    }
                    ids.extend(chunk.iter().map(|item| item.event.id));
                }
            }
            Trim::MinId(min) => {
                let mut reader = self.inner.storage.read(Query::new(Pattern::Exact(topic.clone())), false).await?;
                let mut ids = Vec::new();
                'scan: loop {
                    let chunk = reader.next(SCAN_CHUNK_EVENTS).await?;
                    if chunk.is_empty() {
                        break;
                    }
                    for Item { event, .. } in chunk {
                        if StreamId::of(&event) >= min {
                            break 'scan;
                        }
                        ids.push(event.id);
                    }
                }
                ids
            }
        };
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(self.inner.storage.remove(ids).await?)
    }

    /// Removes every event of `topic` in one durable record (Redis `DEL`),
    /// when the service allows it; returns how many.
    pub async fn delete_topic(&self, who: &Principal, topic: &Topic) -> Result<usize> {
        self.admit(who)?;
        if !self.inner.options.allow_delete {
            return Err(ServiceError::forbidden(
                "deleting a topic is refused: cairn keeps events (start the server with --allow-delete to allow it; single events can be removed)",
            ));
        }
        self.check_remove(who, topic)?;
        let ids: Vec<EventId> = self.all_of(topic).await?.iter().map(|event| event.id).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(self.inner.storage.remove(ids).await?)
    }

    /// Restores exported events with their ids and seqs (admin).
    pub async fn import(&self, who: &Principal, events: Vec<Imported>) -> Result<usize> {
        self.admit(who)?;
        who.check_admin()?;
        Ok(self.inner.storage.import(events).await?)
    }

    /// One line of an export, as an event to import (checked against its hash).
    pub fn import_line(line: &[u8]) -> Result<Imported> {
        let json: EventJson = serde_json::from_slice(line)
            .map_err(|error| ServiceError::invalid("body", format!("not an exported event: {error}")))?;
        Ok(json.into_imported()?)
    }

    /// Makes everything acknowledged durable, whatever the sync mode.
    pub async fn sync(&self, who: &Principal) -> Result<()> {
        self.admit(who)?;
        Ok(self.inner.storage.sync().await?)
    }

    /// Checks every record and content hash (admin).
    pub async fn verify(&self, who: &Principal) -> Result<VerifyReport> {
        self.admit(who)?;
        who.check_admin()?;
        Ok(self.inner.storage.verify().await?)
    }

    /// Copies a consistent snapshot of the store, users and tokens included,
    /// into `dest` while writers run (admin). Incremental: a second backup
    /// into the same directory copies only what is new.
    pub async fn backup(
        &self,
        who: &Principal,
        dest: std::path::PathBuf,
        progress: Arc<cairn_store::BackupProgress>,
    ) -> Result<cairn_store::BackupReport> {
        self.admit(who)?;
        who.check_admin()?;
        // Taken after the log: a token revoked during the backup stays
        // revoked in the copy.
        let service = self.clone();
        let users: cairn_store::ExtraFiles = Box::new(move || {
            let bytes = service.inner.users.to_bytes().map_err(|error| cairn_store::StoreError::Io {
                context: "write the users into the backup".to_owned(),
                source: Arc::new(std::io::Error::other(error.to_string())),
            })?;
            Ok(vec![(crate::users::USERS_FILE, bytes)])
        });
        Ok(self.inner.storage.backup(dest, progress, users).await?)
    }

    /// Rewrites sealed log segments without their removed events where
    /// those make at least `ratio` of a segment (admin). Writers and
    /// readers go on meanwhile.
    pub async fn compact(&self, who: &Principal, ratio: f64) -> Result<cairn_store::CompactReport> {
        self.admit(who)?;
        who.check_admin()?;
        Ok(self.inner.storage.compact(ratio).await?)
    }

    /// Version and store facts (the counters only for who sees all).
    pub async fn info(&self, who: &Principal) -> Result<Info> {
        self.admit(who)?;
        let stats = if who.sees_all() { Some(self.inner.storage.stats().await) } else { None };
        Ok(Info {
            name: "cairn",
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.inner.started.elapsed().as_secs(),
            last_id: self.inner.storage.last_id(),
            events_appended_since_start: stats.as_ref().map(|stats| stats.events_appended),
            log_bytes: stats.as_ref().map(|stats| stats.log_bytes),
            content_bytes: stats.as_ref().map(|stats| stats.content_bytes),
        })
    }

    /// Storage counters, for metrics: only for who sees the whole store.
    pub async fn stats(&self, who: &Principal) -> Result<StoreStats> {
        self.admit(who)?;
        if !who.sees_all() {
            return Err(ServiceError::forbidden("store-wide statistics are for admins"));
        }
        Ok(self.inner.storage.stats().await)
    }

    /// Entries of `topic` with ids in `start..=end`, oldest first (newest
    /// first when `reverse`), at most `count`, with payloads, within what
    /// is left of `budget` (which they use up).
    #[allow(clippy::too_many_arguments)] // A range's own bounds.
    pub async fn range(
        &self,
        who: &Principal,
        topic: &Topic,
        start: StreamId,
        end: StreamId,
        count: usize,
        reverse: bool,
        budget: &mut Budget,
    ) -> Result<Vec<Item>> {
        self.admit(who)?;
        let pattern = Pattern::Exact(topic.clone());
        who.check_read(&pattern)?;
        let mut out = Vec::new();
        if count == 0 || start > end {
            return Ok(out);
        }
        let query = if reverse {
            Query { reverse: true, ..Query::new(pattern) }
        } else if start.ms > EventId::MAX_MS {
            return Ok(out);
        } else {
            // Every event of millisecond `start.ms` or later.
            let after = (start.ms > 0).then(|| EventId::from_u128((u128::from(start.ms) << 80) - 1));
            Query { after, ..Query::new(pattern) }
        };
        let mut reader = self.inner.storage.read(query, true).await?;
        loop {
            let mut chunk = reader.next(count.saturating_sub(out.len()).clamp(16, SCAN_CHUNK_EVENTS)).await?;
            if chunk.is_empty() {
                return Ok(out);
            }
            // The entries kept are gathered at the chunk's front and moved
            // into `out` at once: an item is a few hundred bytes, and
            // moving each alone (out of the chunk, into `out`) cost about
            // 115 instructions per entry of a long range.
            let mut kept = 0;
            let mut done = false;
            for at in 0..chunk.len() {
                let item = &chunk[at];
                let id = StreamId::of(&item.event);
                let (before, beyond) = if reverse { (id > end, id < start) } else { (id < start, id > end) };
                if before {
                    continue;
                }
                if beyond || !budget.take(item, out.is_empty() && kept == 0)? {
                    done = true;
                    break;
                }
                if kept != at {
                    chunk.swap(kept, at);
                }
                kept += 1;
                if out.len() + kept >= count {
                    done = true;
                    break;
                }
            }
            chunk.truncate(kept);
            if out.is_empty() {
                out = chunk;
            } else {
                out.append(&mut chunk);
            }
            if done {
                return Ok(out);
            }
        }
    }

    /// The newest entry of `topic`, with its payload.
    pub async fn last_entry(&self, who: &Principal, topic: &Topic) -> Result<Option<Item>> {
        let query = Query { last: Some(1), ..Query::new(Pattern::Exact(topic.clone())) };
        let mut items = self.read_all(who, query, true).await?;
        Ok(items.pop())
    }
}

/// Most bytes one reply gathers from reads (Redis range and group reads),
/// counting each entry's payload and [`REPLY_ENTRY_BYTES`]: a COUNT-less
/// XRANGE of a topic whose events share one large payload would otherwise
/// build gigabytes for eight megabytes stored.
pub const REPLY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// What an entry counts against a reply's budget besides its payload.
pub const REPLY_ENTRY_BYTES: usize = 64;

/// What one reply may still gather, in payload bytes, and what a read does
/// when an entry would go beyond it.
#[derive(Debug)]
pub struct Budget {
    left: usize,
    whole: bool,
}

impl Budget {
    /// For a reply that must hold every entry asked for (XRANGE): going
    /// beyond the budget is an error that says to ask for fewer.
    pub fn whole() -> Self {
        Budget { left: REPLY_BYTES_MAX, whole: true }
    }

    /// For a reply that may stop short (reads that resume after their last
    /// entry, like XREAD and XREADGROUP).
    pub fn partial() -> Self {
        Budget { left: REPLY_BYTES_MAX, whole: false }
    }

    /// Takes `item` from the budget: false (or, for a whole reply, an
    /// error) when it does not fit. A reply's first entry always fits.
    pub(crate) fn take(&mut self, item: &Item, first: bool) -> Result<bool> {
        let bytes = REPLY_ENTRY_BYTES + item.content.as_ref().map_or(0, |bytes| bytes.len());
        if bytes <= self.left || first {
            self.left = self.left.saturating_sub(bytes);
            return Ok(true);
        }
        if self.whole {
            return Err(ServiceError::invalid(
                "count",
                format!(
                    "the entries asked for make a reply of more than {REPLY_BYTES_MAX} bytes; \
                     ask for fewer at a time with COUNT"
                ),
            ));
        }
        self.left = 0;
        Ok(false)
    }
}

/// A topic's entity tag: its last event id, or `"empty"`.
pub fn topic_etag(head: Option<&TopicInfo>) -> String {
    match head {
        Some(info) => format!("\"{}\"", info.last_id),
        None => "\"empty\"".to_owned(),
    }
}

/// Validates an idempotency key as callers give it.
pub fn check_idempotency_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(ServiceError::invalid("key", format!("idempotency keys are 1-{IDEMPOTENCY_KEY_BYTES_MAX} bytes")));
    }
    Ok(())
}

/// The SRI hash of content given as SRI or hex.
pub fn parse_hash(text: &str) -> Result<Hash> {
    Ok(Hash::parse(text)?)
}
