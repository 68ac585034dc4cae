//! Deterministic, seeded simulation of crashes and power loss (in the
//! spirit of TigerBeetle's): random workloads of appends, atomic batches,
//! expectations, removals and consumer acks, many in flight at once; at a
//! random moments the disk fills up for a while or an fdatasync fails; at a
//! random moment the process "crashes" (the fault layer stops every write),
//! power is lost (each log file is cut back to what was fdatasynced, plus a
//! random part of the rest: a torn write), sometimes the index is lost too,
//! and the store is reopened. After each crash:
//! - every acknowledged event is there, exactly (id, topic, seq, payload),
//!   unless a removal took it (an acknowledged one must have; one that
//!   failed, after a failed fdatasync say, may have: its record may have
//!   reached the disk anyway, as a failed append's may);
//! - every batch is all there or not at all (nothing half-visible);
//! - seqs are gapless and ids ordered (`verify`);
//! - consumers are at least where their last acknowledged ack put them.
//!
//! `CAIRN_SIM_SEEDS=N` runs N seeds (default 12); `CAIRN_SIM_SEED=S` replays
//! one (`CAIRN_SIM_TRACE=1` prints its faults, acks and removals). A
//! failure names its seed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use cairn_store::faults::Faults;
use cairn_store::{Batch, EventId, Expect, NewEvent, Options, Pattern, Query, Store, SyncMode, Ttl};

use crate::topic;

/// splitmix64: small, deterministic, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

const TOPICS: [&str; 3] = ["sim.a", "sim.b", "sim.c"];
const CONSUMER: &str = "sim-consumer";

/// What the clients were told, across crashes.
#[derive(Default)]
struct Model {
    /// Acknowledged events: id → (topic, seq, payload).
    acked: BTreeMap<EventId, (String, u64, Vec<u8>)>,
    /// Acknowledged removals.
    removed: HashSet<EventId>,
    /// Removals that failed (a failed fdatasync, say): their record may
    /// still have reached the disk, so they may or may not have happened.
    maybe_removed: HashSet<EventId>,
    /// Size of every batch ever attempted, by batch number.
    batch_sizes: HashMap<u64, usize>,
    /// The newest acknowledged consumer position.
    consumer: Option<EventId>,
    next_batch: u64,
}

/// The payload of event `index` of batch `batch` of `size` events: says
/// where it belongs, padded (sometimes past the inline limit, so content
/// files are exercised too).
fn payload(rng: &mut Rng, batch: u64, index: usize, size: usize) -> Vec<u8> {
    let mut bytes = format!("b{batch}:{index}/{size}:").into_bytes();
    let pad = if rng.chance(10) { 5000 } else { rng.below(200) as usize };
    bytes.extend(std::iter::repeat_n(b'x', pad));
    bytes
}

fn parse_payload(bytes: &[u8]) -> (u64, usize) {
    let text = String::from_utf8_lossy(bytes);
    let (batch, rest) = text.trim_start_matches('b').split_once(':').expect("batch number");
    let (_, rest) = rest.split_once('/').expect("index");
    let (size, _) = rest.split_once(':').expect("size");
    (batch.parse().expect("batch"), size.parse().expect("size"))
}

fn options(faults: Option<Arc<Faults>>) -> Options {
    Options { sync: SyncMode::Always, segment_bytes: 4 * 1024, faults, ..Options::default() }
}

fn run_seed(seed: u64) {
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut model = Model::default();
    for _round in 0..3 {
        let faults = Arc::new(Faults::default());
        let store = Store::open(dir.path(), options(Some(faults.clone()))).unwrap();
        let steps = 20 + rng.below(120);
        let crash_at = rng.below(steps);
        let mut in_flight = Vec::new();
        for step in 0..steps {
            if step == crash_at {
                faults.crash();
            }
            // Faults short of a crash: a full disk for a while, or a failed
            // fdatasync (which stops all writing until the next round).
            let trace = std::env::var("CAIRN_SIM_TRACE").is_ok();
            match rng.below(40) {
                0 => {
                    if trace {
                        eprintln!("round {_round} step {step}: disk full");
                    }
                    faults.set_no_space(true)
                }
                1 => {
                    if trace {
                        eprintln!("round {_round} step {step}: disk has space");
                    }
                    faults.set_no_space(false)
                }
                2 if rng.chance(4) => {
                    if trace {
                        eprintln!("round {_round} step {step}: next fdatasync fails");
                    }
                    faults.fail_next_syncs(1)
                }
                _ => {}
            }
            if trace && step == crash_at {
                eprintln!("round {_round} step {step}: crash");
            }
            match rng.below(10) {
                0..=5 => {
                    // One event or an atomic batch over one or two topics.
                    let size = if rng.chance(3) { 2 + rng.below(4) as usize } else { 1 };
                    let batch_no = model.next_batch;
                    model.next_batch += 1;
                    model.batch_sizes.insert(batch_no, size);
                    let mut batch = Batch::default();
                    for index in 0..size {
                        let name = TOPICS[rng.below(TOPICS.len() as u64) as usize];
                        let mut event = NewEvent::new(topic(name), payload(&mut rng, batch_no, index, size));
                        if rng.chance(20) {
                            event.ttl = Ttl::Last { n: 1_000_000 };
                        }
                        batch.events.push(event);
                    }
                    if rng.chance(4) {
                        // An expectation from what the model knows: may fail.
                        let first = batch.events[0].topic.clone().expect("topic");
                        let last =
                            model.acked.values().filter(|(t, _, _)| t == first.as_str()).map(|(_, seq, _)| *seq).max();
                        batch.expect.insert(first, last.map_or(Expect::Empty, Expect::Seq));
                    }
                    // Refused up front (after the crash): not acknowledged.
                    if let Ok(pending) = store.append_start(batch) {
                        in_flight.push(pending);
                    }
                }
                6 => {
                    settle(&runtime, &store, &mut in_flight, &mut model);
                    let live: Vec<EventId> =
                        model.acked.keys().filter(|id| !model.removed.contains(id)).copied().collect();
                    if !live.is_empty() {
                        let id = live[rng.below(live.len() as u64) as usize];
                        let removed = store.remove(id);
                        if std::env::var("CAIRN_SIM_TRACE").is_ok() {
                            eprintln!("  remove {id}: {removed:?}");
                        }
                        if removed.is_ok() {
                            model.removed.insert(id);
                        } else {
                            model.maybe_removed.insert(id);
                        }
                    }
                }
                7 => {
                    settle(&runtime, &store, &mut in_flight, &mut model);
                    if let Some(&newest) = model.acked.keys().next_back()
                        && store.ack(CONSUMER, newest).is_ok()
                    {
                        model.consumer = Some(newest);
                    }
                }
                8 if rng.chance(3) => {
                    // Compaction of every sealed segment holding removed
                    // events (it may fail under the faults; it loses nothing).
                    settle(&runtime, &store, &mut in_flight, &mut model);
                    let report = store.compact(0.0);
                    if trace {
                        eprintln!("  compact: {report:?}");
                    }
                }
                _ => settle(&runtime, &store, &mut in_flight, &mut model),
            }
        }
        faults.crash();
        settle(&runtime, &store, &mut in_flight, &mut model);
        drop(store);
        // Power loss: keep none, all, or part of what was not synced.
        let keep = rng.below(3);
        let fraction = rng.below(100);
        faults
            .lose_power(|unsynced| match keep {
                0 => 0,
                1 => unsynced,
                _ => unsynced * fraction / 100,
            })
            .unwrap();
        let lose_index = rng.chance(3);
        if std::env::var("CAIRN_SIM_TRACE").is_ok() {
            eprintln!("round {_round}: power lost (keep {keep}, {fraction}%), index lost: {lose_index}");
        }
        if lose_index {
            std::fs::remove_dir_all(dir.path().join("index")).unwrap();
        }
        check(&Store::open(dir.path(), options(None)).unwrap(), &model);
    }
}

/// Waits for every in-flight append and records the acknowledged ones.
fn settle(
    runtime: &tokio::runtime::Runtime,
    store: &Store,
    in_flight: &mut Vec<cairn_store::Pending<Vec<cairn_store::Event>>>,
    model: &mut Model,
) {
    for pending in in_flight.drain(..) {
        let result = runtime.block_on(pending);
        if std::env::var("CAIRN_SIM_TRACE").is_ok() {
            match &result {
                Ok(events) => eprintln!(
                    "  acked {:?}",
                    events.iter().map(|e| (e.id.to_string(), e.topic.as_str().to_owned(), e.seq)).collect::<Vec<_>>()
                ),
                Err(error) => eprintln!("  failed: {error}"),
            }
        }
        if let Ok(events) = result {
            for event in events {
                let payload = store.content(&event).unwrap().unwrap_or_default();
                model.acked.insert(event.id, (event.topic.as_str().to_owned(), event.seq, payload));
            }
        }
    }
}

fn check(store: &Store, model: &Model) {
    let report = store.verify().unwrap();
    assert!(report.ok(), "verify after recovery: {:?}", report.problems);
    // Every acknowledged event, exactly, unless its removal was acknowledged.
    for (id, (topic_name, seq, payload)) in &model.acked {
        let event = store.get(*id).unwrap();
        if model.removed.contains(id) {
            assert!(event.is_none(), "acknowledged removal of {id} undone");
            continue;
        }
        if event.is_none() && model.maybe_removed.contains(id) {
            continue;
        }
        let event = event.unwrap_or_else(|| panic!("acknowledged event {id} lost"));
        assert_eq!((event.topic.as_str(), event.seq), (topic_name.as_str(), *seq), "event {id} changed");
        let content = store.content(&event).unwrap().unwrap_or_default();
        assert_eq!(&content, payload, "payload of {id} changed");
        let (batch, _) = parse_payload(&content);
        assert!(model.batch_sizes.contains_key(&batch));
    }
    // Batches: all or nothing (removals aside).
    let mut present: HashMap<u64, usize> = HashMap::new();
    let mut removed_per_batch: HashMap<u64, usize> = HashMap::new();
    for id in model.removed.union(&model.maybe_removed) {
        if store.get(*id).unwrap().is_some() {
            continue;
        }
        if let Some((_, _, payload)) = model.acked.get(id) {
            *removed_per_batch.entry(parse_payload(payload).0).or_default() += 1;
        }
    }
    for event in store.read(&Query::new(Pattern::parse("sim.>").unwrap())).unwrap() {
        let event = event.unwrap();
        let content = store.content(&event).unwrap().unwrap_or_default();
        let (batch, size) = parse_payload(&content);
        assert_eq!(model.batch_sizes.get(&batch), Some(&size), "an event of an unknown batch");
        *present.entry(batch).or_default() += 1;
    }
    for (batch, n) in present {
        let size = model.batch_sizes[&batch];
        let removed = removed_per_batch.get(&batch).copied().unwrap_or(0);
        assert!(n + removed == size, "batch {batch} is half there: {n} of {size} ({removed} removed)");
    }
    // Consumers never go back past an acknowledged ack.
    if let Some(acked) = model.consumer {
        let position = store.consumer(CONSUMER).unwrap();
        assert!(position >= Some(acked), "consumer went back from {acked} to {position:?}");
    }
}

#[test]
fn simulated_crashes_and_power_loss_keep_every_acknowledged_event() {
    let seeds: Vec<u64> = match std::env::var("CAIRN_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("CAIRN_SIM_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("CAIRN_SIM_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(12);
            let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            (0..n).map(|k| base.wrapping_mul(1_000_003).wrapping_add(k)).collect()
        }
    };
    for seed in seeds {
        let result = std::panic::catch_unwind(|| run_seed(seed));
        if let Err(panic) = result {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("simulation failed with seed {seed} (replay: CAIRN_SIM_SEED={seed}): {message}");
        }
    }
}

#[test]
fn a_failed_fdatasync_is_never_acknowledged_and_stops_writes_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let store = Store::open(dir.path(), options(Some(faults.clone()))).unwrap();
    let kept = store.append(NewEvent::new(topic("t"), "kept"), Expect::Any).unwrap();
    faults.fail_next_syncs(1);
    let error = store.append(NewEvent::new(topic("t"), "lost"), Expect::Any).unwrap_err();
    assert_eq!(error.code(), "poisoned", "{error}");
    // No retry that pretends: every later write is refused, reads still work.
    let again = store.append(NewEvent::new(topic("t"), "later"), Expect::Any).unwrap_err();
    assert_eq!(again.code(), "poisoned");
    assert!(again.to_string().contains("fdatasync"), "{again}");
    assert_eq!(store.get(kept.id).unwrap().map(|e| e.seq), Some(0));
    drop(store);
    let store = Store::open(dir.path(), options(None)).unwrap();
    assert!(store.get(kept.id).unwrap().is_some());
    let next = store.append(NewEvent::new(topic("t"), "after reopen"), Expect::Any).unwrap();
    assert!(next.seq >= 1);
    assert!(store.verify().unwrap().ok());
}

#[test]
fn a_full_disk_refuses_writes_clearly_keeps_reads_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let store = Store::open(dir.path(), options(Some(faults.clone()))).unwrap();
    let first = store.append(NewEvent::new(topic("t"), "one"), Expect::Any).unwrap();
    faults.set_no_space(true);
    let error = store.append(NewEvent::new(topic("t"), "two"), Expect::Any).unwrap_err();
    assert_eq!(error.code(), "io", "{error}");
    assert!(error.to_string().to_lowercase().contains("space"), "{error}");
    assert_eq!(store.read(&Query::new(Pattern::parse("t").unwrap())).unwrap().count(), 1);
    // Appends that share the failed group's write each get the same error,
    // its I/O kind kept (not turned into an "other" error).
    let appenders: Vec<_> = (0..8)
        .map(|n| {
            let store = store.clone();
            std::thread::spawn(move || store.append(NewEvent::new(topic("t"), format!("late {n}")), Expect::Any))
        })
        .collect();
    for appender in appenders {
        let error = appender.join().unwrap().unwrap_err();
        assert_eq!(error.io_kind(), Some(std::io::ErrorKind::StorageFull), "{error}");
    }
    // A batch over several topics, one of them new: none of its seqs is
    // taken either.
    let batch = Batch {
        events: ["t", "fresh", "t", "fresh"].iter().map(|name| NewEvent::new(topic(name), "refused")).collect(),
        ..Batch::default()
    };
    assert_eq!(store.append_batch(batch).unwrap_err().code(), "io");
    faults.set_no_space(false);
    let second = store.append(NewEvent::new(topic("t"), "three"), Expect::Any).unwrap();
    assert_eq!(second.seq, first.seq + 1, "a refused write leaves no gap");
    let fresh = store.append(NewEvent::new(topic("fresh"), "first"), Expect::Any).unwrap();
    assert_eq!(fresh.seq, 0, "a refused write leaves no gap in a new topic");
    drop(store);
    let store = Store::open(dir.path(), options(None)).unwrap();
    assert_eq!(store.read(&Query::new(Pattern::parse("t").unwrap())).unwrap().count(), 2);
    assert_eq!(store.read(&Query::new(Pattern::parse("fresh").unwrap())).unwrap().count(), 1);
    assert!(store.verify().unwrap().ok());
}

#[test]
fn a_torn_write_is_cut_on_recovery_and_nothing_of_it_is_visible() {
    let dir = tempfile::tempdir().unwrap();
    for tear_at in [0, 1, 7, 8, 40, 120] {
        let faults = Arc::new(Faults::default());
        let store = Store::open(dir.path(), options(Some(faults.clone()))).unwrap();
        let before = store.read(&Query::new(Pattern::all())).unwrap().count();
        let kept = store.append(NewEvent::new(topic("t"), "kept"), Expect::Any).unwrap();
        faults.tear_next_write_at(tear_at);
        let batch = Batch {
            events: (0..3).map(|n| NewEvent::new(topic("t"), format!("torn {n}"))).collect(),
            ..Batch::default()
        };
        assert!(store.append_batch(batch).is_err());
        drop(store);
        faults.lose_power(|unsynced| unsynced).unwrap();
        let store = Store::open(dir.path(), options(None)).unwrap();
        assert!(store.get(kept.id).unwrap().is_some());
        assert_eq!(store.read(&Query::new(Pattern::all())).unwrap().count(), before + 1, "tear at {tear_at}");
        assert!(store.verify().unwrap().ok());
    }
}

/// A batch of 8,192 events or more is written while it is encoded, its
/// record's header last: whatever fails on the way (a write torn in the
/// middle of the record then a power loss, a full disk, a failed
/// fdatasync), the batch is all there after a reopen or not at all, and
/// what was acknowledged before it is kept.
#[test]
fn a_large_batch_written_while_it_is_encoded_is_all_or_nothing() {
    let big = || Batch {
        events: (0..10_000)
            .map(|n| NewEvent::new(topic("big"), format!("event {n} {}", "x".repeat(n % 200))))
            .collect(),
        ..Batch::default()
    };
    let count = |store: &Store| store.read(&Query::new(Pattern::all())).unwrap().count();
    for fault in ["tear at 0", "tear at 5", "tear at 100000", "no space", "failed fdatasync"] {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let store = Store::open(dir.path(), options(Some(faults.clone()))).unwrap();
        let kept = store.append(NewEvent::new(topic("t"), "kept"), Expect::Any).unwrap();
        match fault {
            "no space" => faults.set_no_space(true),
            "failed fdatasync" => faults.fail_next_syncs(1),
            tear => faults.tear_next_write_at(tear.trim_start_matches("tear at ").parse().unwrap()),
        }
        assert!(store.append_batch(big()).is_err(), "{fault}");
        if fault == "no space" {
            // Not a crash: the store cut what it wrote and goes on.
            faults.set_no_space(false);
            assert_eq!(count(&store), 1, "{fault}");
            assert_eq!(store.append_batch(big()).unwrap().len(), 10_000);
        }
        drop(store);
        if fault.starts_with("tear") {
            // Everything written survives the power loss: the torn record's
            // pieces without its header.
            faults.lose_power(|unsynced| unsynced).unwrap();
        }
        let store = Store::open(dir.path(), options(None)).unwrap();
        assert!(store.get(kept.id).unwrap().is_some(), "{fault}");
        let n = count(&store);
        match fault {
            "no space" => assert_eq!(n, 10_001, "{fault}"),
            // Written but not acknowledged: it may be there, whole.
            "failed fdatasync" => assert!(n == 1 || n == 10_001, "{fault}: {n} events"),
            _ => assert_eq!(n, 1, "{fault}"),
        }
        let report = store.verify().unwrap();
        assert!(report.ok(), "{fault}: {:?}", report.problems);
        // And the store takes a large batch again, whole after a reopen.
        assert_eq!(store.append_batch(big()).unwrap().len(), 10_000);
        drop(store);
        let store = Store::open(dir.path(), options(None)).unwrap();
        assert_eq!(count(&store), n + 10_000, "{fault}");
    }
}

/// A batch is measured exactly before anything is written: one whose
/// record would pass the limit only by an estimate (long topics and types,
/// tiny payloads) is refused whole, and the store opens again as it was.
#[test]
fn a_batch_over_the_record_limit_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options(None)).unwrap();
    let kept = store.append(NewEvent::new(topic("t"), "kept"), Expect::Any).unwrap();
    let long = format!("long.{}", "t".repeat(190));
    let batch = Batch {
        events: (0..80_000).map(|n| NewEvent::new(topic(&long), format!("{n}")).with_type("k".repeat(200))).collect(),
        ..Batch::default()
    };
    let error = store.append_batch(batch).unwrap_err();
    assert_eq!(error.code(), "too_large", "{error}");
    assert!(store.head(&topic(&long)).unwrap().is_none());
    drop(store);
    let store = Store::open(dir.path(), options(None)).unwrap();
    assert!(store.get(kept.id).unwrap().is_some());
    assert_eq!(store.read(&Query::new(Pattern::all())).unwrap().count(), 1);
    assert!(store.verify().unwrap().ok());
}

/// An idempotent repeat answered from its own group is acknowledged only
/// if the group is: when the group's write fails, the repeat fails too.
#[test]
fn a_repeat_in_a_failed_group_is_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let store = Store::open(dir.path(), options(Some(faults.clone()))).unwrap();
    let keyed = || Batch {
        events: vec![NewEvent::new(topic("k"), "once")],
        idempotency_key: Some("the key".to_owned()),
        ..Batch::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    faults.set_no_space(true);
    for _ in 0..5 {
        // A large batch first keeps the writer busy while the two keyed
        // appends queue behind it, so they share a group.
        let big = Batch {
            events: (0..20_000).map(|n| NewEvent::new(topic("big"), format!("{n}"))).collect(),
            ..Batch::default()
        };
        let pending = [
            store.append_start(big).unwrap(),
            store.append_start(keyed()).unwrap(),
            store.append_start(keyed()).unwrap(),
        ];
        for (n, pending) in pending.into_iter().enumerate() {
            let result = runtime.block_on(pending);
            assert!(result.is_err(), "append {n} of a group that could not be written was acknowledged");
        }
    }
    faults.set_no_space(false);
    let first = store.append_batch(keyed()).unwrap();
    assert_eq!(store.append_batch(keyed()).unwrap()[0].id, first[0].id);
    assert_eq!(store.read(&Query::new(Pattern::all())).unwrap().count(), 1);
}

/// Flips one bit of `path` in the middle of the first occurrence of `needle`.
fn flip(path: &std::path::Path, needle: &[u8]) {
    let bytes = std::fs::read(path).unwrap();
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("needle in file");
    Faults::flip_bit(path, (at + needle.len() / 2) as u64, 5).unwrap();
}

#[test]
fn bit_rot_at_rest_is_an_error_on_read_and_named_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options(None)).unwrap();
    let rotten = store.append(NewEvent::new(topic("t"), "NEEDLE-IN-A-SEALED-SEGMENT"), Expect::Any).unwrap();
    let big = vec![b'c'; 6000];
    let stored = store.append(NewEvent::new(topic("t"), big.clone()), Expect::Any).unwrap();
    // Enough to seal the first segment (16 KiB), and for the close to
    // flush the index (1 MiB of log), so the rot is in what it covers.
    for chunk in 0..12 {
        let events =
            (0..1000).map(|n| NewEvent::new(topic("t"), format!("filler {chunk} {n} {}", "f".repeat(100)))).collect();
        store.append_batch(cairn_store::Batch { events, ..cairn_store::Batch::default() }).unwrap();
    }
    drop(store);
    flip(&dir.path().join("log").join("0000000000.seg"), b"NEEDLE-IN-A-SEALED-SEGMENT");
    let mut cas_files = Vec::new();
    for entry in walk(&dir.path().join("cas")) {
        if std::fs::read(&entry).unwrap() == big {
            cas_files.push(entry);
        }
    }
    assert_eq!(cas_files.len(), 1, "the content file of the big payload");
    flip(&cas_files[0], b"cccccccc");
    let store = Store::open(dir.path(), options(None)).unwrap();
    // Reads fail with an error naming the place, never return wrong bytes.
    let error = store.get(rotten.id).and_then(|e| store.content(&e.expect("indexed"))).unwrap_err();
    assert_eq!(error.code(), "corrupt", "{error}");
    let event = store.get(stored.id).unwrap().unwrap();
    let error = store.content(&event).unwrap_err();
    assert_eq!(error.code(), "corrupt", "{error}");
    // verify names both places.
    let report = store.verify().unwrap();
    assert!(!report.ok());
    let problems = report.problems.join("\n");
    assert!(problems.contains("segment 0000000000"), "{problems}");
    assert!(problems.contains(&cairn_store::Hash::of(&big).sri()) || problems.contains("content"), "{problems}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
