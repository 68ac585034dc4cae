//! Who is asking ([`Principal`]) and what they may do.
//!
//! The Unix socket and the store directory are trusted ([`Principal::Local`]);
//! TCP without authentication (`--insecure-no-auth`, or the Redis port on
//! loopback) is [`Principal::Anonymous`]: read and write, no management; an
//! authenticated user ([`Principal::User`]) reads topics its `read`
//! patterns cover and writes topics its `write` patterns match; `admin`
//! users manage users and the whole store. Topics starting with `cairn.`
//! are the store's own: nobody but the store writes them (but for
//! processor registrations, which run programs and so need the socket, an
//! admin or a grant naming `cairn.proc.`), and only the trusted socket
//! removes their events (the audit trail).

use std::sync::Arc;

use cairn_store::{Level, Pattern, Topic};

use crate::error::{Result, ServiceError};

/// Who is asking.
#[derive(Clone, Debug)]
pub enum Principal {
    /// Through the Unix socket, or the CLI on the store: trusted.
    Local,
    /// Unauthenticated TCP where the server allows it: reads and writes,
    /// no management.
    Anonymous,
    /// An authenticated user, and how they proved it.
    User(Session),
}

/// An authenticated user's session: the user as it was when they logged
/// in, and the credential they used. It ends when that credential is
/// revoked, the password changes or the user is removed
/// ([`crate::Users::is_current`]).
#[derive(Clone, Debug)]
pub struct Session {
    pub(crate) user: Arc<User>,
    pub(crate) credential: Credential,
}

/// How a session was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Credential {
    /// The user's password.
    Password,
    /// A bearer token, by its sha256.
    Token([u8; 32]),
    /// A browser session's cookie (opened with the password), by the
    /// sha256 of its secret: it ends on logout too (`sessions.rs`).
    Browser([u8; 32]),
    /// A processor the user registered: it holds while the user exists.
    Processor,
}

/// A user as sessions see it.
#[derive(Debug)]
pub struct User {
    /// Name.
    pub name: String,
    /// Topics readable.
    pub read: Vec<Pattern>,
    /// Topics writable.
    pub write: Vec<Pattern>,
    /// May manage users and the whole store.
    pub admin: bool,
    /// The argon2id PHC string; a change ends password sessions.
    pub(crate) password: String,
}

impl Session {
    /// The user.
    pub fn user(&self) -> &User {
        &self.user
    }

    /// Whether the session was opened with the password (not a token).
    pub fn by_password(&self) -> bool {
        self.credential == Credential::Password
    }
}

impl Principal {
    /// The name stamped on appended events (users only).
    pub fn user_name(&self) -> Option<&str> {
        match self {
            Principal::User(session) => Some(&session.user.name),
            Principal::Local | Principal::Anonymous => None,
        }
    }

    /// The namespace of things this principal owns (idempotency keys,
    /// consumers, content it put): `local`, `anonymous` or `user:<name>`.
    pub fn scope(&self) -> String {
        match self {
            Principal::Local => "local".to_owned(),
            Principal::Anonymous => "anonymous".to_owned(),
            Principal::User(session) => format!("user:{}", session.user.name),
        }
    }

    /// Whether this principal sees the whole store: every topic, all
    /// content and store-wide counters (the socket, an unauthenticated
    /// server's clients, admins).
    pub fn sees_all(&self) -> bool {
        matches!(self, Principal::Local | Principal::Anonymous) || self.is_admin()
    }

    /// Whether this principal may read every topic `pattern` matches.
    pub fn can_read(&self, pattern: &Pattern) -> bool {
        match self {
            Principal::Local | Principal::Anonymous => true,
            Principal::User(session) => session.user.read.iter().any(|allowed| covers(allowed, pattern)),
        }
    }

    /// Whether this principal may read `topic`.
    pub fn can_read_topic(&self, topic: &Topic) -> bool {
        match self {
            Principal::Local | Principal::Anonymous => true,
            Principal::User(session) => session.user.read.iter().any(|allowed| allowed.matches(topic.as_str())),
        }
    }

    /// Refuses a read of `pattern` beyond the read patterns.
    pub fn check_read(&self, pattern: &Pattern) -> Result<()> {
        if self.can_read(pattern) {
            return Ok(());
        }
        let Principal::User(session) = self else { return Ok(()) };
        Err(ServiceError::forbidden(format!(
            "user {} may not read {pattern} (read patterns: {})",
            session.user.name,
            list(&session.user.read)
        )))
    }

    /// Whether this principal may write `topic`: never the store's own
    /// topics, except the processors' registrations (see
    /// [`is_processor_control`]), which the socket, admins and users whose
    /// write patterns name `cairn.proc.` explicitly may write (a processor
    /// runs programs on the server: `>` alone does not grant it).
    pub fn can_write(&self, topic: &Topic) -> bool {
        if topic.is_system() {
            return is_processor_control(topic.as_str())
                && match self {
                    Principal::Local => true,
                    Principal::Anonymous => false,
                    Principal::User(session) => {
                        session.user.admin
                            || session.user.write.iter().any(|allowed| {
                                allowed.to_string().starts_with(PROCESSOR_PREFIX) && allowed.matches(topic.as_str())
                            })
                    }
                };
        }
        match self {
            Principal::Local | Principal::Anonymous => true,
            Principal::User(session) => session.user.write.iter().any(|allowed| allowed.matches(topic.as_str())),
        }
    }

    /// Refuses a write of `topic`: the store's own topics, or beyond the
    /// write patterns.
    pub fn check_write(&self, topic: &Topic) -> Result<()> {
        if topic.is_system() && is_processor_control(topic.as_str()) {
            return match self {
                _ if self.can_write(topic) => Ok(()),
                Principal::User(session) => Err(ServiceError::forbidden(format!(
                    "user {} may not register or stop processors ({topic} needs an admin or a write pattern naming {PROCESSOR_PREFIX})",
                    session.user.name
                ))),
                _ => Err(ServiceError::forbidden(format!(
                    "registering or stopping processors ({topic}) needs the socket or an admin user"
                ))),
            };
        }
        if topic.is_system() {
            return Err(ServiceError::invalid(
                "topic",
                format!("{topic:?}: topics starting with {:?} are reserved for the store", cairn_store::SYSTEM_PREFIX),
            ));
        }
        match self {
            Principal::User(session) if !self.can_write(topic) => Err(ServiceError::forbidden(format!(
                "user {} may not write {topic} (write patterns: {})",
                session.user.name,
                list(&session.user.write)
            ))),
            _ => Ok(()),
        }
    }

    /// Whether this principal may write anything at all.
    pub fn writes_something(&self) -> bool {
        match self {
            Principal::Local | Principal::Anonymous => true,
            Principal::User(session) => !session.user.write.is_empty(),
        }
    }

    /// Whether this principal manages users and the whole store.
    pub fn is_admin(&self) -> bool {
        match self {
            Principal::Local => true,
            Principal::User(session) => session.user.admin,
            Principal::Anonymous => false,
        }
    }

    /// Refuses what needs an admin.
    pub fn check_admin(&self) -> Result<()> {
        match self {
            _ if self.is_admin() => Ok(()),
            Principal::User(session) => {
                Err(ServiceError::forbidden(format!("user {} is not an admin", session.user.name)))
            }
            _ => Err(ServiceError::forbidden("managing the store needs an admin user")),
        }
    }
}

/// Where the processors' topics live: `cairn.proc.<name>.<what>`.
pub const PROCESSOR_PREFIX: &str = "cairn.proc.";

/// Whether `topic` registers or stops a processor
/// (`cairn.proc.<name>.create`, `cairn.proc.<name>.term`, one level of
/// name): the only store topics a caller may write.
pub fn is_processor_control(topic: &str) -> bool {
    let Some(rest) = topic.strip_prefix(PROCESSOR_PREFIX) else { return false };
    match rest.rsplit_once('.') {
        Some((name, "create" | "term")) => !name.is_empty() && !name.contains('.'),
        _ => false,
    }
}

fn list(patterns: &[Pattern]) -> String {
    if patterns.is_empty() {
        return "none".to_owned();
    }
    patterns.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Whether every topic `requested` matches is also matched by `allowed`.
/// A loop over the levels: no recursion, work linear in the levels.
pub fn covers(allowed: &Pattern, requested: &Pattern) -> bool {
    let allowed = levels(allowed);
    let requested = levels(requested);
    let mut requested = requested.iter();
    for level in &allowed {
        match (level, requested.next()) {
            // `>` matches one or more levels: anything that still has a level.
            (Level::Rest, Some(_)) => return true,
            (_, None) => return false,
            (Level::One, Some(Level::Literal(_) | Level::One)) => {}
            (Level::Literal(a), Some(Level::Literal(b))) if a == b => {}
            _ => return false,
        }
    }
    requested.next().is_none()
}

fn levels(pattern: &Pattern) -> Vec<Level> {
    match pattern {
        Pattern::Exact(topic) => topic.as_str().split('.').map(|level| Level::Literal(level.into())).collect(),
        Pattern::Wildcard(levels) => levels.clone(),
    }
}

#[cfg(test)]
#[path = "principal_tests.rs"]
mod tests;
