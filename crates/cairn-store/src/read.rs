//! Reading stored events: by id, by topic and seq, by pattern in id order,
//! forward or backward. Reads see committed state only and never block the
//! writer.

use std::ops::Bound;

use crate::error::{Result, StoreError};
use crate::event::{Event, EventRef};
use crate::id::EventId;
use crate::index::sparse::{ANCHOR_EVENTS, Anchor, Located, RemovedFilter, walk};
use crate::index::{Index, Ks, strip, topic_key};
use crate::log::codec::Pos;
use crate::log::segment::Segments;
use crate::topic::{Level, Pattern, Topic};

/// What to read.
#[derive(Clone, Debug)]
pub struct Query {
    /// Which topics.
    pub pattern: Pattern,
    /// Start after this id (exclusive).
    pub after: Option<EventId>,
    /// Start at this seq (inclusive); only with an exact topic.
    pub from_seq: Option<u64>,
    /// Only the newest `n` of the selection.
    pub last: Option<u64>,
    /// At most this many events.
    pub limit: Option<u64>,
    /// Newest first.
    pub reverse: bool,
}

impl Query {
    /// Everything matching `pattern`, oldest first.
    pub fn new(pattern: Pattern) -> Query {
        Query { pattern, after: None, from_seq: None, last: None, limit: None, reverse: false }
    }

    /// Checks combinations that make no sense.
    pub fn validate(&self) -> Result<()> {
        if self.from_seq.is_some() && self.pattern.exact().is_none() {
            return Err(StoreError::invalid("from_seq", "needs a single topic, not a wildcard pattern"));
        }
        if self.from_seq.is_some() && self.after.is_some() {
            return Err(StoreError::invalid("from_seq", "cannot be combined with after"));
        }
        if self.last == Some(0) {
            return Err(StoreError::invalid("last", "must be at least 1"));
        }
        Ok(())
    }
}

/// A cursor over stored events in one direction: walks the blocks of the
/// sparse index's anchors, skipping removed events.
pub(crate) struct Scan {
    anchors: Guards,
    /// The current block's events still to return, next first.
    block: std::collections::VecDeque<Located>,
    kind: Kind,
    removed: Option<RemovedFilter>,
    /// The key the removed filter is asked about (a topic scan's: the
    /// topic, 0x00, then the seq written in for each event).
    key: Vec<u8>,
    reverse: bool,
    done: bool,
    /// Keeps the generations the anchors name readable (see `Segments::pin`).
    _pin: crate::log::segment::Pin,
    /// The index as the scan found it: anchors compaction moves meanwhile
    /// are seen as they were (see `Index::snapshot`).
    _snapshot: fjall::Snapshot,
}

enum Kind {
    /// One topic, by seq, from `from_seq`.
    Topic { topic: Topic, from_seq: u64 },
    /// All topics, by id, after `after`, filtered by a pattern.
    Global { pattern: Pattern, after: Option<EventId> },
}

impl Scan {
    /// Events of `pattern` after `after` (or from `from_seq`), in the given
    /// direction, not removed.
    pub(crate) fn open(
        index: &Index,
        segments: &Segments,
        pattern: &Pattern,
        after: Option<EventId>,
        from_seq: Option<u64>,
        reverse: bool,
    ) -> Result<Scan> {
        // The pin first: every generation the snapshot's anchors name is
        // then readable for as long as the scan lives.
        let pin = segments.pin();
        let snapshot = index.snapshot();
        let at = Some(&snapshot);
        match pattern.exact() {
            Some(topic) => {
                let from_seq = match (from_seq, after) {
                    (Some(seq), _) => seq,
                    (None, Some(after)) => first_seq_after(index, segments, topic, after)?,
                    (None, None) => 0,
                };
                let first = topic_key(topic.as_str(), 0);
                let last = topic_key(topic.as_str(), u64::MAX);
                let wanted = topic_key(topic.as_str(), from_seq);
                // The block holding `from_seq` starts at the last anchor at or before it.
                let start = index
                    .range_at(at, Ks::Topics, Bound::Included(&first), Bound::Included(&wanted))
                    .next_back()
                    .map(|guard| guard.key().map(|key| strip(&key).to_vec()))
                    .transpose()?
                    .unwrap_or_else(|| first.clone());
                let anchors =
                    directed(index.range_at(at, Ks::Topics, Bound::Included(&start), Bound::Included(&last)), reverse);
                let removed_from = if reverse { &first } else { &wanted };
                let removed = Some(RemovedFilter::new(index, at, Ks::RemovedSeq, removed_from, &last, reverse));
                Ok(Scan {
                    anchors,
                    block: Default::default(),
                    kind: Kind::Topic { topic: topic.clone(), from_seq },
                    removed,
                    key: first.clone(),
                    reverse,
                    done: false,
                    _pin: pin,
                    _snapshot: snapshot,
                })
            }
            None => {
                let after_bytes = after.map(EventId::to_bytes);
                let start = match &after_bytes {
                    Some(bytes) => index
                        .range_at(at, Ks::Ids, Bound::Unbounded, Bound::Included(&bytes[..]))
                        .next_back()
                        .map(|guard| guard.key().map(|key| strip(&key).to_vec()))
                        .transpose()?,
                    None => None,
                };
                let lo = start.as_deref().map_or(Bound::Unbounded, Bound::Included);
                let anchors = directed(index.range_at(at, Ks::Ids, lo, Bound::Unbounded), reverse);
                let removed_from = after_bytes.unwrap_or([0; 16]);
                let removed = Some(RemovedFilter::new(index, at, Ks::Removed, &removed_from, &[0xff; 16], reverse));
                Ok(Scan {
                    anchors,
                    block: Default::default(),
                    kind: Kind::Global { pattern: pattern.clone(), after },
                    removed,
                    key: Vec::new(),
                    reverse,
                    done: false,
                    _pin: pin,
                    _snapshot: snapshot,
                })
            }
        }
    }

    /// The same scan, removed events included (for searches by seq, where
    /// they still mark their place).
    fn including_removed(mut self) -> Scan {
        self.removed = None;
        self
    }

    /// The next matching event's position.
    pub(crate) fn next_pos(&mut self, segments: &Segments) -> Option<Result<Pos>> {
        match self.next_located(segments) {
            Ok(Some(located)) => Some(Ok(located.pos)),
            Ok(None) => None,
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }

    pub(crate) fn next_located(&mut self, segments: &Segments) -> Result<Option<Located>> {
        while !self.done {
            let Some(located) = self.block.pop_front() else {
                if !self.fill(segments)? {
                    self.done = true;
                }
                continue;
            };
            // Bounds: skip what lies before the start; stop past it going back.
            let before_start = match &self.kind {
                Kind::Topic { from_seq, .. } => located.seq < *from_seq,
                Kind::Global { after, .. } => after.is_some_and(|after| located.id <= after),
            };
            if before_start {
                if self.reverse {
                    self.done = true;
                }
                continue;
            }
            if let Some(removed) = &mut self.removed
                && !removed.exhausted()
            {
                let is_removed = match &self.kind {
                    Kind::Topic { .. } => {
                        // The topic's key prefix stays; only the seq changes.
                        let at = self.key.len() - 8;
                        self.key[at..].copy_from_slice(&located.seq.to_be_bytes());
                        removed.contains(&self.key)?
                    }
                    Kind::Global { .. } => removed.contains(&located.id.to_bytes())?,
                };
                if is_removed {
                    continue;
                }
            }
            return Ok(Some(located));
        }
        Ok(None)
    }

    /// Loads the next anchor's block; false when there is none.
    fn fill(&mut self, segments: &Segments) -> Result<bool> {
        let Some(guard) = self.anchors.next() else { return Ok(false) };
        let anchor = Anchor::from_bytes(&guard.value()?)?;
        let mut block = Vec::with_capacity(ANCHOR_EVENTS);
        match &self.kind {
            Kind::Topic { topic, .. } => walk(segments, anchor, Some(topic.as_str()), |_| true, &mut block)?,
            Kind::Global { pattern, .. } => {
                let all = matches!(pattern, Pattern::Wildcard(levels) if levels.len() == 1 && levels[0] == Level::Rest);
                let keep = |topic: &[u8]| all || std::str::from_utf8(topic).is_ok_and(|topic| pattern.matches(topic));
                walk(segments, anchor, None, keep, &mut block)?;
            }
        }
        if self.reverse {
            block.reverse();
        }
        self.block = block.into();
        Ok(true)
    }
}

/// A fjall iterator, forward or reversed.
pub(crate) type Guards = Box<dyn Iterator<Item = fjall::Guard> + Send>;

fn directed(iter: fjall::Iter, reverse: bool) -> Guards {
    if reverse { Box::new(iter.rev()) } else { Box::new(iter) }
}

/// The smallest seq of `topic` whose event has an id above `after`, or one
/// past the last seq when there is none. Binary search over seqs (ids
/// increase with seq); removed events still count, which keeps it monotonic.
pub(crate) fn first_seq_after(index: &Index, segments: &Segments, topic: &Topic, after: EventId) -> Result<u64> {
    let Some(head) = index.head(topic.as_str())? else { return Ok(0) };
    if head.last_id <= after {
        return Ok(head.last_seq + 1);
    }
    let (mut lo, mut hi) = (0u64, head.last_seq + 1);
    let pattern = Pattern::Exact(topic.clone());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        // The first event at or after `mid` stands in for `mid`.
        let mut scan = Scan::open(index, segments, &pattern, None, Some(mid), false)?.including_removed();
        match scan.next_located(segments)? {
            Some(located) if located.id > after => hi = mid,
            Some(located) => lo = located.seq.max(mid) + 1,
            None => hi = mid,
        }
    }
    Ok(lo)
}

/// Events of a query, read lazily (except `last`, which is gathered first).
pub struct ReadIter {
    segments: std::sync::Arc<Segments>,
    decoder: crate::log::codec::Decoder,
    source: Source,
    remaining: u64,
}

enum Source {
    Scan(Scan),
    Gathered(std::vec::IntoIter<Event>),
}

impl ReadIter {
    pub(crate) fn open(index: &Index, segments: std::sync::Arc<Segments>, query: &Query) -> Result<ReadIter> {
        query.validate()?;
        let remaining = query.limit.unwrap_or(u64::MAX);
        let source = match query.last {
            Some(last) => {
                // The newest `last` of the selection: scan backward, then order.
                let mut scan = Scan::open(index, &segments, &query.pattern, query.after, query.from_seq, true)?;
                let mut newest = Vec::new();
                while (newest.len() as u64) < last {
                    let Some(pos) = scan.next_pos(&segments) else { break };
                    newest.push(segments.read_event(pos?)?);
                }
                if !query.reverse {
                    newest.reverse();
                }
                Source::Gathered(newest.into_iter())
            }
            None => {
                Source::Scan(Scan::open(index, &segments, &query.pattern, query.after, query.from_seq, query.reverse)?)
            }
        };
        Ok(ReadIter { segments, decoder: crate::log::codec::Decoder::full(), source, remaining })
    }
}

impl Iterator for ReadIter {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Result<Event>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        match &mut self.source {
            Source::Gathered(events) => events.next().map(Ok),
            Source::Scan(scan) => {
                let pos = scan.next_pos(&self.segments)?;
                Some(pos.and_then(|pos| self.segments.read_event_with(pos, &mut self.decoder)))
            }
        }
    }
}

/// Events of a query read in place, one at a time: each [`EventRef`] is a
/// view of the log, valid until the next call, so reading one copies
/// nothing and takes no reference count (`Store::read` gives owned events).
/// Like a `ReadIter`, it sees the store as it was when opened.
pub struct Cursor {
    segments: std::sync::Arc<Segments>,
    decoder: crate::log::codec::Decoder,
    /// The scan (for `last`: the finished one, which keeps what it found
    /// readable).
    scan: Scan,
    /// For `last`: the positions gathered, in the order to return them.
    gathered: Option<std::vec::IntoIter<Pos>>,
    remaining: u64,
}

impl Cursor {
    pub(crate) fn open(index: &Index, segments: std::sync::Arc<Segments>, query: &Query) -> Result<Cursor> {
        query.validate()?;
        let remaining = query.limit.unwrap_or(u64::MAX);
        let (scan, gathered) = match query.last {
            Some(last) => {
                let mut scan = Scan::open(index, &segments, &query.pattern, query.after, query.from_seq, true)?;
                let mut newest = Vec::new();
                while (newest.len() as u64) < last {
                    let Some(pos) = scan.next_pos(&segments) else { break };
                    newest.push(pos?);
                }
                if !query.reverse {
                    newest.reverse();
                }
                (scan, Some(newest.into_iter()))
            }
            None => (Scan::open(index, &segments, &query.pattern, query.after, query.from_seq, query.reverse)?, None),
        };
        Ok(Cursor { segments, decoder: crate::log::codec::Decoder::full(), scan, gathered, remaining })
    }

    /// The next event, or `None` at the end.
    #[allow(clippy::should_implement_trait)] // A lending cursor: each event borrows it.
    pub fn next(&mut self) -> Result<Option<EventRef<'_>>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let pos = match &mut self.gathered {
            Some(positions) => positions.next(),
            None => self.scan.next_pos(&self.segments).transpose()?,
        };
        let Some(pos) = pos else {
            self.remaining = 0;
            return Ok(None);
        };
        self.remaining -= 1;
        let body = self.segments.frame_body(pos, &mut self.decoder)?;
        crate::log::codec::decode_event_ref(body)
            .map(Some)
            .map_err(|detail| crate::log::segment::corrupt(pos.segment, pos.offset, &detail))
    }
}
