//! Generators: long-running programs whose stdout lines become events on
//! `<name>.recv` (the line as the payload, or with `"lines": "json"` an
//! event in the `cairn append --batch` line form, topic defaulting to
//! `<name>.recv`); with `duplex`, the payload of each event appended to
//! `<name>.send` is written to stdin (with a newline if it has none), and
//! the position past the last one written is kept with the next commit.
//! Restarted with back-off when they exit; `stopped` when the server stops,
//! started again when it starts.

use std::collections::{BTreeMap, VecDeque};

use cairn_service::{Batch, Delivered, EventId, FollowOptions, NewEvent, Pattern, Principal};

use crate::child::{self, Line, Running};
use crate::handler::parse_line;
use crate::spec::Lines;
use crate::{Ctx, Ended, ended_by};

/// Lines committed together at most ...
const COMMIT_LINES_MAX: usize = 4096;
/// ... or about this many bytes of them.
const COMMIT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// One run of the program, until it exits or the generator must stop; the
/// program is stopped by the caller (`Ctx::run_program`).
pub(crate) async fn session(ctx: &mut Ctx, who: &Principal, running: &mut Running) -> Ended {
    let mut sends = None;
    if ctx.spec.duplex {
        let after = match ctx.resume_after().await {
            Ok(after) => after,
            Err(error) => return ended_by("reading its position", error),
        };
        ctx.set(|status| status.position = after.map(|id| id.to_string()));
        let pattern = Pattern::Exact(ctx.topic("send"));
        let options = FollowOptions { content: true, ..FollowOptions::default() };
        match ctx.service.follow_patterns(who, &[pattern], after, options).await {
            Ok(follow) => sends = Some(crate::follow_in_task(follow, 64)),
            Err(error) => return ended_by("following its send topic", error),
        }
    }
    let stdin = running.stdin.take();
    // Sends waiting for the program's stdin, each with its id: the
    // position moves past a send once it is handed to the pipe's writer.
    let mut to_write: VecDeque<(Vec<u8>, EventId)> = VecDeque::new();
    let mut stop = ctx.stop.clone();
    let mut pending: Vec<NewEvent> = Vec::new();
    let mut position = None;
    loop {
        tokio::select! {
            biased;
            why = async { stop.wait_for(Option::is_some).await.map_or(crate::Stop::Shutdown, |why| (*why).expect("stop is set")) } => {
                return match commit(ctx, who, &mut pending, &mut position).await {
                    Err(ended) => ended,
                    Ok(()) => Ended::Stopped(why),
                };
            }
            line = running.stdout.recv() => {
                let mut line = line;
                let mut bytes_read = 0;
                loop {
                    match line {
                        None => {
                            return match commit(ctx, who, &mut pending, &mut position).await {
                                Err(ended) => ended,
                                Ok(()) => Ended::Exited(None),
                            };
                        }
                        Some(Line::TooLong) => {
                            return Ended::Fatal(format!("it printed a line over {} bytes", child::LINE_BYTES_MAX));
                        }
                        Some(Line::Line(bytes)) => {
                            bytes_read += bytes.len();
                            match received(ctx, bytes) {
                                Ok(event) => pending.push(event),
                                Err(reason) => return Ended::Fatal(reason),
                            }
                        }
                    }
                    if pending.len() >= COMMIT_LINES_MAX || bytes_read >= COMMIT_BYTES_MAX {
                        break;
                    }
                    match running.stdout.try_recv() {
                        Ok(next) => line = Some(next),
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => line = None,
                    }
                }
                if let Err(ended) = commit(ctx, who, &mut pending, &mut position).await {
                    return ended;
                }
            }
            // A program that stops reading holds its sends back, never the
            // loop: stop and its stdout are still served.
            permit = async { stdin.as_ref().expect("duplex").reserve().await }, if stdin.is_some() && !to_write.is_empty() => {
                let Ok(permit) = permit else { return Ended::Exited(None) };
                let (bytes, id) = to_write.pop_front().expect("something to write");
                permit.send(bytes);
                position = Some(id);
                if to_write.is_empty() && let Err(ended) = commit(ctx, who, &mut pending, &mut position).await {
                    return ended;
                }
            }
            delivered = async { sends.as_mut().expect("duplex").recv().await }, if sends.is_some() && to_write.len() < 64 => {
                let delivered = match delivered {
                    Some(Ok(delivered)) => delivered,
                    Some(Err(error)) => return ended_by("reading its send topic", error),
                    None => return Ended::Retry("its send topic's follow ended".to_owned()),
                };
                for item in delivered {
                    let Delivered::Event(event, content) = item else { continue };
                    let mut bytes = content.unwrap_or_default();
                    if bytes.last() != Some(&b'\n') {
                        bytes.push(b'\n');
                    }
                    to_write.push_back((bytes, event.id));
                }
            }
        }
    }
}

fn received(ctx: &Ctx, bytes: Vec<u8>) -> Result<NewEvent, String> {
    match ctx.spec.lines {
        Lines::Json => parse_line(ctx, &bytes, None, "recv").map_err(|reason| format!("a line it printed: {reason}")),
        Lines::Text => {
            let meta = serde_json::json!({ "proc_id": ctx.proc_id.to_string(), "proc": ctx.name });
            Ok(NewEvent {
                topic: Some(ctx.topic("recv")),
                meta: Some(meta.to_string()),
                payload: Some(bytes),
                ..NewEvent::default()
            })
        }
    }
}

async fn commit(
    ctx: &Ctx,
    who: &Principal,
    pending: &mut Vec<NewEvent>,
    position: &mut Option<cairn_service::EventId>,
) -> Result<(), Ended> {
    if pending.is_empty() && position.is_none() {
        return Ok(());
    }
    let had_position = position.is_some();
    let (system, fence) = match position.take() {
        Some(id) => (vec![ctx.position_event(id)], ctx.fence()),
        None => (Vec::new(), BTreeMap::new()),
    };
    let batch = Batch { events: std::mem::take(pending), ..Batch::default() };
    let events = ctx
        .service
        .append_with_system(who, batch, system, fence)
        .await
        .map_err(|error| crate::commit_failed("appending its lines", error))?;
    if had_position {
        ctx.committed(&events);
    }
    Ok(())
}
