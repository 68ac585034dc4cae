//! Keyed transactions and the evt hub, in a server in this process on a
//! fresh store (sync `always`), each figure next to its plain counterpart
//! in the same run:
//! - transactions/s through the hub (`evt.pub`) from 1 and 16 clients with
//!   1 and 10 actions, next to the same events appended as plain batches
//!   (`POST /v1/batch`) from as many clients;
//! - a key's state (`GET /v1/state/{topic}/{key}`) next to a point read of
//!   an event (`GET /v1/events/{id}`);
//! - publish → `evt.update` at 100 subscribers (the last of them);
//! - a satellite's reconciliation of 10,000 transactions it queued while
//!   its hub was away (a hub and a satellite, each a server in this
//!   process on its own store), next to appending the same events as
//!   plain batches of as many.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cairn_client::{Client, RequestBody};

use crate::http::Running;
use crate::measure::{Samples, format_duration, format_rate, row};
use crate::scenarios::Bench;

impl Bench {
    pub fn hub(&self) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let server = Running::start_with(
            cairn_server::ServeArgs { no_resp: true, no_procs: true, ..cairn_server::ServeArgs::default() },
            self.fresh_dir("hub"),
            "always",
        )?;
        let client = Client::unix(&server.socket);
        for (clients, acts) in [(1usize, 1usize), (1, 10), (16, 1), (16, 10)] {
            let per_client = if clients == 1 { 300 } else { 60 };
            let (hub_rate, plain_rate) = runtime.block_on(transactions(&client, clients, acts, per_client))?;
            row(
                &format!("hub: evt.pub, {clients} client(s), {acts} action(s) per transaction (actions/s)"),
                &format_rate(hub_rate),
                None,
                Some(plain_rate),
                Some(hub_rate),
            );
        }
        let (mut state, mut point) = runtime.block_on(queries(&client))?;
        let p50 = state.quantile(0.5);
        row("hub: GET /v1/state/{topic}/{key}", &p50, Some(&mut state), None, None);
        let p50 = point.quantile(0.5);
        row("hub: baseline, GET /v1/events/{id}", &p50, Some(&mut point), None, None);
        let mut fanout = runtime.block_on(fan_out(&client, 100, 50))?;
        let p50 = fanout.quantile(0.5);
        row("hub: evt.pub -> evt.update at the last of 100 subscribers", &p50, Some(&mut fanout), None, None);
        drop(server);
        self.reconciliation(&runtime, 10_000)
    }

    /// A satellite queues `n` transactions of one action while its hub is
    /// away; the hub starts, then the satellite (so it connects at once):
    /// the time until the hub took them all and the satellite replicated
    /// them. Next to the same events appended to a fresh store as plain
    /// batches of 500 (the chunk the satellite sends).
    fn reconciliation(&self, runtime: &tokio::runtime::Runtime, n: usize) -> Result<()> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let hub_args = || cairn_server::ServeArgs {
            no_resp: true,
            no_procs: true,
            no_xs: true,
            http: Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
            insecure_no_auth: true,
            ..cairn_server::ServeArgs::default()
        };
        let satellite_args = || cairn_server::ServeArgs {
            no_resp: true,
            no_procs: true,
            no_xs: true,
            satellite_of: Some(format!("ws://127.0.0.1:{port}/v1/hub")),
            satellite_topics: vec!["bench.sat.>".to_owned()],
            ..cairn_server::ServeArgs::default()
        };
        let satellite_dir = self.fresh_dir("satellite");
        let satellite = Running::start_with(satellite_args(), satellite_dir.clone(), "always")?;
        let local = Client::unix(&satellite.socket);
        runtime.block_on(queue(&local, n))?;
        drop(satellite);
        let hub = Running::start_with(hub_args(), self.fresh_dir("hub-of-satellite"), "always")?;
        let started = Instant::now();
        let satellite = Running::start_with(satellite_args(), satellite_dir, "always")?;
        let (on_hub, replicated) = runtime.block_on(async {
            let hub = Client::unix(&hub.socket);
            let local = Client::unix(&satellite.socket);
            let on_hub = until_count(&hub, "bench.sat.x", n, started).await?;
            let replicated = until_count(&local, "bench.sat.x", n, started).await?;
            anyhow::Ok((on_hub, replicated))
        })?;
        drop(satellite);
        drop(hub);
        let plain = Running::start_with(
            cairn_server::ServeArgs {
                no_resp: true,
                no_procs: true,
                no_xs: true,
                ..cairn_server::ServeArgs::default()
            },
            self.fresh_dir("plain-of-satellite"),
            "always",
        )?;
        let plain_took = runtime.block_on(plain_batches(&Client::unix(&plain.socket), n, 500))?;
        row(
            &format!("hub: satellite reconciles {n} queued transactions (on the hub; transactions/s)"),
            &format_rate(n as f64 / on_hub.as_secs_f64()),
            None,
            Some(n as f64 / plain_took.as_secs_f64()),
            Some(n as f64 / on_hub.as_secs_f64()),
        );
        row(
            &format!("hub: ... and replicated back on the satellite ({n} transactions)"),
            &format_duration(replicated),
            None,
            None,
            None,
        );
        Ok(())
    }
}

/// Queues `n` transactions on a satellite, from 16 clients.
async fn queue(client: &Client, n: usize) -> Result<()> {
    let mut tasks = Vec::new();
    for c in 0..16 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for k in (c..n).step_by(16) {
                let tx = serde_json::json!({"acts": [{"top": "bench.sat.x", "key": format!("k{k}"), "cmd": "new", "arg": {"n": k}}]});
                let response = client
                    .request(
                        "POST",
                        "/v1/transactions",
                        &[("content-type", "application/json")],
                        RequestBody::from(tx.to_string().into_bytes()),
                    )
                    .await?;
                anyhow::ensure!(response.status == 202, "not queued: {}", response.status);
                response.bytes().await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Waits until `topic` on `client`'s server holds `n` events; the time
/// since `started`.
async fn until_count(client: &Client, topic: &str, n: usize, started: Instant) -> Result<Duration> {
    loop {
        // Not found until its first event.
        if let Ok(response) =
            client.request("GET", &format!("/v1/topics/{topic}"), &[], RequestBody::from(Vec::new())).await
        {
            let head: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
            if head["count"].as_u64() == Some(n as u64) {
                return Ok(started.elapsed());
            }
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "the reconciliation did not finish in 5 minutes");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `n` events appended as plain batches of `per` from one client; the time.
async fn plain_batches(client: &Client, n: usize, per: usize) -> Result<Duration> {
    let started = Instant::now();
    for from in (0..n).step_by(per) {
        let body: String = (from..(from + per).min(n))
            .map(|k| format!("{{\"topic\":\"bench.plain.x\",\"content\":\"{{\\\"n\\\":{k}}}\"}}\n"))
            .collect();
        post_batch(client, body).await?;
    }
    Ok(started.elapsed())
}

/// One plain batch (NDJSON), appended durably.
async fn post_batch(client: &Client, body: String) -> Result<()> {
    let headers = [("content-type", "application/x-ndjson")];
    let response = client.request("POST", "/v1/batch", &headers, RequestBody::from(body.into_bytes())).await?;
    anyhow::ensure!(response.status == 201, "a plain batch failed: {}", response.status);
    response.bytes().await?;
    Ok(())
}

/// Hub transactions and plain batches of the same events, from `clients`
/// clients at once; actions (events) per second of each.
async fn transactions(client: &Client, clients: usize, acts: usize, per_client: usize) -> Result<(f64, f64)> {
    let round = unique();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut hub = client.hub().await?;
            for n in 0..per_client {
                let acts: Vec<serde_json::Value> = (0..acts)
                    .map(|a| serde_json::json!({"top": format!("bench.hub.{c}"), "key": format!("{round}-{n}-{a}"), "cmd": "new", "arg": {"n": n}}))
                    .collect();
                hub.call("evt.pub", &serde_json::json!({ "acts": acts })).await?;
            }
            hub.close().await;
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let hub_rate = (clients * per_client * acts) as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..per_client {
                let body: String = (0..acts)
                    .map(|a| {
                        format!("{{\"topic\":\"bench.plain.{c}\",\"content\":\"{{\\\"n\\\":{n},\\\"a\\\":{a}}}\"}}\n")
                    })
                    .collect();
                post_batch(&client, body).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let plain_rate = (clients * per_client * acts) as f64 / started.elapsed().as_secs_f64();
    Ok((hub_rate, plain_rate))
}

/// A key's state, next to a point read, 500 of each, alternating.
async fn queries(client: &Client) -> Result<(Samples, Samples)> {
    let mut hub = client.hub().await?;
    let res = hub
        .call("evt.pub", &serde_json::json!({"acts": [{"top": "bench.q", "key": "k", "cmd": "new", "arg": {"v": 1}}]}))
        .await?;
    let id = res["evs"][0]["id"].as_str().context("an event id")?.to_owned();
    hub.close().await;
    let (mut state, mut point) = (Samples::default(), Samples::default());
    for _ in 0..500 {
        let started = Instant::now();
        client.request("GET", "/v1/state/bench.q/k", &[], RequestBody::from(Vec::new())).await?.bytes().await?;
        state.push(started.elapsed());
        let started = Instant::now();
        client.request("GET", &format!("/v1/events/{id}"), &[], RequestBody::from(Vec::new())).await?.bytes().await?;
        point.push(started.elapsed());
    }
    Ok((state, point))
}

/// `rounds` publishes, each timed until the last of `subscribers` has its
/// update.
async fn fan_out(client: &Client, subscribers: usize, rounds: usize) -> Result<Samples> {
    let topic = format!("bench.fan.{}", unique());
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let mut hub = client.hub().await?;
        hub.call("evt.sub", &serde_json::json!({"rev": 0, "tops": [topic]})).await?;
        let arrived = arrived.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(update)) = hub.update().await {
                for ev in update["evs"].as_array().into_iter().flatten() {
                    let n = ev["arg"]["n"].as_u64().unwrap_or_default() as usize;
                    let _ = arrived.send((n, Instant::now()));
                }
            }
        }));
    }
    let mut publisher = client.hub().await?;
    let mut samples = Samples::default();
    for n in 0..rounds {
        let started = Instant::now();
        let acts = serde_json::json!({"acts": [{"top": topic, "key": format!("k{n}"), "cmd": "new", "arg": {"n": n}}]});
        publisher.call("evt.pub", &acts).await?;
        let mut got = 0;
        let mut last = started;
        while got < subscribers {
            let (m, at) = tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
                .await
                .context("an update in time")?
                .context("the subscribers ended")?;
            if m == n {
                got += 1;
                last = last.max(at);
            }
        }
        samples.push(last - started);
    }
    for task in tasks {
        task.abort();
    }
    Ok(samples)
}

/// A tag that differs between runs (keys and topics of one run).
fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos())
}
