//! Processors (`cairn proc`) in a server in this process, next to the same
//! programs run without cairn in the same round:
//! - a handler's throughput, events in and out with the checkpointed
//!   commit (each input's output and the position past it in one durable
//!   batch), next to the program fed the same lines through a pipe;
//! - a command's latency from the durable append of a call to its
//!   response reaching a follower, next to spawning the same program with
//!   the call on stdin;
//! - a request to the app served from the store (`--http-app`) through a
//!   handler (its request and its response each a durable commit), next
//!   to one durable append through the HTTP API.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use cairn_client::{Client, RequestBody};

use crate::http::Running;
use crate::measure::{Samples, format_rate, row};
use crate::scenarios::Bench;

/// Inputs per handler round.
const HANDLER_EVENTS: usize = 20_000;
/// Calls per command round.
const CALLS: usize = 200;
/// The handler: one output per input, then the empty line that ends it
/// (mawk reads line by line only with `-W interactive`).
const HANDLER: &[&str] =
    &["awk", "-W", "interactive", "{ print \"{\\\"content\\\":\\\"seen\\\"}\"; print \"\"; fflush() }"];
/// The command: reads its call, answers.
const COMMAND: &str = "cat > /dev/null; echo answered";

impl Bench {
    pub fn procs(&self, rounds: usize) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let (mut cairn_rates, mut raw_rates) = (Vec::new(), Vec::new());
        let (mut latency, mut spawn) = (Samples::default(), Samples::default());
        let (mut served, mut appended) = (Samples::default(), Samples::default());
        for round in 0..rounds {
            let server = Running::start_with(
                cairn_server::ServeArgs {
                    no_resp: true,
                    http_app: Some("127.0.0.1:0".parse()?),
                    ..cairn_server::ServeArgs::default()
                },
                self.fresh_dir(&format!("procs-{round}")),
                "always",
            )?;
            let client = Client::unix(&server.socket);
            raw_rates.push(raw_handler()?);
            cairn_rates.push(runtime.block_on(handler(&client))?);
            spawn.extend(raw_command()?);
            latency.extend(runtime.block_on(command(&client))?);
            let app = server
                .addresses
                .iter()
                .find_map(|address| address.strip_prefix("app:"))
                .context("the app's address")?
                .to_owned();
            let (app_samples, append_samples) = runtime.block_on(http_app(&client, &app))?;
            served.extend(app_samples);
            appended.extend(append_samples);
        }
        let median = |rates: &mut Vec<f64>| {
            rates.sort_by(f64::total_cmp);
            rates[rates.len() / 2]
        };
        let (cairn_rate, raw_rate) = (median(&mut cairn_rates), median(&mut raw_rates));
        row(
            &format!(
                "proc: handler, {HANDLER_EVENTS} events in and out, each output with its position durably (awk; median of {rounds})"
            ),
            &format_rate(cairn_rate),
            None,
            Some(raw_rate),
            Some(cairn_rate),
        );
        let p50 = latency.quantile(0.5);
        row(
            &format!("proc: command, durable call -> response at a follower ({CALLS} calls x {rounds}; sh)"),
            &p50,
            Some(&mut latency),
            None,
            None,
        );
        let p50 = spawn.quantile(0.5);
        row("proc: baseline, spawn the same program with the call on stdin", &p50, Some(&mut spawn), None, None);
        let p50 = served.quantile(0.5);
        row(
            &format!("proc: http app, GET through a handler (python3), {CALLS} requests x {rounds}"),
            &p50,
            Some(&mut served),
            None,
            None,
        );
        let p50 = appended.quantile(0.5);
        row("proc: baseline, one durable append through the HTTP API (socket)", &p50, Some(&mut appended), None, None);
        Ok(())
    }
}

/// The handler program alone: the same number of input lines through a
/// pipe, every output line read.
fn raw_handler() -> Result<f64> {
    let line = format!(
        "{{\"id\":\"03hdbvf03bhdy1adt6mz7rmzt\",\"topic\":\"in.a\",\"seq\":0,\"content\":\"{}\"}}\n",
        "x".repeat(100)
    );
    let input = line.repeat(HANDLER_EVENTS);
    let started = Instant::now();
    let mut child =
        Command::new(HANDLER[0]).args(&HANDLER[1..]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output()?;
    feeder.join().map_err(|_| anyhow::anyhow!("the feeder panicked"))??;
    let lines = output.stdout.split(|b| *b == b'\n').filter(|line| !line.is_empty()).count();
    ensure!(lines == HANDLER_EVENTS, "the handler printed {lines} outputs");
    Ok(HANDLER_EVENTS as f64 / started.elapsed().as_secs_f64())
}

async fn handler(client: &Client) -> Result<f64> {
    let spec = serde_json::json!({ "kind": "handler", "run": HANDLER, "topics": ["in.>"] });
    let reply = client.request("POST", "/v1/procs/h", &[], RequestBody::from(spec.to_string().into_bytes())).await?;
    ensure!(reply.status == 201, "registering the handler: {}", reply.status);
    let line = format!("{{\"topic\":\"in.a\",\"content\":\"{}\"}}\n", "x".repeat(100));
    let batch = line.repeat(HANDLER_EVENTS).into_bytes();
    let started = Instant::now();
    client.request("POST", "/v1/batch", &[("content-type", "application/x-ndjson")], RequestBody::from(batch)).await?;
    let deadline = started + Duration::from_secs(120);
    loop {
        let head = client.request("GET", "/v1/topics/h.out", &[], RequestBody::from(Vec::new())).await;
        if let Ok(head) = head {
            let json: serde_json::Value = serde_json::from_slice(&head.bytes().await?)?;
            if json["count"].as_u64() == Some(HANDLER_EVENTS as u64) {
                break;
            }
        }
        ensure!(Instant::now() < deadline, "the handler did not finish in 120 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = HANDLER_EVENTS as f64 / started.elapsed().as_secs_f64();
    client.request("DELETE", "/v1/procs/h", &[], RequestBody::from(Vec::new())).await?;
    Ok(rate)
}

/// Spawning the command alone with a call on stdin.
fn raw_command() -> Result<Samples> {
    let mut samples = Samples::default();
    let call = b"{\"id\":\"03hdbvf03bhdy1adt6mz7rmzt\",\"topic\":\"c.call\",\"seq\":0,\"content\":\"x\"}\n";
    for _ in 0..CALLS {
        let started = Instant::now();
        let mut child =
            Command::new("sh").args(["-c", COMMAND]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        child.stdin.take().context("stdin")?.write_all(call)?;
        let output = child.wait_with_output()?;
        ensure!(output.status.success());
        samples.push(started.elapsed());
    }
    Ok(samples)
}

async fn command(client: &Client) -> Result<Samples> {
    let spec = serde_json::json!({ "kind": "command", "sh": COMMAND });
    let reply = client.request("POST", "/v1/procs/c", &[], RequestBody::from(spec.to_string().into_bytes())).await?;
    ensure!(reply.status == 201, "registering the command: {}", reply.status);
    let mut follow =
        client.request("GET", "/v1/events?topic=c.response&follow=true", &[], RequestBody::from(Vec::new())).await?;
    let mut samples = Samples::default();
    let mut buffered = Vec::new();
    for _ in 0..CALLS {
        let started = Instant::now();
        client.request("POST", "/v1/topics/c.call/events", &[], RequestBody::from(b"x".to_vec())).await?;
        while !buffered.contains(&b'\n') {
            let chunk =
                tokio::time::timeout(Duration::from_secs(10), follow.chunk()).await??.context("the follow ended")?;
            buffered.extend_from_slice(&chunk);
        }
        let end = buffered.iter().position(|b| *b == b'\n').expect("a line");
        buffered.drain(..=end);
        samples.push(started.elapsed());
    }
    client.request("DELETE", "/v1/procs/c", &[], RequestBody::from(Vec::new())).await?;
    Ok(samples)
}

/// The app's handler: answers each request with its path.
const WEB: &str = r#"
import json, sys
for line in sys.stdin:
    request = json.loads(line)
    print(json.dumps({"topic": "http.response", "meta": {"request_id": request["id"]}, "content": request["meta"]["path"]}))
    print()
    sys.stdout.flush()
"#;

async fn http_app(client: &Client, app: &str) -> Result<(Samples, Samples)> {
    let spec = serde_json::json!({ "kind": "handler", "run": ["python3", "-c", WEB], "topics": ["http.request"] });
    let reply = client.request("POST", "/v1/procs/web", &[], RequestBody::from(spec.to_string().into_bytes())).await?;
    ensure!(reply.status == 201, "registering the app's handler: {}", reply.status);
    let web = Client::tcp(app, None)?;
    let (mut served, mut appended) = (Samples::default(), Samples::default());
    for _ in 0..CALLS {
        let started = Instant::now();
        let reply = web.request("GET", "/hello", &[], RequestBody::from(Vec::new())).await?;
        ensure!(reply.bytes().await?.as_ref() == b"/hello", "the app answered something else");
        served.push(started.elapsed());
        let started = Instant::now();
        client.request("POST", "/v1/topics/b/events", &[], RequestBody::from(b"x".to_vec())).await?;
        appended.push(started.elapsed());
    }
    client.request("DELETE", "/v1/procs/web", &[], RequestBody::from(Vec::new())).await?;
    Ok((served, appended))
}
