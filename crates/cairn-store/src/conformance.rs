//! The conformance suite of the storage seam: every guarantee of the
//! [`Storage`] contract as a check that runs against any implementation.
//!
//! A backend's tests implement [`Backend`] (open, and reopen on the same
//! data) and call [`run_all`] or each check alone; `cairn-store`'s own tests
//! run it against the local engine. Checks panic on a violation, naming it.
//! Each check starts from empty storage.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // A test suite fails loudly on purpose.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::StoreError;
use crate::event::{Batch, Event, Expect, Hash, NewEvent, Ttl};
use crate::id::EventId;
use crate::log::codec::StateOp;
use crate::read::Query;
use crate::storage::{BoxFuture, Storage};
use crate::subscription::{Delivery, SubscribeOptions, Subscription};
use crate::topic::{Pattern, Topic};

/// A storage implementation under test.
pub trait Backend: Send {
    /// Opens the storage on this backend's data (empty the first time).
    /// Before a reopen, the caller drops every handle of the previous one.
    fn open(&mut self) -> BoxFuture<'_, Arc<dyn Storage>>;
}

/// Every check, one after another, each on fresh storage from `fresh`.
pub async fn run_all(fresh: &mut dyn FnMut() -> Box<dyn Backend>) {
    ids_and_seqs(&mut *fresh()).await;
    expectations(&mut *fresh()).await;
    atomic_batches(&mut *fresh()).await;
    idempotency(&mut *fresh()).await;
    retention(&mut *fresh()).await;
    removal(&mut *fresh()).await;
    reads(&mut *fresh()).await;
    content(&mut *fresh()).await;
    state_records(&mut *fresh()).await;
    history_then_live(&mut *fresh()).await;
    slow_subscriber(&mut *fresh()).await;
    subscriptions_from_seq_and_pulse(&mut *fresh()).await;
}

fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

fn event(name: &str, payload: impl Into<Vec<u8>>) -> NewEvent {
    NewEvent::new(topic(name), payload)
}

/// Appends a batch and waits until it is durable.
pub async fn append(storage: &dyn Storage, batch: Batch) -> Result<Vec<Event>, StoreError> {
    storage.submit(batch, false).await?.await
}

async fn append_one(storage: &dyn Storage, new: NewEvent, expect: Expect) -> Result<Event, StoreError> {
    Ok(append(storage, Batch::single(new, expect)).await?.remove(0))
}

async fn read_all(storage: &dyn Storage, query: Query) -> Vec<Event> {
    let mut reader = storage.read(query, false).await.unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = reader.next(3).await.unwrap();
        if chunk.is_empty() {
            return out;
        }
        out.extend(chunk.into_iter().map(|item| item.event));
    }
}

async fn payload(storage: &dyn Storage, event: &Event) -> Vec<u8> {
    storage.content(event).await.unwrap().expect("has a payload")
}

/// Ids strictly increase across topics and restarts; seqs are gapless per
/// topic; a read after an acknowledged write sees it.
pub async fn ids_and_seqs(backend: &mut dyn Backend) {
    let storage = backend.open().await;
    let a0 = append_one(&*storage, event("a", "x"), Expect::Any).await.unwrap();
    let b0 = append_one(&*storage, event("b", "y"), Expect::Any).await.unwrap();
    let a1 = append_one(&*storage, event("a", "z"), Expect::Any).await.unwrap();
    assert_eq!((a0.seq, b0.seq, a1.seq), (0, 0, 1), "seqs are per topic, from 0");
    assert!(a0.id < b0.id && b0.id < a1.id, "ids increase in commit order");
    assert_eq!(storage.get(a1.id).await.unwrap().as_ref(), Some(&a1), "read your writes");
    assert_eq!(payload(&*storage, &a1).await, b"z");
    assert_eq!(a1.hash, Some(Hash::of(b"z")));
    assert_eq!(storage.last_id(), a1.id);
    let head = storage.head(topic("a")).await.unwrap().unwrap();
    assert_eq!((head.count, head.first_seq, head.last_seq, head.last_id), (2, Some(0), 1, a1.id));
    drop(storage);
    let storage = backend.open().await;
    let a2 = append_one(&*storage, event("a", "after restart"), Expect::Any).await.unwrap();
    assert!(a2.id > a1.id, "ids keep increasing across a restart");
    assert_eq!(a2.seq, 2, "seqs continue across a restart");
    let topics: Vec<String> = storage.topics().await.unwrap().into_iter().map(|t| t.topic.to_string()).collect();
    assert_eq!(topics, ["a", "b"]);
}

/// Expectations are checked with the write; a failed one writes nothing
/// and names the actual last seq.
pub async fn expectations(backend: &mut dyn Backend) {
    let storage = backend.open().await;
    let s = &*storage;
    let fails = |result: Result<Event, StoreError>, actual: Option<u64>| match result {
        Err(StoreError::ExpectationFailed { actual_seq, .. }) => assert_eq!(actual_seq, actual),
        other => panic!("expected an expectation failure, got {other:?}"),
    };
    fails(append_one(s, event("t", "0"), Expect::Exists).await, None);
    fails(append_one(s, event("t", "0"), Expect::Seq(0)).await, None);
    let first = append_one(s, event("t", "1"), Expect::Empty).await.unwrap();
    fails(append_one(s, event("t", "2"), Expect::Empty).await, Some(0));
    append_one(s, event("t", "2"), Expect::Seq(0)).await.unwrap();
    fails(append_one(s, event("t", "3"), Expect::Seq(0)).await, Some(1));
    fails(append_one(s, event("t", "3"), Expect::UnchangedSince(first.id)).await, Some(1));
    let last = append_one(s, event("t", "3"), Expect::Exists).await.unwrap();
    append_one(s, event("t", "4"), Expect::UnchangedSince(last.id)).await.unwrap();
    append_one(s, event("new", "x"), Expect::UnchangedSince(last.id)).await.unwrap();
    assert_eq!(s.head(topic("t")).await.unwrap().unwrap().count, 4, "failed expectations wrote nothing");
}

/// A batch over several topics commits all or nothing.
pub async fn atomic_batches(backend: &mut dyn Backend) {
    let storage = backend.open().await;
    let s = &*storage;
    append_one(s, event("t", "a"), Expect::Any).await.unwrap();
    let mut batch = Batch { events: vec![event("u", "a"), event("t", "b"), event("u", "c")], ..Batch::default() };
    batch.expect.insert(topic("t"), Expect::Seq(7));
    assert!(append(s, batch.clone()).await.is_err());
    assert!(s.head(topic("u")).await.unwrap().is_none(), "nothing of a refused batch is written");
    batch.expect.insert(topic("t"), Expect::Seq(0));
    let events = append(s, batch).await.unwrap();
    assert_eq!(
        events.iter().map(|e| (e.topic.to_string(), e.seq)).collect::<Vec<_>>(),
        [("u".to_owned(), 0), ("t".to_owned(), 1), ("u".to_owned(), 1)]
    );
    assert!(events.windows(2).all(|pair| pair[0].id < pair[1].id));
    let empty = append(s, Batch::default()).await.unwrap_err();
    assert_eq!(empty.code(), "invalid");
}

/// An idempotency key returns the original events (and writes nothing
/// more), within one process and across a restart; the same key for a
/// different write (topics, payloads, types) is a conflict that writes
/// nothing.
pub async fn idempotency(backend: &mut dyn Backend) {
    let storage = backend.open().await;
    let batch = Batch {
        events: vec![event("k", "1"), event("k", "2")],
        idempotency_key: Some("order-17".into()),
        ..Batch::default()
    };
    let first = append(&*storage, batch.clone()).await.unwrap();
    let again = append(&*storage, batch.clone()).await.unwrap();
    assert_eq!(first, again, "a repeat returns the original events");
    // Concurrent repeats in one commit group agree too.
    let (x, y) = tokio::join!(append(&*storage, batch.clone()), append(&*storage, batch.clone()));
    assert_eq!((x.unwrap(), y.unwrap()), (first.clone(), first.clone()));
    let conflicts =
        |events: Vec<NewEvent>| Batch { events, idempotency_key: Some("order-17".into()), ..Batch::default() };
    let other_payload = conflicts(vec![event("k", "1"), event("k", "two")]);
    let other_topic = conflicts(vec![event("k", "1"), event("j", "2")]);
    let other_type = conflicts(vec![event("k", "1"), event("k", "2").with_type("Other")]);
    let fewer = conflicts(vec![event("k", "1")]);
    for different in [&other_payload, &other_topic, &other_type, &fewer] {
        let error = append(&*storage, different.clone()).await.unwrap_err();
        assert_eq!(error.code(), "idempotency_conflict", "{different:?}");
    }
    drop(storage);
    let storage = backend.open().await;
    assert_eq!(append(&*storage, batch).await.unwrap(), first, "keys hold across a restart");
    let error = append(&*storage, other_payload).await.unwrap_err();
    assert_eq!(error.code(), "idempotency_conflict", "conflicts are found across a restart");
    assert_eq!(storage.head(topic("k")).await.unwrap().unwrap().count, 2);
    assert!(storage.head(topic("j")).await.unwrap().is_none(), "a conflict writes nothing");
}

/// Ephemeral events reach live followers only; `last:<n>` keeps the newest
/// n without renumbering; expired `time:` events are removed.
pub async fn retention(backend: &mut dyn Backend) {
    let storage = backend.open().await;
    let s = &*storage;
    let mut live = Subscription::live(storage.clone(), Pattern::all(), SubscribeOptions::default());
    let ephemeral = append_one(s, event("e", "now").with_ttl(Ttl::Ephemeral), Expect::Any).await.unwrap();
    let delivered = tokio::time::timeout(Duration::from_secs(10), live.next()).await.unwrap().unwrap();
    assert_eq!(delivered, Delivery::Event(Arc::new(ephemeral.clone())), "ephemeral events reach followers");
    assert!(s.get(ephemeral.id).await.unwrap().is_none(), "ephemeral events are not stored");
    assert!(s.head(topic("e")).await.unwrap().is_none());
    drop(live);
    for n in 0..5 {
        append_one(s, event("cell", format!("{n}")).with_ttl(Ttl::Last { n: 2 }), Expect::Any).await.unwrap();
    }
    let kept: Vec<u64> = read_all(s, Query::new(Pattern::parse("cell").unwrap())).await.iter().map(|e| e.seq).collect();
    assert_eq!(kept, [3, 4], "last:2 keeps the newest two");
    let head = s.head(topic("cell")).await.unwrap().unwrap();
    assert_eq!((head.count, head.first_seq, head.last_seq), (2, Some(3), 4));
    let short = append_one(s, event("tmp", "x").with_ttl(Ttl::Time { ms: 1 }), Expect::Any).await.unwrap();
    let kept = append_one(s, event("tmp", "y"), Expect::Any).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // A background sweep may have removed it already.
    assert!(s.expire_now().await.unwrap() <= 1);
    assert!(s.get(short.id).await.unwrap().is_none(), "expired events are removed");
    assert!(s.get(kept.id).await.unwrap().is_some());
    assert_eq!(s.head(topic("tmp")).await.unwrap().unwrap().last_seq, 1, "removal never renumbers");
}

/// Removal by id skips what is not stored and never renumbers.
pub async fn removal(backend: &mut dyn Backend) {
    let storage = backend.open().await;
    let s = &*storage;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(append_one(s, event("r", format!("{n}")), Expect::Any).await.unwrap().id);
    }
    assert_eq!(s.remove(vec![ids[1], ids[1], ids[2]]).await.unwrap(), 2);
    assert_eq!(s.remove(vec![ids[1]]).await.unwrap(), 0, "a removed event is not stored");
    let left: Vec<u64> = read_all(s, Query::new(Pattern::parse("r").unwrap())).await.iter().map(|e| e.seq).collect();
    assert_eq!(left, [0, 3]);
    let next = append_one(s, event("r", "4"), Expect::Seq(3)).await.unwrap();
    assert_eq!(next.seq, 4);
    assert_eq!(s.head(topic("r")).await.unwrap().unwrap().count, 3);
    drop(storage);
    let storage = backend.open().await;
    assert!(storage.get(ids[2]).await.unwrap().is_none(), "removals are durable");
}

/// Reads by pattern, after an id, from a seq, the last n, reversed, limited.
pub async fn reads(backend: &mut dyn Backend) {
    let storage = backend.open().await;
    let s = &*storage;
    let mut ids = Vec::new();
    for n in 0..10 {
        let name = if n % 2 == 0 { "orders.1" } else { "orders.2" };
        ids.push(append_one(s, event(name, format!("{n}")), Expect::Any).await.unwrap().id);
    }
    append_one(s, event("users.1", "u"), Expect::Any).await.unwrap();
    let texts = |events: Vec<Event>| -> Vec<String> {
        events.iter().map(|e| String::from_utf8(e.inline_payload().unwrap().to_vec()).unwrap()).collect()
    };
    let pattern = |p: &str| Pattern::parse(p).unwrap();
    assert_eq!(read_all(s, Query::new(pattern("orders.*"))).await.len(), 10);
    assert_eq!(read_all(s, Query::new(pattern(">"))).await.len(), 11);
    let after = |id: EventId, p: &str| Query { after: Some(id), ..Query::new(pattern(p)) };
    assert_eq!(texts(read_all(s, after(ids[7], "orders.>")).await), ["8", "9"]);
    assert_eq!(texts(read_all(s, after(ids[3], "orders.1")).await), ["4", "6", "8"]);
    let from_seq = Query { from_seq: Some(3), ..Query::new(pattern("orders.2")) };
    assert_eq!(texts(read_all(s, from_seq).await), ["7", "9"]);
    let last = Query { last: Some(2), ..Query::new(pattern("orders.*")) };
    assert_eq!(texts(read_all(s, last).await), ["8", "9"]);
    let reverse = Query { limit: Some(2), reverse: true, ..Query::new(pattern("orders.*")) };
    assert_eq!(texts(read_all(s, reverse).await), ["9", "8"]);
    let limit = Query { limit: Some(3), ..Query::new(pattern("orders.1")) };
    assert_eq!(texts(read_all(s, limit).await), ["0", "2", "4"]);
    let bad = Query { from_seq: Some(1), ..Query::new(pattern("orders.*")) };
    assert_eq!(s.read(bad, false).await.err().unwrap().code(), "invalid");
    // With content, each payload comes verified with its event.
    let mut reader = s.read(Query::new(pattern("orders.1")), true).await.unwrap();
    let items = reader.next(2).await.unwrap();
    let payloads: Vec<&[u8]> = items.iter().map(|item| item.content.as_deref().unwrap()).collect();
    assert_eq!(payloads, [&b"0"[..], b"2"]);
    // The last n of one topic: fewer than it holds, more, and after a
    // removal left a hole among its seqs (the newest n still there).
    let last = |n: u64| Query { last: Some(n), ..Query::new(pattern("orders.1")) };
    assert_eq!(texts(read_all(s, last(2)).await), ["6", "8"]);
    assert_eq!(texts(read_all(s, last(100)).await), ["0", "2", "4", "6", "8"]);
    let limited = Query { limit: Some(1), ..last(3) };
    assert_eq!(texts(read_all(s, limited).await), ["4"]);
    assert_eq!(s.remove(vec![ids[6]]).await.unwrap(), 1);
    assert_eq!(texts(read_all(s, last(3)).await), ["2", "4", "8"]);
    assert_eq!(s.remove(vec![ids[0]]).await.unwrap(), 1);
    assert_eq!(texts(read_all(s, last(3)).await), ["2", "4", "8"]);
    assert_eq!(texts(read_all(s, last(1)).await), ["8"]);
}

/// Content by hash: event payloads (inline and stored) and content put on
/// its own; deletion refused while an event uses it; removed events'
/// content is collected.
pub async fn content(backend: &mut dyn Backend) {
    let storage = backend.open().await;
    let s = &*storage;
    let big = vec![7u8; 100_000];
    let stored = append_one(s, event("big", big.clone()), Expect::Any).await.unwrap();
    let hash = stored.hash.unwrap();
    assert_eq!(payload(s, &stored).await, big);
    assert_eq!(s.cas_get(hash).await.unwrap(), Some(big.clone()));
    let small = append_one(s, event("small.1", "tiny"), Expect::Any).await.unwrap();
    append_one(s, event("small.2", "tiny"), Expect::Any).await.unwrap();
    assert_eq!(s.cas_get(Hash::of(b"tiny")).await.unwrap(), Some(b"tiny".to_vec()), "inline payloads by hash");
    let mut topics = s.content_topics(small.hash.unwrap(), 100).await.unwrap();
    topics.sort();
    assert_eq!(topics, [topic("small.1"), topic("small.2")]);
    assert!(s.content_topics(Hash::of(b"nothing"), 100).await.unwrap().is_empty());
    let own = s.cas_put(b"standalone".to_vec()).await.unwrap();
    assert_eq!(s.cas_get(own).await.unwrap(), Some(b"standalone".to_vec()));
    assert!(s.content_topics(own, 100).await.unwrap().is_empty(), "no event refers to it");
    let in_use = s.cas_put(big.clone()).await.unwrap();
    assert!(matches!(s.cas_delete(in_use).await, Err(StoreError::InUse { .. })), "in use by an event");
    assert!(s.cas_delete(own).await.unwrap());
    assert!(!s.cas_delete(own).await.unwrap(), "already gone");
    assert_eq!(s.cas_get(own).await.unwrap(), None);
    assert_eq!(s.remove(vec![stored.id]).await.unwrap(), 1);
    assert_eq!(s.cas_get(hash).await.unwrap(), None, "content of removed events is collected");
}

/// State records are durable, applied in submission order, scanned by prefix.
pub async fn state_records(backend: &mut dyn Backend) {
    let storage = backend.open().await;
    let put = |k: &[u8], v: &[u8]| StateOp::Put(k.to_vec(), v.to_vec());
    let first = storage.state_submit(vec![put(b"g/a", b"1"), put(b"g/b", b"2")]).await.unwrap();
    let second = storage.state_submit(vec![StateOp::Delete(b"g/a".to_vec()), put(b"g/b", b"3")]).await.unwrap();
    first.await.unwrap();
    second.await.unwrap();
    storage.state_submit(vec![put(b"h/x", &[0, 13, 10])]).await.unwrap().await.unwrap();
    assert_eq!(storage.state_scan(b"g/".to_vec()).await.unwrap(), [(b"g/b".to_vec(), b"3".to_vec())]);
    drop(storage);
    let storage = backend.open().await;
    let expected = [(b"g/b".to_vec(), b"3".to_vec()), (b"h/x".to_vec(), vec![0, 13, 10])];
    assert_eq!(storage.state_scan(Vec::new()).await.unwrap(), expected, "state records survive a restart");
}

/// Starts `n_writers` tasks each appending `n_each` events to its own topic.
fn writers(storage: &Arc<dyn Storage>, n_writers: usize, n_each: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n_writers)
        .map(|w| {
            let storage = storage.clone();
            tokio::spawn(async move {
                for n in 0..n_each {
                    append_one(&*storage, event(&format!("w.{w}"), format!("{w}-{n}")), Expect::Any).await.unwrap();
                }
            })
        })
        .collect()
}

/// Receives until `total` events arrived; checks order and per-topic seqs;
/// returns the number of threshold markers seen.
async fn receive_all(subscription: &mut Subscription, total: usize, slow: bool) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = EventId::MIN;
    let mut seqs: HashMap<String, u64> = HashMap::new();
    let (mut received, mut thresholds) = (0, 0);
    while received < total {
        assert!(Instant::now() < deadline, "only {received} of {total} events arrived");
        let delivery = tokio::time::timeout(Duration::from_secs(30), subscription.next()).await;
        match delivery.expect("a subscription stalled").unwrap() {
            Delivery::Event(event) => {
                assert!(event.id > last, "ids out of order or duplicated");
                last = event.id;
                let expected = seqs.get(event.topic.as_str()).map_or(0, |s| s + 1);
                assert_eq!(event.seq, expected, "gap or duplicate in {}", event.topic);
                seqs.insert(event.topic.as_str().to_owned(), event.seq);
                received += 1;
                if slow && received % 200 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Delivery::Threshold => thresholds += 1,
            Delivery::Pulse => {}
        }
    }
    thresholds
}

/// Subscribers started while writers run (and many at once) get every
/// event once, in order, with one threshold marker at the switch.
pub async fn history_then_live(backend: &mut dyn Backend) {
    let storage = backend.open().await;
    let handles = writers(&storage, 4, 1500);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let options = SubscribeOptions { threshold: true, pulse: None };
    let query = Query::new(Pattern::parse("w.*").unwrap());
    let mut subscription = Subscription::start(storage.clone(), &query, options).await.unwrap();
    let many: Vec<_> = (0..10)
        .map(|_| {
            let storage = storage.clone();
            tokio::spawn(async move {
                let query = Query::new(Pattern::all());
                let mut subscription = Subscription::start(storage, &query, SubscribeOptions::default()).await.unwrap();
                receive_all(&mut subscription, 6000, false).await
            })
        })
        .collect();
    assert_eq!(receive_all(&mut subscription, 6000, false).await, 1, "exactly one threshold marker");
    for handle in handles {
        handle.await.unwrap();
    }
    for task in many {
        task.await.unwrap();
    }
}

/// A subscriber that reads slowly falls back to storage and misses nothing,
/// and never holds the writers back.
pub async fn slow_subscriber(backend: &mut dyn Backend) {
    let storage = backend.open().await;
    let query = Query::new(Pattern::all());
    let mut subscription = Subscription::start(storage.clone(), &query, SubscribeOptions::default()).await.unwrap();
    for handle in writers(&storage, 2, 12_000) {
        handle.await.unwrap();
    }
    receive_all(&mut subscription, 24_000, true).await;
}

/// `from_seq` beyond the topic's end waits for that seq; a pulse comes when
/// idle, after the threshold.
pub async fn subscriptions_from_seq_and_pulse(backend: &mut dyn Backend) {
    let storage = backend.open().await;
    append_one(&*storage, event("f", "0"), Expect::Any).await.unwrap();
    let query = Query { from_seq: Some(3), ..Query::new(Pattern::parse("f").unwrap()) };
    let mut subscription = Subscription::start(storage.clone(), &query, SubscribeOptions::default()).await.unwrap();
    for n in 1..5 {
        append_one(&*storage, event("f", format!("{n}")), Expect::Any).await.unwrap();
    }
    let mut seqs = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(10), subscription.next()).await.unwrap().unwrap() {
            Delivery::Event(event) => seqs.push(event.seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seqs, [3, 4]);
    drop(subscription);
    let options = SubscribeOptions { threshold: true, pulse: Some(Duration::from_millis(20)) };
    let mut subscription = Subscription::start(storage.clone(), &Query::new(Pattern::all()), options).await.unwrap();
    // History first, then the threshold, then pulses.
    for _ in 0..5 {
        assert!(matches!(subscription.next().await.unwrap(), Delivery::Event(_)));
    }
    assert_eq!(subscription.next().await.unwrap(), Delivery::Threshold);
    assert_eq!(subscription.next().await.unwrap(), Delivery::Pulse);
    let cursor = subscription.cursor();
    assert_eq!(cursor, storage.last_id(), "the cursor stands at the newest event");
}
