//! Consumer groups with Redis's semantics (XGROUP, XREADGROUP, XACK,
//! XPENDING, XCLAIM, XAUTOCLAIM, XINFO), durable in the store.
//!
//! The state lives in memory behind one async lock and is written through
//! the store's state records (`Store::state_write`): every change is
//! submitted while the lock is held (so the log has changes in the order
//! they were made) and the reply waits for it to be durable. On start the
//! state is loaded back (`Groups::load`). Keys, all under one topic name:
//! `g<topic>` + group → last delivered id; `c` … + consumer → seen time;
//! `p` … + entry id → owner, delivery time, delivery count.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cairn_store::{Pattern, Query, StateOp, Store, Topic};
use tokio::sync::Mutex;

use super::command::{CmdResult, Fail, err};
use super::conn::Conn;
use super::entry::StreamId;
use super::streams::{
    self, Entry, check_read, check_write, invalid_id, parse_count, range, topic, with_content, write_entries,
    write_keyed,
};

/// Every group of every topic.
pub(crate) struct Groups {
    state: Mutex<HashMap<Topic, BTreeMap<Bytes, Group>>>,
}

#[derive(Default)]
struct Group {
    last: StreamId,
    consumers: BTreeMap<Bytes, Consumer>,
    pel: BTreeMap<StreamId, Pending>,
}

#[derive(Default)]
struct Consumer {
    seen_ms: u64,
    active_ms: Option<u64>,
    pending: BTreeSet<StreamId>,
}

struct Pending {
    consumer: Bytes,
    delivered_ms: u64,
    count: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// State keys (see the module docs).
fn prefix(kind: u8, topic: &Topic, group: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + topic.as_str().len() + group.len());
    key.push(kind);
    key.push(topic.as_str().len() as u8);
    key.extend_from_slice(topic.as_str().as_bytes());
    key.extend_from_slice(&(group.len() as u32).to_be_bytes());
    key.extend_from_slice(group);
    key
}

fn group_key(topic: &Topic, group: &[u8]) -> Vec<u8> {
    prefix(b'g', topic, group)
}

fn consumer_key(topic: &Topic, group: &[u8], consumer: &[u8]) -> Vec<u8> {
    let mut key = prefix(b'c', topic, group);
    key.extend_from_slice(consumer);
    key
}

fn pending_key(topic: &Topic, group: &[u8], id: StreamId) -> Vec<u8> {
    let mut key = prefix(b'p', topic, group);
    key.extend_from_slice(&id.to_key());
    key
}

fn pending_value(pending: &Pending) -> Vec<u8> {
    let mut value = Vec::with_capacity(16 + pending.consumer.len());
    value.extend_from_slice(&pending.delivered_ms.to_le_bytes());
    value.extend_from_slice(&pending.count.to_le_bytes());
    value.extend_from_slice(&pending.consumer);
    value
}

/// Splits a state key into topic, group and the rest.
fn split_key(key: &[u8]) -> Option<(Topic, Bytes, &[u8])> {
    let topic_len = *key.get(1)? as usize;
    let topic = Topic::new(std::str::from_utf8(key.get(2..2 + topic_len)?).ok()?).ok()?;
    let at = 2 + topic_len;
    let group_len = u32::from_be_bytes(key.get(at..at + 4)?.try_into().ok()?) as usize;
    let group = Bytes::copy_from_slice(key.get(at + 4..at + 4 + group_len)?);
    Some((topic, group, &key[at + 4 + group_len..]))
}

impl Groups {
    /// Loads every group from the store's state.
    pub(crate) fn load(store: &Store) -> cairn_store::Result<Groups> {
        let mut state: HashMap<Topic, BTreeMap<Bytes, Group>> = HashMap::new();
        for (key, value) in store.state_scan(b"g")? {
            let (Some((topic, group, _)), Some(last)) = (split_key(&key), StreamId::from_key(&value)) else {
                continue;
            };
            state.entry(topic).or_default().insert(group, Group { last, ..Group::default() });
        }
        for (key, value) in store.state_scan(b"c")? {
            let Some((topic, group, name)) = split_key(&key) else { continue };
            if let Some(group) = state.get_mut(&topic).and_then(|groups| groups.get_mut(&group)) {
                let seen_ms = value.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
                group.consumers.insert(Bytes::copy_from_slice(name), Consumer { seen_ms, ..Consumer::default() });
            }
        }
        for (key, value) in store.state_scan(b"p")? {
            let Some((topic, group, id)) = split_key(&key) else { continue };
            let (Some(group), Some(id)) =
                (state.get_mut(&topic).and_then(|groups| groups.get_mut(&group)), StreamId::from_key(id))
            else {
                continue;
            };
            if value.len() < 16 {
                continue;
            }
            let pending = Pending {
                delivered_ms: u64::from_le_bytes(value[..8].try_into().expect("8 bytes")),
                count: u64::from_le_bytes(value[8..16].try_into().expect("8 bytes")),
                consumer: Bytes::copy_from_slice(&value[16..]),
            };
            group.consumers.entry(pending.consumer.clone()).or_default().pending.insert(id);
            group.pel.insert(id, pending);
        }
        Ok(Groups { state: Mutex::new(state) })
    }
}

fn no_group(topic: &Topic, group: &[u8]) -> Fail {
    Fail(format!("NOGROUP No such key '{topic}' or consumer group '{}'", String::from_utf8_lossy(group)))
}

/// The group commands; an error for others.
pub(crate) async fn dispatch(conn: &mut Conn, name: &str, args: &[Bytes]) -> CmdResult {
    match name {
        "xgroup" => xgroup(conn, args).await,
        "xreadgroup" => xreadgroup(conn, args).await,
        "xack" => xack(conn, args).await,
        "xpending" => xpending(conn, args).await,
        "xclaim" => xclaim(conn, args, false).await,
        "xautoclaim" => xclaim(conn, args, true).await,
        "xinfo" => xinfo(conn, args).await,
        _ => Err(err(format!("unknown command '{name}'"))),
    }
}

/// Submits `ops` (in lock order) and returns the acknowledgement to await.
fn write(store: &Store, ops: Vec<StateOp>) -> Result<Option<cairn_store::Pending<()>>, Fail> {
    if ops.is_empty() {
        return Ok(None);
    }
    Ok(Some(store.state_write(ops)?))
}

async fn durable(pending: Option<cairn_store::Pending<()>>) -> CmdResult {
    if let Some(pending) = pending {
        pending.await?;
    }
    Ok(())
}

/// `$` (the newest entry) or an id.
fn start_id(store: &Store, topic: &Topic, arg: &[u8]) -> Result<StreamId, Fail> {
    if arg == b"$" {
        return Ok(tokio::task::block_in_place(|| streams::last_entry_id(store, topic))?.unwrap_or(StreamId::MIN));
    }
    StreamId::parse(arg, 0).map_err(|_| invalid_id())
}

async fn xgroup(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let sub = String::from_utf8_lossy(&args[1]).to_lowercase();
    let arity = |n: usize, exact: bool| {
        if (exact && args.len() != n) || args.len() < n {
            Err(err(format!("wrong number of arguments for 'xgroup|{sub}' command")))
        } else {
            Ok(())
        }
    };
    match sub.as_str() {
        "create" => arity(5, false)?,
        "setid" => arity(5, false)?,
        "destroy" => arity(4, true)?,
        "createconsumer" | "delconsumer" => arity(5, true)?,
        _ => return Err(err(format!("unknown subcommand '{sub}'. Try XGROUP HELP."))),
    }
    let topic = topic(&args[2])?;
    check_write(conn, &topic)?;
    let group = args[3].clone();
    let store = conn.app.store.clone();
    let groups = &conn.app.groups;
    let mut state = groups.state.lock().await;
    let pending = match sub.as_str() {
        "create" | "setid" => {
            let mut mkstream = false;
            let mut at = 5;
            while at < args.len() {
                if args[at].eq_ignore_ascii_case(b"mkstream") && sub == "create" {
                    mkstream = true;
                    at += 1;
                } else if args[at].eq_ignore_ascii_case(b"entriesread") && at + 1 < args.len() {
                    parse_count(&args[at + 1])?;
                    at += 2;
                } else {
                    return Err(Fail("ERR syntax error".to_owned()));
                }
            }
            let last = start_id(&store, &topic, &args[4])?;
            let exists = state.get(&topic).is_some_and(|groups| groups.contains_key(&group));
            if sub == "create" {
                if exists {
                    return Err(Fail("BUSYGROUP Consumer Group name already exists".to_owned()));
                }
                let head = tokio::task::block_in_place(|| store.head(&topic))?;
                if head.is_none() && !mkstream {
                    return Err(err(
                        "The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use the MKSTREAM option to create an empty stream automatically.",
                    ));
                }
                state.entry(topic.clone()).or_default().insert(group.clone(), Group { last, ..Group::default() });
            } else {
                let entry = state.get_mut(&topic).and_then(|groups| groups.get_mut(&group));
                entry.ok_or_else(|| no_group(&topic, &group))?.last = last;
            }
            conn.out.simple("OK");
            write(&store, vec![StateOp::Put(group_key(&topic, &group), last.to_key().to_vec())])?
        }
        "destroy" => match state.get_mut(&topic).and_then(|groups| groups.remove(&group)) {
            None => {
                conn.out.int(0);
                None
            }
            Some(removed) => {
                let mut ops = vec![StateOp::Delete(group_key(&topic, &group))];
                ops.extend(removed.consumers.keys().map(|name| StateOp::Delete(consumer_key(&topic, &group, name))));
                ops.extend(removed.pel.keys().map(|id| StateOp::Delete(pending_key(&topic, &group, *id))));
                conn.out.int(1);
                write(&store, ops)?
            }
        },
        "createconsumer" => {
            let entry = state.get_mut(&topic).and_then(|groups| groups.get_mut(&group));
            let entry = entry.ok_or_else(|| no_group(&topic, &group))?;
            let name = args[4].clone();
            if entry.consumers.contains_key(&name) {
                conn.out.int(0);
                None
            } else {
                let seen_ms = now_ms();
                entry.consumers.insert(name.clone(), Consumer { seen_ms, ..Consumer::default() });
                conn.out.int(1);
                write(&store, vec![StateOp::Put(consumer_key(&topic, &group, &name), seen_ms.to_le_bytes().to_vec())])?
            }
        }
        _ => {
            let entry = state.get_mut(&topic).and_then(|groups| groups.get_mut(&group));
            let entry = entry.ok_or_else(|| no_group(&topic, &group))?;
            match entry.consumers.remove(&args[4]) {
                None => {
                    conn.out.int(0);
                    None
                }
                Some(consumer) => {
                    let mut ops = vec![StateOp::Delete(consumer_key(&topic, &group, &args[4]))];
                    for id in &consumer.pending {
                        entry.pel.remove(id);
                        ops.push(StateOp::Delete(pending_key(&topic, &group, *id)));
                    }
                    conn.out.int(consumer.pending.len() as i64);
                    write(&store, ops)?
                }
            }
        }
    };
    drop(state);
    durable(pending).await
}

async fn xreadgroup(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    if !args[1].eq_ignore_ascii_case(b"group") {
        return Err(Fail("ERR syntax error".to_owned()));
    }
    let (group, consumer) = (args[2].clone(), args[3].clone());
    let read = streams::parse_read(args, 4, true)?;
    for key in &read.keys {
        check_write(conn, key)?;
        check_read(conn, key)?;
    }
    let store = conn.app.store.clone();
    // Taken before the first look, so a wait misses nothing committed after it.
    let mut subscription = read.block.is_some().then(|| streams::wait_on(&store, &read.keys));
    let history = read.ids.iter().any(|id| &id[..] != b">");
    let deadline = read.block.map(|block| (block > Duration::ZERO).then(|| Instant::now() + block));
    loop {
        let (found, pending) = deliver(conn, &store, &read, &group, &consumer).await?;
        durable(pending).await?;
        if history || found.iter().any(|(_, entries)| !entries.is_empty()) {
            let found: Vec<(Topic, Vec<Entry>)> =
                found.into_iter().filter(|(_, entries)| history || !entries.is_empty()).collect();
            write_keyed(conn, &found);
            return Ok(());
        }
        let Some(deadline) = deadline else {
            conn.out.null_array();
            return Ok(());
        };
        let subscription = subscription.as_mut().expect("taken when blocking");
        if streams::wait_for_event(conn, subscription, &read.keys, deadline).await.is_none() {
            conn.out.null_array();
            return Ok(());
        }
    }
}

/// The entry `id` of `topic`, or a removed-entry marker.
fn load(store: &Store, topic: &Topic, id: StreamId) -> Result<Entry, Fail> {
    let query = Query { from_seq: Some(id.seq), limit: Some(1), ..Query::new(Pattern::Exact(topic.clone())) };
    match store.read(&query)?.next().transpose()? {
        Some(event) if StreamId::of(&event) == id => with_content(store, event),
        _ => Ok(Entry { id, event: None }),
    }
}

type Delivered = (Vec<(Topic, Vec<Entry>)>, Option<cairn_store::Pending<()>>);

/// Hands entries to `consumer`: new ones (`>`: after the group's last
/// delivered id, which moves on; into the pending list unless NOACK) or
/// its own pending ones after an id (delivery count and time updated).
async fn deliver(
    conn: &Conn,
    store: &Store,
    read: &streams::ReadArgs,
    group: &Bytes,
    consumer: &Bytes,
) -> Result<Delivered, Fail> {
    let mut state = conn.app.groups.state.lock().await;
    let now = now_ms();
    let mut ops = Vec::new();
    let mut found = Vec::new();
    for (key, id) in read.keys.iter().zip(&read.ids) {
        let entry = state.get_mut(key).and_then(|groups| groups.get_mut(group));
        let entry = entry.ok_or_else(|| {
            Fail(format!(
                "NOGROUP No such key '{key}' or consumer group '{}' in XREADGROUP with GROUP option",
                String::from_utf8_lossy(group)
            ))
        })?;
        let member = entry.consumers.entry(consumer.clone()).or_insert_with(|| {
            ops.push(StateOp::Put(consumer_key(key, group, consumer), now.to_le_bytes().to_vec()));
            Consumer::default()
        });
        member.seen_ms = now;
        if &id[..] != b">" {
            let after = StreamId::parse(id, 0).map_err(|_| invalid_id())?;
            let ids: Vec<StreamId> =
                member.pending.range(after..).filter(|&&id| id > after).take(read.count).copied().collect();
            let mut entries = Vec::with_capacity(ids.len());
            for id in ids {
                let pending = entry.pel.get_mut(&id).expect("a consumer's pending entry is in its group's list");
                pending.count += 1;
                pending.delivered_ms = now;
                ops.push(StateOp::Put(pending_key(key, group, id), pending_value(pending)));
                entries.push(tokio::task::block_in_place(|| load(store, key, id))?);
            }
            found.push((key.clone(), entries));
            continue;
        }
        let entries = match entry.last.next() {
            Some(start) => tokio::task::block_in_place(|| range(store, key, start, StreamId::MAX, read.count, false))?,
            None => Vec::new(),
        };
        if let Some(last) = entries.last() {
            entry.last = last.id;
            ops.push(StateOp::Put(group_key(key, group), entry.last.to_key().to_vec()));
            entry.consumers.get_mut(consumer).expect("inserted above").active_ms = Some(now);
            if !read.noack {
                for delivered in &entries {
                    let pending = Pending { consumer: consumer.clone(), delivered_ms: now, count: 1 };
                    ops.push(StateOp::Put(pending_key(key, group, delivered.id), pending_value(&pending)));
                    if let Some(previous) = entry.pel.insert(delivered.id, pending)
                        && let Some(owner) = entry.consumers.get_mut(&previous.consumer)
                    {
                        owner.pending.remove(&delivered.id);
                    }
                    entry.consumers.get_mut(consumer).expect("inserted above").pending.insert(delivered.id);
                }
            }
        }
        found.push((key.clone(), entries));
    }
    let pending = write(store, ops)?;
    Ok((found, pending))
}

async fn xack(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let topic = topic(&args[1])?;
    check_write(conn, &topic)?;
    let group = &args[2];
    let ids =
        args[3..].iter().map(|id| StreamId::parse(id, 0).map_err(|_| invalid_id())).collect::<Result<Vec<_>, _>>()?;
    let mut state = conn.app.groups.state.lock().await;
    let mut ops = Vec::new();
    if let Some(entry) = state.get_mut(&topic).and_then(|groups| groups.get_mut(group)) {
        for id in ids {
            if let Some(pending) = entry.pel.remove(&id) {
                if let Some(owner) = entry.consumers.get_mut(&pending.consumer) {
                    owner.pending.remove(&id);
                }
                ops.push(StateOp::Delete(pending_key(&topic, group, id)));
            }
        }
    }
    let acked = ops.len();
    let pending = write(&conn.app.store, ops)?;
    drop(state);
    durable(pending).await?;
    conn.out.int(acked as i64);
    Ok(())
}

async fn xpending(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let topic = topic(&args[1])?;
    check_read(conn, &topic)?;
    let group = &args[2];
    let state = conn.app.groups.state.lock().await;
    let entry = state.get(&topic).and_then(|groups| groups.get(group)).ok_or_else(|| no_group(&topic, group))?;
    let now = now_ms();
    if args.len() == 3 {
        let out = &mut conn.out;
        out.array(4);
        out.int(entry.pel.len() as i64);
        match (entry.pel.keys().next(), entry.pel.keys().next_back()) {
            (Some(first), Some(last)) => {
                out.bulk(first.to_string().as_bytes());
                out.bulk(last.to_string().as_bytes());
                let owners: Vec<(&Bytes, usize)> = entry
                    .consumers
                    .iter()
                    .filter(|(_, consumer)| !consumer.pending.is_empty())
                    .map(|(name, consumer)| (name, consumer.pending.len()))
                    .collect();
                out.array(owners.len());
                for (name, n) in owners {
                    out.array(2);
                    out.bulk(name);
                    out.bulk(n.to_string().as_bytes());
                }
            }
            _ => {
                out.null();
                out.null();
                out.null_array();
            }
        }
        return Ok(());
    }
    let mut at = 3;
    let mut min_idle = 0;
    if args[at].eq_ignore_ascii_case(b"idle") {
        min_idle = parse_count(args.get(at + 1).ok_or_else(|| Fail("ERR syntax error".to_owned()))?)?;
        at += 2;
    }
    if args.len() < at + 3 || args.len() > at + 4 {
        return Err(Fail("ERR syntax error".to_owned()));
    }
    let start = streams::parse_bound(&args[at], true)?;
    let end = streams::parse_bound(&args[at + 1], false)?;
    let count = parse_count(&args[at + 2])? as usize;
    let owner = args.get(at + 3);
    let rows: Vec<(&StreamId, &Pending)> = match (start, end) {
        (Some(start), Some(end)) if start <= end => entry
            .pel
            .range(start..=end)
            .filter(|(_, pending)| owner.is_none_or(|owner| *owner == pending.consumer))
            .filter(|(_, pending)| now.saturating_sub(pending.delivered_ms) >= min_idle)
            .take(count)
            .collect(),
        _ => Vec::new(),
    };
    let out = &mut conn.out;
    out.array(rows.len());
    for (id, pending) in rows {
        out.array(4);
        out.bulk(id.to_string().as_bytes());
        out.bulk(&pending.consumer);
        out.int(now.saturating_sub(pending.delivered_ms) as i64);
        out.int(pending.count as i64);
    }
    Ok(())
}

/// XCLAIM (`auto` false) and XAUTOCLAIM (`auto` true).
async fn xclaim(conn: &mut Conn, args: &[Bytes], auto: bool) -> CmdResult {
    let syntax = || Fail("ERR syntax error".to_owned());
    let topic = topic(&args[1])?;
    check_write(conn, &topic)?;
    let (group, consumer) = (args[2].clone(), args[3].clone());
    let min_idle = parse_count(&args[4]).map_err(|_| err("Invalid min-idle-time argument for XCLAIM"))?;
    let now = now_ms();
    let (mut delivered_ms, mut retry, mut force, mut justid) = (now, None, false, false);
    let mut count = 100usize;
    let mut ids = Vec::new();
    let mut at = 5;
    let mut start = StreamId::MIN;
    if auto {
        start = match streams::parse_bound(&args[5], true)? {
            Some(start) => start,
            None => StreamId::MAX,
        };
        at = 6;
    } else {
        while let Some(id) = args.get(at).and_then(|arg| StreamId::parse(arg, 0).ok()) {
            ids.push(id);
            at += 1;
        }
    }
    while at < args.len() {
        let option = String::from_utf8_lossy(&args[at]).to_lowercase();
        let value = args.get(at + 1);
        match (option.as_str(), auto) {
            ("justid", _) => {
                justid = true;
                at += 1;
                continue;
            }
            ("count", true) => {
                count = parse_count(value.ok_or_else(syntax)?)? as usize;
                if count == 0 {
                    return Err(err("COUNT must be > 0"));
                }
            }
            ("idle", false) => delivered_ms = now.saturating_sub(parse_count(value.ok_or_else(syntax)?)?),
            ("time", false) => delivered_ms = parse_count(value.ok_or_else(syntax)?)?,
            ("retrycount", false) => retry = Some(parse_count(value.ok_or_else(syntax)?)?),
            ("lastid", false) => {
                StreamId::parse(value.ok_or_else(syntax)?, 0).map_err(|_| invalid_id())?;
            }
            ("force", false) => {
                force = true;
                at += 1;
                continue;
            }
            _ => return Err(if auto { syntax() } else { err(format!("Unrecognized XCLAIM option '{option}'")) }),
        }
        at += 2;
    }
    if !auto && ids.is_empty() {
        return Err(invalid_id());
    }
    let store = conn.app.store.clone();
    let mut state = conn.app.groups.state.lock().await;
    let entry =
        state.get_mut(&topic).and_then(|groups| groups.get_mut(&group)).ok_or_else(|| no_group(&topic, &group))?;
    let mut ops = Vec::new();
    if !entry.consumers.contains_key(&consumer) {
        ops.push(StateOp::Put(consumer_key(&topic, &group, &consumer), now.to_le_bytes().to_vec()));
    }
    let member = entry.consumers.entry(consumer.clone()).or_default();
    member.seen_ms = now;
    let mut next = StreamId::MIN;
    if auto {
        let mut scanned = entry.pel.range(start..).map(|(id, _)| *id);
        ids = scanned.by_ref().take(count).collect();
        next = scanned.next().unwrap_or(StreamId::MIN);
    }
    let (mut claimed, mut deleted) = (Vec::new(), Vec::new());
    for id in ids {
        let idle = entry.pel.get(&id).map(|pending| now.saturating_sub(pending.delivered_ms));
        match idle {
            None if force && !auto => {
                let loaded = tokio::task::block_in_place(|| load(&store, &topic, id))?;
                if loaded.event.is_none() {
                    continue;
                }
                entry.pel.insert(id, Pending { consumer: consumer.clone(), delivered_ms, count: 0 });
            }
            None => continue,
            Some(idle) if idle < min_idle => continue,
            Some(_) => {}
        }
        let loaded = tokio::task::block_in_place(|| load(&store, &topic, id))?;
        if loaded.event.is_none() {
            // Removed from the topic: drop it from the pending list.
            if let Some(pending) = entry.pel.remove(&id)
                && let Some(owner) = entry.consumers.get_mut(&pending.consumer)
            {
                owner.pending.remove(&id);
            }
            ops.push(StateOp::Delete(pending_key(&topic, &group, id)));
            deleted.push(id);
            continue;
        }
        let pending = entry.pel.get_mut(&id).expect("checked above");
        let previous = std::mem::replace(&mut pending.consumer, consumer.clone());
        pending.delivered_ms = delivered_ms;
        if let Some(retry) = retry {
            pending.count = retry;
        } else if !justid {
            pending.count += 1;
        }
        ops.push(StateOp::Put(pending_key(&topic, &group, id), pending_value(pending)));
        if let Some(owner) = entry.consumers.get_mut(&previous) {
            owner.pending.remove(&id);
        }
        entry.consumers.get_mut(&consumer).expect("inserted above").pending.insert(id);
        claimed.push(loaded);
    }
    let pending = write(&store, ops)?;
    drop(state);
    durable(pending).await?;
    if auto {
        conn.out.array(3);
        conn.out.bulk(next.to_string().as_bytes());
    }
    if justid {
        conn.out.array(claimed.len());
        for entry in &claimed {
            conn.out.bulk(entry.id.to_string().as_bytes());
        }
    } else {
        write_entries(conn, &claimed);
    }
    if auto {
        conn.out.array(deleted.len());
        for id in deleted {
            conn.out.bulk(id.to_string().as_bytes());
        }
    }
    Ok(())
}

async fn xinfo(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let sub = String::from_utf8_lossy(&args[1]).to_lowercase();
    let wrong = || err(format!("wrong number of arguments for 'xinfo|{sub}' command"));
    let key = args.get(2).ok_or_else(wrong)?;
    let topic = topic(key)?;
    check_read(conn, &topic)?;
    let store = conn.app.store.clone();
    let head = tokio::task::block_in_place(|| store.head(&topic))?;
    let state = conn.app.groups.state.lock().await;
    let groups = state.get(&topic);
    let no_key = || err("no such key");
    let now = now_ms();
    match sub.as_str() {
        "stream" => {
            let head = head.ok_or_else(no_key)?;
            let (first, last) = tokio::task::block_in_place(|| -> Result<_, Fail> {
                let first = range(&store, &topic, StreamId::MIN, StreamId::MAX, 1, false)?.pop();
                let last = range(&store, &topic, StreamId::MIN, StreamId::MAX, 1, true)?.pop();
                Ok((first, last))
            })?;
            let last_generated = cairn_store::EventId::to_u128(head.last_id) >> 80;
            let out = &mut conn.out;
            out.map(10);
            out.text("length");
            out.int(head.count as i64);
            out.text("radix-tree-keys");
            out.int(1);
            out.text("radix-tree-nodes");
            out.int(2);
            out.text("last-generated-id");
            out.text(&StreamId { ms: last_generated as u64, seq: head.last_seq }.to_string());
            out.text("max-deleted-entry-id");
            out.text("0-0");
            out.text("entries-added");
            out.int(head.last_seq as i64 + 1);
            out.text("recorded-first-entry-id");
            out.text(&first.as_ref().map_or("0-0".to_owned(), |e| e.id.to_string()));
            out.text("groups");
            out.int(groups.map_or(0, BTreeMap::len) as i64);
            drop(state);
            conn.out.text("first-entry");
            match &first {
                Some(entry) => streams::write_entry(conn, entry),
                None => conn.out.null(),
            }
            conn.out.text("last-entry");
            match &last {
                Some(entry) => streams::write_entry(conn, entry),
                None => conn.out.null(),
            }
        }
        "groups" => {
            if args.len() != 3 {
                return Err(wrong());
            }
            if head.is_none() && groups.is_none() {
                return Err(no_key());
            }
            let added = head.as_ref().map_or(0, |head| head.last_seq + 1);
            let mut rows = Vec::new();
            for (name, group) in groups.into_iter().flatten() {
                // Entries read: how many entries precede the next undelivered one.
                let next = match group.last.next() {
                    Some(start) => {
                        tokio::task::block_in_place(|| range(&store, &topic, start, StreamId::MAX, 1, false))?
                            .pop()
                            .and_then(|entry| entry.event.map(|(event, _)| event.seq))
                    }
                    None => None,
                };
                let read = if group.last == StreamId::MIN { 0 } else { next.unwrap_or(added) };
                rows.push((
                    name.clone(),
                    group.consumers.len(),
                    group.pel.len(),
                    group.last,
                    read,
                    added - read.min(added),
                ));
            }
            let out = &mut conn.out;
            out.array(rows.len());
            for (name, consumers, pending, last, read, lag) in rows {
                out.map(6);
                out.text("name");
                out.bulk(&name);
                out.text("consumers");
                out.int(consumers as i64);
                out.text("pending");
                out.int(pending as i64);
                out.text("last-delivered-id");
                out.text(&last.to_string());
                out.text("entries-read");
                out.int(read as i64);
                out.text("lag");
                out.int(lag as i64);
            }
        }
        "consumers" => {
            if args.len() != 4 {
                return Err(wrong());
            }
            let group = groups.and_then(|groups| groups.get(&args[3])).ok_or_else(|| no_group(&topic, &args[3]))?;
            let out = &mut conn.out;
            out.array(group.consumers.len());
            for (name, consumer) in &group.consumers {
                out.map(4);
                out.text("name");
                out.bulk(name);
                out.text("pending");
                out.int(consumer.pending.len() as i64);
                out.text("idle");
                out.int(now.saturating_sub(consumer.seen_ms) as i64);
                out.text("inactive");
                out.int(consumer.active_ms.map_or(-1, |active| now.saturating_sub(active) as i64));
            }
        }
        _ => return Err(err(format!("unknown subcommand '{sub}'. Try XINFO HELP."))),
    }
    Ok(())
}
