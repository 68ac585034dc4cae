//! The live ring: the most recently committed events (including ephemeral
//! ones), kept in memory so caught-up subscribers get new events without
//! touching storage. Writers never wait for readers: the ring drops its
//! oldest events, and a subscriber behind them reads from storage instead.
//!
//! Public for other backends: a backend feeds it in id order
//! ([`Live::publish`]) and answers the seam's `watch`, `live_after` and
//! `last_id` from it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::event::Event;
use crate::id::EventId;
use crate::limits::LIVE_RING_EVENTS;
use crate::storage::Window;
use crate::topic::Pattern;

/// Recently committed events and a signal for each new group.
pub struct Live {
    state: Mutex<Ring>,
    closed: std::sync::atomic::AtomicBool,
    /// Wakes subscriptions to wildcard patterns on every group.
    signal: watch::Sender<u64>,
    /// Wakes subscriptions to one topic only when a group touches it, so a
    /// thousand followers of quiet topics cost a busy writer nothing.
    topics: Mutex<HashMap<Box<str>, watch::Sender<u64>>>,
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    /// Every committed event with an id above `floor` is in `events`.
    floor: EventId,
    /// Id of the newest committed (or ephemeral) event.
    last: EventId,
}

impl Live {
    /// An empty ring whose events start after `last`.
    pub fn new(last: EventId) -> Live {
        let (signal, _) = watch::channel(0);
        Live {
            state: Mutex::new(Ring { events: VecDeque::new(), floor: last, last }),
            closed: std::sync::atomic::AtomicBool::new(false),
            signal,
            topics: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any subscription exists (if none, groups need not be kept).
    pub fn has_subscribers(&self) -> bool {
        self.signal.receiver_count() > 0 || !self.topics.lock().expect("topic signals lock").is_empty()
    }

    /// Adds a committed group (in id order) and wakes subscribers. With
    /// `complete` false the group's events were not collected (nobody was
    /// subscribed when it was planned): the ring then forgets everything up
    /// to `last`, and a subscriber that needs those events reads storage.
    pub fn publish(&self, events: Vec<Arc<Event>>, last: EventId, complete: bool) {
        let touched = complete.then(|| self.touched(&events));
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
        // After the ring holds the group, so no woken subscriber misses it.
        self.wake_topics(touched);
        self.signal.send_modify(|generation| *generation += 1);
    }

    /// The topics of `events` that someone follows on their own.
    fn touched(&self, events: &[Arc<Event>]) -> Vec<crate::topic::Topic> {
        let topics = self.topics.lock().expect("topic signals lock");
        let mut touched: Vec<crate::topic::Topic> = Vec::new();
        if topics.is_empty() {
            return touched;
        }
        for event in events {
            if topics.contains_key(event.topic.as_str()) && !touched.contains(&event.topic) {
                touched.push(event.topic.clone());
            }
        }
        touched
    }

    /// A signal that fires when a group touches `topic` (or the store closes).
    pub fn watch_topic(&self, topic: &str) -> watch::Receiver<u64> {
        let mut topics = self.topics.lock().expect("topic signals lock");
        topics.entry(topic.into()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Ends every subscription: the store is closing.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake_topics(None);
        self.signal.send_modify(|generation| *generation += 1);
    }

    /// Fires the signals of `touched` topics (of every topic with `None`)
    /// and drops the signals nobody listens to any more.
    fn wake_topics(&self, touched: Option<Vec<crate::topic::Topic>>) {
        let mut topics = self.topics.lock().expect("topic signals lock");
        topics.retain(|_, sender| sender.receiver_count() > 0);
        match touched {
            None => topics.values().for_each(|sender| sender.send_modify(|generation| *generation += 1)),
            Some(touched) => {
                for topic in touched {
                    if let Some(sender) = topics.get(topic.as_str()) {
                        sender.send_modify(|generation| *generation += 1);
                    }
                }
            }
        }
    }

    /// Whether the ring was closed (subscriptions end).
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Id of the newest committed event (a cursor at "now").
    pub fn last(&self) -> EventId {
        self.state.lock().expect("live ring lock").last
    }

    /// A signal that fires on every group (and when the ring closes).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.signal.subscribe()
    }

    /// Up to `max` events after `cursor` matching `pattern`.
    pub fn after(&self, cursor: EventId, pattern: &Pattern, max: usize) -> Window {
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
