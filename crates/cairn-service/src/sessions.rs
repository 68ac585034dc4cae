//! Browser sessions: a password login exchanged for a random secret that a
//! browser keeps in a cookie (the web console), because a page cannot
//! attach credentials to an `EventSource` or a plain link.
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
    principal: Principal,
    user: String,
    created: Instant,
    used: Instant,
}

/// The browser sessions of one service.
#[derive(Default)]
pub(crate) struct Sessions {
    table: Mutex<HashMap<[u8; 32], Entry>>,
}

fn key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn ended() -> ServiceError {
    ServiceError::unauthenticated(
        "the browser session ended (logged out, expired or the server restarted); log in again",
    )
}

impl Sessions {
    fn insert(&self, secret: &str, principal: Principal, user: String) {
        let now = Instant::now();
        let mut table = self.table.lock().expect("sessions lock");
        table.retain(|_, entry| live(entry, now));
        let of_user = table.iter().filter(|(_, entry)| entry.user == user).count();
        if of_user >= SESSIONS_PER_USER_MAX {
            evict_oldest(&mut table, |entry| entry.user == user);
        }
        if table.len() >= SESSIONS_MAX {
            evict_oldest(&mut table, |_| true);
        }
        table.insert(key(secret), Entry { principal, user, created: now, used: now });
    }

    fn get(&self, secret: &str) -> Option<Principal> {
        let now = Instant::now();
        let mut table = self.table.lock().expect("sessions lock");
        let key = key(secret);
        let entry = table.get_mut(&key)?;
        if !live(entry, now) {
            table.remove(&key);
            return None;
        }
        entry.used = now;
        Some(entry.principal.clone())
    }

    /// Whether `session`, if it is a browser session, is still in the
    /// table and live (other sessions: always).
    pub(crate) fn holds(&self, session: &Session) -> bool {
        let Credential::Browser(key) = session.credential else { return true };
        let table = self.table.lock().expect("sessions lock");
        table.get(&key).is_some_and(|entry| live(entry, Instant::now()))
    }

    fn remove(&self, secret: &str) -> bool {
        self.table.lock().expect("sessions lock").remove(&key(secret)).is_some()
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

impl Service {
    /// Logs in with a password (under the login budget, see `logins.rs`)
    /// and opens a browser session: returns its secret and the principal.
    pub async fn session_open(
        &self,
        name: &str,
        password: &str,
        from: Option<std::net::IpAddr>,
    ) -> Result<(String, Principal)> {
        let Principal::User(session) = self.login_password(name, password, from).await? else {
            return Err(ServiceError::unauthenticated("wrong user name or password"));
        };
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|error| ServiceError::invalid("session", format!("no randomness for a session: {error}")))?;
        let secret: String = secret.iter().map(|byte| format!("{byte:02x}")).collect();
        let principal = Principal::User(Session { user: session.user, credential: Credential::Browser(key(&secret)) });
        self.inner.sessions.insert(&secret, principal.clone(), name.to_owned());
        Ok((secret, principal))
    }

    /// The principal of a live browser session.
    pub fn session_get(&self, secret: &str) -> Result<Principal> {
        let principal = self.inner.sessions.get(secret).ok_or_else(ended)?;
        self.admit(&principal)?;
        Ok(principal)
    }

    /// Ends a browser session (logout); whether it was live.
    pub fn session_close(&self, secret: &str) -> bool {
        let removed = self.inner.sessions.remove(secret);
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

    #[test]
    fn sessions_are_bounded_per_user_and_in_all() {
        let sessions = Sessions::default();
        for n in 0..SESSIONS_PER_USER_MAX + 5 {
            sessions.insert(&format!("a{n}"), Principal::Anonymous, "alice".to_owned());
        }
        assert_eq!(sessions.table.lock().expect("sessions lock").len(), SESSIONS_PER_USER_MAX);
        assert!(sessions.get("a0").is_none(), "the oldest of a user's sessions went first");
        assert!(sessions.get(&format!("a{}", SESSIONS_PER_USER_MAX + 4)).is_some());
        for n in 0..SESSIONS_MAX + 10 {
            sessions.insert(&format!("u{n}"), Principal::Anonymous, format!("user{}", n % 1000));
        }
        assert_eq!(sessions.table.lock().expect("sessions lock").len(), SESSIONS_MAX);
        assert!(sessions.remove(&format!("u{}", SESSIONS_MAX + 9)));
        assert!(!sessions.remove(&format!("u{}", SESSIONS_MAX + 9)));
    }
}
