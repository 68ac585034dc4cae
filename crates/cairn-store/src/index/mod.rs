//! The derived indexes, kept in fjall: everything here can be rebuilt from
//! the log. Only the writer (and recovery, before the writer starts) writes
//! them, through a [`Txn`]; readers read committed state.
//!
//! The indexes share one fjall keyspace, but for the content references
//! (`refs`, see `refs.rs`); the first byte of each key says which index
//! it belongs to ([`Ks`]). Few keyspaces mean few memtables to flush on
//! close: measured, eight keyspaces took 2 s to reopen after 300,000
//! events. The content references have their own because they are the
//! one index with a key per event in random order (by hash): in the main
//! keyspace they made every flushed table overlap the whole index, so
//! fjall's merges rewrote it all, flushes fell behind, and an open after
//! a kill -9 replayed half a million events; apart, the main keyspace is
//! sealed every few MiB of log at little cost, and the references catch up
//! behind it (`refs.rs`).
//!
//! Indexes and their keys (after the index byte; integers big-endian so
//! byte order is numeric order):
//! - `ids`, `topics`, `removed`, `removed_seq`: the sparse indexes over the
//!   log, see `sparse.rs`
//! - `heads`: topic → [`Head`]
//! - `cas` (in the `refs` keyspace): first 8 bytes of the hash, id(16) →
//!   stored(1)
//! - `expiry`: expires_ms(8) id(16) → empty
//! - `idem`: key → time_ms(8), the write's fingerprint(32), 1, then id(16)
//!   per event (older entries lack the fingerprint and the 1)
//! - `consumers`: name → id(16)
//! - `meta`: `applied` → segment(4) offset(8); `last_id` → id(16)
//! - `refs_meta` (in the `refs` keyspace): `applied` → segment(4)
//!   offset(8), how far the content references cover the log

pub(crate) mod apply;
pub(crate) mod indexer;
pub(crate) mod refs;
pub(crate) mod sparse;
pub(crate) mod txn;

use std::path::Path;

use std::ops::Bound;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

pub(crate) use apply::{Applier, Heads};
pub(crate) use txn::Txn;

use crate::error::{Result, StoreError};
use crate::id::EventId;
use crate::log::segment::sync_dir;

/// The fjall database and its two keyspaces.
pub(crate) struct Index {
    db: Database,
    data: Keyspace,
    /// The content references (`Ks::Cas`, `Ks::RefsMeta`).
    refs: Keyspace,
    /// Where it lives (for the clean-close marker).
    path: std::path::PathBuf,
    /// What opening found of fjall's journal (see [`Journal`]).
    pub(crate) journal: Journal,
    /// Bytes of log applied since open, counting those replayed on open: at
    /// least what the tables may lack (fjall may have flushed some).
    applied_log_bytes: std::sync::atomic::AtomicU64,
    /// Bytes of log applied since the main memtable was last sealed.
    unsealed_log_bytes: std::sync::atomic::AtomicU64,
    /// A checkpoint of the content references known to be in their tables.
    refs_flushed: std::sync::Mutex<Option<Checkpoint>>,
    /// Content references not in their keyspace yet (see `refs.rs`).
    pub(crate) pending_refs: std::sync::Mutex<refs::Pending>,
    /// A run of references was ingested since open: a close then flushes
    /// the memtables (with the short runs drained after it, which would
    /// otherwise be caught up again at the next open), as after a load.
    pub(crate) refs_ingested: std::sync::atomic::AtomicBool,
}

/// The main keyspace's memtable is sealed (and flushed by fjall's worker)
/// each time this much log was applied to it, once the last sealed one is
/// flushed, so an open after a crash replays at most twice this much log
/// beyond the index's lag. Its keys are few
/// per event (anchors are sparse) and mostly in log order, so the tables
/// this makes merge cheaply.
const SEAL_LOG_BYTES: u64 = 8 * 1024 * 1024;

/// A clean close flushes the memtable when it holds this much, when the log
/// applied since open reaches [`CLOSE_FLUSH_LOG_BYTES`], or when a run of
/// content references was ingested since open (`refs.rs`); otherwise it
/// leaves the memtable unflushed and the next open replays that bit of log.
/// Each flush adds a table, and every few tables fjall merges them into the
/// rest of the index, which the closing process then waits for (2.4 s at
/// 1M events): a command that appended one event should not pay that.
const CLOSE_FLUSH_MEMTABLE_BYTES: u64 = 1024 * 1024;
/// See [`CLOSE_FLUSH_MEMTABLE_BYTES`]: the bound on what an open replays
/// after a clean close that did not flush.
const CLOSE_FLUSH_LOG_BYTES: u64 = 1024 * 1024;

/// What an open found of fjall's journal, which it emptied unread.
///
/// fjall replays its whole active journal on open, flushed or not, and
/// rotates it only every 64 MB: a store filled by ten command-line batches
/// took 1.6 s per command (47 MB of journal), and an open after a kill -9
/// during a load 2 s. The index needs no journal of its own: each index
/// batch carries the log position it covers (the checkpoint), fjall flushes
/// memtables in order, so its tables always hold a prefix of the batches,
/// and recovery replays the log from the checkpoint those tables hold. So
/// the journal is emptied unread, always; the log after the checkpoint is
/// bounded by the memtable's size and the index's lag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Journal {
    /// Bytes of journal found, all emptied or removed.
    pub(crate) bytes: u64,
    /// Whether the last close was clean (the marker was there).
    pub(crate) clean: bool,
    /// Whether that close also flushed every memtable into tables: then
    /// they hold every index change, retention sweeps included, which are
    /// not in the log.
    pub(crate) flushed: bool,
}

/// A file in the index directory saying that the last close was clean;
/// it holds [`FLUSHED`] when that close flushed the index, [`UNFLUSHED`]
/// when it left a little log to replay.
const CLEAN_CLOSE: &str = "cairn-clean-close";
const FLUSHED: &[u8] = b"flushed\n";
const UNFLUSHED: &[u8] = b"unflushed\n";

/// Which index a key belongs to: its first byte.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub(crate) enum Ks {
    Ids = b'i',
    Topics = b't',
    Heads = b'h',
    Cas = b'c',
    Expiry = b'e',
    Idem = b'k',
    Consumers = b'n',
    Meta = b'm',
    Removed = b'r',
    RemovedSeq = b'x',
    /// Front ends' durable state (consumer groups), see `Store::state_write`.
    State = b's',
    /// The content references' own meta keys (in the `refs` keyspace).
    RefsMeta = b'M',
}

/// `suffix` prefixed with the index byte of `ks`.
pub(crate) fn key(ks: Ks, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(suffix.len() + 1);
    key.push(ks as u8);
    key.extend_from_slice(suffix);
    key
}

/// A key without its index byte.
pub(crate) fn strip(key: &[u8]) -> &[u8] {
    key.get(1..).unwrap_or_default()
}

/// What the index knows of one topic.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Head {
    /// Seq of the newest event ever appended (removed or not).
    pub(crate) last_seq: u64,
    /// Id of that event.
    pub(crate) last_id: EventId,
    /// Events of the topic still stored.
    pub(crate) count: u64,
    /// Every event with a seq below this was removed by `last:<n>` retention.
    pub(crate) trimmed_below: u64,
}

impl Head {
    pub(crate) fn to_bytes(self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[0..8].copy_from_slice(&self.last_seq.to_be_bytes());
        out[8..24].copy_from_slice(&self.last_id.to_bytes());
        out[24..32].copy_from_slice(&self.count.to_be_bytes());
        out[32..40].copy_from_slice(&self.trimmed_below.to_be_bytes());
        out
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Head> {
        Some(Head {
            last_seq: u64::from_be_bytes(bytes.get(0..8)?.try_into().ok()?),
            last_id: EventId::from_bytes(bytes.get(8..24)?.try_into().ok()?),
            count: u64::from_be_bytes(bytes.get(24..32)?.try_into().ok()?),
            trimmed_below: u64::from_be_bytes(bytes.get(32..40)?.try_into().ok()?),
        })
    }
}

/// A position in the log (segment, then byte offset): where the index's
/// knowledge of the log ends, or where the committed log ends.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) struct Checkpoint {
    pub(crate) segment: u32,
    pub(crate) offset: u64,
}

pub(crate) const META_APPLIED: &[u8] = b"applied";
pub(crate) const META_LAST_ID: &[u8] = b"last_id";

impl Index {
    pub(crate) fn open(path: &Path) -> Result<Index> {
        let journal = drop_journal(path)?;
        let db = Database::builder(path)
            // The log is the source of truth and is replayed from the last
            // checkpoint on open, so the index's own journal need not be
            // fsynced; a small journal keeps reopening fast.
            .manual_journal_persist(true)
            .max_journaling_size(64 * 1024 * 1024)
            // Three workers: the content references' merges (random keys,
            // the index's largest) must not hold up the main keyspace's
            // flushes, or those fall behind (and fjall halts writes at four
            // sealed memtables or 30 tables in its first level). fjall keeps
            // its first worker for flushes, and that worker hands each merge
            // request it receives back to the queue, in a loop, while the
            // others merge: with two, one core spun for as long as a merge
            // of the references' ingested runs took (see `refs.rs`); a
            // third takes the request instead.
            .worker_threads(3)
            .open()?;
        let data = db.keyspace("index", || KeyspaceCreateOptions::default().max_memtable_size(8 * 1024 * 1024))?;
        // The references come as ingested runs (`refs.rs`): their memtable
        // holds only short runs (under 4,096 references with their
        // checkpoint), so it is rarely flushed for its size. They are read
        // by prefix (a hash's), never by a key of their own, so their tables
        // build no bloom filters (the only point read is their checkpoint's,
        // once per open). A store created before keeps its filters: fjall
        // keeps a keyspace's options from its creation.
        let refs = db.keyspace("refs", || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(64 * 1024 * 1024)
                .filter_policy(fjall::config::FilterPolicy::disabled())
        })?;
        Ok(Index {
            db,
            data,
            refs,
            path: path.to_path_buf(),
            journal,
            applied_log_bytes: Default::default(),
            unsealed_log_bytes: Default::default(),
            refs_flushed: Default::default(),
            pending_refs: Default::default(),
            refs_ingested: Default::default(),
        })
    }

    /// The keyspace holding `ks`.
    pub(crate) fn keyspace(&self, ks: Ks) -> &Keyspace {
        match ks {
            Ks::Cas | Ks::RefsMeta => &self.refs,
            _ => &self.data,
        }
    }

    pub(crate) fn get(&self, ks: Ks, suffix: &[u8]) -> Result<Option<fjall::Slice>> {
        Ok(self.keyspace(ks).get(key(ks, suffix))?)
    }

    /// Keys of `ks` between two suffix bounds (keys keep their index byte).
    /// A live view: writes committed while it is read may show.
    pub(crate) fn range(&self, ks: Ks, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> fjall::Iter {
        self.range_at(None, ks, lo, hi)
    }

    /// A consistent view of the index as it is now, for reads made of
    /// several lookups (a scan: its start, its anchors, its removal marks),
    /// which compaction's moving of anchors must not tear.
    pub(crate) fn snapshot(&self) -> fjall::Snapshot {
        self.db.snapshot()
    }

    /// [`Index::range`], at `snapshot` when given.
    pub(crate) fn range_at(
        &self,
        snapshot: Option<&fjall::Snapshot>,
        ks: Ks,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
    ) -> fjall::Iter {
        let lo = match lo {
            Bound::Included(suffix) => Bound::Included(key(ks, suffix)),
            Bound::Excluded(suffix) => Bound::Excluded(key(ks, suffix)),
            Bound::Unbounded => Bound::Included(vec![ks as u8]),
        };
        let hi = match hi {
            Bound::Included(suffix) => Bound::Included(key(ks, suffix)),
            Bound::Excluded(suffix) => Bound::Excluded(key(ks, suffix)),
            Bound::Unbounded => Bound::Excluded(vec![ks as u8 + 1]),
        };
        match snapshot {
            Some(snapshot) => fjall::Readable::range::<Vec<u8>, _>(snapshot, self.keyspace(ks), (lo, hi)),
            None => self.keyspace(ks).range::<Vec<u8>, _>((lo, hi)),
        }
    }

    /// Keys of `ks` starting with `suffix` (keys keep their index byte).
    pub(crate) fn prefix(&self, ks: Ks, suffix: &[u8]) -> fjall::Iter {
        self.keyspace(ks).prefix(key(ks, suffix))
    }

    pub(crate) fn txn(&self) -> Txn<'_> {
        Txn::new(self, self.db.batch())
    }

    /// Empties the index (before a full rebuild from the log).
    pub(crate) fn clear(&self) -> Result<()> {
        self.data.clear()?;
        self.clear_refs()
    }

    /// Empties the content references (rebuilt from the log behind the
    /// rest of the index, see `refs.rs`).
    pub(crate) fn clear_refs(&self) -> Result<()> {
        refs::Pending::clear(&self.pending_refs);
        Ok(self.refs.clear()?)
    }

    /// Counts `bytes` of log applied to the main keyspace, sealing its
    /// memtable every [`SEAL_LOG_BYTES`].
    pub(crate) fn applied(&self, bytes: u64) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        self.applied_log_bytes.fetch_add(bytes, Relaxed);
        if self.unsealed_log_bytes.fetch_add(bytes, Relaxed) + bytes >= SEAL_LOG_BYTES {
            self.unsealed_log_bytes.store(0, Relaxed);
            // fjall's worker flushes sealed memtables on its own time; on a
            // busy machine it can fall behind, and every memtable it has not
            // flushed is log an open after a crash replays. Seal the next
            // one only once the last is flushed, so the replay stays within
            // the index's lag plus two seals.
            wait_sealed_flushed(&self.data)?;
            self.data.rotate_memtable()?;
        }
        Ok(())
    }

    /// On clean close, once nothing writes the index (and the log is
    /// synced): flushes the memtable into tables, so the next open replays
    /// nothing, unless it is small (see [`CLOSE_FLUSH_MEMTABLE_BYTES`]);
    /// then marks the close clean. Returns whether it flushed.
    pub(crate) fn close(&self) -> Result<bool> {
        use fjall::AbstractTree as _;
        let memtable = self.data.tree.active_memtable().size() + self.refs.tree.active_memtable().size();
        let applied = self.applied_log_bytes.load(std::sync::atomic::Ordering::Relaxed);
        let ingested = self.refs_ingested.load(std::sync::atomic::Ordering::Relaxed);
        let mut flushed = false;
        // A directory deleted under the open store cannot take a flush.
        let there = self.path.exists();
        if there && (memtable >= CLOSE_FLUSH_MEMTABLE_BYTES || applied >= CLOSE_FLUSH_LOG_BYTES || ingested) {
            self.db.persist(PersistMode::SyncData)?;
            // A memtable sealed earlier may still wait for the worker, and
            // fjall waits only for the one it sealed itself: wait for every
            // one, or do not call the close flushed.
            flushed = self.flush().is_ok();
        }
        self.mark_clean(if flushed { FLUSHED } else { UNFLUSHED })?;
        Ok(flushed)
    }

    /// Flushes every memtable of both keyspaces into tables and waits for
    /// it: afterwards the tables hold every index batch committed before
    /// the call (fjall flushes memtables in order), so no replay goes back
    /// before them.
    pub(crate) fn flush(&self) -> Result<()> {
        self.flush_main()?;
        self.flush_refs()
    }

    /// [`Index::flush`] for the main keyspace only (what compaction's
    /// switch of a segment needs to be in tables).
    pub(crate) fn flush_main(&self) -> Result<()> {
        flush_keyspace(&self.data)
    }

    /// Makes sure the content references' checkpoint in their tables is
    /// past `segment` (see `refs.rs`), flushing them if not known to be.
    pub(crate) fn flush_refs_past(&self, segment: u32) -> Result<()> {
        if self.refs_flushed.lock().expect("refs lock").is_some_and(|at| at.segment > segment) {
            return Ok(());
        }
        // Read before the flush, so the flush covers it.
        let at = self.refs_checkpoint()?;
        self.flush_refs()?;
        *self.refs_flushed.lock().expect("refs lock") = at;
        Ok(())
    }

    /// Flushes the content references and waits for it.
    fn flush_refs(&self) -> Result<()> {
        flush_keyspace(&self.refs)
    }

    fn mark_clean(&self, how: &[u8]) -> Result<()> {
        use std::io::Write as _;
        let marker = self.path.join(CLEAN_CLOSE);
        let mut file = crate::private::file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&marker)
            .map_err(StoreError::io("create the index's clean-close marker"))?;
        file.write_all(how).map_err(StoreError::io("write the index's clean-close marker"))?;
        file.sync_all().map_err(StoreError::io("fsync the index's clean-close marker"))?;
        sync_dir(&self.path)
    }

    pub(crate) fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        Ok(self.get(Ks::Meta, META_APPLIED)?.and_then(|bytes| decode_checkpoint(&bytes)))
    }

    /// Whether content references an earlier version kept in the main
    /// keyspace are left (see `refs.rs`).
    pub(crate) fn has_legacy_refs(&self) -> bool {
        self.data.prefix([Ks::Cas as u8]).next().is_some()
    }

    /// Deletes up to `limit` of those after the key `after` (where the last
    /// call stopped, or the bare index byte: starting over would walk past
    /// every deletion made so far); returns where it stopped if more may be
    /// left.
    pub(crate) fn delete_legacy_refs(&self, after: &[u8], limit: usize) -> Result<Option<Vec<u8>>> {
        let lo = Bound::Excluded(after.to_vec());
        let hi = Bound::Excluded(vec![Ks::Cas as u8 + 1]);
        let keys: Vec<fjall::Slice> = self
            .data
            .range::<Vec<u8>, _>((lo, hi))
            .take(limit)
            .map(|guard| guard.key())
            .collect::<std::result::Result<_, _>>()?;
        let next = (keys.len() == limit).then(|| keys.last().map(|key| key.to_vec())).flatten();
        let mut batch = self.db.batch();
        for key in keys {
            batch.remove(&self.data, key);
        }
        batch.commit()?;
        Ok(next)
    }

    /// How far the content references cover the log (see `refs.rs`).
    pub(crate) fn refs_checkpoint(&self) -> Result<Option<Checkpoint>> {
        Ok(self.get(Ks::RefsMeta, META_APPLIED)?.and_then(|bytes| decode_checkpoint(&bytes)))
    }

    pub(crate) fn last_id(&self) -> Result<EventId> {
        Ok(self
            .get(Ks::Meta, META_LAST_ID)?
            .and_then(|bytes| <[u8; 16]>::try_from(&*bytes).ok())
            .map_or(EventId::MIN, EventId::from_bytes))
    }

    pub(crate) fn head(&self, topic: &str) -> Result<Option<Head>> {
        Ok(self.get(Ks::Heads, topic.as_bytes())?.and_then(|bytes| Head::from_bytes(&bytes)))
    }

    pub(crate) fn consumer(&self, name: &str) -> Result<Option<EventId>> {
        Ok(self
            .get(Ks::Consumers, name.as_bytes())?
            .and_then(|bytes| <[u8; 16]>::try_from(&*bytes).ok())
            .map(EventId::from_bytes))
    }
}

/// Seals `keyspace`'s memtable and waits until no sealed memtable is left
/// (fjall's own wait covers only the one it sealed itself, and waits for
/// ever when the flush fails: a store whose directory was deleted under it
/// never closed).
fn flush_keyspace(keyspace: &Keyspace) -> Result<()> {
    keyspace.rotate_memtable()?;
    wait_sealed_flushed(keyspace)
}

/// Waits until fjall's worker flushed every sealed memtable of `keyspace`.
fn wait_sealed_flushed(keyspace: &Keyspace) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while keyspace.sealed_memtable_count() > 0 {
        if std::time::Instant::now() >= deadline {
            return Err(StoreError::Index("the index did not flush within 60 s".to_owned()));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Ok(())
}

/// Before fjall opens: empties fjall's journal (see [`Journal`]),
/// then the clean-close marker, if any.
fn drop_journal(path: &Path) -> Result<Journal> {
    let mut journal = Journal::default();
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(journal),
        Err(error) => return Err(StoreError::io("list the index directory")(error)),
    };
    let mut journals = Vec::new();
    for entry in entries {
        let file = entry.map_err(StoreError::io("list the index directory"))?.path();
        let id = file.file_name().and_then(|name| name.to_str()?.strip_suffix(".jnl")?.parse::<u64>().ok());
        if let Some(id) = id {
            journal.bytes += std::fs::metadata(&file).map_err(StoreError::io("stat an index journal"))?.len();
            journals.push((id, file));
        }
    }
    // The newest stays, emptied: with no journal at all, fjall would not
    // take its sequence numbers up to its tables' (it does so only after
    // replaying an existing journal), and every later write would be older
    // than what the tables hold, so invisible.
    journals.sort();
    if let Some((_, newest)) = journals.pop() {
        for (_, file) in journals {
            std::fs::remove_file(&file).map_err(StoreError::io("remove an index journal"))?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&newest)
            .map_err(StoreError::io("open the index journal to empty it"))?;
        file.set_len(0).map_err(StoreError::io("empty the index journal"))?;
        file.sync_all().map_err(StoreError::io("fsync the emptied index journal"))?;
    }
    let marker = path.join(CLEAN_CLOSE);
    match std::fs::read(&marker) {
        Ok(how) => (journal.clean, journal.flushed) = (true, how == FLUSHED),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(StoreError::io("read the index's clean-close marker")(error)),
    }
    if journal.clean {
        // Gone before anything is written again: a later crash must not
        // pass for a clean close.
        std::fs::remove_file(&marker).map_err(StoreError::io("remove the index's clean-close marker"))?;
    }
    sync_dir(path)?;
    Ok(journal)
}

pub(crate) fn encode_checkpoint(checkpoint: Checkpoint) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[0..4].copy_from_slice(&checkpoint.segment.to_be_bytes());
    out[4..12].copy_from_slice(&checkpoint.offset.to_be_bytes());
    out
}

fn decode_checkpoint(bytes: &[u8]) -> Option<Checkpoint> {
    Some(Checkpoint {
        segment: u32::from_be_bytes(bytes.get(0..4)?.try_into().ok()?),
        offset: u64::from_be_bytes(bytes.get(4..12)?.try_into().ok()?),
    })
}

/// Key of `topic`'s event number `seq` in `topics`.
pub(crate) fn topic_key(topic: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 9);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}
