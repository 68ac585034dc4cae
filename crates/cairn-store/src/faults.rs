//! Fault injection for tests: a store opened with [`Options::faults`] sends
//! its log writes through [`LogFile`], which can fail an fdatasync with EIO,
//! refuse writes with ENOSPC, tear a write, or stop writing altogether (a
//! crash), and which remembers how much of each log file was fdatasynced;
//! [`Faults::flip_bit`] rots data at rest.
//! After a crash, [`Faults::lose_power`] cuts every log file back to what
//! was synced (keeping a chosen part of the rest: a torn write), or, in a
//! file with zeroes written ahead (`log/ahead.rs`, whose helper writes
//! through its own open of the file but stops with a crash or a full disk
//! here), turns the unsynced part back into zeroes, as a power loss would.
//! Not a mock: the engine runs unchanged over real files.
//!
//! [`Options::faults`]: crate::Options::faults

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::log::ahead::Ahead;

/// What to break, shared between a test and the store it opened.
#[derive(Default)]
pub struct Faults {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// fdatasyncs still to fail with EIO.
    failing_syncs: u32,
    /// Writes fail with ENOSPC while set.
    no_space: bool,
    /// The next write persists only this many bytes, then the process
    /// "dies" (everything after fails).
    tear_next_write_at: Option<usize>,
    /// Nothing reaches the files any more.
    crashed: bool,
    /// Length and fdatasynced length of every log file written.
    files: HashMap<PathBuf, Lengths>,
    /// The next open loses the content references.
    lost_refs: bool,
}

#[derive(Clone, Copy, Default)]
struct Lengths {
    written: u64,
    synced: u64,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Faults")
    }
}

impl Faults {
    /// The next `n` fdatasyncs of the log fail with EIO.
    pub fn fail_next_syncs(&self, n: u32) {
        self.lock().failing_syncs = n;
    }

    /// While `on`, log writes fail with ENOSPC (and write nothing).
    pub fn set_no_space(&self, on: bool) {
        self.lock().no_space = on;
    }

    /// The next log write persists its first `at` bytes, then the process
    /// dies (as [`Faults::crash`]).
    pub fn tear_next_write_at(&self, at: usize) {
        self.lock().tear_next_write_at = Some(at);
    }

    /// The process dies: from now on nothing reaches the log files.
    pub fn crash(&self) {
        self.lock().crashed = true;
    }

    /// After a crash, what a power loss leaves: each log file is cut back to
    /// its fdatasynced length plus `keep(unsynced)` bytes of what followed
    /// (at most all of it); in a file with zeroes written ahead of the log,
    /// those bytes turn back into zeroes instead. Returns the bytes lost.
    pub fn lose_power(&self, mut keep: impl FnMut(u64) -> u64) -> io::Result<u64> {
        let state = self.lock();
        assert!(state.crashed, "lose_power needs a crashed store (call crash() and drop the store first)");
        let mut cut = 0;
        for (path, lengths) in &state.files {
            // A segment compaction replaced (its removal was fsynced) stays gone.
            let len = match std::fs::metadata(path) {
                Ok(meta) => meta.len(),
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            if len > lengths.written {
                // Zeroes written ahead of the log (`log/ahead.rs`): the file
                // keeps its length, and what the writer wrote there without
                // syncing reads as those zeroes again, past what `keep` keeps.
                let unsynced = lengths.written.saturating_sub(lengths.synced);
                let kept = lengths.synced + keep(unsynced).min(unsynced);
                if kept < lengths.written {
                    use std::os::unix::fs::FileExt as _;
                    let zeroes = vec![0u8; usize::try_from(lengths.written - kept).expect("fits")];
                    std::fs::OpenOptions::new().write(true).open(path)?.write_all_at(&zeroes, kept)?;
                    cut += lengths.written - kept;
                }
                continue;
            }
            let unsynced = len.saturating_sub(lengths.synced);
            let kept = lengths.synced + keep(unsynced).min(unsynced);
            if kept < len {
                std::fs::OpenOptions::new().write(true).open(path)?.set_len(kept)?;
                cut += len - kept;
            }
        }
        Ok(cut)
    }

    /// The next open with these faults finds the content references
    /// (`index/refs.rs`) empty, as after a crash that lost all of them
    /// (their keyspace flushes apart from the rest of the index): they are
    /// rebuilt from the log behind the open.
    pub fn lose_content_refs(&self) {
        self.lock().lost_refs = true;
    }

    pub(crate) fn take_lost_refs(&self) -> bool {
        std::mem::take(&mut self.lock().lost_refs)
    }

    /// Bit rot at rest: flips one bit of the byte at `offset` of `path` (a
    /// segment, a content file), as a failing disk would.
    pub fn flip_bit(path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        let mut bytes = std::fs::read(path)?;
        let at = usize::try_from(offset).ok().filter(|at| *at < bytes.len()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("offset {offset} is past the end of {}", path.display()),
            )
        })?;
        bytes[at] ^= 1 << (bit % 8);
        std::fs::write(path, bytes)
    }

    /// The error a write meets now (a simulated crash, a full disk), if
    /// any: for writers beside the log's own (`log/ahead.rs`).
    pub(crate) fn refuses_writes(&self) -> Option<io::Error> {
        let state = self.lock();
        if state.crashed {
            Some(crashed())
        } else if state.no_space {
            Some(io::Error::from_raw_os_error(libc::ENOSPC))
        } else {
            None
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A log segment file as the writer sees it: a plain file, or one whose
/// writes go through [`Faults`].
pub(crate) struct LogFile {
    file: File,
    path: PathBuf,
    faults: Option<std::sync::Arc<Faults>>,
    /// Zeroes written ahead of the log's end, if the writer asked for them.
    ahead: Option<Ahead>,
}

fn crashed() -> io::Error {
    io::Error::other("fault injection: the process has crashed")
}

impl LogFile {
    /// Wraps `file` at `path`; everything in it now counts as synced.
    pub(crate) fn new(file: File, path: &Path, faults: Option<std::sync::Arc<Faults>>) -> io::Result<LogFile> {
        if let Some(faults) = &faults {
            let len = file.metadata()?.len();
            faults.lock().files.insert(path.to_owned(), Lengths { written: len, synced: len });
        }
        Ok(LogFile { file, path: path.to_owned(), faults, ahead: None })
    }

    /// Writes zeroes ahead of the log's end, which is at `end`, in a segment
    /// of `segment_bytes` (`log/ahead.rs`).
    pub(crate) fn zero_ahead(&mut self, end: u64, segment_bytes: u64) {
        self.ahead = Ahead::new(&self.path, end, segment_bytes, self.faults.clone());
    }

    /// After a group, with the log ending at `end`: more zeroes ahead if
    /// few are left.
    pub(crate) fn top_up(&mut self, end: u64) {
        if let Some(ahead) = &mut self.ahead {
            ahead.top_up(end);
        }
    }

    /// When the writer leaves the file (a roll, or the store closing) with
    /// the log ending at `end`: waits for zeroes being written and cuts
    /// those past `end`, durably, so a sealed or closed segment ends with
    /// its last record.
    pub(crate) fn seal(&mut self, end: u64) -> io::Result<()> {
        let Some(ahead) = &mut self.ahead else { return Ok(()) };
        ahead.join();
        if self.file.metadata()?.len() > end {
            self.cut(end)?;
            self.sync_data()?;
        }
        Ok(())
    }

    /// Whether nothing may be written any more (a simulated crash).
    pub(crate) fn crashed(&self) -> bool {
        self.faults.as_ref().is_some_and(|faults| faults.lock().crashed)
    }

    /// Writes `bytes` at `offset`: the writer keeps the log's end itself
    /// (and writes a streamed record's header after its body, see
    /// `codec::encode_batch_streamed`), so the file is not opened to append.
    pub(crate) fn write_all_at(&mut self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let end = offset + bytes.len() as u64;
        if let Some(ahead) = &mut self.ahead {
            ahead.before_write(end);
        }
        self.write_through(bytes, offset)?;
        if let Some(ahead) = &mut self.ahead {
            ahead.wrote(end);
        }
        Ok(())
    }

    fn write_through(&mut self, bytes: &[u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        let Some(faults) = &self.faults else { return self.file.write_all_at(bytes, offset) };
        let mut state = faults.lock();
        if state.crashed {
            return Err(crashed());
        }
        if state.no_space {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let (bytes, tear) = match state.tear_next_write_at.take() {
            Some(at) => (&bytes[..at.min(bytes.len())], true),
            None => (bytes, false),
        };
        self.file.write_all_at(bytes, offset)?;
        let lengths = state.files.entry(self.path.clone()).or_default();
        lengths.written = lengths.written.max(offset + bytes.len() as u64);
        if tear {
            state.crashed = true;
            return Err(crashed());
        }
        Ok(())
    }

    /// Asks the kernel to start writing `len` bytes at `offset` to the disk
    /// (Linux's `sync_file_range` with `SYNC_FILE_RANGE_WRITE`), so that a
    /// later fdatasync finds less to wait for. Durability still comes from
    /// [`LogFile::sync_data`] alone; elsewhere, and under fault injection,
    /// this does nothing.
    pub(crate) fn start_writeback(&self, offset: u64, len: u64) {
        if self.faults.is_some() {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd as _;
            let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
            // SAFETY: a plain system call on a file descriptor this value
            // owns; it reads and writes no memory of this process.
            #[allow(unsafe_code)]
            let _ = unsafe { libc::sync_file_range(self.file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
        }
    }

    pub(crate) fn sync_data(&self) -> io::Result<()> {
        let Some(faults) = &self.faults else { return self.file.sync_data() };
        let mut state = faults.lock();
        if state.crashed {
            return Err(crashed());
        }
        if state.failing_syncs > 0 {
            state.failing_syncs -= 1;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.sync_data()?;
        let lengths = state.files.entry(self.path.clone()).or_default();
        lengths.synced = lengths.written;
        Ok(())
    }

    /// Cuts the file back to `len` (after a failed write).
    pub(crate) fn cut(&mut self, len: u64) -> io::Result<()> {
        if let Some(faults) = &self.faults {
            let mut state = faults.lock();
            if state.crashed {
                return Err(crashed());
            }
            let lengths = state.files.entry(self.path.clone()).or_default();
            lengths.written = len;
            lengths.synced = lengths.synced.min(len);
        }
        self.file.set_len(len)?;
        if let Some(ahead) = &mut self.ahead {
            ahead.cut(len);
        }
        Ok(())
    }
}

/// For tests that kill a process in the middle of a compaction: with
/// `CAIRN_TEST_COMPACT_ABORT=<step>` in its environment, a process aborts
/// (leaving its files as a kill -9 would) when a compaction reaches `step`
/// (`written`, `renamed`, `logged`, `indexed`, `flushed`, `removed`).
pub(crate) fn compaction_step(step: &str) {
    if std::env::var_os("CAIRN_TEST_COMPACT_ABORT").is_some_and(|wanted| wanted == step) {
        std::process::abort();
    }
}
