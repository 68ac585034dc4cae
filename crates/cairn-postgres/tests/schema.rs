//! The schema cairn keeps its tables in is the one its first session found
//! on the search_path, for every later session of the process too: a
//! change of the role's search_path while cairn runs does not send new
//! connections to other tables. A name with a space, a tab and a quote
//! works.

#![allow(clippy::unwrap_used)]

use cairn_postgres::{Cluster, Options, Postgres};
use cairn_store::{Batch, Expect, NewEvent, Pattern, Query, Storage, Topic};

#[test]
fn sessions_keep_the_schema_the_first_one_found() {
    let cluster = Cluster::start(&[("fsync", "off")]).unwrap();
    // A space, a tab and a quote: each would split or end the value in
    // the connection's options if it were not escaped.
    cluster.psql("create schema \"cairn \"\"app\"\"\tx\"; create schema elsewhere;").unwrap();
    cluster.psql("alter role postgres set search_path = \"cairn \"\"app\"\"\tx\"").unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let storage = Postgres::open(&cluster.url("postgres"), Options::default()).await.unwrap();
        // Sessions opened from now on would start in `elsewhere`.
        cluster.psql("alter role postgres set search_path = elsewhere").unwrap();
        let topic = Topic::new("kept").unwrap();
        let batch = Batch::single(NewEvent::new(topic.clone(), b"one".to_vec()), Expect::Any);
        storage.submit(batch, false).await.unwrap().await.unwrap();
        let mut reader = storage.read(Query::new(Pattern::Exact(topic)), false).await.unwrap();
        assert_eq!(reader.next(10).await.unwrap().len(), 1);
    });
    let tables =
        cluster.psql("select table_schema from information_schema.tables where table_name = 'cairn_events'").unwrap();
    assert_eq!(tables.trim(), "cairn \"app\"\tx", "the tables are in the schema found first, and only there");
}
