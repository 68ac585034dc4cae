//! The HTTP front end, measured through its Unix socket with cairn-client:
//! durable appends from 1 and 16 clients, an NDJSON catch-up read of 1
//! million events, and publish-to-follower latency. The server runs in this
//! process (`cairn_server::serve`) on a fresh store.

use std::time::Instant;

use anyhow::{Context as _, Result};
use cairn_client::{Client, RequestBody};

use crate::measure::{Samples, format_duration, format_rate, row};
use crate::scenarios::Bench;

const PAYLOAD: &[u8] = &[b'x'; 100];

/// A server in this process on a fresh store, stopped on drop (also used
/// by the Redis benchmark).
pub(crate) struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
    pub(crate) socket: std::path::PathBuf,
    /// What it listens on (`unix:…`, `redis://…`).
    pub(crate) addresses: Vec<String>,
}

impl Running {
    /// The Unix socket only.
    fn start(store: std::path::PathBuf, sync: &str) -> Result<Running> {
        Running::start_with(
            cairn_server::ServeArgs { no_resp: true, ..cairn_server::ServeArgs::default() },
            store,
            sync,
        )
    }

    pub(crate) fn start_with(args: cairn_server::ServeArgs, store: std::path::PathBuf, sync: &str) -> Result<Running> {
        let config = cairn_server::Config::resolve(args, Some(store), Some(sync.to_owned()))?;
        let socket = config.socket.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, is_ready) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(cairn_server::serve(
                config,
                async {
                    let _ = stopped.await;
                },
                move |addresses| {
                    let _ = ready.send(addresses.to_vec());
                },
            ))
        });
        let addresses = is_ready.recv().context("the server did not start")?;
        Ok(Running { stop: Some(stop), thread: Some(thread), socket, addresses })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Bench {
    pub fn http(&self) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let server = Running::start(self.fresh_dir("http-append"), "always")?;
        let client = Client::unix(&server.socket);
        for clients in [1usize, 16] {
            let per_client = 1_500;
            let (rate, mut samples) = runtime.block_on(appends(&client, clients, per_client))?;
            row(
                &format!("http (unix socket): durable append, {clients} client{}", if clients == 1 { "" } else { "s" }),
                &format_rate(rate),
                Some(&mut samples),
                None,
                None,
            );
        }
        drop(server);

        let server = Running::start(self.fresh_dir("http-read"), "none")?;
        let client = Client::unix(&server.socket);
        let n = 1_000_000;
        runtime.block_on(fill(&client, n))?;
        let rate = runtime.block_on(catch_up(&client, n))?;
        row(&format!("http: NDJSON catch-up read, {n} events"), &format_rate(rate), None, None, None);
        drop(server);

        let server = Running::start(self.fresh_dir("http-latency"), "always")?;
        let client = Client::unix(&server.socket);
        let mut samples = runtime.block_on(follow_latency(&client, 2_000))?;
        row("http: publish → follower (durable, NDJSON follow)", "2000 events", Some(&mut samples), None, None);
        Ok(())
    }

    /// NDJSON catch-up reads of 1,000,000 events through the socket,
    /// `rounds` times, on a store kept at `keep` when given (filled over
    /// HTTP only when it does not exist yet, so a profiler can skip that).
    pub fn catch_up(&self, rounds: usize, keep: Option<&std::path::Path>) -> Result<()> {
        anyhow::ensure!(rounds > 0, "--rounds must be at least 1");
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let n = 1_000_000;
        let path = keep.map_or_else(|| self.fresh_dir("http-catch-up"), std::path::Path::to_path_buf);
        let fresh = !path.exists();
        let server = Running::start(path, "none")?;
        let client = Client::unix(&server.socket);
        if fresh {
            runtime.block_on(fill(&client, n))?;
        }
        let mut rates = Vec::new();
        for _ in 0..rounds {
            rates.push(runtime.block_on(catch_up(&client, n))?);
        }
        let each: Vec<String> = rates.iter().map(|rate| format_rate(*rate)).collect();
        rates.sort_by(f64::total_cmp);
        let median = format_rate(rates[rates.len() / 2]);
        row(
            &format!("http: NDJSON catch-up read, {n} events (each round; median {median})"),
            &each.join(", "),
            None,
            None,
            None,
        );
        Ok(())
    }
}

async fn appends(client: &Client, clients: usize, per_client: usize) -> Result<(f64, Samples)> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..clients {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut connection = client.connect().await?;
            let path = format!("/v1/topics/bench.{task}/events");
            let mut samples = Samples::default();
            for _ in 0..per_client {
                let t = Instant::now();
                let reply = connection.request("POST", &path, &[], RequestBody::from(PAYLOAD.to_vec())).await?;
                reply.bytes().await?;
                samples.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(samples)
        }));
    }
    let mut all = Samples::default();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(((clients * per_client) as f64 / started.elapsed().as_secs_f64(), all))
}

async fn fill(client: &Client, n: usize) -> Result<()> {
    let mut connection = client.connect().await?;
    let line = format!("{{\"topic\":\"read\",\"content\":\"{}\"}}\n", "x".repeat(100));
    let body: String = line.repeat(10_000);
    let started = Instant::now();
    for _ in 0..n / 10_000 {
        let reply = connection
            .request(
                "POST",
                "/v1/batch",
                &[("content-type", "application/x-ndjson")],
                RequestBody::from(body.clone().into_bytes()),
            )
            .await?;
        reply.bytes().await?;
    }
    row(
        &format!("http: load {n} events (batches of 10,000, sync none)"),
        &format_rate(n as f64 / started.elapsed().as_secs_f64()),
        None,
        None,
        None,
    );
    Ok(())
}

async fn catch_up(client: &Client, n: usize) -> Result<f64> {
    let mut connection = client.connect().await?;
    let started = Instant::now();
    let mut response = connection.request("GET", "/v1/events?topic=read", &[], RequestBody::from(Vec::new())).await?;
    let mut lines = 0usize;
    while let Some(chunk) = response.chunk().await? {
        lines += chunk.iter().filter(|&&b| b == b'\n').count();
    }
    let took = started.elapsed();
    anyhow::ensure!(lines == n, "read {lines} events, expected {n}");
    Ok(n as f64 / took.as_secs_f64())
}

async fn follow_latency(client: &Client, n: usize) -> Result<Samples> {
    let mut follower = client.connect().await?;
    let mut stream =
        follower.request("GET", "/v1/events?topic=lat&follow=true", &[], RequestBody::from(Vec::new())).await?;
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let (warm_tx, warm_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        // The first event only warms the stream up (the first delivery
        // after a follow starts is measured separately, not here).
        let mut warm = Some(warm_tx);
        let mut samples = Samples::default();
        let mut seen = 0;
        while seen < n {
            let Some(chunk) = stream.chunk().await? else { break };
            for _ in chunk.iter().filter(|&&b| b == b'\n') {
                if let Some(warm) = warm.take() {
                    let _ = warm.send(());
                    continue;
                }
                let sent = sent_rx.recv().await.context("sent")?;
                samples.push(sent.elapsed());
                seen += 1;
            }
        }
        Ok::<_, anyhow::Error>(samples)
    });
    let mut writer = client.connect().await?;
    let started = Instant::now();
    writer.request("POST", "/v1/topics/lat/events", &[], RequestBody::from(PAYLOAD.to_vec())).await?.bytes().await?;
    warm_rx.await.context("the follower saw nothing")?;
    let first = started.elapsed();
    for _ in 0..n {
        let sent = Instant::now();
        sent_tx.send(sent)?;
        writer
            .request("POST", "/v1/topics/lat/events", &[], RequestBody::from(PAYLOAD.to_vec()))
            .await?
            .bytes()
            .await?;
    }
    let samples = reader.await??;
    row("http: first event to a new follower", &format_duration(first), None, None, None);
    Ok(samples)
}
