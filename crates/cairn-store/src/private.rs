//! A store's files are its owner's alone, whatever the umask: directories
//! are created (and an existing store directory tightened) to mode 0700,
//! files to 0600. The directories' mode is what keeps other local users
//! out of files cairn does not create itself (the index's, fjall's).

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Mode of every directory of a store.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of every file cairn creates in a store.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Creates `path` and its missing parents with mode 0700.
pub(crate) fn create_dir(path: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(path)
}

/// Creates `path` (0700) or, when it exists with access for others,
/// takes that access away (a store made by an older version, or by hand).
pub(crate) fn ensure_private_dir(path: &Path) -> std::io::Result<()> {
    create_dir(path)?;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::info!("{}: mode {:o} lets others in; setting it to {DIR_MODE:o}", path.display(), mode & 0o777);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Writes `dir/name` whole or not at all: a file beside it (0600),
/// fdatasynced, then a rename. The caller fsyncs `dir` when the name must
/// be durable.
pub(crate) fn place_file(dir: &Path, name: &str, bytes: &[u8]) -> crate::Result<()> {
    use std::io::Write as _;
    let io = |what: &str| crate::StoreError::io(format!("{what} {}", dir.join(name).display()));
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = file_options().create(true).write(true).truncate(true).open(&tmp).map_err(io("create"))?;
    file.write_all(bytes).map_err(io("write"))?;
    file.sync_data().map_err(io("fdatasync"))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(io("place"))
}

/// Open options for a file only its owner may read and write.
pub(crate) fn file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}
