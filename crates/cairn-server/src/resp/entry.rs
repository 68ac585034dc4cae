//! Events as Redis stream entries: field-value pairs (entry ids are the
//! service's `StreamId`, `<ms>-<seq>`).
//!
//! Field form (documented in the README):
//! - `XADD k * f1 v1 f2 v2` stores the payload `{"f1":"v1","f2":"v2"}` (a
//!   JSON object, pairs in order, repeated fields kept). When a field or
//!   value is not UTF-8, every key and value is base64 and the event's meta
//!   says `{"redis_encoding":"base64"}`.
//! - Reading any event as an entry: `type <type>` first when it has a type,
//!   then, for a JSON-object payload, its members in order (strings as they
//!   are, other values as JSON text); for any other payload, `data <bytes>`.

use std::borrow::Cow;

use base64::Engine as _;
use cairn_service::{Event, NewEvent, Topic};
use serde::de::{Deserializer as _, MapAccess, Visitor};

/// The meta of an XADD whose fields are base64.
const BASE64_META: &str = r#"{"redis_encoding":"base64"}"#;

/// The event an `XADD` of `pairs` appends to `topic`.
pub(crate) fn event_from_pairs(topic: Topic, pairs: &[bytes::Bytes]) -> NewEvent {
    let mut json = Vec::with_capacity(pairs.iter().map(|p| p.len() + 4).sum::<usize>() + 2);
    // Text (the usual case) in one pass; a side that is not UTF-8 makes
    // every side base64, in a second.
    let all_text = pairs_json(pairs, false, &mut json);
    if !all_text {
        json.clear();
        pairs_json(pairs, true, &mut json);
    }
    let mut event = NewEvent::new(topic, json);
    if !all_text {
        event.meta = Some(BASE64_META.to_owned());
    }
    event
}

/// Writes `pairs` (field, value, ...) as one JSON object into `json`, each
/// side a string: its text, or with `base64` its bytes in base64. False,
/// and `json` half written, if a side is not text (without `base64`).
fn pairs_json(pairs: &[bytes::Bytes], base64: bool, json: &mut Vec<u8>) -> bool {
    json.push(b'{');
    for (n, side) in pairs.iter().enumerate() {
        if n > 0 {
            json.push(if n % 2 == 1 { b':' } else { b',' });
        }
        let written = if base64 {
            serde_json::to_writer(&mut *json, &base64::engine::general_purpose::STANDARD.encode(side))
        } else {
            let Ok(text) = std::str::from_utf8(side) else { return false };
            serde_json::to_writer(&mut *json, text)
        };
        written.expect("a string serializes into a vector");
    }
    json.push(b'}');
    true
}

/// An event's field-value pairs (see the module docs), borrowing from
/// `content` where it can. `content` is its payload (`None` without one).
pub(crate) fn pairs_of<'a>(event: &'a Event, content: Option<&'a [u8]>) -> Vec<Cow<'a, [u8]>> {
    let mut pairs = Vec::new();
    if let Some(kind) = &event.kind {
        pairs.push(Cow::Borrowed(&b"type"[..]));
        pairs.push(Cow::Borrowed(kind.as_bytes()));
    }
    let Some(content) = content else { return pairs };
    match object_members(content) {
        Some(members) => {
            let base64 = event.meta.as_deref() == Some(BASE64_META);
            let bytes = |text: Cow<'a, str>| -> Cow<'a, [u8]> {
                if base64 && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(text.as_bytes()) {
                    return Cow::Owned(decoded);
                }
                match text {
                    Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
                    Cow::Owned(text) => Cow::Owned(text.into_bytes()),
                }
            };
            for (Text(key), value) in members {
                pairs.push(bytes(key));
                let raw = value.get();
                match serde_json::from_str::<Text<'a>>(raw) {
                    Ok(Text(text)) if raw.starts_with('"') => pairs.push(bytes(text)),
                    _ => pairs.push(Cow::Borrowed(raw.as_bytes())),
                }
            }
        }
        None => {
            pairs.push(Cow::Borrowed(&b"data"[..]));
            pairs.push(Cow::Borrowed(content));
        }
    }
    pairs
}

/// A JSON string, borrowed when it has no escapes.
#[derive(serde::Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

type Members<'a> = Vec<(Text<'a>, &'a serde_json::value::RawValue)>;

/// The members of a JSON object in order, duplicates kept, values as their
/// JSON text; `None` when `bytes` is not one.
fn object_members(bytes: &[u8]) -> Option<Members<'_>> {
    if bytes.first() != Some(&b'{') {
        return None;
    }
    struct Visit;
    impl<'de> Visitor<'de> for Visit {
        type Value = Members<'de>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut members = Vec::new();
            while let Some(member) = map.next_entry::<Text<'de>, &'de serde_json::value::RawValue>()? {
                members.push(member);
            }
            Ok(members)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let members = deserializer.deserialize_map(Visit).ok()?;
    deserializer.end().ok()?;
    Some(members)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stored(new: NewEvent) -> (Event, Vec<u8>) {
        let payload = new.payload.clone().unwrap_or_default();
        let event = Event {
            id: cairn_service::EventId::now(),
            topic: new.topic.clone().unwrap(),
            seq: 0,
            kind: new.kind.clone(),
            meta: new.meta.clone(),
            hash: None,
            size: payload.len() as u64,
            ttl: cairn_service::Ttl::Forever,
            user: None,
            payload: cairn_service::Payload::None,
            imported: false,
        };
        (event, payload)
    }

    #[test]
    fn pairs_round_trip_in_order_with_repeats_and_binary() {
        let topic = Topic::new("s").unwrap();
        for pairs in
            [vec![&b"f"[..], b"v", b"g", b"{\"x\":1}", b"f", b"again"], vec![&b"a\r\n\0"[..], b"\xff\xfe", b"k", b""]]
        {
            let input: Vec<bytes::Bytes> = pairs.iter().map(|p| bytes::Bytes::copy_from_slice(p)).collect();
            let (event, payload) = stored(event_from_pairs(topic.clone(), &input));
            let output: Vec<Vec<u8>> = pairs_of(&event, Some(&payload)).into_iter().map(Cow::into_owned).collect();
            assert_eq!(output, pairs.iter().map(|p| p.to_vec()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn other_events_read_as_type_and_data_or_their_object() {
        let topic = Topic::new("s").unwrap();
        let (event, payload) = stored(NewEvent::new(topic.clone(), "Hello\r\n").with_type("greeting"));
        let expected: Vec<Vec<u8>> = vec![b"type".into(), b"greeting".into(), b"data".into(), b"Hello\r\n".into()];
        let owned = |pairs: Vec<Cow<'_, [u8]>>| pairs.into_iter().map(Cow::into_owned).collect::<Vec<_>>();
        assert_eq!(owned(pairs_of(&event, Some(&payload))), expected);
        let (event, payload) = stored(NewEvent::new(topic, r#"{"n":1,"s":"t\u0041","o":{"a":[true]}}"#));
        let expected: Vec<Vec<u8>> =
            vec![b"n".into(), b"1".into(), b"s".into(), b"tA".into(), b"o".into(), br#"{"a":[true]}"#.into()];
        assert_eq!(owned(pairs_of(&event, Some(&payload))), expected);
    }
}
