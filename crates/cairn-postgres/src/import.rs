//! Restoring exported events with their ids and seqs (`cairn import`), in
//! one transaction under the sequencer's lock: ids must increase and come
//! after every id handed out so far, so followers see them in order.

use std::collections::BTreeMap;

use cairn_store::{EventId, Imported, Payload, StoreError, Ttl};

use crate::backend::{Shared, lock_sequencer};
use crate::error::{pg_error, pool_error};
use crate::writer::{Columns, INSERT_EVENTS};

pub(crate) async fn import(shared: &Shared, events: Vec<Imported>) -> Result<usize, StoreError> {
    if events.is_empty() {
        return Ok(0);
    }
    let options = &shared.options;
    let mut columns = Columns::default();
    let mut stored: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    // Per topic: events imported, and the last seq and id.
    let mut topics: BTreeMap<String, (i64, i64, EventId)> = BTreeMap::new();
    let mut first_seqs: BTreeMap<String, i64> = BTreeMap::new();
    let mut previous = EventId::MIN;
    let count = events.len();
    for imported in events {
        if imported.event.ttl == Ttl::Ephemeral {
            return Err(StoreError::Invalid {
                field: "ttl",
                rule: "ephemeral events are never stored, so they cannot be imported".into(),
            });
        }
        if imported.id <= previous {
            return Err(StoreError::Invalid { field: "id", rule: "imported ids must increase".into() });
        }
        previous = imported.id;
        if imported.seq > i64::MAX as u64 {
            return Err(StoreError::Invalid {
                field: "seq",
                rule: format!("seq {} is beyond what PostgreSQL's bigint holds", imported.seq),
            });
        }
        let (mut event, bytes) = cairn_store::check_new_event(imported.event, true, options.payload_bytes_max)?;
        event.id = imported.id;
        event.seq = imported.seq;
        event.imported = true;
        if let (Some(bytes), Some(hash)) = (bytes, event.hash) {
            if event.size <= options.inline_payload_bytes {
                event.payload = Payload::Inline(bytes.into());
            } else {
                event.payload = Payload::Stored;
                stored.push((hash.0.to_vec(), bytes));
            }
        }
        first_seqs.entry(event.topic.as_str().to_owned()).or_insert(event.seq as i64);
        let entry = topics.entry(event.topic.as_str().to_owned()).or_insert((0, -1, EventId::MIN));
        if (event.seq as i64) <= entry.1 {
            return Err(StoreError::Invalid {
                field: "seq",
                rule: format!("imported seqs must increase per topic ({})", event.topic),
            });
        }
        *entry = (entry.0 + 1, event.seq as i64, event.id);
        columns.push(&event);
    }

    let context = "importing events";
    let mut client = shared.pool.get().await.map_err(pool_error(context))?;
    let tx = client.transaction().await.map_err(pg_error(context))?;
    let last = lock_sequencer(&tx).await?;
    let first = EventId::from_bytes(columns.first_id());
    if first <= last {
        return Err(StoreError::Invalid {
            field: "id",
            rule: format!("imported events must come after the store's last id ({last}); import into a new store"),
        });
    }
    // Each topic's imported seqs come after what it already holds.
    let names: Vec<&str> = topics.keys().map(String::as_str).collect();
    let existing = tx
        .query("select topic, last_seq from cairn_topics where topic = any($1)", &[&names])
        .await
        .map_err(pg_error(context))?;
    for row in existing {
        let (topic, last_seq): (String, i64) = (row.get(0), row.get(1));
        let first_seq = first_seqs.get(&topic).copied().unwrap_or(i64::MAX);
        if first_seq <= last_seq {
            return Err(StoreError::Invalid {
                field: "seq",
                rule: format!("topic {topic} already has seq {last_seq}; imported seqs must come after it"),
            });
        }
    }
    for (hash, bytes) in &stored {
        tx.execute(
            "insert into cairn_content (hash, bytes, standalone) values ($1, $2, false) on conflict (hash) do nothing",
            &[hash, bytes],
        )
        .await
        .map_err(pg_error(context))?;
    }
    tx.execute(INSERT_EVENTS, &columns.params()).await.map_err(pg_error(context))?;
    let counts: Vec<i64> = topics.values().map(|(n, _, _)| *n).collect();
    let seqs: Vec<i64> = topics.values().map(|(_, seq, _)| *seq).collect();
    let ids: Vec<Vec<u8>> = topics.values().map(|(_, _, id)| id.to_bytes().to_vec()).collect();
    tx.execute(
        "insert into cairn_topics (topic, last_seq, last_id, count) select * from unnest($1::text[], $2::int8[], \
         $3::bytea[], $4::int8[]) on conflict (topic) do update set last_seq = greatest(cairn_topics.last_seq, \
         excluded.last_seq), last_id = excluded.last_id, count = cairn_topics.count + excluded.count",
        &[&names, &seqs, &ids, &counts],
    )
    .await
    .map_err(pg_error(context))?;
    let newest = previous.to_u128();
    let (ms, ctr) = ((newest >> 80) as i64, (newest & ((1 << 80) - 1)).to_string());
    tx.execute("update cairn_sequencer set ms = $1, ctr = $2::text::numeric, writer = 'import'", &[&ms, &ctr])
        .await
        .map_err(pg_error(context))?;
    tx.commit().await.map_err(pg_error(context))?;
    shared.tail_kick.notify_one();
    shared.notify_others();
    Ok(count)
}
