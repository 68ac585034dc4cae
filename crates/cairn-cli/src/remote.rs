//! Commands through a running server (its Unix socket, or `--remote` over
//! TCP), printing exactly what the local path prints: the server sends the
//! same NDJSON lines, and JSON arrays are printed one element per line, as
//! the server wrote each.

use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use cairn_client::{Client, RequestBody, Response, encode};
use serde_json::value::RawValue;

use crate::args::{
    AppendArgs, CasCommand, CatArgs, Command, ConsumerCommand, ProcCommand, SnapshotCommand, TokenCommand, UserCommand,
};

/// Runs `command` through a server; `login_password` is the password a
/// `--user` logged in with (a user changing its own password gives it as
/// the old one).
pub fn run(client: Client, command: Command, login_password: Option<String>) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(dispatch(client, command, login_password))
}

async fn dispatch(client: Client, command: Command, login_password: Option<String>) -> Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut code = ExitCode::SUCCESS;
    match command {
        Command::Serve(_) => bail!("a server is already running on this store"),
        Command::Append(args) => append(&client, &mut out, args).await?,
        Command::Cat(args) => cat(&client, &mut out, args).await?,
        Command::Get { id, content } => {
            let path = format!("/v1/events/{}{}", encode(&id), if content { "?content=true" } else { "" });
            line(&mut out, &client.request("GET", &path, &[], empty()).await?.bytes().await?)?;
        }
        Command::Head { topic, content } => {
            let path =
                format!("/v1/events?topic={}&last=1{}", encode(&topic), if content { "&content=true" } else { "" });
            let body = client.request("GET", &path, &[], empty()).await?.bytes().await?;
            if body.is_empty() {
                bail!("topic {topic} has no events");
            }
            out.write_all(&body)?;
        }
        Command::Topics => lines(&mut out, client.request("GET", "/v1/topics", &[], empty()).await?).await?,
        Command::Rm { id } => {
            client.request("DELETE", &format!("/v1/events/{}", encode(&id)), &[], empty()).await?;
        }
        Command::Cas(CasCommand::Put) => {
            let reply: serde_json::Value =
                client.request("POST", "/v1/cas", &[], stdin_bytes()?.into()).await?.json().await?;
            let hash = reply.get("hash").and_then(|hash| hash.as_str()).context("the server's reply has no hash")?;
            writeln!(out, "{hash}")?;
        }
        Command::Cas(CasCommand::Get { hash }) => {
            out.write_all(
                &client.request("GET", &format!("/v1/cas/{}", encode(&hash)), &[], empty()).await?.bytes().await?,
            )?;
        }
        Command::Consumer(command) => consumer(&client, &mut out, command).await?,
        Command::Proc(command) => proc(&client, &mut out, command).await?,
        Command::State { topic, key, rev } => match key {
            Some(key) => {
                let mut path = format!("/v1/state/{}/{}", encode(&topic), encode(&key));
                if let Some(rev) = rev {
                    path.push_str(&format!("?rev={rev}"));
                }
                line(&mut out, &client.request("GET", &path, &[], empty()).await?.bytes().await?)?;
            }
            None => {
                let mut after: Option<String> = None;
                loop {
                    let mut path = format!("/v1/state/{}?limit=1000", encode(&topic));
                    if let Some(after) = &after {
                        path.push_str(&format!("&after={}", encode(after)));
                    }
                    let body = client.request("GET", &path, &[], empty()).await?.bytes().await?;
                    let page: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
                    for state in &page {
                        line(&mut out, state.to_string().as_bytes())?;
                    }
                    match page.last().and_then(|last| last["key"].as_str()) {
                        Some(last) if page.len() == 1000 => after = Some(last.to_owned()),
                        _ => break,
                    }
                }
            }
        },
        Command::Backup { dir } => {
            // The server writes the copy: DIR is a path on its machine.
            let dir = std::path::absolute(&dir)?;
            let dir = dir.to_str().ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", dir.display()))?;
            if std::io::stderr().is_terminal() {
                eprint!("backup: the server is copying the store to {dir}…");
            }
            let body = client.request("POST", &format!("/v1/backup?dir={}", encode(dir)), &[], empty()).await?;
            let body = body.bytes().await?;
            if std::io::stderr().is_terminal() {
                eprint!("\r\x1b[K");
            }
            line(&mut out, &body)?;
        }
        Command::Compact { ratio } => {
            let body = client.request("POST", &format!("/v1/compact?ratio={ratio}"), &[], empty()).await?;
            line(&mut out, &body.bytes().await?)?;
        }
        Command::Verify => {
            let body = client.request("POST", "/v1/verify", &[], empty()).await?.bytes().await?;
            let report: serde_json::Value = serde_json::from_slice(&body)?;
            line(&mut out, &body)?;
            if report
                .get("problems")
                .and_then(|problems| problems.as_array())
                .is_some_and(|problems| !problems.is_empty())
            {
                code = ExitCode::FAILURE;
            }
        }
        Command::Export { pattern } => {
            let path = format!("/v1/events?topic={}&content=true", encode(&pattern));
            copy(&mut out, client.request("GET", &path, &[], empty()).await?, None).await?;
            if pattern == ">" {
                copy(&mut out, client.request("GET", "/v1/export/extras", &[], empty()).await?, None).await?;
            }
        }
        Command::Import => {
            let (sender, receiver) = tokio::sync::mpsc::channel(4);
            std::thread::spawn(move || {
                let mut stdin = std::io::stdin().lock();
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = stdin.read(&mut buf) {
                    if n == 0 || sender.blocking_send(bytes::Bytes::copy_from_slice(&buf[..n])).is_err() {
                        break;
                    }
                }
            });
            let headers = [("content-type", "application/x-ndjson")];
            line(
                &mut out,
                &client.request("POST", "/v1/import", &headers, RequestBody::Stream(receiver)).await?.bytes().await?,
            )?;
        }
        Command::User(command) => user(&client, &mut out, command, login_password).await?,
    }
    out.flush()?;
    Ok(code)
}

fn empty() -> RequestBody {
    RequestBody::Full(bytes::Bytes::new())
}

fn stdin_bytes() -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).context("read stdin")?;
    Ok(bytes)
}

/// Prints a JSON object as one line.
fn line(out: &mut impl std::io::Write, json: &[u8]) -> Result<()> {
    out.write_all(json)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Prints a JSON array one element per line, each as the server wrote it.
async fn lines(out: &mut impl std::io::Write, response: Response) -> Result<()> {
    let body = response.bytes().await?;
    let items: Vec<Box<RawValue>> = serde_json::from_slice(&body).context("the server's reply is not a JSON array")?;
    for item in items {
        line(out, item.get().as_bytes())?;
    }
    Ok(())
}

/// Copies a streamed body to `out` as it arrives, until it ends or SIGINT.
async fn copy(out: &mut impl std::io::Write, mut response: Response, interrupt: Option<()>) -> Result<()> {
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let chunk = if interrupt.is_some() {
            tokio::select! {
                _ = &mut interrupted => return Ok(()),
                chunk = response.chunk() => chunk?,
            }
        } else {
            response.chunk().await?
        };
        let Some(chunk) = chunk else { return Ok(()) };
        if let Some(error) = stream_error(&chunk) {
            out.write_all(&chunk[..chunk.len() - error.len()])?;
            out.flush()?;
            let json: serde_json::Value = serde_json::from_slice(error)?;
            bail!("{}", json.pointer("/error/message").and_then(|m| m.as_str()).unwrap_or("the stream failed"));
        }
        out.write_all(&chunk)?;
        out.flush()?;
    }
}

/// The error frame ending a chunk, if the stream failed.
fn stream_error(chunk: &[u8]) -> Option<&[u8]> {
    let body = chunk.strip_suffix(b"\n")?;
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |at| at + 1);
    let last = &body[start..];
    last.starts_with(br#"{"error":"#).then_some(&chunk[start..])
}

async fn append(client: &Client, out: &mut impl std::io::Write, args: AppendArgs) -> Result<()> {
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(key) = &args.key {
        headers.push(("idempotency-key", key));
    }
    if args.batch {
        let mut body = Vec::new();
        for line in std::io::stdin().lock().lines() {
            let line = line.context("read stdin")?;
            body.extend_from_slice(line.as_bytes());
            body.push(b'\n');
        }
        headers.push(("content-type", "application/x-ndjson"));
        return lines(out, client.request("POST", "/v1/batch", &headers, body.into()).await?).await;
    }
    let topic = args.topic.as_deref().context("a topic is required without --batch")?;
    for (name, value) in [
        ("cairn-type", &args.kind),
        ("cairn-meta", &args.meta),
        ("cairn-expect", &args.expect),
        ("cairn-ttl", &args.ttl),
    ] {
        if let Some(value) = value {
            headers.push((name, value));
        }
    }
    if args.chunked {
        let (send, receive) = tokio::sync::mpsc::channel(4);
        let mut pieces = crate::commands::stdin_pieces();
        tokio::spawn(async move {
            while let Some(piece) = pieces.recv().await {
                let piece = match piece {
                    Ok(piece) => piece,
                    Err(error) => {
                        // Ending the body now would store what was read as
                        // complete: leave, so the server records an abort.
                        eprintln!("cairn: error: read stdin: {error}");
                        std::process::exit(1);
                    }
                };
                if send.send(bytes::Bytes::from(piece)).await.is_err() {
                    return;
                }
            }
        });
        let path = format!("/v1/topics/{}/events?chunked=true", encode(topic));
        let response = client.request("POST", &path, &headers, RequestBody::Stream(receive)).await?;
        return line(out, &response.bytes().await?);
    }
    let body = if args.empty { Vec::new() } else { stdin_bytes()? };
    let path = format!("/v1/topics/{}/events", encode(topic));
    line(out, &client.request("POST", &path, &headers, body.into()).await?.bytes().await?)
}

async fn cat(client: &Client, out: &mut impl std::io::Write, args: CatArgs) -> Result<()> {
    let mut query = vec![format!("topic={}", encode(&args.pattern))];
    let mut add = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            query.push(format!("{name}={}", encode(&value)));
        }
    };
    add("after", args.after.clone());
    add("from_seq", args.from_seq.map(|n| n.to_string()));
    add("last", args.last.map(|n| n.to_string()));
    add("limit", args.limit.map(|n| n.to_string()));
    add("pulse", args.pulse.map(|n| n.to_string()));
    for (name, flag) in
        [("reverse", args.reverse), ("follow", args.follow), ("threshold", args.threshold), ("content", args.content)]
    {
        if flag {
            query.push(format!("{name}=true"));
        }
    }
    let base = match &args.consumer {
        Some(name) => format!("/v1/consumers/{}/events", encode(name)),
        None => "/v1/events".to_owned(),
    };
    let path = format!("{base}?{}", query.join("&"));
    let response = client.request("GET", &path, &[], empty()).await?;
    copy(out, response, args.follow.then_some(())).await
}

async fn consumer(client: &Client, out: &mut impl std::io::Write, command: ConsumerCommand) -> Result<()> {
    match command {
        ConsumerCommand::Ack { name, id } => {
            client.request("PUT", &format!("/v1/consumers/{}?id={}", encode(&name), encode(&id)), &[], empty()).await?;
        }
        ConsumerCommand::Show { name } => {
            line(
                out,
                &client
                    .request("GET", &format!("/v1/consumers/{}", encode(&name)), &[], empty())
                    .await?
                    .bytes()
                    .await?,
            )?;
        }
        ConsumerCommand::Snapshot(SnapshotCommand::Put { name, id }) => {
            let path = format!("/v1/consumers/{}/snapshot?id={}", encode(&name), encode(&id));
            client.request("PUT", &path, &[], stdin_bytes()?.into()).await?;
        }
        ConsumerCommand::Snapshot(SnapshotCommand::Get { name }) => {
            let path = format!("/v1/consumers/{}/snapshot", encode(&name));
            out.write_all(&client.request("GET", &path, &[], empty()).await?.bytes().await?)?;
        }
        ConsumerCommand::List => lines(out, client.request("GET", "/v1/consumers", &[], empty()).await?).await?,
        ConsumerCommand::Rm { name } => {
            client.request("DELETE", &format!("/v1/consumers/{}", encode(&name)), &[], empty()).await?;
        }
    }
    Ok(())
}

async fn user(
    client: &Client,
    out: &mut impl std::io::Write,
    command: UserCommand,
    login_password: Option<String>,
) -> Result<()> {
    match command {
        UserCommand::Add { name, read, write, admin } => {
            let body = serde_json::json!({
                "name": name,
                "password": crate::commands::password()?,
                "read": (!read.is_empty()).then_some(read),
                "write": (!write.is_empty()).then_some(write),
                "admin": admin,
            });
            let headers = [("content-type", "application/json")];
            line(
                out,
                &client
                    .request("POST", "/v1/users", &headers, serde_json::to_vec(&body)?.into())
                    .await?
                    .bytes()
                    .await?,
            )?;
        }
        UserCommand::Passwd { name } => {
            // Logged in with a password: that is the old one, the new one is on stdin.
            let body = match login_password {
                Some(old) => serde_json::json!({ "password": crate::commands::stdin_password()?, "old_password": old }),
                None => serde_json::json!({ "password": crate::commands::password()? }),
            };
            let path = format!("/v1/users/{}/password", encode(&name));
            client
                .request("PUT", &path, &[("content-type", "application/json")], serde_json::to_vec(&body)?.into())
                .await?;
        }
        UserCommand::Rm { name } => {
            client.request("DELETE", &format!("/v1/users/{}", encode(&name)), &[], empty()).await?;
        }
        UserCommand::List => lines(out, client.request("GET", "/v1/users", &[], empty()).await?).await?,
        UserCommand::Token(TokenCommand::Issue { name }) => {
            let path = format!("/v1/users/{}/tokens", encode(&name));
            line(out, &client.request("POST", &path, &[], empty()).await?.bytes().await?)?;
        }
        UserCommand::Token(TokenCommand::Revoke { id }) => {
            client.request("DELETE", &format!("/v1/tokens/{}", encode(&id)), &[], empty()).await?;
        }
    }
    Ok(())
}

async fn proc(client: &Client, out: &mut impl std::io::Write, command: ProcCommand) -> Result<()> {
    match command {
        ProcCommand::Create(args) => {
            let body = RequestBody::Full(bytes::Bytes::from(args.registration()?));
            let path = format!("/v1/procs/{}", encode(&args.name));
            let response = client.request("POST", &path, &[("content-type", "application/json")], body).await?;
            line(out, &response.bytes().await?)?;
        }
        ProcCommand::Ls => lines(out, client.request("GET", "/v1/procs", &[], empty()).await?).await?,
        ProcCommand::Logs { name, follow } => {
            let path =
                format!("/v1/procs/{}/logs?content=true{}", encode(&name), if follow { "&follow=true" } else { "" });
            let response = client.request("GET", &path, &[], empty()).await?;
            copy(out, response, follow.then_some(())).await?;
        }
        ProcCommand::Term { name } => {
            client.request("DELETE", &format!("/v1/procs/{}", encode(&name)), &[], empty()).await?;
        }
    }
    Ok(())
}
