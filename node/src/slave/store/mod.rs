//! The slave's durable store: versioned values and the fenced epoch, kept in
//! one redb database inside the slave's own data directory.
//!
//! Layout (`<data_dir>/slave.redb`):
//! - table `values`: key bytes → `epoch u64 BE | seq u64 BE | value bytes`;
//!   a tombstone (a DELETE) has the top bit of `seq` set and no value bytes
//!   (seqs never reach 2^63);
//! - table `meta`: `"epoch"` → fenced epoch (u64 BE), `"id"` → slave id (UTF-8).
//!
//! All mutations go through one writer thread that drains a channel and
//! applies every command waiting at that moment in a single write
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

/// Key bytes → encoded `(epoch, seq, value)`.
const VALUES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("values");
/// Small named settings: the fenced epoch and the owning slave's id.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_EPOCH: &str = "epoch";
const META_ID: &str = "id";
/// File name of the database inside the data directory.
const DB_FILE: &str = "slave.redb";
/// Bytes of the version header in front of every stored value.
const HEADER: usize = 16;
/// Set in the stored seq of a tombstone.
const TOMBSTONE: u64 = 1 << 63;

/// What the store holds for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The version held.
    pub version: Version,
    /// The value, or `None` for a tombstone (the key was deleted at `version`).
    pub value: Option<Bytes>,
}

/// Commands waiting in the writer's channel. Bounded so that a flood of puts
/// backs up into the gRPC layer instead of into memory.
const QUEUE_DEPTH: usize = 1024;
/// One batch takes at most this many commands…
const MAX_BATCH_COMMANDS: usize = 1024;
/// …or stops growing once its values add up to this many bytes.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

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

/// One request to the writer thread.
enum Command {
    Put {
        key: Bytes,
        /// `None`: a tombstone.
        value: Option<Bytes>,
        version: Version,
        force: bool,
        /// Fencing token of the sender, if the put must be checked against it.
        epoch: Option<u64>,
        reply: oneshot::Sender<Result<PutOutcome, StoreError>>,
    },
    RaiseEpoch {
        epoch: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Stop after this batch; later commands are refused.
    Close,
}

impl Command {
    /// Bytes the command adds to a batch (for [`MAX_BATCH_BYTES`]).
    fn size(&self) -> usize {
        match self {
            Command::Put { key, value, .. } => key.len() + value.as_ref().map_or(0, Bytes::len),
            _ => 0,
        }
    }
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
            match meta.get(META_EPOCH).map_err(db_err)? {
                Some(v) => decode_u64(v.value())?,
                None => 0,
            }
        };
        txn.commit().map_err(db_err)?;

        let db = Arc::new(db);
        let epoch_cell = Arc::new(AtomicU64::new(epoch));
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer {
            db: db.clone(),
            epoch: epoch_cell.clone(),
            rx,
            commit_window: CommitWindow::new(options.commit_window),
        };
        let handle = std::thread::Builder::new()
            .name("slave-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Write(format!("cannot start writer thread: {e}")))?;
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
            let fenced = {
                let meta = txn.open_table(META).map_err(db_err)?;
                match meta.get(META_EPOCH).map_err(db_err)? {
                    Some(v) => decode_u64(v.value())?,
                    None => 0,
                }
            };
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

/// The writer thread's state.
struct Writer {
    db: Arc<Database>,
    epoch: Arc<AtomicU64>,
    rx: mpsc::Receiver<Command>,
    commit_window: CommitWindow,
}

/// The answer owed to one command of a batch, sent after the commit.
enum Pending {
    Put(oneshot::Sender<Result<PutOutcome, StoreError>>, PutOutcome),
    Epoch(oneshot::Sender<Result<u64, StoreError>>, u64),
}

impl Writer {
    /// Group commit loop: wait for one command, under load wait the commit
    /// window, take every other command queued by then (up to the batch
    /// limits), apply them all in one write transaction, commit (fsync), and
    /// only then answer them.
    fn run(mut self) {
        let mut closing = false;
        while !closing {
            let Some(first) = self.rx.blocking_recv() else {
                break;
            };
            self.commit_window.wait();
            let mut bytes = first.size();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(cmd) => {
                        bytes += cmd.size();
                        batch.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            if let Some(pos) = batch.iter().position(|c| matches!(c, Command::Close)) {
                // Commands queued after Close are refused (their senders see Closed).
                batch.truncate(pos);
                closing = true;
            }
            self.commit_window.taken(batch.len());
            if !batch.is_empty() {
                self.apply(batch);
            }
        }
        // Refuse whatever is still queued.
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        tracing::debug!("slave store writer stopped");
    }

    fn apply(&self, batch: Vec<Command>) {
        let committed_epoch = self.epoch.load(Ordering::Acquire);
        let mut answers = Vec::with_capacity(batch.len());
        match self.write_batch(batch, committed_epoch, &mut answers) {
            Ok(epoch) => {
                // Persist, then acknowledge: the commit has returned, so the
                // epoch and every answer below describe what is on disk.
                self.epoch.store(epoch, Ordering::Release);
                for answer in answers {
                    match answer {
                        Pending::Put(reply, outcome) => {
                            let _ = reply.send(Ok(outcome));
                        }
                        Pending::Epoch(reply, epoch) => {
                            let _ = reply.send(Ok(epoch));
                        }
                    }
                }
            }
            Err((e, replies)) => {
                tracing::error!(error = %e, "slave store batch failed; nothing of it applied");
                let msg = e.to_string();
                for answer in replies {
                    match answer {
                        Pending::Put(reply, _) => {
                            let _ = reply.send(Err(StoreError::Write(msg.clone())));
                        }
                        Pending::Epoch(reply, _) => {
                            let _ = reply.send(Err(StoreError::Write(msg.clone())));
                        }
                    }
                }
            }
        }
    }

    /// Applies `batch` in one transaction and commits it. On success returns
    /// the epoch after the batch and leaves the answers in `answers`; on
    /// failure returns the error with every pending answer so the caller can
    /// fail them.
    fn write_batch(
        &self,
        batch: Vec<Command>,
        mut epoch: u64,
        answers: &mut Vec<Pending>,
    ) -> Result<u64, (StoreError, Vec<Pending>)> {
        let mut dirty = false;
        // The replies are moved into `answers` as each command is handled, so
        // that a failure can still answer all of them.
        let mut iter = batch.into_iter();
        let result = (|| -> Result<(), StoreError> {
            let txn = self.db.begin_write().map_err(db_err)?;
            {
                let mut values = txn.open_table(VALUES).map_err(db_err)?;
                let mut meta = txn.open_table(META).map_err(db_err)?;
                for cmd in iter.by_ref() {
                    match cmd {
                        Command::Put {
                            key,
                            value,
                            version,
                            force,
                            epoch: token,
                            reply,
                        } => {
                            let outcome = match token {
                                // Fencing: a deposed master's put is refused,
                                // checked in the transaction that would apply it.
                                Some(token) if token < epoch => {
                                    PutOutcome::StaleEpoch { fenced: epoch }
                                }
                                token => {
                                    if let Some(token) = token.filter(|t| *t > epoch) {
                                        meta.insert(META_EPOCH, &token.to_be_bytes()[..])
                                            .map_err(db_err)?;
                                        epoch = token;
                                        dirty = true;
                                    }
                                    let current = match values.get(&key[..]).map_err(db_err)? {
                                        Some(v) => Some(decode_record(&key, v.value())?.0),
                                        None => None,
                                    };
                                    match current {
                                        // Version order: never replace a
                                        // newer-or-equal version unless forced.
                                        Some(current) if current >= version && !force => {
                                            PutOutcome::Superseded { current }
                                        }
                                        _ => {
                                            let record = encode_record(version, value.as_deref());
                                            values.insert(&key[..], &record[..]).map_err(db_err)?;
                                            dirty = true;
                                            PutOutcome::Stored
                                        }
                                    }
                                }
                            };
                            answers.push(Pending::Put(reply, outcome));
                        }
                        Command::RaiseEpoch {
                            epoch: wanted,
                            reply,
                        } => {
                            if wanted > epoch {
                                meta.insert(META_EPOCH, &wanted.to_be_bytes()[..])
                                    .map_err(db_err)?;
                                epoch = wanted;
                                dirty = true;
                            }
                            answers.push(Pending::Epoch(reply, epoch));
                        }
                        Command::Close => {}
                    }
                }
            }
            if dirty {
                txn.commit().map_err(db_err)?;
            } else {
                // Every answer describes state committed by earlier batches.
                txn.abort().map_err(db_err)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(epoch),
            Err(e) => {
                let mut pending = std::mem::take(answers);
                // Commands not reached yet still need an answer.
                for cmd in iter {
                    match cmd {
                        Command::Put { reply, .. } => {
                            pending.push(Pending::Put(reply, PutOutcome::Stored));
                        }
                        Command::RaiseEpoch { reply, .. } => {
                            pending.push(Pending::Epoch(reply, 0));
                        }
                        Command::Close => {}
                    }
                }
                Err((e, pending))
            }
        }
    }
}

/// Converts any of redb's error types into a [`StoreError`].
fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

/// A stored record: the version header, then the value (none for a
/// tombstone, flagged in the seq's top bit).
fn encode_record(version: Version, value: Option<&[u8]>) -> Vec<u8> {
    let value_len = value.map_or(0, <[u8]>::len);
    let mut record = Vec::with_capacity(HEADER + value_len);
    record.extend_from_slice(&version.epoch.to_be_bytes());
    let seq = if value.is_none() {
        version.seq | TOMBSTONE
    } else {
        version.seq
    };
    record.extend_from_slice(&seq.to_be_bytes());
    record.extend_from_slice(value.unwrap_or_default());
    record
}

/// The version and value of a stored record (`None`: a tombstone).
fn decode_record<'a>(
    key: &[u8],
    record: &'a [u8],
) -> Result<(Version, Option<&'a [u8]>), StoreError> {
    if record.len() < HEADER {
        return Err(StoreError::Corrupt(format!(
            "record of key {} is {} bytes, shorter than its {HEADER}-byte version header",
            String::from_utf8_lossy(key),
            record.len()
        )));
    }
    let (header, value) = record.split_at(HEADER);
    let (epoch, seq) = header.split_at(8);
    let seq = decode_u64(seq)?;
    let version = Version::new(decode_u64(epoch)?, seq & !TOMBSTONE);
    if seq & TOMBSTONE != 0 {
        if !value.is_empty() {
            return Err(StoreError::Corrupt(format!(
                "tombstone of key {} carries {} value bytes",
                String::from_utf8_lossy(key),
                value.len()
            )));
        }
        return Ok((version, None));
    }
    Ok((version, Some(value)))
}

fn decode_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("expected 8 bytes, found {}", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests;
