//! The slave's durable store: versioned values and the fenced epoch, kept in
//! one append-only file inside the slave's own data directory, with an
//! in-memory index of every key.
//!
//! Layout of `<data_dir>`:
//! - `values.log`: the store file, a sequence of checksummed frames (an
//!   owner, epochs, puts and tombstones; `record.rs` has the format). The
//!   newest frame of a key is its state, so replaying the file in order
//!   rebuilds the index (`file.rs`);
//! - `values.log.new`: a compaction's new file, until it is renamed over
//!   `values.log` (removed on open if a crash left one);
//! - `slave.lock`: locked while a store's writer thread runs.
//!
//! The index maps each key to its version and where its value lies in the
//! file; values are read from the file (the page cache) when asked for.
//! All mutations go through one writer thread (`writer.rs`) that drains a
//! channel and appends the frames of every command waiting at that moment in
//! one `write`, synced with `fdatasync` before any of them is answered: a
//! commit costs one small append and one sync, where a B-tree rewrites
//! several pages. Under load the writer holds each batch open for a short
//! [commit window](crate::commit_window). Once the file is large and mostly
//! superseded, it is rewritten with only the live frames and renamed into
//! place (compaction, `compaction.rs`): the copy runs beside the writer, which
//! pauses only to add what it appended meanwhile. Reads never wait for the
//! writer.
//!
//! Invariants enforced here:
//! - **Version order**: a put never replaces a newer-or-equal version with an
//!   older one unless it is forced (repair); it is then acknowledged with
//!   "not stored". Checked by `tests::older_version_never_replaces_newer`,
//!   `tests::equal_version_is_not_stored` and `tests::force_replaces_newer`.
//! - **Persist, then acknowledge**: a put or an epoch raise is answered, and
//!   shown to readers, only after the sync of the batch holding it has
//!   returned; a failed write or sync fails every command of the batch and
//!   cuts it off the file, and when even that fails the writer refuses every
//!   later command until a restart replays the file. Checked by
//!   `tests::concurrent_puts_are_all_durable`,
//!   `tests::data_survives_reopen`, `tests::acknowledged_puts_survive_kill_9`,
//!   `tests::a_torn_tail_is_cut_and_damage_is_refused`,
//!   `tests::a_full_volume_fails_puts_clearly_and_loses_nothing`,
//!   `tests::a_failed_sync_refuses_its_batch_and_cuts_it_off` and
//!   `tests::a_failed_cut_back_stops_the_writer_until_a_restart`.
//! - **Fencing**: the epoch only grows, and [`Store::put_fenced`] compares the
//!   request's epoch with the fenced epoch on the one thread that applies
//!   puts, after every earlier command, so no put from an older master is
//!   applied once a fence has been acknowledged; [`Store::get_fenced`] reads
//!   the fenced epoch and the key's slot under one lock, so no read is served
//!   to an older master from a state that already holds a newer fence.
//!   Checked by `tests::raise_epoch_persists`,
//!   `tests::fenced_put_rejects_older_epoch` and
//!   `tests::fenced_get_sees_the_fence_of_its_own_snapshot`.
//! - **Compaction loses nothing**: the new file holds every key's newest
//!   frame and everything appended while it was copied, it is synced before
//!   it replaces the old one, and a crash leaves one or the other. Checked by
//!   `tests::compaction_keeps_every_newest_value` and
//!   `tests::puts_go_on_while_a_compaction_copies`.

mod compaction;
mod error;
mod file;
mod migrate;
mod record;
mod writer;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use smallvec::SmallVec;
use tokio::sync::{mpsc, oneshot};

use crate::commit_window::DEFAULT_COMMIT_WINDOW;
use crate::version::Version;
use error::io_err;
use writer::Command;

pub use error::StoreError;

/// Locked (`flock`) while a store has the directory open.
const LOCK_FILE: &str = "slave.lock";

/// What the store holds for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The version held.
    pub version: Version,
    /// The value, or `None` for a tombstone (the key was deleted at `version`).
    pub value: Option<Bytes>,
}

/// How a [`Store`] batches its commits and when it compacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Under load, how long a batch waits for more commands to share its
    /// commit (see [`crate::commit_window`]); zero commits at once.
    pub commit_window: Duration,
    /// The file is rewritten without its superseded frames once it is at
    /// least this long and at least half superseded.
    pub compaction_min_bytes: u64,
}

/// Default of [`StoreOptions::compaction_min_bytes`]: small next to a
/// volume, large enough that compactions are rare.
pub const DEFAULT_COMPACTION_MIN_BYTES: u64 = 64 << 20;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            commit_window: DEFAULT_COMMIT_WINDOW,
            compaction_min_bytes: DEFAULT_COMPACTION_MIN_BYTES,
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
/// the same file and writer thread.
///
/// The directory stays locked against other opens until the last clone is
/// dropped; call [`Store::close`] before reopening a directory in the same
/// process.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// Queue to the writer thread.
    tx: mpsc::Sender<Command>,
    /// The writer thread, taken by [`Store::close`] to join it. It holds
    /// the directory's lock until it ends.
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What the writer thread and the readers share.
pub(super) struct Shared {
    state: RwLock<State>,
    dir: PathBuf,
    /// The store file in `dir`.
    path: PathBuf,
    id: String,
    /// Where the synced frames of the store file end (the writer's `end`),
    /// for a compaction's copy to catch up to.
    synced_end: AtomicU64,
    /// Faults the tests inject into the writer.
    #[cfg(test)]
    faults: tests::Faults,
}

/// A key as the index stores it: in place up to 16 bytes, so a short key
/// costs no allocation of its own (as in the master's index).
type StoredKey = SmallVec<[u8; 16]>;

/// Every key's slot, in key order (inventories are scans in key order).
type Index = BTreeMap<StoredKey, Slot>;

/// Sets `key`'s slot; returns the one it replaces. A key already held is
/// not copied again.
fn set_slot(index: &mut Index, key: &[u8], slot: Slot) -> Option<Slot> {
    match index.get_mut(key) {
        Some(old) => Some(std::mem::replace(old, slot)),
        None => {
            index.insert(StoredKey::from_slice(key), slot);
            None
        }
    }
}

/// The durable state as of the last synced batch.
struct State {
    index: Index,
    /// The fenced epoch.
    epoch: u64,
    /// The file the index's offsets point into (compaction replaces it).
    file: Arc<File>,
}

/// What the index holds for a key.
#[derive(Clone, Copy, Debug)]
struct Slot {
    version: Version,
    /// Where the value lies in the file; `None` for a tombstone.
    value: Option<ValueAt>,
}

/// Where a value lies in the store file.
#[derive(Clone, Copy, Debug)]
struct ValueAt {
    offset: u64,
    len: u32,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves whole slots (each is
        // replaced or updated in one assignment), so poison is ignored.
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The key's slot and the file it points into, read together.
    fn slot(&self, key: &[u8]) -> (Option<Slot>, Arc<File>, u64) {
        let state = self.read();
        (
            state.index.get(key).copied(),
            state.file.clone(),
            state.epoch,
        )
    }

    /// What `slot` holds, its value read from `file`.
    fn held(&self, slot: Slot, file: &File) -> Result<Held, StoreError> {
        let value = slot
            .value
            .map(|at| read_value(file, at, &self.path))
            .transpose()?;
        Ok(Held {
            version: slot.version,
            value,
        })
    }
}

/// The value at `at` in `file` (the store file at `path`).
fn read_value(file: &File, at: ValueAt, path: &Path) -> Result<Bytes, StoreError> {
    let mut value = vec![0u8; at.len as usize];
    file.read_exact_at(&mut value, at.offset)
        .map_err(io_err("read", path))?;
    Ok(Bytes::from(value))
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.shared.dir)
            .field("id", &self.inner.shared.id)
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
    /// own. A directory holding the store of an older DSM (`slave.redb`) is
    /// imported first. Opening reads the whole file, which takes a while on
    /// a large store: call it from a blocking context.
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
        let lock = lock_dir(&dir)?;
        file::remove_leftover(&dir)?;
        if !dir.join(file::FILE).exists() {
            let imported = migrate::import(&dir, id)?;
            if !imported {
                file::write_new(&dir, id, 0, std::iter::empty())?;
            }
        } else {
            migrate::finish(&dir)?;
        }
        let (file, path) = file::open(&dir)?;
        let replayed = file::replay(&file, &path)?;
        if replayed.owner != id {
            return Err(StoreError::WrongOwner {
                dir,
                found: replayed.owner,
                expected: id.to_string(),
            });
        }
        let file = Arc::new(file);
        let epoch = replayed.epoch;
        let keys = replayed.index.len();
        let shared = Arc::new(Shared {
            state: RwLock::new(State {
                index: replayed.index,
                epoch,
                file: file.clone(),
            }),
            dir: dir.clone(),
            path,
            id: id.to_string(),
            synced_end: AtomicU64::new(replayed.end),
            #[cfg(test)]
            faults: tests::Faults::default(),
        });
        let (tx, rx) = mpsc::channel(writer::QUEUE_DEPTH);
        let handle = writer::start(
            shared.clone(),
            file,
            replayed.end,
            replayed.garbage,
            (rx, tx.downgrade()),
            options,
            lock,
        )?;
        tracing::info!(dir = %dir.display(), id, epoch, keys, bytes = replayed.end, "slave store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                tx,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// The slave id this store belongs to.
    pub fn id(&self) -> &str {
        &self.inner.shared.id
    }

    /// The fenced epoch: the highest epoch ever passed to
    /// [`raise_epoch`](Store::raise_epoch) (or carried by a fenced put),
    /// as synced to disk.
    pub fn epoch(&self) -> u64 {
        self.inner.shared.read().epoch
    }

    /// Returns the stored value of `key` and its version, if any (a key
    /// deleted here has none).
    ///
    /// Sees every put that has been acknowledged. Reads the value from the
    /// file (normally the page cache).
    pub fn get(&self, key: &[u8]) -> Result<Option<(Bytes, Version)>, StoreError> {
        let shared = &self.inner.shared;
        let (slot, file, _) = shared.slot(key);
        match slot {
            Some(slot) => {
                let held = shared.held(slot, &file)?;
                Ok(held.value.map(|value| (value, held.version)))
            }
            None => Ok(None),
        }
    }

    /// Like [`get`](Store::get), checked against the fencing token `epoch` of
    /// the master asking, under the lock that reads the key's slot: an
    /// `epoch` below the fenced epoch of that state is refused
    /// (`Err(fenced)`); a higher one is first made the fenced epoch (durably),
    /// since a newer master is legitimate.
    pub async fn get_fenced(
        &self,
        epoch: u64,
        key: &[u8],
    ) -> Result<Result<Option<Held>, u64>, StoreError> {
        let shared = &self.inner.shared;
        loop {
            let (slot, file, fenced) = shared.slot(key);
            if epoch < fenced {
                return Ok(Err(fenced));
            }
            if epoch > fenced {
                self.raise_epoch(epoch).await?;
                // Read again from a state that holds the raised epoch.
                continue;
            }
            return match slot {
                Some(slot) => Ok(Ok(Some(shared.held(slot, &file)?))),
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
    /// concurrent puts share one append and one sync.
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
    /// of the master that sent it, by the thread that applies it: an
    /// `epoch` below the fenced epoch is refused
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

    /// Number of keys stored (tombstones included).
    pub fn len(&self) -> Result<u64, StoreError> {
        Ok(self.inner.shared.read().index.len() as u64)
    }

    /// True when no key is stored.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// Returns up to `limit` keys with their versions (and whether each is a
    /// tombstone), in key order, starting after `after` (from the first key
    /// when `None`).
    ///
    /// Each call reads one state of the index: a scan made of several calls
    /// sees every key that existed throughout it, and may or may not see keys
    /// written meanwhile.
    pub fn inventory_chunk(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Version, bool)>, StoreError> {
        use std::ops::Bound;
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let state = self.inner.shared.read();
        Ok(state
            .index
            .range::<[u8], _>((lower, Bound::Unbounded))
            .take(limit)
            .map(|(key, slot)| {
                let key = Bytes::copy_from_slice(key);
                (key, slot.version, slot.value.is_none())
            })
            .collect())
    }

    /// Iterates over every key and its version in chunks of at most
    /// `chunk_size` entries (a cursor scan, see
    /// [`inventory_chunk`](Store::inventory_chunk)): only one chunk is
    /// copied at a time.
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
    /// no batch is mid-write. Later puts and raises fail with
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

/// Takes the directory's lock, or reports that another store holds it.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("lock", &path)(e)),
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
