//! Redis pub/sub: SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE,
//! PUBLISH (two arguments), PUBSUB CHANNELS|NUMSUB|NUMPAT; the broker and
//! its semantics are in `resp/pubsub.rs`.
//!
//! MeiliES's `subscribe` and `publish` share the names. The rule that
//! tells them apart: `publish` with three arguments is MeiliES's, with two
//! Redis's. `subscribe` is MeiliES's while every command the connection
//! has sent is one of MeiliES's four, written as MeiliES writes them (in
//! lowercase), AUTH aside; once a connection sends anything else (a Redis
//! client's handshake: HELLO, CLIENT, INFO, COMMAND, or any name in capitals)
//! its `subscribe` is Redis's. MeiliES clients send nothing else; redis-py
//! and node-redis write command names in capitals and ioredis starts with
//! INFO.

use bytes::Bytes;
use cairn_service::{Pattern, Topic};

use super::{meilies, word};
use crate::resp::conn::Conn;
use crate::resp::error::{CmdResult, Fail, arity, err};
use crate::resp::pubsub::Subscriber;

/// Channels and patterns one connection may subscribe to at once.
const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 10_000;
/// Patterns one connection may subscribe to at once (each is matched
/// against every published channel).
const PATTERNS_PER_CONNECTION_MAX: usize = 256;
/// Bytes of one pattern (a topic is at most 255 bytes).
const PATTERN_BYTES_MAX: usize = 256;

/// Whether `args` is a command as MeiliES's clients send it.
/// (AUTH says nothing either way: `redis-cli -a` sends it before a
/// MeiliES command typed on its command line.)
pub(crate) fn is_meilies_form(args: &[Bytes]) -> bool {
    let name = &args[0][..];
    name.eq_ignore_ascii_case(b"auth")
        || (name == b"publish" && args.len() == 4)
        || name == b"subscribe"
        || name == b"last-event-number"
        || name == b"stream-names"
}

/// The topic a channel is named like (channels follow the topic rules).
fn channel(name: &[u8]) -> Result<Topic, Fail> {
    let text = std::str::from_utf8(name).map_err(|_| err("invalid channel: channel names are UTF-8"))?;
    Topic::new(text).map_err(|error| err(format!("invalid channel: {error}")))
}

fn subscriber(conn: &Conn) -> Result<Subscriber, Fail> {
    Ok(Subscriber { pushes: conn.pushes.clone(), proto: conn.out.proto, principal: conn.who()?.clone() })
}

/// Writes `[kind, name, count]` as a push (`nil` for no name).
fn confirm(conn: &mut Conn, kind: &str, name: Option<&[u8]>) {
    let count = conn.channels.len() + conn.patterns.len();
    conn.out.push(3);
    conn.out.bulk(kind.as_bytes());
    match name {
        Some(name) => conn.out.bulk(name),
        None => conn.out.null(),
    }
    conn.out.int(count as i64);
}

fn room(conn: &Conn, adding: usize) -> Result<(), Fail> {
    if conn.channels.len() + conn.patterns.len() + adding > SUBSCRIPTIONS_PER_CONNECTION_MAX {
        return Err(err(format!(
            "a connection holds at most {SUBSCRIPTIONS_PER_CONNECTION_MAX} channel and pattern subscriptions"
        )));
    }
    Ok(())
}

/// `subscribe`: MeiliES's or Redis's (the rule is at the top).
pub(crate) async fn subscribe(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    if !conn.redis_client {
        return meilies::subscribe(conn, args).await;
    }
    room(conn, args.len() - 1)?;
    // All or none: every channel is checked before any is subscribed.
    for name in &args[1..] {
        conn.who()?.check_read(&Pattern::Exact(channel(name)?))?;
    }
    let subscriber = subscriber(conn)?;
    for name in &args[1..] {
        // A copy: a slice would keep the whole read buffer it came in alive.
        let name = Bytes::copy_from_slice(name);
        if conn.channels.insert(name.clone()) {
            conn.app.pubsub.subscribe(conn.id, name.clone(), subscriber.clone());
        }
        confirm(conn, "subscribe", Some(&name));
    }
    Ok(())
}

pub(crate) async fn psubscribe(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    room(conn, args.len() - 1)?;
    if conn.patterns.len() + args.len() - 1 > PATTERNS_PER_CONNECTION_MAX {
        return Err(err(format!("a connection holds at most {PATTERNS_PER_CONNECTION_MAX} pattern subscriptions")));
    }
    if args[1..].iter().any(|pattern| pattern.len() > PATTERN_BYTES_MAX) {
        return Err(err(format!("a pattern is at most {PATTERN_BYTES_MAX} bytes")));
    }
    let subscriber = subscriber(conn)?;
    // Copies: slices would keep the whole read buffer they came in alive.
    let patterns: Vec<Bytes> = args[1..].iter().map(|pattern| Bytes::copy_from_slice(pattern)).collect();
    let new: Vec<Bytes> = patterns.iter().filter(|pattern| !conn.patterns.contains(*pattern)).cloned().collect();
    if !conn.app.pubsub.psubscribe(conn.id, &new, &subscriber) {
        return Err(err("the server holds as many pattern subscriptions as it takes; try again later"));
    }
    for pattern in patterns {
        conn.patterns.insert(pattern.clone());
        confirm(conn, "psubscribe", Some(&pattern));
    }
    Ok(())
}

pub(crate) async fn unsubscribe(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    leave(conn, args, false);
    Ok(())
}

pub(crate) async fn punsubscribe(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    leave(conn, args, true);
    Ok(())
}

/// UNSUBSCRIBE (channels) or PUNSUBSCRIBE (`patterns`): the names given,
/// or every one held; each confirmed, after the frames queued for it.
fn leave(conn: &mut Conn, args: &[Bytes], patterns: bool) {
    let kind = if patterns { "punsubscribe" } else { "unsubscribe" };
    let held = if patterns { &conn.patterns } else { &conn.channels };
    let names: Vec<Bytes> = if args.len() > 1 { args[1..].to_vec() } else { held.iter().cloned().collect() };
    if names.is_empty() {
        confirm(conn, kind, None);
    }
    for name in names {
        let held = if patterns { &mut conn.patterns } else { &mut conn.channels };
        if held.remove(&name) {
            if patterns {
                conn.app.pubsub.punsubscribe(conn.id, &name);
            } else {
                conn.app.pubsub.unsubscribe(conn.id, &name);
            }
            conn.drain_pushes();
        }
        confirm(conn, kind, Some(&name));
    }
}

/// Redis's `PUBLISH channel message`: the number of connections it reached.
pub(crate) async fn publish(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let topic = channel(&args[1])?;
    conn.who()?.check_write(&topic)?;
    let reached = conn.app.pubsub.publish(&topic, &args[2]);
    conn.out.int(reached as i64);
    Ok(())
}

/// `PUBSUB CHANNELS [pattern] | NUMSUB [channel…] | NUMPAT`: only channels
/// the caller may read are listed or counted; NUMPAT counts the patterns of
/// the caller's own user (every pattern for an administrator).
pub(crate) async fn pubsub(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let who = conn.who()?.clone();
    let readable = |name: &[u8]| {
        std::str::from_utf8(name).ok().and_then(|name| Topic::new(name).ok()).is_some_and(|t| who.can_read_topic(&t))
    };
    match word(&args[1]).as_str() {
        "channels" if args.len() <= 3 => {
            let glob = args.get(2).map(|pattern| cairn_service::Glob::new(pattern));
            let mut names =
                conn.app.pubsub.channels(|name| readable(name) && glob.as_ref().is_none_or(|glob| glob.matches(name)));
            names.sort();
            conn.out.array(names.len());
            for name in &names {
                conn.out.bulk(name);
            }
        }
        "numsub" => {
            conn.out.array((args.len() - 2) * 2);
            for name in &args[2..] {
                conn.out.bulk(name);
                let count = if readable(name) { conn.app.pubsub.numsub(name) } else { 0 };
                conn.out.int(count as i64);
            }
        }
        "numpat" if args.len() == 2 => {
            let scope = who.scope();
            let count = conn.app.pubsub.numpat(|principal| who.sees_all() || principal.scope() == scope);
            conn.out.int(count as i64);
        }
        "channels" | "numpat" => return Err(arity("pubsub")),
        other => {
            return Err(err(format!(
                "unknown subcommand '{}'. Try PUBSUB CHANNELS, NUMSUB or NUMPAT.",
                other.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(())
}
