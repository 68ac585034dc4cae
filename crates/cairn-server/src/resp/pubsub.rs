//! Redis pub/sub: channels and patterns, fire and forget, in memory; and
//! MONITOR, which is fed the same way.
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
use std::sync::{Arc, Mutex};

/// Pattern subscriptions the whole server holds (each is matched against
/// every published channel).
const PATTERN_SUBSCRIPTIONS_MAX: usize = 16 * 1024;
/// Bytes of one argument a MONITOR line shows (longer ones are cut, as
/// Redis's slow log cuts them).
const MONITOR_ARG_BYTES_MAX: usize = 1024;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

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

/// Every subscription of the server, and the MONITOR connections.
#[derive(Default)]
pub(crate) struct Broker {
    inner: Mutex<Inner>,
    /// Connections in MONITOR (read without the lock on every command).
    monitoring: AtomicUsize,
}

#[derive(Default)]
struct Inner {
    /// Channel -> connection id -> subscriber.
    channels: HashMap<Bytes, HashMap<u64, Subscriber>>,
    /// Pattern -> its glob and its subscribers.
    patterns: HashMap<Bytes, (Arc<Glob>, HashMap<u64, Subscriber>)>,
    /// The patterns, as publishing matches them outside the lock: a
    /// snapshot rebuilt by the first publish after a change.
    pattern_list: Arc<Vec<(Bytes, Arc<Glob>)>>,
    /// `pattern_list` is out of date.
    patterns_changed: bool,
    /// Pattern subscriptions of every connection.
    pattern_subscriptions: usize,
    /// Connection id -> a MONITOR connection.
    monitors: HashMap<u64, Pushes>,
}

impl Inner {
    fn pattern_list(&mut self) -> Arc<Vec<(Bytes, Arc<Glob>)>> {
        if self.patterns_changed {
            self.pattern_list =
                Arc::new(self.patterns.iter().map(|(pattern, (glob, _))| (pattern.clone(), glob.clone())).collect());
            self.patterns_changed = false;
        }
        self.pattern_list.clone()
    }
}

impl Broker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn subscribe(&self, id: u64, channel: Bytes, subscriber: Subscriber) {
        self.lock().channels.entry(channel).or_default().insert(id, subscriber);
    }

    /// Adds the pattern subscriptions of one PSUBSCRIBE, all or none: false
    /// when the server would hold more than [`PATTERN_SUBSCRIPTIONS_MAX`].
    pub(crate) fn psubscribe(&self, id: u64, patterns: &[Bytes], subscriber: &Subscriber) -> bool {
        let mut inner = self.lock();
        if inner.pattern_subscriptions + patterns.len() > PATTERN_SUBSCRIPTIONS_MAX {
            return false;
        }
        for pattern in patterns {
            let entry =
                inner.patterns.entry(pattern.clone()).or_insert_with(|| (Arc::new(Glob::new(pattern)), HashMap::new()));
            if entry.1.insert(id, subscriber.clone()).is_none() {
                inner.pattern_subscriptions += 1;
            }
        }
        inner.patterns_changed = true;
        true
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
            if subscribers.remove(&id).is_some() {
                inner.pattern_subscriptions -= 1;
            }
            if inner.patterns.get(pattern).is_some_and(|(_, subscribers)| subscribers.is_empty()) {
                inner.patterns.remove(pattern);
                inner.patterns_changed = true;
            }
        }
    }

    pub(crate) fn monitor(&self, id: u64, pushes: Pushes) {
        let mut inner = self.lock();
        if inner.monitors.insert(id, pushes).is_none() {
            self.monitoring.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn unmonitor(&self, id: u64) {
        if self.lock().monitors.remove(&id).is_some() {
            self.monitoring.fetch_sub(1, Relaxed);
        }
    }

    /// Whether any connection is in MONITOR (one atomic load per command).
    pub(crate) fn monitoring(&self) -> bool {
        self.monitoring.load(Relaxed) > 0
    }

    /// Shows a command to the MONITOR connections other than its own, as
    /// Redis does: `+<seconds>.<micros> [0 <peer>] "arg" …`, secrets of
    /// AUTH and HELLO replaced by `(redacted)`.
    pub(crate) fn feed(&self, from: u64, peer: std::net::SocketAddr, args: &[Bytes]) {
        let monitors: Vec<Pushes> =
            self.lock().monitors.iter().filter(|(id, _)| **id != from).map(|(_, pushes)| pushes.clone()).collect();
        if monitors.is_empty() {
            return;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut line = format!("+{}.{:06} [0 {peer}]", now.as_secs(), now.subsec_micros()).into_bytes();
        let secret = if args[0].eq_ignore_ascii_case(b"auth") {
            1
        } else if args[0].eq_ignore_ascii_case(b"hello") {
            args.iter().position(|arg| arg.eq_ignore_ascii_case(b"auth")).map_or(usize::MAX, |at| at + 1)
        } else {
            usize::MAX
        };
        for (index, arg) in args.iter().enumerate() {
            line.push(b' ');
            if index >= secret {
                line.extend_from_slice(b"\"(redacted)\"");
            } else if arg.len() > MONITOR_ARG_BYTES_MAX {
                quote(&mut line, &arg[..MONITOR_ARG_BYTES_MAX]);
                line.extend_from_slice(format!("... ({} more bytes)", arg.len() - MONITOR_ARG_BYTES_MAX).as_bytes());
            } else {
                quote(&mut line, arg);
            }
        }
        line.extend_from_slice(b"\r\n");
        let line = Bytes::from(line);
        for pushes in monitors {
            pushes.try_send(line.clone());
        }
    }

    /// Sends `message` to the current subscribers of `channel`; returns how
    /// many connections it was queued for.
    pub(crate) fn publish(&self, channel: &Topic, message: &[u8]) -> usize {
        let name = channel.as_str().as_bytes();
        // Who receives, gathered under the lock; sent after it.
        let patterns = self.lock().pattern_list();
        // Matched outside the lock: at most PATTERN_SUBSCRIPTIONS_MAX
        // patterns, each bounded work on a name of at most 255 bytes.
        let matching: Vec<&Bytes> =
            patterns.iter().filter(|(_, glob)| glob.matches(name)).map(|(pattern, _)| pattern).collect();
        // Sent under the lock (queuing never waits), so a connection that
        // unsubscribed gets nothing queued after its confirmation.
        let inner = self.lock();
        let mut frames: [Option<Bytes>; 2] = [None, None];
        let mut sent = 0;
        for subscriber in inner.channels.get(name).into_iter().flat_map(HashMap::values) {
            let frame = frames[usize::from(subscriber.proto == 3)]
                .get_or_insert_with(|| frame(subscriber.proto, &[b"message", name, message]))
                .clone();
            sent += usize::from(subscriber.pushes.try_send(frame));
        }
        for pattern in matching {
            let Some((_, subscribers)) = inner.patterns.get(pattern) else { continue };
            let mut frames: [Option<Bytes>; 2] = [None, None];
            for subscriber in subscribers.values().filter(|subscriber| subscriber.principal.can_read_topic(channel)) {
                let frame = frames[usize::from(subscriber.proto == 3)]
                    .get_or_insert_with(|| frame(subscriber.proto, &[b"pmessage", pattern, name, message]))
                    .clone();
                sent += usize::from(subscriber.pushes.try_send(frame));
            }
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

/// Writes `arg` in double quotes with Redis's escapes (`\\n`, `\\"`,
/// `\\xHH` for bytes that are not printable).
fn quote(out: &mut Vec<u8>, arg: &[u8]) {
    out.push(b'"');
    for &byte in arg {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x20..=0x7e => out.push(byte),
            _ => out.extend_from_slice(format!("\\x{byte:02x}").as_bytes()),
        }
    }
    out.push(b'"');
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
