//! Handlers: the events of their topics in, outputs out, exactly once in
//! effect.
//!
//! The protocol: the handler reads one event per line on stdin (the
//! `cairn cat --content` form) and, for each, in order, writes zero or
//! more output lines (the `cairn append --batch` line form, `topic`
//! defaulting to `<name>.out`) and then **one empty line**, which says it
//! is done with that input. Inputs are written ahead (up to
//! `WINDOW` at a time), so a handler that reads a line, answers and reads
//! the next keeps the pipe full.
//!
//! The outputs of the inputs done so far and the position past the last
//! of them commit in one atomic batch (the position is
//! `cairn.proc.<name>.pos`, only its newest event kept), so a kill of the
//! server or of the handler at any moment means the inputs after the
//! committed position are handed over again and nothing before it is:
//! no input skipped, no output appended twice. Inputs with no output
//! advance the position too (a batch of the position alone, at most every
//! `POSITION_EVERY` when nothing else commits).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use cairn_service::json::{BatchEventJson, batch_from_json, write_event};
use cairn_service::{Batch, Delivered, Event, EventId, FollowOptions, NewEvent, Principal, limits};
use tokio::task::JoinHandle;

use crate::child::{self, Line, Running};
use crate::{Ctx, Ended, PREFIX, ended_by};

/// Inputs handed to the program and not done yet, at most.
const WINDOW: usize = 256;
/// A commit carries at most this many output events ...
const COMMIT_EVENTS_MAX: usize = 4096;
/// ... or about this many bytes of them; reading stdout waits meanwhile.
const COMMIT_BYTES_MAX: usize = 4 * 1024 * 1024;
/// One input may cause at most this many outputs ...
const OUTPUTS_PER_INPUT_MAX: usize = limits::BATCH_EVENTS_MAX / 2;
/// ... of at most this many bytes together (a record holds 32 MiB).
const OUTPUT_BYTES_PER_INPUT_MAX: usize = 24 * 1024 * 1024;
/// A position with no outputs waits this long for company.
const POSITION_EVERY: Duration = Duration::from_millis(200);

enum Slot {
    /// An input handed to the program.
    Input { id: EventId, sent: Instant },
    /// An event the handler does not get (its own output, its own topics):
    /// done as soon as the inputs before it are.
    Skip(EventId),
}

struct Session<'a> {
    ctx: &'a Ctx,
    who: &'a Principal,
    queue: VecDeque<Slot>,
    /// Outputs of the input at the front, not done yet, and their bytes.
    outputs: Vec<NewEvent>,
    output_bytes: usize,
    /// Outputs of inputs done, not committed yet, and the position past
    /// them.
    pending: Vec<NewEvent>,
    pending_bytes: usize,
    pending_position: Option<EventId>,
    position_since: Option<tokio::time::Instant>,
    /// The commit in flight, and the position it carries.
    commit: Option<(JoinHandle<cairn_service::Result<Vec<Event>>>, EventId)>,
    /// A commit failed: nothing more commits in this session (a later
    /// position would skip the failed commit's inputs).
    failed: bool,
}

/// One run of the program, until it exits or the handler must stop; the
/// program is stopped by the caller (`Ctx::run_program`).
pub(crate) async fn session(ctx: &mut Ctx, who: &Principal, running: &mut Running) -> Ended {
    let after = match ctx.resume_after().await {
        Ok(after) => after,
        Err(error) => return ended_by("reading its position", error),
    };
    ctx.set(|status| status.position = after.map(|id| id.to_string()));
    let options = FollowOptions { content: true, ..FollowOptions::default() };
    let mut follow = match ctx.service.follow_patterns(who, &ctx.spec.topics, after, options).await {
        Ok(follow) => crate::follow_in_task(follow, 64),
        Err(error) => return ended_by("following its topics", error),
    };
    let stdin = running.stdin.take().expect("a handler's stdin is piped");
    let mut to_write: VecDeque<Vec<u8>> = VecDeque::new();
    let mut stop = ctx.stop.clone();
    let mut s = Session {
        ctx,
        who,
        queue: VecDeque::new(),
        outputs: Vec::new(),
        output_bytes: 0,
        pending: Vec::new(),
        pending_bytes: 0,
        pending_position: None,
        position_since: None,
        commit: None,
        failed: false,
    };
    let ended = loop {
        if let Err(ended) = s.maybe_commit(false) {
            break ended;
        }
        let position_due = s.position_since.map(|since| since + POSITION_EVERY);
        let room = s.pending.len() < COMMIT_EVENTS_MAX && s.pending_bytes < COMMIT_BYTES_MAX;
        tokio::select! {
            biased;
            why = async { stop.wait_for(Option::is_some).await.map_or(crate::Stop::Shutdown, |why| (*why).expect("stop is set")) } => {
                break Ended::Stopped(why);
            }
            done = async { (&mut s.commit.as_mut().expect("a commit is in flight").0).await }, if s.commit.is_some() => {
                let (_, position) = s.commit.take().expect("a commit is in flight");
                if let Err(ended) = s.committed(done, position) {
                    break ended;
                }
            }
            line = running.stdout.recv(), if room => match line {
                None => break Ended::Exited(None),
                Some(Line::TooLong) => break Ended::Fatal(format!("it printed a line over {} bytes", child::LINE_BYTES_MAX)),
                Some(Line::Line(line)) => {
                    if let Err(reason) = s.output(&line) {
                        break Ended::Fatal(reason);
                    }
                }
            },
            permit = stdin.reserve(), if !to_write.is_empty() => match permit {
                Ok(permit) => permit.send(to_write.pop_front().expect("something to write")),
                Err(_) => break Ended::Exited(None),
            },
            delivered = follow.recv(), if s.queue.len() < WINDOW && to_write.len() < 16 => match delivered {
                None => break Ended::Retry("its inputs' follow ended".to_owned()),
                Some(Err(error)) => break ended_by("reading its inputs", error),
                Some(Ok(delivered)) => {
                    let mut lines = Vec::new();
                    for item in delivered {
                        let Delivered::Event(event, content) = item else { continue };
                        if s.skips(&event) {
                            s.skip(event.id);
                        } else {
                            write_event(&mut lines, &event, content.as_deref());
                            lines.push(b'\n');
                            s.queue.push_back(Slot::Input { id: event.id, sent: Instant::now() });
                        }
                    }
                    if !lines.is_empty() {
                        to_write.push_back(lines);
                    }
                }
            },
            () = async { tokio::time::sleep_until(position_due.expect("due")).await }, if position_due.is_some() && s.commit.is_none() => {
                if let Err(ended) = s.maybe_commit(true) {
                    break ended;
                }
            }
        }
        s.report();
    };
    // Whatever was done commits before the program goes; inputs not done
    // are handed over again next time.
    match s.flush().await {
        Err(flush) if !matches!(ended, Ended::Fatal(_)) => flush,
        _ => ended,
    }
}

impl Session<'_> {
    /// Whether the handler does not get `event`: its own outputs and
    /// logs, its own `cairn.proc.<name>.` events, and every processor's
    /// position records (two handlers of `>` would feed each other those
    /// for ever).
    fn skips(&self, event: &Event) -> bool {
        let name = &self.ctx.name;
        let topic = event.topic.as_str();
        if let Some(rest) = topic.strip_prefix(PREFIX) {
            return rest.ends_with(".pos") || rest.strip_prefix(name.as_str()).is_some_and(|r| r.starts_with('.'));
        }
        if topic.strip_prefix(name.as_str()) == Some(".log") {
            return true;
        }
        // Its own outputs: stamped with its user (a writer of the same
        // topics cannot hide an event from it by copying the meta).
        event.user == self.ctx.user
            && event.meta.as_deref().is_some_and(|meta| {
                meta.contains("\"proc\"")
                    && serde_json::from_str::<serde_json::Value>(meta)
                        .ok()
                        .is_some_and(|meta| meta.get("proc").and_then(|proc| proc.as_str()) == Some(name))
            })
    }

    /// An event it does not get: done once the inputs before it are. Skips
    /// alone never cause a commit (a handler of `>` would otherwise commit
    /// a position for each of its own position records, for ever); they
    /// ride along with the next one.
    fn skip(&mut self, id: EventId) {
        if !self.queue.is_empty() {
            self.queue.push_back(Slot::Skip(id));
        } else if self.pending_position.is_some() {
            self.pending_position = Some(id);
        }
    }

    fn advance(&mut self, id: EventId) {
        self.pending_position = Some(id);
        if self.pending.is_empty() && self.position_since.is_none() {
            self.position_since = Some(tokio::time::Instant::now());
        }
    }

    /// One line of the program's stdout.
    fn output(&mut self, line: &[u8]) -> Result<(), String> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(Slot::Input { id, .. }) = self.queue.front() else {
            return Err(format!(
                "it printed {:?} with no input pending (an empty line ends an input's outputs)",
                excerpt(line)
            ));
        };
        let source = *id;
        if line.is_empty() {
            self.queue.pop_front();
            self.pending_bytes += std::mem::take(&mut self.output_bytes);
            self.pending.append(&mut self.outputs);
            self.advance(source);
            while let Some(Slot::Skip(id)) = self.queue.front() {
                self.pending_position = Some(*id);
                self.queue.pop_front();
            }
            return Ok(());
        }
        if self.outputs.len() >= OUTPUTS_PER_INPUT_MAX {
            return Err(format!("input {source} caused more than {OUTPUTS_PER_INPUT_MAX} outputs"));
        }
        let event = parse_output(self.ctx, line, source, "out")
            .map_err(|reason| format!("output for input {source}: {reason}: {:?}", excerpt(line)))?;
        self.output_bytes +=
            event.payload.as_ref().map_or(0, Vec::len) + event.meta.as_ref().map_or(0, String::len) + 128;
        if self.output_bytes > OUTPUT_BYTES_PER_INPUT_MAX {
            return Err(format!("input {source} caused more than {OUTPUT_BYTES_PER_INPUT_MAX} bytes of outputs"));
        }
        self.outputs.push(event);
        Ok(())
    }

    /// Starts a commit of what is pending unless one is in flight; a
    /// position alone waits `POSITION_EVERY` unless `due`.
    fn maybe_commit(&mut self, due: bool) -> Result<(), Ended> {
        if self.commit.is_some() || self.failed {
            return Ok(());
        }
        let Some(position) = self.pending_position else { return Ok(()) };
        if self.pending.is_empty() && !due {
            return Ok(());
        }
        let events = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.pending_position = None;
        self.position_since = None;
        let service = self.ctx.service.clone();
        let who = self.who.clone();
        let system = vec![self.ctx.position_event(position)];
        let fence = self.ctx.fence();
        let batch = Batch { events, ..Batch::default() };
        let task = tokio::spawn(async move { service.append_with_system(&who, batch, system, fence).await });
        self.commit = Some((task, position));
        Ok(())
    }

    /// A commit's end: its position is the handler's now, or nothing more
    /// commits in this session.
    fn committed(
        &mut self,
        done: Result<cairn_service::Result<Vec<Event>>, tokio::task::JoinError>,
        position: EventId,
    ) -> Result<(), Ended> {
        let ended = match done {
            Ok(Ok(events)) => {
                self.ctx.committed(&events);
                self.ctx.set(|status| status.position = Some(position.to_string()));
                return Ok(());
            }
            Ok(Err(error)) => crate::commit_failed("committing its outputs", error),
            Err(_) => Ended::Retry("a commit task failed".to_owned()),
        };
        self.failed = true;
        Err(ended)
    }

    /// Waits for the commit in flight, then commits what is pending
    /// (unless a commit failed).
    async fn flush(&mut self) -> Result<(), Ended> {
        for _ in 0..2 {
            if let Some((task, position)) = self.commit.take() {
                let done = task.await;
                self.committed(done, position)?;
            }
            self.maybe_commit(true)?;
        }
        Ok(())
    }

    fn report(&self) {
        let oldest = self.queue.iter().find_map(|slot| match slot {
            Slot::Input { sent, .. } => Some(sent.elapsed()),
            Slot::Skip(_) => None,
        });
        let in_flight = self.queue.iter().filter(|slot| matches!(slot, Slot::Input { .. })).count();
        self.ctx.set(|status| {
            status.lag_ms = oldest.map_or(0, |age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
            status.in_flight = in_flight;
        });
    }
}

/// An output line in the batch line form, its topic defaulting to
/// `<name>.<default_suffix>`, its meta gaining `source_id` (when caused by
/// an input), `proc_id` and `proc` (the name).
pub(crate) fn parse_output(ctx: &Ctx, line: &[u8], source: EventId, default_suffix: &str) -> Result<NewEvent, String> {
    parse_line(ctx, line, Some(source), default_suffix)
}

pub(crate) fn parse_line(
    ctx: &Ctx,
    line: &[u8],
    source: Option<EventId>,
    default_suffix: &str,
) -> Result<NewEvent, String> {
    let mut value: serde_json::Value =
        serde_json::from_slice(line).map_err(|error| format!("not a JSON event line ({error})"))?;
    let object = value.as_object_mut().ok_or("not a JSON object")?;
    if object.contains_key("expect") {
        return Err("outputs take no expectations".to_owned());
    }
    object.entry("topic").or_insert_with(|| ctx.topic(default_suffix).to_string().into());
    let meta = object.entry("meta").or_insert_with(|| serde_json::json!({}));
    let meta = meta.as_object_mut().ok_or("meta is not a JSON object")?;
    if let Some(source) = source {
        meta.insert("source_id".to_owned(), source.to_string().into());
    }
    meta.insert("proc_id".to_owned(), ctx.proc_id.to_string().into());
    meta.insert("proc".to_owned(), ctx.name.clone().into());
    let json: BatchEventJson = serde_json::from_value(value).map_err(|error| error.to_string())?;
    let mut batch = batch_from_json([json], None, None).map_err(|error| error.to_string())?;
    Ok(batch.events.remove(0))
}

fn excerpt(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
    if line.len() > 80 { format!("{text}…") } else { text }
}
