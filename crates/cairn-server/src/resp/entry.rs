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
            write_string(json, base64::engine::general_purpose::STANDARD.encode(side).as_bytes())
        } else {
            write_string(json, side)
        };
        if !written {
            return false;
        }
    }
    json.push(b'}');
    true
}

/// Whether a byte of a JSON string needs a closer look: its end, an
/// escape, a control byte (escaped when written, refused when read) or the
/// start of a character beyond ASCII.
fn special(b: u8) -> bool {
    (b == b'"') | (b == b'\\') | (b.wrapping_sub(0x20) >= 0x60)
}

/// Writes `text` into `json` as a JSON string, as serde_json writes it;
/// false (and nothing written) if it is not UTF-8.
fn write_string(json: &mut Vec<u8>, text: &[u8]) -> bool {
    // Printable ASCII without a quote or backslash (an XADD field usually
    // is) is its own JSON text: written as it is, where serde_json's escaper
    // goes byte by byte, and UTF-8 without a check. (A fold, not `any`, so
    // it becomes vector compares.)
    if !text.iter().fold(false, |seen, &b| seen | special(b)) {
        json.reserve(text.len() + 2);
        json.push(b'"');
        json.extend_from_slice(text);
        json.push(b'"');
        return true;
    }
    let Ok(text) = std::str::from_utf8(text) else { return false };
    serde_json::to_writer(&mut *json, text).expect("a string serializes into a vector");
    true
}

/// An event's field-value pairs (see the module docs) into `pairs` (its
/// old contents dropped), borrowing from `content` where it can. `content`
/// is its payload (`None` without one). A caller writing many entries
/// passes the same vector for each, so an entry costs no allocation.
pub(crate) fn pairs_of<'a>(event: &'a Event, content: Option<&'a [u8]>, pairs: &mut Vec<Cow<'a, [u8]>>) {
    pairs.clear();
    if let Some(kind) = &event.kind {
        pairs.push(Cow::Borrowed(&b"type"[..]));
        pairs.push(Cow::Borrowed(kind.as_bytes()));
    }
    let Some(content) = content else { return };
    let base64 = event.meta.as_deref() == Some(BASE64_META);
    let decoded = |text: &[u8]| if base64 { base64::engine::general_purpose::STANDARD.decode(text).ok() } else { None };
    let bytes = |text: Cow<'a, str>| -> Cow<'a, [u8]> {
        if let Some(decoded) = decoded(text.as_bytes()) {
            return Cow::Owned(decoded);
        }
        match text {
            Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
            Cow::Owned(text) => Cow::Owned(text.into_bytes()),
        }
    };
    let before = pairs.len();
    if plain_object(content, |text| pairs.push(decoded(text).map_or(Cow::Borrowed(text), Cow::Owned))) {
        return;
    }
    pairs.truncate(before);
    match object_members(content) {
        Some(members) => {
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
}

/// The payload as XADD writes it, read without a JSON parser: an object
/// with no whitespace whose keys and values are all strings without
/// escapes. Calls `each` with every key and value in order and says true;
/// false for anything else (having called `each` for what came before),
/// which [`object_members`] then reads. Where it says true, the strings it
/// gives (as their UTF-8 bytes) are exactly what a JSON parser would: it
/// accepts only text in which no byte needs unescaping (no `"`, `\` or
/// control byte inside a string) and that is UTF-8.
fn plain_object<'a>(bytes: &'a [u8], mut each: impl FnMut(&'a [u8])) -> bool {
    let Some(mut rest) = bytes.strip_prefix(b"{") else { return false };
    if rest == b"}" {
        return true;
    }
    loop {
        let Some((key, after)) = plain_string(rest) else { return false };
        let Some((value, after)) = after.strip_prefix(b":").and_then(plain_string) else { return false };
        each(key);
        each(value);
        match after {
            [b'}'] => return true,
            [b',', more @ ..] => rest = more,
            _ => return false,
        }
    }
}

/// A JSON string at the start of `bytes` that needs no unescaping, as its
/// UTF-8 bytes, and what follows it.
fn plain_string(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let text = bytes.strip_prefix(b"\"")?;
    // 32 bytes at a time while none is `special` (a control byte is not
    // allowed in a JSON string: the parser decides what such a payload
    // reads as), then one at a time.
    let mut at = 0;
    for chunk in text.chunks_exact(32) {
        if chunk.iter().fold(false, |seen, &b| seen | special(b)) {
            break;
        }
        at += 32;
    }
    let mut ascii = true;
    loop {
        match *text.get(at)? {
            b'"' => break,
            b'\\' | ..0x20 => return None,
            0x80.. => ascii = false,
            _ => {}
        }
        at += 1;
    }
    let (string, after) = text.split_at(at);
    if !ascii {
        std::str::from_utf8(string).ok()?;
    }
    Some((string, &after[1..]))
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

    fn pairs(event: &Event, payload: &[u8]) -> Vec<Vec<u8>> {
        let mut pairs = vec![Cow::Borrowed(&b"left over"[..])];
        pairs_of(event, Some(payload), &mut pairs);
        pairs.into_iter().map(Cow::into_owned).collect()
    }

    #[test]
    fn pairs_round_trip_in_order_with_repeats_and_binary() {
        let topic = Topic::new("s").unwrap();
        for input in [
            vec![&b"f"[..], b"v", b"g", b"{\"x\":1}", b"f", b"again"],
            vec![&b"a\r\n\0"[..], b"\xff\xfe", b"k", b""],
            vec![&b"f"[..], "caf\u{e9} \u{1F600}".as_bytes(), b"q\"uote", b"back\\slash"],
        ] {
            let wire: Vec<bytes::Bytes> = input.iter().map(|p| bytes::Bytes::copy_from_slice(p)).collect();
            let (event, payload) = stored(event_from_pairs(topic.clone(), &wire));
            assert_eq!(pairs(&event, &payload), input.iter().map(|p| p.to_vec()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn other_events_read_as_type_and_data_or_their_object() {
        let topic = Topic::new("s").unwrap();
        let (event, payload) = stored(NewEvent::new(topic.clone(), "Hello\r\n").with_type("greeting"));
        let expected: Vec<Vec<u8>> = vec![b"type".into(), b"greeting".into(), b"data".into(), b"Hello\r\n".into()];
        assert_eq!(pairs(&event, &payload), expected);
        let (event, payload) = stored(NewEvent::new(topic.clone(), r#"{"n":1,"s":"t\u0041","o":{"a":[true]}}"#));
        let expected: Vec<Vec<u8>> =
            vec![b"n".into(), b"1".into(), b"s".into(), b"tA".into(), b"o".into(), br#"{"a":[true]}"#.into()];
        assert_eq!(pairs(&event, &payload), expected);
        // Plain at first, then not: nothing of the plain start is kept twice.
        for (payload, expected) in [
            (&br#"{"a":"b","c":2}"#[..], vec![&b"a"[..], b"b", b"c", b"2"]),
            (br#"{"a":"b", "c":"d"}"#, vec![b"a", b"b", b"c", b"d"]),
            (br#"{"a":"b","c":"d"} "#, vec![b"a", b"b", b"c", b"d"]),
            (b"{\"a\":\"b\",\"c\":\"\x01\"}", vec![b"data", b"{\"a\":\"b\",\"c\":\"\x01\"}"]),
            (b"{\"a\":\"b\",\"c\":\"\xff\"}", vec![b"data", b"{\"a\":\"b\",\"c\":\"\xff\"}"]),
            (br#"{"a":"b","c":"d"}x"#, vec![b"data", br#"{"a":"b","c":"d"}x"#]),
            (br#"{"a":"b","#, vec![b"data", br#"{"a":"b","#]),
            (br#"{}"#, vec![]),
            (b"{\"a\":\"\x1f\"}", vec![b"data", b"{\"a\":\"\x1f\"}"]),
            (b"{\"a\":\" \x7f\"}", vec![b"a", b" \x7f"]),
        ] {
            let (event, _) = stored(NewEvent::new(topic.clone(), payload));
            assert_eq!(pairs(&event, payload), expected.iter().map(|p| p.to_vec()).collect::<Vec<_>>(), "{payload:?}");
        }
    }

    /// The JSON parser's reading of `bytes` where every member is a string.
    fn parsed_strings(bytes: &[u8]) -> Option<Vec<String>> {
        let mut strings = Vec::new();
        for (Text(key), value) in object_members(bytes)? {
            strings.push(key.into_owned());
            strings.push(serde_json::from_str::<String>(value.get()).ok()?);
        }
        Some(strings)
    }

    fn plain(bytes: &[u8]) -> Option<Vec<String>> {
        let mut strings = Vec::new();
        plain_object(bytes, |s| strings.push(String::from_utf8(s.to_vec()).expect("UTF-8"))).then_some(strings)
    }

    proptest::proptest! {
        /// Wherever the reader without a parser says yes, it reads what
        /// the parser does.
        #[test]
        fn plain_objects_read_as_the_parser_does(
            bytes in proptest::collection::vec(
                proptest::sample::select(vec![b'{', b'}', b'"', b':', b',', b'\\', b' ', b'a', b'u', b'1', 0x01, 0x1f, 0x7f, 0xc3, 0xa9, 0xff]),
                0..40,
            ),
        ) {
            if let Some(strings) = plain(&bytes) {
                proptest::prop_assert_eq!(Some(strings), parsed_strings(&bytes));
            }
        }

        /// A string written for XADD is what serde_json writes, or refused
        /// (with nothing written) exactly when it is not UTF-8.
        #[test]
        fn strings_are_written_as_serde_json_writes_them(
            text in proptest::collection::vec(
                proptest::prop_oneof![
                    8 => proptest::sample::select(b"abz09 ~{}:,\"\\".to_vec()),
                    1 => proptest::prelude::any::<u8>(),
                ],
                0..100,
            ),
        ) {
            let mut json = Vec::new();
            let written = write_string(&mut json, &text);
            match std::str::from_utf8(&text) {
                Ok(text) => {
                    proptest::prop_assert!(written);
                    proptest::prop_assert_eq!(json, serde_json::to_vec(text).unwrap());
                }
                Err(_) => proptest::prop_assert!(!written && json.is_empty()),
            }
        }

        /// The same for strings long enough to be read 32 bytes at a time
        /// before the byte that decides.
        #[test]
        fn long_strings_read_as_the_parser_does(
            run in 0usize..100,
            tail in proptest::collection::vec(
                proptest::sample::select(vec![b'"', b'}', b'\\', b'a', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xc3, 0xa9, 0xff]),
                0..6,
            ),
            more in 0usize..40,
        ) {
            let mut bytes = br#"{"k":""#.to_vec();
            bytes.extend(std::iter::repeat_n(b'a', run));
            bytes.extend(&tail);
            bytes.extend(std::iter::repeat_n(b'a', more));
            if let Some(strings) = plain(&bytes) {
                proptest::prop_assert_eq!(Some(strings), parsed_strings(&bytes));
            }
            bytes.extend(br#""}"#);
            let parsed = parsed_strings(&bytes);
            let plain = plain(&bytes);
            if tail.iter().all(|&b| b != b'"' && b != b'\\' && b >= 0x20) && parsed.is_some() {
                proptest::prop_assert_eq!(&plain, &parsed);
            }
            if let Some(strings) = plain {
                proptest::prop_assert_eq!(Some(strings), parsed);
            }
        }

        /// Objects as XADD writes them: read without the parser unless a
        /// string needs unescaping, and the same either way; one byte
        /// changed anywhere never makes them read differently.
        #[test]
        fn written_objects_read_alike(
            strings in proptest::collection::vec(proptest::string::string_regex("(.|[\"\\\\\\x00-\\x1f])*").unwrap(), 0..6),
            at in 0usize..1000,
            byte in proptest::prop_oneof![
                proptest::prelude::any::<u8>(),
                proptest::sample::select(vec![b'"', b'\\', b'{', b'}', b':', b',', 0x1f, 0x20, 0x7f, 0xff]),
            ],
        ) {
            let strings: Vec<String> = if strings.len() % 2 == 1 { strings[1..].to_vec() } else { strings };
            let mut json = b"{".to_vec();
            for (n, s) in strings.iter().enumerate() {
                if n > 0 {
                    json.push(if n % 2 == 1 { b':' } else { b',' });
                }
                serde_json::to_writer(&mut json, s).unwrap();
            }
            json.push(b'}');
            let escaped = strings.iter().any(|s| s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
            proptest::prop_assert_eq!(plain(&json).is_some(), !escaped);
            proptest::prop_assert_eq!(parsed_strings(&json), Some(strings));
            let at = at % json.len();
            json[at] = byte;
            if let Some(strings) = plain(&json) {
                proptest::prop_assert_eq!(Some(strings), parsed_strings(&json));
            }
        }
    }
}
