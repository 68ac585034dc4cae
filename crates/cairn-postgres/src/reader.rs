//! Reads of stored events in chunks: each chunk is one keyset query
//! (`id > last seen order by id limit n`), so a long read holds no
//! transaction or cursor open between chunks, and sees commits made while
//! it runs.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_store::limits::READ_CHUNK_CONTENT_BYTES;
use cairn_store::{BoxFuture, EventId, InlineBytes, Item, Payload, Query, Reader, StoreError};
use tokio_postgres::types::ToSql;

use crate::backend::{Shared, verified};
use crate::error::{pg_error, pool_error};
use crate::rows;

/// Most rows one chunk asks for.
const CHUNK_ROWS_MAX: usize = 10_000;

pub(crate) struct PgReader {
    shared: Arc<Shared>,
    /// A condition on the topic and its parameter.
    topic: Option<(String, String)>,
    /// Only ids above this.
    lower: Option<EventId>,
    /// Only ids below this.
    upper: Option<EventId>,
    from_seq: Option<u64>,
    reverse: bool,
    remaining: Option<u64>,
    content: bool,
    done: bool,
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

impl PgReader {
    pub(crate) async fn start(shared: Arc<Shared>, query: Query, content: bool) -> Result<PgReader, StoreError> {
        let mut reader = PgReader {
            shared,
            topic: rows::pattern_condition(&query.pattern, 1).map(|(_, value)| {
                let operator = if query.pattern.exact().is_some() { "=" } else { "~" };
                (operator.to_owned(), value)
            }),
            lower: query.after,
            upper: None,
            from_seq: query.from_seq,
            reverse: query.reverse,
            remaining: query.limit,
            content,
            done: query.limit == Some(0),
        };
        if let Some(last) = query.last {
            if reader.reverse {
                reader.remaining = Some(reader.remaining.map_or(last, |limit| limit.min(last)));
            } else if let Some(start) = reader.newest_by_seq(&query, last).await? {
                reader.from_seq = Some(start);
            } else {
                // The n-th newest of the selection is where the read starts
                // (an index walk of n entries).
                let (conditions, mut params) = reader.conditions();
                let sql = format!(
                    "select e.id from cairn_events e where true {conditions} order by e.id desc limit 1 offset ${}",
                    params.len() + 1
                );
                params.push(Box::new(last.saturating_sub(1).min(i64::MAX as u64) as i64));
                let context = "reading events";
                let client = reader.shared.pool.get().await.map_err(pool_error(context))?;
                let statement = client.prepare_cached(&sql).await.map_err(pg_error(context))?;
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
                let row = client.query_opt(&statement, &refs).await.map_err(pg_error(context))?;
                if let Some(row) = row {
                    let id: &[u8] = row.get(0);
                    if let Some(id) = rows::id_from(id) {
                        reader.lower = Some(EventId::from_u128(id.to_u128().saturating_sub(1)));
                        reader.from_seq = None;
                    }
                }
            }
        }
        Ok(reader)
    }

    /// Where a read of a whole topic's `last` newest starts, from the
    /// topic's row and its oldest seq (no walk over the events): when no
    /// event between its oldest and newest was removed, they are the last
    /// `last` seqs. `None` when that does not hold or the query is not of
    /// a whole topic.
    async fn newest_by_seq(&self, query: &Query, last: u64) -> Result<Option<u64>, StoreError> {
        let Some(topic) = query.pattern.exact() else { return Ok(None) };
        if query.after.is_some() || query.from_seq.is_some() {
            return Ok(None);
        }
        let context = "reading events";
        let client = self.shared.pool.get().await.map_err(pool_error(context))?;
        let statement = client
            .prepare_cached(
                "select t.last_seq, t.count, (select min(e.seq) from cairn_events e where e.topic = $1) from \
                 cairn_topics t where t.topic = $1",
            )
            .await
            .map_err(pg_error(context))?;
        let Some(row) = client.query_opt(&statement, &[&topic.as_str()]).await.map_err(pg_error(context))? else {
            return Ok(None);
        };
        let (last_seq, count, oldest): (i64, i64, Option<i64>) = (row.get(0), row.get(1), row.get(2));
        // A negative seq (imports refuse seqs beyond bigint, but a row
        // may say otherwise) leaves it to the walk.
        let Some(oldest) = oldest.filter(|oldest| *oldest >= 0) else { return Ok(None) };
        if last_seq < oldest || last_seq.checked_sub(oldest).and_then(|span| span.checked_add(1)) != Some(count) {
            return Ok(None);
        }
        let from_newest = (last_seq as u64).saturating_add(1).saturating_sub(last);
        Ok(Some(from_newest.max(oldest as u64)))
    }

    /// The `and …` conditions of the selection and their parameters.
    fn conditions(&self) -> (String, Params) {
        let mut sql = String::new();
        let mut params: Params = Vec::new();
        if let Some((operator, value)) = &self.topic {
            params.push(Box::new(value.clone()));
            sql.push_str(&format!(" and e.topic {operator} ${}", params.len()));
        }
        if let Some(lower) = self.lower {
            params.push(Box::new(lower.to_bytes().to_vec()));
            sql.push_str(&format!(" and e.id > ${}", params.len()));
        }
        if let Some(upper) = self.upper {
            params.push(Box::new(upper.to_bytes().to_vec()));
            sql.push_str(&format!(" and e.id < ${}", params.len()));
        }
        if let Some(seq) = self.from_seq {
            params.push(Box::new(seq.min(i64::MAX as u64) as i64));
            sql.push_str(&format!(" and e.seq >= ${}", params.len()));
        }
        (sql, params)
    }

    async fn chunk(&mut self, max: usize) -> Result<Vec<Item>, StoreError> {
        if self.done || max == 0 {
            return Ok(Vec::new());
        }
        let limit = self.remaining.map_or(max, |remaining| max.min(remaining.min(usize::MAX as u64) as usize));
        let limit = limit.clamp(1, CHUNK_ROWS_MAX);
        let (conditions, mut params) = self.conditions();
        let sql = format!(
            "select e.id, e.topic, e.seq, e.kind, e.meta, e.usr, e.hash, e.size, e.ttl, e.imported, e.payload \
             from cairn_events e where true{conditions} order by e.id {} limit ${}",
            if self.reverse { "desc" } else { "asc" },
            params.len() + 1
        );
        params.push(Box::new(limit as i64));
        let context = "reading events";
        let client = self.shared.pool.get().await.map_err(pool_error(context))?;
        let statement = client.prepare_cached(&sql).await.map_err(pg_error(context))?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
        let rows = client.query(&statement, &refs).await.map_err(pg_error(context))?;
        if rows.len() < limit {
            self.done = true;
        }
        let mut events = Vec::with_capacity(rows.len());
        let mut bytes = 0usize;
        for row in &rows {
            let event = rows::event(row)?;
            bytes += if self.content { event.size as usize } else { 0 };
            events.push(event);
            if bytes >= READ_CHUNK_CONTENT_BYTES && events.len() < rows.len() {
                // The rest comes with the next chunk: a chunk's payloads
                // stay near the bound (one payload past it at most).
                self.done = false;
                break;
            }
        }
        // Stored payloads of the events kept, in one query.
        let mut stored: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        if self.content {
            let mut hashes: Vec<Vec<u8>> = events
                .iter()
                .filter(|event| matches!(event.payload, Payload::Stored))
                .filter_map(|event| event.hash.map(|hash| hash.0.to_vec()))
                .collect();
            hashes.sort();
            hashes.dedup();
            if !hashes.is_empty() {
                let statement = client
                    .prepare_cached("select hash, bytes from cairn_content where hash = any($1)")
                    .await
                    .map_err(pg_error(context))?;
                for row in client.query(&statement, &[&hashes]).await.map_err(pg_error(context))? {
                    stored.insert(row.get(0), row.get(1));
                }
            }
        }
        let mut items = Vec::with_capacity(events.len());
        for event in events {
            let what = || format!("the payload of event {}", event.id);
            let content = if self.content {
                match (&event.payload, event.hash) {
                    (Payload::None, _) => None,
                    (Payload::Inline(inline), Some(hash)) => Some(verified(hash, inline.to_vec(), what)?),
                    (Payload::Inline(inline), None) => Some(inline.to_vec()),
                    (Payload::Stored, hash) => match (hash, hash.and_then(|hash| stored.get(hash.0.as_slice()))) {
                        (Some(hash), Some(bytes)) => Some(verified(hash, bytes.clone(), what)?),
                        _ => {
                            return Err(StoreError::Corrupt {
                                location: format!("event {}", event.id),
                                detail: "its payload is missing from cairn_content".to_owned(),
                            });
                        }
                    },
                }
            } else {
                None
            };
            if self.reverse {
                self.upper = Some(event.id);
            } else {
                self.lower = Some(event.id);
            }
            items.push(Item { event, content: content.map(InlineBytes::from) });
        }
        if let Some(remaining) = &mut self.remaining {
            *remaining = remaining.saturating_sub(items.len() as u64);
            if *remaining == 0 {
                self.done = true;
            }
        }
        Ok(items)
    }
}

impl Reader for PgReader {
    fn next(&mut self, max: usize) -> BoxFuture<'_, cairn_store::Result<Vec<Item>>> {
        Box::pin(self.chunk(max))
    }
}
