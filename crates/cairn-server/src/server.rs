//! A server's life: open the store and its service, bind the sockets,
//! append `cairn.start`, serve until SIGINT/SIGTERM, then stop accepting,
//! let open requests finish (streams end cleanly), append `cairn.stop` and
//! close the store.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use cairn_service::{Service, ServiceOptions, StoreOptions};
use tokio::sync::watch;

use crate::config::Config;
use crate::listen::{self, Listeners};
use crate::metrics::Metrics;

/// What every request handler shares.
pub(crate) struct App {
    /// Every operation goes through it.
    pub(crate) service: Service,
    pub(crate) metrics: Metrics,
    pub(crate) config: Config,
    /// The HTTP address bound on TCP, if any (its names are this server's).
    pub(crate) http: Option<SocketAddr>,
    /// The Redis-protocol address bound, if any (port 0 in the settings
    /// becomes the port picked).
    pub(crate) resp: Option<SocketAddr>,
    /// Turns true when the server stops: streams end, connections close.
    pub(crate) stopping: watch::Receiver<bool>,
    /// Redis pub/sub's channels and patterns.
    pub(crate) pubsub: crate::resp::pubsub::Broker,
    /// The processors' supervisor (none with `--no-procs`).
    pub(crate) procs: Option<cairn_proc::Procs>,
    /// Further stores this server serves on their own sockets.
    pub(crate) mounts: crate::mounts::Mounts,
    /// The server's own store (false: a mount, which mounts nothing).
    pub(crate) main: bool,
}

impl App {
    /// Whether `host` (a `Host` header, lower-cased) names this server:
    /// its bound address, a loopback name with its port, or an allowed host.
    pub(crate) fn known_host(&self, host: &str) -> bool {
        if self.config.allow_hosts.iter().any(|allowed| allowed.eq_ignore_ascii_case(host)) {
            return true;
        }
        let Some(bound) = self.http else { return false };
        let port = bound.port().to_string();
        let (name, given_port) = match host.strip_prefix('[') {
            Some(bracketed) => match bracketed.split_once(']') {
                Some((name, tail)) => (name, tail.strip_prefix(':')),
                None => return false,
            },
            None => match host.rsplit_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (host, None),
            },
        };
        if given_port.is_some_and(|given| given != port) {
            return false;
        }
        let loopback = matches!(name, "localhost" | "127.0.0.1" | "::1") || name.ends_with(".localhost");
        loopback || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip == bound.ip())
    }
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
    let store_options = StoreOptions {
        sync: config.sync,
        compact_ratio: config.compact_ratio,
        segment_bytes: config.segment_bytes,
        compress: config.compress,
        ..StoreOptions::default()
    };
    let options = ServiceOptions {
        allow_delete: config.allow_delete,
        replicated: config.satellite.as_ref().map(|satellite| satellite.topics.clone()).unwrap_or_default(),
    };
    // Held until the server ends: one server per directory.
    let mut _lock = None;
    let service = match &config.postgres {
        Some(url) => {
            let (service, lock) = open_postgres(url, &config.store, options).await?;
            _lock = Some(lock);
            service
        }
        None => {
            let (service, truncated) = cairn_service::open_local(config.store.clone(), store_options, options)
                .await
                .with_context(|| format!("open store {}", config.store.display()))?;
            if let Some(cut) = &truncated {
                tracing::warn!(
                    "recovered: cut {} bytes of an unfinished write at segment {} offset {} ({})",
                    cut.bytes,
                    cut.segment,
                    cut.offset,
                    cut.reason
                );
            }
            service
        }
    };
    let unix = listen::bind_unix(&config.socket)?;
    let mut addresses = vec![format!("unix:{}", config.socket.display())];
    // xs's clients, on xs's socket name (a store on PostgreSQL has none).
    let xs = match config.xs && config.postgres.is_none() {
        false => None,
        true => {
            let path = config.store.join(crate::xs::SOCKET_NAME);
            Some(listen::bind_unix(&path).with_context(|| format!("listen for xs's clients on {}", path.display()))?)
        }
    };
    let (tcp, http) = match config.http {
        None => (None, None),
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
            } else if service.users().is_empty() {
                tracing::warn!("no users yet: TCP clients cannot authenticate until `cairn user add` creates one");
            }
            (Some((listener, tls)), Some(bound))
        }
    };
    let resp = match config.resp {
        None => None,
        Some(addr) => {
            let listener = listen::bind_tcp(addr)
                .with_context(|| format!("listen for the Redis protocol on {addr} (--resp ADDR or --no-resp)"))?;
            let bound = listener.local_addr()?;
            addresses.push(format!("redis://{bound}"));
            if config.resp_require_auth && service.users().is_empty() {
                tracing::warn!("the Redis port requires AUTH but there are no users yet (`cairn user add`)");
            }
            Some((listener, bound))
        }
    };
    let http_app = match config.http_app {
        None => None,
        Some((addr, timeout, ttl)) => {
            let listener = listen::bind_tcp(addr)
                .with_context(|| format!("listen for the app served from the store on {addr} (--http-app)"))?;
            addresses.push(format!("app:http://{}", listener.local_addr()?));
            Some((listener, timeout, ttl))
        }
    };
    let resp_bound = resp.as_ref().map(|(_, bound)| *bound);
    let resp = resp.map(|(listener, _)| listener);
    let (stop, stopping) = watch::channel(false);
    let procs = config.procs.then(|| cairn_proc::Procs::start(service.clone()));
    let satellite = config.satellite.clone().map(|satellite| {
        tracing::info!("a satellite of the hub at {}, replicating {:?}", satellite.url, satellite.topics);
        tokio::spawn(crate::satellite::run(service.clone(), satellite, stopping.clone()))
    });
    let app = Arc::new(App {
        service,
        metrics: Metrics::default(),
        config,
        http,
        resp: resp_bound,
        stopping: stopping.clone(),
        pubsub: Default::default(),
        procs,
        mounts: crate::mounts::Mounts::default(),
        main: true,
    });
    for (name, dir) in &app.config.mounts {
        app.mounts.mount(&app.config, name, dir.clone()).await.with_context(|| format!("mount {name}"))?;
    }
    app.mounts.restore(&app.config, &app.service).await;
    let start =
        serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "pid": std::process::id(), "listen": addresses });
    app.service.append_system("cairn.start", start).await.context("append cairn.start")?;

    let router = crate::http::router(app.clone());
    let resp_accepting =
        resp.map(|listener| tokio::spawn(crate::resp::accept(app.clone(), listener, stopping.clone())));
    let xs_serving = xs.map(|listener| {
        let limits = (app.config.max_connections, app.config.header_timeout, app.config.body_timeout);
        tokio::spawn(crate::xs::serve(
            app.service.clone(),
            app.config.store.clone(),
            listener,
            limits,
            stopping.clone(),
        ))
    });
    let app_serving = http_app.map(|(listener, timeout, ttl)| {
        let limits = (app.config.max_connections, app.config.header_timeout, app.config.body_timeout);
        tokio::spawn(crate::app::serve(app.service.clone(), listener, (timeout, ttl), limits, stopping.clone()))
    });
    let accepting = tokio::spawn(listen::accept(app.clone(), router, Listeners { unix, tcp }, stopping));
    ready(&addresses);
    until.await;
    tracing::info!("stopping: finishing open requests");
    let _ = stop.send(true);
    if let Some(procs) = &app.procs {
        procs.shutdown().await;
    }
    app.mounts.shutdown().await;
    if let Some(satellite) = satellite {
        let _ = satellite.await;
    }
    app.service.shutdown();
    accepting.await?;
    if let Some(resp_accepting) = resp_accepting {
        resp_accepting.await?;
    }
    if let Some(app_serving) = app_serving {
        app_serving.await?;
    }
    if let Some(xs_serving) = xs_serving {
        xs_serving.await?;
    }
    let stop_meta = serde_json::json!({ "pid": std::process::id() });
    app.service.append_system("cairn.stop", stop_meta).await.context("append cairn.stop")?;
    let _ = std::fs::remove_file(&app.config.socket);
    // Streams that outlived the grace period may still hold the store; the
    // last handle to go closes it (flushing the index) either way.
    let service = app.service.clone();
    drop(app);
    service.close().await;
    Ok(())
}

/// A service whose events and users live in PostgreSQL: `dir` holds the
/// socket and the lock (and, the first time, users to copy in).
async fn open_postgres(
    url: &str,
    dir: &std::path::Path,
    options: ServiceOptions,
) -> Result<(cairn_service::Service, std::fs::File)> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let lock = cairn_service::lock_directory(dir).with_context(|| format!("lock {}", dir.display()))?;
    let (service, copied) = open_postgres_service(url, dir, options).await?;
    if copied > 0 {
        tracing::info!("copied {copied} users from {} into PostgreSQL", dir.join(cairn_service::USERS_FILE).display());
    }
    tracing::info!("events and users are kept in PostgreSQL; {} holds the socket", dir.display());
    Ok((service, lock))
}

/// A service on the PostgreSQL database at `url`, its users kept there; the
/// first time, the users of `dir`'s `users.json` are copied in. Returns
/// how many were copied.
pub async fn open_postgres_service(
    url: &str,
    dir: &std::path::Path,
    options: ServiceOptions,
) -> Result<(cairn_service::Service, usize)> {
    // The URL may hold a password: errors name the flag, not the URL.
    let storage: std::sync::Arc<dyn cairn_service::Storage> = std::sync::Arc::new(
        cairn_postgres::Postgres::open(url, cairn_postgres::Options::default())
            .await
            .context("open the PostgreSQL database given by --postgres")?,
    );
    let users = cairn_service::Users::open_shared(storage.clone()).await.context("read the users in PostgreSQL")?;
    let local = cairn_service::Users::open(dir).with_context(|| format!("read the users of {}", dir.display()))?;
    let (users, copied) = tokio::task::spawn_blocking(move || {
        let copied = users.adopt(&local);
        (users, copied)
    })
    .await?;
    let copied = copied.context("copy the directory's users into PostgreSQL")?;
    Ok((cairn_service::Service::new(storage, users, options), copied))
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
