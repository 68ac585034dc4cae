//! Subscriptions under concurrent writers: every event exactly once, in id
//! order, across the history/live switch; a slow subscriber falls back to
//! storage and still gets everything while writers keep going.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_store::{Delivery, EventId, Expect, NewEvent, Pattern, Query, Store, SubscribeOptions};

use crate::{open, topic};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Starts `n_writers` threads each appending `n_each` events to its own topic.
fn writers(store: &Store, n_writers: usize, n_each: usize) -> Vec<std::thread::JoinHandle<()>> {
    (0..n_writers)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                for n in 0..n_each {
                    let event = NewEvent::new(topic(&format!("w.{w}")), format!("{w}-{n}"));
                    store.append(event, Expect::Any).unwrap();
                }
            })
        })
        .collect()
}

/// Receives until `total` events arrived; checks order and per-topic seqs.
async fn receive_all(subscription: &mut cairn_store::Subscription, total: usize, slow: bool) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = EventId::MIN;
    let mut seqs: HashMap<String, u64> = HashMap::new();
    let mut received = 0;
    let mut thresholds = 0;
    while received < total {
        assert!(Instant::now() < deadline, "only {received} of {total} events arrived");
        let delivery =
            tokio::time::timeout(Duration::from_secs(30), subscription.next()).await.expect("stalled").unwrap();
        match delivery {
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

#[test]
fn subscriber_started_mid_write_gets_every_event_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let handles = writers(&store, 4, 3000);
    std::thread::sleep(Duration::from_millis(20));
    let options = SubscribeOptions { threshold: true, pulse: None };
    let mut subscription = store.subscribe(&Query::new(Pattern::parse("w.*").unwrap()), options).unwrap();
    let thresholds = runtime().block_on(receive_all(&mut subscription, 12_000, false));
    assert_eq!(thresholds, 1, "exactly one threshold marker");
    for handle in handles {
        handle.join().unwrap();
    }
}

#[test]
fn slow_subscriber_falls_back_to_storage_and_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut subscription = store.subscribe(&Query::new(Pattern::all()), SubscribeOptions::default()).unwrap();
    let started = Instant::now();
    let handles = writers(&store, 2, 20_000);
    for handle in handles {
        handle.join().unwrap();
    }
    let writers_done = started.elapsed();
    runtime().block_on(receive_all(&mut subscription, 40_000, true));
    // Writers finished before the slow reader had read much: it never held them.
    assert!(writers_done < started.elapsed());
}

#[test]
fn from_seq_in_the_future_waits_for_that_seq() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.append(NewEvent::new(topic("f"), "0"), Expect::Any).unwrap();
    let query = Query { from_seq: Some(3), ..Query::new(Pattern::parse("f").unwrap()) };
    let mut subscription = store.subscribe(&query, SubscribeOptions::default()).unwrap();
    for n in 1..5 {
        store.append(NewEvent::new(topic("f"), format!("{n}")), Expect::Any).unwrap();
    }
    let rt = runtime();
    let seqs: Vec<u64> = (0..2)
        .map(|_| match rt.block_on(subscription.next()).unwrap() {
            Delivery::Event(event) => event.seq,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(seqs, vec![3, 4]);
}

#[test]
fn pulse_arrives_when_idle_and_close_ends_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let options = SubscribeOptions { threshold: true, pulse: Some(Duration::from_millis(20)) };
    let mut subscription = store.subscribe(&Query::new(Pattern::all()), options).unwrap();
    let rt = runtime();
    assert_eq!(rt.block_on(subscription.next()).unwrap(), Delivery::Threshold);
    assert_eq!(rt.block_on(subscription.next()).unwrap(), Delivery::Pulse);
    drop(store);
    let error = rt.block_on(subscription.next()).unwrap_err();
    assert_eq!(error.code(), "shutting_down");
}

#[test]
fn ring_and_storage_agree_for_many_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let mut subscription = store.subscribe(&Query::new(Pattern::all()), SubscribeOptions::default()).unwrap();
            rt.spawn(async move { receive_all(&mut subscription, 4000, false).await })
        })
        .collect();
    for handle in writers(&store, 4, 1000) {
        handle.join().unwrap();
    }
    for task in tasks {
        rt.block_on(task).unwrap();
    }
}

/// A subscriber that found storage exhausted while the index lagged must
/// not wait for some unrelated wake-up (the retention sweep, once a second)
/// before it sees the next event: the first commit after an idle spell
/// wakes the indexer. The sweep is set to an hour so it cannot mask this.
#[test]
fn a_new_subscriber_gets_the_next_event_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let options =
        cairn_store::Options { retention_interval: Duration::from_secs(3600), ..cairn_store::Options::default() };
    let store = Store::open(dir.path(), options).unwrap();
    store.append(NewEvent::new(topic("other"), "before"), Expect::Any).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut subscription =
        store.subscribe(&Query::new(Pattern::Exact(topic("wanted"))), SubscribeOptions::default()).unwrap();
    let next = runtime.spawn(async move { (subscription.next().await.map(|_| ()), Instant::now()) });
    std::thread::sleep(Duration::from_millis(50));
    let appended = Instant::now();
    store.append(NewEvent::new(topic("wanted"), "now"), Expect::Any).unwrap();
    let waited = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), next).await });
    let (delivery, at) = waited.expect("no delivery within 5 s").unwrap();
    delivery.unwrap();
    let waited = at.duration_since(appended);
    assert!(waited < Duration::from_millis(500), "delivered {waited:?} after the append");
}
