//! `Txn`: a fjall write batch whose own writes are visible to reads made
//! through it, so one group of records can be applied (and can see itself)
//! before a single atomic commit.

use std::collections::HashMap;

use fjall::OwnedWriteBatch;

use crate::error::Result;
pub(crate) use crate::index::Ks;
use crate::index::{Index, key};

/// Pending writes of one group.
pub(crate) struct Txn<'a> {
    pub(crate) index: &'a Index,
    batch: OwnedWriteBatch,
    /// This transaction's writes, for reads through it; kept only when
    /// `track` is on, because most groups (plain appends) never read back
    /// what they wrote and the copies cost more than the index writes.
    overlay: HashMap<(Ks, Vec<u8>), Option<Vec<u8>>>,
    track: bool,
    n_writes: usize,
}

impl<'a> Txn<'a> {
    pub(crate) fn new(index: &'a Index, batch: OwnedWriteBatch) -> Txn<'a> {
        Txn { index, batch, overlay: HashMap::new(), track: false, n_writes: 0 }
    }

    /// Makes later writes visible to reads through this transaction. Must be
    /// on before the first write of a group that removes or trims events.
    pub(crate) fn track_writes(&mut self) {
        assert!(self.n_writes == 0 || self.track, "tracking must start before the first write");
        self.track = true;
    }

    pub(crate) fn get(&self, ks: Ks, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(value) = self.overlay.get(&(ks, key.to_vec())) {
            return Ok(value.clone());
        }
        Ok(self.index.get(ks, key)?.map(|slice| slice.to_vec()))
    }

    pub(crate) fn insert(&mut self, ks: Ks, suffix: Vec<u8>, value: Vec<u8>) {
        let keyspace = self.index.keyspace(ks);
        self.n_writes += 1;
        if self.track {
            self.batch.insert(keyspace, key(ks, &suffix), value.clone());
            self.overlay.insert((ks, suffix), Some(value));
        } else {
            self.batch.insert(keyspace, key(ks, &suffix), value);
        }
    }

    pub(crate) fn remove(&mut self, ks: Ks, suffix: Vec<u8>) {
        let keyspace = self.index.keyspace(ks);
        self.n_writes += 1;
        self.batch.remove(keyspace, key(ks, &suffix));
        if self.track {
            self.overlay.insert((ks, suffix), None);
        }
    }

    /// Commits every write atomically (visible to readers at once).
    pub(crate) fn commit(self) -> Result<()> {
        if self.n_writes == 0 {
            return Ok(());
        }
        self.batch.commit()?;
        Ok(())
    }
}
