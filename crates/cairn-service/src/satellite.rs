//! A satellite's side of the evt hub (seed 003): the hub's topics it
//! replicates, and the transactions on them it queues for the hub.
//!
//! The replicated topics (`ServiceOptions::replicated`) hold the hub's
//! events only, in the hub's order, with the hub's revisions (meta `rev`)
//! and ids (meta `hub`): the link (`cairn-server`'s `satellite.rs`) writes
//! them through [`Service::replicate`], and no caller can write or remove
//! them. A local event's id is its position in this store's log, so the
//! hub's id is kept beside it rather than as it.
//!
//! A transaction published on them is queued instead
//! (`cairn.sat.queue`, an event each, durable before the publisher is
//! answered) under an id (the writer's or a fresh one); reads of keyed
//! state apply the queued ones over the replicated state and mark the keys
//! they change `provisional`. The link sends the queue to the hub in
//! order (`evt.sat`); the hub checks and commits each on its own and
//! answers each; a rejection becomes an event on `cairn.sat.rejected`
//! (the transaction, the reason, the conflicting keys); the queue's
//! answered end (`Q`) moves once the hub's answer is in and, for an
//! accepted one, its events are replicated. A resend after a crash on
//! either side is answered by the hub from its record of the transaction's
//! id, so nothing applies twice.

use cairn_store::{Batch, EventId, Expect, NewEvent, Pattern, Query, StateOp, Topic};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ServiceError};
use crate::keyed::{Committed, KeyState, Replica, Trans, check_trans};
use crate::principal::Principal;
use crate::service::Service;

/// Transactions queued for the hub, one event each.
pub const QUEUE_TOPIC: &str = "cairn.sat.queue";
/// Transactions the hub rejected, one event each.
pub const REJECTED_TOPIC: &str = "cairn.sat.rejected";
/// The last queued transaction the hub answered (and, if accepted,
/// whose events were replicated).
const ANSWERED: &[u8] = b"Q";
/// The satellite's secret, for its transactions' ids.
const SECRET: &[u8] = b"I";
/// A rejection's reason is cut to this many bytes...
const REASON_BYTES_MAX: usize = 2048;
/// ... and its keys to this many (each at most about 520 bytes).
const KEYS_MAX: usize = 50;
/// Transactions waiting for the hub at most (each state read applies
/// them all).
pub const QUEUE_MAX: u64 = 100_000;

/// The queue's answered end (`Q`): the last transaction answered, by id
/// and seq (the seq counts what waits even if that event were removed).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Mark {
    at: EventId,
    seq: u64,
}

/// A transaction in the queue.
#[derive(Clone, Debug)]
pub struct QueuedTrans {
    /// Its queue event.
    pub at: EventId,
    /// Its queue event's seq.
    pub seq: u64,
    /// The user who published it locally.
    pub user: Option<String>,
    /// The transaction (its id set).
    pub trans: Trans,
    /// The id its writer gave it, if any.
    pub local: Option<String>,
}

/// A transaction as the hub committed it, to replicate.
#[derive(Clone, Debug)]
pub struct Replicated {
    /// Its actions (and id, time, extra).
    pub trans: Trans,
    /// The hub's revision.
    pub rev: u64,
    /// The hub's ids of its events, one per action.
    pub ids: Vec<EventId>,
    /// Who published it on the hub.
    pub user: Option<String>,
}

/// A rejection, as recorded on `cairn.sat.rejected` (meta).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rejection {
    /// The transaction's id (on the hub).
    pub tx: String,
    /// The id its writer gave it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Why the hub refused it.
    pub reason: String,
    /// The conflicting keys (`<top> <key> (rev N)`), if that was why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

impl Service {
    /// Whether `topic` is one of the hub's topics this satellite replicates.
    pub fn is_replicated(&self, topic: &Topic) -> bool {
        !topic.is_system() && self.inner.options.replicated.iter().any(|pattern| pattern.matches(topic.as_str()))
    }

    /// The hub's topics this satellite replicates (empty: not a satellite).
    pub fn replicated(&self) -> &[Pattern] {
        &self.inner.options.replicated
    }

    /// Refuses writes and removals of replicated topics.
    pub(crate) fn check_not_replicated(&self, topic: &Topic) -> Result<()> {
        if self.is_replicated(topic) {
            return Err(ServiceError::forbidden(format!(
                "{topic} is replicated from the hub: publish transactions on it (they are queued for the hub)"
            )));
        }
        Ok(())
    }

    /// Queues `trans` for the hub (durably), applied to this satellite's
    /// state provisionally until the hub answers.
    ///
    /// The id the hub sees is this satellite's own: 128 random bits, or,
    /// for a writer's id, a hash of this satellite's secret, the writer
    /// and that id (so a writer's retry is one transaction on the hub, and
    /// no writer, here or on another satellite, can take another's id).
    pub(crate) async fn sat_enqueue(&self, who: &Principal, mut trans: Trans) -> Result<Committed> {
        let local = trans.id.take();
        let id = match &local {
            None => fresh_id(),
            Some(local) => {
                use sha2::Digest as _;
                let secret = self.sat_secret().await?;
                let mut digest = sha2::Sha256::new();
                for part in [secret.as_str(), &who.scope(), local] {
                    digest.update(part.as_bytes());
                    digest.update([0]);
                }
                digest.finalize()[..16].iter().map(|byte| format!("{byte:02x}")).collect()
            }
        };
        trans.id = Some(id.clone());
        trans.usr = None;
        let queue = Topic::new(QUEUE_TOPIC)?;
        if let Some(head) = self.storage().head(queue.clone()).await? {
            let answered = self.sat_answered_at().await?.map_or(0, |mark| mark.seq + 1);
            if (head.last_seq + 1).saturating_sub(answered) >= QUEUE_MAX {
                return Err(ServiceError::Overloaded {
                    reason: "the queue of transactions for the hub is full (100,000): the hub has been out of reach too long",
                });
            }
        }
        let event = NewEvent {
            topic: Some(queue),
            payload: Some(serde_json::to_vec(&trans).expect("JSON")),
            meta: local.as_ref().map(|local| serde_json::json!({ "id": local }).to_string()),
            user: who.user_name().map(str::to_owned),
            ..NewEvent::default()
        };
        self.storage().submit(Batch::single(event, Expect::Any), true).await?.await?;
        self.inner.sat_wake.notify_one();
        let rev = self.hub_checkpoint().await?.hub_rev;
        Ok(Committed { rev, queued: Some(local.unwrap_or(id)), ..Committed::default() })
    }

    /// This satellite's secret (for the ids of its transactions), made once.
    async fn sat_secret(&self) -> Result<String> {
        self.inner
            .sat_secret
            .get_or_try_init(|| async {
                if let Some(bytes) = self.state_get(SECRET.to_vec()).await? {
                    return Ok(String::from_utf8_lossy(&bytes).into_owned());
                }
                let secret = fresh_id();
                self.state_ops(vec![StateOp::Put(SECRET.to_vec(), secret.clone().into_bytes())]).await?;
                Ok(secret)
            })
            .await
            .cloned()
    }

    /// Resolves when a transaction was queued for the hub since the last
    /// call (or one was queued before the first).
    pub async fn sat_queued(&self) {
        self.inner.sat_wake.notified().await;
    }

    /// The queued transactions the hub has not answered (or whose accepted
    /// events are not replicated yet), oldest first, after `after` if
    /// given, at most `limit`.
    pub async fn sat_pending(&self, after: Option<EventId>, limit: u64) -> Result<Vec<QueuedTrans>> {
        let answered = self.sat_answered_at().await?.map(|mark| mark.at);
        let after = after.max(answered);
        let query = Query { after, limit: Some(limit), ..Query::new(Pattern::Exact(Topic::new(QUEUE_TOPIC)?)) };
        let mut out = Vec::new();
        for item in self.read_all(&Principal::Local, query, true).await? {
            let Some(trans) = item.content.as_deref().and_then(|bytes| serde_json::from_slice::<Trans>(bytes).ok())
            else {
                continue;
            };
            let local = item
                .event
                .meta
                .as_deref()
                .and_then(|meta| serde_json::from_str::<serde_json::Value>(meta).ok())
                .and_then(|meta| meta.get("id").and_then(serde_json::Value::as_str).map(str::to_owned));
            let (at, seq, user) = (item.event.id, item.event.seq, item.event.user.clone());
            out.push(QueuedTrans { at, seq, user, trans, local });
        }
        Ok(out)
    }

    async fn sat_answered_at(&self) -> Result<Option<Mark>> {
        Ok(self.state_get(ANSWERED.to_vec()).await?.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Records that the hub answered every queued transaction up to the
    /// one at `at` (its seq `seq`; their accepted events are replicated).
    pub async fn sat_answered(&self, at: EventId, seq: u64) -> Result<()> {
        self.state_ops(vec![StateOp::Put(ANSWERED.to_vec(), serde_json::to_vec(&Mark { at, seq }).expect("JSON"))])
            .await
    }

    /// Records the hub's rejection of `queued` on `cairn.sat.rejected`
    /// (once, however often it is recorded).
    /// The reason and the keys are cut to fit an event's meta (a conflict
    /// on many keys names them all in its reason).
    pub async fn sat_rejected(&self, queued: &QueuedTrans, mut rejection: Rejection) -> Result<()> {
        if rejection.reason.len() > REASON_BYTES_MAX {
            let mut end = REASON_BYTES_MAX;
            while !rejection.reason.is_char_boundary(end) {
                end -= 1;
            }
            rejection.reason.truncate(end);
            rejection.reason.push('…');
        }
        if rejection.keys.len() > KEYS_MAX {
            let more = rejection.keys.len() - KEYS_MAX;
            rejection.keys.truncate(KEYS_MAX);
            rejection.keys.push(format!("… and {more} more"));
        }
        let event = NewEvent {
            topic: Some(Topic::new(REJECTED_TOPIC)?),
            kind: Some("rejected".to_owned()),
            meta: Some(serde_json::to_string(&rejection).expect("JSON")),
            payload: Some(serde_json::to_vec(&queued.trans).expect("JSON")),
            user: queued.user.clone(),
            ..NewEvent::default()
        };
        let batch = Batch {
            events: vec![event],
            idempotency_key: Some(format!("local\0sat-rejected\0{}", rejection.tx)),
            ..Batch::default()
        };
        self.storage().submit(batch, true).await?.await?;
        Ok(())
    }

    /// Where replication stands: the last hub revision and hub event id
    /// replicated (as last stored: what a group in flight adds comes
    /// later, and replicating it again is skipped).
    pub async fn sat_position(&self) -> Result<(u64, Option<EventId>)> {
        let checkpoint = self.hub_checkpoint().await?;
        Ok((checkpoint.hub_rev, checkpoint.hub))
    }

    /// Commits transactions replicated from the hub, in order, as one
    /// group (one batch): each one's actions (on replicated topics only)
    /// with the hub's rev, ids and user; those replicated before are
    /// skipped, and so are (with a warning) those that are not valid
    /// transactions (events a hub's writer made look like actions, which
    /// the hub's own state ignores too).
    pub async fn replicate(&self, replicas: Vec<Replicated>) -> Result<()> {
        let mut queued = Vec::with_capacity(replicas.len());
        for replicated in replicas {
            let checked = check_trans(&Principal::Local, &replicated.trans).and_then(|topics| {
                if let Some(topic) = topics.values().find(|topic| !self.is_replicated(topic)) {
                    return Err(ServiceError::invalid("top", format!("{topic} is not one of the replicated topics")));
                }
                if replicated.ids.len() != replicated.trans.acts.len() {
                    return Err(ServiceError::invalid("ids", "one per action"));
                }
                Ok(topics)
            });
            let topics = match checked {
                Ok(topics) => topics,
                Err(error) => {
                    tracing::warn!("satellite: skipped events {:?} of the hub: {error}", replicated.ids);
                    continue;
                }
            };
            let replica = Replica { rev: replicated.rev, ids: replicated.ids, user: replicated.user };
            queued.push((replicated.trans, topics, replica));
        }
        if queued.is_empty() {
            return Ok(());
        }
        self.commit_replicas(queued).await
    }

    /// Applies the transactions queued on `topic` over `states` (keys to
    /// their confirmed states), each whole or not at all, as the hub would
    /// if nothing came between; marks the keys they change provisional.
    pub(crate) async fn sat_overlay(
        &self,
        topic: &Topic,
        states: &mut std::collections::BTreeMap<String, KeyState>,
        only: Option<&str>,
    ) -> Result<()> {
        if !self.is_replicated(topic) {
            return Ok(());
        }
        for queued in self.sat_pending(None, u64::MAX).await? {
            let acts: Vec<_> = queued
                .trans
                .acts
                .iter()
                .filter(|act| act.top == topic.as_str() && only.is_none_or(|key| act.key == key))
                .collect();
            if acts.is_empty() {
                continue;
            }
            let mut changed: std::collections::BTreeMap<String, Option<serde_json::Map<String, serde_json::Value>>> =
                std::collections::BTreeMap::new();
            let mut applies = true;
            for act in acts {
                let state = changed
                    .entry(act.key.clone())
                    .or_insert_with(|| states.get(&act.key).map(|state| state.state.clone()));
                if crate::keyed::apply(state, act.cmd, act.arg.clone().unwrap_or_default()).is_err() {
                    applies = false;
                    break;
                }
            }
            if !applies {
                continue;
            }
            for (key, state) in changed {
                match state {
                    None => {
                        states.remove(&key);
                    }
                    Some(state) => {
                        let entry = states.entry(key.clone()).or_insert_with(|| KeyState {
                            key,
                            state: serde_json::Map::new(),
                            rev: 0,
                            id: EventId::MIN,
                            provisional: true,
                        });
                        entry.state = state;
                        entry.provisional = true;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A transaction id no other satellite makes: 128 random bits.
fn fresh_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the system's random numbers");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
