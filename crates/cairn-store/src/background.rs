//! The store's background threads run at a lower CPU priority than the
//! writer and the callers: the indexer, fjall's flush and merge workers,
//! the helper that zeroes the log ahead of the writer, and the retention
//! sweeper (which also compacts).
//!
//! The writer sleeps in each fdatasync and needs a core the moment it
//! returns, to reply and take the next group. On a machine with as many
//! busy threads as cores it used to wait on the run queue for a scheduler
//! slice, about 1 ms, behind the indexer or a fjall worker: measured with
//! the writer's own run-queue time (`/proc/thread-self/schedstat`) around
//! its write + fdatasync, 64 appending tasks on two cores saw 65-90 such
//! waits a run, each 0.7-1.1 ms of a cycle that takes 0.15 ms without one.
//! At a lower priority the background threads yield to the writer when it
//! wakes, and still run whenever a core is free.
//!
//! What they fall behind on stays bounded: the writer waits when the index
//! lags `INDEX_LAG_BYTES_MAX` behind the log, and fjall halts its writes
//! when its flushes fall behind, so a starved background thread slows
//! appends down, it does not let work pile up.
//!
//! Linux keeps a nice value per thread (`nice` changes the calling thread
//! only). Threads of this crate lower themselves when they start; fjall's
//! workers are lowered by the indexer once they run ([`Starting`]).
//! Elsewhere a nice value is per process, so this does nothing there.

/// How much lower: a nice value this much higher than the thread that
/// opened the store (the usual increment of `nice(1)`).
pub(crate) const NICE: i32 = 10;

/// Lowers the calling thread's CPU priority by [`NICE`] (Linux only).
pub(crate) fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a plain system call on the calling thread; it reads and
        // writes no memory of this process. Its result (the new nice value,
        // or -1 with errno set) is not needed: a thread left at its
        // priority only competes as it did before.
        #[allow(unsafe_code)]
        unsafe {
            libc::nice(NICE);
        }
    }
}

/// The threads a store's open is about to start (fjall's workers), to be
/// lowered once they run: [`Starting::before`] just before the open, then
/// [`Starting::lower`] on a background thread (the indexer's, as it
/// starts).
///
/// They are the threads that appear during the open and take the expected
/// name. A thread takes its name a moment after it starts: the second of
/// fjall's workers was named 50-130 µs after its open returned, measured,
/// too long to wait for on every open (the command line's included), so a
/// background thread waits for them instead; the open itself only lists
/// the process's threads once (6-16 µs). A thread of that name that a
/// concurrent open elsewhere in the process starts meanwhile may be lowered
/// the same way, which is what that open does too.
///
/// Opening on a thread lowered first would need none of this (a new thread
/// starts with its creator's priority), but measured it made each open
/// slower, partly because that thread's allocations start a second malloc
/// arena: `cairn head` on a store of 1M events, 40 alternating runs, took
/// 8.9 ms that way and 8.3 ms with no lowering (8.2-8.6 ms this way).
pub(crate) struct Starting {
    #[cfg(target_os = "linux")]
    before: Vec<libc::id_t>,
    #[cfg(target_os = "linux")]
    target: i32,
}

impl Starting {
    /// Called on the thread about to open, just before.
    pub(crate) fn before() -> Starting {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: a plain system call about the calling thread; it
            // reads and writes no memory of this process.
            #[allow(unsafe_code)]
            let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            Starting { before: threads(), target: (own + NICE).min(19) }
        }
        #[cfg(not(target_os = "linux"))]
        Starting {}
    }

    /// Lowers the `count` threads named `name` started since
    /// [`Starting::before`] by [`NICE`] below the thread that opened,
    /// waiting for them to be named for at most [`NAMING_WAIT`].
    pub(crate) fn lower(self, name: &str, count: usize) {
        #[cfg(target_os = "linux")]
        {
            let deadline = std::time::Instant::now() + NAMING_WAIT;
            let mut lowered = Vec::new();
            loop {
                for tid in threads() {
                    if self.before.contains(&tid) || lowered.contains(&tid) {
                        continue;
                    }
                    let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
                    if comm.trim_end() == name {
                        // SAFETY: a plain system call about a thread of
                        // this process; it reads and writes no memory of
                        // it. A failure (the thread ended, say) leaves a
                        // thread at its priority, which only competes as
                        // before.
                        #[allow(unsafe_code)]
                        unsafe {
                            libc::setpriority(libc::PRIO_PROCESS, tid, self.target);
                        }
                        lowered.push(tid);
                    }
                }
                if lowered.len() >= count || std::time::Instant::now() >= deadline {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (name, count);
    }
}

/// How long [`Starting::lower`] looks for the threads it expects.
#[cfg(target_os = "linux")]
const NAMING_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// The ids of this process's threads (none if `/proc` cannot be read).
#[cfg(target_os = "linux")]
fn threads() -> Vec<libc::id_t> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks.filter_map(|task| task.ok()?.file_name().to_str()?.parse().ok()).collect()
}
