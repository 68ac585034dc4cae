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
//! keyspace one by one: they gather in [`Pending`], a sorted map in memory
//! that lookups read too (first, see [`visit_ids`]), and go to the
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
use crate::index::apply::{CAS_KEY_HASH_BYTES, cas_suffix};
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

/// A reference's key in its keyspace, without the keyspace byte.
type Suffix = [u8; CAS_KEY_HASH_BYTES + 16];

/// A pending entry's value for a deletion (a reference's value is 0 or 1).
const GONE: u8 = u8::MAX;

/// Changes not in the keyspace yet: key suffix → whether the content is
/// stored in a file (the keyspace's value), or [`GONE`] for a deletion.
#[derive(Default)]
pub(crate) struct Pending {
    map: BTreeMap<Suffix, u8>,
    /// Being ingested: lookups still read it until the keyspace has it.
    draining: Option<Arc<BTreeMap<Suffix, u8>>>,
}

impl Pending {
    fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
        pending.lock().expect("pending references lock")
    }

    fn len(pending: &Mutex<Pending>) -> usize {
        Pending::lock(pending).map.len()
    }

    pub(crate) fn clear(pending: &Mutex<Pending>) {
        Pending::lock(pending).map.clear();
    }

    /// The pending entries with `prefix` (a prefix of a hash): the
    /// references, and the deletions. The run being drained is read before
    /// the map (an entry moves from the map to it, never back).
    fn with_prefix(pending: &Mutex<Pending>, prefix: &[u8]) -> (Vec<Suffix>, BTreeSet<Suffix>) {
        let mut lo: Suffix = [0; CAS_KEY_HASH_BYTES + 16];
        lo[..prefix.len()].copy_from_slice(prefix);
        let pending = Pending::lock(pending);
        let mut entries: BTreeMap<Suffix, u8> = BTreeMap::new();
        // The map's entries are newer than the draining run's.
        for map in pending.draining.as_deref().into_iter().chain([&pending.map]) {
            entries.extend(map.range(lo..).take_while(|(key, _)| key.starts_with(prefix)).map(|(k, v)| (*k, *v)));
        }
        let (gone, live): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(_, value)| *value == GONE);
        (live.into_iter().map(|(key, _)| key).collect(), gone.into_iter().map(|(key, _)| key).collect())
    }
}

/// Whether `suffix` (a key of the keyspace, stripped) is in `gone`.
fn hidden(gone: &BTreeSet<Suffix>, suffix: &[u8]) -> bool {
    !gone.is_empty() && <Suffix>::try_from(suffix).is_ok_and(|key| gone.contains(&key))
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
    let prefix = &hash.0[..CAS_KEY_HASH_BYTES];
    let (live, gone) = Pending::with_prefix(&index.pending_refs, prefix);
    for key in &live {
        if let Some(id) = id_of(key)
            && visit(id)?
        {
            return Ok(());
        }
    }
    for guard in index.prefix(Ks::Cas, prefix) {
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
    Pending::lock(&index.pending_refs).map.insert(cas_suffix(hash, id), u8::from(*payload == Payload::Stored));
}

/// Deletes a reference (its key suffix, see `cas_key`): a pending one from
/// memory; one that may be in the keyspace by a pending deletion, written
/// with the next run (see the module's notes).
pub(crate) fn remove(index: &Index, suffix: &[u8]) {
    let Ok(key) = <Suffix>::try_from(suffix) else { return };
    let mut pending = Pending::lock(&index.pending_refs);
    match pending.map.get(&key) {
        Some(&value) if value != GONE => {
            // Never drained: a key is in the keyspace only up to the
            // checkpoint, and pending only past it.
            pending.map.remove(&key);
        }
        _ => {
            pending.map.insert(key, GONE);
        }
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
        let mut pending = Pending::lock(&index.pending_refs);
        let run = Arc::new(std::mem::take(&mut pending.map));
        pending.draining = Some(run.clone());
        run
    };
    if run.len() >= SMALL_RUN_REFS {
        let mut ingestion = index.keyspace(Ks::Cas).start_ingestion()?;
        ingestion.write(crate::index::key(Ks::RefsMeta, META_APPLIED), &encode_checkpoint(covered)[..])?;
        let mut key = [0u8; CAS_KEY_HASH_BYTES + 17];
        key[0] = Ks::Cas as u8;
        for (suffix, value) in run.iter() {
            key[1..].copy_from_slice(suffix);
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
            if *value == GONE {
                txn.remove(Ks::Cas, suffix.to_vec());
            } else {
                txn.insert(Ks::Cas, suffix.to_vec(), vec![*value]);
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
    let prefix = &hash.0[..CAS_KEY_HASH_BYTES];
    let (live, gone) = Pending::with_prefix(&txn.index.pending_refs, prefix);
    for key in live {
        if txn.get(Ks::Removed, &key[CAS_KEY_HASH_BYTES..])?.is_none() {
            return Ok(true);
        }
    }
    txn.any_prefixed(Ks::Cas, prefix, |suffix| {
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
