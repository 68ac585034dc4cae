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
//! reach the index they are kept current with every index batch again, and
//! their checkpoint moves with it.
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
//! A reference whose event is marked removed counts as gone ([`live_ref`]):
//! a crash can lose a reference's deletion while the removal mark was
//! flushed (the keyspaces flush apart).

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

/// The indexer's view of the references.
#[derive(Default)]
pub(crate) struct Refs {
    /// Where their coverage of the log ends while they lag behind the
    /// index; `None` once they are current.
    pub(crate) behind: Option<Checkpoint>,
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
        Ok(Refs { behind: (at < end).then_some(at), garbage, legacy, reading: None })
    }
}

/// A new event's reference, written with its index batch while the
/// references are current.
pub(crate) fn insert(txn: &mut Txn<'_>, hash: Hash, id: EventId, payload: &Payload) {
    txn.insert_borrowed(Ks::Cas, &cas_suffix(hash, id), &[u8::from(*payload == Payload::Stored)]);
}

/// Whether some event not removed (as `txn` sees it) refers to content
/// with `hash`'s prefix. A different content sharing the eight bytes
/// only keeps a file a little longer.
pub(crate) fn live_ref(txn: &Txn<'_>, hash: &Hash) -> Result<bool> {
    txn.any_prefixed(Ks::Cas, &hash.0[..CAS_KEY_HASH_BYTES], |suffix| {
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
        let mut txn = index.txn();
        mark(&mut txn, target);
        txn.commit()?;
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

/// Writes the references of up to a batch of records of `bytes` (a
/// segment, or its indexed part) from `at`, with their checkpoint; returns
/// where it stopped.
fn index_refs(index: &Index, at: Checkpoint, bytes: &[u8]) -> Result<Checkpoint> {
    let mut txn = index.txn();
    let mut offset = at.offset;
    let mut decoder = codec::Decoder::for_index();
    let mut records = 0;
    while offset < bytes.len() as u64 && records < INDEX_RECORDS_PER_BATCH {
        let body = codec::unframe(&bytes[offset as usize..])
            .map_err(|detail| corrupt(at.segment, offset as u32, &detail))?
            .ok_or_else(|| corrupt(at.segment, offset as u32, "indexed record is incomplete"))?;
        let record = codec::decode_record_with(body, &mut decoder)
            .map_err(|detail| corrupt(at.segment, offset as u32, &detail))?;
        if let codec::Record::Batch { events, .. } = record {
            for (event, _, _) in events {
                let Some(hash) = event.hash else { continue };
                if index.get(Ks::Removed, &event.id.to_bytes())?.is_none() {
                    insert(&mut txn, hash, event.id, &event.payload);
                }
            }
        }
        offset += (FRAME_HEADER_BYTES + body.len()) as u64;
        records += 1;
    }
    let next = Checkpoint { segment: at.segment, offset };
    mark(&mut txn, next);
    txn.commit()?;
    Ok(next)
}
