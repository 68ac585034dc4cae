//! Consumer-group commands (XGROUP, XREADGROUP, XACK, XPENDING, XCLAIM,
//! XAUTOCLAIM, XINFO): arguments parsed here, the group state machine and
//! its durability in the service (`cairn_service` consumer groups),
//! replies shaped as Redis shapes them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_service::{Budget, Claim, Entry, GroupRead, GroupStart, ServiceError, StreamId, Topic};

use super::streams::{self, parse_bound, write_entry, write_entry_with, write_items};
use super::{keys, parse_count, topic, word};
use crate::resp::conn::Conn;
use crate::resp::error::{CmdResult, Fail, err, invalid_id, syntax};

/// Redis's words for the service's group errors.
fn group_fail(error: ServiceError, group: &[u8], context: &str) -> Fail {
    match error {
        // The service names the topic whose group is missing.
        ServiceError::NotFound { what: "group", key } => {
            Fail(format!("NOGROUP No such key '{key}' or consumer group '{}'{context}", String::from_utf8_lossy(group)))
        }
        ServiceError::Exists { what: "group", .. } => Fail("BUSYGROUP Consumer Group name already exists".to_owned()),
        ServiceError::NotFound { what: "topic", .. } => err(
            "The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use the MKSTREAM option to create an empty stream automatically.",
        ),
        other => other.into(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `$` (after the newest entry) or an id.
fn start_of(arg: &[u8]) -> Result<GroupStart, Fail> {
    if arg == b"$" {
        return Ok(GroupStart::Newest);
    }
    StreamId::parse(arg, 0).map(GroupStart::After).map_err(|_| invalid_id())
}

pub(crate) async fn xgroup(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let sub = word(&args[1]);
    let arity = |n: usize, exact: bool| {
        if (exact && args.len() != n) || args.len() < n {
            Err(err(format!("wrong number of arguments for 'xgroup|{sub}' command")))
        } else {
            Ok(())
        }
    };
    match sub.as_str() {
        "create" | "setid" => arity(5, false)?,
        "destroy" => arity(4, true)?,
        "createconsumer" | "delconsumer" => arity(5, true)?,
        _ => return Err(err(format!("unknown subcommand '{sub}'. Try XGROUP HELP."))),
    }
    let topic = topic(&args[2])?;
    let group = args[3].clone();
    let (service, who) = (conn.app.service.clone(), conn.who()?.clone());
    let fail = |error| group_fail(error, &group, "");
    match sub.as_str() {
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
                    return Err(syntax());
                }
            }
            let start = start_of(&args[4])?;
            if sub == "create" {
                service.group_create(&who, &topic, group.clone(), start, mkstream).await.map_err(fail)?;
            } else {
                service.group_set_id(&who, &topic, &group, start).await.map_err(fail)?;
            }
            conn.out.simple("OK");
        }
        "destroy" => {
            let destroyed = service.group_destroy(&who, &topic, &group).await.map_err(fail)?;
            conn.out.int(i64::from(destroyed));
        }
        "createconsumer" => {
            let created = service.group_create_consumer(&who, &topic, &group, args[4].clone()).await.map_err(fail)?;
            conn.out.int(i64::from(created));
        }
        _ => {
            let held = service.group_delete_consumer(&who, &topic, &group, &args[4]).await.map_err(fail)?;
            conn.out.int(held as i64);
        }
    }
    Ok(())
}

fn write_group_entries(conn: &mut Conn, entries: &[Entry]) {
    conn.out.array(entries.len());
    let mut pairs = Vec::new();
    for entry in entries {
        write_entry_with(conn, entry.id, entry.item.as_ref(), &mut pairs);
    }
}

fn write_group_keyed(conn: &mut Conn, found: &[(Topic, Vec<Entry>)]) {
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
        write_group_entries(conn, entries);
    }
}

pub(crate) async fn xreadgroup(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    if !args[1].eq_ignore_ascii_case(b"group") {
        return Err(syntax());
    }
    let (group, consumer) = (args[2].clone(), args[3].clone());
    let mut read = streams::parse_read(args, 4, true)?;
    if conn.in_exec {
        // Inside EXEC a blocking read answers at once, as in Redis.
        read.block = None;
    }
    let reads = read
        .keys
        .iter()
        .zip(&read.ids)
        .map(|(key, id)| match &id[..] {
            b">" => Ok((key.clone(), GroupRead::New)),
            id => StreamId::parse(id, 0).map(|id| (key.clone(), GroupRead::Pending(id))).map_err(|_| invalid_id()),
        })
        .collect::<Result<Vec<_>, Fail>>()?;
    let (service, who) = (conn.app.service.clone(), conn.who()?.clone());
    for key in &read.keys {
        who.check_write(key)?;
    }
    // Taken before the first look, so a wait misses nothing committed after it.
    let app = conn.app.clone();
    let _blocked = read.block.map(|_| crate::metrics::Blocked::new(&app.metrics));
    let mut follow = match read.block {
        Some(_) => Some(streams::wait_on(conn, &read.keys)?),
        None => None,
    };
    let history = reads.iter().any(|(_, read)| *read != GroupRead::New);
    let deadline = read.block.map(|block| (block > Duration::ZERO).then(|| Instant::now() + block));
    loop {
        let found = service
            .group_read(&who, &reads, &group, &consumer, read.count, read.noack)
            .await
            .map_err(|error| group_fail(error, &group, " in XREADGROUP with GROUP option"))?;
        if history || found.iter().any(|(_, entries)| !entries.is_empty()) {
            let found: Vec<(Topic, Vec<Entry>)> =
                found.into_iter().filter(|(_, entries)| history || !entries.is_empty()).collect();
            write_group_keyed(conn, &found);
            return Ok(());
        }
        let (Some(deadline), Some(follow)) = (deadline, follow.as_mut()) else {
            conn.out.null_array();
            return Ok(());
        };
        if streams::wait_for_events(conn, follow, &read.keys, deadline).await?.is_empty() {
            conn.out.null_array();
            return Ok(());
        }
    }
}

pub(crate) async fn xack(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let topic = topic(&args[1])?;
    let group = &args[2];
    let ids =
        args[3..].iter().map(|id| StreamId::parse(id, 0).map_err(|_| invalid_id())).collect::<Result<Vec<_>, _>>()?;
    let acked = conn.app.service.group_ack(conn.who()?, &topic, group, &ids).await?;
    conn.out.int(acked as i64);
    Ok(())
}

pub(crate) async fn xpending(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let topic = topic(&args[1])?;
    let group = args[2].clone();
    let (service, who) = (conn.app.service.clone(), conn.who()?.clone());
    let fail = |error| group_fail(error, &group, "");
    if args.len() == 3 {
        let summary = service.group_pending(&who, &topic, &group).await.map_err(fail)?;
        let out = &mut conn.out;
        out.array(4);
        out.int(summary.count as i64);
        match summary.range {
            Some((first, last)) => {
                out.bulk(first.to_string().as_bytes());
                out.bulk(last.to_string().as_bytes());
                out.array(summary.owners.len());
                for (name, n) in summary.owners {
                    out.array(2);
                    out.bulk(&name);
                    out.bulk(n.to_string().as_bytes());
                }
            }
            None => {
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
        min_idle = parse_count(args.get(at + 1).ok_or_else(syntax)?)?;
        at += 2;
    }
    if args.len() < at + 3 || args.len() > at + 4 {
        return Err(syntax());
    }
    let start = parse_bound(&args[at], true)?;
    let end = parse_bound(&args[at + 1], false)?;
    let count = usize::try_from(parse_count(&args[at + 2])?).unwrap_or(usize::MAX);
    let owner = args.get(at + 3).map(|owner| &owner[..]);
    let rows = match (start, end) {
        (Some(start), Some(end)) => {
            service.group_pending_rows(&who, &topic, &group, start, end, count, owner, min_idle).await.map_err(fail)?
        }
        _ => {
            // Nothing fits, but the group must exist.
            service.group_pending(&who, &topic, &group).await.map_err(fail)?;
            Vec::new()
        }
    };
    let out = &mut conn.out;
    out.array(rows.len());
    for row in rows {
        out.array(4);
        out.bulk(row.id.text(&mut [0; StreamId::TEXT_MAX]));
        out.bulk(&row.consumer);
        out.int(row.idle_ms as i64);
        out.int(row.deliveries as i64);
    }
    Ok(())
}

pub(crate) async fn xclaim(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let topic = topic(&args[1])?;
    let (group, consumer) = (args[2].clone(), args[3].clone());
    let min_idle = parse_count(&args[4]).map_err(|_| err("Invalid min-idle-time argument for XCLAIM"))?;
    let now = now_ms();
    let mut claim = Claim { min_idle_ms: min_idle, delivered_ms: now, ..Claim::default() };
    let mut at = 5;
    while let Some(id) = args.get(at).and_then(|arg| StreamId::parse(arg, 0).ok()) {
        claim.ids.push(id);
        at += 1;
    }
    while at < args.len() {
        let option = word(&args[at]);
        let value = args.get(at + 1);
        match option.as_str() {
            "justid" => {
                claim.justid = true;
                at += 1;
                continue;
            }
            "force" => {
                claim.force = true;
                at += 1;
                continue;
            }
            "idle" => claim.delivered_ms = now.saturating_sub(parse_count(value.ok_or_else(syntax)?)?),
            "time" => claim.delivered_ms = parse_count(value.ok_or_else(syntax)?)?,
            "retrycount" => claim.retry = Some(parse_count(value.ok_or_else(syntax)?)?),
            "lastid" => {
                StreamId::parse(value.ok_or_else(syntax)?, 0).map_err(|_| invalid_id())?;
            }
            _ => return Err(err(format!("Unrecognized XCLAIM option '{option}'"))),
        }
        at += 2;
    }
    if claim.ids.is_empty() {
        return Err(invalid_id());
    }
    let justid = claim.justid;
    let claimed = conn
        .app
        .service
        .group_claim(conn.who()?, &topic, &group, &consumer, claim)
        .await
        .map_err(|error| group_fail(error, &group, ""))?;
    if justid {
        conn.out.array(claimed.len());
        for entry in &claimed {
            conn.out.bulk(entry.id.text(&mut [0; StreamId::TEXT_MAX]));
        }
    } else {
        write_group_entries(conn, &claimed);
    }
    Ok(())
}

pub(crate) async fn xautoclaim(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let topic = topic(&args[1])?;
    let (group, consumer) = (args[2].clone(), args[3].clone());
    let min_idle = parse_count(&args[4]).map_err(|_| err("Invalid min-idle-time argument for XCLAIM"))?;
    let start = parse_bound(&args[5], true)?.unwrap_or(StreamId::MAX);
    let (mut count, mut justid) = (100usize, false);
    let mut at = 6;
    while at < args.len() {
        match word(&args[at]).as_str() {
            "justid" => {
                justid = true;
                at += 1;
            }
            "count" => {
                count = usize::try_from(parse_count(args.get(at + 1).ok_or_else(syntax)?)?).unwrap_or(usize::MAX);
                if count == 0 {
                    return Err(err("COUNT must be > 0"));
                }
                at += 2;
            }
            _ => return Err(syntax()),
        }
    }
    let claimed = conn
        .app
        .service
        .group_autoclaim(conn.who()?, &topic, &group, &consumer, start, count, min_idle, justid)
        .await
        .map_err(|error| group_fail(error, &group, ""))?;
    conn.out.array(3);
    conn.out.bulk(claimed.next.to_string().as_bytes());
    if justid {
        conn.out.array(claimed.claimed.len());
        for entry in &claimed.claimed {
            conn.out.bulk(entry.id.text(&mut [0; StreamId::TEXT_MAX]));
        }
    } else {
        write_group_entries(conn, &claimed.claimed);
    }
    conn.out.array(claimed.deleted.len());
    for id in claimed.deleted {
        conn.out.bulk(id.text(&mut [0; StreamId::TEXT_MAX]));
    }
    Ok(())
}

pub(crate) async fn xinfo(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let sub = word(&args[1]);
    let wrong = || err(format!("wrong number of arguments for 'xinfo|{sub}' command"));
    let key = args.get(2).ok_or_else(wrong)?;
    let topic = topic(key)?;
    let (service, who) = (conn.app.service.clone(), conn.who()?.clone());
    let no_key = || err("no such key");
    match sub.as_str() {
        "stream" => {
            let full = match args.len() {
                3 => None,
                4 if args[3].eq_ignore_ascii_case(b"full") => Some(10),
                6 if args[3].eq_ignore_ascii_case(b"full") && args[4].eq_ignore_ascii_case(b"count") => {
                    Some(parse_count(&args[5])? as usize)
                }
                _ => return Err(syntax()),
            };
            if !keys::exists_key(conn, key).await? {
                return Err(no_key());
            }
            stream_info(conn, &topic, full).await?;
        }
        "groups" => {
            if args.len() != 3 {
                return Err(wrong());
            }
            let rows = service.group_infos(&who, &topic).await?.ok_or_else(no_key)?;
            let out = &mut conn.out;
            out.array(rows.len());
            for row in rows {
                out.map(6);
                out.text("name");
                out.bulk(&row.name);
                out.text("consumers");
                out.int(row.consumers as i64);
                out.text("pending");
                out.int(row.pending as i64);
                out.text("last-delivered-id");
                out.text(&row.last_delivered.to_string());
                out.text("entries-read");
                out.int(row.entries_read as i64);
                out.text("lag");
                out.int(row.lag as i64);
            }
        }
        "consumers" => {
            if args.len() != 4 {
                return Err(wrong());
            }
            let members =
                service.group_members(&who, &topic, &args[3]).await.map_err(|error| group_fail(error, &args[3], ""))?;
            let out = &mut conn.out;
            out.array(members.len());
            for member in members {
                out.map(4);
                out.text("name");
                out.bulk(&member.name);
                out.text("pending");
                out.int(member.pending as i64);
                out.text("idle");
                out.int(member.idle_ms as i64);
                out.text("inactive");
                out.int(member.inactive_ms.map_or(-1, |inactive| inactive as i64));
            }
        }
        _ => return Err(err(format!("unknown subcommand '{sub}'. Try XINFO HELP."))),
    }
    Ok(())
}

/// XINFO STREAM, and with `full` (entries and pending rows shown, at most
/// that many; 0 for all the reply budget holds) XINFO STREAM … FULL.
async fn stream_info(conn: &mut Conn, topic: &Topic, full: Option<usize>) -> CmdResult {
    let (service, who) = (conn.app.service.clone(), conn.who()?.clone());
    let head = service.head(&who, topic).await?;
    let (all, mut budget) = ((StreamId::MIN, StreamId::MAX), Budget::partial());
    let first = service.range(&who, topic, all.0, all.1, 1, false, &mut budget).await?.pop();
    let last_generated = head
        .as_ref()
        .map_or(StreamId::MIN, |head| StreamId { ms: (head.last_id.to_u128() >> 80) as u64, seq: head.last_seq });
    let max_deleted = service.max_deleted(&who, topic).await?.unwrap_or(StreamId::MIN);
    let groups = service.group_infos(&who, topic).await?.unwrap_or_default();
    let out = &mut conn.out;
    out.map(if full.is_some() { 9 } else { 10 });
    out.text("length");
    out.int(head.as_ref().map_or(0, |head| head.count) as i64);
    out.text("radix-tree-keys");
    out.int(1);
    out.text("radix-tree-nodes");
    out.int(2);
    out.text("last-generated-id");
    out.text(&last_generated.to_string());
    out.text("max-deleted-entry-id");
    out.text(&max_deleted.to_string());
    out.text("entries-added");
    out.int(head.as_ref().map_or(0, |head| head.last_seq + 1) as i64);
    out.text("recorded-first-entry-id");
    out.text(&first.as_ref().map_or(StreamId::MIN, |item| StreamId::of(&item.event)).to_string());
    let Some(count) = full else {
        let last = service.range(&who, topic, all.0, all.1, 1, true, &mut budget).await?.pop();
        conn.out.text("groups");
        conn.out.int(groups.len() as i64);
        conn.out.text("first-entry");
        match &first {
            Some(item) => write_entry(conn, StreamId::of(&item.event), Some(item)),
            None => conn.out.null(),
        }
        conn.out.text("last-entry");
        match &last {
            Some(item) => write_entry(conn, StreamId::of(&item.event), Some(item)),
            None => conn.out.null(),
        }
        return Ok(());
    };
    let count = if count == 0 { usize::MAX } else { count };
    let entries = service.range(&who, topic, all.0, all.1, count, false, &mut budget).await?;
    conn.out.text("entries");
    write_items(conn, &entries);
    conn.out.text("groups");
    conn.out.array(groups.len());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    for group in groups {
        let (first, last) = (StreamId::MIN, StreamId::MAX);
        let rows = service.group_pending_rows(&who, topic, &group.name, first, last, count, None, 0).await?;
        let members = service.group_members(&who, topic, &group.name).await?;
        let out = &mut conn.out;
        out.map(7);
        out.text("name");
        out.bulk(&group.name);
        out.text("last-delivered-id");
        out.text(&group.last_delivered.to_string());
        out.text("entries-read");
        out.int(group.entries_read as i64);
        out.text("lag");
        out.int(group.lag as i64);
        out.text("pel-count");
        out.int(group.pending as i64);
        out.text("pending");
        out.array(rows.len());
        for row in &rows {
            out.array(4);
            out.text(&row.id.to_string());
            out.bulk(&row.consumer);
            out.int(now - row.idle_ms as i64);
            out.int(row.deliveries as i64);
        }
        conn.out.text("consumers");
        conn.out.array(members.len());
        for member in members {
            let rows =
                service.group_pending_rows(&who, topic, &group.name, first, last, count, Some(&member.name), 0).await?;
            let out = &mut conn.out;
            out.map(5);
            out.text("name");
            out.bulk(&member.name);
            out.text("seen-time");
            out.int(now - member.idle_ms as i64);
            out.text("active-time");
            out.int(member.inactive_ms.map_or(-1, |inactive| now - inactive as i64));
            out.text("pel-count");
            out.int(member.pending as i64);
            out.text("pending");
            out.array(rows.len());
            for row in &rows {
                out.array(3);
                out.text(&row.id.to_string());
                out.int(now - row.idle_ms as i64);
                out.int(row.deliveries as i64);
            }
        }
    }
    Ok(())
}
