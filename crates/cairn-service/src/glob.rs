//! Redis glob patterns (`KEYS`, `SCAN … MATCH`): `*`, `?`, `[abc]`, `[^a-z]`,
//! `\x`, with Redis's rules (a class runs to `]` or to the end of the
//! pattern; `\` escapes inside a class too).
//!
//! A pattern is compiled once into elements, then matched with the classic
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
    /// `[...]`: one byte in (or, negated, not in) the ranges.
    Class { negate: bool, ranges: Vec<(u8, u8)> },
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
            elements.push(element);
        }
        Glob { elements, hopeless: fixed > TOPIC_BYTES_MAX }
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
        Element::Class { negate, ranges } => ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&byte)) != *negate,
    }
}

/// Parses a class starting after its `[`; returns it and where the
/// pattern continues.
fn class(pattern: &[u8], mut at: usize) -> (Element, usize) {
    let negate = pattern.get(at) == Some(&b'^');
    if negate {
        at += 1;
    }
    let mut ranges = Vec::new();
    loop {
        match pattern.get(at) {
            None => return (Element::Class { negate, ranges }, at),
            Some(b']') => return (Element::Class { negate, ranges }, at + 1),
            Some(b'\\') if at + 1 < pattern.len() => {
                ranges.push((pattern[at + 1], pattern[at + 1]));
                at += 2;
            }
            Some(&lo) if at + 2 < pattern.len() && pattern[at + 1] == b'-' => {
                let hi = pattern[at + 2];
                ranges.push((lo.min(hi), lo.max(hi)));
                at += 3;
            }
            Some(&byte) => {
                ranges.push((byte, byte));
                at += 1;
            }
        }
    }
}

#[cfg(test)]
#[path = "glob_tests.rs"]
mod tests;
