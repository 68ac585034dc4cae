//! The content references: which events hold content with a given hash
//! (`Ks::Cas`, keyed by a prefix of the hash). They serve content lookups by
//! hash and decide when a content file has no event left that refers to it.
//!
//! They live in their own keyspace, with their own checkpoint
//! (`Ks::RefsMeta`), and may lag behind the rest of the index. After a
//! crash (or a rebuild) the open replays only the main keyspace's tail,
//! where a reference per event would cost most of the replay; the indexer
//! then catches the references up in the background ([`catch_up`]),
//! between its own work, reading the log from their checkpoint. Once they
//! reach the index they are kept current with every index batch again
//! (in memory first, see below).
//!
//! While they lag:
//! - a new event's reference is left to the catch-up, which skips events
//!   removed meanwhile (so no reference outlives its event); removals still
//!   delete references at once (deleting a missing one does nothing);
//! - content files whose last reference may be gone are not deleted but
//!   kept in [`Refs::garbage`], and checked again once caught up (after a
//!   crash before that, such a file stays: kept, never lost);
//! - lookups by hash wait for the catch-up (`Progress::wait_refs`);
//! - compaction leaves the segments the catch-up has not read alone, and
//!   flushes the references before it switches a segment, so after a crash
//!   their checkpoint never points into a segment whose offsets changed.
//!
//! New references, and deletions of references, are not written to the
//! keyspace one by one: they gather in [`Pending`] in memory (a vector of
//! new references, sorted once per run, and a sorted map for what lookups
//! and removals have needed in order), which lookups read too (first, see
//! [`visit_ids`]), and go to the
//! keyspace as one sorted run by fjall's ingestion ([`drain`]) every
//! [`DRAIN_REFS`] entries and whenever the indexer enters another segment,
//! with their checkpoint in the same run. A memtable insert of a key in
//! hash order cost about 2.8k instructions (a skiplist search through a
//! memtable of random keys), the most of any index write per event.
//! Deletions wait in the map too, so that the keyspace's tables never hold
//! a change from past the checkpoint they hold: after a power loss cut the
//! log below a removal, a deletion already in the tables would hide the
//! reference of an event that is live again. The checkpoint moves only with
//! a drain, so what a crash takes from memory is caught up from the log
//! like any lag, and compaction leaves alone the segment of the last drain
//! and later ones ([`crate::progress::Progress::refs_marked`]). A run
//! shorter than [`SMALL_RUN_REFS`] goes through the memtable instead (a
//! table per small run would leave many to merge); a clean close drains
//! what is left that way, and the next open finds it unless the close did
//! not flush the memtable (then it is caught up, as after a crash).
//!
//! A reference whose event is marked removed counts as gone ([`live_ref`]):
//! a crash can lose a reference's deletion while the removal mark was
//! flushed (the keyspaces flush apart).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Result;
use crate::event::{Hash, Payload};
use crate::id::EventId;
use crate::index::apply::CAS_KEY_HASH_BYTES;
use crate::index::txn::{Ks, Txn};
use crate::index::{Checkpoint, Index, META_APPLIED, encode_checkpoint};
use crate::limits::INDEX_RECORDS_PER_BATCH;
use crate::log::codec::{self, FRAME_HEADER_BYTES};
use crate::log::compressed::Chunk;
use crate::log::segment::{SEGMENT_HEADER_BYTES, Segments, corrupt};
use crate::store::Shared;

/// Legacy references (kept in the main keyspace by earlier versions)
/// deleted per catch-up step.
const LEGACY_KEYS_PER_STEP: usize = 16 * 1024;

/// Pending references drained to the keyspace at once, in one sorted run
/// (about 25 bytes each in their table; about 50 in the map).
const DRAIN_REFS: usize = 1 << 18;

/// Runs shorter than this go to the keyspace through its memtable.
const SMALL_RUN_REFS: usize = 4096;

/// A reference's key in its keyspace without the keyspace byte (the
/// hash's first [`CAS_KEY_HASH_BYTES`] bytes, then the id), as two
/// integers read big-endian: they order as the bytes do, and compare in
/// two instructions where bytes took a `memcmp` call.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    hash: u64,
    id: u128,
}

const _: () = assert!(CAS_KEY_HASH_BYTES == 8);

impl Key {
    fn new(hash: &Hash, id: EventId) -> Key {
        Key { hash: prefix_of(hash), id: u128::from_be_bytes(id.to_bytes()) }
    }

    /// From a key suffix of the keyspace (`cas_suffix`).
    fn from_suffix(suffix: &[u8]) -> Option<Key> {
        let hash = u64::from_be_bytes(suffix.get(..CAS_KEY_HASH_BYTES)?.try_into().ok()?);
        let id = u128::from_be_bytes(suffix.get(CAS_KEY_HASH_BYTES..)?.try_into().ok()?);
        Some(Key { hash, id })
    }

    fn id(&self) -> EventId {
        EventId::from_bytes(self.id.to_be_bytes())
    }

    /// The keyspace's key: the keyspace byte, then the suffix.
    fn write(&self, key: &mut [u8; 1 + CAS_KEY_HASH_BYTES + 16]) {
        key[0] = Ks::Cas as u8;
        key[1..1 + CAS_KEY_HASH_BYTES].copy_from_slice(&self.hash.to_be_bytes());
        key[1 + CAS_KEY_HASH_BYTES..].copy_from_slice(&self.id.to_be_bytes());
    }
}

fn prefix_of(hash: &Hash) -> u64 {
    u64::from_be_bytes(hash.0[..CAS_KEY_HASH_BYTES].try_into().expect("eight bytes"))
}

/// A pending entry's value for a deletion (a reference's value is 0 or 1).
const GONE: u8 = u8::MAX;

/// A sorted run of pending entries, each key once.
type Run = Vec<(Key, u8)>;

/// Changes not in the keyspace yet: key → whether the content is stored in
/// a file (the keyspace's value), or [`GONE`] for a deletion.
///
/// New references are pushed to `tail` as they come (a push, where an
/// insert into the sorted map cost about 2k instructions: `cairn-bench
/// refs-map`), and sorted once, when the run is drained. Only a lookup or
/// a removal needs them in order before that: it moves the tail into
/// `map` first.
#[derive(Default)]
pub(crate) struct Pending {
    map: BTreeMap<Key, u8>,
    /// References (never deletions) added since the tail last moved into
    /// `map`, in the order they came; newer than `map`'s entries.
    tail: Vec<(Key, u8)>,
    /// Being ingested: lookups still read it until the keyspace has it.
    draining: Option<Arc<Run>>,
}

impl Pending {
    fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
        pending.lock().expect("pending references lock")
    }

    fn len(pending: &Mutex<Pending>) -> usize {
        let pending = Pending::lock(pending);
        pending.map.len() + pending.tail.len()
    }

    pub(crate) fn clear(pending: &Mutex<Pending>) {
        let mut pending = Pending::lock(pending);
        pending.map.clear();
        pending.tail.clear();
    }

    /// Moves the tail into the map (the tail's entries are newer).
    fn settle(&mut self) {
        self.map.extend(self.tail.drain(..));
    }

    /// Deletes `key`'s reference: forgets a pending one (never drained: a
    /// key is in the keyspace only up to the checkpoint, and pending only
    /// past it); otherwise records a deletion for the next run.
    fn delete(&mut self, key: Key) {
        self.settle();
        match self.map.get(&key) {
            Some(&value) if value != GONE => {
                self.map.remove(&key);
            }
            _ => {
                self.map.insert(key, GONE);
            }
        }
    }

    /// Everything pending, sorted, each key once, leaving nothing: the
    /// map's entries and the tail's (newer, so they win).
    fn take_run(&mut self) -> Run {
        let mut tail = std::mem::take(&mut self.tail);
        tail.sort_unstable_by_key(|(key, _)| *key);
        // A key pushed twice (the catch-up may read an event the index
        // already gave) carries the same value both times: that event's.
        tail.dedup_by_key(|(key, _)| *key);
        let map = std::mem::take(&mut self.map);
        if map.is_empty() {
            return tail;
        }
        let mut run = Vec::with_capacity(map.len() + tail.len());
        let mut tail = tail.into_iter().peekable();
        for (key, value) in map {
            while let Some(&(newer, _)) = tail.peek()
                && newer < key
            {
                run.extend(tail.next());
            }
            match tail.peek() {
                Some(&(newer, value)) if newer == key => {
                    run.push((key, value));
                    tail.next();
                }
                _ => run.push((key, value)),
            }
        }
        run.extend(tail);
        run
    }

    /// The pending entries with `hash`'s prefix: the references, and the
    /// deletions. The run being drained is read before the map (an entry
    /// moves from the map to it, never back).
    fn with_prefix(pending: &Mutex<Pending>, hash: &Hash) -> (Vec<Key>, BTreeSet<Key>) {
        let prefix = prefix_of(hash);
        let (lo, hi) = (Key { hash: prefix, id: 0 }, Key { hash: prefix, id: u128::MAX });
        let mut pending = Pending::lock(pending);
        pending.settle();
        let mut entries: BTreeMap<Key, u8> = BTreeMap::new();
        // The map's entries are newer than the draining run's.
        if let Some(run) = pending.draining.as_deref() {
            let from = run.partition_point(|(key, _)| *key < lo);
            entries.extend(run[from..].iter().take_while(|(key, _)| key.hash == prefix).copied());
        }
        entries.extend(pending.map.range(lo..=hi).map(|(key, value)| (*key, *value)));
        let (gone, live): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(_, value)| *value == GONE);
        (live.into_iter().map(|(key, _)| key).collect(), gone.into_iter().map(|(key, _)| key).collect())
    }
}

/// Whether `suffix` (a key of the keyspace, stripped) is in `gone`.
fn hidden(gone: &BTreeSet<Key>, suffix: &[u8]) -> bool {
    !gone.is_empty() && Key::from_suffix(suffix).is_some_and(|key| gone.contains(&key))
}

fn id_of(suffix: &[u8]) -> Option<EventId> {
    let id = suffix.get(CAS_KEY_HASH_BYTES..CAS_KEY_HASH_BYTES + 16)?;
    Some(EventId::from_bytes(id.try_into().ok()?))
}

/// Visits the ids of events that may refer to content with `hash`'s
/// prefix until `visit` says stop (`true`): the pending ones, then the
/// keyspace's that no pending deletion hides, read as they are visited.
/// Pending first: a drain makes its run visible in the keyspace before it
/// leaves the pending map, so an entry is in one or the other for a reader
/// in this order (in both, sometimes: visitors tolerate a repeat).
pub(crate) fn visit_ids(index: &Index, hash: &Hash, mut visit: impl FnMut(EventId) -> Result<bool>) -> Result<()> {
    let (live, gone) = Pending::with_prefix(&index.pending_refs, hash);
    for key in &live {
        if visit(key.id())? {
            return Ok(());
        }
    }
    for guard in index.prefix(Ks::Cas, &hash.0[..CAS_KEY_HASH_BYTES]) {
        let key = guard.key()?;
        let suffix = crate::index::strip(&key);
        if hidden(&gone, suffix) {
            continue;
        }
        if let Some(id) = id_of(suffix)
            && visit(id)?
        {
            return Ok(());
        }
    }
    Ok(())
}

/// The indexer's view of the references.
#[derive(Default)]
pub(crate) struct Refs {
    /// Where their coverage of the log ends while they lag behind the
    /// index; `None` once they are current.
    pub(crate) behind: Option<Checkpoint>,
    /// Their checkpoint as last written (what the keyspace holds, pending
    /// references aside): the last drain's.
    pub(crate) marked: Checkpoint,
    /// Content files whose last reference may have gone while they lagged.
    pub(crate) garbage: Vec<Hash>,
    /// References an earlier version kept in the main keyspace are left to
    /// delete: those after this key (where the last step stopped).
    legacy: Option<Vec<u8>>,
    /// The sealed segment the catch-up is reading, whole (a compressed one
    /// is decompressed once, not per step).
    reading: Option<(u32, Chunk)>,
}

impl Refs {
    /// Whether a catch-up step has work: lagging, files to check again,
    /// or legacy keys left.
    pub(crate) fn lagging(&self) -> bool {
        self.behind.is_some() || !self.garbage.is_empty() || self.legacy.is_some()
    }

    /// For recovery's replay: the references are not written, and files
    /// that may have lost their last reference are collected in `garbage`.
    pub(crate) fn deferred() -> Refs {
        Refs { behind: Some(Checkpoint { segment: 0, offset: 0 }), ..Refs::default() }
    }

    /// After recovery replayed the main keyspace up to `end`: where the
    /// references stand. Their checkpoint is trusted only if it names a
    /// position the log still has; otherwise they are rebuilt from the
    /// start of the log.
    pub(crate) fn open(index: &Index, segments: &Segments, end: Checkpoint, garbage: Vec<Hash>) -> Result<Refs> {
        let legacy = index.has_legacy_refs().then(|| vec![Ks::Cas as u8]);
        let list = segments.list()?;
        let start = Checkpoint { segment: list.first().copied().unwrap_or(0), offset: SEGMENT_HEADER_BYTES };
        let at = match index.refs_checkpoint()? {
            Some(at) if at <= end && list.contains(&at.segment) => at,
            Some(at) => {
                tracing::warn!(?at, "the content references name a place the log lacks; rebuilding them");
                index.clear_refs()?;
                start
            }
            None => start,
        };
        if legacy.is_some() {
            tracing::info!("moving the content references to their own keyspace (once, in the background)");
        }
        Ok(Refs { behind: (at < end).then_some(at), marked: at, garbage, legacy, reading: None })
    }
}

/// A new event's reference, added to the pending run while the
/// references are current (or by their catch-up).
pub(crate) fn insert(index: &Index, hash: Hash, id: EventId, payload: &Payload) {
    Pending::lock(&index.pending_refs).tail.push((Key::new(&hash, id), u8::from(*payload == Payload::Stored)));
}

/// Deletes a reference (its key suffix, see `cas_key`): a pending one from
/// memory; one that may be in the keyspace by a pending deletion, written
/// with the next run (see the module's notes).
pub(crate) fn remove(index: &Index, suffix: &[u8]) {
    if let Some(key) = Key::from_suffix(suffix) {
        Pending::lock(&index.pending_refs).delete(key);
    }
}

/// Writes the pending references to the keyspace with their checkpoint
/// `covered` (every reference up to it is then in the keyspace): a large
/// run as one sorted table by ingestion, a small one through the memtable
/// (a table per small run would leave many to merge). Either way the
/// checkpoint goes in with the run, so the keyspace's tables never hold a
/// reference past the checkpoint they hold (a power loss can take log the
/// references saw; a checkpoint past the log's end then rebuilds them).
/// Runs on the indexer's thread, the only one that changes the pending run.
pub(crate) fn drain(shared: &Shared, refs: &mut Refs, covered: Checkpoint) -> Result<()> {
    // The checkpoint's key sorts before every reference's, as a sorted
    // run needs.
    const _: () = assert!((Ks::RefsMeta as u8) < (Ks::Cas as u8));
    let index = &shared.index;
    let run = {
        // Sorted under the lock, so that lookups meanwhile wait for the
        // run rather than miss it (at most a few milliseconds a run).
        let mut pending = Pending::lock(&index.pending_refs);
        let run = Arc::new(pending.take_run());
        pending.draining = Some(run.clone());
        run
    };
    let mut key = [0u8; CAS_KEY_HASH_BYTES + 17];
    if run.len() >= SMALL_RUN_REFS {
        let mut ingestion = index.keyspace(Ks::Cas).start_ingestion()?;
        ingestion.write(crate::index::key(Ks::RefsMeta, META_APPLIED), &encode_checkpoint(covered)[..])?;
        for (suffix, value) in run.iter() {
            suffix.write(&mut key);
            if *value == GONE {
                ingestion.write_tombstone(&key[..])?;
            } else {
                ingestion.write(&key[..], &[*value][..])?;
            }
        }
        ingestion.finish()?;
        index.refs_ingested.store(true, std::sync::atomic::Ordering::Relaxed);
    } else {
        let mut txn = index.txn();
        for (suffix, value) in run.iter() {
            suffix.write(&mut key);
            if *value == GONE {
                txn.remove(Ks::Cas, key[1..].to_vec());
            } else {
                txn.insert(Ks::Cas, key[1..].to_vec(), vec![*value]);
            }
        }
        mark(&mut txn, covered);
        txn.commit()?;
    }
    Pending::lock(&index.pending_refs).draining = None;
    refs.marked = covered;
    shared.progress.set_refs_marked(covered);
    Ok(())
}

/// After an index batch up to `covered` while the references are current:
/// drains a full run, or any run once the indexer is in another segment
/// than their checkpoint (compaction waits for that).
pub(crate) fn after_batch(shared: &Shared, refs: &mut Refs, covered: Checkpoint) -> Result<()> {
    if refs.behind.is_none()
        && (covered.segment != refs.marked.segment || Pending::len(&shared.index.pending_refs) >= DRAIN_REFS)
    {
        drain(shared, refs, covered)?;
    }
    Ok(())
}

/// At a clean close: drains what is pending (the next open finds the
/// references current if the close flushes the memtable; see the module's
/// notes).
pub(crate) fn at_close(shared: &Shared, refs: &mut Refs) -> Result<()> {
    let indexed = shared.progress.indexed();
    if refs.behind.is_none() && refs.marked != indexed {
        drain(shared, refs, indexed)?;
    }
    Ok(())
}

/// Whether some event not removed (as `txn` sees it) refers to content
/// with `hash`'s prefix. A different content sharing the eight bytes
/// only keeps a file a little longer.
pub(crate) fn live_ref(txn: &Txn<'_>, hash: &Hash) -> Result<bool> {
    let (live, gone) = Pending::with_prefix(&txn.index.pending_refs, hash);
    for key in live {
        if txn.get(Ks::Removed, &key.id.to_be_bytes())?.is_none() {
            return Ok(true);
        }
    }
    txn.any_prefixed(Ks::Cas, &hash.0[..CAS_KEY_HASH_BYTES], |suffix| {
        if hidden(&gone, suffix) {
            return Ok(false);
        }
        let Some(id) = suffix.get(CAS_KEY_HASH_BYTES..CAS_KEY_HASH_BYTES + 16) else { return Ok(false) };
        Ok(txn.get(Ks::Removed, id)?.is_none())
    })
}

/// The references' checkpoint, written with a batch that keeps them current.
pub(crate) fn mark(txn: &mut Txn<'_>, at: Checkpoint) {
    txn.insert(Ks::RefsMeta, META_APPLIED.to_vec(), encode_checkpoint(at).to_vec());
}

/// One step of catching up: indexes up to a batch of records' references
/// from the log, or, having reached the index, makes the references
/// current; then deletes the content files found unreferenced meanwhile,
/// then legacy references, a slice a step.
pub(crate) fn catch_up(shared: &Shared, refs: &mut Refs) -> Result<()> {
    step(shared, refs)?;
    shared.progress.set_refs_behind(refs.behind, refs.lagging());
    Ok(())
}

fn step(shared: &Shared, refs: &mut Refs) -> Result<()> {
    let index = &shared.index;
    let Some(at) = refs.behind else {
        if !refs.garbage.is_empty() {
            collect(shared, refs)?;
        } else if let Some(after) = &refs.legacy {
            refs.legacy = index.delete_legacy_refs(after, LEGACY_KEYS_PER_STEP)?;
        }
        return Ok(());
    };
    let target = shared.progress.indexed();
    if at >= target {
        drain(shared, refs, target)?;
        refs.behind = None;
        refs.reading = None;
        // Before anyone learns they are current.
        return collect(shared, refs);
    }
    let segments = &shared.segments;
    let next = if at.segment < target.segment {
        // A sealed segment (compaction leaves it alone until read).
        if refs.reading.as_ref().is_none_or(|(segment, _)| *segment != at.segment) {
            let generation = crate::compact::generation(index, at.segment)?;
            let file = segments.file(at.segment, generation)?;
            let len = crate::compact::file_len(segments, at.segment, generation)?;
            refs.reading = Some((at.segment, file.whole(len as usize)?));
        }
        let (_, bytes) = refs.reading.as_ref().expect("just read");
        if at.offset >= bytes.len() as u64 {
            // Read to its end: on to the next segment there is.
            refs.reading = None;
            let segment = segments.list()?.into_iter().find(|&s| s > at.segment).unwrap_or(target.segment);
            Checkpoint { segment, offset: SEGMENT_HEADER_BYTES }
        } else {
            index_refs(index, at, bytes)?
        }
    } else {
        let map = segments.bytes(at.segment, 0)?;
        let bytes = map.get(..target.offset as usize).ok_or_else(|| corrupt(at.segment, 0, "past the map"))?;
        index_refs(index, at, bytes)?
    };
    refs.behind = Some(next);
    if Pending::len(&index.pending_refs) >= DRAIN_REFS {
        drain(shared, refs, next)?;
    }
    Ok(())
}

/// Deletes the files in `refs.garbage` no event refers to (once current).
fn collect(shared: &Shared, refs: &mut Refs) -> Result<()> {
    let garbage = std::mem::take(&mut refs.garbage);
    let txn = shared.index.txn();
    for hash in garbage {
        if !live_ref(&txn, &hash)? {
            shared.cas.collect(&hash)?;
        }
    }
    Ok(())
}

/// Adds the references of up to a batch of records of `bytes` (a segment,
/// or its indexed part) from `at` to the pending run; returns where it
/// stopped.
fn index_refs(index: &Index, at: Checkpoint, bytes: &[u8]) -> Result<Checkpoint> {
    let mut offset = at.offset;
    let mut decoder = codec::Decoder::for_index();
    let mut records = 0;
    // Also stops at a full run, so memory stays bounded while batches of
    // many events are read.
    while offset < bytes.len() as u64
        && records < INDEX_RECORDS_PER_BATCH
        && Pending::len(&index.pending_refs) < DRAIN_REFS
    {
        let body = codec::unframe(&bytes[offset as usize..])
            .map_err(|detail| corrupt(at.segment, offset as u32, &detail))?
            .ok_or_else(|| corrupt(at.segment, offset as u32, "indexed record is incomplete"))?;
        let record = codec::decode_record_with(body, &mut decoder)
            .map_err(|detail| corrupt(at.segment, offset as u32, &detail))?;
        if let codec::Record::Batch { events, .. } = record {
            for (event, _, _) in events {
                let Some(hash) = event.hash else { continue };
                if index.get(Ks::Removed, &event.id.to_bytes())?.is_none() {
                    insert(index, hash, event.id, &event.payload);
                }
            }
        }
        offset += (FRAME_HEADER_BYTES + body.len()) as u64;
        records += 1;
    }
    Ok(Checkpoint { segment: at.segment, offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hash: u64, id: u128) -> Key {
        Key { hash, id }
    }

    #[test]
    fn a_drained_run_is_sorted_once_per_key_and_the_tail_is_newer_than_the_map() {
        let pending = Mutex::new(Pending::default());
        {
            let mut p = Pending::lock(&pending);
            p.tail.extend([(key(9, 1), 0), (key(2, 7), 1), (key(2, 3), 0)]);
            // A lookup or a removal settles the tail into the map.
            p.settle();
            assert!(p.tail.is_empty());
            p.map.insert(key(5, 5), GONE);
            p.map.insert(key(7, 1), GONE);
            // Newer than the map: one key twice, one deleted in the map.
            p.tail.extend([(key(8, 2), 1), (key(1, 4), 0), (key(7, 1), 1), (key(8, 2), 1), (key(2, 4), 0)]);
        }
        assert_eq!(Pending::len(&pending), 10);
        let run = Pending::lock(&pending).take_run();
        let expected = [
            (key(1, 4), 0),
            (key(2, 3), 0),
            (key(2, 4), 0),
            (key(2, 7), 1),
            (key(5, 5), GONE),
            (key(7, 1), 1),
            (key(8, 2), 1),
            (key(9, 1), 0),
        ];
        assert_eq!(
            run.iter().map(|(k, v)| (k.hash, k.id, *v)).collect::<Vec<_>>(),
            expected.map(|(k, v)| (k.hash, k.id, v))
        );
        assert_eq!(Pending::len(&pending), 0);
    }

    #[test]
    fn a_deletion_forgets_a_pending_reference_and_is_kept_for_one_in_the_keyspace() {
        let mut pending = Pending::default();
        pending.tail.extend([(key(3, 1), 1), (key(3, 2), 0)]);
        // Pending (still in the tail): forgotten.
        pending.delete(key(3, 2));
        // In the keyspace, as far as the map knows: a deletion.
        pending.delete(key(4, 9));
        pending.tail.push((key(3, 3), 0));
        let run = pending.take_run();
        assert_eq!(
            run.iter().map(|(k, v)| (k.hash, k.id, *v)).collect::<Vec<_>>(),
            [(3, 1, 1), (3, 3, 0), (4, 9, GONE)]
        );
    }

    #[test]
    fn keys_order_as_their_bytes_do() {
        let ids = [0u128, 1, 255, 256, u128::MAX >> 1, u128::MAX];
        let hashes = [0u64, 1, 0x00ff, 0x0100, u64::MAX];
        let mut keys: Vec<Key> = hashes.iter().flat_map(|&hash| ids.iter().map(move |&id| key(hash, id))).collect();
        keys.reverse();
        let mut bytes: Vec<[u8; 25]> = keys
            .iter()
            .map(|k| {
                let mut out = [0u8; 25];
                k.write(&mut out);
                out
            })
            .collect();
        keys.sort();
        bytes.sort();
        for (k, b) in keys.iter().zip(&bytes) {
            assert_eq!(Key::from_suffix(&b[1..]).map(|back| (back.hash, back.id)), Some((k.hash, k.id)));
        }
    }
}
