//! The content store's files: payloads too large to keep inline, and content
//! put on its own, under `cas/sha256/<2 hex>/<64 hex>`. Every read verifies
//! the hash. Which content is referenced is the index's business (`cas`
//! keyspace); this module only stores, reads and deletes bytes.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Result, StoreError};
use crate::event::Hash;
use crate::log::segment::sync_dir;

/// The content store's directory.
#[derive(Debug)]
pub(crate) struct Cas {
    dir: PathBuf,
    tmp_counter: AtomicU64,
    /// Content of events the writer planned that the index has not seen
    /// yet, with how many: their files are not collected meanwhile. The
    /// index decides a file is unreferenced from the events it covers; a
    /// new event whose content was already there (so the writer did not
    /// put it again) is not among them until indexed, and its file must
    /// outlive that (a `time:` sweep of the last older event holding the
    /// same bytes would otherwise delete it).
    pins: Mutex<HashMap<Hash, u32>>,
}

impl Cas {
    pub(crate) fn open(dir: PathBuf) -> Result<Cas> {
        for sub in ["sha256", "tmp", "deleting"] {
            crate::private::ensure_private_dir(&dir.join(sub)).map_err(StoreError::io("create content store"))?;
        }
        // Leftovers of puts interrupted by a crash: never referenced.
        if let Ok(entries) = fs::read_dir(dir.join("tmp")) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        // Files a delete had set aside when the process died: whether an
        // event came to refer to them is unknown, so they go back.
        let cas = Cas { dir, tmp_counter: AtomicU64::new(0), pins: Mutex::default() };
        if let Ok(entries) = fs::read_dir(cas.dir.join("deleting")) {
            for entry in entries.flatten() {
                if let Some(hash) = entry.file_name().to_str().and_then(|hex| Hash::parse(hex).ok()) {
                    cas.restore(&hash, &entry.path())?;
                }
            }
        }
        Ok(cas)
    }

    pub(crate) fn path(&self, hash: &Hash) -> PathBuf {
        let hex = hash.hex();
        self.dir.join("sha256").join(&hex[..2]).join(hex)
    }

    pub(crate) fn has_file(&self, hash: &Hash) -> bool {
        self.path(hash).is_file()
    }

    /// Stores `bytes` (whose hash is `hash`) durably: written, fsynced,
    /// renamed into place, directory fsynced.
    ///
    /// Content already present is written and synced just the same, to a
    /// file then removed: a put takes as long whether or not someone else
    /// stored those bytes, so its timing does not tell a caller that they
    /// exist (content is shared between users; see SECURITY.md).
    pub(crate) fn put(&self, hash: &Hash, bytes: &[u8]) -> Result<()> {
        let path = self.path(hash);
        let parent = path.parent().expect("content paths have a parent");
        crate::private::create_dir(parent).map_err(StoreError::io("create content directory"))?;
        let tmp = self.dir.join("tmp").join(format!(
            "{}.{}.{}",
            hash.hex(),
            std::process::id(),
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        ));
        let mut file = crate::private::file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(StoreError::io("create content file"))?;
        file.write_all(bytes).map_err(StoreError::io("write content file"))?;
        file.sync_data().map_err(StoreError::io("fdatasync content file"))?;
        drop(file);
        if path.is_file() {
            return fs::remove_file(&tmp).map_err(StoreError::io("remove a copy of present content"));
        }
        fs::rename(&tmp, &path).map_err(StoreError::io("rename content file"))?;
        sync_dir(parent)
    }

    /// Reads and verifies the file for `hash`; `None` if there is none.
    pub(crate) fn read(&self, hash: &Hash) -> Result<Option<Vec<u8>>> {
        let path = self.path(hash);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StoreError::io(format!("read {}", path.display()))(error)),
        };
        verify(hash, &bytes, || format!("content file {}", path.display()))?;
        Ok(Some(bytes))
    }

    /// Keeps the file for `hash` from collection until [`Cas::unpin`]
    /// (taken by the writer before it checks for the file or puts it).
    pub(crate) fn pin(&self, hash: &Hash) {
        *self.pins.lock().expect("pins lock").entry(*hash).or_default() += 1;
    }

    /// An event with content `hash` is in the index now.
    pub(crate) fn unpin(&self, hash: &Hash) {
        let mut pins = self.pins.lock().expect("pins lock");
        if let Some(count) = pins.get_mut(hash) {
            *count -= 1;
            if *count == 0 {
                pins.remove(hash);
            }
        }
    }

    /// Deletes the file for `hash` that the index found unreferenced,
    /// unless an event not yet indexed holds it (see `pins`).
    pub(crate) fn collect(&self, hash: &Hash) -> Result<()> {
        let pins = self.pins.lock().expect("pins lock");
        if pins.contains_key(hash) {
            return Ok(());
        }
        self.delete(hash)
    }

    /// Deletes the file for `hash`, if any.
    pub(crate) fn delete(&self, hash: &Hash) -> Result<()> {
        match fs::remove_file(self.path(hash)) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(StoreError::io("delete content file")(error)),
        }
    }

    /// Moves the file for `hash` aside (for a checked delete); `None` if
    /// there is none.
    pub(crate) fn set_aside(&self, hash: &Hash) -> Result<Option<PathBuf>> {
        let aside = self.dir.join("deleting").join(hash.hex());
        match fs::rename(self.path(hash), &aside) {
            Ok(()) => Ok(Some(aside)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(StoreError::io("move content file aside")(error)),
        }
    }

    /// Puts a file set aside back (unless the content was put again meanwhile).
    pub(crate) fn restore(&self, hash: &Hash, aside: &std::path::Path) -> Result<()> {
        if self.has_file(hash) {
            return self.discard(aside);
        }
        let path = self.path(hash);
        fs::rename(aside, &path).map_err(StoreError::io("restore content file"))?;
        sync_dir(path.parent().expect("content paths have a parent"))
    }

    /// Deletes a file set aside.
    pub(crate) fn discard(&self, aside: &std::path::Path) -> Result<()> {
        fs::remove_file(aside).map_err(StoreError::io("delete content file"))?;
        if let Some(parent) = aside.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    /// Every hash with a file, for `verify`.
    pub(crate) fn list(&self) -> Result<Vec<(Hash, PathBuf)>> {
        let mut out = Vec::new();
        let root = self.dir.join("sha256");
        for shard in fs::read_dir(&root).map_err(StoreError::io("list content store"))?.flatten() {
            for entry in fs::read_dir(shard.path()).map_err(StoreError::io("list content store"))?.flatten() {
                let name = entry.file_name();
                if let Some(hash) = name.to_str().and_then(|hex| Hash::parse(hex).ok()) {
                    out.push((hash, entry.path()));
                }
            }
        }
        Ok(out)
    }
}

/// Checks that `bytes` hash to `hash`; names the place otherwise.
pub(crate) fn verify(hash: &Hash, bytes: &[u8], location: impl FnOnce() -> String) -> Result<()> {
    let actual = Hash::of(bytes);
    if actual != *hash {
        return Err(StoreError::Corrupt {
            location: location(),
            detail: format!("content hashes to {} instead of {}", actual.sri(), hash.sri()),
        });
    }
    Ok(())
}
