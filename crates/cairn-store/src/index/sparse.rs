//! Sparse indexes over the log. The log is ordered by id, and each batch
//! record holds its events back to back, so the index needs an entry (an
//! anchor) only every `ANCHOR_EVENTS` events of a record: a lookup finds the
//! last anchor at or before what it wants and walks the frames from there.
//! Removed events stay in the log; the index marks them removed.
//!
//! - `Ks::Ids`: id of the first event of a block → [`Anchor`] (the block is
//!   the next `ANCHOR_EVENTS` events of the record).
//! - `Ks::Topics`: topic, 0x00, seq of the first event of the topic's block
//!   → [`Anchor`] with the number of that topic's events in it.
//! - `Ks::Removed`: id → empty; `Ks::RemovedSeq`: topic, 0x00, seq → empty.

use crate::error::{Result, StoreError};
use crate::id::EventId;
use crate::index::{Index, Ks, strip};
use crate::log::codec::{self, FRAME_HEADER_BYTES, Pos};
use crate::log::segment::{Segments, corrupt};

/// Events per block: the most a lookup walks.
pub(crate) const ANCHOR_EVENTS: usize = 256;

/// Where a block of events starts, and where its record's events end.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Anchor {
    pub(crate) segment: u32,
    /// The segment's file (see `Segments`); stored only when not 0, so
    /// anchors into files as written keep their 16 bytes.
    pub(crate) generation: u32,
    pub(crate) offset: u32,
    pub(crate) end: u32,
    /// Events in the block (of the topic, for topic anchors).
    pub(crate) n: u32,
}

impl Anchor {
    pub(crate) fn to_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20);
        out.extend_from_slice(&self.segment.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.end.to_be_bytes());
        out.extend_from_slice(&self.n.to_be_bytes());
        if self.generation != 0 {
            out.extend_from_slice(&self.generation.to_be_bytes());
        }
        out
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Anchor> {
        let field = |at: usize| {
            bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes).ok_or_else(|| {
                StoreError::Corrupt { location: "index".to_owned(), detail: "malformed anchor".to_owned() }
            })
        };
        let generation = if bytes.len() >= 20 { field(16)? } else { 0 };
        Ok(Anchor { segment: field(0)?, generation, offset: field(4)?, end: field(8)?, n: field(12)? })
    }
}

/// One event found by walking a block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Located {
    pub(crate) pos: Pos,
    pub(crate) id: EventId,
    pub(crate) seq: u64,
}

/// The events of `anchor`'s block, in log order: all of them (up to
/// `ANCHOR_EVENTS`) or, with `topic`, the anchor's `n` events of that topic.
/// Only events whose topic's bytes `keep` accepts are returned.
pub(crate) fn walk(
    segments: &Segments,
    anchor: Anchor,
    topic: Option<&str>,
    keep: impl Fn(&[u8]) -> bool,
    out: &mut Vec<Located>,
) -> Result<()> {
    let file = segments.file(anchor.segment, anchor.generation)?;
    let end = anchor.end as usize;
    let mut offset = anchor.offset as usize;
    // A plain file gives all of the record at once; a compressed one a
    // block at a time.
    let (base, chunk) = file.window(offset, (offset + FRAME_HEADER_BYTES).min(end), end)?;
    let mut window = crate::log::compressed::Window { base, chunk };
    let mut n_walked = 0usize;
    let mut n_found = 0u32;
    while offset < end {
        if topic.is_none() && n_walked == ANCHOR_EVENTS {
            break;
        }
        if topic.is_some() && n_found == anchor.n {
            break;
        }
        if !window.covers(offset, offset + FRAME_HEADER_BYTES) {
            let (base, chunk) = file.window(offset, offset + FRAME_HEADER_BYTES, end)?;
            window = crate::log::compressed::Window { base, chunk };
        }
        let header = window
            .at(offset, offset + FRAME_HEADER_BYTES)
            .ok_or_else(|| corrupt(anchor.segment, offset as u32, "frame header past the record"))?;
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let frame_end = offset + FRAME_HEADER_BYTES + len;
        if frame_end > end {
            return Err(corrupt(anchor.segment, offset as u32, "event frame past the record"));
        }
        if !window.covers(offset, frame_end) {
            let (base, chunk) = file.window(offset, frame_end, end)?;
            window = crate::log::compressed::Window { base, chunk };
        }
        let body = window
            .at(offset + FRAME_HEADER_BYTES, frame_end)
            .ok_or_else(|| corrupt(anchor.segment, offset as u32, "event frame past the record"))?;
        let (id, seq, event_topic) =
            peek(body).ok_or_else(|| corrupt(anchor.segment, offset as u32, "event too short"))?;
        n_walked += 1;
        let in_topic = topic.is_none_or(|t| t.as_bytes() == event_topic);
        if in_topic {
            n_found += 1;
            if keep(event_topic) {
                let pos = Pos {
                    segment: anchor.segment,
                    generation: anchor.generation,
                    offset: offset as u32,
                    len: len as u32,
                };
                out.push(Located { pos, id, seq });
            }
        }
        offset = frame_end;
    }
    Ok(())
}

/// Id, seq and topic (unchecked bytes) of an event body, without decoding
/// the rest.
pub(crate) fn peek(body: &[u8]) -> Option<(EventId, u64, &[u8])> {
    let id = EventId::from_bytes(body.get(0..16)?.try_into().ok()?);
    let seq = u64::from_le_bytes(body.get(16..24)?.try_into().ok()?);
    Some((id, seq, codec::peek_topic(body)?))
}

/// `peek`, with the topic checked to be text.
pub(crate) fn peek_str(body: &[u8]) -> Option<(EventId, u64, &str)> {
    let (id, seq, topic) = peek(body)?;
    Some((id, seq, std::str::from_utf8(topic).ok()?))
}

/// Where event `id` is in the log, if the index has it and it is not removed.
pub(crate) fn find_id(index: &Index, segments: &Segments, id: EventId) -> Result<Option<Pos>> {
    let id_bytes = id.to_bytes();
    let guard = index.range(Ks::Ids, std::ops::Bound::Unbounded, std::ops::Bound::Included(&id_bytes)).next_back();
    let Some(guard) = guard else { return Ok(None) };
    let anchor = Anchor::from_bytes(&guard.value()?)?;
    let mut block = Vec::with_capacity(ANCHOR_EVENTS);
    walk(segments, anchor, None, |_| true, &mut block)?;
    let Some(found) = block.iter().find(|located| located.id == id) else { return Ok(None) };
    if index.get(Ks::Removed, &id_bytes)?.is_some() {
        return Ok(None);
    }
    Ok(Some(found.pos))
}

/// Skips keys of a sorted "removed" index while a scan moves in the same
/// order: each removed key is looked at once.
pub(crate) struct RemovedFilter {
    iter: crate::read::Guards,
    next: Option<Vec<u8>>,
    /// The iterator has nothing more: no key further on is removed (asking
    /// fjall again for each event costs a merge of its sources every time).
    exhausted: bool,
    reverse: bool,
}

impl RemovedFilter {
    /// Removed keys of `ks` from `start` onwards (in the scan's direction).
    pub(crate) fn new(
        index: &Index,
        snapshot: Option<&fjall::Snapshot>,
        ks: Ks,
        lo: &[u8],
        hi: &[u8],
        reverse: bool,
    ) -> RemovedFilter {
        let iter = index.range_at(snapshot, ks, std::ops::Bound::Included(lo), std::ops::Bound::Included(hi));
        let iter: crate::read::Guards = if reverse { Box::new(iter.rev()) } else { Box::new(iter) };
        RemovedFilter { iter, next: None, exhausted: false, reverse }
    }

    /// Whether no key from here on can be removed.
    pub(crate) fn exhausted(&self) -> bool {
        // Set only once the iterator ended, when no key is pending.
        self.exhausted
    }

    /// Whether `key` (a suffix: id bytes, or topic 0x00 seq) is removed.
    /// Keys must be asked for in scan order.
    pub(crate) fn contains(&mut self, key: &[u8]) -> Result<bool> {
        loop {
            if self.next.is_none() {
                if self.exhausted {
                    return Ok(false);
                }
                match self.iter.next() {
                    Some(guard) => self.next = Some(strip(&guard.key()?).to_vec()),
                    None => {
                        self.exhausted = true;
                        return Ok(false);
                    }
                }
            }
            let next = self.next.as_deref().expect("set above");
            let behind = if self.reverse { next > key } else { next < key };
            if behind {
                self.next = None;
                continue;
            }
            return Ok(next == key);
        }
    }
}
