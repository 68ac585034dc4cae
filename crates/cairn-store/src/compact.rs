//! Compaction: a sealed segment whose events are partly removed is
//! rewritten without them, into a new file of the next generation.
//!
//! Removal is an index matter (markers by id and by topic and seq), so the
//! dead bytes stay in the log until a segment is rewritten. The steps, each
//! safe to be killed after:
//! 1. the new generation is written beside the old one (`.tmp`, fsynced,
//!    renamed, directory fsynced): events not removed, their frames copied
//!    byte for byte (ids, seqs and checksums unchanged), the log's other
//!    records kept where a rebuild of the index still needs them, and a
//!    floor record for topics whose newest event was dropped;
//! 2. a compaction record goes into the log through the writer (synced);
//! 3. the indexer applies it like every record, alone in its index batch:
//!    the segment's anchors move to the new generation, the dropped events'
//!    removal markers go, the index's generation of the segment changes;
//! 4. once the index is flushed past that record, the old generation's map
//!    is retired (readers pinned before keep it) and its file removed.
//!
//! A crash before 2 leaves a file of a generation the index does not name:
//! opening removes it. A crash after 2 replays the record (both files are
//! still there). Opening removes every generation but the index's, after
//! flushing the index. So exactly one generation of a segment is visible.
//!
//! The log's order is kept: records stay in place, so an index rebuilt from
//! the whole log sees what it saw before, less the dropped events.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufWriter, Write as _};

use crate::error::{Result, StoreError};
use crate::id::EventId;
use crate::index::sparse::{ANCHOR_EVENTS, Anchor, RemovedFilter, peek_str};
use crate::index::{Index, Ks, topic_key};
use crate::log::codec::{self, FRAME_HEADER_BYTES, Record};
use crate::log::compressed::{self, Chunk};
use crate::log::segment::{SEGMENT_HEADER_BYTES, Segments, check_header, corrupt, sync_dir};

/// What a compaction run did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CompactReport {
    /// Segments rewritten.
    pub segments: u64,
    /// Their bytes before.
    pub bytes_before: u64,
    /// Their bytes after.
    pub bytes_after: u64,
    /// Their bytes before, uncompressed.
    pub plain_bytes_before: u64,
    /// Their bytes after, uncompressed.
    pub plain_bytes_after: u64,
    /// Removed events dropped from the log.
    pub events_dropped: u64,
    /// Records other than events dropped (superseded acknowledgements and
    /// state changes, removals of events no longer in the log).
    pub records_dropped: u64,
}

/// Meta keys: the current generation of a segment (absent: 0), and the
/// bytes of removed events' frames its current generation holds.
const META_GENERATION: &[u8] = b"gen";
const META_DEAD: &[u8] = b"dead";

fn meta_key(prefix: &[u8], segment: u32) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&segment.to_be_bytes());
    key
}

pub(crate) fn generation_key(segment: u32) -> Vec<u8> {
    meta_key(META_GENERATION, segment)
}

pub(crate) fn dead_key(segment: u32) -> Vec<u8> {
    meta_key(META_DEAD, segment)
}

/// The index's current generation of `segment`.
pub(crate) fn generation(index: &Index, segment: u32) -> Result<u32> {
    Ok(decode_u32(index.get(Ks::Meta, &generation_key(segment))?.as_deref()))
}

/// Bytes of removed events' frames in `segment`'s current generation.
pub(crate) fn dead_bytes(index: &Index, segment: u32) -> Result<u64> {
    Ok(decode_u64(index.get(Ks::Meta, &dead_key(segment))?.as_deref()))
}

pub(crate) fn decode_u32(bytes: Option<&[u8]>) -> u32 {
    bytes.and_then(|b| b.try_into().ok()).map_or(0, u32::from_be_bytes)
}

pub(crate) fn decode_u64(bytes: Option<&[u8]>) -> u64 {
    bytes.and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes)
}

/// One event of a segment file, as the index sees it.
struct Placed {
    id: EventId,
    seq: u64,
    /// Frame length, header included.
    bytes: u64,
}

/// The anchors `insert_events` gives a segment file, and its events.
#[derive(Default)]
struct FileAnchors {
    ids: Vec<(Vec<u8>, Anchor)>,
    topics: Vec<(Vec<u8>, Anchor)>,
    events: Vec<Placed>,
}

/// Reads a whole segment file's records (crc-checked), calling `record`
/// with each body and its offset.
fn each_record<'a>(bytes: &'a [u8], segment: u32, mut record: impl FnMut(&'a [u8], u32) -> Result<()>) -> Result<()> {
    check_header(bytes, segment).map_err(|detail| corrupt(segment, 0, &detail))?;
    let mut offset = SEGMENT_HEADER_BYTES as usize;
    while offset < bytes.len() {
        let body = match codec::unframe(&bytes[offset..]) {
            Ok(Some(body)) => body,
            Ok(None) => return Err(corrupt(segment, offset as u32, "incomplete record in a sealed segment")),
            Err(detail) => return Err(corrupt(segment, offset as u32, &detail)),
        };
        record(body, offset as u32)?;
        offset += FRAME_HEADER_BYTES + body.len();
    }
    Ok(())
}

/// Event frames of a record body: (offset in the body, length with header).
type Frames = Vec<(usize, usize)>;

/// The event frames of a batch record body, and its idempotency key.
/// `None` for other records.
fn batch_frames(body: &[u8]) -> Option<(&[u8], Frames)> {
    let (&version, rest) = body.split_first()?;
    let (&kind, rest) = rest.split_first()?;
    if version != codec::FORMAT_VERSION || kind != codec::KIND_BATCH {
        return None;
    }
    let (&key_len, rest) = rest.split_first()?;
    let key = rest.get(..key_len as usize)?;
    let mut at = 3 + key_len as usize;
    let n = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
    at += 4;
    let mut frames = Vec::with_capacity(n.min(body.len() / 40));
    for _ in 0..n {
        let len = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        let frame_len = FRAME_HEADER_BYTES + len;
        body.get(at..at + frame_len)?;
        frames.push((at, frame_len));
        at += frame_len;
    }
    Some((key, frames))
}

/// The logical bytes of generation `generation` of `segment` (a
/// compressed file decompressed).
fn file_bytes(segments: &Segments, segment: u32, generation: u32) -> Result<Chunk> {
    let len = file_len(segments, segment, generation)?;
    segments.file(segment, generation)?.whole(len as usize)
}

/// The anchors and events of a segment file's bytes.
fn file_anchors(bytes: &[u8], segment: u32, generation: u32) -> Result<FileAnchors> {
    let mut out = FileAnchors::default();
    each_record(bytes, segment, |body, record_offset| {
        let Some((_, frames)) = batch_frames(body) else { return Ok(()) };
        let Some(&(last_at, last_len)) = frames.last() else { return Ok(()) };
        let body_start = record_offset + FRAME_HEADER_BYTES as u32;
        let record_end = body_start + (last_at + last_len) as u32;
        let first_event = out.events.len();
        let mut by_topic: HashMap<&str, Vec<usize>> = HashMap::new();
        for (idx, &(at, frame_len)) in frames.iter().enumerate() {
            let event_body = &body[at + FRAME_HEADER_BYTES..at + frame_len];
            let (id, seq, topic) =
                peek_str(event_body).ok_or_else(|| corrupt(segment, record_offset, "event too short"))?;
            let offset = body_start + at as u32;
            if idx % ANCHOR_EVENTS == 0 {
                let n = (frames.len() - idx).min(ANCHOR_EVENTS) as u32;
                out.ids.push((id.to_bytes().to_vec(), Anchor { segment, generation, offset, end: record_end, n }));
            }
            by_topic.entry(topic).or_default().push(idx);
            out.events.push(Placed { id, seq, bytes: frame_len as u64 });
        }
        for (topic, indices) in by_topic {
            for chunk in indices.chunks(ANCHOR_EVENTS) {
                let first = &out.events[first_event + chunk[0]];
                let offset = body_start + frames[chunk[0]].0 as u32;
                let anchor = Anchor { segment, generation, offset, end: record_end, n: chunk.len() as u32 };
                out.topics.push((topic_key(topic, first.seq), anchor));
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Applies a compaction record (alone in its index batch): `segment`'s
/// anchors move from generation `from` to `to`, the markers of the removed
/// events `to` dropped go, and the segment's dead bytes are counted anew.
/// Replayed after the switch (or in a rebuild that read `to` or later
/// already), it does nothing.
pub(crate) fn apply(
    txn: &mut crate::index::Txn<'_>,
    segments: &Segments,
    segment: u32,
    from: u32,
    to: u32,
) -> Result<()> {
    let current = decode_u32(txn.get(Ks::Meta, &generation_key(segment))?.as_deref());
    if current >= to {
        return Ok(());
    }
    if current != from {
        return Err(corrupt(segment, 0, &format!("compaction from generation {from}, but the index has {current}")));
    }
    let (old_bytes, new_bytes) = (file_bytes(segments, segment, from)?, file_bytes(segments, segment, to)?);
    let old = file_anchors(&old_bytes, segment, from)?;
    let new = file_anchors(&new_bytes, segment, to)?;
    let new_ids: HashSet<&[u8]> = new.ids.iter().map(|(key, _)| key.as_slice()).collect();
    let new_topics: HashSet<&[u8]> = new.topics.iter().map(|(key, _)| key.as_slice()).collect();
    for (key, _) in &old.ids {
        if !new_ids.contains(key.as_slice()) {
            txn.remove(Ks::Ids, key.clone());
        }
    }
    for (key, _) in &old.topics {
        if !new_topics.contains(key.as_slice()) {
            txn.remove(Ks::Topics, key.clone());
        }
    }
    for (key, anchor) in new.ids.iter() {
        txn.insert(Ks::Ids, key.clone(), anchor.to_bytes());
    }
    for (key, anchor) in new.topics.iter() {
        txn.insert(Ks::Topics, key.clone(), anchor.to_bytes());
    }
    // The dropped events' removal marks are deleted later, in small steps
    // (`run`): deleting them here would hold every reader behind the read
    // barrier for as long. Marks left by a crash in between only cost space.
    let mut dead = 0u64;
    if let (Some(first), Some(last)) = (new.events.first(), new.events.last()) {
        let mut removed =
            RemovedFilter::new(txn.index, None, Ks::Removed, &first.id.to_bytes(), &last.id.to_bytes(), false);
        for event in &new.events {
            if removed.contains(&event.id.to_bytes())? {
                dead += event.bytes;
            }
        }
    }
    txn.insert(Ks::Meta, generation_key(segment), to.to_be_bytes().to_vec());
    txn.insert(Ks::Meta, dead_key(segment), dead.to_be_bytes().to_vec());
    Ok(())
}

/// A new generation written and ready to be named by a compaction record.
pub(crate) struct Rewritten {
    pub(crate) from: u32,
    pub(crate) to: u32,
    pub(crate) bytes_before: u64,
    pub(crate) bytes_after: u64,
    /// The same as logical (uncompressed) bytes.
    pub(crate) plain_before: u64,
    pub(crate) plain_after: u64,
    pub(crate) events_dropped: u64,
    pub(crate) records_dropped: u64,
    /// The removal marks of the dropped events.
    pub(crate) marks: Vec<crate::progress::Forget>,
}

/// Writes the next generation of `segment` without its removed events
/// (step 1 above). `None` when there is nothing to drop.
///
/// With `compress`, the new generation is written compressed, and written
/// even when nothing is dropped if the old one is not compressed yet.
pub(crate) fn rewrite(index: &Index, segments: &Segments, segment: u32, compress: bool) -> Result<Option<Rewritten>> {
    let from = generation(index, segment)?;
    let len = file_len(segments, segment, from)?;
    let file = segments.file(segment, from)?;
    let was_compressed = file.is_compressed();
    let data = file.whole(len as usize)?;
    let bytes: &[u8] = &data;
    let logical_len = bytes.len() as u64;

    // First pass: the records, and which acknowledgements and state keys
    // a later record of this segment supersedes.
    let mut records: Vec<(&[u8], u32)> = Vec::new();
    each_record(bytes, segment, |body, offset| {
        records.push((body, offset));
        Ok(())
    })?;
    let mut last_ack: HashMap<String, usize> = HashMap::new();
    let mut last_state: HashMap<Vec<u8>, (usize, usize)> = HashMap::new();
    let mut decoded: HashMap<usize, Record> = HashMap::new();
    let mut has_removals = false;
    for (idx, (body, offset)) in records.iter().enumerate() {
        if batch_frames(body).is_some() {
            continue;
        }
        let record = codec::decode_record(body).map_err(|detail| corrupt(segment, *offset, &detail))?;
        match &record {
            Record::Ack { name, .. } | Record::ConsumerDelete { name } => {
                last_ack.insert(name.clone(), idx);
            }
            Record::Remove { .. } => has_removals = true,
            Record::State { ops } => {
                for (op_idx, op) in ops.iter().enumerate() {
                    let (codec::StateOp::Put(key, _) | codec::StateOp::Delete(key)) = op;
                    last_state.insert(key.clone(), (idx, op_idx));
                }
            }
            _ => {}
        }
        decoded.insert(idx, record);
    }

    // Second pass: what stays. Removed events are found by walking the
    // removal markers alongside (both in id order).
    let mut removed: Option<RemovedFilter> = None;
    // The new file's logical bytes: the header (marked plain), then records.
    let mut out = bytes[..SEGMENT_HEADER_BYTES as usize].to_vec();
    let version = u32::from_le_bytes(out[12..16].try_into().expect("4 bytes")) & !compressed::COMPRESSED;
    out[12..16].copy_from_slice(&version.to_le_bytes());
    let mut n_dropped = 0u64;
    let mut records_dropped = 0u64;
    let mut dropped_ids: HashSet<EventId> = HashSet::new();
    // Per topic: newest seq and id seen, and newest kept.
    let mut newest: HashMap<&str, (u64, EventId)> = HashMap::new();
    let mut newest_kept: HashMap<&str, u64> = HashMap::new();
    let mut pending_floors: Vec<(String, u64, EventId)> = Vec::new();
    let mut marks = Vec::new();
    let mut decoder = codec::Decoder::for_index();
    for (idx, (body, offset)) in records.iter().enumerate() {
        if let Some((key, frames)) = batch_frames(body) {
            let mut kept = Vec::with_capacity(body.len());
            let mut n_kept = 0usize;
            for &(at, frame_len) in &frames {
                let event_body = &body[at + FRAME_HEADER_BYTES..at + frame_len];
                let (id, seq, topic) =
                    peek_str(event_body).ok_or_else(|| corrupt(segment, *offset, "event too short"))?;
                let filter = removed.get_or_insert_with(|| {
                    RemovedFilter::new(index, None, Ks::Removed, &id.to_bytes(), &[0xff; 16], false)
                });
                let entry = newest.entry(topic).or_insert((seq, id));
                if seq >= entry.0 {
                    *entry = (seq, id);
                }
                if filter.contains(&id.to_bytes())? {
                    n_dropped += 1;
                    let hash = codec::decode_event_with(event_body, &mut decoder)
                        .map_err(|detail| corrupt(segment, *offset, &detail))?
                        .hash;
                    let reference = hash.map(|hash| crate::index::apply::cas_key(hash, id));
                    marks.push((id.to_bytes(), topic_key(topic, seq), reference));
                    if has_removals {
                        dropped_ids.insert(id);
                    }
                    continue;
                }
                let kept_seq = newest_kept.entry(topic).or_insert(seq);
                *kept_seq = (*kept_seq).max(seq);
                kept.extend_from_slice(&body[at..at + frame_len]);
                n_kept += 1;
            }
            if n_kept == 0 {
                // Its idempotency key goes with it: it could only repeat
                // events that are gone.
                records_dropped += 1;
                continue;
            }
            if n_kept == frames.len() {
                codec::frame(&mut out, |new_body| new_body.extend_from_slice(body));
            } else {
                codec::encode_batch_of_raw_frames(&mut out, key, n_kept, &kept);
            }
            continue;
        }
        let record = decoded.remove(&idx).expect("decoded in the first pass");
        match record {
            Record::Ack { ref name, .. } | Record::ConsumerDelete { ref name } if last_ack.get(name) != Some(&idx) => {
                records_dropped += 1;
            }
            Record::State { ops } => {
                let kept: Vec<codec::StateOp> = ops
                    .into_iter()
                    .enumerate()
                    .filter(|(op_idx, op)| {
                        let (codec::StateOp::Put(key, _) | codec::StateOp::Delete(key)) = op;
                        last_state.get(key) == Some(&(idx, *op_idx))
                    })
                    .map(|(_, op)| op)
                    .collect();
                if kept.is_empty() {
                    records_dropped += 1;
                } else {
                    codec::encode_state(&mut out, &kept);
                }
            }
            Record::Remove { ids } => {
                let mut kept = Vec::with_capacity(ids.len());
                for id in ids {
                    if !dropped_ids.contains(&id) && in_log(index, segments, id)? {
                        kept.push(id);
                    }
                }
                if kept.is_empty() {
                    records_dropped += 1;
                } else {
                    codec::encode_remove(&mut out, &kept);
                }
            }
            Record::Floor { floors } => {
                // Folded into this generation's floor record, at the end.
                pending_floors.extend(floors);
            }
            _ => codec::frame(&mut out, |new_body| new_body.extend_from_slice(body)),
        }
    }
    if n_dropped == 0 && records_dropped == 0 && compress == was_compressed {
        return Ok(None);
    }
    // Topics whose newest event here was dropped keep their seq and id in a
    // floor record, as do the floors of the generation before.
    let mut floors: Vec<(String, u64, EventId)> = newest
        .into_iter()
        .filter(|(topic, (seq, _))| newest_kept.get(topic).is_none_or(|kept| kept < seq))
        .map(|(topic, (seq, id))| (topic.to_owned(), seq, id))
        .collect();
    for (topic, seq, id) in pending_floors {
        match floors.iter_mut().find(|(t, _, _)| *t == topic) {
            Some(floor) if floor.1 >= seq => {}
            Some(floor) => *floor = (topic, seq, id),
            None if newest_kept.get(topic.as_str()).is_some_and(|kept| *kept >= seq) => {}
            None => floors.push((topic, seq, id)),
        }
    }
    // Only the newest seq a topic ever had needs keeping: an older one is
    // below a later event's (itself kept, or floored where it is dropped).
    let mut needed = Vec::with_capacity(floors.len());
    for floor in floors {
        if index.head(&floor.0)?.is_none_or(|head| head.last_seq <= floor.1) {
            needed.push(floor);
        }
    }
    let mut floors = needed;
    if !floors.is_empty() {
        floors.sort();
        codec::encode_floor(&mut out, &floors);
    }

    // A file of the next generation already there is one a failed
    // compaction left (a named generation is never above the index's):
    // replaced, so that files above the index's generation are always
    // unnamed leftovers and a rebuild can read each segment's oldest file.
    let to = from + 1;
    let path = segments.path_gen(segment, to);
    if path.exists() {
        fs::remove_file(&path).map_err(StoreError::io(format!("remove the leftover {}", path.display())))?;
    }
    let tmp = path.with_extension("seg.tmp");
    let io = |what: &'static str| StoreError::io(format!("{what} {}", tmp.display()));
    let write = || -> Result<u64> {
        let new_file =
            crate::private::file_options().create(true).truncate(true).write(true).open(&tmp).map_err(io("create"))?;
        let mut writer = BufWriter::with_capacity(1 << 20, new_file);
        let bytes_after = if compress {
            compressed::encode(&out, &block_cuts(&out), &mut writer).map_err(io("write"))?
        } else {
            writer.write_all(&out).map_err(io("write"))?;
            out.len() as u64
        };
        let file = writer.into_inner().map_err(|error| io("write")(error.into_error()))?;
        file.sync_all().map_err(io("fsync"))?;
        Ok(bytes_after)
    };
    // A half-written file never stays behind (on a full disk, the retry
    // would write it again and again).
    let bytes_after = write().inspect_err(|_| drop(fs::remove_file(&tmp)))?;
    crate::faults::compaction_step("written");
    fs::rename(&tmp, &path).map_err(io("rename"))?;
    sync_dir(segments.dir())?;
    crate::faults::compaction_step("renamed");
    Ok(Some(Rewritten {
        from,
        to,
        bytes_before: len,
        bytes_after,
        plain_before: logical_len,
        plain_after: out.len() as u64,
        events_dropped: n_dropped,
        records_dropped,
        marks,
    }))
}

/// Where blocks of a compressed file may end: after each event frame and
/// each record of `plain` (a whole segment's logical bytes).
fn block_cuts(plain: &[u8]) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES as usize;
    while offset < plain.len() {
        let Some(body) = codec::unframe_trusted(&plain[offset..]) else { break };
        let body_start = offset + FRAME_HEADER_BYTES;
        if let Some((_, frames)) = batch_frames(body) {
            cuts.extend(frames.iter().map(|(at, len)| body_start + at + len));
        }
        offset = body_start + body.len();
        cuts.push(offset);
    }
    cuts
}

/// Whether the log holds event `id` (removed or not).
fn in_log(index: &Index, segments: &Segments, id: EventId) -> Result<bool> {
    let id_bytes = id.to_bytes();
    let guard = index.range(Ks::Ids, std::ops::Bound::Unbounded, std::ops::Bound::Included(&id_bytes[..])).next_back();
    let Some(guard) = guard else { return Ok(false) };
    let anchor = Anchor::from_bytes(&guard.value()?)?;
    let mut block = Vec::with_capacity(ANCHOR_EVENTS);
    crate::index::sparse::walk(segments, anchor, None, |_| true, &mut block)?;
    Ok(block.iter().any(|located| located.id == id))
}

pub(crate) fn file_len(segments: &Segments, segment: u32, generation: u32) -> Result<u64> {
    let path = segments.path_gen(segment, generation);
    Ok(fs::metadata(&path).map_err(StoreError::io(format!("stat {}", path.display())))?.len())
}

/// After recovery: removes every segment file of a generation the index
/// does not name, and half-written ones. The index is flushed first, so
/// the generations it names are durable before an older file goes.
pub(crate) fn remove_stale(index: &Index, segments: &Segments) -> Result<usize> {
    let mut stale = Vec::new();
    for (segment, file_generation) in segments.files()? {
        if generation(index, segment)? != file_generation {
            stale.push(segments.path_gen(segment, file_generation));
        }
    }
    for entry in fs::read_dir(segments.dir()).map_err(StoreError::io("list the log directory"))? {
        let path = entry.map_err(StoreError::io("list the log directory"))?.path();
        if path.to_str().is_some_and(|p| p.ends_with(".seg.tmp")) {
            stale.push(path);
        }
    }
    if stale.is_empty() {
        return Ok(0);
    }
    index.flush_main()?;
    for path in &stale {
        tracing::info!("removing {}, left by an unfinished compaction", path.display());
        fs::remove_file(path).map_err(StoreError::io(format!("remove {}", path.display())))?;
    }
    sync_dir(segments.dir())?;
    Ok(stale.len())
}

/// Removes generation `from` of `segment` after the switch to a later one
/// is durable in the index (step 4).
pub(crate) fn remove_replaced(segments: &Segments, segment: u32, from: u32) -> Result<()> {
    segments.retire(segment, from);
    let path = segments.path_gen(segment, from);
    fs::remove_file(&path).map_err(StoreError::io(format!("remove {}", path.display())))?;
    sync_dir(segments.dir())
}

/// Compacts every sealed, fully indexed segment whose dead bytes are at
/// least `ratio` of its size (any dead byte with 0), and compresses sealed
/// segments sealed `compress_after` ago, one at a time, until `stop` says
/// so or `budget` is spent. Each segment is done under the store's
/// compaction lock (backup and verify wait for one segment, not a pass).
/// A segment that fails is skipped until its dead bytes change.
pub(crate) fn run(
    shared: &crate::store::Shared,
    requests: &std::sync::mpsc::SyncSender<crate::log::writer::Request>,
    ratio: f64,
    checked: &mut HashMap<(u32, u32), Memo>,
    compress_after: std::time::Duration,
    budget: Option<std::time::Duration>,
    stop: &dyn Fn() -> bool,
) -> Result<CompactReport> {
    let started = std::time::Instant::now();
    let mut report = CompactReport::default();
    let mut limit = shared.progress.indexed().segment.min(shared.progress.committed_end().segment);
    // Segments the content references' catch-up has yet to read keep
    // their offsets (see `index/refs.rs`).
    if let Some(refs) = shared.progress.refs_behind() {
        limit = limit.min(refs.segment);
    }
    // Nor may the segment their checkpoint is in (a crash resumes their
    // catch-up there), or a later one.
    limit = limit.min(shared.progress.refs_marked().segment);
    // Listed once a pass; a segment with an older generation left is
    // listed again under the lock before anything is removed.
    let files = shared.segments.files()?;
    let mut segments: Vec<u32> = files.iter().map(|(segment, _)| *segment).collect();
    segments.dedup();
    for segment in segments {
        if segment >= limit || stop() || budget.is_some_and(|budget| started.elapsed() >= budget) {
            break;
        }
        let _guard = shared.compaction.lock().expect("compaction lock");
        // A store that refuses writes may have logged a compaction record it
        // could not acknowledge: its files are left for the next open.
        if let Some(reason) = shared.poisoned() {
            return Err(StoreError::Poisoned { reason });
        }
        let from = generation(&shared.index, segment)?;
        let dead = dead_bytes(&shared.index, segment)?;
        match checked.get(&(segment, from)) {
            Some(Memo::Checked(at)) if *at == dead => continue,
            Some(Memo::Failed(when)) if when.elapsed() < RETRY_AFTER_FAILURE => continue,
            _ => {}
        }
        let leftover = files.iter().any(|(s, g)| *s == segment && *g < from);
        let outcome = (if leftover { remove_older(shared, segment, from) } else { Ok(()) })
            .and_then(|()| compact_one(shared, requests, segment, from, dead, ratio, compress_after, &mut report));
        match outcome {
            Ok(Outcome::Done | Outcome::NotYet) => {}
            Ok(Outcome::NothingToDrop) => {
                checked.insert((segment, from), Memo::Checked(dead));
            }
            Err(error @ (StoreError::ShuttingDown | StoreError::Poisoned { .. })) => return Err(error),
            Err(error) => {
                tracing::warn!(segment, "compaction of a segment failed (tried again in a minute): {error}");
                checked.insert((segment, from), Memo::Failed(std::time::Instant::now()));
            }
        }
    }
    Ok(report)
}

/// What `run` remembers of a segment between passes.
pub(crate) enum Memo {
    /// Read with these dead bytes, and nothing found to drop.
    Checked(u64),
    /// Its compaction failed then.
    Failed(std::time::Instant),
}

/// How long a segment whose compaction failed waits for another try.
const RETRY_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes generations of `segment` older than `from` still there (their
/// removal failed). The index is flushed first: `from` may be named only
/// in its memtable yet (a flush that failed after the switch), and a crash
/// would then replay the switch from the older file.
fn remove_older(shared: &crate::store::Shared, segment: u32, from: u32) -> Result<()> {
    let older: Vec<u32> =
        shared.segments.files()?.into_iter().filter(|(s, g)| *s == segment && *g < from).map(|(_, g)| g).collect();
    if older.is_empty() {
        return Ok(());
    }
    shared.index.flush_main()?;
    for generation in older {
        match remove_replaced(&shared.segments, segment, generation) {
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

/// What `compact_one` did.
enum Outcome {
    Done,
    /// Not due (too little removed, or too recently sealed to compress).
    NotYet,
    /// Read, and nothing found to drop (its dead-bytes count was stale).
    NothingToDrop,
}

/// Compacts (or compresses) one segment if it needs it.
#[allow(clippy::too_many_arguments)]
fn compact_one(
    shared: &crate::store::Shared,
    requests: &std::sync::mpsc::SyncSender<crate::log::writer::Request>,
    segment: u32,
    from: u32,
    dead: u64,
    ratio: f64,
    compress_after: std::time::Duration,
    report: &mut CompactReport,
) -> Result<Outcome> {
    if dead == 0 && !shared.options.compress {
        return Ok(Outcome::NotYet);
    }
    let file = shared.segments.file(segment, from)?;
    let plain = file.logical_len(file_len(&shared.segments, segment, from)?);
    // Compressing only (nothing removed) waits until the segment has
    // been sealed a while, so a bulk load does not share its cores with it.
    let sealed_long_enough = || {
        std::fs::metadata(shared.segments.path_gen(segment, from))
            .and_then(|meta| meta.modified())
            .is_ok_and(|modified| modified.elapsed().unwrap_or_default() >= compress_after)
    };
    let compress = shared.options.compress && !file.is_compressed() && sealed_long_enough();
    drop(file);
    let dead_enough = dead > 0 && (dead as f64) >= ratio * plain.saturating_sub(SEGMENT_HEADER_BYTES) as f64;
    if !compress && !dead_enough {
        return Ok(Outcome::NotYet);
    }
    let started = std::time::Instant::now();
    let Some(rewritten) = rewrite(&shared.index, &shared.segments, segment, shared.options.compress)? else {
        return Ok(Outcome::NothingToDrop);
    };
    // The references' checkpoint on disk must be past this segment before
    // its offsets change: a crash must not resume their catch-up in it.
    shared.index.flush_refs_past(segment)?;
    let (reply, receiver) = tokio::sync::oneshot::channel();
    let request = crate::log::writer::Request::Compact { segment, from: rewritten.from, to: rewritten.to, reply };
    // On failure the new file stays: the record may still have reached
    // the disk (a failed fdatasync). Opening keeps it if the log names
    // it and removes it if not.
    requests.send(request).map_err(|_| StoreError::ShuttingDown)?;
    receiver.blocking_recv().map_err(|_| StoreError::ShuttingDown)??;
    let written = started.elapsed();
    crate::faults::compaction_step("logged");
    shared.progress.barrier()?;
    let indexed = started.elapsed();
    crate::faults::compaction_step("indexed");
    shared.index.flush_main()?;
    let flushed = started.elapsed();
    crate::faults::compaction_step("flushed");
    remove_replaced(&shared.segments, segment, rewritten.from)?;
    crate::faults::compaction_step("removed");
    let mut marks = rewritten.marks;
    while !marks.is_empty() {
        let rest = marks.split_off(marks.len().min(crate::limits::EXPIRE_EVENTS_PER_STEP));
        let step = std::mem::replace(&mut marks, rest);
        shared.progress.request_forget(step).blocking_recv().map_err(|_| StoreError::ShuttingDown)??;
    }
    tracing::info!(
        segment,
        generation = rewritten.to,
        before = rewritten.bytes_before,
        after = rewritten.bytes_after,
        events = rewritten.events_dropped,
        written_ms = written.as_millis(),
        indexed_ms = indexed.as_millis(),
        flushed_ms = flushed.as_millis(),
        "compacted a segment"
    );
    report.segments += 1;
    report.bytes_before += rewritten.bytes_before;
    report.bytes_after += rewritten.bytes_after;
    report.plain_bytes_before += rewritten.plain_before;
    report.plain_bytes_after += rewritten.plain_after;
    report.events_dropped += rewritten.events_dropped;
    report.records_dropped += rewritten.records_dropped;
    Ok(Outcome::Done)
}
