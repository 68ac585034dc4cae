//! Value types of events and writes: `Event`, `NewEvent`, `Batch`, `Ttl`,
//! `Expect`, `Hash`. Parsing validates; internals take these types only.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use sha2::Digest as _;

use crate::error::StoreError;
use crate::id::EventId;
use crate::limits::{IDEMPOTENCY_KEY_BYTES_MAX, META_BYTES_MAX, TYPE_BYTES_MAX, USER_BYTES_MAX};
use crate::topic::Topic;

/// A sha256 content hash. Text forms: SRI `sha256-<base64>` (what cairn
/// prints) and 64 lowercase hex digits (accepted everywhere).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(sha2::Sha256::digest(bytes).into())
    }

    /// Parses SRI (`sha256-<base64>`) or lowercase hex.
    pub fn parse(text: &str) -> Result<Hash, StoreError> {
        let bad = || {
            StoreError::invalid(
                "hash",
                format!("{text:?} is neither sha256-<base64> (SRI) nor 64 lowercase hex digits"),
            )
        };
        if let Some(b64) = text.strip_prefix("sha256-") {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| bad())?;
            return <[u8; 32]>::try_from(bytes.as_slice()).map(Hash).map_err(|_| bad());
        }
        if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (idx, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[idx * 2..idx * 2 + 2], 16).map_err(|_| bad())?;
        }
        Ok(Hash(out))
    }

    /// The SRI form, `sha256-<base64>`.
    pub fn sri(&self) -> String {
        format!("sha256-{}", base64::engine::general_purpose::STANDARD.encode(self.0))
    }

    /// The lowercase hex form.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sri())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.sri())
    }
}

/// How long an event is kept (design §2).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Ttl {
    /// Kept until removed by id.
    #[default]
    Forever,
    /// Delivered to live subscribers, never stored.
    Ephemeral,
    /// Removed once older than this many milliseconds.
    Time {
        /// Lifetime in milliseconds.
        ms: u64,
    },
    /// Only the newest `n` events of the topic are kept.
    Last {
        /// How many to keep (at least 1).
        n: u64,
    },
}

impl Ttl {
    /// Parses `forever`, `ephemeral`, `time:<duration>`, `last:<n>`.
    pub fn parse(text: &str) -> Result<Ttl, StoreError> {
        match text {
            "forever" => return Ok(Ttl::Forever),
            "ephemeral" => return Ok(Ttl::Ephemeral),
            _ => {}
        }
        if let Some(duration) = text.strip_prefix("time:") {
            let ms = parse_duration_ms(duration).map_err(|rule| StoreError::invalid("ttl", rule))?;
            if ms == 0 {
                return Err(StoreError::invalid("ttl", "time:<duration> must be longer than zero"));
            }
            return Ok(Ttl::Time { ms });
        }
        if let Some(n) = text.strip_prefix("last:") {
            return match n.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(Ttl::Last { n }),
                _ => Err(StoreError::invalid("ttl", format!("{text:?}: last:<n> needs a whole number n >= 1"))),
            };
        }
        Err(StoreError::invalid(
            "ttl",
            format!("{text:?} is not one of forever, ephemeral, time:<duration> (e.g. time:30s), last:<n>"),
        ))
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ttl::Forever => f.write_str("forever"),
            Ttl::Ephemeral => f.write_str("ephemeral"),
            Ttl::Time { ms } => write!(f, "time:{}", format_duration_ms(*ms)),
            Ttl::Last { n } => write!(f, "last:{n}"),
        }
    }
}

/// Parses durations like `500ms`, `30s`, `5m`, `2h`, `7d`, or a bare number
/// of milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let bad = || format!("{text:?} is not a duration: use a whole number with ms, s, m, h or d (e.g. 30s)");
    let value: u64 = digits.parse().map_err(|_| bad())?;
    let factor: u64 = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    value.checked_mul(factor).ok_or_else(|| format!("{text:?} is too long a duration"))
}

fn format_duration_ms(ms: u64) -> String {
    for (factor, unit) in [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s")] {
        if ms.is_multiple_of(factor) {
            return format!("{}{unit}", ms / factor);
        }
    }
    format!("{ms}ms")
}

/// What a write expects of a topic before it (design §3).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Expect {
    /// No condition.
    #[default]
    Any,
    /// The topic has never had an event.
    Empty,
    /// The topic has had at least one event (HTTP `If-Match: *`).
    Exists,
    /// The topic's last seq is exactly this.
    Seq(u64),
    /// No event was appended to the topic after this id (evt's base revision).
    UnchangedSince(EventId),
}

impl Expect {
    /// Parses `any`, `none`, `exists`, `<seq>`, `unchanged-since:<id>`.
    pub fn parse(text: &str) -> Result<Expect, StoreError> {
        match text {
            "any" => Ok(Expect::Any),
            "none" => Ok(Expect::Empty),
            "exists" => Ok(Expect::Exists),
            _ => {
                if let Some(id) = text.strip_prefix("unchanged-since:") {
                    return EventId::parse(id).map(Expect::UnchangedSince).map_err(|_| {
                        StoreError::invalid("expect", format!("{text:?}: unchanged-since:<id> needs a SCRU128 id"))
                    });
                }
                text.parse::<u64>().map(Expect::Seq).map_err(|_| {
                    StoreError::invalid(
                        "expect",
                        format!("{text:?} is not one of any, none, exists, <seq>, unchanged-since:<id>"),
                    )
                })
            }
        }
    }

    /// Whether a topic whose last event is `last` (seq, id) satisfies this.
    pub fn check(&self, last: Option<(u64, EventId)>) -> bool {
        match (self, last) {
            (Expect::Any, _) => true,
            (Expect::Empty, last) => last.is_none(),
            (Expect::Exists, last) => last.is_some(),
            (Expect::Seq(seq), Some((last_seq, _))) => *seq == last_seq,
            (Expect::Seq(_), None) => false,
            (Expect::UnchangedSince(id), Some((_, last_id))) => last_id <= *id,
            (Expect::UnchangedSince(_), None) => true,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Any => f.write_str("any"),
            Expect::Empty => f.write_str("none"),
            Expect::Exists => f.write_str("exists"),
            Expect::Seq(seq) => write!(f, "{seq}"),
            Expect::UnchangedSince(id) => write!(f, "unchanged-since:{id}"),
        }
    }
}

/// A validated event type name: 1-255 bytes, no control characters.
pub fn check_type(kind: &str) -> Result<(), StoreError> {
    if kind.is_empty() || kind.len() > TYPE_BYTES_MAX {
        return Err(StoreError::invalid("type", format!("must be 1-{TYPE_BYTES_MAX} bytes")));
    }
    if kind.chars().any(char::is_control) {
        return Err(StoreError::invalid("type", "must not contain control characters"));
    }
    Ok(())
}

/// Validates `meta` text: a JSON object of at most 64 KiB. Returns it compacted.
pub fn check_meta(text: &str) -> Result<String, StoreError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|error| StoreError::invalid("meta", format!("is not valid JSON: {error}")))?;
    check_meta_value(&value)
}

/// Validates a parsed `meta` value. Returns its compact text.
pub fn check_meta_value(value: &serde_json::Value) -> Result<String, StoreError> {
    if !value.is_object() {
        return Err(StoreError::invalid("meta", "must be a JSON object"));
    }
    let compact = value.to_string();
    if compact.len() > META_BYTES_MAX {
        return Err(StoreError::invalid(
            "meta",
            format!("is {} bytes, the maximum is {META_BYTES_MAX}", compact.len()),
        ));
    }
    Ok(compact)
}

/// Validates a user name stamped on events.
pub fn check_user(user: &str) -> Result<(), StoreError> {
    if user.is_empty() || user.len() > USER_BYTES_MAX || user.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            "user",
            format!("must be 1-{USER_BYTES_MAX} bytes without control characters"),
        ));
    }
    Ok(())
}

/// Validates an idempotency key.
pub fn check_idempotency_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(StoreError::invalid("key", format!("idempotency keys are 1-{IDEMPOTENCY_KEY_BYTES_MAX} bytes")));
    }
    Ok(())
}

/// What an idempotency key remembers of the write it was first used for:
/// sha256 over each stored event's topic, payload hash and type, in order.
/// A later write under the key must have the same (else it is a conflict).
pub fn fingerprint<'a>(events: impl Iterator<Item = &'a Event>) -> [u8; 32] {
    let mut digest = sha2::Sha256::new();
    for event in events.filter(|event| event.ttl != Ttl::Ephemeral) {
        digest.update(event.topic.as_str().as_bytes());
        digest.update([0]);
        match &event.hash {
            Some(hash) => digest.update([[1u8].as_slice(), &hash.0].concat()),
            None => digest.update([0]),
        }
        digest.update(event.kind.as_deref().unwrap_or("").as_bytes());
        digest.update([0]);
    }
    digest.finalize().into()
}

/// Checks a new event as every backend does before writing it: a topic
/// (writable by users unless `system`), its type, `meta` (returned
/// compacted), user and payload size. Returns the event still without id
/// and seq, its hash and size set but its payload `None`, and the payload's
/// bytes for the backend to place.
pub fn check_new_event(
    new_event: NewEvent,
    system: bool,
    payload_bytes_max: u64,
) -> Result<(Event, Option<Vec<u8>>), StoreError> {
    let topic = new_event.topic.ok_or_else(|| StoreError::invalid("topic", "is required"))?;
    if !system {
        topic.check_user_writable()?;
    }
    if let Some(kind) = &new_event.kind {
        check_type(kind)?;
    }
    let meta = new_event.meta.as_deref().map(check_meta).transpose()?;
    if let Some(user) = &new_event.user {
        check_user(user)?;
    }
    let (hash, size) = match &new_event.payload {
        None => (None, 0),
        Some(bytes) => {
            let size = bytes.len() as u64;
            if size > payload_bytes_max {
                return Err(StoreError::TooLarge { what: "payload", bytes: size, max: payload_bytes_max });
            }
            (Some(Hash::of(bytes)), size)
        }
    };
    let event = Event {
        id: EventId::MIN,
        topic,
        seq: 0,
        kind: new_event.kind,
        meta,
        hash,
        size,
        ttl: new_event.ttl,
        user: new_event.user,
        payload: Payload::None,
        imported: false,
    };
    Ok((event, new_event.payload))
}

/// An event to append.
#[derive(Clone, Debug, Default)]
pub struct NewEvent {
    /// Where it goes. `None` only while building; appending requires it.
    pub topic: Option<Topic>,
    /// Optional event type.
    pub kind: Option<String>,
    /// Optional `meta` JSON object, as compact text (see [`check_meta`]).
    pub meta: Option<String>,
    /// The payload; `None` for an event with no content.
    pub payload: Option<Vec<u8>>,
    /// Retention.
    pub ttl: Ttl,
    /// Who appends it (set by front ends with authentication).
    pub user: Option<String>,
}

impl NewEvent {
    /// An event on `topic` with `payload`.
    pub fn new(topic: Topic, payload: impl Into<Vec<u8>>) -> NewEvent {
        NewEvent { topic: Some(topic), payload: Some(payload.into()), ..NewEvent::default() }
    }

    /// Sets the type.
    pub fn with_type(mut self, kind: impl Into<String>) -> NewEvent {
        self.kind = Some(kind.into());
        self
    }

    /// Sets the retention.
    pub fn with_ttl(mut self, ttl: Ttl) -> NewEvent {
        self.ttl = ttl;
        self
    }
}

/// An atomic write: events (on one or more topics), per-topic expectations and
/// an optional idempotency key.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// The events, in order.
    pub events: Vec<NewEvent>,
    /// Expectations, checked against each topic's state before the batch.
    pub expect: BTreeMap<Topic, Expect>,
    /// A retry with the same key within the window returns the first result.
    pub idempotency_key: Option<String>,
}

impl Batch {
    /// Checks what every backend checks of a batch before its events: some
    /// events and not too many, and a well-formed idempotency key.
    pub fn check_shape(&self) -> Result<(), StoreError> {
        if self.events.is_empty() {
            return Err(StoreError::invalid("batch", "has no events"));
        }
        if self.events.len() > crate::limits::BATCH_EVENTS_MAX {
            return Err(StoreError::TooLarge {
                what: "batch",
                bytes: self.events.len() as u64,
                max: crate::limits::BATCH_EVENTS_MAX as u64,
            });
        }
        if let Some(key) = &self.idempotency_key {
            check_idempotency_key(key)?;
        }
        Ok(())
    }

    /// A batch of one event with an expectation on its topic.
    pub fn single(event: NewEvent, expect: Expect) -> Batch {
        let mut batch = Batch { events: vec![event], ..Batch::default() };
        if expect != Expect::Any
            && let Some(topic) = batch.events[0].topic.clone()
        {
            batch.expect.insert(topic, expect);
        }
        batch
    }
}

/// Payload bytes kept inside the event record: owned, or (when read from
/// the log) a view of the memory-mapped segment, so reading does not copy.
#[derive(Clone)]
pub struct InlineBytes(InlineRepr);

#[derive(Clone)]
enum InlineRepr {
    Owned(Arc<[u8]>),
    /// `len` bytes at `start` of a mapped segment. Segments are append-only
    /// while mapped, so the bytes never change under the view.
    Mapped {
        map: Arc<memmap2::Mmap>,
        start: usize,
        len: usize,
    },
    /// `len` bytes at `start` of a decompressed block of a compressed
    /// segment, which never changes either, or of a payload handed in.
    Block {
        block: Arc<Vec<u8>>,
        start: usize,
        len: usize,
    },
}

impl InlineBytes {
    /// A view of `len` bytes at `start` of `map`; `None` if out of range.
    pub(crate) fn mapped(map: Arc<memmap2::Mmap>, start: usize, len: usize) -> Option<InlineBytes> {
        map.get(start..start.checked_add(len)?)?;
        Some(InlineBytes(InlineRepr::Mapped { map, start, len }))
    }

    /// A view of `len` bytes at `start` of a decompressed block; `None` if
    /// out of range.
    pub(crate) fn in_block(block: Arc<Vec<u8>>, start: usize, len: usize) -> Option<InlineBytes> {
        block.get(start..start.checked_add(len)?)?;
        Some(InlineBytes(InlineRepr::Block { block, start, len }))
    }

    /// The length, without reaching the bytes (measuring a batch would
    /// otherwise follow a pointer per event).
    pub fn len(&self) -> usize {
        match &self.0 {
            InlineRepr::Owned(bytes) => bytes.len(),
            InlineRepr::Mapped { len, .. } | InlineRepr::Block { len, .. } => *len,
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<u8>> for InlineBytes {
    /// Keeps the vector (an `Arc<[u8]>` would copy the bytes into a new
    /// allocation, for every event appended), without much spare capacity:
    /// that would be held as long as the event is, and the live ring counts
    /// an event's bytes by their length.
    fn from(mut bytes: Vec<u8>) -> InlineBytes {
        if bytes.capacity() - bytes.len() > bytes.len() / 8 + 64 {
            bytes.shrink_to_fit();
        }
        let len = bytes.len();
        InlineBytes(InlineRepr::Block { block: Arc::new(bytes), start: 0, len })
    }
}

impl From<&[u8]> for InlineBytes {
    fn from(bytes: &[u8]) -> InlineBytes {
        InlineBytes(InlineRepr::Owned(Arc::from(bytes)))
    }
}

impl std::ops::Deref for InlineBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            InlineRepr::Owned(bytes) => bytes,
            InlineRepr::Mapped { map, start, len } => &map[*start..*start + *len],
            InlineRepr::Block { block, start, len } => &block[*start..*start + *len],
        }
    }
}

impl PartialEq for InlineBytes {
    fn eq(&self, other: &InlineBytes) -> bool {
        **self == **other
    }
}

impl Eq for InlineBytes {}

impl fmt::Debug for InlineBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InlineBytes({} bytes)", self.len())
    }
}

/// Where an event's payload lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// No content.
    None,
    /// Kept inside the event record.
    Inline(InlineBytes),
    /// Kept in the content store under `Event::hash`.
    Stored,
}

/// A stored (or ephemeral, delivered) event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Global position: SCRU128, strictly increasing in commit order.
    pub id: EventId,
    /// The topic.
    pub topic: Topic,
    /// Position within the topic, 0-based, gapless at write time. Ephemeral
    /// events carry the seq the next stored event will get; they consume none.
    pub seq: u64,
    /// Optional type.
    pub kind: Option<String>,
    /// Optional `meta`, compact JSON object text.
    pub meta: Option<String>,
    /// sha256 of the payload, if there is one.
    pub hash: Option<Hash>,
    /// Payload length in bytes (0 without payload).
    pub size: u64,
    /// Retention.
    pub ttl: Ttl,
    /// Who appended it, when known.
    pub user: Option<String>,
    /// The payload's location; inline bytes come with the event.
    pub payload: Payload,
    /// Whether it was imported with an explicit id and seq (seq gaps allowed).
    pub imported: bool,
}

#[cfg(test)]
impl Event {
    /// An event of `topic` with an id and a seq and nothing else (tests).
    pub(crate) fn bare(id: EventId, topic: Topic, seq: u64) -> Event {
        Event {
            id,
            topic,
            seq,
            kind: None,
            meta: None,
            hash: None,
            size: 0,
            ttl: Ttl::Forever,
            user: None,
            payload: Payload::None,
            imported: false,
        }
    }
}

impl Event {
    /// The inline payload, if the bytes came with the event.
    pub fn inline_payload(&self) -> Option<&[u8]> {
        match &self.payload {
            Payload::Inline(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// The length of the inline payload (0 for none), without reading it.
    pub fn inline_len(&self) -> usize {
        match &self.payload {
            Payload::Inline(bytes) => bytes.len(),
            _ => 0,
        }
    }

    /// Commit time in ms since the Unix epoch (from the id).
    pub fn timestamp_ms(&self) -> u64 {
        self.id.timestamp_ms()
    }
}

/// An event read in place by a [`crate::Cursor`]: its text and payload are
/// views of the log (of the mapped segment, or of a decompressed block),
/// valid until the cursor moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// Global position.
    pub id: EventId,
    /// The topic's name.
    pub topic: &'a str,
    /// Position within the topic.
    pub seq: u64,
    /// Optional type.
    pub kind: Option<&'a str>,
    /// Optional `meta`, compact JSON object text.
    pub meta: Option<&'a str>,
    /// sha256 of the payload, if there is one.
    pub hash: Option<Hash>,
    /// Payload length in bytes (0 without payload).
    pub size: u64,
    /// Retention.
    pub ttl: Ttl,
    /// Who appended it, when known.
    pub user: Option<&'a str>,
    /// The payload's location; inline bytes are a view.
    pub payload: PayloadRef<'a>,
    /// Whether it was imported with an explicit id and seq.
    pub imported: bool,
}

/// Where a viewed event's payload lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadRef<'a> {
    /// No content.
    None,
    /// Inside the event record: these bytes.
    Inline(&'a [u8]),
    /// In the content store under `EventRef::hash` (`Store::cas_get`).
    Stored,
}

impl EventRef<'_> {
    /// The same event, owned.
    pub fn to_event(&self) -> crate::Result<Event> {
        Ok(Event {
            id: self.id,
            topic: Topic::new(self.topic)?,
            seq: self.seq,
            kind: self.kind.map(str::to_owned),
            meta: self.meta.map(str::to_owned),
            hash: self.hash,
            size: self.size,
            ttl: self.ttl,
            user: self.user.map(str::to_owned),
            payload: match self.payload {
                PayloadRef::None => Payload::None,
                PayloadRef::Inline(bytes) => Payload::Inline(InlineBytes::from(bytes)),
                PayloadRef::Stored => Payload::Stored,
            },
            imported: self.imported,
        })
    }
}
