//! The single writer: drains every request waiting at that moment into one
//! group, encodes the group's records into one buffer, writes it with one
//! write and one fdatasync (group commit), applies it to the index in one
//! atomic batch, publishes it to live subscribers, and only then replies.
//!
//! It must never acknowledge a write that is not durable under the sync mode,
//! and after a failed fdatasync it acknowledges nothing again (poisoned).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Result, StoreError};
use crate::event::{Event, Expect, Payload, Ttl};
use crate::id::{EventId, IdGenerator};
use crate::index::txn::Ks;
use crate::index::{Applier, Checkpoint, Heads, META_APPLIED, META_LAST_ID, encode_checkpoint};
use crate::limits::{GROUP_BYTES_MAX, RECORD_BYTES_MAX};
use crate::log::codec::{self, Pos};
use crate::log::segment::{SEGMENT_HEADER_BYTES, create_segment};
use crate::store::{Shared, SyncMode};

/// An event ready for the writer: validated, payload placed.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) event: Event,
    /// Bytes of a content-store payload, kept in case the file was collected
    /// between the caller's put and this write (then the writer puts it again).
    pub(crate) stored_bytes: Option<Vec<u8>>,
}

/// What callers ask of the writer.
pub(crate) enum Request {
    Append {
        events: Vec<Prepared>,
        expect: Vec<(String, Expect)>,
        key: Option<String>,
        reply: oneshot::Sender<Result<Vec<Event>>>,
    },
    Import {
        events: Vec<Prepared>,
        reply: oneshot::Sender<Result<Vec<Event>>>,
    },
    Remove {
        ids: Vec<EventId>,
        reply: oneshot::Sender<Result<Vec<EventId>>>,
    },
    Ack {
        name: String,
        id: EventId,
        reply: oneshot::Sender<Result<()>>,
    },
    ConsumerDelete {
        name: String,
        reply: oneshot::Sender<Result<bool>>,
    },
    Expire {
        now_ms: u64,
        reply: oneshot::Sender<Result<usize>>,
    },
    /// Replies once everything before it is durable (even in `none` mode).
    Sync {
        reply: oneshot::Sender<Result<()>>,
    },
}

/// The writer's state; lives on its own thread.
pub(crate) struct Writer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) file: File,
    pub(crate) segment: u32,
    pub(crate) offset: u64,
    pub(crate) heads: Heads,
    pub(crate) ids: IdGenerator,
    buf: Vec<u8>,
    /// Bytes written but not yet fdatasynced (`interval` and `none` modes).
    unsynced: bool,
    last_sync: Instant,
}

/// One request after encoding, waiting for the commit.
enum Planned {
    Done(Reply),
    Append {
        events: Vec<Event>,
        stored: Vec<(usize, Vec<(u32, u32)>)>,
        key: Option<String>,
        reply: oneshot::Sender<Result<Vec<Event>>>,
    },
    Remove {
        ids: Vec<EventId>,
        reply: oneshot::Sender<Result<Vec<EventId>>>,
    },
    Ack {
        name: String,
        id: EventId,
        reply: oneshot::Sender<Result<()>>,
    },
    ConsumerDelete {
        name: String,
        reply: oneshot::Sender<Result<bool>>,
    },
    Expire {
        now_ms: u64,
        removed: usize,
        reply: oneshot::Sender<Result<usize>>,
    },
    Sync {
        reply: oneshot::Sender<Result<()>>,
    },
}

/// A reply decided before the commit (an error, or an idempotent repeat).
enum Reply {
    Events(oneshot::Sender<Result<Vec<Event>>>, Result<Vec<Event>>),
    Removed(oneshot::Sender<Result<Vec<EventId>>>, Result<Vec<EventId>>),
    Unit(oneshot::Sender<Result<()>>, Result<()>),
    Bool(oneshot::Sender<Result<bool>>, Result<bool>),
    Count(oneshot::Sender<Result<usize>>, Result<usize>),
}

impl Reply {
    fn send(self) {
        // A caller that stopped waiting is not an error.
        match self {
            Reply::Events(tx, result) => drop(tx.send(result)),
            Reply::Removed(tx, result) => drop(tx.send(result)),
            Reply::Unit(tx, result) => drop(tx.send(result)),
            Reply::Bool(tx, result) => drop(tx.send(result)),
            Reply::Count(tx, result) => drop(tx.send(result)),
        }
    }
}

fn fail(request: Request, error: impl Fn() -> StoreError) {
    let reply = match request {
        Request::Append { reply, .. } | Request::Import { reply, .. } => Reply::Events(reply, Err(error())),
        Request::Remove { reply, .. } => Reply::Removed(reply, Err(error())),
        Request::Ack { reply, .. } | Request::Sync { reply } => Reply::Unit(reply, Err(error())),
        Request::ConsumerDelete { reply, .. } => Reply::Bool(reply, Err(error())),
        Request::Expire { reply, .. } => Reply::Count(reply, Err(error())),
    };
    reply.send();
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        file: File,
        segment: u32,
        offset: u64,
        heads: Heads,
        ids: IdGenerator,
    ) -> Writer {
        Writer {
            shared,
            file,
            segment,
            offset,
            heads,
            ids,
            buf: Vec::new(),
            unsynced: false,
            last_sync: Instant::now(),
        }
    }

    /// Runs until every sender is gone, then makes everything durable.
    pub(crate) fn run(mut self, requests: Receiver<Request>) {
        loop {
            let first = match self.wait_timeout() {
                None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(timeout) => requests.recv_timeout(timeout),
            };
            let first = match first {
                Ok(request) => request,
                Err(RecvTimeoutError::Timeout) => {
                    self.sync_if_unsynced();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            let mut group_bytes = request_bytes(&group[0]);
            while group_bytes < GROUP_BYTES_MAX {
                match requests.try_recv() {
                    Ok(request) => {
                        group_bytes += request_bytes(&request);
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
        self.sync_if_unsynced();
        if let Err(error) = self.shared.index.flush() {
            tracing::warn!("failed to flush the index on close: {error}");
        }
    }

    fn wait_timeout(&self) -> Option<Duration> {
        match self.shared.options.sync {
            SyncMode::Interval(interval) if self.unsynced => Some(interval.saturating_sub(self.last_sync.elapsed())),
            _ => None,
        }
    }

    fn sync_if_unsynced(&mut self) {
        if self.unsynced
            && let Err(error) = self.sync()
        {
            tracing::error!("failed to fdatasync the log: {error}");
        }
    }

    fn sync(&mut self) -> Result<()> {
        if let Err(source) = self.file.sync_data() {
            let reason = format!("fdatasync of log segment {} failed: {source}", self.segment);
            self.shared.poison(&reason);
            return Err(StoreError::Poisoned { reason });
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn commit_group(&mut self, group: Vec<Request>) {
        if let Some(reason) = self.shared.poisoned() {
            for request in group {
                fail(request, || StoreError::Poisoned { reason: reason.clone() });
            }
            return;
        }
        if self.offset >= self.shared.options.segment_bytes
            && let Err(error) = self.roll()
        {
            let message = error.to_string();
            for request in group {
                fail(request, || StoreError::Io {
                    context: message.clone(),
                    source: std::io::Error::other("segment roll failed"),
                });
            }
            return;
        }
        self.buf.clear();
        let mut tails: HashMap<String, Option<(u64, EventId)>> = HashMap::new();
        let mut keys: HashMap<String, Vec<Event>> = HashMap::new();
        let mut planned = Vec::with_capacity(group.len());
        let mut published: Vec<Arc<Event>> = Vec::new();
        for request in group {
            planned.push(self.plan(request, &mut tails, &mut keys, &mut published));
        }
        let has_sync = planned.iter().any(|p| matches!(p, Planned::Sync { .. }));
        if let Err(error) = self.write_and_sync(has_sync) {
            let message = error.to_string();
            for plan in planned {
                reply_error(plan, &error, &message);
            }
            return;
        }
        let result = self.apply(&mut planned);
        if let Err(error) = &result {
            // The log holds the group; the index does not. Reopening replays it.
            let reason = format!("index update failed: {error}");
            self.shared.poison(&reason);
            self.heads.clear();
            for plan in planned {
                reply_error(plan, &StoreError::Poisoned { reason: reason.clone() }, &reason);
            }
            return;
        }
        self.shared.live.publish(published, self.ids.last());
        for plan in planned {
            finish(plan);
        }
    }

    /// Validates one request against the state including this group's earlier
    /// requests, assigns ids and seqs, and encodes its record into the buffer.
    fn plan(
        &mut self,
        request: Request,
        tails: &mut HashMap<String, Option<(u64, EventId)>>,
        keys: &mut HashMap<String, Vec<Event>>,
        published: &mut Vec<Arc<Event>>,
    ) -> Planned {
        match request {
            Request::Append { events, expect, key, reply } => {
                match self.plan_append(events, &expect, key.as_deref(), tails, keys, published, false) {
                    Ok(PlanOutcome::Repeat(events)) => Planned::Done(Reply::Events(reply, Ok(events))),
                    Ok(PlanOutcome::New(events, stored)) => Planned::Append { events, stored, key, reply },
                    Err(error) => Planned::Done(Reply::Events(reply, Err(error))),
                }
            }
            Request::Import { events, reply } => {
                match self.plan_append(events, &[], None, tails, keys, published, true) {
                    Ok(PlanOutcome::New(events, stored)) => Planned::Append { events, stored, key: None, reply },
                    Ok(PlanOutcome::Repeat(events)) => Planned::Done(Reply::Events(reply, Ok(events))),
                    Err(error) => Planned::Done(Reply::Events(reply, Err(error))),
                }
            }
            Request::Remove { ids, reply } => {
                let existing: Vec<EventId> =
                    ids.into_iter().filter(|id| self.shared.index.pos_of(*id).ok().flatten().is_some()).collect();
                if existing.is_empty() {
                    return Planned::Done(Reply::Removed(reply, Ok(Vec::new())));
                }
                codec::encode_remove(&mut self.buf, &existing);
                Planned::Remove { ids: existing, reply }
            }
            Request::Ack { name, id, reply } => {
                codec::encode_ack(&mut self.buf, &name, id);
                Planned::Ack { name, id, reply }
            }
            Request::ConsumerDelete { name, reply } => match self.shared.index.consumer(&name) {
                Ok(Some(_)) => {
                    codec::encode_consumer_delete(&mut self.buf, &name);
                    Planned::ConsumerDelete { name, reply }
                }
                Ok(None) => Planned::Done(Reply::Bool(reply, Ok(false))),
                Err(error) => Planned::Done(Reply::Bool(reply, Err(error))),
            },
            Request::Expire { now_ms, reply } => Planned::Expire { now_ms, removed: 0, reply },
            Request::Sync { reply } => Planned::Sync { reply },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_append(
        &mut self,
        prepared: Vec<Prepared>,
        expect: &[(String, Expect)],
        key: Option<&str>,
        tails: &mut HashMap<String, Option<(u64, EventId)>>,
        keys: &mut HashMap<String, Vec<Event>>,
        published: &mut Vec<Arc<Event>>,
        import: bool,
    ) -> Result<PlanOutcome> {
        if let Some(key) = key {
            if let Some(events) = keys.get(key) {
                return Ok(PlanOutcome::Repeat(events.clone()));
            }
            if let Some(events) = self.shared.idempotent_repeat(key)? {
                return Ok(PlanOutcome::Repeat(events));
            }
        }
        for (topic, expectation) in expect {
            let last = self.tail(tails, topic)?;
            if !expectation.check(last) {
                return Err(StoreError::ExpectationFailed {
                    topic: topic.clone(),
                    expected: expectation.to_string(),
                    actual_seq: last.map(|(seq, _)| seq),
                    actual_id: last.map(|(_, id)| id),
                });
            }
        }
        // Assign ids and seqs on a scratch copy of the tails so a refused
        // import leaves the group's state untouched.
        let mut scratch: HashMap<String, Option<(u64, EventId)>> = HashMap::new();
        let mut events = Vec::with_capacity(prepared.len());
        let mut ids_floor = self.ids.last();
        for Prepared { mut event, stored_bytes } in prepared {
            let topic = event.topic.as_str().to_owned();
            let last = match scratch.get(&topic) {
                Some(last) => *last,
                None => self.tail(tails, &topic)?,
            };
            if import {
                if event.id <= ids_floor {
                    return Err(StoreError::invalid(
                        "id",
                        format!(
                            "imported id {} is not after the store's last id {ids_floor}; import into an empty store or after its last event",
                            event.id
                        ),
                    ));
                }
                if let Some((last_seq, _)) = last
                    && event.seq <= last_seq
                {
                    return Err(StoreError::invalid(
                        "seq",
                        format!("imported seq {} of topic {topic} is not after its last seq {last_seq}", event.seq),
                    ));
                }
                ids_floor = event.id;
            } else {
                event.id = EventId::MIN;
                event.seq = last.map_or(0, |(seq, _)| seq + 1);
            }
            if event.payload == Payload::Stored
                && let (Some(hash), Some(bytes)) = (event.hash, stored_bytes.as_deref())
                && !self.shared.cas.has_file(&hash)
            {
                self.shared.cas.put(&hash, bytes)?;
            }
            if event.ttl != Ttl::Ephemeral {
                scratch.insert(topic, Some((event.seq, event.id)));
            }
            events.push(event);
        }
        // Commit point of planning: assign ids in order, update the tails.
        for event in &mut events {
            if import {
                self.ids.observe(event.id);
            } else {
                event.id = self.ids.next();
            }
            if event.ttl != Ttl::Ephemeral {
                tails.insert(event.topic.as_str().to_owned(), Some((event.seq, event.id)));
            }
        }
        let stored_events: Vec<&Event> = events.iter().filter(|e| e.ttl != Ttl::Ephemeral).collect();
        let mut stored = Vec::new();
        if !stored_events.is_empty() {
            let record = self.buf.len();
            let offsets = codec::encode_batch(&mut self.buf, key, &stored_events);
            // The store refuses batches whose estimate exceeds the limit.
            assert!(self.buf.len() - record <= RECORD_BYTES_MAX, "a record exceeds RECORD_BYTES_MAX");
            stored.push((record, offsets));
        }
        if let Some(key) = key {
            keys.insert(key.to_owned(), events.clone());
        }
        published.extend(events.iter().cloned().map(Arc::new));
        Ok(PlanOutcome::New(events, stored))
    }

    fn tail(
        &mut self,
        tails: &mut HashMap<String, Option<(u64, EventId)>>,
        topic: &str,
    ) -> Result<Option<(u64, EventId)>> {
        if let Some(tail) = tails.get(topic) {
            return Ok(*tail);
        }
        let txn = self.shared.index.txn();
        let tail = self.heads.get(&txn, topic)?.map(|head| (head.last_seq, head.last_id));
        tails.insert(topic.to_owned(), tail);
        Ok(tail)
    }

    fn write_and_sync(&mut self, force_sync: bool) -> Result<()> {
        if !self.buf.is_empty() {
            if let Err(source) = self.file.write_all(&self.buf) {
                // Cut the partial write so the log ends at the last good record.
                let _ = self.file.set_len(self.offset);
                use std::io::Seek as _;
                let _ = self.file.seek(std::io::SeekFrom::Start(self.offset));
                return Err(StoreError::Io { context: format!("write log segment {}", self.segment), source });
            }
            self.unsynced = true;
        }
        let sync_now = match self.shared.options.sync {
            SyncMode::Always => true,
            SyncMode::Interval(interval) => self.last_sync.elapsed() >= interval,
            SyncMode::None => false,
        };
        if self.unsynced && (sync_now || force_sync) {
            self.sync()?;
        }
        Ok(())
    }

    /// Applies the written group to the index and commits it.
    fn apply(&mut self, planned: &mut [Planned]) -> Result<()> {
        let base = self.offset;
        let segment = self.segment;
        self.offset += self.buf.len() as u64;
        self.shared.segments.map(segment, self.offset.max(self.shared.options.segment_bytes))?;
        let shared = self.shared.clone();
        let read = move |pos: Pos| shared.segments.read_event(pos);
        let mut txn = self.shared.index.txn();
        let removes = planned.iter().any(|plan| match plan {
            Planned::Remove { .. } | Planned::Expire { .. } => true,
            Planned::Append { events, .. } => events.iter().any(|e| matches!(e.ttl, Ttl::Last { .. })),
            _ => false,
        });
        if removes {
            txn.track_writes();
        }
        let mut applier = Applier::new(&mut self.heads, &read);
        for plan in planned.iter_mut() {
            match plan {
                Planned::Append { events, stored, key, .. } => {
                    for (record, offsets) in stored {
                        let positioned: Vec<(&Event, Pos)> = events
                            .iter()
                            .filter(|e| e.ttl != Ttl::Ephemeral)
                            .zip(offsets)
                            .map(|(event, (offset, len))| {
                                let at = base + *record as u64 + u64::from(*offset);
                                (event, Pos { segment, offset: at as u32, len: *len })
                            })
                            .collect();
                        let idem = key.as_deref().map(|k| (k, positioned.first().map_or(0, |(e, _)| e.timestamp_ms())));
                        applier.insert_events(&mut txn, &positioned, idem)?;
                    }
                }
                Planned::Remove { ids, .. } => {
                    for id in ids {
                        applier.remove(&mut txn, *id)?;
                    }
                }
                Planned::Ack { name, id, .. } => applier.ack(&mut txn, name, *id),
                Planned::ConsumerDelete { name, .. } => applier.consumer_delete(&mut txn, name),
                Planned::Expire { now_ms, removed, .. } => {
                    *removed = applier.expire(&mut txn, *now_ms, crate::limits::EXPIRE_EVENTS_PER_STEP)?;
                }
                Planned::Done(_) | Planned::Sync { .. } => {}
            }
        }
        let garbage = std::mem::take(&mut applier.garbage);
        self.heads.flush(&mut txn);
        if !self.buf.is_empty() {
            txn.insert(
                Ks::Meta,
                META_APPLIED.to_vec(),
                encode_checkpoint(Checkpoint { segment, offset: self.offset }).to_vec(),
            );
            txn.insert(Ks::Meta, META_LAST_ID.to_vec(), self.ids.last().to_bytes().to_vec());
        }
        txn.commit()?;
        for hash in garbage {
            if let Err(error) = self.shared.cas.delete(&hash) {
                tracing::warn!("failed to delete unreferenced content {}: {error}", hash.sri());
            }
        }
        Ok(())
    }

    fn roll(&mut self) -> Result<()> {
        if self.unsynced {
            self.sync()?;
        }
        let next = self.segment + 1;
        let file = create_segment(self.shared.segments.dir(), next)?;
        self.file = file;
        self.segment = next;
        self.offset = SEGMENT_HEADER_BYTES;
        self.shared.segments.map(next, self.shared.options.segment_bytes)?;
        Ok(())
    }
}

enum PlanOutcome {
    Repeat(Vec<Event>),
    New(Vec<Event>, Vec<(usize, Vec<(u32, u32)>)>),
}

fn request_bytes(request: &Request) -> usize {
    match request {
        Request::Append { events, .. } | Request::Import { events, .. } => {
            events.iter().map(|p| 128 + p.event.inline_payload().map_or(0, <[u8]>::len)).sum()
        }
        _ => 64,
    }
}

fn reply_error(plan: Planned, error: &StoreError, message: &str) {
    let make = || match error {
        StoreError::Poisoned { reason } => StoreError::Poisoned { reason: reason.clone() },
        _ => {
            StoreError::Io { context: message.to_owned(), source: std::io::Error::other("the write was not committed") }
        }
    };
    match plan {
        Planned::Done(reply) => reply.send(),
        Planned::Append { reply, .. } => drop(reply.send(Err(make()))),
        Planned::Remove { reply, .. } => drop(reply.send(Err(make()))),
        Planned::Ack { reply, .. } | Planned::Sync { reply } => drop(reply.send(Err(make()))),
        Planned::ConsumerDelete { reply, .. } => drop(reply.send(Err(make()))),
        Planned::Expire { reply, .. } => drop(reply.send(Err(make()))),
    }
}

fn finish(plan: Planned) {
    match plan {
        Planned::Done(reply) => reply.send(),
        Planned::Append { events, reply, .. } => drop(reply.send(Ok(events))),
        Planned::Remove { ids, reply, .. } => drop(reply.send(Ok(ids))),
        Planned::Ack { reply, .. } | Planned::Sync { reply } => drop(reply.send(Ok(()))),
        Planned::ConsumerDelete { reply, .. } => drop(reply.send(Ok(true))),
        Planned::Expire { removed, reply, .. } => drop(reply.send(Ok(removed))),
    }
}
