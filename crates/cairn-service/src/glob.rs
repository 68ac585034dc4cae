//! Redis glob patterns (`KEYS`, `SCAN … MATCH`): `*`, `?`, `[abc]`, `[^a-z]`,
//! `\x`, with Redis's rules (a class runs to `]` or to the end of the
//! pattern; `\` escapes inside a class too).
//!
//! A pattern is compiled once into elements (a class into a set of 256
//! bits, one lookup however long it was written), then matched with the classic
//! two-pointer algorithm that backtracks only to the last `*`: a loop, no
//! recursion, at most (elements × text length) steps. Since topics are at
//! most `TOPIC_BYTES_MAX` bytes, a pattern with more fixed elements than
//! that matches nothing and is decided without matching, so no pattern,
//! however long, costs more than a bounded amount per topic.

use cairn_store::limits::TOPIC_BYTES_MAX;

/// A compiled glob pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    elements: Vec<Element>,
    /// More fixed elements than any topic has bytes: matches nothing.
    hopeless: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Element {
    /// `*`: any run of bytes (runs of stars are one).
    Star,
    /// `?`: any one byte.
    Any,
    /// One byte exactly.
    Byte(u8),
    /// `[...]`: one byte of the set (negation is applied when compiled):
    /// a class is one lookup however long it was written.
    Class(Box<ByteSet>),
}

/// A set of bytes, one bit each.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct ByteSet([u64; 4]);

impl ByteSet {
    /// Adds `lo..=hi`: a mask per word, not a step per byte.
    fn insert_range(&mut self, lo: u8, hi: u8) {
        for (index, word) in (0u16..).zip(self.0.iter_mut()) {
            let base = index * 64;
            let (from, to) = (u16::from(lo).max(base), u16::from(hi).min(base + 63));
            if from <= to {
                let width = to - from + 1;
                let bits = if width == 64 { u64::MAX } else { (1u64 << width) - 1 };
                *word |= bits << (from - base);
            }
        }
    }

    fn contains(&self, byte: u8) -> bool {
        self.0[usize::from(byte >> 6)] & (1 << (byte & 63)) != 0
    }

    fn negate(&mut self) {
        for word in &mut self.0 {
            *word = !*word;
        }
    }
}

impl Glob {
    /// Compiles `pattern` (any bytes: every byte string is a pattern).
    pub fn new(pattern: &[u8]) -> Glob {
        let mut elements = Vec::new();
        let mut fixed = 0usize;
        let mut at = 0;
        while at < pattern.len() {
            let element = match pattern[at] {
                b'*' => {
                    at += 1;
                    if elements.last() != Some(&Element::Star) {
                        elements.push(Element::Star);
                    }
                    continue;
                }
                b'?' => {
                    at += 1;
                    Element::Any
                }
                b'\\' if at + 1 < pattern.len() => {
                    at += 2;
                    Element::Byte(pattern[at - 1])
                }
                b'[' => {
                    let (class, next) = class(pattern, at + 1);
                    at = next;
                    class
                }
                byte => {
                    at += 1;
                    Element::Byte(byte)
                }
            };
            fixed += 1;
            if fixed > TOPIC_BYTES_MAX {
                // Longer than any topic: decided now, the rest not compiled.
                return Glob { elements: Vec::new(), hopeless: true };
            }
            elements.push(element);
        }
        Glob { elements, hopeless: false }
    }

    /// Whether `text` matches.
    pub fn matches(&self, text: &[u8]) -> bool {
        if self.hopeless {
            return false;
        }
        let elements = &self.elements;
        let (mut e, mut t) = (0usize, 0usize);
        // Where to resume after the last star: (element after it, text).
        let mut resume: Option<(usize, usize)> = None;
        loop {
            if e < elements.len() && elements[e] == Element::Star {
                e += 1;
                resume = Some((e, t));
                continue;
            }
            if t == text.len() {
                return e == elements.len();
            }
            if e < elements.len() && matches_one(&elements[e], text[t]) {
                e += 1;
                t += 1;
                continue;
            }
            match resume {
                // Let the last star take one more byte and try again.
                Some((after_star, star_t)) if star_t < text.len() => {
                    resume = Some((after_star, star_t + 1));
                    e = after_star;
                    t = star_t + 1;
                }
                _ => return false,
            }
        }
    }
}

fn matches_one(element: &Element, byte: u8) -> bool {
    match element {
        Element::Star => true,
        Element::Any => true,
        Element::Byte(expected) => *expected == byte,
        Element::Class(set) => set.contains(byte),
    }
}

/// Parses a class starting after its `[`; returns it and where the
/// pattern continues.
fn class(pattern: &[u8], mut at: usize) -> (Element, usize) {
    let negate = pattern.get(at) == Some(&b'^');
    if negate {
        at += 1;
    }
    let mut set = ByteSet::default();
    let end = loop {
        match pattern.get(at) {
            None => break at,
            Some(b']') => break at + 1,
            Some(b'\\') if at + 1 < pattern.len() => {
                set.insert_range(pattern[at + 1], pattern[at + 1]);
                at += 2;
            }
            Some(&lo) if at + 2 < pattern.len() && pattern[at + 1] == b'-' => {
                let hi = pattern[at + 2];
                set.insert_range(lo.min(hi), lo.max(hi));
                at += 3;
            }
            Some(&byte) => {
                set.insert_range(byte, byte);
                at += 1;
            }
        }
    };
    if negate {
        set.negate();
    }
    (Element::Class(Box::new(set)), end)
}

#[cfg(test)]
#[path = "glob_tests.rs"]
mod tests;
