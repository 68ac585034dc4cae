//! `verify`: reads the whole log and content store and checks every record's
//! checksum, the order invariants, every content hash, and that the index
//! points at the right events. Reports problems; repairs nothing.

use std::collections::HashMap;

use crate::cas;
use crate::error::Result;
use crate::event::Payload;
use crate::id::EventId;
use crate::index::sparse::Located;
use crate::log::codec::{self, FRAME_HEADER_BYTES, Pos, Record};
use crate::log::segment::{SEGMENT_HEADER_BYTES, check_header};
use crate::read::Scan;
use crate::store::Shared;
use crate::topic::Pattern;

/// What `verify` found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Segments read.
    pub segments: u64,
    /// Records read.
    pub records: u64,
    /// Events in the log (removed ones included: removal is an index matter).
    pub events: u64,
    /// Events the index serves.
    pub indexed: u64,
    /// Content files checked.
    pub content_files: u64,
    /// Everything wrong, one line each, naming the place.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub(crate) fn verify(shared: &Shared) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut last_id = EventId::MIN;
    let mut seqs: HashMap<String, u64> = HashMap::new();
    // The index, read in id order alongside the log (also in id order): one
    // pass over both instead of a lookup per event.
    let _compaction = shared.compaction.lock().expect("compaction lock");
    let mut indexed = IndexCursor::new(shared)?;
    // Compaction leaves gaps in seqs where it dropped removed events: a
    // gap is sound where a compacted segment lies between two events.
    let mut compacted_before = false;
    let mut last_segment_of: HashMap<String, bool> = HashMap::new();
    for segment in shared.segments.list()? {
        report.segments += 1;
        let generation = crate::compact::generation(&shared.index, segment)?;
        if generation > 0 {
            compacted_before = true;
            for seen_compacted in last_segment_of.values_mut() {
                *seen_compacted = true;
            }
        }
        // The active segment is read to where the log is committed: past it
        // a group may be being written (a large record's header comes last),
        // and zeroes written ahead. Taken before the file's length: a roll
        // in between cuts those zeroes, and that length would read past it.
        let committed = shared.progress.committed_end();
        let mut len =
            std::fs::metadata(shared.segments.path_gen(segment, generation)).map(|m| m.len()).unwrap_or(0) as usize;
        if segment == committed.segment {
            len = len.min(committed.offset as usize);
        } else if segment > committed.segment {
            // Rolled to after the committed end was taken: nothing of it is
            // committed yet but its header.
            len = len.min(SEGMENT_HEADER_BYTES as usize);
        }
        // A compressed file (a compacted segment) is read decompressed;
        // a damaged block is reported like a damaged record.
        let data = match shared.segments.file(segment, generation).and_then(|file| file.whole(len)) {
            Ok(data) => data,
            Err(error) => {
                report.problems.push(format!("segment {segment:010}: {error}"));
                continue;
            }
        };
        let bytes: &[u8] = &data;
        if let Err(detail) = check_header(bytes, segment) {
            report.problems.push(format!("segment {segment:010}: {detail}"));
            continue;
        }
        let mut offset = SEGMENT_HEADER_BYTES as usize;
        while offset < bytes.len() {
            let body = match codec::unframe(&bytes[offset..]) {
                Ok(Some(body)) => body,
                Ok(None) => {
                    report
                        .problems
                        .push(format!("segment {segment:010} offset {offset}: incomplete record at the end"));
                    break;
                }
                Err(detail) => {
                    report.problems.push(format!("segment {segment:010} offset {offset}: {detail}"));
                    break;
                }
            };
            report.records += 1;
            match codec::decode_record(body) {
                Ok(Record::Batch { events, .. }) => {
                    for (event, event_offset, event_len) in events {
                        report.events += 1;
                        let place = format!("segment {segment:010} offset {offset}, event {}", event.id);
                        if event.id <= last_id {
                            report.problems.push(format!("{place}: id is not after the previous id {last_id}"));
                        }
                        last_id = last_id.max(event.id);
                        let gap_allowed = last_segment_of.insert(event.topic.as_str().to_owned(), generation > 0);
                        if let Some(previous) = seqs.get(event.topic.as_str()) {
                            let gapless = event.seq == previous + 1
                                || (event.seq > *previous && (event.imported || gap_allowed == Some(true)))
                                || (event.seq > *previous && generation > 0);
                            if !gapless {
                                report.problems.push(format!(
                                    "{place}: seq {} of topic {} follows seq {previous}",
                                    event.seq, event.topic
                                ));
                            }
                        } else if event.seq != 0 && !event.imported && !compacted_before {
                            report.problems.push(format!("{place}: topic {} starts at seq {}", event.topic, event.seq));
                        }
                        seqs.insert(event.topic.as_str().to_owned(), event.seq);
                        if let (Payload::Inline(bytes), Some(hash)) = (&event.payload, event.hash)
                            && let Err(error) = cas::verify(&hash, bytes, || place.clone())
                        {
                            report.problems.push(error.to_string());
                        }
                        let pos = Pos {
                            segment,
                            generation,
                            offset: (offset as u64 + u64::from(event_offset)) as u32,
                            len: event_len,
                        };
                        match indexed.seek(event.id) {
                            Ok(Some(indexed_pos)) if indexed_pos != pos => {
                                report.problems.push(format!("{place}: the index points elsewhere ({indexed_pos:?})"));
                            }
                            Ok(Some(_)) => report.indexed += 1,
                            // Not served by the index: removed.
                            Ok(None) => {}
                            Err(error) => report.problems.push(format!("{place}: index lookup failed: {error}")),
                        }
                    }
                }
                Ok(_) => {}
                Err(detail) => report.problems.push(format!("segment {segment:010} offset {offset}: {detail}")),
            }
            offset += FRAME_HEADER_BYTES + body.len();
        }
    }
    for stray in indexed.strays()? {
        report.problems.push(format!("the index serves event {stray}, which the log does not hold in id order"));
    }
    for (hash, path) in shared.cas.list()? {
        report.content_files += 1;
        match std::fs::read(&path) {
            Ok(bytes) => {
                if let Err(error) = cas::verify(&hash, &bytes, || format!("content file {}", path.display())) {
                    report.problems.push(error.to_string());
                }
            }
            Err(error) => report.problems.push(format!("content file {}: {error}", path.display())),
        }
    }
    Ok(report)
}

/// The events the index serves, in id order, consumed while the log is read.
struct IndexCursor<'a> {
    shared: &'a Shared,
    scan: Scan,
    next: Option<Located>,
    strays: Vec<EventId>,
}

impl<'a> IndexCursor<'a> {
    fn new(shared: &'a Shared) -> Result<IndexCursor<'a>> {
        let mut scan = Scan::open(&shared.index, &shared.segments, &Pattern::all(), None, None, false)?;
        let next = scan.next_located(&shared.segments)?;
        Ok(IndexCursor { shared, scan, next, strays: Vec::new() })
    }

    /// Where the index has event `id` (the next event of the log), if it
    /// serves it. Index entries before `id` that the log skipped are left
    /// for `rest` to report.
    fn seek(&mut self, id: EventId) -> Result<Option<Pos>> {
        while let Some(located) = self.next {
            if located.id > id {
                return Ok(None);
            }
            self.next = self.scan.next_located(&self.shared.segments)?;
            if located.id == id {
                return Ok(Some(located.pos));
            }
            self.strays.push(located.id);
        }
        Ok(None)
    }

    /// Indexed events the log does not hold where the index says: the ones
    /// skipped by `seek` and any left after the log's end.
    fn strays(mut self) -> Result<Vec<EventId>> {
        while let Some(located) = self.next {
            self.strays.push(located.id);
            self.next = self.scan.next_located(&self.shared.segments)?;
        }
        Ok(self.strays)
    }
}
