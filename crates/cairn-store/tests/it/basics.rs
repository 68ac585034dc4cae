//! Example-by-example behaviour of the engine's own API (what every storage
//! backend must do is in the conformance suite, `conformance.rs`).

use cairn_store::{EventId, Expect, Hash, NewEvent, Pattern, Query, StoreError, Ttl};

use crate::{open, topic};

fn payload_of(store: &cairn_store::Store, event: &cairn_store::Event) -> Vec<u8> {
    store.content(event).expect("content").expect("has payload")
}

#[test]
fn large_payloads_go_to_the_content_store_and_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let big = vec![7u8; 100_000];
    let event = store.append(NewEvent::new(topic("big"), big.clone()), Expect::Any).unwrap();
    assert_eq!(event.payload, cairn_store::Payload::Stored);
    assert_eq!(payload_of(&store, &event), big);
    let hash = event.hash.unwrap();
    assert_eq!(store.cas_get(&hash).unwrap(), big);
    assert_eq!(store.cas_get(&Hash::parse(&hash.hex()).unwrap()).unwrap(), big);
    store.remove(event.id).unwrap();
    assert!(store.get(event.id).unwrap().is_none());
    assert!(!store.cas_has(&hash).unwrap(), "content of removed events is collected");
    // Content put on its own is kept.
    let own = store.cas_put(b"standalone").unwrap();
    assert_eq!(store.cas_get(&own).unwrap(), b"standalone");
    let missing = Hash::of(b"never stored");
    assert_eq!(store.cas_get(&missing).unwrap_err().code(), "not_found");
}

#[test]
fn consumers_resume_after_their_ack_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<EventId>;
    {
        let store = open(dir.path());
        ids = (0..4)
            .map(|n| store.append(NewEvent::new(topic("jobs"), format!("{n}")), Expect::Any).unwrap().id)
            .collect();
        store.ack("worker", ids[1]).unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.consumer("worker").unwrap(), Some(ids[1]));
    let query = store.consumer_query("worker", Pattern::parse("jobs").unwrap()).unwrap();
    let rest: Vec<EventId> = store.read(&query).unwrap().map(|e| e.unwrap().id).collect();
    assert_eq!(rest, ids[2..]);
    assert_eq!(store.consumers().unwrap(), vec![("worker".to_owned(), ids[1])]);
    assert!(store.consumer_delete("worker").unwrap());
    assert_eq!(store.consumer("worker").unwrap(), None);
}

#[test]
fn a_second_opener_gets_a_clear_lock_error() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(dir.path());
    let error = cairn_store::Store::open(dir.path(), crate::test_options()).err().expect("locked");
    assert_eq!(error.code(), "locked");
    assert!(error.to_string().contains(&format!("pid {}", std::process::id())), "{error}");
}

#[test]
fn an_open_waits_a_moment_for_a_lock_being_released() {
    // Another process (flock(1)) holds the lock a moment (50 ms, then its
    // exit: well within the open's patience on a loaded machine), as a child between
    // its fork and its exec holds the lock of a store its parent just closed.
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let taken = dir.path().join("taken");
    let mut holder = std::process::Command::new("flock")
        .arg(dir.path().join("LOCK"))
        .args(["-c", &format!("touch {} && sleep 0.05", taken.display())])
        .spawn()
        .expect("flock(1) from util-linux");
    while !taken.exists() {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let store = cairn_store::Store::open(dir.path(), crate::test_options()).expect("the lock was released in time");
    assert!(holder.wait().unwrap().success());
    drop(store);
}

#[test]
fn a_store_whose_directory_was_deleted_still_closes() {
    // The close flushes the index after a large session; fjall's own wait
    // for a flush never ended when the flush failed.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let events = (0..20_000).map(|n| NewEvent::new(topic("gone"), format!("{n}:{}", "x".repeat(100)))).collect();
    store.append_batch(cairn_store::Batch { events, ..cairn_store::Batch::default() }).unwrap();
    std::fs::remove_dir_all(dir.path()).unwrap();
    let (done, closed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(store);
        let _ = done.send(());
    });
    closed.recv_timeout(std::time::Duration::from_secs(30)).expect("the store closed");
}

#[test]
fn bad_input_is_refused_with_the_field_named() {
    let check = |result: Result<cairn_store::Topic, StoreError>, field: &str| {
        let error = result.unwrap_err();
        assert!(matches!(&error, StoreError::Invalid { field: f, .. } if *f == field), "{error}");
    };
    check(cairn_store::Topic::new(""), "topic");
    check(cairn_store::Topic::new(&"a".repeat(256)), "topic");
    check(cairn_store::Topic::new("has\ttab"), "topic");
    check(cairn_store::Topic::new("a..b"), "topic");
    assert!(Pattern::parse("a.>.b").is_err());
    assert!(Ttl::parse("time:5x").is_err());
    assert!(Ttl::parse("last:0").is_err());
    assert!(Expect::parse("maybe").is_err());
    assert!(EventId::parse("not-an-id").is_err());
    assert!(Hash::parse("sha256-xyz").is_err());
    assert!(cairn_store::check_meta("[1,2]").is_err());

    let dir = tempfile::tempdir().unwrap();
    let store =
        cairn_store::Store::open(dir.path(), cairn_store::Options { payload_bytes_max: 10, ..crate::test_options() })
            .unwrap();
    let error = store.append(NewEvent::new(topic("cairn.start"), "x"), Expect::Any).unwrap_err();
    assert!(error.to_string().contains("reserved"), "{error}");
    let error = store.append(NewEvent::new(topic("t"), vec![0u8; 11]), Expect::Any).unwrap_err();
    assert_eq!(error.code(), "too_large");
    let mut bad_meta = NewEvent::new(topic("t"), "x");
    bad_meta.meta = Some("\"string\"".into());
    assert_eq!(store.append(bad_meta, Expect::Any).unwrap_err().code(), "invalid");
    assert!(store.head(&topic("t")).unwrap().is_none(), "nothing was written");
}

#[test]
fn pattern_matching_examples() {
    let check = |pattern: &str, topic: &str, expected: bool| {
        assert_eq!(Pattern::parse(pattern).unwrap().matches(topic), expected, "{pattern} vs {topic}");
    };
    check("orders.*", "orders.1", true);
    check("orders.*", "orders.1.x", false);
    check("orders.*", "orders", false);
    check("orders.>", "orders.1.x", true);
    check("orders.>", "orders", false);
    check(">", "anything.at.all", true);
    check("*.created", "user.created", true);
    check("orders:1", "orders:1", true);
}

#[test]
fn verify_reports_a_clean_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for n in 0..100 {
        let size = if n % 10 == 0 { 5000 } else { 3000 };
        store.append(NewEvent::new(topic("v"), vec![n as u8; size]), Expect::Any).unwrap();
    }
    let report = store.verify().unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!((report.events, report.indexed, report.content_files), (100, 100, 10));
    assert!(report.segments > 1, "small segments roll");
}

#[test]
fn every_sync_mode_keeps_data_across_a_clean_reopen() {
    for mode in ["always", "interval:20ms", "none"] {
        let dir = tempfile::tempdir().unwrap();
        let options =
            cairn_store::Options { sync: cairn_store::SyncMode::parse(mode).unwrap(), ..crate::test_options() };
        {
            let store = cairn_store::Store::open(dir.path(), options.clone()).unwrap();
            for n in 0..10 {
                store.append(NewEvent::new(topic("s"), format!("{n}")), Expect::Any).unwrap();
            }
            store.sync().unwrap();
        }
        let store = cairn_store::Store::open(dir.path(), options).unwrap();
        assert_eq!(store.head(&topic("s")).unwrap().unwrap().count, 10, "sync {mode}");
    }
    for bad in ["sometimes", "interval:", "interval:0ms", "interval:5parsecs"] {
        assert_eq!(cairn_store::SyncMode::parse(bad).unwrap_err().code(), "invalid", "{bad}");
    }
}

#[test]
fn state_writes_are_durable_in_order_and_survive_an_index_rebuild() {
    use cairn_store::StateOp::{Delete, Put};
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let first = store.state_write(vec![Put(b"g/a".to_vec(), b"1".to_vec()), Put(b"g/b".to_vec(), b"2".to_vec())]);
        let second = store.state_write(vec![Delete(b"g/a".to_vec()), Put(b"g/b".to_vec(), b"3".to_vec())]);
        runtime.block_on(first.unwrap()).unwrap();
        runtime.block_on(second.unwrap()).unwrap();
        store.state_write(vec![Put(b"h/x".to_vec(), vec![0, 13, 10])]).map(|p| runtime.block_on(p)).unwrap().unwrap();
        assert_eq!(store.state_scan(b"g/").unwrap(), vec![(b"g/b".to_vec(), b"3".to_vec())]);
    }
    let expected = vec![(b"g/b".to_vec(), b"3".to_vec()), (b"h/x".to_vec(), vec![0, 13, 10])];
    assert_eq!(open(dir.path()).state_scan(b"").unwrap(), expected);
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = open(dir.path());
    assert_eq!(store.state_scan(b"").unwrap(), expected);
    assert!(store.verify().unwrap().ok());
}

#[test]
fn content_shared_with_expiring_events_outlives_their_sweep() {
    // An event of a `time:` topic expires just as another event with the
    // same large content is appended. The writer does not store a file
    // twice, so the new event relies on the file already there; the sweep
    // that removes the older event must not delete it before the new
    // event is indexed. Each round uses new content, so each is a chance.
    let dir = tempfile::tempdir().unwrap();
    let options =
        cairn_store::Options { retention_interval: std::time::Duration::from_millis(1), ..crate::test_options() };
    let store = cairn_store::Store::open(dir.path(), options).unwrap();
    let mut kept = Vec::new();
    for round in 0..400u32 {
        let mut content = vec![0u8; 20_000];
        content[..4].copy_from_slice(&round.to_be_bytes());
        let fleeting = NewEvent::new(topic("fleeting"), content.clone()).with_ttl(Ttl::Time { ms: 1 });
        store.append(fleeting, Expect::Any).unwrap();
        std::thread::sleep(std::time::Duration::from_micros(500 + u64::from(round % 7) * 300));
        kept.push((store.append(NewEvent::new(topic("kept"), content.clone()), Expect::Any).unwrap(), content));
    }
    for (event, content) in &kept {
        let event = store.get(event.id).unwrap().expect("a kept event is there");
        assert_eq!(&payload_of(&store, &event), content, "content of {}", event.id);
    }
}

/// A large batch is prepared on two threads; it still fails as a whole,
/// with the error of its first bad event in batch order.
#[test]
fn a_large_batch_fails_whole_with_its_first_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let batch = |bad: &[usize]| {
        let events = (0..10_000)
            .map(|i| {
                let event = NewEvent::new(topic("big"), format!("{i}"));
                match bad.iter().position(|&b| b == i) {
                    Some(0) => event.with_type("t".repeat(300)),
                    Some(_) => NewEvent { topic: None, ..event },
                    None => event,
                }
            })
            .collect();
        cairn_store::Batch { events, ..cairn_store::Batch::default() }
    };
    // Only the second half is bad: that error.
    let error = store.append_batch(batch(&[9_000])).unwrap_err().to_string();
    assert!(error.contains("type"), "{error}");
    // Both halves: the first half's error, not the second's.
    let error = store.append_batch(batch(&[20, 9_000])).unwrap_err().to_string();
    assert!(error.contains("type"), "{error}");
    let error = store.append_batch(batch(&[9_000, 20])).unwrap_err().to_string();
    assert!(error.contains("topic") && !error.contains("type"), "{error}");
    assert!(store.head(&topic("big")).unwrap().is_none(), "nothing of a failed batch is stored");
    // And a good one is stored whole, in order.
    let events = store.append_batch(batch(&[])).unwrap();
    assert_eq!(events.len(), 10_000);
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64 && e.inline_payload() == Some(i.to_string().as_bytes()))
    );
    // Its record (encoded on two threads) reads back whole after a reopen,
    // every event's checksum checked.
    drop(store);
    let store = open(dir.path());
    let read: Vec<_> = store.read(&Query::new(Pattern::parse("big").unwrap())).unwrap().map(Result::unwrap).collect();
    assert_eq!(read.len(), 10_000);
    assert!(read.iter().zip(&events).all(|(read, appended)| read.id == appended.id
        && read.seq == appended.seq
        && payload_of(&store, read) == appended.inline_payload().unwrap()));
    let report = store.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// A trim that removes many events sharing a content file (and one that
/// removes events with files of their own) keeps a shared file while any
/// event holds it and collects every file no event holds: the check runs
/// once per file, after all of the transaction's removals.
#[test]
fn a_trim_of_many_events_sharing_a_file_keeps_it_for_the_survivors() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let shared = vec![5u8; 50_000];
    let shared_hash = Hash::of(&shared);
    let own: Vec<Vec<u8>> = (100..120u8).map(|n| vec![n; 50_000]).collect();
    let mut events = Vec::new();
    for (n, own) in own.iter().enumerate() {
        events.push(NewEvent::new(topic("trimmed"), shared.clone()));
        if n % 2 == 0 {
            events.push(NewEvent::new(topic("trimmed"), own.clone()));
        }
    }
    store.append_batch(cairn_store::Batch { events, ..cairn_store::Batch::default() }).unwrap();
    // Keeps the last three: one with a file of its own, one sharing the
    // file, and this one (sharing it too).
    let last = NewEvent::new(topic("trimmed"), shared.clone()).with_ttl(Ttl::Last { n: 3 });
    store.append(last, Expect::Any).unwrap();
    let left: Vec<_> =
        store.read(&Query::new(Pattern::parse("trimmed").unwrap())).unwrap().map(|e| e.unwrap()).collect();
    assert_eq!(left.len(), 3);
    assert!(store.cas_has(&shared_hash).unwrap(), "the survivors' file is kept");
    for event in &left {
        assert_eq!(payload_of(&store, event).len(), 50_000);
    }
    let kept_own: Vec<_> = left.iter().filter_map(|e| e.hash).filter(|h| *h != shared_hash).collect();
    for content in &own {
        let hash = Hash::of(content);
        assert_eq!(store.cas_has(&hash).unwrap(), kept_own.contains(&hash), "file of {}", content[0]);
    }
    // Now the shared content's last holders go.
    let last = NewEvent::new(topic("trimmed"), b"small".to_vec()).with_ttl(Ttl::Last { n: 1 });
    store.append(last, Expect::Any).unwrap();
    assert!(!store.cas_has(&shared_hash).unwrap(), "a file no event holds is collected");
}

/// The last event holding a file is removed and another event with the
/// same content is appended right after: when the indexer takes both in
/// one transaction, the new event's reference must keep the file (the
/// check for a file's last reference runs after every record of it).
#[test]
fn content_removed_and_appended_again_at_once_keeps_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut again = Vec::new();
    for round in 0..300u32 {
        let mut content = vec![1u8; 20_000];
        content[..4].copy_from_slice(&round.to_be_bytes());
        let first = store.append(NewEvent::new(topic("once"), content.clone()), Expect::Any).unwrap();
        store.remove(first.id).unwrap();
        again.push((store.append(NewEvent::new(topic("again"), content.clone()), Expect::Any).unwrap(), content));
    }
    for (event, content) in &again {
        let event = store.get(event.id).unwrap().expect("the event is there");
        assert_eq!(&payload_of(&store, &event), content, "content of {}", event.id);
    }
}
