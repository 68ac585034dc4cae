//! Applying log records to the index. The same code runs in the writer (for
//! new records) and in recovery (replaying the log's tail), so the index is a
//! pure function of the log plus the retention sweeps.

use std::collections::HashMap;

use crate::error::Result;
use crate::event::{Event, Hash, Payload, Ttl};
use crate::id::EventId;
use crate::index::sparse::{ANCHOR_EVENTS, Anchor, find_id};
use crate::index::txn::{Ks, Txn};
use crate::index::{Head, topic_key};
use crate::log::codec::{FRAME_HEADER_BYTES, Pos};
use crate::log::segment::Segments;
use crate::read::Scan;

/// The indexer's cache of topic heads, loaded lazily from the index.
#[derive(Default, Debug)]
pub(crate) struct Heads {
    /// Each head, and whether it changed since the last `flush`.
    cache: HashMap<String, (Head, bool)>,
    /// Topics whose head changed since the last `flush`, each once (a
    /// batch may touch as many topics as it has events: no search here).
    dirty: Vec<String>,
}

impl Heads {
    pub(crate) fn get(&mut self, txn: &Txn<'_>, topic: &str) -> Result<Option<Head>> {
        if let Some((head, _)) = self.cache.get(topic) {
            return Ok(Some(*head));
        }
        let head = txn.get(Ks::Heads, topic.as_bytes())?.and_then(|bytes| Head::from_bytes(&bytes));
        if let Some(head) = head {
            self.cache.insert(topic.to_owned(), (head, false));
        }
        Ok(head)
    }

    /// Changes a head in the cache; `flush` writes it.
    fn put(&mut self, topic: &str, head: Head) {
        match self.cache.get_mut(topic) {
            Some((cached, dirty)) => {
                if *cached == head {
                    return;
                }
                *cached = head;
                if std::mem::replace(dirty, true) {
                    return;
                }
            }
            None => {
                self.cache.insert(topic.to_owned(), (head, true));
            }
        }
        self.dirty.push(topic.to_owned());
    }

    /// Writes every changed head into `txn` (once per topic per group).
    pub(crate) fn flush(&mut self, txn: &mut Txn<'_>) {
        for topic in self.dirty.drain(..) {
            let (head, dirty) = self.cache.get_mut(&topic).expect("a changed head is cached");
            *dirty = false;
            txn.insert(Ks::Heads, topic.into_bytes(), head.to_bytes().to_vec());
        }
    }
}

/// Applies records within one transaction and collects side effects that
/// must wait for its commit. Records are applied after they are written to
/// the log, so every event it reads back is there.
pub(crate) struct Applier<'h> {
    pub(crate) heads: &'h mut Heads,
    segments: &'h Segments,
    /// Whether this transaction's events must be findable before it commits
    /// (it removes or trims).
    track: bool,
    /// Events indexed by this transaction (when tracking), by id and topic.
    pending_ids: HashMap<EventId, Pos>,
    pending_topics: HashMap<String, Vec<(u64, EventId)>>,
    /// Content-store files no event refers to any more; deleted after commit.
    pub(crate) garbage: Vec<Hash>,
    /// Whether the content references are current (see `refs.rs`): then
    /// new events' references are added here (to the pending run), and files whose last
    /// reference went are garbage; otherwise they wait in `unsure`.
    refs_live: bool,
    /// Content-store files whose last reference may have gone, found while
    /// the references lag: checked again once they caught up.
    pub(crate) unsure: Vec<Hash>,
    /// Files whose last reference may have gone in this transaction (the
    /// references current): `finish` checks each once.
    maybe_garbage: Vec<Hash>,
    /// Bytes of frames removed here, by segment (for compaction's ratio).
    dead: HashMap<u32, u64>,
}

impl<'h> Applier<'h> {
    pub(crate) fn new(heads: &'h mut Heads, segments: &'h Segments, track: bool, refs_live: bool) -> Applier<'h> {
        Applier {
            heads,
            segments,
            track,
            pending_ids: HashMap::new(),
            pending_topics: HashMap::new(),
            garbage: Vec::new(),
            refs_live,
            unsure: Vec::new(),
            maybe_garbage: Vec::new(),
            dead: HashMap::new(),
        }
    }

    /// Decides which files the transaction's removals left without a
    /// reference (into `garbage`: take it after this), and writes what they
    /// add to each segment's dead bytes and the changed heads. Called once,
    /// before the commit.
    pub(crate) fn finish(&mut self, txn: &mut Txn<'_>) -> Result<()> {
        // Once per file, after every removal of the transaction: a trim of
        // many events sharing content looks for a live reference once.
        let mut maybe_garbage = std::mem::take(&mut self.maybe_garbage);
        maybe_garbage.sort_unstable();
        maybe_garbage.dedup();
        for hash in maybe_garbage {
            if !crate::index::refs::live_ref(txn, &hash)? {
                self.garbage.push(hash);
            }
        }
        for (segment, bytes) in self.dead.drain() {
            let key = crate::compact::dead_key(segment);
            let before = crate::compact::decode_u64(txn.get(Ks::Meta, &key)?.as_deref());
            txn.insert(Ks::Meta, key, before.saturating_add(bytes).to_be_bytes().to_vec());
        }
        self.heads.flush(txn);
        Ok(())
    }

    /// Raises topics' heads to seqs and ids compaction dropped (a floor
    /// record, read only when the index is rebuilt from the whole log).
    pub(crate) fn floor(&mut self, txn: &Txn<'_>, floors: Vec<(String, u64, EventId)>) -> Result<()> {
        for (topic, seq, id) in floors {
            let head = match self.heads.get(txn, &topic)? {
                Some(head) if head.last_seq >= seq => continue,
                Some(head) => Head { last_seq: seq, last_id: id, ..head },
                None => Head { last_seq: seq, last_id: id, count: 0, trimmed_below: 0 },
            };
            self.heads.put(&topic, head);
        }
        Ok(())
    }

    /// Indexes the stored events of one batch record (already positioned in
    /// the log; the record's events end at offset `record_end`).
    pub(crate) fn insert_events(
        &mut self,
        txn: &mut Txn<'_>,
        events: &[(&Event, Pos)],
        record_end: u32,
        idempotency: Option<(&str, u64)>,
    ) -> Result<()> {
        let mut by_topic: HashMap<&str, Vec<usize>> = HashMap::new();
        // A topic's last `last:` retention in the record wins.
        let mut trims: HashMap<&str, u64> = HashMap::new();
        for (idx, (event, pos)) in events.iter().enumerate() {
            let topic = event.topic.as_str();
            if idx % ANCHOR_EVENTS == 0 {
                let n = (events.len() - idx).min(ANCHOR_EVENTS) as u32;
                let anchor =
                    Anchor { segment: pos.segment, generation: pos.generation, offset: pos.offset, end: record_end, n };
                txn.insert(Ks::Ids, event.id.to_bytes().to_vec(), anchor.to_bytes());
            }
            match by_topic.get_mut(topic) {
                Some(indices) => indices.push(idx),
                None => {
                    by_topic.insert(topic, vec![idx]);
                }
            }
            if let Some(hash) = event.hash
                && self.refs_live
            {
                crate::index::refs::insert(txn.index, hash, event.id, &event.payload);
            }
            if let Ttl::Time { ms } = event.ttl {
                let expires = event.timestamp_ms().saturating_add(ms);
                txn.insert(Ks::Expiry, expiry_key(expires, event.id), Vec::new());
            }
            if let Ttl::Last { n } = event.ttl {
                trims.insert(topic, n);
            }
            if self.track {
                self.pending_ids.insert(event.id, *pos);
                self.pending_topics.entry(topic.to_owned()).or_default().push((event.seq, event.id));
            }
        }
        for (topic, indices) in by_topic {
            for chunk in indices.chunks(ANCHOR_EVENTS) {
                let (first, pos) = events[chunk[0]];
                let anchor = Anchor {
                    segment: pos.segment,
                    generation: pos.generation,
                    offset: pos.offset,
                    end: record_end,
                    n: chunk.len() as u32,
                };
                txn.insert(Ks::Topics, topic_key(topic, first.seq), anchor.to_bytes());
            }
            let (last, _) = events[*indices.last().expect("a topic has events")];
            let head = match self.heads.get(txn, topic)? {
                Some(head) => {
                    Head { last_seq: last.seq, last_id: last.id, count: head.count + indices.len() as u64, ..head }
                }
                None => Head { last_seq: last.seq, last_id: last.id, count: indices.len() as u64, trimmed_below: 0 },
            };
            self.heads.put(topic, head);
        }
        for (topic, keep) in trims {
            self.trim(txn, topic, keep)?;
        }
        if let Some((key, time_ms)) = idempotency {
            let mut value = time_ms.to_be_bytes().to_vec();
            value.extend_from_slice(&crate::event::fingerprint(events.iter().map(|(event, _)| *event)));
            value.push(IDEM_FINGERPRINT_MARK);
            for (event, _) in events {
                value.extend_from_slice(&event.id.to_bytes());
            }
            txn.insert(Ks::Idem, key.as_bytes().to_vec(), value);
        }
        Ok(())
    }

    /// Keeps only the newest `keep` events of `topic`.
    fn trim(&mut self, txn: &mut Txn<'_>, topic: &str, keep: u64) -> Result<()> {
        assert!(self.track, "a transaction that trims must track its writes");
        let Some(head) = self.heads.get(txn, topic)? else { return Ok(()) };
        let cutoff = (head.last_seq + 1).saturating_sub(keep);
        if head.trimmed_below >= cutoff {
            return Ok(());
        }
        // Committed events of the topic in [trimmed_below, cutoff), then this
        // transaction's own.
        let mut doomed = Vec::new();
        let pattern = crate::topic::Pattern::Exact(crate::topic::Topic::new(topic)?);
        let mut scan = Scan::open(txn.index, self.segments, &pattern, None, Some(head.trimmed_below), false)?;
        while let Some(located) = scan.next_located(self.segments)? {
            if located.seq >= cutoff {
                break;
            }
            doomed.push(located.id);
        }
        if let Some(pending) = self.pending_topics.get(topic) {
            // In seq order (indexed as written), so the range is found by
            // halving: a transaction may trim one topic once per record.
            let from = pending.partition_point(|(seq, _)| *seq < head.trimmed_below);
            let to = pending.partition_point(|(seq, _)| *seq < cutoff);
            doomed.extend(pending[from..to].iter().map(|(_, id)| *id));
        }
        for id in doomed {
            self.remove(txn, id)?;
        }
        if let Some(head) = self.heads.get(txn, topic)? {
            self.heads.put(topic, Head { trimmed_below: cutoff.max(head.trimmed_below), ..head });
        }
        Ok(())
    }

    /// Removes the event `id` from the index. Returns whether it was there.
    pub(crate) fn remove(&mut self, txn: &mut Txn<'_>, id: EventId) -> Result<bool> {
        assert!(self.track, "a transaction that removes must track its writes");
        if txn.get(Ks::Removed, &id.to_bytes())?.is_some() {
            return Ok(false);
        }
        let pos = match self.pending_ids.get(&id) {
            Some(pos) => Some(*pos),
            None => find_id(txn.index, self.segments, id)?,
        };
        let Some(pos) = pos else { return Ok(false) };
        let event = self.segments.read_event(pos)?;
        *self.dead.entry(pos.segment).or_default() += (FRAME_HEADER_BYTES as u32 + pos.len) as u64;
        self.remove_decoded(txn, &event)?;
        Ok(true)
    }

    fn remove_decoded(&mut self, txn: &mut Txn<'_>, event: &Event) -> Result<()> {
        let topic = event.topic.as_str();
        txn.insert(Ks::Removed, event.id.to_bytes().to_vec(), Vec::new());
        txn.insert(Ks::RemovedSeq, topic_key(topic, event.seq), Vec::new());
        if let Ttl::Time { ms } = event.ttl {
            txn.remove(Ks::Expiry, expiry_key(event.timestamp_ms().saturating_add(ms), event.id));
        }
        if let Some(hash) = event.hash {
            crate::index::refs::remove(txn.index, &cas_key(hash, event.id));
            // Another event with the same hash prefix keeps the file (a
            // different content sharing 8 hash bytes would only delay collection).
            if event.payload == Payload::Stored {
                if !self.refs_live {
                    self.unsure.push(hash);
                } else {
                    self.maybe_garbage.push(hash);
                }
            }
        }
        if let Some(head) = self.heads.get(txn, topic)? {
            self.heads.put(topic, Head { count: head.count.saturating_sub(1), ..head });
        }
        Ok(())
    }

    /// Removes events whose time retention ran out by `now_ms`, at most
    /// `limit`. Returns how many it removed.
    pub(crate) fn expire(&mut self, txn: &mut Txn<'_>, now_ms: u64, limit: usize) -> Result<usize> {
        let end = expiry_key(now_ms, EventId::from_u128(u128::MAX));
        let mut due = Vec::new();
        let iter = txn.index.range(Ks::Expiry, std::ops::Bound::Unbounded, std::ops::Bound::Included(&end));
        for guard in iter.take(limit) {
            due.push(crate::index::strip(&guard.key()?).to_vec());
        }
        let mut n_removed = 0;
        for key in due {
            let Some(id_bytes) = key.get(8..24) else { continue };
            let id = EventId::from_bytes(id_bytes.try_into().expect("16 bytes"));
            if self.remove(txn, id)? {
                n_removed += 1;
            } else {
                // Its event was removed another way; drop the stale entry.
                txn.remove(Ks::Expiry, key);
            }
        }
        Ok(n_removed)
    }

    pub(crate) fn ack(&mut self, txn: &mut Txn<'_>, name: &str, id: EventId) {
        txn.insert(Ks::Consumers, name.as_bytes().to_vec(), id.to_bytes().to_vec());
    }

    pub(crate) fn consumer_delete(&mut self, txn: &mut Txn<'_>, name: &str) {
        txn.remove(Ks::Consumers, name.as_bytes().to_vec());
    }

    pub(crate) fn state(&mut self, txn: &mut Txn<'_>, ops: Vec<crate::log::codec::StateOp>) {
        for op in ops {
            // The writer refuses longer keys; a log written before it did
            // must still open, so such a change is skipped, not indexed.
            let (crate::log::codec::StateOp::Put(key, _) | crate::log::codec::StateOp::Delete(key)) = &op;
            if key.len() > crate::limits::STATE_KEY_BYTES_MAX {
                tracing::warn!(bytes = key.len(), "skipping a logged state change whose key is too long to index");
                continue;
            }
            match op {
                crate::log::codec::StateOp::Put(key, value) => txn.insert(Ks::State, key, value),
                crate::log::codec::StateOp::Delete(key) => txn.remove(Ks::State, key),
            }
        }
    }
}

/// Bytes of the hash that key a content reference. Eight bytes make
/// collisions between different contents negligible (2^-64 per pair) and keep
/// the per-event key short, which is most of the indexer's work; a lookup
/// checks the full hash on the event it finds.
pub(crate) const CAS_KEY_HASH_BYTES: usize = 8;

/// An idempotency entry is `time(8) fingerprint(32) mark(1) id(16)…`: 9
/// bytes beyond a multiple of 16, where entries written before fingerprints
/// (`time(8) id(16)…`) are 8 beyond, so both read unambiguously.
pub(crate) const IDEM_FINGERPRINT_MARK: u8 = 1;

pub(crate) fn cas_key(hash: Hash, id: EventId) -> Vec<u8> {
    cas_suffix(hash, id).to_vec()
}

/// [`cas_key`] on the stack.
pub(crate) fn cas_suffix(hash: Hash, id: EventId) -> [u8; CAS_KEY_HASH_BYTES + 16] {
    let mut suffix = [0u8; CAS_KEY_HASH_BYTES + 16];
    suffix[..CAS_KEY_HASH_BYTES].copy_from_slice(&hash.0[..CAS_KEY_HASH_BYTES]);
    suffix[CAS_KEY_HASH_BYTES..].copy_from_slice(&id.to_bytes());
    suffix
}

pub(crate) fn expiry_key(expires_ms: u64, id: EventId) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    key.extend_from_slice(&expires_ms.to_be_bytes());
    key.extend_from_slice(&id.to_bytes());
    key
}
