//! Reading stored events: by id, by topic and seq, by pattern in id order,
//! forward or backward. Reads see committed state only and never block the
//! writer.

use std::ops::Bound;

use crate::error::{Result, StoreError};
use crate::event::Event;
use crate::id::EventId;
use crate::index::{Index, Ks, decode_topic_value, strip, topic_key, topic_prefix};
use crate::log::codec::{self, Pos};
use crate::log::segment::Segments;
use crate::topic::{Pattern, Topic};

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

/// A cursor over stored events in one direction.
pub(crate) enum Scan {
    /// One topic, by seq.
    Topic { iter: Guards },
    /// All topics, by id, filtered by a pattern.
    Global { iter: Guards, pattern: Pattern },
}

impl Scan {
    /// Events of `query.pattern` starting after `after` (or at `from_seq`),
    /// in the given direction, ignoring `last`/`limit`.
    pub(crate) fn open(
        index: &Index,
        pattern: &Pattern,
        after: Option<EventId>,
        from_seq: Option<u64>,
        reverse: bool,
    ) -> Result<Scan> {
        match pattern.exact() {
            Some(topic) => {
                let start_seq = match (from_seq, after) {
                    (Some(seq), _) => seq,
                    (None, Some(after)) => first_seq_after(index, topic, after)?,
                    (None, None) => 0,
                };
                let start = topic_key(topic.as_str(), start_seq);
                let end = topic_key(topic.as_str(), u64::MAX);
                let iter = index.range(Ks::Topics, Bound::Included(&start), Bound::Included(&end));
                Ok(Scan::Topic { iter: directed(iter, reverse) })
            }
            None => {
                let after = after.map(EventId::to_bytes);
                let start = after.as_ref().map_or(Bound::Unbounded, |id| Bound::Excluded(&id[..]));
                let iter = index.range(Ks::Ids, start, Bound::Unbounded);
                Ok(Scan::Global { iter: directed(iter, reverse), pattern: pattern.clone() })
            }
        }
    }

    /// The next matching event's position.
    pub(crate) fn next_pos(&mut self, segments: &Segments) -> Option<Result<Pos>> {
        match self {
            Scan::Topic { iter } => {
                let guard = iter.next()?;
                Some(guard.value().map_err(StoreError::from).and_then(|value| {
                    decode_topic_value(&value).map(|(_, pos)| pos).ok_or_else(|| bad_index("topics"))
                }))
            }
            Scan::Global { iter, pattern } => loop {
                let guard = iter.next()?;
                let pos = match guard.value() {
                    Ok(value) => match Pos::from_bytes(&value) {
                        Some(pos) => pos,
                        None => return Some(Err(bad_index("ids"))),
                    },
                    Err(error) => return Some(Err(error.into())),
                };
                if matches!(pattern, Pattern::Wildcard(levels) if levels.len() == 1 && levels[0] == crate::topic::Level::Rest)
                {
                    return Some(Ok(pos));
                }
                let matched = segments.with_event_body(pos, |body| {
                    Ok(codec::peek_topic(body).is_some_and(|topic| pattern.matches(topic)))
                });
                match matched {
                    Ok(true) => return Some(Ok(pos)),
                    Ok(false) => continue,
                    Err(error) => return Some(Err(error)),
                }
            },
        }
    }
}

/// A fjall iterator, forward or reversed.
pub(crate) type Guards = Box<dyn Iterator<Item = fjall::Guard> + Send>;

fn directed(iter: fjall::Iter, reverse: bool) -> Guards {
    if reverse { Box::new(iter.rev()) } else { Box::new(iter) }
}

fn bad_index(keyspace: &str) -> StoreError {
    StoreError::Corrupt { location: format!("index keyspace {keyspace}"), detail: "malformed value".to_owned() }
}

/// The smallest seq of `topic` whose event has an id above `after`, or one
/// past the last seq when there is none. Binary search: ids increase with seq.
pub(crate) fn first_seq_after(index: &Index, topic: &Topic, after: EventId) -> Result<u64> {
    let Some(head) = index.head(topic.as_str())? else { return Ok(0) };
    if head.last_id <= after {
        return Ok(head.last_seq + 1);
    }
    let (mut lo, mut hi) = (0u64, head.last_seq + 1);
    let prefix = topic_prefix(topic);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        // The first stored event at or after `mid` stands in for `mid`.
        let found = index.range(Ks::Topics, Bound::Included(&topic_key(topic.as_str(), mid)), Bound::Unbounded).next();
        let entry = match found {
            Some(guard) => {
                let (key, value) = guard.into_inner()?;
                if strip(&key).starts_with(&prefix) { decode_topic_value(&value).map(|(id, _)| id) } else { None }
            }
            None => None,
        };
        match entry {
            Some(id) if id > after => hi = mid,
            Some(_) => lo = mid + 1,
            None => hi = mid,
        }
    }
    Ok(lo)
}

/// Events of a query, read lazily (except `last`, which is gathered first).
pub struct ReadIter {
    segments: std::sync::Arc<Segments>,
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
                let mut scan = Scan::open(index, &query.pattern, query.after, query.from_seq, true)?;
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
            None => Source::Scan(Scan::open(index, &query.pattern, query.after, query.from_seq, query.reverse)?),
        };
        Ok(ReadIter { segments, source, remaining })
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
                Some(pos.and_then(|pos| self.segments.read_event(pos)))
            }
        }
    }
}
