//! The command line as a user meets it: one `cairn` process per command, on
//! stores filled by runs of `cairn append --batch` of 100,000 events, next
//! to what starting the process costs alone (`cairn --version`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, ensure};

use crate::measure::{Samples, row};
use crate::scenarios::Bench;

/// Times each command is run (alternating with the others).
const ROUNDS: usize = 9;
/// Events one filling run appends.
const RUN_EVENTS: usize = 100_000;

impl Bench {
    /// `cairn head` and one `cairn append` on stores of each size in `sizes`.
    pub fn cli(&self, sizes: &[usize]) -> Result<()> {
        let cairn = std::env::current_exe()?.with_file_name("cairn");
        ensure!(cairn.exists(), "no {} (cargo build --release -p cairn-cli first)", cairn.display());
        for &events in sizes {
            let path = self.fresh_dir(&format!("cli-{events}"));
            fill_in_runs(&cairn, &path, events)?;
            // Whatever the filling left in the page cache goes to disk now,
            // not during the first timed fdatasync.
            ensure!(Command::new("sync").status()?.success(), "sync failed");
            let (mut start, mut head, mut append) = (Samples::default(), Samples::default(), Samples::default());
            for _ in 0..ROUNDS {
                start.push(time(Command::new(&cairn).arg("--version"), None)?);
                let mut appending = Command::new(&cairn);
                appending.arg("--store").arg(&path).args(["append", "cli.a"]);
                append.push(time(&mut appending, Some(b"x"))?);
                head.push(time(Command::new(&cairn).arg("--store").arg(&path).args(["head", "cli.a"]), None)?);
            }
            let median = |samples: &mut Samples| samples.quantile(0.5);
            let label = |what: &str| format!("cli: {what}, store of {events} events ({ROUNDS} runs)");
            row(&label("start the process (cairn --version)"), &median(&mut start), Some(&mut start), None, None);
            row(&label("cairn head"), &median(&mut head), Some(&mut head), None, None);
            row(&label("cairn append (durable)"), &median(&mut append), Some(&mut append), None, None);
        }
        Ok(())
    }
}

/// Fills `path` with `events` events by runs of `cairn append --batch` of
/// 100,000 each, as a user would (in processes of their own: a store
/// closed in this process could leave fjall's workers compacting here).
fn fill_in_runs(cairn: &Path, path: &Path, events: usize) -> Result<()> {
    let line = format!("{{\"topic\":\"cli.a\",\"content\":\"{}\"}}\n", "x".repeat(100));
    let mut left = events;
    while left > 0 {
        let run = left.min(RUN_EVENTS);
        let mut appending = Command::new(cairn);
        appending.arg("--store").arg(path).args(["append", "--batch"]);
        time(&mut appending, Some(line.repeat(run).as_bytes()))?;
        left -= run;
    }
    Ok(())
}

/// Runs `command` (with `stdin`), checks it succeeded, returns how long it took.
fn time(command: &mut Command, stdin: Option<&[u8]>) -> Result<std::time::Duration> {
    use std::io::Write as _;
    let started = Instant::now();
    let mut child = command
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start cairn")?;
    if let Some(bytes) = stdin {
        child.stdin.take().expect("piped").write_all(bytes)?;
    }
    let status = child.wait()?;
    let took = started.elapsed();
    ensure!(status.success(), "{command:?} failed: {status}");
    Ok(took)
}
