//! Consumer groups as a pure state machine (no I/O, no clock, no locks):
//! Redis Streams' semantics of a group on a topic (the last delivered id,
//! members, and the pending entries list: who holds which entry since
//! when, delivered how often).
//!
//! Every change returns the state records that make it durable
//! ([`StateOp`]s, written through the storage seam by `groups.rs`), and
//! [`GroupTable::load`] rebuilds the same table from those records, so the
//! table is a function of the records written (the model test checks it).
//!
//! Record keys, all under one topic and group: `g<topic><group>` → last
//! delivered id; `c…<consumer>` → the time it was first seen; `p…<id>` →
//! delivery time, delivery count, owner. (`<topic>` is its length in one
//! byte then its bytes; `<group>` its length in four bytes, big-endian,
//! then its bytes.)

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use cairn_store::{StateOp, Topic};

use crate::stream_id::StreamId;

/// Every group of every topic.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct GroupTable {
    groups: HashMap<Topic, BTreeMap<Bytes, Group>>,
}

/// One group on one topic.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The newest entry id handed to a member with `>`.
    pub last: StreamId,
    /// Members by name.
    pub consumers: BTreeMap<Bytes, Member>,
    /// Pending entries: delivered, not acknowledged.
    pub pel: BTreeMap<StreamId, Pending>,
}

/// A member of a group.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// When it last asked for entries (ms).
    pub seen_ms: u64,
    /// When it last got new entries (ms), if ever (not durable).
    pub active_ms: Option<u64>,
    /// The entries it holds (each also in the group's `pel`, with it as owner).
    pub pending: BTreeSet<StreamId>,
}

/// A pending entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Who holds it.
    pub consumer: Bytes,
    /// When it was last delivered (ms).
    pub delivered_ms: u64,
    /// How many times it was delivered.
    pub count: u64,
}

/// Why a group change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupError {
    /// No such group on the topic.
    NoGroup,
    /// The group exists already.
    Exists,
}

/// An XCLAIM: which entries, and how.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    /// The entries to take.
    pub ids: Vec<StreamId>,
    /// Only entries idle at least this long (ms).
    pub min_idle_ms: u64,
    /// Their new delivery time (ms).
    pub delivered_ms: u64,
    /// Set their delivery count to this.
    pub retry: Option<u64>,
    /// Leave the delivery count alone (JUSTID).
    pub justid: bool,
    /// Take entries not pending at all (FORCE), if still stored.
    pub force: bool,
}

/// What a claim did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Claimed {
    /// Entries now held by the claimer.
    pub claimed: Vec<StreamId>,
    /// Entries dropped from the pending list because they are no longer stored.
    pub deleted: Vec<StreamId>,
    /// The records to write.
    pub ops: Vec<StateOp>,
}

impl GroupTable {
    /// Rebuilds the table from its state records (`g`, `c` and `p` keys, in
    /// any order); records that do not parse are skipped.
    pub fn load(entries: &[(Vec<u8>, Vec<u8>)]) -> GroupTable {
        let mut table = GroupTable::default();
        let of_kind = |kind: u8| entries.iter().filter(move |(key, _)| key.first() == Some(&kind));
        for (key, value) in of_kind(b'g') {
            let (Some((topic, group, _)), Some(last)) = (split_key(key), StreamId::from_key(value)) else { continue };
            table.groups.entry(topic).or_default().insert(group, Group { last, ..Group::default() });
        }
        for (key, value) in of_kind(b'c') {
            let Some((topic, group, name)) = split_key(key) else { continue };
            if let Some(group) = table.group_mut(&topic, &group) {
                let seen_ms = value.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
                group.consumers.insert(Bytes::copy_from_slice(name), Member { seen_ms, ..Member::default() });
            }
        }
        for (key, value) in of_kind(b'p') {
            let Some((topic, group, id)) = split_key(key) else { continue };
            let (Some(group), Some(id)) = (table.group_mut(&topic, &group), StreamId::from_key(id)) else { continue };
            let (Some(delivered), Some(count)) = (value.get(..8), value.get(8..16)) else { continue };
            let pending = Pending {
                delivered_ms: u64::from_le_bytes(delivered.try_into().expect("8 bytes")),
                count: u64::from_le_bytes(count.try_into().expect("8 bytes")),
                consumer: Bytes::copy_from_slice(&value[16..]),
            };
            group.consumers.entry(pending.consumer.clone()).or_default().pending.insert(id);
            group.pel.insert(id, pending);
        }
        table
    }

    /// The group `name` of `topic`.
    pub fn get(&self, topic: &Topic, name: &[u8]) -> Option<&Group> {
        self.groups.get(topic)?.get(name)
    }

    /// Every group of `topic`, by name.
    pub fn of_topic(&self, topic: &Topic) -> Option<&BTreeMap<Bytes, Group>> {
        self.groups.get(topic).filter(|groups| !groups.is_empty())
    }

    /// Every topic with a group.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.groups.iter().filter(|(_, groups)| !groups.is_empty()).map(|(topic, _)| topic)
    }

    fn group_mut(&mut self, topic: &Topic, name: &[u8]) -> Option<&mut Group> {
        self.groups.get_mut(topic)?.get_mut(name)
    }

    fn group_or_err(&mut self, topic: &Topic, name: &[u8]) -> Result<&mut Group, GroupError> {
        self.group_mut(topic, name).ok_or(GroupError::NoGroup)
    }

    /// XGROUP CREATE: a new group whose last delivered id is `last`.
    pub fn create(&mut self, topic: &Topic, name: Bytes, last: StreamId) -> Result<Vec<StateOp>, GroupError> {
        let groups = self.groups.entry(topic.clone()).or_default();
        if groups.contains_key(&name) {
            return Err(GroupError::Exists);
        }
        let ops = vec![StateOp::Put(group_key(topic, &name), last.to_key().to_vec())];
        groups.insert(name, Group { last, ..Group::default() });
        Ok(ops)
    }

    /// XGROUP SETID: moves the last delivered id.
    pub fn set_last(&mut self, topic: &Topic, name: &[u8], last: StreamId) -> Result<Vec<StateOp>, GroupError> {
        self.group_or_err(topic, name)?.last = last;
        Ok(vec![StateOp::Put(group_key(topic, name), last.to_key().to_vec())])
    }

    /// XGROUP DESTROY: `None` when there was no such group.
    pub fn destroy(&mut self, topic: &Topic, name: &[u8]) -> Option<Vec<StateOp>> {
        let groups = self.groups.get_mut(topic)?;
        let removed = groups.remove(name)?;
        if groups.is_empty() {
            self.groups.remove(topic);
        }
        let mut ops = vec![StateOp::Delete(group_key(topic, name))];
        ops.extend(removed.consumers.keys().map(|member| StateOp::Delete(consumer_key(topic, name, member))));
        ops.extend(removed.pel.keys().map(|id| StateOp::Delete(pending_key(topic, name, *id))));
        Some(ops)
    }

    /// XGROUP CREATECONSUMER: `None` when it was a member already.
    pub fn create_consumer(
        &mut self,
        topic: &Topic,
        name: &[u8],
        consumer: Bytes,
        now: u64,
    ) -> Result<Option<Vec<StateOp>>, GroupError> {
        let group = self.group_or_err(topic, name)?;
        if group.consumers.contains_key(&consumer) {
            return Ok(None);
        }
        let ops = vec![StateOp::Put(consumer_key(topic, name, &consumer), now.to_le_bytes().to_vec())];
        group.consumers.insert(consumer, Member { seen_ms: now, ..Member::default() });
        Ok(Some(ops))
    }

    /// XGROUP DELCONSUMER: removes a member and its pending entries; returns
    /// how many it held.
    pub fn delete_consumer(
        &mut self,
        topic: &Topic,
        name: &[u8],
        consumer: &[u8],
    ) -> Result<(usize, Vec<StateOp>), GroupError> {
        let group = self.group_or_err(topic, name)?;
        let Some(member) = group.consumers.remove(consumer) else { return Ok((0, Vec::new())) };
        let mut ops = vec![StateOp::Delete(consumer_key(topic, name, consumer))];
        for id in &member.pending {
            group.pel.remove(id);
            ops.push(StateOp::Delete(pending_key(topic, name, *id)));
        }
        Ok((member.pending.len(), ops))
    }

    /// A member asks for entries: it joins if new, and is seen now.
    fn join<'a>(
        &'a mut self,
        topic: &Topic,
        name: &[u8],
        consumer: &Bytes,
        now: u64,
        ops: &mut Vec<StateOp>,
    ) -> Result<&'a mut Group, GroupError> {
        let group = self.group_or_err(topic, name)?;
        let member = group.consumers.entry(consumer.clone()).or_insert_with(|| {
            ops.push(StateOp::Put(consumer_key(topic, name, consumer), now.to_le_bytes().to_vec()));
            Member::default()
        });
        member.seen_ms = now;
        Ok(group)
    }

    /// XREADGROUP `>`: `ids` (read after the group's last delivered id, in
    /// order) go to `consumer`; the last delivered id moves to the last of
    /// them; unless `noack`, they become pending with `consumer`.
    pub fn deliver_new(
        &mut self,
        topic: &Topic,
        name: &[u8],
        consumer: &Bytes,
        ids: &[StreamId],
        noack: bool,
        now: u64,
    ) -> Result<Vec<StateOp>, GroupError> {
        let mut ops = Vec::new();
        let group = self.join(topic, name, consumer, now, &mut ops)?;
        let Some(&newest) = ids.last() else { return Ok(ops) };
        group.last = newest;
        ops.push(StateOp::Put(group_key(topic, name), newest.to_key().to_vec()));
        group.consumers.get_mut(consumer).expect("joined above").active_ms = Some(now);
        if noack {
            return Ok(ops);
        }
        for &id in ids {
            let pending = Pending { consumer: consumer.clone(), delivered_ms: now, count: 1 };
            ops.push(StateOp::Put(pending_key(topic, name, id), pending_value(&pending)));
            if let Some(previous) = group.pel.insert(id, pending)
                && let Some(owner) = group.consumers.get_mut(&previous.consumer)
            {
                owner.pending.remove(&id);
            }
            group.consumers.get_mut(consumer).expect("joined above").pending.insert(id);
        }
        Ok(ops)
    }

    /// XREADGROUP with an id: `consumer`'s own pending entries after
    /// `after`, at most `count`; each is delivered again (count and time).
    pub fn redeliver(
        &mut self,
        topic: &Topic,
        name: &[u8],
        consumer: &Bytes,
        after: StreamId,
        count: usize,
        now: u64,
    ) -> Result<(Vec<StreamId>, Vec<StateOp>), GroupError> {
        let mut ops = Vec::new();
        let group = self.join(topic, name, consumer, now, &mut ops)?;
        let member = group.consumers.get(consumer).expect("joined above");
        let ids: Vec<StreamId> = member.pending.range(after..).filter(|&&id| id > after).take(count).copied().collect();
        for id in &ids {
            let pending = group.pel.get_mut(id).expect("a member's pending entry is in its group's list");
            pending.count = pending.count.saturating_add(1);
            pending.delivered_ms = now;
            ops.push(StateOp::Put(pending_key(topic, name, *id), pending_value(pending)));
        }
        Ok((ids, ops))
    }

    /// XACK: drops entries from the pending list; returns how many were pending.
    pub fn ack(&mut self, topic: &Topic, name: &[u8], ids: &[StreamId]) -> (usize, Vec<StateOp>) {
        let mut ops = Vec::new();
        if let Some(group) = self.group_mut(topic, name) {
            for id in ids {
                if let Some(pending) = group.pel.remove(id) {
                    if let Some(owner) = group.consumers.get_mut(&pending.consumer) {
                        owner.pending.remove(id);
                    }
                    ops.push(StateOp::Delete(pending_key(topic, name, *id)));
                }
            }
        }
        (ops.len(), ops)
    }

    /// XAUTOCLAIM's candidates: up to `count` pending ids from `start`, and
    /// where the next call should start (`0-0` when the list is done).
    pub fn autoclaim_candidates(
        &self,
        topic: &Topic,
        name: &[u8],
        start: StreamId,
        count: usize,
    ) -> Result<(Vec<StreamId>, StreamId), GroupError> {
        let group = self.get(topic, name).ok_or(GroupError::NoGroup)?;
        let mut scanned = group.pel.range(start..).map(|(id, _)| *id);
        let ids = scanned.by_ref().take(count).collect();
        Ok((ids, scanned.next().unwrap_or(StreamId::MIN)))
    }

    /// XCLAIM: moves pending entries idle long enough to `consumer`.
    /// `present` tells whether an entry is still stored (those that are not
    /// leave the pending list).
    pub fn claim(
        &mut self,
        topic: &Topic,
        name: &[u8],
        consumer: &Bytes,
        claim: &Claim,
        present: &dyn Fn(StreamId) -> bool,
        now: u64,
    ) -> Result<Claimed, GroupError> {
        let mut out = Claimed::default();
        let group = self.join(topic, name, consumer, now, &mut out.ops)?;
        for &id in &claim.ids {
            let idle = group.pel.get(&id).map(|pending| now.saturating_sub(pending.delivered_ms));
            match idle {
                None if claim.force => {
                    if !present(id) {
                        continue;
                    }
                    let pending = Pending { consumer: consumer.clone(), delivered_ms: claim.delivered_ms, count: 0 };
                    group.pel.insert(id, pending);
                }
                None => continue,
                Some(idle) if idle < claim.min_idle_ms => continue,
                Some(_) => {}
            }
            if !present(id) {
                if let Some(pending) = group.pel.remove(&id)
                    && let Some(owner) = group.consumers.get_mut(&pending.consumer)
                {
                    owner.pending.remove(&id);
                }
                out.ops.push(StateOp::Delete(pending_key(topic, name, id)));
                out.deleted.push(id);
                continue;
            }
            let pending = group.pel.get_mut(&id).expect("pending, or inserted above");
            let previous = std::mem::replace(&mut pending.consumer, consumer.clone());
            pending.delivered_ms = claim.delivered_ms;
            if let Some(retry) = claim.retry {
                pending.count = retry;
            } else if !claim.justid {
                pending.count = pending.count.saturating_add(1);
            }
            out.ops.push(StateOp::Put(pending_key(topic, name, id), pending_value(pending)));
            if let Some(owner) = group.consumers.get_mut(&previous) {
                owner.pending.remove(&id);
            }
            group.consumers.get_mut(consumer).expect("joined above").pending.insert(id);
            out.claimed.push(id);
        }
        Ok(out)
    }
}

/// The key prefix of one group's records of `kind`.
fn prefix(kind: u8, topic: &Topic, group: &[u8]) -> Vec<u8> {
    let name = topic.as_str().as_bytes();
    let mut key = Vec::with_capacity(6 + name.len() + group.len());
    key.push(kind);
    key.push(u8::try_from(name.len()).expect("topics are at most 255 bytes"));
    key.extend_from_slice(name);
    key.extend_from_slice(&u32::try_from(group.len()).unwrap_or(u32::MAX).to_be_bytes());
    key.extend_from_slice(group);
    key
}

fn group_key(topic: &Topic, group: &[u8]) -> Vec<u8> {
    prefix(b'g', topic, group)
}

fn consumer_key(topic: &Topic, group: &[u8], consumer: &[u8]) -> Vec<u8> {
    let mut key = prefix(b'c', topic, group);
    key.extend_from_slice(consumer);
    key
}

fn pending_key(topic: &Topic, group: &[u8], id: StreamId) -> Vec<u8> {
    let mut key = prefix(b'p', topic, group);
    key.extend_from_slice(&id.to_key());
    key
}

fn pending_value(pending: &Pending) -> Vec<u8> {
    let mut value = Vec::with_capacity(16 + pending.consumer.len());
    value.extend_from_slice(&pending.delivered_ms.to_le_bytes());
    value.extend_from_slice(&pending.count.to_le_bytes());
    value.extend_from_slice(&pending.consumer);
    value
}

/// Splits a record key into topic, group and the rest.
fn split_key(key: &[u8]) -> Option<(Topic, Bytes, &[u8])> {
    let topic_len = usize::from(*key.get(1)?);
    let topic = Topic::new(std::str::from_utf8(key.get(2..2 + topic_len)?).ok()?).ok()?;
    let at = 2 + topic_len;
    let group_len = usize::try_from(u32::from_be_bytes(key.get(at..at + 4)?.try_into().ok()?)).ok()?;
    let group = Bytes::copy_from_slice(key.get(at + 4..at.checked_add(4 + group_len)?)?);
    Some((topic, group, &key[at + 4 + group_len..]))
}

#[cfg(test)]
#[path = "group_tests.rs"]
mod tests;
