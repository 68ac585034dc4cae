//! The command table: each command's name, arity, flags, keys, group,
//! summary (what `COMMAND` reports) and handler, in one list, the way
//! mini-redis binds `cmd/`. Dispatch looks a command up here, checks its
//! arity and whether it may run before AUTH, and calls its handler; the
//! handlers live in `cmd/`, one file per family.

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::cmd::{connection, groups, keys, meilies, pubsub, server, streams, transactions};
use super::conn::{Awaiting, Conn};
use super::error::{CmdResult, Fail, arity, err, noauth};

/// A command's handler.
pub(crate) type Handler = for<'a> fn(&'a mut Conn, &'a [Bytes]) -> BoxFuture<'a, CmdResult>;

/// Submits an append without waiting for it (for pipelining); `None` sends
/// the command to its handler instead.
pub(crate) type Submit = for<'a> fn(&'a mut Conn, &'a [Bytes]) -> Option<BoxFuture<'a, Awaiting>>;

/// One command.
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    /// Arguments including the name; negative: at least that many.
    pub(crate) arity: i64,
    pub(crate) flags: &'static [&'static str],
    /// First key, last key, key step.
    pub(crate) keys: (i64, i64, i64),
    pub(crate) group: &'static str,
    pub(crate) summary: &'static str,
    pub(crate) run: Handler,
    pub(crate) submit: Option<Submit>,
}

/// Wraps an `async fn(&mut Conn, &[Bytes]) -> CmdResult` as a [`Handler`].
macro_rules! handler {
    ($path:path) => {{
        fn run<'a>(conn: &'a mut Conn, args: &'a [Bytes]) -> BoxFuture<'a, CmdResult> {
            Box::pin($path(conn, args))
        }
        run as Handler
    }};
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    group: &'static str,
    summary: &'static str,
    run: Handler,
) -> Spec {
    Spec { name, arity, flags, keys, group, summary, run, submit: None }
}

const R: &[&str] = &["readonly", "fast"];
const W: &[&str] = &["write", "fast"];
/// Connection commands that run before AUTH.
const PRE: &[&str] = &["fast", "no-auth"];
/// Connection commands that need AUTH where it is required.
const F: &[&str] = &["fast"];
/// Pub/sub commands (allowed in subscribed mode, not in a transaction).
const PUBSUB: &[&str] = &["pubsub", "no-multi"];
/// Transaction control (never queued).
const TX: &[&str] = &["fast", "no-multi"];
const NONE: (i64, i64, i64) = (0, 0, 0);
const KEY1: (i64, i64, i64) = (1, 1, 1);

/// Every command.
pub(crate) const SPECS: &[Spec] = &[
    spec("ping", -1, F, NONE, "connection", "Returns the server's liveliness response.", handler!(connection::ping)),
    spec("echo", 2, F, NONE, "connection", "Returns the given string.", handler!(connection::echo)),
    spec(
        "hello",
        -1,
        PRE,
        NONE,
        "connection",
        "Handshakes with the server (protocol 2 or 3, AUTH, SETNAME).",
        handler!(connection::hello),
    ),
    spec(
        "auth",
        -2,
        PRE,
        NONE,
        "connection",
        "Authenticates the connection (user and password, or a token).",
        handler!(connection::auth),
    ),
    spec("select", 2, F, NONE, "connection", "Selects the database (only 0 exists).", handler!(connection::select)),
    spec("acl", -2, F, NONE, "server", "ACL WHOAMI: the authenticated user's name.", handler!(connection::acl)),
    spec("quit", -1, PRE, NONE, "connection", "Closes the connection.", handler!(connection::quit)),
    spec("reset", 1, PRE, NONE, "connection", "Resets the connection.", handler!(connection::reset)),
    spec(
        "client",
        -2,
        F,
        NONE,
        "connection",
        "CLIENT SETNAME|GETNAME|ID|INFO|LIST|SETINFO.",
        handler!(connection::client),
    ),
    spec(
        "command",
        -1,
        R,
        NONE,
        "server",
        "Returns information about commands (COUNT, DOCS, INFO, LIST).",
        handler!(server::command),
    ),
    spec("info", -1, R, NONE, "server", "Returns information and statistics about the server.", handler!(server::info)),
    spec(
        "monitor",
        1,
        &["admin", "no-multi"],
        NONE,
        "server",
        "Streams every command the server runs (administrators only).",
        handler!(server::monitor),
    ),
    spec("dbsize", 1, R, NONE, "server", "Returns the number of topics the caller may read.", handler!(keys::dbsize)),
    spec("time", 1, R, NONE, "server", "Returns the server's time (seconds, microseconds).", handler!(server::time)),
    spec(
        "config",
        -2,
        R,
        NONE,
        "server",
        "CONFIG GET: the settings clients ask about (read-only).",
        handler!(server::config),
    ),
    spec("exists", -2, R, (1, -1, 1), "generic", "Counts the given topics that exist.", handler!(keys::exists)),
    spec("type", 2, R, KEY1, "generic", "Returns 'stream' for a topic, 'none' otherwise.", handler!(keys::kind)),
    spec("keys", 2, R, NONE, "generic", "Returns the readable topics matching a glob pattern.", handler!(keys::keys)),
    spec("scan", -2, R, NONE, "generic", "Iterates over the readable topics.", handler!(keys::scan)),
    spec(
        "del",
        -2,
        W,
        (1, -1, 1),
        "generic",
        "Removes every event of topics (needs --allow-delete).",
        handler!(keys::del),
    ),
    Spec {
        submit: Some(meilies::submit_publish),
        ..spec(
            "publish",
            -3,
            W,
            KEY1,
            "pubsub",
            "PUBLISH channel message (Redis pub/sub); publish stream event-name data (MeiliES: appends).",
            handler!(meilies::publish),
        )
    },
    spec(
        "subscribe",
        -2,
        PUBSUB,
        NONE,
        "pubsub",
        "SUBSCRIBE channel… (Redis pub/sub); MeiliES: follows streams name[:from[:to]] or $all[:from[:to]].",
        handler!(pubsub::subscribe),
    ),
    spec(
        "psubscribe",
        -2,
        PUBSUB,
        NONE,
        "pubsub",
        "Receives the messages of channels matching glob patterns.",
        handler!(pubsub::psubscribe),
    ),
    spec(
        "unsubscribe",
        -1,
        PUBSUB,
        NONE,
        "pubsub",
        "Stops receiving channels (all without arguments).",
        handler!(pubsub::unsubscribe),
    ),
    spec(
        "punsubscribe",
        -1,
        PUBSUB,
        NONE,
        "pubsub",
        "Stops receiving patterns (all without arguments).",
        handler!(pubsub::punsubscribe),
    ),
    spec(
        "pubsub",
        -2,
        R,
        NONE,
        "pubsub",
        "PUBSUB CHANNELS [pattern] | NUMSUB [channel…] | NUMPAT.",
        handler!(pubsub::pubsub),
    ),
    spec(
        "last-event-number",
        2,
        R,
        KEY1,
        "meilies",
        "MeiliES: the newest event number of a stream.",
        handler!(meilies::last_event_number),
    ),
    spec("stream-names", 1, R, NONE, "meilies", "MeiliES: the names of every stream.", handler!(meilies::stream_names)),
    Spec {
        submit: Some(streams::submit_xadd),
        ..spec(
            "xadd",
            -5,
            W,
            KEY1,
            "stream",
            "Appends an event to a topic; its id is <ms>-<seq>.",
            handler!(streams::xadd),
        )
    },
    spec("xrange", -4, R, KEY1, "stream", "Returns entries in an id range.", handler!(streams::xrange)),
    spec(
        "xrevrange",
        -4,
        R,
        KEY1,
        "stream",
        "Returns entries in an id range, newest first.",
        handler!(streams::xrevrange),
    ),
    spec("xlen", 2, R, KEY1, "stream", "Returns the number of entries kept.", handler!(streams::xlen)),
    spec("xdel", -3, W, KEY1, "stream", "Removes entries (their seqs are never reused).", handler!(streams::xdel)),
    spec("xtrim", -4, W, KEY1, "stream", "Removes the oldest entries (MAXLEN or MINID).", handler!(streams::xtrim)),
    spec(
        "xread",
        -4,
        R,
        NONE,
        "stream",
        "Reads entries after ids from topics, optionally blocking.",
        handler!(streams::xread),
    ),
    spec(
        "xgroup",
        -2,
        W,
        NONE,
        "stream",
        "XGROUP CREATE|SETID|DESTROY|CREATECONSUMER|DELCONSUMER.",
        handler!(groups::xgroup),
    ),
    spec("xreadgroup", -7, W, NONE, "stream", "Reads entries as a consumer of a group.", handler!(groups::xreadgroup)),
    spec("xack", -4, W, KEY1, "stream", "Acknowledges pending entries of a group.", handler!(groups::xack)),
    spec("xpending", -3, R, KEY1, "stream", "Returns a group's pending entries.", handler!(groups::xpending)),
    spec(
        "xclaim",
        -6,
        W,
        KEY1,
        "stream",
        "Takes pending entries over from another consumer.",
        handler!(groups::xclaim),
    ),
    spec(
        "xautoclaim",
        -6,
        W,
        KEY1,
        "stream",
        "Takes over pending entries idle for long enough.",
        handler!(groups::xautoclaim),
    ),
    spec("multi", 1, TX, NONE, "transactions", "Starts a transaction.", handler!(transactions::multi)),
    spec(
        "exec",
        1,
        TX,
        NONE,
        "transactions",
        "Runs the queued commands; their appends commit as one atomic batch.",
        handler!(transactions::exec),
    ),
    spec("discard", 1, TX, NONE, "transactions", "Drops the queued commands.", handler!(transactions::discard)),
    spec(
        "watch",
        -2,
        TX,
        (1, -1, 1),
        "transactions",
        "Aborts the next EXEC if a topic gains or loses entries before it.",
        handler!(transactions::watch),
    ),
    spec("unwatch", 1, F, NONE, "transactions", "Forgets the watched topics.", handler!(transactions::unwatch)),
    spec("xinfo", -2, R, NONE, "stream", "XINFO STREAM|GROUPS|CONSUMERS.", handler!(groups::xinfo)),
];

/// The command named `name` (any case).
pub(crate) fn find(name: &[u8]) -> Option<&'static Spec> {
    // Lengths first: most names differ in length, and it is the cheap test.
    SPECS.iter().find(|spec| spec.name.len() == name.len() && spec.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Why `args` cannot run: unknown, wrong arity, or not before AUTH.
pub(crate) fn check(conn: &Conn, args: &[Bytes]) -> Result<&'static Spec, Fail> {
    let Some(spec) = find(&args[0]) else {
        return Err(unknown(args));
    };
    check_spec(conn, args, spec)
}

/// Redis's words for an unknown command (bounded: 128 characters of the
/// name, 8 arguments of 64).
fn unknown(args: &[Bytes]) -> Fail {
    let name = String::from_utf8_lossy(&args[0]).to_lowercase();
    let shown: String = name.chars().take(128).collect();
    let rest: String = args[1..]
        .iter()
        .take(8)
        .map(|a| format!("'{}' ", String::from_utf8_lossy(a).chars().take(64).collect::<String>()))
        .collect();
    err(format!("unknown command '{shown}', with args beginning with: {rest}"))
}

/// Whether `spec`'s command may run with `args` now.
fn check_spec(conn: &Conn, args: &[Bytes], spec: &'static Spec) -> Result<&'static Spec, Fail> {
    let n = args.len() as i64;
    if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
        return Err(arity(spec.name));
    }
    if conn.principal.is_none() && !spec.flags.contains(&"no-auth") {
        return Err(noauth());
    }
    if conn.out.proto == 2
        && conn.subscribed()
        && !matches!(spec.name, "subscribe" | "psubscribe" | "unsubscribe" | "punsubscribe" | "ping" | "quit" | "reset")
    {
        return Err(err(format!(
            "Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            spec.name
        )));
    }
    Ok(spec)
}

/// Submits an append without waiting when the command is one that can be
/// (a plain `XADD`, a MeiliES `publish`); `None` for every other.
pub(crate) fn submit<'a>(conn: &'a mut Conn, args: &'a [Bytes]) -> Option<BoxFuture<'a, Awaiting>> {
    let spec = find(args.first()?)?;
    let submit = spec.submit?;
    if check_spec(conn, args, spec).is_err() {
        return None;
    }
    submit(conn, args)
}

/// Runs one command, writing its reply (or error) to `conn.out`.
pub(crate) async fn execute(conn: &mut Conn, args: &[Bytes]) {
    let result = match check(conn, args) {
        Ok(spec) => (spec.run)(conn, args).await,
        Err(fail) => Err(fail),
    };
    if let Err(fail) = result {
        conn.out.error(&fail.0);
    }
}
