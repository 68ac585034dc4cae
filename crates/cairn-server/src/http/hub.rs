//! The evt hub protocol on WebSocket at `/v1/hub` (seed 003): text messages
//! `subj#tok\n<json>`, replies echoing `subj#tok` with `{"res": …}` or
//! `{"err": "…"}`, pushes `evt.update\n{rev, evs, note}`. Authenticated by
//! the front door as every route; every call goes through the service as
//! the connection's principal.
//!
//! - `evt.pub` (a transaction) → `{rev, evs}`; subscribers get the events
//!   pushed.
//! - `evt.sub {rev, tops}` → `true`, then the events of those topics after
//!   `rev`, then live ones, as updates; `evt.unsub {tops}` (empty: all).
//! - `evt.mon {rev, watch: [{top, keys}]}` → a monitor id, then notes
//!   `{mon, watch: [{top, key}]}` naming the keys that changed (`"new"`
//!   matches any creation on the topic); `evt.unmon {mon}`.
//! - `evt.sat {rev | after, trans, tops}` (a satellite sending what it
//!   queued): each transaction (each with an `id`) is checked and
//!   committed on its own, in order, and answered in a list: `{rev, ids}`
//!   or `{err, keys?}` (`retry: true` when the hub could not decide now);
//!   a resent one is answered as the first time. With `tops`, a
//!   subscription as `evt.sub` starts too.
//! - `evt.stat` → `{rev, mig, on, off}`.
//!
//! `evt.sub` and `evt.sat` take topic patterns (`orders.>`) in `tops`,
//! and `after` (an event id) instead of `rev` to resume exactly after an
//! event of this server; the events pushed carry `tx`, `usr`, `created`
//! and `extra` when their transaction had them, and on a satellite `hub`,
//! the event's id on its hub.
//! - A subject starting with `_` closes the connection; the server pings
//!   every 30 s. The server ends a connection with `evt.close {err}` (its
//!   last message) when its credentials are revoked or one of its follows
//!   fails.
//!
//! Revisions are written as Go writes times: RFC 3339, UTC, milliseconds,
//! zero as `0001-01-01T00:00:00Z`; they are read in that form or as
//! milliseconds. Pushes go out as follows deliver them: whatever is ready
//! at once in one update (so they coalesce under load), and a client that
//! reads slowly makes its follows fall behind and read from storage,
//! never holding up a publisher and never dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::extract::State as AxumState;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use cairn_service::{Delivered, Event, FollowOptions, Pattern, Principal, Service, Topic, Trans};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{State, Who};

/// The subject of the message that ends a connection.
const CLOSE: &str = "evt.close";

/// Connections open on the hub (for `evt.stat`).
static ON: AtomicU64 = AtomicU64::new(0);
/// Messages queued for a client at most; then follows wait (and read from
/// storage once the live ring has moved on).
const QUEUE: usize = 64;
/// Follows (subscriptions and monitors) per connection at most.
const FOLLOWS_MAX: usize = 256;

/// `GET /v1/hub`: upgrades to the hub protocol.
pub(crate) async fn upgrade(AxumState(app): State, Who(principal): Who, ws: WebSocketUpgrade) -> Response {
    let service = app.service.clone();
    let stopping = app.stopping.clone();
    ws.max_message_size(super::super::http::HUB_MESSAGE_BYTES_MAX)
        .on_upgrade(move |socket| serve(socket, service, principal, stopping))
        .into_response()
}

/// A follow feeding this connection, and what it was asked for.
struct Follow {
    task: JoinHandle<()>,
    topics: Vec<String>,
}

async fn serve(socket: WebSocket, service: Service, who: Principal, mut stopping: tokio::sync::watch::Receiver<bool>) {
    ON.fetch_add(1, Relaxed);
    let (mut sink, mut stream) = socket.split();
    let (send, mut outgoing) = mpsc::channel::<String>(QUEUE);
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(Duration::from_secs(30));
        ping.tick().await;
        loop {
            let mut last = false;
            let message = tokio::select! {
                text = outgoing.recv() => match text {
                    Some(text) => {
                        // `evt.close` is the last message: the connection ends.
                        last = text.starts_with(CLOSE) && text[CLOSE.len()..].starts_with('\n');
                        Message::Text(text.into())
                    }
                    None => break,
                },
                _ = ping.tick() => Message::Ping(Vec::new().into()),
            };
            if sink.send(message).await.is_err() || last {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut subs: Vec<Follow> = Vec::new();
    let mut mons: HashMap<u64, Follow> = HashMap::new();
    let mut next_mon = 1u64;
    let mut sessions = service.session_changes();
    loop {
        let message = tokio::select! {
            () = crate::server::stopped(&mut stopping) => break,
            changed = sessions.changed() => {
                // A revoked credential ends the connection, not only its follows.
                if changed.is_err() || !service.is_current(&who) {
                    let _ = send.send(reply(CLOSE, Err("the session's credentials were revoked".to_owned()))).await;
                    break;
                }
                continue;
            }
            message = stream.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                let _ = send.send(reply("", Err("messages are text: subj#tok\\n<json>".to_owned()))).await;
                continue;
            }
            _ => break,
        };
        let (head, body) = text.split_once('\n').unwrap_or((text.as_str(), ""));
        let subject = head.split_once('#').map_or(head, |(subject, _)| subject);
        if subject.starts_with('_') {
            break;
        }
        let body: serde_json::Value = if body.trim().is_empty() {
            serde_json::Value::Null
        } else {
            match serde_json::from_str(body) {
                Ok(body) => body,
                Err(error) => {
                    let _ = send.send(reply(head, Err(format!("not JSON: {error}")))).await;
                    continue;
                }
            }
        };
        let answer = match subject {
            "evt.stat" => stat(&service).await,
            "evt.pub" => publish(&service, &who, body).await,
            "evt.sat" => {
                let follows = subs.len() + mons.len();
                satellite(&service, &who, body, &send, follows).await.map(|(results, follow)| {
                    subs.extend(follow);
                    results
                })
            }
            "evt.sub" => {
                let follows = subs.len() + mons.len();
                subscribe(&service, &who, body, &send, follows).await.map(|follow| {
                    subs.push(follow);
                    serde_json::Value::Bool(true)
                })
            }
            "evt.unsub" => {
                let tops: Vec<String> =
                    body.get("tops").and_then(|tops| serde_json::from_value(tops.clone()).ok()).unwrap_or_default();
                subs.retain(|follow| {
                    let drop = tops.is_empty() || follow.topics.iter().all(|topic| tops.contains(topic));
                    if drop {
                        follow.task.abort();
                    }
                    !drop
                });
                Ok(serde_json::Value::Bool(true))
            }
            "evt.mon" => {
                let follows = subs.len() + mons.len();
                let mon = next_mon;
                monitor(&service, &who, body, &send, mon, follows).await.map(|follow| {
                    next_mon += 1;
                    mons.insert(mon, follow);
                    serde_json::json!(mon)
                })
            }
            "evt.unmon" => {
                match body.get("mon").and_then(serde_json::Value::as_u64).and_then(|mon| mons.remove(&mon)) {
                    Some(follow) => {
                        follow.task.abort();
                        Ok(serde_json::Value::Bool(true))
                    }
                    None => Err("no such monitor".to_owned()),
                }
            }
            other => Err(format!("unknown subject {other:?}")),
        };
        if send.send(reply(head, answer)).await.is_err() {
            break;
        }
    }
    for follow in subs.into_iter().chain(mons.into_values()) {
        follow.task.abort();
    }
    drop(send);
    let _ = writer.await;
    ON.fetch_sub(1, Relaxed);
}

fn reply(head: &str, answer: Result<serde_json::Value, String>) -> String {
    let body = match answer {
        Ok(res) => serde_json::json!({ "res": res }),
        Err(err) => serde_json::json!({ "err": err }),
    };
    format!("{head}\n{body}")
}

async fn stat(service: &Service) -> Result<serde_json::Value, String> {
    let rev = service.hub_rev().await.map_err(|error| error.to_string())?;
    Ok(serde_json::json!({ "rev": rev_text(rev), "mig": 0, "on": ON.load(Relaxed), "off": 0 }))
}

/// A transaction from its JSON, times as Go writes them or milliseconds.
fn trans_of(mut body: serde_json::Value) -> Result<Trans, String> {
    for field in ["base", "created"] {
        if let Some(value) = body.get(field).cloned() {
            body[field] = match rev_of(&value) {
                Some(0) => serde_json::Value::Null,
                Some(ms) => ms.into(),
                None => return Err(format!("{field}: not a time (RFC 3339) or milliseconds")),
            };
        }
    }
    serde_json::from_value(body).map_err(|error| format!("a transaction: {error}"))
}

async fn publish(service: &Service, who: &Principal, body: serde_json::Value) -> Result<serde_json::Value, String> {
    let trans = trans_of(body)?;
    let committed = service.publish(who, trans).await.map_err(|error| error.to_string())?;
    if let Some(tx) = committed.queued {
        // A satellite queued it for the hub.
        return Ok(serde_json::json!({ "rev": rev_text(committed.rev), "evs": [], "queued": tx }));
    }
    let mut evs = Vec::with_capacity(committed.events.len());
    for event in &committed.events {
        let content = match event.inline_payload() {
            Some(bytes) => Some(bytes.to_vec()),
            None => service.content(who, event).await.map_err(|error| error.to_string())?,
        };
        evs.extend(ev(event, content.as_deref()));
    }
    Ok(serde_json::json!({ "rev": rev_text(committed.rev), "evs": evs }))
}

/// Transactions in one `evt.sat` at most.
const SAT_TRANS_MAX: usize = 1000;

/// `evt.sat`: the transactions a satellite queued, each committed on its
/// own and answered in order; then, with `tops`, a subscription.
async fn satellite(
    service: &Service,
    who: &Principal,
    body: serde_json::Value,
    send: &mpsc::Sender<String>,
    follows: usize,
) -> Result<(serde_json::Value, Option<Follow>), String> {
    let list: Vec<serde_json::Value> = match body.get("trans") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(trans) => serde_json::from_value(trans.clone()).map_err(|error| format!("trans: {error}"))?,
    };
    if list.len() > SAT_TRANS_MAX {
        return Err(format!("trans: at most {SAT_TRANS_MAX} transactions at once"));
    }
    // Parsed first, so every one is answered; committed together, in
    // order (each queues before the next is polled), in groups.
    let parsed: Vec<Result<Trans, String>> = list
        .into_iter()
        .map(|body| {
            let trans = trans_of(body)?;
            if trans.id.is_none() {
                return Err("a satellite's transaction needs an id".to_owned());
            }
            Ok(trans)
        })
        .collect();
    // The subscription first: refused (no read right, a bad pattern), it
    // refuses the whole message before anything is committed.
    let follow = match body.get("tops") {
        None | Some(serde_json::Value::Null) => None,
        Some(_) => Some(subscribe(service, who, body.clone(), send, follows).await?),
    };
    let outcomes = futures_util::future::join_all(parsed.into_iter().map(|trans| async move {
        match trans {
            Err(err) => serde_json::json!({ "err": err }),
            Ok(trans) => match service.publish(who, trans).await {
                Ok(committed) => serde_json::json!({
                    "rev": rev_text(committed.rev),
                    "ids": committed.ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
                }),
                Err(error) => {
                    // Final only what the hub decided about the transaction
                    // (and recorded, for a resend); anything else may go
                    // otherwise when sent again.
                    use cairn_service::ServiceError;
                    let retry = !matches!(
                        error,
                        ServiceError::Invalid { .. } | ServiceError::Conflict { .. } | ServiceError::Forbidden { .. }
                    );
                    let keys = match &error {
                        cairn_service::ServiceError::Conflict { keys } => keys.clone(),
                        _ => Vec::new(),
                    };
                    serde_json::json!({ "err": error.to_string(), "keys": keys, "retry": retry })
                }
            },
        }
    }))
    .await;
    Ok((serde_json::Value::Array(outcomes), follow))
}

/// An action's event in the hub's form `{id, rev, top, key, cmd, arg}`,
/// with its transaction's `tx`, `usr`, `created` and `extra` if it had them.
fn ev(event: &Event, content: Option<&[u8]>) -> Option<serde_json::Value> {
    let (key, cmd, rev, arg) = cairn_service::action_of(event, content)?;
    let arg = if cmd == cairn_service::Cmd::Del { serde_json::Value::Null } else { serde_json::Value::Object(arg) };
    let mut ev = serde_json::json!({ "id": event.id, "rev": rev_text(rev), "top": event.topic, "key": key, "cmd": cmd, "arg": arg });
    if let Some(meta) = cairn_service::action_meta(event) {
        if let Some(tx) = meta.tx {
            ev["tx"] = tx.into();
        }
        if let Some(created) = meta.created {
            ev["created"] = rev_text(created).into();
        }
        if let Some(extra) = meta.extra {
            ev["extra"] = extra;
        }
        if let Some(hub) = meta.hub {
            // On a satellite: the event's id on its hub.
            ev["hub"] = hub.to_string().into();
        }
    }
    if let Some(user) = &event.user {
        ev["usr"] = user.clone().into();
    }
    Some(ev)
}

/// The topics or topic patterns of `field`.
fn topics_of(body: &serde_json::Value, field: &str) -> Result<Vec<Pattern>, String> {
    let names: Vec<String> = body
        .get(field)
        .map(|tops| serde_json::from_value(tops.clone()).map_err(|error| format!("{field}: {error}")))
        .transpose()?
        .unwrap_or_default();
    if names.is_empty() {
        return Err(format!("{field}: at least one topic"));
    }
    if names.len() > FOLLOWS_MAX {
        return Err(format!("{field}: at most {FOLLOWS_MAX} topics"));
    }
    names.iter().map(|name| Pattern::parse(name).map_err(|error| error.to_string())).collect()
}

/// The task of a subscription or monitor: each step of `follow` made into
/// an update by `update` (none: nothing to push) and queued for the
/// client. A follow that fails ends its connection (with `evt.close` and
/// the reason): a client must not go on believing it is subscribed.
fn push_updates(
    mut follow: cairn_service::Follow,
    send: mpsc::Sender<String>,
    mut update: impl FnMut(Vec<Delivered>) -> Option<serde_json::Value> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let delivered = match follow.next(256).await {
                Ok(delivered) => delivered,
                Err(error) => {
                    let _ = send.try_send(reply(CLOSE, Err(format!("a subscription ended: {error}"))));
                    return;
                }
            };
            let Some(update) = update(delivered) else { continue };
            if send.send(format!("evt.update\n{update}")).await.is_err() {
                return;
            }
        }
    })
}

/// `evt.sub`: a follow of the topics from their start, pushing the actions
/// after `rev` as updates.
async fn subscribe(
    service: &Service,
    who: &Principal,
    body: serde_json::Value,
    send: &mpsc::Sender<String>,
    follows: usize,
) -> Result<Follow, String> {
    if follows >= FOLLOWS_MAX {
        return Err(format!("at most {FOLLOWS_MAX} subscriptions and monitors per connection"));
    }
    let since = match body.get("after") {
        None | Some(serde_json::Value::Null) => None,
        Some(after) => Some(
            after.as_str().and_then(|id| id.parse::<cairn_service::EventId>().ok()).ok_or("after: not an event id")?,
        ),
    };
    let after = match since {
        Some(_) => 0,
        None => body.get("rev").map_or(Some(0), rev_of).ok_or("rev: not a time (RFC 3339) or milliseconds")?,
    };
    let patterns = topics_of(&body, "tops")?;
    let options = FollowOptions { content: true, ..FollowOptions::default() };
    let follow = service.follow_patterns(who, &patterns, since, options).await.map_err(|error| error.to_string())?;
    let task = push_updates(follow, send.clone(), move |delivered| {
        let mut evs = Vec::new();
        let mut last = 0;
        for item in delivered {
            let Delivered::Event(event, content) = item else { continue };
            let Some(ev) = ev(&event, content.as_deref()) else { continue };
            let rev = rev_of(&ev["rev"]).unwrap_or_default();
            if rev > after {
                last = last.max(rev);
                evs.push(ev);
            }
        }
        (!evs.is_empty()).then(|| serde_json::json!({ "rev": rev_text(last), "evs": evs, "note": [] }))
    });
    Ok(Follow { task, topics: patterns.iter().map(ToString::to_string).collect() })
}

/// `evt.mon`: notes naming the watched keys that change after `rev`.
async fn monitor(
    service: &Service,
    who: &Principal,
    body: serde_json::Value,
    send: &mpsc::Sender<String>,
    mon: u64,
    follows: usize,
) -> Result<Follow, String> {
    if follows >= FOLLOWS_MAX {
        return Err(format!("at most {FOLLOWS_MAX} subscriptions and monitors per connection"));
    }
    let after = body.get("rev").map_or(Some(0), rev_of).ok_or("rev: not a time (RFC 3339) or milliseconds")?;
    #[derive(serde::Deserialize)]
    struct Watch {
        top: String,
        keys: Vec<String>,
    }
    let watch: Vec<Watch> = body
        .get("watch")
        .map(|watch| serde_json::from_value(watch.clone()).map_err(|error| format!("watch: {error}")))
        .transpose()?
        .unwrap_or_default();
    if watch.is_empty() {
        return Err("watch: at least one {top, keys}".to_owned());
    }
    let mut keys: HashMap<String, Vec<String>> = HashMap::new();
    for entry in &watch {
        Topic::new(&entry.top).map_err(|error| error.to_string())?;
        keys.entry(entry.top.clone()).or_default().extend(entry.keys.iter().cloned());
    }
    let patterns: Vec<Pattern> = keys
        .keys()
        .map(|top| Topic::new(top).map(Pattern::Exact).map_err(|error| error.to_string()))
        .collect::<Result<_, _>>()?;
    let options = FollowOptions { content: false, ..FollowOptions::default() };
    let follow = service.follow_patterns(who, &patterns, None, options).await.map_err(|error| error.to_string())?;
    let topics: Vec<String> = keys.keys().cloned().collect();
    let task = push_updates(follow, send.clone(), move |delivered| {
        let mut changed = Vec::new();
        let mut last = 0;
        for item in delivered {
            let Delivered::Event(event, _) = item else { continue };
            let Some((key, cmd, rev, _)) = cairn_service::action_of(&event, None) else { continue };
            let Some(watched) = keys.get(event.topic.as_str()) else { continue };
            let matches =
                watched.contains(&key) || (cmd == cairn_service::Cmd::New && watched.iter().any(|k| k == "new"));
            if rev > after && matches {
                last = last.max(rev);
                changed.push(serde_json::json!({ "top": event.topic, "key": key }));
            }
        }
        (!changed.is_empty()).then(
            || serde_json::json!({ "rev": rev_text(last), "evs": [], "note": [{ "mon": mon, "watch": changed }] }),
        )
    });
    Ok(Follow { task, topics })
}

/// A revision (milliseconds since 1970) as Go writes a time: RFC 3339 in
/// UTC with milliseconds; zero as Go's zero time.
pub(crate) fn rev_text(ms: u64) -> String {
    if ms == 0 {
        return "0001-01-01T00:00:00Z".to_owned();
    }
    let (days, rest) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second, milli) = (rest / 3_600_000, rest / 60_000 % 60, rest / 1000 % 60, rest % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// A revision from JSON: milliseconds, or an RFC 3339 time (UTC `Z` or an
/// offset; Go's zero time is 0).
pub(crate) fn rev_of(value: &serde_json::Value) -> Option<u64> {
    if let Some(ms) = value.as_u64() {
        return Some(ms);
    }
    let text = value.as_str()?;
    if text.starts_with("0001-01-01T00:00:00") {
        return Some(0);
    }
    let bytes = text.as_bytes();
    let number = |from: usize, len: usize| -> Option<i64> {
        let part = text.get(from..from + len)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())?
    };
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || !matches!(bytes[10], b'T' | b't') {
        return None;
    }
    let (year, month, day) = (number(0, 4)?, number(5, 2)?, number(8, 2)?);
    let (hour, minute, second) = (number(11, 2)?, number(14, 2)?, number(17, 2)?);
    let mut at = 19;
    let mut milli = 0i64;
    if bytes.get(at) == Some(&b'.') {
        let digits = text[at + 1..].bytes().take_while(u8::is_ascii_digit).count();
        let fraction = &text[at + 1..at + 1 + digits];
        milli = format!("{fraction:0<3}")[..3].parse().ok()?;
        at += 1 + digits;
    }
    let offset_minutes = match text.get(at..)? {
        "Z" | "z" => 0,
        zone if zone.len() == 6 => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            sign * (number(at + 1, 2)? * 60 + number(at + 4, 2)?)
        }
        _ => return None,
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let ms = ((days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60) * 1000) + milli;
    u64::try_from(ms).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (the inverse).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_read_and_write_as_go_writes_times() {
        assert_eq!(rev_text(0), "0001-01-01T00:00:00Z");
        assert_eq!(rev_text(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(rev_of(&serde_json::json!("2026-01-01T00:00:00.123Z")), Some(1_767_225_600_123));
        assert_eq!(rev_of(&serde_json::json!("2026-01-01T01:00:00.123+01:00")), Some(1_767_225_600_123));
        assert_eq!(rev_of(&serde_json::json!("0001-01-01T00:00:00Z")), Some(0));
        assert_eq!(rev_of(&serde_json::json!(42)), Some(42));
        assert_eq!(rev_of(&serde_json::json!("2026-13-01T00:00:00Z")), None);
        assert_eq!(rev_of(&serde_json::json!("yesterday")), None);
        for ms in [1u64, 951_782_400_000, 4_102_444_799_999, 1_709_164_800_001] {
            assert_eq!(rev_of(&serde_json::json!(rev_text(ms))), Some(ms));
        }
    }
}
