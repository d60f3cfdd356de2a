//! Compaction without stopping the writer: the live frames are copied into a
//! new file on a thread of their own while the writer keeps appending to the
//! current file, and then catches up with what the writer appended meanwhile
//! until little is left. The writer then adds that last piece, puts the new
//! file in place and points the index at it: writes pause for the last piece
//! (at most about [`CAUGHT_UP_BYTES`]), its sync and one pass over the
//! index, not for the copy of the live data.
//!
//! Why the result holds exactly the current state: the copy reads the index
//! in chunks, each under the read lock, so it sees every key at some moment
//! after the copy began. Every frame the writer appended since then (from
//! [`Running::since`] on) is copied after the live frames, byte for byte and
//! in order, and replay lets a key's last frame win, so a key changed during
//! the copy ends with its latest state whichever state the copy saw. Keys
//! are never removed from the index, so a slot still pointing before `since`
//! was not changed since the copy began: the copy saw exactly that frame, and
//! its value moved to the offset the copy recorded for it ([`Copied::moved`],
//! in key order like the index). A crash at any point leaves the old file or
//! the complete new one ([`file::install`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::error::io_err;
use super::file::{self, NewFileError, NewPut};
use super::writer::Command;
use super::{Shared, StoreError, StoredKey, ValueAt};
use crate::version::Version;

/// Index entries the copy reads per hold of the read lock (few in tests, so
/// that they cover a copy of several chunks).
const CHUNK_KEYS: usize = if cfg!(test) { 16 } else { 1024 };
/// The tail is copied in pieces of at most this size.
const TAIL_CHUNK: usize = 1 << 20;
/// The copy stops catching up with the writer once less than this is left
/// (a byte in tests, so that they cover both the catch-up and the last
/// piece)…
const CAUGHT_UP_BYTES: u64 = if cfg!(test) { 1 } else { 1 << 20 };
/// …or after this many rounds, if the writer appends faster than it copies.
const CATCH_UP_ROUNDS: usize = 8;

/// One index entry as the copy reads it.
type Entry = (Bytes, Version, Option<ValueAt>);

/// What the copy thread made.
pub(super) struct Copied {
    /// The new file, beside the current one ([`file::NEW_FILE`]), synced but
    /// not in place.
    file: File,
    /// Where the live frames end in it: the current file's frames from
    /// [`Running::since`] on go here.
    tail_at: u64,
    /// How far into the current file the copy caught up: the bytes from
    /// `since` to here are in the new file already.
    caught_up: u64,
    /// Where each value it copied was in the current file and is in the new
    /// one, in key order.
    moved: Vec<(u64, u64)>,
}

/// A compaction whose copy is running. Dropping it stops the copy and waits
/// for its thread, so no copy outlives the writer (and its directory lock).
pub(super) struct Running {
    /// Where the current file's frames ended when the copy began: everything
    /// from here on is added to the new file as it is.
    since: u64,
    /// When the copy began.
    pub(super) began: Instant,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The store file once a finished compaction replaced it.
pub(super) struct Installed {
    /// The new file, now in place.
    pub(super) file: Arc<File>,
    /// Where its frames end.
    pub(super) end: u64,
    /// Bytes of it that no slot points to: the file less every slot's frame.
    pub(super) garbage: u64,
}

/// Starts copying the live frames of `shared`'s index out of `current`
/// (whose frames end at `end`) into a new file; the outcome arrives as
/// [`Command::Compacted`] through `tx`, unless the store is gone by then.
pub(super) fn start(
    shared: Arc<Shared>,
    current: Arc<File>,
    end: u64,
    tx: mpsc::WeakSender<Command>,
) -> Result<Running, StoreError> {
    let cancel = Arc::new(AtomicBool::new(false));
    let stop = cancel.clone();
    let thread = std::thread::Builder::new()
        .name("slave-store-compaction".into())
        .spawn(move || {
            let copied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                copy_live(&shared, &current, end, &stop)
            }))
            .unwrap_or_else(|_| Err(StoreError::Write("the compaction copy panicked".into())));
            // Weak until now, so that a store dropped meanwhile stops its
            // writer instead of waiting for this copy.
            if let Some(tx) = tx.upgrade() {
                let _ = tx.blocking_send(Command::Compacted(copied));
            }
        })
        .map_err(|e| StoreError::Write(format!("cannot start the compaction thread: {e}")))?;
    Ok(Running {
        since: end,
        began: Instant::now(),
        cancel,
        thread: Some(thread),
    })
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Running {
    /// Stops the copy and waits for it, removing its file.
    pub(super) fn abandon(self, dir: &Path) {
        drop(self);
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
        // The copy thread has sent its outcome: this only waits for it to end.
        drop(self);
        let before = |e| NewFileError::Before(e);
        let tail_at = copied.tail_at;
        let new_path = shared.dir.join(file::NEW_FILE);
        copy_range(
            current,
            copied.caught_up..end,
            &shared.path,
            &copied.file,
            tail_at + (copied.caught_up - since),
            &new_path,
        )
        .map_err(before)?;
        let new_end = tail_at + (end - since);
        let (offsets, live) = remap(shared, since, tail_at, &copied.moved).map_err(before)?;
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
            end: new_end,
            // The header and the epoch frames count as garbage: a few bytes.
            garbage: new_end.saturating_sub(live),
        })
    }
}

/// The new offset of every value in the index, in index order, and the
/// bytes of every slot's frame. A value appended since the copy began moved
/// with the tail; any other is the next of `moved` (in key order too) that
/// comes from its offset.
fn remap(
    shared: &Shared,
    since: u64,
    tail_at: u64,
    moved: &[(u64, u64)],
) -> Result<(Vec<u64>, u64), StoreError> {
    let state = shared.read();
    let mut offsets = Vec::with_capacity(moved.len());
    let mut live = 0;
    let mut copies = moved.iter();
    for (key, slot) in &state.index {
        live += slot.frame_len(key.len());
        let Some(at) = slot.value else {
            continue;
        };
        let offset = if at.offset >= since {
            at.offset - since + tail_at
        } else {
            copies
                .find(|&&(old, _)| old == at.offset)
                .map(|&(_, new)| new)
                .ok_or_else(|| {
                    StoreError::Write(format!(
                        "compaction did not copy the value at offset {}; keeping the current file",
                        at.offset
                    ))
                })?
        };
        offsets.push(offset);
    }
    Ok((offsets, live))
}

/// The copy thread's work: every key's newest frame, in key order, into a
/// new file, then what the writer appended to `current` from `since` on,
/// synced.
fn copy_live(
    shared: &Shared,
    current: &File,
    since: u64,
    cancel: &AtomicBool,
) -> Result<Copied, StoreError> {
    let epoch = shared.read().epoch;
    let mut chunk: Vec<Entry> = Vec::new();
    let mut after: Option<StoredKey> = None;
    let mut done = false;
    // Where each copied value was (`None`: a tombstone), in the order of the
    // puts.
    let mut was: Vec<Option<u64>> = Vec::new();
    let puts = std::iter::from_fn(|| {
        if cancel.load(Ordering::SeqCst) {
            return Some(Err(StoreError::Closed));
        }
        if chunk.is_empty() && !done {
            #[cfg(test)]
            let first = after.is_none();
            next_chunk(shared, &mut after, &mut chunk);
            done = chunk.is_empty();
            chunk.reverse();
            #[cfg(test)]
            if first {
                shared.faults.hold_compaction(cancel);
            }
        }
        let (key, version, at) = chunk.pop()?;
        was.push(at.map(|at| at.offset));
        let put: Result<NewPut, StoreError> = at
            .map(|at| super::read_value(current, at, &shared.path))
            .transpose()
            .map(|value| (key, version, value));
        Some(put)
    });
    let (new, tail_at, offsets) = file::write_temp(&shared.dir, &shared.id, epoch, puts)?;
    let new_path = shared.dir.join(file::NEW_FILE);
    let sync = || new.sync_data().map_err(io_err("fsync", &new_path));
    // Synced here, so that the writer's sync when it installs the file
    // covers only the last piece it adds.
    sync()?;
    let mut caught_up = since;
    for _ in 0..CATCH_UP_ROUNDS {
        // Frames below the writer's synced end never change.
        let end = shared.synced_end.load(Ordering::Acquire);
        if end.saturating_sub(caught_up) < CAUGHT_UP_BYTES || cancel.load(Ordering::SeqCst) {
            break;
        }
        let at = tail_at + (caught_up - since);
        copy_range(current, caught_up..end, &shared.path, &new, at, &new_path)?;
        sync()?;
        caught_up = end;
    }
    #[cfg(test)]
    shared.faults.hold_report(cancel);
    let moved = was
        .into_iter()
        .zip(offsets)
        .filter_map(|(old, new)| old.map(|old| (old, new)))
        .collect();
    Ok(Copied {
        file: new,
        tail_at,
        caught_up,
        moved,
    })
}

/// Fills `chunk` with up to [`CHUNK_KEYS`] index entries after `after`, in
/// key order, and moves `after` to the last of them.
fn next_chunk(shared: &Shared, after: &mut Option<StoredKey>, chunk: &mut Vec<Entry>) {
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

/// Copies the bytes `range` of `from` (at `from_path`) to `to` (at
/// `to_path`) at `at`.
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

/// Closes the file a compaction replaced, off the writer thread. It is
/// unlinked, so its last close frees all its blocks, which ext4 takes a
/// while to do for a large file (measured here: 100–300 ms for 400 MB, as
/// long as the rest of the writer's pause). Readers that took it before the
/// swap may still hold it, and no one can take it anew, so the thread waits
/// until it holds the last reference.
pub(super) fn close_in_background(old: Arc<File>) {
    let closing = std::thread::Builder::new()
        .name("slave-store-close".into())
        .spawn(move || {
            while Arc::strong_count(&old) > 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(old);
        });
    if let Err(e) = closing {
        // The file was closed here instead, with the closure.
        tracing::warn!(error = %e, "cannot start a thread to close the replaced store file");
    }
}
