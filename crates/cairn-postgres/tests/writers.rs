//! Two writers on one database (two cairn processes, here two backends in
//! one process): a writer alone writes its rows before it takes the
//! sequencer, and goes back to taking it first once it meets the other.
//! Whatever the mix, every acknowledged event is stored once, ids follow
//! the commit order, and every topic's seqs run from 0 without a gap.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_postgres::{Cluster, Options, Postgres};
use cairn_store::{
    Batch, DatabaseStats, Delivery, EventId, Expect, NewEvent, Pattern, Query, Storage, SubscribeOptions, Subscription,
    Topic,
};

#[test]
fn two_writers_on_one_database_keep_one_order() {
    let cluster = Cluster::start(&[("fsync", "off")]).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let url = cluster.url("postgres");
        let first: Arc<dyn Storage> = Arc::new(Postgres::open(&url, Options::default()).await.unwrap());
        let second: Arc<dyn Storage> = Arc::new(Postgres::open(&url, Options::default()).await.unwrap());
        let database = |storage: Arc<dyn Storage>| async move { storage.stats().await.database.unwrap() };
        // A live follower of everything on the second writer's backend,
        // from the start (its tail reads the first one's commits).
        let mut follower =
            Subscription::start(second.clone(), &Query::new(Pattern::all()), SubscribeOptions::default())
                .await
                .unwrap();
        // Appends from many tasks to shared topics, through `writers`.
        let run = |writers: Vec<Arc<dyn Storage>>, length: Duration| async move {
            let stop = Arc::new(AtomicBool::new(false));
            let tasks: Vec<_> = (0..12)
                .map(|n| {
                    let storage = writers[n % writers.len()].clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        let mut acknowledged = Vec::new();
                        let mut round = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let topic = Topic::new(&format!("shared.{}", (n + round) % 4)).unwrap();
                            let event = NewEvent::new(topic, format!("{n}.{round}").into_bytes());
                            let events = storage.submit(Batch::single(event, Expect::Any), false).await.unwrap();
                            acknowledged.extend(events.await.unwrap());
                            round += 1;
                        }
                        acknowledged
                    })
                })
                .collect();
            tokio::time::sleep(length).await;
            stop.store(true, Ordering::Relaxed);
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.unwrap());
            }
            all
        };
        // One writer alone (rows first), then both (each meets the other),
        // then the first alone again (back to rows first after a second).
        let mut acknowledged = run(vec![first.clone()], Duration::from_millis(500)).await;
        let alone: DatabaseStats = database(first.clone()).await;
        assert!(alone.commits_rows_first > 0 && alone.groups_redone == 0, "alone, rows first: {alone:?}");
        acknowledged.extend(run(vec![first.clone(), second.clone()], Duration::from_secs(2)).await);
        let met = database(first.clone()).await;
        assert!(met.groups_redone > 0 && met.commits_slow > alone.commits_slow, "the other writer was met: {met:?}");
        // Its first group alone meets the other's last commits (a stale
        // cache) and starts another second of sequencer first.
        acknowledged.extend(run(vec![first.clone()], Duration::from_millis(1600)).await);
        let again = database(first.clone()).await;
        assert!(again.commits_rows_first > met.commits_rows_first, "rows first again when alone: {again:?}");
        assert!(acknowledged.len() > 100, "only {} appends acknowledged", acknowledged.len());

        // Everything, in id order, read through the second writer's backend.
        let mut reader = second.read(Query::new(Pattern::all()), false).await.unwrap();
        let mut stored = Vec::new();
        loop {
            let chunk = reader.next(10_000).await.unwrap();
            if chunk.is_empty() {
                break;
            }
            stored.extend(chunk.into_iter().map(|item| item.event));
        }
        assert_eq!(stored.len(), acknowledged.len(), "every acknowledged event stored once, nothing else");
        // The follower saw the same events in the same order.
        let mut followed = Vec::new();
        while followed.len() < stored.len() {
            let delivery = tokio::time::timeout(Duration::from_secs(10), follower.next()).await;
            if let Delivery::Event(event) = delivery.expect("the follower stalled").unwrap() {
                followed.push(event.id);
            }
        }
        let read: Vec<EventId> = stored.iter().map(|event| event.id).collect();
        assert_eq!(followed, read, "the live follower saw every event once, in id order");
        let mut next_seq: HashMap<String, u64> = HashMap::new();
        let mut last = EventId::MIN;
        for event in &stored {
            assert!(event.id > last, "ids increase in read order");
            last = event.id;
            let seq = next_seq.entry(event.topic.as_str().to_owned()).or_insert(0);
            assert_eq!(event.seq, *seq, "{} has no gap in its seqs", event.topic.as_str());
            *seq += 1;
        }
        let by_id: HashMap<EventId, &[u8]> =
            stored.iter().map(|event| (event.id, event.inline_payload().unwrap())).collect();
        for event in &acknowledged {
            assert_eq!(by_id.get(&event.id), Some(&event.inline_payload().unwrap()), "acknowledged {}", event.id);
        }
    });
}

/// Appends handed to the writer before the storage is dropped are all
/// committed and answered: none is refused as "shutting down" after it
/// committed, or dropped.
#[test]
fn appends_in_hand_when_the_storage_goes_are_committed_and_answered() {
    let cluster = Cluster::start(&[("fsync", "off")]).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let url = cluster.url("postgres");
        let storage = Postgres::open(&url, Options::default()).await.unwrap();
        let topic = Topic::new("last.words").unwrap();
        let mut pending = Vec::new();
        for n in 0..500 {
            let event = NewEvent::new(topic.clone(), format!("{n}").into_bytes());
            pending.push(storage.submit(Batch::single(event, Expect::Any), false).await.unwrap());
        }
        drop(storage);
        for (n, answer) in pending.into_iter().enumerate() {
            let events = answer.await.unwrap_or_else(|error| panic!("append {n}: {error}"));
            assert_eq!(events[0].seq, n as u64);
        }
        let storage = Postgres::open(&url, Options::default()).await.unwrap();
        assert_eq!(storage.head(topic).await.unwrap().unwrap().count, 500);
    });
}
