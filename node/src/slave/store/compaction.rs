//! Compaction without stopping the writer: the live frames are copied into a
//! new file on a thread of their own while the writer keeps appending to the
//! current file; the writer then adds what it appended meanwhile, puts the
//! new file in place and points the index at it, a pause as long as that
//! tail copy rather than as long as the whole live data.
//!
//! Why the result holds exactly the current state: the copy reads the index
//! in chunks, each under the read lock, so it sees every key at some moment
//! after the copy began. Every frame the writer appended since then (from
//! [`Running::since`] on) is copied after the live frames, byte for byte and
//! in order, and replay lets a key's last frame win, so a key changed during
//! the copy ends with its latest state whichever state the copy saw. A slot
//! still pointing before `since` was not changed since the copy began, so
//! the copy saw exactly that frame: its value moved to the offset the copy
//! recorded for it ([`Copied::moved`]). A crash at any point leaves the old
//! file or the complete new one ([`file::install`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::error::io_err;
use super::file::{self, NewFileError, NewPut};
use super::writer::Command;
use super::{Shared, StoreError, StoredKey, ValueAt};

/// Index entries the copy reads per hold of the read lock.
const CHUNK_KEYS: usize = 1024;
/// The tail is copied in pieces of at most this size.
const TAIL_CHUNK: usize = 1 << 20;

/// What the copy thread made: the new file (beside the current one, not yet
/// synced nor in place), where its frames end, and where each value it
/// copied moved (offset in the current file, offset in the new one).
pub(super) struct Copied {
    file: File,
    end: u64,
    moved: Vec<(u64, u64)>,
}

/// A compaction whose copy is running.
pub(super) struct Running {
    /// Where the current file's frames ended when the copy began: everything
    /// from here on is added to the new file as it is.
    since: u64,
    /// The writer's count of superseded bytes when the copy began.
    pub(super) garbage_before: u64,
    cancel: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// The current file once a finished compaction replaced it.
pub(super) struct Installed {
    pub(super) file: Arc<File>,
    pub(super) end: u64,
}

/// Starts copying the live frames of `shared`'s index out of `current`
/// (whose frames end at `end`) into a new file; the outcome arrives as
/// [`Command::Compacted`] on `tx`.
pub(super) fn start(
    shared: Arc<Shared>,
    current: Arc<File>,
    end: u64,
    garbage: u64,
    tx: mpsc::Sender<Command>,
) -> Result<Running, StoreError> {
    let cancel = Arc::new(AtomicBool::new(false));
    let stop = cancel.clone();
    let thread = std::thread::Builder::new()
        .name("slave-store-compaction".into())
        .spawn(move || {
            let copied = copy_live(&shared, &current, &stop);
            // Refused once the writer stopped: the new file is then dropped.
            let _ = tx.blocking_send(Command::Compacted(copied));
        })
        .map_err(|e| StoreError::Write(format!("cannot start the compaction thread: {e}")))?;
    Ok(Running {
        since: end,
        garbage_before: garbage,
        cancel,
        thread,
    })
}

impl Running {
    /// Waits for the copy thread to end (it has sent its outcome).
    pub(super) fn join(self) {
        let _ = self.thread.join();
    }

    /// Stops the copy (the writer is stopping) and waits for it, removing
    /// its file.
    pub(super) fn abandon(self, dir: &Path) {
        self.cancel.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
        let _ = file::remove_leftover(dir);
    }

    /// Completes the compaction the copy `copied` made: appends the frames
    /// the current file gained since the copy began (it now ends at `end`),
    /// puts the new file in place and points the index at it. Runs on the
    /// writer thread, between batches, so the index changes under no one.
    pub(super) fn finish(
        self,
        shared: &Shared,
        current: &File,
        end: u64,
        copied: Copied,
    ) -> Result<Installed, NewFileError> {
        let since = self.since;
        self.join();
        let before = |e| NewFileError::Before(e);
        let tail_at = copied.end;
        let new_path = shared.dir.join(file::NEW_FILE);
        copy_range(
            current,
            since..end,
            &shared.path,
            &copied.file,
            tail_at,
            &new_path,
        )
        .map_err(before)?;
        let offsets = remap(shared, since, tail_at, copied.moved).map_err(before)?;
        file::install(&shared.dir, &copied.file)?;
        let file = Arc::new(copied.file);
        {
            let mut state = shared.write();
            // Only the writer thread changes the index, so it holds the
            // slots `remap` read, in the same order.
            let values = state.index.values_mut().filter_map(|s| s.value.as_mut());
            for (at, offset) in values.zip(offsets) {
                at.offset = offset;
            }
            state.file = file.clone();
        }
        Ok(Installed {
            file,
            end: tail_at + (end - since),
        })
    }
}

/// The new offset of every value in the index, in index order: a value
/// appended since the copy began moved with the tail, any other to where
/// the copy put it.
fn remap(
    shared: &Shared,
    since: u64,
    tail_at: u64,
    mut moved: Vec<(u64, u64)>,
) -> Result<Vec<u64>, StoreError> {
    moved.sort_unstable();
    let state = shared.read();
    state
        .index
        .values()
        .filter_map(|slot| slot.value)
        .map(|at| {
            if at.offset >= since {
                return Ok(at.offset - since + tail_at);
            }
            moved
                .binary_search_by_key(&at.offset, |&(old, _)| old)
                .map(|i| moved[i].1)
                .map_err(|_| {
                    StoreError::Write(format!(
                        "compaction did not copy the value at offset {}; keeping the current file",
                        at.offset
                    ))
                })
        })
        .collect()
}

/// The copy thread's work: every key's newest frame, in key order, into a
/// new file.
fn copy_live(shared: &Shared, current: &File, cancel: &AtomicBool) -> Result<Copied, StoreError> {
    let epoch = shared.read().epoch;
    let mut chunk: Vec<(Bytes, crate::version::Version, Option<ValueAt>)> = Vec::new();
    let mut after: Option<StoredKey> = None;
    let mut done = false;
    // Where each copied value was, in the order of the puts.
    let mut was: Vec<Option<u64>> = Vec::new();
    let puts = std::iter::from_fn(|| {
        if cancel.load(Ordering::SeqCst) {
            return Some(Err(StoreError::Closed));
        }
        if chunk.is_empty() && !done {
            next_chunk(shared, &mut after, &mut chunk);
            done = chunk.is_empty();
            chunk.reverse();
        }
        let (key, version, at) = chunk.pop()?;
        was.push(at.map(|at| at.offset));
        let put: Result<NewPut, StoreError> = at
            .map(|at| super::read_value(current, at, &shared.path))
            .transpose()
            .map(|value| (key, version, value));
        Some(put)
    });
    let (new, end, offsets) = file::write_temp(&shared.dir, &shared.id, epoch, puts)?;
    // Synced here, so that the writer's sync when it installs the file
    // covers only the tail it adds.
    new.sync_data()
        .map_err(io_err("fsync", &shared.dir.join(file::NEW_FILE)))?;
    #[cfg(test)]
    shared.faults.hold_compaction(cancel);
    if cancel.load(Ordering::SeqCst) {
        return Err(StoreError::Closed);
    }
    let moved = was
        .into_iter()
        .zip(offsets)
        .filter_map(|(old, new)| old.map(|old| (old, new)))
        .collect();
    Ok(Copied {
        file: new,
        end,
        moved,
    })
}

/// Fills `chunk` with up to [`CHUNK_KEYS`] index entries after `after`, in
/// key order, and moves `after` to the last of them.
fn next_chunk(
    shared: &Shared,
    after: &mut Option<StoredKey>,
    chunk: &mut Vec<(Bytes, crate::version::Version, Option<ValueAt>)>,
) {
    use std::ops::Bound;
    let state = shared.read();
    let lower = match after.as_deref() {
        Some(key) => Bound::Excluded(key),
        None => Bound::Unbounded,
    };
    chunk.extend(
        state
            .index
            .range::<[u8], _>((lower, Bound::Unbounded))
            .take(CHUNK_KEYS)
            .map(|(key, slot)| (Bytes::copy_from_slice(key), slot.version, slot.value)),
    );
    if let Some((key, ..)) = chunk.last() {
        *after = Some(StoredKey::from_slice(key));
    }
}

/// Copies the bytes `range` of `from` (at `from_path`) to `to` at `at`.
fn copy_range(
    from: &File,
    range: std::ops::Range<u64>,
    from_path: &Path,
    to: &File,
    at: u64,
    to_path: &Path,
) -> Result<(), StoreError> {
    let mut buf = vec![0u8; TAIL_CHUNK.min((range.end - range.start) as usize)];
    let mut offset = range.start;
    while offset < range.end {
        let n = buf.len().min((range.end - offset) as usize);
        from.read_exact_at(&mut buf[..n], offset)
            .map_err(io_err("read", from_path))?;
        to.write_all_at(&buf[..n], at + (offset - range.start))
            .map_err(io_err("write", to_path))?;
        offset += n as u64;
    }
    Ok(())
}
