//! Compaction: sealed segments rewritten without their removed events keep
//! every live event where it was (id, seq, bytes), give the disk back, stay
//! readable by readers that started before, and survive a rebuild of the
//! index from the log.

use std::fs;
use std::path::Path;

use cairn_store::{Event, Expect, NewEvent, Options, Pattern, Query, StateOp, Store, SyncMode, Ttl};

use crate::topic;

fn options() -> Options {
    Options { segment_bytes: 16 * 1024, sync: SyncMode::None, compact_ratio: None, ..Options::default() }
}

fn block_on<T>(pending: cairn_store::Pending<T>) -> cairn_store::Result<T> {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(pending)
}

/// Everything, read both ways (compressed generations included).
fn all(store: &Store) -> Vec<Event> {
    crate::read_both(store, &Query::new(Pattern::all()))
}

fn log_bytes(dir: &Path) -> u64 {
    // A file may go between the listing and its stat (compaction runs).
    fs::read_dir(dir.join("log")).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()
}

fn log_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir.join("log")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// Interleaves a kept topic with a `last:5` one and removes some of the
/// kept one's events: most of the log is then dead.
fn fill(store: &Store) -> Vec<Event> {
    let mut kept = Vec::new();
    for i in 0..600 {
        let payload = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(60));
        let event = store.append(NewEvent::new(topic("keep"), payload.clone()), Expect::Any).unwrap();
        kept.push(event);
        for _ in 0..3 {
            store
                .append(NewEvent::new(topic("churn"), payload.clone()).with_ttl(Ttl::Last { n: 5 }), Expect::Any)
                .unwrap();
        }
    }
    // A topic all of whose events go: its seqs must never be given again.
    let gone: Vec<_> =
        (0..3).map(|i| store.append(NewEvent::new(topic("gone"), format!("g{i}")), Expect::Any).unwrap().id).collect();
    // Every tenth kept event removed, and the newest one.
    let doomed: Vec<_> = kept.iter().step_by(10).map(|e| e.id).chain([kept.last().unwrap().id]).chain(gone).collect();
    store.remove_many(&doomed).unwrap();
    kept.retain(|e| !doomed.contains(&e.id));
    store.ack("reader", kept[100].id).unwrap();
    store.ack("reader", kept[200].id).unwrap();
    store.state_write(vec![StateOp::Put(b"k".to_vec(), b"1".to_vec())]).map(block_on).unwrap().unwrap();
    store.state_write(vec![StateOp::Put(b"k".to_vec(), b"2".to_vec())]).map(block_on).unwrap().unwrap();
    kept
}

#[test]
fn compaction_gives_the_disk_back_and_changes_no_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let kept = fill(&store);
    let before = all(&store);
    let heads_before = store.topics().unwrap();
    let bytes_before = log_bytes(dir.path());

    let report = store.compact(0.0).unwrap();
    assert!(report.segments > 10, "{report:?}");
    assert!(report.events_dropped > 1500, "{report:?}");
    let bytes_after = log_bytes(dir.path());
    assert!(bytes_after * 3 < bytes_before, "log {bytes_before} -> {bytes_after} bytes");
    assert!(log_files(dir.path()).iter().any(|name| name.ends_with(".1.seg")), "{:?}", log_files(dir.path()));

    let after = all(&store);
    assert_eq!(after.len(), before.len());
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(
            (a.id, a.seq, &a.topic, store.content(a).unwrap()),
            (b.id, b.seq, &b.topic, store.content(b).unwrap())
        );
    }
    let keep: Vec<Event> =
        store.read(&Query::new(Pattern::parse("keep").unwrap())).unwrap().map(Result::unwrap).collect();
    assert_eq!(keep.iter().map(|e| e.id).collect::<Vec<_>>(), kept.iter().map(|e| e.id).collect::<Vec<_>>());
    // By seq, from the middle, and by id.
    let from = Query { from_seq: Some(kept[300].seq), limit: Some(3), ..Query::new(Pattern::parse("keep").unwrap()) };
    let got: Vec<u64> = store.read(&from).unwrap().map(|e| e.unwrap().seq).collect();
    assert_eq!(got, kept[300..303].iter().map(|e| e.seq).collect::<Vec<_>>());
    assert_eq!(store.get(kept[42].id).unwrap().unwrap().seq, kept[42].seq);
    assert_eq!(store.topics().unwrap(), heads_before);
    let report = store.verify().unwrap();
    assert!(report.ok(), "{:?}", report.problems);

    // Nothing left to drop: a second run does nothing.
    assert_eq!(store.compact(0.0).unwrap().segments, 0);
    // Appends go on after the newest seq ever given, removed or not.
    let next = store.append(NewEvent::new(topic("keep"), "next"), Expect::Any).unwrap();
    assert_eq!(next.seq, 600);
    store.close().unwrap();

    // Reopened, and with the index rebuilt from the log alone.
    for rebuild in [false, true] {
        if rebuild {
            fs::remove_dir_all(dir.path().join("index")).unwrap();
        }
        let store = Store::open(dir.path(), options()).unwrap();
        if rebuild {
            assert!(store.recovery_report().records_replayed > 100, "{:?}", store.recovery_report());
        }
        let reopened = all(&store);
        assert_eq!(reopened.len(), before.len() + 1);
        assert_eq!(
            reopened[..before.len()].iter().map(|e| e.id).collect::<Vec<_>>(),
            before.iter().map(|e| e.id).collect::<Vec<_>>()
        );
        let keep = store.head(&topic("keep")).unwrap().unwrap();
        assert_eq!((keep.last_seq, keep.count), (600, kept.len() as u64 + 1));
        let churn = store.head(&topic("churn")).unwrap().unwrap();
        assert_eq!((churn.last_seq, churn.count), (1799, 5));
        assert_eq!(store.consumer("reader").unwrap(), Some(kept[200].id));
        assert_eq!(store.state_scan(b"k").unwrap(), vec![(b"k".to_vec(), b"2".to_vec())]);
        let report = store.verify().unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        // The index names only generations that exist, and no old one is left.
        assert!(!log_files(dir.path()).iter().any(|name| name.ends_with(".tmp")));
        if rebuild {
            let gone = store.head(&topic("gone")).unwrap().unwrap();
            assert_eq!((gone.last_seq, gone.count), (2, 0));
            assert_eq!(store.append(NewEvent::new(topic("gone"), "again"), Expect::Any).unwrap().seq, 3);
        }
        store.close().unwrap();
    }
}

#[test]
fn a_reader_started_before_a_compaction_reads_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    fill(&store);
    let expected: Vec<_> = all(&store).iter().map(|e| e.id).collect();
    let mut reader = store.read(&Query::new(Pattern::all())).unwrap();
    let mut seen: Vec<_> = reader.by_ref().take(10).map(|e| e.unwrap().id).collect();
    let report = store.compact(0.0).unwrap();
    assert!(report.segments > 0);
    // The replaced files are gone from the directory...
    assert!(!log_files(dir.path()).iter().any(|name| name.len() == 14 && name.starts_with("0000000000")));
    // ...and the reader still reads the view it started with.
    seen.extend(reader.map(|e| e.unwrap().id));
    assert_eq!(seen, expected);
}

#[test]
fn background_compaction_keeps_a_retention_topic_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let options =
        Options { compact_ratio: Some(0.5), retention_interval: std::time::Duration::from_millis(20), ..options() };
    let store = Store::open(dir.path(), options).unwrap();
    let payload = "y".repeat(200);
    let mut peak = 0;
    for round in 0..40 {
        for _ in 0..100 {
            store
                .append(NewEvent::new(topic("metrics"), payload.clone()).with_ttl(Ttl::Last { n: 10 }), Expect::Any)
                .unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
        if round >= 10 {
            peak = peak.max(log_bytes(dir.path()));
        }
    }
    // 4,000 events of ~250 bytes (1 MB) written; at most a few segments'
    // worth stays (16 KiB segments, compacted at half dead).
    assert!(peak < 300 * 1024, "the log grew to {peak} bytes");
    let events: Vec<_> =
        store.read(&Query::new(Pattern::parse("metrics").unwrap())).unwrap().map(|e| e.unwrap().seq).collect();
    assert_eq!(events, (3990..4000).collect::<Vec<_>>());
    let report = store.verify().unwrap();
    assert!(report.ok(), "{:?}", report.problems);
}

#[test]
fn a_backup_after_a_compaction_copies_the_new_generations_and_opens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    fill(&store);
    let target = tempfile::tempdir().unwrap();
    let copy = target.path().join("copy");
    let progress = cairn_store::BackupProgress::default();
    store.backup(&copy, &progress, Box::new(|| Ok(Vec::new()))).unwrap();
    assert!(!log_files(&copy).iter().any(|name| name.ends_with(".1.seg")));
    store.compact(0.0).unwrap();
    // Into the same directory: the compacted segments replace their copies.
    store.backup(&copy, &progress, Box::new(|| Ok(Vec::new()))).unwrap();
    let files = log_files(&copy);
    assert!(files.iter().any(|name| name.ends_with(".1.seg")), "{files:?}");
    for file in &files {
        let same_segment = files.iter().filter(|other| other[..10] == file[..10]).count();
        assert_eq!(same_segment, 1, "{files:?}");
    }
    let expected: Vec<_> = all(&store).iter().map(|e| (e.id, e.seq)).collect();
    drop(store);
    let restored = Store::open(&copy, options()).unwrap();
    assert_eq!(all(&restored).iter().map(|e| (e.id, e.seq)).collect::<Vec<_>>(), expected);
    let report = restored.verify().unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(restored.head(&topic("gone")).unwrap().unwrap().last_seq, 2);
}

/// Events shaped like what people store: small JSON documents.
fn json_events(store: &Store, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let payload = format!(
                r#"{{"order":{i},"customer":"customer-{}","items":[{{"sku":"SKU-{}","qty":{}}}],"status":"placed","total":{}.{:02}}}"#,
                i % 97,
                i % 13,
                i % 5 + 1,
                i % 1000,
                i % 100
            );
            store.append(NewEvent::new(topic(&format!("orders.{}", i % 4)), payload), Expect::Any).unwrap()
        })
        .collect()
}

fn compressed_files(dir: &Path) -> usize {
    fs::read_dir(dir.join("log"))
        .unwrap()
        .filter(|entry| {
            let bytes = fs::read(entry.as_ref().unwrap().path()).unwrap();
            bytes.len() >= 16 && u32::from_le_bytes(bytes[12..16].try_into().unwrap()) & (1 << 16) != 0
        })
        .count()
}

#[test]
fn sealed_segments_are_compressed_and_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let appended = json_events(&store, 3000);
    let before = log_bytes(dir.path());
    let report = store.compact(0.5).unwrap();
    // Nothing removed: every sealed segment is rewritten only to compress it.
    assert_eq!(report.events_dropped, 0);
    assert!(report.segments > 10, "{report:?}");
    assert_eq!(report.plain_bytes_before, report.plain_bytes_after);
    let ratio = report.bytes_after as f64 / report.bytes_before as f64;
    eprintln!(
        "compression: {} -> {} bytes ({ratio:.2}); the log {before} -> {}",
        report.bytes_before,
        report.bytes_after,
        log_bytes(dir.path())
    );
    assert!(ratio < 0.5, "{report:?}");
    assert_eq!(compressed_files(dir.path()), report.segments as usize);
    // Everything reads back exactly: all of it, by id, by topic from a seq, backwards.
    let read = all(&store);
    assert_eq!(read.len(), appended.len());
    for (got, want) in read.iter().zip(&appended) {
        assert_eq!((got.id, got.seq, &got.topic), (want.id, want.seq, &want.topic));
        assert_eq!(store.content(got).unwrap(), store.content(want).unwrap());
    }
    assert_eq!(store.get(appended[1234].id).unwrap().unwrap().id, appended[1234].id);
    let query = Query { from_seq: Some(300), limit: Some(5), ..Query::new(Pattern::parse("orders.2").unwrap()) };
    let seqs: Vec<u64> = store.read(&query).unwrap().map(|e| e.unwrap().seq).collect();
    assert_eq!(seqs, vec![300, 301, 302, 303, 304]);
    let back = Query { reverse: true, limit: Some(3), ..Query::new(Pattern::all()) };
    assert_eq!(store.read(&back).unwrap().count(), 3);
    let report = store.verify().unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    // Compressing again does nothing; removing then compacting keeps it compressed.
    assert_eq!(store.compact(0.0).unwrap().segments, 0);
    let doomed: Vec<_> = appended.iter().take(500).map(|e| e.id).collect();
    store.remove_many(&doomed).unwrap();
    let report = store.compact(0.0).unwrap();
    assert_eq!(report.events_dropped, 500, "{report:?}");
    assert_eq!(all(&store).len(), 2500);
    store.close().unwrap();
    // Rebuilt from the compressed log alone.
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    assert_eq!(
        all(&store).iter().map(|e| e.id).collect::<Vec<_>>(),
        appended[500..].iter().map(|e| e.id).collect::<Vec<_>>()
    );
    let report = store.verify().unwrap();
    assert!(report.ok(), "{:?}", report.problems);
}

#[test]
fn bit_rot_in_a_compressed_block_is_an_error_never_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    json_events(&store, 1500);
    store.compact(0.0).unwrap();
    store.close().unwrap();
    let victim = fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|path| path.to_str().unwrap().ends_with(".1.seg"))
        .unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    // Inside the first block's zstd bytes (after the header and its frame).
    bytes[16 + 8 + 40] ^= 0x10;
    fs::write(&victim, bytes).unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let results: Vec<_> = store.read(&Query::new(Pattern::all())).unwrap().collect();
    let error = results.iter().find_map(|r| r.as_ref().err()).expect("an error, not wrong bytes");
    assert_eq!(error.code(), "corrupt", "{error}");
    assert!(error.to_string().contains("compressed block"), "{error}");
    let report = store.verify().unwrap();
    assert!(!report.ok());
    assert!(report.problems.iter().any(|p| p.contains("checksum")), "{:?}", report.problems);
}

#[test]
fn segments_left_with_no_records_still_rebuild() {
    // Removals one by one fill segments with removal records only; once
    // their events are compacted away, those segments are left empty.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let ids: Vec<_> = (0..2000)
        .map(|i| store.append(NewEvent::new(topic("short"), format!("{i:0100}")), Expect::Any).unwrap().id)
        .collect();
    for id in &ids {
        store.remove(*id).unwrap();
    }
    let kept = store.append(NewEvent::new(topic("kept"), "k"), Expect::Any).unwrap();
    for _ in 0..200 {
        store.append(NewEvent::new(topic("filler"), "x".repeat(100)), Expect::Any).unwrap();
    }
    store.compact(0.0).unwrap();
    store.compact(0.0).unwrap();
    let empty = fs::read_dir(dir.path().join("log"))
        .unwrap()
        .filter(|e| {
            let e = e.as_ref().unwrap();
            e.file_name().to_str().unwrap().matches('.').count() == 2 && e.metadata().unwrap().len() < 100
        })
        .count();
    let sizes: Vec<_> = fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), e.metadata().unwrap().len())
        })
        .collect();
    assert!(empty > 0, "some segment holds no record any more: {sizes:?}");
    store.close().unwrap();
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    assert_eq!(store.get(kept.id).unwrap().unwrap().seq, 0);
    assert_eq!(store.head(&topic("short")).unwrap().unwrap().last_seq, 1999);
    let report = store.verify().unwrap();
    assert!(report.ok(), "{:?}", report.problems);
}

#[test]
fn a_backup_never_writes_into_another_stores_backup() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(dir_a.path(), options()).unwrap();
    let b = Store::open(dir_b.path(), options()).unwrap();
    fill(&a);
    fill(&b);
    // After compaction, the two stores' segment 0 are in different generations.
    a.compact(0.0).unwrap();
    let target = tempfile::tempdir().unwrap();
    let copy = target.path().join("copy");
    let progress = cairn_store::BackupProgress::default();
    a.backup(&copy, &progress, Box::new(|| Ok(Vec::new()))).unwrap();
    let before = log_files(&copy);
    let refused = b.backup(&copy, &progress, Box::new(|| Ok(Vec::new()))).unwrap_err();
    assert!(refused.to_string().contains("not a backup of this store"), "{refused}");
    assert_eq!(log_files(&copy), before, "nothing of the other store's backup was touched");
    // Its own backup goes on incrementally.
    a.backup(&copy, &progress, Box::new(|| Ok(Vec::new()))).unwrap();
}

/// A cursor views exactly the events a read returns, every field of them:
/// types, meta, users, inline and stored payloads, retention, in plain and
/// compressed segments, with removed events skipped, for every query shape.
#[test]
fn a_cursor_views_what_a_read_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    let mut appended = Vec::new();
    for i in 0..1500u32 {
        let size = if i % 50 == 0 { 6000 } else { 20 + i as usize % 200 };
        let mut event = NewEvent::new(topic(&format!("mixed.{}", i % 3)), vec![b'a' + (i % 26) as u8; size]);
        if i % 2 == 0 {
            event = event.with_type(format!("type-{}", i % 7));
        }
        if i % 3 == 0 {
            event.meta = Some(format!(r#"{{"n":{i}}}"#));
        }
        if i % 5 == 0 {
            event.user = Some(format!("user-{}", i % 4));
        }
        if i % 7 == 0 {
            event.payload = None;
        }
        if i % 11 == 0 {
            event = event.with_ttl(Ttl::Time { ms: 3_600_000 });
        }
        appended.push(store.append(event, Expect::Any).unwrap());
    }
    for event in appended.iter().step_by(13) {
        store.remove(event.id).unwrap();
    }
    let check = |store: &Store| {
        let middle = appended[700].id;
        let queries = [
            Query::new(Pattern::all()),
            Query { reverse: true, ..Query::new(Pattern::all()) },
            Query { last: Some(40), ..Query::new(Pattern::parse("mixed.*").unwrap()) },
            Query { last: Some(40), reverse: true, ..Query::new(Pattern::all()) },
            Query { after: Some(middle), limit: Some(100), ..Query::new(Pattern::parse("mixed.1").unwrap()) },
            Query { from_seq: Some(100), ..Query::new(Pattern::parse("mixed.2").unwrap()) },
        ];
        for query in &queries {
            crate::read_both(store, query);
        }
        let events = crate::read_both(store, &queries[0]);
        assert_eq!(events.len(), appended.len() - appended.len().div_ceil(13));
        // The mix is really there.
        assert!(events.iter().any(|e| e.kind.is_some() && e.meta.is_some() && e.user.is_some()));
        assert!(events.iter().any(|e| e.payload == cairn_store::Payload::Stored));
        assert!(events.iter().any(|e| e.inline_payload().is_some()));
        assert!(events.iter().any(|e| e.ttl != Ttl::Forever));
    };
    check(&store);
    let report = store.compact(0.01).unwrap();
    assert!(compressed_files(dir.path()) > 0, "{report:?}");
    check(&store);
}
