//! cairn-postgres: cairn on PostgreSQL.
//!
//! So far this crate holds [`Cluster`], a private PostgreSQL cluster for
//! tests and benchmarks, and the measurement that chose how the backend
//! keeps a global order readers can trust (`cairn-bench postgres`; see
//! ARCHITECTURE.md). The storage backend itself is built on them next.

mod cluster;

pub use cluster::Cluster;
