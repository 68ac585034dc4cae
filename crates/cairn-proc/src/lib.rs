//! cairn-proc: processors, programs the server runs off the log.
//!
//! A processor is registered by an event, `cairn.proc.<name>.create`, whose
//! payload is its [`Spec`] (JSON), and stopped by `cairn.proc.<name>.term`;
//! registrations survive restarts because they are events. The
//! [`Procs`] supervisor reads them when the server starts, follows new
//! ones, runs each registration's program and reports its fate on
//! `cairn.proc.<name>.<what>` (`active`, `invalid`, `replaced`, `stopped`,
//! `fin.ok`, `fin.error`, `fin.term`), each carrying the registration's id
//! as `proc_id`.
//!
//! Code map:
//! - `spec.rs`: a registration's payload, checked.
//! - `child.rs`: spawning a program in its own process group, its pipes,
//!   its stderr kept as `<name>.log` events, stopping it.
//! - `handler.rs`: handlers, whose outputs and position commit in one batch.
//! - `generator.rs`: generators, stdout lines to `<name>.recv`, and
//!   `<name>.send` to stdin.
//! - `command.rs`: commands, one run per `<name>.call` event.
//! - this file: the supervisor (registrations in, runners out), lifecycle
//!   events, positions, listing.
//!
//! Processors reach the store only through [`Service`], as the principal
//! that registered them: the socket's rights for a registration made
//! through the socket or the store directory, the user's otherwise.

mod child;
mod command;
mod generator;
mod handler;
pub mod spec;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_service::{
    Delivered, Event, EventId, Expect, Follow, FollowOptions, NewEvent, Pattern, Principal, Query, Service,
    ServiceError, Topic, Ttl,
};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use spec::{Kind, Spec, check_name};

/// Where processors' own topics start.
pub const PREFIX: &str = "cairn.proc.";

/// The supervisor of a server's processors (cheap to clone).
#[derive(Clone)]
pub struct Procs {
    inner: Arc<Inner>,
}

struct Inner {
    service: Service,
    table: Mutex<BTreeMap<String, Slot>>,
    /// What happened to recent registrations, for callers waiting on one.
    outcomes: Mutex<HashMap<EventId, Outcome>>,
    outcome_signal: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    /// This server runs the processors (it holds the shared lock).
    active: std::sync::atomic::AtomicBool,
}

struct Slot {
    proc_id: EventId,
    user: Option<String>,
    status: Arc<Mutex<Status>>,
    stop: watch::Sender<Option<Stop>>,
    task: JoinHandle<()>,
}

/// Why a runner stops.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stop {
    /// A newer registration started.
    Replaced(EventId),
    /// `cairn.proc.<name>.term`.
    Term(EventId),
    /// The server stops.
    Shutdown,
    /// Its registering user was removed or lost the right to register
    /// processors.
    Revoked,
}

/// What became of a registration.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// `active` or `invalid`.
    pub state: &'static str,
    /// Why, when invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A processor as `cairn proc ls` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Its name.
    pub name: String,
    /// handler, generator or command.
    pub kind: &'static str,
    /// The registration running.
    pub proc_id: String,
    /// starting, running, backoff, failed, stopped.
    pub state: &'static str,
    /// The program's pid while it runs.
    pub pid: Option<u32>,
    /// Restarts since the registration started.
    pub restarts: u64,
    /// The last input (handler), send (generator) or call (command) fully
    /// handled and committed.
    pub position: Option<String>,
    /// How long the oldest input handed to the program has waited (ms).
    pub lag_ms: u64,
    /// Inputs handed to the program and not done yet (commands: runs).
    pub in_flight: usize,
    /// How the program last ended, or why it stopped.
    pub last_exit: Option<String>,
    /// The program.
    pub run: Vec<String>,
    /// Who registered it (none: the socket).
    pub user: Option<String>,
}

/// What every runner holds.
pub(crate) struct Ctx {
    pub(crate) service: Service,
    pub(crate) name: String,
    pub(crate) proc_id: EventId,
    pub(crate) user: Option<String>,
    pub(crate) spec: Spec,
    pub(crate) status: Arc<Mutex<Status>>,
    pub(crate) stop: watch::Receiver<Option<Stop>>,
    /// What the position topic must still hold for the next commit to
    /// land: a runner that lost its place to another (two servers, for a
    /// moment) fails its commit instead of appending outputs twice.
    pub(crate) fence: Mutex<Expect>,
}

/// How a runner's session ended.
pub(crate) enum Ended {
    /// The program exited (stdout closed and the process ended).
    Exited(Option<std::process::ExitStatus>),
    /// Told to stop.
    Stopped(Stop),
    /// A fault no restart fixes (a bad output line, a forbidden topic):
    /// `fin.error`, and the registration stays stopped until a new one.
    Fatal(String),
    /// A fault a restart may fix (storage unavailable): restart after the
    /// back-off.
    Retry(String),
}

impl Ctx {
    /// `cairn.proc.<name>.<what>` with `proc_id` and `extra`'s fields.
    pub(crate) async fn lifecycle(&self, what: &str, extra: serde_json::Value) {
        lifecycle(&self.service, &self.name, self.proc_id, what, extra).await;
    }

    /// The principal it runs as, as of now: its registering user must
    /// still exist and still be allowed to register processors.
    pub(crate) fn who(&self) -> Result<Principal, String> {
        who(&self.service, &self.name, self.user.as_deref())
    }

    /// The expectation on the position topic for the next commit.
    pub(crate) fn fence(&self) -> BTreeMap<Topic, Expect> {
        let expect = *self.fence.lock().expect("fence lock");
        BTreeMap::from([(position_topic(&self.name), expect)])
    }

    /// After a commit: its last event is the new position record.
    pub(crate) fn committed(&self, events: &[Event]) {
        if let Some(last) = events.last() {
            *self.fence.lock().expect("fence lock") = Expect::UnchangedSince(last.id);
        }
    }

    /// Starts the program (again), for `who`.
    pub(crate) fn spawn(&self, who: &Principal, stdin: bool) -> Result<child::Running, String> {
        let proc_id = self.proc_id.to_string();
        let owner = child::Owner { service: &self.service, name: &self.name, proc_id: &proc_id, who };
        child::spawn(&self.spec, &owner, stdin)
            .map_err(|error| format!("could not start {:?}: {error}", self.spec.argv[0]))
    }

    /// Runs a handler or generator registration until it is stopped: each
    /// run of its program a session (`first`: the program the supervisor
    /// started), the program stopped after it, restarted with back-off.
    pub(crate) async fn run_program(&mut self, mut first: Option<child::Running>) {
        let stdin = self.spec.kind == Kind::Handler || self.spec.duplex;
        let mut backoff = self.spec.backoff;
        loop {
            let started = Instant::now();
            let ended = match self.who() {
                Err(reason) => Ended::Fatal(reason),
                Ok(who) => match first.take().map_or_else(|| self.spawn(&who, stdin), Ok) {
                    Err(reason) => Ended::Retry(reason),
                    Ok(mut running) => {
                        self.running(running.pid).await;
                        let ended = match self.spec.kind {
                            Kind::Handler => handler::session(self, &who, &mut running).await,
                            _ => generator::session(self, &who, &mut running).await,
                        };
                        let status = running.stop().await;
                        match ended {
                            Ended::Exited(_) => Ended::Exited(status),
                            other => other,
                        }
                    }
                },
            };
            if self.after_session(ended, started, &mut backoff).await.is_some() {
                return;
            }
        }
    }

    /// The program runs as `pid`; a restart says so with `active` (the
    /// first start's `active` comes from the supervisor).
    pub(crate) async fn running(&self, pid: u32) {
        self.set(|status| {
            status.state = "running";
            status.pid = Some(pid);
        });
        if self.status.lock().expect("status lock").restarts > 0 {
            self.lifecycle("active", serde_json::json!({ "pid": pid })).await;
        }
    }

    pub(crate) fn topic(&self, suffix: &str) -> Topic {
        Topic::new(&format!("{}.{suffix}", self.name)).expect("a checked name makes a valid topic")
    }

    /// The position record: `cairn.proc.<name>.pos`, only the newest kept.
    pub(crate) fn position_event(&self, after: EventId) -> NewEvent {
        let meta = serde_json::json!({ "proc_id": self.proc_id.to_string(), "after": after.to_string() });
        NewEvent {
            topic: Some(position_topic(&self.name)),
            meta: Some(meta.to_string()),
            ttl: Ttl::Last { n: 1 },
            ..NewEvent::default()
        }
    }

    /// Where to resume: this registration's own position if it has one;
    /// otherwise, for `new`, where an earlier registration of the name
    /// stopped, or the registration itself; `first`: the beginning; an id:
    /// after it.
    pub(crate) async fn resume_after(&self) -> Result<Option<EventId>, ServiceError> {
        let topic = position_topic(&self.name);
        let last = self.service.last_entry(&Principal::Local, &topic).await?;
        *self.fence.lock().expect("fence lock") =
            last.as_ref().map_or(Expect::Empty, |item| Expect::UnchangedSince(item.event.id));
        let saved = last.and_then(|item| {
            let meta: serde_json::Value = serde_json::from_str(item.event.meta.as_deref()?).ok()?;
            let proc_id = EventId::parse(meta.get("proc_id")?.as_str()?).ok()?;
            let after = EventId::parse(meta.get("after")?.as_str()?).ok()?;
            Some((proc_id, after))
        });
        Ok(match (saved, self.spec.start) {
            (Some((proc_id, after)), _) if proc_id == self.proc_id => Some(after),
            (Some((_, after)), spec::Start::New) => Some(after),
            (None, spec::Start::New) => Some(self.proc_id),
            (_, spec::Start::First) => None,
            (_, spec::Start::After(id)) => Some(id),
        })
    }

    pub(crate) fn set(&self, edit: impl FnOnce(&mut Status)) {
        edit(&mut self.status.lock().expect("status lock"));
    }

    /// Resolves when told to stop.
    pub(crate) async fn stopped(&mut self) -> Stop {
        loop {
            if let Some(stop) = *self.stop.borrow_and_update() {
                return stop;
            }
            if self.stop.changed().await.is_err() {
                return Stop::Shutdown;
            }
        }
    }

    /// Waits `wait` unless told to stop first.
    pub(crate) async fn pause(&mut self, wait: Duration) -> Option<Stop> {
        tokio::select! {
            stop = self.stopped() => Some(stop),
            () = tokio::time::sleep(wait) => None,
        }
    }

    /// Restarts after `ended` with back-off; `None` to go on, `Some` when
    /// the runner is over (its lifecycle event already written).
    pub(crate) async fn after_session(&mut self, ended: Ended, started: Instant, backoff: &mut Duration) -> Option<()> {
        match ended {
            Ended::Stopped(stop) => {
                self.finish(stop).await;
                return Some(());
            }
            Ended::Fatal(reason) => {
                tracing::warn!("processor {}: {reason}", self.name);
                self.set(|status| {
                    status.state = "failed";
                    status.pid = None;
                    status.last_exit = Some(reason.clone());
                });
                self.lifecycle("fin.error", serde_json::json!({ "reason": reason, "restart": false })).await;
                // Stays failed until a new registration or a term.
                let stop = self.stopped().await;
                if let Stop::Replaced(by) = stop {
                    self.lifecycle("replaced", serde_json::json!({ "by": by.to_string() })).await;
                }
                return Some(());
            }
            Ended::Exited(status) => {
                let (reason, mut fields) = child::describe(status);
                let ok = status.is_some_and(|status| status.success());
                fields["reason"] = reason.clone().into();
                self.set(|status| {
                    status.pid = None;
                    status.last_exit = Some(reason);
                });
                self.lifecycle(if ok { "fin.ok" } else { "fin.error" }, fields).await;
            }
            Ended::Retry(reason) => {
                tracing::warn!("processor {}: {reason}; restarting", self.name);
                self.set(|status| {
                    status.pid = None;
                    status.last_exit = Some(reason.clone());
                });
                self.lifecycle("fin.error", serde_json::json!({ "reason": reason, "restart": true })).await;
            }
        }
        if started.elapsed() >= Duration::from_secs(10) {
            *backoff = self.spec.backoff;
        }
        self.set(|status| status.state = "backoff");
        if let Some(stop) = self.pause(*backoff).await {
            self.finish(stop).await;
            return Some(());
        }
        *backoff = (*backoff * 2).min(self.spec.backoff_max);
        self.set(|status| status.restarts += 1);
        None
    }

    /// The lifecycle event of a stop.
    pub(crate) async fn finish(&self, stop: Stop) {
        self.set(|status| {
            status.state = "stopped";
            status.pid = None;
        });
        match stop {
            Stop::Replaced(by) => self.lifecycle("replaced", serde_json::json!({ "by": by.to_string() })).await,
            Stop::Term(term) => self.lifecycle("fin.term", serde_json::json!({ "term_id": term.to_string() })).await,
            Stop::Shutdown => self.lifecycle("stopped", serde_json::json!({ "reason": "the server stopped" })).await,
            Stop::Revoked => {
                let reason = "its registering user was removed or may no longer register processors";
                self.set(|status| status.last_exit = Some(reason.to_owned()));
                self.lifecycle("fin.error", serde_json::json!({ "reason": reason, "restart": false })).await;
            }
        }
    }
}

/// `cairn.proc.<name>.pos`.
fn position_topic(name: &str) -> Topic {
    Topic::new(&format!("{PREFIX}{name}.pos")).expect("a checked name makes a valid topic")
}

/// The principal a processor of `user` runs as, if that user may still
/// register processors.
fn who(service: &Service, name: &str, user: Option<&str>) -> Result<Principal, String> {
    let who = service.processor_principal(user).map_err(|error| format!("its registering user: {error}"))?;
    let create = Topic::new(&format!("{PREFIX}{name}.create")).expect("a checked name makes a valid topic");
    if !who.can_write(&create) {
        return Err(format!("its registering user {} may no longer register processors", user.unwrap_or_default()));
    }
    Ok(who)
}

/// A follow run in a task of its own, its chunks through a channel: a
/// `select!` may drop a `recv` at any time, but not a `Follow::next` that
/// is loading payloads (what it took would be lost).
pub(crate) fn follow_in_task(mut follow: Follow, max: usize) -> mpsc::Receiver<cairn_service::Result<Vec<Delivered>>> {
    let (send, receive) = mpsc::channel(2);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                () = send.closed() => return,
                next = follow.next(max) => next,
            };
            let failed = next.is_err();
            if send.send(next).await.is_err() || failed {
                return;
            }
        }
    });
    receive
}

/// How a session ends after a failed commit: as [`ended_by`], but a
/// position moved by another runner (its fence) is a restart from the
/// position as it is now.
pub(crate) fn commit_failed(what: &str, error: ServiceError) -> Ended {
    match error {
        ServiceError::ExpectationFailed { .. } => {
            Ended::Retry(format!("{what}: its position moved under it (another runner?); starting again from it"))
        }
        error => ended_by(what, error),
    }
}

/// Whether an error is the caller's to fix (so a restart would repeat it).
pub(crate) fn is_fatal(error: &ServiceError) -> bool {
    matches!(
        error,
        ServiceError::Invalid { .. }
            | ServiceError::TooLarge { .. }
            | ServiceError::Forbidden { .. }
            | ServiceError::Unauthenticated { .. }
            | ServiceError::ExpectationFailed { .. }
            | ServiceError::NotFound { .. }
    )
}

/// Turns a failed service call into how a session ends.
pub(crate) fn ended_by(what: &str, error: ServiceError) -> Ended {
    match error {
        ServiceError::ShuttingDown => Ended::Stopped(Stop::Shutdown),
        error if is_fatal(&error) => Ended::Fatal(format!("{what}: {error}")),
        error => Ended::Retry(format!("{what}: {error}")),
    }
}

async fn lifecycle(service: &Service, name: &str, proc_id: EventId, what: &str, extra: serde_json::Value) {
    let mut meta = serde_json::json!({ "proc_id": proc_id.to_string() });
    if let (Some(meta), serde_json::Value::Object(extra)) = (meta.as_object_mut(), extra) {
        meta.extend(extra);
    }
    if let Err(error) = service.append_system(&format!("{PREFIX}{name}.{what}"), meta).await {
        tracing::warn!("processor {name}: could not append its {what} event: {error}");
    }
}

/// A registration found in the log.
#[derive(Clone, Debug, Serialize)]
pub struct Registration {
    /// The processor's name.
    pub name: String,
    /// The create event's id.
    pub proc_id: String,
    /// Who registered it.
    pub user: Option<String>,
    /// Whether a term came after it.
    pub terminated: bool,
    /// The registration, or why it is invalid.
    #[serde(skip)]
    pub spec: Result<Spec, String>,
}

/// The newest registration of every processor name `who` may read, from
/// the log (what a server would run).
pub async fn registrations(service: &Service, who: &Principal) -> cairn_service::Result<Vec<Registration>> {
    let mut out = Vec::new();
    for info in service.topics(who).await? {
        let topic = info.topic.as_str();
        let Some(name) = topic.strip_prefix(PREFIX).and_then(|rest| rest.strip_suffix(".create")) else { continue };
        if check_name(name).is_err() {
            continue;
        }
        let Some(create) = service.last_entry(who, &info.topic).await? else { continue };
        let term = Topic::new(&format!("{PREFIX}{name}.term")).expect("valid topic");
        let terminated = service.head(who, &term).await?.is_some_and(|head| head.last_id > create.event.id);
        let spec = Spec::parse(create.content.as_deref().unwrap_or_default());
        out.push(Registration {
            name: name.to_owned(),
            proc_id: create.event.id.to_string(),
            user: create.event.user.clone(),
            terminated,
            spec,
        });
    }
    Ok(out)
}

impl Procs {
    /// Starts the supervisor: every registration in the log that was not
    /// terminated starts, and new ones are followed.
    pub fn start(service: Service) -> Procs {
        let (stop, _) = watch::channel(false);
        let procs = Procs {
            inner: Arc::new(Inner {
                service,
                table: Mutex::new(BTreeMap::new()),
                outcomes: Mutex::new(HashMap::new()),
                outcome_signal: watch::channel(0).0,
                stop,
                supervisor: Mutex::new(None),
                active: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        let task = tokio::spawn(procs.clone().supervise());
        *procs.inner.supervisor.lock().expect("supervisor lock") = Some(task);
        procs
    }

    async fn supervise(self) {
        let service = self.inner.service.clone();
        let mut stopping = self.inner.stop.subscribe();
        // Several servers on one database: one runs the processors, the
        // others wait to take over (the lock goes with a server's session).
        let _lock = loop {
            let attempt = tokio::select! {
                () = until_true(&mut stopping) => return,
                attempt = service.shared_lock("processors") => attempt,
            };
            match attempt {
                Ok(lock) => break lock,
                Err(ServiceError::ShuttingDown) => return,
                Err(error) => {
                    tracing::info!("processors: another server runs them ({error}); waiting to take over");
                    tokio::select! {
                        () = until_true(&mut stopping) => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        self.inner.active.store(true, std::sync::atomic::Ordering::Relaxed);
        let since = service.last_id();
        match registrations(&service, &Principal::Local).await {
            Ok(found) => {
                for registration in found.into_iter().filter(|registration| !registration.terminated) {
                    let Ok(proc_id) = EventId::parse(&registration.proc_id) else { continue };
                    self.create(&registration.name, proc_id, registration.user, registration.spec).await;
                }
            }
            Err(error) => tracing::error!("processors: reading registrations: {error}"),
        }
        let pattern = Pattern::parse(&format!("{PREFIX}>")).expect("valid pattern");
        let options = FollowOptions { content: true, ..FollowOptions::default() };
        let mut sessions = service.session_changes();
        let mut after = since;
        'follow: loop {
            let query = Query { after: Some(after), ..Query::new(pattern.clone()) };
            let mut follow = match service.follow(&Principal::Local, query, options).await {
                Ok(follow) => follow,
                Err(ServiceError::ShuttingDown) => break,
                Err(error) => {
                    tracing::error!("processors: following registrations: {error}; trying again");
                    tokio::select! {
                        () = until_true(&mut stopping) => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let delivered = tokio::select! {
                    () = until_true(&mut stopping) => break 'follow,
                    changed = sessions.changed() => {
                        if changed.is_ok() {
                            self.revoke().await;
                        }
                        continue;
                    }
                    delivered = follow.next(64) => delivered,
                };
                let delivered = match delivered {
                    Ok(delivered) => delivered,
                    Err(ServiceError::ShuttingDown) => break 'follow,
                    Err(error) => {
                        // One failed read must not stop every processor.
                        tracing::error!("processors: following registrations: {error}; trying again");
                        after = follow.cursor().max(after);
                        tokio::select! {
                            () = until_true(&mut stopping) => break 'follow,
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue 'follow,
                        }
                    }
                };
                for item in delivered {
                    let Delivered::Event(event, content) = item else { continue };
                    after = event.id;
                    let Some(rest) = event.topic.as_str().strip_prefix(PREFIX) else { continue };
                    let Some((name, what)) = rest.split_once('.') else { continue };
                    if check_name(name).is_err() {
                        continue;
                    }
                    match what {
                        "create" => {
                            let spec = Spec::parse(content.as_deref().unwrap_or_default());
                            self.create(name, event.id, event.user.clone(), spec).await;
                        }
                        "term" => self.term(name, event.id).await,
                        _ => {}
                    }
                }
            }
        }
        let slots: Vec<Slot> =
            std::mem::take(&mut *self.inner.table.lock().expect("table lock")).into_values().collect();
        for slot in &slots {
            let _ = slot.stop.send(Some(Stop::Shutdown));
        }
        for slot in slots {
            join(slot.task).await;
        }
    }

    /// Stops the processors whose registering user is gone or may no
    /// longer register processors.
    async fn revoke(&self) {
        let revoked: Vec<Slot> = {
            let mut table = self.inner.table.lock().expect("table lock");
            let names: Vec<String> = table
                .iter()
                .filter(|(name, slot)| who(&self.inner.service, name, slot.user.as_deref()).is_err())
                .map(|(name, _)| name.clone())
                .collect();
            names.iter().filter_map(|name| table.remove(name)).collect()
        };
        for slot in revoked {
            let _ = slot.stop.send(Some(Stop::Revoked));
            join(slot.task).await;
        }
    }

    fn record(&self, proc_id: EventId, outcome: Outcome) {
        let mut outcomes = self.inner.outcomes.lock().expect("outcomes lock");
        if outcomes.len() >= 1024 {
            outcomes.clear();
        }
        outcomes.insert(proc_id, outcome);
        drop(outcomes);
        self.inner.outcome_signal.send_modify(|generation| *generation += 1);
    }

    /// A registration: checked, started, and only then put in place of
    /// the one running under its name.
    async fn create(&self, name: &str, proc_id: EventId, user: Option<String>, spec: Result<Spec, String>) {
        let service = &self.inner.service;
        if self.inner.table.lock().expect("table lock").get(name).is_some_and(|slot| slot.proc_id == proc_id) {
            return;
        }
        let spec = match spec {
            Ok(spec) => spec,
            Err(reason) => {
                lifecycle(service, name, proc_id, "invalid", serde_json::json!({ "reason": reason })).await;
                self.record(proc_id, Outcome { state: "invalid", reason: Some(reason) });
                return;
            }
        };
        let status = Arc::new(Mutex::new(Status {
            name: name.to_owned(),
            kind: spec.kind.as_str(),
            proc_id: proc_id.to_string(),
            state: "starting",
            pid: None,
            restarts: 0,
            position: None,
            lag_ms: 0,
            in_flight: 0,
            last_exit: None,
            run: spec.argv.clone(),
            user: user.clone(),
        }));
        let (stop, stop_receiver) = watch::channel(None);
        let mut ctx = Ctx {
            service: service.clone(),
            name: name.to_owned(),
            proc_id,
            user: user.clone(),
            spec,
            status: status.clone(),
            stop: stop_receiver,
            fence: Mutex::new(Expect::Any),
        };
        // The program must start before anything is replaced.
        let prepared = match prepare(&ctx) {
            Ok(prepared) => prepared,
            Err(reason) => {
                lifecycle(service, name, proc_id, "invalid", serde_json::json!({ "reason": reason })).await;
                self.record(proc_id, Outcome { state: "invalid", reason: Some(reason) });
                return;
            }
        };
        let previous = self.inner.table.lock().expect("table lock").remove(name);
        if let Some(previous) = previous {
            let _ = previous.stop.send(Some(Stop::Replaced(proc_id)));
            join(previous.task).await;
        }
        let pid = prepared.as_ref().map(|running| running.pid);
        ctx.set(|status| {
            status.state = "running";
            status.pid = pid;
        });
        ctx.lifecycle("active", serde_json::json!({ "pid": pid })).await;
        let task = tokio::spawn(async move {
            match ctx.spec.kind {
                Kind::Handler | Kind::Generator => ctx.run_program(prepared).await,
                Kind::Command => command::run(&mut ctx).await,
            }
        });
        self.inner
            .table
            .lock()
            .expect("table lock")
            .insert(name.to_owned(), Slot { proc_id, user, status, stop, task });
        // Answered once it is listed: who was told `active` finds it.
        self.record(proc_id, Outcome { state: "active", reason: None });
    }

    async fn term(&self, name: &str, term: EventId) {
        let slot = self.inner.table.lock().expect("table lock").remove(name);
        if let Some(slot) = slot {
            let _ = slot.stop.send(Some(Stop::Term(term)));
            join(slot.task).await;
        }
    }

    /// Whether this server runs the processors (with several servers on
    /// one database, one does).
    pub fn is_active(&self) -> bool {
        self.inner.active.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits up to `wait` for what became of registration `proc_id`.
    pub async fn outcome(&self, proc_id: EventId, wait: Duration) -> Option<Outcome> {
        let mut signal = self.inner.outcome_signal.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(outcome) = self.inner.outcomes.lock().expect("outcomes lock").get(&proc_id) {
                return Some(outcome.clone());
            }
            if tokio::time::timeout_at(deadline, signal.changed()).await.is_err() {
                return None;
            }
        }
    }

    /// Waits up to `wait` until no registration runs under `name`.
    pub async fn wait_gone(&self, name: &str, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if !self.inner.table.lock().expect("table lock").contains_key(name) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// The processors running, those `who` may read the registration of.
    pub fn list(&self, who: &Principal) -> Vec<Status> {
        let table = self.inner.table.lock().expect("table lock");
        table
            .iter()
            .filter(|(name, _)| {
                Topic::new(&format!("{PREFIX}{name}.create")).is_ok_and(|topic| who.can_read_topic(&topic))
            })
            .map(|(_, slot)| slot.status.lock().expect("status lock").clone())
            .collect()
    }

    /// Stops every processor (each writes `stopped`) and the supervisor.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let task = self.inner.supervisor.lock().expect("supervisor lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// Resolves once `signal` is true (or its sender is gone).
async fn until_true(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|value| *value).await;
}

/// Waits for a runner to end: it commits what it finished and stops its
/// program within seconds; one that does not is aborted after 30 s (its
/// program's process group is killed as its runner drops).
async fn join(task: JoinHandle<()>) {
    let abort = task.abort_handle();
    if tokio::time::timeout(Duration::from_secs(30), task).await.is_err() {
        tracing::warn!("processors: a runner did not stop within 30 s; aborted");
        abort.abort();
    }
}

/// Starts the program of a handler or generator (a command's is checked
/// to exist: it runs per call).
fn prepare(ctx: &Ctx) -> Result<Option<child::Running>, String> {
    let program = &ctx.spec.argv[0];
    match ctx.spec.kind {
        Kind::Command => {
            if !program_exists(program, ctx.spec.cwd.as_deref()) {
                return Err(format!("program {program:?} not found"));
            }
            Ok(None)
        }
        Kind::Handler | Kind::Generator => {
            let who = ctx.who()?;
            ctx.spawn(&who, ctx.spec.kind == Kind::Handler || ctx.spec.duplex).map(Some)
        }
    }
}

fn program_exists(program: &str, cwd: Option<&std::path::Path>) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |path: &std::path::Path| {
        std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = std::path::Path::new(program);
        return match cwd {
            Some(cwd) if path.is_relative() => executable(&cwd.join(path)),
            _ => executable(path),
        };
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| executable(&dir.join(program))))
}
