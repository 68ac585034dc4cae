//! Chunked content: a payload appended in pieces and readable while it is
//! written. The event is appended first, with no payload and meta
//! `"chunked": true`, so followers see it at once; each piece is then an
//! event of the store's own topic `cairn.chunks.<id>` (durable as it
//! arrives), and a last record there says `done` with the whole content's
//! `hash` and `size` (or `aborted`). Once done, the whole content is also
//! kept by its hash (claimed by its writer). Reading the content of a
//! chunked event follows its pieces, history then live, to the end.
//!
//! The log is append-only, so the event itself never gains a hash: the
//! final hash and size are the done record's (the append's answer carries
//! them).

use cairn_store::{Batch, Event, EventId, Expect, Hash, NewEvent, Pattern, Query, Topic, Ttl};
use sha2::{Digest as _, Sha256};

use crate::error::{Result, ServiceError};
use crate::follow::{Delivered, FollowOptions};
use crate::principal::Principal;
use crate::service::Service;

/// A reader waits this long for the next piece before it gives up.
const READ_IDLE_MAX: std::time::Duration = std::time::Duration::from_secs(300);

/// Where an event's pieces go: `cairn.chunks.<id>`.
pub const CHUNKS_PREFIX: &str = "cairn.chunks.";

fn pieces_topic(id: EventId) -> Topic {
    Topic::new(&format!("{CHUNKS_PREFIX}{id}")).expect("an id makes a valid topic")
}

/// Whether `event` carries chunked content.
pub fn is_chunked(event: &Event) -> bool {
    event.hash.is_none()
        && event.meta.as_deref().is_some_and(|meta| {
            meta.contains("\"chunked\"")
                && serde_json::from_str::<serde_json::Value>(meta)
                    .is_ok_and(|meta| meta.get("chunked") == Some(&serde_json::Value::Bool(true)))
        })
}

/// A chunked append in progress. Dropped without [`ChunkedAppend::finish`]
/// or [`ChunkedAppend::abort`], it records an abort on its own (in a task,
/// if a runtime is there to run it).
pub struct ChunkedAppend {
    service: Service,
    who: Principal,
    event: Event,
    topic: Topic,
    /// The pieces' retention: the event's own, so they go with it.
    ttl: Ttl,
    hasher: Sha256,
    size: u64,
    /// The whole content, kept to store it by hash at the end: only for
    /// an event kept for ever (content with a lifetime is read through
    /// its event, and its bytes go with it).
    whole: Option<Vec<u8>>,
    max: u64,
    ended: bool,
}

/// A finished chunked append: the event, and its content's hash and size.
#[derive(Debug)]
pub struct Chunked {
    /// The event (with no payload of its own).
    pub event: Event,
    /// The whole content's sha256.
    pub hash: Hash,
    /// The whole content's length.
    pub size: u64,
}

/// The meta key that marks chunked content; only a chunked append sets it.
const CHUNKED_KEY: &str = "chunked";

/// Refuses `meta` that claims to be chunked content (only a chunked append
/// may say so: a reader of a forged one would wait for pieces that never
/// come).
pub(crate) fn check_not_chunked(meta: Option<&str>) -> Result<()> {
    let claims = meta.is_some_and(|meta| {
        meta.contains("\"chunked\"")
            && serde_json::from_str::<serde_json::Value>(meta).is_ok_and(|meta| meta.get(CHUNKED_KEY).is_some())
    });
    if claims {
        return Err(ServiceError::invalid("meta", "the key \"chunked\" is reserved for chunked appends"));
    }
    Ok(())
}

impl Service {
    /// Starts a chunked append: `event` (no payload; its meta gains
    /// `"chunked": true`) is appended now, as [`Service::append`] does for
    /// `who`; pieces follow.
    pub async fn append_chunked(&self, who: &Principal, mut event: NewEvent) -> Result<ChunkedAppend> {
        if event.payload.is_some() {
            return Err(ServiceError::invalid("payload", "a chunked append sends its payload in pieces"));
        }
        check_not_chunked(event.meta.as_deref())?;
        let mut meta = match event.meta.as_deref() {
            None => serde_json::Map::new(),
            Some(text) => match serde_json::from_str(text) {
                Ok(serde_json::Value::Object(meta)) => meta,
                _ => return Err(ServiceError::invalid("meta", "is not a JSON object")),
            },
        };
        meta.insert(CHUNKED_KEY.to_owned(), true.into());
        event.meta = Some(cairn_store::check_meta_value(&serde_json::Value::Object(meta))?);
        let ttl = event.ttl;
        if ttl == Ttl::Ephemeral {
            return Err(ServiceError::invalid("ttl", "chunked content is stored; ephemeral events are not"));
        }
        let mut appended = self.submit_marked(who, Batch::single(event, Expect::Any)).await?;
        let event = appended.remove(0);
        Ok(ChunkedAppend {
            service: self.clone(),
            who: who.clone(),
            topic: pieces_topic(event.id),
            event,
            ttl,
            hasher: Sha256::new(),
            size: 0,
            whole: (ttl == Ttl::Forever).then(Vec::new),
            max: self.limits().payload_bytes_max,
            ended: false,
        })
    }
    /// The content of event `id` as it is written: each piece once durable,
    /// to the end (for an event that is not chunked, its payload at once).
    /// `who` must be allowed to read the event.
    pub async fn chunked_read(&self, who: &Principal, id: EventId) -> Result<ChunkedRead> {
        let item = self.get(who, id, false).await?;
        if !is_chunked(&item.event) {
            // The payload as a vector of its own (one copy, not two).
            let content = self.content(who, &item.event).await?;
            return Ok(ChunkedRead { follow: None, whole: Some(content.unwrap_or_default()) });
        }
        // Known aborted already: an error now, not a body cut after its
        // first bytes (which a client could take for the whole).
        if let Some(last) = self.last_entry(&Principal::Local, &pieces_topic(id)).await? {
            let meta: serde_json::Value =
                last.event.meta.as_deref().and_then(|meta| serde_json::from_str(meta).ok()).unwrap_or_default();
            if meta.get("aborted") == Some(&serde_json::Value::Bool(true)) {
                let reason = meta.get("reason").and_then(|reason| reason.as_str()).unwrap_or("aborted");
                return Err(ServiceError::invalid(
                    "content",
                    format!("the content of {id} is incomplete: its writer stopped before the end ({reason})"),
                ));
            }
        }
        let query = Query::new(Pattern::Exact(pieces_topic(id)));
        let options = FollowOptions { content: true, ..FollowOptions::default() };
        // The pieces are the store's own topic; reading the event was the check.
        let follow = self.follow(&Principal::Local, query, options).await?;
        Ok(ChunkedRead { follow: Some(follow), whole: None })
    }
}

impl ChunkedAppend {
    /// The event, as appended.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// Appends the next piece, durably (the writer's session must hold).
    pub async fn piece(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let size = self.size + bytes.len() as u64;
        if size > self.max {
            return Err(ServiceError::TooLarge { what: "chunked content", bytes: size, max: self.max });
        }
        self.service.admit(&self.who)?;
        self.hasher.update(bytes);
        self.size = size;
        if let Some(whole) = &mut self.whole {
            whole.extend_from_slice(bytes);
        }
        let event = NewEvent {
            topic: Some(self.topic.clone()),
            payload: Some(bytes.to_vec()),
            ttl: self.ttl,
            ..NewEvent::default()
        };
        self.service.append_record(event).await
    }

    /// Ends the content: its hash and size are final, and content kept for
    /// ever is kept by its hash. A failure here records an abort.
    pub async fn finish(mut self) -> Result<Chunked> {
        self.ended = true;
        let hash = Hash(std::mem::take(&mut self.hasher).finalize().into());
        let size = self.size;
        let kept = match self.whole.take() {
            Some(whole) if !whole.is_empty() => self.service.cas_put(&self.who, whole).await.map(|_| ()),
            _ => Ok(()),
        };
        let meta = serde_json::json!({ "done": true, "hash": hash.sri(), "size": size });
        let done = NewEvent {
            topic: Some(self.topic.clone()),
            meta: Some(meta.to_string()),
            ttl: self.ttl,
            ..NewEvent::default()
        };
        let finished = match kept {
            Ok(()) => self.service.append_record(done).await,
            Err(error) => Err(error),
        };
        if let Err(error) = finished {
            self.record_abort(&format!("it could not be finished: {error}")).await;
            return Err(error);
        }
        Ok(Chunked { event: self.event.clone(), hash, size })
    }

    /// Ends the content unfinished (the writer went away or failed):
    /// readers get an error at its end.
    pub async fn abort(mut self, reason: &str) {
        self.ended = true;
        self.record_abort(reason).await;
    }

    async fn record_abort(&self, reason: &str) {
        let event = abort_record(&self.topic, self.ttl, reason);
        if let Err(error) = self.service.append_record(event).await {
            tracing::warn!("chunked content of {}: could not record its end: {error}", self.event.id);
        }
    }
}

fn abort_record(topic: &Topic, ttl: Ttl, reason: &str) -> NewEvent {
    let meta = serde_json::json!({ "aborted": true, "reason": reason });
    NewEvent { topic: Some(topic.clone()), meta: Some(meta.to_string()), ttl, ..NewEvent::default() }
}

impl Drop for ChunkedAppend {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (service, event) = (self.service.clone(), abort_record(&self.topic, self.ttl, "its writer went away"));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = service.append_record(event).await;
            });
        }
    }
}

impl Service {
    /// Appends one of a chunked append's own records (the store's topic).
    /// An end record is written whatever became of the writer's session.
    async fn append_record(&self, event: NewEvent) -> Result<()> {
        let pending = self.storage().submit(Batch::single(event, Expect::Any), true).await?;
        pending.await?;
        Ok(())
    }
}

/// Reading chunked content (see [`Service::chunked_read`]).
pub struct ChunkedRead {
    follow: Option<crate::follow::Follow>,
    whole: Option<Vec<u8>>,
}

impl ChunkedRead {
    /// The next piece; `None` at the end; an error if the writer aborted.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>> {
        if let Some(whole) = self.whole.take() {
            return Ok((!whole.is_empty()).then_some(whole));
        }
        let Some(follow) = &mut self.follow else { return Ok(None) };
        loop {
            // A writer that died without an end record (a crash) must not
            // hold a reader for ever.
            let delivered = match tokio::time::timeout(READ_IDLE_MAX, follow.next(1)).await {
                Ok(delivered) => delivered?,
                Err(_) => {
                    self.follow = None;
                    return Err(ServiceError::invalid(
                        "content",
                        format!("no piece for {} s: its writer stopped", READ_IDLE_MAX.as_secs()),
                    ));
                }
            };
            for item in delivered {
                let Delivered::Event(event, content) = item else { continue };
                let meta: serde_json::Value =
                    event.meta.as_deref().and_then(|meta| serde_json::from_str(meta).ok()).unwrap_or_default();
                if meta.get("done") == Some(&serde_json::Value::Bool(true)) {
                    self.follow = None;
                    return Ok(None);
                }
                if meta.get("aborted") == Some(&serde_json::Value::Bool(true)) {
                    self.follow = None;
                    let reason = meta.get("reason").and_then(|reason| reason.as_str()).unwrap_or("aborted");
                    return Err(ServiceError::invalid(
                        "content",
                        format!("its writer stopped before the end: {reason}"),
                    ));
                }
                if let Some(content) = content {
                    return Ok(Some(content));
                }
            }
        }
    }
}
