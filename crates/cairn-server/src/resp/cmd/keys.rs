//! Topics as keys: DBSIZE, EXISTS, TYPE, KEYS, SCAN, DEL. Every answer is
//! about the topics the caller may read (through the service), so no key
//! command reveals a topic beyond the caller's read patterns; glob
//! patterns are matched by the service's bounded, iterative matcher.

use bytes::Bytes;
use cairn_service::{Glob, Pattern, SYSTEM_PREFIX, Topic};

use super::{topic, word};
use crate::resp::conn::Conn;
use crate::resp::error::{CmdResult, Fail, err, syntax};

/// The readable streams, by name: topics that have events kept or a
/// consumer group (`XGROUP CREATE … MKSTREAM` makes a stream with a group
/// and no entry), without the store's own (`cairn.start`, …): a Redis
/// client listing its keys expects its own (they are still there by name:
/// `EXISTS`, `XRANGE`).
pub(crate) async fn names(conn: &Conn) -> Result<Vec<String>, Fail> {
    let who = conn.who()?;
    let topics = conn.app.service.topics(who).await?;
    let mut names: Vec<String> = topics
        .into_iter()
        .filter(|info| info.count > 0 && !info.topic.as_str().starts_with(SYSTEM_PREFIX))
        .map(|info| info.topic.as_str().to_owned())
        .collect();
    names.extend(conn.app.service.group_topics(who).await?.into_iter().map(|topic| topic.as_str().to_owned()));
    names.sort_unstable();
    names.dedup();
    Ok(names)
}

/// Whether the stream `key` exists for the caller: it has events kept or a
/// consumer group.
pub(crate) async fn exists_key(conn: &Conn, key: &[u8]) -> Result<bool, Fail> {
    if head(conn, key).await?.is_some() {
        return Ok(true);
    }
    let Some(topic) = std::str::from_utf8(key).ok().and_then(|name| Topic::new(name).ok()) else {
        return Ok(false);
    };
    let who = conn.who()?;
    Ok(who.can_read(&Pattern::Exact(topic.clone())) && conn.app.service.group_count(who, &topic).await? > 0)
}

/// The head of the topic named `key` if it has events kept and the caller
/// may read it; `None` also for a key that is not a valid topic name.
pub(crate) async fn head(conn: &Conn, key: &[u8]) -> Result<Option<cairn_service::TopicInfo>, Fail> {
    let Some(topic) = std::str::from_utf8(key).ok().and_then(|name| Topic::new(name).ok()) else {
        return Ok(None);
    };
    let who = conn.who()?;
    if !who.can_read(&Pattern::Exact(topic.clone())) {
        return Ok(None);
    }
    Ok(conn.app.service.head(who, &topic).await?.filter(|info| info.count > 0))
}

pub(crate) async fn dbsize(conn: &mut Conn, _args: &[Bytes]) -> CmdResult {
    let n = names(conn).await?.len();
    conn.out.int(n as i64);
    Ok(())
}

pub(crate) async fn exists(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let mut count = 0;
    for key in &args[1..] {
        if exists_key(conn, key).await? {
            count += 1;
        }
    }
    conn.out.int(count);
    Ok(())
}

pub(crate) async fn kind(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let kind = if exists_key(conn, &args[1]).await? { "stream" } else { "none" };
    conn.out.simple(kind);
    Ok(())
}

pub(crate) async fn keys(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let glob = Glob::new(&args[1]);
    let names: Vec<String> = names(conn).await?.into_iter().filter(|name| glob.matches(name.as_bytes())).collect();
    conn.out.array(names.len());
    for name in names {
        conn.out.bulk(name.as_bytes());
    }
    Ok(())
}

pub(crate) async fn scan(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let cursor: usize =
        std::str::from_utf8(&args[1]).ok().and_then(|c| c.parse().ok()).ok_or_else(|| err("invalid cursor"))?;
    let (mut glob, mut count, mut kind) = (None, 10usize, None);
    let mut at = 2;
    while at < args.len() {
        let option = word(&args[at]);
        let value = args.get(at + 1).ok_or_else(syntax)?;
        match option.as_str() {
            "match" => glob = Some(Glob::new(value)),
            "count" => {
                count = std::str::from_utf8(value)
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .filter(|&c| c > 0)
                    .ok_or_else(syntax)?;
            }
            "type" => kind = Some(word(value)),
            _ => return Err(syntax()),
        }
        at += 2;
    }
    let names = names(conn).await?;
    let end = cursor.saturating_add(count).min(names.len());
    let page: Vec<&String> = names
        .get(cursor.min(names.len())..end)
        .unwrap_or_default()
        .iter()
        .filter(|name| glob.as_ref().is_none_or(|glob| glob.matches(name.as_bytes())))
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

/// `DEL key…`: removes every event of each topic (only with
/// `--allow-delete`); counts the topics that had events.
pub(crate) async fn del(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    if !conn.app.config.allow_delete {
        return Err(err(
            "DEL is refused: cairn keeps events (start the server with --allow-delete to let DEL remove a topic's events; XDEL and XTRIM remove single entries)",
        ));
    }
    let mut removed = 0;
    for key in &args[1..] {
        let topic = topic(key)?;
        let who = conn.who()?.clone();
        if conn.app.service.delete_topic(&who, &topic).await? > 0 {
            removed += 1;
        }
    }
    conn.out.int(removed);
    Ok(())
}
