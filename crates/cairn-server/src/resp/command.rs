//! Command dispatch, and the connection and server commands: PING, ECHO,
//! HELLO, AUTH, SELECT, QUIT, RESET, CLIENT, COMMAND, INFO and the key
//! commands over topics (DBSIZE, EXISTS, TYPE, KEYS, SCAN, DEL).

use std::sync::Arc;

use bytes::Bytes;
use cairn_store::{StoreError, Topic};

use super::conn::{Awaiting, Conn};
use super::{meilies, streams};
use crate::auth::Principal;
use crate::error::ApiError;

/// A failed command: the whole error line, starting with its code.
#[derive(Debug)]
pub(crate) struct Fail(pub(crate) String);

/// A command's result; replies are written to `conn.out` as it runs.
pub(crate) type CmdResult = Result<(), Fail>;

/// `ERR <message>`.
pub(crate) fn err(message: impl std::fmt::Display) -> Fail {
    Fail(format!("ERR {message}"))
}

impl From<ApiError> for Fail {
    fn from(error: ApiError) -> Fail {
        match error.code {
            "forbidden" => Fail(format!("NOPERM {}", error.message)),
            "unauthorized" => Fail(format!("WRONGPASS {}", error.message)),
            _ => err(error.message),
        }
    }
}

impl From<StoreError> for Fail {
    fn from(error: StoreError) -> Fail {
        Fail::from(ApiError::from(error))
    }
}

/// Name, arity (negative: at least), flags, first key, last key, key step,
/// group and summary of every command: for COMMAND and arity checks.
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    pub(crate) arity: i64,
    pub(crate) flags: &'static [&'static str],
    pub(crate) keys: (i64, i64, i64),
    pub(crate) group: &'static str,
    pub(crate) summary: &'static str,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    group: &'static str,
    summary: &'static str,
) -> Spec {
    Spec { name, arity, flags, keys, group, summary }
}

const R: &[&str] = &["readonly", "fast"];
const W: &[&str] = &["write", "fast"];
const C: &[&str] = &["fast", "no-auth"];
const NONE: (i64, i64, i64) = (0, 0, 0);
const KEY1: (i64, i64, i64) = (1, 1, 1);

pub(crate) const SPECS: &[Spec] = &[
    spec("ping", -1, C, NONE, "connection", "Returns the server's liveliness response."),
    spec("echo", 2, C, NONE, "connection", "Returns the given string."),
    spec("hello", -1, C, NONE, "connection", "Handshakes with the server (protocol 2 or 3, AUTH, SETNAME)."),
    spec("auth", -2, C, NONE, "connection", "Authenticates the connection (user and password, or a token)."),
    spec("select", 2, C, NONE, "connection", "Selects the database (only 0 exists)."),
    spec("quit", -1, C, NONE, "connection", "Closes the connection."),
    spec("reset", 1, C, NONE, "connection", "Resets the connection."),
    spec("client", -2, C, NONE, "connection", "CLIENT SETNAME|GETNAME|ID|INFO|SETINFO."),
    spec("command", -1, R, NONE, "server", "Returns information about commands (COUNT, DOCS, INFO, LIST)."),
    spec("info", -1, R, NONE, "server", "Returns information and statistics about the server."),
    spec("dbsize", 1, R, NONE, "server", "Returns the number of topics."),
    spec("exists", -2, R, (1, -1, 1), "generic", "Counts the given topics that exist."),
    spec("type", 2, R, KEY1, "generic", "Returns 'stream' for a topic, 'none' otherwise."),
    spec("keys", 2, R, NONE, "generic", "Returns the topics matching a glob pattern."),
    spec("scan", -2, R, NONE, "generic", "Iterates over topics."),
    spec("del", -2, W, (1, -1, 1), "generic", "Removes every event of topics (needs --allow-delete)."),
    spec("publish", 4, W, KEY1, "meilies", "MeiliES: appends <event-name> <data> to a stream."),
    spec("subscribe", -2, R, NONE, "meilies", "MeiliES: follows streams: name[:from[:to]] or $all[:from[:to]]."),
    spec("last-event-number", 2, R, KEY1, "meilies", "MeiliES: the newest event number of a stream."),
    spec("stream-names", 1, R, NONE, "meilies", "MeiliES: the names of every stream."),
    spec("xadd", -5, W, KEY1, "stream", "Appends an event to a topic; its id is <ms>-<seq>."),
    spec("xrange", -4, R, KEY1, "stream", "Returns entries in an id range."),
    spec("xrevrange", -4, R, KEY1, "stream", "Returns entries in an id range, newest first."),
    spec("xlen", 2, R, KEY1, "stream", "Returns the number of entries kept."),
    spec("xdel", -3, W, KEY1, "stream", "Removes entries (their seqs are never reused)."),
    spec("xtrim", -4, W, KEY1, "stream", "Removes the oldest entries (MAXLEN or MINID)."),
    spec("xread", -4, R, NONE, "stream", "Reads entries after ids from topics, optionally blocking."),
    spec("xgroup", -2, W, NONE, "stream", "XGROUP CREATE|SETID|DESTROY|CREATECONSUMER|DELCONSUMER."),
    spec("xreadgroup", -7, W, NONE, "stream", "Reads entries as a consumer of a group."),
    spec("xack", -4, W, KEY1, "stream", "Acknowledges pending entries of a group."),
    spec("xpending", -3, R, KEY1, "stream", "Returns a group's pending entries."),
    spec("xclaim", -6, W, KEY1, "stream", "Takes pending entries over from another consumer."),
    spec("xautoclaim", -6, W, KEY1, "stream", "Takes over pending entries idle for long enough."),
    spec("xinfo", -2, R, NONE, "stream", "XINFO STREAM|GROUPS|CONSUMERS."),
];

pub(crate) fn find_spec(name: &[u8]) -> Option<&'static Spec> {
    SPECS.iter().find(|spec| spec.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Submits an append without waiting when `args` is a plain `XADD` or a
/// MeiliES `publish`; `None` for every other command.
pub(crate) fn start_append(conn: &mut Conn, args: &[Bytes]) -> Option<Awaiting> {
    let name = args.first()?;
    if name.eq_ignore_ascii_case(b"xadd") {
        streams::start_xadd(conn, args)
    } else if name.eq_ignore_ascii_case(b"publish") && args.len() == 4 {
        Some(meilies::start_publish(conn, args))
    } else {
        None
    }
}

/// Runs one command, writing its reply (or error) to `conn.out`.
pub(crate) async fn execute(conn: &mut Conn, args: Vec<Bytes>) {
    if let Err(fail) = dispatch(conn, &args).await {
        conn.out.error(&fail.0);
    }
}

async fn dispatch(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let name = String::from_utf8_lossy(&args[0]).to_lowercase();
    let Some(spec) = find_spec(name.as_bytes()) else {
        let shown: String = name.chars().take(128).collect();
        let rest: String = args[1..]
            .iter()
            .take(8)
            .map(|a| format!("'{}' ", String::from_utf8_lossy(a).chars().take(64).collect::<String>()))
            .collect();
        return Err(err(format!("unknown command '{shown}', with args beginning with: {rest}")));
    };
    let n = args.len() as i64;
    if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
        return Err(err(format!("wrong number of arguments for '{}' command", spec.name)));
    }
    if conn.principal.is_none() && !matches!(spec.name, "auth" | "hello" | "quit" | "reset") {
        return Err(Fail("NOAUTH Authentication required.".to_owned()));
    }
    let out = &mut conn.out;
    match spec.name {
        "ping" => match args.get(1) {
            Some(message) if args.len() == 2 => out.bulk(message),
            Some(_) => return Err(err("wrong number of arguments for 'ping' command")),
            None => out.simple("PONG"),
        },
        "echo" => out.bulk(&args[1]),
        "select" => match &args[1][..] {
            b"0" => out.simple("OK"),
            _ => return Err(err("DB index is out of range")),
        },
        "quit" => {
            out.simple("OK");
            conn.closing = true;
        }
        "reset" => {
            for subscription in conn.subscriptions.drain(..) {
                subscription.abort();
            }
            conn.name = None;
            conn.out.proto = 2;
            conn.principal = (!conn.app.config.resp_require_auth).then_some(Principal::Anonymous);
            conn.out.simple("RESET");
        }
        "hello" => hello(conn, args).await?,
        "auth" => {
            let (user, secret) = match args.len() {
                2 => (None, &args[1]),
                3 => (Some(&args[1]), &args[2]),
                _ => return Err(Fail("ERR syntax error".to_owned())),
            };
            conn.principal = Some(authenticate(conn, user, secret).await?);
            conn.out.simple("OK");
        }
        "client" => client(conn, args)?,
        "command" => super::streams::command_info(conn, args)?,
        "info" => info(conn, args)?,
        "dbsize" => {
            let topics = topics(conn)?;
            conn.out.int(topics.len() as i64);
        }
        "exists" => {
            let mut count = 0;
            for key in &args[1..] {
                if head(conn, key)?.is_some() {
                    count += 1;
                }
            }
            conn.out.int(count);
        }
        "type" => {
            let kind = if head(conn, &args[1])?.is_some() { "stream" } else { "none" };
            conn.out.simple(kind);
        }
        "keys" => {
            let pattern = args[1].clone();
            let names: Vec<String> = topics(conn)?.into_iter().filter(|name| glob(&pattern, name.as_bytes())).collect();
            conn.out.array(names.len());
            for name in names {
                conn.out.bulk(name.as_bytes());
            }
        }
        "scan" => scan(conn, args)?,
        "del" => del(conn, args).await?,
        _ => {
            if let Some(result) = meilies::dispatch(conn, spec.name, args).await {
                return result;
            }
            return streams::dispatch(conn, spec.name, args).await;
        }
    }
    Ok(())
}

async fn hello(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let mut at = 1;
    let mut proto = conn.out.proto;
    if let Some(version) = args.get(1) {
        proto = match &version[..] {
            b"2" => 2,
            b"3" => 3,
            _ => return Err(Fail("NOPROTO unsupported protocol version".to_owned())),
        };
        at = 2;
    }
    let mut name = None;
    while at < args.len() {
        let option = String::from_utf8_lossy(&args[at]).to_lowercase();
        match option.as_str() {
            "auth" if at + 2 < args.len() => {
                let principal = authenticate(conn, Some(&args[at + 1]), &args[at + 2]).await?;
                conn.principal = Some(principal);
                at += 3;
            }
            "setname" if at + 1 < args.len() => {
                name = Some(args[at + 1].clone());
                at += 2;
            }
            _ => return Err(err(format!("Syntax error in HELLO option '{option}'"))),
        }
    }
    if conn.principal.is_none() {
        return Err(Fail("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".to_owned()));
    }
    if let Some(name) = name {
        check_client_name(&name)?;
        conn.name = Some(name);
    }
    conn.out.proto = proto;
    let out = &mut conn.out;
    out.map(7);
    out.text("server");
    out.text("redis");
    out.text("version");
    out.text(super::streams::REDIS_VERSION);
    out.text("proto");
    out.int(i64::from(proto));
    out.text("id");
    out.int(conn.id as i64);
    out.text("mode");
    out.text("standalone");
    out.text("role");
    out.text("master");
    out.text("modules");
    out.array(0);
    Ok(())
}

/// `AUTH [user] secret`: a user's password, or a bearer token (`cairn_…`)
/// in place of the password; no user name means the user `default`.
async fn authenticate(conn: &Conn, user: Option<&Bytes>, secret: &Bytes) -> Result<Principal, Fail> {
    let wrong = || Fail("WRONGPASS invalid username-password pair or user is disabled.".to_owned());
    let secret = std::str::from_utf8(secret).map_err(|_| wrong())?.to_owned();
    let users = Arc::clone(&conn.app);
    if user.is_none() && secret.starts_with("cairn_") {
        return users.users.authenticate_token(&secret).map(Principal::User).map_err(|_| wrong());
    }
    let name = match user {
        Some(user) => std::str::from_utf8(user).map_err(|_| wrong())?.to_owned(),
        None => "default".to_owned(),
    };
    tokio::task::spawn_blocking(move || users.users.authenticate_password(&name, &secret))
        .await
        .map_err(err)?
        .map(Principal::User)
        .map_err(|_| wrong())
}

fn check_client_name(name: &[u8]) -> CmdResult {
    if name.iter().any(|&b| b <= b' ' || b > b'~') {
        return Err(err("Client names cannot contain spaces, newlines or special characters."));
    }
    Ok(())
}

fn client(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let sub = String::from_utf8_lossy(&args[1]).to_lowercase();
    match (sub.as_str(), args.len()) {
        ("setname", 3) => {
            check_client_name(&args[2])?;
            conn.name = (!args[2].is_empty()).then(|| args[2].clone());
            conn.out.simple("OK");
        }
        ("getname", 2) => match &conn.name {
            Some(name) => conn.out.bulk(name),
            None => conn.out.null(),
        },
        ("id", 2) => conn.out.int(conn.id as i64),
        ("info", 2) => {
            let line = client_line(conn);
            conn.out.bulk(line.as_bytes());
        }
        ("list", 2) => {
            let line = client_line(conn);
            conn.out.bulk(line.as_bytes());
        }
        ("setinfo", 4) => {
            let attribute = String::from_utf8_lossy(&args[2]).to_lowercase();
            check_client_name(&args[3])?;
            match attribute.as_str() {
                "lib-name" => conn.lib_name = Some(args[3].clone()),
                "lib-ver" => conn.lib_version = Some(args[3].clone()),
                _ => return Err(err(format!("Unrecognized option '{attribute}'"))),
            }
            conn.out.simple("OK");
        }
        ("setname" | "getname" | "id" | "info" | "list" | "setinfo", _) => {
            return Err(err(format!("wrong number of arguments for 'client|{sub}' command")));
        }
        _ => return Err(err(format!("unknown subcommand '{sub}'. Try CLIENT HELP."))),
    }
    Ok(())
}

fn client_line(conn: &Conn) -> String {
    let text =
        |bytes: &Option<Bytes>| bytes.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
    format!(
        "id={} addr={} name={} age={} db=0 sub={} resp={} lib-name={} lib-ver={}\n",
        conn.id,
        conn.peer,
        text(&conn.name),
        conn.created.elapsed().as_secs(),
        conn.subscriptions.len(),
        conn.out.proto,
        text(&conn.lib_name),
        text(&conn.lib_version),
    )
}

fn info(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let wanted: Vec<String> = args[1..].iter().map(|a| String::from_utf8_lossy(a).to_lowercase()).collect();
    let all = wanted.is_empty() || wanted.iter().any(|w| w == "all" || w == "everything" || w == "default");
    let show = |section: &str| all || wanted.iter().any(|w| w == section);
    let app = &conn.app;
    let stats = app.store.stats();
    let mut text = String::new();
    if show("server") {
        let _ = write!(
            text,
            "# Server\r\nredis_version:{}\r\ncairn_version:{}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
            super::streams::REDIS_VERSION,
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id(),
            app.config.resp.map_or(0, |addr| addr.port()),
            app.started.elapsed().as_secs(),
        );
    }
    if show("clients") {
        let _ = write!(text, "# Clients\r\nconnected_clients:{}\r\n\r\n", app.metrics.open_connections.load(Relaxed));
    }
    if show("persistence") {
        let _ = write!(
            text,
            "# Persistence\r\nloading:0\r\naof_enabled:1\r\ncairn_sync:{}\r\ncairn_fsyncs:{}\r\ncairn_fsync_seconds_total:{:.6}\r\ncairn_log_bytes:{}\r\ncairn_content_bytes:{}\r\n\r\n",
            app.config.sync, stats.fsyncs, stats.fsync_seconds, stats.log_bytes, stats.content_bytes,
        );
    }
    if show("stats") {
        let _ = write!(
            text,
            "# Stats\r\ntotal_connections_received:{}\r\nrejected_connections:{}\r\ncairn_events_appended:{}\r\ncairn_log_bytes_written:{}\r\n\r\n",
            app.metrics.resp_connections.load(Relaxed),
            app.metrics.refused_connections.load(Relaxed),
            stats.events_appended,
            stats.log_bytes_written,
        );
    }
    if show("keyspace") {
        let topics = topics(conn)?;
        let _ = write!(text, "# Keyspace\r\n");
        if !topics.is_empty() {
            let _ = write!(text, "db0:keys={},expires=0,avg_ttl=0\r\n", topics.len());
        }
    }
    conn.out.bulk(text.as_bytes());
    Ok(())
}

/// Every topic name, system topics included.
fn topics(conn: &Conn) -> Result<Vec<String>, Fail> {
    let store = &conn.app.store;
    let topics = tokio::task::block_in_place(|| store.topics())?;
    Ok(topics.into_iter().filter(|info| info.count > 0).map(|info| info.topic.as_str().to_owned()).collect())
}

/// The head of the topic named `key` if it has events kept; `None` also for
/// a key that is not a valid topic name.
pub(crate) fn head(conn: &Conn, key: &[u8]) -> Result<Option<cairn_store::TopicInfo>, Fail> {
    let Some(topic) = std::str::from_utf8(key).ok().and_then(|name| Topic::new(name).ok()) else {
        return Ok(None);
    };
    let store = &conn.app.store;
    Ok(tokio::task::block_in_place(|| store.head(&topic))?.filter(|info| info.count > 0))
}

fn scan(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let cursor: usize =
        std::str::from_utf8(&args[1]).ok().and_then(|c| c.parse().ok()).ok_or_else(|| err("invalid cursor"))?;
    let (mut pattern, mut count, mut kind) = (None, 10usize, None);
    let mut at = 2;
    while at < args.len() {
        let option = String::from_utf8_lossy(&args[at]).to_lowercase();
        let value = args.get(at + 1).ok_or_else(|| Fail("ERR syntax error".to_owned()))?;
        match option.as_str() {
            "match" => pattern = Some(value.clone()),
            "count" => {
                count = std::str::from_utf8(value)
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .filter(|&c| c > 0)
                    .ok_or_else(|| Fail("ERR syntax error".to_owned()))?;
            }
            "type" => kind = Some(String::from_utf8_lossy(value).to_lowercase()),
            _ => return Err(Fail("ERR syntax error".to_owned())),
        }
        at += 2;
    }
    let names = topics(conn)?;
    let end = cursor.saturating_add(count).min(names.len());
    let page: Vec<&String> = names
        .get(cursor.min(names.len())..end)
        .unwrap_or_default()
        .iter()
        .filter(|name| pattern.as_ref().is_none_or(|p| glob(p, name.as_bytes())))
        .filter(|_| kind.as_deref().is_none_or(|k| k == "stream"))
        .collect();
    let next = if end >= names.len() { 0 } else { end };
    conn.out.array(2);
    conn.out.bulk(next.to_string().as_bytes());
    conn.out.array(page.len());
    for name in page {
        conn.out.bulk(name.as_bytes());
    }
    Ok(())
}

async fn del(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    if !conn.app.config.allow_delete {
        return Err(err(
            "DEL is refused: cairn keeps events (start the server with --allow-delete to let DEL remove a topic's events; XDEL and XTRIM remove single entries)",
        ));
    }
    let mut removed = 0;
    for key in &args[1..] {
        let topic = streams::topic(key)?;
        conn.principal.as_ref().expect("authenticated").check_write(&topic)?;
        let store = conn.app.store.clone();
        let ids = tokio::task::spawn_blocking(move || -> Result<usize, StoreError> {
            let query = cairn_store::Query::new(cairn_store::Pattern::Exact(topic));
            let ids: Vec<cairn_store::EventId> =
                store.read(&query)?.map(|e| e.map(|e| e.id)).collect::<Result<_, _>>()?;
            // One removal record for the whole topic, not one per event.
            store.remove_many(&ids)
        })
        .await
        .map_err(err)??;
        if ids > 0 {
            removed += 1;
        }
    }
    conn.out.int(removed);
    Ok(())
}

/// Redis glob matching: `*`, `?`, `[abc]`, `[^a-z]`, `\x`. Failed
/// (pattern, text) positions are remembered, so no pattern takes more than
/// pattern × text steps.
pub(crate) fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let mut failed = std::collections::HashSet::new();
    glob_at(pattern, 0, text, 0, &mut failed)
}

fn glob_at(
    pattern: &[u8],
    p: usize,
    text: &[u8],
    t: usize,
    failed: &mut std::collections::HashSet<(usize, usize)>,
) -> bool {
    if failed.contains(&(p, t)) {
        return false;
    }
    let matched = match pattern.get(p) {
        None => t == text.len(),
        Some(b'*') => (t..=text.len()).any(|skip| glob_at(pattern, p + 1, text, skip, failed)),
        Some(b'?') => t < text.len() && glob_at(pattern, p + 1, text, t + 1, failed),
        Some(b'[') => match (text.get(t), pattern[p + 1..].iter().skip(1).position(|&b| b == b']')) {
            (None, _) => false,
            (Some(&first), None) => first == b'[' && glob_at(pattern, p + 1, text, t + 1, failed),
            (Some(&first), Some(close)) => {
                let class = &pattern[p + 1..p + 2 + close];
                let (negate, class) = match class.split_first() {
                    Some((b'^', class)) => (true, class),
                    _ => (false, class),
                };
                let mut in_class = false;
                let mut at = 0;
                while at < class.len() {
                    if at + 2 < class.len() && class[at + 1] == b'-' {
                        in_class |= (class[at].min(class[at + 2])..=class[at].max(class[at + 2])).contains(&first);
                        at += 3;
                    } else {
                        in_class |= class[at] == first;
                        at += 1;
                    }
                }
                in_class != negate && glob_at(pattern, p + 3 + close, text, t + 1, failed)
            }
        },
        Some(b'\\') if p + 1 < pattern.len() => {
            text.get(t) == Some(&pattern[p + 1]) && glob_at(pattern, p + 2, text, t + 1, failed)
        }
        Some(&byte) => text.get(t) == Some(&byte) && glob_at(pattern, p + 1, text, t + 1, failed),
    };
    if !matched {
        failed.insert((p, t));
    }
    matched
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::glob;

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"orders:*", b"orders:12"));
        assert!(!glob(b"orders:*", b"order"));
        assert!(glob(b"h?llo", b"hello"));
        assert!(glob(b"h[ae]llo", b"hallo"));
        assert!(!glob(b"h[^e]llo", b"hello"));
        assert!(glob(b"h[a-b]llo", b"hbllo"));
        assert!(glob(b"a\\*", b"a*"));
        assert!(!glob(b"a\\*", b"ab"));
        let mut hostile = b"*a".repeat(50);
        hostile.push(b'b');
        assert!(!glob(&hostile, &[b'a'; 255]));
    }
}
