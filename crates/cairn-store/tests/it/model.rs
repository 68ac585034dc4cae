//! Model-based test: random sequences of appends, batches, expectations,
//! idempotent retries, removals, `last:<n>` retention, acks and reopens, run
//! against the store and a plain in-memory model; every read must agree.

use std::collections::HashMap;

use cairn_store::{Batch, EventId, Expect, NewEvent, Pattern, Query, Store, StoreError, Ttl};
use proptest::prelude::*;

use crate::{test_options, topic};

const TOPICS: [&str; 3] = ["m.a", "m.b", "n.c"];

#[derive(Clone, Debug)]
enum Op {
    Append { events: Vec<(usize, bool, bool)>, expect: (usize, u8), key: Option<u8> },
    Remove { pick: usize },
    Ack { pick: usize },
    Read { pattern: u8, after: Option<usize>, limit: Option<u64>, reverse: bool, last: Option<u64> },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (events(), (0..3usize, 0..5u8), proptest::option::weighted(0.3, 0..3u8))
            .prop_map(|(events, expect, key)| Op::Append { events, expect, key }),
        1 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Ack { pick }),
        3 => (0..5u8, proptest::option::of(any::<usize>()), proptest::option::of(1..6u64), any::<bool>(), proptest::option::weighted(0.2, 1..4u64))
            .prop_map(|(pattern, after, limit, reverse, last)| Op::Read { pattern, after, limit, reverse, last }),
        1 => Just(Op::Reopen),
    ]
}

/// Mostly small batches; sometimes big ones, which span several blocks of
/// the sparse index (256 events) with topics interleaved.
fn events() -> impl Strategy<Value = Vec<(usize, bool, bool)>> {
    prop_oneof![
        8 => proptest::collection::vec((0..3usize, any::<bool>(), prop::bool::weighted(0.15)), 1..4),
        1 => proptest::collection::vec((0..3usize, prop::bool::weighted(0.05), prop::bool::weighted(0.02)), 250..700),
    ]
}

#[derive(Clone, Debug)]
struct Stored {
    id: EventId,
    topic: String,
    seq: u64,
    payload: Vec<u8>,
    alive: bool,
}

#[derive(Default)]
struct Model {
    events: Vec<Stored>,
    heads: HashMap<String, u64>,
    /// Keys used, with the events they wrote and the batch that wrote them.
    keys: HashMap<String, (Vec<EventId>, Batch)>,
    consumer: Option<EventId>,
    n_payloads: usize,
}

impl Model {
    fn alive(&self) -> Vec<&Stored> {
        self.events.iter().filter(|e| e.alive).collect()
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Some(Store::open(dir.path(), test_options()).unwrap());
    let mut model = Model::default();
    for op in ops {
        let s = store.as_ref().unwrap();
        match op {
            Op::Append { events, expect, key } => append(s, &mut model, &events, expect, key),
            Op::Remove { pick } => {
                let alive = model.alive();
                if alive.is_empty() {
                    continue;
                }
                let id = alive[pick % alive.len()].id;
                s.remove(id).unwrap();
                model.events.iter_mut().find(|e| e.id == id).unwrap().alive = false;
                assert_eq!(s.remove(id).unwrap_err().code(), "not_found");
            }
            Op::Ack { pick } => {
                if model.events.is_empty() {
                    continue;
                }
                let id = model.events[pick % model.events.len()].id;
                s.ack("model", id).unwrap();
                model.consumer = Some(id);
            }
            Op::Read { pattern, after, limit, reverse, last } => read(s, &model, pattern, after, limit, reverse, last),
            Op::Reopen => {
                drop(store.take());
                store = Some(Store::open(dir.path(), test_options()).unwrap());
            }
        }
        let s = store.as_ref().unwrap();
        for name in TOPICS {
            let head = s.head(&topic(name)).unwrap();
            let expected = model.heads.get(name).copied();
            assert_eq!(head.as_ref().map(|h| h.last_seq), expected, "head of {name}");
            let count = model.alive().iter().filter(|e| e.topic == name).count() as u64;
            assert_eq!(head.map_or(0, |h| h.count), count, "count of {name}");
        }
        assert_eq!(s.consumer("model").unwrap(), model.consumer);
    }
    let report = store.as_ref().unwrap().verify().unwrap();
    assert!(report.ok(), "{:?}", report.problems);
}

fn append(store: &Store, model: &mut Model, events: &[(usize, bool, bool)], expect: (usize, u8), key: Option<u8>) {
    let mut batch = Batch::default();
    let mut payloads = Vec::new();
    for &(topic_idx, last_two, big) in events {
        model.n_payloads += 1;
        let mut payload = format!("payload-{}", model.n_payloads).into_bytes();
        if big {
            payload.resize(5000, b'x');
        }
        payloads.push(payload.clone());
        let ttl = if last_two { Ttl::Last { n: 2 } } else { Ttl::Forever };
        batch.events.push(NewEvent::new(topic(TOPICS[topic_idx]), payload).with_ttl(ttl));
    }
    let (expect_topic, expect_kind) = expect;
    let expect_name = TOPICS[expect_topic];
    let current = model.heads.get(expect_name).copied();
    let expectation = match expect_kind {
        0 => Expect::Any,
        1 => Expect::Empty,
        2 => current.map_or(Expect::Empty, Expect::Seq),
        3 => Expect::Exists,
        _ => Expect::Seq(current.map_or(5, |s| s + 3)),
    };
    batch.expect.insert(topic(expect_name), expectation);
    batch.idempotency_key = key.map(|k| format!("key-{k}"));
    if let Some(key) = key.map(|k| format!("key-{k}"))
        && let Some((ids, original)) = model.keys.get(&key)
    {
        // A used key: the same write again is a repeat, another is a conflict.
        if events.len().is_multiple_of(2) {
            let alive: Vec<EventId> =
                ids.iter().copied().filter(|id| model.events.iter().any(|e| e.id == *id && e.alive)).collect();
            let got: Vec<EventId> = store.append_batch(original.clone()).unwrap().iter().map(|e| e.id).collect();
            assert_eq!(got, alive, "idempotent retry of {key}");
        } else {
            let error = store.append_batch(batch).unwrap_err();
            assert_eq!(error.code(), "idempotency_conflict", "another write under {key}");
        }
        return;
    }
    let result = store.append_batch(batch.clone());
    let satisfied = match expectation {
        Expect::Any => true,
        Expect::Empty => current.is_none(),
        Expect::Exists => current.is_some(),
        Expect::Seq(seq) => current == Some(seq),
        Expect::UnchangedSince(_) => unreachable!(),
    };
    if !satisfied {
        match result {
            Err(StoreError::ExpectationFailed { actual_seq, .. }) => assert_eq!(actual_seq, current),
            other => panic!("expected an expectation failure, got {other:?}"),
        }
        return;
    }
    let appended = result.unwrap();
    let mut trimmed = Vec::new();
    for ((event, payload), &(topic_idx, last_two, _)) in appended.iter().zip(payloads).zip(events) {
        let name = TOPICS[topic_idx];
        let seq = model.heads.get(name).map_or(0, |s| s + 1);
        assert_eq!(event.seq, seq);
        assert!(model.events.last().is_none_or(|e| e.id < event.id));
        model.heads.insert(name.to_owned(), seq);
        model.events.push(Stored { id: event.id, topic: name.to_owned(), seq, payload, alive: true });
        if last_two && !trimmed.contains(&name) {
            trimmed.push(name);
        }
    }
    for name in trimmed {
        let last = model.heads[name];
        for event in model.events.iter_mut().filter(|e| e.topic == name && e.seq + 2 <= last) {
            event.alive = false;
        }
    }
    if let Some(key) = key {
        model.keys.insert(format!("key-{key}"), (appended.iter().map(|e| e.id).collect(), batch));
    }
}

fn read(
    store: &Store,
    model: &Model,
    pattern: u8,
    after: Option<usize>,
    limit: Option<u64>,
    reverse: bool,
    last: Option<u64>,
) {
    let text = match pattern {
        0..=2 => TOPICS[pattern as usize],
        3 => "m.*",
        _ => ">",
    };
    let pattern = Pattern::parse(text).unwrap();
    let after = after.and_then(|pick| (!model.events.is_empty()).then(|| model.events[pick % model.events.len()].id));
    let mut expected: Vec<&Stored> =
        model.alive().into_iter().filter(|e| pattern.matches(&e.topic) && after.is_none_or(|a| e.id > a)).collect();
    if let Some(last) = last {
        let skip = expected.len().saturating_sub(last as usize);
        expected.drain(..skip);
    }
    if reverse {
        expected.reverse();
    }
    if let Some(limit) = limit {
        expected.truncate(limit as usize);
    }
    let query = Query { pattern, after, from_seq: None, last, limit, reverse };
    let got: Vec<(EventId, u64, Vec<u8>)> =
        crate::read_both(store, &query).iter().map(|e| (e.id, e.seq, store.content(e).unwrap().unwrap())).collect();
    let expected: Vec<(EventId, u64, Vec<u8>)> = expected.iter().map(|e| (e.id, e.seq, e.payload.clone())).collect();
    assert_eq!(got, expected, "read {text} after {after:?} limit {limit:?} reverse {reverse} last {last:?}");
}

/// 24 cases by default; `PROPTEST_CASES=N` for a longer run.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]
    #[test]
    fn store_agrees_with_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
