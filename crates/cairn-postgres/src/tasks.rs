//! The background tasks of a [`crate::Postgres`] storage: the state
//! writer, the tail (other processes' commits into the live ring), the
//! listener and notifier (`LISTEN`/`NOTIFY` as wake-ups only), and the
//! sweeper (expired events, ephemeral rows, old idempotency keys, unused
//! content). Each survives the database going away and coming back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cairn_store::{EventId, StateOp, StoreError, VerifyReport};
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::AsyncMessage;

use crate::backend::{Shared, delete_events, lock_sequencer};
use crate::error::{pg_error, pool_error};
use crate::rows::{self, EPHEMERAL_COLUMNS, EVENT_COLUMNS};
use crate::writer::now_ms;

/// The channel cairn's processes notify each other on.
const CHANNEL: &str = "cairn";
/// Most rows the tail reads at once (stored payloads in rows are at most
/// the inline limit, 4 KiB by default).
const TAIL_CHUNK: i64 = 4096;
/// Most ephemeral rows the tail reads at once: their payloads are in the
/// row whatever their size (up to the payload limit).
const TAIL_EPHEMERAL_CHUNK: i64 = 16;
/// How often the tail looks without being woken (a lost notification, a
/// listener reconnecting).
const TAIL_POLL: Duration = Duration::from_millis(250);
/// The least time between two notifications of other processes.
const NOTIFY_SPACING: Duration = Duration::from_millis(1);
/// How long ephemeral rows stay for the tails of other processes.
const EPHEMERAL_KEEP_MS: u64 = 60_000;
/// Bytes of state writes gathered into one transaction (a larger request
/// goes alone).
const STATE_GROUP_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most events an expiry step removes in one transaction.
const EXPIRE_STEP: i64 = 4096;

/// State writes waiting for the state writer.
pub(crate) struct StateRequest {
    pub(crate) ops: Vec<StateOp>,
    pub(crate) reply: oneshot::Sender<Result<(), StoreError>>,
}

/// Applies state writes in submission order, every waiting one in one
/// transaction.
pub(crate) async fn states(shared: Arc<Shared>, mut requests: mpsc::Receiver<StateRequest>) {
    let size = |request: &StateRequest| -> usize {
        request
            .ops
            .iter()
            .map(|op| match op {
                StateOp::Put(key, value) => key.len() + value.len(),
                StateOp::Delete(key) => key.len(),
            })
            .sum()
    };
    while let Some(first) = requests.recv().await {
        // Bounded by requests and by bytes: one statement carries them all
        // (PostgreSQL refuses a message over 1 GiB), and a failure answers
        // every request of the group.
        let mut bytes = size(&first);
        let mut group = vec![first];
        while group.len() < 1024 && bytes < STATE_GROUP_BYTES_MAX {
            let Ok(next) = requests.try_recv() else { break };
            bytes += size(&next);
            group.push(next);
        }
        // Later writes of a key win, as if applied one by one.
        let mut last: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        let mut replies = Vec::with_capacity(group.len());
        for request in group {
            for op in request.ops {
                match op {
                    StateOp::Put(key, value) => last.insert(key, Some(value)),
                    StateOp::Delete(key) => last.insert(key, None),
                };
            }
            replies.push(request.reply);
        }
        let result = write_states(&shared, last).await;
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
}

async fn write_states(shared: &Shared, changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Result<(), StoreError> {
    let context = "writing state records";
    let (mut put_keys, mut put_values, mut deleted) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in changes {
        match value {
            Some(value) => {
                put_keys.push(key);
                put_values.push(value);
            }
            None => deleted.push(key),
        }
    }
    let mut client = shared.pool.get().await.map_err(pool_error(context))?;
    let tx = client.transaction().await.map_err(pg_error(context))?;
    if !put_keys.is_empty() {
        let put = tx
            .prepare_cached(
                "insert into cairn_state (key, value) select * from unnest($1::bytea[], $2::bytea[]) \
                 on conflict (key) do update set value = excluded.value",
            )
            .await
            .map_err(pg_error(context))?;
        tx.execute(&put, &[&put_keys, &put_values]).await.map_err(pg_error(context))?;
    }
    if !deleted.is_empty() {
        let delete =
            tx.prepare_cached("delete from cairn_state where key = any($1)").await.map_err(pg_error(context))?;
        tx.execute(&delete, &[&deleted]).await.map_err(pg_error(context))?;
    }
    tx.commit().await.map_err(pg_error(context))
}

/// Reads what other processes committed after the ring's last id into the
/// ring, whenever woken or every [`TAIL_POLL`].
pub(crate) async fn tail(shared: Arc<Shared>) {
    let mut failing = false;
    // Its own connection: a pool drained by readers must not hold back
    // the ring (appends wait for it when another process committed).
    let mut conn: Option<TailConn> = None;
    loop {
        tokio::select! {
            () = shared.tail_kick.notified() => {}
            () = tokio::time::sleep(TAIL_POLL) => {}
        }
        loop {
            let read = async {
                if conn.as_ref().is_none_or(|conn| conn.client.is_closed()) {
                    conn = Some(TailConn::open(&shared).await?);
                }
                read_new(&shared, conn.as_ref().expect("opened")).await
            };
            match read.await {
                Ok(full) => {
                    if failing {
                        tracing::info!("the tail reads PostgreSQL again");
                        failing = false;
                    }
                    if !full {
                        break;
                    }
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!("the tail cannot read PostgreSQL (retrying): {error}");
                        failing = true;
                    }
                    conn = None;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
    }
}

/// The tail's connection and statements.
struct TailConn {
    client: tokio_postgres::Client,
    sequencer: tokio_postgres::Statement,
    stored: tokio_postgres::Statement,
    ephemeral: tokio_postgres::Statement,
}

impl TailConn {
    async fn open(shared: &Shared) -> Result<TailConn, StoreError> {
        let context = "preparing the tail";
        let client = shared.connect("the tail").await?;
        let stored =
            format!("select {EVENT_COLUMNS} from cairn_events where id > $1 and id <= $2 order by id limit $3");
        let ephemeral =
            format!("select {EPHEMERAL_COLUMNS} from cairn_ephemeral where id > $1 and id <= $2 order by id limit $3");
        Ok(TailConn {
            sequencer: client
                .prepare("select ms, ctr::text, changes from cairn_sequencer")
                .await
                .map_err(pg_error(context))?,
            stored: client.prepare(&stored).await.map_err(pg_error(context))?,
            ephemeral: client.prepare(&ephemeral).await.map_err(pg_error(context))?,
            client,
        })
    }
}

/// One read of the tail; whether more may follow. It looks at the
/// sequencer first: most looks find it where the ring already is, and
/// cost one lookup by primary key.
async fn read_new(shared: &Shared, conn: &TailConn) -> Result<bool, StoreError> {
    let context = "reading new commits";
    let client = &conn.client;
    let row = client.query_one(&conn.sequencer, &[]).await.map_err(pg_error(context))?;
    let changes: i64 = row.get(2);
    shared.changes.fetch_max(changes as u64, Ordering::Relaxed);
    let through = crate::backend::sequencer_id(row.get(0), row.get(1))?;
    let after = shared.live.last();
    if through <= after {
        return Ok(false);
    }
    let (after_bytes, through_bytes) = (after.to_bytes().to_vec(), through.to_bytes().to_vec());
    let stored_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&after_bytes, &through_bytes, &TAIL_CHUNK];
    let ephemeral_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&after_bytes, &through_bytes, &TAIL_EPHEMERAL_CHUNK];
    let (stored_rows, ephemeral_rows) =
        tokio::try_join!(client.query(&conn.stored, &stored_params), client.query(&conn.ephemeral, &ephemeral_params))
            .map_err(pg_error(context))?;
    let mut stored = rows::events(&stored_rows)?;
    let mut ephemeral = rows::events(&ephemeral_rows)?;
    // A full chunk of either ends what is known to be complete.
    let mut bound = through;
    for (chunk, full) in [(&stored, TAIL_CHUNK), (&ephemeral, TAIL_EPHEMERAL_CHUNK)] {
        if chunk.len() as i64 == full
            && let Some(last) = chunk.last()
        {
            bound = bound.min(last.id);
        }
    }
    stored.retain(|event| event.id <= bound);
    ephemeral.retain(|event| event.id <= bound);
    stored.append(&mut ephemeral);
    stored.sort_by_key(|event| event.id);
    shared.publish_read(stored, bound).await;
    Ok(bound < through)
}

/// Listens for other processes' commits and wakes the tail; reconnects
/// when the connection ends.
pub(crate) async fn listen(shared: Arc<Shared>) {
    loop {
        if let Err(error) = listen_once(&shared).await {
            tracing::debug!("the PostgreSQL listener stopped (reconnecting): {error}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Whatever was notified meanwhile was missed: look.
        shared.tail_kick.notify_one();
    }
}

async fn listen_once(shared: &Shared) -> Result<(), StoreError> {
    let (config, tls) = shared.config();
    let (client, mut connection) = config.connect(tls).await.map_err(pg_error("listening"))?;
    let (messages_tx, mut messages) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    if messages_tx.send(notification.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    client.batch_execute(&format!("listen {CHANNEL}")).await.map_err(pg_error("listening"))?;
    shared.tail_kick.notify_one();
    while let Some(payload) = messages.recv().await {
        if payload != shared.instance {
            shared.tail_kick.notify_one();
        }
    }
    driver.abort();
    Ok(())
}

/// Notifies other processes after this one's commits, outside the commits
/// (a `NOTIFY` inside them would order them on PostgreSQL's notify queue).
/// Notifications coalesce: one per wake-up, however many commits.
pub(crate) async fn notify(shared: Arc<Shared>) {
    let mut commits = shared.notifier.subscribe();
    while commits.changed().await.is_ok() {
        commits.mark_unchanged();
        let sent = async {
            let client = shared.pool.get().await.map_err(pool_error("notifying"))?;
            let statement = client.prepare_cached("select pg_notify($1, $2)").await.map_err(pg_error("notifying"))?;
            client.execute(&statement, &[&CHANNEL, &shared.instance]).await.map_err(pg_error("notifying"))
        };
        if let Err(error) = sent.await {
            tracing::debug!("could not notify other processes (their tails poll): {error}");
        }
        // At most one notification a millisecond: under load each would
        // otherwise cost the database a transaction per commit group, for
        // tails that read everything committed since anyway.
        tokio::time::sleep(NOTIFY_SPACING).await;
    }
}

/// Removes expired events every second, and every minute ephemeral rows
/// past their stay, idempotency keys past their window and content no
/// event uses.
pub(crate) async fn sweep(shared: Arc<Shared>) {
    let mut tick = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Err(error) = expire(&shared).await {
            tracing::debug!("expiry sweep failed (retrying): {error}");
        }
        tick += 1;
        if tick.is_multiple_of(60)
            && let Err(error) = tidy(&shared).await
        {
            tracing::debug!("tidying PostgreSQL failed (retrying): {error}");
        }
    }
}

/// Removes events whose `time:` retention ran out; returns how many.
pub(crate) async fn expire(shared: &Shared) -> Result<usize, StoreError> {
    let context = "removing expired events";
    let now = now_ms() as i64;
    let mut total = 0;
    loop {
        let mut client = shared.pool.get().await.map_err(pool_error(context))?;
        // A look without the lock first: most sweeps find nothing.
        // By the index in its order (a plan made on stale statistics
        // would scan the table).
        let due = client
            .query_opt("select 1 from cairn_events where expires_ms <= $1 order by expires_ms limit 1", &[&now])
            .await
            .map_err(pg_error(context))?;
        if due.is_none() {
            return Ok(total);
        }
        let tx = client.transaction().await.map_err(pg_error(context))?;
        lock_sequencer(&tx).await?;
        let rows = tx
            .query(
                "select id from cairn_events where expires_ms <= $1 order by expires_ms limit $2",
                &[&now, &EXPIRE_STEP],
            )
            .await
            .map_err(pg_error(context))?;
        let ids: Vec<Vec<u8>> = rows.iter().map(|row| row.get(0)).collect();
        let gone = delete_events(&tx, &ids).await?;
        tx.commit().await.map_err(pg_error(context))?;
        shared.changes_if(gone > 0);
        total += gone;
        if (ids.len() as i64) < EXPIRE_STEP {
            return Ok(total);
        }
    }
}

async fn tidy(shared: &Shared) -> Result<(), StoreError> {
    let context = "tidying";
    let client = shared.pool.get().await.map_err(pool_error(context))?;
    let now = now_ms();
    let ephemeral_before = EventId::from_u128(u128::from(now.saturating_sub(EPHEMERAL_KEEP_MS)) << 80);
    client
        .execute("delete from cairn_ephemeral where id < $1", &[&ephemeral_before.to_bytes().as_slice()])
        .await
        .map_err(pg_error(context))?;
    let keys_before = now.saturating_sub(shared.options.idempotency_window_ms) as i64;
    client
        .execute("delete from cairn_idempotency where at_ms < $1", &[&keys_before])
        .await
        .map_err(pg_error(context))?;
    // Content no event uses (a collection after a trim that failed), under
    // the sequencer's lock, a bounded step at a time: a commit in flight
    // may be about to use content again, and holds that lock.
    let mut client = shared.pool.get().await.map_err(pool_error(context))?;
    let tx = client.transaction().await.map_err(pg_error(context))?;
    lock_sequencer(&tx).await?;
    tx.execute(
        "delete from cairn_content where hash in (select k.hash from cairn_content k where not k.standalone \
         and not exists (select 1 from cairn_events e where e.hash = k.hash) limit 1000)",
        &[],
    )
    .await
    .map_err(pg_error(context))?;
    tx.commit().await.map_err(pg_error(context))?;
    Ok(())
}

/// Deletes the content of `hashes` that no event uses and was not stored
/// on its own, under the sequencer's lock.
pub(crate) async fn collect_content(shared: &Shared, hashes: &[Vec<u8>]) -> Result<(), StoreError> {
    let context = "collecting content";
    let mut client = shared.pool.get().await.map_err(pool_error(context))?;
    let tx = client.transaction().await.map_err(pg_error(context))?;
    lock_sequencer(&tx).await?;
    tx.execute(
        "delete from cairn_content k where k.hash = any($1) and not k.standalone and not exists \
         (select 1 from cairn_events e where e.hash = k.hash)",
        &[&hashes],
    )
    .await
    .map_err(pg_error(context))?;
    tx.commit().await.map_err(pg_error(context))
}

/// Checks what is stored: payload hashes, content present and intact,
/// topic counts.
pub(crate) async fn verify(shared: &Shared) -> Result<VerifyReport, StoreError> {
    let context = "verifying";
    let client = shared.pool.get().await.map_err(pool_error(context))?;
    let mut report = VerifyReport::default();
    let counts = client
        .query_one("select (select count(*) from cairn_events), (select count(*) from cairn_content)", &[])
        .await
        .map_err(pg_error(context))?;
    report.events = counts.get::<_, i64>(0) as u64;
    report.indexed = report.events;
    report.records = report.events;
    report.content_files = counts.get::<_, i64>(1) as u64;
    let checks: [(&str, &str); 4] = [
        (
            "select encode(id, 'hex') from cairn_events where payload is not null and hash is not null \
             and sha256(payload) <> hash limit 100",
            "event (hex id) {}: its payload does not match its hash",
        ),
        (
            "select encode(e.id, 'hex') from cairn_events e where e.payload is null and e.hash is not null \
             and not exists (select 1 from cairn_content c where c.hash = e.hash) limit 100",
            "event (hex id) {}: its payload is missing from cairn_content",
        ),
        (
            "select encode(hash, 'hex') from cairn_content where sha256(bytes) <> hash limit 100",
            "content {}: the bytes do not match the hash",
        ),
        (
            "select t.topic from cairn_topics t left join (select topic, count(*) as n from cairn_events \
             group by topic) e on e.topic = t.topic where t.count <> coalesce(e.n, 0) limit 100",
            "topic {}: its count of stored events is wrong",
        ),
    ];
    for (sql, problem) in checks {
        for row in client.query(sql, &[]).await.map_err(pg_error(context))? {
            let what: String = row.get(0);
            report.problems.push(problem.replace("{}", &what));
        }
    }
    Ok(report)
}
