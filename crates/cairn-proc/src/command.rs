//! Commands: one run of the program per event appended to `<name>.call`,
//! the event on stdin (the `cairn cat --content` form, then end of file).
//! Exit status 0: stdout becomes the payload of an event on
//! `<name>.response`; otherwise, or past `timeout_ms`, an event on
//! `<name>.error` says the exit code or signal, whether it timed out, and
//! the tail of stderr. Both carry the call's id as meta `call_id`.
//! At most `concurrency` runs at once. The position kept is the newest
//! call below which every call is answered, committed with each answer;
//! on start, calls after it are answered unless an answer is found, so
//! calls made while the server was down are answered once it runs
//! (a call whose run was cut short by a crash runs again).

use std::collections::{BTreeSet, HashSet};
use std::time::Instant;

use cairn_service::json::write_event;
use cairn_service::{Batch, Delivered, Event, EventId, FollowOptions, NewEvent, Pattern, Principal, Query};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinSet;

use crate::{Ctx, Ended, ended_by};

/// The tail of stderr kept in an error event.
const STDERR_TAIL_BYTES: usize = 4096;

/// Runs a command registration until it is stopped.
pub(crate) async fn run(ctx: &mut Ctx) {
    let mut backoff = ctx.spec.backoff;
    loop {
        let started = Instant::now();
        let ended = match ctx.who() {
            Err(reason) => Ended::Fatal(reason),
            Ok(who) => {
                ctx.set(|status| status.state = "running");
                session(ctx, &who).await
            }
        };
        if ctx.after_session(ended, started, &mut backoff).await.is_some() {
            return;
        }
    }
}

/// A call's answer.
struct Answer {
    call: EventId,
    event: NewEvent,
}

async fn session(ctx: &mut Ctx, who: &Principal) -> Ended {
    let after = match ctx.resume_after().await {
        Ok(after) => after,
        Err(error) => return ended_by("reading its position", error),
    };
    ctx.set(|status| status.position = after.map(|id| id.to_string()));
    // Answers already given after the position (runs that finished while
    // an older call still ran).
    let mut answered = HashSet::new();
    for suffix in ["response", "error"] {
        let query = Query { after, ..Query::new(Pattern::Exact(ctx.topic(suffix))) };
        match ctx.service.read_all(who, query, false).await {
            // Only its own answers count (stamped with its user): a writer
            // of the same topic cannot silence a call.
            Ok(items) => answered.extend(
                items.iter().filter(|item| item.event.user == ctx.user).filter_map(|item| call_id(&item.event)),
            ),
            Err(error) => return ended_by("reading its answers", error),
        }
    }
    let options = FollowOptions { content: true, ..FollowOptions::default() };
    let calls = Pattern::Exact(ctx.topic("call"));
    let mut follow = match ctx.service.follow_patterns(who, &[calls], after, options).await {
        Ok(follow) => crate::follow_in_task(follow, ctx.spec.concurrency),
        Err(error) => return ended_by("following its call topic", error),
    };
    let payload_max = usize::try_from(ctx.service.limits().payload_bytes_max).unwrap_or(usize::MAX);
    let mut outstanding: BTreeSet<EventId> = BTreeSet::new();
    let mut newest = after;
    let mut runs: JoinSet<Answer> = JoinSet::new();
    // Calls received, not running yet (at most `concurrency`).
    let mut waiting: std::collections::VecDeque<(EventId, Vec<u8>)> = std::collections::VecDeque::new();
    let mut stop = ctx.stop.clone();
    loop {
        while runs.len() < ctx.spec.concurrency
            && let Some((call, line)) = waiting.pop_front()
        {
            let job = Job { spec: ctx.spec.clone(), name: ctx.name.clone(), proc_id: ctx.proc_id, payload_max };
            runs.spawn(async move { Answer { call, event: job.run(call, line).await } });
        }
        tokio::select! {
            biased;
            why = async { stop.wait_for(Option::is_some).await.map_or(crate::Stop::Shutdown, |why| (*why).expect("stop is set")) } => {
                // Runs cut short are answered next time.
                runs.shutdown().await;
                return Ended::Stopped(why);
            }
            Some(done) = runs.join_next(), if !runs.is_empty() => {
                let Ok(answer) = done else { continue };
                outstanding.remove(&answer.call);
                let watermark = match outstanding.first() {
                    Some(oldest) => EventId::from_u128(oldest.to_u128() - 1),
                    None => newest.unwrap_or(answer.call),
                };
                let batch = Batch { events: vec![answer.event], ..Batch::default() };
                let system = vec![ctx.position_event(watermark)];
                match ctx.service.append_with_system(who, batch, system, ctx.fence()).await {
                    Ok(events) => ctx.committed(&events),
                    Err(error) => {
                        runs.shutdown().await;
                        return crate::commit_failed("appending an answer", error);
                    }
                }
                ctx.set(|status| {
                    status.position = Some(watermark.to_string());
                    status.in_flight = outstanding.len();
                });
            }
            delivered = follow.recv(), if waiting.len() < ctx.spec.concurrency => {
                let delivered = match delivered {
                    Some(Ok(delivered)) => delivered,
                    Some(Err(error)) => {
                        runs.shutdown().await;
                        return ended_by("reading its calls", error);
                    }
                    None => {
                        runs.shutdown().await;
                        return Ended::Retry("its calls' follow ended".to_owned());
                    }
                };
                for item in delivered {
                    let Delivered::Event(event, content) = item else { continue };
                    newest = Some(event.id);
                    if answered.remove(&event.id) {
                        continue;
                    }
                    outstanding.insert(event.id);
                    let mut line = Vec::new();
                    write_event(&mut line, &event, content.as_deref());
                    line.push(b'\n');
                    waiting.push_back((event.id, line));
                }
                ctx.set(|status| status.in_flight = outstanding.len());
            }
        }
    }
}

fn call_id(event: &Event) -> Option<EventId> {
    let meta: serde_json::Value = serde_json::from_str(event.meta.as_deref()?).ok()?;
    EventId::parse(meta.get("call_id")?.as_str()?).ok()
}

struct Job {
    spec: crate::spec::Spec,
    name: String,
    proc_id: EventId,
    payload_max: usize,
}

impl Job {
    async fn run(self, call: EventId, line: Vec<u8>) -> NewEvent {
        let mut meta = serde_json::json!({
            "call_id": call.to_string(),
            "proc_id": self.proc_id.to_string(),
            "proc": self.name,
        });
        let mut command = crate::child::command(&self.spec, &self.name, &self.proc_id.to_string());
        command.env("CAIRN_CALL_ID", call.to_string());
        let topic = |suffix: &str| cairn_service::Topic::new(&format!("{}.{suffix}", self.name)).expect("valid topic");
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                meta["reason"] = format!("could not start {:?}: {error}", self.spec.argv[0]).into();
                return NewEvent { topic: Some(topic("error")), meta: Some(meta.to_string()), ..NewEvent::default() };
            }
        };
        let pid = child.id().unwrap_or_default();
        // Declared after the child, so dropped (the run aborted) first.
        let mut guard = crate::child::GroupGuard(Some(pid));
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let feed = async move {
            let _ = stdin.write_all(&line).await;
            drop(stdin);
        };
        let work = async {
            let ((), out, err, status) =
                tokio::join!(feed, read_bounded(stdout, self.payload_max), read_tail(stderr), child.wait());
            (out, err, status)
        };
        let outcome = tokio::time::timeout(self.spec.timeout, work).await;
        // Whatever the program left running goes; its group is still its
        // own (the child is not reaped on a timeout, and just reaped
        // otherwise).
        crate::child::kill_group(pid, rustix::process::Signal::KILL);
        guard.0 = None;
        let (out, err, status) = match outcome {
            Ok(done) => done,
            Err(_) => {
                meta["timeout"] = true.into();
                meta["reason"] = format!("no answer within {} ms", self.spec.timeout.as_millis()).into();
                return NewEvent { topic: Some(topic("error")), meta: Some(meta.to_string()), ..NewEvent::default() };
            }
        };
        let status = status.ok();
        let (reason, fields) = crate::child::describe(status);
        match (status.is_some_and(|status| status.success()), out) {
            (true, Some(out)) => NewEvent {
                topic: Some(topic("response")),
                meta: Some(meta.to_string()),
                payload: Some(out),
                ..NewEvent::default()
            },
            (ok, out) => {
                if let (Some(meta), serde_json::Value::Object(fields)) = (meta.as_object_mut(), fields) {
                    meta.extend(fields);
                }
                meta["reason"] = if ok && out.is_none() {
                    format!("its output is over {} bytes", self.payload_max).into()
                } else {
                    reason.into()
                };
                meta["stderr"] = String::from_utf8_lossy(&err).into_owned().into();
                NewEvent { topic: Some(topic("error")), meta: Some(meta.to_string()), ..NewEvent::default() }
            }
        }
    }
}

/// Everything up to `max` bytes; `None` past it (read to the end anyway,
/// so the program is not stopped by a full pipe).
async fn read_bounded(mut reader: impl AsyncRead + Unpin, max: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut over = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return if over { None } else { Some(out) },
            Ok(n) if !over && out.len() + n <= max => out.extend_from_slice(&buf[..n]),
            Ok(_) => {
                over = true;
                out = Vec::new();
            }
        }
    }
}

/// The last [`STDERR_TAIL_BYTES`] of a stream.
async fn read_tail(mut reader: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return tail,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_TAIL_BYTES {
                    tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                }
            }
        }
    }
}
