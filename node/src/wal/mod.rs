//! The write-ahead log (`kv_store.log`): the source of truth of every WRITE.
//!
//! The log lives in one directory, shared by the master and the backup master:
//!
//! - segments `kv_store.{file_no:08}.log`, read in file-number order, each opening
//!   with the magic [`MAGIC`] and holding length-prefixed, CRC-checked records
//!   (see [`frame`] for the byte layout);
//! - `epochs`, the epoch history: one `EPOCH START_SEQ` line per master term
//!   ([`EpochHistory`]).
//!
//! Who does what:
//! - the active master appends through one [`LogWriter`] (group commit: one
//!   `fdatasync` covers every append waiting at that moment);
//! - startup, the standby and `dsm log dump` read through a [`LogReader`], which
//!   remembers its place and follows new appends;
//! - [`compact`] rewrites the sealed segments beside a live writer and readers;
//! - [`read_at`] fetches one record by the [`LogPos`] an index remembered.
//!
//! # Invariants enforced here
//!
//! - **Persist before acknowledge.** [`LogWriter::append`] resolves only after the
//!   `fdatasync` covering the record returned success; after any write or sync error
//!   the writer refuses every later append (an fsync error may have dropped dirty
//!   pages, so retrying could acknowledge lost data). Tested by
//!   `writer::tests::group_commit_one_fsync_covers_waiting_appends` and
//!   `writer::tests::failed_writer_stops_acknowledging`.
//! - **Epoch fencing** (DESIGN §4 "log records from an old epoch beyond the recorded
//!   end are ignored on replay"): a record `(e, s)` is valid iff `s < start_seq(e')`
//!   for every epoch `e' > e` in the history. Tested by
//!   `tests::stale_epoch_records_are_ignored_on_replay`.
//! - **Torn tail vs corruption**: a bad frame with no valid frame after it in its
//!   file is a torn tail (truncated by [`LogWriter::open`] with a warning); a bad frame
//!   followed by a valid one is corruption ([`WalError::Corrupt`], startup refuses).
//!   Tested by `tests::torn_tail_is_truncated_on_open` and
//!   `tests::corrupt_middle_record_names_file_and_offset`.
//! - **Valid records have strictly increasing seqs in log order.** Each master
//!   numbers its writes contiguously, and a new master's `START_SEQ` is one past the
//!   last valid seq it read, so anything an old master writes later is invalid. This
//!   is what lets a reader that lost its place to a compaction re-read the
//!   compacted file and skip every record with `seq <=` the last it delivered.
//!   Tested by `tests::follower_converges_across_compactions`.

mod compact;
mod epochs;
mod error;
pub(crate) mod frame;
mod reader;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::version::Version;

pub use compact::{CompactStats, compact, sealed_segments};
pub use epochs::{EPOCHS_FILE, EpochHistory};
pub use error::{FrameError, Result, WalError};
pub use frame::{MAGIC, MAX_RECORD_BYTES};
pub use reader::{LogReader, read_at};
pub use writer::{LogWriter, WriterStats};

/// One WRITE as stored in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// `(epoch, seq)` the master assigned; `seq` is the record's index in the log.
    pub version: Version,
    /// The key: arbitrary bytes (validation of limits is the master's job).
    pub key: Bytes,
    /// The value: arbitrary bytes, possibly empty.
    pub value: Bytes,
}

/// Where a record starts: segment number and byte offset of its frame.
///
/// A position is a hint, not an identity: compaction moves records, so whoever
/// reads by position must check the key and version it gets back ([`read_at`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPos {
    /// Number of the segment file `kv_store.{file_no:08}.log`.
    pub file_no: u32,
    /// Byte offset of the record's frame in that file.
    pub offset: u64,
}

impl std::fmt::Display for LogPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file_no, self.offset)
    }
}

const SEGMENT_PREFIX: &str = "kv_store.";
const SEGMENT_SUFFIX: &str = ".log";

/// The path of segment `file_no` in `dir`.
pub fn segment_path(dir: &Path, file_no: u32) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{file_no:08}{SEGMENT_SUFFIX}"))
}

/// Parses a segment file name; anything else in the directory (the epochs file,
/// a compaction's `.tmp`, an operator's notes) is not part of the log.
fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Lists the segments of `dir` in log order (ascending file number).
pub fn list_segments(dir: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| WalError::io(dir, e))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io(dir, e))?;
        if let Some(no) = entry.file_name().to_str().and_then(parse_segment_name) {
            segments.push((no, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(no, _)| *no);
    Ok(segments)
}

/// Total size of the log segments in `dir`, in bytes. A segment deleted by
/// a concurrent compaction between listing and measuring counts as empty.
pub fn log_bytes(dir: &Path) -> Result<u64> {
    Ok(list_segments(dir)?
        .iter()
        .filter_map(|(_, path)| std::fs::metadata(path).ok())
        .map(|m| m.len())
        .sum())
}

/// Makes a directory entry change (create, rename, unlink) durable: without it a
/// crash can forget a file whose contents were fsynced.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io(dir, e))
}

/// Identity of an open file (device, inode), to notice that a path now names a
/// different file (compaction renamed a new segment over it).
fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Reads exactly `buf.len()` bytes at `offset`, or fewer at end of file.
fn read_full_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut total = 0;
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                offset += n as u64;
                buf = &mut buf[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}
