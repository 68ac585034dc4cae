//! Redis pub/sub: channels and patterns, fire and forget, in memory.
//!
//! A message goes to the connections subscribed at the moment it is
//! published and is kept nowhere: Redis's semantics, which pub/sub clients
//! (socket.io adapters, cache invalidation, chat relays) are written for.
//! Events that must outlive a restart are appended (XADD, MeiliES
//! `publish`, HTTP); pub/sub messages are not events and never enter the
//! log. Channels are a namespace of their own, named like topics and
//! authorized like them: SUBSCRIBE needs the read right on the channel's
//! name, PUBLISH the write right, and a pattern subscription receives only
//! the channels its user may read.
//!
//! A publisher never waits for a subscriber: each message is put on the
//! subscriber's bounded push queue without waiting, and a subscriber whose
//! queue is full is disconnected, as Redis disconnects a pub/sub client
//! past its output buffer limit.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::{BufMut as _, Bytes, BytesMut};
use cairn_service::{Glob, Principal, Topic};

use super::conn::Pushes;

/// A connection subscribed to a channel or a pattern.
#[derive(Clone)]
pub(crate) struct Subscriber {
    pub(crate) pushes: Pushes,
    /// The connection's protocol when it subscribed (2 or 3).
    pub(crate) proto: u8,
    pub(crate) principal: Principal,
}

/// Every subscription of the server.
#[derive(Default)]
pub(crate) struct Broker {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Channel -> connection id -> subscriber.
    channels: HashMap<Bytes, HashMap<u64, Subscriber>>,
    /// Pattern -> its glob and its subscribers.
    patterns: HashMap<Bytes, (Glob, HashMap<u64, Subscriber>)>,
}

impl Broker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn subscribe(&self, id: u64, channel: Bytes, subscriber: Subscriber) {
        self.lock().channels.entry(channel).or_default().insert(id, subscriber);
    }

    pub(crate) fn psubscribe(&self, id: u64, pattern: Bytes, subscriber: Subscriber) {
        let mut inner = self.lock();
        let entry = inner.patterns.entry(pattern.clone()).or_insert_with(|| (Glob::new(&pattern), HashMap::new()));
        entry.1.insert(id, subscriber);
    }

    pub(crate) fn unsubscribe(&self, id: u64, channel: &[u8]) {
        let mut inner = self.lock();
        if let Some(subscribers) = inner.channels.get_mut(channel) {
            subscribers.remove(&id);
            if subscribers.is_empty() {
                inner.channels.remove(channel);
            }
        }
    }

    pub(crate) fn punsubscribe(&self, id: u64, pattern: &[u8]) {
        let mut inner = self.lock();
        if let Some((_, subscribers)) = inner.patterns.get_mut(pattern) {
            subscribers.remove(&id);
            if subscribers.is_empty() {
                inner.patterns.remove(pattern);
            }
        }
    }

    /// Sends `message` to the current subscribers of `channel`; returns how
    /// many connections it was queued for.
    pub(crate) fn publish(&self, channel: &Topic, message: &[u8]) -> usize {
        let name = channel.as_str().as_bytes();
        // Who receives, gathered under the lock; sent after it.
        let mut direct: Vec<Subscriber> = Vec::new();
        let mut matched: Vec<(Bytes, Subscriber)> = Vec::new();
        {
            let inner = self.lock();
            if let Some(subscribers) = inner.channels.get(name) {
                direct.extend(subscribers.values().cloned());
            }
            for (pattern, (glob, subscribers)) in &inner.patterns {
                if !glob.matches(name) {
                    continue;
                }
                for subscriber in subscribers.values() {
                    if subscriber.principal.can_read_topic(channel) {
                        matched.push((pattern.clone(), subscriber.clone()));
                    }
                }
            }
        }
        let mut frames: [Option<Bytes>; 2] = [None, None];
        let mut sent = 0;
        for subscriber in &direct {
            let frame = frames[usize::from(subscriber.proto == 3)]
                .get_or_insert_with(|| frame(subscriber.proto, &[b"message", name, message]))
                .clone();
            sent += usize::from(subscriber.pushes.try_send(frame));
        }
        for (pattern, subscriber) in &matched {
            sent += usize::from(
                subscriber.pushes.try_send(frame(subscriber.proto, &[b"pmessage", pattern, name, message])),
            );
        }
        sent
    }

    /// Channels with subscribers whose names pass `keep`.
    pub(crate) fn channels(&self, keep: impl Fn(&[u8]) -> bool) -> Vec<Bytes> {
        self.lock().channels.keys().filter(|name| keep(name)).cloned().collect()
    }

    /// Subscribers of `channel`.
    pub(crate) fn numsub(&self, channel: &[u8]) -> usize {
        self.lock().channels.get(channel).map_or(0, HashMap::len)
    }

    /// Patterns subscribed by connections whose principal passes `keep`.
    pub(crate) fn numpat(&self, keep: impl Fn(&Principal) -> bool) -> usize {
        self.lock()
            .patterns
            .values()
            .filter(|(_, subscribers)| subscribers.values().any(|subscriber| keep(&subscriber.principal)))
            .count()
    }
}

/// A push of bulk strings: `*n` in RESP2, `>n` in RESP3.
pub(crate) fn frame(proto: u8, parts: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + parts.iter().map(|part| part.len() + 16).sum::<usize>());
    out.put_u8(if proto == 3 { b'>' } else { b'*' });
    out.put_slice(parts.len().to_string().as_bytes());
    out.put_slice(b"\r\n");
    for part in parts {
        out.put_u8(b'$');
        out.put_slice(part.len().to_string().as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(part);
        out.put_slice(b"\r\n");
    }
    out.freeze()
}
