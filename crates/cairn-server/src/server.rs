//! A server's life: open the store, bind the sockets, append `cairn.start`,
//! serve until SIGINT/SIGTERM, then stop accepting, let open requests finish
//! (streams end cleanly), append `cairn.stop` and close the store.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result};
use cairn_store::{Batch, Expect, NewEvent, Options, Store, Topic};
use tokio::sync::watch;

use crate::auth::Users;
use crate::config::Config;
use crate::listen::{self, Listeners};
use crate::metrics::Metrics;

/// What every request handler shares.
pub(crate) struct App {
    pub(crate) store: Store,
    pub(crate) users: Users,
    pub(crate) metrics: Metrics,
    /// Redis consumer groups.
    pub(crate) groups: crate::resp::Groups,
    pub(crate) config: Config,
    /// Turns true when the server stops: streams end, connections close.
    pub(crate) stopping: watch::Receiver<bool>,
    pub(crate) started: Instant,
}

/// Runs a server until SIGINT or SIGTERM. Prints the addresses it listens
/// on (`listening on unix:<path>`, `listening on http://<addr>`) to stdout.
pub fn run(config: Config) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cairn-server")
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        // Installed before the store opens, so a signal during start-up is
        // a clean stop too.
        let signals = signals()?;
        serve(config, signals, |addresses| {
            let mut stdout = std::io::stdout().lock();
            for address in addresses {
                let _ = writeln!(stdout, "cairn: listening on {address}");
            }
            let _ = stdout.flush();
        })
        .await
    })
}

/// Serves until `stop` resolves, then shuts down cleanly. `ready` gets the
/// bound addresses (`unix:<path>`, `http://<addr>`) once clients can
/// connect. For embedding (benchmarks, tests); `run` is the CLI's entry.
pub async fn serve(config: Config, until: impl Future<Output = ()>, ready: impl FnOnce(&[String])) -> Result<()> {
    let options = Options { sync: config.sync, ..Options::default() };
    let dir = config.store.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&dir, options))
        .await?
        .with_context(|| format!("open store {}", config.store.display()))?;
    if let Some(cut) = &store.recovery_report().truncated {
        tracing::warn!(
            "recovered: cut {} bytes of an unfinished write at segment {} offset {} ({})",
            cut.bytes,
            cut.segment,
            cut.offset,
            cut.reason
        );
    }
    let users = Users::open(&config.store)?;
    let unix = listen::bind_unix(&config.socket)?;
    let mut addresses = vec![format!("unix:{}", config.socket.display())];
    let tcp = match config.http {
        None => None,
        Some(addr) => {
            let listener = listen::bind_tcp(addr).with_context(|| format!("listen on {addr}"))?;
            let bound = listener.local_addr()?;
            let tls = match &config.tls {
                Some((cert, key)) => Some(listen::tls_acceptor(cert, key)?),
                None => None,
            };
            addresses.push(format!("{}://{bound}", if tls.is_some() { "https" } else { "http" }));
            if config.insecure_no_auth {
                tracing::warn!(
                    "serving {bound} WITHOUT AUTHENTICATION (--insecure-no-auth): anyone who reaches it may read and write"
                );
            } else if users.is_empty() {
                tracing::warn!("no users yet: TCP clients cannot authenticate until `cairn user add` creates one");
            }
            Some((listener, tls))
        }
    };
    let resp = match config.resp {
        None => None,
        Some(addr) => {
            let listener = listen::bind_tcp(addr)
                .with_context(|| format!("listen for the Redis protocol on {addr} (--resp ADDR or --no-resp)"))?;
            let bound = listener.local_addr()?;
            addresses.push(format!("redis://{bound}"));
            if config.resp_require_auth && users.is_empty() {
                tracing::warn!("the Redis port requires AUTH but there are no users yet (`cairn user add`)");
            }
            Some(listener)
        }
    };
    let groups = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || crate::resp::Groups::load(&store)).await?.context("load consumer groups")?
    };
    let (stop, stopping) = watch::channel(false);
    let app = Arc::new(App {
        store,
        users,
        metrics: Metrics::default(),
        groups,
        config,
        stopping: stopping.clone(),
        started: Instant::now(),
    });
    lifecycle_event(
        &app,
        "cairn.start",
        serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "pid": std::process::id(), "listen": addresses }),
    )
    .await?;

    let router = crate::http::router(app.clone());
    let resp_accepting =
        resp.map(|listener| tokio::spawn(crate::resp::accept(app.clone(), listener, stopping.clone())));
    let accepting = tokio::spawn(listen::accept(app.clone(), router, Listeners { unix, tcp }, stopping));
    ready(&addresses);
    until.await;
    tracing::info!("stopping: finishing open requests");
    let _ = stop.send(true);
    accepting.await?;
    if let Some(resp_accepting) = resp_accepting {
        resp_accepting.await?;
    }
    lifecycle_event(&app, "cairn.stop", serde_json::json!({ "pid": std::process::id() })).await?;
    let _ = std::fs::remove_file(&app.config.socket);
    // Streams that outlived the grace period may still hold the store; the
    // last handle to go closes it (flushing the index) either way.
    let store = app.store.clone();
    drop(app);
    tokio::task::spawn_blocking(move || {
        if let Err(error) = store.close() {
            tracing::debug!("store closes with its last handle: {error}");
        }
    })
    .await?;
    Ok(())
}

async fn lifecycle_event(app: &Arc<App>, topic: &str, meta: serde_json::Value) -> Result<()> {
    let event = NewEvent { topic: Some(Topic::new(topic)?), meta: Some(meta.to_string()), ..NewEvent::default() };
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || store.append_system(Batch::single(event, Expect::Any)))
        .await?
        .with_context(|| format!("append {topic}"))?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
fn signals() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// Resolves once the server is stopping.
pub(crate) async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopped| *stopped).await;
}
