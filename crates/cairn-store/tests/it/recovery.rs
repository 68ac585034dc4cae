//! Torn tails: cut the last segment at every byte offset inside its last few
//! records, and flip bytes in them; the store must open every time, keep
//! every complete record before the damage, and report what it cut.

use std::fs;
use std::path::{Path, PathBuf};

use cairn_store::{Expect, NewEvent, Options, Pattern, Query, Store};

use crate::{test_options, topic};

/// Builds a closed store with `n` single-event records; returns their payloads.
fn build(dir: &Path, n: usize) -> Vec<String> {
    let store = Store::open(dir, test_options()).unwrap();
    let payloads: Vec<String> = (0..n).map(|i| format!("event-{i}-{}", "x".repeat(i % 7))).collect();
    for payload in &payloads {
        store.append(NewEvent::new(topic("torn"), payload.clone()), Expect::Any).unwrap();
    }
    payloads
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = fs::read_dir(dir.join("log")).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    segments.pop().unwrap()
}

/// Record boundaries of a segment: the offset where each record ends.
fn record_ends(segment: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut offset = 16;
    while offset + 8 <= segment.len() {
        let len = u32::from_le_bytes(segment[offset..offset + 4].try_into().unwrap()) as usize;
        offset += 8 + len;
        ends.push(offset);
    }
    ends
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn payloads_in(store: &Store) -> Vec<String> {
    store
        .read(&Query::new(Pattern::parse("torn").unwrap()))
        .unwrap()
        .map(|e| String::from_utf8(store.content(&e.unwrap()).unwrap().unwrap()).unwrap())
        .collect()
}

/// Opens a damaged copy; `drop_index` also deletes the index so the whole
/// log is replayed (the other path leaves the index ahead of the cut log).
fn open_damaged(pristine: &Path, scratch: &Path, drop_index: bool, damage: impl FnOnce(&Path)) -> Store {
    let _ = fs::remove_dir_all(scratch);
    copy_dir(pristine, scratch);
    if drop_index {
        fs::remove_dir_all(scratch.join("index")).unwrap();
    }
    damage(&last_segment(scratch));
    Store::open(scratch, test_options()).expect("a torn tail must never stop the store from opening")
}

/// A kill between creating the next segment file and writing its header
/// leaves it empty (or a few bytes long): the next open replaces it. (An
/// empty file's memory map has no byte inside it: reading its header
/// through one was a SIGBUS that killed every open.)
#[test]
fn a_segment_cut_short_at_its_creation_is_replaced() {
    for torn_len in [0usize, 7, 16 + 3] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        let payloads = build(&dir, 20);
        let current = last_segment(&dir);
        let name = current.file_name().unwrap().to_string_lossy().into_owned();
        let number: u32 = name.trim_end_matches(".seg").parse().unwrap();
        let next = current.with_file_name(format!("{:0width$}.seg", number + 1, width = name.len() - 4));
        let header = fs::read(&current).unwrap()[..16].to_vec();
        let mut torn = header.clone();
        torn.resize(torn_len, 0);
        fs::write(&next, &torn[..torn_len.min(torn.len())]).unwrap();
        let store = Store::open(&dir, test_options()).unwrap();
        assert_eq!(payloads_in(&store), payloads, "torn at {torn_len}");
        store.append(NewEvent::new(topic("torn"), "after"), Expect::Any).unwrap();
        drop(store);
        let store = Store::open(&dir, test_options()).unwrap();
        assert_eq!(payloads_in(&store).len(), payloads.len() + 1, "torn at {torn_len}");
        assert!(store.verify().unwrap().ok());
    }
}

#[test]
fn truncation_at_every_offset_keeps_complete_records() {
    let root = tempfile::tempdir().unwrap();
    let pristine = root.path().join("pristine");
    let payloads = build(&pristine, 40);
    let segment = fs::read(last_segment(&pristine)).unwrap();
    let ends = record_ends(&segment);
    let n_in_segment = ends.len();
    let first_in_segment = payloads.len() - n_in_segment;
    let start = ends[ends.len().saturating_sub(3)] - 1;
    for cut in start..segment.len() {
        let drop_index = cut % 2 == 0;
        let store = open_damaged(&pristine, &root.path().join("scratch"), drop_index, |path| {
            let file = fs::OpenOptions::new().write(true).open(path).unwrap();
            file.set_len(cut as u64).unwrap();
        });
        let complete = ends.iter().filter(|&&end| end <= cut).count();
        let expected = &payloads[..first_in_segment + complete];
        assert_eq!(payloads_in(&store), expected, "cut at {cut}");
        let on_boundary = cut == 16 || ends.contains(&cut);
        assert_eq!(store.recovery_report().truncated.is_some(), !on_boundary, "cut at {cut}");
        // The store takes writes after the cut, and they survive a reopen
        // (checked at some offsets only: each reopen flushes the index).
        let event = store.append(NewEvent::new(topic("torn"), "after"), Expect::Any).unwrap();
        assert_eq!(event.seq as usize, expected.len());
        if cut % 7 != 0 {
            continue;
        }
        let dir = store.dir().to_path_buf();
        drop(store);
        let store = Store::open(&dir, test_options()).unwrap();
        assert_eq!(payloads_in(&store).len(), expected.len() + 1);
        assert!(store.verify().unwrap().ok());
    }
}

#[test]
fn flipped_bytes_in_the_last_records_cut_from_the_damage() {
    let root = tempfile::tempdir().unwrap();
    let pristine = root.path().join("pristine");
    let payloads = build(&pristine, 30);
    let segment = fs::read(last_segment(&pristine)).unwrap();
    let ends = record_ends(&segment);
    let first_in_segment = payloads.len() - ends.len();
    let start = ends[ends.len() - 3];
    for at in (start..segment.len()).step_by(3) {
        let store = open_damaged(&pristine, &root.path().join("scratch"), true, |path| {
            let mut bytes = fs::read(path).unwrap();
            bytes[at] ^= 0x5a;
            fs::write(path, bytes).unwrap();
        });
        let intact = ends.iter().filter(|&&end| end <= at).count();
        assert_eq!(payloads_in(&store), &payloads[..first_in_segment + intact], "flip at {at}");
        let cut = store.recovery_report().truncated.clone().expect("damage is reported");
        assert!(cut.bytes > 0, "flip at {at}");
    }
}

#[test]
fn damage_far_from_the_tail_refuses_to_open_instead_of_cutting() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    build(&dir, 10);
    // Many megabytes after the damaged record: not a torn write.
    let store = Store::open(&dir, cairn_store::Options { segment_bytes: 1 << 30, ..test_options() }).unwrap();
    // More than one group and one record can cover (40 MiB) follows the damage.
    let filler = vec![1u8; 4000];
    for _ in 0..110 {
        let batch = cairn_store::Batch {
            events: (0..100).map(|_| NewEvent::new(topic("fill"), filler.clone())).collect(),
            ..Default::default()
        };
        store.append_batch(batch).unwrap();
    }
    drop(store);
    fs::remove_dir_all(dir.join("index")).unwrap();
    let path = last_segment(&dir);
    let mut bytes = fs::read(&path).unwrap();
    bytes[40] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let error = Store::open(&dir, test_options()).err().expect("rot must not be cut silently");
    assert_eq!(error.code(), "corrupt", "{error}");
}

/// Bytes of fjall journal files in `index`.
fn journal_bytes(index: &Path) -> u64 {
    fs::read_dir(index)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "jnl"))
        .map(|entry| entry.metadata().unwrap().len())
        .sum()
}

#[test]
fn an_open_after_a_clean_close_replays_nothing() {
    // Counted, not timed. fjall rotated its journal only every 64 MB and
    // read it all back on every open: each open read back every earlier
    // run's index writes. Now the journal is removed unread, and a close
    // after a large session flushes the index, so nothing is replayed.
    let dir = tempfile::tempdir().unwrap();
    for run in 0..3 {
        let store = Store::open(dir.path(), crate::test_options()).unwrap();
        let report = store.recovery_report().clone();
        if run > 0 {
            let flags = (report.records_replayed, report.rebuilt, report.clean_close, report.flushed_on_close);
            assert_eq!(flags, (0, false, true, true), "run {run}");
            assert!(report.index_journal_bytes > 0, "the journal was there, and removed unread");
            // What this open writes is newer than what the tables hold.
            assert_eq!(store.head(&topic("open")).unwrap().unwrap().last_seq, run * 50_000 - 1);
            store.append(cairn_store::NewEvent::new(topic("small"), format!("{run}")), Expect::Any).unwrap();
            store.ack("c", store.head(&topic("small")).unwrap().unwrap().last_id).unwrap();
            let last = store.head(&topic("small")).unwrap().unwrap();
            assert_eq!((last.last_seq, store.consumer("c").unwrap()), (run - 1, Some(last.last_id)));
        }
        for chunk in 0..50 {
            let events = (0..1000)
                .map(|n| cairn_store::NewEvent::new(topic("open"), format!("{run}-{chunk}-{n}-{}", "x".repeat(100))))
                .collect();
            store.append_batch(cairn_store::Batch { events, ..cairn_store::Batch::default() }).unwrap();
        }
        drop(store);
        assert!(journal_bytes(&dir.path().join("index")) > 0);
    }
    let store = Store::open(dir.path(), crate::test_options()).unwrap();
    assert_eq!(store.read(&Query::new(Pattern::Exact(topic("open")))).unwrap().count(), 150_000);
}

#[test]
fn a_small_session_leaves_a_little_log_to_replay_and_lost_sweeps_are_redone() {
    // A close after a few appends does not flush the index (a flush adds a
    // table, and fjall's merges of tables are what a short command would
    // wait for): the next open replays those records from the log, and,
    // the close not being marked clean, sweeps expired events again.
    let dir = tempfile::tempdir().unwrap();
    // No sweep during the first session (its first would come after 1 s,
    // which a loaded machine can reach): the open's is the one counted.
    let quiet =
        cairn_store::Options { retention_interval: std::time::Duration::from_secs(3600), ..crate::test_options() };
    let store = Store::open(dir.path(), quiet).unwrap();
    let mut expiring = cairn_store::NewEvent::new(topic("brief"), "gone soon");
    expiring.ttl = cairn_store::Ttl::parse("time:1ms").unwrap();
    store.append(expiring, Expect::Any).unwrap();
    for n in 0..5 {
        store.append(cairn_store::NewEvent::new(topic("torn"), format!("{n}")), Expect::Any).unwrap();
    }
    drop(store);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let store = Store::open(dir.path(), crate::test_options()).unwrap();
    let report = store.recovery_report().clone();
    assert!(report.clean_close && !report.flushed_on_close, "{report:?}");
    assert!((1..=10).contains(&report.records_replayed), "{report:?}");
    assert_eq!(report.expired_on_open, 1, "{report:?}");
    assert_eq!(payloads_in(&store).len(), 5);
    assert_eq!(store.read(&Query::new(Pattern::Exact(topic("brief")))).unwrap().count(), 0);
}

#[test]
fn content_references_lost_in_a_crash_are_rebuilt_and_keep_referenced_files() {
    // The content references flush apart from the rest of the index and
    // catch up behind an open (`index/refs.rs`); here they are lost whole.
    // While they catch up, a removal must not delete a content file that
    // another event (not yet referenced again) still holds, and lookups by
    // hash must wait for them rather than answer "not found".
    let dir = tempfile::tempdir().unwrap();
    let big = vec![9u8; 100_000];
    let (first, second, inline);
    {
        let store = Store::open(dir.path(), crate::test_options()).unwrap();
        first = store.append(NewEvent::new(topic("big"), big.clone()), Expect::Any).unwrap();
        // Records enough for several catch-up steps (4,096 records each)
        // between the two events holding the file.
        for n in 0..12_000 {
            store.append(NewEvent::new(topic("filler"), format!("f{n}")), Expect::Any).unwrap();
        }
        second = store.append(NewEvent::new(topic("big"), big.clone()), Expect::Any).unwrap();
        inline = store.append(NewEvent::new(topic("small"), "tiny and inline"), Expect::Any).unwrap();
        store.close().unwrap();
    }
    assert_eq!(first.payload, cairn_store::Payload::Stored);
    let hash = first.hash.unwrap();
    let faults = std::sync::Arc::new(cairn_store::faults::Faults::default());
    faults.lose_content_refs();
    let store = Store::open(dir.path(), Options { faults: Some(faults), ..crate::test_options() }).unwrap();
    assert!(store.recovery_report().refs_behind, "{:?}", store.recovery_report());
    // Removed at once, before the references can have caught up.
    store.remove(first.id).unwrap();
    assert_eq!(store.cas_get(&hash).unwrap(), big, "the second event still holds the file");
    assert_eq!(store.content(&store.get(second.id).unwrap().unwrap()).unwrap().unwrap(), big);
    assert_eq!(store.cas_get(&inline.hash.unwrap()).unwrap(), b"tiny and inline", "inline content by hash");
    assert_eq!(store.content_topics(&hash, 10).unwrap(), vec![topic("big")]);
    store.remove(second.id).unwrap();
    assert!(!store.cas_has(&hash).unwrap(), "collected once no event holds it");
    store.close().unwrap();
    // Current again, and so after the next open.
    let store = Store::open(dir.path(), crate::test_options()).unwrap();
    assert!(!store.recovery_report().refs_behind);
    assert_eq!(store.cas_get(&inline.hash.unwrap()).unwrap(), b"tiny and inline");
}

#[test]
fn content_references_in_memory_and_in_sorted_runs_serve_lookups_removals_and_crashes() {
    // New references gather in memory and go to their keyspace as sorted
    // runs when the indexer enters another segment (`index/refs.rs`):
    // lookups by hash and removals must see both, a clean close must leave
    // them current, and a crash must lose none that the log keeps.
    let dir = tempfile::tempdir().unwrap();
    // 20,000 of these events fit in one segment: a run of that many is
    // ingested as a table.
    let options = Options { segment_bytes: 2 * 1024 * 1024, ..test_options() };
    let payload = |n: u32| format!("distinct payload number {n:08}").into_bytes();
    let big = |n: u8| vec![n; 100_000];
    let store = Store::open(dir.path(), options.clone()).unwrap();
    let early = store.append(NewEvent::new(topic("big"), big(1)), Expect::Any).unwrap();
    let mut events = Vec::new();
    for chunk in 0..4u32 {
        let batch: Vec<NewEvent> =
            (chunk * 5_000..(chunk + 1) * 5_000).map(|n| NewEvent::new(topic("small"), payload(n))).collect();
        events
            .extend(store.append_batch(cairn_store::Batch { events: batch, ..cairn_store::Batch::default() }).unwrap());
    }
    let sample = [0, 997, 5_000, 12_345, 19_999];
    let look_up = |store: &Store, when: &str| {
        for n in sample {
            assert_eq!(store.cas_get(&events[n].hash.unwrap()).unwrap(), payload(n as u32), "event {n} by hash {when}");
        }
    };
    // All in the first segment: their references are still in memory.
    look_up(&store, "in memory");
    // The next append goes to a new segment: the run goes to the keyspace.
    let late = store.append(NewEvent::new(topic("big"), big(2)), Expect::Any).unwrap();
    assert!(store.stats().log_bytes > options.segment_bytes, "the log crossed a segment");
    look_up(&store, "in a run");
    let last = store.append(NewEvent::new(topic("big"), big(3)), Expect::Any).unwrap();
    let tail: Vec<NewEvent> = (20_000..20_100).map(|n| NewEvent::new(topic("small"), payload(n))).collect();
    let tail = store.append_batch(cairn_store::Batch { events: tail, ..cairn_store::Batch::default() }).unwrap();
    // Removed, one of each kind: in a run and in memory, inline and in a file.
    for gone in [&events[10], &tail[5], &early, &last] {
        store.remove(gone.id).unwrap();
    }
    for gone in [&events[10], &tail[5], &early, &last] {
        assert!(!store.cas_has(&gone.hash.unwrap()).unwrap(), "content of a removed event");
        assert!(store.content_topics(&gone.hash.unwrap(), 10).unwrap().is_empty());
    }
    assert_eq!(store.cas_get(&late.hash.unwrap()).unwrap(), big(2));
    // A file two events share, both references in memory: removing one
    // keeps it for the other.
    let twin = store.append(NewEvent::new(topic("big"), big(4)), Expect::Any).unwrap();
    store.append(NewEvent::new(topic("big"), big(4)), Expect::Any).unwrap();
    store.remove(twin.id).unwrap();
    assert_eq!(store.cas_get(&twin.hash.unwrap()).unwrap(), big(4), "the other event still holds the file");
    assert_eq!(store.content_topics(&events[11].hash.unwrap(), 10).unwrap(), vec![topic("small")]);
    assert_eq!(store.content_topics(&tail[6].hash.unwrap(), 10).unwrap(), vec![topic("small")]);
    store.close().unwrap();

    let faults = std::sync::Arc::new(cairn_store::faults::Faults::default());
    let store = Store::open(dir.path(), Options { faults: Some(faults.clone()), ..options.clone() }).unwrap();
    assert!(!store.recovery_report().refs_behind, "current after a clean close");
    assert_eq!(store.cas_get(&events[12_345].hash.unwrap()).unwrap(), payload(12_345));
    assert!(!store.cas_has(&events[10].hash.unwrap()).unwrap());
    // References only in memory when the process dies.
    let more: Vec<NewEvent> = (30_000..36_000).map(|n| NewEvent::new(topic("small"), payload(n))).collect();
    let more = store.append_batch(cairn_store::Batch { events: more, ..cairn_store::Batch::default() }).unwrap();
    store.sync().unwrap();
    faults.crash();
    drop(store);

    let store = Store::open(dir.path(), options).unwrap();
    for (n, event) in more.iter().enumerate().step_by(599) {
        assert_eq!(store.cas_get(&event.hash.unwrap()).unwrap(), payload(30_000 + n as u32), "after the crash");
    }
    assert_eq!(store.cas_get(&events[0].hash.unwrap()).unwrap(), payload(0));
    assert!(!store.cas_has(&tail[5].hash.unwrap()).unwrap());
}

/// Keys of the main index keyspace that start with `prefix`, read with
/// fjall directly (the store closed).
fn main_index_keys(dir: &Path, prefix: u8) -> usize {
    let db = fjall::Database::builder(dir.join("index")).open().unwrap();
    let main = db.keyspace("index", fjall::KeyspaceCreateOptions::default).unwrap();
    main.prefix([prefix]).count()
}

#[test]
fn a_store_from_before_the_references_had_their_keyspace_moves_them() {
    // Earlier versions kept the content references (`c` keys) in the main
    // keyspace and had no `refs` keyspace: made here with fjall itself
    // from a closed store, the references moved back by hand.
    let dir = tempfile::tempdir().unwrap();
    let big = vec![5u8; 100_000];
    let (stored, inline);
    {
        let store = Store::open(dir.path(), crate::test_options()).unwrap();
        stored = store.append(NewEvent::new(topic("old"), big.clone()), Expect::Any).unwrap();
        let filler: Vec<NewEvent> = (0..40_000).map(|n| NewEvent::new(topic("old"), format!("o{n}"))).collect();
        store.append_batch(cairn_store::Batch { events: filler, ..cairn_store::Batch::default() }).unwrap();
        inline = store.append(NewEvent::new(topic("old"), "inline, from before"), Expect::Any).unwrap();
        store.close().unwrap();
    }
    {
        let db = fjall::Database::builder(dir.path().join("index")).open().unwrap();
        let main = db.keyspace("index", fjall::KeyspaceCreateOptions::default).unwrap();
        let refs = db.keyspace("refs", fjall::KeyspaceCreateOptions::default).unwrap();
        let mut moved = 0;
        for guard in refs.prefix([b'c']) {
            let (key, value) = guard.into_inner().unwrap();
            main.insert(key, value).unwrap();
            moved += 1;
        }
        assert_eq!(moved, 40_002, "a reference per event");
        db.delete_keyspace(refs).unwrap();
        main.rotate_memtable_and_wait().unwrap();
        while main.sealed_memtable_count() > 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    assert_eq!(main_index_keys(dir.path(), b'c'), 40_002);
    {
        let store = Store::open(dir.path(), crate::test_options()).unwrap();
        assert!(store.recovery_report().refs_behind, "rebuilt from the log");
        assert_eq!(store.cas_get(&inline.hash.unwrap()).unwrap(), b"inline, from before");
        store.remove(stored.id).unwrap();
        assert!(!store.cas_has(&stored.hash.unwrap()).unwrap(), "the file of a removed event is collected");
        // The old keys go in the background, a slice at a time.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while store.stats().content_refs_catching_up && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        store.close().unwrap();
    }
    assert_eq!(main_index_keys(dir.path(), b'c'), 0, "the old references are gone from the main keyspace");
    let store = Store::open(dir.path(), crate::test_options()).unwrap();
    assert!(!store.recovery_report().refs_behind);
    assert_eq!(store.cas_get(&inline.hash.unwrap()).unwrap(), b"inline, from before");
}

/// Where the records of a segment end: the first offset holding no record
/// (a zero length, or the file's end).
fn log_end(segment: &[u8]) -> usize {
    let mut offset = 16;
    while offset + 8 <= segment.len() {
        let len = u32::from_le_bytes(segment[offset..offset + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        offset += 8 + len;
    }
    offset
}

/// With sync `always` a store writes zeroes ahead of its log's end
/// (`log/ahead.rs`); a crashed store leaves them, the next open cuts them
/// without reporting a torn tail, and the log goes on from its last record.
fn crash_with_zeroes_ahead(dir: &Path) -> (Vec<String>, PathBuf, usize) {
    let faults = std::sync::Arc::new(cairn_store::faults::Faults::default());
    let options = Options {
        sync: cairn_store::SyncMode::Always,
        segment_bytes: 1024 * 1024,
        faults: Some(faults.clone()),
        ..test_options()
    };
    let store = Store::open(dir, options).unwrap();
    let payloads: Vec<String> = (0..300).map(|i| format!("event-{i}-{}", "z".repeat(900))).collect();
    for payload in &payloads {
        store.append(NewEvent::new(topic("torn"), payload.clone()), Expect::Any).unwrap();
    }
    faults.crash();
    drop(store);
    let path = last_segment(dir);
    let bytes = fs::read(&path).unwrap();
    let end = log_end(&bytes);
    assert!(bytes.len() > end + 4096, "zeroes were written ahead: {} bytes, the log ends at {end}", bytes.len());
    assert!(bytes[end..].iter().all(|&b| b == 0));
    (payloads, path, end)
}

#[test]
fn zeroes_ahead_of_a_crashed_log_are_cut_without_a_word() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let (mut payloads, path, end) = crash_with_zeroes_ahead(&dir);
    let options = || Options { sync: cairn_store::SyncMode::Always, segment_bytes: 1024 * 1024, ..test_options() };
    let store = Store::open(&dir, options()).unwrap();
    assert_eq!(store.recovery_report().truncated, None);
    assert_eq!(fs::metadata(&path).unwrap().len(), end as u64, "the zeroes are cut");
    assert_eq!(payloads_in(&store), payloads);
    for i in 0..300 {
        let payload = format!("after-{i}-{}", "y".repeat(900));
        store.append(NewEvent::new(topic("torn"), payload.clone()), Expect::Any).unwrap();
        payloads.push(payload);
    }
    drop(store);
    // A clean close cuts them too: every segment ends with its last record.
    for entry in fs::read_dir(dir.join("log")).unwrap() {
        let bytes = fs::read(entry.unwrap().path()).unwrap();
        assert_eq!(log_end(&bytes), bytes.len());
    }
    let store = Store::open(&dir, options()).unwrap();
    assert_eq!(payloads_in(&store), payloads);
    assert!(store.verify().unwrap().ok());
}

/// A torn group in the zeroes (bytes of a record, then zeroes) is still a
/// torn tail: cut and reported.
#[test]
fn a_torn_write_into_the_zeroes_ahead_is_cut_and_reported() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let (payloads, path, end) = crash_with_zeroes_ahead(&dir);
    let mut bytes = fs::read(&path).unwrap();
    // A frame header promising 2,000 bytes, and a few of them.
    bytes[end..end + 4].copy_from_slice(&2000u32.to_le_bytes());
    bytes[end + 8..end + 108].fill(0x42);
    fs::write(&path, bytes).unwrap();
    let store = Store::open(&dir, Options { sync: cairn_store::SyncMode::Always, ..test_options() }).unwrap();
    let cut = store.recovery_report().truncated.clone().expect("a torn write is reported");
    assert_eq!(cut.offset, end as u64);
    assert_eq!(fs::metadata(&path).unwrap().len(), end as u64);
    assert_eq!(payloads_in(&store), payloads);
}

/// Nothing but zeroes after the last record of a segment that is not the
/// newest is not taken for space written ahead (the writer cuts it before
/// the next segment exists): opening refuses.
#[test]
fn zeroes_after_the_end_of_a_sealed_segment_are_damage() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let store = Store::open(&dir, test_options()).unwrap();
    let filler = "f".repeat(1000);
    while fs::read_dir(dir.join("log")).unwrap().count() < 2 {
        store.append(NewEvent::new(topic("torn"), filler.clone()), Expect::Any).unwrap();
    }
    drop(store);
    fs::remove_dir_all(dir.join("index")).unwrap();
    let mut segments: Vec<PathBuf> = fs::read_dir(dir.join("log")).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    let file = fs::OpenOptions::new().write(true).open(&segments[0]).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len + 4096).unwrap();
    let error = Store::open(&dir, test_options()).err().expect("zeroes in a sealed segment are not cut");
    assert_eq!(error.code(), "corrupt", "{error}");
}

/// More zeroes than the helper ever writes ahead (3 MiB) are not taken for
/// its space: they are reported as a torn tail, and refused as rot when
/// they go further than a torn write could (40 MiB past the zeroes).
#[test]
fn more_zeroes_than_are_written_ahead_are_reported_or_refused() {
    for (extra, refused) in [(8u64 << 20, false), (64 << 20, true)] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        let (payloads, path, end) = crash_with_zeroes_ahead(&dir);
        let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(end as u64 + extra).unwrap();
        drop(file);
        let options = Options { sync: cairn_store::SyncMode::Always, ..test_options() };
        match Store::open(&dir, options) {
            Ok(store) => {
                assert!(!refused, "{extra} bytes of zeroes must be refused");
                let cut = store.recovery_report().truncated.clone().expect("long zeroes are reported");
                assert_eq!(cut.offset, end as u64);
                assert_eq!(payloads_in(&store), payloads);
            }
            Err(error) => {
                assert!(refused, "{extra} bytes of zeroes must open: {error}");
                assert_eq!(error.code(), "corrupt", "{error}");
            }
        }
    }
}
