//! `Local`: the local engine behind the storage seam ([`Storage`]).
//!
//! The blocking policy lives here, once: every engine call that may block
//! (index lookups behind the read barrier, file reads and writes, waiting
//! for the writer) runs on tokio's blocking pool; submissions to the
//! writer's queue never block a thread (they wait for room
//! asynchronously); only memory-only calls (the live ring, the last id,
//! an inline payload's bytes) run in place.

use std::sync::Arc;

use tokio::sync::watch;

use crate::error::{Result, StoreError};
use crate::event::{Batch, Event, Hash, InlineBytes, Payload};
use crate::id::EventId;
use crate::limits::READ_CHUNK_CONTENT_BYTES;
use crate::log::codec::StateOp;
use crate::read::{Query, ReadIter, Scan};
use crate::storage::{BoxFuture, History, Item, Limits, Reader, StateEntries, Storage, Window};
use crate::store::{Imported, Pending, Store, StoreStats, TopicInfo};
use crate::topic::{Pattern, Topic};
use crate::verify::VerifyReport;

/// Batches with more events than this are prepared (hashed, validated) on
/// the blocking pool rather than in place.
const PREPARE_IN_PLACE_EVENTS_MAX: usize = 64;
/// ... or with more payload bytes than this.
const PREPARE_IN_PLACE_BYTES_MAX: usize = 64 * 1024;

/// A [`Store`] as a [`Storage`].
#[derive(Clone)]
pub struct Local {
    store: Store,
}

impl Local {
    /// The seam over `store`.
    pub fn new(store: Store) -> Local {
        Local { store }
    }

    /// The store behind it.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs `work` on the blocking pool.
    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce(&Store) -> Result<T> + Send + 'static) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&store)).await.unwrap_or_else(|error| Err(task_failed(&error)))
    }
}

fn task_failed(error: &tokio::task::JoinError) -> StoreError {
    StoreError::Io {
        context: "a storage task".to_owned(),
        source: Arc::new(std::io::Error::other(format!("it did not finish: {error}"))),
    }
}

/// Whether preparing `batch` may block (content-store files) or take long
/// (many events to hash): then it runs on the blocking pool.
fn prepare_blocks(store: &Store, batch: &Batch) -> bool {
    let inline_max = store.options().inline_payload_bytes;
    let mut bytes = 0usize;
    for event in &batch.events {
        let size = event.payload.as_ref().map_or(0, Vec::len);
        if size as u64 > inline_max {
            return true;
        }
        bytes += size;
    }
    batch.events.len() > PREPARE_IN_PLACE_EVENTS_MAX || bytes > PREPARE_IN_PLACE_BYTES_MAX
}

impl Storage for Local {
    fn limits(&self) -> Limits {
        Limits { payload_bytes_max: self.store.options().payload_bytes_max }
    }

    fn submit(&self, batch: Batch, system: bool) -> BoxFuture<'_, Result<Pending<Vec<Event>>>> {
        Box::pin(async move {
            let (request, reply) = if prepare_blocks(&self.store, &batch) {
                self.blocking(move |store| store.append_request(batch, system)).await?
            } else {
                self.store.append_request(batch, system)?
            };
            self.store.submit_async(request).await?;
            Ok(Pending::writer(reply))
        })
    }

    fn remove(&self, ids: Vec<EventId>) -> BoxFuture<'_, Result<usize>> {
        Box::pin(self.blocking(move |store| store.remove_many(&ids)))
    }

    fn import(&self, events: Vec<Imported>) -> BoxFuture<'_, Result<usize>> {
        Box::pin(self.blocking(move |store| store.import(events).map(|events| events.len())))
    }

    fn state_submit(&self, ops: Vec<StateOp>) -> BoxFuture<'_, Result<Pending<()>>> {
        Box::pin(async move {
            let (request, reply) = crate::store::state_request(ops)?;
            self.store.submit_async(request).await?;
            Ok(Pending::writer(reply))
        })
    }

    fn state_scan(&self, prefix: Vec<u8>) -> BoxFuture<'_, Result<StateEntries>> {
        Box::pin(self.blocking(move |store| store.state_scan(&prefix)))
    }

    fn sync(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.blocking(Store::sync))
    }

    fn expire_now(&self) -> BoxFuture<'_, Result<usize>> {
        Box::pin(self.blocking(Store::expire_now))
    }

    fn get(&self, id: EventId) -> BoxFuture<'_, Result<Option<Event>>> {
        Box::pin(self.blocking(move |store| store.get(id)))
    }

    fn read(&self, query: Query, content: bool) -> BoxFuture<'_, Result<Box<dyn Reader>>> {
        Box::pin(async move {
            let iter = self.blocking(move |store| store.read(&query)).await?;
            Ok(Box::new(LocalReader { store: self.store.clone(), iter: Some(iter), content }) as Box<dyn Reader>)
        })
    }

    fn head(&self, topic: Topic) -> BoxFuture<'_, Result<Option<TopicInfo>>> {
        Box::pin(self.blocking(move |store| store.head(&topic)))
    }

    fn topics(&self) -> BoxFuture<'_, Result<Vec<TopicInfo>>> {
        Box::pin(self.blocking(Store::topics))
    }

    fn content<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            match event.payload {
                // In memory (its frame's CRC was checked when it was read).
                Payload::None | Payload::Inline(_) => self.store.content(event),
                Payload::Stored => {
                    let event = event.clone();
                    self.blocking(move |store| store.content(&event)).await
                }
            }
        })
    }

    fn cas_put(&self, bytes: Vec<u8>) -> BoxFuture<'_, Result<Hash>> {
        Box::pin(self.blocking(move |store| store.cas_put(&bytes)))
    }

    fn cas_get(&self, hash: Hash) -> BoxFuture<'_, Result<Option<Vec<u8>>>> {
        Box::pin(self.blocking(move |store| match store.cas_get(&hash) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }))
    }

    fn cas_delete(&self, hash: Hash) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.blocking(move |store| store.cas_delete(&hash)))
    }

    fn content_topics(&self, hash: Hash, max: usize) -> BoxFuture<'_, Result<Vec<Topic>>> {
        Box::pin(self.blocking(move |store| store.content_topics(&hash, max)))
    }

    fn last_id(&self) -> EventId {
        self.store.last_id()
    }

    fn watch(&self, pattern: &Pattern) -> watch::Receiver<u64> {
        // A follower of one topic (or of one prefix's) wakes only for its
        // commits.
        self.store.shared().live.watch_pattern(pattern)
    }

    fn live_after(&self, cursor: EventId, pattern: &Pattern, max: usize) -> Window {
        self.store.shared().live.after(cursor, pattern, max)
    }

    fn history(&self, pattern: Pattern, after: EventId, max: usize) -> BoxFuture<'_, Result<History>> {
        Box::pin(self.blocking(move |store| history(store, &pattern, after, max)))
    }

    fn is_closed(&self) -> bool {
        self.store.shared().live.is_closed()
    }

    fn version(&self) -> String {
        self.store.version()
    }

    fn stats(&self) -> BoxFuture<'_, StoreStats> {
        Box::pin(async move { self.blocking(|store| Ok(store.stats())).await.unwrap_or_default() })
    }

    fn verify(&self) -> BoxFuture<'_, Result<VerifyReport>> {
        Box::pin(self.blocking(Store::verify))
    }

    fn backup(
        &self,
        dest: std::path::PathBuf,
        progress: std::sync::Arc<crate::BackupProgress>,
        extra_files: crate::ExtraFiles,
    ) -> BoxFuture<'_, Result<crate::BackupReport>> {
        Box::pin(self.blocking(move |store| store.backup(&dest, &progress, extra_files)))
    }

    fn compact(&self, ratio: f64) -> BoxFuture<'_, Result<crate::CompactReport>> {
        Box::pin(self.blocking(move |store| store.compact(ratio)))
    }
}

/// One chunk of history for a subscriber (see [`Storage::history`]).
///
/// The ring's last id is read first: the writer publishes a group only
/// after committing it, so once the index covers everything committed, it
/// covers every stored event up to that id. When the index lags and the
/// answer would make no progress, the read waits for the index (the read
/// barrier) rather than spin.
fn history(store: &Store, pattern: &Pattern, after: EventId, max: usize) -> Result<History> {
    let shared = store.shared();
    let ring_last = shared.live.last();
    let (indexed_last_id, caught_up) = shared.progress.indexed_snapshot()?;
    let mut through = if caught_up { ring_last } else { indexed_last_id };
    if through <= after && ring_last > after {
        shared.progress.barrier()?;
        through = ring_last;
    }
    let mut scan = Scan::open(&shared.index, &shared.segments, pattern, Some(after), None, false)?;
    let mut events = Vec::new();
    let mut decoder = crate::log::codec::Decoder::full();
    while events.len() < max {
        let Some(pos) = scan.next_pos(&shared.segments) else { break };
        let event = shared.segments.read_event_with(pos?, &mut decoder)?;
        if event.id > through {
            // Indexed after the snapshot: the next chunk (or the ring) has it.
            break;
        }
        events.push(Arc::new(event));
    }
    Ok(History { events, through })
}

/// A read in chunks: the iterator moves to the blocking pool and back, and
/// payloads are loaded (and verified) there too.
struct LocalReader {
    store: Store,
    iter: Option<ReadIter>,
    content: bool,
}

impl Reader for LocalReader {
    fn next(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Item>>> {
        Box::pin(async move {
            let Some(mut iter) = self.iter.take() else { return Ok(Vec::new()) };
            let (store, content) = (self.store.clone(), self.content);
            let (iter, events) = tokio::task::spawn_blocking(move || {
                let mut events = Vec::with_capacity(max.min(4096));
                let mut bytes = 0;
                while events.len() < max && bytes < READ_CHUNK_CONTENT_BYTES {
                    let loaded = iter.next().map(|event| {
                        let event = event?;
                        let content = if content { store.content_view(&event)? } else { None };
                        Ok(Item { event, content })
                    });
                    match loaded {
                        Some(Ok(item)) => {
                            bytes += item.content.as_ref().map_or(0, InlineBytes::len);
                            events.push(item);
                        }
                        Some(Err(error)) => return (None, Err(error)),
                        None => return (None, Ok(events)),
                    }
                }
                (Some(iter), Ok(events))
            })
            .await
            .map_err(|error| task_failed(&error))?;
            self.iter = iter;
            events
        })
    }
}
