//! The JSON form of an event, shared by every front end (CLI NDJSON, HTTP,
//! export/import), so an event looks the same everywhere. Field order is
//! fixed; absent optional fields are omitted.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Result, StoreError};
use crate::event::{Batch, Event, Expect, Hash, NewEvent, Ttl, check_meta};
use crate::id::EventId;
use crate::store::Imported;
use crate::topic::Topic;

/// Payload bytes from the JSON fields `content` (UTF-8 text) or
/// `content_base64`; at most one may be given. Shared by every front end
/// that accepts events as JSON.
pub fn content_bytes(content: Option<&str>, content_base64: Option<&str>) -> Result<Option<Vec<u8>>> {
    match (content, content_base64) {
        (Some(_), Some(_)) => Err(StoreError::invalid("content", "give content or content_base64, not both")),
        (Some(text), None) => Ok(Some(text.as_bytes().to_vec())),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Some)
            .map_err(|_| StoreError::invalid("content_base64", "is not valid base64")),
        (None, None) => Ok(None),
    }
}

/// An event as JSON: `{"id","topic","seq","type","meta","hash","size","ttl","user","content"|"content_base64"}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventJson {
    /// SCRU128 id.
    pub id: String,
    /// Topic.
    pub topic: String,
    /// Seq within the topic.
    pub seq: u64,
    /// Event type.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The meta object, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Box<RawValue>>,
    /// SRI hash of the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Payload size in bytes (with a payload only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Retention, when not `forever`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Who appended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The payload, when asked for and valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The payload, when asked for and not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
}

impl EventJson {
    /// The JSON form of `event`, with `content` inlined if given.
    pub fn from_event(event: &Event, content: Option<&[u8]>) -> EventJson {
        let (content, content_base64) = match content {
            None => (None, None),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => (Some(text.to_owned()), None),
                Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(bytes))),
            },
        };
        EventJson {
            id: event.id.to_string(),
            topic: event.topic.as_str().to_owned(),
            seq: event.seq,
            kind: event.kind.clone(),
            meta: event.meta.as_ref().and_then(|meta| RawValue::from_string(meta.clone()).ok()),
            hash: event.hash.map(|hash| hash.sri()),
            size: event.hash.map(|_| event.size),
            ttl: (event.ttl != Ttl::Forever).then(|| event.ttl.to_string()),
            user: event.user.clone(),
            content,
            content_base64,
        }
    }

    /// The payload carried in `content`/`content_base64`, if any.
    pub fn payload(&self) -> Result<Option<Vec<u8>>> {
        content_bytes(self.content.as_deref(), self.content_base64.as_deref())
    }

    /// Turns an exported line back into an event to import, checking that
    /// the content matches the hash.
    pub fn into_imported(self) -> Result<Imported> {
        let id = EventId::parse(&self.id)?;
        let topic = Topic::new(&self.topic)?;
        let payload = self.payload()?;
        match (&self.hash, &payload) {
            (Some(hash), Some(bytes)) => {
                if Hash::parse(hash)? != Hash::of(bytes) {
                    return Err(StoreError::invalid("content", format!("event {id}: content does not match its hash")));
                }
            }
            (Some(_), None) => {
                return Err(StoreError::invalid(
                    "content",
                    format!("event {id} has a hash but no content; export with content"),
                ));
            }
            (None, Some(_)) => return Err(StoreError::invalid("hash", format!("event {id} has content but no hash"))),
            (None, None) => {}
        }
        let meta = self.meta.as_ref().map(|raw| check_meta(raw.get())).transpose()?;
        let ttl = self.ttl.as_deref().map(Ttl::parse).transpose()?.unwrap_or_default();
        let event = NewEvent { topic: Some(topic), kind: self.kind, meta, payload, ttl, user: self.user };
        Ok(Imported { id, seq: self.seq, event })
    }
}

/// Writes the JSON form of `event` (the bytes `serde_json` writes for
/// [`EventJson::from_event`]) straight into `out`, without building the
/// owned `EventJson` first: streaming reads write millions of these.
pub fn write_event(out: &mut Vec<u8>, event: &Event, content: Option<&[u8]>) {
    let string = |out: &mut Vec<u8>, text: &str| {
        serde_json::to_writer(&mut *out, text).expect("writing a string to a Vec cannot fail");
    };
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(&event.id.encode());
    out.extend_from_slice(b"\",\"topic\":");
    string(out, event.topic.as_str());
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(digits.format(event.seq).as_bytes());
    if let Some(kind) = &event.kind {
        out.extend_from_slice(b",\"type\":");
        string(out, kind);
    }
    if let Some(meta) = &event.meta {
        out.extend_from_slice(b",\"meta\":");
        out.extend_from_slice(meta.as_bytes());
    }
    if let Some(hash) = &event.hash {
        out.extend_from_slice(b",\"hash\":\"sha256-");
        let mut encoded = [0u8; 44];
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(hash.0, &mut encoded)
            .expect("44 bytes hold a base64 sha256");
        out.extend_from_slice(&encoded[..n]);
        out.extend_from_slice(b"\",\"size\":");
        out.extend_from_slice(digits.format(event.size).as_bytes());
    }
    if event.ttl != Ttl::Forever {
        out.extend_from_slice(b",\"ttl\":");
        string(out, &event.ttl.to_string());
    }
    if let Some(user) = &event.user {
        out.extend_from_slice(b",\"user\":");
        string(out, user);
    }
    match content.map(std::str::from_utf8) {
        None => {}
        Some(Ok(text)) => {
            out.extend_from_slice(b",\"content\":");
            string(out, text);
        }
        Some(Err(_)) => {
            out.extend_from_slice(b",\"content_base64\":\"");
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD.encode(content.unwrap_or_default()).as_bytes(),
            );
            out.push(b'"');
        }
    }
    out.push(b'}');
}

/// One event of a batch as JSON (`cairn append --batch`, `POST /v1/batch`):
/// `{"topic", "type"?, "meta"?, "content"|"content_base64"?, "ttl"?, "expect"?}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchEventJson {
    /// Topic.
    pub topic: String,
    /// Event type.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Meta object.
    #[serde(default)]
    pub meta: Option<Box<RawValue>>,
    /// Payload as text.
    #[serde(default)]
    pub content: Option<String>,
    /// Payload as base64.
    #[serde(default)]
    pub content_base64: Option<String>,
    /// Retention.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Expectation on the topic (one per topic per batch).
    #[serde(default)]
    pub expect: Option<String>,
}

/// Collects batch events into a [`Batch`], stamping `user` on each. `line`
/// numbers errors from 1 (a line of NDJSON or an element of an array).
pub fn batch_from_json(
    events: impl IntoIterator<Item = BatchEventJson>,
    user: Option<&str>,
    idempotency_key: Option<String>,
) -> Result<Batch> {
    let mut batch = Batch { idempotency_key, ..Batch::default() };
    for (idx, json) in events.into_iter().enumerate() {
        let at = |error: StoreError| match error {
            StoreError::Invalid { field, rule } => {
                StoreError::Invalid { field, rule: format!("event {}: {rule}", idx + 1) }
            }
            other => other,
        };
        let topic = Topic::new(&json.topic).map_err(at)?;
        let payload = content_bytes(json.content.as_deref(), json.content_base64.as_deref()).map_err(at)?;
        if let Some(expect) = json.expect {
            let expect = Expect::parse(&expect).map_err(at)?;
            if let Some(previous) = batch.expect.insert(topic.clone(), expect)
                && previous != expect
            {
                return Err(at(StoreError::invalid(
                    "expect",
                    format!("topic {topic} has two different expectations ({previous} and {expect})"),
                )));
            }
        }
        let meta = json.meta.as_ref().map(|raw| check_meta(raw.get())).transpose().map_err(at)?;
        let ttl = json.ttl.as_deref().map(Ttl::parse).transpose().map_err(at)?.unwrap_or_default();
        batch.events.push(NewEvent {
            topic: Some(topic),
            kind: json.kind,
            meta,
            payload,
            ttl,
            user: user.map(str::to_owned),
        });
    }
    if batch.events.is_empty() {
        return Err(StoreError::invalid("batch", "has no events"));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{InlineBytes, Payload};

    #[test]
    fn write_event_writes_what_serde_writes_for_event_json() {
        let topic = Topic::new("orders.1").expect("valid topic");
        let plain = Event::bare(EventId::now(), topic.clone(), 7);
        let full = Event {
            kind: Some("Quote\"d \u{e9}".to_owned()),
            meta: Some(r#"{"a":[1,2],"b":"\n"}"#.to_owned()),
            hash: Some(Hash::of(b"x")),
            size: 1,
            ttl: Ttl::Last { n: 3 },
            user: Some("alice".to_owned()),
            payload: Payload::Inline(InlineBytes::from(&b"x"[..])),
            ..plain.clone()
        };
        for (event, content) in [
            (&plain, None),
            (&full, None),
            (&full, Some(&b"line\n\"quoted\"\t\x01"[..])),
            (&full, Some(&b"\xff\x00"[..])),
        ] {
            let mut direct = Vec::new();
            write_event(&mut direct, event, content);
            let via_serde = serde_json::to_vec(&EventJson::from_event(event, content)).expect("serializes");
            assert_eq!(String::from_utf8_lossy(&direct), String::from_utf8_lossy(&via_serde));
        }
    }
}
