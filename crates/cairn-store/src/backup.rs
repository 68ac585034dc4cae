//! Online backup: a copy of the store that opens as a store, made while
//! writers run, incremental into the same directory.
//!
//! The log is the store: every event, removal, acknowledgement and state
//! record is a record of it, and the index is rebuilt from it. So a backup
//! is the log up to a point, plus the content files events refer to:
//! 1. content files present now are copied (those missing from the copy);
//! 2. everything acknowledged is made durable and the log's committed end
//!    is taken: the backup holds the log up to there;
//! 3. segments are copied up to that end. Segments are append-only (bytes
//!    below the committed end never change), so a segment already copied is
//!    skipped, and one copied in part gets only its new bytes;
//! 4. content files are copied again, so content written between 1 and 2
//!    is there too;
//! 5. every copied file and directory is fdatasynced, and `cairn-backup.json`
//!    says where the copy ends.
//!
//! The copy's index is built from its log when it is first opened (a
//! restore is opening the directory as a store). A directory holding
//! anything else than a backup of this store is refused.

use std::fs::{self, File};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::error::{Result, StoreError};
use crate::log::segment::{SEGMENT_HEADER_BYTES, list_segment_files, list_segments, segment_path_gen, sync_dir};
use crate::store::Store;

/// Files a backup writes after the log: made when called.
pub type ExtraFiles = Box<dyn FnOnce() -> Result<Vec<(&'static str, Vec<u8>)>> + Send>;

/// The file a backup writes last, naming where its log ends.
pub const BACKUP_MANIFEST: &str = "cairn-backup.json";

/// The file naming a store (and its backups and restored copies), so a
/// backup never writes into another store's backup.
pub(crate) const STORE_ID: &str = "store-id";

/// How far a running backup is, for a progress bar (read while it runs).
#[derive(Debug, Default)]
pub struct BackupProgress {
    /// Bytes to copy, as far as known (grows when the log's end is taken).
    pub total_bytes: AtomicU64,
    /// Bytes copied so far.
    pub copied_bytes: AtomicU64,
}

/// What a backup copied.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BackupReport {
    /// Where the copy is.
    pub dir: PathBuf,
    /// The log's end in the copy, `<segment>.<offset>`.
    pub end: String,
    /// Segments in the copy.
    pub segments: u64,
    /// Bytes of log in the copy.
    pub log_bytes: u64,
    /// Bytes of log this run copied.
    pub log_bytes_copied: u64,
    /// Content files in the copy.
    pub content_files: u64,
    /// Content files this run copied.
    pub content_files_copied: u64,
    /// Bytes of content this run copied.
    pub content_bytes_copied: u64,
}

impl Store {
    /// Copies a consistent snapshot of the store into `dest` while writers
    /// run (see the module's documentation): it holds every event
    /// acknowledged before the call. A second backup into the same
    /// directory copies only what is new.
    ///
    /// `extra_files` gives files (name, bytes) to write into `dest` after
    /// the log, before the manifest says the backup is complete (the
    /// service's `users.json`, as it is then).
    pub fn backup(&self, dest: &Path, progress: &BackupProgress, extra_files: ExtraFiles) -> Result<BackupReport> {
        let shared = &self.inner.shared;
        let source_log = shared.dir.join("log");
        let source_cas = shared.dir.join("cas").join("sha256");
        let store_dir = fs::canonicalize(&shared.dir).map_err(StoreError::io("resolve the store directory"))?;
        let dest = &resolve(dest)?;
        if dest.starts_with(&store_dir) || store_dir.starts_with(dest) {
            return Err(StoreError::invalid(
                "backup",
                "the backup directory must be outside the store (and not hold it)",
            ));
        }
        let owner = fs::metadata(&store_dir).map_err(StoreError::io("stat the store directory"))?.uid();
        prepare(dest, &source_log, &shared.store_id, owner)?;
        // One backup at a time into a directory.
        let lock = crate::private::file_options()
            .create(true)
            .write(true)
            .truncate(false)
            .open(dest.join(".cairn-backup.lock"))
            .map_err(StoreError::io("open the backup's lock"))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::invalid(
                "backup",
                format!("{} is being written by another backup", dest.display()),
            ));
        }
        // Written first, so an interrupted backup is known as this store's.
        write_manifest(dest, serde_json::json!({ "complete": false }))?;
        crate::private::place_file(dest, STORE_ID, format!("{}\n", shared.store_id).as_bytes())?;
        let dest_log = dest.join("log");
        let dest_cas = dest.join("cas").join("sha256");
        let mut report = BackupReport { dir: dest.to_path_buf(), ..BackupReport::default() };

        copy_content(&source_cas, &dest_cas, progress, &mut report)?;
        // No compaction may drop an event between the end taken here and
        // the copy of its segment (it was acknowledged before the backup).
        let _compaction = shared.compaction.lock().expect("compaction lock");
        self.sync()?;
        let end = shared.progress.committed_end();
        shared.barrier()?;
        let mut plan = Vec::new();
        for segment in list_segments(&source_log)? {
            if segment > end.segment {
                break;
            }
            let generation = crate::compact::generation(&shared.index, segment)?;
            let len = if segment == end.segment {
                end.offset
            } else {
                fs::metadata(segment_path_gen(&source_log, segment, generation))
                    .map_err(StoreError::io("stat a segment"))?
                    .len()
            };
            let have = fs::metadata(segment_path_gen(&dest_log, segment, generation)).map_or(0, |meta| meta.len());
            progress.total_bytes.fetch_add(len.saturating_sub(have), Relaxed);
            plan.push((segment, generation, len, have));
        }
        let dest_files = list_segment_files(&dest_log)?;
        for (segment, generation, len, have) in plan {
            let copied = copy_segment(&source_log, &dest_log, (segment, generation), len, have, progress)?;
            // The copy's other generations of it are older than this one.
            for (_, old) in dest_files.iter().filter(|(s, g)| *s == segment && *g != generation) {
                let path = segment_path_gen(&dest_log, segment, *old);
                fs::remove_file(&path).map_err(StoreError::io(format!("remove {}", path.display())))?;
            }
            report.segments += 1;
            report.log_bytes += len;
            report.log_bytes_copied += copied;
        }
        // Segments past the end (from an older, longer copy of this store
        // cannot exist: the log only grows) would be replayed; none is kept.
        for segment in list_segments(&dest_log)? {
            if segment > end.segment {
                return Err(StoreError::invalid(
                    "backup",
                    format!("{} has segment {segment}, past this store's end: not a backup of it", dest.display()),
                ));
            }
        }
        copy_content(&source_cas, &dest_cas, progress, &mut report)?;
        report.content_files = count_files(&dest_cas)?;
        report.end = format!("{}.{}", end.segment, end.offset);
        sync_dir(&dest_log)?;
        for (name, bytes) in extra_files()? {
            crate::private::place_file(dest, name, &bytes)?;
        }
        write_manifest(dest, serde_json::json!({ "complete": true, "end": report.end, "version": self.version() }))?;
        Ok(report)
    }
}

/// `dest` made absolute, its existing part resolved (symbolic links,
/// `..`): the nearest existing ancestor canonicalized, then the rest,
/// which may hold no `..`.
fn resolve(dest: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(dest).map_err(StoreError::io(format!("resolve {}", dest.display())))?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else { break };
        rest.push(name.to_owned());
        existing = parent;
    }
    let mut resolved = fs::canonicalize(existing).map_err(StoreError::io(format!("resolve {}", dest.display())))?;
    for name in rest.iter().rev() {
        if name == ".." || name == "." {
            return Err(StoreError::invalid("backup", format!("{}: give a path without '..'", dest.display())));
        }
        resolved.push(name);
    }
    Ok(resolved)
}

/// A directory the backup may write into: its own (`owner`), and not
/// writable by others (existing directories are never chmod-ed).
fn check_directory(dir: &Path, owner: u32) -> Result<()> {
    let meta = fs::symlink_metadata(dir).map_err(StoreError::io(format!("stat {}", dir.display())))?;
    let mode = meta.permissions().mode();
    if !meta.is_dir() || meta.uid() != owner || mode & 0o022 != 0 {
        return Err(StoreError::invalid(
            "backup",
            format!(
                "{} must be a directory of the store's owner that others cannot write to (give a new path)",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Makes `dest` ready: created (0700) where missing, checked where it
/// exists; if it holds anything, it must be a backup of the store whose log
/// is `source_log` (its manifest there, its first segment starting as the
/// source's does, no store lock: never opened as a store).
fn prepare(dest: &Path, source_log: &Path, store_id: &str, owner: u32) -> Result<()> {
    let io = |what: &str| StoreError::io(format!("{what} {}", dest.display()));
    if dest.exists() {
        check_directory(dest, owner)?;
        let mut entries = fs::read_dir(dest).map_err(io("read"))?;
        if entries.next().is_some() {
            // Segment 0 as each has it: compared when both hold the same
            // generation (compaction rewrites a segment's start).
            let first_file = |log: &Path| -> Result<Option<PathBuf>> {
                if !log.is_dir() {
                    return Ok(None);
                }
                let files = list_segment_files(log)?;
                Ok(files.iter().find(|(s, _)| *s == 0).map(|(_, g)| segment_path_gen(log, 0, *g)))
            };
            let (dest_first, source_first) = (first_file(&dest.join("log"))?, first_file(source_log)?);
            let comparable = match (&dest_first, &source_first) {
                (Some(d), Some(s)) => d.file_name() == s.file_name(),
                _ => false,
            };
            // The store's id decides where the copy has one (backups made
            // before ids existed fall back on segment 0).
            let same_id = match fs::read_to_string(dest.join(STORE_ID)) {
                Ok(id) => Some(id.trim() == store_id),
                Err(_) => None,
            };
            let same = dest.join(BACKUP_MANIFEST).is_file()
                && !dest.join("LOCK").exists()
                && same_id != Some(false)
                && (same_id == Some(true) || !comparable || {
                    let (d, s) = (dest_first.expect("comparable"), source_first.expect("comparable"));
                    same_start(&head_of(&d)?, &head_of(&s)?)
                });
            if !same {
                return Err(StoreError::invalid(
                    "backup",
                    format!(
                        "{} is not empty and is not a backup of this store; give a new or empty directory",
                        dest.display()
                    ),
                ));
            }
        }
    } else {
        if let Some(parent) = dest.parent() {
            crate::private::create_dir(parent).map_err(io("create the parent of"))?;
        }
        create_new_dir(dest)?;
    }
    for dir in [dest.join("log"), dest.join("cas"), dest.join("cas").join("sha256")] {
        if !dir.exists() {
            create_new_dir(&dir)?;
        }
        // Checked after creating too: someone may have made it first.
        check_directory(&dir, owner)?;
    }
    check_directory(dest, owner)
}

/// Creates `dir` (0700), which must not exist yet (someone else's directory
/// made in the meantime is not written into).
fn create_new_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .mode(crate::private::DIR_MODE)
        .create(dir)
        .map_err(StoreError::io(format!("create {} (it must be new)", dir.display())))?;
    Ok(())
}

/// Whether two segment starts agree on the bytes both have.
fn same_start(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// Writes the manifest (atomically: a file then a rename).
fn write_manifest(dest: &Path, manifest: serde_json::Value) -> Result<()> {
    crate::private::place_file(dest, BACKUP_MANIFEST, &serde_json::to_vec_pretty(&manifest).expect("JSON"))?;
    sync_dir(dest)
}

/// The first bytes of a segment: its header and first record.
fn head_of(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if let Ok(file) = File::open(path) {
        file.take(SEGMENT_HEADER_BYTES + 4096)
            .read_to_end(&mut bytes)
            .map_err(StoreError::io(format!("read {}", path.display())))?;
    }
    Ok(bytes)
}

/// Copies bytes `have..len` of a segment (all of it if the copy is longer
/// than `len`, which an earlier copy of this store cannot be); returns the
/// bytes copied.
fn copy_segment(
    source_log: &Path,
    dest_log: &Path,
    (segment, generation): (u32, u32),
    len: u64,
    have: u64,
    progress: &BackupProgress,
) -> Result<u64> {
    let source_path = segment_path_gen(source_log, segment, generation);
    let dest_path = segment_path_gen(dest_log, segment, generation);
    // The bytes already copied must still be this segment's: their last
    // 4 KiB are compared (a copy from another history is copied again).
    let same_tail = have <= len
        && (have == 0 || {
            let tail = have.min(4096);
            read_range(&source_path, have - tail, tail)? == read_range(&dest_path, have - tail, tail)?
        });
    if same_tail && have == len {
        return Ok(0);
    }
    let from = if same_tail { have } else { 0 };
    let mut source = File::open(&source_path).map_err(StoreError::io(format!("open {}", source_path.display())))?;
    let mut dest = crate::private::file_options()
        .create(true)
        .write(true)
        .truncate(from == 0)
        .open(&dest_path)
        .map_err(StoreError::io(format!("open {}", dest_path.display())))?;
    source.seek(SeekFrom::Start(from)).map_err(StoreError::io("seek a segment"))?;
    dest.seek(SeekFrom::Start(from)).map_err(StoreError::io("seek a copied segment"))?;
    let mut remaining = len - from;
    let mut buf = vec![0u8; 1 << 20];
    while remaining > 0 {
        let want = usize::try_from(remaining.min(buf.len() as u64)).expect("fits");
        source.read_exact(&mut buf[..want]).map_err(StoreError::io(format!("read {}", source_path.display())))?;
        dest.write_all(&buf[..want]).map_err(StoreError::io(format!("write {}", dest_path.display())))?;
        remaining -= want as u64;
        progress.copied_bytes.fetch_add(want as u64, Relaxed);
    }
    dest.set_len(len).map_err(StoreError::io("size a copied segment"))?;
    dest.sync_data().map_err(StoreError::io(format!("fdatasync {}", dest_path.display())))?;
    Ok(len - from)
}

/// `len` bytes of `path` at `at` (fewer if it is shorter).
fn read_range(path: &Path, at: u64, len: u64) -> Result<Vec<u8>> {
    let mut file = File::open(path).map_err(StoreError::io(format!("open {}", path.display())))?;
    file.seek(SeekFrom::Start(at)).map_err(StoreError::io("seek"))?;
    let mut bytes = Vec::new();
    file.take(len).read_to_end(&mut bytes).map_err(StoreError::io(format!("read {}", path.display())))?;
    Ok(bytes)
}

/// Copies the content files missing from `dest` (content files never
/// change: a file's name is its hash).
fn copy_content(source: &Path, dest: &Path, progress: &BackupProgress, report: &mut BackupReport) -> Result<()> {
    let Ok(prefixes) = fs::read_dir(source) else { return Ok(()) };
    for prefix in prefixes {
        let prefix = prefix.map_err(StoreError::io("list content"))?;
        let files = fs::read_dir(prefix.path()).map_err(StoreError::io("list content"))?;
        let dest_dir = dest.join(prefix.file_name());
        let mut created = false;
        for file in files {
            let file = file.map_err(StoreError::io("list content"))?;
            let target = dest_dir.join(file.file_name());
            if target.exists() {
                continue;
            }
            if !created {
                crate::private::ensure_private_dir(&dest_dir).map_err(StoreError::io("create a content directory"))?;
                created = true;
            }
            // Deleted since it was listed: it is no longer content of the store.
            let Ok(bytes) = fs::read(file.path()) else { continue };
            crate::private::place_file(&dest_dir, &file.file_name().to_string_lossy(), &bytes)?;
            progress.copied_bytes.fetch_add(bytes.len() as u64, Relaxed);
            progress.total_bytes.fetch_add(bytes.len() as u64, Relaxed);
            report.content_files_copied += 1;
            report.content_bytes_copied += bytes.len() as u64;
        }
        if created {
            sync_dir(&dest_dir)?;
        }
    }
    sync_dir(dest)
}

fn count_files(dir: &Path) -> Result<u64> {
    let mut count = 0;
    let Ok(prefixes) = fs::read_dir(dir) else { return Ok(0) };
    for prefix in prefixes.flatten() {
        if let Ok(files) = fs::read_dir(prefix.path()) {
            count += files.flatten().filter(|file| !file.file_name().to_string_lossy().starts_with('.')).count() as u64;
        }
    }
    Ok(count)
}
