//! Printing events and other records as NDJSON, one per line. Every command
//! prints through here so output is identical whichever path produced it.

use std::io::Write;

use anyhow::Result;
use cairn_service::{Event, EventId};

/// Writes `event` as one JSON line, with its payload if given.
pub fn event_line(out: &mut impl Write, event: &Event, content: Option<&[u8]>) -> Result<()> {
    let mut line = Vec::with_capacity(256);
    cairn_service::json::write_event(&mut line, event, content);
    line.push(b'\n');
    out.write_all(&line)?;
    Ok(())
}

/// Writes a synthetic frame (`cairn.threshold`, `cairn.pulse`): never stored.
pub fn synthetic_line(out: &mut impl Write, topic: &str) -> Result<()> {
    let json = serde_json::json!({ "id": EventId::now().to_string(), "topic": topic, "seq": 0 });
    serde_json::to_writer(&mut *out, &json)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Writes any serializable value as one JSON line.
pub fn json_line(out: &mut impl Write, value: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")?;
    Ok(())
}
