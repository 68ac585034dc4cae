//! Subscriptions on the local engine beyond the seam's contract (which the
//! conformance suite checks): how the engine's indexer serves them.

use std::time::{Duration, Instant};

use cairn_store::{Expect, NewEvent, Pattern, Query, Store, SubscribeOptions};

use crate::topic;

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
    let query = Query::new(Pattern::Exact(topic("wanted")));
    let mut subscription = runtime.block_on(store.subscribe(&query, SubscribeOptions::default())).unwrap();
    let next = runtime.spawn(async move { (subscription.next().await.map(|_| ()), Instant::now()) });
    std::thread::sleep(Duration::from_millis(50));
    let appended = Instant::now();
    store.append(NewEvent::new(topic("wanted"), "now"), Expect::Any).unwrap();
    let waited = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), next).await });
    let (delivery, at) = waited.expect("no delivery within 5 s").unwrap();
    delivery.unwrap();
    let waited = at.duration_since(appended);
    // A subscriber woken only by a periodic tick would take a second or
    // more; a loaded machine can take a few hundred milliseconds anyway.
    assert!(waited < Duration::from_millis(900), "delivered {waited:?} after the append");
}
