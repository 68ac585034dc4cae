//! cairn-postgres: cairn on PostgreSQL.
//!
//! [`Postgres`] is the storage seam ([`cairn_store::Storage`]) over a
//! PostgreSQL database, so `cairn serve --postgres URL` gives every front
//! end the same API with the events in PostgreSQL, and several cairn
//! processes can serve one database. How it keeps a global order readers
//! can trust (a sequencer row taken once per commit group) is in
//! ARCHITECTURE.md, with the measurements that chose it
//! (`cairn-bench postgres-order`).
//!
//! [`Cluster`] is a private PostgreSQL cluster for tests and benchmarks.

mod backend;
mod cluster;
mod error;
mod import;
mod reader;
mod rows;
mod schema;
mod tasks;
mod tls;
mod writer;

pub use backend::{Options, Postgres};
pub use cluster::Cluster;
