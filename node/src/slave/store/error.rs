//! Why a store operation failed: [`StoreError`], with the data directory or
//! the store file named where one is involved.

use std::path::{Path, PathBuf};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Another process (or another `Store` in this one) has the directory open.
    #[error("data directory {0} is already in use by another slave process")]
    InUse(PathBuf),
    /// A file of the store could not be read, written or synced.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "fsync", …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The data directory was created by a slave with another id.
    #[error("data directory {dir} belongs to slave {found:?}, not to slave {expected:?}")]
    WrongOwner {
        /// The data directory.
        dir: PathBuf,
        /// Id recorded in the directory.
        found: String,
        /// Id this process was started with.
        expected: String,
    },
    /// The store file holds something no writer of it wrote.
    #[error("corrupt slave store: {0}")]
    Corrupt(String),
    /// The store of an older DSM (`slave.redb`) could not be imported.
    #[error("cannot import the older slave store {}: {reason}", path.display())]
    Import {
        /// The redb database.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A put whose key and value do not fit in one frame of the store file.
    #[error(
        "put of {bytes} bytes (key, value and header) is larger than the store's limit of {max} bytes"
    )]
    TooLarge {
        /// The put's frame size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// A batch could not be made durable; none of its commands was acknowledged.
    #[error("slave store write failed: {0}")]
    Write(String),
    /// The store has been closed.
    #[error("slave store is closed")]
    Closed,
}

/// Maps an I/O error on `path` to [`StoreError::Io`].
pub(super) fn io_err(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}
