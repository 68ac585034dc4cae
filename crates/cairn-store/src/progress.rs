//! `Progress`: how far the log is committed and how far the index has
//! caught up, shared by the writer, the indexer and readers.
//!
//! The writer acknowledges an append once the log holds it durably; the
//! indexer applies committed records to the index on its own thread. Readers
//! that need the index wait until it covers everything committed when they
//! started (a read barrier), so a read after an acknowledged write sees it.
//! The writer waits when the index falls more than `INDEX_LAG_BYTES_MAX`
//! behind, which bounds memory, read latency and replay time after a crash.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Result, StoreError};
use crate::id::EventId;
use crate::index::Checkpoint;
use crate::limits::{INDEX_LAG_BYTES_MAX, INDEX_WAKE_BYTES, INDEX_WAKE_DELAY_MS};

pub(crate) struct Progress {
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    /// End of the durably written log.
    committed: Checkpoint,
    /// Bytes committed since open (for the lag bound across segments).
    committed_bytes: u64,
    /// End of what the index covers.
    indexed: Checkpoint,
    indexed_bytes: u64,
    /// Every stored event with an id up to this is in the index.
    indexed_last_id: EventId,
    /// Retention sweeps asked of the indexer.
    expire: Vec<(u64, oneshot::Sender<Result<usize>>)>,
    /// Removal marks to delete (of events compaction dropped).
    forget: Vec<(Vec<Forget>, oneshot::Sender<Result<()>>)>,
    /// Why the indexer stopped, if it failed.
    failed: Option<String>,
    /// The store is closing: the indexer finishes what is committed and stops.
    closing: bool,
    /// Readers blocked in `barrier`: the indexer works at once for them.
    readers_waiting: usize,
    /// When the oldest commit the index does not cover yet happened.
    unindexed_since: Option<Instant>,
    /// How far the content references cover the log while they lag
    /// behind the index (see `index/refs.rs`); `None` once current.
    refs_behind: Option<Checkpoint>,
    /// The indexer has more to do for the references (catching up, or
    /// deleting legacy ones): it does not wait for work then.
    refs_work: bool,
    /// The references' checkpoint as last written. A crash resumes their
    /// catch-up at the one in their tables, which compaction flushes before
    /// it switches a segment (`Index::flush_refs_past`): it leaves this
    /// one's segment and later ones alone.
    refs_marked: Checkpoint,
}

impl Progress {
    pub(crate) fn new(
        end: Checkpoint,
        last_id: EventId,
        refs_behind: Option<Checkpoint>,
        refs_work: bool,
        refs_marked: Checkpoint,
    ) -> Progress {
        Progress {
            state: Mutex::new(State {
                committed: end,
                committed_bytes: 0,
                indexed: end,
                indexed_bytes: 0,
                indexed_last_id: last_id,
                expire: Vec::new(),
                forget: Vec::new(),
                failed: None,
                closing: false,
                readers_waiting: 0,
                unindexed_since: None,
                refs_behind,
                refs_work,
                refs_marked,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("progress lock")
    }

    /// The writer made the log durable up to `end` (`bytes` more than before).
    pub(crate) fn committed(&self, end: Checkpoint, bytes: u64) {
        let mut state = self.lock();
        // The indexer sleeps without a timeout when it has nothing to do:
        // the first commit after that wakes it (it then batches the commits
        // that follow for up to INDEX_WAKE_DELAY_MS); waking it for every
        // commit would cost a thread switch per append.
        let was_idle = state.indexed >= state.committed;
        state.committed = end;
        state.committed_bytes += bytes;
        state.unindexed_since.get_or_insert_with(Instant::now);
        let urgent =
            was_idle || state.committed_bytes - state.indexed_bytes >= INDEX_WAKE_BYTES || state.readers_waiting > 0;
        drop(state);
        if urgent {
            self.changed.notify_all();
        }
    }

    /// Bytes committed since open.
    pub(crate) fn committed_bytes(&self) -> u64 {
        self.lock().committed_bytes
    }

    /// Where the durably written log ends.
    pub(crate) fn committed_end(&self) -> Checkpoint {
        self.lock().committed
    }

    /// The writer waits here while the index lags too far behind.
    pub(crate) fn wait_for_index_lag(&self) -> Result<()> {
        let mut state = self.lock();
        while state.committed_bytes - state.indexed_bytes > INDEX_LAG_BYTES_MAX && state.failed.is_none() {
            state = self.changed.wait(state).expect("progress lock");
        }
        check_failed(&state)
    }

    /// Where the index's coverage of the log ends.
    pub(crate) fn indexed(&self) -> Checkpoint {
        self.lock().indexed
    }

    /// The indexer covered the log up to `end`, `bytes` more than before.
    pub(crate) fn advance_indexed(&self, end: Checkpoint, bytes: u64, last_id: EventId) {
        let mut state = self.lock();
        state.indexed = end;
        state.indexed_bytes += bytes;
        state.indexed_last_id = state.indexed_last_id.max(last_id);
        if state.indexed >= state.committed {
            state.unindexed_since = None;
        }
        drop(state);
        self.changed.notify_all();
    }

    pub(crate) fn fail(&self, reason: String) {
        let mut state = self.lock();
        // Requests nobody will serve now get the reason, not a wait.
        for (_, reply) in state.expire.drain(..) {
            let _ = reply.send(Err(StoreError::Poisoned { reason: reason.clone() }));
        }
        for (_, reply) in state.forget.drain(..) {
            let _ = reply.send(Err(StoreError::Poisoned { reason: reason.clone() }));
        }
        state.failed = Some(reason);
        self.changed.notify_all();
    }

    /// Blocks until the index covers everything committed now.
    pub(crate) fn barrier(&self) -> Result<()> {
        let mut state = self.lock();
        let target = state.committed;
        if state.indexed < target {
            state.readers_waiting += 1;
            self.changed.notify_all();
            while state.indexed < target && state.failed.is_none() {
                state = self.changed.wait(state).expect("progress lock");
            }
            state.readers_waiting -= 1;
        }
        check_failed(&state)
    }

    /// How far the content references cover the log while they lag (the
    /// indexer's catch-up reports each step); `None` once current.
    /// `work`: whether it has more to do for them.
    pub(crate) fn set_refs_behind(&self, behind: Option<Checkpoint>, work: bool) {
        let mut state = self.lock();
        state.refs_behind = behind;
        state.refs_work = work;
        drop(state);
        if behind.is_none() {
            self.changed.notify_all();
        }
    }

    /// Where the content references' checkpoint was last written.
    pub(crate) fn set_refs_marked(&self, at: Checkpoint) {
        self.lock().refs_marked = at;
    }

    /// See [`Progress::set_refs_marked`].
    pub(crate) fn refs_marked(&self) -> Checkpoint {
        self.lock().refs_marked
    }

    /// See [`Progress::set_refs_behind`].
    pub(crate) fn refs_behind(&self) -> Option<Checkpoint> {
        self.lock().refs_behind
    }

    /// Whether the indexer has more to do for the content references.
    pub(crate) fn refs_work(&self) -> bool {
        self.lock().refs_work
    }

    /// Waits until the content references are current (lookups by hash).
    pub(crate) fn wait_refs(&self) -> Result<()> {
        let mut state = self.lock();
        while state.refs_behind.is_some() && state.failed.is_none() && !state.closing {
            state = self.changed.wait(state).expect("progress lock");
        }
        check_failed(&state)?;
        if state.refs_behind.is_some() {
            return Err(StoreError::ShuttingDown);
        }
        Ok(())
    }

    /// The id up to which every stored event is indexed, and whether the
    /// index covers everything committed.
    pub(crate) fn indexed_snapshot(&self) -> Result<(EventId, bool)> {
        let state = self.lock();
        check_failed(&state)?;
        Ok((state.indexed_last_id, state.indexed >= state.committed))
    }

    /// Asks the indexer to remove events expired by `now_ms`.
    pub(crate) fn request_expire(&self, now_ms: u64) -> oneshot::Receiver<Result<usize>> {
        self.request(now_ms, |state| &mut state.expire)
    }

    /// Asks the indexer to delete the removal marks of events no longer in
    /// the log.
    pub(crate) fn request_forget(&self, marks: Vec<Forget>) -> oneshot::Receiver<Result<()>> {
        self.request(marks, |state| &mut state.forget)
    }

    /// Queues work for the indexer; once it failed, answers with the reason.
    fn request<A, T>(
        &self,
        work: A,
        queue: impl FnOnce(&mut State) -> &mut Vec<(A, oneshot::Sender<Result<T>>)>,
    ) -> oneshot::Receiver<Result<T>> {
        let (reply, receiver) = oneshot::channel();
        let mut state = self.lock();
        match &state.failed {
            Some(reason) => drop(reply.send(Err(StoreError::Poisoned { reason: reason.clone() }))),
            None => queue(&mut state).push((work, reply)),
        }
        drop(state);
        self.changed.notify_all();
        receiver
    }

    pub(crate) fn close(&self) {
        self.lock().closing = true;
        self.changed.notify_all();
    }

    /// The indexer waits here for work; `None` once closing and done.
    pub(crate) fn next_work(&self) -> Option<Work> {
        let mut state = self.lock();
        loop {
            if state.failed.is_some() {
                return None;
            }
            let behind = state.indexed < state.committed;
            let delay = Duration::from_millis(INDEX_WAKE_DELAY_MS);
            let waited = state.unindexed_since.map_or(Duration::ZERO, |since| since.elapsed());
            let due = behind
                && (state.closing
                    || state.readers_waiting > 0
                    || state.committed_bytes - state.indexed_bytes >= INDEX_WAKE_BYTES
                    || waited >= delay);
            if due || !state.expire.is_empty() || !state.forget.is_empty() {
                let expire = std::mem::take(&mut state.expire);
                let forget = std::mem::take(&mut state.forget);
                return Some(Work { from: state.indexed, to: state.committed, expire, forget });
            }
            if state.closing {
                return None;
            }
            if state.refs_work {
                let at = state.indexed;
                return Some(Work { from: at, to: at, expire: Vec::new(), forget: Vec::new() });
            }
            state = if behind {
                self.changed.wait_timeout(state, delay - waited).expect("progress lock").0
            } else {
                self.changed.wait(state).expect("progress lock")
            };
        }
    }
}

/// What the indexer should do next.
pub(crate) struct Work {
    pub(crate) from: Checkpoint,
    pub(crate) to: Checkpoint,
    pub(crate) expire: Vec<(u64, oneshot::Sender<Result<usize>>)>,
    pub(crate) forget: Vec<(Vec<Forget>, oneshot::Sender<Result<()>>)>,
}

/// A removal mark to delete: the id, the topic key (topic 0x00 seq), and
/// the key of the event's content reference, if it has content (deleted
/// too: a crash may have kept it when its removal deleted it).
pub(crate) type Forget = ([u8; 16], Vec<u8>, Option<Vec<u8>>);

fn check_failed(state: &State) -> Result<()> {
    match &state.failed {
        Some(reason) => Err(StoreError::Poisoned { reason: reason.clone() }),
        None => Ok(()),
    }
}
