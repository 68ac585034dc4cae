//! `Postgres`: cairn's storage seam over PostgreSQL.
//!
//! Appends go through the process's commit writer (`writer.rs`); every
//! other call runs on a pooled connection (deadpool-postgres). Each process
//! keeps a live ring ([`Live`]) of recent commits for its followers, fed
//! in id order by its own commits and by the tail (`tasks.rs`), which reads
//! the rows other processes commit after the ring's last id when
//! PostgreSQL's `NOTIFY` (sent after each commit, outside the ordering
//! path) or a short poll says there may be some.

use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_store::limits::{
    IDEMPOTENCY_WINDOW_MS_DEFAULT, INLINE_PAYLOAD_BYTES_DEFAULT, PAYLOAD_BYTES_MAX_DEFAULT, RECORD_BYTES_MAX,
};
use cairn_store::{
    Batch, BoxFuture, CompactReport, DatabaseStats, Event, EventId, Exclusive, Hash, History, Imported, Limits, Live,
    Pattern, Payload, Pending, Query, Reader, StateEntries, StateOp, Storage, StoreError, StoreStats, Topic, TopicInfo,
    Ttl, VerifyReport, Window,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{pg_error, pool_error};
use crate::reader::PgReader;
use crate::rows::{self, EVENT_COLUMNS};
use crate::{schema, tasks, writer};

/// How a [`Postgres`] storage behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// Largest payload of one event.
    pub payload_bytes_max: u64,
    /// Payloads up to this size stay in the event's row (and the live
    /// ring); larger ones go to `cairn_content` once per hash.
    pub inline_payload_bytes: u64,
    /// How long an idempotency key is remembered.
    pub idempotency_window_ms: u64,
    /// Most pooled connections (the writer, the tail and the listener have
    /// their own).
    pub pool_size: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            payload_bytes_max: PAYLOAD_BYTES_MAX_DEFAULT,
            inline_payload_bytes: INLINE_PAYLOAD_BYTES_DEFAULT,
            idempotency_window_ms: IDEMPOTENCY_WINDOW_MS_DEFAULT,
            pool_size: 16,
        }
    }
}

/// Counters for `stats` and `/metrics`.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) appended: AtomicU64,
    commits: AtomicU64,
    commit_micros: AtomicU64,
    commit_micros_max: AtomicU64,
    /// Groups committed by the fast path, rows first or sequencer first,
    /// and by the slow path.
    pub(crate) rows_first: AtomicU64,
    pub(crate) lock_first: AtomicU64,
    pub(crate) slow: AtomicU64,
    /// Fast-path groups that went again by the slow path.
    pub(crate) redone: AtomicU64,
}

impl Stats {
    pub(crate) fn record_commit(&self, took: Duration, _events: u64) {
        let micros = took.as_micros() as u64;
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_micros.fetch_add(micros, Ordering::Relaxed);
        self.commit_micros_max.fetch_max(micros, Ordering::Relaxed);
    }
}

/// What the tasks and the storage share.
pub(crate) struct Shared {
    config: tokio_postgres::Config,
    /// TLS as the connection string asks (see `tls.rs`).
    tls: MakeRustlsConnect,
    pub(crate) pool: Pool,
    pub(crate) live: Live,
    pub(crate) options: Options,
    /// Orders publication into the ring between the writer and the tail.
    publish: tokio::sync::Mutex<()>,
    /// Wakes the tail: another process may have committed.
    pub(crate) tail_kick: Notify,
    /// Bumped after each own commit; the notifier tells other processes.
    pub(crate) notifier: watch::Sender<u64>,
    /// The removal counter last seen (part of the entity tag).
    pub(crate) changes: AtomicU64,
    /// This process's tag in `NOTIFY` payloads, to ignore its own.
    pub(crate) instance: String,
    pub(crate) stats: Stats,
}

impl Shared {
    /// A connection of its own (not pooled), for a task.
    pub(crate) async fn connect(&self, what: &'static str) -> Result<Client, StoreError> {
        let (client, connection) = self.config.connect(self.tls.clone()).await.map_err(pg_error(what))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("PostgreSQL connection ended: {error}");
            }
        });
        Ok(client)
    }

    /// The config and TLS to connect with (for the listener, which drives
    /// its own connection).
    pub(crate) fn config(&self) -> (&tokio_postgres::Config, MakeRustlsConnect) {
        (&self.config, self.tls.clone())
    }

    /// Puts this process's committed group into the ring: at once when the
    /// ring holds everything before it, else after the tail read the other
    /// processes' commits in between (and maybe this group too).
    pub(crate) async fn publish_own(&self, events: Vec<Arc<Event>>, before: EventId, last: EventId) {
        {
            let _order = self.publish.lock().await;
            let ring_last = self.live.last();
            if ring_last >= last {
                return;
            }
            if ring_last >= before {
                let fresh = events.into_iter().filter(|event| event.id > ring_last).collect();
                self.live.publish(fresh, last, true);
                return;
            }
        }
        self.tail_kick.notify_one();
        let mut signal = self.live.watch();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.live.last() < last && !self.live.is_closed() {
            if tokio::time::timeout_at(deadline, signal.changed()).await.is_err() {
                tracing::warn!("the tail did not read this process's own commit within 5 s");
                return;
            }
        }
    }

    /// Publishes events the tail read (in id order), skipping any already
    /// in the ring; everything up to `through` was read.
    pub(crate) async fn publish_read(&self, events: Vec<Arc<Event>>, through: EventId) {
        let _order = self.publish.lock().await;
        let ring_last = self.live.last();
        if through <= ring_last {
            return;
        }
        let fresh: Vec<Arc<Event>> = events.into_iter().filter(|event| event.id > ring_last).collect();
        self.live.publish(fresh, through, true);
    }

    /// Tells other processes (through the notifier) that this one committed.
    pub(crate) fn notify_others(&self) {
        self.notifier.send_modify(|generation| *generation += 1);
    }

    /// Notes that stored events went away (entity tags change).
    pub(crate) fn changes_if(&self, changed: bool) {
        if changed {
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The stored events among `ids`, in id order (an idempotent repeat).
    pub(crate) async fn events_by_id(&self, ids: &[EventId]) -> Result<Vec<Event>, StoreError> {
        let context = "reading the events of an idempotency key";
        let client = self.pool.get().await.map_err(pool_error(context))?;
        let sql = format!("select {EVENT_COLUMNS} from cairn_events where id = any($1) order by id");
        let statement = client.prepare_cached(&sql).await.map_err(pg_error(context))?;
        let ids: Vec<Vec<u8>> = ids.iter().map(|id| id.to_bytes().to_vec()).collect();
        let rows = client.query(&statement, &[&ids]).await.map_err(pg_error(context))?;
        rows.iter().map(rows::event).collect()
    }
}

/// cairn's storage in a PostgreSQL database. Cheap to share behind an
/// `Arc`; its tasks stop when it is dropped.
pub struct Postgres {
    shared: Arc<Shared>,
    writer: mpsc::Sender<writer::Request>,
    states: mpsc::Sender<tasks::StateRequest>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.shared.live.close();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The answer to a write a writer took and never answered (its task was
/// cancelled, as when the runtime ends): it may or may not have committed.
fn writer_gone() -> StoreError {
    StoreError::Unavailable {
        detail: "the writer stopped with this write in hand; it may or may not have committed".into(),
    }
}

impl Postgres {
    /// Connects to the database at `url` (a `postgres://` URL or a
    /// `key=value` connection string), creates or migrates cairn's schema,
    /// and starts the writer, the tail and the sweeper.
    pub async fn open(url: &str, options: Options) -> Result<Postgres, StoreError> {
        let (url, tls) = crate::tls::split(url)?;
        let mut config = tokio_postgres::Config::from_str(&url).map_err(|error| StoreError::Invalid {
            field: "postgres",
            rule: format!("not a PostgreSQL connection URL or string: {error}"),
        })?;
        if config.get_application_name().is_none() {
            config.application_name("cairn");
        }
        // Every read cairn makes walks an index in id (or key) order with a
        // limit; a sort instead means reading every matching row for each
        // chunk. Right after a bulk append the statistics are stale and
        // the planner would choose that (seen: 0.06x a raw read), so cairn's
        // sessions price sorts out. It is a cost, not a ban.
        //
        // A session idle inside a transaction for 15 s (a cairn process
        // frozen or cut off while it holds the sequencer's lock) is ended by
        // the server, so the other processes' commits go on.
        let mut startup = config.get_options().map(|given| format!("{given} ")).unwrap_or_default();
        // No wait for a lock lasts over 10 s (then the caller gets
        // `unavailable`, and may retry).
        startup.push_str("-c enable_sort=off -c idle_in_transaction_session_timeout=15s -c lock_timeout=10s");
        config.options(&startup);
        // A peer that vanished is noticed in about 30 s, not TCP's 2 hours.
        if !url.contains("keepalives") {
            config.keepalives(true).keepalives_idle(Duration::from_secs(15));
            config.keepalives_interval(Duration::from_secs(5)).keepalives_retries(3);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let (mut client, connection) = config.connect(tls.clone()).await.map_err(pg_error("connecting"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        // An acknowledgement means durable: where the database or role
        // turns synchronous_commit off (or local), cairn's sessions turn it
        // on (a stronger setting, remote_apply, is kept).
        let row = client.query_one("show synchronous_commit", &[]).await.map_err(pg_error("reading settings"))?;
        let setting: String = row.get(0);
        if setting == "off" || setting == "local" {
            tracing::info!("synchronous_commit is {setting} for cairn's role here: cairn's sessions turn it on");
            startup.push_str(" -c synchronous_commit=on");
            config.options(&startup);
            client
                .batch_execute("set synchronous_commit = on")
                .await
                .map_err(pg_error("setting synchronous_commit"))?;
        }
        // Every session of this process uses the schema the first one
        // found, whatever later happens to the role's search_path.
        let row = client.query_one("select current_schema()", &[]).await.map_err(pg_error("reading settings"))?;
        let Some(schema) = row.get::<_, Option<String>>(0) else {
            return Err(StoreError::Invalid {
                field: "postgres",
                rule: "no schema on the search_path to keep cairn's tables in: create one, or name one with \
                       options=-c search_path=<schema> in the URL"
                    .into(),
            });
        };
        let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
        // The server splits `options` at any whitespace byte unless it is
        // escaped with a backslash: every character but letters and digits
        // is. A name beyond ASCII is left to the session's own search_path
        // (a byte of it could be whitespace in the server's locale).
        if quoted.is_ascii() {
            let mut escaped = String::new();
            for c in quoted.chars() {
                if !c.is_ascii_alphanumeric() {
                    escaped.push('\\');
                }
                escaped.push(c);
            }
            startup.push_str(&format!(" -c search_path={escaped}"));
        } else {
            tracing::warn!("cairn's schema has a name beyond ASCII: its sessions are not pinned to it");
        }
        config.options(&startup);
        client.batch_execute(&format!("set search_path = {quoted}")).await.map_err(pg_error("setting search_path"))?;
        schema::migrate(&mut client).await?;
        let row = client
            .query_one("select ms, ctr::text, changes from cairn_sequencer", &[])
            .await
            .map_err(pg_error("reading the sequencer"))?;
        let last = sequencer_id(row.get(0), row.get(1))?;
        let changes: i64 = row.get(2);
        drop(client);

        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|error| StoreError::Invalid { field: "postgres", rule: error.to_string() })?;
        let instance = format!("{}-{}", std::process::id(), EventId::now());
        let shared = Arc::new(Shared {
            config,
            tls,
            pool,
            live: Live::new(last),
            options,
            publish: tokio::sync::Mutex::new(()),
            tail_kick: Notify::new(),
            notifier: watch::channel(0).0,
            changes: AtomicU64::new(changes as u64),
            instance,
            stats: Stats::default(),
        });
        let (writer_tx, writer_rx) = mpsc::channel(1024);
        let (states_tx, states_rx) = mpsc::channel(1024);
        // The two writers are not aborted with the rest: when the last
        // sender goes they commit and answer what they hold, then end, so
        // no append is answered "shutting down" after it committed.
        tokio::spawn(writer::run(shared.clone(), writer_rx));
        tokio::spawn(tasks::states(shared.clone(), states_rx));
        let tasks = vec![
            tokio::spawn(tasks::tail(shared.clone())),
            tokio::spawn(tasks::listen(shared.clone())),
            tokio::spawn(tasks::notify(shared.clone())),
            tokio::spawn(tasks::sweep(shared.clone())),
        ];
        Ok(Postgres { shared, writer: writer_tx, states: states_tx, tasks })
    }

    async fn client(&self, context: &'static str) -> Result<deadpool_postgres::Object, StoreError> {
        self.shared.pool.get().await.map_err(pool_error(context))
    }
}

/// The id the sequencer row holds.
pub(crate) fn sequencer_id(ms: i64, ctr: &str) -> Result<EventId, StoreError> {
    let ctr: u128 = ctr.parse().map_err(|_| StoreError::Corrupt {
        location: "PostgreSQL table cairn_sequencer".into(),
        detail: format!("counter {ctr:?}"),
    })?;
    Ok(EventId::from_u128(((ms as u128) << 80) | ctr))
}

/// Checks `bytes` against `hash`.
pub(crate) fn verified(hash: Hash, bytes: Vec<u8>, what: impl FnOnce() -> String) -> Result<Vec<u8>, StoreError> {
    if Hash::of(&bytes) == hash {
        Ok(bytes)
    } else {
        Err(StoreError::Corrupt { location: what(), detail: format!("the bytes do not match {}", hash.sri()) })
    }
}

/// Deletes events by id within `tx` (which holds the sequencer lock):
/// adjusts topic counts, collects content no event uses any more, and
/// bumps the removal counter. Returns how many were stored.
pub(crate) async fn delete_events(
    tx: &deadpool_postgres::Transaction<'_>,
    ids: &[Vec<u8>],
) -> Result<usize, StoreError> {
    let context = "removing events";
    let delete = tx
        .prepare_cached(
            "with gone as (delete from cairn_events where id = any($1) returning topic, hash, \
             (payload is null and hash is not null) as stored), \
             counted as (update cairn_topics t set count = t.count - g.n from \
             (select topic, count(*) as n from gone group by topic) g where t.topic = g.topic) \
             select count(*)::int8, coalesce(array_agg(hash) filter (where stored), '{}') from gone",
        )
        .await
        .map_err(pg_error(context))?;
    let row = tx.query_one(&delete, &[&ids]).await.map_err(pg_error(context))?;
    let gone: i64 = row.get(0);
    let hashes: Vec<Vec<u8>> = row.get(1);
    if !hashes.is_empty() {
        let collect = tx
            .prepare_cached(
                "delete from cairn_content k where k.hash = any($1) and not k.standalone and not exists \
                 (select 1 from cairn_events e where e.hash = k.hash)",
            )
            .await
            .map_err(pg_error(context))?;
        tx.execute(&collect, &[&hashes]).await.map_err(pg_error(context))?;
    }
    if gone > 0 {
        tx.execute("update cairn_sequencer set changes = changes + 1", &[]).await.map_err(pg_error(context))?;
    }
    Ok(gone as usize)
}

/// Takes the sequencer's lock in `tx`: removals, imports and content
/// deletion wait for commits in flight and hold new ones back.
pub(crate) async fn lock_sequencer(tx: &deadpool_postgres::Transaction<'_>) -> Result<EventId, StoreError> {
    let row = tx
        .query_one("select ms, ctr::text from cairn_sequencer for update", &[])
        .await
        .map_err(pg_error("locking the sequencer"))?;
    sequencer_id(row.get(0), row.get(1))
}

fn topic_info(row: &tokio_postgres::Row) -> Result<TopicInfo, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt { location: "PostgreSQL table cairn_topics".into(), detail };
    let name: &str = row.get(0);
    let topic = Topic::new(name).map_err(|error| corrupt(format!("{name:?}: {error}")))?;
    let last_seq: i64 = row.get(1);
    let last_id: &[u8] = row.get(2);
    let last_id = rows::id_from(last_id).ok_or_else(|| corrupt(format!("{name}: a bad last id")))?;
    let count: i64 = row.get(3);
    let first_seq: Option<i64> = row.get(4);
    Ok(TopicInfo {
        topic,
        count: count.max(0) as u64,
        first_seq: first_seq.map(|seq| seq as u64),
        last_seq: last_seq as u64,
        last_id,
    })
}

/// The advisory lock key of a shared lock: "cairn" in its high bytes and
/// a hash of the name below (FNV-1a), so cairn's locks keep to themselves.
fn advisory_key(name: &str) -> i64 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    (0x6361_6972_i64 << 32) | i64::from(hash)
}

/// A held session advisory lock: unlocked when dropped, or, should that
/// fail, its connection closed (which releases it) rather than pooled.
struct SharedLock {
    client: Option<deadpool_postgres::Object>,
    key: i64,
}

impl Drop for SharedLock {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else { return };
        let key = self.key;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if client.execute("select pg_advisory_unlock($1)", &[&key]).await.is_err() {
                        drop(deadpool_postgres::Object::take(client));
                    }
                });
            }
            Err(_) => drop(deadpool_postgres::Object::take(client)),
        }
    }
}

const TOPIC_COLUMNS: &str =
    "t.topic, t.last_seq, t.last_id, t.count, (select min(e.seq) from cairn_events e where e.topic = t.topic)";

fn refuse(field: &'static str, rule: &str) -> StoreError {
    StoreError::Invalid { field, rule: rule.to_owned() }
}

impl Storage for Postgres {
    fn limits(&self) -> Limits {
        Limits { payload_bytes_max: self.shared.options.payload_bytes_max }
    }

    fn submit(&self, batch: Batch, system: bool) -> BoxFuture<'_, cairn_store::Result<Pending<Vec<Event>>>> {
        Box::pin(async move {
            batch.check_shape()?;
            let options = &self.shared.options;
            let mut events = Vec::with_capacity(batch.events.len());
            let mut stored = Vec::new();
            let mut bytes_total = 0usize;
            for new_event in batch.events {
                let (mut event, bytes) = cairn_store::check_new_event(new_event, system, options.payload_bytes_max)?;
                if let (Some(bytes), Some(hash)) = (bytes, event.hash) {
                    bytes_total += bytes.len();
                    if event.size <= options.inline_payload_bytes || event.ttl == Ttl::Ephemeral {
                        event.payload = Payload::Inline(bytes.into());
                    } else {
                        event.payload = Payload::Stored;
                        stored.push((hash, Arc::new(bytes)));
                    }
                }
                events.push(event);
            }
            if bytes_total > RECORD_BYTES_MAX {
                return Err(StoreError::TooLarge {
                    what: "batch",
                    bytes: bytes_total as u64,
                    max: RECORD_BYTES_MAX as u64,
                });
            }
            // Large payloads go in first, outside the sequencer's lock; the
            // writer puts back any collected in between.
            if !stored.is_empty() {
                let context = "storing payloads";
                let client = self.client(context).await?;
                let put = client
                    .prepare_cached(
                        "insert into cairn_content (hash, bytes, standalone) values ($1, $2, false) \
                         on conflict (hash) do nothing",
                    )
                    .await
                    .map_err(pg_error(context))?;
                for (hash, bytes) in &stored {
                    client.execute(&put, &[&hash.0.as_slice(), &bytes.as_slice()]).await.map_err(pg_error(context))?;
                }
            }
            let key = batch.idempotency_key.map(|key| (key, cairn_store::fingerprint(events.iter())));
            let expect = batch.expect.into_iter().collect();
            let (reply, answer) = oneshot::channel();
            let request = writer::Request { events, stored, expect, key, reply };
            self.writer.send(request).await.map_err(|_| StoreError::ShuttingDown)?;
            Ok(Pending::from_future(async move { answer.await.map_err(|_| writer_gone())? }))
        })
    }

    fn remove(&self, ids: Vec<EventId>) -> BoxFuture<'_, cairn_store::Result<usize>> {
        Box::pin(async move {
            let context = "removing events";
            let mut client = self.client(context).await?;
            let tx = client.transaction().await.map_err(pg_error(context))?;
            lock_sequencer(&tx).await?;
            let ids: Vec<Vec<u8>> = ids.iter().map(|id| id.to_bytes().to_vec()).collect();
            let gone = delete_events(&tx, &ids).await?;
            tx.commit().await.map_err(pg_error(context))?;
            self.shared.changes_if(gone > 0);
            Ok(gone)
        })
    }

    fn import(&self, events: Vec<Imported>) -> BoxFuture<'_, cairn_store::Result<usize>> {
        Box::pin(crate::import::import(&self.shared, events))
    }

    fn state_submit(&self, ops: Vec<StateOp>) -> BoxFuture<'_, cairn_store::Result<Pending<()>>> {
        Box::pin(async move {
            cairn_store::check_state_ops(&ops)?;
            let (reply, answer) = oneshot::channel();
            self.states.send(tasks::StateRequest { ops, reply }).await.map_err(|_| StoreError::ShuttingDown)?;
            Ok(Pending::from_future(async move { answer.await.map_err(|_| writer_gone())? }))
        })
    }

    fn state_scan(&self, prefix: Vec<u8>) -> BoxFuture<'_, cairn_store::Result<StateEntries>> {
        Box::pin(async move {
            let context = "reading state records";
            let client = self.client(context).await?;
            let rows = match rows::prefix_end(&prefix) {
                Some(end) => {
                    let sql = "select key, value from cairn_state where key >= $1 and key < $2 order by key";
                    let statement = client.prepare_cached(sql).await.map_err(pg_error(context))?;
                    client.query(&statement, &[&prefix, &end]).await
                }
                None => {
                    let sql = "select key, value from cairn_state where key >= $1 order by key";
                    let statement = client.prepare_cached(sql).await.map_err(pg_error(context))?;
                    client.query(&statement, &[&prefix]).await
                }
            }
            .map_err(pg_error(context))?;
            Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
        })
    }

    fn sync(&self) -> BoxFuture<'_, cairn_store::Result<()>> {
        // Every acknowledgement came after a synchronous commit.
        Box::pin(async { Ok(()) })
    }

    fn expire_now(&self) -> BoxFuture<'_, cairn_store::Result<usize>> {
        Box::pin(tasks::expire(&self.shared))
    }

    fn get(&self, id: EventId) -> BoxFuture<'_, cairn_store::Result<Option<Event>>> {
        Box::pin(async move {
            let context = "reading an event";
            let client = self.client(context).await?;
            let sql = format!("select {EVENT_COLUMNS} from cairn_events where id = $1");
            let statement = client.prepare_cached(&sql).await.map_err(pg_error(context))?;
            let id = id.to_bytes().to_vec();
            let row = client.query_opt(&statement, &[&id]).await.map_err(pg_error(context))?;
            row.as_ref().map(rows::event).transpose()
        })
    }

    fn read(&self, query: Query, content: bool) -> BoxFuture<'_, cairn_store::Result<Box<dyn Reader>>> {
        Box::pin(async move {
            query.validate()?;
            let reader = PgReader::start(self.shared.clone(), query, content).await?;
            Ok(Box::new(reader) as Box<dyn Reader>)
        })
    }

    fn head(&self, topic: Topic) -> BoxFuture<'_, cairn_store::Result<Option<TopicInfo>>> {
        Box::pin(async move {
            let context = "reading a topic";
            let client = self.client(context).await?;
            let sql = format!("select {TOPIC_COLUMNS} from cairn_topics t where t.topic = $1");
            let statement = client.prepare_cached(&sql).await.map_err(pg_error(context))?;
            let row = client.query_opt(&statement, &[&topic.as_str()]).await.map_err(pg_error(context))?;
            row.as_ref().map(topic_info).transpose()
        })
    }

    fn topics(&self) -> BoxFuture<'_, cairn_store::Result<Vec<TopicInfo>>> {
        Box::pin(async move {
            let context = "listing topics";
            let client = self.client(context).await?;
            let sql = format!("select {TOPIC_COLUMNS} from cairn_topics t order by t.topic");
            let statement = client.prepare_cached(&sql).await.map_err(pg_error(context))?;
            let rows = client.query(&statement, &[]).await.map_err(pg_error(context))?;
            rows.iter().map(topic_info).collect()
        })
    }

    fn content<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, cairn_store::Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let what = || format!("the payload of event {}", event.id);
            match (&event.payload, event.hash) {
                (Payload::None, _) => Ok(None),
                (Payload::Inline(bytes), Some(hash)) => verified(hash, bytes.to_vec(), what).map(Some),
                (Payload::Inline(bytes), None) => Ok(Some(bytes.to_vec())),
                (Payload::Stored, None) => Err(StoreError::Corrupt {
                    location: format!("event {}", event.id),
                    detail: "stored payload without a hash".to_owned(),
                }),
                (Payload::Stored, Some(hash)) => {
                    let context = "reading a payload";
                    let client = self.client(context).await?;
                    let sql = "select bytes from cairn_content where hash = $1";
                    let statement = client.prepare_cached(sql).await.map_err(pg_error(context))?;
                    let row = client.query_opt(&statement, &[&hash.0.as_slice()]).await.map_err(pg_error(context))?;
                    match row {
                        Some(row) => verified(hash, row.get(0), what).map(Some),
                        None => Err(StoreError::Corrupt {
                            location: format!("content {}", hash.sri()),
                            detail: format!("the payload of event {} is missing", event.id),
                        }),
                    }
                }
            }
        })
    }

    fn cas_put(&self, bytes: Vec<u8>) -> BoxFuture<'_, cairn_store::Result<Hash>> {
        Box::pin(async move {
            let max = self.shared.options.payload_bytes_max;
            if bytes.len() as u64 > max {
                return Err(StoreError::TooLarge { what: "content", bytes: bytes.len() as u64, max });
            }
            let hash = Hash::of(&bytes);
            let context = "storing content";
            let client = self.client(context).await?;
            // Content already there as a stored event's payload stays the
            // event's (removing the event collects it, as on the local
            // engine); content there that no event uses any more (left by
            // a trim, not yet collected) becomes content stored on its own,
            // so a put that succeeded is never collected.
            let sql = "insert into cairn_content as k (hash, bytes, standalone) values ($1, $2, true) \
                       on conflict (hash) do update set standalone = k.standalone or not exists \
                       (select 1 from cairn_events e where e.hash = excluded.hash)";
            let statement = client.prepare_cached(sql).await.map_err(pg_error(context))?;
            client.execute(&statement, &[&hash.0.as_slice(), &bytes]).await.map_err(pg_error(context))?;
            Ok(hash)
        })
    }

    fn cas_get(&self, hash: Hash) -> BoxFuture<'_, cairn_store::Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let context = "reading content";
            let client = self.client(context).await?;
            let sql = "(select bytes from cairn_content where hash = $1) union all \
                       (select payload from cairn_events where hash = $1 and payload is not null limit 1) limit 1";
            let statement = client.prepare_cached(sql).await.map_err(pg_error(context))?;
            let row = client.query_opt(&statement, &[&hash.0.as_slice()]).await.map_err(pg_error(context))?;
            match row {
                Some(row) => verified(hash, row.get(0), || format!("content {}", hash.sri())).map(Some),
                None => Ok(None),
            }
        })
    }

    fn cas_delete(&self, hash: Hash) -> BoxFuture<'_, cairn_store::Result<bool>> {
        Box::pin(async move {
            let context = "deleting content";
            let mut client = self.client(context).await?;
            let tx = client.transaction().await.map_err(pg_error(context))?;
            lock_sequencer(&tx).await?;
            let user = tx
                .query_opt("select id from cairn_events where hash = $1 limit 1", &[&hash.0.as_slice()])
                .await
                .map_err(pg_error(context))?;
            if let Some(row) = user {
                let id: &[u8] = row.get(0);
                let event = rows::id_from(id).unwrap_or(EventId::MIN);
                return Err(StoreError::InUse { hash: hash.sri(), event });
            }
            let deleted = tx
                .execute("delete from cairn_content where hash = $1", &[&hash.0.as_slice()])
                .await
                .map_err(pg_error(context))?;
            tx.commit().await.map_err(pg_error(context))?;
            Ok(deleted > 0)
        })
    }

    fn content_topics(&self, hash: Hash, max: usize) -> BoxFuture<'_, cairn_store::Result<Vec<Topic>>> {
        Box::pin(async move {
            let context = "finding the topics of content";
            let client = self.client(context).await?;
            let sql = "select distinct topic from cairn_events where hash = $1 limit $2";
            let statement = client.prepare_cached(sql).await.map_err(pg_error(context))?;
            let max = max.min(i64::MAX as usize) as i64;
            let rows = client.query(&statement, &[&hash.0.as_slice(), &max]).await.map_err(pg_error(context))?;
            rows.iter()
                .map(|row| {
                    let name: &str = row.get(0);
                    Topic::new(name)
                })
                .collect()
        })
    }

    fn last_id(&self) -> EventId {
        self.shared.live.last()
    }

    fn watch(&self, pattern: &Pattern) -> watch::Receiver<u64> {
        self.shared.live.watch_pattern(pattern)
    }

    fn live_after(&self, cursor: EventId, pattern: &Pattern, max: usize) -> Window {
        self.shared.live.after(cursor, pattern, max)
    }

    fn history(&self, pattern: Pattern, after: EventId, max: usize) -> BoxFuture<'_, cairn_store::Result<History>> {
        Box::pin(async move {
            let context = "reading history";
            let client = self.client(context).await?;
            let condition = rows::pattern_condition(&pattern, 3);
            let sql = format!(
                "select {EVENT_COLUMNS} from cairn_events where id > $1 {} order by id limit $2",
                condition.as_ref().map(|(sql, _)| format!("and {sql}")).unwrap_or_default()
            );
            let sequencer =
                client.prepare_cached("select ms, ctr::text from cairn_sequencer").await.map_err(pg_error(context))?;
            let statement = client.prepare_cached(&sql).await.map_err(pg_error(context))?;
            let after_bytes = after.to_bytes().to_vec();
            let limit = max.min(100_000) as i64;
            // Pipelined: the sequencer is read first, so the events' later
            // snapshot holds every commit up to the id it names.
            let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&after_bytes, &limit];
            if let Some((_, value)) = &condition {
                params.push(value);
            }
            let (through, rows) =
                tokio::try_join!(client.query_one(&sequencer, &[]), client.query(&statement, &params))
                    .map_err(pg_error(context))?;
            let through = sequencer_id(through.get(0), through.get(1))?;
            let mut events = rows::events(&rows)?;
            events.retain(|event| event.id <= through);
            Ok(History { events, through: through.max(after) })
        })
    }

    fn is_closed(&self) -> bool {
        self.shared.live.is_closed()
    }

    fn version(&self) -> String {
        format!("{}-{}", self.shared.live.last(), self.shared.changes.load(Ordering::Relaxed))
    }

    fn stats(&self) -> BoxFuture<'_, StoreStats> {
        Box::pin(async move {
            let stats = &self.shared.stats;
            let pool = self.shared.pool.status();
            let mut out = StoreStats {
                events_appended: stats.appended.load(Ordering::Relaxed),
                database: Some(DatabaseStats {
                    commits: stats.commits.load(Ordering::Relaxed),
                    commit_seconds: stats.commit_micros.load(Ordering::Relaxed) as f64 / 1e6,
                    commit_seconds_max: stats.commit_micros_max.load(Ordering::Relaxed) as f64 / 1e6,
                    commits_rows_first: stats.rows_first.load(Ordering::Relaxed),
                    commits_lock_first: stats.lock_first.load(Ordering::Relaxed),
                    commits_slow: stats.slow.load(Ordering::Relaxed),
                    groups_redone: stats.redone.load(Ordering::Relaxed),
                    pool_connections: pool.size,
                    pool_idle: pool.available,
                    pool_waiting: pool.waiting,
                    pool_max: pool.max_size,
                }),
                ..StoreStats::default()
            };
            if let Ok(client) = self.client("reading sizes").await {
                let sql = "select pg_total_relation_size('cairn_events') + pg_total_relation_size('cairn_ephemeral'), \
                           pg_total_relation_size('cairn_content')";
                if let Ok(row) = client.query_one(sql, &[]).await {
                    out.log_bytes = row.get::<_, i64>(0) as u64;
                    out.content_bytes = row.get::<_, i64>(1) as u64;
                }
            }
            out
        })
    }

    fn verify(&self) -> BoxFuture<'_, cairn_store::Result<VerifyReport>> {
        Box::pin(tasks::verify(&self.shared))
    }

    fn backup(
        &self,
        _dest: std::path::PathBuf,
        _progress: Arc<cairn_store::BackupProgress>,
        _extra_files: cairn_store::ExtraFiles,
    ) -> BoxFuture<'_, cairn_store::Result<cairn_store::BackupReport>> {
        Box::pin(async {
            Err(refuse(
                "backup",
                "the events live in PostgreSQL: back them up with PostgreSQL's tools (pg_dump, pg_basebackup, \
                 replicas), or copy them with `cairn export`",
            ))
        })
    }

    fn exclusive(&self, name: &'static str) -> BoxFuture<'_, cairn_store::Result<Option<Exclusive>>> {
        Box::pin(async move {
            let context = "taking a lock shared by cairn's processes";
            let key = advisory_key(name);
            let client = self.client(context).await?;
            // The wait (at most lock_timeout, 10 s) runs in a task of its
            // own: a caller that goes away meanwhile must not leave the
            // lock to be granted to a pooled connection nobody unlocks.
            let (taken, answer) = oneshot::channel();
            tokio::spawn(async move {
                match client.execute("select pg_advisory_lock($1)", &[&key]).await {
                    Ok(_) => {
                        let lock = SharedLock { client: Some(client), key };
                        // Unwanted now: dropping it unlocks.
                        let _ = taken.send(Ok(lock));
                    }
                    Err(error) => {
                        // Whatever the session holds goes with it.
                        drop(deadpool_postgres::Object::take(client));
                        let _ = taken.send(Err(pg_error(context)(error)));
                    }
                }
            });
            let lock = answer.await.map_err(|_| StoreError::ShuttingDown)??;
            Ok(Some(Box::new(lock) as Exclusive))
        })
    }

    fn compact(&self, _ratio: f64) -> BoxFuture<'_, cairn_store::Result<CompactReport>> {
        Box::pin(async {
            Err(refuse(
                "compact",
                "the events live in PostgreSQL, whose autovacuum gives back the space of removed rows",
            ))
        })
    }
}
