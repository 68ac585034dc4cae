//! The storage seam's conformance suite (`cairn_store::conformance`)
//! against the local engine: each check on a fresh store directory, in a
//! multi-threaded runtime like a server's.

use std::sync::Arc;

use cairn_store::conformance::{self, Backend};
use cairn_store::{BoxFuture, Storage, Store};

/// A store directory, opened (and reopened) as the seam.
struct LocalBackend {
    dir: tempfile::TempDir,
}

impl Backend for LocalBackend {
    fn open(&mut self) -> BoxFuture<'_, Arc<dyn Storage>> {
        Box::pin(async move {
            let path = self.dir.path().to_path_buf();
            // Opening replays the log's tail: blocking work, off the runtime's threads.
            let store =
                tokio::task::spawn_blocking(move || Store::open(&path, crate::test_options())).await.unwrap().unwrap();
            store.storage()
        })
    }
}

fn check(run: impl for<'a> FnOnce(&'a mut dyn Backend) -> BoxFuture<'a, ()>) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut backend = LocalBackend { dir: tempfile::tempdir().unwrap() };
    runtime.block_on(run(&mut backend));
}

#[test]
fn ids_and_seqs() {
    check(|backend| Box::pin(conformance::ids_and_seqs(backend)));
}

#[test]
fn expectations() {
    check(|backend| Box::pin(conformance::expectations(backend)));
}

#[test]
fn atomic_batches() {
    check(|backend| Box::pin(conformance::atomic_batches(backend)));
}

#[test]
fn idempotency() {
    check(|backend| Box::pin(conformance::idempotency(backend)));
}

#[test]
fn retention() {
    check(|backend| Box::pin(conformance::retention(backend)));
}

#[test]
fn removal() {
    check(|backend| Box::pin(conformance::removal(backend)));
}

#[test]
fn reads() {
    check(|backend| Box::pin(conformance::reads(backend)));
}

#[test]
fn content() {
    check(|backend| Box::pin(conformance::content(backend)));
}

#[test]
fn state_records() {
    check(|backend| Box::pin(conformance::state_records(backend)));
}

#[test]
fn history_then_live() {
    check(|backend| Box::pin(conformance::history_then_live(backend)));
}

#[test]
fn slow_subscriber() {
    check(|backend| Box::pin(conformance::slow_subscriber(backend)));
}

#[test]
fn subscriptions_from_seq_and_pulse() {
    check(|backend| Box::pin(conformance::subscriptions_from_seq_and_pulse(backend)));
}
