//! The store's background threads run at a lower CPU priority than the
//! writer and the callers: the indexer, fjall's flush and merge workers,
//! and the retention sweeper (which also compacts).
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
//! The helper that zeroes the log ahead (`log/ahead.rs`) keeps the
//! writer's priority: it mostly waits for the disk, and the writer waits
//! for it when it rolls a segment or catches up with the zeroes.
//!
//! What they fall behind on stays bounded in size: the writer waits when
//! the index lags `INDEX_LAG_BYTES_MAX` behind the log, and fjall halts its
//! writes when its flushes fall behind, so a starved background thread
//! slows appends down, it does not let work pile up. Not in time: while
//! every core is busy at the normal priority, a lowered thread gets about a
//! tenth of a core against each busy thread, and whoever waits for one
//! waits longer: a read behind the index's barrier, a lookup by hash while
//! the content references catch up after a crash, a backup or verify
//! waiting for a segment's compaction.
//!
//! Linux keeps a nice value per thread (`nice` changes the calling thread
//! only). Threads of this crate lower themselves when they start; fjall's
//! workers are lowered by the indexer once they run ([`Starting`]).
//! Elsewhere a nice value is per process, so this does nothing there.

/// How much lower: a nice value this much higher than the thread that
/// opened the store (the usual increment of `nice(1)`).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
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

/// The threads fjall's open started, to be lowered once they run: listed
/// by [`Starting::before`] and [`Before::after`] around the open, lowered by
/// [`Starting::lower`] on a background thread (the indexer's, as it
/// starts).
///
/// They are the threads that appeared during the open, found by comparing
/// the process's threads before and after it, and they are lowered only if
/// they take the expected name (so a thread another part of the process
/// starts meanwhile is left alone, unless it is another fjall's worker). A
/// thread takes its name a moment after it starts: the second of fjall's
/// workers was named 50-130 µs after its open returned, measured, too long
/// to wait for on every open (the command line's included), so a
/// background thread waits for the names instead; the open itself only
/// lists the process's threads twice (6-16 µs each).
///
/// Opening on a thread lowered first would need none of this (a new thread
/// starts with its creator's priority), but measured it made each open
/// slower, partly because that thread's allocations start a second malloc
/// arena: `cairn head` on a store of 1M events, 40 alternating runs, took
/// 8.9 ms that way and 8.3 ms with no lowering (8.2-8.6 ms this way).
pub(crate) struct Starting {
    #[cfg(target_os = "linux")]
    started: Vec<libc::id_t>,
    /// The name of the thread that opened.
    #[cfg(target_os = "linux")]
    opener: String,
    #[cfg(target_os = "linux")]
    target: i32,
}

/// The process's threads before an open (see [`Starting`]).
pub(crate) struct Before {
    #[cfg(target_os = "linux")]
    threads: Vec<libc::id_t>,
}

impl Starting {
    /// Called on the thread about to open, just before.
    pub(crate) fn before() -> Before {
        #[cfg(target_os = "linux")]
        return Before { threads: threads() };
        #[cfg(not(target_os = "linux"))]
        Before {}
    }

    /// Lowers those of the threads started during the open that are named
    /// `name` by [`NICE`] below the thread that opened, waiting for them to
    /// be named for at most [`NAMING_WAIT`].
    pub(crate) fn lower(self, name: &str) {
        #[cfg(target_os = "linux")]
        {
            let deadline = std::time::Instant::now() + NAMING_WAIT;
            let mut left = self.started;
            while !left.is_empty() {
                left.retain(|&tid| {
                    let Ok(comm) = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")) else {
                        return false;
                    };
                    if comm.trim_end() != name {
                        // Not named yet (a new thread bears its creator's
                        // name until it names itself): looked at again;
                        // else another thread, left alone.
                        return comm == self.opener;
                    }
                    // SAFETY: a plain system call about a thread of this
                    // process; it reads and writes no memory of it. A
                    // failure (the thread ended, say) leaves a thread at its
                    // priority, which only competes as before.
                    #[allow(unsafe_code)]
                    unsafe {
                        libc::setpriority(libc::PRIO_PROCESS, tid, self.target);
                    }
                    false
                });
                if std::time::Instant::now() >= deadline {
                    return;
                }
                if !left.is_empty() {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = name;
    }
}

impl Before {
    /// Called on the same thread right after the open: the threads it
    /// started.
    pub(crate) fn after(self) -> Starting {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: a plain system call about the calling thread; it
            // reads and writes no memory of this process (and cannot fail
            // for it, so -1 is a nice value, not an error).
            #[allow(unsafe_code)]
            let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            // No listing before (no `/proc`): none to look for.
            let started = if self.threads.is_empty() {
                Vec::new()
            } else {
                threads().into_iter().filter(|tid| !self.threads.contains(tid)).collect()
            };
            let opener = std::fs::read_to_string("/proc/thread-self/comm").unwrap_or_default();
            Starting { started, opener, target: (own + NICE).min(19) }
        }
        #[cfg(not(target_os = "linux"))]
        Starting {}
    }
}

/// How long [`Starting::lower`] waits for the threads to be named.
#[cfg(target_os = "linux")]
const NAMING_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// The ids of this process's threads (none if `/proc` cannot be read).
#[cfg(target_os = "linux")]
fn threads() -> Vec<libc::id_t> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks.filter_map(|task| task.ok()?.file_name().to_str()?.parse().ok()).collect()
}
