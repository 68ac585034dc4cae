//! Topics (validated stream names) and topic patterns (NATS-style wildcards).
//!
//! Pure code: no I/O. Matching is used by reads, subscriptions and retention.

use std::fmt;

use crate::error::StoreError;
use crate::limits::TOPIC_BYTES_MAX;

/// The prefix of topics that belong to the store itself.
pub const SYSTEM_PREFIX: &str = "cairn.";

/// A valid topic: 1-255 bytes of printable UTF-8 (see [`is_topic_char`]),
/// levels separated by `.`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Topic(std::sync::Arc<str>);

/// A topic is its name to maps (`Topic` hashes and compares as the `str`
/// does), so a map keyed by topics is looked up by name.
impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Topic {
    /// Validates a topic name. Names starting with `cairn.` are accepted
    /// here; writes from users refuse them separately (see [`Topic::check_user_writable`]).
    pub fn new(name: &str) -> Result<Topic, StoreError> {
        if name.is_empty() {
            return Err(StoreError::invalid("topic", "must not be empty"));
        }
        if name.len() > TOPIC_BYTES_MAX {
            return Err(StoreError::invalid(
                "topic",
                format!("is {} bytes, the maximum is {TOPIC_BYTES_MAX}", name.len()),
            ));
        }
        if let Some(bad) = name.chars().find(|&c| !is_topic_char(c)) {
            return Err(StoreError::invalid("topic", format!("{name:?} contains {bad:?}; {TOPIC_CHARS}")));
        }
        if name.starts_with(' ') || name.ends_with(' ') {
            return Err(StoreError::invalid("topic", format!("{name:?} starts or ends with a space")));
        }
        if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
            return Err(StoreError::invalid(
                "topic",
                format!("{name:?} has an empty level; '.' separates non-empty levels"),
            ));
        }
        Ok(Topic(name.into()))
    }

    /// Refuses the store's reserved `cairn.` prefix for writes by users.
    pub fn check_user_writable(&self) -> Result<(), StoreError> {
        if self.is_system() {
            return Err(StoreError::invalid(
                "topic",
                format!("{:?}: topics starting with {SYSTEM_PREFIX:?} are reserved for the store", self.0),
            ));
        }
        Ok(())
    }

    /// Whether this is one of the store's own topics.
    pub fn is_system(&self) -> bool {
        self.0.starts_with(SYSTEM_PREFIX)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What [`is_topic_char`] allows, for error messages.
const TOPIC_CHARS: &str = "topics are printable UTF-8: not '*' or '>' (pattern wildcards), ',' (it separates lists), control characters, whitespace other than a space, or invisible formatting characters";

/// Whether `c` may be part of a topic name: any printable character (the
/// characters Redis key conventions use, `{` `}` `#` `@` `:` `/`, and
/// letters of any script) except the pattern wildcards `*` and `>`, the
/// list separator `,`, control characters, whitespace other than a plain
/// space, and the invisible characters (Unicode's default-ignorable code
/// points: zero-width characters, bidirectional controls, variation
/// selectors, tags, fillers) that would make two names print the same.
/// Letters of different scripts that look alike stay allowed, as in any
/// name. Every front end carries such names:
/// HTTP percent-encodes them in paths and queries, JSON escapes what it
/// must, RESP is binary-safe.
pub fn is_topic_char(c: char) -> bool {
    // Unicode's default-ignorable code points and format controls (no std
    // table exists for them; these are Unicode 15's, by range).
    let invisible = matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}'
        | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}'
        | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}');
    !(c.is_control() || (c.is_whitespace() && c != ' ') || invisible || matches!(c, '*' | '>' | ','))
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

impl serde::Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// A topic pattern: an exact topic, or levels where `*` matches one level and
/// a final `>` matches one or more trailing levels. `>` alone matches all.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Pattern {
    /// Exactly one topic.
    Exact(Topic),
    /// A wildcard pattern, split at `.`.
    Wildcard(Vec<Level>),
}

/// One level of a wildcard pattern.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Level {
    /// Matches this text exactly.
    Literal(Box<str>),
    /// `*`: any one level.
    One,
    /// `>`: one or more levels; only last.
    Rest,
}

impl Pattern {
    /// The pattern matching every topic.
    pub fn all() -> Pattern {
        Pattern::Wildcard(vec![Level::Rest])
    }

    /// Parses `orders.1`, `orders.*`, `orders.>`, `>`.
    pub fn parse(text: &str) -> Result<Pattern, StoreError> {
        if !text.split('.').any(|level| level == "*" || level == ">") {
            return Topic::new(text).map(Pattern::Exact).map_err(|error| match error {
                StoreError::Invalid { rule, .. } => StoreError::invalid("pattern", rule),
                other => other,
            });
        }
        if text.len() > TOPIC_BYTES_MAX {
            return Err(StoreError::invalid("pattern", format!("is longer than {TOPIC_BYTES_MAX} bytes")));
        }
        let parts: Vec<&str> = text.split('.').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (idx, part) in parts.iter().enumerate() {
            let level = match *part {
                "*" => Level::One,
                ">" if idx + 1 == parts.len() => Level::Rest,
                ">" => return Err(StoreError::invalid("pattern", format!("{text:?}: '>' may only be the last level"))),
                "" => return Err(StoreError::invalid("pattern", format!("{text:?} has an empty level"))),
                literal => {
                    if let Some(bad) = literal.chars().find(|&c| !is_topic_char(c)) {
                        return Err(StoreError::invalid(
                            "pattern",
                            format!("{text:?} contains {bad:?}; levels are topic characters, '*' or a final '>'"),
                        ));
                    }
                    Level::Literal(literal.into())
                }
            };
            levels.push(level);
        }
        Ok(Pattern::Wildcard(levels))
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(exact) => exact.as_str() == topic,
            Pattern::Wildcard(levels) => matches_levels(levels, topic),
        }
    }

    /// The single topic of an exact pattern.
    pub fn exact(&self) -> Option<&Topic> {
        match self {
            Pattern::Exact(topic) => Some(topic),
            Pattern::Wildcard(_) => None,
        }
    }

    /// The literal levels a wildcard pattern starts with, each with its dot
    /// (`orders.eu.` for `orders.eu.>`, `orders.` for `orders.*.created`):
    /// every topic the pattern matches starts with them. `None` for an
    /// exact pattern and for one that starts with a wildcard.
    pub fn literal_prefix(&self) -> Option<String> {
        let Pattern::Wildcard(levels) = self else { return None };
        let mut prefix = String::new();
        for level in levels {
            match level {
                Level::Literal(text) => {
                    prefix.push_str(text);
                    prefix.push('.');
                }
                Level::One | Level::Rest => return (!prefix.is_empty()).then_some(prefix),
            }
        }
        // Only literal levels: matched by one topic without a final dot.
        None
    }
}

fn matches_levels(levels: &[Level], topic: &str) -> bool {
    let mut parts = topic.split('.');
    for level in levels {
        match level {
            Level::Rest => return parts.next().is_some(),
            Level::One => {
                if parts.next().is_none() {
                    return false;
                }
            }
            Level::Literal(literal) => {
                if parts.next() != Some(&**literal) {
                    return false;
                }
            }
        }
    }
    parts.next().is_none()
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(topic) => f.write_str(topic.as_str()),
            Pattern::Wildcard(levels) => {
                for (idx, level) in levels.iter().enumerate() {
                    if idx > 0 {
                        f.write_str(".")?;
                    }
                    match level {
                        Level::Literal(literal) => f.write_str(literal)?,
                        Level::One => f.write_str("*")?,
                        Level::Rest => f.write_str(">")?,
                    }
                }
                Ok(())
            }
        }
    }
}
