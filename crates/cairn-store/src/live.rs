//! The live ring: the most recently committed events (including ephemeral
//! ones), kept in memory so caught-up subscribers get new events without
//! touching storage. Writers never wait for readers: the ring drops its
//! oldest events, and a subscriber behind them reads from storage instead.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::event::Event;
use crate::id::EventId;
use crate::limits::LIVE_RING_EVENTS;
use crate::topic::Pattern;

/// Recently committed events and a signal for each new group.
pub(crate) struct Live {
    state: Mutex<Ring>,
    closed: std::sync::atomic::AtomicBool,
    signal: watch::Sender<u64>,
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    /// Every committed event with an id above `floor` is in `events`.
    floor: EventId,
    /// Id of the newest committed (or ephemeral) event.
    last: EventId,
}

/// What the ring holds after a cursor.
pub(crate) enum Window {
    /// Matching events after the cursor, and the new cursor (the newest id
    /// looked at, matching or not).
    Events(Vec<Arc<Event>>, EventId),
    /// The ring no longer holds everything after the cursor: read storage.
    Behind,
}

impl Live {
    pub(crate) fn new(last: EventId) -> Live {
        let (signal, _) = watch::channel(0);
        Live {
            state: Mutex::new(Ring { events: VecDeque::new(), floor: last, last }),
            closed: std::sync::atomic::AtomicBool::new(false),
            signal,
        }
    }

    /// Whether any subscription exists (if none, groups need not be kept).
    pub(crate) fn has_subscribers(&self) -> bool {
        self.signal.receiver_count() > 0
    }

    /// Adds a committed group (in id order) and wakes subscribers. With
    /// `complete` false the group's events were not collected (nobody was
    /// subscribed when it was planned): the ring then forgets everything up
    /// to `last`, and a subscriber that needs those events reads storage.
    pub(crate) fn publish(&self, events: Vec<Arc<Event>>, last: EventId, complete: bool) {
        {
            let mut ring = self.state.lock().expect("live ring lock");
            if !complete {
                ring.events.clear();
                ring.last = ring.last.max(last);
                ring.floor = ring.last;
            }
            for event in events {
                debug_assert!(event.id > ring.last, "ids must increase in commit order");
                ring.last = event.id;
                ring.events.push_back(event);
            }
            ring.last = ring.last.max(last);
            while ring.events.len() > LIVE_RING_EVENTS {
                let dropped = ring.events.pop_front().expect("not empty");
                ring.floor = dropped.id;
            }
            if ring.events.is_empty() {
                ring.floor = ring.last;
            }
        }
        self.signal.send_modify(|generation| *generation += 1);
    }

    /// Ends every subscription: the store is closing.
    pub(crate) fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.signal.send_modify(|generation| *generation += 1);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Id of the newest committed event (a cursor at "now").
    pub(crate) fn last(&self) -> EventId {
        self.state.lock().expect("live ring lock").last
    }

    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.signal.subscribe()
    }

    /// Up to `max` events after `cursor` matching `pattern`.
    pub(crate) fn after(&self, cursor: EventId, pattern: &Pattern, max: usize) -> Window {
        let ring = self.state.lock().expect("live ring lock");
        if cursor < ring.floor {
            return Window::Behind;
        }
        let start = ring.events.partition_point(|event| event.id <= cursor);
        let mut out = Vec::new();
        let mut new_cursor = cursor;
        for event in ring.events.range(start..) {
            if out.len() >= max {
                break;
            }
            new_cursor = event.id;
            if pattern.matches(event.topic.as_str()) {
                out.push(event.clone());
            }
        }
        Window::Events(out, new_cursor)
    }
}
