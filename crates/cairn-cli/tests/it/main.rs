//! Black-box tests of the `cairn` binary on a local store.
//!
//! Each test gets a fresh store directory and runs the real binary
//! (`CARGO_BIN_EXE_cairn`), feeding stdin and checking exit codes, stdout
//! (NDJSON, parsed) and stderr. Long-running commands (`cat --follow`) are
//! read line by line with a deadline and killed by a guard.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod auth;
mod backup;
mod cli;
mod compaction;
mod console;
mod errors;
mod hostile;
mod http;
mod hub;
mod keyed;
mod lifecycle;
mod mounts;
mod postgres;
mod procs;
mod redis_clients;
mod resp;
mod satellite;
mod security;
mod serve;
mod soak;
mod xs;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A store directory and a way to run `cairn` on it.
pub struct Cairn {
    _dir: tempfile::TempDir,
    store: PathBuf,
}

impl Default for Cairn {
    fn default() -> Cairn {
        Cairn::new()
    }
}

impl Cairn {
    /// A fresh, empty store.
    pub fn new() -> Cairn {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        Cairn { _dir: dir, store }
    }

    /// The store directory.
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// A `cairn` command on this store.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
        command.arg("--store").arg(&self.store).args(args).env_remove("CAIRN_STORE").env("CAIRN_SYNC", "none");
        // A server's Redis port: a free one, never the machine's 6480.
        command.env("CAIRN_RESP", "127.0.0.1:0");
        command
    }

    /// Runs with `stdin`; returns the whole output.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child =
            self.command(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs and expects success; returns stdout parsed as NDJSON.
    pub fn ok(&self, args: &[&str], stdin: &[u8]) -> Vec<serde_json::Value> {
        let output = self.run(args, stdin);
        assert!(output.status.success(), "cairn {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}")))
            .collect()
    }

    /// Runs and expects failure with `code`; returns stderr.
    pub fn fails(&self, args: &[&str], stdin: &[u8], code: i32) -> String {
        let output = self.run(args, stdin);
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(code), "cairn {args:?}: {stderr}");
        stderr
    }
}

/// Kills a child process when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
