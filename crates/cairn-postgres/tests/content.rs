//! Content on PostgreSQL beyond the shared conformance suite: payloads a
//! trim drops are collected, content put again afterwards is kept, and a
//! read with content stays near its byte bound however large the events.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cairn_postgres::{Cluster, Options, Postgres};
use cairn_store::limits::READ_CHUNK_CONTENT_BYTES;
use cairn_store::{Batch, Expect, Hash, NewEvent, Pattern, Query, Storage, Topic, Ttl};

#[test]
fn trimmed_content_goes_and_content_put_again_stays() {
    let cluster = Cluster::start(&[("fsync", "off")]).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let storage = Postgres::open(&cluster.url("postgres"), Options::default()).await.unwrap();
        let topic = Topic::new("cell").unwrap();
        let append = |bytes: Vec<u8>| {
            let event = NewEvent::new(topic.clone(), bytes).with_ttl(Ttl::Last { n: 1 });
            storage.submit(Batch::single(event, Expect::Any), false)
        };
        let (first, second) = (vec![1u8; 100_000], vec![2u8; 100_000]);
        append(first.clone()).await.unwrap().await.unwrap();
        append(second.clone()).await.unwrap().await.unwrap();
        // The trim's collection runs after the commit.
        let gone = Hash::of(&first);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while storage.cas_get(gone).await.unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "the trimmed payload was never collected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(storage.cas_get(Hash::of(&second)).await.unwrap(), Some(second.clone()), "the kept one stays");
        // Put on its own now: kept, even by the next collection of it.
        append(first.clone()).await.unwrap().await.unwrap();
        storage.cas_put(second.clone()).await.unwrap();
        append(vec![3u8; 100_000]).await.unwrap().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(storage.cas_get(Hash::of(&second)).await.unwrap(), Some(second), "put on its own, kept");

        // Reads with content: 40 payloads of 1 MB come back in chunks near
        // the bound, all of them.
        let big = Topic::new("big").unwrap();
        for n in 0..40u8 {
            let event = NewEvent::new(big.clone(), vec![n; 1_000_000]);
            storage.submit(Batch::single(event, Expect::Any), false).await.unwrap().await.unwrap();
        }
        let mut reader = storage.read(Query::new(Pattern::Exact(big)), true).await.unwrap();
        let mut seen = 0u8;
        loop {
            let chunk = reader.next(10_000).await.unwrap();
            if chunk.is_empty() {
                break;
            }
            let bytes: usize = chunk.iter().map(|item| item.content.as_ref().unwrap().len()).sum();
            assert!(bytes <= READ_CHUNK_CONTENT_BYTES + 1_000_000, "a chunk of {bytes} bytes");
            for item in chunk {
                assert_eq!(item.content.unwrap()[0], seen);
                seen += 1;
            }
        }
        assert_eq!(seen, 40);
    });
}
