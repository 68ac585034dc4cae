//! The live ring: the most recently committed events (including ephemeral
//! ones), kept in memory so caught-up subscribers get new events without
//! touching storage. Writers never wait for readers: the ring drops its
//! oldest events, and a subscriber behind them reads from storage instead.
//!
//! Public for other backends: a backend feeds it in id order
//! ([`Live::publish`]) and answers the seam's `watch`, `live_after` and
//! `last_id` from it.

use std::collections::{HashMap, HashSet, VecDeque};
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
    /// Wakes subscriptions to patterns that start with a wildcard on every
    /// group.
    signal: watch::Sender<u64>,
    /// The signals of subscriptions that wake only when a group touches
    /// what they follow, so a thousand followers of quiet topics cost a busy
    /// writer nothing. Locked from before a group enters the ring until its
    /// subscribers are woken: a subscription that registers meanwhile
    /// waits, then finds the group in the ring.
    signals: Mutex<Signals>,
}

#[derive(Default)]
struct Signals {
    /// Subscriptions to one topic, by topic.
    topics: HashMap<Box<str>, watch::Sender<u64>>,
    /// Subscriptions to wildcard patterns that start with literal levels, by
    /// those levels with their dots (`orders.` for `orders.*.created`):
    /// every topic they match starts with it. (The server's processors
    /// follow `cairn.proc.>`; woken by every group, they cost each append a
    /// task wake-up.)
    prefixes: HashMap<Box<str>, watch::Sender<u64>>,
    /// The lengths of those prefixes, each once: a topic is looked up
    /// only at these, not at each of its dots (a topic of 128 levels would
    /// otherwise cost 127 lookups of up to 255 bytes).
    prefix_lengths: Vec<usize>,
}

impl Signals {
    fn is_empty(&self) -> bool {
        self.topics.is_empty() && self.prefixes.is_empty()
    }

    /// Drops the signals nobody listens to any more.
    fn retain_listened(&mut self) {
        self.topics.retain(|_, sender| sender.receiver_count() > 0);
        let before = self.prefixes.len();
        self.prefixes.retain(|_, sender| sender.receiver_count() > 0);
        if self.prefixes.len() != before {
            self.measure_prefixes();
        }
    }

    fn measure_prefixes(&mut self) {
        self.prefix_lengths = self.prefixes.keys().map(|prefix| prefix.len()).collect();
        self.prefix_lengths.sort_unstable();
        self.prefix_lengths.dedup();
    }

    /// The signals of `events`' topics and of the prefixes of their levels,
    /// each once.
    fn touched(&self, events: &[Arc<Event>]) -> Vec<&watch::Sender<u64>> {
        let mut touched: Vec<&watch::Sender<u64>> = Vec::new();
        if self.is_empty() {
            return touched;
        }
        // Each signal once: a batch may touch as many followed topics as it
        // has events, so past a few, seen ones are found by address in a
        // set, not by a search.
        let mut seen: HashSet<*const watch::Sender<u64>> = HashSet::new();
        fn add<'a>(
            touched: &mut Vec<&'a watch::Sender<u64>>,
            seen: &mut HashSet<*const watch::Sender<u64>>,
            sender: &'a watch::Sender<u64>,
        ) {
            let new = if touched.len() < 16 {
                !touched.iter().any(|seen| std::ptr::eq(*seen, sender))
            } else {
                if seen.is_empty() {
                    seen.extend(touched.iter().map(|seen| std::ptr::from_ref(*seen)));
                }
                seen.insert(std::ptr::from_ref(sender))
            };
            if new {
                touched.push(sender);
            }
        }
        let mut previous: Option<&str> = None;
        for event in events {
            let topic = event.topic.as_str();
            // Events of one topic come in runs.
            if previous == Some(topic) {
                continue;
            }
            previous = Some(topic);
            if let Some(sender) = self.topics.get(topic) {
                add(&mut touched, &mut seen, sender);
            }
            for &len in &self.prefix_lengths {
                // A prefix ends with a dot, so where the topic has one the
                // length is a character boundary.
                if topic.as_bytes().get(len.wrapping_sub(1)) == Some(&b'.')
                    && let Some(sender) = self.prefixes.get(&topic[..len])
                {
                    add(&mut touched, &mut seen, sender);
                }
            }
        }
        touched
    }

    fn all(&self) -> Vec<&watch::Sender<u64>> {
        self.topics.values().chain(self.prefixes.values()).collect()
    }
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
            signals: Mutex::new(Signals::default()),
        }
    }

    /// Whether any subscription exists (if none, groups need not be kept).
    pub fn has_subscribers(&self) -> bool {
        self.signal.receiver_count() > 0 || !self.signals.lock().expect("signals lock").is_empty()
    }

    /// Adds a committed group (in id order) and wakes subscribers. With
    /// `complete` false the group's events were not collected (nobody was
    /// subscribed when it was planned): the ring then forgets everything up
    /// to `last`, and a subscriber that needs those events reads storage.
    pub fn publish(&self, events: Vec<Arc<Event>>, last: EventId, complete: bool) {
        let mut signals = self.signals.lock().expect("signals lock");
        signals.retain_listened();
        let touched = if complete { signals.touched(&events) } else { signals.all() };
        // Widens the moment a subscription registering now could slip into
        // were the signals not locked (`a_subscription_registering_…`).
        #[cfg(test)]
        std::thread::sleep(std::time::Duration::from_micros(20));
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
        touched.into_iter().for_each(|sender| sender.send_modify(|generation| *generation += 1));
        drop(signals);
        self.signal.send_modify(|generation| *generation += 1);
    }

    /// A signal for a subscription to `pattern`: it fires when a group
    /// touches a topic the pattern may match (every group, for a pattern
    /// that starts with a wildcard), and when the store closes.
    pub fn watch_pattern(&self, pattern: &Pattern) -> watch::Receiver<u64> {
        if let Some(topic) = pattern.exact() {
            let mut signals = self.signals.lock().expect("signals lock");
            return signals.topics.entry(topic.as_str().into()).or_insert_with(|| watch::channel(0).0).subscribe();
        }
        let Some(prefix) = pattern.literal_prefix() else { return self.watch() };
        let mut signals = self.signals.lock().expect("signals lock");
        let receiver = signals.prefixes.entry(prefix.into()).or_insert_with(|| watch::channel(0).0).subscribe();
        signals.measure_prefixes();
        receiver
    }

    /// Ends every subscription: the store is closing.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        {
            let signals = self.signals.lock().expect("signals lock");
            signals.all().into_iter().for_each(|sender| sender.send_modify(|generation| *generation += 1));
        }
        self.signal.send_modify(|generation| *generation += 1);
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::topic::Topic;

    fn event(id: u128, topic: &str) -> Arc<Event> {
        Arc::new(Event::bare(EventId::from_u128(id), Topic::new(topic).unwrap(), 0))
    }

    /// A follower of a topic, or of a pattern that starts with literal
    /// levels, is woken only by groups that touch what it may match; one of
    /// a pattern that starts with a wildcard by every group.
    #[test]
    fn followers_wake_only_for_what_they_may_match() {
        let live = Live::new(EventId::MIN);
        let pattern = |text: &str| Pattern::parse(text).unwrap();
        let mut exact = live.watch_pattern(&pattern("a.b"));
        let mut prefix = live.watch_pattern(&pattern("a.>"));
        let mut deeper = live.watch_pattern(&pattern("a.*.c"));
        let mut wildcard = live.watch_pattern(&pattern("*.b"));
        let woken = |receivers: [&mut watch::Receiver<u64>; 4]| {
            receivers.map(|receiver| {
                let changed = receiver.has_changed().unwrap();
                receiver.borrow_and_update();
                changed
            })
        };
        let cases = [
            ("ab.c", [false, false, false, true]),
            ("c.b", [false, false, false, true]),
            ("a.x", [false, true, true, true]),
            ("a.b", [true, true, true, true]),
            ("a.x.c", [false, true, true, true]),
        ];
        for (n, (topic, expected)) in (1..).zip(cases) {
            let id = n * 10;
            live.publish(vec![event(id, topic), event(id + 1, "other")], EventId::from_u128(id + 1), true);
            assert_eq!(woken([&mut exact, &mut prefix, &mut deeper, &mut wildcard]), expected, "{topic}");
        }
        // A group whose events were not collected wakes everyone.
        live.publish(Vec::new(), EventId::from_u128(1000), false);
        assert_eq!(woken([&mut exact, &mut prefix, &mut deeper, &mut wildcard]), [true; 4]);
        live.close();
        assert_eq!(woken([&mut exact, &mut prefix, &mut deeper, &mut wildcard]), [true; 4]);
    }

    /// A group over more followed topics than are searched one by one:
    /// every touched follower's signal fires exactly once, no other does.
    #[test]
    fn a_group_over_many_followed_topics_wakes_each_follower_once() {
        let live = Live::new(EventId::MIN);
        let mut followers: Vec<_> =
            (0..100).map(|n| live.watch_pattern(&Pattern::parse(&format!("t{n}")).unwrap())).collect();
        let mut prefix = live.watch_pattern(&Pattern::parse("p.>").unwrap());
        // Topics 0..60 twice each (in two runs), p.0..p.40, not 60..100.
        let events: Vec<_> = (0..60)
            .chain(0..60)
            .map(|n| format!("t{n}"))
            .chain((0..40).map(|n| format!("p.{n}")))
            .zip(1..)
            .map(|(topic, id)| event(id, &topic))
            .collect();
        live.publish(events, EventId::from_u128(160), true);
        for (n, follower) in followers.iter_mut().enumerate() {
            let generation = *follower.borrow_and_update();
            assert_eq!(generation, u64::from(n < 60), "t{n}");
        }
        assert_eq!(*prefix.borrow_and_update(), 1);
    }

    /// A subscription (to a topic, or to a prefix) that registers while a
    /// group is published either finds the group in the ring or is woken
    /// for it: none waits for a group already there.
    #[test]
    fn a_subscription_registering_during_a_publish_is_not_forgotten() {
        let live = Arc::new(Live::new(EventId::MIN));
        let rounds = 5_000u128;
        let start = Arc::new(std::sync::Barrier::new(2));
        let publisher = {
            let (live, start) = (live.clone(), start.clone());
            std::thread::spawn(move || {
                for round in 1..=rounds {
                    start.wait();
                    let topic = format!("g{}.x", round % 8);
                    live.publish(vec![event(round, &topic)], EventId::from_u128(round), true);
                }
            })
        };
        for round in 1..=rounds {
            // Followers of the topic and of its prefix, in turn.
            let level = if round % 2 == 0 { "x" } else { ">" };
            let pattern = Pattern::parse(&format!("g{}.{level}", round % 8)).unwrap();
            let cursor = EventId::from_u128(round - 1);
            start.wait();
            let mut signal = live.watch_pattern(&pattern);
            signal.borrow_and_update();
            let in_ring = matches!(live.after(cursor, &pattern, 1), Window::Events(events, _) if !events.is_empty());
            if !in_ring {
                // The group comes after this look at the ring: it must wake.
                while live.last() < EventId::from_u128(round) {
                    std::hint::spin_loop();
                }
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while !signal.has_changed().unwrap() {
                    assert!(std::time::Instant::now() < deadline, "round {round}: not woken for a group it missed");
                    std::thread::yield_now();
                }
            }
            drop(signal);
        }
        publisher.join().unwrap();
    }
}
