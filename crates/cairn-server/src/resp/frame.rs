//! The RESP wire format, sans IO: [`parse`] finds one command in a buffer
//! (a multibulk array of bulk strings, or an inline line as telnet and
//! `redis-cli` in some modes send), and [`Out`] writes replies in RESP2 or
//! RESP3. "Incomplete" (read more) and "invalid" (reply and close) are kept
//! apart: a parse error means the framing is broken and the connection must
//! close, while a bad command inside a good frame is the handler's business.

use std::ops::Range;

use bytes::{BufMut as _, BytesMut};

/// Most arguments one command may carry.
pub(crate) const ARGS_MAX: usize = 1024 * 1024;
/// Longest inline command line.
pub(crate) const INLINE_BYTES_MAX: usize = 64 * 1024;

/// One command found in the input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// A multibulk command: each argument's range in the consumed bytes.
    Args(Vec<Range<usize>>),
    /// An inline command, already split and unquoted.
    Inline(Vec<Vec<u8>>),
}

/// Why the framing is broken; the connection closes after this reply.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProtocolError(pub(crate) String);

/// Finds the first complete command in `buf`: `Ok(None)` when more bytes
/// are needed, else the command and how many bytes it used. `bulk_max`
/// bounds one argument.
pub(crate) fn parse(buf: &[u8], bulk_max: usize) -> Result<Option<(Request, usize)>, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buf, bulk_max),
        Some(_) => parse_inline(buf),
    }
}

fn parse_multibulk(buf: &[u8], bulk_max: usize) -> Result<Option<(Request, usize)>, ProtocolError> {
    let Some((count, mut at)) = line_number(buf, 1, "multibulk length")? else { return Ok(None) };
    if count > ARGS_MAX as i64 {
        return Err(ProtocolError("invalid multibulk length".to_owned()));
    }
    let count = usize::try_from(count).unwrap_or(0);
    let mut args = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&other) => {
                return Err(ProtocolError(format!("expected '$', got '{}'", char::from(other).escape_default())));
            }
        }
        let Some((len, start)) = line_number(buf, at + 1, "bulk length")? else { return Ok(None) };
        if len < 0 || len as u64 > bulk_max as u64 {
            return Err(ProtocolError("invalid bulk length".to_owned()));
        }
        let end = start + len as usize;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError("bulk string is not followed by CRLF".to_owned()));
        }
        args.push(start..end);
        at = end + 2;
    }
    Ok(Some((Request::Args(args), at)))
}

/// Reads the decimal number from `from` up to CRLF; returns it and the
/// offset after the CRLF.
fn line_number(buf: &[u8], from: usize, what: &str) -> Result<Option<(i64, usize)>, ProtocolError> {
    let rest = buf.get(from..).unwrap_or_default();
    let Some(cr) = rest.iter().take(32).position(|&b| b == b'\r' || b == b'\n') else {
        return if rest.len() >= 32 { Err(ProtocolError(format!("invalid {what}"))) } else { Ok(None) };
    };
    if rest[cr] == b'\n' {
        return Err(ProtocolError(format!("invalid {what}")));
    }
    match rest.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(ProtocolError(format!("invalid {what}"))),
    }
    let number = std::str::from_utf8(&rest[..cr])
        .ok()
        .filter(|text| !text.is_empty() && !text.starts_with('+'))
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or_else(|| ProtocolError(format!("invalid {what}")))?;
    Ok(Some((number, from + cr + 2)))
}

fn parse_inline(buf: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
    let Some(newline) = buf.iter().take(INLINE_BYTES_MAX + 1).position(|&b| b == b'\n') else {
        return if buf.len() > INLINE_BYTES_MAX {
            Err(ProtocolError("too big inline request".to_owned()))
        } else {
            Ok(None)
        };
    };
    let line = buf[..newline].strip_suffix(b"\r").unwrap_or(&buf[..newline]);
    let args = split_inline(line).ok_or_else(|| ProtocolError("unbalanced quotes in request".to_owned()))?;
    Ok(Some((Request::Inline(args), newline + 1)))
}

/// Splits an inline line on spaces, honouring "double quotes" (with \n,
/// \r, \t, \\, \" and \xHH escapes) and 'single quotes', as Redis does.
fn split_inline(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut at = 0;
    loop {
        while line.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        let Some(&first) = line.get(at) else { return Some(args) };
        let mut arg = Vec::new();
        match first {
            b'"' => {
                at += 1;
                loop {
                    match *line.get(at)? {
                        b'"' => break,
                        b'\\' => {
                            let escaped = *line.get(at + 1)?;
                            at += 1;
                            let byte = match escaped {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 8,
                                b'a' => 7,
                                b'x' => {
                                    let hex = line.get(at + 1..at + 3).and_then(|h| std::str::from_utf8(h).ok());
                                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                                        Some(byte) => {
                                            at += 2;
                                            byte
                                        }
                                        None => b'x',
                                    }
                                }
                                other => other,
                            };
                            arg.push(byte);
                        }
                        byte => arg.push(byte),
                    }
                    at += 1;
                }
                at += 1;
            }
            b'\'' => {
                at += 1;
                loop {
                    match *line.get(at)? {
                        b'\'' => break,
                        b'\\' if line.get(at + 1) == Some(&b'\'') => {
                            arg.push(b'\'');
                            at += 1;
                        }
                        byte => arg.push(byte),
                    }
                    at += 1;
                }
                at += 1;
            }
            _ => {
                while let Some(&byte) = line.get(at).filter(|b| !b.is_ascii_whitespace()) {
                    arg.push(byte);
                    at += 1;
                }
            }
        }
        // A closing quote must be followed by a space or the end.
        if matches!(first, b'"' | b'\'') && line.get(at).is_some_and(|b| !b.is_ascii_whitespace()) {
            return None;
        }
        args.push(arg);
    }
}

/// Replies, written straight into the connection's output buffer.
pub(crate) struct Out {
    pub(crate) buf: BytesMut,
    /// 2 or 3 (after `HELLO 3`).
    pub(crate) proto: u8,
}

impl Out {
    pub(crate) fn new() -> Out {
        Out { buf: BytesMut::with_capacity(16 * 1024), proto: 2 }
    }

    /// A simple string; CR and LF (which would break the line) become spaces.
    pub(crate) fn simple(&mut self, text: &str) {
        self.buf.put_u8(b'+');
        self.one_line(text);
    }

    /// An error reply; `text` starts with its code (`ERR ...`).
    pub(crate) fn error(&mut self, text: &str) {
        self.buf.put_u8(b'-');
        self.one_line(text);
    }

    fn one_line(&mut self, text: &str) {
        if text.contains(['\r', '\n']) {
            self.line(text.replace(['\r', '\n'], " ").as_bytes());
        } else {
            self.line(text.as_bytes());
        }
    }

    pub(crate) fn int(&mut self, n: i64) {
        self.buf.put_u8(b':');
        self.line(itoa::Buffer::new().format(n).as_bytes());
    }

    pub(crate) fn bulk(&mut self, bytes: &[u8]) {
        self.buf.put_u8(b'$');
        self.line(itoa::Buffer::new().format(bytes.len()).as_bytes());
        self.buf.reserve(bytes.len() + 2);
        self.buf.put_slice(bytes);
        self.buf.put_slice(b"\r\n");
    }

    /// A null bulk string (`$-1`; `_` in RESP3).
    pub(crate) fn null(&mut self) {
        self.buf.put_slice(if self.proto == 3 { b"_\r\n" } else { b"$-1\r\n" });
    }

    /// A null array (`*-1`; `_` in RESP3).
    pub(crate) fn null_array(&mut self) {
        self.buf.put_slice(if self.proto == 3 { b"_\r\n" } else { b"*-1\r\n" });
    }

    pub(crate) fn array(&mut self, len: usize) {
        self.header(b'*', len);
    }

    /// A map of `len` pairs (`%` in RESP3; a flat array of 2 × len in RESP2).
    pub(crate) fn map(&mut self, len: usize) {
        if self.proto == 3 { self.header(b'%', len) } else { self.header(b'*', len * 2) }
    }

    /// A set (`~` in RESP3; an array in RESP2).
    pub(crate) fn set(&mut self, len: usize) {
        self.header(if self.proto == 3 { b'~' } else { b'*' }, len);
    }

    /// A text bulk string (a verbatim string in RESP3 would also do).
    pub(crate) fn text(&mut self, text: &str) {
        self.bulk(text.as_bytes());
    }

    fn header(&mut self, kind: u8, len: usize) {
        self.buf.put_u8(kind);
        self.line(itoa::Buffer::new().format(len).as_bytes());
    }

    fn line(&mut self, bytes: &[u8]) {
        self.buf.put_slice(bytes);
        self.buf.put_slice(b"\r\n");
    }
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
