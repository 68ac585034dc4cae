//! `Subscription`: history from storage, then live events from the ring, with
//! no gap and no duplicate at the switch, and back to storage whenever the
//! subscriber falls behind the ring. It only ever moves a cursor (the id of
//! the last event it looked at) forward, so the same loop handles catch-up,
//! the switch, and falling behind.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{Result, StoreError};
use crate::event::Event;
use crate::id::EventId;
use crate::limits::SUBSCRIBER_CHUNK_EVENTS;
use crate::live::Window;
use crate::read::Scan;
use crate::store::Shared;
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
    shared: Arc<Shared>,
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
    /// Wakes when the indexer advances (for a subscriber behind both the
    /// ring and the index).
    indexed: watch::Receiver<u64>,
    /// The cursor at the last catch-up that found storage exhausted.
    exhausted_at: Option<EventId>,
}

impl Subscription {
    pub(crate) fn new(
        shared: Arc<Shared>,
        pattern: Pattern,
        cursor: EventId,
        min_seq: Option<u64>,
        history: bool,
        options: SubscribeOptions,
    ) -> Subscription {
        // A subscription to one topic wakes only for that topic's commits.
        let signal = match pattern.exact() {
            Some(topic) => shared.live.watch_topic(topic.as_str()),
            None => shared.live.watch(),
        };
        let indexed = shared.progress.watch_indexed();
        Subscription {
            shared,
            pattern,
            min_seq,
            cursor,
            catching_up: history,
            threshold_due: options.threshold,
            options,
            buffer: VecDeque::new(),
            signal,
            indexed,
            exhausted_at: None,
        }
    }

    /// The id of the last event looked at: resume a new subscription after it.
    pub fn cursor(&self) -> EventId {
        self.cursor
    }

    /// The next delivery. Errors (a damaged record, say) leave the cursor
    /// before the failing event, so a new subscription after it can resume.
    pub async fn next(&mut self) -> Result<Delivery> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Ok(Delivery::Event(event));
            }
            if self.catching_up {
                if self.exhausted_at == Some(self.cursor) {
                    // Storage had nothing after the cursor and the ring has
                    // moved past it: the indexer is behind. Wait for it.
                    self.shared.progress.hurry();
                    let _ = self.indexed.changed().await;
                }
                self.indexed.borrow_and_update();
                self.catch_up()?;
                continue;
            }
            if self.threshold_due {
                self.threshold_due = false;
                return Ok(Delivery::Threshold);
            }
            // Mark the signal seen before looking, so no wake-up is lost.
            self.signal.borrow_and_update();
            if self.shared.live.is_closed() {
                return Err(StoreError::ShuttingDown);
            }
            match self.shared.live.after(self.cursor, &self.pattern, SUBSCRIBER_CHUNK_EVENTS) {
                Window::Behind => self.catching_up = true,
                Window::Events(events, cursor) => {
                    self.cursor = cursor;
                    self.push(events);
                    if self.buffer.is_empty() && !self.wait().await {
                        return Ok(Delivery::Pulse);
                    }
                }
            }
        }
    }

    /// Reads one chunk from storage; switches to live when storage is done.
    fn catch_up(&mut self) -> Result<()> {
        // Every stored event up to `now` is in the index before the scan
        // starts; newer ones are in the ring or will be indexed. The ring's
        // last id is read first: the writer publishes a group only after
        // committing it, so if the index then covers everything committed,
        // it covers every stored event up to that id.
        let ring_last = self.shared.live.last();
        let (indexed_last_id, caught_up) = self.shared.progress.indexed_snapshot()?;
        let now = if caught_up { ring_last } else { indexed_last_id };
        let mut scan =
            Scan::open(&self.shared.index, &self.shared.segments, &self.pattern, Some(self.cursor), None, false)?;
        let mut events = Vec::new();
        let mut decoder = crate::log::codec::Decoder::full();
        while events.len() < SUBSCRIBER_CHUNK_EVENTS {
            let Some(pos) = scan.next_pos(&self.shared.segments) else { break };
            let event = self.shared.segments.read_event_with(pos?, &mut decoder)?;
            events.push(Arc::new(event));
        }
        let done = events.len() < SUBSCRIBER_CHUNK_EVENTS;
        if let Some(last) = events.last() {
            self.cursor = last.id;
        }
        self.push(events);
        if done {
            self.cursor = self.cursor.max(now);
            self.exhausted_at = Some(self.cursor);
            self.catching_up = false;
        }
        Ok(())
    }

    fn push(&mut self, events: Vec<Arc<Event>>) {
        let min_seq = self.min_seq;
        self.buffer.extend(events.into_iter().filter(|e| min_seq.is_none_or(|min| e.seq >= min)));
    }

    /// Waits for a new commit; false when the pulse interval passed first.
    /// (The sender lives as long as this subscription's `Shared`, so
    /// `changed` cannot fail; closing is signalled through `Live::close`.)
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
