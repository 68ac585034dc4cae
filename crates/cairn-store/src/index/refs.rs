//! The content references: which events hold content with a given hash
//! (`Ks::Cas`, keyed by a prefix of the hash). They serve content lookups by
//! hash and decide when a content file has no event left that refers to it.
//!
//! They live in their own keyspace, with their own checkpoint
//! (`Ks::RefsMeta`), and may lag behind the rest of the index. After a
//! crash (or a rebuild) the open replays only the main keyspace's tail,
//! where a reference per event would cost most of the replay; the indexer
//! then catches the references up in the background ([`catch_up`]),
//! between its own work, reading the log from their checkpoint. Once they
//! reach the index they are kept current with every index batch again
//! (in memory first, see below).
//!
//! While they lag:
//! - a new event's reference is left to the catch-up, which skips events
//!   removed meanwhile (so no reference outlives its event); removals still
//!   delete references at once (deleting a missing one does nothing);
//! - content files whose last reference may be gone are not deleted but
//!   kept in [`Refs::garbage`], and checked again once caught up (after a
//!   crash before that, such a file stays: kept, never lost);
//! - lookups by hash wait for the catch-up (`Progress::wait_refs`);
//! - compaction leaves the segments the catch-up has not read alone, and
//!   flushes the references before it switches a segment, so after a crash
//!   their checkpoint never points into a segment whose offsets changed.
//!
//! New references, and deletions of references, are not written to the
//! keyspace one by one: they gather in [`Pending`] in memory (sorted runs
//! made from what comes, merged as they grow), which lookups read too
//! (first, see [`visit_ids`]), and go to the
//! keyspace as one sorted run by fjall's ingestion ([`drain`]) every
//! [`DRAIN_REFS`] entries and whenever the indexer enters another segment,
//! with their checkpoint in the same run. A memtable insert of a key in
//! hash order cost about 2.8k instructions (a skiplist search through a
//! memtable of random keys), the most of any index write per event.
//! Deletions wait there too, so that the keyspace's tables never hold
//! a change from past the checkpoint they hold: after a power loss cut the
//! log below a removal, a deletion already in the tables would hide the
//! reference of an event that is live again. The checkpoint moves only with
//! a drain, so what a crash takes from memory is caught up from the log
//! like any lag, and compaction leaves alone the segment of the last drain
//! and later ones ([`crate::progress::Progress::refs_marked`]). A run
//! shorter than [`SMALL_RUN_REFS`] goes through the memtable instead (a
//! table per small run would leave many to merge); a clean close drains
//! what is left that way, and the next open finds it unless the close did
//! not flush the memtable (then it is caught up, as after a crash).
//!
//! A reference whose event is marked removed counts as gone ([`live_ref`]):
//! a crash can lose a reference's deletion while the removal mark was
//! flushed (the keyspaces flush apart).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Result;
use crate::event::{Hash, Payload};
use crate::id::EventId;
use crate::index::apply::CAS_KEY_HASH_BYTES;
use crate::index::txn::{Ks, Txn};
use crate::index::{Checkpoint, Index, META_APPLIED, encode_checkpoint};
use crate::limits::INDEX_RECORDS_PER_BATCH;
use crate::log::codec::{self, FRAME_HEADER_BYTES};
use crate::log::compressed::Chunk;
use crate::log::segment::{SEGMENT_HEADER_BYTES, Segments, corrupt};
use crate::store::Shared;

/// Legacy references (kept in the main keyspace by earlier versions)
/// deleted per catch-up step.
const LEGACY_KEYS_PER_STEP: usize = 16 * 1024;

/// Pending references drained to the keyspace at once, in one sorted run
/// (about 25 bytes each in their table; 32 in memory).
const DRAIN_REFS: usize = 1 << 18;

/// Runs shorter than this go to the keyspace through its memtable.
const SMALL_RUN_REFS: usize = 4096;

/// New entries are sorted into a run of their own once this many wait
/// unsorted, so that whoever sorts them (the indexer, or a lookup that
/// needs them in order) holds the lock for a bounded time.
const TAIL_REFS: usize = 16 * 1024;

/// Pending entries a removal's check of a file's last reference looks at
/// under the lock at a time (`Pending::newest_ref`).
const LOOKED_AT_ONCE: usize = 4096;

/// A reference's key in its keyspace without the keyspace byte (the
/// hash's first [`CAS_KEY_HASH_BYTES`] bytes, then the id's 16), as three
/// integers read big-endian: they order as the bytes do, and compare in a
/// few instructions where bytes took a `memcmp` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    hash: u64,
    id_high: u64,
    id_low: u64,
}

const _: () = assert!(CAS_KEY_HASH_BYTES == 8);

impl Key {
    fn new(hash: &Hash, id: EventId) -> Key {
        let id = id.to_bytes();
        Key { hash: prefix_of(hash), id_high: be_u64(&id[..8]), id_low: be_u64(&id[8..]) }
    }

    /// From a key suffix of the keyspace (`cas_suffix`).
    fn from_suffix(suffix: &[u8]) -> Option<Key> {
        let suffix: &[u8; CAS_KEY_HASH_BYTES + 16] = suffix.try_into().ok()?;
        Some(Key { hash: be_u64(&suffix[..8]), id_high: be_u64(&suffix[8..16]), id_low: be_u64(&suffix[16..]) })
    }

    fn id_bytes(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.id_high.to_be_bytes());
        id[8..].copy_from_slice(&self.id_low.to_be_bytes());
        id
    }

    fn id(&self) -> EventId {
        EventId::from_bytes(self.id_bytes())
    }

    /// The keyspace's key: the keyspace byte, then the suffix.
    fn write(&self, key: &mut [u8; 1 + CAS_KEY_HASH_BYTES + 16]) {
        key[0] = Ks::Cas as u8;
        key[1..1 + CAS_KEY_HASH_BYTES].copy_from_slice(&self.hash.to_be_bytes());
        key[1 + CAS_KEY_HASH_BYTES..].copy_from_slice(&self.id_bytes());
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("eight bytes"))
}

fn prefix_of(hash: &Hash) -> u64 {
    be_u64(&hash.0[..CAS_KEY_HASH_BYTES])
}

/// A pending entry's value for a deletion (a reference's value is 0 or 1).
const GONE: u8 = u8::MAX;

/// A pending entry's value for a reference deleted while still pending: as
/// if it had never come (lookups and the drain skip it).
const FORGOTTEN: u8 = u8::MAX - 1;

/// A sorted run of pending entries, each key once.
type Run = Vec<(Key, u8)>;

/// Changes not in the keyspace yet: key → whether the content is stored in
/// a file (the keyspace's value), [`GONE`] for a deletion, or
/// [`FORGOTTEN`] for a reference deleted before it was drained.
///
/// New entries are pushed to `tail` as they come (a push, where an insert
/// into a sorted map cost about 2k instructions: `cairn-bench refs-map`).
/// Every [`TAIL_REFS`] of them, or when a lookup or a removal needs them in
/// order, the tail is sorted into a run of its own, and the newest runs
/// are merged while one is at least half as long as the run before it:
/// there are then few runs (a logarithm of the entries), each entry is
/// merged a logarithmic number of times, and the drain merges what is left
/// into one run.
#[derive(Default)]
pub(crate) struct Pending {
    /// Sorted runs, oldest first; on equal keys a newer run wins.
    runs: Vec<Run>,
    /// Entries since the last run was made, in the order they came.
    tail: Vec<(Key, u8)>,
    /// Being ingested: lookups still read it until the keyspace has it.
    draining: Option<Arc<Run>>,
}

impl Pending {
    fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
        pending.lock().expect("pending references lock")
    }

    fn len(pending: &Mutex<Pending>) -> usize {
        let pending = Pending::lock(pending);
        pending.runs.iter().map(Vec::len).sum::<usize>() + pending.tail.len()
    }

    pub(crate) fn clear(pending: &Mutex<Pending>) {
        let mut pending = Pending::lock(pending);
        pending.runs.clear();
        pending.tail.clear();
    }

    fn push(&mut self, entry: (Key, u8)) {
        self.tail.push(entry);
        if self.tail.len() >= TAIL_REFS {
            self.settle();
        }
    }

    /// Sorts the tail into a run of its own, then merges the newest two
    /// runs while the newer is at least half as long as the older (such a
    /// merge can reach every pending entry: one pass, a few milliseconds
    /// for a full run).
    fn settle(&mut self) {
        if !self.tail.is_empty() {
            let mut run = std::mem::take(&mut self.tail);
            // Stable, so that of a key pushed twice the later entry comes
            // last and is the one kept (a deletion pushed, then the same
            // reference again: it is the reference).
            run.sort_by_key(|(key, _)| *key);
            run.dedup_by(|later, earlier| {
                let same = later.0 == earlier.0;
                if same {
                    *earlier = *later;
                }
                same
            });
            self.runs.push(run);
        }
        while let [.., older, newer] = self.runs.as_slice()
            && older.len() <= 2 * newer.len()
        {
            let newer = self.runs.pop().expect("two runs");
            let older = self.runs.pop().expect("two runs");
            self.runs.push(merge(older, newer));
        }
    }

    /// Deletes `key`'s reference: forgets a pending one (never drained: a
    /// key is in the keyspace only up to the checkpoint, and pending only
    /// past it); otherwise records a deletion for the next run.
    fn delete(&mut self, key: Key) {
        self.settle();
        // The newest entry of the key decides.
        for run in self.runs.iter_mut().rev() {
            if let Ok(at) = run.binary_search_by_key(&key, |(key, _)| *key) {
                match run[at].1 {
                    GONE => return,
                    FORGOTTEN => break,
                    _ => {
                        run[at].1 = FORGOTTEN;
                        return;
                    }
                }
            }
        }
        self.push((key, GONE));
    }

    /// Everything pending, sorted, each key once, leaving nothing.
    fn take_run(&mut self) -> Run {
        self.settle();
        let mut runs = std::mem::take(&mut self.runs).into_iter().rev();
        let mut run = runs.next().unwrap_or_default();
        for older in runs {
            run = merge(older, run);
        }
        run.retain(|(_, value)| *value != FORGOTTEN);
        run
    }

    /// The pending entries with `hash`'s prefix: the references, and the
    /// deletions. The run being drained is read before the runs (an entry
    /// moves from them to it, never back), and older runs before newer.
    /// Under the lock their slices are only copied (content shared by many
    /// events has as many entries); they are merged after it.
    fn with_prefix(pending: &Mutex<Pending>, hash: &Hash) -> (Vec<Key>, BTreeSet<Key>) {
        let prefix = prefix_of(hash);
        let slices: Vec<Run> = {
            let mut pending = Pending::lock(pending);
            pending.settle();
            let pending = &*pending;
            pending
                .draining
                .as_deref()
                .into_iter()
                .chain(&pending.runs)
                .map(|run| entries_with(run, prefix, None, None).to_vec())
                .collect()
        };
        let entries = slices.into_iter().reduce(merge).unwrap_or_default();
        let (mut live, mut gone) = (Vec::new(), BTreeSet::new());
        for (key, value) in entries {
            match value {
                FORGOTTEN => {}
                GONE => {
                    gone.insert(key);
                }
                _ => live.push(key),
            }
        }
        (live, gone)
    }

    /// The newest pending reference (not a deletion) with `prefix`, each
    /// key's newest entry deciding; only keys below `below` and above
    /// `above` when given.
    /// Nothing is copied or merged: each source's entries are walked from
    /// their end, and no more than [`LOOKED_AT_ONCE`] per call (the lock is
    /// held meanwhile), so a removal's check of content shared by many
    /// pending events costs the entries it looks at, mostly one, not all
    /// of them.
    fn newest_ref(pending: &Mutex<Pending>, prefix: u64, below: Option<Key>, above: Option<Key>) -> Newest {
        let mut pending = Pending::lock(pending);
        pending.settle();
        let pending = &*pending;
        // Oldest source first: the run being drained, then the runs.
        let mut sources: Vec<&[(Key, u8)]> = pending
            .draining
            .as_deref()
            .into_iter()
            .chain(&pending.runs)
            .map(|run| entries_with(run, prefix, below, above))
            .collect();
        let mut looked = None;
        for _ in 0..LOOKED_AT_ONCE {
            // The largest key left; of equal keys, the newest source's entry.
            let mut largest: Option<(Key, u8)> = None;
            for source in &sources {
                if let Some(&(key, value)) = source.last()
                    && largest.is_none_or(|(most, _)| key >= most)
                {
                    largest = Some((key, value));
                }
            }
            let Some((key, value)) = largest else { return Newest::None };
            if value != GONE && value != FORGOTTEN {
                return Newest::Ref(key);
            }
            for source in &mut sources {
                if let Some(((last, _), rest)) = source.split_last()
                    && *last == key
                {
                    *source = rest;
                }
            }
            looked = Some(key);
        }
        looked.map_or(Newest::None, Newest::LookedTo)
    }

    /// Whether `key`'s newest pending entry is a deletion: a reference in
    /// the keyspace that no longer counts.
    fn deleted(pending: &Mutex<Pending>, key: Key) -> bool {
        let mut pending = Pending::lock(pending);
        pending.settle();
        let pending = &*pending;
        let newest = pending
            .runs
            .iter()
            .rev()
            .chain(pending.draining.as_deref())
            .find_map(|run| run.binary_search_by_key(&key, |(key, _)| *key).ok().map(|at| run[at].1));
        newest == Some(GONE)
    }
}

/// The entries of `run` (sorted) with `prefix`, only those below `below`
/// and above `above` when given.
fn entries_with(run: &[(Key, u8)], prefix: u64, below: Option<Key>, above: Option<Key>) -> &[(Key, u8)] {
    let from = match above {
        Some(above) => run.partition_point(|(key, _)| *key <= above),
        None => run.partition_point(|(key, _)| key.hash < prefix),
    };
    let to = match below {
        Some(below) => run.partition_point(|(key, _)| *key < below),
        None => run.partition_point(|(key, _)| key.hash <= prefix),
    };
    &run[from..to.max(from)]
}

/// What [`Pending::newest_ref`] found.
#[derive(Debug, PartialEq)]
enum Newest {
    /// A reference.
    Ref(Key),
    /// None among the entries looked at, down to this key: go on below it.
    LookedTo(Key),
    /// None left (above the floor asked for).
    None,
}

/// `older` and `newer` (each sorted, each key once) as one run; on equal
/// keys, `newer`'s entry.
fn merge(older: Run, newer: Run) -> Run {
    let mut run = Vec::with_capacity(older.len() + newer.len());
    let mut newer = newer.into_iter().peekable();
    for (key, value) in older {
        while let Some(&(next, _)) = newer.peek()
            && next < key
        {
            run.extend(newer.next());
        }
        match newer.peek() {
            Some(&(next, value)) if next == key => {
                run.push((key, value));
                newer.next();
            }
            _ => run.push((key, value)),
        }
    }
    run.extend(newer);
    run
}

/// Visits the ids of events that may refer to content with `hash`'s
/// prefix until `visit` says stop (`true`): the pending ones, then the
/// keyspace's that no pending deletion hides, read as they are visited.
/// Pending first: a drain makes its run visible in the keyspace before it
/// leaves the pending entries, so an entry is in one or the other for a reader
/// in this order (in both, sometimes: visitors tolerate a repeat).
pub(crate) fn visit_ids(index: &Index, hash: &Hash, mut visit: impl FnMut(EventId) -> Result<bool>) -> Result<()> {
    let (live, gone) = Pending::with_prefix(&index.pending_refs, hash);
    for key in &live {
        if visit(key.id())? {
            return Ok(());
        }
    }
    for guard in index.prefix(Ks::Cas, &hash.0[..CAS_KEY_HASH_BYTES]) {
        let Some(key) = Key::from_suffix(crate::index::strip(&guard.key()?)) else { continue };
        if !gone.contains(&key) && visit(key.id())? {
            return Ok(());
        }
    }
    Ok(())
}

/// The indexer's view of the references.
#[derive(Default)]
pub(crate) struct Refs {
    /// Where their coverage of the log ends while they lag behind the
    /// index; `None` once they are current.
    pub(crate) behind: Option<Checkpoint>,
    /// Their checkpoint as last written (what the keyspace holds, pending
    /// references aside): the last drain's.
    pub(crate) marked: Checkpoint,
    /// Content files whose last reference may have gone while they lagged.
    pub(crate) garbage: Vec<Hash>,
    /// References an earlier version kept in the main keyspace are left to
    /// delete: those after this key (where the last step stopped).
    legacy: Option<Vec<u8>>,
    /// The sealed segment the catch-up is reading, whole (a compressed one
    /// is decompressed once, not per step).
    reading: Option<(u32, Chunk)>,
}

impl Refs {
    /// Whether a catch-up step has work: lagging, files to check again,
    /// or legacy keys left.
    pub(crate) fn lagging(&self) -> bool {
        self.behind.is_some() || !self.garbage.is_empty() || self.legacy.is_some()
    }

    /// For recovery's replay: the references are not written, and files
    /// that may have lost their last reference are collected in `garbage`.
    pub(crate) fn deferred() -> Refs {
        Refs { behind: Some(Checkpoint { segment: 0, offset: 0 }), ..Refs::default() }
    }

    /// After recovery replayed the main keyspace up to `end`: where the
    /// references stand. Their checkpoint is trusted only if it names a
    /// position the log still has; otherwise they are rebuilt from the
    /// start of the log.
    pub(crate) fn open(index: &Index, segments: &Segments, end: Checkpoint, garbage: Vec<Hash>) -> Result<Refs> {
        let legacy = index.has_legacy_refs().then(|| vec![Ks::Cas as u8]);
        let list = segments.list()?;
        let start = Checkpoint { segment: list.first().copied().unwrap_or(0), offset: SEGMENT_HEADER_BYTES };
        let at = match index.refs_checkpoint()? {
            Some(at) if at <= end && list.contains(&at.segment) => at,
            Some(at) => {
                tracing::warn!(?at, "the content references name a place the log lacks; rebuilding them");
                index.clear_refs()?;
                start
            }
            None => start,
        };
        if legacy.is_some() {
            tracing::info!("moving the content references to their own keyspace (once, in the background)");
        }
        Ok(Refs { behind: (at < end).then_some(at), marked: at, garbage, legacy, reading: None })
    }
}

/// A new event's reference, added to the pending run while the
/// references are current (or by their catch-up).
pub(crate) fn insert(index: &Index, hash: Hash, id: EventId, payload: &Payload) {
    Pending::lock(&index.pending_refs).push((Key::new(&hash, id), u8::from(*payload == Payload::Stored)));
}

/// Deletes a reference (its key suffix, see `cas_key`): a pending one from
/// memory; one that may be in the keyspace by a pending deletion, written
/// with the next run (see the module's notes).
pub(crate) fn remove(index: &Index, suffix: &[u8]) {
    if let Some(key) = Key::from_suffix(suffix) {
        Pending::lock(&index.pending_refs).delete(key);
    }
}

/// Writes the pending references to the keyspace with their checkpoint
/// `covered` (every reference up to it is then in the keyspace): a large
/// run as one sorted table by ingestion, a small one through the memtable
/// (a table per small run would leave many to merge). Either way the
/// checkpoint goes in with the run, so the keyspace's tables never hold a
/// reference past the checkpoint they hold (a power loss can take log the
/// references saw; a checkpoint past the log's end then rebuilds them).
/// Runs on the indexer's thread, the only one that adds or removes pending
/// entries once the store is open (recovery does before; a lookup only
/// sorts and merges what is there).
pub(crate) fn drain(shared: &Shared, refs: &mut Refs, covered: Checkpoint) -> Result<()> {
    // The checkpoint's key sorts before every reference's, as a sorted
    // run needs.
    const _: () = assert!((Ks::RefsMeta as u8) < (Ks::Cas as u8));
    let index = &shared.index;
    let run = {
        // Merged under the lock, so that lookups meanwhile wait for the
        // run rather than miss it: runs already sorted (the tail is never
        // longer than `TAIL_REFS`), merged in one pass each.
        let mut pending = Pending::lock(&index.pending_refs);
        let run = Arc::new(pending.take_run());
        pending.draining = Some(run.clone());
        run
    };
    let mut key = [0u8; CAS_KEY_HASH_BYTES + 17];
    if run.len() >= SMALL_RUN_REFS {
        let mut ingestion = index.keyspace(Ks::Cas).start_ingestion()?;
        ingestion.write(crate::index::key(Ks::RefsMeta, META_APPLIED), &encode_checkpoint(covered)[..])?;
        for (suffix, value) in run.iter() {
            suffix.write(&mut key);
            if *value == GONE {
                ingestion.write_tombstone(&key[..])?;
            } else {
                ingestion.write(&key[..], &[*value][..])?;
            }
        }
        ingestion.finish()?;
        index.refs_ingested.store(true, std::sync::atomic::Ordering::Relaxed);
    } else {
        let mut txn = index.txn();
        for (suffix, value) in run.iter() {
            suffix.write(&mut key);
            if *value == GONE {
                txn.remove(Ks::Cas, key[1..].to_vec());
            } else {
                txn.insert(Ks::Cas, key[1..].to_vec(), vec![*value]);
            }
        }
        mark(&mut txn, covered);
        txn.commit()?;
    }
    Pending::lock(&index.pending_refs).draining = None;
    refs.marked = covered;
    shared.progress.set_refs_marked(covered);
    Ok(())
}

/// After an index batch up to `covered` while the references are current:
/// drains a full run, or any run once the indexer is in another segment
/// than their checkpoint (compaction waits for that).
pub(crate) fn after_batch(shared: &Shared, refs: &mut Refs, covered: Checkpoint) -> Result<()> {
    if refs.behind.is_none()
        && (covered.segment != refs.marked.segment || Pending::len(&shared.index.pending_refs) >= DRAIN_REFS)
    {
        drain(shared, refs, covered)?;
    }
    Ok(())
}

/// At a clean close: drains what is pending (the next open finds the
/// references current if the close flushes the memtable; see the module's
/// notes).
pub(crate) fn at_close(shared: &Shared, refs: &mut Refs) -> Result<()> {
    let indexed = shared.progress.indexed();
    // Deletions (of expired events, or of compacted ones' references) may
    // be pending with the checkpoint already at the index.
    if refs.behind.is_none() && (refs.marked != indexed || Pending::len(&shared.index.pending_refs) > 0) {
        drain(shared, refs, indexed)?;
    }
    Ok(())
}

/// Before compaction's removal marks of events it dropped are deleted:
/// drains what is pending, their references' deletions with it. (While
/// the references lag, the deletions wait for the catch-up's drains, and a
/// crash before one keeps those references, and their files, for good.)
pub(crate) fn before_forgetting(shared: &Shared, refs: &mut Refs) -> Result<()> {
    if refs.behind.is_none() && Pending::len(&shared.index.pending_refs) > 0 {
        drain(shared, refs, shared.progress.indexed())?;
    }
    Ok(())
}

/// After removals outside an index batch (expiry, compaction's forgets):
/// drains a full run, so that deletions do not gather without bound while
/// nothing is appended.
pub(crate) fn after_removals(shared: &Shared, refs: &mut Refs) -> Result<()> {
    if refs.behind.is_none() && Pending::len(&shared.index.pending_refs) >= DRAIN_REFS {
        drain(shared, refs, shared.progress.indexed())?;
    }
    Ok(())
}

/// Whether some event not removed (as `txn` sees it) refers to content
/// with `hash`'s prefix. A different content sharing the eight bytes
/// only keeps a file a little longer.
pub(crate) fn live_ref(txn: &Txn<'_>, hash: &Hash) -> Result<bool> {
    // Newest first: what is removed is mostly the oldest (retention), so
    // the first looked at is mostly live. The pending entries and the
    // keyspace are walked as one, by falling key, and only as far as the
    // first live reference (content that every event of a trimmed topic
    // shares made a copy and merge of all its pending entries per trim
    // quadratic; pending deletions of older references must not be walked
    // past a newer one in the keyspace either). The keyspace is read as it
    // is: references are never written through a transaction that removes,
    // and only this thread drains.
    let pending = &txn.index.pending_refs;
    let prefix = prefix_of(hash);
    let is_live = |key: &Key| -> Result<bool> { Ok(txn.get(Ks::Removed, &key.id_bytes())?.is_none()) };
    let mut stored = txn.index.prefix(Ks::Cas, &hash.0[..CAS_KEY_HASH_BYTES]).rev();
    let mut next_stored = || -> Result<Option<Key>> {
        for guard in stored.by_ref() {
            if let Some(key) = Key::from_suffix(crate::index::strip(&guard.key()?)) {
                return Ok(Some(key));
            }
        }
        Ok(None)
    };
    let mut in_keyspace = next_stored()?;
    let mut below = None;
    loop {
        // The pending references above the keyspace's newest left.
        match Pending::newest_ref(pending, prefix, below, in_keyspace) {
            Newest::Ref(key) => {
                if is_live(&key)? {
                    return Ok(true);
                }
                below = Some(key);
            }
            Newest::LookedTo(key) => below = Some(key),
            Newest::None => {
                let Some(key) = in_keyspace else { return Ok(false) };
                if !Pending::deleted(pending, key) && is_live(&key)? {
                    return Ok(true);
                }
                below = Some(key);
                in_keyspace = next_stored()?;
            }
        }
    }
}

/// The references' checkpoint, written with a batch that keeps them current.
pub(crate) fn mark(txn: &mut Txn<'_>, at: Checkpoint) {
    txn.insert(Ks::RefsMeta, META_APPLIED.to_vec(), encode_checkpoint(at).to_vec());
}

/// One step of catching up: indexes up to a batch of records' references
/// from the log, or, having reached the index, makes the references
/// current; then deletes the content files found unreferenced meanwhile,
/// then legacy references, a slice a step.
pub(crate) fn catch_up(shared: &Shared, refs: &mut Refs) -> Result<()> {
    step(shared, refs)?;
    shared.progress.set_refs_behind(refs.behind, refs.lagging());
    Ok(())
}

fn step(shared: &Shared, refs: &mut Refs) -> Result<()> {
    let index = &shared.index;
    let Some(at) = refs.behind else {
        if !refs.garbage.is_empty() {
            collect(shared, refs)?;
        } else if let Some(after) = &refs.legacy {
            refs.legacy = index.delete_legacy_refs(after, LEGACY_KEYS_PER_STEP)?;
        }
        return Ok(());
    };
    let target = shared.progress.indexed();
    if at >= target {
        drain(shared, refs, target)?;
        refs.behind = None;
        refs.reading = None;
        // Before anyone learns they are current.
        return collect(shared, refs);
    }
    let segments = &shared.segments;
    let next = if at.segment < target.segment {
        // A sealed segment (compaction leaves it alone until read).
        if refs.reading.as_ref().is_none_or(|(segment, _)| *segment != at.segment) {
            let generation = crate::compact::generation(index, at.segment)?;
            let file = segments.file(at.segment, generation)?;
            let len = crate::compact::file_len(segments, at.segment, generation)?;
            refs.reading = Some((at.segment, file.whole(len as usize)?));
        }
        let (_, bytes) = refs.reading.as_ref().expect("just read");
        if at.offset >= bytes.len() as u64 {
            // Read to its end: on to the next segment there is.
            refs.reading = None;
            let segment = segments.list()?.into_iter().find(|&s| s > at.segment).unwrap_or(target.segment);
            Checkpoint { segment, offset: SEGMENT_HEADER_BYTES }
        } else {
            index_refs(index, at, bytes)?
        }
    } else {
        let map = segments.bytes(at.segment, 0)?;
        let bytes = map.get(..target.offset as usize).ok_or_else(|| corrupt(at.segment, 0, "past the map"))?;
        index_refs(index, at, bytes)?
    };
    refs.behind = Some(next);
    if Pending::len(&index.pending_refs) >= DRAIN_REFS {
        drain(shared, refs, next)?;
    }
    Ok(())
}

/// Deletes the files in `refs.garbage` no event refers to (once current).
fn collect(shared: &Shared, refs: &mut Refs) -> Result<()> {
    let garbage = std::mem::take(&mut refs.garbage);
    let txn = shared.index.txn();
    for hash in garbage {
        if !live_ref(&txn, &hash)? {
            shared.cas.collect(&hash)?;
        }
    }
    Ok(())
}

/// Adds the references of up to a batch of records of `bytes` (a segment,
/// or its indexed part) from `at` to the pending run; returns where it
/// stopped.
fn index_refs(index: &Index, at: Checkpoint, bytes: &[u8]) -> Result<Checkpoint> {
    let mut offset = at.offset;
    let mut decoder = codec::Decoder::for_index();
    let mut records = 0;
    // Also stops at a full run, so memory stays bounded while batches of
    // many events are read.
    while offset < bytes.len() as u64
        && records < INDEX_RECORDS_PER_BATCH
        && Pending::len(&index.pending_refs) < DRAIN_REFS
    {
        let body = codec::unframe(&bytes[offset as usize..])
            .map_err(|detail| corrupt(at.segment, offset as u32, &detail))?
            .ok_or_else(|| corrupt(at.segment, offset as u32, "indexed record is incomplete"))?;
        let record = codec::decode_record_with(body, &mut decoder)
            .map_err(|detail| corrupt(at.segment, offset as u32, &detail))?;
        if let codec::Record::Batch { events, .. } = record {
            for (event, _, _) in events {
                let Some(hash) = event.hash else { continue };
                if index.get(Ks::Removed, &event.id.to_bytes())?.is_none() {
                    insert(index, hash, event.id, &event.payload);
                }
            }
        }
        offset += (FRAME_HEADER_BYTES + body.len()) as u64;
        records += 1;
    }
    Ok(Checkpoint { segment: at.segment, offset })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn key(hash: u64, id: u128) -> Key {
        Key { hash, id_high: (id >> 64) as u64, id_low: id as u64 }
    }

    fn plain(run: &Run) -> Vec<(u64, u128, u8)> {
        run.iter().map(|(k, v)| (k.hash, (u128::from(k.id_high) << 64) | u128::from(k.id_low), *v)).collect()
    }

    #[test]
    fn a_drained_run_is_sorted_once_per_key_and_newer_entries_win() {
        let mut pending = Pending::default();
        for entry in [(key(9, 1), 0), (key(2, 7), 1), (key(2, 3), 0)] {
            pending.push(entry);
        }
        // As a lookup or a removal does.
        pending.settle();
        assert!(pending.tail.is_empty());
        pending.delete(key(5, 5));
        pending.delete(key(7, 1));
        // Newer: one key twice, one deleted before.
        for entry in [(key(8, 2), 1), (key(1, 4), 0), (key(7, 1), 1), (key(8, 2), 1), (key(2, 4), 0)] {
            pending.push(entry);
        }
        let run = pending.take_run();
        assert_eq!(
            plain(&run),
            [(1, 4, 0), (2, 3, 0), (2, 4, 0), (2, 7, 1), (5, 5, GONE), (7, 1, 1), (8, 2, 1), (9, 1, 0)]
        );
        assert!(pending.runs.is_empty() && pending.tail.is_empty());
    }

    #[test]
    fn a_deletion_forgets_a_pending_reference_and_is_kept_for_one_in_the_keyspace() {
        let mut pending = Pending::default();
        pending.push((key(3, 1), 1));
        pending.push((key(3, 2), 0));
        // Pending (still in the tail): forgotten.
        pending.delete(key(3, 2));
        // In the keyspace, as far as the pending entries know: a deletion.
        pending.delete(key(4, 9));
        pending.push((key(3, 3), 0));
        assert_eq!(plain(&pending.take_run()), [(3, 1, 1), (3, 3, 0), (4, 9, GONE)]);
    }

    #[test]
    fn a_reference_forgotten_then_deleted_again_leaves_a_deletion() {
        let mut pending = Pending::default();
        pending.push((key(6, 1), 1));
        pending.settle();
        pending.delete(key(6, 1));
        pending.push((key(6, 2), 0));
        pending.settle();
        // Newer than the forgotten entry, in another run.
        pending.delete(key(6, 1));
        assert_eq!(plain(&pending.take_run()), [(6, 1, GONE), (6, 2, 0)]);
    }

    /// Every pending reference with `prefix`, newest first, as a removal's
    /// check walks them; and the calls it took.
    fn walk(pending: &Mutex<Pending>, prefix: u64) -> (Vec<Key>, usize) {
        let (mut walked, mut below, mut calls) = (Vec::new(), None, 0);
        loop {
            calls += 1;
            match Pending::newest_ref(pending, prefix, below, None) {
                Newest::Ref(key) => {
                    walked.push(key);
                    below = Some(key);
                }
                Newest::LookedTo(key) => below = Some(key),
                Newest::None => return (walked, calls),
            }
        }
    }

    #[test]
    fn the_walk_to_the_newest_reference_goes_on_past_what_it_looks_at_at_once() {
        let pending = Mutex::new(Pending::default());
        let n = 3 * LOOKED_AT_ONCE as u128 + 5;
        for id in 0..n {
            let mut pending = Pending::lock(&pending);
            pending.push((key(1, id), 1));
            // Several runs, as lookups and removals between appends leave.
            if id % 3000 == 2999 {
                pending.settle();
            }
        }
        assert!(Pending::lock(&pending).runs.len() > 1);
        // Other content on both sides.
        Pending::lock(&pending).push((key(0, n), 1));
        Pending::lock(&pending).push((key(2, n), 1));
        // Every reference but the oldest deleted while pending.
        for id in 1..n {
            Pending::lock(&pending).delete(key(1, id));
        }
        let (walked, calls) = walk(&pending, 1);
        assert!(walked == [key(1, 0)]);
        assert_eq!(calls, 5, "three calls of {LOOKED_AT_ONCE} entries, the reference, then none");
        // The newest first, at once.
        Pending::lock(&pending).push((key(1, n), 0));
        assert_eq!(Pending::newest_ref(&pending, 1, None, None), Newest::Ref(key(1, n)));
        assert!(!Pending::deleted(&pending, key(1, 5)), "forgotten, not a deletion");
        Pending::lock(&pending).delete(key(3, 1));
        assert!(Pending::deleted(&pending, key(3, 1)), "a deletion of a reference in the keyspace");
    }

    #[test]
    fn the_walk_reads_the_run_being_drained_as_the_oldest_and_stops_at_a_floor() {
        let pending = Mutex::new(Pending::default());
        Pending::lock(&pending).draining = Some(Arc::new(vec![(key(1, 2), 0), (key(1, 5), 1), (key(1, 7), GONE)]));
        // Newer than the run being drained: a deletion of one of its
        // references, and content of another hash.
        Pending::lock(&pending).delete(key(1, 5));
        Pending::lock(&pending).push((key(2, 9), 0));
        assert_eq!(walk(&pending, 1).0, [key(1, 2)]);
        assert!(Pending::deleted(&pending, key(1, 5)), "the newer run's deletion wins");
        assert!(Pending::deleted(&pending, key(1, 7)), "a deletion being drained");
        assert!(!Pending::deleted(&pending, key(1, 2)));
        // The reference again, newer: it wins over the deletion.
        Pending::lock(&pending).push((key(1, 7), 0));
        assert!(!Pending::deleted(&pending, key(1, 7)));
        assert_eq!(walk(&pending, 1).0, [key(1, 7), key(1, 2)]);
        // Above a floor (the keyspace's newest key) only.
        assert_eq!(Pending::newest_ref(&pending, 1, None, Some(key(1, 6))), Newest::Ref(key(1, 7)));
        assert_eq!(Pending::newest_ref(&pending, 1, None, Some(key(1, 7))), Newest::None);
        assert_eq!(Pending::newest_ref(&pending, 1, Some(key(1, 7)), Some(key(1, 1))), Newest::Ref(key(1, 2)));
    }

    #[test]
    fn keys_order_as_their_bytes_do() {
        let ids = [0u128, 1, 255, 256, 1 << 64, (1 << 64) - 1, u128::MAX >> 1, u128::MAX];
        let hashes = [0u64, 1, 0x00ff, 0x0100, u64::MAX];
        let mut keys: Vec<Key> = hashes.iter().flat_map(|&hash| ids.iter().map(move |&id| key(hash, id))).collect();
        keys.reverse();
        let mut bytes: Vec<[u8; 25]> = keys
            .iter()
            .map(|k| {
                let mut out = [0u8; 25];
                k.write(&mut out);
                out
            })
            .collect();
        keys.sort();
        bytes.sort();
        for (k, b) in keys.iter().zip(&bytes) {
            assert!(Key::from_suffix(&b[1..]) == Some(*k));
        }
        let id = EventId::from_bytes([7; 16]);
        assert_eq!(Key::new(&Hash([1; 32]), id).id(), id);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u128, u8),
        Delete(u64, u128),
        Lookup(u64),
        Drain,
    }

    /// Few ids, some with high halves.
    fn id() -> impl Strategy<Value = u128> {
        (0..64u128).prop_map(|n| n.rotate_right(3))
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few hashes and ids, so that keys meet again.
        prop_oneof![
            6 => (0..4u64, id(), 0..2u8).prop_map(|(h, i, v)| Op::Insert(h, i, v)),
            3 => (0..4u64, id()).prop_map(|(h, i)| Op::Delete(h, i)),
            1 => (0..4u64).prop_map(Op::Lookup),
            1 => Just(Op::Drain),
        ]
    }

    proptest! {
        /// Runs, tail and merges hold what one sorted map of the same
        /// changes would (a reference inserted, replaced by a later one;
        /// a deletion forgets a pending reference or is kept), for
        /// lookups and drains alike, and a drained run is strictly sorted.
        #[test]
        fn pending_runs_behave_as_one_sorted_map(ops in proptest::collection::vec(op(), 1..400)) {
            let pending = Mutex::new(Pending::default());
            let mut model: BTreeMap<(u64, u128), u8> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(hash, id, value) => {
                        Pending::lock(&pending).push((key(hash, id), value));
                        model.insert((hash, id), value);
                    }
                    Op::Delete(hash, id) => {
                        Pending::lock(&pending).delete(key(hash, id));
                        match model.get(&(hash, id)) {
                            Some(&value) if value != GONE => {
                                model.remove(&(hash, id));
                            }
                            _ => {
                                model.insert((hash, id), GONE);
                            }
                        }
                    }
                    Op::Lookup(hash) => {
                        let (live, gone) = Pending::with_prefix(&pending, &Hash([0; 32]).with_prefix(hash));
                        let want_live: Vec<_> = model.iter().filter(|((h, _), v)| *h == hash && **v != GONE).map(|((h, i), _)| key(*h, *i)).collect();
                        let want_gone: BTreeSet<_> = model.iter().filter(|((h, _), v)| *h == hash && **v == GONE).map(|((h, i), _)| key(*h, *i)).collect();
                        prop_assert!(live == want_live);
                        prop_assert!(gone == want_gone);
                        // A removal's check: newest first.
                        let (walked, _) = walk(&pending, hash);
                        prop_assert!(walked.iter().rev().eq(want_live.iter()));
                        for n in 0..64u128 {
                            let id = n.rotate_right(3);
                            let deleted = model.get(&(hash, id)) == Some(&GONE);
                            prop_assert_eq!(Pending::deleted(&pending, key(hash, id)), deleted);
                        }
                    }
                    Op::Drain => {
                        let run = Pending::lock(&pending).take_run();
                        prop_assert!(run.windows(2).all(|pair| pair[0].0 < pair[1].0));
                        let want: Vec<_> = model.iter().map(|((h, i), v)| (*h, *i, *v)).collect();
                        prop_assert_eq!(plain(&run), want);
                        model.clear();
                    }
                }
                let p = Pending::lock(&pending);
                prop_assert!(p.runs.windows(2).all(|pair| pair[0].len() > 2 * pair[1].len()));
            }
            let run = Pending::lock(&pending).take_run();
            let want: Vec<_> = model.iter().map(|((h, i), v)| (*h, *i, *v)).collect();
            prop_assert_eq!(plain(&run), want);
        }
    }

    impl Hash {
        fn with_prefix(mut self, prefix: u64) -> Hash {
            self.0[..8].copy_from_slice(&prefix.to_be_bytes());
            self
        }
    }
}
