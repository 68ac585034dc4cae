//! The schema cairn keeps in PostgreSQL, and its migrations.
//!
//! The schema is versioned in `cairn_schema`; `migrate` brings a database
//! to [`VERSION`] under a transaction-scoped advisory lock, so several
//! cairn processes starting at once migrate it once. A database whose
//! schema is newer than this cairn is refused: an older cairn must not
//! write rows it does not understand.
//!
//! Tables (all prefixed `cairn_`, so cairn can share a database):
//! - `sequencer`: one row; its lock orders every commit (see
//!   ARCHITECTURE.md), and it holds the last id handed out (`ms`, `ctr`:
//!   the id's 48-bit time and its 80-bit rest), `changes`, a counter of
//!   removals that entity tags include, and `writer`, the process that
//!   advanced it last (part of the fast path's guard);
//! - `events`: stored events, payloads up to the inline limit in `payload`;
//! - `ephemeral`: ephemeral events on their way to followers of every
//!   process; UNLOGGED (never written to the WAL, emptied by a crash) and
//!   swept after a minute;
//! - `topics`: per topic the last seq and id ever appended and the count
//!   of stored events;
//! - `idempotency`: keys (bytes: front ends scope them with a NUL, which
//!   `text` cannot hold) within their window, with the fingerprint and ids
//!   of the first write;
//! - `content`: payloads above the inline limit, and content stored on its
//!   own (`standalone`), by sha256;
//! - `state`: the state records of front ends (consumers, groups, claims).

use cairn_store::StoreError;
use tokio_postgres::Client;

use crate::error::pg_error;

/// The schema version this cairn writes.
pub(crate) const VERSION: i32 = 1;

/// Advisory lock key held while migrating ("cairn" in ASCII).
const MIGRATION_LOCK: i64 = 0x63_61_69_72_6e;

/// Each version's statements, in order: `MIGRATIONS[n]` moves n to n+1.
const MIGRATIONS: [&str; 1] = [r#"
create table cairn_sequencer (
    one boolean primary key default true check (one),
    ms bigint not null,
    ctr numeric(30, 0) not null,
    changes bigint not null,
    writer text not null default ''
);
insert into cairn_sequencer (ms, ctr, changes) values (0, 0, 0);

create table cairn_events (
    id bytea primary key,
    topic text collate "C" not null,
    seq bigint not null,
    kind text,
    meta text,
    usr text,
    hash bytea,
    size bigint not null,
    ttl text not null,
    expires_ms bigint,
    imported boolean not null,
    payload bytea
);
create unique index cairn_events_topic_seq on cairn_events (topic, seq);
create index cairn_events_topic_id on cairn_events (topic, id);
create index cairn_events_hash on cairn_events (hash) where hash is not null;
create index cairn_events_expires on cairn_events (expires_ms) where expires_ms is not null;

create unlogged table cairn_ephemeral (
    id bytea primary key,
    topic text collate "C" not null,
    seq bigint not null,
    kind text,
    meta text,
    usr text,
    hash bytea,
    size bigint not null,
    payload bytea
);

create table cairn_topics (
    topic text collate "C" primary key,
    last_seq bigint not null,
    last_id bytea not null,
    count bigint not null
);

create table cairn_idempotency (
    key bytea primary key,
    fingerprint bytea not null,
    ids bytea[] not null,
    at_ms bigint not null
);
create index cairn_idempotency_at on cairn_idempotency (at_ms);

create table cairn_content (
    hash bytea primary key,
    bytes bytea not null,
    standalone boolean not null
);

create table cairn_state (
    key bytea primary key,
    value bytea not null
);
"#];

/// Creates or migrates cairn's schema in the connected database.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let context = "migrating cairn's schema";
    let tx = client.transaction().await.map_err(pg_error(context))?;
    tx.execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg_error(context))?;
    tx.batch_execute("create table if not exists cairn_schema (version integer not null)")
        .await
        .map_err(pg_error(context))?;
    let row = tx.query_opt("select version from cairn_schema", &[]).await.map_err(pg_error(context))?;
    let current: i32 = match row {
        Some(row) => row.get(0),
        None => {
            tx.execute("insert into cairn_schema (version) values (0)", &[]).await.map_err(pg_error(context))?;
            0
        }
    };
    if current > VERSION {
        return Err(StoreError::Invalid {
            field: "postgres",
            rule: format!(
                "the database holds cairn schema version {current}, newer than this cairn understands ({VERSION}); \
                 run a newer cairn"
            ),
        });
    }
    for (from, statements) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tracing::info!("migrating cairn's schema in PostgreSQL from version {from} to {}", from + 1);
        tx.batch_execute(statements).await.map_err(pg_error(context))?;
    }
    if current < VERSION {
        tx.execute("update cairn_schema set version = $1", &[&VERSION]).await.map_err(pg_error(context))?;
    }
    tx.commit().await.map_err(pg_error(context))?;
    Ok(())
}
