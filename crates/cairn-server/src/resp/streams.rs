//! The Redis Streams commands over topics: XADD, XRANGE, XREVRANGE, XLEN,
//! XDEL, XTRIM, XREAD (blocking reads wake on the commit of a new event),
//! and COMMAND. Consumer groups are in `groups.rs`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_store::{Batch, Event, EventId, Expect, Pattern, Query, Store, SubscribeOptions, Topic};

use super::command::{CmdResult, Fail, SPECS, err};
use super::conn::{Awaiting, Conn};
use super::entry::{self, StreamId};

/// The Redis version cairn reports: the Streams commands it implements
/// behave as in this version.
pub(crate) const REDIS_VERSION: &str = "7.2.0";

/// Most entries one XRANGE/XREAD without COUNT returns (a guard against
/// building a reply of a whole huge topic by accident; COUNT lifts it).
const RANGE_ENTRIES_DEFAULT_MAX: usize = 10_000_000;

/// The topic named by a key.
pub(crate) fn topic(key: &[u8]) -> Result<Topic, Fail> {
    let name = std::str::from_utf8(key).map_err(|_| err("invalid key: topic names are UTF-8"))?;
    Topic::new(name).map_err(|error| err(error.to_string()))
}

/// An entry ready to write: an event with its payload, or the id of an
/// entry no longer kept (a pending entry whose event was removed).
pub(crate) struct Entry {
    pub(crate) id: StreamId,
    pub(crate) event: Option<(Event, Option<Vec<u8>>)>,
}

/// Writes `[id, [field, value, ...]]` (`[id, nil]` for a removed entry).
pub(crate) fn write_entry(conn: &mut Conn, entry: &Entry) {
    conn.out.array(2);
    conn.out.bulk(entry.id.to_string().as_bytes());
    let Some((event, content)) = &entry.event else {
        conn.out.null_array();
        return;
    };
    let pairs = entry::pairs_of(event, content.as_deref());
    conn.out.array(pairs.len());
    for value in &pairs {
        conn.out.bulk(value);
    }
}

pub(crate) fn write_entries(conn: &mut Conn, entries: &[Entry]) {
    conn.out.array(entries.len());
    for entry in entries {
        write_entry(conn, entry);
    }
}

/// Loads the payload of `event`, verified against its hash.
pub(crate) fn with_content(store: &Store, event: Event) -> Result<Entry, Fail> {
    let content = store.content(&event)?;
    Ok(Entry { id: StreamId::of(&event), event: Some((event, content)) })
}

/// Entries of `topic` with ids in `start..=end`, oldest first (newest first
/// when `reverse`), at most `count`.
pub(crate) fn range(
    store: &Store,
    topic: &Topic,
    start: StreamId,
    end: StreamId,
    count: usize,
    reverse: bool,
) -> Result<Vec<Entry>, Fail> {
    let mut entries = Vec::new();
    if count == 0 || start > end {
        return Ok(entries);
    }
    let pattern = Pattern::Exact(topic.clone());
    let query = if reverse {
        Query { reverse: true, ..Query::new(pattern) }
    } else {
        Query { after: id_floor(start.ms), ..Query::new(pattern) }
    };
    for event in store.read(&query)? {
        let event = event?;
        let id = StreamId::of(&event);
        let (before, beyond) = if reverse { (id > end, id < start) } else { (id < start, id > end) };
        if before {
            continue;
        }
        if beyond {
            break;
        }
        entries.push(with_content(store, event)?);
        if entries.len() >= count {
            break;
        }
    }
    Ok(entries)
}

/// The id just before every event of millisecond `ms` (for `after`).
fn id_floor(ms: u64) -> Option<EventId> {
    (ms > 0).then(|| EventId::from_u128((u128::from(ms) << 80) - 1))
}

/// The newest entry id of `topic`, if it has one kept.
pub(crate) fn last_entry_id(store: &Store, topic: &Topic) -> Result<Option<StreamId>, Fail> {
    let query = Query { last: Some(1), ..Query::new(Pattern::Exact(topic.clone())) };
    Ok(store.read(&query)?.next().transpose()?.map(|event| StreamId::of(&event)))
}

/// `XADD` without NOMKSTREAM, MAXLEN or MINID: submitted without waiting.
/// `None` sends the other forms to [`dispatch`].
pub(crate) fn start_xadd(conn: &mut Conn, args: &[Bytes]) -> Option<Awaiting> {
    if args.len() < 5 || args[2][..] != *b"*" {
        return None;
    }
    let started = || -> Result<Awaiting, Fail> {
        let principal = conn.principal.as_ref().ok_or_else(|| Fail("NOAUTH Authentication required.".to_owned()))?;
        let pairs = &args[3..];
        if !pairs.len().is_multiple_of(2) {
            return Err(err("wrong number of arguments for 'xadd' command"));
        }
        let topic = topic(&args[1])?;
        principal.check_write(&topic)?;
        let mut event = entry::event_from_pairs(topic, pairs);
        event.user = principal.user_name().map(str::to_owned);
        Ok(Awaiting::Entry(conn.app.store.append_start(Batch::single(event, Expect::Any))?))
    };
    Some(started().unwrap_or_else(Awaiting::Failed))
}

/// The Streams commands (groups are passed on); errors for others.
pub(crate) async fn dispatch(conn: &mut Conn, name: &str, args: &[Bytes]) -> CmdResult {
    match name {
        "xadd" => xadd(conn, args).await,
        "xrange" => xrange(conn, args, false),
        "xrevrange" => xrange(conn, args, true),
        "xlen" => {
            let topic = topic(&args[1])?;
            check_read(conn, &topic)?;
            let head = super::command::head(conn, &args[1])?;
            conn.out.int(head.map_or(0, |head| head.count as i64));
            Ok(())
        }
        "xdel" => xdel(conn, args).await,
        "xtrim" => xtrim(conn, args).await,
        "xread" => xread(conn, args).await,
        _ => super::groups::dispatch(conn, name, args).await,
    }
}

pub(crate) fn check_read(conn: &Conn, topic: &Topic) -> CmdResult {
    Ok(conn.principal.as_ref().expect("authenticated").check_read(&Pattern::Exact(topic.clone()))?)
}

pub(crate) fn check_write(conn: &Conn, topic: &Topic) -> CmdResult {
    Ok(conn.principal.as_ref().expect("authenticated").check_write(topic)?)
}

/// MAXLEN or MINID of XADD and XTRIM.
enum Trim {
    MaxLen(u64),
    MinId(StreamId),
}

/// Parses `MAXLEN|MINID [=|~] threshold [LIMIT count]` at `args[at..]`;
/// returns the trim and the index after it.
fn parse_trim(args: &[Bytes], at: usize) -> Result<(Trim, usize), Fail> {
    let syntax = || Fail("ERR syntax error".to_owned());
    let kind = String::from_utf8_lossy(&args[at]).to_lowercase();
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

pub(crate) fn invalid_id() -> Fail {
    err("Invalid stream ID specified as stream command argument")
}

pub(crate) fn parse_count(arg: &[u8]) -> Result<u64, Fail> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or_else(|| err("value is not an integer or out of range"))
}

async fn xadd(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let topic = topic(&args[1])?;
    check_write(conn, &topic)?;
    let mut at = 2;
    let (mut nomkstream, mut trim) = (false, None);
    loop {
        let option = args.get(at).ok_or_else(|| err("wrong number of arguments for 'xadd' command"))?;
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
        return Err(err("cairn assigns entry ids: give * (an id is <ms>-<seq>: the event's time and its topic seq)"));
    }
    let pairs = &args[at + 1..];
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return Err(err("wrong number of arguments for 'xadd' command"));
    }
    let store = conn.app.store.clone();
    if nomkstream && tokio::task::block_in_place(|| store.head(&topic))?.is_none_or(|head| head.count == 0) {
        conn.out.null();
        return Ok(());
    }
    let mut event = entry::event_from_pairs(topic.clone(), pairs);
    event.user = conn.principal.as_ref().and_then(|p| p.user_name().map(str::to_owned));
    let events = store.append_start(Batch::single(event, Expect::Any))?.await?;
    let id = StreamId::of(&events[0]);
    if let Some(trim) = trim {
        tokio::task::spawn_blocking(move || trim_topic(&store, &topic, &trim)).await.map_err(err)??;
    }
    conn.out.bulk(id.to_string().as_bytes());
    Ok(())
}

/// Removes what `trim` says from the oldest end of `topic`; returns how many.
fn trim_topic(store: &Store, topic: &Topic, trim: &Trim) -> Result<usize, Fail> {
    let query = Query::new(Pattern::Exact(topic.clone()));
    let ids: Vec<EventId> = match trim {
        Trim::MaxLen(keep) => {
            let count = store.head(topic)?.map_or(0, |head| head.count);
            let excess = count.saturating_sub(*keep);
            store.read(&Query { limit: Some(excess), ..query })?.map(|e| e.map(|e| e.id)).collect::<Result<_, _>>()?
        }
        Trim::MinId(min) => {
            let mut ids = Vec::new();
            for event in store.read(&query)? {
                let event = event?;
                if StreamId::of(&event) >= *min {
                    break;
                }
                ids.push(event.id);
            }
            ids
        }
    };
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(store.remove_many(&ids)?)
}

async fn xtrim(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let topic = topic(&args[1])?;
    check_write(conn, &topic)?;
    let (trim, next) = parse_trim(args, 2)?;
    if next != args.len() {
        return Err(Fail("ERR syntax error".to_owned()));
    }
    let store = conn.app.store.clone();
    let removed = tokio::task::spawn_blocking(move || trim_topic(&store, &topic, &trim)).await.map_err(err)??;
    conn.out.int(removed as i64);
    Ok(())
}

async fn xdel(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let topic = topic(&args[1])?;
    check_write(conn, &topic)?;
    let wanted =
        args[2..].iter().map(|id| StreamId::parse(id, 0).map_err(|_| invalid_id())).collect::<Result<Vec<_>, _>>()?;
    let store = conn.app.store.clone();
    let removed = tokio::task::spawn_blocking(move || -> Result<usize, Fail> {
        let mut ids = Vec::new();
        for id in wanted {
            let query = Query { from_seq: Some(id.seq), limit: Some(1), ..Query::new(Pattern::Exact(topic.clone())) };
            if let Some(event) = store.read(&query)?.next().transpose()?
                && StreamId::of(&event) == id
            {
                ids.push(event.id);
            }
        }
        Ok(store.remove_many(&ids)?)
    })
    .await
    .map_err(err)??;
    conn.out.int(removed as i64);
    Ok(())
}

/// Parses a range bound: `-`, `+`, `id`, `(id`.
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

fn xrange(conn: &mut Conn, args: &[Bytes], reverse: bool) -> CmdResult {
    let topic = topic(&args[1])?;
    check_read(conn, &topic)?;
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
        _ => return Err(Fail("ERR syntax error".to_owned())),
    };
    let entries = match (start, end) {
        (Some(start), Some(end)) => {
            let store = &conn.app.store;
            tokio::task::block_in_place(|| range(store, &topic, start, end, count, reverse))?
        }
        _ => Vec::new(),
    };
    write_entries(conn, &entries);
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
    let syntax = || Fail("ERR syntax error".to_owned());
    let mut read = ReadArgs { count: usize::MAX, block: None, noack: false, keys: Vec::new(), ids: Vec::new() };
    loop {
        let option = String::from_utf8_lossy(args.get(at).ok_or_else(syntax)?).to_lowercase();
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

async fn xread(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let read = parse_read(args, 1, false)?;
    for key in &read.keys {
        check_read(conn, key)?;
    }
    let store = conn.app.store.clone();
    // Taken before the first look, so a wait misses nothing committed after it.
    let mut subscription = read.block.is_some().then(|| wait_on(&store, &read.keys));
    let mut after = Vec::with_capacity(read.keys.len());
    let mut last_of = Vec::new();
    for (key, id) in read.keys.iter().zip(&read.ids) {
        match &id[..] {
            b"$" => after.push(tokio::task::block_in_place(|| last_entry_id(&store, key))?.unwrap_or(StreamId::MIN)),
            b"+" => {
                last_of.push(key.clone());
                after.push(StreamId::MIN);
            }
            _ => after.push(StreamId::parse(id, 0).map_err(|_| invalid_id())?),
        }
    }
    let deadline = read.block.map(|block| (block > Duration::ZERO).then(|| Instant::now() + block));
    loop {
        let found = tokio::task::block_in_place(|| -> Result<Vec<(Topic, Vec<Entry>)>, Fail> {
            let mut found = Vec::new();
            for (key, after) in read.keys.iter().zip(&after) {
                let entries = if last_of.contains(key) {
                    let query = Query { last: Some(1), ..Query::new(Pattern::Exact(key.clone())) };
                    store.read(&query)?.map(|e| with_content(&store, e?)).collect::<Result<Vec<_>, _>>()?
                } else {
                    match after.next() {
                        Some(start) => range(&store, key, start, StreamId::MAX, read.count, false)?,
                        None => Vec::new(),
                    }
                };
                if !entries.is_empty() {
                    found.push((key.clone(), entries));
                }
            }
            Ok(found)
        })?;
        if !found.is_empty() {
            write_keyed(conn, &found);
            return Ok(());
        }
        let Some(deadline) = deadline else {
            conn.out.null_array();
            return Ok(());
        };
        // `+` asks for the last entry; once a new one exists it qualifies.
        last_of.clear();
        let subscription = subscription.as_mut().expect("taken when blocking");
        let Some(first) = wait_for_event(conn, subscription, &read.keys, deadline).await else {
            conn.out.null_array();
            return Ok(());
        };
        // The subscription hands over the new events themselves: reply with
        // them (and any already committed behind them) without a read.
        let mut events = vec![first];
        while events.len() < 1024
            && let Some(Ok(cairn_store::Delivery::Event(event))) =
                futures_util::FutureExt::now_or_never(subscription.next())
        {
            events.push(event);
        }
        let mut found: Vec<(Topic, Vec<Entry>)> = Vec::new();
        for event in events {
            let Some(index) = read.keys.iter().position(|key| *key == event.topic) else { continue };
            if StreamId::of(&event) <= after[index] {
                continue;
            }
            let entries = match found.iter().position(|(key, _)| *key == event.topic) {
                Some(at) => &mut found[at].1,
                None => {
                    found.push((event.topic.clone(), Vec::new()));
                    &mut found.last_mut().expect("just pushed").1
                }
            };
            if entries.len() < read.count {
                let event = std::sync::Arc::unwrap_or_clone(event);
                entries.push(tokio::task::block_in_place(|| with_content(&store, event))?);
            }
        }
        if !found.is_empty() {
            write_keyed(conn, &found);
            return Ok(());
        }
    }
}

/// Live events of `keys` from now on: taken before a blocking read's first
/// look, so an event committed in between still wakes it. Live only, so a
/// wake-up needs no index lookup (the ring hands the event over).
pub(crate) fn wait_on(store: &Store, keys: &[Topic]) -> cairn_store::Subscription {
    let pattern = match keys {
        [key] => Pattern::Exact(key.clone()),
        _ => Pattern::all(),
    };
    store.subscribe_live(pattern, SubscribeOptions::default())
}

/// Waits until an event of `keys` commits (and returns it), the deadline
/// passes or the server stops (`None`). No deadline waits for ever.
pub(crate) async fn wait_for_event(
    conn: &mut Conn,
    subscription: &mut cairn_store::Subscription,
    keys: &[Topic],
    deadline: Option<Instant>,
) -> Option<std::sync::Arc<Event>> {
    let mut stop = conn.stop.clone();
    loop {
        let next = async {
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline.into(), subscription.next()).await.ok(),
                None => Some(subscription.next().await),
            }
        };
        let delivery = tokio::select! {
            delivery = next => delivery,
            () = crate::server::stopped(&mut stop) => return None,
        };
        match delivery {
            None | Some(Err(_)) => return None,
            Some(Ok(cairn_store::Delivery::Event(event))) if keys.contains(&event.topic) => return Some(event),
            Some(Ok(_)) => {}
        }
    }
}

/// XREAD's reply: `[[key, entries]…]` (a map in RESP3).
pub(crate) fn write_keyed(conn: &mut Conn, found: &[(Topic, Vec<Entry>)]) {
    if conn.out.proto == 3 {
        conn.out.map(found.len());
    } else {
        conn.out.array(found.len());
    }
    for (key, entries) in found {
        if conn.out.proto != 3 {
            conn.out.array(2);
        }
        conn.out.bulk(key.as_str().as_bytes());
        write_entries(conn, entries);
    }
}

/// `COMMAND`, `COMMAND COUNT|LIST|INFO name…|DOCS [name…]`.
pub(crate) fn command_info(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let sub = args.get(1).map(|a| String::from_utf8_lossy(a).to_lowercase());
    let out = &mut conn.out;
    let info = |out: &mut super::frame::Out, spec: &super::command::Spec| {
        out.array(10);
        out.bulk(spec.name.as_bytes());
        out.int(spec.arity);
        out.set(spec.flags.len());
        for flag in spec.flags {
            out.simple(flag);
        }
        out.int(spec.keys.0);
        out.int(spec.keys.1);
        out.int(spec.keys.2);
        out.set(0);
        out.set(0);
        out.array(0);
        out.array(0);
    };
    match sub.as_deref() {
        None => {
            out.array(SPECS.len());
            for spec in SPECS {
                info(out, spec);
            }
        }
        Some("count") => out.int(SPECS.len() as i64),
        Some("list") => {
            out.array(SPECS.len());
            for spec in SPECS {
                out.bulk(spec.name.as_bytes());
            }
        }
        Some("info") => {
            out.array(args.len() - 2);
            for name in &args[2..] {
                match super::command::find_spec(name) {
                    Some(spec) => info(out, spec),
                    None => out.null_array(),
                }
            }
        }
        Some("docs") => {
            let specs: Vec<&super::command::Spec> = if args.len() > 2 {
                args[2..].iter().filter_map(|name| super::command::find_spec(name)).collect()
            } else {
                SPECS.iter().collect()
            };
            out.map(specs.len());
            for spec in specs {
                out.bulk(spec.name.as_bytes());
                out.map(3);
                out.bulk(b"summary");
                out.bulk(spec.summary.as_bytes());
                out.bulk(b"since");
                out.bulk(b"1.0.0");
                out.bulk(b"group");
                out.bulk(spec.group.as_bytes());
            }
        }
        Some(other) => return Err(err(format!("unknown subcommand '{other}'. Try COMMAND HELP."))),
    }
    Ok(())
}
