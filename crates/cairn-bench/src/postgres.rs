//! How cairn on PostgreSQL keeps a global order readers can trust, measured
//! before it is built: durable single appends from 1 and 16 clients on a
//! private cluster (synchronous_commit on, fsync on), alternating rounds,
//! each way next to the unsafe baseline of the same run.
//!
//! - unsafe: a `bigserial` insert per append. Fast, but ids are drawn before
//!   commit, so a reader following "after id X" can skip an event that
//!   commits later with a lower id.
//! - sequencer per append: each append's transaction takes the counter row
//!   (`update … returning`), so transactions commit in id order. Safe, but
//!   every commit waits for the one before: PostgreSQL's group commit
//!   cannot gather them.
//! - grouped sequencer (what cairn builds): each cairn process has a writer
//!   that takes every append waiting at that moment and commits them in
//!   one transaction that takes the counter row once. Safe for the same
//!   reason, and the commit is shared as the local engine shares an
//!   fdatasync. Shown with one writer, and with two writers (two cairn
//!   processes on one database) contending for the row.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cairn_postgres::Cluster;
use tokio::sync::{mpsc, oneshot};

use crate::measure::{Samples, format_rate, row};

/// Bytes of each appended payload.
const PAYLOAD_BYTES: usize = 100;
/// Most appends one group commits.
const GROUP_MAX: usize = 1024;

const SCHEMA: &str = "
    create table raw_events (id bigserial primary key, topic text not null, payload bytea not null);
    create table sequencer (one int primary key check (one = 1), last bigint not null);
    insert into sequencer values (1, 0);
    create table events (id bigint primary key, topic text not null, payload bytea not null);
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Unsafe,
    PerAppend,
    Grouped { writers: usize },
}

impl Way {
    fn name(self) -> String {
        match self {
            Way::Unsafe => "unsafe bigserial insert per append".to_owned(),
            Way::PerAppend => "sequencer row per append".to_owned(),
            Way::Grouped { writers: 1 } => "grouped sequencer, 1 writer (cairn)".to_owned(),
            Way::Grouped { writers } => format!("grouped sequencer, {writers} writers (cairn processes)"),
        }
    }
}

/// `cairn-bench postgres-order`.
pub fn order(rounds: usize, seconds: u64) -> Result<()> {
    anyhow::ensure!(rounds > 0, "--rounds must be at least 1");
    let cluster = Cluster::start(&[("max_connections", "100"), ("shared_buffers", "'256MB'")])?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let (setup, connection) = connect(&cluster.url("postgres")).await?;
        tokio::spawn(connection);
        setup.batch_execute(SCHEMA).await.context("schema")?;
        let ways = [Way::Unsafe, Way::PerAppend, Way::Grouped { writers: 1 }, Way::Grouped { writers: 2 }];
        for clients in [1usize, 16] {
            let mut rates: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
            let mut samples: Vec<Samples> = ways.iter().map(|_| Samples::default()).collect();
            for _ in 0..rounds {
                for (n, way) in ways.iter().enumerate() {
                    if clients == 1 && matches!(way, Way::Grouped { writers: 2 }) {
                        continue;
                    }
                    let (rate, round) = run(&cluster, *way, clients, Duration::from_secs(seconds)).await?;
                    rates[n].push(rate);
                    samples[n].extend(round);
                }
            }
            let baseline = median(&rates[0]);
            for (n, way) in ways.iter().enumerate() {
                if rates[n].is_empty() {
                    continue;
                }
                let name = format!(
                    "postgres: {}, {clients} client(s) (median of {rounds}; {})",
                    way.name(),
                    rates[n].iter().map(|rate| format_rate(*rate)).collect::<Vec<_>>().join(", ")
                );
                let rate = median(&rates[n]);
                row(&name, &format_rate(rate), Some(&mut samples[n]), Some(baseline), Some(rate));
            }
        }
        anyhow::Ok(())
    })?;
    Ok(())
}

async fn connect(
    url: &str,
) -> Result<(tokio_postgres::Client, impl std::future::Future<Output = ()> + Send + 'static)> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.context("connecting")?;
    Ok((client, async move {
        let _ = connection.await;
    }))
}

/// One round: `clients` tasks append for `length`; appends per second and
/// their latencies.
async fn run(cluster: &Cluster, way: Way, clients: usize, length: Duration) -> Result<(f64, Samples)> {
    let url = cluster.url("postgres");
    let stop = Arc::new(AtomicBool::new(false));
    // The grouped way's writers, each on its own connection.
    let mut writers = Vec::new();
    if let Way::Grouped { writers: count } = way {
        for _ in 0..count {
            let (sender, receiver) = mpsc::channel::<Append>(GROUP_MAX * 4);
            let (client, connection) = connect(&url).await?;
            tokio::spawn(connection);
            tokio::spawn(writer(client, receiver));
            writers.push(sender);
        }
    }
    let mut tasks = Vec::new();
    for n in 0..clients {
        let stop = stop.clone();
        let writer = writers.get(n % writers.len().max(1)).cloned();
        let (client, connection) = connect(&url).await?;
        tokio::spawn(connection);
        tasks.push(tokio::spawn(async move {
            // Prepared once per connection, as a real client does.
            let unsafe_insert = client.prepare("insert into raw_events (topic, payload) values ($1, $2)").await?;
            let sequenced_insert = client
                .prepare(
                    "with s as (update sequencer set last = last + 1 returning last) \
                     insert into events (id, topic, payload) select last, $1, $2 from s",
                )
                .await?;
            let payload = vec![b'x'; PAYLOAD_BYTES];
            let topic = format!("bench.{n}");
            let mut samples = Samples::default();
            let mut count = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match (&writer, way) {
                    (_, Way::Unsafe) => {
                        client.execute(&unsafe_insert, &[&topic, &payload]).await?;
                    }
                    (_, Way::PerAppend) => {
                        // One statement, so one round trip: the counter row
                        // stays locked until the statement's commit.
                        client.execute(&sequenced_insert, &[&topic, &payload]).await?;
                    }
                    (Some(writer), Way::Grouped { .. }) => {
                        let (done, wait) = oneshot::channel();
                        writer.send(Append { topic: topic.clone(), payload: payload.clone(), done }).await?;
                        wait.await??;
                    }
                    (None, Way::Grouped { .. }) => unreachable!("grouped ways have writers"),
                }
                samples.push(started.elapsed());
                count += 1;
            }
            anyhow::Ok((count, samples))
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut all = Samples::default();
    for task in tasks {
        let (count, samples) = task.await??;
        total += count;
        all.extend(samples);
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    Ok((rate, all))
}

/// An append waiting for its group.
struct Append {
    topic: String,
    payload: Vec<u8>,
    done: oneshot::Sender<Result<i64>>,
}

/// Commits every append waiting at the moment in one transaction that
/// takes the sequencer row once.
async fn writer(client: tokio_postgres::Client, mut queue: mpsc::Receiver<Append>) -> Result<()> {
    // One statement per group (one round trip): it takes the counter row,
    // which stays locked until the statement commits, so groups commit in
    // id order, across writers too.
    let insert = "with s as (update sequencer set last = last + $1 returning last) \
                  insert into events (id, topic, payload) \
                  select s.last - $1 + u.n, u.topic, u.payload \
                  from s, unnest($2::text[], $3::bytea[]) with ordinality as u(topic, payload, n) \
                  returning id";
    let insert = client.prepare(insert).await?;
    // A group of one (a lone client) takes the lighter single-row statement.
    let insert_one = client
        .prepare(
            "with s as (update sequencer set last = last + 1 returning last) \
             insert into events (id, topic, payload) select last, $1, $2 from s returning id",
        )
        .await?;
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let result = async {
            let count = group.len() as i64;
            let topics: Vec<&str> = group.iter().map(|append| append.topic.as_str()).collect();
            let payloads: Vec<&[u8]> = group.iter().map(|append| append.payload.as_slice()).collect();
            let rows = if group.len() == 1 {
                client.query(&insert_one, &[&topics[0], &payloads[0]]).await?
            } else {
                client.query(&insert, &[&count, &topics, &payloads]).await?
            };
            let mut ids: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
            ids.sort_unstable();
            anyhow::ensure!(ids.len() == group.len(), "{} ids for {} appends", ids.len(), group.len());
            anyhow::Ok(ids)
        }
        .await;
        match result {
            Ok(ids) => {
                for (append, id) in group.into_iter().zip(ids) {
                    let _ = append.done.send(Ok(id));
                }
            }
            Err(error) => {
                let message = format!("{error:#}");
                for append in group {
                    let _ = append.done.send(Err(anyhow::anyhow!("{message}")));
                }
            }
        }
    }
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// `cairn-bench postgres`: cairn's PostgreSQL backend (the storage seam a
/// server uses, in this process) on a private cluster, next to raw
/// `bigserial` inserts of the same payloads in the same run and database
/// settings (synchronous_commit on, fsync on): durable appends from 1 and
/// 16 clients (the 16 also beside another writer syncing on the disk, and
/// through two backends on the database, as two cairn processes would
/// be), batches of 100, a catch-up read of `events` events, and the
/// latency from an append through this process to its delivery by a
/// `cairn serve` process on the same database (needs target/release/cairn).
pub fn cairn(rounds: usize, seconds: u64, events: usize) -> Result<()> {
    use cairn_store::{Batch, Expect, NewEvent, Pattern, Query, Storage, Topic};

    anyhow::ensure!(rounds > 0, "--rounds must be at least 1");
    let cluster = Cluster::start(&[("max_connections", "100"), ("shared_buffers", "'256MB'")])?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let (setup, connection) = connect(&cluster.url("postgres")).await?;
        tokio::spawn(connection);
        setup.batch_execute(SCHEMA).await.context("schema")?;
        setup.batch_execute("create database cairn").await.context("create database")?;
        let url = cluster.url("cairn");
        let storage: Arc<dyn Storage> =
            Arc::new(cairn_postgres::Postgres::open(&url, cairn_postgres::Options::default()).await?);
        // A second backend on the same database: a second cairn process's
        // writer, for the rounds with two.
        let other: Arc<dyn Storage> =
            Arc::new(cairn_postgres::Postgres::open(&url, cairn_postgres::Options::default()).await?);
        let payload = vec![b'x'; PAYLOAD_BYTES];

        let shapes = [
            (1usize, 1usize, 1usize, false),
            (16, 1, 1, false),
            (16, 1, 1, true),
            (16, 1, 2, false),
            (16, 100, 1, false),
        ];
        for (clients, batch, writers, noisy) in shapes {
            // Another writer on the disk, syncing as it goes (as `dd
            // oflag=dsync bs=256k` would), for both ways' rounds.
            let noise = noisy.then(DiskNoise::start).transpose()?;
            let (mut raw_rates, mut cairn_rates) = (Vec::new(), Vec::new());
            let (mut raw_samples, mut cairn_samples) = (Samples::default(), Samples::default());
            for _ in 0..rounds {
                let (rate, samples) = if batch == 1 {
                    run(&cluster, Way::Unsafe, clients, Duration::from_secs(seconds)).await?
                } else {
                    raw_batches(&cluster, clients, batch, Duration::from_secs(seconds)).await?
                };
                raw_rates.push(rate);
                raw_samples.extend(samples);
                let stop = Arc::new(AtomicBool::new(false));
                let tasks: Vec<_> = (0..clients)
                    .map(|n| {
                        let storage = if writers == 2 && n % 2 == 1 { other.clone() } else { storage.clone() };
                        let (stop, payload) = (stop.clone(), payload.clone());
                        tokio::spawn(async move {
                            let topic = Topic::new(&format!("bench.{n}"))?;
                            let (mut count, mut samples) = (0u64, Samples::default());
                            while !stop.load(Ordering::Relaxed) {
                                let events = (0..batch).map(|_| NewEvent::new(topic.clone(), payload.clone()));
                                let batch = Batch { events: events.collect(), ..Batch::default() };
                                let started = Instant::now();
                                count += storage.submit(batch, false).await?.await?.len() as u64;
                                samples.push(started.elapsed());
                            }
                            anyhow::Ok((count, samples))
                        })
                    })
                    .collect();
                let started = Instant::now();
                tokio::time::sleep(Duration::from_secs(seconds)).await;
                stop.store(true, Ordering::Relaxed);
                let mut total = 0;
                for task in tasks {
                    let (count, samples) = task.await??;
                    total += count;
                    cairn_samples.extend(samples);
                }
                cairn_rates.push(total as f64 / started.elapsed().as_secs_f64());
            }
            let mut shape = if batch == 1 { "single appends".to_owned() } else { format!("batches of {batch}") };
            if writers > 1 {
                shape.push_str(&format!(" through {writers} writers (as {writers} processes)"));
            }
            if noisy {
                shape.push_str(" beside a writer syncing 256 KiB at a time on the disk");
            }
            drop(noise);
            let (raw, ours) = (median(&raw_rates), median(&cairn_rates));
            let list = |rates: &[f64]| rates.iter().map(|rate| format_rate(*rate)).collect::<Vec<_>>().join(", ");
            let name = format!("raw bigserial inserts, {shape}, {clients} client(s) ({})", list(&raw_rates));
            row(&name, &format_rate(raw), Some(&mut raw_samples), None, None);
            let name = format!("cairn on PostgreSQL, {shape}, {clients} client(s) ({})", list(&cairn_rates));
            row(&name, &format_rate(ours), Some(&mut cairn_samples), Some(raw), Some(ours));
        }

        // Catch-up: a read of every event of one topic, in chunks.
        let topic = Topic::new("catchup")?;
        let mut written = 0;
        while written < events {
            let n = (events - written).min(10_000);
            let batch = Batch {
                events: (0..n).map(|_| NewEvent::new(topic.clone(), payload.clone())).collect(),
                ..Batch::default()
            };
            storage.submit(batch, false).await?.await?;
            written += n;
        }
        let started = Instant::now();
        let mut reader = storage.read(Query::new(Pattern::Exact(topic.clone())), false).await?;
        let mut read = 0;
        loop {
            let chunk = reader.next(10_000).await?;
            if chunk.is_empty() {
                break;
            }
            read += chunk.len();
        }
        anyhow::ensure!(read == events, "read {read} of {events}");
        let ours = read as f64 / started.elapsed().as_secs_f64();
        // The same rows read raw: keyset chunks, no decoding, with the
        // session setting cairn uses (else the plan made on the statistics
        // of a table just filled sorts the whole topic for every chunk).
        let (raw_client, connection) = connect(&format!("{url}?options=-c%20enable_sort%3Doff")).await?;
        tokio::spawn(connection);
        let chunk = raw_client
            .prepare(
                "select id, topic, seq, payload from cairn_events where topic = $1 and id > $2 order by id limit 10000",
            )
            .await?;
        let started = Instant::now();
        let (mut last, mut raw_read) = (Vec::<u8>::new(), 0);
        loop {
            let rows = raw_client.query(&chunk, &[&"catchup", &last]).await?;
            let Some(row) = rows.last() else { break };
            last = row.get(0);
            raw_read += rows.len();
        }
        let raw = raw_read as f64 / started.elapsed().as_secs_f64();
        row(&format!("raw keyset read of {events} rows"), &format_rate(raw), None, None, None);
        row(&format!("cairn catch-up read of {events} events"), &format_rate(ours), None, Some(raw), Some(ours));

        // Publish through this process's cairn, delivery through another
        // process: a `cairn serve` on the same database, followed over its
        // socket (its tail woken by this process's NOTIFY).
        let binary = std::env::current_exe()?.with_file_name("cairn");
        anyhow::ensure!(binary.exists(), "no {} (cargo build --release -p cairn-cli first)", binary.display());
        let dir = tempfile::tempdir()?;
        let mut child = std::process::Command::new(&binary)
            .arg("--store")
            .arg(dir.path())
            .args(["serve", "--no-resp"])
            .env("CAIRN_POSTGRES", &url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let socket = {
            use std::io::BufRead as _;
            let mut lines = std::io::BufReader::new(stdout).lines();
            loop {
                let line = lines.next().context("the server ended before listening")??;
                if let Some(path) = line.strip_prefix("cairn: listening on unix:") {
                    break std::path::PathBuf::from(path);
                }
            }
        };
        let result = async {
            let client = cairn_client::Client::unix(&socket);
            let mut connection = client.connect().await?;
            let mut stream = connection.request("GET", "/v1/events?topic=latency&follow=true", &[], "".into()).await?;
            let latency = Topic::new("latency")?;
            let mut samples = Samples::default();
            let mut buffer = Vec::new();
            for _ in 0..rounds * 200 {
                let started = Instant::now();
                let event = NewEvent::new(latency.clone(), payload.clone());
                storage.submit(Batch::single(event, Expect::Any), false).await?.await?;
                while !buffer.contains(&b'\n') {
                    let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
                        .await
                        .context("no delivery within 10 s")??
                        .context("the follow ended")?;
                    buffer.extend_from_slice(&chunk);
                }
                let end = buffer.iter().position(|&b| b == b'\n').unwrap_or(0);
                buffer.drain(..=end);
                samples.push(started.elapsed());
            }
            row(
                "append through one cairn process -> delivered by another (cairn serve)",
                "-",
                Some(&mut samples),
                None,
                None,
            );
            anyhow::Ok(())
        }
        .await;
        let _ = child.kill();
        let _ = child.wait();
        result?;
        anyhow::Ok(())
    })?;
    Ok(())
}

/// One round of raw batches: each client inserts `batch` rows per
/// transaction with one multi-row insert.
async fn raw_batches(cluster: &Cluster, clients: usize, batch: usize, length: Duration) -> Result<(f64, Samples)> {
    let url = cluster.url("postgres");
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for n in 0..clients {
        let stop = stop.clone();
        let (client, connection) = connect(&url).await?;
        tokio::spawn(connection);
        tasks.push(tokio::spawn(async move {
            let insert = client
                .prepare("insert into raw_events (topic, payload) select * from unnest($1::text[], $2::bytea[])")
                .await?;
            let topics = vec![format!("bench.{n}"); batch];
            let payloads = vec![vec![b'x'; PAYLOAD_BYTES]; batch];
            let (mut count, mut samples) = (0u64, Samples::default());
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                count += client.execute(&insert, &[&topics, &payloads]).await?;
                samples.push(started.elapsed());
            }
            anyhow::Ok((count, samples))
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let (mut total, mut all) = (0, Samples::default());
    for task in tasks {
        let (count, samples) = task.await??;
        total += count;
        all.extend(samples);
    }
    Ok((total as f64 / started.elapsed().as_secs_f64(), all))
}

/// A thread writing 256 KiB at a time to a file in the temporary directory
/// (where the clusters live), each write synced, until dropped: a disk
/// shared with another busy writer.
struct DiskNoise {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DiskNoise {
    fn start() -> Result<DiskNoise> {
        use std::io::{Seek, Write};
        let mut file = tempfile::tempfile().context("the noise file")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let chunk = vec![0u8; 256 * 1024];
            while !flag.load(Ordering::Relaxed) {
                let _ = file.rewind();
                for _ in 0..40 {
                    if file.write_all(&chunk).and_then(|()| file.sync_data()).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(DiskNoise { stop, thread: Some(thread) })
    }
}

impl Drop for DiskNoise {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
