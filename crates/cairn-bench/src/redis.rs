//! The Redis protocol, side by side with a real Redis in the same run:
//! `redis-benchmark` XADD at 1 client, 50 clients, and 50 clients with
//! pipeline 16; an XRANGE read of 1 million entries with the `redis` crate;
//! and XREAD BLOCK publish-to-reader latency. Redis runs twice, with AOF
//! `appendfsync always` (durable, like cairn's default) and with no
//! persistence; cairn runs with sync `always`. The disk's own fsync rate is
//! measured in the same run for the 1-client ratio.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::http::Running;
use crate::measure::{Samples, format_rate, row};
use crate::scenarios::Bench;

/// Requests per redis-benchmark run, per client count.
const REQUESTS_1_CLIENT: u64 = 20_000;
const REQUESTS_MANY: u64 = 200_000;
/// Entries read back by the XRANGE benchmark.
const RANGE_ENTRIES: u64 = 1_000_000;
/// Publish-to-reader round trips measured.
const LATENCY_SAMPLES: usize = 2_000;

/// One server under test.
struct Peer {
    name: &'static str,
    addr: SocketAddr,
    _process: Option<KillOnDrop>,
    _cairn: Option<Running>,
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_cairn(store: &Path) -> Result<Peer> {
    let args = cairn_server::ServeArgs { resp: Some("127.0.0.1:0".parse()?), ..cairn_server::ServeArgs::default() };
    let cairn = Running::start_with(args, store.to_owned(), "always")?;
    let addr = cairn.addresses.iter().find_map(|a| a.strip_prefix("redis://")).context("cairn has no Redis port")?;
    Ok(Peer { name: "cairn (sync always)", addr: addr.parse()?, _process: None, _cairn: Some(cairn) })
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `redis-server` on a free port in `dir`, durable (AOF always) or not.
fn start_redis(dir: &Path, durable: bool) -> Result<Peer> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let mut command = Command::new("redis-server");
    command.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""]);
    command.arg("--dir").arg(dir);
    if durable {
        command.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        command.args(["--appendonly", "no"]);
    }
    let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("start redis-server")?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let name = if durable { "redis (AOF always)" } else { "redis (no persistence)" };
    Ok(Peer { name, addr, _process: Some(KillOnDrop(child)), _cairn: None })
}

/// Installs the Debian packages the comparison needs, if they are missing.
fn ensure_redis() -> Result<()> {
    let have = |tool: &str| Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if have("redis-server") && have("redis-benchmark") {
        return Ok(());
    }
    eprintln!("installing redis-server and redis-tools (apt-get) for the side-by-side run");
    let status = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools",
        ])
        .status()?;
    if !status.success() {
        bail!("could not install redis-server; install it (Debian: redis-server) and run again");
    }
    Ok(())
}

/// Runs redis-benchmark's XADD against `addr`; returns requests/s and p99 ms.
fn redis_benchmark(addr: SocketAddr, clients: u32, pipeline: u32, requests: u64) -> Result<(f64, f64)> {
    let value = "v".repeat(100);
    let output = Command::new("redis-benchmark")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-c", &clients.to_string(), "-P", &pipeline.to_string(), "-n", &requests.to_string(), "--csv"])
        .args(["XADD", "bench", "*", "f", &value])
        .output()
        .context("run redis-benchmark")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().last().context("redis-benchmark printed nothing")?;
    let fields: Vec<f64> =
        line.split(',').skip(1).map(|f| f.trim_matches('"').parse::<f64>().unwrap_or(f64::NAN)).collect();
    if fields.len() < 6 || !fields[0].is_finite() {
        bail!("unexpected redis-benchmark output: {text}");
    }
    Ok((fields[0], fields[5]))
}

/// Fills `key` with `n` entries through pipelined XADDs.
fn fill(con: &mut redis::Connection, key: &str, n: u64) -> Result<()> {
    let value = "v".repeat(100);
    let mut sent = 0;
    while sent < n {
        let mut pipe = redis::pipe();
        for _ in 0..(n - sent).min(1000) {
            pipe.cmd("XADD").arg(key).arg("*").arg("f").arg(&value).ignore();
            sent += 1;
        }
        pipe.query::<()>(con)?;
    }
    Ok(())
}

/// Reads every entry of `key` in pages of 10,000 (as a client would);
/// returns entries per second.
fn read_all(con: &mut redis::Connection, key: &str) -> Result<(u64, f64)> {
    let started = Instant::now();
    let mut start = "-".to_owned();
    let mut total = 0u64;
    loop {
        let page: redis::streams::StreamRangeReply =
            redis::cmd("XRANGE").arg(key).arg(&start).arg("+").arg("COUNT").arg(10_000).query(con)?;
        let Some(last) = page.ids.last() else { break };
        total += page.ids.len() as u64;
        start = format!("({}", last.id);
    }
    Ok((total, total as f64 / started.elapsed().as_secs_f64()))
}

/// XADD on one connection, XREAD BLOCK on another: time from sending the
/// XADD until the reader has the entry.
fn latency(addr: SocketAddr) -> Result<Samples> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let mut writer = client.get_connection()?;
    let (go, went) = std::sync::mpsc::channel::<Instant>();
    let (done, finished) = std::sync::mpsc::channel::<Duration>();
    let mut reader = client.get_connection()?;
    let reader_thread = std::thread::spawn(move || -> Result<()> {
        let mut last = "$".to_owned();
        for _ in 0..LATENCY_SAMPLES {
            let reply: redis::streams::StreamReadReply = redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(10_000)
                .arg("STREAMS")
                .arg("latency")
                .arg(&last)
                .query(&mut reader)?;
            let received = Instant::now();
            let id = reply.keys.first().and_then(|k| k.ids.last()).context("XREAD timed out")?.id.clone();
            last = id;
            let sent = went.recv()?;
            done.send(received.saturating_duration_since(sent))?;
        }
        Ok(())
    });
    let mut samples = Samples::default();
    for _ in 0..LATENCY_SAMPLES {
        // Let the reader block first.
        std::thread::sleep(Duration::from_micros(300));
        let sent = Instant::now();
        redis::cmd("XADD").arg("latency").arg("*").arg("f").arg("v").query::<String>(&mut writer)?;
        go.send(sent)?;
        samples.push(finished.recv()?);
    }
    reader_thread.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok(samples)
}

impl Bench {
    pub fn redis(&self) -> Result<()> {
        ensure_redis()?;
        let fsync_rate = self.fsync_rate()?;
        row("disk: write + fdatasync, 1 event", &format_rate(fsync_rate), None, None, None);
        let peers = [
            start_cairn(&self.fresh_dir("redis-cairn"))?,
            start_redis(&self.fresh_dir("redis-aof"), true)?,
            start_redis(&self.fresh_dir("redis-none"), false)?,
        ];
        let loads: [(&str, u32, u32, u64); 3] = [
            ("XADD, 1 client", 1, 1, REQUESTS_1_CLIENT),
            ("XADD, 50 clients", 50, 1, REQUESTS_MANY),
            ("XADD, 50 clients, pipeline 16", 50, 16, REQUESTS_MANY * 4),
        ];
        for (name, clients, pipeline, requests) in loads {
            let mut results = Vec::new();
            for peer in &peers {
                let requests = if peer.name.contains("AOF") && clients == 1 { requests / 4 } else { requests };
                results.push(redis_benchmark(peer.addr, clients, pipeline, requests)?);
            }
            let unpersisted = results[2].0;
            for (peer, (rate, p99)) in peers.iter().zip(&results) {
                let result = format!("{} (p99 {p99:.2} ms)", format_rate(*rate));
                let baseline = if clients == 1 { fsync_rate } else { unpersisted };
                row(&format!("{}: {name}", peer.name), &result, None, Some(baseline), Some(*rate));
            }
        }
        let mut range_rates = Vec::new();
        for peer in &peers {
            let mut con = redis::Client::open(format!("redis://{}/", peer.addr))?.get_connection()?;
            fill(&mut con, "range", RANGE_ENTRIES)?;
            let (total, rate) = read_all(&mut con, "range")?;
            if total != RANGE_ENTRIES {
                bail!("{} returned {total} of {RANGE_ENTRIES} entries", peer.name);
            }
            range_rates.push(rate);
        }
        for (peer, rate) in peers.iter().zip(&range_rates) {
            let name = format!("{}: XRANGE of 1M entries (pages of 10k)", peer.name);
            row(&name, &format_rate(*rate), None, Some(range_rates[2]), Some(*rate));
        }
        for peer in &peers {
            let mut samples = latency(peer.addr)?;
            row(&format!("{}: XADD → XREAD BLOCK", peer.name), "-", Some(&mut samples), None, None);
        }
        Ok(())
    }
}
