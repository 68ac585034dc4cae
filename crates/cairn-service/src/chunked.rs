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

use cairn_store::{Batch, Event, EventId, Expect, Hash, NewEvent, Pattern, Query, Topic};
use sha2::{Digest as _, Sha256};

use crate::error::{Result, ServiceError};
use crate::follow::{Delivered, FollowOptions};
use crate::principal::Principal;
use crate::service::Service;

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

/// A chunked append in progress.
pub struct ChunkedAppend {
    service: Service,
    who: Principal,
    event: Event,
    topic: Topic,
    hasher: Sha256,
    whole: Vec<u8>,
    max: u64,
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

impl Service {
    /// Starts a chunked append: `event` (no payload; its meta gains
    /// `"chunked": true`) is appended now, as [`Service::append`] does for
    /// `who`; pieces follow.
    pub async fn append_chunked(&self, who: &Principal, mut event: NewEvent) -> Result<ChunkedAppend> {
        if event.payload.is_some() {
            return Err(ServiceError::invalid("payload", "a chunked append sends its payload in pieces"));
        }
        let mut meta = match event.meta.as_deref() {
            None => serde_json::Map::new(),
            Some(text) => match serde_json::from_str(text) {
                Ok(serde_json::Value::Object(meta)) => meta,
                _ => return Err(ServiceError::invalid("meta", "is not a JSON object")),
            },
        };
        meta.insert("chunked".to_owned(), true.into());
        event.meta = Some(cairn_store::check_meta_value(&serde_json::Value::Object(meta))?);
        let mut appended = self.append(who, Batch::single(event, Expect::Any)).await?;
        let event = appended.remove(0);
        Ok(ChunkedAppend {
            service: self.clone(),
            who: who.clone(),
            topic: pieces_topic(event.id),
            event,
            hasher: Sha256::new(),
            whole: Vec::new(),
            max: self.limits().payload_bytes_max,
        })
    }

    /// The content of event `id` as it is written: each piece once durable,
    /// to the end (for an event that is not chunked, its payload at once).
    /// `who` must be allowed to read the event.
    pub async fn chunked_read(&self, who: &Principal, id: EventId) -> Result<ChunkedRead> {
        let item = self.get(who, id, true).await?;
        if !is_chunked(&item.event) {
            return Ok(ChunkedRead { follow: None, whole: Some(item.content.unwrap_or_default()) });
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

    /// Appends the next piece, durably.
    pub async fn piece(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let size = self.whole.len() as u64 + bytes.len() as u64;
        if size > self.max {
            return Err(ServiceError::TooLarge { what: "chunked content", bytes: size, max: self.max });
        }
        self.hasher.update(bytes);
        self.whole.extend_from_slice(bytes);
        let event = NewEvent { topic: Some(self.topic.clone()), payload: Some(bytes.to_vec()), ..NewEvent::default() };
        self.service.append_own(&self.who, event).await
    }

    /// Ends the content: its hash and size are final, and it is kept by
    /// its hash.
    pub async fn finish(self) -> Result<Chunked> {
        let hash = Hash(self.hasher.finalize().into());
        let size = self.whole.len() as u64;
        if size > 0 {
            self.service.cas_put(&self.who, self.whole).await?;
        }
        let meta = serde_json::json!({ "done": true, "hash": hash.sri(), "size": size });
        let done = NewEvent { topic: Some(self.topic.clone()), meta: Some(meta.to_string()), ..NewEvent::default() };
        self.service.append_own(&self.who, done).await?;
        Ok(Chunked { event: self.event, hash, size })
    }

    /// Ends the content unfinished (the writer went away or failed):
    /// readers get an error at its end.
    pub async fn abort(self, reason: &str) {
        let meta = serde_json::json!({ "aborted": true, "reason": reason });
        let event = NewEvent { topic: Some(self.topic.clone()), meta: Some(meta.to_string()), ..NewEvent::default() };
        if let Err(error) = self.service.append_own(&self.who, event).await {
            tracing::warn!("chunked content of {}: could not record its end: {error}", self.event.id);
        }
    }
}

impl Service {
    /// Appends one of a chunked append's own records (the store's topic)
    /// for `who`, whose session must still hold.
    async fn append_own(&self, who: &Principal, event: NewEvent) -> Result<()> {
        self.admit(who)?;
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
            let delivered = follow.next(1).await?;
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
