//! Errors of the write-ahead log. Every message names the file (and offset or
//! line) involved, so an operator can act on it without reading code.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Result of a log operation.
pub type Result<T, E = WalError> = std::result::Result<T, E>;

/// Why bytes at some offset are not a valid record frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The segment does not open with the log magic.
    #[error("the file does not start with the log magic `DSMLOG1\\n`")]
    BadMagic,
    /// The file ends inside the magic or inside a frame.
    #[error("the frame is incomplete: {needed} bytes needed, {available} present")]
    Incomplete {
        /// Bytes the frame claims (header included).
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// The length prefix is outside `[minimum payload, MAX_RECORD_BYTES]`.
    #[error("payload length {len} is out of range ({min}..={max} bytes)")]
    BadLength {
        /// The stored length.
        len: u32,
        /// Smallest possible payload.
        min: u32,
        /// [`super::MAX_RECORD_BYTES`].
        max: u32,
    },
    /// The payload does not match its CRC32C.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc {
        /// CRC stored in the frame header.
        stored: u32,
        /// CRC of the payload as read.
        computed: u32,
    },
    /// The record kind byte is not one this version knows.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// A Delete record (a tombstone) that carries a value.
    #[error("a tombstone record carries {0} value bytes")]
    TombstoneValue(usize),
    /// The key length runs past the end of the payload.
    #[error("key length {key_len} exceeds the {available} bytes left in the payload")]
    KeyTooLong {
        /// The stored key length.
        key_len: u32,
        /// Payload bytes after the fixed fields.
        available: usize,
    },
}

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An operating-system error on a log file or directory.
    #[error("write-ahead log I/O error on {}: {source}", path.display())]
    Io {
        /// File or directory the operation was on.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A damaged record with valid records after it: not a torn tail, so the
    /// log cannot be trusted past it and nothing may truncate it automatically.
    #[error(
        "corrupt write-ahead log record in {} at offset {offset}: {reason}; a valid record follows at \
         offset {next_valid}, so this is not a torn tail. The log must be repaired or restored \
         from a backup before this node can start",
        path.display()
    )]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the damaged frame.
        offset: u64,
        /// What is wrong with it.
        reason: FrameError,
        /// Offset of the first valid frame found after it.
        next_valid: u64,
    },
    /// A segment that is not a log segment at all (wrong magic).
    #[error(
        "{} is not a write-ahead log segment ({reason}); move it out of the log directory",
        path.display()
    )]
    NotASegment {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        reason: FrameError,
    },
    /// No record starts at the given position any more (compaction moved it, or
    /// the position is stale). Look the key up again.
    #[error(
        "no record starts at {} offset {offset} (compacted or stale position: {reason})",
        path.display()
    )]
    Moved {
        /// The segment file named by the position.
        path: PathBuf,
        /// The offset asked for.
        offset: u64,
        /// Why the bytes there are not a record start.
        reason: String,
    },
    /// A cut file or a line of the legacy epochs file is malformed or conflicts
    /// with another.
    #[error(
        "bad epoch history {} line {line}: {reason}; fix or restore the file",
        path.display()
    )]
    BadEpochs {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// [`super::EpochHistory::record_cut`] was given an epoch that does not move
    /// history forward (a newer master has taken over meanwhile).
    #[error(
        "epoch {epoch} (start seq {start_seq}) does not follow the latest epoch {latest} \
         (start seq {latest_start}) in the history"
    )]
    EpochNotNewer {
        /// Epoch asked for.
        epoch: u64,
        /// Its start seq.
        start_seq: u64,
        /// Latest epoch recorded.
        latest: u64,
        /// Its start seq.
        latest_start: u64,
    },
    /// [`super::LogWriter::open`] was called for an epoch that is not the latest
    /// recorded one (append the epoch first).
    #[error(
        "a writer for epoch {epoch} starting at seq {first_seq} needs that line to be the latest \
         in the epoch history, which has {latest:?}"
    )]
    EpochMismatch {
        /// Epoch asked for.
        epoch: u64,
        /// First seq asked for.
        first_seq: u64,
        /// Latest `(epoch, start_seq)` in the history.
        latest: Option<(u64, u64)>,
    },
    /// A newer master has taken over: this writer must not write any more.
    #[error("the writer of epoch {epoch} is fenced: epoch {newer} has started")]
    Fenced {
        /// This writer's epoch.
        epoch: u64,
        /// The newer epoch found in the history.
        newer: u64,
    },
    /// A record larger than [`super::MAX_RECORD_BYTES`].
    #[error("record of {len} bytes exceeds the log limit of {max} bytes")]
    TooLarge {
        /// Payload size the record would have.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// The writer hit an I/O error earlier and acknowledges nothing any more
    /// (an fsync failure may have dropped data; retrying could lie).
    #[error(
        "write-ahead log writer stopped after an error on {}: {source}; no further writes \
         are acknowledged until a new writer recovers the log",
        path.display()
    )]
    WriterFailed {
        /// The segment being written.
        path: PathBuf,
        /// The first error.
        #[source]
        source: Arc<WalError>,
    },
    /// The writer thread is gone (the writer was closed).
    #[error("write-ahead log writer is closed")]
    Closed,
    /// Another compaction of the same log directory is running (in this or
    /// another process).
    #[error(
        "another compaction of this log is running (it holds {}); try again once it is done",
        path.display()
    )]
    CompactionRunning {
        /// The lock file.
        path: PathBuf,
    },
    /// The caller's term ended while it worked (a newer master took over).
    #[error("stopped: {0}")]
    Deposed(String),
}

impl WalError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        WalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
