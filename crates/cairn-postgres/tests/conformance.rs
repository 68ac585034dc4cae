//! The storage seam's conformance suite against PostgreSQL: a private
//! cluster, a new database per check.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cairn_postgres::{Cluster, Options, Postgres};
use cairn_store::conformance::{self, Backend};
use cairn_store::{BoxFuture, Storage};

struct Database {
    url: String,
}

impl Backend for Database {
    fn open(&mut self) -> BoxFuture<'_, Arc<dyn Storage>> {
        Box::pin(async move {
            let storage = Postgres::open(&self.url, Options::default()).await.unwrap();
            Arc::new(storage) as Arc<dyn Storage>
        })
    }
}

#[test]
fn postgres_keeps_the_storage_contract() {
    // The contract, not the disk, is under test here: fsync off is faster.
    let cluster = Cluster::start(&[("fsync", "off")]).unwrap();
    let next = AtomicUsize::new(0);
    let mut fresh = || -> Box<dyn Backend> {
        let name = format!("conformance_{}", next.fetch_add(1, Ordering::Relaxed));
        cluster.psql(&format!("create database {name}")).unwrap();
        Box::new(Database { url: cluster.url(&name) })
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(conformance::run_all(&mut fresh));
}
