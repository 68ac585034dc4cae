//! Where a command runs (a new server, a running server, or the store
//! opened here), and one function per subcommand over a local store.

use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use cairn_store::json::EventJson;
use cairn_store::{
    Batch, Delivery, EventId, Expect, Hash, NewEvent, Options, Pattern, Query, Store, SubscribeOptions, SyncMode,
    Topic, Ttl,
};

use crate::args::{AppendArgs, CasCommand, CatArgs, Cli, Command, ConsumerCommand, TokenCommand, UserCommand};
use crate::output;

/// Events per import call: big enough to amortise commits, small enough to
/// bound memory.
const IMPORT_CHUNK_EVENTS: usize = 1000;

pub fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Serve(args) = cli.command {
        let config = cairn_server::Config::resolve(*args, cli.store, cli.sync)?;
        cairn_server::run(config)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(url) = &cli.remote {
        let mut client = cairn_client::Client::tcp(url, cli.cacert.as_deref())?;
        if let Some(user) = &cli.user {
            let password = std::env::var("CAIRN_PASSWORD").context("--user needs the password in $CAIRN_PASSWORD")?;
            client = client.with_basic(user, &password);
        } else if let Ok(token) = std::env::var("CAIRN_TOKEN") {
            client = client.with_token(&token);
        }
        return crate::remote::run(client, cli.command);
    }
    let dir = cli.store.unwrap_or_else(|| cairn_server::STORE_DEFAULT.into());
    let socket = dir.join(cairn_server::SOCKET_NAME);
    // A server owns the store: talk to it. (A stale socket does not answer.)
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return crate::remote::run(cairn_client::Client::unix(&socket), cli.command);
    }
    let sync = SyncMode::parse(cli.sync.as_deref().unwrap_or("always"))?;
    let options = Options { sync, ..Options::default() };
    let store = Store::open(&dir, options).with_context(|| format!("open store {}", dir.display()))?;
    if let Some(cut) = &store.recovery_report().truncated {
        eprintln!(
            "cairn: recovered: cut {} bytes of an unfinished write at segment {} offset {} ({})",
            cut.bytes, cut.segment, cut.offset, cut.reason
        );
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let code = match cli.command {
        Command::Serve(_) => unreachable!("serve returned above"),
        Command::User(command) => user(&store, &mut out, command)?,
        Command::Append(args) => append(&store, &mut out, args)?,
        Command::Cat(args) => cat(&store, &mut out, args)?,
        Command::Get { id, content } => {
            let id = EventId::parse(&id)?;
            let event = store.get(id)?.with_context(|| format!("event {id} not found"))?;
            output::event_line(&mut out, &store, &event, content)?;
            ExitCode::SUCCESS
        }
        Command::Head { topic, content } => {
            let topic = Topic::new(&topic)?;
            let query = Query { last: Some(1), ..Query::new(Pattern::Exact(topic.clone())) };
            let event =
                store.read(&query)?.next().transpose()?.with_context(|| format!("topic {topic} has no events"))?;
            output::event_line(&mut out, &store, &event, content)?;
            ExitCode::SUCCESS
        }
        Command::Topics => {
            for info in store.topics()? {
                output::json_line(&mut out, &info)?;
            }
            ExitCode::SUCCESS
        }
        Command::Rm { id } => {
            store.remove(EventId::parse(&id)?)?;
            ExitCode::SUCCESS
        }
        Command::Cas(CasCommand::Put) => {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).context("read stdin")?;
            let hash = store.cas_put(&bytes)?;
            writeln!(out, "{}", hash.sri())?;
            ExitCode::SUCCESS
        }
        Command::Cas(CasCommand::Get { hash }) => {
            let bytes = store.cas_get(&Hash::parse(&hash)?)?;
            out.write_all(&bytes)?;
            ExitCode::SUCCESS
        }
        Command::Consumer(command) => consumer(&store, &mut out, command)?,
        Command::Verify => {
            let report = store.verify()?;
            output::json_line(&mut out, &report)?;
            if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Command::Export { pattern } => {
            let query = Query::new(Pattern::parse(&pattern)?);
            for event in store.read(&query)? {
                output::event_line(&mut out, &store, &event?, true)?;
            }
            ExitCode::SUCCESS
        }
        Command::Import => import(&store, &mut out)?,
    };
    out.flush()?;
    Ok(code)
}

fn append(store: &Store, out: &mut impl std::io::Write, args: AppendArgs) -> Result<ExitCode> {
    if let Some(key) = &args.key {
        cairn_store::check_idempotency_key(key)?;
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
            meta: args.meta.as_deref().map(cairn_store::check_meta).transpose()?,
            payload,
            ttl: args.ttl.as_deref().map(Ttl::parse).transpose()?.unwrap_or_default(),
            user: None,
        };
        let expect = args.expect.as_deref().map(Expect::parse).transpose()?.unwrap_or_default();
        let mut batch = Batch::single(event, expect);
        batch.idempotency_key = args.key;
        batch
    };
    for event in store.append_batch(batch)? {
        output::event_line(out, store, &event, false)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn batch_from_stdin(key: Option<String>) -> Result<Batch> {
    let mut events = Vec::new();
    for (idx, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let event: cairn_store::json::BatchEventJson =
            serde_json::from_str(&line).with_context(|| format!("line {}: not a batch event", idx + 1))?;
        events.push(event);
    }
    if events.is_empty() {
        bail!("no events on stdin: give one JSON object per line");
    }
    Ok(cairn_store::json::batch_from_json(events, None, key)?)
}

fn cat(store: &Store, out: &mut impl std::io::Write, args: CatArgs) -> Result<ExitCode> {
    let pattern = Pattern::parse(&args.pattern)?;
    let after = match (&args.consumer, &args.after) {
        (Some(name), _) => store.consumer(name)?,
        (None, Some(id)) => Some(EventId::parse(id)?),
        (None, None) => None,
    };
    let query =
        Query { pattern, after, from_seq: args.from_seq, last: args.last, limit: args.limit, reverse: args.reverse };
    if !args.follow {
        for event in store.read(&query)? {
            output::event_line(out, store, &event?, args.content)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let options = SubscribeOptions { threshold: args.threshold, pulse: args.pulse.map(Duration::from_millis) };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut subscription = runtime.block_on(store.subscribe(&Query { limit: None, ..query }, options))?;
    let mut remaining = args.limit.unwrap_or(u64::MAX);
    runtime.block_on(async {
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        while remaining > 0 {
            let delivery = tokio::select! {
                _ = &mut interrupted => return Ok(()),
                delivery = subscription.next() => delivery?,
            };
            match delivery {
                Delivery::Event(event) => {
                    output::event_line(out, store, &event, args.content)?;
                    remaining -= 1;
                }
                Delivery::Threshold => output::synthetic_line(out, "cairn.threshold")?,
                Delivery::Pulse => output::synthetic_line(out, "cairn.pulse")?,
            }
            out.flush()?;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn consumer(store: &Store, out: &mut impl std::io::Write, command: ConsumerCommand) -> Result<ExitCode> {
    match command {
        ConsumerCommand::Ack { name, id } => store.ack(&name, EventId::parse(&id)?)?,
        ConsumerCommand::Show { name } => {
            let id = store.consumer(&name)?.with_context(|| format!("consumer {name} not found"))?;
            output::json_line(out, &serde_json::json!({ "name": name, "acked": id }))?;
        }
        ConsumerCommand::List => {
            for (name, id) in store.consumers()? {
                output::json_line(out, &serde_json::json!({ "name": name, "acked": id }))?;
            }
        }
        ConsumerCommand::Rm { name } => {
            if !store.consumer_delete(&name)? {
                bail!("consumer {name} not found");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn import(store: &Store, out: &mut impl std::io::Write) -> Result<ExitCode> {
    let progress = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} events imported ({per_sec})")
                .expect("valid template"),
        );
        bar
    });
    let mut chunk = Vec::with_capacity(IMPORT_CHUNK_EVENTS);
    let mut total = 0u64;
    for (idx, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let json: EventJson =
            serde_json::from_str(&line).with_context(|| format!("line {}: not an exported event", idx + 1))?;
        chunk.push(json.into_imported().with_context(|| format!("line {}", idx + 1))?);
        if chunk.len() == IMPORT_CHUNK_EVENTS {
            total += store
                .import(std::mem::take(&mut chunk))
                .with_context(|| format!("import up to line {}", idx + 1))?
                .len() as u64;
            if let Some(bar) = &progress {
                bar.set_position(total);
            }
        }
    }
    total += store.import(chunk).context("import")?.len() as u64;
    store.sync()?;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    output::json_line(out, &serde_json::json!({ "imported": total }))?;
    Ok(ExitCode::SUCCESS)
}

/// A password from `$CAIRN_PASSWORD`, else the first line of stdin.
pub fn password() -> Result<String> {
    if let Ok(password) = std::env::var("CAIRN_PASSWORD") {
        return Ok(password);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("read the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("no password: give it on stdin (first line) or in $CAIRN_PASSWORD");
    }
    Ok(password)
}

fn user(store: &Store, out: &mut impl std::io::Write, command: UserCommand) -> Result<ExitCode> {
    // This process holds the store's lock, so it is the only writer of the users file.
    let users = cairn_server::Users::open(store.dir())?;
    match command {
        UserCommand::Add { name, read, write, admin } => {
            let new = cairn_server::NewUser {
                name,
                password: password()?,
                read: (!read.is_empty()).then_some(read),
                write: (!write.is_empty()).then_some(write),
                admin,
            };
            output::json_line(out, &users.add(new)?)?;
        }
        UserCommand::Passwd { name } => users.passwd(&name, &password()?)?,
        UserCommand::Rm { name } => users.remove(&name)?,
        UserCommand::List => {
            for user in users.list() {
                output::json_line(out, &user)?;
            }
        }
        UserCommand::Token(TokenCommand::Issue { name }) => output::json_line(out, &users.issue_token(&name)?)?,
        UserCommand::Token(TokenCommand::Revoke { id }) => users.revoke_token(&id)?,
    }
    Ok(ExitCode::SUCCESS)
}
