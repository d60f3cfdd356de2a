//! The slave's durable store: versioned values and the fenced epoch, kept in
//! one redb database inside the slave's own data directory.
//!
//! Layout (`<data_dir>/slave.redb`):
//! - table `values`: key bytes → `epoch u64 BE | seq u64 BE | value bytes`;
//!   a tombstone (a DELETE) has the top bit of `seq` set and no value bytes
//!   (seqs never reach 2^63); the codec is in `record.rs`;
//! - table `meta`: `"epoch"` → fenced epoch (u64 BE), `"id"` → slave id (UTF-8).
//!
//! All mutations go through one writer thread (`writer.rs`) that drains a
//! channel and applies every command waiting at that moment in a single write
//! transaction, committed with [`redb::Durability::Immediate`] (fsync) before
//! any of them is answered. Reads use their own read transactions and never
//! wait for the writer.
//! Under load the writer holds each batch open for a short
//! [commit window](crate::commit_window): a redb commit costs about ten page
//! writes and an fsync whatever the batch size.
//!
//! Invariants enforced here:
//! - **Version order**: a put never replaces a newer-or-equal version with an
//!   older one unless it is forced (repair); it is then acknowledged with
//!   "not stored". Checked by `tests::older_version_never_replaces_newer`,
//!   `tests::equal_version_is_not_stored` and `tests::force_replaces_newer`.
//! - **Persist, then acknowledge**: a put or an epoch raise is answered only
//!   after the transaction holding it has committed; a commit failure fails
//!   every command of the batch. Checked by
//!   `tests::concurrent_puts_are_all_durable`, `tests::data_survives_reopen`
//!   and `tests::acknowledged_puts_survive_kill_9`.
//! - **Fencing**: the epoch only grows, and [`Store::put_fenced`] compares the
//!   request's epoch with the fenced epoch inside the same transaction that
//!   applies the put, so no put from an older master is applied once a fence
//!   has been acknowledged; [`Store::get_fenced`] reads the fenced epoch and the
//!   value in one read transaction, so no read is served to an older master
//!   from a state that already holds a newer fence. Checked by
//!   `tests::raise_epoch_persists`, `tests::fenced_put_rejects_older_epoch` and
//!   `tests::fenced_get_sees_the_fence_of_its_own_snapshot`.

mod error;
mod record;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::commit_window::{CommitWindow, DEFAULT_COMMIT_WINDOW};
use crate::version::Version;
use error::db_err;
use record::{decode_record, decode_u64};
use writer::Command;

pub use error::StoreError;

/// Key bytes → encoded `(epoch, seq, value)`.
const VALUES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("values");
/// Small named settings: the fenced epoch and the owning slave's id.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_EPOCH: &str = "epoch";
const META_ID: &str = "id";
/// File name of the database inside the data directory.
const DB_FILE: &str = "slave.redb";

/// The fenced epoch recorded in `meta` (0 before the first fence).
fn fenced_epoch(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<u64, StoreError> {
    match meta.get(META_EPOCH).map_err(db_err)? {
        Some(v) => decode_u64(v.value()),
        None => Ok(0),
    }
}

/// What the store holds for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The version held.
    pub version: Version,
    /// The value, or `None` for a tombstone (the key was deleted at `version`).
    pub value: Option<Bytes>,
}

/// How a [`Store`] batches its commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Under load, how long a batch waits for more commands to share its
    /// commit (see [`crate::commit_window`]); zero commits at once.
    pub commit_window: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            commit_window: DEFAULT_COMMIT_WINDOW,
        }
    }
}

/// What [`Store::put_fenced`] did with a put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The value is stored (and durable).
    Stored,
    /// The store already held this version or a newer one, shown here; nothing changed.
    Superseded {
        /// The version the store keeps.
        current: Version,
    },
    /// The request's epoch is older than the fenced epoch; nothing changed.
    StaleEpoch {
        /// The store's fenced epoch.
        fenced: u64,
    },
}

/// Handle to the slave's durable store. Cheap to clone; every clone talks to
/// the same database and writer thread.
///
/// The database file stays open (and locked against other opens) until the
/// last clone is dropped; call [`Store::close`] before reopening a directory
/// in the same process.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    /// Fenced epoch as last committed. Published by the writer after each
    /// commit, so it never runs ahead of what is on disk.
    epoch: Arc<AtomicU64>,
    /// Queue to the writer thread.
    tx: mpsc::Sender<Command>,
    /// The writer thread, taken by [`Store::close`] to join it.
    writer: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
    id: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("id", &self.inner.id)
            .field("epoch", &self.epoch())
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir` for the slave `id`.
    ///
    /// Creates the directory. A directory first opened by another slave id is
    /// refused with [`StoreError::WrongOwner`] naming both ids, so a volume
    /// mounted on the wrong pod never serves another slave's data as its
    /// own. After a crash redb repairs the file here, which may take a while
    /// on a large database: call it from a blocking context.
    pub fn open(dir: impl AsRef<Path>, id: &str) -> Result<Store, StoreError> {
        Store::open_with(dir, id, StoreOptions::default())
    }

    /// [`Store::open`] with explicit [`StoreOptions`].
    pub fn open_with(
        dir: impl AsRef<Path>,
        id: &str,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::InUse(dir)),
            Err(source) => return Err(StoreError::Open { path, source }),
        };

        let txn = db.begin_write().map_err(db_err)?;
        let epoch = {
            // Opening creates both tables, so readers can rely on them.
            txn.open_table(VALUES).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let found = match meta.get(META_ID).map_err(db_err)? {
                Some(v) => Some(String::from_utf8(v.value().to_vec()).map_err(|_| {
                    StoreError::Corrupt("slave id in meta table is not UTF-8".into())
                })?),
                None => None,
            };
            match found {
                Some(found) if found != id => {
                    return Err(StoreError::WrongOwner {
                        dir,
                        found,
                        expected: id.to_string(),
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert(META_ID, id.as_bytes()).map_err(db_err)?;
                }
            }
            fenced_epoch(&meta)?
        };
        txn.commit().map_err(db_err)?;

        let db = Arc::new(db);
        let epoch_cell = Arc::new(AtomicU64::new(epoch));
        let (tx, rx) = mpsc::channel(writer::QUEUE_DEPTH);
        let handle = writer::start(
            db.clone(),
            epoch_cell.clone(),
            rx,
            CommitWindow::new(options.commit_window),
        )?;
        tracing::info!(dir = %dir.display(), id, epoch, "slave store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                epoch: epoch_cell,
                tx,
                writer: Mutex::new(Some(handle)),
                dir,
                id: id.to_string(),
            }),
        })
    }

    /// The slave id this store belongs to.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The fenced epoch: the highest epoch ever passed to
    /// [`raise_epoch`](Store::raise_epoch) (or carried by a fenced put),
    /// as committed to disk.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// Returns the stored value of `key` and its version, if any (a key
    /// deleted here has none).
    ///
    /// Sees every put that has been acknowledged. Blocking (a redb read):
    /// call it from a blocking context for large values.
    pub fn get(&self, key: &[u8]) -> Result<Option<(Bytes, Version)>, StoreError> {
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(VALUES).map_err(db_err)?;
        match table.get(key).map_err(db_err)? {
            Some(v) => {
                let (version, value) = decode_record(key, v.value())?;
                Ok(value.map(|value| (Bytes::copy_from_slice(value), version)))
            }
            None => Ok(None),
        }
    }

    /// Like [`get`](Store::get), checked against the fencing token `epoch` of
    /// the master asking, in the read transaction that reads the value: an
    /// `epoch` below the fenced epoch of that snapshot is refused
    /// (`Err(fenced)`); a higher one is first made the fenced epoch (durably),
    /// since a newer master is legitimate.
    pub async fn get_fenced(
        &self,
        epoch: u64,
        key: &[u8],
    ) -> Result<Result<Option<Held>, u64>, StoreError> {
        loop {
            let txn = self.inner.db.begin_read().map_err(db_err)?;
            let fenced = fenced_epoch(&txn.open_table(META).map_err(db_err)?)?;
            if epoch < fenced {
                return Ok(Err(fenced));
            }
            if epoch > fenced {
                drop(txn);
                self.raise_epoch(epoch).await?;
                // Read again from a snapshot that holds the raised epoch.
                continue;
            }
            let table = txn.open_table(VALUES).map_err(db_err)?;
            return match table.get(key).map_err(db_err)? {
                Some(v) => {
                    let (version, value) = decode_record(key, v.value())?;
                    Ok(Ok(Some(Held {
                        version,
                        value: value.map(Bytes::copy_from_slice),
                    })))
                }
                None => Ok(Ok(None)),
            };
        }
    }

    /// Stores `value` as `key`'s value at `version`, durably, unless the
    /// store already holds `version` or a newer one.
    ///
    /// Returns `true` when stored, `false` when superseded (nothing changed).
    /// With `force` the value replaces whatever is held (repair of a value no
    /// valid log record backs). Resolves only after the write is on disk;
    /// concurrent puts share one transaction and one fsync.
    pub async fn put(
        &self,
        key: Bytes,
        value: Bytes,
        version: Version,
        force: bool,
    ) -> Result<bool, StoreError> {
        let outcome = self
            .submit_put(key, Some(value), version, force, None)
            .await?;
        Ok(outcome == PutOutcome::Stored)
    }

    /// Like [`put`](Store::put), checked against the fencing token `epoch`
    /// of the master that sent it, in the same transaction that applies it:
    /// an `epoch` below the fenced epoch is refused
    /// ([`PutOutcome::StaleEpoch`]); a higher one raises the fenced epoch
    /// first (a newer master is legitimate). A `value` of `None` stores a
    /// tombstone: the key was deleted at `version`.
    pub async fn put_fenced(
        &self,
        epoch: u64,
        key: Bytes,
        value: Option<Bytes>,
        version: Version,
        force: bool,
    ) -> Result<PutOutcome, StoreError> {
        self.submit_put(key, value, version, force, Some(epoch))
            .await
    }

    async fn submit_put(
        &self,
        key: Bytes,
        value: Option<Bytes>,
        version: Version,
        force: bool,
        epoch: Option<u64>,
    ) -> Result<PutOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Put {
            key,
            value,
            version,
            force,
            epoch,
            reply,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Raises the fenced epoch to `max(current, epoch)`, durably, and returns
    /// it. The epoch never decreases.
    pub async fn raise_epoch(&self, epoch: u64) -> Result<u64, StoreError> {
        let current = self.epoch();
        if epoch <= current {
            // Already on disk: nothing to write.
            return Ok(current);
        }
        let (reply, rx) = oneshot::channel();
        self.send(Command::RaiseEpoch { epoch, reply }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn send(&self, cmd: Command) -> Result<(), StoreError> {
        self.inner
            .tx
            .send(cmd)
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Number of keys stored.
    pub fn len(&self) -> Result<u64, StoreError> {
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(VALUES).map_err(db_err)?;
        table.len().map_err(db_err)
    }

    /// True when no key is stored.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// Returns up to `limit` keys with their versions (and whether each is a
    /// tombstone), in key order, starting after `after` (from the first key
    /// when `None`).
    ///
    /// Each call is its own read transaction: a scan made of several calls
    /// sees every key that existed throughout it, and may or may not see keys
    /// written meanwhile. Blocking.
    pub fn inventory_chunk(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Version, bool)>, StoreError> {
        use std::ops::Bound;
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(VALUES).map_err(db_err)?;
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let range = table
            .range::<&[u8]>((lower, Bound::Unbounded))
            .map_err(db_err)?;
        let mut out = Vec::with_capacity(limit.min(4096));
        for entry in range.take(limit) {
            let (k, v) = entry.map_err(db_err)?;
            let key = k.value();
            let (version, value) = decode_record(key, v.value())?;
            out.push((Bytes::copy_from_slice(key), version, value.is_none()));
        }
        Ok(out)
    }

    /// Iterates over every key and its version in chunks of at most
    /// `chunk_size` entries (a cursor scan, see
    /// [`inventory_chunk`](Store::inventory_chunk)): only one chunk is in
    /// memory at a time. Blocking.
    pub fn inventory(&self, chunk_size: usize) -> Inventory {
        Inventory {
            store: self.clone(),
            chunk_size: chunk_size.max(1),
            cursor: None,
            done: false,
        }
    }

    /// Stops the writer after the commands already queued and waits for it.
    ///
    /// Every acknowledged write is already on disk, so this only makes sure
    /// no batch is mid-commit. Later puts and raises fail with
    /// [`StoreError::Closed`]; reads keep working. Idempotent.
    pub async fn close(&self) -> Result<(), StoreError> {
        // The writer may already be gone; then there is nothing to stop.
        let _ = self.inner.tx.send(Command::Close).await;
        let handle = match self.inner.writer.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| StoreError::Write(format!("cannot join writer thread: {e}")))?
                .map_err(|_| StoreError::Write("writer thread panicked".into()))?;
        }
        Ok(())
    }
}

/// A chunked scan over every key of a [`Store`]; see [`Store::inventory`].
pub struct Inventory {
    store: Store,
    chunk_size: usize,
    /// Last key returned: the next chunk starts after it.
    cursor: Option<Bytes>,
    done: bool,
}

impl Iterator for Inventory {
    type Item = Result<Vec<(Bytes, Version, bool)>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self
            .store
            .inventory_chunk(self.cursor.as_deref(), self.chunk_size)
        {
            Ok(chunk) if chunk.is_empty() => {
                self.done = true;
                None
            }
            Ok(chunk) => {
                if chunk.len() < self.chunk_size {
                    self.done = true;
                }
                self.cursor = chunk.last().map(|(k, _, _)| k.clone());
                Some(Ok(chunk))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests;
