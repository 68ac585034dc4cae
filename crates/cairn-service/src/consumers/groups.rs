//! Consumer groups as service operations: authorization, reading the
//! entries, and durability around the pure state machine (`group.rs`).
//!
//! The table lives in memory behind one async lock, loaded from the state
//! records on first use. Every change is submitted to storage while the
//! lock is held, so storage has the changes in the order they were made,
//! and the call returns once they are durable.
//!
//! Where several servers share the storage (PostgreSQL), each use also
//! takes the storage's shared lock (`Storage::exclusive`; after this
//! process's lock, so one caller per process waits for it) and reads the
//! groups' version record (`G`): a table older than it is loaded again,
//! every change bumps it, and the shared lock is held until the change is
//! durable. So the servers act on one table, one at a time.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cairn_store::{Pattern, Query, StateOp, Topic};
use tokio::sync::{Mutex, MutexGuard};

use super::GROUP_NAME_BYTES_MAX;
use super::group::{Claim, GroupError, GroupTable};
use crate::error::{Result, ServiceError};
use crate::principal::Principal;
use crate::service::{Budget, Item, Service};
use crate::stream_id::StreamId;

/// The groups of a service, loaded on first use.
#[derive(Default)]
pub(crate) struct Groups {
    table: Mutex<Option<GroupTable>>,
    /// With shared storage: the version of the table loaded.
    version: std::sync::Mutex<Option<u64>>,
}

/// The key of the groups' version record (shared storage only).
pub(crate) const VERSION_KEY: &[u8] = b"G";

/// The table, held: by this process's lock, and with shared storage by
/// the lock every process shares, with the version read under it.
pub(crate) struct TableGuard<'a> {
    table: MutexGuard<'a, Option<GroupTable>>,
    shared: Option<(cairn_store::Exclusive, u64)>,
}

impl std::ops::Deref for TableGuard<'_> {
    type Target = Option<GroupTable>;
    fn deref(&self) -> &Option<GroupTable> {
        &self.table
    }
}

impl std::ops::DerefMut for TableGuard<'_> {
    fn deref_mut(&mut self) -> &mut Option<GroupTable> {
        &mut self.table
    }
}

/// Where a new group starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupStart {
    /// After the topic's newest entry (`$`).
    Newest,
    /// After this id.
    After(StreamId),
}

/// What one topic of a group read asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupRead {
    /// Entries never delivered to the group (`>`).
    New,
    /// The consumer's own pending entries after this id.
    Pending(StreamId),
}

/// An entry handed out by a group: its id and, unless it was removed since
/// it was delivered, the event with its payload.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The entry id.
    pub id: StreamId,
    /// The event and payload; `None` for an entry no longer stored.
    pub item: Option<Item>,
}

/// XPENDING's summary of a group.
#[derive(Clone, Debug, Default)]
pub struct PendingSummary {
    /// Entries pending.
    pub count: usize,
    /// The smallest and largest pending ids.
    pub range: Option<(StreamId, StreamId)>,
    /// Pending entries per consumer holding any.
    pub owners: Vec<(Bytes, usize)>,
}

/// One row of XPENDING's extended form.
#[derive(Clone, Debug)]
pub struct PendingRow {
    /// The entry.
    pub id: StreamId,
    /// Who holds it.
    pub consumer: Bytes,
    /// Milliseconds since it was last delivered.
    pub idle_ms: u64,
    /// How many times it was delivered.
    pub deliveries: u64,
}

/// XINFO GROUPS's row.
#[derive(Clone, Debug)]
pub struct GroupInfo {
    /// The group.
    pub name: Bytes,
    /// Its members.
    pub consumers: usize,
    /// Its pending entries.
    pub pending: usize,
    /// The last delivered id.
    pub last_delivered: StreamId,
    /// Entries before the next undelivered one.
    pub entries_read: u64,
    /// Entries not yet delivered.
    pub lag: u64,
}

/// XINFO CONSUMERS's row.
#[derive(Clone, Debug)]
pub struct MemberInfo {
    /// The consumer.
    pub name: Bytes,
    /// Entries it holds.
    pub pending: usize,
    /// Milliseconds since it last asked for entries.
    pub idle_ms: u64,
    /// Milliseconds since it last got new ones, if ever.
    pub inactive_ms: Option<u64>,
}

/// XAUTOCLAIM's result.
#[derive(Clone, Debug)]
pub struct AutoClaimed {
    /// Where the next call should start (`0-0` when the list is done).
    pub next: StreamId,
    /// The entries claimed.
    pub claimed: Vec<Entry>,
    /// Entries dropped from the list because they are no longer stored.
    pub deleted: Vec<StreamId>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// No such group: named by its topic (front ends know the group's name).
fn no_group(topic: &Topic, _group: &[u8]) -> ServiceError {
    ServiceError::not_found("group", topic)
}

fn group_error(error: GroupError, topic: &Topic, group: &[u8]) -> ServiceError {
    match error {
        GroupError::NoGroup => no_group(topic, group),
        GroupError::Exists => {
            ServiceError::Exists { what: "group", key: format!("{} of {topic}", String::from_utf8_lossy(group)) }
        }
    }
}

/// Most entries one group read or claim hands out (over all its topics):
/// the state change recording them stays well inside one log record.
pub const GROUP_ENTRIES_PER_CALL_MAX: usize = 10_000;

/// Checks a group's or consumer's name: 1 to [`GROUP_NAME_BYTES_MAX`]
/// bytes (they become part of state keys).
fn check_name(what: &'static str, name: &[u8]) -> Result<()> {
    if name.is_empty() || name.len() > GROUP_NAME_BYTES_MAX {
        return Err(ServiceError::invalid(what, format!("{what} names are 1-{GROUP_NAME_BYTES_MAX} bytes")));
    }
    Ok(())
}

/// Groups change state: using them needs read and write access to the topic.
fn check_use(who: &Principal, topic: &Topic) -> Result<()> {
    who.check_read(&Pattern::Exact(topic.clone()))?;
    who.check_write(topic)
}

impl Service {
    async fn groups(&self) -> Result<TableGuard<'_>> {
        // This process's lock first, then the shared one: one caller per
        // process waits for the shared lock (holding a pooled connection),
        // so waiting callers cannot take every connection.
        let mut table = self.inner.groups.table.lock().await;
        let exclusive = self.storage().exclusive("consumer groups").await?;
        let mut shared = None;
        if let Some(exclusive) = exclusive {
            let version = match self.state_get(VERSION_KEY.to_vec()).await? {
                Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().unwrap_or_default()),
                None => 0,
            };
            if *self.inner.groups.version.lock().expect("version lock") != Some(version) {
                *table = None;
            }
            shared = Some((exclusive, version));
        }
        if table.is_none() {
            let mut entries = Vec::new();
            for prefix in [b"g", b"c", b"p"] {
                entries.extend(self.storage().state_scan(prefix.to_vec()).await?);
            }
            *table = Some(GroupTable::load(&entries));
            *self.inner.groups.version.lock().expect("version lock") = shared.as_ref().map(|(_, version)| *version);
        }
        Ok(TableGuard { table, shared })
    }

    /// Makes a change to the table durable and releases the table. The
    /// change was made in memory first; should storage refuse or fail it,
    /// the table is dropped, to be loaded again from what storage holds.
    /// With shared storage the change bumps the version and is durable
    /// before the shared lock goes.
    async fn commit(&self, mut guard: TableGuard<'_>, mut ops: Vec<StateOp>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let next = guard.shared.as_ref().map(|(_, version)| version + 1);
        if let Some(next) = next {
            ops.push(StateOp::Put(VERSION_KEY.to_vec(), next.to_be_bytes().to_vec()));
        }
        let pending = match self.storage().state_submit(ops).await {
            Ok(pending) => pending,
            Err(error) => {
                *guard.table = None;
                return Err(error.into());
            }
        };
        if let Some((exclusive, _)) = guard.shared.take() {
            // The shared lock goes only once the change is durable, even if
            // this caller goes away meanwhile (a client disconnecting): a
            // task of its own waits, records the version, then unlocks. A
            // failure leaves no version known, so the table is loaded again.
            let service = self.clone();
            let (done, answer) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let result = pending.await;
                *service.inner.groups.version.lock().expect("version lock") = if result.is_ok() { next } else { None };
                drop(exclusive);
                let _ = done.send(result);
            });
            let result = answer.await.unwrap_or(Err(cairn_store::StoreError::ShuttingDown));
            if let Err(error) = result {
                *guard.table = None;
                return Err(error.into());
            }
            return Ok(());
        }
        drop(guard);
        if let Err(error) = pending.await {
            *self.inner.groups.table.lock().await = None;
            return Err(error.into());
        }
        Ok(())
    }

    async fn start_id(&self, who: &Principal, topic: &Topic, start: GroupStart) -> Result<StreamId> {
        match start {
            GroupStart::After(id) => Ok(id),
            GroupStart::Newest => {
                Ok(self.last_entry(who, topic).await?.map_or(StreamId::MIN, |item| StreamId::of(&item.event)))
            }
        }
    }

    /// XGROUP CREATE: `NotFound` (topic) when the topic has no events and
    /// `mkstream` is not given; `Exists` when the group exists.
    pub async fn group_create(
        &self,
        who: &Principal,
        topic: &Topic,
        group: Bytes,
        start: GroupStart,
        mkstream: bool,
    ) -> Result<()> {
        self.admit(who)?;
        check_use(who, topic)?;
        check_name("group", &group)?;
        let last = self.start_id(who, topic, start).await?;
        if !mkstream && self.storage().head(topic.clone()).await?.is_none() {
            return Err(ServiceError::not_found("topic", topic));
        }
        let mut table = self.groups().await?;
        let created = table.as_mut().expect("loaded").create(topic, group.clone(), last);
        let ops = created.map_err(|error| group_error(error, topic, &group))?;
        self.commit(table, ops).await
    }

    /// XGROUP SETID.
    pub async fn group_set_id(&self, who: &Principal, topic: &Topic, group: &[u8], start: GroupStart) -> Result<()> {
        self.admit(who)?;
        check_use(who, topic)?;
        let last = self.start_id(who, topic, start).await?;
        let mut table = self.groups().await?;
        let ops =
            table.as_mut().expect("loaded").set_last(topic, group, last).map_err(|e| group_error(e, topic, group))?;
        self.commit(table, ops).await
    }

    /// XGROUP DESTROY: false when there was no such group.
    pub async fn group_destroy(&self, who: &Principal, topic: &Topic, group: &[u8]) -> Result<bool> {
        self.admit(who)?;
        check_use(who, topic)?;
        let mut table = self.groups().await?;
        let Some(ops) = table.as_mut().expect("loaded").destroy(topic, group) else { return Ok(false) };
        self.commit(table, ops).await?;
        Ok(true)
    }

    /// XGROUP CREATECONSUMER: false when it was a member already.
    pub async fn group_create_consumer(
        &self,
        who: &Principal,
        topic: &Topic,
        group: &[u8],
        consumer: Bytes,
    ) -> Result<bool> {
        self.admit(who)?;
        check_use(who, topic)?;
        check_name("consumer", &consumer)?;
        let mut table = self.groups().await?;
        let created = table
            .as_mut()
            .expect("loaded")
            .create_consumer(topic, group, consumer, now_ms())
            .map_err(|e| group_error(e, topic, group))?;
        let Some(ops) = created else { return Ok(false) };
        self.commit(table, ops).await?;
        Ok(true)
    }

    /// XGROUP DELCONSUMER: how many pending entries it held.
    pub async fn group_delete_consumer(
        &self,
        who: &Principal,
        topic: &Topic,
        group: &[u8],
        consumer: &[u8],
    ) -> Result<usize> {
        self.admit(who)?;
        check_use(who, topic)?;
        let mut table = self.groups().await?;
        let (held, ops) = table
            .as_mut()
            .expect("loaded")
            .delete_consumer(topic, group, consumer)
            .map_err(|e| group_error(e, topic, group))?;
        self.commit(table, ops).await?;
        Ok(held)
    }

    /// The entry `id` of `topic` (with its payload when `content`), or a
    /// removed-entry marker.
    async fn load_entry(&self, who: &Principal, topic: &Topic, id: StreamId, content: bool) -> Result<Entry> {
        let query = Query { from_seq: Some(id.seq), limit: Some(1), ..Query::new(Pattern::Exact(topic.clone())) };
        let mut found = self.read_all(who, query, content).await?;
        Ok(match found.pop() {
            Some(item) if StreamId::of(&item.event) == id => Entry { id, item: Some(item) },
            _ => Entry { id, item: None },
        })
    }

    /// Loads the entries `ids` in order, as many as fit in `budget`
    /// (payloads only when `content`).
    async fn load_entries(
        &self,
        who: &Principal,
        topic: &Topic,
        ids: &[StreamId],
        content: bool,
        budget: &mut Budget,
    ) -> Result<Vec<Entry>> {
        let mut entries = Vec::with_capacity(ids.len());
        for id in ids {
            let entry = self.load_entry(who, topic, *id, content).await?;
            if let Some(item) = &entry.item
                && !budget.take(item, entries.is_empty())?
            {
                break;
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// XREADGROUP: hands entries of each topic to `consumer` (new ones:
    /// after the group's last delivered id, which moves on, pending unless
    /// `noack`; or its own pending ones after an id, delivered again), at
    /// most `count` per topic, [`GROUP_ENTRIES_PER_CALL_MAX`] in all, and
    /// no more than fit in one reply's budget. Resolves once the group's
    /// new state is durable.
    pub async fn group_read(
        &self,
        who: &Principal,
        reads: &[(Topic, GroupRead)],
        group: &Bytes,
        consumer: &Bytes,
        count: usize,
        noack: bool,
    ) -> Result<Vec<(Topic, Vec<Entry>)>> {
        self.admit(who)?;
        check_name("group", group)?;
        check_name("consumer", consumer)?;
        for (topic, _) in reads {
            check_use(who, topic)?;
        }
        let mut table = self.groups().await?;
        let now = now_ms();
        let mut ops = Vec::new();
        let mut found = Vec::new();
        let mut left = GROUP_ENTRIES_PER_CALL_MAX;
        let mut budget = Budget::partial();
        for (topic, read) in reads {
            let state = table.as_mut().expect("loaded");
            let group_state = state.get(topic, group).ok_or_else(|| no_group(topic, group))?;
            let count = count.min(left);
            let entries = match *read {
                GroupRead::Pending(after) => {
                    // Load first (the table does not change meanwhile: its
                    // lock is held), then deliver again what was loaded.
                    let ids: Vec<StreamId> = group_state.consumers.get(consumer).map_or_else(Vec::new, |member| {
                        member.pending.range(after..).filter(|&&id| id > after).take(count).copied().collect()
                    });
                    let entries = self.load_entries(who, topic, &ids, true, &mut budget).await?;
                    let state = table.as_mut().expect("loaded");
                    let (ids, changes) = state
                        .redeliver(topic, group, consumer, after, entries.len(), now)
                        .map_err(|e| group_error(e, topic, group))?;
                    debug_assert!(ids.iter().eq(entries.iter().map(|entry| &entry.id)));
                    ops.extend(changes);
                    entries
                }
                GroupRead::New => {
                    let items = match group_state.last.next() {
                        Some(start) if count > 0 => {
                            self.range(who, topic, start, StreamId::MAX, count, false, &mut budget).await?
                        }
                        _ => Vec::new(),
                    };
                    let ids: Vec<StreamId> = items.iter().map(|item| StreamId::of(&item.event)).collect();
                    let state = table.as_mut().expect("loaded");
                    ops.extend(
                        state
                            .deliver_new(topic, group, consumer, &ids, noack, now)
                            .map_err(|e| group_error(e, topic, group))?,
                    );
                    items.into_iter().map(|item| Entry { id: StreamId::of(&item.event), item: Some(item) }).collect()
                }
            };
            left -= entries.len();
            found.push((topic.clone(), entries));
        }
        self.commit(table, ops).await?;
        Ok(found)
    }

    /// XACK: how many of `ids` were pending.
    pub async fn group_ack(&self, who: &Principal, topic: &Topic, group: &[u8], ids: &[StreamId]) -> Result<usize> {
        self.admit(who)?;
        check_use(who, topic)?;
        let mut table = self.groups().await?;
        let (acked, ops) = table.as_mut().expect("loaded").ack(topic, group, ids);
        self.commit(table, ops).await?;
        Ok(acked)
    }

    /// XPENDING's summary.
    pub async fn group_pending(&self, who: &Principal, topic: &Topic, group: &[u8]) -> Result<PendingSummary> {
        self.admit(who)?;
        who.check_read(&Pattern::Exact(topic.clone()))?;
        let table = self.groups().await?;
        let entry = table.as_ref().expect("loaded").get(topic, group).ok_or_else(|| no_group(topic, group))?;
        let range = entry.pel.keys().next().zip(entry.pel.keys().next_back()).map(|(a, b)| (*a, *b));
        let owners = entry
            .consumers
            .iter()
            .filter(|(_, member)| !member.pending.is_empty())
            .map(|(name, member)| (name.clone(), member.pending.len()))
            .collect();
        Ok(PendingSummary { count: entry.pel.len(), range, owners })
    }

    /// XPENDING's extended form: pending entries in `start..=end`, at most
    /// `count`, of one consumer if given, idle at least `min_idle_ms`.
    #[allow(clippy::too_many_arguments)] // XPENDING's own arguments.
    pub async fn group_pending_rows(
        &self,
        who: &Principal,
        topic: &Topic,
        group: &[u8],
        start: StreamId,
        end: StreamId,
        count: usize,
        owner: Option<&[u8]>,
        min_idle_ms: u64,
    ) -> Result<Vec<PendingRow>> {
        self.admit(who)?;
        who.check_read(&Pattern::Exact(topic.clone()))?;
        let table = self.groups().await?;
        let entry = table.as_ref().expect("loaded").get(topic, group).ok_or_else(|| no_group(topic, group))?;
        let now = now_ms();
        if start > end {
            return Ok(Vec::new());
        }
        Ok(entry
            .pel
            .range(start..=end)
            .filter(|(_, pending)| owner.is_none_or(|owner| *owner == pending.consumer[..]))
            .filter(|(_, pending)| now.saturating_sub(pending.delivered_ms) >= min_idle_ms)
            .take(count)
            .map(|(id, pending)| PendingRow {
                id: *id,
                consumer: pending.consumer.clone(),
                idle_ms: now.saturating_sub(pending.delivered_ms),
                deliveries: pending.count,
            })
            .collect())
    }

    /// XCLAIM: the entries now held by `consumer`.
    pub async fn group_claim(
        &self,
        who: &Principal,
        topic: &Topic,
        group: &[u8],
        consumer: &Bytes,
        claim: Claim,
    ) -> Result<Vec<Entry>> {
        self.admit(who)?;
        check_use(who, topic)?;
        check_name("consumer", consumer)?;
        if claim.ids.len() > GROUP_ENTRIES_PER_CALL_MAX {
            return Err(ServiceError::invalid(
                "ids",
                format!("a claim takes at most {GROUP_ENTRIES_PER_CALL_MAX} entries at a time"),
            ));
        }
        let mut table = self.groups().await?;
        if table.as_ref().expect("loaded").get(topic, group).is_none() {
            return Err(no_group(topic, group));
        }
        // Every entry named must be answered for: the reply is whole.
        let loaded = self.load_entries(who, topic, &claim.ids, !claim.justid, &mut Budget::whole()).await?;
        let stored = |id: StreamId| loaded.iter().any(|entry| entry.id == id && entry.item.is_some());
        let claimed = table
            .as_mut()
            .expect("loaded")
            .claim(topic, group, consumer, &claim, &stored, now_ms())
            .map_err(|e| group_error(e, topic, group))?;
        self.commit(table, claimed.ops).await?;
        let mut out = Vec::with_capacity(claimed.claimed.len());
        for id in claimed.claimed {
            if let Some(entry) = loaded.iter().find(|entry| entry.id == id) {
                out.push(entry.clone());
            }
        }
        Ok(out)
    }

    /// XAUTOCLAIM: up to `count` pending entries from `start`, idle at least
    /// `min_idle_ms`, taken by `consumer`.
    #[allow(clippy::too_many_arguments)] // XAUTOCLAIM's own arguments.
    pub async fn group_autoclaim(
        &self,
        who: &Principal,
        topic: &Topic,
        group: &[u8],
        consumer: &Bytes,
        start: StreamId,
        count: usize,
        min_idle_ms: u64,
        justid: bool,
    ) -> Result<AutoClaimed> {
        self.admit(who)?;
        check_use(who, topic)?;
        check_name("consumer", consumer)?;
        let mut table = self.groups().await?;
        let (mut ids, mut next) = table
            .as_ref()
            .expect("loaded")
            .autoclaim_candidates(topic, group, start, count.min(GROUP_ENTRIES_PER_CALL_MAX))
            .map_err(|e| group_error(e, topic, group))?;
        // As many as fit in one reply; the next call starts at the first left.
        let loaded = self.load_entries(who, topic, &ids, !justid, &mut Budget::partial()).await?;
        if loaded.len() < ids.len() {
            next = ids[loaded.len()];
            ids.truncate(loaded.len());
        }
        let stored = |id: StreamId| loaded.iter().any(|entry| entry.id == id && entry.item.is_some());
        let now = now_ms();
        let claim = Claim { ids, min_idle_ms, delivered_ms: now, retry: None, justid, force: false };
        let claimed = table
            .as_mut()
            .expect("loaded")
            .claim(topic, group, consumer, &claim, &stored, now)
            .map_err(|e| group_error(e, topic, group))?;
        self.commit(table, claimed.ops).await?;
        let entries =
            claimed.claimed.iter().filter_map(|id| loaded.iter().find(|entry| entry.id == *id).cloned()).collect();
        Ok(AutoClaimed { next, claimed: entries, deleted: claimed.deleted })
    }

    /// Writes imported state records as a change of the groups: under the
    /// groups' locks, with the version moved, the table read again after.
    pub(crate) async fn import_group_records(&self, ops: Vec<StateOp>) -> Result<()> {
        let mut table = self.groups().await?;
        *table = None;
        self.commit(table, ops).await?;
        self.forget_groups().await;
        Ok(())
    }

    /// Drops the groups' in-memory table; the next use loads it from the
    /// state records again (after an import wrote some).
    pub(crate) async fn forget_groups(&self) {
        *self.inner.groups.table.lock().await = None;
    }

    /// The topics `who` may read that have a group (a stream made by
    /// `XGROUP CREATE … MKSTREAM` has a group and no entry yet).
    pub async fn group_topics(&self, who: &Principal) -> Result<Vec<Topic>> {
        self.admit(who)?;
        let table = self.groups().await?;
        Ok(table.as_ref().expect("loaded").topics().filter(|topic| who.can_read_topic(topic)).cloned().collect())
    }

    /// The largest id XDEL removed from `topic` (Redis's
    /// `max-deleted-entry-id`), if any.
    pub async fn max_deleted(&self, who: &Principal, topic: &Topic) -> Result<Option<StreamId>> {
        self.admit(who)?;
        who.check_read(&Pattern::Exact(topic.clone()))?;
        Ok(self.state_get(max_deleted_key(topic)).await?.and_then(|value| StreamId::from_key(&value)))
    }

    /// Records that XDEL removed `removed` from `topic`, keeping the largest.
    pub(crate) async fn note_deleted(&self, topic: &Topic, removed: StreamId) -> Result<()> {
        // Under the groups' lock, so two removals cannot lower the record.
        let _table = self.groups().await?;
        let key = max_deleted_key(topic);
        let known = self.state_get(key.clone()).await?.and_then(|value| StreamId::from_key(&value));
        if known.is_some_and(|known| known >= removed) {
            return Ok(());
        }
        self.storage().state_submit(vec![StateOp::Put(key, removed.to_key().to_vec())]).await?.await?;
        Ok(())
    }

    /// How many groups `topic` has.
    pub async fn group_count(&self, who: &Principal, topic: &Topic) -> Result<usize> {
        self.admit(who)?;
        who.check_read(&Pattern::Exact(topic.clone()))?;
        let table = self.groups().await?;
        Ok(table.as_ref().expect("loaded").of_topic(topic).map_or(0, |groups| groups.len()))
    }

    /// XINFO GROUPS: `None` when the topic has neither events nor groups.
    pub async fn group_infos(&self, who: &Principal, topic: &Topic) -> Result<Option<Vec<GroupInfo>>> {
        self.admit(who)?;
        who.check_read(&Pattern::Exact(topic.clone()))?;
        let head = self.storage().head(topic.clone()).await?;
        let rows: Vec<(Bytes, usize, usize, StreamId)> = {
            let table = self.groups().await?;
            let Some(groups) = table.as_ref().expect("loaded").of_topic(topic) else {
                return Ok(head.map(|_| Vec::new()));
            };
            groups.iter().map(|(name, g)| (name.clone(), g.consumers.len(), g.pel.len(), g.last)).collect()
        };
        let added = head.as_ref().map_or(0, |head| head.last_seq + 1);
        let mut out = Vec::with_capacity(rows.len());
        for (name, consumers, pending, last) in rows {
            // Entries read: how many entries precede the next undelivered one.
            let next = match last.next() {
                Some(start) => self
                    .range(who, topic, start, StreamId::MAX, 1, false, &mut Budget::partial())
                    .await?
                    .pop()
                    .map(|i| i.event.seq),
                None => None,
            };
            let read = if last == StreamId::MIN { 0 } else { next.unwrap_or(added) };
            out.push(GroupInfo {
                name,
                consumers,
                pending,
                last_delivered: last,
                entries_read: read,
                lag: added - read.min(added),
            });
        }
        Ok(Some(out))
    }

    /// XINFO CONSUMERS.
    pub async fn group_members(&self, who: &Principal, topic: &Topic, group: &[u8]) -> Result<Vec<MemberInfo>> {
        self.admit(who)?;
        who.check_read(&Pattern::Exact(topic.clone()))?;
        let table = self.groups().await?;
        let entry = table.as_ref().expect("loaded").get(topic, group).ok_or_else(|| no_group(topic, group))?;
        let now = now_ms();
        Ok(entry
            .consumers
            .iter()
            .map(|(name, member)| MemberInfo {
                name: name.clone(),
                pending: member.pending.len(),
                idle_ms: now.saturating_sub(member.seen_ms),
                inactive_ms: member.active_ms.map(|active| now.saturating_sub(active)),
            })
            .collect())
    }
}

/// The state key of a topic's largest XDEL-removed id.
fn max_deleted_key(topic: &Topic) -> Vec<u8> {
    let mut key = b"d".to_vec();
    key.extend_from_slice(topic.as_str().as_bytes());
    key
}
