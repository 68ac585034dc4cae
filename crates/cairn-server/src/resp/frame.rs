//! The RESP wire format, sans IO: [`Parser`] finds one command in a buffer
//! (a multibulk array of bulk strings, or an inline line as telnet and
//! `redis-cli` in some modes send), and [`Out`] writes replies in RESP2 or
//! RESP3. "Incomplete" (read more) and "invalid" (reply and close) are kept
//! apart: a parse error means the framing is broken or a bound was crossed,
//! and the connection must close; a bad command inside a good frame is the
//! handler's business.
//!
//! The parser resumes where it stopped: a command that arrives in many
//! small reads is scanned once, not once per read (linear in the input,
//! whatever the reads), and every command is bounded in total (`Limits`),
//! checked against the lengths it declares before their bytes arrive.

use std::ops::Range;

use bytes::{BufMut as _, BytesMut};

/// Most arguments one command may carry.
pub(crate) const ARGS_MAX: usize = 1024 * 1024;
/// Longest inline command line.
pub(crate) const INLINE_BYTES_MAX: usize = 64 * 1024;
/// What each argument costs beyond its bytes (its place in memory), in
/// the command's total.
pub(crate) const ARG_OVERHEAD_BYTES: usize = 16;

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

/// Bounds of one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The longest argument, in bytes.
    pub(crate) bulk_bytes_max: usize,
    /// The most bytes of all arguments together, each counting
    /// [`ARG_OVERHEAD_BYTES`] more.
    pub(crate) command_bytes_max: usize,
}

/// A resumable command parser (see the module docs).
#[derive(Debug)]
pub(crate) struct Parser {
    limits: Limits,
    /// A multibulk command read in part.
    partial: Option<Partial>,
    /// Bytes of an inline line already known to hold no newline.
    inline_scanned: usize,
}

#[derive(Debug)]
struct Partial {
    count: usize,
    args: Vec<Range<usize>>,
    /// Where the next argument starts.
    at: usize,
    /// The command's total so far.
    bytes: usize,
}

impl Parser {
    pub(crate) fn new(limits: Limits) -> Parser {
        Parser { limits, partial: None, inline_scanned: 0 }
    }

    /// Changes the bounds (after authentication), from the next command on.
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Finds the first complete command in `buf`: `Ok(None)` when more
    /// bytes are needed, else the command and how many bytes it used.
    /// Until it returns a command, each call must see the same buffer,
    /// possibly longer; after one, the buffer starts after the used bytes.
    pub(crate) fn parse(&mut self, buf: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
        if self.partial.is_some() {
            return self.multibulk(buf);
        }
        match buf.first() {
            None => Ok(None),
            Some(b'*') if self.inline_scanned == 0 => self.multibulk(buf),
            Some(_) => self.inline(buf),
        }
    }

    fn multibulk(&mut self, buf: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
        let mut partial = match self.partial.take() {
            Some(partial) => partial,
            None => {
                let Some((count, at)) = line_number(buf, 1, "multibulk length")? else { return Ok(None) };
                if count > ARGS_MAX as i64 {
                    return Err(ProtocolError("invalid multibulk length".to_owned()));
                }
                let count = usize::try_from(count).unwrap_or(0);
                if count.saturating_mul(ARG_OVERHEAD_BYTES) > self.limits.command_bytes_max {
                    return Err(ProtocolError(format!(
                        "command too large: {count} arguments (at most {} bytes per command)",
                        self.limits.command_bytes_max
                    )));
                }
                Partial { count, args: Vec::with_capacity(count.min(64)), at, bytes: 0 }
            }
        };
        while partial.args.len() < partial.count {
            let at = partial.at;
            match buf.get(at) {
                None => {
                    self.partial = Some(partial);
                    return Ok(None);
                }
                Some(b'$') => {}
                Some(&other) => {
                    return Err(ProtocolError(format!("expected '$', got '{}'", char::from(other).escape_default())));
                }
            }
            let Some((len, start)) = line_number(buf, at + 1, "bulk length")? else {
                self.partial = Some(partial);
                return Ok(None);
            };
            if len < 0 || len as u64 > self.limits.bulk_bytes_max as u64 {
                return Err(ProtocolError("invalid bulk length".to_owned()));
            }
            let len = len as usize;
            let bytes = partial.bytes + len + ARG_OVERHEAD_BYTES;
            if bytes > self.limits.command_bytes_max {
                return Err(ProtocolError(format!(
                    "command too large (at most {} bytes per command)",
                    self.limits.command_bytes_max
                )));
            }
            let end = start + len;
            if buf.len() < end + 2 {
                self.partial = Some(partial);
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError("bulk string is not followed by CRLF".to_owned()));
            }
            partial.args.push(start..end);
            partial.bytes = bytes;
            partial.at = end + 2;
        }
        Ok(Some((Request::Args(partial.args), partial.at)))
    }

    fn inline(&mut self, buf: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
        let max = INLINE_BYTES_MAX.min(self.limits.command_bytes_max);
        let from = self.inline_scanned.min(buf.len());
        let window = &buf[from..buf.len().min(max + 1)];
        let Some(newline) = window.iter().position(|&b| b == b'\n').map(|at| from + at) else {
            if buf.len() > max {
                return Err(ProtocolError("too big inline request".to_owned()));
            }
            self.inline_scanned = buf.len();
            return Ok(None);
        };
        self.inline_scanned = 0;
        let line = buf[..newline].strip_suffix(b"\r").unwrap_or(&buf[..newline]);
        let args = split_inline(line).ok_or_else(|| ProtocolError("unbalanced quotes in request".to_owned()))?;
        Ok(Some((Request::Inline(args), newline + 1)))
    }
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
    // By hand (this runs for every argument), accepting what `i64`'s
    // `from_str` does but a leading '+': an optional '-', then digits
    // (leading zeros too), within `i64`.
    let (negative, digits) = match rest[..cr].split_first() {
        Some((b'-', digits)) => (true, digits),
        _ => (false, &rest[..cr]),
    };
    let number = (!digits.is_empty())
        .then_some(digits)
        .filter(|digits| digits.iter().all(u8::is_ascii_digit))
        .and_then(|digits| {
            digits.iter().try_fold(0i64, |n, digit| {
                let digit = i64::from(digit - b'0');
                n.checked_mul(10).and_then(|n| if negative { n.checked_sub(digit) } else { n.checked_add(digit) })
            })
        })
        .ok_or_else(|| ProtocolError(format!("invalid {what}")))?;
    Ok(Some((number, from + cr + 2)))
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
        self.header(b'$', bytes.len());
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

    /// A push of `len` elements (`>` in RESP3; an array in RESP2).
    pub(crate) fn push(&mut self, len: usize) {
        self.header(if self.proto == 3 { b'>' } else { b'*' }, len);
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

    /// `kind`, `len` and CRLF, put in one piece (every entry a read
    /// returns has several).
    fn header(&mut self, kind: u8, len: usize) {
        // Lengths under 1,000 (an entry's arrays, ids, most values) as
        // slices of a fixed size, which compile to a few stores: a long
        // reply writes several headers per entry.
        let digit = |n: usize| b'0' + (n % 10) as u8;
        match len {
            0..10 => return self.buf.put_slice(&[kind, digit(len), b'\r', b'\n']),
            10..100 => return self.buf.put_slice(&[kind, digit(len / 10), digit(len), b'\r', b'\n']),
            100..1000 => {
                return self.buf.put_slice(&[kind, digit(len / 100), digit(len / 10), digit(len), b'\r', b'\n']);
            }
            _ => {}
        }
        let mut number = itoa::Buffer::new();
        let digits = number.format(len).as_bytes();
        let mut line = [0u8; 24];
        line[0] = kind;
        line[1..1 + digits.len()].copy_from_slice(digits);
        line[1 + digits.len()..3 + digits.len()].copy_from_slice(b"\r\n");
        self.buf.put_slice(&line[..3 + digits.len()]);
    }

    fn line(&mut self, bytes: &[u8]) {
        self.buf.put_slice(bytes);
        self.buf.put_slice(b"\r\n");
    }
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
