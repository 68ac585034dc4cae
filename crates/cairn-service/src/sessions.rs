//! Browser sessions: a password login exchanged for a random secret that a
//! browser keeps in a cookie (the web console), because a page cannot
//! attach credentials to an `EventSource` or a plain link.
//!
//! Browsers keep cookies per host, not per port, so any other web server on
//! the same host (another user's, say) would receive the cookie, or plant
//! one of its own. A session therefore has two halves: the secret in the
//! HttpOnly cookie, and a *check* that the page keeps in its own origin's
//! storage (per scheme, host and port) and sends with every request
//! (`Cairn-Session-Check`, or `session_check` where a header cannot go).
//! Neither half alone is a session.
//!
//! The table holds the sha256 of each secret (a leaked table gives no
//! cookie) and is bounded: at most `SESSIONS_PER_USER_MAX` per user and
//! `SESSIONS_MAX` in all, the least recently used going first. A session
//! ends after `SESSION_IDLE` unused or `SESSION_LIFETIME` in all, on
//! logout, and, like every password session, when the user's password
//! changes or the user is removed (`Service::admit`). Sessions live in the
//! server's memory: a restart logs browsers out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::{Result, ServiceError};
use crate::principal::{Credential, Principal, Session};
use crate::service::Service;

/// Most browser sessions at once.
pub const SESSIONS_MAX: usize = 4096;
/// Most browser sessions of one user.
pub const SESSIONS_PER_USER_MAX: usize = 32;
/// A session unused this long ends.
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// A session ends this long after its login, used or not.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

struct Entry {
    /// The sha256 of the session's secret (the cookie).
    secret: [u8; 32],
    principal: Principal,
    user: String,
    created: Instant,
    used: Instant,
}

/// The browser sessions of one service.
#[derive(Default)]
pub(crate) struct Sessions {
    /// By the sha256 of each session's check.
    table: Mutex<HashMap<[u8; 32], Entry>>,
}

fn key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether a value has the form this server gives secrets and checks (64
/// hex digits); others are never hashed or looked up.
fn well_formed(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// The sha256s of the well-formed values among `secrets`, computed before
/// any lock is taken.
fn keys(secrets: &[&str]) -> Vec<[u8; 32]> {
    secrets.iter().filter(|secret| well_formed(secret)).map(|secret| key(secret)).collect()
}

fn ended() -> ServiceError {
    ServiceError::unauthenticated(
        "no browser session: it ended (logged out, expired or the server restarted), or its check \
         (Cairn-Session-Check) is missing or wrong; log in again",
    )
}

impl Sessions {
    /// Adds a session; whether another was evicted to make room.
    fn insert(&self, secret: &str, check: &str, principal: Principal, user: String) -> bool {
        let now = Instant::now();
        let mut table = self.table.lock().expect("sessions lock");
        table.retain(|_, entry| live(entry, now));
        let before = table.len();
        let of_user = table.iter().filter(|(_, entry)| entry.user == user).count();
        if of_user >= SESSIONS_PER_USER_MAX {
            evict_oldest(&mut table, |entry| entry.user == user);
        }
        if table.len() >= SESSIONS_MAX {
            evict_oldest(&mut table, |_| true);
        }
        let evicted = table.len() < before;
        table.insert(key(check), Entry { secret: key(secret), principal, user, created: now, used: now });
        evicted
    }

    /// The session whose check is `check`, if one of `secrets` (the
    /// request's cookies, however many: a planted one cannot hide the
    /// real one) is its secret and it is live.
    fn get(&self, secrets: &[&str], check: &str) -> Option<Principal> {
        if !well_formed(check) {
            return None;
        }
        let (check, secrets) = (key(check), keys(secrets));
        let now = Instant::now();
        let mut table = self.table.lock().expect("sessions lock");
        let entry = table.get_mut(&check)?;
        if !secrets.contains(&entry.secret) {
            return None;
        }
        if !live(entry, now) {
            table.remove(&check);
            return None;
        }
        entry.used = now;
        Some(entry.principal.clone())
    }

    /// Whether `session`, if it is a browser session, is still in the
    /// table and live (other sessions: always).
    pub(crate) fn holds(&self, session: &Session) -> bool {
        let Credential::Browser(check) = session.credential else { return true };
        let table = self.table.lock().expect("sessions lock");
        table.get(&check).is_some_and(|entry| live(entry, Instant::now()))
    }

    /// Ends the session whose check is `check` if one of `secrets` is its
    /// secret; whether it did.
    fn remove(&self, secrets: &[&str], check: &str) -> bool {
        if !well_formed(check) {
            return false;
        }
        let (check, secrets) = (key(check), keys(secrets));
        let mut table = self.table.lock().expect("sessions lock");
        if table.get(&check).is_some_and(|entry| secrets.contains(&entry.secret)) {
            table.remove(&check);
            return true;
        }
        false
    }
}

fn live(entry: &Entry, now: Instant) -> bool {
    now.duration_since(entry.used) < SESSION_IDLE && now.duration_since(entry.created) < SESSION_LIFETIME
}

/// Removes the least recently used entry among those `select` picks.
fn evict_oldest(table: &mut HashMap<[u8; 32], Entry>, select: impl Fn(&Entry) -> bool) {
    let oldest = table.iter().filter(|(_, entry)| select(entry)).min_by_key(|(_, entry)| entry.used).map(|(k, _)| *k);
    if let Some(oldest) = oldest {
        table.remove(&oldest);
    }
}

/// A new browser session: the cookie's secret, the page's check, and who.
pub struct BrowserSession {
    /// Goes in the HttpOnly cookie.
    pub secret: String,
    /// Goes to the page, which sends it with every request.
    pub check: String,
    /// The user, as this session.
    pub principal: Principal,
}

/// 32 random bytes as hex.
fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| ServiceError::invalid("session", format!("no randomness for a session: {error}")))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

impl Service {
    /// Logs in with a password (under the login budget, see `logins.rs`)
    /// and opens a browser session.
    pub async fn session_open(
        &self,
        name: &str,
        password: &str,
        from: Option<std::net::IpAddr>,
    ) -> Result<BrowserSession> {
        let Principal::User(session) = self.login_password(name, password, from).await? else {
            return Err(ServiceError::unauthenticated("wrong user name or password"));
        };
        let secret = random_hex()?;
        let check = random_hex()?;
        let principal = Principal::User(Session { user: session.user, credential: Credential::Browser(key(&check)) });
        if self.inner.sessions.insert(&secret, &check, principal.clone(), name.to_owned()) {
            // An evicted session's open streams re-check themselves and end.
            self.inner.users.notify();
        }
        Ok(BrowserSession { secret, check, principal })
    }

    /// The principal of a live browser session, given its check and the
    /// request's cookies (one of which must be its secret).
    pub fn session_get(&self, secrets: &[&str], check: &str) -> Result<Principal> {
        let principal = self.inner.sessions.get(secrets, check).ok_or_else(ended)?;
        self.admit(&principal)?;
        Ok(principal)
    }

    /// Ends a browser session (logout); whether it was live.
    pub fn session_close(&self, secrets: &[&str], check: &str) -> bool {
        let removed = self.inner.sessions.remove(secrets, check);
        if removed {
            // Its open streams re-check themselves and end.
            self.inner.users.notify();
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed value (64 hex digits) made from `n` and a tag.
    fn hex(tag: u8, n: usize) -> String {
        format!("{tag:02x}{n:062x}")
    }

    #[test]
    fn sessions_are_bounded_per_user_and_in_all() {
        let sessions = Sessions::default();
        for n in 0..SESSIONS_PER_USER_MAX + 5 {
            sessions.insert(&hex(1, n), &hex(2, n), Principal::Anonymous, "alice".to_owned());
        }
        assert_eq!(sessions.table.lock().expect("sessions lock").len(), SESSIONS_PER_USER_MAX);
        assert!(sessions.get(&[&hex(1, 0)], &hex(2, 0)).is_none(), "the oldest of a user's sessions went first");
        let newest = SESSIONS_PER_USER_MAX + 4;
        assert!(sessions.get(&[&hex(1, newest)], &hex(2, newest)).is_some());
        assert!(sessions.get(&[&hex(1, newest)], &hex(2, 0)).is_none(), "the secret alone is no session");
        assert!(sessions.get(&[&hex(1, 0)], &hex(2, newest)).is_none(), "the check alone is no session");
        let planted: Vec<String> = (0..20).map(|n| hex(9, n)).collect();
        let mut cookies: Vec<&str> = planted.iter().map(String::as_str).collect();
        cookies.push("not-hex");
        let real = hex(1, newest);
        cookies.push(&real);
        assert!(sessions.get(&cookies, &hex(2, newest)).is_some(), "planted cookies do not hide the real one");
        for n in 0..SESSIONS_MAX + 10 {
            sessions.insert(&hex(3, n), &hex(4, n), Principal::Anonymous, format!("user{}", n % 1000));
        }
        assert_eq!(sessions.table.lock().expect("sessions lock").len(), SESSIONS_MAX);
        let last = SESSIONS_MAX + 9;
        assert!(!sessions.remove(&[&hex(1, 0)], &hex(4, last)), "only with its secret");
        assert!(sessions.remove(&[&hex(3, last)], &hex(4, last)));
        assert!(!sessions.remove(&[&hex(3, last)], &hex(4, last)));
    }
}
