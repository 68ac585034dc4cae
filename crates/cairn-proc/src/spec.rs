//! A registration's payload (`cairn.proc.<name>.create`), parsed and
//! checked before anything runs: a broken one becomes an `invalid`
//! lifecycle event, never a crash.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use cairn_service::{EventId, Pattern};
use serde::Deserialize;

/// At most this many bytes of a registration's program and settings.
pub const SPEC_BYTES_MAX: usize = 64 * 1024;
/// At most this many commands of one `command` processor run at once.
pub const CONCURRENCY_MAX: usize = 64;
/// At most this many topic patterns per handler.
pub const TOPICS_MAX: usize = 64;

/// What a processor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Gets the events of its topics on stdin; its outputs and its position
    /// commit together.
    Handler,
    /// Runs for ever; each stdout line is an event on `<name>.recv`.
    Generator,
    /// One run per event on `<name>.call`.
    Command,
}

impl Kind {
    /// Its name in registrations and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Handler => "handler",
            Kind::Generator => "generator",
            Kind::Command => "command",
        }
    }
}

/// Where a handler starts when its name has no position yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Events after the registration (or, replacing an earlier
    /// registration of the name, where that one stopped).
    New,
    /// Every stored event.
    First,
    /// Events after this id.
    After(EventId),
}

/// How a generator's stdout lines become events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    /// Each line (without its newline) is the payload of an event on
    /// `<name>.recv`.
    Text,
    /// Each line is an event in `cairn append --batch`'s line form, its
    /// topic defaulting to `<name>.recv`.
    Json,
}

/// A checked registration.
#[derive(Clone, Debug)]
pub struct Spec {
    /// What it is.
    pub kind: Kind,
    /// The program and its arguments (`sh` becomes `sh -c <script>`).
    pub argv: Vec<String>,
    /// A handler's input patterns.
    pub topics: Vec<Pattern>,
    /// A handler's start.
    pub start: Start,
    /// A generator reads `<name>.send` payloads on stdin.
    pub duplex: bool,
    /// A generator's line form.
    pub lines: Lines,
    /// Added to the server's environment.
    pub env: BTreeMap<String, String>,
    /// Working directory (the server's when absent).
    pub cwd: Option<PathBuf>,
    /// First wait before a restart, doubled on each quick exit.
    pub backoff: Duration,
    /// Longest wait before a restart.
    pub backoff_max: Duration,
    /// Commands running at once.
    pub concurrency: usize,
    /// A command's longest run.
    pub timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecJson {
    kind: Kind,
    #[serde(default)]
    run: Option<Vec<String>>,
    #[serde(default)]
    sh: Option<String>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    duplex: Option<bool>,
    #[serde(default)]
    lines: Option<String>,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    restart: Option<RestartJson>,
    #[serde(default)]
    concurrency: Option<usize>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartJson {
    #[serde(default)]
    backoff_ms: Option<u64>,
    #[serde(default)]
    max_ms: Option<u64>,
}

/// Checks a processor's name: one topic level of 1-64 ASCII letters,
/// digits, `_` and `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("processor name {name:?} must be 1-64 characters"));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        return Err(format!("processor name {name:?} contains {bad:?}; use ASCII letters, digits, '_' and '-'"));
    }
    Ok(())
}

impl Spec {
    /// Parses and checks a registration's payload; the error says what is
    /// wrong in words a user can act on.
    pub fn parse(bytes: &[u8]) -> Result<Spec, String> {
        if bytes.len() > SPEC_BYTES_MAX {
            return Err(format!("the registration is {} bytes; at most {SPEC_BYTES_MAX}", bytes.len()));
        }
        let json: SpecJson = serde_json::from_slice(bytes).map_err(|error| format!("the registration: {error}"))?;
        let kind = json.kind;
        let only = |present: bool, field: &str, kinds: &str| -> Result<(), String> {
            if present { Err(format!("{field} applies to {kinds} only, not a {}", kind.as_str())) } else { Ok(()) }
        };
        only(json.topics.is_some() && kind != Kind::Handler, "topics", "handlers")?;
        only(json.start.is_some() && kind != Kind::Handler, "start", "handlers")?;
        only(json.duplex.is_some() && kind != Kind::Generator, "duplex", "generators")?;
        only(json.lines.is_some() && kind != Kind::Generator, "lines", "generators")?;
        only(json.concurrency.is_some() && kind != Kind::Command, "concurrency", "commands")?;
        only(json.timeout_ms.is_some() && kind != Kind::Command, "timeout_ms", "commands")?;
        let argv = match (json.run, json.sh) {
            (Some(run), None) if !run.is_empty() && !run[0].is_empty() => run,
            (Some(_), None) => return Err("run needs a program: [\"program\", \"arg\", …]".to_owned()),
            (None, Some(script)) => vec!["sh".to_owned(), "-c".to_owned(), script],
            (Some(_), Some(_)) => return Err("give run or sh, not both".to_owned()),
            (None, None) => return Err("give the program: run [argv…] or sh \"script\"".to_owned()),
        };
        if argv.iter().any(|arg| arg.contains('\0')) {
            return Err("the program's arguments may not contain NUL".to_owned());
        }
        let topics = match json.topics {
            None if kind == Kind::Handler => return Err("a handler needs topics: [patterns…]".to_owned()),
            None => Vec::new(),
            Some(topics) if topics.is_empty() => return Err("topics needs at least one pattern".to_owned()),
            Some(topics) if topics.len() > TOPICS_MAX => return Err(format!("at most {TOPICS_MAX} topic patterns")),
            Some(topics) => topics
                .iter()
                .map(|text| Pattern::parse(text).map_err(|error| format!("topics: {error}")))
                .collect::<Result<_, _>>()?,
        };
        let start = match json.start.as_deref() {
            None | Some("new") => Start::New,
            Some("first") => Start::First,
            Some(id) => {
                Start::After(EventId::parse(id).map_err(|_| format!("start {id:?} is not new, first or an event id"))?)
            }
        };
        let lines = match json.lines.as_deref() {
            None | Some("text") => Lines::Text,
            Some("json") => Lines::Json,
            Some(other) => return Err(format!("lines {other:?} is not text or json")),
        };
        let env = json.env.unwrap_or_default();
        for (key, value) in &env {
            if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
                return Err(format!("env {key:?}: names are non-empty without '=' or NUL, values without NUL"));
            }
        }
        let restart = json.restart.unwrap_or(RestartJson { backoff_ms: None, max_ms: None });
        let backoff = Duration::from_millis(restart.backoff_ms.unwrap_or(100).clamp(10, 3_600_000));
        let backoff_max = Duration::from_millis(restart.max_ms.unwrap_or(30_000).clamp(10, 3_600_000)).max(backoff);
        let concurrency = json.concurrency.unwrap_or(4);
        if !(1..=CONCURRENCY_MAX).contains(&concurrency) {
            return Err(format!("concurrency must be 1-{CONCURRENCY_MAX}"));
        }
        let timeout = Duration::from_millis(json.timeout_ms.unwrap_or(60_000));
        if timeout.is_zero() {
            return Err("timeout_ms must be more than 0".to_owned());
        }
        Ok(Spec {
            kind,
            argv,
            topics,
            start,
            duplex: json.duplex.unwrap_or(false),
            lines,
            env,
            cwd: json.cwd.map(PathBuf::from),
            backoff,
            backoff_max,
            concurrency,
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_checked() {
        let spec = Spec::parse(br#"{"kind":"handler","sh":"cat","topics":["a.>"],"start":"first"}"#).expect("valid");
        assert_eq!(spec.argv, ["sh", "-c", "cat"]);
        assert_eq!(spec.start, Start::First);
        for (bad, says) in [
            (&br#"{"kind":"handler","run":["cat"]}"#[..], "needs topics"),
            (br#"{"kind":"generator","run":["cat"],"topics":["a"]}"#, "handlers only"),
            (br#"{"kind":"command","run":[]}"#, "needs a program"),
            (br#"{"kind":"command","run":["x"],"sh":"y"}"#, "not both"),
            (br#"{"kind":"daemon","run":["x"]}"#, "unknown variant"),
            (br#"{"kind":"command","run":["x"],"concurrency":0}"#, "concurrency"),
            (br#"{"kind":"handler","run":["x"],"topics":["a"],"start":"soon"}"#, "not new, first"),
            (br#"{"kind":"command","run":["x"],"bogus":1}"#, "unknown field"),
            (b"not json", "the registration"),
        ] {
            let error = Spec::parse(bad).expect_err("refused");
            assert!(error.contains(says), "{error}");
        }
        assert!(check_name("resize-images_2").is_ok());
        assert!(check_name("a.b").is_err());
        assert!(check_name("").is_err());
    }
}
