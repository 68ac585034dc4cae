//! The Redis Streams commands over topics: XADD, XRANGE, XREVRANGE, XLEN,
//! XDEL, XTRIM, XREAD (blocking reads wake on the commit of a new event).
//! Consumer groups are in `groups.rs`. Entries are events (`entry.rs`).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_service::{
    Batch, Budget, Delivered, Expect, Follow, FollowOptions, Item, NewEvent, Pattern, StreamId, Topic, Trim,
};
use futures_util::future::BoxFuture;

use super::{parse_count, topic, word};
use crate::resp::conn::{Awaiting, Conn, REPLY_PART_BYTES};
use crate::resp::entry;
use crate::resp::error::{CmdResult, Fail, arity, err, invalid_id, syntax};

/// Most entries one XRANGE/XREAD without COUNT returns (a guard against
/// building a reply of a whole huge topic by accident; COUNT lifts it).
const RANGE_ENTRIES_DEFAULT_MAX: usize = 10_000_000;
/// Events a woken blocking read takes from its follow at once.
const WOKEN_EVENTS_MAX: usize = 1024;

/// Writes `[id, [field, value, ...]]` (`[id, nil]` for an entry no longer kept).
pub(crate) fn write_entry(conn: &mut Conn, id: StreamId, item: Option<&Item>) {
    write_entry_with(conn, id, item, &mut Vec::new());
}

/// [`write_entry`] with a vector for the entry's pairs, kept by a caller
/// that writes many.
pub(crate) fn write_entry_with<'a>(
    conn: &mut Conn,
    id: StreamId,
    item: Option<&'a Item>,
    pairs: &mut Vec<Cow<'a, [u8]>>,
) {
    conn.out.array(2);
    conn.out.bulk(id.text(&mut [0; StreamId::TEXT_MAX]));
    let Some(item) = item else {
        conn.out.null_array();
        return;
    };
    entry::pairs_of(&item.event, item.content.as_deref(), pairs);
    conn.out.array(pairs.len());
    for value in pairs.iter() {
        conn.out.bulk(value);
    }
}

/// Writes entries that are all stored.
pub(crate) fn write_items(conn: &mut Conn, items: &[Item]) {
    conn.out.array(items.len());
    let mut pairs = Vec::new();
    for item in items {
        write_entry_with(conn, StreamId::of(&item.event), Some(item), &mut pairs);
    }
}

/// [`write_items`] for a reply that may be long (XRANGE's): what is
/// written so far goes out every [`REPLY_PART_BYTES`], so the client
/// reads the first entries while the rest are written (outside EXEC, whose
/// reply is one). The events written are dropped before each write, and a
/// client that does not take 64 KiB within 10 s is closed
/// (`Conn::write_reply_part`): a client that stops reading holds no more
/// than the events not yet written, and not for long.
async fn stream_items(conn: &mut Conn, items: Vec<Item>) {
    conn.out.array(items.len());
    let mut items = VecDeque::from(items);
    loop {
        let mut written = 0;
        let mut pairs = Vec::new();
        for item in &items {
            write_entry_with(conn, StreamId::of(&item.event), Some(item), &mut pairs);
            written += 1;
            if conn.out.buf.len() >= REPLY_PART_BYTES && !conn.in_exec {
                break;
            }
        }
        drop(pairs);
        items.drain(..written);
        // The last part goes out with the connection's next write.
        if items.is_empty() {
            return;
        }
        if !conn.write_reply_part().await {
            conn.closing = true;
            return;
        }
    }
}

/// `XADD key * field value…` (no options): submitted without waiting;
/// `None` sends the other forms to [`xadd`].
pub(crate) fn submit_xadd<'a>(conn: &'a mut Conn, args: &'a [Bytes]) -> Option<BoxFuture<'a, Awaiting>> {
    if args.len() < 5 || args[2][..] != *b"*" {
        return None;
    }
    Some(Box::pin(async move {
        let submitted = async {
            let pairs = &args[3..];
            if !pairs.len().is_multiple_of(2) {
                return Err(arity("xadd"));
            }
            let event = entry::event_from_pairs(topic(&args[1])?, pairs);
            let who = conn.who()?;
            Ok::<_, Fail>(Awaiting::Entry(conn.app.service.submit(who, Batch::single(event, Expect::Any)).await?))
        };
        submitted.await.unwrap_or_else(Awaiting::Failed)
    }))
}

/// A parsed `XADD`: its event and options.
pub(crate) struct XAdd {
    pub(crate) event: NewEvent,
    /// NOMKSTREAM: only onto a stream that exists.
    pub(crate) nomkstream: bool,
    /// MAXLEN or MINID: trimmed after the append.
    pub(crate) trim: Option<Trim>,
}

impl XAdd {
    /// Parses `XADD key [NOMKSTREAM] [MAXLEN|MINID …] *|id field value…`.
    pub(crate) fn parse(args: &[Bytes]) -> Result<XAdd, Fail> {
        let topic = topic(args.get(1).ok_or_else(|| arity("xadd"))?)?;
        let mut at = 2;
        let (mut nomkstream, mut trim) = (false, None);
        loop {
            let option = args.get(at).ok_or_else(|| arity("xadd"))?;
            if option.eq_ignore_ascii_case(b"nomkstream") {
                nomkstream = true;
                at += 1;
            } else if option.eq_ignore_ascii_case(b"maxlen") || option.eq_ignore_ascii_case(b"minid") {
                let (parsed, next) = parse_trim(args, at)?;
                trim = Some(parsed);
                at = next;
            } else {
                break;
            }
        }
        if args[at][..] != *b"*" {
            return Err(err(
                "cairn assigns entry ids: give * (an id is <ms>-<seq>: the event's time and its topic seq)",
            ));
        }
        let pairs = &args[at + 1..];
        if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
            return Err(arity("xadd"));
        }
        Ok(XAdd { event: entry::event_from_pairs(topic, pairs), nomkstream, trim })
    }
}

/// `XADD key [NOMKSTREAM] [MAXLEN|MINID …] *|id field value…`.
pub(crate) async fn xadd(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let XAdd { event, nomkstream, trim } = XAdd::parse(args)?;
    let topic = event.topic.clone().expect("parsed with a topic");
    let (service, who) = (conn.app.service.clone(), conn.who()?.clone());
    // NOMKSTREAM: only onto a stream that exists, decided with the write.
    let expect = if nomkstream { Expect::Exists } else { Expect::Any };
    let events = match service.append(&who, Batch::single(event, expect)).await {
        Err(cairn_service::ServiceError::ExpectationFailed { .. }) if nomkstream => {
            conn.out.null();
            return Ok(());
        }
        appended => appended?,
    };
    let id = StreamId::of(&events[0]);
    if let Some(trim) = trim {
        service.trim(&who, &topic, trim).await?;
    }
    conn.out.bulk(id.text(&mut [0; StreamId::TEXT_MAX]));
    Ok(())
}

/// Parses `MAXLEN|MINID [=|~] threshold [LIMIT count]` at `args[at..]`;
/// returns the trim and the index after it.
fn parse_trim(args: &[Bytes], at: usize) -> Result<(Trim, usize), Fail> {
    let kind = word(&args[at]);
    let mut at = at + 1;
    if matches!(args.get(at).map(|a| &a[..]), Some(b"=" | b"~")) {
        at += 1;
    }
    let threshold = args.get(at).ok_or_else(syntax)?;
    let trim = match kind.as_str() {
        "maxlen" => Trim::MaxLen(parse_count(threshold).map_err(|_| err("The MAXLEN argument must be >= 0."))?),
        "minid" => Trim::MinId(StreamId::parse(threshold, 0).map_err(|_| invalid_id())?),
        _ => return Err(syntax()),
    };
    at += 1;
    if args.get(at).is_some_and(|a| a.eq_ignore_ascii_case(b"limit")) {
        parse_count(args.get(at + 1).ok_or_else(syntax)?)?;
        at += 2;
    }
    Ok((trim, at))
}

pub(crate) async fn xtrim(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let topic = topic(&args[1])?;
    let (trim, next) = parse_trim(args, 2)?;
    if next != args.len() {
        return Err(syntax());
    }
    let removed = conn.app.service.trim(conn.who()?, &topic, trim).await?;
    conn.out.int(removed as i64);
    Ok(())
}

pub(crate) async fn xdel(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let topic = topic(&args[1])?;
    let ids =
        args[2..].iter().map(|id| StreamId::parse(id, 0).map_err(|_| invalid_id())).collect::<Result<Vec<_>, _>>()?;
    let removed = conn.app.service.remove_entries(conn.who()?, &topic, &ids).await?;
    conn.out.int(removed as i64);
    Ok(())
}

pub(crate) async fn xlen(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let topic = topic(&args[1])?;
    let head = conn.app.service.head(conn.who()?, &topic).await?;
    conn.out.int(head.map_or(0, |head| head.count) as i64);
    Ok(())
}

/// Parses a range bound: `-`, `+`, `id`, `(id` (`None`: nothing fits).
pub(crate) fn parse_bound(arg: &[u8], is_start: bool) -> Result<Option<StreamId>, Fail> {
    match arg {
        b"-" => Ok(Some(StreamId::MIN)),
        b"+" => Ok(Some(StreamId::MAX)),
        _ => {
            let (exclusive, text) = match arg.strip_prefix(b"(") {
                Some(rest) => (true, rest),
                None => (false, arg),
            };
            let id = StreamId::parse(text, if is_start { 0 } else { u64::MAX }).map_err(|_| invalid_id())?;
            Ok(match (exclusive, is_start) {
                (false, _) => Some(id),
                (true, true) => id.next(),
                (true, false) => id.prev(),
            })
        }
    }
}

pub(crate) async fn xrange(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    range(conn, args, false).await
}

pub(crate) async fn xrevrange(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    range(conn, args, true).await
}

async fn range(conn: &mut Conn, args: &[Bytes], reverse: bool) -> CmdResult {
    let topic = topic(&args[1])?;
    let (first, second) = if reverse { (&args[3], &args[2]) } else { (&args[2], &args[3]) };
    let start = parse_bound(first, true)?;
    let end = parse_bound(second, false)?;
    let count = match args.len() {
        4 => RANGE_ENTRIES_DEFAULT_MAX,
        6 if args[4].eq_ignore_ascii_case(b"count") => {
            let text = std::str::from_utf8(&args[5]).ok().and_then(|t| t.parse::<i64>().ok());
            usize::try_from(text.ok_or_else(|| err("value is not an integer or out of range"))?.max(0))
                .unwrap_or(usize::MAX)
        }
        _ => return Err(syntax()),
    };
    let who = conn.who()?.clone();
    who.check_read(&Pattern::Exact(topic.clone()))?;
    let items = match (start, end) {
        (Some(start), Some(end)) => {
            conn.app.service.range(&who, &topic, start, end, count, reverse, &mut Budget::whole()).await?
        }
        _ => Vec::new(),
    };
    stream_items(conn, items).await;
    Ok(())
}

/// `COUNT`, `BLOCK` and the `STREAMS key… id…` of XREAD and XREADGROUP,
/// from `args[at..]`.
pub(crate) struct ReadArgs {
    pub(crate) count: usize,
    pub(crate) block: Option<Duration>,
    pub(crate) noack: bool,
    pub(crate) keys: Vec<Topic>,
    pub(crate) ids: Vec<Bytes>,
}

pub(crate) fn parse_read(args: &[Bytes], mut at: usize, group: bool) -> Result<ReadArgs, Fail> {
    let mut read = ReadArgs { count: usize::MAX, block: None, noack: false, keys: Vec::new(), ids: Vec::new() };
    loop {
        let option = word(args.get(at).ok_or_else(syntax)?);
        match option.as_str() {
            "count" => {
                let count = parse_count(args.get(at + 1).ok_or_else(syntax)?)?;
                read.count = if count == 0 { usize::MAX } else { usize::try_from(count).unwrap_or(usize::MAX) };
                at += 2;
            }
            "block" => {
                let text = std::str::from_utf8(args.get(at + 1).ok_or_else(syntax)?).ok();
                let ms = text
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or_else(|| err("timeout is not an integer or out of range"))?;
                if ms < 0 {
                    return Err(err("timeout is negative"));
                }
                read.block = Some(Duration::from_millis(ms as u64));
                at += 2;
            }
            "noack" if group => {
                read.noack = true;
                at += 1;
            }
            "streams" => {
                let rest = &args[at + 1..];
                if rest.is_empty() || !rest.len().is_multiple_of(2) {
                    return Err(err(
                        "Unbalanced 'xread' list of streams: for each stream key an ID or '$' must be specified.",
                    ));
                }
                let (keys, ids) = rest.split_at(rest.len() / 2);
                read.keys = keys.iter().map(|key| topic(key)).collect::<Result<_, _>>()?;
                read.ids = ids.to_vec();
                return Ok(read);
            }
            _ => return Err(syntax()),
        }
    }
}

/// Live events of `keys` from now on: taken before a blocking read's first
/// look, so an event committed in between still wakes it, and a wake-up
/// hands the event over with no index lookup.
pub(crate) fn wait_on(conn: &Conn, keys: &[Topic]) -> Result<Follow, Fail> {
    let options = FollowOptions { content: true, ..FollowOptions::default() };
    Ok(conn.app.service.follow_topics(conn.who()?, keys, options)?)
}

/// Waits until events of `keys` commit (and returns them, up to
/// [`WOKEN_EVENTS_MAX`]), the deadline passes or the server stops (empty).
/// No deadline waits for ever.
pub(crate) async fn wait_for_events(
    conn: &Conn,
    follow: &mut Follow,
    keys: &[Topic],
    deadline: Option<Instant>,
) -> Result<Vec<Item>, Fail> {
    let mut stop = conn.stop.clone();
    loop {
        let next = async {
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline.into(), follow.next(WOKEN_EVENTS_MAX)).await.ok(),
                None => Some(follow.next(WOKEN_EVENTS_MAX).await),
            }
        };
        let deliveries = tokio::select! {
            deliveries = next => deliveries,
            () = crate::server::stopped(&mut stop) => return Ok(Vec::new()),
        };
        let deliveries = match deliveries {
            None | Some(Err(cairn_service::ServiceError::ShuttingDown)) => return Ok(Vec::new()),
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(deliveries)) => deliveries,
        };
        let items: Vec<Item> = deliveries
            .into_iter()
            .filter_map(|delivery| match delivery {
                Delivered::Event(event, content) if keys.contains(&event.topic) => Some(Item {
                    event: std::sync::Arc::unwrap_or_clone(event),
                    content: content.map(cairn_service::InlineBytes::from),
                }),
                _ => None,
            })
            .collect();
        if !items.is_empty() {
            return Ok(items);
        }
    }
}

pub(crate) async fn xread(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let mut read = parse_read(args, 1, false)?;
    if conn.in_exec {
        // Inside EXEC a blocking read answers at once, as in Redis.
        read.block = None;
    }
    let who = conn.who()?.clone();
    for key in &read.keys {
        who.check_read(&Pattern::Exact(key.clone()))?;
    }
    let service = conn.app.service.clone();
    // Taken before the first look, so a wait misses nothing committed after it.
    let app = conn.app.clone();
    let _blocked = read.block.map(|_| crate::metrics::Blocked::new(&app.metrics));
    let mut follow = match read.block {
        Some(_) => Some(wait_on(conn, &read.keys)?),
        None => None,
    };
    let mut after = Vec::with_capacity(read.keys.len());
    let mut last_of = Vec::new();
    for (key, id) in read.keys.iter().zip(&read.ids) {
        match &id[..] {
            b"$" => {
                let last = service.last_entry(&who, key).await?;
                after.push(last.map_or(StreamId::MIN, |item| StreamId::of(&item.event)));
            }
            b"+" => {
                last_of.push(key.clone());
                after.push(StreamId::MIN);
            }
            _ => after.push(StreamId::parse(id, 0).map_err(|_| invalid_id())?),
        }
    }
    let deadline = read.block.map(|block| (block > Duration::ZERO).then(|| Instant::now() + block));
    let mut found: Vec<(Topic, Vec<Item>)> = Vec::new();
    let mut budget = Budget::partial();
    for (key, after) in read.keys.iter().zip(&after) {
        let items = if last_of.contains(key) {
            service.last_entry(&who, key).await?.into_iter().collect()
        } else {
            match after.next() {
                Some(start) => service.range(&who, key, start, StreamId::MAX, read.count, false, &mut budget).await?,
                None => Vec::new(),
            }
        };
        if !items.is_empty() {
            found.push((key.clone(), items));
        }
    }
    if !found.is_empty() {
        write_keyed(conn, &found);
        return Ok(());
    }
    let (Some(deadline), Some(follow)) = (deadline, follow.as_mut()) else {
        conn.out.null_array();
        return Ok(());
    };
    loop {
        // The follow hands over the new events themselves: reply with them
        // (and any already committed behind them) without a read.
        let items = wait_for_events(conn, follow, &read.keys, deadline).await?;
        if items.is_empty() {
            conn.out.null_array();
            return Ok(());
        }
        let mut found: Vec<(Topic, Vec<Item>)> = Vec::new();
        for item in items {
            let Some(index) = read.keys.iter().position(|key| *key == item.event.topic) else { continue };
            if StreamId::of(&item.event) <= after[index] {
                continue;
            }
            match found.iter_mut().find(|(key, _)| *key == item.event.topic) {
                Some((_, entries)) if entries.len() >= read.count => {}
                Some((_, entries)) => entries.push(item),
                None => found.push((item.event.topic.clone(), vec![item])),
            }
        }
        if !found.is_empty() {
            write_keyed(conn, &found);
            return Ok(());
        }
    }
}

/// XREAD's reply: `[[key, entries]…]` (a map in RESP3).
pub(crate) fn write_keyed(conn: &mut Conn, found: &[(Topic, Vec<Item>)]) {
    if conn.out.proto == 3 {
        conn.out.map(found.len());
    } else {
        conn.out.array(found.len());
    }
    for (key, items) in found {
        if conn.out.proto != 3 {
            conn.out.array(2);
        }
        conn.out.bulk(key.as_str().as_bytes());
        write_items(conn, items);
    }
}
