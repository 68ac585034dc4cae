//! The commit writer: one task per process gathers every append waiting at
//! that moment into one transaction, under one acquisition of the
//! sequencer row (see ARCHITECTURE.md, "cairn on PostgreSQL").
//!
//! The slow path is two round trips, each a pipeline of statements:
//! 1. `begin`; lock the sequencer row (`for update`); the touched topics'
//!    last seq and id; the idempotency keys asked about; which large
//!    payloads are in `cairn_content`. PostgreSQL runs pipelined statements
//!    in order, and in READ COMMITTED each takes its snapshot when it
//!    starts, so every read after the lock sees every commit before it.
//! 2. The plan (expectations, seqs, ids, repeats) is made here; then the
//!    new sequencer value, the rows, the topics, `last:<n>` trims, the
//!    keys, and `commit`.
//!
//! The fast path is one round trip: while the sequencer holds the id and
//! the tag this writer last wrote, no other process committed, so the
//! topics' tails it remembers are current; the group is planned from them
//! and written with an update of the sequencer guarded by that id and tag
//! (a group of stored events only is a single statement, which writes its
//! rows before it takes the sequencer while no other writer is about: see
//! [`one_statement`]). Up to two fast-path groups may be in flight (see
//! [`Pace`]): the next is planned after the one before and fails its guard
//! if that one did not commit; such groups go again by the slow path.
//!
//! The row lock is held from the update of the sequencer to the commit,
//! and every group's rows become visible at its commit, so groups
//! (of every process) commit one after another, in id order, and a reader
//! never sees an id before a smaller one. A batch whose expectation or key
//! fails is answered alone; the rest of its group commits. A failed
//! statement fails its whole group, and nothing of it is acknowledged; when
//! the commit's answer is lost (the connection broke) the callers get
//! `Unavailable`, as their write may or may not have committed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_store::{Event, EventId, Expect, Hash, StoreError, Topic, Ttl};
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::backend::Shared;
use crate::error::pg_error;
use crate::rows;

/// Most events gathered into one group (a batch larger than this is a
/// group of its own).
const GROUP_EVENTS_MAX: usize = 8192;
/// Scheduler turns a small group waits for the rest of the last group's
/// callers.
const GROUP_YIELDS: usize = 8;
/// Most payload bytes gathered into one group.
const GROUP_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The commit writer's lock timeout while it writes rows before it takes
/// the sequencer (see [`one_statement`]). A fast-path group that meets a
/// lock (another writer holds the sequencer, or rows it would have to wait
/// on) goes again by the slow path: its guard would fail anyway, and its
/// rows must not keep a writer that holds the sequencer waiting (a
/// deadlock PostgreSQL would break only after a second).
const ROWS_FIRST_LOCK_TIMEOUT: &str = "set lock_timeout = '1ms'";
/// The sessions' usual lock timeout, set again when the writer goes back
/// to taking the sequencer first.
const LOCK_FIRST_LOCK_TIMEOUT: &str = "set lock_timeout = '10s'";
/// Starts a transaction that takes the sequencer first (the slow path, and
/// fast-path groups that are not one statement), with the usual lock
/// timeout whatever the session's.
const BEGIN: &str = "begin; set local lock_timeout = '10s'";
/// How long after another writer was met the fast path takes the
/// sequencer first.
const CONTENDED_FOR: Duration = Duration::from_secs(1);

/// The fast path's usual group (stored events only) as one statement, its
/// own transaction: the sequencer advanced if it still holds the writer's
/// last id, the rows, the topics. Each step names the one before, so
/// PostgreSQL runs them in the order given.
///
/// `rows_first` writes the rows before it takes the sequencer: the
/// statement then costs about a quarter less, and a writer alone on its
/// database commits about 15% more (measured: ARCHITECTURE.md). With other
/// writers about it would do wasted work and make them wait, so the writer
/// uses it only while it has met none for [`CONTENDED_FOR`], and then
/// with [`ROWS_FIRST_LOCK_TIMEOUT`].
fn one_statement(rows_first: bool) -> String {
    let rows = |after: &str| {
        format!(
            "insert into cairn_events (id, topic, seq, kind, meta, usr, hash, size, ttl, expires_ms, imported, \
             payload) select * from unnest($5::bytea[], $6::text[], $7::int8[], $8::text[], $9::text[], \
             $10::text[], $11::bytea[], $12::int8[], $13::text[], $14::int8[], $15::bool[], $16::bytea[]) {after} \
             returning 1"
        )
    };
    let advance = |after: &str| {
        format!(
            "update cairn_sequencer set ms = case when {after} ms = $1 and ctr = $2::text::numeric and writer = $21 \
             then $3::int8 end, ctr = $4::text::numeric, writer = $21 returning 1"
        )
    };
    let topics = |after: &str| {
        format!(
            "insert into cairn_topics (topic, last_seq, last_id, count) select * from unnest($17::text[], \
             $18::int8[], $19::bytea[], $20::int8[]) where (select count(*) from {after}) >= 0 on conflict (topic) \
             do update set last_seq = excluded.last_seq, last_id = excluded.last_id, count = cairn_topics.count + \
             excluded.count returning 1"
        )
    };
    if rows_first {
        format!(
            "with inserted as ({}), advanced as ({}), topics as ({}) select (select count(*) from topics)",
            rows(""),
            advance("(select count(*) from inserted) >= 0 and"),
            topics("advanced"),
        )
    } else {
        format!(
            "with advanced as ({}), inserted as ({}), topics as ({}) select (select count(*) from topics)",
            advance(""),
            rows("where (select count(*) from advanced) >= 0"),
            topics("inserted"),
        )
    }
}

/// Inserts rows from [`Columns::params`].
pub(crate) const INSERT_EVENTS: &str = "insert into cairn_events (id, topic, seq, kind, meta, usr, hash, size, \
     ttl, expires_ms, imported, payload) select * from unnest($1::bytea[], $2::text[], $3::int8[], $4::text[], \
     $5::text[], $6::text[], $7::bytea[], $8::int8[], $9::text[], $10::int8[], $11::bool[], $12::bytea[])";

/// An append waiting for its group.
pub(crate) struct Request {
    /// Checked events, payloads placed (inline, or stored beforehand).
    pub(crate) events: Vec<Event>,
    /// The bytes of stored payloads, put again if they were collected
    /// between the caller's put and this commit.
    pub(crate) stored: Vec<(Hash, Arc<Vec<u8>>)>,
    pub(crate) expect: Vec<(Topic, Expect)>,
    pub(crate) key: Option<(String, [u8; 32])>,
    pub(crate) reply: oneshot::Sender<Result<Vec<Event>, StoreError>>,
}

impl Request {
    fn bytes(&self) -> usize {
        self.events.iter().map(|event| event.inline_len()).sum()
    }
}

/// The writer's own connection and its prepared statements.
struct Conn {
    client: Client,
    /// Written with each advance of the sequencer, and part of the fast
    /// path's guard: another process advancing it to the same value (the
    /// same count from the same id in the same millisecond) still fails it.
    instance: String,
    lock: Statement,
    topics: Statement,
    keys: Statement,
    present: Statement,
    advance: Statement,
    advance_guarded: Statement,
    /// The fast path's usual group as one statement: see [`one_statement`].
    lock_first: Statement,
    rows_first: Statement,
    insert: Statement,
    insert_ephemeral: Statement,
    upsert_topics: Statement,
    trim: Statement,
    insert_key: Statement,
    put_content: Statement,
}

impl Conn {
    async fn open(shared: &Shared) -> Result<Conn, StoreError> {
        let client = shared.connect("the commit writer").await?;
        let prepare = |sql: String| {
            let client = &client;
            async move { client.prepare(&sql).await.map_err(pg_error("preparing the commit writer's statements")) }
        };
        Ok(Conn {
            lock: prepare("select ms, ctr::text from cairn_sequencer for update".into()).await?,
            topics: prepare("select topic, last_seq, last_id from cairn_topics where topic = any($1)".into()).await?,
            keys: prepare(
                "select key, fingerprint, ids from cairn_idempotency where key = any($1) and at_ms >= $2".into(),
            )
            .await?,
            present: prepare("select hash from cairn_content where hash = any($1)".into()).await?,
            advance: prepare("update cairn_sequencer set ms = $1, ctr = $2::text::numeric, writer = $3".into()).await?,
            // Sets ms to null (refused: not null) unless the row still
            // holds the id the writer last saw.
            advance_guarded: prepare(
                "update cairn_sequencer set ms = case when ms = $1 and ctr = $2::text::numeric and writer = $5 \
                 then $3::int8 end, ctr = $4::text::numeric, writer = $5"
                    .into(),
            )
            .await?,
            insert: prepare(INSERT_EVENTS.into()).await?,
            lock_first: prepare(one_statement(false)).await?,
            rows_first: prepare(one_statement(true)).await?,
            insert_ephemeral: prepare(
                "insert into cairn_ephemeral (id, topic, seq, kind, meta, usr, hash, size, payload) select * from \
                 unnest($1::bytea[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::bytea[], \
                 $8::int8[], $9::bytea[])"
                    .into(),
            )
            .await?,
            upsert_topics: prepare(
                "insert into cairn_topics (topic, last_seq, last_id, count) select * from unnest($1::text[], \
                 $2::int8[], $3::bytea[], $4::int8[]) on conflict (topic) do update set last_seq = \
                 excluded.last_seq, last_id = excluded.last_id, count = cairn_topics.count + excluded.count"
                    .into(),
            )
            .await?,
            trim: prepare(
                "with gone as (delete from cairn_events where topic = $1 and seq <= $2 returning hash, \
                 (payload is null and hash is not null) as stored), counted as (update cairn_topics set count = \
                 count - (select count(*) from gone) where topic = $1) select hash from gone where stored"
                    .into(),
            )
            .await?,
            insert_key: prepare(
                "insert into cairn_idempotency (key, fingerprint, ids, at_ms) values ($1, $2, $3, $4) on conflict \
                 (key) do update set fingerprint = excluded.fingerprint, ids = excluded.ids, at_ms = excluded.at_ms"
                    .into(),
            )
            .await?,
            put_content: prepare(
                "insert into cairn_content (hash, bytes, standalone) values ($1, $2, false) on conflict (hash) do \
                 nothing"
                    .into(),
            )
            .await?,
            client,
            instance: shared.instance.clone(),
        })
    }
}

/// Runs the writer until every sender is gone.
pub(crate) async fn run(shared: Arc<Shared>, mut requests: mpsc::Receiver<Request>) {
    let mut writer = Writer {
        shared,
        conn: None,
        rows_first_session: false,
        contended_until: None,
        cache: Cache::default(),
        pace: Pace::new(Instant::now()),
        in_flight: VecDeque::new(),
        redo: Vec::new(),
    };
    // Requests in the last group: the callers just answered, most of whom
    // submit again at once.
    let mut last_group = 0;
    let mut open = true;
    loop {
        let first = if writer.in_flight.is_empty() {
            if !open {
                return;
            }
            match requests.try_recv() {
                Ok(first) => first,
                Err(_) => {
                    // A lull says nothing of either depth (the short waits
                    // for callers to come back are part of a depth's cost).
                    let waiting = Instant::now();
                    let first = requests.recv().await;
                    if waiting.elapsed() >= PACE_LULL {
                        writer.pace.skip(waiting.elapsed());
                    }
                    match first {
                        Some(first) => first,
                        None => return,
                    }
                }
            }
        } else if writer.in_flight.len() < writer.pace.depth() && open {
            let front = writer.in_flight.front_mut().expect("a group in flight");
            tokio::select! {
                biased;
                result = &mut front.write => {
                    writer.landed(result).await;
                    continue;
                }
                request = requests.recv() => match request {
                    Some(first) => first,
                    None => {
                        open = false;
                        continue;
                    }
                },
            }
        } else {
            let front = writer.in_flight.front_mut().expect("a group in flight");
            let result = (&mut front.write).await;
            writer.landed(result).await;
            continue;
        };
        let (mut events, mut bytes) = (first.events.len(), first.bytes());
        let mut group = vec![first];
        let mut yields = 0;
        loop {
            while events < GROUP_EVENTS_MAX && bytes < GROUP_BYTES_MAX {
                let Ok(next) = requests.try_recv() else { break };
                events += next.events.len();
                bytes += next.bytes();
                group.push(next);
            }
            // The first caller to come back would otherwise commit alone
            // and make the others wait for it: give the rest of the last
            // group's callers a moment (a few scheduler turns) to join.
            if group.len() * 2 > last_group || yields == GROUP_YIELDS || events >= GROUP_EVENTS_MAX {
                break;
            }
            yields += 1;
            tokio::task::yield_now().await;
        }
        last_group = group.len();
        let (replies, group) = split(group);
        writer.start(replies, group, events).await;
    }
}

/// How many fast-path groups the writer keeps in flight: one or two.
///
/// With two, the next group is planned and sent while one commits, so the
/// database never waits for this process, but each group holds about half
/// of the callers. With one, each group holds all of them, but the
/// database waits while they are answered and come back. Which is faster
/// depends on the WAL flush's time against that turnaround, so on the disk
/// and on the day. Measured with 16 clients (`cairn-bench postgres`,
/// README): on a quiet disk two gave 1.08-1.15x the raw inserts and one
/// 0.96-1.05x; with another process writing and syncing on the same disk
/// two gave 0.78-0.83x and one 0.89-0.90x. A model of the two (compare the
/// flush with the turnaround) picked one on both, so the writer measures
/// instead: it runs three seconds at its depth, then 0.3 s at the
/// other, and keeps the other when that committed 8% more events a second.
struct Pace {
    /// The depth the writer keeps.
    depth: usize,
    /// Whether the current stretch tries the other.
    probing: bool,
    started: Instant,
    /// Events the fast path committed in the current stretch.
    events: u64,
    /// Events a second of the last stretch at `depth`.
    kept_rate: f64,
}

/// How long the writer keeps its depth, and tries the other.
const PACE_KEEP: Duration = Duration::from_secs(3);
const PACE_PROBE: Duration = Duration::from_millis(300);
/// A wait for a request at least this long is a lull, left out of the
/// stretches.
const PACE_LULL: Duration = Duration::from_millis(20);
/// How much more a try must commit to be kept (the rates of stretches at
/// one depth vary by a few percent).
const PACE_BETTER: f64 = 1.08;

impl Pace {
    fn new(now: Instant) -> Pace {
        Pace { depth: 2, probing: false, started: now, events: 0, kept_rate: 0.0 }
    }

    fn depth(&self) -> usize {
        if self.probing { 3 - self.depth } else { self.depth }
    }

    /// Leaves `idle` out of the current stretch.
    fn skip(&mut self, idle: Duration) {
        self.started += idle;
    }

    /// A fast-path group of `events` committed.
    fn committed(&mut self, events: usize, now: Instant) {
        self.events += events as u64;
        let took = now.saturating_duration_since(self.started);
        if took < if self.probing { PACE_PROBE } else { PACE_KEEP } {
            return;
        }
        let rate = self.events as f64 / took.as_secs_f64();
        if self.probing {
            if rate > self.kept_rate * PACE_BETTER {
                self.depth = 3 - self.depth;
            }
        } else {
            self.kept_rate = rate;
        }
        self.probing = !self.probing;
        self.started = now;
        self.events = 0;
    }
}

/// The commit writer's state.
struct Writer {
    shared: Arc<Shared>,
    conn: Option<Arc<Conn>>,
    /// Whether the connection's session has [`ROWS_FIRST_LOCK_TIMEOUT`].
    rows_first_session: bool,
    /// Until when the fast path takes the sequencer first: another writer
    /// was met (see [`one_statement`]).
    contended_until: Option<Instant>,
    cache: Cache,
    pace: Pace,
    /// Fast-path groups sent, oldest first.
    in_flight: VecDeque<InFlight>,
    /// Groups whose guard failed, to commit again by the slow path once
    /// nothing is in flight.
    redo: Vec<(Vec<Reply>, Vec<Work>, usize)>,
}

/// A fast-path group sent to the database.
struct InFlight {
    write: Pin<Box<dyn Future<Output = Written> + Send>>,
    /// Whether it writes its rows before it takes the sequencer.
    rows_first: bool,
    plan: Arc<Plan>,
    /// The sequencer's value the group was planned after.
    before: EventId,
    replies: Vec<Reply>,
    work: Vec<Work>,
    events: usize,
    started: Instant,
}

impl Writer {
    /// The connection, opened if needed (all groups fail when it cannot be).
    async fn conn(&mut self) -> Result<Arc<Conn>, StoreError> {
        if let Some(conn) = &self.conn
            && !conn.client.is_closed()
        {
            return Ok(conn.clone());
        }
        self.conn = None;
        self.rows_first_session = false;
        self.cache.forget();
        let conn = Arc::new(Conn::open(&self.shared).await?);
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Commits a new group: sent behind those in flight on the fast path
    /// when it can take it, else by the slow path once nothing is in flight.
    async fn start(&mut self, replies: Vec<Reply>, group: Vec<Work>, events: usize) {
        let conn = match self.conn().await {
            Ok(conn) => conn,
            Err(error) => return fail(replies, &error),
        };
        let now = now_ms();
        // A plan that writes nothing (every request refused) is not
        // trusted to the cache: only the guard of a write proves it current.
        if let Some(known) = self.cache.known(&group)
            && let plan = plan(&group, &known, now)
            && plan.writes()
        {
            // The session's lock timeout changes in the group's own
            // pipeline, before its statement (awaited apart, it would wait
            // behind the groups in flight while nobody reads their answers).
            let calm = self.contended_until.is_none_or(|until| Instant::now() >= until);
            let session = (calm != self.rows_first_session).then_some(if calm {
                ROWS_FIRST_LOCK_TIMEOUT
            } else {
                LOCK_FIRST_LOCK_TIMEOUT
            });
            self.rows_first_session = calm;
            let rows_first = calm && plan.one_statement();
            let plan = Arc::new(plan);
            // What the next group is planned after: this one, if it commits.
            self.cache.remember(plan.last, plan.tails.clone());
            let (sent_conn, sent_plan) = (conn.clone(), plan.clone());
            let mut write: Pin<Box<dyn Future<Output = Written> + Send>> =
                Box::pin(
                    async move { write(&sent_conn, &sent_plan, Some(known.last), session, rows_first, now).await },
                );
            // The first poll sends the whole pipeline, so the next group's
            // statements follow this one's on the connection.
            let first = std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await;
            if let std::task::Poll::Ready(result) = first {
                write = Box::pin(std::future::ready(result));
            }
            self.in_flight.push_back(InFlight {
                write,
                rows_first,
                plan,
                before: known.last,
                replies,
                work: group,
                events,
                started: Instant::now(),
            });
            return;
        }
        self.drain().await;
        self.slow(replies, group, events).await;
    }

    /// Waits for every group in flight, then commits those to redo.
    async fn drain(&mut self) {
        while let Some(front) = self.in_flight.front_mut() {
            let result = (&mut front.write).await;
            self.landed(result).await;
        }
    }

    /// The oldest group in flight has its answer.
    async fn landed(&mut self, result: Written) {
        let Some(mut flight) = self.in_flight.pop_front() else { return };
        flight.write = Box::pin(std::future::ready(Ok(Vec::new())));
        match result {
            Ok(trimmed) => {
                collect_content(&self.shared, trimmed);
                self.shared.stats.record_commit(flight.started.elapsed(), flight.events as u64);
                self.pace.committed(flight.events, Instant::now());
                let path =
                    if flight.rows_first { &self.shared.stats.rows_first } else { &self.shared.stats.lock_first };
                path.fetch_add(1, Ordering::Relaxed);
                let plan = Arc::try_unwrap(flight.plan).unwrap_or_else(|shared| (*shared).clone());
                let outcomes = finish(&self.shared, plan, flight.before).await;
                for (reply, outcome) in flight.replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(error) if let Some(met) = moved(&error, flight.rows_first) => {
                // Another process committed since the cache was right (or
                // a group before this one failed), or a rows-first group
                // met a lock: plan it again, reading.
                self.cache.forget();
                self.shared.stats.redone.fetch_add(1, Ordering::Relaxed);
                if met == Met::Writer {
                    self.contended_until = Some(Instant::now() + CONTENDED_FOR);
                }
                self.redo.push((flight.replies, flight.work, flight.events));
            }
            Err(error) => {
                self.cache.forget();
                let error = pg_error("committing appends")(error);
                tracing::warn!("a commit group failed: {error}");
                fail(flight.replies, &error);
            }
        }
        if self.in_flight.is_empty() && !self.redo.is_empty() {
            for (replies, group, events) in std::mem::take(&mut self.redo) {
                self.slow(replies, group, events).await;
            }
        }
    }

    /// The slow path, alone on the connection.
    async fn slow(&mut self, replies: Vec<Reply>, group: Vec<Work>, events: usize) {
        let conn = match self.conn().await {
            Ok(conn) => conn,
            Err(error) => return fail(replies, &error),
        };
        // Ends a transaction a failed pipeline left (a warning when none).
        let _ = conn.client.batch_execute("rollback").await;
        let started = Instant::now();
        match commit_slow(&self.shared, &conn, &mut self.cache, group).await {
            Ok((outcomes, trimmed)) => {
                collect_content(&self.shared, trimmed);
                self.shared.stats.record_commit(started.elapsed(), events as u64);
                self.shared.stats.slow.fetch_add(1, Ordering::Relaxed);
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(error) => {
                let _ = conn.client.batch_execute("rollback").await;
                tracing::warn!("a commit group failed: {error}");
                fail(replies, &error);
            }
        }
    }
}

/// What a group's write gives: the hashes of stored payloads its trims
/// dropped.
type Written = Result<Vec<Vec<u8>>, tokio_postgres::Error>;

/// Collects the content of payloads trims dropped, if no event uses it,
/// in a transaction of its own under the sequencer's lock (as removals do:
/// a commit in flight may be about to use that content again).
fn collect_content(shared: &Arc<Shared>, hashes: Vec<Vec<u8>>) {
    if hashes.is_empty() {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        if let Err(error) = crate::tasks::collect_content(&shared, &hashes).await {
            tracing::debug!("collecting trimmed content failed (the minute's tidy retries): {error}");
        }
    });
}

/// Answers every request of a group with `error`.
fn fail(replies: Vec<Reply>, error: &StoreError) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

type Reply = oneshot::Sender<Result<Vec<Event>, StoreError>>;

/// Work of a request, apart from its reply.
struct Work {
    events: Vec<Event>,
    stored: Vec<(Hash, Arc<Vec<u8>>)>,
    expect: Vec<(Topic, Expect)>,
    key: Option<(String, [u8; 32])>,
}

fn split(group: Vec<Request>) -> (Vec<Reply>, Vec<Work>) {
    group
        .into_iter()
        .map(|r| (r.reply, Work { events: r.events, stored: r.stored, expect: r.expect, key: r.key }))
        .unzip()
}

/// An idempotency key to remember: the key, the fingerprint, the ids.
type NewKey = (Vec<u8>, Vec<u8>, Vec<Vec<u8>>);

/// What became of one request of a group.
#[derive(Clone)]
enum Planned {
    Written(Vec<Event>),
    /// A repeat of a key written before: its first write's ids.
    Repeat(Vec<EventId>),
    Failed(StoreError),
}

/// The columns of new rows.
#[derive(Clone, Default)]
pub(crate) struct Columns {
    id: Vec<Vec<u8>>,
    topic: Vec<String>,
    seq: Vec<i64>,
    kind: Vec<Option<String>>,
    meta: Vec<Option<String>>,
    user: Vec<Option<String>>,
    hash: Vec<Option<Vec<u8>>>,
    size: Vec<i64>,
    ttl: Vec<String>,
    expires: Vec<Option<i64>>,
    imported: Vec<bool>,
    payload: Vec<Option<Vec<u8>>>,
}

impl Columns {
    pub(crate) fn push(&mut self, event: &Event) {
        self.id.push(event.id.to_bytes().to_vec());
        self.topic.push(event.topic.as_str().to_owned());
        self.seq.push(event.seq as i64);
        self.kind.push(event.kind.clone());
        self.meta.push(event.meta.clone());
        self.user.push(event.user.clone());
        self.hash.push(event.hash.map(|hash| hash.0.to_vec()));
        self.size.push(event.size as i64);
        self.ttl.push(event.ttl.to_string());
        self.expires.push(rows::expires_ms(event.id, event.ttl));
        self.imported.push(event.imported);
        self.payload.push(event.inline_payload().map(<[u8]>::to_vec));
    }

    /// The parameters of [`INSERT_EVENTS`].
    pub(crate) fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        [
            &self.id,
            &self.topic,
            &self.seq,
            &self.kind,
            &self.meta,
            &self.user,
            &self.hash,
            &self.size,
            &self.ttl,
            &self.expires,
            &self.imported,
            &self.payload,
        ]
    }

    /// The first row's id.
    pub(crate) fn first_id(&self) -> [u8; 16] {
        self.id.first().and_then(|id| id.as_slice().try_into().ok()).unwrap_or([0; 16])
    }

    pub(crate) fn len(&self) -> usize {
        self.id.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.id.is_empty()
    }
}

/// What the writer knows of the database when it plans a group.
struct Known {
    /// The sequencer's id: the last handed out.
    last: EventId,
    /// Per topic, its last seq and id (`None`: no event yet).
    tails: HashMap<String, Option<(u64, EventId)>>,
    /// Idempotency keys asked about: fingerprint and ids.
    keys: HashMap<String, ([u8; 32], Vec<EventId>)>,
    /// Which stored payloads' hashes are in `cairn_content`.
    present: Vec<Vec<u8>>,
}

/// What the writer remembers of its own last commit: while the sequencer
/// still holds the id it wrote, no other process committed since, so the
/// topics' tails it knows are current and a group needs no reads.
#[derive(Default)]
pub(crate) struct Cache {
    last: Option<EventId>,
    tails: HashMap<String, Option<(u64, EventId)>>,
}

/// Most topics the cache remembers (it starts over beyond).
const CACHE_TOPICS_MAX: usize = 100_000;

impl Cache {
    /// What is known without a read, if enough for `group`: no idempotency
    /// key to look up, no stored payload to check, every topic cached.
    fn known(&self, group: &[Work]) -> Option<Known> {
        let last = self.last?;
        let mut tails = HashMap::new();
        for work in group {
            if work.key.is_some() || !work.stored.is_empty() {
                return None;
            }
            let topics = work.events.iter().map(|event| &event.topic).chain(work.expect.iter().map(|(t, _)| t));
            for topic in topics {
                let tail = self.tails.get(topic.as_str())?;
                tails.insert(topic.as_str().to_owned(), *tail);
            }
        }
        Some(Known { last, tails, keys: HashMap::new(), present: Vec::new() })
    }

    fn remember(&mut self, last: EventId, tails: HashMap<String, Option<(u64, EventId)>>) {
        if self.tails.len() + tails.len() > CACHE_TOPICS_MAX {
            self.tails.clear();
        }
        self.last = Some(last);
        self.tails.extend(tails);
    }

    fn forget(&mut self) {
        self.last = None;
        self.tails.clear();
    }
}

/// Commits one group by the slow path: reads what the plan needs under
/// the lock, plans, writes; the outcome of each request, in order.
async fn commit_slow(
    shared: &Shared,
    conn: &Conn,
    cache: &mut Cache,
    group: Vec<Work>,
) -> Result<(Vec<Result<Vec<Event>, StoreError>>, Vec<Vec<u8>>), StoreError> {
    let context = "committing appends";
    let now = now_ms();
    let known = match read_known(conn, &group, shared.options.idempotency_window_ms, now).await {
        Ok(known) => known,
        Err(error) => {
            cache.forget();
            return Err(error);
        }
    };
    let plan = plan(&group, &known, now);
    let trimmed = match write(conn, &plan, None, None, false, now).await {
        Ok(trimmed) => trimmed,
        Err(error) => {
            cache.forget();
            return Err(pg_error(context)(error));
        }
    };
    // The tails read now are current; the others the cache holds are
    // only if nobody committed since this writer last did (the sequencer
    // read under the lock is still what the cache knew). Otherwise another
    // process may have appended to them, and the next fast path after
    // this commit would pass its guard with a stale tail.
    if cache.last != Some(known.last) {
        cache.forget();
    }
    let mut tails = known.tails.clone();
    tails.extend(plan.tails.clone());
    cache.remember(plan.last.max(known.last), tails);
    Ok((finish(shared, plan, known.last).await, trimmed))
}

/// What a fast-path group that failed met, when it is to go again by the
/// slow path.
#[derive(PartialEq, Eq)]
enum Met {
    /// Another writer's commit: the guard found the sequencer moved (a
    /// not-null violation on it), or a row a rows-first group planned was
    /// committed by another writer meanwhile (a unique violation on
    /// `cairn_events`). The writer takes the sequencer first for a while.
    Writer,
    /// A lock a rows-first group may not wait for
    /// ([`ROWS_FIRST_LOCK_TIMEOUT`]): maybe another writer, maybe this
    /// process's removals or sweeps.
    Lock,
}

/// Whether a fast-path group's `error` means it goes again by the slow
/// path, and what it met. A group that took the sequencer first can only
/// fail its guard that way: a unique violation or a lock timeout there
/// is an error like any other.
fn moved(error: &tokio_postgres::Error, rows_first: bool) -> Option<Met> {
    use tokio_postgres::error::SqlState;
    let db = error.as_db_error()?;
    let code = db.code();
    let guard_failed = *code == SqlState::NOT_NULL_VIOLATION && db.table() == Some("cairn_sequencer");
    let row_taken = *code == SqlState::UNIQUE_VIOLATION && db.table() == Some("cairn_events");
    if guard_failed || (rows_first && row_taken) {
        Some(Met::Writer)
    } else if rows_first && (*code == SqlState::LOCK_NOT_AVAILABLE || *code == SqlState::T_R_DEADLOCK_DETECTED) {
        Some(Met::Lock)
    } else {
        None
    }
}

/// Round trip 1 of the slow path: `begin`, the lock, then what the plan
/// needs, in one pipeline. The transaction stays open for [`write`].
async fn read_known(conn: &Conn, group: &[Work], window_ms: u64, now: u64) -> Result<Known, StoreError> {
    let context = "committing appends";
    let client = &conn.client;
    let mut topic_names: Vec<&str> = Vec::new();
    let mut key_names: Vec<&[u8]> = Vec::new();
    let mut stored_hashes: Vec<Vec<u8>> = Vec::new();
    for work in group {
        let topics = work.events.iter().map(|event| &event.topic).chain(work.expect.iter().map(|(t, _)| t));
        for topic in topics {
            if !topic_names.contains(&topic.as_str()) {
                topic_names.push(topic.as_str());
            }
        }
        if let Some((key, _)) = &work.key {
            key_names.push(key.as_bytes());
        }
        stored_hashes.extend(work.stored.iter().map(|(hash, _)| hash.0.to_vec()));
    }
    let window_start = now.saturating_sub(window_ms) as i64;
    let topics_params: [&(dyn ToSql + Sync); 1] = [&topic_names];
    let keys_params: [&(dyn ToSql + Sync); 2] = [&key_names, &window_start];
    let present_params: [&(dyn ToSql + Sync); 1] = [&stored_hashes];
    let (_, sequencer, topic_rows, key_rows, present_rows) = tokio::try_join!(
        client.batch_execute(BEGIN),
        client.query_one(&conn.lock, &[]),
        client.query(&conn.topics, &topics_params),
        client.query(&conn.keys, &keys_params),
        client.query(&conn.present, &present_params),
    )
    .map_err(pg_error(context))?;
    let mut known = Known {
        last: crate::backend::sequencer_id(sequencer.get(0), sequencer.get(1))?,
        tails: HashMap::new(),
        keys: HashMap::new(),
        present: Vec::new(),
    };
    for name in topic_names {
        known.tails.insert(name.to_owned(), None);
    }
    for row in &topic_rows {
        let topic: String = row.get(0);
        let seq: i64 = row.get(1);
        let id: &[u8] = row.get(2);
        let id = rows::id_from(id).ok_or_else(|| StoreError::Corrupt {
            location: "PostgreSQL table cairn_topics".into(),
            detail: format!("topic {topic}: a bad last id"),
        })?;
        known.tails.insert(topic, Some((seq as u64, id)));
    }
    for row in &key_rows {
        let key: Vec<u8> = row.get(0);
        let key = String::from_utf8_lossy(&key).into_owned();
        let fingerprint: &[u8] = row.get(1);
        let ids: Vec<Vec<u8>> = row.get(2);
        let fingerprint: [u8; 32] = fingerprint.try_into().unwrap_or([0; 32]);
        known.keys.insert(key, (fingerprint, ids.iter().filter_map(|id| rows::id_from(id)).collect()));
    }
    known.present = present_rows.iter().map(|row| row.get(0)).collect();
    Ok(known)
}

/// A group's plan: what each request becomes, and the rows to write.
#[derive(Clone)]
struct Plan {
    planned: Vec<Planned>,
    stored_rows: Columns,
    ephemeral_rows: Columns,
    /// Per topic: events stored by this group, and the last stored seq and id.
    touched: BTreeMap<String, (i64, u64, EventId)>,
    trims: BTreeMap<String, u64>,
    new_keys: Vec<NewKey>,
    missing_content: Vec<(Hash, Arc<Vec<u8>>)>,
    /// The last id handed out (the sequencer's value when nothing is).
    last: EventId,
    /// The tails of the topics written.
    tails: HashMap<String, Option<(u64, EventId)>>,
}

impl Plan {
    /// The `last:<n>` trims that drop something: each topic and the last
    /// seq to drop.
    fn trim_cuts(&self) -> impl Iterator<Item = (&str, i64)> {
        self.trims.iter().filter_map(|(topic, n)| {
            let (_, last_seq, _) = self.touched.get(topic)?;
            (*last_seq >= *n).then(|| (topic.as_str(), (*last_seq - *n) as i64))
        })
    }

    /// Whether the fast path writes this group as one statement (see
    /// [`one_statement`]): stored events only, no ephemeral event, trim,
    /// key or stored payload.
    fn one_statement(&self) -> bool {
        self.ephemeral_rows.is_empty()
            && self.trim_cuts().next().is_none()
            && self.new_keys.is_empty()
            && self.missing_content.is_empty()
            && !self.stored_rows.is_empty()
    }

    /// A plan of nothing yet, after `last`.
    fn empty(last: EventId) -> Plan {
        Plan {
            planned: Vec::new(),
            stored_rows: Columns::default(),
            ephemeral_rows: Columns::default(),
            touched: BTreeMap::new(),
            trims: BTreeMap::new(),
            new_keys: Vec::new(),
            missing_content: Vec::new(),
            last,
            tails: HashMap::new(),
        }
    }

    fn writes(&self) -> bool {
        !self.stored_rows.is_empty() || !self.ephemeral_rows.is_empty()
    }
}

/// Plans `group` against `known`: idempotency keys, expectations, ids and
/// seqs, in request order.
fn plan(group: &[Work], known: &Known, now: u64) -> Plan {
    let mut next =
        if now > known.last.timestamp_ms() { u128::from(now) << 80 } else { known.last.to_u128().saturating_add(1) };
    let events: usize = group.iter().map(|work| work.events.len()).sum();
    if next.checked_add(events as u128).is_none() {
        // An import reached the end of the id space: nothing can follow.
        let exhausted = StoreError::Invalid {
            field: "id",
            rule: "the store's ids are used up (an import reached the last id)".into(),
        };
        let mut plan = Plan::empty(known.last);
        plan.planned = group.iter().map(|_| Planned::Failed(exhausted.clone())).collect();
        return plan;
    }
    let mut tails = known.tails.clone();
    let mut plan = Plan::empty(known.last);
    let mut in_group_keys: HashMap<&str, ([u8; 32], usize)> = HashMap::new();
    for (index, work) in group.iter().enumerate() {
        if let Some((key, fingerprint)) = &work.key {
            let conflict = || StoreError::IdempotencyConflict { key: key.clone() };
            if let Some((first, at)) = in_group_keys.get(key.as_str()) {
                // The same key twice in one group: the first's outcome.
                plan.planned.push(if first != fingerprint {
                    Planned::Failed(conflict())
                } else {
                    match &plan.planned[*at] {
                        Planned::Written(events) => Planned::Written(events.clone()),
                        Planned::Repeat(ids) => Planned::Repeat(ids.clone()),
                        Planned::Failed(error) => Planned::Failed(error.clone()),
                    }
                });
                continue;
            }
            in_group_keys.insert(key, (*fingerprint, index));
            if let Some((first, ids)) = known.keys.get(key) {
                plan.planned.push(if first == fingerprint {
                    Planned::Repeat(ids.clone())
                } else {
                    Planned::Failed(conflict())
                });
                continue;
            }
        }
        let tail = |topic: &str, tails: &HashMap<String, Option<(u64, EventId)>>| tails.get(topic).copied().flatten();
        if let Some((topic, expectation)) =
            work.expect.iter().find(|(topic, expectation)| !expectation.check(tail(topic.as_str(), &tails)))
        {
            let last = tail(topic.as_str(), &tails);
            plan.planned.push(Planned::Failed(StoreError::ExpectationFailed {
                topic: topic.as_str().to_owned(),
                expected: expectation.to_string(),
                actual_seq: last.map(|(seq, _)| seq),
                actual_id: last.map(|(_, id)| id),
            }));
            continue;
        }
        let mut events = work.events.clone();
        for event in &mut events {
            event.id = EventId::from_u128(next);
            next += 1;
            let last = tail(event.topic.as_str(), &tails);
            event.seq = last.map_or(0, |(seq, _)| seq + 1);
            if event.ttl == Ttl::Ephemeral {
                plan.ephemeral_rows.push(event);
                continue;
            }
            tails.insert(event.topic.as_str().to_owned(), Some((event.seq, event.id)));
            plan.tails.insert(event.topic.as_str().to_owned(), Some((event.seq, event.id)));
            let entry = plan.touched.entry(event.topic.as_str().to_owned()).or_insert((0, 0, EventId::MIN));
            *entry = (entry.0 + 1, event.seq, event.id);
            if let Ttl::Last { n } = event.ttl {
                // The last `last:<n>` of a topic in the group decides.
                plan.trims.insert(event.topic.as_str().to_owned(), n);
            }
            plan.stored_rows.push(event);
        }
        for (hash, bytes) in &work.stored {
            let present = known.present.iter().any(|p| p.as_slice() == hash.0);
            if !present && !plan.missing_content.iter().any(|(h, _)| h == hash) {
                plan.missing_content.push((*hash, bytes.clone()));
            }
        }
        if let Some((key, fingerprint)) = &work.key {
            let ids = events.iter().map(|event| event.id.to_bytes().to_vec()).collect();
            plan.new_keys.push((key.as_bytes().to_vec(), fingerprint.to_vec(), ids));
        }
        plan.planned.push(Planned::Written(events));
    }
    if plan.writes() {
        plan.last = EventId::from_u128(next - 1);
    }
    plan
}

/// Round trip 2 (the fast path's only one): the new sequencer value, the
/// rows, the topics, trims, keys, and `commit`, in one pipeline. With
/// `guard`, it also begins the transaction and fails (a not-null
/// violation on the sequencer) unless the sequencer still holds `guard`.
async fn write(
    conn: &Conn,
    plan: &Plan,
    guard: Option<EventId>,
    session: Option<&'static str>,
    rows_first: bool,
    now: u64,
) -> Result<Vec<Vec<u8>>, tokio_postgres::Error> {
    let client = &conn.client;
    if !plan.writes() {
        return match guard {
            Some(_) => Ok(Vec::new()),
            None => client.batch_execute("rollback").await.map(|()| Vec::new()),
        };
    }
    let split = |id: EventId| ((id.to_u128() >> 80) as i64, (id.to_u128() & ((1 << 80) - 1)).to_string());
    let (ms, ctr) = split(plan.last);
    let (old_ms, old_ctr) = split(guard.unwrap_or(EventId::MIN));
    let trim_cuts: Vec<(&str, i64)> = plan.trim_cuts().collect();
    let topic_names: Vec<&str> = plan.touched.keys().map(String::as_str).collect();
    let topic_last_seqs: Vec<i64> = plan.touched.values().map(|(_, seq, _)| *seq as i64).collect();
    let topic_last_ids: Vec<Vec<u8>> = plan.touched.values().map(|(_, _, id)| id.to_bytes().to_vec()).collect();
    let topic_counts: Vec<i64> = plan.touched.values().map(|(count, _, _)| *count).collect();
    let content_params: Vec<(Vec<u8>, &[u8])> =
        plan.missing_content.iter().map(|(hash, bytes)| (hash.0.to_vec(), bytes.as_slice())).collect();
    let now = now as i64;
    // Trims report the hashes of the stored payloads they dropped: their
    // content is collected after the commit (see `collect_content`).
    let trimmed = std::sync::Mutex::new(Vec::new());
    let mut steps: Vec<BoxFuture<'_, Result<u64, tokio_postgres::Error>>> = Vec::new();
    if let Some(set) = session {
        steps.push(Box::pin(async move { client.batch_execute(set).await.map(|()| 0) }));
    }
    if guard.is_some() && plan.one_statement() {
        let c = &plan.stored_rows;
        let params: [&(dyn ToSql + Sync); 21] = [
            &old_ms,
            &old_ctr,
            &ms,
            &ctr,
            &c.id,
            &c.topic,
            &c.seq,
            &c.kind,
            &c.meta,
            &c.user,
            &c.hash,
            &c.size,
            &c.ttl,
            &c.expires,
            &c.imported,
            &c.payload,
            &topic_names,
            &topic_last_seqs,
            &topic_last_ids,
            &topic_counts,
            &conn.instance,
        ];
        let statement = if rows_first { &conn.rows_first } else { &conn.lock_first };
        // Moved to a binding after `params`, so that it drops first.
        let mut steps = steps;
        steps.push(Box::pin(async { client.query_one(statement, &params).await.map(|_| 0) }));
        in_order(steps).await?;
        return Ok(Vec::new());
    }
    match guard {
        Some(_) => {
            steps.push(Box::pin(async { client.batch_execute(BEGIN).await.map(|()| 0) }));
            let params: [&(dyn ToSql + Sync); 5] = [&old_ms, &old_ctr, &ms, &ctr, &conn.instance];
            steps.push(Box::pin(client.execute_raw(&conn.advance_guarded, params)));
        }
        None => {
            let params: [&(dyn ToSql + Sync); 3] = [&ms, &ctr, &conn.instance];
            steps.push(Box::pin(client.execute_raw(&conn.advance, params)));
        }
    }
    for (hash, bytes) in &content_params {
        steps.push(Box::pin(client.execute_raw(&conn.put_content, [hash as &(dyn ToSql + Sync), bytes])));
    }
    if !plan.stored_rows.is_empty() {
        steps.push(Box::pin(client.execute_raw(&conn.insert, plan.stored_rows.params())));
        let topic_params: [&(dyn ToSql + Sync); 4] = [&topic_names, &topic_last_seqs, &topic_last_ids, &topic_counts];
        steps.push(Box::pin(client.execute_raw(&conn.upsert_topics, topic_params)));
    }
    let e = &plan.ephemeral_rows;
    if !e.is_empty() {
        let params: [&(dyn ToSql + Sync); 9] =
            [&e.id, &e.topic, &e.seq, &e.kind, &e.meta, &e.user, &e.hash, &e.size, &e.payload];
        steps.push(Box::pin(client.execute_raw(&conn.insert_ephemeral, params)));
    }
    for (topic, cut) in &trim_cuts {
        let trimmed = &trimmed;
        steps.push(Box::pin(async move {
            let rows = client.query(&conn.trim, &[topic, cut]).await?;
            let mut hashes = trimmed.lock().expect("trimmed lock");
            hashes.extend(rows.iter().map(|row| row.get::<_, Vec<u8>>(0)));
            Ok(rows.len() as u64)
        }));
    }
    for (key, fingerprint, ids) in &plan.new_keys {
        let params: [&(dyn ToSql + Sync); 4] = [key, fingerprint, ids, &now];
        steps.push(Box::pin(client.execute_raw(&conn.insert_key, params)));
    }
    steps.push(Box::pin(async move { client.batch_execute("commit").await.map(|()| 0) }));
    in_order(steps).await?;
    Ok(trimmed.into_inner().unwrap_or_default())
}

/// Runs pipelined statements: each future sends its statement when first
/// polled, so each is polled once, in order, before any is awaited (a
/// join's polling order is not promised); the first error in order wins.
async fn in_order(
    mut steps: Vec<BoxFuture<'_, Result<u64, tokio_postgres::Error>>>,
) -> Result<(), tokio_postgres::Error> {
    let mut early = Vec::with_capacity(steps.len());
    for step in &mut steps {
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(step.as_mut().poll(cx))).await;
        early.push(match first {
            std::task::Poll::Ready(result) => Some(result),
            std::task::Poll::Pending => None,
        });
    }
    for (step, early) in steps.iter_mut().zip(early) {
        match early {
            Some(result) => result?,
            None => step.await?,
        };
    }
    Ok(())
}

/// After the commit: the ring, then the answers, so a caller that reads
/// after its answer finds its events (and `last_id`) in place.
async fn finish(shared: &Shared, plan: Plan, before: EventId) -> Vec<Result<Vec<Event>, StoreError>> {
    if plan.writes() {
        shared.changes_if(!plan.trims.is_empty());
        let mut published: Vec<Arc<Event>> = Vec::new();
        for outcome in &plan.planned {
            if let Planned::Written(events) = outcome {
                published.extend(events.iter().cloned().map(Arc::new));
            }
        }
        published.sort_by_key(|event| event.id);
        published.dedup_by_key(|event| event.id);
        shared.publish_own(published, before, plan.last).await;
        shared.notify_others();
        shared.stats.appended.fetch_add(plan.stored_rows.len() as u64, Ordering::Relaxed);
    }
    let mut outcomes = Vec::with_capacity(plan.planned.len());
    for outcome in plan.planned {
        outcomes.push(match outcome {
            Planned::Written(events) => Ok(events),
            Planned::Failed(error) => Err(error),
            Planned::Repeat(ids) => shared.events_by_id(&ids).await,
        });
    }
    outcomes
}

/// Now, in ms since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Pace;

    /// Commits `rate` events a second for `length`, in groups of 10.
    fn run(pace: &mut Pace, now: &mut Instant, rate: u64, length: Duration) {
        let groups = (rate * length.as_millis() as u64 / 1000 / 10) as u32;
        let start = *now;
        for n in 1..=groups {
            *now = start + length * n / groups;
            pace.committed(10, *now);
        }
    }

    #[test]
    fn the_pace_keeps_the_depth_that_commits_more() {
        let (keep, probe) = (super::PACE_KEEP, super::PACE_PROBE);
        let mut now = Instant::now();
        let mut pace = Pace::new(now);
        assert_eq!(pace.depth(), 2);
        run(&mut pace, &mut now, 30_000, keep);
        assert_eq!(pace.depth(), 1, "a stretch kept, then a try of the other");
        // The try commits no more: two is kept.
        run(&mut pace, &mut now, 30_000, probe);
        assert_eq!(pace.depth(), 2);
        run(&mut pace, &mut now, 20_000, keep);
        // The try of one commits 10% more: one is kept, and tried against two.
        run(&mut pace, &mut now, 22_000, probe);
        assert_eq!(pace.depth(), 1);
        run(&mut pace, &mut now, 22_000, keep);
        assert_eq!(pace.depth(), 2, "after a stretch at one, a try of two");
        run(&mut pace, &mut now, 23_000, probe);
        assert_eq!(pace.depth(), 1, "5% more is not enough to move back");
        // A lull in a stretch does not count against the depth.
        run(&mut pace, &mut now, 22_000, keep / 2);
        now += Duration::from_secs(10);
        pace.skip(Duration::from_secs(10));
        run(&mut pace, &mut now, 22_000, keep / 2);
        assert_eq!(pace.depth(), 2, "a try of two after the stretch");
        run(&mut pace, &mut now, 22_000, probe);
        assert_eq!(pace.depth(), 1, "the try of two no better than the stretch at one, lull left out");
    }
}
