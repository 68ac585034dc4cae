//! The on-disk encoding of log records and events. Pure code, no I/O.
//!
//! A record is `[body_len u32 LE][crc32c(body) u32 LE][body]`. The body is
//! `[FORMAT_VERSION u8][kind u8][...]`. Inside a batch record each event is
//! framed the same way (`[len][crc][event]`), so one event can be read and
//! verified on its own by its position. See ARCHITECTURE.md, "On-disk format".

use std::sync::Arc;

use crate::event::{Event, EventRef, Hash, InlineBytes, Payload, PayloadRef, Ttl};
use crate::id::EventId;
use crate::topic::Topic;

/// Version byte at the start of every record body.
pub(crate) const FORMAT_VERSION: u8 = 1;

/// Bytes of a frame header: length and crc.
pub(crate) const FRAME_HEADER_BYTES: usize = 8;

pub(crate) const KIND_BATCH: u8 = 1;
const KIND_REMOVE: u8 = 2;
const KIND_ACK: u8 = 3;
const KIND_CONSUMER_DELETE: u8 = 4;
const KIND_STATE: u8 = 5;
const KIND_COMPACT: u8 = 6;
const KIND_FLOOR: u8 = 7;

const STATE_PUT: u8 = 1;
const STATE_DELETE: u8 = 2;

const FLAG_IMPORTED: u8 = 1;
const FLAG_HASH: u8 = 2;
const FLAG_TYPE: u8 = 4;
const FLAG_META: u8 = 8;
const FLAG_USER: u8 = 16;

const PAYLOAD_NONE: u8 = 0;
const PAYLOAD_INLINE: u8 = 1;
const PAYLOAD_STORED: u8 = 2;

const TTL_FOREVER: u8 = 0;
const TTL_EPHEMERAL: u8 = 1;
const TTL_TIME: u8 = 2;
const TTL_LAST: u8 = 3;

/// Where an event's frame lives: segment number, byte offset of its frame
/// header within the segment, and the length of its body.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Pos {
    pub(crate) segment: u32,
    /// The segment's file: 0 as written, higher once compacted.
    pub(crate) generation: u32,
    pub(crate) offset: u32,
    pub(crate) len: u32,
}

/// Appends a frame (`[len][crc][body]`) whose body `fill` writes.
pub(crate) fn frame(out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    fill(out);
    let body_len = out.len() - start - FRAME_HEADER_BYTES;
    let crc = crate::log::crc::crc32c(&out[start + FRAME_HEADER_BYTES..]);
    let len = u32::try_from(body_len).expect("record bodies are bounded by RECORD_BYTES_MAX");
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads a frame header from `bytes` and returns the body if it is complete
/// and its crc matches. `Ok(None)` means "incomplete"; an error means damage.
pub(crate) fn unframe(bytes: &[u8]) -> Result<Option<&[u8]>, String> {
    let Some(header) = bytes.get(..FRAME_HEADER_BYTES) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len < 2 {
        return Err(format!("frame length {len} is too small"));
    }
    let Some(body) = bytes.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len) else {
        return Ok(None);
    };
    if crate::log::crc::crc32c(body) != crc {
        return Err("checksum mismatch".to_owned());
    }
    Ok(Some(body))
}

/// The body of the frame at the start of `bytes`, without checking its crc:
/// for the indexer, which reads back records this process just wrote and
/// made durable (every event read later is still checked against its own crc).
pub(crate) fn unframe_trusted(bytes: &[u8]) -> Option<&[u8]> {
    let header = bytes.get(..FRAME_HEADER_BYTES)?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    bytes.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len)
}

/// From this many events a batch record is written while it is encoded
/// ([`encode_batch_streamed`]).
pub(crate) const STREAM_BATCH_EVENTS: usize = 8192;

/// Bytes of a streamed record handed to the sink at a time.
const STREAM_CHUNK_BYTES: usize = 1024 * 1024;

/// Encodes a batch record holding `events`, each in its own frame.
pub(crate) fn encode_batch(out: &mut Vec<u8>, key: Option<&str>, events: &[&Event]) {
    frame(out, |body| {
        body.push(FORMAT_VERSION);
        body.push(KIND_BATCH);
        put_short(body, key.unwrap_or("").as_bytes());
        body.extend_from_slice(&(events.len() as u32).to_le_bytes());
        for event in events {
            frame(body, |event_body| encode_event(event_body, event));
        }
    });
}

/// The bytes of [`encode_batch`], handed to `sink` in pieces with their
/// offset in the record as they are encoded, body first; returns the
/// record's header (length and CRC), which belongs at offset 0 and is known
/// last. A scoped helper encodes and checksums the second half of the
/// events while this thread encodes the first and hands it over a chunk at
/// a time; the CRCs are joined with `crc32c_combine`. The writer writes
/// each piece as it comes and the header after them, so the disk and the
/// page cache work while the record is still being encoded (until the
/// header is written the record reads as a torn tail, which recovery cuts).
pub(crate) fn encode_batch_streamed(
    key: Option<&str>,
    events: &[&Event],
    mut sink: impl FnMut(&[u8], u64) -> std::io::Result<()>,
) -> std::io::Result<[u8; FRAME_HEADER_BYTES]> {
    let (first, second) = events.split_at(events.len() / 2);
    let encode = |buf: &mut Vec<u8>, events: &[&Event]| {
        for event in events {
            frame(buf, |event_body| encode_event(event_body, event));
        }
    };
    let mut chunk = Vec::with_capacity(2 * STREAM_CHUNK_BYTES);
    chunk.push(FORMAT_VERSION);
    chunk.push(KIND_BATCH);
    put_short(&mut chunk, key.unwrap_or("").as_bytes());
    chunk.extend_from_slice(&(events.len() as u32).to_le_bytes());
    let mut at = FRAME_HEADER_BYTES as u64;
    let mut crc = 0u32;
    // Hands `chunk` over (adding it to `crc` if given) and empties it.
    let mut flush = |chunk: &mut Vec<u8>, at: &mut u64, crc: Option<&mut u32>| -> std::io::Result<()> {
        if let Some(crc) = crc {
            *crc = crc32c::crc32c_append(*crc, chunk);
        }
        sink(chunk, *at)?;
        *at += chunk.len() as u64;
        chunk.clear();
        Ok(())
    };
    // The second half, encoded and checksummed in one piece.
    let encode_second = || {
        let mut part = Vec::new();
        encode(&mut part, second);
        let crc = crc32c::crc32c(&part);
        (part, crc)
    };
    std::thread::scope(|scope| {
        let helper =
            std::thread::Builder::new().name("cairn-encode".to_owned()).spawn_scoped(scope, encode_second).ok();
        for event in first {
            frame(&mut chunk, |event_body| encode_event(event_body, event));
            if chunk.len() >= STREAM_CHUNK_BYTES {
                flush(&mut chunk, &mut at, Some(&mut crc))?;
            }
        }
        flush(&mut chunk, &mut at, Some(&mut crc))?;
        let (mut part, crc_part) = match helper {
            Some(helper) => helper.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            // No thread to be had: the second half here.
            None => encode_second(),
        };
        // Checksummed where it was encoded: joined, not read again.
        let len = part.len();
        flush(&mut part, &mut at, None)?;
        crc = crc32c::crc32c_combine(crc, crc_part, len);
        let len = u32::try_from(at - FRAME_HEADER_BYTES as u64).expect("record bodies are bounded by RECORD_BYTES_MAX");
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..].copy_from_slice(&crc.to_le_bytes());
        Ok(header)
    })
}

/// Appends one event's frame, for a batch record closed later by
/// [`encode_batch_of_frames`].
pub(crate) fn encode_event_frame(out: &mut Vec<u8>, event: &Event) {
    frame(out, |event_body| encode_event(event_body, event));
}

/// Encodes a batch record (without idempotency key) of `count` event frames
/// already encoded back to back in `frames`: the same bytes as
/// [`encode_batch`] of those events.
pub(crate) fn encode_batch_of_frames(out: &mut Vec<u8>, count: usize, frames: &[u8]) {
    frame(out, |body| {
        body.push(FORMAT_VERSION);
        body.push(KIND_BATCH);
        put_short(body, b"");
        body.extend_from_slice(&(count as u32).to_le_bytes());
        body.extend_from_slice(frames);
    });
}

/// Encodes a batch record with idempotency key `key` (empty for none) of
/// `count` event frames copied from another record (compaction).
pub(crate) fn encode_batch_of_raw_frames(out: &mut Vec<u8>, key: &[u8], count: usize, frames: &[u8]) {
    frame(out, |body| {
        body.push(FORMAT_VERSION);
        body.push(KIND_BATCH);
        put_short(body, key);
        body.extend_from_slice(&(count as u32).to_le_bytes());
        body.extend_from_slice(frames);
    });
}

/// Encodes a remove record.
pub(crate) fn encode_remove(out: &mut Vec<u8>, ids: &[EventId]) {
    frame(out, |body| {
        body.push(FORMAT_VERSION);
        body.push(KIND_REMOVE);
        body.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        for id in ids {
            body.extend_from_slice(&id.to_bytes());
        }
    });
}

/// Encodes a consumer ack record.
pub(crate) fn encode_ack(out: &mut Vec<u8>, name: &str, id: EventId) {
    frame(out, |body| {
        body.push(FORMAT_VERSION);
        body.push(KIND_ACK);
        put_short(body, name.as_bytes());
        body.extend_from_slice(&id.to_bytes());
    });
}

/// Encodes a consumer delete record.
pub(crate) fn encode_consumer_delete(out: &mut Vec<u8>, name: &str) {
    frame(out, |body| {
        body.push(FORMAT_VERSION);
        body.push(KIND_CONSUMER_DELETE);
        put_short(body, name.as_bytes());
    });
}

/// Encodes a compaction record: generation `to` of `segment` replaces
/// generation `from` (see `compact.rs`).
pub(crate) fn encode_compact(out: &mut Vec<u8>, segment: u32, from: u32, to: u32) {
    frame(out, |body| {
        body.push(FORMAT_VERSION);
        body.push(KIND_COMPACT);
        for field in [segment, from, to] {
            body.extend_from_slice(&field.to_le_bytes());
        }
    });
}

/// Encodes a floor record: for each topic, the newest seq and id it ever
/// had where compaction dropped that event (so an index rebuilt from the
/// log never gives those seqs again).
pub(crate) fn encode_floor(out: &mut Vec<u8>, floors: &[(String, u64, EventId)]) {
    frame(out, |body| {
        body.push(FORMAT_VERSION);
        body.push(KIND_FLOOR);
        body.extend_from_slice(&(floors.len() as u32).to_le_bytes());
        for (topic, seq, id) in floors {
            put_short(body, topic.as_bytes());
            body.extend_from_slice(&seq.to_le_bytes());
            body.extend_from_slice(&id.to_bytes());
        }
    });
}

/// Encodes a state record: puts and deletes of front-end state (consumer
/// groups), applied to the index in order.
pub(crate) fn encode_state(out: &mut Vec<u8>, ops: &[StateOp]) {
    frame(out, |body| {
        body.push(FORMAT_VERSION);
        body.push(KIND_STATE);
        body.extend_from_slice(&(ops.len() as u32).to_le_bytes());
        for op in ops {
            match op {
                StateOp::Put(key, value) => {
                    body.push(STATE_PUT);
                    put_long(body, key);
                    put_long(body, value);
                }
                StateOp::Delete(key) => {
                    body.push(STATE_DELETE);
                    put_long(body, key);
                }
            }
        }
    });
}

fn put_long(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u8::try_from(bytes.len()).expect("short strings are validated to <= 255 bytes");
    out.push(len);
    out.extend_from_slice(bytes);
}

/// The exact length of an event's frame as [`encode_event_frame`] writes it.
pub(crate) fn event_frame_bytes(event: &Event) -> usize {
    FRAME_HEADER_BYTES
        + EVENT_FIXED_BYTES
        + event.topic.as_str().len()
        + event.kind.as_ref().map_or(0, |kind| 1 + kind.len())
        + event.user.as_ref().map_or(0, |user| 1 + user.len())
        + event.meta.as_ref().map_or(0, |meta| 4 + meta.len())
        + if event.hash.is_some() { 32 } else { 0 }
        + event.inline_len()
}

/// The exact length of a batch record with idempotency key `key` around
/// event frames of `frames` bytes.
pub(crate) fn batch_record_bytes(key: Option<&str>, frames: usize) -> usize {
    FRAME_HEADER_BYTES + 2 + 1 + key.map_or(0, str::len) + 4 + frames
}

/// Encodes one event body (no frame).
pub(crate) fn encode_event(out: &mut Vec<u8>, event: &Event) {
    out.extend_from_slice(&event.id.to_bytes());
    out.extend_from_slice(&event.seq.to_le_bytes());
    let mut flags = 0;
    if event.imported {
        flags |= FLAG_IMPORTED;
    }
    if event.hash.is_some() {
        flags |= FLAG_HASH;
    }
    if event.kind.is_some() {
        flags |= FLAG_TYPE;
    }
    if event.meta.is_some() {
        flags |= FLAG_META;
    }
    if event.user.is_some() {
        flags |= FLAG_USER;
    }
    out.push(flags);
    out.push(match event.payload {
        Payload::None => PAYLOAD_NONE,
        Payload::Inline(_) => PAYLOAD_INLINE,
        Payload::Stored => PAYLOAD_STORED,
    });
    let (ttl_kind, ttl_value) = match event.ttl {
        Ttl::Forever => (TTL_FOREVER, 0),
        Ttl::Ephemeral => (TTL_EPHEMERAL, 0),
        Ttl::Time { ms } => (TTL_TIME, ms),
        Ttl::Last { n } => (TTL_LAST, n),
    };
    out.push(ttl_kind);
    out.extend_from_slice(&ttl_value.to_le_bytes());
    out.extend_from_slice(&event.size.to_le_bytes());
    put_short(out, event.topic.as_str().as_bytes());
    if let Some(kind) = &event.kind {
        put_short(out, kind.as_bytes());
    }
    if let Some(user) = &event.user {
        put_short(out, user.as_bytes());
    }
    if let Some(meta) = &event.meta {
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(meta.as_bytes());
    }
    if let Some(hash) = &event.hash {
        out.extend_from_slice(&hash.0);
    }
    if let Payload::Inline(bytes) = &event.payload {
        out.extend_from_slice(bytes);
    }
}

/// A decoded record.
#[derive(Debug)]
pub(crate) enum Record {
    /// Events committed together; each with its frame offset within the
    /// record and its body length.
    Batch {
        key: Option<String>,
        events: Vec<(Event, u32, u32)>,
    },
    Remove {
        ids: Vec<EventId>,
    },
    Ack {
        name: String,
        id: EventId,
    },
    ConsumerDelete {
        name: String,
    },
    State {
        ops: Vec<StateOp>,
    },
    /// Generation `to` of `segment` replaces generation `from`.
    Compact {
        segment: u32,
        from: u32,
        to: u32,
    },
    /// Seqs and ids that compaction dropped, per topic (newest of each).
    Floor {
        floors: Vec<(String, u64, EventId)>,
    },
}

/// One change to the durable state kept for front ends (see
/// [`crate::Store::state_write`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateOp {
    /// Sets `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Removes `key` (nothing if it is absent).
    Delete(Vec<u8>),
}

/// Decodes a record body (already crc-checked).
pub(crate) fn decode_record(body: &[u8]) -> Result<Record, String> {
    decode_record_with(body, &mut Decoder::full())
}

/// Decoding options and a cache of recent topics, for decoding many records.
pub(crate) struct Decoder {
    /// Skip copying inline payloads (`Payload::None` stands in for them):
    /// the indexer needs only an event's place, not its bytes.
    skip_payloads: bool,
    topics: Vec<Topic>,
    /// The mapped segment the bodies being decoded lie in: inline payloads
    /// then become views of it instead of copies.
    pub(crate) map: Option<Arc<memmap2::Mmap>>,
    pub(crate) map_segment: Option<(u32, u32)>,
    /// The decompressed block of a compressed file read last.
    pub(crate) window: Option<((u32, u32), crate::log::compressed::Window)>,
    /// Whether the event being decoded came from that block again (a scan
    /// moving through it, not a lookup landing in it).
    pub(crate) window_reused: bool,
}

impl Decoder {
    pub(crate) fn full() -> Decoder {
        Decoder {
            skip_payloads: false,
            topics: Vec::new(),
            map: None,
            map_segment: None,
            window: None,
            window_reused: false,
        }
    }

    pub(crate) fn for_index() -> Decoder {
        Decoder {
            skip_payloads: true,
            topics: Vec::new(),
            map: None,
            map_segment: None,
            window: None,
            window_reused: false,
        }
    }

    /// Inline payload bytes: a view of the mapped segment when they lie in
    /// it, else a copy.
    fn inline(&self, bytes: &[u8]) -> InlineBytes {
        if let Some(map) = &self.map {
            let base = map.as_ptr() as usize;
            let at = bytes.as_ptr() as usize;
            if at >= base
                && let Some(view) = InlineBytes::mapped(map.clone(), at - base, bytes.len())
            {
                return view;
            }
        }
        // A view keeps its whole block alive: worth it for events read one
        // after another from a block (a scan), or for big payloads; events
        // read here and there copy theirs, so a chunk of them does not keep
        // a block each.
        let worth_a_view = self.window_reused || bytes.len() >= crate::log::compressed::BLOCK_BYTES / 4;
        if worth_a_view
            && let Some(crate::log::compressed::Chunk::Block(block, _, _)) = self.window.as_ref().map(|(_, w)| &w.chunk)
        {
            let base = block.as_ptr() as usize;
            let at = bytes.as_ptr() as usize;
            if at >= base
                && let Some(view) = InlineBytes::in_block(block.clone(), at - base, bytes.len())
            {
                return view;
            }
        }
        InlineBytes::from(bytes)
    }

    /// The topic named by `bytes`, validated once and shared after that.
    fn topic(&mut self, bytes: &[u8]) -> Result<Topic, String> {
        if let Some(topic) = self.topics.iter().find(|t| t.as_str().as_bytes() == bytes) {
            return Ok(topic.clone());
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "topic is not UTF-8")?;
        let topic = Topic::new(text).map_err(|error| error.to_string())?;
        if self.topics.len() == 16 {
            self.topics.remove(0);
        }
        self.topics.push(topic.clone());
        Ok(topic)
    }
}

pub(crate) fn decode_record_with(body: &[u8], decoder: &mut Decoder) -> Result<Record, String> {
    let mut reader = Reader { bytes: body, at: 0 };
    let version = reader.u8()?;
    if version != FORMAT_VERSION {
        return Err(format!("unknown record format version {version}"));
    }
    let record = match reader.u8()? {
        KIND_BATCH => {
            let key = reader.short_str()?;
            let n = reader.u32()? as usize;
            let mut events = Vec::with_capacity(n.min(body.len() / 40));
            for _ in 0..n {
                let frame_offset = reader.at + FRAME_HEADER_BYTES;
                let event_body = unframe(&body[reader.at..])?.ok_or("event frame runs past its record")?;
                let event = decode_event_with(event_body, decoder)?;
                reader.at += FRAME_HEADER_BYTES + event_body.len();
                events.push((event, frame_offset as u32, event_body.len() as u32));
            }
            Record::Batch { key: (!key.is_empty()).then_some(key), events }
        }
        KIND_REMOVE => {
            let n = reader.u32()? as usize;
            let mut ids = Vec::with_capacity(n.min(body.len() / 16));
            for _ in 0..n {
                ids.push(reader.id()?);
            }
            Record::Remove { ids }
        }
        KIND_ACK => Record::Ack { name: reader.short_str()?, id: reader.id()? },
        KIND_CONSUMER_DELETE => Record::ConsumerDelete { name: reader.short_str()? },
        KIND_STATE => {
            let n = reader.u32()? as usize;
            let mut ops = Vec::with_capacity(n.min(body.len() / 5));
            for _ in 0..n {
                let op = match reader.u8()? {
                    STATE_PUT => StateOp::Put(reader.long()?.to_vec(), reader.long()?.to_vec()),
                    STATE_DELETE => StateOp::Delete(reader.long()?.to_vec()),
                    other => return Err(format!("unknown state operation {other}")),
                };
                ops.push(op);
            }
            Record::State { ops }
        }
        KIND_COMPACT => Record::Compact { segment: reader.u32()?, from: reader.u32()?, to: reader.u32()? },
        KIND_FLOOR => {
            let n = reader.u32()? as usize;
            let mut floors = Vec::with_capacity(n.min(body.len() / 25));
            for _ in 0..n {
                floors.push((reader.short_str()?, reader.u64()?, reader.id()?));
            }
            Record::Floor { floors }
        }
        kind => return Err(format!("unknown record kind {kind}")),
    };
    if reader.at != body.len() {
        return Err("trailing bytes after record".to_owned());
    }
    Ok(record)
}

/// An event body split into its fields, nothing copied or checked as text.
struct RawEvent<'a> {
    id: EventId,
    seq: u64,
    flags: u8,
    ttl: Ttl,
    size: u64,
    topic: &'a [u8],
    kind: Option<&'a [u8]>,
    user: Option<&'a [u8]>,
    meta: Option<&'a [u8]>,
    hash: Option<Hash>,
    /// `Some` for an inline payload, with its bytes.
    inline: Option<&'a [u8]>,
    stored: bool,
}

#[inline(always)] // Into each decoder, so the fields are not moved through a struct.
fn parse_event(body: &[u8]) -> Result<RawEvent<'_>, String> {
    // The fixed part, read with one bounds check (a scan decodes millions).
    let fixed: &[u8; EVENT_FIXED_BYTES] =
        body.get(..EVENT_FIXED_BYTES).and_then(|b| b.try_into().ok()).ok_or("record ends early")?;
    let u64_at = |at: usize| u64::from_le_bytes(fixed[at..at + 8].try_into().expect("8 bytes"));
    let (flags, payload_kind, ttl_kind) = (fixed[24], fixed[25], fixed[26]);
    let ttl_value = u64_at(27);
    let ttl = match ttl_kind {
        TTL_FOREVER => Ttl::Forever,
        TTL_EPHEMERAL => Ttl::Ephemeral,
        TTL_TIME => Ttl::Time { ms: ttl_value },
        TTL_LAST => Ttl::Last { n: ttl_value },
        other => return Err(format!("unknown ttl kind {other}")),
    };
    let size = u64_at(35);
    let mut reader = Reader { bytes: body, at: EVENT_FIXED_BYTES };
    let topic = reader.take(fixed[43] as usize)?;
    let kind = if flags & FLAG_TYPE != 0 { Some(reader.short()?) } else { None };
    let user = if flags & FLAG_USER != 0 { Some(reader.short()?) } else { None };
    let meta = if flags & FLAG_META != 0 { Some(reader.long()?) } else { None };
    let hash = if flags & FLAG_HASH != 0 { Some(Hash(reader.take(32)?.try_into().expect("32 bytes"))) } else { None };
    let (inline, stored) = match payload_kind {
        PAYLOAD_NONE => (None, false),
        PAYLOAD_INLINE => (Some(reader.take(usize::try_from(size).map_err(|_| "size overflows")?)?), false),
        PAYLOAD_STORED => (None, true),
        other => return Err(format!("unknown payload kind {other}")),
    };
    if reader.at != body.len() {
        return Err("trailing bytes after event".to_owned());
    }
    Ok(RawEvent {
        id: EventId::from_bytes(fixed[0..16].try_into().expect("16 bytes")),
        seq: u64_at(16),
        flags,
        ttl,
        size,
        topic,
        kind,
        user,
        meta,
        hash,
        inline,
        stored,
    })
}

fn text<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, String> {
    std::str::from_utf8(bytes).map_err(|_| format!("{what} is not UTF-8"))
}

/// Decodes one event body into an owned event.
#[inline]
pub(crate) fn decode_event_with(body: &[u8], decoder: &mut Decoder) -> Result<Event, String> {
    let raw = parse_event(body)?;
    let owned = |bytes: Option<&[u8]>, what| bytes.map(|b| text(b, what).map(str::to_owned)).transpose();
    let payload = match (raw.inline, raw.stored) {
        (Some(_), _) if decoder.skip_payloads => Payload::None,
        (Some(bytes), _) => Payload::Inline(decoder.inline(bytes)),
        (None, true) => Payload::Stored,
        (None, false) => Payload::None,
    };
    Ok(Event {
        id: raw.id,
        topic: decoder.topic(raw.topic)?,
        seq: raw.seq,
        kind: owned(raw.kind, "type")?,
        meta: owned(raw.meta, "meta")?,
        hash: raw.hash,
        size: raw.size,
        ttl: raw.ttl,
        user: owned(raw.user, "user")?,
        payload,
        imported: raw.flags & FLAG_IMPORTED != 0,
    })
}

/// Decodes one event body in place: text and payload are views of `body`.
#[inline]
pub(crate) fn decode_event_ref(body: &[u8]) -> Result<EventRef<'_>, String> {
    fn view<'a>(bytes: Option<&'a [u8]>, what: &str) -> Result<Option<&'a str>, String> {
        bytes.map(|b| text(b, what)).transpose()
    }
    let raw = parse_event(body)?;
    let payload = match (raw.inline, raw.stored) {
        (Some(bytes), _) => PayloadRef::Inline(bytes),
        (None, true) => PayloadRef::Stored,
        (None, false) => PayloadRef::None,
    };
    Ok(EventRef {
        id: raw.id,
        topic: text(raw.topic, "topic")?,
        seq: raw.seq,
        kind: view(raw.kind, "type")?,
        meta: view(raw.meta, "meta")?,
        hash: raw.hash,
        size: raw.size,
        ttl: raw.ttl,
        user: view(raw.user, "user")?,
        payload,
        imported: raw.flags & FLAG_IMPORTED != 0,
    })
}

/// An event body's fixed part: id 16, seq 8, flags 1, payload kind 1, ttl
/// kind 1 and value 8, size 8, and the topic's length 1.
const EVENT_FIXED_BYTES: usize = 44;

/// Reads just the topic of an event body, without decoding (or checking)
/// the rest.
pub(crate) fn peek_topic(body: &[u8]) -> Option<&[u8]> {
    let len = *body.get(EVENT_FIXED_BYTES - 1)? as usize;
    body.get(EVENT_FIXED_BYTES..EVENT_FIXED_BYTES + len)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).ok_or("length overflows")?;
        let slice = self.bytes.get(self.at..end).ok_or("record ends early")?;
        self.at = end;
        Ok(slice)
    }
    #[inline]
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    #[inline]
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    #[inline]
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    #[inline]
    fn id(&mut self) -> Result<EventId, String> {
        Ok(EventId::from_bytes(self.take(16)?.try_into().expect("16 bytes")))
    }
    #[inline]
    fn long(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    #[inline]
    fn short(&mut self) -> Result<&'a [u8], String> {
        let len = self.u8()? as usize;
        self.take(len)
    }
    #[inline]
    fn short_str(&mut self) -> Result<String, String> {
        let len = self.u8()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| "string is not UTF-8".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_frames_is_the_same_record_as_a_batch() {
        let topic = Topic::new("t").expect("valid topic");
        let events: Vec<Event> = (0..3)
            .map(|seq| Event {
                id: EventId::from_u128(1000 + u128::from(seq)),
                topic: topic.clone(),
                seq,
                kind: Some("k".to_owned()),
                meta: None,
                hash: None,
                size: 3,
                ttl: Ttl::Forever,
                user: None,
                payload: Payload::Inline(InlineBytes::from(&b"abc"[..])),
                imported: false,
            })
            .collect();
        let mut whole = Vec::new();
        encode_batch(&mut whole, None, &events.iter().collect::<Vec<_>>());
        let mut frames = Vec::new();
        for event in &events {
            encode_event_frame(&mut frames, event);
        }
        let mut merged = Vec::new();
        encode_batch_of_frames(&mut merged, events.len(), &frames);
        assert_eq!(merged, whole);
    }

    #[test]
    fn a_streamed_batch_is_the_same_record() {
        let topics = [Topic::new("t").expect("valid topic"), Topic::new("other.topic").expect("valid topic")];
        let events: Vec<Event> = (0..STREAM_BATCH_EVENTS as u64 * 3 + 7)
            .map(|seq| Event {
                id: EventId::from_u128(1000 + u128::from(seq)),
                topic: topics[usize::from(seq % 3 == 0)].clone(),
                seq,
                kind: (seq % 2 == 0).then(|| "k".to_owned()),
                meta: (seq % 5 == 0).then(|| format!("{{\"n\":{seq}}}")),
                hash: (seq % 7 == 0).then(|| Hash::of(b"x")),
                size: seq % 500,
                ttl: if seq % 11 == 0 { Ttl::Time { ms: seq } } else { Ttl::Forever },
                user: (seq % 3 == 1).then(|| "alice".to_owned()),
                payload: Payload::Inline(InlineBytes::from(vec![seq as u8; (seq % 500) as usize])),
                imported: false,
            })
            .collect();
        let refs: Vec<&Event> = events.iter().collect();
        let mut whole = Vec::new();
        encode_batch(&mut whole, Some("key"), &refs);
        let frames = refs.iter().map(|event| event_frame_bytes(event)).sum();
        assert_eq!(
            batch_record_bytes(Some("key"), frames),
            whole.len(),
            "the record's length is known before it is encoded"
        );
        // The pieces, placed where the sink is told, cover the record after
        // its header exactly once, in order.
        let mut streamed = vec![0u8; FRAME_HEADER_BYTES];
        let mut pieces = 0;
        let header = encode_batch_streamed(Some("key"), &refs, |bytes, at| {
            assert_eq!(at, streamed.len() as u64, "pieces come in order, back to back");
            streamed.extend_from_slice(bytes);
            pieces += 1;
            Ok(())
        })
        .expect("no sink error");
        assert!(pieces > 2, "the record came in {pieces} pieces");
        streamed[..FRAME_HEADER_BYTES].copy_from_slice(&header);
        assert!(streamed == whole, "the streamed record differs");
        // A sink's error ends it.
        let error =
            encode_batch_streamed(None, &refs, |_, _| Err(std::io::Error::other("full"))).expect_err("the sink failed");
        assert_eq!(error.to_string(), "full");
    }
}
