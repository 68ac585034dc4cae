//! Model-based test of the group state machine: random operations run on
//! [`GroupTable`] and on a plain model written from Redis's documentation;
//! after each, the two agree, every member's pending set is exactly the
//! entries it owns, and loading the state records written so far rebuilds
//! the same table (so what is durable is what is in memory).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use cairn_store::{StateOp, Topic};
use proptest::prelude::*;

use super::{Claim, GroupError, GroupTable};
use crate::stream_id::StreamId;

#[derive(Clone, Debug)]
enum Op {
    Create {
        group: u8,
        last: u8,
    },
    SetLast {
        group: u8,
        last: u8,
    },
    Destroy {
        group: u8,
    },
    CreateConsumer {
        group: u8,
        consumer: u8,
    },
    DeleteConsumer {
        group: u8,
        consumer: u8,
    },
    DeliverNew {
        group: u8,
        consumer: u8,
        n: u8,
        noack: bool,
    },
    Redeliver {
        group: u8,
        consumer: u8,
        after: u8,
        count: u8,
    },
    Ack {
        group: u8,
        ids: Vec<u8>,
    },
    Claim {
        group: u8,
        consumer: u8,
        ids: Vec<u8>,
        min_idle: u8,
        force: bool,
        justid: bool,
        retry: Option<u8>,
        gone: u8,
    },
    Tick {
        ms: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let group = 0..2u8;
    let consumer = 0..3u8;
    prop_oneof![
        2 => (group.clone(), 0..20u8).prop_map(|(group, last)| Op::Create { group, last }),
        1 => (group.clone(), 0..20u8).prop_map(|(group, last)| Op::SetLast { group, last }),
        1 => group.clone().prop_map(|group| Op::Destroy { group }),
        1 => (group.clone(), consumer.clone()).prop_map(|(group, consumer)| Op::CreateConsumer { group, consumer }),
        1 => (group.clone(), consumer.clone()).prop_map(|(group, consumer)| Op::DeleteConsumer { group, consumer }),
        4 => (group.clone(), consumer.clone(), 0..4u8, prop::bool::weighted(0.2))
            .prop_map(|(group, consumer, n, noack)| Op::DeliverNew { group, consumer, n, noack }),
        2 => (group.clone(), consumer.clone(), 0..30u8, 1..4u8)
            .prop_map(|(group, consumer, after, count)| Op::Redeliver { group, consumer, after, count }),
        2 => (group.clone(), proptest::collection::vec(0..30u8, 0..4)).prop_map(|(group, ids)| Op::Ack { group, ids }),
        2 => (group, consumer, proptest::collection::vec(0..30u8, 0..4), 0..5u8, any::<bool>(), any::<bool>(), proptest::option::weighted(0.2, 0..5u8), 0..30u8)
            .prop_map(|(group, consumer, ids, min_idle, force, justid, retry, gone)| Op::Claim { group, consumer, ids, min_idle, force, justid, retry, gone }),
        2 => (1..4u8).prop_map(|ms| Op::Tick { ms }),
    ]
}

/// The model: a group is its last id, its members, and who holds what.
#[derive(Default, Clone, Debug)]
struct ModelGroup {
    last: StreamId,
    members: BTreeSet<Bytes>,
    pel: Pel,
}

fn id(n: u8) -> StreamId {
    StreamId { ms: u64::from(n), seq: u64::from(n) }
}

fn name(prefix: &str, n: u8) -> Bytes {
    Bytes::from(format!("{prefix}{n}"))
}

/// Pending entries as the model keeps them: id → (owner, delivered at, count).
type Pel = BTreeMap<StreamId, (Bytes, u64, u64)>;

/// A group's durable part: last id, members with what they hold, pending entries.
type DurableGroup = (StreamId, BTreeMap<Bytes, BTreeSet<StreamId>>, Pel);

/// What loading sees: the durable part of a table.
fn durable(table: &GroupTable, topic: &Topic) -> BTreeMap<Bytes, DurableGroup> {
    let mut out = BTreeMap::new();
    for (group_name, group) in table.of_topic(topic).into_iter().flatten() {
        let members = group.consumers.iter().map(|(name, member)| (name.clone(), member.pending.clone())).collect();
        let pel = group.pel.iter().map(|(id, p)| (*id, (p.consumer.clone(), p.delivered_ms, p.count))).collect();
        out.insert(group_name.clone(), (group.last, members, pel));
    }
    out
}

fn apply(records: &mut BTreeMap<Vec<u8>, Vec<u8>>, ops: Vec<StateOp>) {
    for op in ops {
        match op {
            StateOp::Put(key, value) => {
                records.insert(key, value);
            }
            StateOp::Delete(key) => {
                records.remove(&key);
            }
        }
    }
}

fn run(ops: Vec<Op>) {
    let topic = Topic::new("orders:1").expect("a topic");
    let mut table = GroupTable::default();
    let mut model: BTreeMap<Bytes, ModelGroup> = BTreeMap::new();
    let mut records: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut now = 1000u64;
    for op in ops {
        match op {
            Op::Tick { ms } => now += u64::from(ms),
            Op::Create { group, last } => {
                let result = table.create(&topic, name("g", group), id(last));
                match model.get(&name("g", group)) {
                    Some(_) => assert_eq!(result.err(), Some(GroupError::Exists)),
                    None => {
                        apply(&mut records, result.expect("created"));
                        model.insert(name("g", group), ModelGroup { last: id(last), ..ModelGroup::default() });
                    }
                }
            }
            Op::SetLast { group, last } => {
                let result = table.set_last(&topic, &name("g", group), id(last));
                match model.get_mut(&name("g", group)) {
                    None => assert_eq!(result.err(), Some(GroupError::NoGroup)),
                    Some(model) => {
                        apply(&mut records, result.expect("set"));
                        model.last = id(last);
                    }
                }
            }
            Op::Destroy { group } => {
                let result = table.destroy(&topic, &name("g", group));
                assert_eq!(result.is_some(), model.remove(&name("g", group)).is_some());
                apply(&mut records, result.unwrap_or_default());
            }
            Op::CreateConsumer { group, consumer } => {
                let result = table.create_consumer(&topic, &name("g", group), name("c", consumer), now);
                match model.get_mut(&name("g", group)) {
                    None => assert_eq!(result.err(), Some(GroupError::NoGroup)),
                    Some(model) => {
                        let created = result.expect("a group");
                        assert_eq!(created.is_some(), model.members.insert(name("c", consumer)));
                        apply(&mut records, created.unwrap_or_default());
                    }
                }
            }
            Op::DeleteConsumer { group, consumer } => {
                let result = table.delete_consumer(&topic, &name("g", group), &name("c", consumer));
                match model.get_mut(&name("g", group)) {
                    None => assert_eq!(result.err(), Some(GroupError::NoGroup)),
                    Some(model) => {
                        let (held, ops) = result.expect("a group");
                        let member = name("c", consumer);
                        let expected = if model.members.remove(&member) {
                            let before = model.pel.len();
                            model.pel.retain(|_, (owner, _, _)| *owner != member);
                            before - model.pel.len()
                        } else {
                            0
                        };
                        assert_eq!(held, expected);
                        apply(&mut records, ops);
                    }
                }
            }
            Op::DeliverNew { group, consumer, n, noack } => {
                let member = name("c", consumer);
                let start = model.get(&name("g", group)).map_or(0, |model| model.last.seq + 1);
                let ids: Vec<StreamId> = (start..start + u64::from(n)).map(|seq| StreamId { ms: seq, seq }).collect();
                let result = table.deliver_new(&topic, &name("g", group), &member, &ids, noack, now);
                match model.get_mut(&name("g", group)) {
                    None => assert_eq!(result.err(), Some(GroupError::NoGroup)),
                    Some(model) => {
                        apply(&mut records, result.expect("a group"));
                        model.members.insert(member.clone());
                        if let Some(newest) = ids.last() {
                            model.last = *newest;
                        }
                        if !noack {
                            for id in ids {
                                model.pel.insert(id, (member.clone(), now, 1));
                            }
                        }
                    }
                }
            }
            Op::Redeliver { group, consumer, after, count } => {
                let member = name("c", consumer);
                let result = table.redeliver(&topic, &name("g", group), &member, id(after), usize::from(count), now);
                match model.get_mut(&name("g", group)) {
                    None => assert_eq!(result.err(), Some(GroupError::NoGroup)),
                    Some(model) => {
                        let (ids, ops) = result.expect("a group");
                        model.members.insert(member.clone());
                        let expected: Vec<StreamId> = model
                            .pel
                            .iter()
                            .filter(|(entry, (owner, _, _))| **entry > id(after) && *owner == member)
                            .map(|(entry, _)| *entry)
                            .take(usize::from(count))
                            .collect();
                        assert_eq!(ids, expected);
                        for entry in &expected {
                            let pending = model.pel.get_mut(entry).expect("listed");
                            pending.1 = now;
                            pending.2 += 1;
                        }
                        apply(&mut records, ops);
                    }
                }
            }
            Op::Ack { group, ids } => {
                let ids: Vec<StreamId> = ids.into_iter().map(id).collect();
                let (acked, ops) = table.ack(&topic, &name("g", group), &ids);
                let expected = match model.get_mut(&name("g", group)) {
                    None => 0,
                    Some(model) => ids.iter().filter(|id| model.pel.remove(id).is_some()).count(),
                };
                assert_eq!(acked, expected);
                apply(&mut records, ops);
            }
            Op::Claim { group, consumer, ids, min_idle, force, justid, retry, gone } => {
                let member = name("c", consumer);
                let claim = Claim {
                    ids: ids.into_iter().map(id).collect(),
                    min_idle_ms: u64::from(min_idle),
                    delivered_ms: now,
                    retry: retry.map(u64::from),
                    justid,
                    force,
                };
                // Entries at or above `gone` are no longer stored.
                let present = |entry: StreamId| entry < id(gone);
                let result = table.claim(&topic, &name("g", group), &member, &claim, &present, now);
                match model.get_mut(&name("g", group)) {
                    None => assert_eq!(result.err(), Some(GroupError::NoGroup)),
                    Some(model) => {
                        let claimed = result.expect("a group");
                        model.members.insert(member.clone());
                        let (mut expect_claimed, mut expect_deleted) = (Vec::new(), Vec::new());
                        for entry in &claim.ids {
                            let idle = model.pel.get(entry).map(|(_, at, _)| now.saturating_sub(*at));
                            match idle {
                                None if force && present(*entry) => {
                                    model.pel.insert(*entry, (member.clone(), now, 0));
                                }
                                None => continue,
                                Some(idle) if idle < claim.min_idle_ms => continue,
                                Some(_) => {}
                            }
                            if !present(*entry) {
                                model.pel.remove(entry);
                                expect_deleted.push(*entry);
                                continue;
                            }
                            let pending = model.pel.get_mut(entry).expect("pending");
                            pending.0 = member.clone();
                            pending.1 = now;
                            match claim.retry {
                                Some(retry) => pending.2 = retry,
                                None if !justid => pending.2 += 1,
                                None => {}
                            }
                            expect_claimed.push(*entry);
                        }
                        assert_eq!((&claimed.claimed, &claimed.deleted), (&expect_claimed, &expect_deleted));
                        apply(&mut records, claimed.ops);
                    }
                }
            }
        }
        check(&table, &topic, &model, &records);
    }
}

fn check(table: &GroupTable, topic: &Topic, model: &BTreeMap<Bytes, ModelGroup>, records: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let names: Vec<&Bytes> = table.of_topic(topic).into_iter().flatten().map(|(name, _)| name).collect();
    assert_eq!(names, model.keys().collect::<Vec<_>>(), "the same groups");
    for (group_name, expected) in model {
        let group = table.get(topic, group_name).expect("listed");
        assert_eq!(group.last, expected.last, "last delivered id of {group_name:?}");
        let members: BTreeSet<Bytes> = group.consumers.keys().cloned().collect();
        assert_eq!(members, expected.members, "members of {group_name:?}");
        let pel: Pel = group.pel.iter().map(|(id, p)| (*id, (p.consumer.clone(), p.delivered_ms, p.count))).collect();
        assert_eq!(pel, expected.pel, "pending entries of {group_name:?}");
        for (member_name, member) in &group.consumers {
            let owned: BTreeSet<StreamId> =
                expected.pel.iter().filter(|(_, (owner, _, _))| owner == member_name).map(|(id, _)| *id).collect();
            assert_eq!(member.pending, owned, "{member_name:?} holds exactly what it owns");
        }
        assert!(expected.pel.values().all(|(owner, _, _)| members.contains(owner)), "owners are members");
    }
    let entries: Vec<(Vec<u8>, Vec<u8>)> = records.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let loaded = GroupTable::load(&entries);
    assert_eq!(durable(&loaded, topic), durable(table, topic), "the records rebuild the table");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn groups_agree_with_the_model_and_their_records(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}

#[test]
fn a_consumer_that_redelivers_keeps_what_others_hold() {
    let topic = Topic::new("t").expect("a topic");
    let mut table = GroupTable::default();
    table.create(&topic, Bytes::from("g"), StreamId::MIN).expect("created");
    let (a, b) = (Bytes::from("a"), Bytes::from("b"));
    table.deliver_new(&topic, b"g", &a, &[id(1), id(2)], false, 10).expect("delivered");
    table.deliver_new(&topic, b"g", &b, &[id(3)], false, 10).expect("delivered");
    let (ids, _) = table.redeliver(&topic, b"g", &a, StreamId::MIN, 10, 20).expect("redelivered");
    assert_eq!(ids, [id(1), id(2)]);
    let group = table.get(&topic, b"g").expect("a group");
    assert_eq!(group.pel[&id(1)].count, 2);
    assert_eq!(group.pel[&id(3)].consumer, b);
}
