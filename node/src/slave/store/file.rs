//! The store's one file, `values.log`: replaying it into the in-memory index
//! when the store opens, and writing a complete new one (a fresh store, a
//! compaction, an import) that atomically replaces it.
//!
//! The writer fills the file with zeros ahead of its frames (see
//! `writer.rs`), and a crash can leave the file ending in a torn batch:
//! frames the writer had written but not yet synced, so none of them was
//! acknowledged. Replay cuts the file where its valid frames end. Damage anywhere else (a bad frame with a valid one
//! after it) is refused with [`StoreError::Corrupt`] naming the offset, as
//! the log's reader does: dropping it could drop acknowledged values.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::error::io_err;
use super::record::{self, Entry, MAGIC, MIN_PAYLOAD, put_frame_len};
use super::{Index, Slot, StoreError, ValueAt, set_slot};
use crate::version::Version;
use crate::wal::frame::{Framed, HEADER_LEN, MAX_RECORD_BYTES, split};

/// Name of the store file inside the data directory.
pub(super) const FILE: &str = "values.log";
/// A new file is written here, then renamed over [`FILE`].
pub(super) const NEW_FILE: &str = "values.log.new";
/// A bad frame this far or further from the end cannot be a torn batch: one
/// batch is written by one `write` and holds at most this much.
const MAX_TAIL: u64 = super::writer::MAX_BATCH_BYTES as u64 + 2 * MAX_RECORD_BYTES as u64;

/// What replaying a store file found.
pub(super) struct Replayed {
    /// Every key's newest slot.
    pub index: Index,
    /// The fenced epoch.
    pub epoch: u64,
    /// The slave the file belongs to.
    pub owner: String,
    /// Length of the valid part of the file (a torn tail is cut off).
    pub end: u64,
    /// Bytes of frames that later frames superseded.
    pub garbage: u64,
}

/// Reads the store file at `path` (open for reading and writing), cutting
/// off a torn tail, and rebuilds the index.
pub(super) fn replay(file: &File, path: &Path) -> Result<Replayed, StoreError> {
    let len = file.metadata().map_err(io_err("stat", path))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; MAGIC.len()];
    if len >= MAGIC.len() as u64 {
        reader
            .read_exact(&mut magic)
            .map_err(io_err("read", path))?;
    }
    if &magic != MAGIC {
        return Err(StoreError::Corrupt(format!(
            "{} does not start with the store magic {MAGIC:?}",
            path.display()
        )));
    }
    let mut replayed = Replayed {
        index: BTreeMap::new(),
        epoch: 0,
        owner: String::new(),
        end: MAGIC.len() as u64,
        garbage: 0,
    };
    let mut owner = None;
    let mut frame = Vec::new();
    while replayed.end < len {
        let pos = replayed.end;
        if !read_frame(&mut reader, len - pos, &mut frame).map_err(io_err("read", path))? {
            drop_torn_tail(file, path, pos, len)?;
            break;
        }
        let (payload, frame_len) = match split(&frame, MIN_PAYLOAD) {
            Framed::Payload(payload, frame_len) => (payload, frame_len),
            Framed::Incomplete { .. } | Framed::Bad(_) => {
                drop_torn_tail(file, path, pos, len)?;
                break;
            }
        };
        match record::decode(payload).map_err(|e| at(path, pos, e))? {
            Entry::Owner(id) if owner.is_none() => owner = Some(id.to_owned()),
            Entry::Owner(_) => {
                return Err(at(
                    path,
                    pos,
                    StoreError::Corrupt("a second owner frame".into()),
                ));
            }
            Entry::Epoch(epoch) => replayed.epoch = replayed.epoch.max(epoch),
            Entry::Put {
                key,
                version,
                value,
                value_at,
            } => {
                let slot = Slot {
                    version,
                    value: value.map(|v| ValueAt {
                        offset: pos + value_at as u64,
                        len: v.len() as u32,
                    }),
                };
                if let Some(old) = set_slot(&mut replayed.index, key, slot) {
                    replayed.garbage += old.frame_len(key.len());
                }
            }
        }
        replayed.end = pos + frame_len as u64;
    }
    replayed.owner = owner
        .ok_or_else(|| StoreError::Corrupt(format!("{} has no owner frame", path.display())))?;
    Ok(replayed)
}

/// Reads the next frame into `frame`; `false` when fewer bytes remain than
/// its header says it needs (or than a header), so it can only be a tail.
fn read_frame(
    reader: &mut impl Read,
    remaining: u64,
    frame: &mut Vec<u8>,
) -> std::io::Result<bool> {
    if remaining < HEADER_LEN as u64 {
        return Ok(false);
    }
    frame.resize(HEADER_LEN, 0);
    reader.read_exact(frame)?;
    let payload_len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    // An impossible length is left for `split` to report.
    let payload_len = payload_len.min(MAX_RECORD_BYTES.saturating_add(1)) as u64;
    if remaining < HEADER_LEN as u64 + payload_len {
        return Ok(false);
    }
    if payload_len > u64::from(MAX_RECORD_BYTES) {
        return Ok(true);
    }
    frame.resize(HEADER_LEN + payload_len as usize, 0);
    reader.read_exact(&mut frame[HEADER_LEN..])?;
    Ok(true)
}

/// The file is damaged at `pos`: cuts it there if nothing valid follows (a
/// torn, never-acknowledged batch), else refuses it.
fn drop_torn_tail(file: &File, path: &Path, pos: u64, len: u64) -> Result<(), StoreError> {
    let tail_len = len - pos;
    if tail_len > MAX_TAIL {
        return Err(at(
            path,
            pos,
            StoreError::Corrupt(format!(
                "bad frame {tail_len} bytes before the end, further than any unsynced batch reaches"
            )),
        ));
    }
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact_at(&mut tail, pos)
        .map_err(io_err("read", path))?;
    // Only zeros: space the writer filled ahead of its batches (it fills
    // again from the end it starts at). Anything else is searched for a
    // valid frame behind the bad one.
    if tail.iter().any(|&b| b != 0) {
        if let Some(next) =
            (1..tail.len()).find(|&i| matches!(split(&tail[i..], MIN_PAYLOAD), Framed::Payload(..)))
        {
            return Err(at(
                path,
                pos,
                StoreError::Corrupt(format!(
                    "bad frame, and a valid frame follows at byte {}: this is damage, not a torn write; \
                     restore the slave's volume or remove the directory to resync it from the master",
                    pos + next as u64
                )),
            ));
        }
        tracing::warn!(
            path = %path.display(),
            at = pos,
            bytes = tail_len,
            "slave store: cutting off a torn tail (a batch that was never synced, so never acknowledged)"
        );
    }
    file.set_len(pos).map_err(io_err("truncate", path))?;
    file.sync_all().map_err(io_err("fsync", path))
}

/// Prefixes a replay error with where it happened.
fn at(path: &Path, pos: u64, e: StoreError) -> StoreError {
    match e {
        StoreError::Corrupt(why) => {
            StoreError::Corrupt(format!("{} at byte {pos}: {why}", path.display()))
        }
        other => other,
    }
}

/// A put to write into a new file: key, version, value (`None`: tombstone).
pub(super) type NewPut = (Bytes, Version, Option<Bytes>);

/// Why [`write_new`] or [`install`] failed: before the new file replaced the old one, or
/// after (the rename happened but syncing the directory failed, so a crash
/// may bring either file back).
#[derive(Debug, thiserror::Error)]
pub(super) enum NewFileError {
    /// Nothing changed: the old file is in place.
    #[error(transparent)]
    Before(StoreError),
    /// The new file is in place, but not durably.
    #[error(transparent)]
    Unsynced(StoreError),
}

impl From<NewFileError> for StoreError {
    fn from(e: NewFileError) -> StoreError {
        match e {
            NewFileError::Before(e) | NewFileError::Unsynced(e) => e,
        }
    }
}

/// Writes a complete store file for `owner` at fenced `epoch` holding
/// `puts`, syncs it and renames it over [`FILE`] in `dir` (syncing the
/// directory), so a crash leaves either the old file or the new one.
///
/// Returns the new file, open for reading and writing, its length and
/// where each put's value starts (0 for a tombstone), in `puts`' order.
pub(super) fn write_new(
    dir: &Path,
    owner: &str,
    epoch: u64,
    puts: impl Iterator<Item = Result<NewPut, StoreError>>,
) -> Result<(File, u64, Vec<u64>), NewFileError> {
    let (file, end, offsets) = write_temp(dir, owner, epoch, puts).map_err(NewFileError::Before)?;
    install(dir, &file)?;
    Ok((file, end, offsets))
}

/// The first half of [`write_new`]: writes the new file beside [`FILE`]
/// (synced as it goes, see [`write_frames`], but not at its end) and not in
/// place, so that more frames can still be added at
/// its end before [`install`]. Returns the file, its length and where each
/// put's value starts, as [`write_new`] does.
pub(super) fn write_temp(
    dir: &Path,
    owner: &str,
    epoch: u64,
    puts: impl Iterator<Item = Result<NewPut, StoreError>>,
) -> Result<(File, u64, Vec<u64>), StoreError> {
    let tmp = dir.join(NEW_FILE);
    let written = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("create", &tmp))
        .and_then(|file| {
            let (end, offsets) = write_frames(&file, &tmp, owner, epoch, puts)?;
            Ok((file, end, offsets))
        });
    if written.is_err() {
        // Best effort: a leftover is removed by the next open anyway.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The second half of [`write_new`]: syncs the file [`write_temp`] wrote,
/// renames it over [`FILE`] and syncs the directory.
pub(super) fn install(dir: &Path, file: &File) -> Result<(), NewFileError> {
    let tmp = dir.join(NEW_FILE);
    let path = dir.join(FILE);
    let moved = file
        .sync_all()
        .map_err(io_err("fsync", &tmp))
        .and_then(|()| std::fs::rename(&tmp, &path).map_err(io_err("rename into place", &path)));
    if let Err(e) = moved {
        let _ = std::fs::remove_file(&tmp);
        return Err(NewFileError::Before(e));
    }
    sync_dir(dir).map_err(NewFileError::Unsynced)
}

/// A new file is synced each time this much more of it is written.
const SYNC_EVERY: u64 = 16 << 20;

/// Writes the frames of a new file, syncing every [`SYNC_EVERY`] bytes: left
/// to the kernel, the writeback of a compaction's hundreds of MiB comes all
/// at once, at its final sync, and every `fdatasync` of the log and the
/// other slaves on the disk queues behind it for a second or more
/// (docs/BENCHMARKS.md, *Fourth round*).
fn write_frames(
    file: &File,
    path: &Path,
    owner: &str,
    epoch: u64,
    puts: impl Iterator<Item = Result<NewPut, StoreError>>,
) -> Result<(u64, Vec<u64>), StoreError> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut frame = MAGIC.to_vec();
    record::encode_owner(owner, &mut frame);
    record::encode_epoch(epoch, &mut frame);
    let mut end = 0u64;
    let mut synced = 0u64;
    let mut offsets = Vec::new();
    for put in puts {
        out.write_all(&frame).map_err(io_err("write", path))?;
        end += frame.len() as u64;
        frame.clear();
        if end - synced >= SYNC_EVERY {
            out.flush().map_err(io_err("write", path))?;
            file.sync_data().map_err(io_err("fsync", path))?;
            synced = end;
        }
        let (key, version, value) = put?;
        let value_at = record::encode_put(&key, version, value.as_deref(), &mut frame);
        offsets.push(if value.is_some() {
            end + value_at as u64
        } else {
            0
        });
    }
    out.write_all(&frame).map_err(io_err("write", path))?;
    end += frame.len() as u64;
    out.flush().map_err(io_err("write", path))?;
    Ok((end, offsets))
}

/// Removes a new file that never went into place: one a crash left
/// half-written, or a compaction's that failed or was stopped.
pub(super) fn remove_leftover(dir: &Path) -> Result<(), StoreError> {
    let tmp = dir.join(NEW_FILE);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", &tmp)(e)),
        _ => Ok(()),
    }
}

/// Syncs `dir`, so a rename or a new file in it survives a crash.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Opens the store file of `dir` for reading and writing.
pub(super) fn open(dir: &Path) -> Result<(File, PathBuf), StoreError> {
    let path = dir.join(FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    Ok((file, path))
}

impl Slot {
    /// Bytes this slot's frame takes in the file, for `key_len`.
    pub(super) fn frame_len(&self, key_len: usize) -> u64 {
        put_frame_len(key_len, self.value.map_or(0, |v| v.len as usize))
    }
}
