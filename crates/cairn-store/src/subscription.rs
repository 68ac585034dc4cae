//! `Subscription`: history from storage, then live events, with no gap and
//! no duplicate at the switch, and back to storage whenever the subscriber
//! falls behind what memory holds. Written once over the storage seam
//! ([`Storage`]), so every backend gets the same algorithm.
//!
//! It only ever moves a cursor (the id of the last event it looked at)
//! forward, so the same loop handles catch-up, the switch, and falling
//! behind: while catching up it asks `Storage::history` for the next chunk
//! after the cursor; a short chunk moves the cursor to the point up to
//! which storage was complete, and the subscription turns to the live
//! window; when the window no longer reaches back to the cursor, it
//! catches up again. Its wake-up signal is marked seen before every look
//! at the window, so no commit between a look and a wait is missed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{Result, StoreError};
use crate::event::Event;
use crate::id::EventId;
use crate::limits::SUBSCRIBER_CHUNK_EVENTS;
use crate::read::Query;
use crate::storage::{Storage, Window};
use crate::topic::Pattern;

/// What a subscription yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A stored or ephemeral event.
    Event(Arc<Event>),
    /// History is over; live events follow (synthetic `cairn.threshold`).
    Threshold,
    /// Nothing happened for the pulse interval (synthetic `cairn.pulse`).
    Pulse,
}

/// How a subscription behaves beyond its query.
#[derive(Clone, Copy, Debug, Default)]
pub struct SubscribeOptions {
    /// Yield [`Delivery::Threshold`] once history is over.
    pub threshold: bool,
    /// Yield [`Delivery::Pulse`] after this long without events.
    pub pulse: Option<Duration>,
}

/// An ordered stream of events: history, then live. See the module docs.
pub struct Subscription {
    storage: Arc<dyn Storage>,
    pattern: Pattern,
    /// Only events with at least this seq (a `from_seq` on one topic).
    min_seq: Option<u64>,
    /// The newest id looked at; everything up to it was delivered or skipped.
    cursor: EventId,
    catching_up: bool,
    /// A threshold marker is owed once the first catch-up is over.
    threshold_due: bool,
    options: SubscribeOptions,
    buffer: VecDeque<Arc<Event>>,
    signal: watch::Receiver<u64>,
}

impl Subscription {
    /// History matching `query` (from `after`, `from_seq`, `last`, or the
    /// beginning), then live events. `limit` is the caller's business.
    pub async fn start(storage: Arc<dyn Storage>, query: &Query, options: SubscribeOptions) -> Result<Subscription> {
        query.validate()?;
        if query.reverse {
            return Err(StoreError::invalid("reverse", "a subscription runs forward"));
        }
        let now = storage.last_id();
        let before = |event: &Event| EventId::from_u128(event.id.to_u128().saturating_sub(1));
        let (cursor, min_seq) = if let Some(last) = query.last {
            let newest = Query { last: Some(last), limit: Some(1), ..query.clone() };
            match first(&*storage, newest).await? {
                Some(first) => (before(&first), None),
                None => (query.after.unwrap_or(now).max(now), None),
            }
        } else if let Some(from_seq) = query.from_seq {
            let from = Query { from_seq: Some(from_seq), limit: Some(1), ..query.clone() };
            match first(&*storage, from).await? {
                Some(first) => (before(&first), Some(from_seq)),
                None => (now, Some(from_seq)),
            }
        } else {
            (query.after.unwrap_or(EventId::MIN), None)
        };
        Ok(Subscription::new(storage, query.pattern.clone(), cursor, min_seq, true, options))
    }

    /// Live events only: everything committed after this call.
    pub fn live(storage: Arc<dyn Storage>, pattern: Pattern, options: SubscribeOptions) -> Subscription {
        let now = storage.last_id();
        Subscription::new(storage, pattern, now, None, false, options)
    }

    fn new(
        storage: Arc<dyn Storage>,
        pattern: Pattern,
        cursor: EventId,
        min_seq: Option<u64>,
        history: bool,
        options: SubscribeOptions,
    ) -> Subscription {
        let signal = storage.watch(&pattern);
        Subscription {
            storage,
            pattern,
            min_seq,
            cursor,
            catching_up: history,
            threshold_due: options.threshold,
            options,
            buffer: VecDeque::new(),
            signal,
        }
    }

    /// The id of the last event looked at: resume a new subscription after it.
    pub fn cursor(&self) -> EventId {
        self.cursor
    }

    /// The pattern followed.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// The next delivery. Cancel-safe: dropping the future loses nothing.
    /// Errors (a damaged record, say) leave the cursor before the failing
    /// event, so a new subscription after it can resume.
    pub async fn next(&mut self) -> Result<Delivery> {
        loop {
            if let Some(delivery) = self.ready() {
                return delivery;
            }
            if self.catching_up {
                self.catch_up().await?;
                continue;
            }
            if self.buffer.is_empty() && !self.wait().await {
                return Ok(Delivery::Pulse);
            }
        }
    }

    /// A delivery that is ready without waiting or reading storage:
    /// buffered events, the threshold marker, or events in the live window.
    pub fn ready(&mut self) -> Option<Result<Delivery>> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Some(Ok(Delivery::Event(event)));
            }
            if self.catching_up {
                return None;
            }
            if self.threshold_due {
                self.threshold_due = false;
                return Some(Ok(Delivery::Threshold));
            }
            // Mark the signal seen before looking, so no wake-up is lost.
            self.signal.borrow_and_update();
            if self.storage.is_closed() {
                return Some(Err(StoreError::ShuttingDown));
            }
            match self.storage.live_after(self.cursor, &self.pattern, SUBSCRIBER_CHUNK_EVENTS) {
                Window::Behind => {
                    self.catching_up = true;
                    return None;
                }
                Window::Events(events, cursor) => {
                    let moved = cursor != self.cursor;
                    self.cursor = cursor;
                    self.push(events);
                    if self.buffer.is_empty() && !moved {
                        return None;
                    }
                }
            }
        }
    }

    /// Reads one chunk of history; switches to live when storage is done.
    async fn catch_up(&mut self) -> Result<()> {
        let history = self.storage.history(self.pattern.clone(), self.cursor, SUBSCRIBER_CHUNK_EVENTS).await?;
        let done = history.events.len() < SUBSCRIBER_CHUNK_EVENTS;
        if let Some(last) = history.events.last() {
            self.cursor = last.id;
        }
        self.push(history.events);
        if done {
            self.cursor = self.cursor.max(history.through);
            self.catching_up = false;
        }
        Ok(())
    }

    fn push(&mut self, events: Vec<Arc<Event>>) {
        let min_seq = self.min_seq;
        self.buffer.extend(events.into_iter().filter(|e| min_seq.is_none_or(|min| e.seq >= min)));
    }

    /// Waits for a new commit; false when the pulse interval passed first.
    /// (Closing storage changes the signal too, and `ready` then reports it.
    /// The signal's sender lives as long as the storage this subscription
    /// holds, so `changed` does not fail while it waits.)
    async fn wait(&mut self) -> bool {
        match self.options.pulse {
            Some(pulse) => tokio::time::timeout(pulse, self.signal.changed()).await.is_ok(),
            None => {
                let _ = self.signal.changed().await;
                true
            }
        }
    }
}

/// The first event `query` reads.
async fn first(storage: &dyn Storage, query: Query) -> Result<Option<Event>> {
    Ok(storage.read(query, false).await?.next(1).await?.pop().map(|item| item.event))
}
