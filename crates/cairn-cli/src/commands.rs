//! Where a command runs (a new server, a running server, or the store
//! opened here), and one function per subcommand over a local store. The
//! local path is an adapter over the same service a server runs
//! (`cairn_service::Service`, as the trusted `Principal::Local`), so a
//! command does the same thing and prints the same lines either way.

use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use cairn_service::{
    Batch, Delivered, EventId, Expect, FollowOptions, Hash, ImportRecord, NewEvent, NewUser, Pattern, Principal, Query,
    Service, ServiceOptions, StoreOptions, SyncMode, Topic, Ttl,
};

use crate::args::{
    AppendArgs, CasCommand, CatArgs, Cli, Command, ConsumerCommand, ProcCommand, SnapshotCommand, TokenCommand,
    UserCommand,
};
use crate::output;

/// Events per import call: big enough to amortise commits, small enough to
/// bound memory.
const IMPORT_CHUNK_EVENTS: usize = 1000;
/// Events read per step of a local read.
const READ_CHUNK_EVENTS: usize = 4096;

/// The trusted principal of the store's own directory.
const LOCAL: Principal = Principal::Local;

pub fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Serve(mut args) = cli.command {
        args.postgres = args.postgres.or(cli.postgres);
        let config = cairn_server::Config::resolve(*args, cli.store, cli.sync)?;
        cairn_server::run(config)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(url) = &cli.remote {
        let mut client = cairn_client::Client::tcp(url, cli.cacert.as_deref())?;
        let mut login_password = None;
        if let Some(user) = &cli.user {
            let password = std::env::var("CAIRN_PASSWORD").context("--user needs the password in $CAIRN_PASSWORD")?;
            client = client.with_basic(user, &password);
            login_password = Some(password);
        } else if let Ok(token) = std::env::var("CAIRN_TOKEN") {
            client = client.with_token(&token);
        }
        return crate::remote::run(client, cli.command, login_password);
    }
    let dir = cli.store.unwrap_or_else(|| cairn_server::STORE_DEFAULT.into());
    let socket = dir.join(cairn_server::SOCKET_NAME);
    // A server owns the store: talk to it. (A stale socket does not answer.)
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return crate::remote::run(cairn_client::Client::unix(&socket), cli.command, None);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if let Some(url) = cli.postgres {
        return runtime.block_on(postgres(&url, dir, cli.command));
    }
    let sync = SyncMode::parse(cli.sync.as_deref().unwrap_or("always"))?;
    runtime.block_on(local(dir, sync, cli.command))
}

/// Runs a command on a PostgreSQL database directly (no server runs on
/// `dir`, which holds the users and is locked meanwhile).
async fn postgres(url: &str, dir: std::path::PathBuf, command: Command) -> Result<ExitCode> {
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let _lock = cairn_service::lock_directory(&dir).with_context(|| format!("lock {}", dir.display()))?;
    let (service, _) = cairn_server::open_postgres_service(url, &dir, ServiceOptions::default()).await?;
    run_and_close(service, command).await
}

async fn local(dir: std::path::PathBuf, sync: SyncMode, command: Command) -> Result<ExitCode> {
    let options = StoreOptions { sync, ..StoreOptions::default() };
    let (service, truncated) = cairn_service::open_local(dir.clone(), options, ServiceOptions::default())
        .await
        .with_context(|| format!("open store {}", dir.display()))?;
    if let Some(cut) = &truncated {
        eprintln!(
            "cairn: recovered: cut {} bytes of an unfinished write at segment {} offset {} ({})",
            cut.bytes, cut.segment, cut.offset, cut.reason
        );
    }
    run_and_close(service, command).await
}

/// Runs `command` on `service` with buffered stdout, then closes it.
async fn run_and_close(service: Service, command: Command) -> Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = command_on(&service, &mut out, command).await;
    let flushed = out.flush();
    service.close().await;
    let code = result?;
    flushed?;
    Ok(code)
}

async fn command_on(service: &Service, out: &mut impl std::io::Write, command: Command) -> Result<ExitCode> {
    match command {
        Command::Serve(_) => unreachable!("serve returned above"),
        Command::User(command) => user(service, out, command).await?,
        Command::Append(args) => append(service, out, args).await?,
        Command::Cat(args) => return cat(service, out, args).await,
        Command::Get { id, content } => {
            let id = EventId::parse(&id)?;
            let item = service.get(&LOCAL, id, content).await?;
            output::event_line(out, &item.event, item.content.as_deref())?;
        }
        Command::Head { topic, content } => {
            let topic = Topic::new(&topic)?;
            let query = Query { last: Some(1), ..Query::new(Pattern::Exact(topic.clone())) };
            let mut items = service.read_all(&LOCAL, query, content).await?;
            let item = items.pop().with_context(|| format!("topic {topic} has no events"))?;
            output::event_line(out, &item.event, item.content.as_deref())?;
        }
        Command::Topics => {
            for info in service.topics(&LOCAL).await? {
                output::json_line(out, &info)?;
            }
        }
        Command::Rm { id } => service.remove(&LOCAL, EventId::parse(&id)?).await?,
        Command::Cas(CasCommand::Put) => {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).context("read stdin")?;
            let hash = service.cas_put(&LOCAL, bytes).await?;
            writeln!(out, "{}", hash.sri())?;
        }
        Command::Cas(CasCommand::Get { hash }) => {
            let bytes = service.cas_get(&LOCAL, &Hash::parse(&hash)?).await?;
            out.write_all(&bytes)?;
        }
        Command::Consumer(command) => consumer(service, out, command).await?,
        Command::Proc(command) => return proc(service, out, command).await,
        Command::State { topic, key, rev } => {
            let topic = Topic::new(&topic)?;
            match key {
                Some(key) => match service.key_state(&LOCAL, &topic, &key, rev).await? {
                    Some(state) => output::json_line(out, &state)?,
                    None => bail!("no key {key} on {topic}"),
                },
                None => {
                    let mut after: Option<String> = None;
                    loop {
                        let page = service.key_states(&LOCAL, &topic, after.as_deref(), 1000).await?;
                        for state in &page {
                            output::json_line(out, state)?;
                        }
                        match page.last() {
                            Some(last) if page.len() == 1000 => after = Some(last.key.clone()),
                            _ => break,
                        }
                    }
                }
            }
        }
        Command::Backup { dir } => {
            let progress = std::sync::Arc::new(cairn_service::BackupProgress::default());
            let bar = progress_bar(progress.clone());
            let report = service.backup(&LOCAL, dir, progress).await;
            bar.finish();
            output::json_line(out, &report?)?;
        }
        Command::Compact { ratio } => {
            let report = service.compact(&LOCAL, ratio).await?;
            output::json_line(out, &report)?;
        }
        Command::Verify => {
            let report = service.verify(&LOCAL).await?;
            output::json_line(out, &report)?;
            if !report.ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Export { pattern } => {
            let mut read = service.read(&LOCAL, Query::new(Pattern::parse(&pattern)?), true).await?;
            loop {
                let items = read.next(READ_CHUNK_EVENTS).await?;
                if items.is_empty() {
                    break;
                }
                for item in items {
                    output::event_line(out, &item.event, item.content.as_deref())?;
                }
            }
            if pattern == ">" {
                // The whole store: content stored on its own and state
                // records (consumers, groups, snapshots) follow the events.
                let (hashes, state) = service.export_extras(&LOCAL).await?;
                for hash in hashes {
                    if let Some(line) = service.export_content(&LOCAL, hash).await? {
                        output::json_line(out, &line)?;
                    }
                }
                for line in state {
                    output::json_line(out, &line)?;
                }
            }
        }
        Command::Import => import(service, out).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn append(service: &Service, out: &mut impl std::io::Write, args: AppendArgs) -> Result<()> {
    if let Some(key) = &args.key {
        cairn_service::check_idempotency_key(key)?;
    }
    if args.chunked {
        let topic = Topic::new(args.topic.as_deref().expect("clap requires a topic without --batch"))?;
        let event = NewEvent {
            topic: Some(topic),
            kind: args.kind,
            meta: args.meta.as_deref().map(cairn_service::check_meta).transpose()?,
            payload: None,
            ttl: args.ttl.as_deref().map(Ttl::parse).transpose()?.unwrap_or_default(),
            user: None,
        };
        let mut chunked = service.append_chunked(&LOCAL, event).await?;
        let mut pieces = stdin_pieces();
        while let Some(piece) = pieces.recv().await {
            let written = match piece {
                Ok(piece) => chunked.piece(&piece).await.map_err(anyhow::Error::from),
                Err(error) => Err(anyhow::Error::from(error).context("read stdin")),
            };
            if let Err(error) = written {
                chunked.abort(&format!("{error:#}")).await;
                return Err(error);
            }
        }
        let done = chunked.finish().await?;
        let mut json = serde_json::to_value(cairn_service::json::EventJson::from_event(&done.event, None))?;
        json["hash"] = done.hash.sri().into();
        json["size"] = done.size.into();
        return output::json_line(out, &json);
    }
    let batch = if args.batch {
        batch_from_stdin(args.key)?
    } else {
        let topic = Topic::new(args.topic.as_deref().expect("clap requires a topic without --batch"))?;
        let payload = if args.empty {
            None
        } else {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).context("read the payload from stdin")?;
            // As over HTTP: an empty body is an event without a payload.
            (!bytes.is_empty()).then_some(bytes)
        };
        let event = NewEvent {
            topic: Some(topic),
            kind: args.kind,
            meta: args.meta.as_deref().map(cairn_service::check_meta).transpose()?,
            payload,
            ttl: args.ttl.as_deref().map(Ttl::parse).transpose()?.unwrap_or_default(),
            user: None,
        };
        let expect = args.expect.as_deref().map(Expect::parse).transpose()?.unwrap_or_default();
        let mut batch = Batch::single(event, expect);
        batch.idempotency_key = args.key;
        batch
    };
    for event in service.append(&LOCAL, batch).await? {
        output::event_line(out, &event, None)?;
    }
    Ok(())
}

fn batch_from_stdin(key: Option<String>) -> Result<Batch> {
    let mut events = Vec::new();
    for (idx, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let event: cairn_service::json::BatchEventJson =
            serde_json::from_str(&line).with_context(|| format!("line {}: not a batch event", idx + 1))?;
        events.push(event);
    }
    if events.is_empty() {
        bail!("no events on stdin: give one JSON object per line");
    }
    Ok(cairn_service::json::batch_from_json(events, None, key)?)
}

async fn cat(service: &Service, out: &mut impl std::io::Write, args: CatArgs) -> Result<ExitCode> {
    let pattern = Pattern::parse(&args.pattern)?;
    let after = match (&args.consumer, &args.after) {
        (Some(name), _) => service.consumer(&LOCAL, None, name).await?.map(|cursor| cursor.acked),
        (None, Some(id)) => Some(EventId::parse(id)?),
        (None, None) => None,
    };
    let query =
        Query { pattern, after, from_seq: args.from_seq, last: args.last, limit: args.limit, reverse: args.reverse };
    if !args.follow {
        let mut read = service.read(&LOCAL, query, args.content).await?;
        loop {
            let items = read.next(READ_CHUNK_EVENTS).await?;
            if items.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            for item in items {
                output::event_line(out, &item.event, item.content.as_deref())?;
            }
        }
    }
    let options = FollowOptions {
        threshold: args.threshold,
        pulse: args.pulse.map(Duration::from_millis),
        content: args.content,
        limit: args.limit,
    };
    let mut follow = service.follow(&LOCAL, query, options).await?;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    while !follow.is_done() {
        let deliveries = tokio::select! {
            _ = &mut interrupted => return Ok(ExitCode::SUCCESS),
            deliveries = follow.next(512) => deliveries?,
        };
        for delivery in deliveries {
            match delivery {
                Delivered::Event(event, content) => output::event_line(out, &event, content.as_deref())?,
                Delivered::Threshold => output::synthetic_line(out, "cairn.threshold")?,
                Delivered::Pulse => output::synthetic_line(out, "cairn.pulse")?,
            }
        }
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn consumer(service: &Service, out: &mut impl std::io::Write, command: ConsumerCommand) -> Result<()> {
    let line = |cursor: &cairn_service::Cursor| serde_json::json!({ "name": cursor.name, "owner": cursor.owner, "acked": cursor.acked });
    match command {
        ConsumerCommand::Ack { name, id } => {
            service.consumer_ack(&LOCAL, None, &name, EventId::parse(&id)?).await?;
        }
        ConsumerCommand::Show { name } => {
            let cursor =
                service.consumer(&LOCAL, None, &name).await?.with_context(|| format!("consumer {name} not found"))?;
            let mut json = line(&cursor);
            if let Some((at, bytes)) = service.consumer_snapshot_info(&LOCAL, None, &name).await? {
                json["snapshot"] = serde_json::json!({ "at": at, "bytes": bytes });
            }
            output::json_line(out, &json)?;
        }
        ConsumerCommand::Snapshot(SnapshotCommand::Put { name, id }) => {
            // One byte past the limit is enough to be refused with a clear error.
            let mut bytes = Vec::new();
            let limit = cairn_service::SNAPSHOT_BYTES_MAX as u64 + 1;
            std::io::stdin().take(limit).read_to_end(&mut bytes).context("read the snapshot from stdin")?;
            service.consumer_snapshot_put(&LOCAL, None, &name, EventId::parse(&id)?, &bytes).await?;
        }
        ConsumerCommand::Snapshot(SnapshotCommand::Get { name }) => {
            let snapshot = service
                .consumer_snapshot(&LOCAL, None, &name)
                .await?
                .with_context(|| format!("consumer {name} has no snapshot"))?;
            out.write_all(&snapshot.bytes)?;
        }
        ConsumerCommand::List => {
            for cursor in service.consumers(&LOCAL).await? {
                output::json_line(out, &line(&cursor))?;
            }
        }
        ConsumerCommand::Rm { name } => {
            if !service.consumer_delete(&LOCAL, None, &name).await? {
                bail!("consumer {name} not found");
            }
        }
    }
    Ok(())
}

async fn import(service: &Service, out: &mut impl std::io::Write) -> Result<()> {
    let progress = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} events imported ({per_sec})")
                .expect("valid template"),
        );
        bar
    });
    let mut chunk = Vec::with_capacity(IMPORT_CHUNK_EVENTS);
    let mut extras = Vec::new();
    let mut total = 0u64;
    for (idx, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let record = Service::import_record(line.as_bytes()).with_context(|| format!("line {}", idx + 1))?;
        let ImportRecord::Event(event) = record else {
            // Content and state come after the events: write those first.
            if !chunk.is_empty() {
                total += service.import(&LOCAL, std::mem::take(&mut chunk)).await.context("import")? as u64;
            }
            extras.push(record);
            if extras.len() == IMPORT_CHUNK_EVENTS {
                service.import_extras(&LOCAL, std::mem::take(&mut extras)).await.context("import")?;
            }
            continue;
        };
        chunk.push(event);
        if chunk.len() == IMPORT_CHUNK_EVENTS {
            let events = std::mem::take(&mut chunk);
            total +=
                service.import(&LOCAL, events).await.with_context(|| format!("import up to line {}", idx + 1))? as u64;
            if let Some(bar) = &progress {
                bar.set_position(total);
            }
        }
    }
    if !chunk.is_empty() {
        total += service.import(&LOCAL, chunk).await.context("import")? as u64;
    }
    if !extras.is_empty() {
        service.import_extras(&LOCAL, extras).await.context("import")?;
    }
    service.sync(&LOCAL).await?;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    output::json_line(out, &serde_json::json!({ "imported": total }))?;
    Ok(())
}

/// A password from `$CAIRN_PASSWORD`, else the first line of stdin.
pub fn password() -> Result<String> {
    if let Ok(password) = std::env::var("CAIRN_PASSWORD") {
        return Ok(password);
    }
    stdin_password()
}

/// A password from the first line of stdin.
pub fn stdin_password() -> Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("read the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("no password: give it on stdin (first line) or in $CAIRN_PASSWORD");
    }
    Ok(password)
}

async fn user(service: &Service, out: &mut impl std::io::Write, command: UserCommand) -> Result<()> {
    // This process holds the store's lock, so it is the only writer of the users file.
    match command {
        UserCommand::Add { name, read, write, admin } => {
            let new = NewUser {
                name,
                password: password()?,
                read: (!read.is_empty()).then_some(read),
                write: (!write.is_empty()).then_some(write),
                admin,
            };
            output::json_line(out, &service.user_add(&LOCAL, new).await?)?;
        }
        UserCommand::Passwd { name } => service.user_passwd(&LOCAL, &name, &password()?, None).await?,
        UserCommand::Rm { name } => service.user_remove(&LOCAL, &name).await?,
        UserCommand::List => {
            for user in service.users_list(&LOCAL).await? {
                output::json_line(out, &user)?;
            }
        }
        UserCommand::Token(TokenCommand::Issue { name }) => {
            output::json_line(out, &service.token_issue(&LOCAL, &name, None).await?)?;
        }
        UserCommand::Token(TokenCommand::Revoke { id }) => service.token_revoke(&LOCAL, &id).await?,
    }
    Ok(())
}

/// A line on stderr showing a backup's bytes copied, redrawn five times a
/// second while it runs, when stderr is a terminal.
pub(crate) struct ProgressBar {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub(crate) fn progress_bar(progress: std::sync::Arc<cairn_service::BackupProgress>) -> ProgressBar {
    use std::sync::atomic::Ordering::Relaxed;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let thread = std::io::stderr().is_terminal().then(|| {
        let done = done.clone();
        std::thread::spawn(move || {
            let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
            while !done.load(Relaxed) {
                let (copied, total) = (progress.copied_bytes.load(Relaxed), progress.total_bytes.load(Relaxed));
                let percent = if total == 0 { 0.0 } else { 100.0 * copied as f64 / total as f64 };
                eprint!("\rbackup: {:.1} / {:.1} MiB ({percent:.0}%)   ", mib(copied), mib(total));
                std::thread::sleep(Duration::from_millis(200));
            }
            eprint!("\r\x1b[K");
        })
    });
    ProgressBar { done, thread }
}

impl ProgressBar {
    pub(crate) fn finish(mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `cairn proc` on a store no server runs: registrations are events, so
/// they are appended here and run when a server starts.
async fn proc(service: &Service, out: &mut impl std::io::Write, command: ProcCommand) -> Result<ExitCode> {
    let topic = |name: &str, what: &str| -> Result<Topic> {
        cairn_proc::check_name(name).map_err(|rule| anyhow::anyhow!("{rule}"))?;
        Ok(Topic::new(&format!("{}{name}.{what}", cairn_proc::PREFIX))?)
    };
    match command {
        ProcCommand::Create(args) => {
            let bytes = args.registration()?;
            let event = NewEvent::new(topic(&args.name, "create")?, bytes).with_type("application/json");
            let created = service.append(&LOCAL, Batch::single(event, Expect::Any)).await?;
            let json = serde_json::json!({ "name": args.name, "proc_id": created[0].id, "state": "registered" });
            output::json_line(out, &json)?;
            eprintln!("cairn: no server runs on this store; the processor starts with `cairn serve`");
        }
        ProcCommand::Ls => {
            for registration in cairn_proc::registrations(service, &LOCAL).await? {
                let state = match (&registration.spec, registration.terminated) {
                    (_, true) => "terminated",
                    (Err(_), false) => "invalid",
                    (Ok(_), false) => "not running",
                };
                let mut json = serde_json::json!({
                    "name": registration.name,
                    "proc_id": registration.proc_id,
                    "state": state,
                    "user": registration.user,
                });
                if let Ok(spec) = &registration.spec {
                    json["kind"] = spec.kind.as_str().into();
                    json["run"] = spec.argv.clone().into();
                }
                output::json_line(out, &json)?;
            }
        }
        ProcCommand::Logs { name, follow } => {
            cairn_proc::check_name(&name).map_err(|rule| anyhow::anyhow!("{rule}"))?;
            let args = crate::args::CatArgs {
                pattern: format!("{name}.log"),
                after: None,
                from_seq: None,
                last: None,
                limit: None,
                reverse: false,
                follow,
                threshold: false,
                pulse: None,
                content: true,
                consumer: None,
            };
            return cat(service, out, args).await;
        }
        ProcCommand::Term { name } => {
            let event = NewEvent { topic: Some(topic(&name, "term")?), ..NewEvent::default() };
            service.append(&LOCAL, Batch::single(event, Expect::Any)).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Stdin in pieces as it arrives (a read each), from a thread of its own.
pub(crate) fn stdin_pieces() -> tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (send, receive) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if send.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    let _ = send.blocking_send(Err(error));
                    return;
                }
            }
        }
    });
    receive
}
