//! `verify`: reads the whole log and content store and checks every record's
//! checksum, the order invariants, every content hash, and that the index
//! points at the right events. Reports problems; repairs nothing.

use std::collections::HashMap;

use crate::cas;
use crate::error::Result;
use crate::event::Payload;
use crate::id::EventId;
use crate::log::codec::{self, FRAME_HEADER_BYTES, Pos, Record};
use crate::log::segment::{SEGMENT_HEADER_BYTES, check_header};
use crate::store::Shared;

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
    for segment in shared.segments.list()? {
        report.segments += 1;
        let map = shared.segments.bytes(segment)?;
        let len = std::fs::metadata(shared.segments.path(segment)).map(|m| m.len()).unwrap_or(0) as usize;
        let bytes = &map[..len.min(map.len())];
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
                        if let Some(previous) = seqs.get(event.topic.as_str()) {
                            let gapless = event.seq == previous + 1 || (event.imported && event.seq > *previous);
                            if !gapless {
                                report.problems.push(format!(
                                    "{place}: seq {} of topic {} follows seq {previous}",
                                    event.seq, event.topic
                                ));
                            }
                        } else if event.seq != 0 && !event.imported {
                            report.problems.push(format!("{place}: topic {} starts at seq {}", event.topic, event.seq));
                        }
                        seqs.insert(event.topic.as_str().to_owned(), event.seq);
                        if let (Payload::Inline(bytes), Some(hash)) = (&event.payload, event.hash)
                            && let Err(error) = cas::verify(&hash, bytes, || place.clone())
                        {
                            report.problems.push(error.to_string());
                        }
                        let pos =
                            Pos { segment, offset: (offset as u64 + u64::from(event_offset)) as u32, len: event_len };
                        match crate::index::sparse::find_id(&shared.index, &shared.segments, event.id) {
                            Ok(Some(indexed)) if indexed != pos => {
                                report.problems.push(format!("{place}: the index points elsewhere ({indexed:?})"));
                            }
                            Ok(Some(_)) => report.indexed += 1,
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
