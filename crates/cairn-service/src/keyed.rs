//! Keyed records (seed 003, evt): transactions of actions on keys, each
//! key's latest state kept current, conflicts decided per key.
//!
//! An action `{top, key, cmd, arg}` is an event on topic `top` whose meta
//! is the fixed shape `{"key", "cmd", "rev", "tx"?, "created"?, "extra"?}`
//! (every front end shows meta) and whose payload is `arg` (a JSON object
//! of field values). A transaction's actions commit as one batch and share
//! one revision `rev`: milliseconds, strictly increasing from transaction
//! to transaction (the larger of now and the last rev plus one, drawn under
//! the hub's lock, so rev order is commit order is id order). Its audit is
//! on every one of its events: `user` (the authenticated principal), meta
//! `created` (the client's time), `rev` (its arrival), `extra`.
//!
//! Each key's state (`{state, rev, id}`) is a state record (`h<top>\0<key>`)
//! so reads need no replay. A transaction is checked and applied under the
//! hub's lock (and the storage's shared lock, where servers share it):
//! every key it touches must not have changed after its `base`, and its
//! actions apply in order by evt's rules (`new` on a missing key, `mod`
//! merging fields into an existing one, `del` of an existing one; so
//! del+new is a mod, new+mod a new with the fields applied, mod+mod
//! overwrites field by field, anything+del a del, and mod after del, a
//! double del or new on an existing key are refused). The events and the
//! state records are two writes; a record of the transaction in flight
//! (`P`: its topics and the last event before it) written first lets the
//! next hub call finish a transaction a crash cut between them, so the
//! states are a function of the log.

use std::collections::{BTreeMap, BTreeSet};

use cairn_store::{Batch, Event, EventId, NewEvent, Pattern, Query, StateOp, Topic};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ServiceError};
use crate::principal::Principal;
use crate::service::Service;

/// At most this many actions in one transaction.
pub const ACTS_MAX: usize = 10_000;
/// Keys are 1-255 bytes.
pub const KEY_BYTES_MAX: usize = 255;
/// Transaction ids are 1-128 bytes.
pub const TX_ID_BYTES_MAX: usize = 128;

/// What an action does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cmd {
    /// Creates the key with `arg` as its state.
    New,
    /// Sets `arg`'s fields in the key's state.
    Mod,
    /// Deletes the key.
    Del,
}

/// One action of a transaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Act {
    /// The topic.
    pub top: String,
    /// The key within the topic.
    pub key: String,
    /// new, mod or del.
    pub cmd: Cmd,
    /// The fields (a JSON object; none for del).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A transaction: actions committed together against a base revision.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trans {
    /// An id the writer chose: a transaction sent again with the same id
    /// (by the same user) is answered with the first one's outcome, not
    /// applied twice (satellites resend after a lost connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The revision the writer last saw (ms): a key changed after it is a
    /// conflict. None: no check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
    /// When the writer made it (ms), for the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
    /// Ignored: the user is the authenticated principal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usr: Option<String>,
    /// Anything the writer wants kept with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
    /// The actions, in order.
    pub acts: Vec<Act>,
}

/// A committed transaction.
#[derive(Clone, Debug, Default)]
pub struct Committed {
    /// Its revision (on a satellite, for a transaction queued for the
    /// hub: the hub's revision it was based on).
    pub rev: u64,
    /// Its events, one per action (none for a queued one).
    pub events: Vec<Event>,
    /// Their ids.
    pub ids: Vec<EventId>,
    /// Queued on a satellite for the hub (applied to its state
    /// provisionally), with this id.
    pub queued: Option<String>,
}

/// A key's latest state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KeyState {
    /// The key.
    pub key: String,
    /// Its fields.
    pub state: serde_json::Map<String, serde_json::Value>,
    /// The revision that last changed it.
    pub rev: u64,
    /// The last event that changed it.
    pub id: EventId,
    /// On a satellite: changed by transactions queued for the hub.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provisional: bool,
}

/// A key's record: its state, or its deletion (kept: a deletion is a
/// change a later transaction's base may conflict with).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    state: Option<serde_json::Map<String, serde_json::Value>>,
    rev: u64,
    id: EventId,
}

/// The hub's checkpoint (`H`): the last revision and its last event; on
/// a satellite also the last event replicated from the hub, by the hub's
/// id and revision.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub(crate) rev: u64,
    id: Option<EventId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) hub: Option<EventId>,
    #[serde(default)]
    pub(crate) hub_rev: u64,
}

/// A committed transaction that had an id (`t<user>\0<id>`): its outcome,
/// for a resend.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TxRecord {
    rev: u64,
    ids: Vec<EventId>,
    /// Refused: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    err: Option<String>,
    /// Refused for these conflicting keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keys: Vec<String>,
}

/// A transaction sent again within the group of its first sending.
enum Repeat {
    Accepted(usize),
    Refused(usize),
}

fn tx_key(user: Option<&str>, id: &str) -> Vec<u8> {
    let user = user.unwrap_or_default();
    let mut out = Vec::with_capacity(2 + user.len() + id.len());
    out.push(b't');
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    out.extend_from_slice(id.as_bytes());
    out
}

/// A transaction in flight (`P`): its topics and where the log stood.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct InFlight {
    topics: Vec<String>,
    after: EventId,
}

/// A transaction waiting for its group.
pub(crate) struct Queued {
    who: Principal,
    trans: Trans,
    topics: BTreeMap<String, Topic>,
    reply: tokio::sync::oneshot::Sender<Result<Committed>>,
    /// Replicated from the hub (a satellite's copy): applied as the hub
    /// decided, not checked again.
    replica: Option<Replica>,
    /// About how many bytes its events take (for the group's bound).
    bytes: usize,
    /// Its place in the queue.
    seq: u64,
}

/// How many groups a caller commits for others once its own is committed.
const GROUPS_AFTER_MINE: usize = 8;

/// A group commits at most this many actions (one transaction may have
/// more, alone)...
const GROUP_ACTS_MAX: usize = ACTS_MAX;
/// ... and about this many bytes of arguments (the log takes records of
/// 32 MiB, and the group's key states are one record too).
const GROUP_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A key's state is at most this many bytes (as JSON).
pub const KEY_STATE_BYTES_MAX: usize = 1024 * 1024;
/// State records are written in writes of about this many bytes at most.
const STATE_WRITE_BYTES: usize = 8 * 1024 * 1024;

/// How many of `queue`'s first transactions make a group within the
/// bounds (at least one, if there is one).
fn group_len(queue: &[Queued]) -> usize {
    let (mut acts, mut bytes, mut take) = (0, 0, 0);
    for queued in queue {
        acts += queued.trans.acts.len();
        bytes += queued.bytes;
        if take > 0 && (acts > GROUP_ACTS_MAX || bytes > GROUP_BYTES_MAX) {
            break;
        }
        take += 1;
    }
    take
}

/// About how many bytes `trans`'s events and key states take.
fn trans_bytes(trans: &Trans) -> usize {
    let extra = trans.extra.as_ref().map_or(0, |extra| serde_json::to_vec(extra).map_or(0, |bytes| bytes.len()));
    trans
        .acts
        .iter()
        .map(|act| {
            let arg = act.arg.as_ref().map_or(0, |arg| serde_json::to_vec(arg).map_or(0, |bytes| bytes.len()));
            // The argument in the event and in its key's state, and the
            // transaction's extra in every event's meta.
            128 + act.top.len() + act.key.len() + 2 * arg + extra
        })
        .sum()
}

/// Where a replicated transaction came from: the hub's rev and ids.
#[derive(Clone, Debug)]
pub(crate) struct Replica {
    pub(crate) rev: u64,
    pub(crate) ids: Vec<EventId>,
    pub(crate) user: Option<String>,
}

/// Every transaction of a group that failed as a whole.
fn everyone(
    accepted: Vec<(Queued, u64)>,
    repeats: Vec<(Queued, Repeat)>,
    refused: Vec<(Queued, ServiceError)>,
) -> Vec<Queued> {
    accepted
        .into_iter()
        .map(|(queued, _)| queued)
        .chain(repeats.into_iter().map(|(queued, _)| queued))
        .chain(refused.into_iter().map(|(queued, _)| queued))
        .collect()
}

/// Answers a group's refused transactions and repeats once `stored`.
fn answer_refusals(
    repeats: Vec<(Queued, Repeat)>,
    refused: Vec<(Queued, ServiceError)>,
    committed: &[Committed],
    stored: &Result<()>,
) {
    for (queued, repeat) in repeats {
        let answer = match repeat {
            Repeat::Accepted(n) => stored.clone().map(|()| committed[n].clone()),
            Repeat::Refused(n) => stored.clone().and(Err(refused[n].1.clone())),
        };
        let _ = queued.reply.send(answer);
    }
    for (queued, error) in refused {
        let _ = queued.reply.send(stored.clone().and(Err(error)));
    }
}

fn fail_all(group: Vec<Queued>, error: &ServiceError) {
    for queued in group {
        let _ = queued.reply.send(Err(error.clone()));
    }
}

pub(crate) fn record_key(top: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + top.len() + key.len());
    out.push(b'h');
    out.extend_from_slice(top.as_bytes());
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out
}

const CHECKPOINT: &[u8] = b"H";
const IN_FLIGHT: &[u8] = b"P";

/// The meta of an action's event.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ActMeta {
    /// The key.
    pub key: String,
    /// What the action did.
    pub cmd: Cmd,
    /// Its transaction's revision.
    pub rev: u64,
    /// Its transaction's id, if the writer gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx: Option<String>,
    /// The writer's time (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
    /// What the writer kept with the transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
    /// On a satellite: the event's id on the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<EventId>,
}

/// An action read back from its event: (key, cmd, rev, arg).
fn act_of(
    event: &Event,
    content: Option<&[u8]>,
) -> Option<(String, Cmd, u64, serde_json::Map<String, serde_json::Value>)> {
    let meta: ActMeta = serde_json::from_str(event.meta.as_deref()?).ok()?;
    let arg = content.and_then(|bytes| serde_json::from_slice(bytes).ok()).unwrap_or_default();
    Some((meta.key, meta.cmd, meta.rev, arg))
}

/// An action's meta, if `event` is one.
pub fn action_meta(event: &Event) -> Option<ActMeta> {
    serde_json::from_str(event.meta.as_deref()?).ok()
}

/// Applies one action to a key's state (`None`: missing or deleted).
pub(crate) fn apply(
    state: &mut Option<serde_json::Map<String, serde_json::Value>>,
    cmd: Cmd,
    arg: serde_json::Map<String, serde_json::Value>,
) -> std::result::Result<(), &'static str> {
    match (cmd, state.as_mut()) {
        (Cmd::New, None) => *state = Some(arg),
        (Cmd::New, Some(_)) => return Err("new on a key that exists"),
        (Cmd::Mod, Some(fields)) => fields.extend(arg),
        (Cmd::Mod, None) => return Err("mod of a key that does not exist (or was deleted)"),
        (Cmd::Del, Some(_)) => *state = None,
        (Cmd::Del, None) => return Err("del of a key that does not exist (or was deleted)"),
    }
    Ok(())
}

/// Checks a transaction's shape and `who`'s right to write its topics;
/// returns its topics by name.
pub(crate) fn check_trans(who: &Principal, trans: &Trans) -> Result<BTreeMap<String, Topic>> {
    if trans.acts.is_empty() {
        return Err(ServiceError::invalid("acts", "a transaction needs at least one action"));
    }
    if trans.acts.len() > ACTS_MAX {
        return Err(ServiceError::invalid("acts", format!("at most {ACTS_MAX} actions")));
    }
    if let Some(id) = &trans.id
        && (id.is_empty() || id.len() > TX_ID_BYTES_MAX || id.chars().any(char::is_control))
    {
        return Err(ServiceError::invalid(
            "id",
            format!("transaction ids are 1-{TX_ID_BYTES_MAX} bytes, no control characters"),
        ));
    }
    let mut topics = BTreeMap::new();
    for act in &trans.acts {
        if act.key.is_empty() || act.key.len() > KEY_BYTES_MAX || act.key.contains('\0') {
            return Err(ServiceError::invalid("key", format!("keys are 1-{KEY_BYTES_MAX} bytes without NUL")));
        }
        let topic = Topic::new(&act.top)?;
        who.check_write(&topic)?;
        topics.insert(act.top.clone(), topic);
    }
    Ok(topics)
}

/// A transaction's events at `rev`, by `user`; with the hub's ids for a
/// replicated one.
fn events_of(queued: &Queued, rev: u64, user: Option<&str>, hub: Option<&[EventId]>) -> Vec<NewEvent> {
    let trans = &queued.trans;
    trans
        .acts
        .iter()
        .enumerate()
        .map(|(n, act)| {
            let meta = ActMeta {
                key: act.key.clone(),
                cmd: act.cmd,
                rev,
                tx: trans.id.clone(),
                created: trans.created,
                extra: trans.extra.clone(),
                hub: hub.map(|ids| ids[n]),
            };
            let payload =
                act.arg.as_ref().filter(|_| act.cmd != Cmd::Del).map(|arg| serde_json::to_vec(arg).expect("JSON"));
            NewEvent {
                topic: Some(queued.topics[&act.top].clone()),
                kind: Some(
                    match act.cmd {
                        Cmd::New => "new",
                        Cmd::Mod => "mod",
                        Cmd::Del => "del",
                    }
                    .to_owned(),
                ),
                meta: Some(serde_json::to_string(&meta).expect("JSON")),
                payload,
                user: user.map(str::to_owned),
                ..NewEvent::default()
            }
        })
        .collect()
}

impl Service {
    /// Commits `trans` for `who` (who must be allowed to write every topic
    /// it touches): all its actions or none. Transactions waiting at the
    /// same moment commit as one group (one in-flight record, one batch,
    /// one write of states, as the log's writer shares one fdatasync),
    /// each checked in turn against the state the ones before it left.
    /// On a satellite, a transaction on the hub's topics is queued for the
    /// hub instead (see `satellite.rs`).
    pub async fn publish(&self, who: &Principal, trans: Trans) -> Result<Committed> {
        self.admit(who)?;
        let mut committed = match check_trans(who, &trans) {
            // A refusal of rights is final too: recorded for a resend
            // (rights granted later do not turn it into an acceptance
            // the sender was told was refused).
            Err(error @ ServiceError::Forbidden { .. }) if trans.id.is_some() => {
                self.refuse_recorded(who, &trans, error).await?
            }
            Err(error) => return Err(error),
            Ok(topics) => {
                let replicated = topics.values().filter(|topic| self.is_replicated(topic)).count();
                if replicated == topics.len() {
                    return self.sat_enqueue(who, trans).await;
                }
                if replicated > 0 {
                    return Err(ServiceError::invalid(
                        "acts",
                        "a transaction touches either the hub's topics (queued for the hub) or this server's own, not both",
                    ));
                }
                self.commit_queued(who.clone(), trans, topics, None).await?
            }
        };
        if committed.events.is_empty() {
            // Answered from the record of its first sending (outside the
            // hub's lock): its events.
            for id in &committed.ids {
                committed.events.extend(self.storage().get(*id).await?);
            }
        }
        Ok(committed)
    }

    /// Queues `trans` for the next group and waits for its outcome.
    pub(crate) async fn commit_queued(
        &self,
        who: Principal,
        trans: Trans,
        topics: BTreeMap<String, Topic>,
        replica: Option<Replica>,
    ) -> Result<Committed> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let bytes = trans_bytes(&trans);
        let seq = {
            let mut queue = self.inner.hub_queue.lock().expect("hub queue lock");
            let seq = self.inner.hub_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            queue.push(Queued { who, trans, topics, reply, replica, bytes, seq });
            seq
        };
        self.commit_queue(seq).await;
        answer.await.map_err(|_| ServiceError::ShuttingDown)?
    }

    /// Queues replicated transactions together, in order, for the next
    /// group, and waits for all of them.
    pub(crate) async fn commit_replicas(&self, replicas: Vec<(Trans, BTreeMap<String, Topic>, Replica)>) -> Result<()> {
        // Not through the shared queue: under the lock, in groups within
        // the bounds, and none after one that failed (replication must not
        // move past a transaction it could not write).
        let mut rest: Vec<Queued> = Vec::with_capacity(replicas.len());
        let mut answers = Vec::with_capacity(replicas.len());
        for (trans, topics, replica) in replicas {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let bytes = trans_bytes(&trans);
            rest.push(Queued { who: Principal::Local, trans, topics, reply, replica: Some(replica), bytes, seq: 0 });
            answers.push(answer);
        }
        let _hub = self.inner.hub.lock().await;
        let mut answers = answers.into_iter();
        while !rest.is_empty() {
            let take = group_len(&rest);
            let group: Vec<Queued> = rest.drain(..take).collect();
            self.commit_group(group).await;
            for answer in answers.by_ref().take(take) {
                if let Err(error) = answer.await.map_err(|_| ServiceError::ShuttingDown)? {
                    fail_all(rest, &error);
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Whoever holds the hub's lock next commits what is queued, in
    /// groups of at most [`GROUP_ACTS_MAX`] actions and about
    /// [`GROUP_BYTES_MAX`] bytes (one batch each, within the log's bounds
    /// of a record), in order: until the queue is empty, or until its own
    /// transaction (`mine`, its place in the queue) and [`GROUPS_AFTER_MINE`]
    /// groups after it are committed, so a steady stream of transactions
    /// passes the lock on (to the others waiting for it) rather than
    /// holding one caller for ever. Committing groups back to back, rather
    /// than handing the lock to the next waiter after each, keeps the disk
    /// busy: 16 hub clients went from 1.1k to 5.4k actions/s.
    async fn commit_queue(&self, mine: u64) {
        let _hub = self.inner.hub.lock().await;
        let mut after_mine = 0;
        loop {
            let group = {
                let mut queue = self.inner.hub_queue.lock().expect("hub queue lock");
                let done = queue.first().is_none_or(|first| first.seq > mine);
                if done && after_mine >= GROUPS_AFTER_MINE {
                    return;
                }
                if done {
                    after_mine += 1;
                }
                let take = group_len(&queue);
                queue.drain(..take).collect::<Vec<_>>()
            };
            if group.is_empty() {
                return;
            }
            self.commit_group(group).await;
        }
    }

    /// Commits a group of queued transactions (under the hub's lock),
    /// answering each: the accepted ones once their key states are stored,
    /// the refused ones with an id once their refusal is stored (so a
    /// resend gets the same answer, whatever changed since).
    async fn commit_group(&self, group: Vec<Queued>) {
        let shared = match self.shared_lock("hub").await {
            Ok(shared) => shared,
            Err(error) => return fail_all(group, &error),
        };
        let checkpoint = match self.hub_recover().await {
            Ok(checkpoint) => checkpoint,
            Err(error) => return fail_all(group, &error),
        };
        let mut keys: BTreeMap<(String, String), Option<Record>> = BTreeMap::new();
        let mut last_rev = checkpoint.rev;
        let (mut hub, mut hub_rev) = (checkpoint.hub, checkpoint.hub_rev);
        let mut accepted: Vec<(Queued, u64)> = Vec::new();
        // Refused for what they are or for the state: the answer, stored.
        let mut refused: Vec<(Queued, ServiceError)> = Vec::new();
        // Sent again while the first is in this group: answered alike.
        let mut repeats: Vec<(Queued, Repeat)> = Vec::new();
        let mut events: Vec<NewEvent> = Vec::new();
        let mut all_topics: BTreeSet<String> = BTreeSet::new();
        // A replica that fails fails the ones after it: replication must
        // not move past it.
        let mut replica_failed: Option<ServiceError> = None;
        for queued in group {
            if let Some(replica) = &queued.replica {
                if let Some(error) = &replica_failed {
                    let _ = queued.reply.send(Err(error.clone()));
                    continue;
                }
                if hub.is_some_and(|last| replica.ids.last().is_some_and(|id| *id <= last)) {
                    let _ = queued.reply.send(Ok(Committed { rev: replica.rev, ..Committed::default() }));
                    continue;
                }
                let rev = replica.rev;
                match self.plan_replica(&queued, &mut keys).await {
                    Err(error) => {
                        replica_failed = Some(error.clone());
                        let _ = queued.reply.send(Err(error));
                    }
                    Ok(planned) => {
                        (hub, hub_rev) = (replica.ids.last().copied().or(hub), hub_rev.max(rev));
                        last_rev = last_rev.max(rev);
                        events.extend(planned);
                        all_topics.extend(queued.topics.keys().cloned());
                        accepted.push((queued, rev));
                    }
                }
                continue;
            }
            if let Some(id) = &queued.trans.id {
                let user = queued.who.user_name();
                let same = |other: &Queued| {
                    other.replica.is_none() && other.trans.id.as_ref() == Some(id) && other.who.user_name() == user
                };
                if let Some(n) = accepted.iter().position(|(other, _)| same(other)) {
                    repeats.push((queued, Repeat::Accepted(n)));
                    continue;
                }
                if let Some(n) = refused.iter().position(|(other, _)| same(other)) {
                    repeats.push((queued, Repeat::Refused(n)));
                    continue;
                }
                match self.decided_before(user, id).await {
                    Err(error) => {
                        let _ = queued.reply.send(Err(error));
                        continue;
                    }
                    Ok(Some(answer)) => {
                        let _ = queued.reply.send(answer);
                        continue;
                    }
                    Ok(None) => {}
                }
            }
            match self.plan(&queued, &mut keys, last_rev).await {
                Err(error @ (ServiceError::Invalid { .. } | ServiceError::Conflict { .. })) => {
                    refused.push((queued, error));
                }
                Err(error) => {
                    let _ = queued.reply.send(Err(error));
                }
                Ok((rev, planned)) => {
                    last_rev = rev;
                    events.extend(planned);
                    all_topics.extend(queued.topics.keys().cloned());
                    accepted.push((queued, rev));
                }
            }
        }
        // The refusals of identified transactions, stored with the group's
        // states (or alone).
        let mut ops: Vec<StateOp> = Vec::new();
        for (queued, error) in &refused {
            if let Some(id) = &queued.trans.id {
                let keys = match error {
                    ServiceError::Conflict { keys } => keys.clone(),
                    _ => Vec::new(),
                };
                let record = TxRecord { rev: 0, ids: Vec::new(), err: Some(error.to_string()), keys };
                ops.push(StateOp::Put(tx_key(queued.who.user_name(), id), serde_json::to_vec(&record).expect("JSON")));
            }
        }
        if accepted.is_empty() {
            let stored = if ops.is_empty() { Ok(()) } else { self.state_ops(ops).await };
            drop(shared);
            answer_refusals(repeats, refused, &[], &stored);
            return;
        }
        // The group in flight first, so a crash after its events leaves
        // the next call what it needs to update the states.
        let in_flight = InFlight { topics: all_topics.into_iter().collect(), after: self.last_id() };
        let bytes = serde_json::to_vec(&in_flight).expect("JSON");
        if let Err(error) = self.state_ops(vec![StateOp::Put(IN_FLIGHT.to_vec(), bytes)]).await {
            return fail_all(everyone(accepted, repeats, refused), &error);
        }
        let appended = match self.storage().submit(Batch { events, ..Batch::default() }, false).await {
            Ok(pending) => pending.await.map_err(ServiceError::from),
            Err(error) => Err(ServiceError::from(error)),
        };
        let appended = match appended {
            Ok(appended) => appended,
            Err(error) => {
                let _ = self.state_ops(vec![StateOp::Delete(IN_FLIGHT.to_vec())]).await;
                return fail_all(everyone(accepted, repeats, refused), &error);
            }
        };
        // Each key's record: its last action's event and its transaction's
        // rev; each identified transaction's outcome.
        let mut records: BTreeMap<Vec<u8>, Record> = BTreeMap::new();
        let mut answers = Vec::new();
        let mut at = 0;
        for (queued, rev) in accepted {
            let own = appended[at..at + queued.trans.acts.len()].to_vec();
            at += queued.trans.acts.len();
            for (act, event) in queued.trans.acts.iter().zip(&own) {
                let state = keys[&(act.top.clone(), act.key.clone())].as_ref().and_then(|record| record.state.clone());
                records.insert(record_key(&act.top, &act.key), Record { state, rev, id: event.id });
            }
            let ids: Vec<EventId> = own.iter().map(|event| event.id).collect();
            if let (Some(id), None) = (&queued.trans.id, &queued.replica) {
                let record = TxRecord { rev, ids: ids.clone(), err: None, keys: Vec::new() };
                ops.push(StateOp::Put(tx_key(queued.who.user_name(), id), serde_json::to_vec(&record).expect("JSON")));
            }
            answers.push((queued.reply, Committed { rev, events: own, ids, queued: None }));
        }
        ops.extend(
            records.into_iter().map(|(key, record)| StateOp::Put(key, serde_json::to_vec(&record).expect("JSON"))),
        );
        let last = appended.last().map(|event| event.id);
        let checkpoint = Checkpoint { rev: last_rev, id: last, hub, hub_rev };
        ops.push(StateOp::Put(CHECKPOINT.to_vec(), serde_json::to_vec(&checkpoint).expect("JSON")));
        ops.push(StateOp::Delete(IN_FLIGHT.to_vec()));
        let stored = self.state_ops(ops).await;
        drop(shared);
        let committed: Vec<Committed> = answers.iter().map(|(_, committed)| committed.clone()).collect();
        answer_refusals(repeats, refused, &committed, &stored);
        for (reply, committed) in answers {
            let _ = reply.send(stored.clone().map(|()| committed));
        }
    }

    /// Refuses an identified transaction for `error`, recording the
    /// refusal, unless it was decided before (then that answer, its events
    /// left to `publish`).
    async fn refuse_recorded(&self, who: &Principal, trans: &Trans, error: ServiceError) -> Result<Committed> {
        let id = trans.id.as_deref().expect("an identified transaction");
        let _hub = self.inner.hub.lock().await;
        if let Some(answer) = self.decided_before(who.user_name(), id).await? {
            return answer;
        }
        let record = TxRecord { rev: 0, ids: Vec::new(), err: Some(error.to_string()), keys: Vec::new() };
        self.state_ops(vec![StateOp::Put(tx_key(who.user_name(), id), serde_json::to_vec(&record).expect("JSON"))])
            .await?;
        Err(error)
    }

    /// The answer given to the transaction `id` of `user` before, if it
    /// was decided: accepted (its rev and ids; `publish` reads the events,
    /// outside the hub's lock) or refused.
    async fn decided_before(&self, user: Option<&str>, id: &str) -> Result<Option<Result<Committed>>> {
        let Some(bytes) = self.state_get(tx_key(user, id)).await? else { return Ok(None) };
        let record = serde_json::from_slice::<TxRecord>(&bytes).map_err(|error| {
            ServiceError::invalid("transaction", format!("the record of transaction {id} is damaged: {error}"))
        })?;
        Ok(Some(match record.err {
            Some(_) if !record.keys.is_empty() => Err(ServiceError::Conflict { keys: record.keys }),
            Some(err) => Err(ServiceError::invalid("transaction", format!("refused when first sent: {err}"))),
            None => Ok(Committed { rev: record.rev, ids: record.ids, ..Committed::default() }),
        }))
    }

    /// Checks one queued transaction against `keys` (the state so far,
    /// read on demand) and, if it holds, applies it there and returns its
    /// rev and its events.
    async fn plan(
        &self,
        queued: &Queued,
        keys: &mut BTreeMap<(String, String), Option<Record>>,
        last_rev: u64,
    ) -> Result<(u64, Vec<NewEvent>)> {
        let trans = &queued.trans;
        let now = EventId::now().timestamp_ms();
        if let Some(base) = trans.base
            && base > last_rev.max(now)
        {
            return Err(ServiceError::invalid("base", format!("{base} is in the future (now {now})")));
        }
        let touched = self.read_keys(trans, keys).await?;
        if let Some(base) = trans.base {
            let conflicts: Vec<String> = touched
                .iter()
                .filter_map(|slot| {
                    keys[slot]
                        .as_ref()
                        .filter(|record| record.rev > base)
                        .map(|record| format!("{} {} (rev {})", slot.0, slot.1, record.rev))
                })
                .collect();
            if !conflicts.is_empty() {
                return Err(ServiceError::Conflict { keys: conflicts });
            }
        }
        let mut states: BTreeMap<(String, String), Option<serde_json::Map<String, serde_json::Value>>> = touched
            .iter()
            .map(|slot| (slot.clone(), keys[slot].as_ref().and_then(|record| record.state.clone())))
            .collect();
        for (n, act) in trans.acts.iter().enumerate() {
            let state = states.get_mut(&(act.top.clone(), act.key.clone())).expect("every key was read");
            apply(state, act.cmd, act.arg.clone().unwrap_or_default()).map_err(|rule| {
                ServiceError::invalid("acts", format!("action {} ({} {}): {rule}", n + 1, act.top, act.key))
            })?;
        }
        for ((top, key), state) in &states {
            let bytes = state.as_ref().map_or(0, |state| serde_json::to_vec(state).map_or(0, |bytes| bytes.len()));
            if bytes > KEY_STATE_BYTES_MAX {
                return Err(ServiceError::invalid(
                    "acts",
                    format!(
                        "the state of {top} {key} would be {bytes} bytes; a key's state is at most {KEY_STATE_BYTES_MAX}"
                    ),
                ));
            }
        }
        let rev = now.max(last_rev.saturating_add(1));
        let events = events_of(queued, rev, queued.who.user_name(), None);
        // What the log would refuse would fail the whole group's batch.
        let payload_max = self.limits().payload_bytes_max;
        for event in &events {
            let meta = event.meta.as_ref().map_or(0, String::len);
            if meta > cairn_store::limits::META_BYTES_MAX {
                return Err(ServiceError::invalid(
                    "extra",
                    format!("an action's meta would be {meta} bytes; at most {}", cairn_store::limits::META_BYTES_MAX),
                ));
            }
            let payload = event.payload.as_ref().map_or(0, Vec::len) as u64;
            if payload > payload_max {
                return Err(ServiceError::invalid(
                    "arg",
                    format!("an action's arg is {payload} bytes; at most {payload_max}"),
                ));
            }
        }
        // The next transactions of the group see this one's outcome (its
        // events' ids are filled in once appended).
        for (slot, state) in states {
            keys.insert(slot, Some(Record { state, rev, id: EventId::MIN }));
        }
        Ok((rev, events))
    }

    /// A transaction replicated from the hub: applied as the hub decided
    /// (the hub's log is the truth), with the hub's rev and ids.
    async fn plan_replica(
        &self,
        queued: &Queued,
        keys: &mut BTreeMap<(String, String), Option<Record>>,
    ) -> Result<Vec<NewEvent>> {
        let replica = queued.replica.as_ref().expect("a replica");
        if replica.ids.len() != queued.trans.acts.len() {
            return Err(ServiceError::invalid("ids", "one per action"));
        }
        self.read_keys(&queued.trans, keys).await?;
        for act in &queued.trans.acts {
            let slot = (act.top.clone(), act.key.clone());
            let mut state = keys[&slot].as_ref().and_then(|record| record.state.clone());
            let _ = apply(&mut state, act.cmd, act.arg.clone().unwrap_or_default());
            keys.insert(slot, Some(Record { state, rev: replica.rev, id: EventId::MIN }));
        }
        Ok(events_of(queued, replica.rev, replica.user.as_deref(), Some(&replica.ids)))
    }

    /// Reads into `keys` the records of the keys `trans` touches that it
    /// lacks; returns those keys, once each, in order.
    async fn read_keys(
        &self,
        trans: &Trans,
        keys: &mut BTreeMap<(String, String), Option<Record>>,
    ) -> Result<Vec<(String, String)>> {
        let mut touched = Vec::new();
        for act in &trans.acts {
            let slot = (act.top.clone(), act.key.clone());
            if let std::collections::btree_map::Entry::Vacant(vacant) = keys.entry(slot.clone()) {
                let record = self.state_get(record_key(&act.top, &act.key)).await?;
                vacant.insert(record.and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok()));
            }
            if !touched.contains(&slot) {
                touched.push(slot);
            }
        }
        Ok(touched)
    }

    /// Writes state records in writes of at most [`STATE_WRITE_BYTES`]
    /// (a group's key states may be more than the log takes in one
    /// record), in order: the in-flight record's removal, last, makes them
    /// final; a crash before it is finished from the log.
    pub(crate) async fn state_ops(&self, ops: Vec<StateOp>) -> Result<()> {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for op in ops {
            let size = match &op {
                StateOp::Put(key, value) => key.len() + value.len(),
                StateOp::Delete(key) => key.len(),
            };
            if !chunk.is_empty() && bytes + size > STATE_WRITE_BYTES {
                self.storage().state_submit(std::mem::take(&mut chunk)).await?.await?;
                bytes = 0;
            }
            bytes += size;
            chunk.push(op);
        }
        if !chunk.is_empty() {
            self.storage().state_submit(chunk).await?.await?;
        }
        Ok(())
    }

    /// The checkpoint as last stored (without finishing a group in flight).
    pub(crate) async fn hub_checkpoint(&self) -> Result<Checkpoint> {
        Ok(self
            .state_get(CHECKPOINT.to_vec())
            .await?
            .and_then(|bytes| serde_json::from_slice::<Checkpoint>(&bytes).ok())
            .unwrap_or_default())
    }

    /// Finishes a transaction a crash cut between its events and its
    /// states; returns the checkpoint. Under the hub's lock.
    pub(crate) async fn hub_recover(&self) -> Result<Checkpoint> {
        let checkpoint = self
            .state_get(CHECKPOINT.to_vec())
            .await?
            .and_then(|bytes| serde_json::from_slice::<Checkpoint>(&bytes).ok())
            .unwrap_or_default();
        let Some(in_flight) =
            self.state_get(IN_FLIGHT.to_vec()).await?.and_then(|bytes| serde_json::from_slice::<InFlight>(&bytes).ok())
        else {
            return Ok(checkpoint);
        };
        let mut found: Vec<Event> = Vec::new();
        let mut contents = Vec::new();
        for top in &in_flight.topics {
            let Ok(topic) = Topic::new(top) else { continue };
            let query = Query { after: Some(in_flight.after), ..Query::new(Pattern::Exact(topic)) };
            for item in self.read_all(&Principal::Local, query, true).await? {
                if let (Some(act), Some(meta)) =
                    (act_of(&item.event, item.content.as_deref()), action_meta(&item.event))
                {
                    found.push(item.event);
                    contents.push((act, meta));
                }
            }
        }
        // In id order (the transaction's own order), once each.
        let mut order: Vec<usize> = (0..found.len()).collect();
        order.sort_by_key(|&n| found[n].id);
        let mut checkpoint = checkpoint;
        let mut records: BTreeMap<Vec<u8>, Record> = BTreeMap::new();
        let mut txs: BTreeMap<Vec<u8>, TxRecord> = BTreeMap::new();
        for n in order {
            let event = &found[n];
            let ((key, cmd, rev, arg), meta) = contents[n].clone();
            if checkpoint.id.is_some_and(|id| event.id <= id) {
                continue;
            }
            // Only replication writes replicated topics; elsewhere a `hub`
            // in meta is anyone's.
            match (meta.hub.filter(|_| self.is_replicated(&event.topic)), meta.tx) {
                (Some(hub), _) => {
                    checkpoint.hub = checkpoint.hub.max(Some(hub));
                    checkpoint.hub_rev = checkpoint.hub_rev.max(rev);
                }
                (None, Some(tx)) => {
                    let record = txs.entry(tx_key(event.user.as_deref(), &tx)).or_insert(TxRecord {
                        rev,
                        ids: Vec::new(),
                        err: None,
                        keys: Vec::new(),
                    });
                    record.ids.push(event.id);
                }
                (None, None) => {}
            }
            let slot = record_key(event.topic.as_str(), &key);
            let current = match records.get(&slot) {
                Some(record) => Some(record.clone()),
                None => {
                    self.state_get(slot.clone()).await?.and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
                }
            };
            let mut state = current.as_ref().and_then(|record| record.state.clone());
            // The log is the truth: an action that applies keeps its effect.
            let _ = apply(&mut state, cmd, arg);
            records.insert(slot, Record { state, rev, id: event.id });
            checkpoint = Checkpoint { rev: checkpoint.rev.max(rev), id: Some(event.id), ..checkpoint };
        }
        let mut ops: Vec<StateOp> = records
            .into_iter()
            .map(|(key, record)| StateOp::Put(key, serde_json::to_vec(&record).expect("JSON")))
            .collect();
        ops.extend(txs.into_iter().map(|(key, record)| StateOp::Put(key, serde_json::to_vec(&record).expect("JSON"))));
        ops.push(StateOp::Put(CHECKPOINT.to_vec(), serde_json::to_vec(&checkpoint).expect("JSON")));
        ops.push(StateOp::Delete(IN_FLIGHT.to_vec()));
        self.state_ops(ops).await?;
        Ok(checkpoint)
    }

    /// Before a read: finishes a transaction a crash left in flight, if
    /// there is one (one lookup when there is none, the usual case).
    async fn hub_settle(&self) -> Result<()> {
        if self.state_get(IN_FLIGHT.to_vec()).await?.is_some() {
            let _shared = self.shared_lock("hub").await?;
            let _hub = self.inner.hub.lock().await;
            self.hub_recover().await?;
        }
        Ok(())
    }

    /// The last revision committed (0: none yet).
    pub async fn hub_rev(&self) -> Result<u64> {
        let _hub = self.inner.hub.lock().await;
        Ok(self.hub_recover().await?.rev)
    }

    /// `key`'s latest state on `topic` (None: never created, or deleted);
    /// `who` must be allowed to read the topic. With `at`, the state as of
    /// that revision, by replaying the topic.
    pub async fn key_state(
        &self,
        who: &Principal,
        topic: &Topic,
        key: &str,
        at: Option<u64>,
    ) -> Result<Option<KeyState>> {
        self.admit(who)?;
        who.check_read(&Pattern::Exact(topic.clone()))?;
        if let Some(at) = at {
            let mut state = None;
            let mut last = None;
            for item in self.read_all(who, Query::new(Pattern::Exact(topic.clone())), true).await? {
                let Some((act_key, cmd, rev, arg)) = act_of(&item.event, item.content.as_deref()) else { continue };
                if act_key != key || rev > at {
                    continue;
                }
                let _ = apply(&mut state, cmd, arg);
                last = Some((rev, item.event.id));
            }
            return Ok(state.zip(last).map(|(state, (rev, id))| KeyState {
                key: key.to_owned(),
                state,
                rev,
                id,
                provisional: false,
            }));
        }
        self.hub_settle().await?;
        let record = self.state_get(record_key(topic.as_str(), key)).await?;
        let record = record.and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok());
        let mut states: BTreeMap<String, KeyState> = record
            .and_then(|record| {
                record.state.map(|state| KeyState {
                    key: key.to_owned(),
                    state,
                    rev: record.rev,
                    id: record.id,
                    provisional: false,
                })
            })
            .into_iter()
            .map(|state| (key.to_owned(), state))
            .collect();
        self.sat_overlay(topic, &mut states, Some(key)).await?;
        Ok(states.remove(key))
    }

    /// The keys of `topic` that exist, in key order, after `after`, at
    /// most `limit`; `who` must be allowed to read the topic.
    pub async fn key_states(
        &self,
        who: &Principal,
        topic: &Topic,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyState>> {
        self.admit(who)?;
        who.check_read(&Pattern::Exact(topic.clone()))?;
        self.hub_settle().await?;
        let prefix = record_key(topic.as_str(), "");
        let entries = self.storage().state_scan(prefix.clone()).await?;
        let mut states: BTreeMap<String, KeyState> = BTreeMap::new();
        for (raw, value) in entries {
            let key = String::from_utf8_lossy(&raw[prefix.len()..]).into_owned();
            let Ok(record) = serde_json::from_slice::<Record>(&value) else { continue };
            if let Some(state) = record.state {
                states.insert(key.clone(), KeyState { key, state, rev: record.rev, id: record.id, provisional: false });
            }
        }
        self.sat_overlay(topic, &mut states, None).await?;
        Ok(states
            .into_values()
            .filter(|state| after.is_none_or(|after| state.key.as_str() > after))
            .take(limit)
            .collect())
    }
}

/// An action as an event carries it: (key, cmd, rev, arg), if `event` is one.
pub fn action_of(
    event: &Event,
    content: Option<&[u8]>,
) -> Option<(String, Cmd, u64, serde_json::Map<String, serde_json::Value>)> {
    act_of(event, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(key: &str, cmd: Cmd, arg: serde_json::Value) -> Act {
        let arg = match arg {
            serde_json::Value::Object(arg) => Some(arg),
            _ => None,
        };
        Act { top: "t".to_owned(), key: key.to_owned(), cmd, arg }
    }

    /// A crash between a transaction's events and its state records: the
    /// next hub call finishes it from the log.
    #[tokio::test]
    async fn a_transaction_cut_between_its_events_and_its_states_is_finished_by_the_next_call() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (service, _) =
            crate::open_local(dir.path().join("s"), cairn_store::Options::default(), crate::ServiceOptions::default())
                .await
                .expect("open");
        let who = Principal::Local;
        let trans = |acts| Trans { acts, ..Trans::default() };
        let first =
            service.publish(&who, trans(vec![act("k1", Cmd::New, serde_json::json!({"a": 1}))])).await.expect("first");
        // What `publish` does up to its events, and no further.
        let in_flight = InFlight { topics: vec!["t".to_owned()], after: service.last_id() };
        let ops = vec![StateOp::Put(IN_FLIGHT.to_vec(), serde_json::to_vec(&in_flight).expect("JSON"))];
        service.storage().state_submit(ops).await.expect("queued").await.expect("durable");
        let meta = ActMeta {
            key: "k1".to_owned(),
            cmd: Cmd::Mod,
            rev: first.rev + 1,
            tx: None,
            created: None,
            extra: None,
            hub: None,
        };
        let event = NewEvent {
            topic: Some(Topic::new("t").expect("topic")),
            meta: Some(serde_json::to_string(&meta).expect("JSON")),
            payload: Some(br#"{"b":2}"#.to_vec()),
            ..NewEvent::default()
        };
        let cut = service.append(&who, Batch { events: vec![event], ..Batch::default() }).await.expect("append");
        // The states still say the first transaction ...
        let raw = service.state_get(record_key("t", "k1")).await.expect("read").expect("record");
        assert_eq!(serde_json::from_slice::<Record>(&raw).expect("record").rev, first.rev);
        // ... until the next call, which finishes the cut one.
        let topic = Topic::new("t").expect("topic");
        let state = service.key_state(&who, &topic, "k1", None).await.expect("state").expect("k1");
        assert_eq!(serde_json::Value::Object(state.state), serde_json::json!({"a": 1, "b": 2}));
        assert_eq!((state.rev, state.id), (first.rev + 1, cut[0].id));
        assert!(service.state_get(IN_FLIGHT.to_vec()).await.expect("read").is_none());
        // And the next transaction's rev comes after it.
        let next = service.publish(&who, trans(vec![act("k2", Cmd::New, serde_json::json!({}))])).await.expect("next");
        assert!(next.rev > first.rev + 1);
        // A refused transaction leaves nothing in flight.
        let refused = service.publish(&who, trans(vec![act("k9", Cmd::Del, serde_json::Value::Null)])).await;
        assert!(refused.is_err());
        assert!(service.state_get(IN_FLIGHT.to_vec()).await.expect("read").is_none());
        service.close().await;
    }

    /// Large transactions waiting together commit in several groups (one
    /// group's key states would be more than the log takes in a record),
    /// and a key's state is bounded.
    #[tokio::test]
    async fn large_transactions_waiting_together_all_commit_and_a_keys_state_is_bounded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (service, _) =
            crate::open_local(dir.path().join("s"), cairn_store::Options::default(), crate::ServiceOptions::default())
                .await
                .expect("open");
        let big = "x".repeat(900_000);
        let tasks: Vec<_> = (0..40)
            .map(|n| {
                let (service, big) = (service.clone(), big.clone());
                tokio::spawn(async move {
                    let acts = vec![act(&format!("b{n}"), Cmd::New, serde_json::json!({ "v": big }))];
                    service.publish(&Principal::Local, Trans { acts, ..Trans::default() }).await
                })
            })
            .collect();
        let mut revs = Vec::new();
        for task in tasks {
            revs.push(task.await.expect("joined").expect("committed").rev);
        }
        revs.sort_unstable();
        revs.dedup();
        assert_eq!(revs.len(), 40);
        let topic = Topic::new("t").expect("topic");
        assert_eq!(service.key_states(&Principal::Local, &topic, None, 100).await.expect("states").len(), 40);
        // Another 900 KB field would make b0's state 1.8 MB.
        let acts = vec![act("b0", Cmd::Mod, serde_json::json!({ "w": big }))];
        let refused = service.publish(&Principal::Local, Trans { acts, ..Trans::default() }).await;
        assert!(matches!(refused, Err(ServiceError::Invalid { .. })), "{refused:?}");
        service.close().await;
    }

    #[test]
    fn actions_apply_by_evts_rules() {
        let fields = |value: serde_json::Value| match value {
            serde_json::Value::Object(fields) => fields,
            _ => serde_json::Map::new(),
        };
        let mut state = None;
        apply(&mut state, Cmd::New, fields(serde_json::json!({"a": 1}))).expect("new");
        apply(&mut state, Cmd::Mod, fields(serde_json::json!({"b": 2}))).expect("mod");
        assert_eq!(state.clone().map(serde_json::Value::Object), Some(serde_json::json!({"a": 1, "b": 2})));
        assert!(apply(&mut state, Cmd::New, serde_json::Map::new()).is_err());
        apply(&mut state, Cmd::Del, serde_json::Map::new()).expect("del");
        assert!(apply(&mut state, Cmd::Del, serde_json::Map::new()).is_err());
        assert!(apply(&mut state, Cmd::Mod, serde_json::Map::new()).is_err());
        apply(&mut state, Cmd::New, fields(serde_json::json!({"c": 3}))).expect("new after del");
        assert_eq!(state.map(serde_json::Value::Object), Some(serde_json::json!({"c": 3})));
    }
}
