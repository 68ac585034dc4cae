//! `EventId`: a SCRU128 id, the event's global position.
//!
//! Ids strictly increase in commit order; the writer guarantees that even when
//! the clock steps back (see `IdGenerator`).

use std::fmt;
use std::str::FromStr;

use crate::error::StoreError;

/// A SCRU128 id: 25 characters in text, 16 bytes on disk, time-ordered.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(u128);

impl EventId {
    /// The smallest id; no event has it. "After `MIN`" means from the start.
    pub const MIN: EventId = EventId(0);

    /// The latest millisecond an id can hold (its top 48 bits).
    pub const MAX_MS: u64 = (1 << 48) - 1;

    /// A fresh id from the clock, for synthetic frames that are never stored.
    pub fn now() -> EventId {
        EventId(scru128::new().to_u128())
    }

    /// Parses the 25-character text form.
    pub fn parse(text: &str) -> Result<EventId, StoreError> {
        scru128::Id::try_from_str(text).map(|id| EventId(id.to_u128())).map_err(|_| {
            StoreError::invalid("id", format!("{text:?} is not a SCRU128 id (25 characters of 0-9 and a-z)"))
        })
    }

    /// The id as a number; order-preserving.
    pub fn to_u128(self) -> u128 {
        self.0
    }

    /// Builds an id from its numeric form.
    pub fn from_u128(value: u128) -> EventId {
        EventId(value)
    }

    /// Big-endian bytes: their byte order is the id order (index keys).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Inverse of [`EventId::to_bytes`].
    pub fn from_bytes(bytes: [u8; 16]) -> EventId {
        EventId(u128::from_be_bytes(bytes))
    }

    /// The 25-character text form as bytes, the same as `to_string()`
    /// gives. Written by hand: the scru128 crate's encoder divides the u128
    /// by a u128 (a slow library call) three times, and every event a
    /// read returns as JSON is written with this (`cairn-bench catch-up`).
    /// Here the number is held in four 32-bit limbs and divided by 36^6 with
    /// 64-bit divisions by a constant (multiplications), six digits a pass.
    pub fn encode(self) -> [u8; 25] {
        const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        /// Every two-digit group, so a pass takes three divisions, not six.
        const PAIRS: [[u8; 2]; 36 * 36] = {
            let mut pairs = [[0; 2]; 36 * 36];
            let mut i = 0;
            while i < pairs.len() {
                pairs[i] = [DIGITS[i / 36], DIGITS[i % 36]];
                i += 1;
            }
            pairs
        };
        const CHUNK: u64 = 36u64.pow(6);
        let mut limbs = [(self.0 >> 96) as u32, (self.0 >> 64) as u32, (self.0 >> 32) as u32, self.0 as u32];
        let mut out = [b'0'; 25];
        let mut end = out.len();
        for _ in 0..4 {
            let mut rem = 0u64;
            for limb in &mut limbs {
                // rem < CHUNK < 2^32, so the quotient fits a limb.
                let value = (rem << 32) | u64::from(*limb);
                *limb = (value / CHUNK) as u32;
                rem = value % CHUNK;
            }
            let mut chunk = rem as u32;
            for _ in 0..3 {
                end -= 2;
                out[end..end + 2].copy_from_slice(&PAIRS[(chunk % 1296) as usize]);
                chunk /= 1296;
            }
        }
        // What is left is below 2^128 / 36^24, under 36.
        out[0] = DIGITS[(limbs[3] % 36) as usize];
        out
    }

    /// Milliseconds since the Unix epoch at which the event was committed.
    pub fn timestamp_ms(self) -> u64 {
        scru128::Id::from_u128(self.0).timestamp()
    }

    /// The next id in order (used to make ids strictly increasing).
    pub(crate) fn successor(self) -> EventId {
        EventId(self.0 + 1)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.encode();
        f.pad(std::str::from_utf8(&text).expect("base 36 digits are ASCII"))
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

impl FromStr for EventId {
    type Err = StoreError;
    fn from_str(text: &str) -> Result<EventId, StoreError> {
        EventId::parse(text)
    }
}

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<EventId, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        EventId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Hands out strictly increasing ids: SCRU128 from the clock, but never at or
/// below the last id handed out (also across restarts).
///
/// It owns its SCRU128 generator (the writer is its only user), which avoids
/// the global generator's lock and per-id fork check.
pub(crate) struct IdGenerator {
    last: EventId,
    generator: scru128::Generator<SplitMix64>,
}

impl std::fmt::Debug for IdGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdGenerator").field("last", &self.last).finish_non_exhaustive()
    }
}

/// The random part of SCRU128 ids only has to make collisions between
/// stores unlikely; order comes from the timestamp and counters.
struct SplitMix64(u64);

impl scru128::generator::RandSource for SplitMix64 {
    fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 32) as u32
    }
}

impl IdGenerator {
    pub(crate) fn new(last: EventId) -> IdGenerator {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ (last.0 as u64);
        let generator =
            scru128::Generator::with_rand_and_time_sources(SplitMix64(seed), scru128::generator::StdSystemTime);
        IdGenerator { last, generator }
    }

    /// The next id, for an event committed at `now_ms` (one clock reading
    /// serves a whole batch).
    pub(crate) fn next_at(&mut self, now_ms: u64) -> EventId {
        let candidate = EventId(self.generator.generate_or_reset_with_ts(now_ms).to_u128());
        let id = if candidate > self.last { candidate } else { self.last.successor() };
        self.last = id;
        id
    }

    /// Moves the floor up after an imported event with an explicit id.
    pub(crate) fn observe(&mut self, id: EventId) {
        if id > self.last {
            self.last = id;
        }
    }

    pub(crate) fn last(&self) -> EventId {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_scru128_does() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut values = vec![0u128, 1, 35, 36, u128::MAX, u128::MAX - 1, 1 << 127, 36u128.pow(24), 36u128.pow(24) - 1];
        values.extend((0..128).map(|bit| 1u128 << bit));
        values.extend((0..10_000).map(|_| (u128::from(next()) << 64) | u128::from(next())));
        for value in values {
            let theirs = scru128::Id::from_u128(value).to_string();
            assert_eq!(std::str::from_utf8(&EventId(value).encode()).expect("ASCII"), theirs, "{value}");
            assert_eq!(EventId(value).to_string(), theirs);
        }
        // Padding and width still work through Display.
        assert_eq!(format!("{:>27}", EventId(0)), format!("  {}", "0".repeat(25)));
    }
}
