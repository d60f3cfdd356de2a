//! Why a store operation failed: [`StoreError`], with the data directory or
//! the database file named where one is involved.

use std::path::PathBuf;

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
    /// Another process (or another `Store` in this one) has the database open.
    #[error("data directory {0} is already in use by another slave process")]
    InUse(PathBuf),
    /// The database file could not be opened.
    #[error("cannot open slave database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        source: redb::DatabaseError,
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
    /// A stored record could not be decoded.
    #[error("corrupt slave database: {0}")]
    Corrupt(String),
    /// redb reported an error.
    #[error("slave database error: {0}")]
    Db(#[from] redb::Error),
    /// The write transaction of a batch failed; none of its commands applied.
    #[error("slave database write failed: {0}")]
    Write(String),
    /// The store has been closed.
    #[error("slave store is closed")]
    Closed,
}

/// Converts any of redb's error types into a [`StoreError`].
pub(super) fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}
