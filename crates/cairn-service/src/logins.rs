//! Password logins under a budget.
//!
//! argon2id costs about 19 MiB and tens of milliseconds per check, which is
//! the point against offline guessing and the danger online: unbounded, a
//! hundred concurrent wrong passwords took a server from 200 MB to 2 GB. So:
//! - checks run on `LOGIN_CHECKS_CONCURRENT` threads of their own (so the
//!   memory argon2 takes is reused by those threads, not kept by one
//!   allocator arena per blocking-pool thread), and at most
//!   `LOGIN_CHECKS_QUEUED_MAX` wait; beyond that a login is refused as
//!   `Overloaded` without any work;
//! - failures are counted per client address and per user name; past a few
//!   free ones, each failure makes the next attempt wait twice as long
//!   (capped), and an attempt during the wait is refused as `Throttled`
//!   without any work (so guessing cannot go faster than the backoff, on
//!   one connection or many);
//! - a password that verified before is accepted from the cache without
//!   argon2 and without the throttle, so an attack on a user does not lock
//!   out the user's running clients.
//!
//! The failure table is bounded: the oldest entries go first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Result, ServiceError};

/// Password checks running at once.
pub const LOGIN_CHECKS_CONCURRENT: usize = 2;
/// Password checks waiting for a turn before more are refused.
pub const LOGIN_CHECKS_QUEUED_MAX: usize = 64;
/// Failures from one address before the backoff starts.
pub const ADDRESS_FREE_FAILURES: u32 = 5;
/// Longest backoff for one address.
pub const ADDRESS_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Failures for one user name (from anywhere) before its backoff starts.
pub const USER_FREE_FAILURES: u32 = 10;
/// Longest backoff for one user name.
pub const USER_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The first backoff; each further failure doubles it.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// A record of failures is forgotten after this long without one.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Most addresses and names tracked at once.
const TRACKED_MAX: usize = 16 * 1024;

/// Who failed: a client address or a user name.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Key {
    Address(IpAddr),
    User(String),
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// A password check to run on a login thread.
type Check = Box<dyn FnOnce() + Send>;

/// The login budget of one service.
#[derive(Default)]
pub struct Logins {
    /// The queue of the login threads (started on first use).
    checks: OnceLock<mpsc::SyncSender<Check>>,
    failures: Mutex<HashMap<Key, Failures>>,
}

/// Starts the login threads; they end when the queue's sender is dropped.
fn start_threads() -> mpsc::SyncSender<Check> {
    let (sender, receiver) = mpsc::sync_channel::<Check>(LOGIN_CHECKS_QUEUED_MAX);
    let receiver = Arc::new(Mutex::new(receiver));
    for n in 0..LOGIN_CHECKS_CONCURRENT {
        let receiver = receiver.clone();
        let started = std::thread::Builder::new().name(format!("cairn-login-{n}")).spawn(move || {
            loop {
                let next = receiver.lock().expect("login queue lock").recv();
                match next {
                    Ok(check) => check(),
                    Err(_) => return,
                }
            }
        });
        if let Err(error) = started {
            tracing::warn!("could not start a login thread: {error}");
        }
    }
    sender
}

impl Logins {
    /// Refuses an attempt while `name` or `from` is in its backoff.
    pub(crate) fn admit(&self, name: &str, from: Option<IpAddr>) -> Result<()> {
        let now = Instant::now();
        let failures = self.failures.lock().expect("logins lock");
        let wait = [from.map(Key::Address), Some(Key::User(name.to_owned()))]
            .into_iter()
            .flatten()
            .filter_map(|key| failures.get(&key)?.blocked_until)
            .filter(|until| *until > now)
            .max();
        match wait {
            Some(until) => Err(ServiceError::Throttled { retry_after: until - now }),
            None => Ok(()),
        }
    }

    /// Runs `check` on a login thread and returns its result;
    /// `Overloaded` at once when too many checks wait.
    pub(crate) async fn run<T: Send + 'static>(&self, check: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let (reply, result) = oneshot::channel();
        let job: Check = Box::new(move || {
            let _ = reply.send(check());
        });
        match self.checks.get_or_init(start_threads).try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                return Err(ServiceError::Overloaded { reason: "too many password checks waiting" });
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(ServiceError::ShuttingDown),
        }
        result.await.map_err(|_| ServiceError::ShuttingDown)
    }

    /// Counts a failed check against `name` and `from`.
    pub(crate) fn failed(&self, name: &str, from: Option<IpAddr>) {
        let now = Instant::now();
        let mut failures = self.failures.lock().expect("logins lock");
        if failures.len() >= TRACKED_MAX {
            failures.retain(|_, record| now.duration_since(record.last) < FORGET_AFTER);
            if failures.len() >= TRACKED_MAX
                && let Some(oldest) = failures.iter().min_by_key(|(_, record)| record.last).map(|(key, _)| key.clone())
            {
                failures.remove(&oldest);
            }
        }
        let mut count = |key: Key, free: u32, max: Duration| {
            let record = failures.entry(key).or_insert(Failures { count: 0, last: now, blocked_until: None });
            if now.duration_since(record.last) >= FORGET_AFTER {
                *record = Failures { count: 0, last: now, blocked_until: None };
            }
            record.count = record.count.saturating_add(1);
            record.last = now;
            if record.count > free {
                let doublings = (record.count - free - 1).min(16);
                record.blocked_until = Some(now + (BACKOFF_FIRST * 2u32.pow(doublings)).min(max));
            }
        };
        if let Some(from) = from {
            count(Key::Address(from), ADDRESS_FREE_FAILURES, ADDRESS_BACKOFF_MAX);
        }
        count(Key::User(name.to_owned()), USER_FREE_FAILURES, USER_BACKOFF_MAX);
    }

    /// A success forgets the address's and the name's failures.
    pub(crate) fn succeeded(&self, name: &str, from: Option<IpAddr>) {
        let mut failures = self.failures.lock().expect("logins lock");
        if let Some(from) = from {
            failures.remove(&Key::Address(from));
        }
        failures.remove(&Key::User(name.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_per_address_and_per_name_and_success_forgets() {
        let logins = Logins::default();
        let from = Some(IpAddr::from([127, 0, 0, 1]));
        for _ in 0..ADDRESS_FREE_FAILURES {
            logins.admit("alice", from).expect("free failures are free");
            logins.failed("alice", from);
        }
        logins.admit("alice", from).expect("still free");
        logins.failed("alice", from);
        let Err(ServiceError::Throttled { retry_after }) = logins.admit("bob", from) else {
            panic!("the address is in its backoff");
        };
        assert!(retry_after <= BACKOFF_FIRST && retry_after > Duration::ZERO);
        logins.admit("alice", Some(IpAddr::from([10, 0, 0, 1]))).expect("the name is not in backoff yet");
        logins.succeeded("alice", from);
        logins.admit("alice", from).expect("a success forgets");
        for n in 0..=USER_FREE_FAILURES {
            logins.failed("carol", Some(IpAddr::from([10, 0, 1, u8::try_from(n).unwrap_or(0)])));
        }
        assert!(logins.admit("carol", Some(IpAddr::from([10, 9, 9, 9]))).is_err(), "the name backs off from anywhere");
    }
}
