//! The indexer: the only writer of the index once the store is open. It
//! follows the committed log (as `Progress` reports it), applies its records
//! with the same code recovery uses, and runs retention sweeps. Reads wait
//! for it through `Progress::barrier`.

use std::sync::Arc;

use crate::error::{Result, StoreError};
use crate::id::EventId;
use crate::index::refs::Refs;
use crate::index::{Applier, Checkpoint, Heads};
use crate::limits::{EXPIRE_EVENTS_PER_STEP, INDEX_RECORDS_PER_BATCH};
use crate::log::codec::{self, FRAME_HEADER_BYTES};
use crate::log::recovery::replay;
use crate::log::segment::{SEGMENT_HEADER_BYTES, corrupt};
use crate::progress::Work;
use crate::store::Shared;

/// Runs until the store closes (after indexing everything committed) or the
/// index fails (then the store is poisoned and readers get the reason).
pub(crate) fn run(shared: Arc<Shared>, mut heads: Heads, mut last_id: EventId, mut refs: Refs) {
    // While the content references lag, `next_work` does not wait: each
    // turn does what is due, then one step of their catch-up.
    while let Some(work) = shared.progress.next_work() {
        let done = step(&shared, &mut heads, &mut last_id, &mut refs, work)
            .and_then(|()| if refs.lagging() { crate::index::refs::catch_up(&shared, &mut refs) } else { Ok(()) });
        if let Err(error) = done {
            let reason = format!("index update failed: {error}");
            shared.poison(&reason);
            shared.progress.fail(reason);
            return;
        }
    }
    if let Err(error) = crate::index::refs::at_close(&shared, &mut refs) {
        tracing::warn!("writing the content references at close failed (the next open catches them up): {error}");
    }
}

fn step(shared: &Shared, heads: &mut Heads, last_id: &mut EventId, refs: &mut Refs, work: Work) -> Result<()> {
    let mut pos = work.from;
    while pos < work.to {
        pos = index_chunk(shared, heads, last_id, refs, pos, work.to)?;
    }
    for (marks, reply) in work.forget {
        let mut txn = shared.index.txn();
        for (id, topic_key, reference) in marks {
            txn.remove(crate::index::Ks::Removed, id.to_vec());
            txn.remove(crate::index::Ks::RemovedSeq, topic_key);
            if let Some(reference) = reference {
                crate::index::refs::remove(&shared.index, &reference);
            }
        }
        // The references' deletions reach the keyspace before the marks go:
        // the events left the log with compaction, so a deletion lost in a
        // crash after the marks went would leave references that count as
        // live for good (their files never collected).
        let result = crate::index::refs::before_forgetting(shared, refs).and_then(|()| txn.commit());
        let failed = result.as_ref().err().map(ToString::to_string);
        let _ = reply.send(result);
        if let Some(reason) = failed {
            return Err(StoreError::Index(reason));
        }
    }
    for (now_ms, reply) in work.expire {
        let result = expire(shared, heads, refs, now_ms);
        let failed = result.as_ref().err().map(ToString::to_string);
        let _ = reply.send(result);
        if let Some(reason) = failed {
            return Err(StoreError::Index(reason));
        }
    }
    crate::index::refs::after_removals(shared, refs)
}

/// Indexes records from `from` towards `to`; returns where it stopped.
fn index_chunk(
    shared: &Shared,
    heads: &mut Heads,
    last_id: &mut EventId,
    refs: &mut Refs,
    from: Checkpoint,
    to: Checkpoint,
) -> Result<Checkpoint> {
    let segments = &shared.segments;
    let end = if from.segment < to.segment {
        std::fs::metadata(segments.path(from.segment))
            .map_err(StoreError::io(format!("stat segment {}", from.segment)))?
            .len()
    } else {
        to.offset
    };
    if from.offset >= end {
        // The rest of this segment is indexed; the log continues in the next.
        let next = Checkpoint { segment: from.segment + 1, offset: SEGMENT_HEADER_BYTES };
        shared.progress.advance_indexed(next, 0, EventId::MIN);
        return Ok(next);
    }
    let map = segments.bytes(from.segment, 0)?;
    let bytes = map.get(..end as usize).ok_or_else(|| corrupt(from.segment, from.offset as u32, "past the map"))?;
    let mut offset = from.offset;
    let mut records = Vec::new();
    let mut decoder = codec::Decoder::for_index();
    while offset < end && records.len() < INDEX_RECORDS_PER_BATCH {
        let body = codec::unframe_trusted(&bytes[offset as usize..])
            .ok_or_else(|| corrupt(from.segment, offset as u32, "committed record is incomplete"))?;
        let record = codec::decode_record_with(body, &mut decoder)
            .map_err(|detail| corrupt(from.segment, offset as u32, &detail))?;
        // A compaction record is applied alone (see `compact::apply`).
        let compaction = matches!(record, codec::Record::Compact { .. });
        if compaction && !records.is_empty() {
            break;
        }
        records.push((record, offset));
        offset += (FRAME_HEADER_BYTES + body.len()) as u64;
        if compaction {
            break;
        }
    }
    replay(segments, &shared.index, &shared.cas, heads, last_id, refs, (from.segment, 0), records, offset)?;
    let next = Checkpoint { segment: from.segment, offset };
    crate::index::refs::after_batch(shared, refs, next)?;
    shared.progress.advance_indexed(next, offset - from.offset, *last_id);
    Ok(next)
}

/// Removes events whose `time:` retention ran out by `now_ms`.
fn expire(shared: &Shared, heads: &mut Heads, refs: &mut Refs, now_ms: u64) -> Result<usize> {
    let mut txn = shared.index.txn();
    txn.track_writes();
    let mut applier = Applier::new(heads, &shared.segments, true, refs.behind.is_none());
    let removed = applier.expire(&mut txn, now_ms, EXPIRE_EVENTS_PER_STEP)?;
    applier.finish(&mut txn)?;
    let garbage = std::mem::take(&mut applier.garbage);
    refs.garbage.append(&mut applier.unsure);
    txn.commit()?;
    for hash in garbage {
        shared.cas.collect(&hash)?;
    }
    Ok(removed)
}
