//! Users, passwords and tokens, kept in `<store>/users.json`, or, where
//! several servers share one storage (PostgreSQL), as one state record per
//! user (`U<name>`) in it.
//!
//! The file (mode 0600) is rewritten atomically on each change (temporary
//! file, fsync, rename, fsync of the directory). Shared records are read
//! again before each change (so a change made through another server is
//! kept) and every second by the service ([`Users::refresh`]), so a
//! revocation through one server ends sessions on every server within
//! about a second. Passwords are argon2id PHC
//! strings; tokens are `cairn_` + 64 hex digits of randomness, and only
//! their sha256 is kept. Whoever holds the store (a server, or the CLI
//! with the store's lock) is the only writer of the file.
//!
//! Checking a password costs the same whether the user exists or not (an
//! unknown name is checked against a dummy hash with the same parameters),
//! so timing does not tell which users exist. Every change is signalled
//! ([`Users::changes`]), and sessions re-check themselves
//! ([`Users::is_current`]), so a revoked token, a changed password or a
//! removed user ends live sessions too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use cairn_store::{Pattern, StateEntries, StateOp, Storage, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use crate::error::{Result, ServiceError};
use crate::principal::{Credential, Session, User};

/// The users file's name in the store directory.
pub const USERS_FILE: &str = "users.json";
/// Longest user name.
pub const NAME_BYTES_MAX: usize = 64;
/// Longest password accepted (argon2 hashes anything; this bounds the work).
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Cached successful password checks, so Basic auth does not pay argon2 per request.
const VERIFIED_CACHE_MAX: usize = 1024;

/// A user as stored (no secret but the password's hash, never listed).
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct UserRecord {
    name: String,
    /// argon2id PHC string.
    password: String,
    read: Vec<String>,
    write: Vec<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    tokens: Vec<TokenRecord>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct TokenRecord {
    /// Short public id, to name the token when revoking it.
    id: String,
    /// Hex sha256 of the token.
    sha256: String,
    created: String,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    users: Vec<UserRecord>,
}

/// A user as listed: what it may do, and its tokens' ids.
#[derive(Serialize, Debug, Clone)]
pub struct UserInfo {
    /// Name.
    pub name: String,
    /// Read patterns.
    pub read: Vec<String>,
    /// Write patterns.
    pub write: Vec<String>,
    /// Admin.
    pub admin: bool,
    /// Ids of live tokens.
    pub tokens: Vec<String>,
}

/// What adding a user asks for.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Name: 1-64 bytes of A-Z a-z 0-9 _ - .
    pub name: String,
    /// Password.
    pub password: String,
    /// Read patterns (default: `>`, everything).
    #[serde(default)]
    pub read: Option<Vec<String>>,
    /// Write patterns (default: `>`).
    #[serde(default)]
    pub write: Option<Vec<String>>,
    /// May manage users.
    #[serde(default)]
    pub admin: bool,
}

/// A token just issued: the only time the secret is shown.
#[derive(Serialize, Debug)]
pub struct IssuedToken {
    /// The user.
    pub user: String,
    /// Its id, for revoking it.
    pub id: String,
    /// The bearer token.
    pub token: String,
}

/// The first byte of the state records that hold users.
pub const USER_RECORD_PREFIX: u8 = b'U';

/// Where the users are kept.
enum Keep {
    /// `<store>/users.json`.
    File(PathBuf),
    /// One state record per user in storage that several servers share.
    Shared {
        storage: Arc<dyn Storage>,
        /// The records as last read, to notice changes made elsewhere.
        seen: Mutex<StateEntries>,
    },
}

/// The users of a store.
pub struct Users {
    keep: Keep,
    state: RwLock<State>,
    /// sha256 of `name\0password` pairs that verified.
    verified: Mutex<HashMap<[u8; 32], Arc<User>>>,
    changed: watch::Sender<u64>,
    /// Held while a change is made: one at a time, and `state` is locked
    /// only to swap in the result (never while waiting for storage).
    changing: Mutex<()>,
    /// Changes made by this process (see [`Users::refresh`]).
    generation: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct State {
    records: Vec<UserRecord>,
    users: HashMap<String, Arc<User>>,
    /// Token hash → user name.
    tokens: HashMap<[u8; 32], String>,
}

impl Users {
    /// Loads `<store>/users.json` (none yet is no users).
    pub fn open(store: &Path) -> Result<Users> {
        let path = store.join(USERS_FILE);
        let damaged = |detail: String| {
            ServiceError::Storage(StoreError::Corrupt { location: path.display().to_string(), detail })
        };
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| damaged(error.to_string()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => UsersFile::default(),
            Err(error) => {
                return Err(ServiceError::Storage(StoreError::Io {
                    context: format!("read {}", path.display()),
                    source: Arc::new(error),
                }));
            }
        };
        let state = State::build(file.users).map_err(damaged)?;
        Ok(Users {
            keep: Keep::File(path),
            state: RwLock::new(state),
            verified: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            changing: Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The users kept as state records of `storage`, which several servers
    /// share.
    pub async fn open_shared(storage: Arc<dyn Storage>) -> Result<Users> {
        let entries = storage.state_scan(vec![USER_RECORD_PREFIX]).await?;
        let state = State::build(parse_records(&entries)?)
            .map_err(|detail| ServiceError::Storage(StoreError::Corrupt { location: "user records".into(), detail }))?;
        Ok(Users {
            keep: Keep::Shared { storage, seen: Mutex::new(entries) },
            state: RwLock::new(state),
            verified: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            changing: Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The storage the users are kept in, when shared.
    pub(crate) fn shared_storage(&self) -> Option<Arc<dyn Storage>> {
        match &self.keep {
            Keep::File(_) => None,
            Keep::Shared { storage, .. } => Some(storage.clone()),
        }
    }

    /// Takes in the user records as just read from shared storage: when
    /// they changed (through another server), rebuilds and tells sessions
    /// to re-check themselves.
    ///
    /// `generation` is [`Users::generation`] from before the records were
    /// read: if a change was made since (or is being made), what was read
    /// may be older than it, and is not taken (the next refresh is).
    /// A record that cannot be read is left out (that user cannot log in),
    /// logged, and does not keep the others from changing.
    pub fn refresh(&self, entries: StateEntries, generation: u64) -> Result<()> {
        let Keep::Shared { seen, .. } = &self.keep else { return Ok(()) };
        let Ok(_no_change_running) = self.changing.try_lock() else { return Ok(()) };
        if self.generation() != generation {
            return Ok(());
        }
        let mut seen = seen.lock().expect("seen lock");
        if *seen == entries {
            return Ok(());
        }
        let mut records = Vec::with_capacity(entries.len());
        for entry in &entries {
            match parse_records(std::slice::from_ref(entry)) {
                Ok(mut one) => records.append(&mut one),
                Err(error) => tracing::warn!("a user record is left out: {error}"),
            }
        }
        let rebuilt = State::build(records)
            .map_err(|detail| ServiceError::Storage(StoreError::Corrupt { location: "user records".into(), detail }))?;
        *seen = entries;
        *self.state.write().expect("users lock") = rebuilt;
        drop(seen);
        self.verified.lock().expect("cache lock").clear();
        self.changed.send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// How many changes this process made: a refresh started before a change
    /// must not undo it.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Copies users into shared storage that has none yet (a directory's
    /// `users.json` when a server first serves a database); returns how many.
    pub fn adopt(&self, from: &Users) -> Result<usize> {
        let records = from.state.read().expect("users lock").records.clone();
        if records.is_empty() || !self.is_empty() {
            return Ok(0);
        }
        let count = records.len();
        self.change(|existing| {
            existing.extend(records);
            Ok(())
        })?;
        Ok(count)
    }

    /// The users file as it would be written now (for a backup).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let records = self.state.read().expect("users lock").records.clone();
        serde_json::to_vec_pretty(&UsersFile { users: records })
            .map_err(|error| ServiceError::invalid("users", error.to_string()))
    }

    /// Whether any user exists.
    pub fn is_empty(&self) -> bool {
        self.state.read().expect("users lock").users.is_empty()
    }

    /// Tells live sessions to re-check themselves (a browser session ended).
    pub(crate) fn notify(&self) {
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// A signal that changes with every change of users or tokens.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A session for `name` if this exact password verified before (no
    /// argon2 work).
    pub(crate) fn cached(&self, name: &str, password: &str) -> Option<Session> {
        let key = cache_key(name, password);
        let user = self.verified.lock().expect("cache lock").get(&key).cloned()?;
        Some(Session { user, credential: Credential::Password })
    }

    /// Checks a name and password: slow (argon2id), the same for a name
    /// that does not exist. Blocking: call it on the blocking pool.
    pub(crate) fn verify_password(&self, name: &str, password: &str) -> Option<Session> {
        let user = self.state.read().expect("users lock").users.get(name).cloned();
        let hash = user.as_ref().map_or_else(|| dummy_hash().to_owned(), |user| user.password.clone());
        let verified = PasswordHash::new(&hash)
            .ok()
            .is_some_and(|hash| argon2::Argon2::default().verify_password(password.as_bytes(), &hash).is_ok());
        let user = user.filter(|_| verified)?;
        let mut cache = self.verified.lock().expect("cache lock");
        if cache.len() >= VERIFIED_CACHE_MAX {
            cache.clear();
        }
        cache.insert(cache_key(name, password), user.clone());
        Some(Session { user, credential: Credential::Password })
    }

    /// A session for a processor `name` registered: the user's rights as
    /// they are now, holding while the user exists.
    pub(crate) fn processor_session(&self, name: &str) -> Option<Session> {
        let user = self.state.read().expect("users lock").users.get(name).cloned()?;
        Some(Session { user, credential: Credential::Processor })
    }

    /// A session for a bearer token, if it is live.
    pub(crate) fn verify_token(&self, token: &str) -> Option<Session> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let state = self.state.read().expect("users lock");
        let user = state.tokens.get(&key).and_then(|name| state.users.get(name)).cloned()?;
        Some(Session { user, credential: Credential::Token(key) })
    }

    /// Whether `session` still holds: its user exists with the same
    /// password, and its token (if it used one) is not revoked.
    pub fn is_current(&self, session: &Session) -> bool {
        let state = self.state.read().expect("users lock");
        let Some(user) = state.users.get(&session.user.name) else { return false };
        if user.password != session.user.password && session.credential != Credential::Processor {
            return false;
        }
        match session.credential {
            Credential::Password | Credential::Browser(_) => true,
            Credential::Processor => true,
            Credential::Token(key) => state.tokens.get(&key) == Some(&user.name),
        }
    }

    /// Every user, by name.
    pub fn list(&self) -> Vec<UserInfo> {
        let state = self.state.read().expect("users lock");
        let mut out: Vec<UserInfo> = state.records.iter().map(UserRecord::info).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Adds a user. Blocking (argon2, the file's fsync).
    pub fn add(&self, new: NewUser) -> Result<UserInfo> {
        check_name(&new.name)?;
        let password = hash_password(&new.password)?;
        let patterns = |field: &'static str, given: Option<Vec<String>>| -> Result<Vec<String>> {
            let given = given.unwrap_or_else(|| vec![">".to_owned()]);
            for pattern in &given {
                Pattern::parse(pattern).map_err(|error| ServiceError::invalid(field, error.to_string()))?;
            }
            Ok(given)
        };
        let record = UserRecord {
            name: new.name.clone(),
            password,
            read: patterns("read", new.read)?,
            write: patterns("write", new.write)?,
            admin: new.admin,
            tokens: Vec::new(),
        };
        let info = record.info();
        self.change(|records| {
            if records.iter().any(|existing| existing.name == new.name) {
                return Err(ServiceError::Exists { what: "user", key: new.name.clone() });
            }
            records.push(record);
            Ok(())
        })?;
        Ok(info)
    }

    /// Sets a user's password (ending its password sessions). Blocking.
    pub fn passwd(&self, name: &str, password: &str) -> Result<()> {
        let hash = hash_password(password)?;
        self.change(|records| {
            find(records, name)?.password = hash;
            Ok(())
        })
    }

    /// Removes a user and its tokens (ending its sessions). Blocking.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.change(|records| {
            let before = records.len();
            records.retain(|record| record.name != name);
            if records.len() == before {
                return Err(ServiceError::not_found("user", name));
            }
            Ok(())
        })
    }

    /// Issues a bearer token for a user. Blocking.
    pub fn issue_token(&self, name: &str) -> Result<IssuedToken> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|error| no_randomness(&error))?;
        let token = format!("cairn_{}", hex(&secret));
        let sha256 = hex(&Sha256::digest(token.as_bytes()));
        let id = sha256[..12].to_owned();
        let created = cairn_store::EventId::now().to_string();
        let record = TokenRecord { id: id.clone(), sha256, created };
        self.change(|records| {
            find(records, name)?.tokens.push(record);
            Ok(())
        })?;
        Ok(IssuedToken { user: name.to_owned(), id, token })
    }

    /// The user a token id (or token) belongs to, if any.
    pub fn token_owner(&self, id_or_token: &str) -> Option<String> {
        let by_token = hex(&Sha256::digest(id_or_token.as_bytes()));
        let state = self.state.read().expect("users lock");
        state
            .records
            .iter()
            .find(|record| record.tokens.iter().any(|token| token.id == id_or_token || token.sha256 == by_token))
            .map(|record| record.name.clone())
    }

    /// Revokes a token by its id (or by the token itself). Blocking.
    pub fn revoke_token(&self, id_or_token: &str) -> Result<()> {
        let by_token = hex(&Sha256::digest(id_or_token.as_bytes()));
        self.change(|records| {
            for record in records.iter_mut() {
                let before = record.tokens.len();
                record.tokens.retain(|token| token.id != id_or_token && token.sha256 != by_token);
                if record.tokens.len() != before {
                    return Ok(());
                }
            }
            Err(ServiceError::not_found("token", id_or_token))
        })
    }

    /// Applies a change to the records, writes the file durably, rebuilds,
    /// and signals the change.
    /// Applies `edit` to the records and keeps the result. Blocking (the
    /// file's fsync; with shared storage, waiting for it on the runtime).
    fn change(&self, edit: impl FnOnce(&mut Vec<UserRecord>) -> Result<()>) -> Result<()> {
        let _one_at_a_time = self.changing.lock().expect("change lock");
        let mut records = self.state.read().expect("users lock").records.clone();
        // With shared storage, the lock every server shares, held until the
        // change is written: changes made through two servers at once are
        // made one after the other, each on the other's result.
        let mut _shared_lock = None;
        if let Keep::Shared { storage, seen } = &self.keep {
            let runtime = tokio::runtime::Handle::current();
            _shared_lock = runtime.block_on(storage.exclusive("users"))?;
            // Start from what storage holds now: another server may have
            // changed users since the last refresh.
            let entries = runtime.block_on(storage.state_scan(vec![USER_RECORD_PREFIX]))?;
            records = parse_records(&entries)?;
            *seen.lock().expect("seen lock") = entries;
        }
        let before = records.clone();
        edit(&mut records)?;
        let rebuilt = State::build(records).map_err(|detail| ServiceError::invalid("user", detail))?;
        match &self.keep {
            Keep::File(path) => write_file(path, &rebuilt.records).map_err(|error| {
                ServiceError::Storage(StoreError::Io {
                    context: "write the users file".to_owned(),
                    source: Arc::new(error),
                })
            })?,
            Keep::Shared { storage, seen } => {
                let mut ops = Vec::new();
                for record in &rebuilt.records {
                    let unchanged = before.iter().any(|old| {
                        old.name == record.name && serde_json::to_vec(old).ok() == serde_json::to_vec(record).ok()
                    });
                    if !unchanged {
                        let value = serde_json::to_vec(record)
                            .map_err(|error| ServiceError::invalid("user", error.to_string()))?;
                        ops.push(StateOp::Put(record_key(&record.name), value));
                    }
                }
                for old in &before {
                    if !rebuilt.records.iter().any(|record| record.name == old.name) {
                        ops.push(StateOp::Delete(record_key(&old.name)));
                    }
                }
                if !ops.is_empty() {
                    let runtime = tokio::runtime::Handle::current();
                    runtime.block_on(async { storage.state_submit(ops).await?.await })?;
                }
                // What storage now holds, as the next refresh will read it.
                let mut entries: StateEntries = rebuilt
                    .records
                    .iter()
                    .filter_map(|record| Some((record_key(&record.name), serde_json::to_vec(record).ok()?)))
                    .collect();
                entries.sort();
                *seen.lock().expect("seen lock") = entries;
            }
        }
        *self.state.write().expect("users lock") = rebuilt;
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.verified.lock().expect("cache lock").clear();
        self.changed.send_modify(|generation| *generation += 1);
        Ok(())
    }
}

/// The state record key of user `name`.
fn record_key(name: &str) -> Vec<u8> {
    let mut key = vec![USER_RECORD_PREFIX];
    key.extend_from_slice(name.as_bytes());
    key
}

/// Users from their state records.
fn parse_records(entries: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<UserRecord>> {
    entries
        .iter()
        .map(|(key, value)| {
            serde_json::from_slice(value).map_err(|error| {
                ServiceError::Storage(StoreError::Corrupt {
                    location: format!("user record {}", String::from_utf8_lossy(key)),
                    detail: error.to_string(),
                })
            })
        })
        .collect()
}

impl State {
    fn build(records: Vec<UserRecord>) -> std::result::Result<State, String> {
        let mut state = State::default();
        for record in &records {
            let parse = |patterns: &[String]| -> std::result::Result<Vec<Pattern>, String> {
                patterns.iter().map(|p| Pattern::parse(p).map_err(|e| format!("user {}: {e}", record.name))).collect()
            };
            let user = Arc::new(User {
                name: record.name.clone(),
                read: parse(&record.read)?,
                write: parse(&record.write)?,
                admin: record.admin,
                password: record.password.clone(),
            });
            for token in &record.tokens {
                let mut key = [0u8; 32];
                if token.sha256.len() != 64 || !decode_hex(&token.sha256, &mut key) {
                    return Err(format!("user {}: token {} has a malformed hash", record.name, token.id));
                }
                state.tokens.insert(key, record.name.clone());
            }
            state.users.insert(record.name.clone(), user);
        }
        state.records = records;
        Ok(state)
    }
}

impl UserRecord {
    fn info(&self) -> UserInfo {
        UserInfo {
            name: self.name.clone(),
            read: self.read.clone(),
            write: self.write.clone(),
            admin: self.admin,
            tokens: self.tokens.iter().map(|token| token.id.clone()).collect(),
        }
    }
}

fn cache_key(name: &str, password: &str) -> [u8; 32] {
    Sha256::new().chain_update(name).chain_update([0]).chain_update(password).finalize().into()
}

/// A hash of a password nobody has, with the parameters real ones use, so
/// an unknown user costs what a known one costs.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::encode_b64(b"cairn-dummy-salt").expect("a valid salt");
        argon2::Argon2::default()
            .hash_password(b"no user has this password", &salt)
            .map(|hash| hash.to_string())
            .unwrap_or_default()
    })
}

fn find<'a>(records: &'a mut [UserRecord], name: &str) -> Result<&'a mut UserRecord> {
    records.iter_mut().find(|record| record.name == name).ok_or_else(|| ServiceError::not_found("user", name))
}

/// Validates a user name.
pub fn check_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(ServiceError::invalid("name", format!("{name:?}: 1-{NAME_BYTES_MAX} bytes of A-Z a-z 0-9 _ - .")));
    }
    Ok(())
}

fn hash_password(password: &str) -> Result<String> {
    if password.is_empty() || password.len() > PASSWORD_BYTES_MAX {
        return Err(ServiceError::invalid("password", format!("must be 1-{PASSWORD_BYTES_MAX} bytes")));
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|error| no_randomness(&error))?;
    let salt = SaltString::encode_b64(&salt).map_err(|error| ServiceError::invalid("password", error.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| ServiceError::invalid("password", error.to_string()))
}

fn no_randomness(error: &getrandom::Error) -> ServiceError {
    ServiceError::Storage(StoreError::Io {
        context: "get randomness".to_owned(),
        source: Arc::new(std::io::Error::other(error.to_string())),
    })
}

fn write_file(path: &Path, records: &[UserRecord]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    let body = serde_json::to_vec_pretty(&UsersFile { users: records.to_vec() }).map_err(std::io::Error::other)?;
    file.write_all(&body)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str, out: &mut [u8]) -> bool {
    if text.len() != out.len() * 2 || !text.is_ascii() {
        return false;
    }
    for (idx, byte) in out.iter_mut().enumerate() {
        match u8::from_str_radix(&text[idx * 2..idx * 2 + 2], 16) {
            Ok(value) => *byte = value,
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wrong password for a user that does not exist costs what one for
    /// a user that does costs (argon2 either way), so timing does not tell
    /// which users exist (it was 0.4 ms against 28 ms).
    #[test]
    fn an_unknown_user_costs_what_a_known_one_costs() {
        let dir = tempfile_dir();
        let users = Users::open(&dir).expect("no users yet");
        let new = NewUser { name: "alice".into(), password: "right".into(), read: None, write: None, admin: false };
        users.add(new).expect("added");
        let time = |name: &str| {
            let started = std::time::Instant::now();
            assert!(users.verify_password(name, "wrong").is_none());
            started.elapsed()
        };
        // Alternating, and the fastest of each: other tests running at
        // the same time only ever add time. (The first unknown name also
        // makes the dummy hash, once: not timed.)
        assert!(users.verify_password("warm-up", "wrong").is_none());
        let (mut known, mut unknown) = (std::time::Duration::MAX, std::time::Duration::MAX);
        for _ in 0..9 {
            known = known.min(time("alice"));
            unknown = unknown.min(time("nobody"));
        }
        assert!(unknown * 2 > known && known * 2 > unknown, "known {known:?}, unknown {unknown:?}");
        assert!(users.verify_password("alice", "right").is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cairn-users-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        dir
    }
}
