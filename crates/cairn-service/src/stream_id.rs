//! `StreamId`: a position within one topic as `<ms>-<seq>`, the event's
//! commit time in milliseconds and its topic seq. Both grow with the topic,
//! so ids increase strictly per topic and compare like Redis stream ids;
//! consumer groups keep their positions and pending entries by them.

use cairn_store::Event;

use crate::error::{Result, ServiceError};

/// A stream entry id (`Default` is `0-0`, the start of every topic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// Commit time of the event, in ms since the Unix epoch.
    pub ms: u64,
    /// Its seq in the topic.
    pub seq: u64,
}

impl StreamId {
    /// Before every entry.
    pub const MIN: StreamId = StreamId { ms: 0, seq: 0 };
    /// After every entry.
    pub const MAX: StreamId = StreamId { ms: u64::MAX, seq: u64::MAX };

    /// The longest text of an id: two numbers of up to 20 digits and a dash.
    pub const TEXT_MAX: usize = 41;

    /// The id of `event`.
    pub fn of(event: &Event) -> StreamId {
        StreamId { ms: event.timestamp_ms(), seq: event.seq }
    }

    /// Parses `ms` or `ms-seq`; a bare `ms` takes `missing_seq`.
    pub fn parse(text: &[u8], missing_seq: u64) -> Result<StreamId> {
        let invalid = || ServiceError::invalid("stream ID", "Invalid stream ID specified as stream command argument");
        let text = std::str::from_utf8(text).map_err(|_| invalid())?;
        let number = |part: &str| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            part.parse::<u64>().map_err(|_| invalid())
        };
        match text.split_once('-') {
            None => Ok(StreamId { ms: number(text)?, seq: missing_seq }),
            Some((ms, seq)) => Ok(StreamId { ms: number(ms)?, seq: number(seq)? }),
        }
    }

    /// The next id (for exclusive starts); `None` after the last.
    pub fn next(self) -> Option<StreamId> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(StreamId { ms: self.ms, seq }),
            None => self.ms.checked_add(1).map(|ms| StreamId { ms, seq: 0 }),
        }
    }

    /// The previous id (for exclusive ends); `None` before the first.
    pub fn prev(self) -> Option<StreamId> {
        match self.seq.checked_sub(1) {
            Some(seq) => Some(StreamId { ms: self.ms, seq }),
            None => self.ms.checked_sub(1).map(|ms| StreamId { ms, seq: u64::MAX }),
        }
    }

    /// The 16 big-endian bytes used in state keys (sorted like ids).
    pub fn to_key(self) -> [u8; 16] {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&self.ms.to_be_bytes());
        key[8..].copy_from_slice(&self.seq.to_be_bytes());
        key
    }

    /// The inverse of [`StreamId::to_key`].
    pub fn from_key(bytes: &[u8]) -> Option<StreamId> {
        let bytes: [u8; 16] = bytes.try_into().ok()?;
        Some(StreamId {
            ms: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            seq: u64::from_be_bytes(bytes[8..].try_into().ok()?),
        })
    }
}

impl StreamId {
    /// The id's text, `<ms>-<seq>`, in `buf`: what [`Display`] writes,
    /// without the formatting machinery and its `String` (every XADD reply
    /// and every entry read carries one: about 1,300 instructions each that
    /// way, `scripts/callgrind-server`).
    ///
    /// [`Display`]: std::fmt::Display
    pub fn text(self, buf: &mut [u8; StreamId::TEXT_MAX]) -> &[u8] {
        // itoa writes two digits per step from a table: a 13-digit ms and
        // a short seq cost about a third of dividing digit by digit.
        let mut digits = itoa::Buffer::new();
        let ms = digits.format(self.ms).as_bytes();
        buf[..ms.len()].copy_from_slice(ms);
        buf[ms.len()] = b'-';
        let at = ms.len() + 1;
        let seq = digits.format(self.seq).as_bytes();
        buf[at..at + seq.len()].copy_from_slice(seq);
        &buf[..at + seq.len()]
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::StreamId;

    #[test]
    fn the_text_of_an_id_is_what_display_writes() {
        let numbers = [0, 1, 9, 10, 99, 100, 1_700_000_000_000, u64::MAX / 7, u64::MAX - 1, u64::MAX];
        let mut buf = [0u8; StreamId::TEXT_MAX];
        for ms in numbers {
            for seq in numbers {
                let id = StreamId { ms, seq };
                assert_eq!(id.text(&mut buf), id.to_string().as_bytes());
            }
        }
    }

    #[test]
    fn ids_parse_and_order_like_redis() {
        assert_eq!(StreamId::parse(b"5-3", 0).ok(), Some(StreamId { ms: 5, seq: 3 }));
        assert_eq!(StreamId::parse(b"5", u64::MAX).ok(), Some(StreamId { ms: 5, seq: u64::MAX }));
        for bad in [&b"-"[..], b"5-", b"a-1", b"1-2-3", b"", b"+5", b"18446744073709551616"] {
            assert!(StreamId::parse(bad, 0).is_err(), "{bad:?}");
        }
        assert!(StreamId { ms: 1, seq: 9 } < StreamId { ms: 2, seq: 0 });
        assert_eq!(StreamId { ms: 1, seq: u64::MAX }.next(), Some(StreamId { ms: 2, seq: 0 }));
        assert_eq!(StreamId::MIN.prev(), None);
        let id = StreamId { ms: 7, seq: 1 };
        assert_eq!(StreamId::from_key(&id.to_key()), Some(id));
    }
}
