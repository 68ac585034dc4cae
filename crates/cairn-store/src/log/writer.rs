//! The single writer: drains every request waiting at that moment into one
//! group, encodes the group's records into one buffer, writes it with one
//! write and one fdatasync (group commit), publishes it to live subscribers,
//! tells the indexer how far the log is committed, and replies. The index is
//! updated by the indexer thread (`index::indexer`), off this path.
//!
//! It must never acknowledge a write that is not durable under the sync mode,
//! and after a failed fdatasync it acknowledges nothing again (poisoned).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Result, StoreError};
use crate::event::{Event, Expect, Hash, Ttl};
use crate::faults::LogFile;
use crate::id::{EventId, IdGenerator};
use crate::index::Checkpoint;
use crate::limits::{GROUP_BYTES_MAX, RECORD_BYTES_MAX};
use crate::log::codec;
use crate::log::segment::{SEGMENT_HEADER_BYTES, create_segment};
use crate::store::{Shared, SyncMode};
use crate::topic::Topic;

/// How long the writer waits for more requests when the previous group was
/// bigger than what is queued now, in µs.
const LINGER_US: u64 = 100;
/// Size at which merged appends are closed as one record (a request alone
/// may be bigger; records stay within `RECORD_BYTES_MAX`).
const MERGED_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// Events ready for the writer: validated, payloads placed. The writer
/// assigns ids and seqs in place and hands the same vector back (a batch
/// of 100,000 events is 20 MB of `Event`s: building a second one cost a
/// copy and its page faults).
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) events: Vec<Event>,
    /// Hashes and bytes of content-store payloads, kept in case a file was
    /// collected between the caller's put and this write (then the writer
    /// puts it again).
    pub(crate) stored: Vec<(Hash, Vec<u8>)>,
    /// The exact length of the batch's record (`Prepared::measure`), within
    /// `RECORD_BYTES_MAX`: checked before anything is written, as a large
    /// record is written while it is encoded.
    pub(crate) bytes: usize,
}

impl Prepared {
    /// Room for `n` events, measured once they are in.
    pub(crate) fn with_capacity(n: usize) -> Prepared {
        Prepared { events: Vec::with_capacity(n), stored: Vec::new(), bytes: 0 }
    }

    /// The exact length of the record of these events with idempotency key
    /// `key` (ephemeral events are not written); `TooLarge` above
    /// `RECORD_BYTES_MAX`.
    pub(crate) fn measure(&mut self, key: Option<&str>) -> Result<()> {
        let frames = self.events.iter().filter(|e| e.ttl != Ttl::Ephemeral).map(codec::event_frame_bytes).sum();
        self.bytes = codec::batch_record_bytes(key, frames);
        if self.bytes > RECORD_BYTES_MAX {
            return Err(StoreError::TooLarge { what: "batch", bytes: self.bytes as u64, max: RECORD_BYTES_MAX as u64 });
        }
        Ok(())
    }
}

/// What callers ask of the writer. Requests that name existing things
/// (remove, consumer delete) were checked by the caller against the index.
pub(crate) enum Request {
    Append {
        events: Prepared,
        expect: Vec<(String, Expect)>,
        key: Option<String>,
        reply: oneshot::Sender<Result<Vec<Event>>>,
    },
    Import {
        events: Prepared,
        reply: oneshot::Sender<Result<Vec<Event>>>,
    },
    Remove {
        ids: Vec<EventId>,
        reply: oneshot::Sender<Result<()>>,
    },
    Ack {
        name: String,
        id: EventId,
        reply: oneshot::Sender<Result<()>>,
    },
    ConsumerDelete {
        name: String,
        reply: oneshot::Sender<Result<()>>,
    },
    State {
        ops: Vec<codec::StateOp>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// A compaction's record (see `compact.rs`).
    Compact {
        segment: u32,
        from: u32,
        to: u32,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Replies once everything before it is durable (even in `none` mode).
    Sync {
        reply: oneshot::Sender<Result<()>>,
    },
}

/// The writer's state; lives on its own thread.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    file: LogFile,
    segment: u32,
    offset: u64,
    /// Last seq and id of every topic written since open, including the
    /// group being planned (`GroupState::undo` puts them back if it fails).
    /// Other topics' heads are read from the index, which covered the whole
    /// log at open.
    tails: HashMap<Topic, (u64, EventId)>,
    /// Idempotency keys whose events the indexer may not have applied yet,
    /// with the log position after them.
    recent_keys: HashMap<String, (Vec<Event>, [u8; 32], Checkpoint)>,
    ids: IdGenerator,
    buf: Vec<u8>,
    /// Bytes of the current group already written (from `offset`): a large
    /// batch record is written while it is encoded, after what the group
    /// held before it (`stream_batch`); `buf` holds what comes after.
    group_written: u64,
    /// A write of the current group that failed while it was planned: the
    /// whole group fails with it.
    group_error: Option<StoreError>,
    /// Bytes written but not yet fdatasynced (`interval` and `none` modes).
    unsynced: bool,
    last_sync: Instant,
}

/// One request after planning, waiting for the write.
enum Planned {
    /// Decided without writing: an error or an idempotent repeat.
    Done(oneshot::Sender<Result<Vec<Event>>>, Result<Vec<Event>>),
    Append {
        events: Vec<Event>,
        reply: oneshot::Sender<Result<Vec<Event>>>,
    },
    /// An idempotent repeat of an append in this group: answered with its
    /// events once the group is durable, with the group's error otherwise.
    Echo {
        events: Vec<Event>,
        reply: oneshot::Sender<Result<Vec<Event>>>,
    },
    Unit {
        reply: oneshot::Sender<Result<()>>,
    },
}

/// Per-group state of planning.
#[derive(Default)]
struct GroupState {
    /// The tails this group set, each with the one it replaced, in order.
    /// The writer's map of tails is updated in place and this undoes a
    /// failed group: two hashes of the topic per append, where a map per
    /// group merged into the writer's after it cost five and an allocation
    /// (`cairn-bench tasks --tasks 64` under callgrind: hashing was half the
    /// writer's instructions).
    undo: Vec<(Topic, Option<(u64, EventId)>)>,
    keys: HashMap<String, (Vec<Event>, [u8; 32])>,
    published: Vec<Arc<Event>>,
    /// Whether events are collected for the live ring (someone subscribes).
    publish: bool,
    /// Events of appends without an idempotency key, not yet encoded: they
    /// share one batch record, so concurrent single appends cost the index
    /// one anchor per block instead of one per event (see `merge`).
    merged: Vec<u8>,
    merged_events: usize,
}

fn fail(request: Request, error: &StoreError) {
    let error = || error.clone();
    match request {
        Request::Append { reply, .. } | Request::Import { reply, .. } => drop(reply.send(Err(error()))),
        Request::Remove { reply, .. }
        | Request::Ack { reply, .. }
        | Request::ConsumerDelete { reply, .. }
        | Request::State { reply, .. }
        | Request::Compact { reply, .. }
        | Request::Sync { reply } => drop(reply.send(Err(error()))),
    }
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>, file: LogFile, end: Checkpoint, ids: IdGenerator) -> Writer {
        let mut writer = Writer {
            shared,
            file,
            segment: end.segment,
            offset: end.offset,
            tails: HashMap::new(),
            recent_keys: HashMap::new(),
            ids,
            buf: Vec::new(),
            group_written: 0,
            group_error: None,
            unsynced: false,
            last_sync: Instant::now(),
        };
        writer.zero_ahead();
        writer
    }

    /// With sync `always`, zeroes are written ahead of the log's end in the
    /// active segment (`log/ahead.rs`): its fdatasyncs then write data alone.
    fn zero_ahead(&mut self) {
        if self.shared.options.sync == SyncMode::Always {
            self.file.zero_ahead(self.offset, self.shared.options.segment_bytes);
        }
    }

    /// Runs until every sender is gone, then makes everything durable.
    pub(crate) fn run(mut self, requests: Receiver<Request>) {
        let mut last_group_len = 1usize;
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
            let linger_until = Instant::now() + Duration::from_micros(LINGER_US);
            while group_bytes < GROUP_BYTES_MAX {
                let next = match requests.try_recv() {
                    Ok(request) => Ok(request),
                    // Many appenders at once: while the previous group's
                    // callers are still sending their next requests, a short
                    // wait makes one fdatasync serve them all.
                    Err(_)
                        if self.shared.options.sync == SyncMode::Always
                            && group.len() < last_group_len
                            && Instant::now() < linger_until =>
                    {
                        requests.recv_timeout(linger_until.saturating_duration_since(Instant::now()))
                    }
                    Err(_) => break,
                };
                match next {
                    Ok(request) => {
                        group_bytes += request_bytes(&request);
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
            last_group_len = group.len();
            // Room in the queue again: wake async submitters waiting for it.
            self.shared.queue_space.notify_waiters();
            self.commit_group(group, group_bytes);
        }
        self.sync_if_unsynced();
        // The zeroes ahead are cut, so a closed store's log ends with its
        // last record (a crashed one cannot write: recovery cuts them).
        if !self.file.crashed()
            && let Err(error) = self.file.seal(self.offset)
        {
            tracing::warn!("cutting the zeroes ahead of the log failed: {error}");
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
        let started = Instant::now();
        let result = self.file.sync_data();
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let stats = &self.shared.stats;
        stats.fsyncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats.fsync_nanos.fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
        stats.fsync_nanos_max.fetch_max(nanos, std::sync::atomic::Ordering::Relaxed);
        if let Err(source) = result {
            let reason = format!("fdatasync of log segment {} failed: {source}", self.segment);
            self.shared.poison(&reason);
            return Err(StoreError::Poisoned { reason });
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn commit_group(&mut self, group: Vec<Request>, group_bytes: usize) {
        if let Some(reason) = self.shared.poisoned() {
            let error = StoreError::Poisoned { reason };
            group.into_iter().for_each(|request| fail(request, &error));
            return;
        }
        let ready = self
            .shared
            .progress
            .wait_for_index_lag()
            .and_then(|()| if self.offset >= self.shared.options.segment_bytes { self.roll() } else { Ok(()) });
        if let Err(error) = ready {
            group.into_iter().for_each(|request| fail(request, &error));
            return;
        }
        let indexed = self.shared.progress.indexed();
        self.recent_keys.retain(|_, (_, _, end)| *end > indexed);
        self.buf.clear();
        self.group_written = 0;
        self.group_error = None;
        // One allocation for the whole group's records, not a doubling per
        // growth (a large batch otherwise copies its bytes several times).
        self.buf.reserve(group_bytes);
        let mut state = GroupState {
            publish: self.shared.live.has_subscribers(),
            undo: Vec::with_capacity(group.len()),
            ..GroupState::default()
        };
        let mut planned = Vec::with_capacity(group.len());
        let mut force_sync = false;
        for request in group {
            force_sync |= matches!(request, Request::Sync { .. } | Request::Compact { .. });
            planned.push(self.plan(request, &mut state));
        }
        self.encode_merged(&mut state);
        if let Err(error) = self.write_and_sync(force_sync) {
            self.undo_tails(state.undo);
            for plan in planned {
                match plan {
                    Planned::Done(reply, result) => drop(reply.send(result)),
                    Planned::Append { reply, .. } | Planned::Echo { reply, .. } => drop(reply.send(Err(error.clone()))),
                    Planned::Unit { reply } => drop(reply.send(Err(error.clone()))),
                }
            }
            return;
        }
        let bytes = self.group_written + self.buf.len() as u64;
        self.offset += bytes;
        if let Err(error) = self.shared.segments.map(self.segment, self.offset.max(self.shared.options.segment_bytes)) {
            // The group is durable, but readers could not reach it.
            self.shared.poison(&format!("mapping the log failed: {error}"));
        }
        let end = Checkpoint { segment: self.segment, offset: self.offset };
        for (key, (events, fingerprint)) in state.keys {
            self.recent_keys.insert(key, (events, fingerprint, end));
        }
        if bytes > 0 {
            self.shared.progress.committed(end, bytes);
        }
        self.shared.live.publish(state.published, self.ids.last(), state.publish);
        for plan in planned {
            match plan {
                Planned::Done(reply, result) => drop(reply.send(result)),
                Planned::Append { events, reply } => {
                    self.shared.stats.events.fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    drop(reply.send(Ok(events)));
                }
                Planned::Echo { events, reply } => drop(reply.send(Ok(events))),
                Planned::Unit { reply } => drop(reply.send(Ok(()))),
            }
        }
        // After the replies (starting a range costs a thread), and after the
        // committed end moved: `verify` reads a segment past it only as far
        // as the file goes, which must not be zeroes yet.
        self.file.top_up(self.offset);
    }

    /// Validates one request against the state including this group's earlier
    /// requests, assigns ids and seqs, and encodes its record into the buffer.
    fn plan(&mut self, request: Request, state: &mut GroupState) -> Planned {
        // Records keep the order of requests: merged appends go first.
        if !matches!(&request, Request::Append { key: None, .. } | Request::Sync { .. }) {
            self.encode_merged(state);
        }
        match request {
            Request::Append { events, expect, key, reply } => {
                match self.plan_append(events, &expect, key.as_deref(), state, false) {
                    Ok(PlanOutcome::Repeat(events)) => Planned::Done(reply, Ok(events)),
                    Ok(PlanOutcome::RepeatInGroup(events)) => Planned::Echo { events, reply },
                    Ok(PlanOutcome::New(events)) => Planned::Append { events, reply },
                    Err(error) => Planned::Done(reply, Err(error)),
                }
            }
            Request::Import { events, reply } => match self.plan_append(events, &[], None, state, true) {
                Ok(PlanOutcome::New(events) | PlanOutcome::Repeat(events) | PlanOutcome::RepeatInGroup(events)) => {
                    Planned::Append { events, reply }
                }
                Err(error) => Planned::Done(reply, Err(error)),
            },
            Request::Remove { ids, reply } => {
                codec::encode_remove(&mut self.buf, &ids);
                Planned::Unit { reply }
            }
            Request::Ack { name, id, reply } => {
                codec::encode_ack(&mut self.buf, &name, id);
                Planned::Unit { reply }
            }
            Request::ConsumerDelete { name, reply } => {
                codec::encode_consumer_delete(&mut self.buf, &name);
                Planned::Unit { reply }
            }
            Request::State { ops, reply } => {
                codec::encode_state(&mut self.buf, &ops);
                Planned::Unit { reply }
            }
            Request::Compact { segment, from, to, reply } => {
                codec::encode_compact(&mut self.buf, segment, from, to);
                Planned::Unit { reply }
            }
            Request::Sync { reply } => Planned::Unit { reply },
        }
    }

    fn plan_append(
        &mut self,
        prepared: Prepared,
        expect: &[(String, Expect)],
        key: Option<&str>,
        state: &mut GroupState,
        import: bool,
    ) -> Result<PlanOutcome> {
        let Prepared { mut events, stored: stored_payloads, bytes } = prepared;
        let fingerprint = key.map(|_| crate::event::fingerprint(events.iter()));
        if let (Some(key), Some(fingerprint)) = (key, fingerprint) {
            let conflict = || StoreError::IdempotencyConflict { key: key.to_owned() };
            if let Some((events, first)) = state.keys.get(key) {
                return if *first == fingerprint {
                    Ok(PlanOutcome::RepeatInGroup(events.clone()))
                } else {
                    Err(conflict())
                };
            }
            if let Some((events, first, _)) = self.recent_keys.get(key) {
                return if *first == fingerprint { Ok(PlanOutcome::Repeat(events.clone())) } else { Err(conflict()) };
            }
            if let Some((events, first)) = self.shared.idempotent_repeat(key)? {
                return match first {
                    Some(first) if first != fingerprint => Err(conflict()),
                    _ => Ok(PlanOutcome::Repeat(events)),
                };
            }
        }
        for (topic, expectation) in expect {
            let last = self.tail(topic)?;
            if !expectation.check(last) {
                return Err(StoreError::ExpectationFailed {
                    topic: topic.clone(),
                    expected: expectation.to_string(),
                    actual_seq: last.map(|(seq, _)| seq),
                    actual_id: last.map(|(_, id)| id),
                });
            }
        }
        // Assign seqs on a scratch copy of the tails so a refused import
        // leaves the group's state untouched.
        let mut scratch: HashMap<Topic, (u64, EventId)> = HashMap::new();
        let mut ids_floor = self.ids.last();
        // One event (most appends): its topic's tail is looked up once and
        // goes straight into the group's tails below, with no scratch map
        // (each map operation is a SipHash of the topic).
        let single = events.len() == 1 && !import;
        let mut single_tail = None;
        if let [event] = events.as_mut_slice()
            && single
        {
            single_tail = self.tail(event.topic.as_str())?;
            event.seq = single_tail.map_or(0, |(seq, _)| seq + 1);
        } else {
            // Events of one topic usually come in runs: the tail of the current
            // run's topic is kept here and goes into `scratch` when the run
            // ends, so a run costs one map lookup, not two per event.
            let mut run: Option<(Topic, Option<(u64, EventId)>)> = None;
            for event in &mut events {
                let last = match &run {
                    Some((topic, tail)) if *topic == event.topic => *tail,
                    _ => {
                        end_run(&mut scratch, run.take());
                        let tail = match scratch.get(event.topic.as_str()) {
                            Some(last) => Some(*last),
                            None => self.tail(event.topic.as_str())?,
                        };
                        run = Some((event.topic.clone(), tail));
                        tail
                    }
                };
                if import {
                    check_import(event, last, ids_floor)?;
                    ids_floor = event.id;
                } else {
                    event.seq = last.map_or(0, |(seq, _)| seq + 1);
                }
                if event.ttl != Ttl::Ephemeral
                    && let Some((_, tail)) = &mut run
                {
                    *tail = Some((event.seq, event.id));
                }
            }
            end_run(&mut scratch, run);
        }
        for (hash, bytes) in stored_payloads {
            // Pinned first (collection checks pins, then deletes), then put
            // again if collection took the file after the caller put it.
            // (Ephemeral events never store: their payloads stay inline.)
            self.shared.cas.pin(&hash);
            if !self.shared.cas.has_file(&hash) {
                self.shared.cas.put(&hash, &bytes)?;
            }
        }
        // Commit point of planning: assign ids in order, update the tails.
        let now_ms = crate::store::now_ms();
        for event in &mut events {
            if import {
                self.ids.observe(event.id);
            } else {
                event.id = self.ids.next_at(now_ms);
            }
        }
        // The tails take the ids just assigned: the last event of each run
        // (the last run of a topic comes last, so it is the one that stays).
        if single {
            // The tail looked up stays known for the group (an ephemeral
            // event leaves it where it was), as the general path keeps it.
            if let [event] = events.as_slice() {
                let tail = if event.ttl == Ttl::Ephemeral { single_tail } else { Some((event.seq, event.id)) };
                if let Some(tail) = tail {
                    self.set_tail(state, &event.topic, tail);
                }
            }
        } else {
            let mut stored = events.iter().filter(|e| e.ttl != Ttl::Ephemeral).peekable();
            while let Some(event) = stored.next() {
                if stored.peek().is_none_or(|next| next.topic != event.topic)
                    && let Some(tail) = scratch.get_mut(event.topic.as_str())
                {
                    *tail = (event.seq, event.id);
                }
            }
            for (topic, tail) in scratch {
                self.set_tail(state, &topic, tail);
            }
        }
        let stored_events: Vec<&Event> = events.iter().filter(|e| e.ttl != Ttl::Ephemeral).collect();
        // A request that fills a merged record alone is its own record,
        // encoded straight into the group's buffer: not into the merge
        // buffer and then copied (for 100,000 events, 19 MB written twice
        // and the merge buffer grown by doubling).
        let alone = bytes >= MERGED_RECORD_BYTES;
        if key.is_none() && !import && !alone {
            if state.merged.len() + bytes > MERGED_RECORD_BYTES {
                self.encode_merged(state);
            }
            for event in stored_events {
                codec::encode_event_frame(&mut state.merged, event);
                state.merged_events += 1;
            }
            if state.merged.len() >= MERGED_RECORD_BYTES {
                self.encode_merged(state);
            }
        } else if stored_events.len() >= codec::STREAM_BATCH_EVENTS {
            // Records keep the order of requests: merged appends go first.
            self.encode_merged(state);
            self.stream_batch(key, &stored_events, bytes);
        } else if !stored_events.is_empty() {
            // Records keep the order of requests: merged appends go first.
            self.encode_merged(state);
            let record = self.buf.len();
            codec::encode_batch(&mut self.buf, key, &stored_events);
            // The store refuses batches whose estimate exceeds the limit.
            assert!(self.buf.len() - record <= RECORD_BYTES_MAX, "a record exceeds RECORD_BYTES_MAX");
        }
        if let (Some(key), Some(fingerprint)) = (key, fingerprint) {
            state.keys.insert(key.to_owned(), (events.clone(), fingerprint));
        }
        if state.publish {
            state.published.extend(events.iter().cloned().map(Arc::new));
        }
        Ok(PlanOutcome::New(events))
    }

    /// Encodes the merged appends of this group as one batch record. Merging
    /// independent appends into one record is safe: the group is written and
    /// synced as a whole before any of them is acknowledged, and a record is
    /// all or nothing on recovery, as the group is.
    fn encode_merged(&mut self, state: &mut GroupState) {
        if state.merged_events == 0 {
            return;
        }
        let record = self.buf.len();
        codec::encode_batch_of_frames(&mut self.buf, state.merged_events, &state.merged);
        assert!(self.buf.len() - record <= RECORD_BYTES_MAX, "a merged record exceeds RECORD_BYTES_MAX");
        state.merged.clear();
        state.merged_events = 0;
    }

    fn tail(&mut self, topic: &str) -> Result<Option<(u64, EventId)>> {
        if let Some(tail) = self.tails.get(topic) {
            return Ok(Some(*tail));
        }
        Ok(self.shared.index.head(topic)?.map(|head| (head.last_seq, head.last_id)))
    }

    /// Sets `topic`'s tail for the group being planned.
    fn set_tail(&mut self, state: &mut GroupState, topic: &Topic, tail: (u64, EventId)) {
        let old = match self.tails.get_mut(topic.as_str()) {
            Some(slot) => Some(std::mem::replace(slot, tail)),
            None => {
                self.tails.insert(topic.clone(), tail);
                None
            }
        };
        state.undo.push((topic.clone(), old));
    }

    /// Puts back the tails a failed group set: its events were not written.
    fn undo_tails(&mut self, undo: Vec<(Topic, Option<(u64, EventId)>)>) {
        for (topic, old) in undo.into_iter().rev() {
            match old {
                Some(tail) => self.tails.insert(topic, tail),
                None => self.tails.remove(topic.as_str()),
            };
        }
    }

    /// Writes a large batch record while it is encoded (after what the group
    /// holds so far), its header last, and asks the kernel to start writing
    /// each piece back: the encoding, the copy into the page cache and the
    /// disk overlap, where one write of the whole group would have waited
    /// for the encoding and the fdatasync for the write. Until its header
    /// is written the record reads as a torn tail; nothing of the group is
    /// acknowledged before its fdatasync, as always. A failed write fails
    /// the group (`group_error`).
    fn stream_batch(&mut self, key: Option<&str>, events: &[&Event], expected: usize) {
        if self.group_error.is_some() {
            return;
        }
        let writeback = self.shared.options.sync != SyncMode::None;
        let mut at = self.offset + self.group_written;
        let result = (|| {
            if !self.buf.is_empty() {
                self.file.write_all_at(&self.buf, at)?;
                at += self.buf.len() as u64;
                self.buf.clear();
            }
            let record = at;
            let file = &mut self.file;
            let header = codec::encode_batch_streamed(key, events, |bytes, offset| {
                file.write_all_at(bytes, record + offset)?;
                if writeback {
                    file.start_writeback(record + offset, bytes.len() as u64);
                }
                at = at.max(record + offset + bytes.len() as u64);
                Ok(())
            })?;
            // Measured before (`Prepared::measure`, within RECORD_BYTES_MAX):
            // anything else is a bug, and the group fails rather than keep it.
            let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
            if codec::FRAME_HEADER_BYTES + len != expected {
                return Err(std::io::Error::other(format!(
                    "a batch record came out {} bytes long, not the {expected} measured",
                    codec::FRAME_HEADER_BYTES + len
                )));
            }
            self.file.write_all_at(&header, record)?;
            Ok::<_, std::io::Error>(())
        })();
        self.unsynced = true;
        self.group_written = at - self.offset;
        if let Err(source) = result {
            self.group_error = Some(StoreError::Io {
                context: format!("write log segment {}", self.segment),
                source: Arc::new(source),
            });
        }
    }

    fn write_and_sync(&mut self, force_sync: bool) -> Result<()> {
        if let Some(error) = self.group_error.take() {
            self.cut_failed_group();
            return Err(error);
        }
        if !self.buf.is_empty() {
            if let Err(source) = self.file.write_all_at(&self.buf, self.offset + self.group_written) {
                self.cut_failed_group();
                return Err(StoreError::Io {
                    context: format!("write log segment {}", self.segment),
                    source: Arc::new(source),
                });
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

    /// Cuts what a failed group wrote, so the log ends at the last good
    /// record; if even that fails, the bytes past it could be taken for
    /// records later (a retry of the same length would end on them), so the
    /// store is poisoned.
    fn cut_failed_group(&mut self) {
        if let Err(error) = self.file.cut(self.offset)
            && !self.file.crashed()
        {
            self.shared.poison(&format!("cutting a failed write from log segment {} failed: {error}", self.segment));
        }
    }

    fn roll(&mut self) -> Result<()> {
        if self.unsynced {
            self.sync()?;
        }
        let next = self.segment + 1;
        if self.file.crashed() {
            return Err(StoreError::Io {
                context: "roll the log".to_owned(),
                source: Arc::new(std::io::Error::other("fault injection: the process has crashed")),
            });
        }
        // Sealed before the next segment exists: recovery takes zeroes after
        // the last record for space written ahead only in the newest one. A
        // failed cut or fdatasync poisons the store, as a failed fdatasync
        // of a group does (a retry would find the length cut and not sync).
        if let Err(source) = self.file.seal(self.offset) {
            let reason = format!("sealing log segment {} failed: {source}", self.segment);
            self.shared.poison(&reason);
            return Err(StoreError::Poisoned { reason });
        }
        let file = create_segment(self.shared.segments.dir(), next)?;
        self.file = LogFile::new(file, &self.shared.segments.path(next), self.shared.options.faults.clone())
            .map_err(StoreError::io("open the new log segment"))?;
        self.segment = next;
        self.offset = SEGMENT_HEADER_BYTES;
        self.zero_ahead();
        self.shared.segments.map(next, self.shared.options.segment_bytes)?;
        Ok(())
    }
}

/// Puts the tail of a run of one topic's events (see `plan_append`) into
/// the planning's scratch tails (one entry per topic, not per event).
fn end_run(scratch: &mut HashMap<Topic, (u64, EventId)>, run: Option<(Topic, Option<(u64, EventId)>)>) {
    let Some((topic, Some(tail))) = run else { return };
    match scratch.get_mut(topic.as_str()) {
        Some(last) => *last = tail,
        None => {
            scratch.insert(topic, tail);
        }
    }
}

fn check_import(event: &Event, last: Option<(u64, EventId)>, ids_floor: EventId) -> Result<()> {
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
            format!("imported seq {} of topic {} is not after its last seq {last_seq}", event.seq, event.topic),
        ));
    }
    Ok(())
}

enum PlanOutcome {
    Repeat(Vec<Event>),
    /// A repeat of an append earlier in the same group: as durable as the
    /// group, so it fails if the group does.
    RepeatInGroup(Vec<Event>),
    New(Vec<Event>),
}

/// At least the bytes a request's record takes: a group stops gathering at
/// `GROUP_BYTES_MAX`, so a group is at most that plus one request, which is
/// what recovery allows after a damaged record at the log's tail.
fn request_bytes(request: &Request) -> usize {
    match request {
        Request::Append { events, .. } | Request::Import { events, .. } => events.bytes,
        Request::State { ops, .. } => {
            64 + ops
                .iter()
                .map(|op| match op {
                    codec::StateOp::Put(key, value) => 16 + key.len() + value.len(),
                    codec::StateOp::Delete(key) => 16 + key.len(),
                })
                .sum::<usize>()
        }
        Request::Remove { ids, .. } => 64 + 16 * ids.len(),
        Request::Ack { name, .. } | Request::ConsumerDelete { name, .. } => 64 + name.len(),
        Request::Compact { .. } | Request::Sync { .. } => 64,
    }
}
