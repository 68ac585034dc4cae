//! Engine tests: the store against its specification, through its public API.
//!
//! One binary (see the style guide): `conformance` runs the storage seam's
//! conformance suite against the engine, `basics` pins the engine's own
//! behaviour example by example, `compact` rewrites sealed segments under
//! readers and rebuilds, `model` checks random operation sequences against an in-memory
//! model, `recovery` damages the log's tail byte by byte, `subscribe` checks
//! the history/live switch under concurrent writers, and `crash` kills a
//! child process that appends and checks every acknowledged event survives,
//! and `simulation` crashes and cuts power to a store under a seeded random
//! workload through the fault layer (`cairn_store::faults`).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod basics;
mod compact;
mod conformance;
mod crash;
mod model;
mod parsers;
mod recovery;
mod simulation;
mod subscribe;
mod tidy;

use cairn_store::{Event, Options, Query, Store, SyncMode, Topic};

/// Options for tests: small segments so rolling is exercised.
pub fn test_options() -> Options {
    Options { segment_bytes: 64 * 1024, sync: SyncMode::None, ..Options::default() }
}

/// Opens a store in `dir` with [`test_options`].
pub fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, test_options()).expect("open store")
}

/// A topic that must be valid.
pub fn topic(name: &str) -> Topic {
    Topic::new(name).expect("valid topic")
}

/// The events `query` reads, owned (`Store::read`), checked to be exactly
/// what a cursor reading the same query sees in place.
pub fn read_both(store: &Store, query: &Query) -> Vec<Event> {
    let owned: Vec<Event> = store.read(query).unwrap().map(Result::unwrap).collect();
    let mut cursor = store.cursor(query).unwrap();
    let mut viewed = Vec::new();
    while let Some(event) = cursor.next().unwrap() {
        viewed.push(event.to_event().unwrap());
    }
    assert_eq!(viewed, owned, "a cursor and a read of {query:?} disagree");
    owned
}
