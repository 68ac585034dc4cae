//! `Txn`: a fjall write batch whose own writes are visible to reads made
//! through it, so one group of records can be applied (and can see itself)
//! before a single atomic commit.

use std::collections::HashMap;

use fjall::{Keyspace, OwnedWriteBatch};

use crate::error::Result;
use crate::index::Index;

/// Which keyspace an overlay entry belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Ks {
    Ids,
    Topics,
    Heads,
    Cas,
    Expiry,
    Idem,
    Consumers,
    Meta,
}

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

    fn keyspace(&self, ks: Ks) -> &'a Keyspace {
        let index = self.index;
        match ks {
            Ks::Ids => &index.ids,
            Ks::Topics => &index.topics,
            Ks::Heads => &index.heads,
            Ks::Cas => &index.cas,
            Ks::Expiry => &index.expiry,
            Ks::Idem => &index.idem,
            Ks::Consumers => &index.consumers,
            Ks::Meta => &index.meta,
        }
    }

    pub(crate) fn get(&self, ks: Ks, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(value) = self.overlay.get(&(ks, key.to_vec())) {
            return Ok(value.clone());
        }
        Ok(self.keyspace(ks).get(key)?.map(|slice| slice.to_vec()))
    }

    pub(crate) fn insert(&mut self, ks: Ks, key: Vec<u8>, value: Vec<u8>) {
        let keyspace = self.keyspace(ks);
        self.n_writes += 1;
        if self.track {
            self.batch.insert(keyspace, key.clone(), value.clone());
            self.overlay.insert((ks, key), Some(value));
        } else {
            self.batch.insert(keyspace, key, value);
        }
    }

    pub(crate) fn remove(&mut self, ks: Ks, key: Vec<u8>) {
        let keyspace = self.keyspace(ks);
        self.n_writes += 1;
        if self.track {
            self.batch.remove(keyspace, key.clone());
            self.overlay.insert((ks, key), None);
        } else {
            self.batch.remove(keyspace, key);
        }
    }

    /// Whether any live key starts with `prefix`.
    pub(crate) fn has_prefix(&self, ks: Ks, prefix: &[u8]) -> Result<bool> {
        let in_overlay = self
            .overlay
            .iter()
            .any(|((entry_ks, key), value)| *entry_ks == ks && value.is_some() && key.starts_with(prefix));
        if in_overlay {
            return Ok(true);
        }
        for guard in self.keyspace(ks).prefix(prefix) {
            let key = guard.key()?;
            if !matches!(self.overlay.get(&(ks, key.to_vec())), Some(None)) {
                return Ok(true);
            }
        }
        Ok(false)
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
