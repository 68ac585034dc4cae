//! The benchmark scenarios. Payloads are 100 bytes.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use cairn_store::{
    Batch, Delivery, Expect, NewEvent, Options, Pattern, Query, Store, SubscribeOptions, SyncMode, Topic, Ttl,
};

use crate::measure::{Samples, format_duration, format_rate, row};

const PAYLOAD: [u8; 100] = [b'x'; 100];
/// Bytes the raw baseline writes per event: payload plus a record header of
/// about cairn's size, so both write comparable bytes.
const RAW_EVENT_BYTES: usize = 100 + 70;

pub struct Bench {
    root: tempfile::TempDir,
}

impl Bench {
    pub fn new(dir: &Path) -> Result<Bench> {
        Ok(Bench { root: tempfile::Builder::new().prefix("cairn-bench-").tempdir_in(dir)? })
    }

    /// A fresh, empty directory path under the bench root.
    pub fn fresh_dir(&self, name: &str) -> PathBuf {
        self.fresh(name)
    }

    fn fresh(&self, name: &str) -> PathBuf {
        let path = self.root.path().join(name);
        let _ = std::fs::remove_dir_all(&path);
        path
    }

    /// The disk's rate of single-event durable writes (write + fdatasync).
    pub fn fsync_rate(&self) -> Result<f64> {
        Ok(self.raw(1, 3000)?.0)
    }

    /// Raw baseline: append `batch` events' worth of bytes, fdatasync; repeat.
    fn raw(&self, batch: usize, n_events: usize) -> Result<(f64, Samples)> {
        self.raw_in(batch, n_events, RawFile::Append)
    }

    /// The raw baseline on a file made as `kind` says.
    fn raw_in(&self, batch: usize, n_events: usize, kind: RawFile) -> Result<(f64, Samples)> {
        let path = self.fresh(&format!("raw-{batch}"));
        std::fs::create_dir_all(&path)?;
        let path = path.join("log");
        let ahead = (n_events * RAW_EVENT_BYTES + (1 << 20)) as u64;
        match kind {
            RawFile::Append => {}
            RawFile::Zeroed => {
                let file = OpenOptions::new().create_new(true).write(true).open(&path)?;
                let zeroes = vec![0u8; 1 << 20];
                let mut written = 0;
                while written < ahead {
                    file.write_all_at(&zeroes, written)?;
                    written += zeroes.len() as u64;
                }
                file.sync_all()?;
            }
            RawFile::Allocated => {
                let file = OpenOptions::new().create_new(true).write(true).open(&path)?;
                let len = i64::try_from(ahead)?;
                // SAFETY: a plain system call on a descriptor this function
                // owns; it touches no memory of this process.
                #[allow(unsafe_code)]
                let done = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, 0, len) };
                anyhow::ensure!(done == 0, "fallocate: {}", std::io::Error::last_os_error());
                file.sync_all()?;
            }
        }
        // Written from its start, over what was made above.
        let mut file = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        let buf = vec![b'r'; batch * RAW_EVENT_BYTES];
        let mut samples = Samples::default();
        let started = Instant::now();
        for _ in 0..n_events / batch {
            let t = Instant::now();
            file.write_all(&buf)?;
            file.sync_data()?;
            samples.push(t.elapsed());
        }
        Ok(((n_events / batch * batch) as f64 / started.elapsed().as_secs_f64(), samples))
    }

    fn store(&self, name: &str, sync: SyncMode) -> Result<Store> {
        Ok(Store::open(self.fresh(name), Options { sync, ..Options::default() })?)
    }

    /// Durable appends next to the raw baseline. The disk's fdatasync time
    /// drifts during a run, so each cairn figure alternates with its baseline
    /// in rounds, and both are summed over the rounds.
    pub fn append(&self) -> Result<()> {
        let topic = Topic::new("bench")?;
        const ROUNDS: usize = 3;

        // Single durable appends from 1 task (blocking API).
        let store = self.store("single", SyncMode::Always)?;
        let (mut raw, mut cairn) = (Rounds::default(), Rounds::default());
        for _ in 0..ROUNDS {
            raw.add(self.raw(1, 700)?);
            let mut samples = Samples::default();
            let started = Instant::now();
            for _ in 0..700 {
                let t = Instant::now();
                store.append(NewEvent::new(topic.clone(), PAYLOAD), Expect::Any)?;
                samples.push(t.elapsed());
            }
            cairn.add((700.0 / started.elapsed().as_secs_f64(), samples));
        }
        drop(store);
        let raw1 = raw.report("raw: write + fdatasync, 1 event", None);
        cairn.report("cairn: durable append, 1 task", Some(raw1));

        for (tasks, per_task, raw_batch) in [(8, 250, 1), (64, 100, 64)] {
            self.task_rounds(tasks, per_task, raw_batch, ROUNDS, &[RawFile::Append])?;
        }

        for (size, n_batches) in [(64usize, 300usize), (1024, 130)] {
            self.batch_rounds(size, n_batches, ROUNDS, &[RawFile::Append], false)?;
        }

        let store = self.store("bulk", SyncMode::Always)?;
        let batch = Batch { events: vec![NewEvent::new(topic.clone(), PAYLOAD); 100_000], ..Batch::default() };
        let (raw_rate, _) = self.raw(100_000, 100_000)?;
        let started = Instant::now();
        store.append_batch(batch)?;
        let took = started.elapsed();
        let raw_took = Duration::from_secs_f64(100_000.0 / raw_rate);
        row("raw: 100,000 events' bytes, one write + fdatasync", &format_duration(raw_took), None, None, None);
        row(
            "cairn: 100,000 events durably in one batch",
            &format_duration(took),
            None,
            Some(raw_rate),
            Some(100_000.0 / took.as_secs_f64()),
        );
        Ok(())
    }

    /// `n_batches` durable batches of `size` events from one caller,
    /// alternating with the raw baseline, `rounds` times. With `distinct`,
    /// each payload starts with the event's number, so that content hashes
    /// (and the content references' keys) are in random order, as real
    /// content's are; otherwise every event carries the same bytes.
    fn batch_rounds(
        &self,
        size: usize,
        n_batches: usize,
        rounds: usize,
        files: &[RawFile],
        distinct: bool,
    ) -> Result<()> {
        let topic = Topic::new("bench")?;
        let store = self.store(&format!("batch-{size}"), SyncMode::Always)?;
        let mut raw: Vec<Rounds> = files.iter().map(|_| Rounds::default()).collect();
        let mut cairn = Rounds::default();
        let mut numbered = 0u64;
        for _ in 0..rounds {
            for (file, raw) in files.iter().zip(&mut raw) {
                raw.add(self.raw_in(size, size * n_batches, *file)?);
            }
            let mut samples = Samples::default();
            let started = Instant::now();
            for _ in 0..n_batches {
                let events = if distinct {
                    (0..size)
                        .map(|_| {
                            numbered += 1;
                            let mut payload = PAYLOAD;
                            payload[..8].copy_from_slice(&numbered.to_be_bytes());
                            NewEvent::new(topic.clone(), payload)
                        })
                        .collect()
                } else {
                    vec![NewEvent::new(topic.clone(), PAYLOAD); size]
                };
                let batch = Batch { events, ..Batch::default() };
                let t = Instant::now();
                store.append_batch(batch)?;
                samples.push(t.elapsed());
            }
            cairn.add(((size * n_batches) as f64 / started.elapsed().as_secs_f64(), samples));
        }
        let name = if distinct {
            format!("cairn: durable batch of {size} (distinct payloads)")
        } else {
            format!("cairn: durable batch of {size}")
        };
        report_against(&format!("batch of {size}"), &name, files, raw, cairn);
        Ok(())
    }

    /// `tasks` tasks appending `per_task` single events each, alternating
    /// with the raw baseline of batches of `raw_batch`, `rounds` times.
    fn task_rounds(
        &self,
        tasks: usize,
        per_task: usize,
        raw_batch: usize,
        rounds: usize,
        files: &[RawFile],
    ) -> Result<()> {
        let store = self.store(&format!("tasks-{tasks}"), SyncMode::Always)?;
        let mut raw: Vec<Rounds> = files.iter().map(|_| Rounds::default()).collect();
        let mut cairn = Rounds::default();
        for _ in 0..rounds {
            for (file, raw) in files.iter().zip(&mut raw) {
                raw.add(self.raw_in(raw_batch, raw_batch * 300, *file)?);
            }
            cairn.add(concurrent(&store, tasks, per_task)?);
        }
        let what = format!("batch of {raw_batch} (for {tasks} tasks)");
        report_against(&what, &format!("cairn: durable append, {tasks} tasks"), files, raw, cairn);
        Ok(())
    }

    /// Only single appends from `tasks` tasks (about 6,400 events a round),
    /// next to raw batches of as many events.
    pub fn tasks(&self, tasks: usize, rounds: usize) -> Result<()> {
        anyhow::ensure!(tasks > 0 && rounds > 0, "--tasks and --rounds must be at least 1");
        self.task_rounds(tasks, (6_400 / tasks).max(1), tasks, rounds, &RAW_FILES)
    }

    /// Only durable batches of `size` events (about 130,000 events a round);
    /// `distinct`: each event's payload differs.
    pub fn batches(&self, size: usize, rounds: usize, distinct: bool) -> Result<()> {
        anyhow::ensure!(size > 0 && rounds > 0, "--size and --rounds must be at least 1");
        self.batch_rounds(size, (133_120 / size).max(1), rounds, &RAW_FILES, distinct)
    }

    /// Appends to a `last:10` topic of one stored content, each indexed
    /// before the next, next to the same appends kept for ever, alternating
    /// `rounds` times at each of `sizes`: the indexer's CPU per event.
    pub fn trims(&self, sizes: &[usize], rounds: usize) -> Result<()> {
        anyhow::ensure!(rounds > 0 && sizes.iter().all(|&n| n > 0), "--events and --rounds must be at least 1");
        let payload = vec![b'y'; 8 * 1024];
        let topic = Topic::new("shared")?;
        for &n in sizes {
            let mut per_event: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
            for _ in 0..rounds {
                for (way, ttl) in [Ttl::Last { n: 10 }, Ttl::Forever].into_iter().enumerate() {
                    let store =
                        Store::open(self.fresh("trims"), Options { sync: SyncMode::None, ..Options::default() })?;
                    // The newest event: a read of the topic's start would walk
                    // every trimmed event on the bench's side.
                    let query = Query { last: Some(1), ..Query::new(Pattern::Exact(topic.clone())) };
                    for _ in 0..n {
                        store.append(NewEvent::new(topic.clone(), payload.clone()).with_ttl(ttl), Expect::Any)?;
                        // A read by topic waits for the index: one index
                        // transaction (and trim) per event.
                        store.read(&query)?.next().transpose()?;
                    }
                    per_event[way].push(indexer_cpu()?.as_secs_f64() / n as f64);
                }
            }
            for (way, name) in ["last:10", "kept for ever"].iter().enumerate() {
                let each: Vec<String> =
                    per_event[way].iter().map(|s| format_duration(Duration::from_secs_f64(*s))).collect();
                row(
                    &format!("cairn: indexer CPU per event, {n} events of one stored content, {name} (each round)"),
                    &each.join(", "),
                    None,
                    None,
                    None,
                );
            }
        }
        Ok(())
    }

    /// Appends of 2 KiB, each followed by an fdatasync, from 1 and from 2
    /// threads with their own open files, alternating, `rounds` times.
    pub fn syncs(&self, rounds: usize) -> Result<()> {
        anyhow::ensure!(rounds > 0, "--rounds must be at least 1");
        let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            for threads in [1, 2] {
                let path = self.fresh_dir(&format!("syncs-{round}-{threads}"));
                rates[threads - 1].push(sync_rate(&path, threads, Duration::from_secs(2))?);
                std::fs::remove_file(&path)?;
            }
        }
        let one = median(&rates[0]);
        let syncs = |rate: f64| format!("{:.2}k syncs/s", rate / 1e3);
        for (threads, rates) in rates.iter().enumerate() {
            let (low, high) = rates.iter().fold((f64::MAX, 0f64), |(l, h), r| (l.min(*r), h.max(*r)));
            println!(
                "| raw: append 2 KiB + fdatasync, {} thread(s) on one file (median of {rounds}; range {} - {}) | {} | - | - | - | {} | {:.2}x |",
                threads + 1,
                syncs(low),
                syncs(high),
                syncs(median(rates)),
                syncs(one),
                median(rates) / one,
            );
        }
        Ok(())
    }

    /// 100,000 events in one durable batch into a fresh store, alternating
    /// with the raw write + fdatasync of as many bytes, `rounds` times.
    pub fn bulk(&self, rounds: usize) -> Result<()> {
        let topic = Topic::new("bench")?;
        let mut cairn = Vec::new();
        let mut raw = Vec::new();
        for round in 0..rounds {
            let (raw_rate, _) = self.raw(100_000, 100_000)?;
            raw.push(Duration::from_secs_f64(100_000.0 / raw_rate));
            let store = self.store(&format!("bulk-{round}"), SyncMode::Always)?;
            let batch = Batch { events: vec![NewEvent::new(topic.clone(), PAYLOAD); 100_000], ..Batch::default() };
            let started = Instant::now();
            store.append_batch(batch)?;
            cairn.push(started.elapsed());
        }
        let show = |samples: &[Duration]| samples.iter().map(|d| format_duration(*d)).collect::<Vec<_>>().join(", ");
        row("raw: 100,000 events' bytes, one write + fdatasync (each round)", &show(&raw), None, None, None);
        row("cairn: 100,000 events durably in one batch (each round)", &show(&cairn), None, None, None);
        Ok(())
    }

    /// Scans 1M events three times each way; the median pass counts (the
    /// first pass may still share the cores with fjall's compaction).
    pub fn scan(&self, n: usize, keep: Option<&Path>) -> Result<()> {
        let path = keep.map_or_else(|| self.fresh("scan"), Path::to_path_buf);
        let options = || Options { sync: SyncMode::None, ..Options::default() };
        if !path.exists() {
            fill(&Store::open(&path, options())?, n, &["scan.a"])?;
        }
        // Reopened, so the scan measures reading, not the load's index work.
        let store = Store::open(&path, options())?;
        for (name, pattern) in [("full scan", ">"), ("scan of one topic", "scan.a")] {
            let mut rates = scan_rounds(&store, &Pattern::parse(pattern)?, n)?;
            rates.sort_by(f64::total_cmp);
            row(&format!("cairn: {name}, {n} events (median of 3)"), &format_rate(rates[1]), None, None, None);
        }
        let mut rates = cursor_rounds(&store, n)?;
        rates.sort_by(f64::total_cmp);
        row(
            &format!("cairn: full scan in place (Cursor), {n} events (median of 3)"),
            &format_rate(rates[1]),
            None,
            None,
            None,
        );
        Ok(())
    }

    pub fn latency(&self) -> Result<()> {
        let store = self.store("latency", SyncMode::Always)?;
        let topic = Topic::new("lat")?;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let mut subscription = store.subscribe_live(Pattern::all(), SubscribeOptions::default());
        let (tx, rx) = std::sync::mpsc::channel::<Instant>();
        let n = 2_000;
        let reader = runtime.spawn(async move {
            let mut samples = Samples::default();
            for _ in 0..n {
                if let Ok(Delivery::Event(_)) = subscription.next().await {
                    samples.push(Instant::now().duration_since(rx.recv().expect("sent")));
                }
            }
            samples
        });
        for _ in 0..n {
            // Time from the moment the append is handed to the store until
            // a subscriber holds the event (includes the fdatasync).
            let batch = Batch::single(NewEvent::new(topic.clone(), PAYLOAD), Expect::Any);
            let sent = Instant::now();
            tx.send(sent)?;
            store.append_batch(batch)?;
        }
        let mut samples = runtime.block_on(reader)?;
        row("cairn: publish → subscriber (durable)", &format!("{n} events"), Some(&mut samples), None, None);
        Ok(())
    }

    pub fn open(&self, n: usize) -> Result<()> {
        let path = self.fresh("open");
        {
            let store = Store::open(&path, Options { sync: SyncMode::None, ..Options::default() })?;
            let started = Instant::now();
            fill(&store, n, &["open.a", "open.b", "open.c", "open.d"])?;
            let took = started.elapsed();
            row(
                &format!("cairn: load {n} events (sync none, batches of 1,024)"),
                &format_rate(n as f64 / took.as_secs_f64()),
                None,
                None,
                None,
            );
        }
        let mut samples = Samples::default();
        for _ in 0..3 {
            let started = Instant::now();
            let store = Store::open(&path, Options::default())?;
            samples.push(started.elapsed());
            drop(store);
        }
        let median = samples.quantile(0.5);
        row(&format!("cairn: open a store of {n} events (clean close)"), &median, None, None, None);
        self.open_after_kill(&path)?;
        Ok(())
    }
}

impl Bench {
    /// Appends to the store from a child process until the index lags as far
    /// as it may, kills the child with SIGKILL, and times the next open
    /// (which replays the unindexed log and fjall's journal).
    fn open_after_kill(&self, path: &Path) -> Result<()> {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .arg("fill-and-wait")
            .arg(path)
            .arg("1000000")
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        anyhow::ensure!(line.trim() == "ready", "the child did not fill the store: {line:?}");
        child.kill()?;
        child.wait()?;
        let started = Instant::now();
        let store = Store::open(path, Options::default())?;
        let took = started.elapsed();
        let report = store.recovery_report();
        let (replayed, journal) = (report.records_replayed, report.index_journal_bytes);
        row(
            &format!(
                "cairn: open after kill -9 during a load ({replayed} records replayed, {:.1} MB of index journal)",
                journal as f64 / 1e6
            ),
            &format_duration(took),
            None,
            None,
            None,
        );
        // The content references catch up behind the open (lookups by hash
        // wait for them until then).
        while store.stats().content_refs_catching_up {
            std::thread::sleep(Duration::from_millis(5));
        }
        row(
            "cairn: content references caught up (from the start of that open)",
            &format_duration(started.elapsed()),
            None,
            None,
            None,
        );
        Ok(())
    }
}

/// The child of `open_after_kill`: appends, prints `ready`, waits to be killed.
pub fn fill_and_wait(path: &Path, n: usize) -> Result<()> {
    let store = Store::open(path, Options { sync: SyncMode::None, ..Options::default() })?;
    fill(&store, n, &["crash.a", "crash.b"])?;
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

impl Bench {
    /// Compaction: a store of `n` events, half of them on a `last:10`
    /// topic (so half the log is dead), 64 MiB segments. Each round fills a
    /// fresh store, then times single durable appends from one task for as
    /// long as a compaction of the whole store takes, alternating with as
    /// many appends while nothing compacts.
    pub fn compact(&self, n: usize, rounds: usize) -> Result<()> {
        let keep = Topic::new("keep")?;
        let churn = Topic::new("churn")?;
        let options = |sync| Options { sync, segment_bytes: 64 << 20, compact_ratio: None, ..Options::default() };
        let (mut quiet, mut busy) = (Samples::default(), Samples::default());
        let (mut seconds, mut bytes_before, mut bytes_after, mut dropped) = (0.0, 0u64, 0u64, 0u64);
        for round in 0..rounds {
            let path = self.fresh(&format!("compact-{round}"));
            let store = Store::open(&path, options(SyncMode::None))?;
            let mut left = n;
            while left > 0 {
                let size = left.min(1024);
                let events = (0..size)
                    .map(|i| match i % 2 {
                        0 => NewEvent::new(keep.clone(), PAYLOAD),
                        _ => NewEvent::new(churn.clone(), PAYLOAD).with_ttl(Ttl::Last { n: 10 }),
                    })
                    .collect();
                store.append_batch(Batch { events, ..Batch::default() })?;
                left -= size;
            }
            store.sync()?;
            drop(store);
            let store = Store::open(&path, options(SyncMode::Always))?;
            let appends = |samples: &mut Samples, until: &dyn Fn() -> bool| -> Result<usize> {
                let mut count = 0;
                while !until() {
                    let t = Instant::now();
                    store.append(NewEvent::new(keep.clone(), PAYLOAD), Expect::Any)?;
                    samples.push(t.elapsed());
                    count += 1;
                }
                Ok(count)
            };
            let compacting = {
                let store = store.clone();
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let report = store.compact(0.0);
                    (started.elapsed(), report)
                })
            };
            let during = appends(&mut busy, &|| compacting.is_finished())?;
            let (elapsed, report) = compacting.join().expect("compaction thread");
            let report = report?;
            let quiet_count = std::cell::Cell::new(0);
            appends(&mut quiet, &|| {
                quiet_count.set(quiet_count.get() + 1);
                quiet_count.get() > during
            })?;
            seconds += elapsed.as_secs_f64();
            bytes_before += report.bytes_before;
            bytes_after += report.bytes_after;
            dropped += report.events_dropped;
        }
        let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        row(
            &format!("cairn: compact {n} events, half removed (MiB/s of segments read)"),
            &format!("{:.0} MiB/s", mib(bytes_before) / seconds),
            None,
            None,
            None,
        );
        row("cairn: compaction, removed events dropped", &format_rate(dropped as f64 / seconds), None, None, None);
        row(
            "cairn: compaction, segments' bytes after / before",
            &format!("{:.0} / {:.0} MiB", mib(bytes_after), mib(bytes_before)),
            None,
            None,
            None,
        );
        row("cairn: durable append, 1 task, nothing compacting", "-", Some(&mut quiet), None, None);
        row("cairn: durable append, 1 task, while compacting", "-", Some(&mut busy), None, None);
        Ok(())
    }
}

impl Bench {
    /// `n` JSON-like events in 64 MiB segments, scanned plain (median of 3
    /// passes), compressed by `Store::compact`, scanned again; the scans
    /// alternate once more to see the drift.
    pub fn compress(&self, n: usize) -> Result<()> {
        let path = self.fresh("compress");
        let options = Options {
            sync: SyncMode::None,
            segment_bytes: 64 << 20,
            compact_ratio: None,
            compress: true,
            ..Options::default()
        };
        let store = Store::open(&path, options.clone())?;
        let topics: Vec<Topic> = (0..8).map(|t| Topic::new(&format!("orders.{t}"))).collect::<Result<_, _>>()?;
        let mut left = n;
        let mut i = 0usize;
        while left > 0 {
            let size = left.min(1024);
            let events = (0..size)
                .map(|_| {
                    i += 1;
                    let payload = format!(
                        r#"{{"order":{i},"customer":"customer-{}","items":[{{"sku":"SKU-{}","qty":{}}}],"status":"placed","total":{}.{:02}}}"#,
                        i % 9973,
                        i % 1013,
                        i % 5 + 1,
                        i % 10_000,
                        i % 100
                    );
                    NewEvent::new(topics[i % topics.len()].clone(), payload)
                })
                .collect();
            store.append_batch(Batch { events, ..Batch::default() })?;
            left -= size;
        }
        // A new segment, so every event is in a sealed one.
        store.sync()?;
        drop(store);
        // Reopened with small segments, the next append rolls to a new one:
        // every event of the fill is then in a sealed segment.
        let store = Store::open(&path, Options { segment_bytes: 4096, ..options.clone() })?;
        store.append(NewEvent::new(topics[0].clone(), "roll"), Expect::Any)?;
        store.append(NewEvent::new(topics[0].clone(), "roll"), Expect::Any)?;
        drop(store);
        // The same store twice: one copy compressed, one left plain.
        let plain_path = self.fresh("compress-plain");
        copy_dir(&path, &plain_path)?;
        let compressed = Store::open(&path, Options { segment_bytes: 4096, ..options.clone() })?;
        let started = Instant::now();
        let report = compressed.compact(0.0)?;
        let took = started.elapsed().as_secs_f64();
        let plain = Store::open(&plain_path, Options { segment_bytes: 4096, compress: false, ..options })?;
        let n = n + 2;
        let scan = |store: &Store| -> Result<f64> {
            let started = Instant::now();
            let mut count = 0usize;
            for event in store.read(&Query::new(Pattern::all()))? {
                event?;
                count += 1;
            }
            anyhow::ensure!(count == n, "scanned {count} events, not {n}");
            Ok(count as f64 / started.elapsed().as_secs_f64())
        };
        // CAIRN_BENCH_SCAN=plain|compressed scans only one (for callgrind).
        let only = std::env::var("CAIRN_BENCH_SCAN").ok();
        let (mut plain_rates, mut compressed_rates) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            if only.as_deref() != Some("compressed") {
                plain_rates.push(scan(&plain)?);
            }
            if only.as_deref() != Some("plain") {
                compressed_rates.push(scan(&compressed)?);
            }
        }
        if only.is_some() {
            plain_rates.resize(5, 0.0);
            compressed_rates.resize(5, 0.0);
        }
        plain_rates.sort_by(f64::total_cmp);
        compressed_rates.sort_by(f64::total_cmp);
        let (plain_rate, compressed_rate) = (plain_rates[2], compressed_rates[2]);
        let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        row(
            "cairn: compress sealed segments of JSON-like events (MiB/s of plain bytes)",
            &format!("{:.0} MiB/s", mib(report.plain_bytes_before) / took),
            None,
            None,
            None,
        );
        row(
            "cairn: compressed / plain bytes",
            &format!(
                "{:.1} / {:.1} MiB ({:.2})",
                mib(report.bytes_after),
                mib(report.plain_bytes_before),
                report.bytes_after as f64 / report.plain_bytes_before as f64
            ),
            None,
            None,
            None,
        );
        row("cairn: full scan, plain segments (median of 5, alternating)", &format_rate(plain_rate), None, None, None);
        row(
            "cairn: full scan, compressed segments (median of 5, alternating)",
            &format_rate(compressed_rate),
            None,
            Some(plain_rate),
            Some(compressed_rate),
        );
        Ok(())
    }
}

/// Copies a closed store's directory.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// CPU time of this process's (one) open store's indexer thread so far.
fn indexer_cpu() -> Result<Duration> {
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?.path();
        if std::fs::read_to_string(task.join("comm"))?.trim() == "cairn-indexer" {
            let schedstat = std::fs::read_to_string(task.join("schedstat"))?;
            let nanos: u64 = schedstat.split_whitespace().next().unwrap_or("0").parse()?;
            return Ok(Duration::from_nanos(nanos));
        }
    }
    anyhow::bail!("no cairn-indexer thread in this process")
}

/// Nanoseconds per CRC-32C of buffers of a few frame sizes: the store's
/// (three lanes joined by a carry-less multiply) next to the crate's (one
/// chain below 768 bytes), alternating five rounds of 0.1 s each.
pub fn crc() {
    let data: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    for len in [64, 190, 400, 700] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            ours.push(ns_per_call(&data, len, cairn_store::bench::frame_crc));
            theirs.push(ns_per_call(&data, len, crc32c::crc32c));
        }
        ours.sort_by(f64::total_cmp);
        theirs.sort_by(f64::total_cmp);
        let (ours, theirs) = (ours[2], theirs[2]);
        println!("| crc32c of {len} bytes, crc32c crate (median of 5) | {theirs:.1} ns | - | - | - | - | - |");
        println!(
            "| crc32c of {len} bytes, cairn's frame crc (median of 5) | {ours:.1} ns | - | - | - | {theirs:.1} ns | {:.2}x |",
            theirs / ours
        );
    }
}

/// The content references' pending run, three ways: a map keyed by bytes
/// (`[u8; 24]`), a map keyed by two integers (`(u64, u128)`, the same
/// order), and a vector pushed to and sorted once at the end (as a drain
/// would): ns per key of 262,144 keys, median of 5 rounds alternating, for
/// keys of one hash with rising ids and for keys of random hashes.
pub fn refs_map() {
    const KEYS: u64 = 1 << 18;
    for (what, one_hash) in [("one hash, ids rising", true), ("random hashes", false)] {
        let keys: Vec<(u64, u128)> = (0..KEYS)
            .map(|n| {
                let hash = if one_hash {
                    0x5eed_cafe_f00d_beef
                } else {
                    n.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
                };
                (hash, (1u128 << 100) | u128::from(n))
            })
            .collect();
        let (mut bytes, mut ints, mut sorted) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            let started = Instant::now();
            let mut map = std::collections::BTreeMap::new();
            for &(hash, id) in &keys {
                let mut key = [0u8; 24];
                key[..8].copy_from_slice(&hash.to_be_bytes());
                key[8..].copy_from_slice(&id.to_be_bytes());
                map.insert(std::hint::black_box(key), 1u8);
            }
            bytes.push(started.elapsed().as_nanos() as f64 / KEYS as f64);
            drop(std::hint::black_box(map));
            let started = Instant::now();
            let mut map = std::collections::BTreeMap::new();
            for &key in &keys {
                map.insert(std::hint::black_box(key), 1u8);
            }
            ints.push(started.elapsed().as_nanos() as f64 / KEYS as f64);
            drop(std::hint::black_box(map));
            let started = Instant::now();
            let mut run = Vec::new();
            for &key in &keys {
                run.push((std::hint::black_box(key), 1u8));
            }
            run.sort_unstable_by_key(|(key, _)| *key);
            sorted.push(started.elapsed().as_nanos() as f64 / KEYS as f64);
            drop(std::hint::black_box(run));
        }
        bytes.sort_by(f64::total_cmp);
        ints.sort_by(f64::total_cmp);
        sorted.sort_by(f64::total_cmp);
        let (bytes, ints, sorted) = (bytes[2], ints[2], sorted[2]);
        println!("| pending references map, {what}: keys as bytes (median of 5) | {bytes:.1} ns | - | - | - | - | - |");
        println!(
            "| pending references map, {what}: keys as integers (median of 5) | {ints:.1} ns | - | - | - | {bytes:.1} ns | {:.2}x |",
            bytes / ints
        );
        println!(
            "| pending references run, {what}: a vector sorted once (median of 5) | {sorted:.1} ns | - | - | - | {bytes:.1} ns | {:.2}x |",
            bytes / sorted
        );
    }
}

/// Calls `crc` on `len`-byte windows moving through `data` for 0.1 s.
fn ns_per_call(data: &[u8], len: usize, crc: fn(&[u8]) -> u32) -> f64 {
    let started = Instant::now();
    let (mut calls, mut sum) = (0u64, 0u32);
    while started.elapsed() < Duration::from_millis(100) {
        for at in (0..data.len() - len).step_by(64) {
            sum = sum.wrapping_add(crc(std::hint::black_box(&data[at..at + len])));
            calls += 1;
        }
    }
    std::hint::black_box(sum);
    started.elapsed().as_nanos() as f64 / calls as f64
}

/// Three full scans through a cursor (events viewed in place, the payload's
/// bytes touched so the view is not optimised away): their rates.
#[inline(never)]
fn cursor_rounds(store: &Store, n: usize) -> Result<Vec<f64>> {
    let mut rates = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let (mut seen, mut bytes) = (0, 0u64);
        let mut cursor = store.cursor(&Query::new(Pattern::all()))?;
        while let Some(event) = cursor.next()? {
            if let cairn_store::PayloadRef::Inline(payload) = event.payload {
                bytes += payload.len() as u64;
            }
            seen += 1;
        }
        anyhow::ensure!(seen == n && bytes > 0, "scanned {seen} events, not {n}");
        rates.push(n as f64 / started.elapsed().as_secs_f64());
    }
    Ok(rates)
}

/// Three scans of `pattern`, each expected to see `n` events: their rates.
#[inline(never)]
fn scan_rounds(store: &Store, pattern: &Pattern, n: usize) -> Result<Vec<f64>> {
    let mut rates = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let mut seen = 0;
        for event in store.read(&Query::new(pattern.clone()))? {
            event?;
            seen += 1;
        }
        anyhow::ensure!(seen == n, "scanned {seen} events, not {n}");
        rates.push(n as f64 / started.elapsed().as_secs_f64());
    }
    Ok(rates)
}

/// Appends `n` events round-robin over `topics` in batches of 1,024.
fn fill(store: &Store, n: usize, topics: &[&str]) -> Result<()> {
    let topics: Vec<Topic> = topics.iter().map(|t| Topic::new(t)).collect::<Result<_, _>>()?;
    let mut left = n;
    let mut idx = 0;
    while left > 0 {
        let size = left.min(1024);
        let events = (0..size)
            .map(|_| {
                idx += 1;
                NewEvent::new(topics[idx % topics.len()].clone(), PAYLOAD)
            })
            .collect();
        store.append_batch(Batch { events, ..Batch::default() })?;
        left -= size;
    }
    store.sync()?;
    Ok(())
}

/// Every way of making the raw baseline's file, the issue's (appending) first.
const RAW_FILES: [RawFile; 3] = [RawFile::Append, RawFile::Zeroed, RawFile::Allocated];

/// Prints the raw baselines (`what` of each kind of file), then cairn's
/// row against the first and, if there are more, against each of them.
fn report_against(what: &str, name: &str, files: &[RawFile], raw: Vec<Rounds>, mut cairn: Rounds) {
    let baselines: Vec<f64> = files
        .iter()
        .zip(raw)
        .map(|(file, mut raw)| {
            let how = match file {
                RawFile::Append => String::new(),
                other => format!(", {}", other.label()),
            };
            raw.report(&format!("raw: write + fdatasync, {what}{how}"), None)
        })
        .collect();
    let rate = cairn.report(name, baselines.first().copied());
    for (file, baseline) in files.iter().zip(&baselines).skip(1) {
        let against = file.label();
        row(&format!("{name}, against the raw write {against}"), &format_rate(rate), None, Some(*baseline), Some(rate));
    }
}

/// How the raw baseline's file is made before it is written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RawFile {
    /// Empty: every write grows it (as a log appended to does).
    Append,
    /// Zeroes written over the whole length and synced first: the writes
    /// land on blocks already written (as cairn's do with sync `always`,
    /// `log/ahead.rs`).
    Zeroed,
    /// The whole length allocated with `fallocate` and synced first
    /// (unwritten extents, converted at the first write).
    Allocated,
}

impl RawFile {
    /// How its rows name it.
    fn label(self) -> &'static str {
        match self {
            RawFile::Append => "appending",
            RawFile::Zeroed => "into a file of zeroes written before",
            RawFile::Allocated => "into a file allocated before (fallocate)",
        }
    }
}

/// Rates and latencies of one benchmark over several rounds.
#[derive(Default)]
struct Rounds {
    rates: Vec<f64>,
    samples: Samples,
}

impl Rounds {
    fn add(&mut self, (rate, samples): (f64, Samples)) {
        self.rates.push(rate);
        self.samples.extend(samples);
    }

    /// Prints a row with the mean rate; returns it.
    fn report(&mut self, name: &str, baseline: Option<f64>) -> f64 {
        let rate = self.rates.iter().sum::<f64>() / self.rates.len() as f64;
        row(name, &format_rate(rate), Some(&mut self.samples), baseline, baseline.map(|_| rate));
        rate
    }
}

/// `tasks` async tasks each appending `per_task` single events durably.
fn concurrent(store: &Store, tasks: usize, per_task: usize) -> Result<(f64, Samples)> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let store = Arc::new(store.clone());
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let store = store.clone();
            runtime.spawn(async move {
                let topic = Topic::new(&format!("bench.{task}")).expect("valid");
                let mut samples = Samples::default();
                for _ in 0..per_task {
                    let batch = Batch::single(NewEvent::new(topic.clone(), PAYLOAD), Expect::Any);
                    let t = Instant::now();
                    store.append_batch_async(batch).await.expect("append");
                    samples.push(t.elapsed());
                }
                samples
            })
        })
        .collect();
    let mut all = Samples::default();
    for handle in handles {
        all.extend(runtime.block_on(handle)?);
    }
    let rate = (tasks * per_task) as f64 / started.elapsed().as_secs_f64();
    Ok((rate, all))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Syncs per second over `run`: `threads` threads, each with its own open
/// file on `path`, each appending 2 KiB (under a lock, so the file grows in
/// order, as a log does) and then fdatasyncing.
fn sync_rate(path: &Path, threads: usize, run: Duration) -> Result<f64> {
    let writer = std::sync::Mutex::new(OpenOptions::new().create_new(true).append(true).open(path)?);
    let syncs = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let own = OpenOptions::new().read(true).open(path);
                let (writer, syncs) = (&writer, &syncs);
                scope.spawn(move || -> Result<()> {
                    let own = own?;
                    let block = [b'x'; 2048];
                    while started.elapsed() < run {
                        writer.lock().expect("no panics").write_all(&block)?;
                        own.sync_data()?;
                        syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("no panics")?;
        }
        Ok(())
    })?;
    Ok(syncs.into_inner() as f64 / started.elapsed().as_secs_f64())
}
