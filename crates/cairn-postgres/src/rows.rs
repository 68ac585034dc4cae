//! Events as rows and back, and topic patterns as SQL conditions.
//!
//! An id is stored as its 16 big-endian bytes (`bytea`), whose byte order
//! (PostgreSQL compares `bytea` with memcmp) is id order. A hash is its 32
//! bytes. A payload up to the inline limit is in the row (`payload`); a
//! larger one is in `cairn_content` under the hash (`payload` null).

use std::sync::Arc;

use cairn_store::{Event, EventId, Hash, Level, Pattern, Payload, StoreError, Topic, Ttl};
use tokio_postgres::Row;

/// The columns every event query selects, in the order [`event`] reads.
pub(crate) const EVENT_COLUMNS: &str = "id, topic, seq, kind, meta, usr, hash, size, ttl, imported, payload";

/// The same columns of `cairn_ephemeral`, which keeps no ttl or import flag.
pub(crate) const EPHEMERAL_COLUMNS: &str =
    "id, topic, seq, kind, meta, usr, hash, size, 'ephemeral'::text, false, payload";

/// The event in a row selected with [`EVENT_COLUMNS`].
pub(crate) fn event(row: &Row) -> Result<Event, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt { location: "PostgreSQL table cairn_events".into(), detail };
    let id: &[u8] = row.get(0);
    let id = id_from(id).ok_or_else(|| corrupt(format!("an id of {} bytes", id.len())))?;
    let topic: &str = row.get(1);
    let topic = Topic::new(topic).map_err(|error| corrupt(format!("event {id}: {error}")))?;
    let seq: i64 = row.get(2);
    let hash: Option<&[u8]> = row.get(6);
    let hash = match hash {
        None => None,
        Some(bytes) => Some(hash_from(bytes).ok_or_else(|| corrupt(format!("event {id}: a bad hash")))?),
    };
    let size: i64 = row.get(7);
    let ttl: &str = row.get(8);
    let ttl = Ttl::parse(ttl).map_err(|error| corrupt(format!("event {id}: {error}")))?;
    let payload: Option<Vec<u8>> = row.get(10);
    let payload = match (hash, payload) {
        (None, _) => Payload::None,
        (Some(_), Some(bytes)) => Payload::Inline(bytes.into()),
        (Some(_), None) => Payload::Stored,
    };
    Ok(Event {
        id,
        topic,
        seq: seq as u64,
        kind: row.get(3),
        meta: row.get(4),
        hash,
        size: size as u64,
        ttl,
        user: row.get(5),
        payload,
        imported: row.get(9),
    })
}

/// Events in rows selected with [`EVENT_COLUMNS`], shared.
pub(crate) fn events(rows: &[Row]) -> Result<Vec<Arc<Event>>, StoreError> {
    rows.iter().map(|row| event(row).map(Arc::new)).collect()
}

/// An id from its 16 stored bytes.
pub(crate) fn id_from(bytes: &[u8]) -> Option<EventId> {
    Some(EventId::from_bytes(bytes.try_into().ok()?))
}

/// A hash from its 32 stored bytes.
pub(crate) fn hash_from(bytes: &[u8]) -> Option<Hash> {
    Some(Hash(bytes.try_into().ok()?))
}

/// When an event of `ttl` committed at `id` expires, in ms since the epoch.
pub(crate) fn expires_ms(id: EventId, ttl: Ttl) -> Option<i64> {
    match ttl {
        Ttl::Time { ms } => Some(id.timestamp_ms().saturating_add(ms).min(i64::MAX as u64) as i64),
        _ => None,
    }
}

/// A SQL condition on `topic` for `pattern` using parameter `$param`, and
/// the parameter's value; `None` when every topic matches.
pub(crate) fn pattern_condition(pattern: &Pattern, param: usize) -> Option<(String, String)> {
    match pattern {
        Pattern::Exact(topic) => Some((format!("topic = ${param}"), topic.as_str().to_owned())),
        Pattern::Wildcard(levels) if matches!(levels.as_slice(), [Level::Rest]) => None,
        Pattern::Wildcard(levels) => {
            // An anchored regular expression: `*` one level, `>` the rest.
            let mut regex = String::from("^");
            for (n, level) in levels.iter().enumerate() {
                if n > 0 {
                    regex.push_str("\\.");
                }
                match level {
                    Level::Literal(text) => {
                        for c in text.chars() {
                            if !c.is_ascii_alphanumeric() {
                                regex.push('\\');
                            }
                            regex.push(c);
                        }
                    }
                    Level::One => regex.push_str("[^.]+"),
                    Level::Rest => regex.push_str(".+"),
                }
            }
            regex.push('$');
            Some((format!("topic ~ ${param}"), regex))
        }
    }
}

/// The smallest key greater than every key starting with `prefix` (`None`:
/// no bound, the prefix is empty or all 0xFF).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_anchored_conditions() {
        let condition = |text: &str| pattern_condition(&Pattern::parse(text).expect("a pattern"), 1);
        assert_eq!(condition(">"), None);
        assert_eq!(condition("orders.1"), Some(("topic = $1".to_owned(), "orders.1".to_owned())));
        assert_eq!(condition("orders.*"), Some(("topic ~ $1".to_owned(), "^orders\\.[^.]+$".to_owned())));
        assert_eq!(condition("a-b.>"), Some(("topic ~ $1".to_owned(), "^a\\-b\\..+$".to_owned())));
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"g/"), Some(b"g0".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF]), None);
    }
}
