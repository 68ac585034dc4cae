//! A satellite's link to its hub (`--satellite-of`): one WebSocket
//! connection with the hub protocol, made again whenever it drops.
//!
//! Each connection starts with `evt.sat`: the transactions queued so far
//! (in chunks), and a subscription of the replicated topics after the
//! last hub event replicated (`after`, the hub's id). Then it writes each
//! update's events through `Service::replicate` (a transaction per
//! revision) and sends what is queued later as it is queued. The queue's
//! answered end moves past a transaction once the hub's answer is in: a
//! rejection recorded on `cairn.sat.rejected`, an acceptance once its
//! revision is replicated. An answer the hub could not give now
//! (`retry`), or a lost connection, sends the unanswered ones again on
//! the next connection; the hub answers a resent transaction from its
//! record of the id, so nothing applies twice. The server serves its
//! local clients all the while.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use cairn_service::{Act, EventId, QueuedTrans, Rejection, Replicated, Service, Trans};
use tokio::sync::watch;

use crate::config::{Satellite, SatelliteCredentials};
use crate::http::hub::rev_of;

/// Queued transactions per `evt.sat` at most (the hub takes 1,000)...
const CHUNK: u64 = 500;
/// ... and about this many bytes of them (the hub takes messages of 16
/// MiB; a larger transaction goes alone).
const CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// A transaction the hub could never take: refused here.
const TRANS_BYTES_MAX: usize = 15 * 1024 * 1024;
/// A held-back revision is written once the hub was quiet this long.
const TAIL_WAIT: Duration = Duration::from_millis(20);
/// A connection the hub has not been heard on for this long (it pings
/// every 30 s) is dead; a call not answered in this long, too.
const SILENCE_MAX: Duration = Duration::from_secs(90);
/// The wait before connecting again grows to this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs the link until the server stops.
pub(crate) async fn run(service: Service, satellite: Satellite, mut stopping: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    let mut reported = false;
    loop {
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            () = crate::server::stopped(&mut stopping) => return,
            outcome = connection(&service, &satellite, &mut reported) => outcome,
        };
        if let Err(error) = outcome {
            // Said once per outage, not at every attempt.
            if !reported {
                tracing::warn!(
                    "satellite: the hub at {} is out of reach: {error:#}; transactions are queued",
                    satellite.url
                );
                reported = true;
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            () = crate::server::stopped(&mut stopping) => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn client(satellite: &Satellite) -> Result<cairn_client::Client> {
    let client = cairn_client::Client::tcp(&satellite.url, None).context("the hub's address")?;
    Ok(match &satellite.credentials {
        Some(SatelliteCredentials::Basic(user, password)) => client.with_basic(user, password),
        Some(SatelliteCredentials::Token(token)) => client.with_token(token),
        None => client,
    })
}

/// A queued transaction sent and answered, waiting for the queue's
/// answered end to pass it.
struct Answered {
    at: EventId,
    seq: u64,
    /// For an accepted one: the hub's revision, to be replicated first.
    rev: Option<u64>,
}

/// One connection: runs until it drops (an error).
async fn connection(service: &Service, satellite: &Satellite, reported: &mut bool) -> Result<()> {
    let mut hub = client(satellite)?.hub().await?;
    let (_, after) = service.sat_position().await?;
    let tops: Vec<String> = satellite.topics.iter().map(ToString::to_string).collect();
    let mut body = serde_json::json!({ "tops": tops });
    match after {
        Some(after) => body["after"] = after.to_string().into(),
        None => body["rev"] = 0.into(),
    }
    // Answered transactions in queue order, and the last one sent.
    let mut answered = VecDeque::new();
    let (pending, trans) = chunk(service, None, &mut answered).await?;
    body["trans"] = trans;
    let results = call(&mut hub, &body).await?;
    if *reported {
        tracing::info!("satellite: the hub at {} is back; sending what was queued", satellite.url);
        *reported = false;
    }
    answer(service, &pending, &results, &mut answered).await?;
    let mut sent = answered.back().map(|answer: &Answered| answer.at);
    let mut tail = None;
    // When the hub was last heard with an update (the tail's quiet time).
    let mut last_update = tokio::time::Instant::now();
    loop {
        settle(service, &mut answered).await?;
        let (more, trans) = chunk(service, sent, &mut answered).await?;
        if !more.is_empty() {
            let results = call(&mut hub, &serde_json::json!({ "trans": trans })).await?;
            answer(service, &more, &results, &mut answered).await?;
        }
        let before = sent;
        sent = answered.back().map(|answer| answer.at).max(sent);
        if sent != before {
            continue;
        }
        // The hub pings every 30 s: silence until this deadline is a dead
        // connection (TCP may not say so).
        let quiet_left = SILENCE_MAX.saturating_sub(hub.silent_for());
        tokio::select! {
            update = hub.update() => {
                let Some(update) = update? else { bail!("the hub closed the connection") };
                replicate(service, &update, &mut tail).await?;
                last_update = tokio::time::Instant::now();
            }
            () = tokio::time::sleep_until(last_update + TAIL_WAIT), if tail.is_some() => {
                flush(service, &mut tail).await?;
            }
            () = service.sat_queued() => {}
            // Answers waiting for their revision, should an update be slow.
            () = tokio::time::sleep(Duration::from_secs(1)), if !answered.is_empty() => {}
            () = tokio::time::sleep(quiet_left) => {
                if hub.silent_for() >= SILENCE_MAX {
                    bail!("the hub was silent for {} s", SILENCE_MAX.as_secs());
                }
            }
        }
    }
}

/// `evt.sat` with `body`, answered within [`SILENCE_MAX`].
async fn call(hub: &mut cairn_client::Hub, body: &serde_json::Value) -> Result<serde_json::Value> {
    match tokio::time::timeout(SILENCE_MAX, hub.call("evt.sat", body)).await {
        Ok(answer) => Ok(answer?),
        Err(_) => bail!("the hub did not answer evt.sat in {} s", SILENCE_MAX.as_secs()),
    }
}

/// The next queued transactions after `after` to send, within [`CHUNK`]
/// and [`CHUNK_BYTES`] (at least one), and their JSON. One too large for
/// the hub ever to take, when it comes first, is recorded as rejected
/// here (and answered, in queue order).
async fn chunk(
    service: &Service,
    after: Option<EventId>,
    answered: &mut VecDeque<Answered>,
) -> Result<(Vec<QueuedTrans>, serde_json::Value)> {
    let pending = service.sat_pending(after, CHUNK).await?;
    let (mut out, mut list, mut bytes) = (Vec::new(), Vec::new(), 0);
    for queued in pending {
        let json = serde_json::to_value(&queued.trans).expect("JSON");
        let size = json.to_string().len();
        if size > TRANS_BYTES_MAX {
            if !out.is_empty() {
                break;
            }
            let reason = format!("{size} bytes: more than the hub takes in a message");
            let rejection =
                Rejection { tx: id_of(&queued).to_owned(), id: queued.local.clone(), reason, keys: Vec::new() };
            service.sat_rejected(&queued, rejection).await?;
            answered.push_back(Answered { at: queued.at, seq: queued.seq, rev: None });
            break;
        }
        if !out.is_empty() && bytes + size > CHUNK_BYTES {
            break;
        }
        bytes += size;
        list.push(json);
        out.push(queued);
    }
    Ok((out, serde_json::Value::Array(list)))
}

/// Takes the hub's answers to `sent`: records rejections, keeps the
/// rest for `settle`. An answer the hub could not give now ends the
/// connection (they are sent again).
async fn answer(
    service: &Service,
    sent: &[QueuedTrans],
    results: &serde_json::Value,
    answered: &mut VecDeque<Answered>,
) -> Result<()> {
    let results = results.as_array().context("the hub's answer to evt.sat is not a list")?;
    if results.len() != sent.len() {
        bail!("the hub answered {} of {} transactions", results.len(), sent.len());
    }
    for (queued, result) in sent.iter().zip(results) {
        if result.get("retry").and_then(serde_json::Value::as_bool) == Some(true) {
            bail!("the hub could not take transaction {} now: {}", id_of(queued), result["err"]);
        }
        match result.get("err").and_then(serde_json::Value::as_str) {
            Some(reason) => {
                let keys = result
                    .get("keys")
                    .and_then(|keys| serde_json::from_value::<Vec<String>>(keys.clone()).ok())
                    .unwrap_or_default();
                let rejection = Rejection {
                    tx: id_of(queued).to_owned(),
                    id: queued.local.clone(),
                    reason: reason.to_owned(),
                    keys,
                };
                service.sat_rejected(queued, rejection).await?;
                answered.push_back(Answered { at: queued.at, seq: queued.seq, rev: None });
            }
            None => {
                let rev = result.get("rev").and_then(rev_of).context("an accepted transaction without its rev")?;
                answered.push_back(Answered { at: queued.at, seq: queued.seq, rev: Some(rev) });
            }
        }
    }
    Ok(())
}

fn id_of(queued: &QueuedTrans) -> &str {
    queued.trans.id.as_deref().unwrap_or_default()
}

/// Moves the queue's answered end past the answered transactions whose
/// accepted events are replicated.
async fn settle(service: &Service, answered: &mut VecDeque<Answered>) -> Result<()> {
    if answered.is_empty() {
        return Ok(());
    }
    let (replicated, _) = service.sat_position().await?;
    let mut last = None;
    while let Some(front) = answered.front() {
        if front.rev.is_some_and(|rev| rev > replicated) {
            break;
        }
        last = Some((front.at, front.seq));
        answered.pop_front();
    }
    if let Some((at, seq)) = last {
        service.sat_answered(at, seq).await?;
    }
    Ok(())
}

/// Writes an update's events: one transaction per revision, in order,
/// all in one batch. The hub pushes what its follow read in one step (at
/// most 256 events, at most 4 MiB of payloads), so an update's last
/// revision may go on in the next: it is held back in `tail` (written
/// with the next update, or by `flush` once the hub was quiet for
/// [`TAIL_WAIT`]), so readers never see half a transaction.
async fn replicate(service: &Service, update: &serde_json::Value, tail: &mut Option<Replicated>) -> Result<()> {
    let Some(evs) = update.get("evs").and_then(serde_json::Value::as_array) else { return Ok(()) };
    let mut replicas: Vec<Replicated> = tail.take().into_iter().collect();
    for ev in evs {
        // What is not an action (a hub's writer can make events look like
        // them) is skipped: the hub's own state ignores it too.
        let rev = ev.get("rev").and_then(rev_of);
        let id = ev.get("id").and_then(serde_json::Value::as_str).and_then(|id| id.parse::<EventId>().ok());
        let act = serde_json::from_value::<Act>(serde_json::json!({
            "top": ev["top"],
            "key": ev["key"],
            "cmd": ev["cmd"],
            "arg": ev.get("arg").filter(|arg| arg.is_object()),
        }));
        let (Some(rev), Some(id), Ok(act)) = (rev, id, act) else {
            tracing::warn!("satellite: skipped an event of the hub that is not an action: {ev}");
            continue;
        };
        match replicas.last_mut() {
            Some(last) if last.rev == rev => {
                last.trans.acts.push(act);
                last.ids.push(id);
            }
            _ => {
                let trans = Trans {
                    id: ev.get("tx").and_then(serde_json::Value::as_str).map(str::to_owned),
                    created: ev.get("created").and_then(rev_of).filter(|created| *created > 0),
                    extra: ev.get("extra").cloned(),
                    acts: vec![act],
                    ..Trans::default()
                };
                let user = ev.get("usr").and_then(serde_json::Value::as_str).map(str::to_owned);
                replicas.push(Replicated { trans, rev, ids: vec![id], user });
            }
        }
    }
    *tail = replicas.pop();
    if !replicas.is_empty() {
        service.replicate(replicas).await?;
    }
    Ok(())
}

/// Writes the held-back revision: the hub went quiet, so it is whole.
async fn flush(service: &Service, tail: &mut Option<Replicated>) -> Result<()> {
    if let Some(replica) = tail.take() {
        service.replicate(vec![replica]).await?;
    }
    Ok(())
}
