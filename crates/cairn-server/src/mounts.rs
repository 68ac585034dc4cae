//! Several stores, one server: further store directories mounted by name
//! (`--mount NAME=DIR`, `POST /v1/mounts`, or a `cairn.mounts` event), each
//! served on its own Unix socket (`DIR/cairn.sock`) with its own service,
//! users (its `users.json`) and processors. Mounts made through the API
//! are `cairn.mounts` events of the main store, so they come back when the
//! server starts again; `--mount` ones last for the run. A mount comes and
//! goes while the server runs: unmounting stops its processors and its
//! socket, lets its requests finish and closes its store.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use cairn_service::{Pattern, Principal, Query, Service, Topic};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::listen::{self, Listeners};
use crate::metrics::Metrics;
use crate::server::App;

/// The mounts of a server (cheap to clone).
#[derive(Clone, Default)]
pub(crate) struct Mounts {
    inner: Arc<Mutex<BTreeMap<String, Mount>>>,
}

struct Mount {
    dir: PathBuf,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A mount as `GET /v1/mounts` shows it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MountInfo {
    pub(crate) name: String,
    pub(crate) dir: String,
    pub(crate) socket: String,
}

/// Checks a mount's name: 1-64 ASCII letters, digits, `_`, `-`.
pub(crate) fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("mount name {name:?}: 1-64 ASCII letters, digits, '_' and '-'"));
    }
    Ok(())
}

impl Mounts {
    /// The mounts, by name.
    pub(crate) fn list(&self) -> Vec<MountInfo> {
        let mounts = self.inner.lock().expect("mounts lock");
        mounts
            .iter()
            .map(|(name, mount)| MountInfo {
                name: name.clone(),
                dir: mount.dir.display().to_string(),
                socket: mount.dir.join(crate::SOCKET_NAME).display().to_string(),
            })
            .collect()
    }

    /// Whether `name` is mounted on `dir`.
    pub(crate) fn has(&self, name: &str) -> Option<PathBuf> {
        self.inner.lock().expect("mounts lock").get(name).map(|mount| mount.dir.clone())
    }

    /// Mounts `dir` as `name` (replacing a mount of that name on another
    /// directory).
    pub(crate) async fn mount(&self, config: &Config, name: &str, dir: PathBuf) -> Result<()> {
        if self.has(name).is_some_and(|mounted| mounted == dir) {
            return Ok(());
        }
        let dir = self.check_dir(config, name, &dir)?;
        // The new one runs before the old one of the name goes: a mount
        // that fails leaves the one before in place.
        let (stop, stopping) = watch::channel(false);
        let task = start(config, name, &dir, stopping).await?;
        let previous = self.inner.lock().expect("mounts lock").insert(name.to_owned(), Mount { dir, stop, task });
        if let Some(previous) = previous {
            let _ = previous.stop.send(true);
            let _ = previous.task.await;
        }
        Ok(())
    }

    /// Where a mount may go: an absolute path, a new or empty directory or
    /// a cairn store (never a directory holding other files: opening makes
    /// it private and writes a store into it), not in or around the main
    /// store or another mount.
    fn check_dir(&self, config: &Config, name: &str, dir: &std::path::Path) -> Result<PathBuf> {
        anyhow::ensure!(dir.is_absolute(), "{} is not an absolute path", dir.display());
        let dir = std::path::absolute(dir)?;
        let real = |path: &std::path::Path| std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let (target, main) = (real(&dir), real(&std::path::absolute(&config.store)?));
        let overlaps = |other: &std::path::Path| target.starts_with(other) || other.starts_with(&target);
        anyhow::ensure!(!overlaps(&main), "{} is in or around the server's own store", dir.display());
        for (other_name, mount) in self.inner.lock().expect("mounts lock").iter() {
            if other_name != name {
                anyhow::ensure!(!overlaps(&real(&mount.dir)), "{} is in or around mount {other_name}", dir.display());
            }
        }
        if let Ok(mut entries) = std::fs::read_dir(&dir) {
            let is_store = dir.join("store-id").exists() || dir.join("log").is_dir();
            anyhow::ensure!(
                is_store || entries.next().is_none(),
                "{} holds files but no cairn store; mount a new or empty directory, or a store",
                dir.display()
            );
        }
        Ok(dir)
    }

    /// Unmounts `name`, if mounted; returns once its store is closed.
    pub(crate) async fn unmount(&self, name: &str) {
        let mount = self.inner.lock().expect("mounts lock").remove(name);
        if let Some(mount) = mount {
            let _ = mount.stop.send(true);
            let _ = mount.task.await;
        }
    }

    /// Unmounts everything (the server stops).
    pub(crate) async fn shutdown(&self) {
        let names: Vec<String> = self.inner.lock().expect("mounts lock").keys().cloned().collect();
        for name in names {
            self.unmount(&name).await;
        }
    }

    /// Mounts what the log's `cairn.mounts` events leave mounted (the last
    /// change of each name wins; a failure is logged and the server goes
    /// on). Only this server's mount routes write those events, and they
    /// apply their change themselves, so reading them at start is enough.
    pub(crate) async fn restore(&self, config: &Config, service: &Service) {
        let topic = Topic::new("cairn.mounts").expect("valid topic");
        let events = match service.read_all(&Principal::Local, Query::new(Pattern::Exact(topic)), false).await {
            Ok(events) => events,
            Err(error) => {
                tracing::error!("mounts: reading cairn.mounts: {error}");
                return;
            }
        };
        let mut wanted: BTreeMap<String, Option<PathBuf>> = BTreeMap::new();
        for item in events {
            let Some(meta) =
                item.event.meta.as_deref().and_then(|meta| serde_json::from_str::<serde_json::Value>(meta).ok())
            else {
                continue;
            };
            let Some(name) = meta.get("name").and_then(|name| name.as_str()) else { continue };
            match (meta.get("op").and_then(|op| op.as_str()), meta.get("dir").and_then(|dir| dir.as_str())) {
                (Some("mount"), Some(dir)) => wanted.insert(name.to_owned(), Some(PathBuf::from(dir))),
                (Some("unmount"), _) => wanted.insert(name.to_owned(), None),
                _ => continue,
            };
        }
        for (name, dir) in wanted {
            let Some(dir) = dir else { continue };
            if self.has(&name).is_some() {
                continue; // --mount gave this name for this run.
            }
            if !dir.exists() {
                tracing::error!(
                    "mount {name}: {} is gone; not mounted (DELETE /v1/mounts/{name} forgets it)",
                    dir.display()
                );
                continue;
            }
            if let Err(error) = self.mount(config, &name, dir.clone()).await {
                tracing::error!("mount {name} ({}): {error:#}", dir.display());
            }
        }
    }
}

/// Opens the store at `dir` and serves it on its socket until `stopping`.
async fn start(
    config: &Config,
    name: &str,
    dir: &std::path::Path,
    stopping: watch::Receiver<bool>,
) -> Result<JoinHandle<()>> {
    let store_options = cairn_service::StoreOptions {
        sync: config.sync,
        compact_ratio: config.compact_ratio,
        segment_bytes: config.segment_bytes,
        compress: config.compress,
        ..cairn_service::StoreOptions::default()
    };
    let options = cairn_service::ServiceOptions { allow_delete: config.allow_delete, replicated: Vec::new() };
    let (service, _) = cairn_service::open_local(dir.to_owned(), store_options, options)
        .await
        .with_context(|| format!("open store {}", dir.display()))?;
    let mut mount_config = config.clone();
    mount_config.store = dir.to_owned();
    mount_config.socket = dir.join(crate::SOCKET_NAME);
    mount_config.http = None;
    mount_config.resp = None;
    mount_config.http_app = None;
    let meta = serde_json::json!({ "pid": std::process::id(), "mount": name });
    let started = service.append_system("cairn.start", meta).await.context("append cairn.start");
    let unix = match started.and_then(|_| listen::bind_unix(&mount_config.socket)) {
        Ok(unix) => unix,
        Err(error) => {
            service.close().await;
            return Err(error);
        }
    };
    let procs = config.procs.then(|| cairn_proc::Procs::start(service.clone()));
    let app = Arc::new(App {
        service: service.clone(),
        metrics: Metrics::default(),
        config: mount_config,
        http: None,
        resp: None,
        stopping: stopping.clone(),
        pubsub: Default::default(),
        procs,
        mounts: Mounts::default(),
        main: false,
    });
    tracing::info!("mounted {name}: {} on {}", dir.display(), app.config.socket.display());
    let name = name.to_owned();
    Ok(tokio::spawn(async move {
        let router = crate::http::router(app.clone());
        let mut stop = stopping.clone();
        let accepting = tokio::spawn(listen::accept(app.clone(), router, Listeners { unix, tcp: None }, stopping));
        crate::server::stopped(&mut stop).await;
        if let Some(procs) = &app.procs {
            procs.shutdown().await;
        }
        app.service.shutdown();
        let _ = accepting.await;
        let meta = serde_json::json!({ "pid": std::process::id(), "mount": name });
        let _ = app.service.append_system("cairn.stop", meta).await;
        let _ = std::fs::remove_file(&app.config.socket);
        let service = app.service.clone();
        drop(app);
        service.close().await;
        tracing::info!("unmounted {name}");
    }))
}
