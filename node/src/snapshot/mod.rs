//! Snapshot files: `dsm snapshot save`, `status` and `restore`.
//!
//! A snapshot is every key's latest value at one log position (the master
//! side is [`crate::master::snapshot`]). The file:
//!
//! ```text
//! magic    "DSMSNAP1\n"
//! header   u32 format (1) | u64 epoch | u64 seq          the position, little-endian
//! entries  one log record frame per key (crate::wal::frame), in key order
//! trailer  "DSMSNAPEND" | u64 keys | u64 bytes | u32 crc32c
//! ```
//!
//! The CRC32C covers every entry's key length (u32), key, epoch, seq and
//! value, in order ([`Digest`]); the master sends it and `save` checks it
//! before the file is renamed into place, `status` and `restore` check it again.
//!
//! Restoring writes a new log directory a master starts from: the entries
//! become epoch 1, seqs 1…N, with epoch 1 claimed and its cut recorded, so the
//! first master takes epoch 2 and every new WRITE is newer than every restored
//! value, whatever epochs the snapshotted cluster had reached. Its slaves should
//! start empty: the new master copies every key to them from the log.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;

use crate::client::Client;
use crate::proto::snapshot_chunk::Part;
use crate::version::Version;
use crate::wal::{self, EpochHistory, MAGIC as SEGMENT_MAGIC, frame};

/// Format of the snapshot stream and file.
pub const FORMAT: u32 = 1;
/// First bytes of a snapshot file.
pub const MAGIC: &[u8; 9] = b"DSMSNAP1\n";
/// Marks the trailer.
const END: &[u8; 10] = b"DSMSNAPEND";
/// Bytes of the header after the magic.
const HEADER_LEN: usize = 4 + 8 + 8;
/// Bytes of the trailer after its mark.
const TRAILER_LEN: usize = 8 + 8 + 4;

/// The running checksum and counts of a snapshot's entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    crc: u32,
    keys: u64,
    bytes: u64,
}

impl Digest {
    /// Adds one entry.
    pub fn add(&mut self, key: &[u8], version: Version, value: &[u8]) {
        let mut crc = crc32c::crc32c_append(self.crc, &(key.len() as u32).to_le_bytes());
        crc = crc32c::crc32c_append(crc, key);
        crc = crc32c::crc32c_append(crc, &version.epoch.to_le_bytes());
        crc = crc32c::crc32c_append(crc, &version.seq.to_le_bytes());
        self.crc = crc32c::crc32c_append(crc, value);
        self.keys += 1;
        self.bytes += (key.len() + value.len()) as u64;
    }

    /// The CRC32C so far.
    pub fn crc(&self) -> u32 {
        self.crc
    }

    /// Entries so far.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// Key and value bytes so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// What a snapshot file holds, as `status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The log position the snapshot is at.
    pub position: Version,
    /// Keys.
    pub keys: u64,
    /// Key and value bytes.
    pub bytes: u64,
    /// The file's size.
    pub file_bytes: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "format:    {FORMAT}")?;
        writeln!(
            f,
            "position:  {} (every WRITE up to seq {})",
            self.position, self.position.seq
        )?;
        writeln!(f, "keys:      {}", self.keys)?;
        writeln!(f, "bytes:     {} (keys and values)", self.bytes)?;
        write!(f, "file size: {} bytes", self.file_bytes)
    }
}

/// `dsm snapshot save`: streams a snapshot from the active master into
/// `path` (written as `path.partial`, renamed once complete and checked).
/// Refuses to write more than `max_bytes` of keys and values.
///
/// # Errors
/// When the cluster cannot be reached, the stream breaks, the checksum does
/// not match, the file cannot be written, or the limit is exceeded.
pub async fn save(client: &Client, path: &Path, max_bytes: u64) -> anyhow::Result<Summary> {
    let partial = PathBuf::from(format!("{}.partial", path.display()));
    let mut stream = client.snapshot().await.context("cannot start a snapshot")?;
    let file =
        File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let mut out = BufWriter::new(file);
    let io = |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", partial.display());
    out.write_all(MAGIC).map_err(io)?;
    let mut digest = Digest::default();
    let mut position = None;
    let mut trailer = None;
    let mut frame_buf = Vec::new();
    let mut last_report = tokio::time::Instant::now();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|status| {
            anyhow::anyhow!(
                "the snapshot stream broke: {} (no file was written; try again)",
                status.message()
            )
        })?;
        match chunk.part {
            Some(Part::Header(header)) => {
                if header.format != FORMAT {
                    bail!(
                        "the master sent snapshot format {}; this dsm reads format {FORMAT}",
                        header.format
                    );
                }
                let at = header.position.map(Version::from).unwrap_or_default();
                out.write_all(&header_bytes(at)).map_err(io)?;
                position = Some(at);
            }
            Some(Part::Entries(entries)) => {
                if position.is_none() {
                    bail!("the master sent entries before the snapshot header");
                }
                for entry in entries.entries {
                    let version = entry.version.map(Version::from).unwrap_or_default();
                    digest.add(&entry.key, version, &entry.value);
                    if digest.bytes() > max_bytes {
                        drop(out);
                        let _ = std::fs::remove_file(&partial);
                        bail!(
                            "the snapshot is larger than --max-bytes {max_bytes}; nothing was kept (raise the limit)"
                        );
                    }
                    frame_buf.clear();
                    frame::encode(
                        version,
                        &entry.key,
                        &entry.value,
                        None,
                        false,
                        &mut frame_buf,
                    );
                    out.write_all(&frame_buf).map_err(io)?;
                }
                if last_report.elapsed() >= Duration::from_secs(1) {
                    eprintln!("{} keys, {} bytes so far", digest.keys(), digest.bytes());
                    last_report = tokio::time::Instant::now();
                }
            }
            Some(Part::Trailer(t)) => trailer = Some(t),
            None => bail!("the master sent an empty snapshot chunk"),
        }
    }
    let (Some(position), Some(trailer)) = (position, trailer) else {
        bail!("the snapshot stream ended early (no header or trailer); try again");
    };
    if (trailer.keys, trailer.bytes, trailer.crc32c)
        != (digest.keys(), digest.bytes(), digest.crc())
    {
        bail!(
            "the snapshot does not match its checksum ({} keys, crc {:#010x} received; {} keys, crc {:#010x} sent); try again",
            digest.keys(),
            digest.crc(),
            trailer.keys,
            trailer.crc32c
        );
    }
    out.write_all(&trailer_bytes(digest)).map_err(io)?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&partial, path)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), path.display()))?;
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(Summary {
        position,
        keys: digest.keys(),
        bytes: digest.bytes(),
        file_bytes,
    })
}

fn header_bytes(position: Version) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&FORMAT.to_le_bytes());
    header.extend_from_slice(&position.epoch.to_le_bytes());
    header.extend_from_slice(&position.seq.to_le_bytes());
    header
}

fn trailer_bytes(digest: Digest) -> Vec<u8> {
    let mut trailer = END.to_vec();
    trailer.extend_from_slice(&digest.keys().to_le_bytes());
    trailer.extend_from_slice(&digest.bytes().to_le_bytes());
    trailer.extend_from_slice(&digest.crc().to_le_bytes());
    trailer
}

/// Reads a snapshot file, calling `each` for every entry in order, and
/// checks it whole.
///
/// # Errors
/// A file that is not a snapshot, of another format, damaged or cut short,
/// named with what is wrong.
pub fn read(path: &Path, mut each: impl FnMut(wal::Record)) -> anyhow::Result<Summary> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let name = path.display();
    let mut input = Chunked::new(file);
    let read_err = |e: std::io::Error| anyhow::anyhow!("cannot read {name}: {e}");
    input.fill(MAGIC.len() + HEADER_LEN).map_err(read_err)?;
    let start = input.pending();
    let rest = start
        .strip_prefix(&MAGIC[..])
        .with_context(|| format!("{name} is not a DSM snapshot (no DSMSNAP1 magic)"))?;
    if rest.len() < HEADER_LEN {
        bail!("{name} is cut short: its header is incomplete");
    }
    let header = &rest[..HEADER_LEN];
    let number = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
    let format = u32::from_le_bytes(header[..4].try_into().unwrap_or_default());
    if format != FORMAT {
        bail!("{name} is snapshot format {format}; this dsm reads format {FORMAT}");
    }
    let position = Version::new(number(&header[4..12]), number(&header[12..20]));
    input.consume(MAGIC.len() + HEADER_LEN);
    let mut digest = Digest::default();
    loop {
        input.fill(END.len()).map_err(read_err)?;
        if input.pending().starts_with(&END[..]) {
            // The trailer ends the file: read to the end to see that it does.
            input.fill(END.len() + TRAILER_LEN + 1).map_err(read_err)?;
            let trailer = &input.pending()[END.len()..];
            if trailer.len() != TRAILER_LEN {
                bail!(
                    "{name} has a damaged trailer ({} bytes, not {TRAILER_LEN})",
                    trailer.len()
                );
            }
            let keys = number(&trailer[..8]);
            let total = number(&trailer[8..16]);
            let crc = u32::from_le_bytes(trailer[16..20].try_into().unwrap_or_default());
            if (keys, total, crc) != (digest.keys(), digest.bytes(), digest.crc()) {
                bail!(
                    "{name} does not match its checksum: {} keys and crc {:#010x} read, the trailer says {keys} and {crc:#010x}",
                    digest.keys(),
                    digest.crc()
                );
            }
            return Ok(Summary {
                position,
                keys,
                bytes: total,
                file_bytes,
            });
        }
        match frame::parse(input.pending()) {
            frame::Parsed::Record(record, len) => {
                digest.add(&record.key, record.version, &record.value);
                input.consume(len);
                each(record);
            }
            frame::Parsed::Incomplete { .. } if !input.at_end() => {
                let more = input.pending().len() + READ_CHUNK;
                input.fill(more).map_err(read_err)?;
            }
            frame::Parsed::Incomplete { .. } => {
                bail!(
                    "{name} is cut short after {} keys (no trailer)",
                    digest.keys()
                )
            }
            frame::Parsed::Bad(e) => {
                bail!("{name} is damaged after {} keys: {e}", digest.keys())
            }
        }
    }
}

/// Bytes read from a snapshot file at a time.
const READ_CHUNK: usize = 1 << 20;

/// A file read a chunk at a time, so that memory holds one entry and a chunk
/// whatever the snapshot's size.
struct Chunked {
    file: File,
    buf: Vec<u8>,
    /// Start of the bytes not consumed yet.
    start: usize,
    eof: bool,
}

impl Chunked {
    fn new(file: File) -> Chunked {
        Chunked {
            file,
            buf: Vec::new(),
            start: 0,
            eof: false,
        }
    }

    /// The bytes read and not consumed yet.
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
    }

    /// Whether the whole file has been read.
    fn at_end(&self) -> bool {
        self.eof
    }

    /// Reads until at least `n` bytes are pending, or the file ends.
    fn fill(&mut self, n: usize) -> std::io::Result<()> {
        if self.start > 0 && self.start == self.buf.len() || self.start > READ_CHUNK {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        while !self.eof && self.pending().len() < n {
            let have = self.buf.len();
            self.buf.resize(have + READ_CHUNK, 0);
            let got = self.file.read(&mut self.buf[have..]);
            self.buf.truncate(have + *got.as_ref().unwrap_or(&0));
            match got {
                Ok(got) => self.eof = got == 0,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Lock file that makes restores into one directory take turns.
const RESTORE_LOCK_FILE: &str = "restore.lock";
/// Present while a restore is writing: a directory that holds it is not a
/// log yet (a restore died midway), and no master starts on it.
pub const RESTORING_FILE: &str = "restoring";

/// What [`restore`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restored {
    /// The log was built from the snapshot.
    Built(Summary),
    /// The directory held a log already and `if_empty` was set: nothing
    /// changed (an init container run again after its first success).
    AlreadyHeld,
}

/// Whether `dir` holds a log (segments or terms), ignoring what an
/// unfinished restore left.
fn holds_log(dir: &Path) -> anyhow::Result<bool> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(Result::ok)
        .any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("kv_store.")
                || name == wal::TERMS_DIR
                || name == wal::LEGACY_EPOCHS_FILE
        }))
}

/// Refuses a log directory a restore did not finish writing.
///
/// # Errors
/// When `dir` holds the [`RESTORING_FILE`] mark.
pub fn check_not_restoring(dir: &Path) -> anyhow::Result<()> {
    if dir.join(RESTORING_FILE).exists() {
        bail!(
            "{} holds a snapshot restore that did not finish; run `dsm snapshot restore` again before starting a master on it",
            dir.display()
        );
    }
    Ok(())
}

/// Removes what an unfinished restore wrote (segments, terms), so that it
/// can start over.
fn clear_unfinished(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if name == wal::TERMS_DIR {
            std::fs::remove_dir_all(&path)
        } else if name.starts_with("kv_store.") {
            std::fs::remove_file(&path)
        } else {
            continue;
        }
        .with_context(|| {
            format!(
                "cannot remove {} left by an unfinished restore",
                path.display()
            )
        })?;
    }
    Ok(())
}

/// `dsm snapshot restore`: builds the log directory `dir` from the snapshot
/// at `path` (module doc).
///
/// Restores into one directory take turns (a lock file) and a restore is
/// marked in progress until its last step, so concurrent or repeated runs
/// (two master pods' init containers) are safe: one builds the log; with
/// `if_empty` the others find it and change nothing; a run that died midway
/// is started over, and no master starts on its leftovers
/// ([`check_not_restoring`]).
///
/// # Errors
/// A bad snapshot file (see [`read`]) — nothing is restored then; a
/// directory that already holds a log (unless `if_empty`); a write that fails.
pub fn restore(path: &Path, dir: &Path, if_empty: bool) -> anyhow::Result<Restored> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let lock_path = dir.join(RESTORE_LOCK_FILE);
    let lock = File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    let marker = dir.join(RESTORING_FILE);
    if marker.exists() {
        clear_unfinished(dir)?;
    } else if holds_log(dir)? {
        if if_empty {
            return Ok(Restored::AlreadyHeld);
        }
        bail!(
            "{} already holds a log; restore into an empty directory (and start the cluster's slaves empty)",
            dir.display()
        );
    }
    // Check the whole file before anything is written.
    read(path, |_| {})?;
    File::create(&marker).with_context(|| format!("cannot create {}", marker.display()))?;
    wal::sync_dir(dir)?;
    let summary = write_restored_log(path, dir)?;
    std::fs::remove_file(&marker).with_context(|| format!("cannot remove {}", marker.display()))?;
    wal::sync_dir(dir)?;
    Ok(Restored::Built(summary))
}

/// The restored log: one segment of epoch 1, epoch 1 claimed, its cut.
fn write_restored_log(path: &Path, dir: &Path) -> anyhow::Result<Summary> {
    let segment = wal::segment_path(dir, wal::segment_no(1, 1).unwrap_or(1));
    let mut out = BufWriter::new(
        File::create(&segment).with_context(|| format!("cannot create {}", segment.display()))?,
    );
    out.write_all(SEGMENT_MAGIC)?;
    let mut seq = 0u64;
    let mut written: anyhow::Result<()> = Ok(());
    let mut buf = Vec::new();
    let summary = read(path, |record| {
        seq += 1;
        buf.clear();
        frame::encode(
            Version::new(1, seq),
            &record.key,
            &record.value,
            None,
            false,
            &mut buf,
        );
        if written.is_ok()
            && let Err(e) = out.write_all(&buf)
        {
            written = Err(e.into());
        }
    })?;
    written.with_context(|| format!("cannot write {}", segment.display()))?;
    let file = out
        .into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", segment.display(), e.error()))?;
    file.sync_all()?;
    drop(file);
    crate::master::term::claim_next_epoch(dir, "dsm snapshot restore", 0)?;
    EpochHistory::record_cut(dir, 1, 1)?;
    Ok(summary)
}

#[cfg(test)]
mod tests;
