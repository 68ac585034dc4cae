//! Zeroes the active segment's file ahead of the writer.
//!
//! An fdatasync after a write that grows a file must also make the file's
//! new size and block allocation durable (ext4 without a journal writes the
//! inode in a second synchronous write, with one it commits the journal);
//! after a write over blocks already written it writes the data alone.
//! Measured on this machine's virtual disk (`cairn-bench batches` and
//! `tasks`, whose raw baselines write three ways): one write + fdatasync
//! of 170 KiB took 245 µs appending, 127 µs into a file of zeroes written
//! before and 219 µs into one allocated with `fallocate` (its unwritten
//! extents are converted, metadata again, at the first write into a block);
//! of one event, 112 µs appending, 78 µs into zeroes and 71 µs allocated
//! (many events share a block, so its extent is converted once for them). So with sync `always` a
//! helper thread writes zeroes ahead of the log's end (a 1 MiB range
//! whenever fewer than 2 MiB are left, so up to 3 MiB ahead) and
//! fdatasyncs them, off the writer's path, and the writer's groups land on
//! blocks already written.
//!
//! The helper only writes a range the writer has not reached, and the
//! writer waits for it to finish before it writes into that range, so a
//! record is never overwritten. A range starts a little past the log's end
//! when it has caught up with the zeroes (a big batch), so the writer's next
//! groups do not wait for it; the bytes between read as zeroes too (a hole,
//! whose blocks the writer's writes allocate as appending does).
//!
//! Recovery takes a tail of zeroes after the last record, no longer than
//! [`ZEROES_AHEAD_MAX`], for this space (a record's length is never zero)
//! and cuts it, telling it from a torn write by whether anything but zeroes
//! follows (`recovery.rs`). The writer cuts it when it seals a segment and
//! when it stops, so only the active segment of a store that was not closed
//! has one. While the helper zeroes a range, the writer's fdatasync flushes
//! the zeroes written so far too (an fdatasync covers the whole file).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::faults::Faults;

/// Zeroes are not written ahead before this much was written to the
/// segment since it was opened (a short-lived process appending a few
/// events never pays for them). Each of these sizes is scaled down for a
/// segment too small for it (`Scale`).
const START_AFTER_BYTES: u64 = 64 * 1024;
/// A new range is started once fewer than this many bytes are zeroed
/// ahead of the log's end.
const LOW_BYTES: u64 = 2 * 1024 * 1024;
/// Bytes zeroed per range.
const RANGE_BYTES: u64 = 1024 * 1024;
/// When the writer has caught up with the zeroes, the next range starts
/// this far past the log's end.
const GAP_BYTES: u64 = 512 * 1024;
/// Zeroes written per call, each piece then written back before the next.
const WRITE_BYTES: usize = 128 * 1024;

/// The most zeroes there can be past the log's end: a range starts below
/// `LOW_BYTES` (or at `GAP_BYTES`) past it. Recovery cuts a tail of zeroes
/// this long without a report (a line at info level); a longer one is
/// judged like a torn write or rot.
pub(crate) const ZEROES_AHEAD_MAX: u64 = LOW_BYTES + RANGE_BYTES;
const _: () = assert!(GAP_BYTES <= LOW_BYTES);

/// The zeroes ahead of one segment file.
pub(crate) struct Ahead {
    /// The segment file, opened again for the helper: its own open file
    /// description, so an error of the writeback (which an fdatasync
    /// reports once per description) still reaches the writer's fdatasync
    /// when the helper's fdatasync meets it first.
    file: Arc<File>,
    path: PathBuf,
    /// The fault injection of tests: the helper stops writing with the
    /// writer (a simulated crash) and meets the same full disk.
    faults: Option<Arc<Faults>>,
    /// How far zeroes may go: the segment's size, where the writer rolls.
    limit: u64,
    /// The scale of this segment's ranges (a fraction of a small segment,
    /// so tests with tiny segments exercise them).
    scale: Scale,
    /// Where the log ended when this segment was opened.
    opened_at: u64,
    /// Every byte below this is written (records or zeroes), as far as the
    /// writer knows.
    written: u64,
    /// The range being zeroed, which the writer must not write into until
    /// the helper is done.
    job: Option<Job>,
    /// A range failed (a full disk, say): no more for this segment. The
    /// log is written as without them.
    off: bool,
}

struct Job {
    start: u64,
    end: u64,
    helper: JoinHandle<io::Result<()>>,
    /// Whether the file was cut while the range was zeroed: then what lies
    /// below its start is not known to be written.
    cut: bool,
}

#[derive(Clone, Copy)]
struct Scale {
    start_after: u64,
    low: u64,
    range: u64,
    gap: u64,
}

impl Scale {
    fn of(segment_bytes: u64) -> Scale {
        let part = |bytes: u64, div: u64| bytes.min(segment_bytes / div).max(1);
        Scale {
            start_after: part(START_AFTER_BYTES, 16),
            low: part(LOW_BYTES, 8),
            range: part(RANGE_BYTES, 4),
            gap: part(GAP_BYTES, 16),
        }
    }
}

impl Ahead {
    /// For the segment file at `path`, whose log ends at `end` (nothing
    /// after it), of `segment_bytes`. `None` if it cannot be opened again.
    pub(crate) fn new(path: &Path, end: u64, segment_bytes: u64, faults: Option<Arc<Faults>>) -> Option<Ahead> {
        let file = OpenOptions::new().write(true).open(path).ok()?;
        Some(Ahead {
            file: Arc::new(file),
            path: path.to_owned(),
            faults,
            limit: segment_bytes,
            scale: Scale::of(segment_bytes),
            opened_at: end,
            written: end,
            job: None,
            off: false,
        })
    }

    /// Before the writer writes below `end`: waits for the helper if its
    /// range begins there.
    pub(crate) fn before_write(&mut self, end: u64) {
        if self.job.as_ref().is_some_and(|job| job.start < end) {
            self.join();
        }
    }

    /// After the writer wrote below `end`.
    pub(crate) fn wrote(&mut self, end: u64) {
        self.written = self.written.max(end);
    }

    /// After the file was cut back to `len` (a failed group): the zeroes
    /// past it are gone. A range being zeroed still holds the writer off.
    pub(crate) fn cut(&mut self, len: u64) {
        self.written = len;
        if let Some(job) = &mut self.job {
            job.cut = true;
        }
    }

    /// After a group, with the log ending at `end`: starts zeroing the next
    /// range when few zeroes are left ahead of it and none are being
    /// written.
    pub(crate) fn top_up(&mut self, end: u64) {
        if self.job.as_ref().is_some_and(|job| job.helper.is_finished()) {
            self.join();
        }
        let scale = self.scale;
        if self.off
            || self.job.is_some()
            || end.saturating_sub(self.opened_at) < scale.start_after
            || self.written >= end.saturating_add(scale.low)
        {
            return;
        }
        // Right after the zeroes when they are well ahead; else a gap past
        // the end, so the next groups do not wait for this range.
        let start = if self.written >= end + scale.gap / 2 { self.written } else { end + scale.gap };
        let stop = start.saturating_add(scale.range).min(self.limit);
        if stop <= start {
            return;
        }
        let (file, faults) = (self.file.clone(), self.faults.clone());
        let spawned = std::thread::Builder::new()
            .name("cairn-zeroes".to_owned())
            .spawn(move || zero(&file, start, stop, faults.as_deref()));
        match spawned {
            Ok(helper) => self.job = Some(Job { start, end: stop, helper, cut: false }),
            Err(_) => self.off = true,
        }
    }

    /// Waits for the range being zeroed, if any.
    pub(crate) fn join(&mut self) {
        let Some(job) = self.job.take() else { return };
        match job.helper.join() {
            Ok(Ok(())) if !job.cut => self.written = self.written.max(job.end),
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let path = self.path.display();
                tracing::warn!("writing zeroes ahead of the log in {path} failed ({error}); it goes on without them");
                self.off = true;
            }
            Err(_) => {
                tracing::error!("the thread writing zeroes ahead of the log panicked");
                self.off = true;
            }
        }
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        // No helper outlives the writer: the next open (a test reopening
        // the same directory in this process) must not find one writing.
        self.join();
    }
}

/// Writes zeroes over `start..stop` of `file` and fdatasyncs them.
fn zero(file: &File, start: u64, stop: u64, faults: Option<&Faults>) -> io::Result<()> {
    let zeroes = vec![0u8; WRITE_BYTES];
    let mut at = start;
    while at < stop {
        if let Some(refused) = faults.and_then(Faults::refuses_writes) {
            return Err(refused);
        }
        let n = usize::try_from(stop - at).unwrap_or(usize::MAX).min(WRITE_BYTES);
        file.write_all_at(&zeroes[..n], at)?;
        write_back(file, at, n as u64)?;
        at += n as u64;
    }
    file.sync_data()
}

/// Writes `len` bytes at `offset` of `file` to the disk and waits for them
/// (Linux's `sync_file_range`), so that few dirty zeroes are ever left for
/// the writer's fdatasync, which flushes the whole file, to wait for
/// (measured: one appender's p99.9 0.45-0.64 ms this way against 2.0-2.4 ms
/// with 1 MiB written at once; the final fdatasync then writes the
/// metadata). An error (of the writeback) fails the range: this open of the
/// file would not report it again.
fn write_back(file: &File, offset: u64, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return Ok(()) };
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: a plain system call on a file descriptor `file` owns; it
        // reads and writes no memory of this process.
        #[allow(unsafe_code)]
        let done = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
        if done != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
    Ok(())
}
