//! Users, passwords, tokens and per-topic access.
//!
//! Users live in `<store>/users.json` (mode 0600), rewritten atomically on
//! each change. Passwords are argon2id PHC strings; tokens are random and
//! only their sha256 is kept. Whoever holds the store (a server, or the CLI
//! with the store's lock) is the only writer of the file.
//!
//! Who may do what: the Unix socket is trusted by its file mode
//! ([`Principal::Local`]); TCP requires a user unless the server runs with
//! `--insecure-no-auth` ([`Principal::Anonymous`]: read and write, no user
//! management). A user reads topics its `read` patterns cover and writes
//! topics its `write` patterns match; `admin` users manage users.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use cairn_store::{Level, Pattern, Topic};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{ApiError, ApiResult};

/// The users file's name in the store directory.
pub const USERS_FILE: &str = "users.json";
/// Longest user name.
const NAME_BYTES_MAX: usize = 64;
/// Longest password accepted (argon2 hashes anything; this bounds the work).
const PASSWORD_BYTES_MAX: usize = 1024;
/// Cached successful password checks, so Basic auth does not pay argon2 per request.
const VERIFIED_CACHE_MAX: usize = 1024;

/// Who is asking.
#[derive(Clone, Debug)]
pub enum Principal {
    /// Through the Unix socket (or the CLI on the store): trusted.
    Local,
    /// TCP with `--insecure-no-auth`: reads and writes, no user management.
    Anonymous,
    /// An authenticated user.
    User(Arc<User>),
}

impl Principal {
    /// The name to stamp on appended events.
    pub fn user_name(&self) -> Option<&str> {
        match self {
            Principal::User(user) => Some(&user.name),
            Principal::Local | Principal::Anonymous => None,
        }
    }

    /// Whether every topic `pattern` matches may be read.
    pub fn check_read(&self, pattern: &Pattern) -> ApiResult<()> {
        match self {
            Principal::Local | Principal::Anonymous => Ok(()),
            Principal::User(user) if user.read.iter().any(|allowed| covers(allowed, pattern)) => Ok(()),
            Principal::User(user) => Err(ApiError::forbidden(format!(
                "user {} may not read {pattern} (read patterns: {})",
                user.name,
                list(&user.read)
            ))),
        }
    }

    /// Whether `topic` may be written.
    pub fn check_write(&self, topic: &Topic) -> ApiResult<()> {
        match self {
            Principal::Local | Principal::Anonymous => Ok(()),
            Principal::User(user) if user.write.iter().any(|allowed| allowed.matches(topic.as_str())) => Ok(()),
            Principal::User(user) => Err(ApiError::forbidden(format!(
                "user {} may not write {topic} (write patterns: {})",
                user.name,
                list(&user.write)
            ))),
        }
    }

    /// Whether users may be managed and the whole store handled (import, verify).
    pub fn check_admin(&self) -> ApiResult<()> {
        match self {
            Principal::Local => Ok(()),
            Principal::User(user) if user.admin => Ok(()),
            Principal::User(user) => Err(ApiError::forbidden(format!("user {} is not an admin", user.name))),
            Principal::Anonymous => Err(ApiError::forbidden("managing the store needs an admin user")),
        }
    }
}

fn list(patterns: &[Pattern]) -> String {
    if patterns.is_empty() {
        return "none".to_owned();
    }
    patterns.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Whether every topic `requested` matches is also matched by `allowed`.
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

/// A user as the server uses it.
#[derive(Debug)]
pub struct User {
    /// Name.
    pub name: String,
    /// Topics readable.
    pub read: Vec<Pattern>,
    /// Topics writable.
    pub write: Vec<Pattern>,
    /// May manage users.
    pub admin: bool,
    password: String,
}

/// A user as stored and listed (no secrets but the password's hash, which
/// is never listed).
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

/// What `user add` asks for.
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
    /// Its id, for `user token revoke`.
    pub id: String,
    /// The bearer token.
    pub token: String,
}

/// The users of a store.
pub struct Users {
    path: PathBuf,
    state: RwLock<State>,
    /// sha256 of `name:password` pairs that verified, by generation.
    verified: Mutex<HashMap<[u8; 32], Arc<User>>>,
}

#[derive(Default)]
struct State {
    records: Vec<UserRecord>,
    users: HashMap<String, Arc<User>>,
    tokens: HashMap<[u8; 32], Arc<User>>,
}

impl Users {
    /// Loads `<store>/users.json` (none yet is no users).
    pub fn open(store: &Path) -> anyhow::Result<Users> {
        let path = store.join(USERS_FILE);
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| anyhow::anyhow!("users file {} is damaged: {error}", path.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => UsersFile::default(),
            Err(error) => return Err(anyhow::anyhow!("read {}: {error}", path.display())),
        };
        let users = Users { path, state: RwLock::new(State::default()), verified: Mutex::new(HashMap::new()) };
        *users.state.write().expect("users lock") = State::build(file.users)?;
        Ok(users)
    }

    /// Whether any user exists.
    pub fn is_empty(&self) -> bool {
        self.state.read().expect("users lock").users.is_empty()
    }

    /// Checks a name and password (slow: argon2id, unless cached).
    pub fn authenticate_password(&self, name: &str, password: &str) -> ApiResult<Arc<User>> {
        let key: [u8; 32] = Sha256::new().chain_update(name).chain_update([0]).chain_update(password).finalize().into();
        if let Some(user) = self.verified.lock().expect("cache lock").get(&key) {
            return Ok(user.clone());
        }
        let user = self.state.read().expect("users lock").users.get(name).cloned();
        let denied = || ApiError::unauthorized("wrong user name or password");
        let user = user.ok_or_else(denied)?;
        let hash =
            PasswordHash::new(&user.password).map_err(|_| ApiError::internal("a stored password hash is malformed"))?;
        argon2::Argon2::default().verify_password(password.as_bytes(), &hash).map_err(|_| denied())?;
        let mut cache = self.verified.lock().expect("cache lock");
        if cache.len() >= VERIFIED_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, user.clone());
        Ok(user)
    }

    /// Checks a bearer token.
    pub fn authenticate_token(&self, token: &str) -> ApiResult<Arc<User>> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.state
            .read()
            .expect("users lock")
            .tokens
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked token"))
    }

    /// Every user, by name.
    pub fn list(&self) -> Vec<UserInfo> {
        let state = self.state.read().expect("users lock");
        let mut out: Vec<UserInfo> = state.records.iter().map(UserRecord::info).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Adds a user.
    pub fn add(&self, new: NewUser) -> ApiResult<UserInfo> {
        check_name(&new.name)?;
        let password = hash_password(&new.password)?;
        let patterns = |field: &str, given: Option<Vec<String>>| -> ApiResult<Vec<String>> {
            let given = given.unwrap_or_else(|| vec![">".to_owned()]);
            for pattern in &given {
                Pattern::parse(pattern).map_err(|error| ApiError::invalid(field, error))?;
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
                return Err(ApiError::new(
                    axum::http::StatusCode::CONFLICT,
                    "exists",
                    format!("user {} exists; use passwd to change its password", new.name),
                ));
            }
            records.push(record);
            Ok(())
        })?;
        Ok(info)
    }

    /// Sets a user's password.
    pub fn passwd(&self, name: &str, password: &str) -> ApiResult<()> {
        let hash = hash_password(password)?;
        self.change(|records| {
            find(records, name)?.password = hash;
            Ok(())
        })
    }

    /// Removes a user and its tokens.
    pub fn remove(&self, name: &str) -> ApiResult<()> {
        self.change(|records| {
            let before = records.len();
            records.retain(|record| record.name != name);
            if records.len() == before {
                return Err(ApiError::not_found("user", name));
            }
            Ok(())
        })
    }

    /// Issues a bearer token for a user.
    pub fn issue_token(&self, name: &str) -> ApiResult<IssuedToken> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|error| ApiError::internal(format!("no randomness: {error}")))?;
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

    /// Revokes a token by its id (or by the token itself).
    pub fn revoke_token(&self, id_or_token: &str) -> ApiResult<()> {
        let by_token = hex(&Sha256::digest(id_or_token.as_bytes()));
        self.change(|records| {
            for record in records.iter_mut() {
                let before = record.tokens.len();
                record.tokens.retain(|token| token.id != id_or_token && token.sha256 != by_token);
                if record.tokens.len() != before {
                    return Ok(());
                }
            }
            Err(ApiError::not_found("token", id_or_token))
        })
    }

    /// Applies a change to the records, writes the file durably, rebuilds.
    fn change(&self, edit: impl FnOnce(&mut Vec<UserRecord>) -> ApiResult<()>) -> ApiResult<()> {
        let mut state = self.state.write().expect("users lock");
        let mut records = state.records.clone();
        edit(&mut records)?;
        let rebuilt = State::build(records).map_err(|error| ApiError::internal(error.to_string()))?;
        write_file(&self.path, &rebuilt.records)
            .map_err(|error| ApiError::internal(format!("write users file: {error}")))?;
        *state = rebuilt;
        self.verified.lock().expect("cache lock").clear();
        Ok(())
    }
}

impl State {
    fn build(records: Vec<UserRecord>) -> anyhow::Result<State> {
        let mut state = State::default();
        for record in &records {
            let parse = |patterns: &[String]| -> anyhow::Result<Vec<Pattern>> {
                patterns
                    .iter()
                    .map(|p| Pattern::parse(p).map_err(|e| anyhow::anyhow!("user {}: {e}", record.name)))
                    .collect()
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
                    anyhow::bail!("user {}: token {} has a malformed hash", record.name, token.id);
                }
                state.tokens.insert(key, user.clone());
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

fn find<'a>(records: &'a mut [UserRecord], name: &str) -> ApiResult<&'a mut UserRecord> {
    records.iter_mut().find(|record| record.name == name).ok_or_else(|| ApiError::not_found("user", name))
}

fn check_name(name: &str) -> ApiResult<()> {
    let valid = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(ApiError::invalid("name", format!("{name:?}: 1-{NAME_BYTES_MAX} bytes of A-Z a-z 0-9 _ - .")));
    }
    Ok(())
}

fn hash_password(password: &str) -> ApiResult<String> {
    if password.is_empty() || password.len() > PASSWORD_BYTES_MAX {
        return Err(ApiError::invalid("password", format!("must be 1-{PASSWORD_BYTES_MAX} bytes")));
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|error| ApiError::internal(format!("no randomness: {error}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|error| ApiError::internal(error.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| ApiError::internal(format!("hash password: {error}")))
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str, out: &mut [u8]) -> bool {
    if text.len() != out.len() * 2 {
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

    fn p(text: &str) -> Pattern {
        Pattern::parse(text).expect("valid pattern")
    }

    #[test]
    fn coverage() {
        assert!(covers(&p(">"), &p("a")));
        assert!(covers(&p(">"), &p("a.>")));
        assert!(covers(&p("a.>"), &p("a.b")));
        assert!(covers(&p("a.>"), &p("a.*.c")));
        assert!(covers(&p("a.>"), &p("a.>")));
        assert!(!covers(&p("a.>"), &p("a")));
        assert!(!covers(&p("a.>"), &p(">")));
        assert!(covers(&p("a.*"), &p("a.b")));
        assert!(covers(&p("a.*"), &p("a.*")));
        assert!(!covers(&p("a.*"), &p("a.>")));
        assert!(!covers(&p("a.*"), &p("a.b.c")));
        assert!(covers(&p("a.b"), &p("a.b")));
        assert!(!covers(&p("a.b"), &p("a.*")));
        assert!(!covers(&p("a.b"), &p("a.c")));
    }
}
