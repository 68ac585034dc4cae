//! Opening the log: find where the index's knowledge ends (its checkpoint),
//! scan the records after it, cut a torn tail, and replay the rest into the
//! index. Costs O(tail), not O(log).
//!
//! A damaged record near the end of the log (within one group's worth of
//! bytes) is a write that was never acknowledged: it and everything after it
//! is cut and reported. Damage further back is not a torn write but rot, and
//! opening fails with a `Corrupt` error naming the place, so nothing
//! acknowledged is ever thrown away silently.

use std::fs::OpenOptions;
use std::sync::Arc;

use crate::cas::Cas;
use crate::error::{Result, StoreError};
use crate::event::Event;
use crate::index::refs::Refs;
use crate::index::txn::Ks;
use crate::index::{Applier, Checkpoint, Heads, Index, META_APPLIED, META_LAST_ID, encode_checkpoint};
use crate::limits::{EXPIRE_EVENTS_PER_STEP, GROUP_BYTES_MAX, RECORD_BYTES_MAX};
use crate::log::ahead::ZEROES_AHEAD_MAX;
use crate::log::codec::{self, FRAME_HEADER_BYTES, Pos, Record};
use crate::log::segment::{SEGMENT_HEADER_BYTES, Segments, check_header, corrupt, create_segment};

/// What recovery did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Records replayed into the index.
    pub records_replayed: u64,
    /// Bytes of the index's own journal (fjall's) emptied unread on open:
    /// the log is replayed from the index's checkpoint instead.
    pub index_journal_bytes: u64,
    /// Whether the store was closed cleanly (its log synced to the end).
    pub clean_close: bool,
    /// Whether that close flushed the index (nothing to replay).
    pub flushed_on_close: bool,
    /// Expired events removed on open, after a close that did not flush the
    /// index (retention sweeps are not in the log, so one that was lost is
    /// run again before anything reads).
    pub expired_on_open: u64,
    /// Whether the index was rebuilt from the whole log.
    pub rebuilt: bool,
    /// Whether the content references were left behind the rest of the
    /// index, to catch up in the background (lookups by hash wait for it).
    pub refs_behind: bool,
    /// Bytes cut from the end of the log, if any, and why.
    pub truncated: Option<Truncation>,
}

/// A cut torn tail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// Segment number.
    pub segment: u32,
    /// Offset where the log now ends.
    pub offset: u64,
    /// Bytes removed.
    pub bytes: u64,
    /// What was wrong there.
    pub reason: String,
}

/// Where the writer continues after recovery.
pub(crate) struct Tail {
    pub(crate) segment: u32,
    pub(crate) offset: u64,
    pub(crate) heads: Heads,
    pub(crate) last_id: crate::id::EventId,
    pub(crate) refs: Refs,
}

const REPLAY_RECORDS_PER_TXN: usize = 1024;

pub(crate) fn recover(segments: &Arc<Segments>, index: &Index, cas: &Cas) -> Result<(Tail, RecoveryReport)> {
    let mut report = RecoveryReport {
        index_journal_bytes: index.journal.bytes,
        clean_close: index.journal.clean,
        flushed_on_close: index.journal.flushed,
        ..RecoveryReport::default()
    };
    let mut list = segments.list()?;
    if list.is_empty() {
        create_segment(segments.dir(), 0)?;
        list.push(0);
    }
    let first = list[0];
    let last = *list.last().expect("not empty");
    let mut start = match index.checkpoint()? {
        Some(checkpoint) if list.contains(&checkpoint.segment) => checkpoint,
        Some(_) => {
            tracing::warn!("index checkpoint names a missing segment; rebuilding the index from the log");
            rebuild(index, &mut report)?;
            Checkpoint { segment: first, offset: SEGMENT_HEADER_BYTES }
        }
        None => Checkpoint { segment: first, offset: SEGMENT_HEADER_BYTES },
    };
    let files = segments.files()?;
    // A segment's oldest generation there is: a newer one is named by a
    // compaction record later in the log, which switches to it.
    let oldest = |segment: u32| files.iter().find(|(s, _)| *s == segment).map_or(0, |(_, g)| *g);
    let checkpoint_len = {
        let generation = oldest(start.segment);
        let file_len = crate::compact::file_len(segments, start.segment, generation)?;
        // A compressed file's offsets are those of its plain bytes.
        segments.file(start.segment, generation)?.logical_len(file_len)
    };
    if start.offset > checkpoint_len {
        // The index saw bytes the log lost (only possible without fdatasync,
        // in `interval` or `none` mode, after a power loss).
        tracing::warn!("index is ahead of the log; rebuilding the index from the log");
        rebuild(index, &mut report)?;
        start = Checkpoint { segment: first, offset: SEGMENT_HEADER_BYTES };
    }
    let mut heads = Heads::default();
    let mut last_id = index.last_id()?;
    // The content references are left to catch up after the open (see
    // `refs.rs`): here only the rest of the index is replayed.
    let mut refs = Refs::deferred();
    let mut end = Checkpoint { segment: start.segment, offset: start.offset };
    for &segment in list.iter().filter(|&&s| s >= start.segment) {
        let generation = oldest(segment);
        let file_len = crate::compact::file_len(segments, segment, generation)?;
        // A segment whose creation was cut short (a kill between creating
        // the file and writing its header): recreated. It is not mapped
        // first: reading a map past the end of a file is a SIGBUS, and an
        // empty file's map has no byte inside it.
        let torn =
            |len: u64| segment == last && generation == 0 && len < SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES as u64;
        if file_len < SEGMENT_HEADER_BYTES {
            if !torn(file_len) {
                return Err(corrupt(segment, 0, &format!("{file_len} bytes, shorter than a segment's header")));
            }
            recreate(segments, segment)?;
            end = Checkpoint { segment, offset: SEGMENT_HEADER_BYTES };
            continue;
        }
        segments.map_gen(segment, generation, file_len)?;
        // A compressed file (a compacted segment) is read decompressed.
        let data = segments.file(segment, generation)?.whole(file_len as usize)?;
        let bytes: &[u8] = &data;
        let len = bytes.len() as u64;
        if let Err(detail) = check_header(bytes, segment) {
            if torn(len) {
                recreate(segments, segment)?;
                end = Checkpoint { segment, offset: SEGMENT_HEADER_BYTES };
                continue;
            }
            return Err(corrupt(segment, 0, &detail));
        }
        let mut offset = if segment == start.segment { start.offset } else { SEGMENT_HEADER_BYTES };
        let mut batch: Vec<(Record, u64)> = Vec::new();
        let mut decoder = codec::Decoder::for_index();
        let mut damage = None;
        while offset < len {
            match codec::unframe(&bytes[offset as usize..]) {
                Ok(Some(body)) => match codec::decode_record_with(body, &mut decoder) {
                    Ok(record) => {
                        // A compaction record is applied alone (see `compact::apply`).
                        let alone = |record: &Record| matches!(record, Record::Compact { .. });
                        let ends_batch = alone(&record) || batch.last().is_some_and(|(last, _)| alone(last));
                        if !batch.is_empty() && (ends_batch || batch.len() >= REPLAY_RECORDS_PER_TXN) {
                            report.records_replayed += replay(
                                segments,
                                index,
                                cas,
                                &mut heads,
                                &mut last_id,
                                &mut refs,
                                (segment, generation),
                                std::mem::take(&mut batch),
                                offset,
                            )?;
                        }
                        batch.push((record, offset));
                        offset += (FRAME_HEADER_BYTES + body.len()) as u64;
                    }
                    // A record with a good checksum that does not decode was
                    // written by a newer cairn: never cut it.
                    Err(detail) => {
                        return Err(corrupt(segment, offset as u32, &format!("{detail} (written by a newer cairn?)")));
                    }
                },
                Ok(None) => {
                    damage = Some("incomplete record".to_owned());
                    break;
                }
                Err(detail) => {
                    damage = Some(detail);
                    break;
                }
            }
        }
        report.records_replayed +=
            replay(segments, index, cas, &mut heads, &mut last_id, &mut refs, (segment, generation), batch, offset)?;
        if generation > 0 {
            // A compacted file read in a rebuild is the one the index names
            // (also when compaction left it without records).
            let mut txn = index.txn();
            txn.insert(Ks::Meta, crate::compact::generation_key(segment), generation.to_be_bytes().to_vec());
            txn.commit()?;
        }
        end = Checkpoint { segment, offset };
        if let Some(reason) = damage {
            let later_segments = list.iter().any(|&s| s > segment);
            // Zeroes written ahead of the log's end (`log/ahead.rs`) are not
            // damage: in the newest segment, a tail of nothing but zeroes, no
            // longer than they can be, is cut without a report (a line at
            // info level: a disk that lost that much of a flushed write looks
            // the same). Otherwise what counts is how far past the damage the
            // bytes go, less that many zeroes at their end.
            let rest = &bytes[offset as usize..];
            let nonzero = rest.iter().rposition(|&b| b != 0).map_or(0, |last| last as u64 + 1);
            let bytes_after = nonzero.max((len - offset).saturating_sub(ZEROES_AHEAD_MAX));
            if bytes_after == 0 && !later_segments {
                segments.unmap_all();
                truncate(segments, segment, offset)?;
                tracing::info!(segment, offset, bytes = len - offset, "cut the zeroes written ahead of the log");
                break;
            }
            if later_segments || bytes_after > (GROUP_BYTES_MAX + RECORD_BYTES_MAX) as u64 {
                return Err(corrupt(
                    segment,
                    offset as u32,
                    &format!("{reason}, with {bytes_after} bytes after it; run `cairn verify`"),
                ));
            }
            segments.unmap_all();
            truncate(segments, segment, offset)?;
            let bytes = len - offset;
            tracing::warn!(segment, offset, bytes, "cut a torn tail from the log: {reason}");
            report.truncated = Some(Truncation { segment, offset, bytes, reason });
            break;
        }
    }
    if !index.journal.flushed {
        report.expired_on_open = expire_all(segments, index, cas, &mut heads, &mut refs)?;
    }
    crate::compact::remove_stale(index, segments)?;
    let refs = Refs::open(index, segments, end, refs.garbage)?;
    report.refs_behind = refs.behind.is_some();
    Ok((Tail { segment: end.segment, offset: end.offset, heads, last_id, refs }, report))
}

/// Removes every event whose `time:` retention has run out (after a close
/// that did not flush the index: a sweep whose index change was not yet in fjall's tables
/// is lost with the journal, and its content files may be gone already).
fn expire_all(segments: &Arc<Segments>, index: &Index, cas: &Cas, heads: &mut Heads, refs: &mut Refs) -> Result<u64> {
    let now_ms = crate::store::now_ms();
    let mut removed = 0;
    loop {
        let mut txn = index.txn();
        txn.track_writes();
        let mut applier = Applier::new(heads, segments, true, false);
        let step = applier.expire(&mut txn, now_ms, EXPIRE_EVENTS_PER_STEP)?;
        applier.finish(&mut txn)?;
        let garbage = std::mem::take(&mut applier.garbage);
        refs.garbage.append(&mut applier.unsure);
        txn.commit()?;
        for hash in garbage {
            cas.collect(&hash)?;
        }
        removed += step as u64;
        if step < EXPIRE_EVENTS_PER_STEP {
            return Ok(removed);
        }
    }
}

fn rebuild(index: &Index, report: &mut RecoveryReport) -> Result<()> {
    index.clear()?;
    report.rebuilt = true;
    Ok(())
}

/// Replaces a segment whose creation was cut short with a new empty one.
fn recreate(segments: &Segments, segment: u32) -> Result<()> {
    std::fs::remove_file(segments.path(segment)).map_err(StoreError::io("remove torn segment"))?;
    segments.unmap_all();
    create_segment(segments.dir(), segment)?;
    Ok(())
}

fn truncate(segments: &Segments, segment: u32, offset: u64) -> Result<()> {
    let file =
        OpenOptions::new().write(true).open(segments.path(segment)).map_err(StoreError::io("open segment to cut"))?;
    file.set_len(offset).map_err(StoreError::io("cut torn tail"))?;
    file.sync_all().map_err(StoreError::io("fdatasync after cutting torn tail"))
}

/// Applies `records` (of `segment`, each with its offset) to the index in
/// one batch, with the checkpoint `end`. Shared by recovery and the indexer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn replay(
    segments: &Arc<Segments>,
    index: &Index,
    cas: &Cas,
    heads: &mut Heads,
    last_id: &mut crate::id::EventId,
    refs: &mut Refs,
    (segment, generation): (u32, u32),
    records: Vec<(Record, u64)>,
    end: u64,
) -> Result<u64> {
    if records.is_empty() {
        return Ok(0);
    }
    let n_records = records.len() as u64;
    let first = records[0].1;
    let mut txn = index.txn();
    let removes = records.iter().any(|(record, _)| match record {
        Record::Remove { .. } => true,
        Record::Batch { events, .. } => events.iter().any(|(e, _, _)| matches!(e.ttl, crate::event::Ttl::Last { .. })),
        _ => false,
    });
    if removes {
        txn.track_writes();
    }
    let refs_live = refs.behind.is_none();
    let mut applier = Applier::new(heads, segments, removes, refs_live);
    // Their files, pinned by the writer until the index holds them.
    let stored: Vec<crate::event::Hash> = records
        .iter()
        .filter_map(|(record, _)| match record {
            Record::Batch { events, .. } => Some(events),
            _ => None,
        })
        .flatten()
        .filter(|(event, _, _)| event.payload == crate::event::Payload::Stored)
        .filter_map(|(event, _, _)| event.hash)
        .collect();
    for (record, record_offset) in records {
        match record {
            Record::Batch { key, events } => {
                let positioned: Vec<(Event, Pos)> = events
                    .into_iter()
                    .map(|(event, offset, len)| {
                        let at = record_offset + u64::from(offset);
                        (event, Pos { segment, generation, offset: at as u32, len })
                    })
                    .collect();
                if let Some((event, _)) = positioned.last() {
                    *last_id = (*last_id).max(event.id);
                }
                let idem = key.as_deref().map(|k| (k, positioned.first().map_or(0, |(e, _)| e.timestamp_ms())));
                let refs: Vec<(&Event, Pos)> = positioned.iter().map(|(e, p)| (e, *p)).collect();
                let record_end = positioned.last().map_or(0, |(_, p)| p.offset + FRAME_HEADER_BYTES as u32 + p.len);
                applier.insert_events(&mut txn, &refs, record_end, idem)?;
            }
            Record::Remove { ids } => {
                for id in ids {
                    applier.remove(&mut txn, id)?;
                }
            }
            Record::Ack { name, id } => applier.ack(&mut txn, &name, id),
            Record::ConsumerDelete { name } => applier.consumer_delete(&mut txn, &name),
            Record::State { ops } => applier.state(&mut txn, ops),
            Record::Compact { segment, from, to } => crate::compact::apply(&mut txn, segments, segment, from, to)?,
            Record::Floor { floors } => {
                if let Some(newest) = floors.iter().map(|(_, _, id)| *id).max() {
                    *last_id = (*last_id).max(newest);
                }
                applier.floor(&txn, floors)?;
            }
        }
    }
    if generation > 0 {
        // Replaying a compacted file (a rebuild): the index names it.
        txn.insert(Ks::Meta, crate::compact::generation_key(segment), generation.to_be_bytes().to_vec());
    }
    applier.finish(&mut txn)?;
    let garbage = std::mem::take(&mut applier.garbage);
    refs.garbage.append(&mut applier.unsure);
    let checkpoint = Checkpoint { segment, offset: end };
    txn.insert(Ks::Meta, META_APPLIED.to_vec(), encode_checkpoint(checkpoint).to_vec());
    txn.insert(Ks::Meta, META_LAST_ID.to_vec(), last_id.to_bytes().to_vec());
    txn.commit()?;
    index.applied(end.saturating_sub(first))?;
    for hash in &stored {
        cas.unpin(hash);
    }
    for hash in garbage {
        cas.collect(&hash)?;
    }
    Ok(n_records)
}
