//! Transactions: MULTI, EXEC, DISCARD, WATCH, UNWATCH.
//!
//! Between MULTI and EXEC commands are checked (known, arity, allowed
//! before AUTH, and for appends their whole syntax and the write right)
//! and queued; a command that fails the check is answered with its error
//! and makes EXEC answer `EXECABORT` with nothing applied. At EXEC every
//! append of the transaction (plain or optioned `XADD`, MeiliES `publish`)
//! goes into one atomic batch: all or nothing, one commit. The batch
//! commits where the first append stands in the queue; commands before it
//! see the store without the transaction's appends, commands after it see
//! all of them (Redis runs each command in turn, so a command placed
//! between two appends is the one case that differs: it sees both).
//! `MAXLEN`/`MINID` trims run at their command's place, after the batch.
//!
//! WATCH remembers a topic's last seq and entry count; EXEC answers a null
//! array, applying nothing, when a watched topic gained or lost entries
//! since. The batch also carries each watched topic's last seq as an
//! expectation, so an append that lands between that check and the commit
//! still aborts it.

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_service::{Batch, Event, Expect, NewEvent, ServiceError, StreamId, Topic, Trim};

use super::{meilies, streams, topic};
use crate::resp::conn::Conn;
use crate::resp::error::{CmdResult, Fail, err};
use crate::resp::table;

/// Commands one transaction may queue.
const QUEUED_COMMANDS_MAX: usize = cairn_service::limits::BATCH_EVENTS_MAX;
/// Argument bytes one transaction may queue.
const QUEUED_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Reply bytes one EXEC gathers before it answers its remaining reads with
/// an error (its replies are sent as one array, after the commit).
const EXEC_REPLY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Topics one connection may watch.
const WATCHED_MAX: usize = 1024;

/// A transaction being queued (between MULTI and EXEC).
#[derive(Default)]
pub(crate) struct Multi {
    queued: Vec<Queued>,
    bytes: usize,
    /// A command failed its check: EXEC answers EXECABORT.
    aborted: bool,
}

/// One queued command.
struct Queued {
    args: Vec<Bytes>,
    /// Set for an append, which joins the transaction's batch.
    append: Option<Append>,
    /// Whether the command writes (a write before the batch makes a batch
    /// refused for a watched topic answer per append instead of null).
    writes: bool,
}

/// An append of a transaction.
struct Append {
    /// Taken into the batch at EXEC.
    event: Option<NewEvent>,
    reply: Reply,
    nomkstream: bool,
    trim: Option<Trim>,
}

/// How an append answers.
#[derive(Clone, Copy)]
enum Reply {
    /// `XADD`: the entry id.
    Entry,
    /// MeiliES `publish`: `+OK`.
    Published,
}

/// A topic as WATCH saw it: `(last seq, entries)`, `None` when it had none.
type Seen = Option<(u64, u64)>;

/// Whether `args` is a command that controls the transaction (run at once,
/// never queued).
pub(crate) fn is_control(name: &[u8]) -> bool {
    [&b"exec"[..], b"discard", b"multi", b"watch", b"quit", b"reset"].iter().any(|c| name.eq_ignore_ascii_case(c))
}

/// Queues `args` in the connection's transaction, answering `+QUEUED` or
/// the error that makes EXEC answer `EXECABORT`.
pub(crate) fn queue(conn: &mut Conn, args: Vec<Bytes>) {
    let checked = check(conn, &args);
    let multi = conn.multi.as_mut().expect("queued only inside MULTI");
    let bytes: usize = 128 + args.iter().map(|arg| arg.len() + 64).sum::<usize>();
    let checked = checked.and_then(|queued| {
        if multi.queued.len() >= QUEUED_COMMANDS_MAX || multi.bytes + bytes > QUEUED_BYTES_MAX {
            return Err(err(format!(
                "a transaction queues at most {QUEUED_COMMANDS_MAX} commands and {} MiB; send it in parts",
                QUEUED_BYTES_MAX >> 20
            )));
        }
        Ok(queued)
    });
    match checked {
        Ok(queued) => {
            multi.bytes += bytes;
            multi.queued.push(queued);
            conn.out.simple("QUEUED");
        }
        Err(fail) => {
            multi.aborted = true;
            // What is queued is never run: free it now.
            multi.queued = Vec::new();
            conn.out.error(&fail.0);
        }
    }
}

/// Checks a command before queueing it.
fn check(conn: &Conn, args: &[Bytes]) -> Result<Queued, Fail> {
    let spec = table::check(conn, args)?;
    if spec.flags.contains(&"no-multi") {
        return Err(err("Command not allowed inside a transaction"));
    }
    let append = match spec.name {
        "xadd" => {
            let parsed = streams::XAdd::parse(args)?;
            Some(Append {
                event: Some(parsed.event),
                reply: Reply::Entry,
                nomkstream: parsed.nomkstream,
                trim: parsed.trim,
            })
        }
        "publish" if args.len() == 4 => Some(Append {
            event: Some(meilies::publish_event(args)?),
            reply: Reply::Published,
            nomkstream: false,
            trim: None,
        }),
        _ => None,
    };
    if let Some(append) = &append {
        let topic = append.event.as_ref().and_then(|event| event.topic.as_ref()).expect("parsed with a topic");
        conn.who()?.check_write(topic)?;
    }
    // Copies: slices would keep the whole read buffers they came in alive.
    let args = args.iter().map(|arg| Bytes::copy_from_slice(arg)).collect();
    Ok(Queued { args, append, writes: spec.flags.contains(&"write") })
}

pub(crate) async fn multi(conn: &mut Conn, _args: &[Bytes]) -> CmdResult {
    if conn.multi.is_some() {
        return Err(err("MULTI calls can not be nested"));
    }
    conn.multi = Some(Multi::default());
    conn.out.simple("OK");
    Ok(())
}

pub(crate) async fn discard(conn: &mut Conn, _args: &[Bytes]) -> CmdResult {
    if conn.multi.take().is_none() {
        return Err(err("DISCARD without MULTI"));
    }
    conn.watched.clear();
    conn.out.simple("OK");
    Ok(())
}

pub(crate) async fn watch(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    if conn.multi.is_some() {
        return Err(err("WATCH inside MULTI is not allowed"));
    }
    if conn.watched.len() + args.len() - 1 > WATCHED_MAX {
        return Err(err(format!("a connection watches at most {WATCHED_MAX} keys")));
    }
    for key in &args[1..] {
        let topic = topic(key)?;
        let seen = seen(conn, &topic).await?;
        conn.watched.push((topic, seen));
    }
    conn.out.simple("OK");
    Ok(())
}

pub(crate) async fn unwatch(conn: &mut Conn, _args: &[Bytes]) -> CmdResult {
    conn.watched.clear();
    conn.out.simple("OK");
    Ok(())
}

/// A topic's state as WATCH compares it (the caller must be able to read it).
async fn seen(conn: &Conn, topic: &Topic) -> Result<Seen, Fail> {
    let head = conn.app.service.head(conn.who()?, topic).await?;
    Ok(head.map(|head| (head.last_seq, head.count)))
}

pub(crate) async fn exec(conn: &mut Conn, _args: &[Bytes]) -> CmdResult {
    let Some(multi) = conn.multi.take() else {
        return Err(err("EXEC without MULTI"));
    };
    let watched = std::mem::take(&mut conn.watched);
    if multi.aborted {
        return Err(Fail("EXECABORT Transaction discarded because of previous errors.".to_owned()));
    }
    let mut expect = BTreeMap::new();
    for (topic, then) in &watched {
        if seen(conn, topic).await? != *then {
            conn.out.null_array();
            return Ok(());
        }
        expect.insert(topic.clone(), then.map_or(Expect::Empty, |(last_seq, _)| Expect::Seq(last_seq)));
    }
    let mut queued = multi.queued;
    let mut batch = Batch { expect, ..Batch::default() };
    // Where each append's event is in the batch; `None` for a NOMKSTREAM
    // append onto a topic that does not exist (it answers null).
    let mut slots: Vec<Option<usize>> = Vec::with_capacity(queued.len());
    for command in &mut queued {
        let Some(append) = &mut command.append else {
            slots.push(None);
            continue;
        };
        let event = append.event.take().expect("taken once");
        let topic = event.topic.clone().expect("parsed with a topic");
        if append.nomkstream && !batch.events.iter().any(|event| event.topic.as_ref() == Some(&topic)) {
            // Onto a topic that does not exist: this append answers null
            // (decided now for a topic the caller may read; otherwise the
            // whole batch expects the topic to exist).
            let who = conn.who()?;
            if who.can_read_topic(&topic) && conn.app.service.head(who, &topic).await?.is_none() {
                slots.push(None);
                continue;
            }
            batch.expect.entry(topic).or_insert(Expect::Exists);
        }
        slots.push(Some(batch.events.len()));
        batch.events.push(event);
    }
    let first_append = queued.iter().position(|command| command.append.is_some());
    let wrote_before = queued[..first_append.unwrap_or(0)].iter().any(|command| command.writes);

    // Replies are gathered apart so a transaction aborted at its commit
    // can answer null instead.
    let count = queued.len();
    let outer = std::mem::take(&mut conn.out.buf);
    conn.in_exec = true;
    let mut committed: Option<Result<Vec<Event>, Fail>> = None;
    let mut aborted_at_commit = false;
    for (index, (command, slot)) in queued.into_iter().zip(slots).enumerate() {
        if Some(index) == first_append {
            let result = if batch.events.is_empty() {
                Ok(Vec::new())
            } else {
                commit(conn, std::mem::take(&mut batch), &watched).await
            };
            if let Err(Aborted::Watched(_)) = &result
                && !wrote_before
            {
                aborted_at_commit = true;
                break;
            }
            committed = Some(result.map_err(Aborted::into_fail));
        }
        let Some(append) = command.append else {
            if conn.out.buf.len() > EXEC_REPLY_BYTES_MAX {
                conn.out.error(&format!(
                    "ERR not run: this EXEC's replies passed {} MiB; read in smaller transactions",
                    EXEC_REPLY_BYTES_MAX >> 20
                ));
                continue;
            }
            table::execute(conn, &command.args).await;
            continue;
        };
        let (Some(slot), Some(result)) = (slot, &committed) else {
            conn.out.null();
            continue;
        };
        match result {
            Ok(events) => {
                let event = &events[slot];
                if let Some(trim) = append.trim {
                    let topic = event.topic.clone();
                    let trimmed = match conn.who() {
                        Ok(who) => conn.app.service.trim(who, &topic, trim).await.map_err(Fail::from),
                        Err(fail) => Err(fail),
                    };
                    if let Err(fail) = trimmed {
                        conn.out.error(&fail.0);
                        continue;
                    }
                }
                match append.reply {
                    Reply::Entry => conn.out.bulk(StreamId::of(event).text(&mut [0; StreamId::TEXT_MAX])),
                    Reply::Published => conn.out.simple("OK"),
                }
            }
            Err(fail) => conn.out.error(&fail.0),
        }
    }
    conn.in_exec = false;
    let replies = std::mem::replace(&mut conn.out.buf, outer);
    if aborted_at_commit {
        conn.out.null_array();
    } else {
        conn.out.array(count);
        conn.out.buf.extend_from_slice(&replies);
    }
    Ok(())
}

/// Why a transaction's batch was not committed.
enum Aborted {
    /// A watched topic changed after EXEC checked it.
    Watched(Fail),
    Other(Fail),
}

impl Aborted {
    fn into_fail(self) -> Fail {
        match self {
            Aborted::Watched(fail) | Aborted::Other(fail) => fail,
        }
    }
}

async fn commit(conn: &Conn, batch: Batch, watched: &[(Topic, Seen)]) -> Result<Vec<Event>, Aborted> {
    let who = conn.who().map_err(Aborted::Other)?;
    match conn.app.service.append(who, batch).await {
        Ok(events) => Ok(events),
        Err(ServiceError::ExpectationFailed { topic, .. })
            if watched.iter().any(|(watched, _)| watched.as_str() == topic) =>
        {
            Err(Aborted::Watched(err(format!(
                "watched key '{topic}' changed while the transaction ran; none of its appends were applied"
            ))))
        }
        Err(error) => Err(Aborted::Other(Fail::from(error))),
    }
}
