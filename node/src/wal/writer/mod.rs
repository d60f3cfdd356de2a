//! The active master's appender: recovery of the log tail on open, then group
//! commit on a dedicated thread.
//!
//! Why a std thread: `write` + `fdatasync` block for tens of microseconds to
//! milliseconds; on a dedicated thread they never stall the tokio workers, and
//! the thread's loop *is* the group commit: while it syncs one batch, new appends
//! queue in the channel, and the next iteration takes all of them at once and
//! covers them with a single `fdatasync`.
//!
//! An append answers twice: once the record is *written* (in the file, in the
//! page cache: its version and position are final), so that the master can
//! send it to the slaves while the fsync runs; and once it is *durable*.
//!
//! Invariant (persist before acknowledge): a record is reported durable only
//! after the `fdatasync` covering it returned success *and*, after that, no
//! newer epoch had been claimed in `terms/` ([`super::epochs::newest_term`]).
//! The second half is what makes replicating before the fsync safe: a successor
//! claims its epoch before it reads the log, so a record reported durable was
//! on disk before any successor read the log, and is before its cut. After any
//! write or sync error every later append fails ([`WalError::WriterFailed`])
//! because the kernel may have dropped the dirty pages (fsyncgate), so a retry
//! could acknowledge data that is not on disk; after a newer claim, every later
//! append fails with [`WalError::Fenced`]. Tested by
//! `group_commit_one_fsync_covers_waiting_appends`,
//! `failed_writer_stops_acknowledging` and
//! `a_newer_claim_stops_reporting_durable`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::frame::{self, MAGIC, MAX_RECORD_BYTES};
use super::segment::{Next, Segment};
use super::{
    EpochHistory, LogPos, Origin, Result, SegmentNo, WalError, epochs, list_segments,
    segment_epoch, segment_no, segment_path, sync_dir,
};
use crate::commit_window::CommitWindow;
use crate::version::Version;

/// TEST-ONLY (feature `chaos-broken-takeover`, set with
/// `--chaos-broken-takeover`): the writer of older versions, which did not
/// look for a newer claim after its fsync. That check alone would stop the
/// broken takeover's lost acknowledgements, and the nemesis must still see
/// them.
#[cfg(feature = "chaos-broken-takeover")]
pub static SKIP_CLAIM_CHECK: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn skip_claim_check() -> bool {
    #[cfg(feature = "chaos-broken-takeover")]
    {
        SKIP_CLAIM_CHECK.load(Ordering::SeqCst)
    }
    #[cfg(not(feature = "chaos-broken-takeover"))]
    {
        false
    }
}

/// Appends queued at most; further `append` calls wait (backpressure).
const QUEUE_DEPTH: usize = 4096;

/// A batch stops taking queued appends past this many bytes, to bound the
/// buffer and the time to the next acknowledgement.
const MAX_BATCH_BYTES: u64 = 8 << 20;

/// Appends records for one epoch, durably, with group commit.
///
/// Only the active master has one. Dropping it lets the thread finish the
/// appends already queued, then stop; [`close`](Self::close) also waits for that.
pub struct LogWriter {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    epoch: u64,
    /// How far the log is durable, or why it stopped being.
    synced: watch::Receiver<Synced>,
    /// Resolves (with an error) when the writer thread has exited.
    done: oneshot::Receiver<()>,
}

/// A record written to the log (its version and position are final) that
/// may not be durable yet.
#[derive(Debug)]
pub struct Appended {
    /// The record's version.
    pub version: Version,
    /// Where the record starts.
    pub pos: LogPos,
    synced: watch::Receiver<Synced>,
}

impl Appended {
    /// Resolves once the record is durable: its fsync returned and no newer
    /// epoch was claimed after it (module doc). Fails if the writer failed or
    /// was fenced before that; the record may then be in the log or not.
    pub async fn durable(mut self) -> Result<(Version, LogPos)> {
        let seq = self.version.seq;
        let reached = |s: &Synced| s.seq >= seq || s.failure.is_some();
        // A closed channel (the thread exited) still holds its last state.
        let _ = self.synced.wait_for(reached).await;
        let synced = self.synced.borrow();
        match &synced.failure {
            _ if synced.seq >= seq => Ok((self.version, self.pos)),
            Some(failure) => Err(failure.error()),
            None => Err(WalError::Closed),
        }
    }
}

/// How far the writer's records are durable.
#[derive(Clone, Debug, Default)]
struct Synced {
    /// Every record up to this seq is durable.
    seq: u64,
    /// Set when the writer stopped: nothing after `seq` will be durable.
    failure: Option<Failure>,
}

/// Why a writer stopped reporting records durable.
#[derive(Clone, Debug)]
enum Failure {
    /// A write or fsync of this file failed.
    Io(PathBuf, Arc<WalError>),
    /// A newer epoch was claimed.
    Fenced { epoch: u64, newer: u64 },
}

impl Failure {
    fn error(&self) -> WalError {
        match self {
            Failure::Io(path, source) => WalError::WriterFailed {
                path: path.clone(),
                source: source.clone(),
            },
            Failure::Fenced { epoch, newer } => WalError::Fenced {
                epoch: *epoch,
                newer: *newer,
            },
        }
    }
}

/// Counters of a writer, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// `fdatasync` calls that covered appends (one per batch).
    pub fsyncs: u64,
    /// Records made durable.
    pub records: u64,
    /// Bytes made durable.
    pub bytes: u64,
}

struct Shared {
    last_seq: AtomicU64,
    /// Number of the segment being appended to.
    live_segment: AtomicU64,
    fsyncs: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
}

struct Request {
    key: Bytes,
    value: Bytes,
    origin: Option<Origin>,
    tombstone: bool,
    /// Answered once the record is written.
    reply: oneshot::Sender<Result<(Version, LogPos)>>,
}

impl Request {
    fn payload_len(&self) -> u64 {
        frame::payload_len(&self.key, &self.value, self.origin)
    }
}

impl LogWriter {
    /// Recovers the log in `dir` and starts a writer for `epoch` whose first
    /// record gets seq `first_seq`.
    ///
    /// Must be called after [`EpochHistory::record_cut`]`(dir, epoch, first_seq)`:
    /// that cut must be the latest of the history ([`WalError::EpochMismatch`]
    /// otherwise), so a reader never meets a record of an epoch it cannot fence.
    ///
    /// Recovery: a torn tail of the newest segment (an incomplete or bad last
    /// frame with no valid frame after it: the previous writer crashed mid-write,
    /// so it was never acknowledged) is truncated with a warning naming the file,
    /// offset and bytes dropped. A bad frame followed by valid ones is
    /// [`WalError::Corrupt`] and nothing is changed. The newest segment is then
    /// fsynced: the previous writer may have left records in the page cache
    /// only, which this takeover read. Then the epoch's first segment is created (never appending to the old master's file, which a
    /// paused old master may still hold open); it sorts after every segment of
    /// older epochs, and a segment of a newer epoch means this writer is already
    /// [`WalError::Fenced`]. The writer rolls to the epoch's next segment before a
    /// batch once the current one holds `segment_bytes` or more. Under load each
    /// batch waits `commit_window` for more appends to share its fsync
    /// ([`crate::commit_window`]).
    ///
    /// Blocking I/O: call it from `spawn_blocking` in async code.
    pub fn open(
        dir: &Path,
        epoch: u64,
        first_seq: u64,
        segment_bytes: u64,
        commit_window: Duration,
    ) -> Result<Self> {
        Self::open_with(
            dir,
            epoch,
            first_seq,
            segment_bytes,
            commit_window,
            Hooks::default(),
        )
    }

    fn open_with(
        dir: &Path,
        epoch: u64,
        first_seq: u64,
        segment_bytes: u64,
        commit_window: Duration,
        hooks: Hooks,
    ) -> Result<Self> {
        let latest = EpochHistory::load(dir)?.latest();
        if latest != Some((epoch, first_seq)) {
            return Err(WalError::EpochMismatch {
                epoch,
                first_seq,
                latest,
            });
        }
        let first_no = segment_no(epoch, 1).ok_or_else(|| numbers_exhausted(dir))?;
        let segments = list_segments(dir)?;
        if let Some(&(newest, ref path)) = segments.last() {
            if newest >= first_no {
                return Err(WalError::Fenced {
                    epoch,
                    newer: segment_epoch(newest).max(epoch),
                });
            }
            truncate_torn_tail(newest, path)?;
            // What the previous writer left unsynced is in the page cache, and
            // this takeover has read it: make it durable before this term
            // serves anything built on it.
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|file| file.sync_data())
                .map_err(|e| WalError::io(path, e))?;
        }
        let active = create_segment(dir, first_no)?;
        tracing::info!(
            path = %active.path.display(),
            epoch,
            first_seq,
            "write-ahead log writer started"
        );
        let shared = Arc::new(Shared {
            last_seq: AtomicU64::new(first_seq.saturating_sub(1)),
            live_segment: AtomicU64::new(active.file_no),
            fsyncs: AtomicU64::new(0),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (synced_tx, synced) = watch::channel(Synced {
            seq: first_seq.saturating_sub(1),
            failure: None,
        });
        let (done_tx, done) = oneshot::channel();
        let worker = Worker {
            dir: dir.to_path_buf(),
            epoch,
            next_seq: first_seq,
            segment_bytes,
            active,
            failed: None,
            shared: shared.clone(),
            rx,
            synced: synced_tx,
            buf: Vec::new(),
            commit_window: CommitWindow::new(commit_window),
            hooks,
        };
        std::thread::Builder::new()
            .name("dsm-wal-writer".into())
            .spawn(move || worker.run(done_tx))
            .map_err(|e| WalError::io(dir, e))?;
        Ok(LogWriter {
            tx,
            shared,
            epoch,
            synced,
            done,
        })
    }

    /// Appends a record and returns its version and position once it is durable
    /// ([`Appended::durable`]). Seqs are assigned in log order, contiguously.
    ///
    /// Safe to call from many tasks at once; appends that arrive while a sync
    /// runs are written together and covered by the next single sync. After a
    /// write or sync error, this and every later call fail with
    /// [`WalError::WriterFailed`]. A record over [`MAX_RECORD_BYTES`] fails with
    /// [`WalError::TooLarge`] without affecting the writer. If the future is
    /// dropped after the request was queued, the record may still be written.
    ///
    /// `origin` names the client WRITE the record is, when the client numbered
    /// it; it is stored in the record.
    pub async fn append(
        &self,
        key: Bytes,
        value: Bytes,
        origin: Option<Origin>,
    ) -> Result<(Version, LogPos)> {
        self.write(key, Some(value), origin).await?.durable().await
    }

    /// Appends a Delete record (a tombstone) for `key`, like
    /// [`append`](Self::append).
    pub async fn append_delete(
        &self,
        key: Bytes,
        origin: Option<Origin>,
    ) -> Result<(Version, LogPos)> {
        self.write(key, None, origin).await?.durable().await
    }

    /// Appends a record (`value` `None`: a tombstone) and returns as soon as it
    /// is written, before its fsync: what lets a WRITE reach its slaves while
    /// the log syncs. Wait for [`Appended::durable`] before acknowledging it.
    /// Errors as [`append`](Self::append).
    pub async fn write(
        &self,
        key: Bytes,
        value: Option<Bytes>,
        origin: Option<Origin>,
    ) -> Result<Appended> {
        let tombstone = value.is_none();
        let value = value.unwrap_or_default();
        let len = frame::payload_len(&key, &value, origin);
        if len > u64::from(MAX_RECORD_BYTES) {
            return Err(WalError::TooLarge {
                len,
                max: MAX_RECORD_BYTES,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                key,
                value,
                origin,
                tombstone,
                reply,
            })
            .await
            .map_err(|_| WalError::Closed)?;
        let (version, pos) = rx.await.map_err(|_| WalError::Closed)??;
        Ok(Appended {
            version,
            pos,
            synced: self.synced.clone(),
        })
    }

    /// The segment appends go to now (compaction must stay below it).
    pub fn live_segment(&self) -> SegmentNo {
        self.shared.live_segment.load(Ordering::Acquire)
    }

    /// Highest durable seq written by this writer (`first_seq - 1` before any).
    pub fn last_seq(&self) -> u64 {
        self.shared.last_seq.load(Ordering::Acquire)
    }

    /// The epoch this writer writes.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Counters for metrics.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            fsyncs: self.shared.fsyncs.load(Ordering::Relaxed),
            records: self.shared.records.load(Ordering::Relaxed),
            bytes: self.shared.bytes.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting appends and waits until the queued ones are written and
    /// the thread has exited.
    pub async fn close(self) {
        let LogWriter { tx, done, .. } = self;
        drop(tx);
        // The sender is dropped (never sent) when the thread exits.
        let _ = done.await;
    }
}

/// Test-only controls of the writer thread.
#[derive(Clone, Default)]
struct Hooks {
    /// Held by a test to stop the thread between taking the first request of a
    /// batch and draining the queue, so the batch contents are deterministic.
    #[cfg(test)]
    gate: Option<Arc<std::sync::Mutex<()>>>,
    /// Makes the next write fail as if the disk had.
    #[cfg(test)]
    fail_writes: Arc<std::sync::atomic::AtomicBool>,
}

/// The segment being appended to.
struct Active {
    file: File,
    file_no: SegmentNo,
    path: PathBuf,
    /// Bytes in the file, i.e. the offset of the next frame.
    len: u64,
    /// Bytes known durable: the file is cut back to this after a failure.
    synced: u64,
}

/// State of the writer thread.
struct Worker {
    dir: PathBuf,
    epoch: u64,
    /// Seq of the next record.
    next_seq: u64,
    segment_bytes: u64,
    active: Active,
    /// The first write/sync error or newer claim: once set, nothing is
    /// reported durable any more.
    failed: Option<Failure>,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Request>,
    synced: watch::Sender<Synced>,
    /// Encoding buffer, reused across batches.
    buf: Vec<u8>,
    commit_window: CommitWindow,
    #[cfg_attr(not(test), allow(dead_code))]
    hooks: Hooks,
}

impl Worker {
    fn run(mut self, done: oneshot::Sender<()>) {
        while let Some(first) = self.rx.blocking_recv() {
            #[cfg(test)]
            if let Some(gate) = &self.hooks.gate {
                drop(gate.lock());
            }
            self.commit_window.wait();
            let batch = self.take_batch(first);
            self.commit_window.taken(batch.len());
            self.commit(batch);
        }
        drop(done);
    }

    /// Takes `first` and everything queued behind it (up to the byte cap).
    fn take_batch(&mut self, first: Request) -> Vec<Request> {
        let mut bytes = first.payload_len();
        let mut batch = vec![first];
        while bytes < MAX_BATCH_BYTES {
            match self.rx.try_recv() {
                Ok(req) => {
                    bytes += req.payload_len();
                    batch.push(req);
                }
                Err(_) => break,
            }
        }
        batch
    }

    /// Writes the batch, answers every append as written, then syncs it and
    /// reports it durable.
    fn commit(
        &mut self,
        #[cfg_attr(not(feature = "failpoints"), expect(unused_mut))] mut batch: Vec<Request>,
    ) {
        if let Some(failure) = &self.failed {
            for req in batch {
                let _ = req.reply.send(Err(failure.error()));
            }
            return;
        }
        fail::fail_point!(crate::crash_points::LOG_WRITE_LOST, |_| self
            .lose(&mut batch));
        let written = match self.write_batch(&batch) {
            Ok(written) => written,
            Err(e) => {
                let failure = self.fail(e);
                for req in batch {
                    let _ = req.reply.send(Err(failure.error()));
                }
                return;
            }
        };
        let (records, bytes) = (batch.len() as u64, self.buf.len() as u64);
        for (req, result) in batch.into_iter().zip(written) {
            // The appender may have given up waiting; the record is written anyway.
            let _ = req.reply.send(Ok(result));
        }
        match self.sync_batch() {
            Ok(()) => {
                let last = self.next_seq - 1;
                self.shared.last_seq.store(last, Ordering::Release);
                self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.shared.records.fetch_add(records, Ordering::Relaxed);
                self.shared.bytes.fetch_add(bytes, Ordering::Relaxed);
                crate::metrics::master().log_records.inc_by(records);
                self.synced.send_modify(|s| s.seq = last);
            }
            Err(e) => {
                let failure = self.fail(e);
                self.synced.send_modify(|s| s.failure = Some(failure));
            }
        }
    }

    /// Records the writer's first failure, after which it reports nothing
    /// durable.
    fn fail(&mut self, e: WalError) -> Failure {
        let failure = match e {
            WalError::Fenced { epoch, newer } => {
                tracing::warn!(
                    epoch,
                    newer,
                    "a newer master claimed the log; this writer stops reporting appends durable"
                );
                Failure::Fenced { epoch, newer }
            }
            e => {
                tracing::error!(
                    path = %self.active.path.display(),
                    error = %e,
                    "write-ahead log write failed; the writer stops acknowledging appends"
                );
                self.cut_back_to_synced();
                Failure::Io(self.active.path.clone(), Arc::new(e))
            }
        };
        self.failed = Some(failure.clone());
        failure
    }

    /// After a failed write or fsync, removes from the file what no fsync
    /// covered. Why: after a failed fsync the kernel may keep the pages
    /// readable while their data never reaches the disk, and may report the
    /// next fsync as a success (fsyncgate); the master that recovers the log
    /// next (this process as a standby, or the other) would read records that
    /// a power cut then takes away, and its slaves would serve them. Best
    /// effort: on a dead disk this fails too, and the records stay
    /// unacknowledged.
    fn cut_back_to_synced(&mut self) {
        let Active {
            file, path, synced, ..
        } = &self.active;
        match file.set_len(*synced).and_then(|()| file.sync_all()) {
            Ok(()) => tracing::warn!(
                path = %path.display(),
                offset = synced,
                "cut the log back to what the last successful fsync covered"
            ),
            Err(e) => tracing::error!(
                path = %path.display(),
                offset = synced,
                error = %e,
                "could not cut the log back to what the last successful fsync covered"
            ),
        }
    }

    /// Writes one batch (not synced yet); returns each record's version and
    /// position.
    fn write_batch(&mut self, batch: &[Request]) -> Result<Vec<(Version, LogPos)>> {
        if self.active.len >= self.segment_bytes {
            self.roll()?;
        }
        let written = self.encode(batch);
        let io_err = |e| WalError::io(&self.active.path, e);
        #[cfg(test)]
        if self.hooks.fail_writes.load(Ordering::SeqCst) {
            return Err(io_err(io::Error::other("injected write failure")));
        }
        self.active.file.write_all(&self.buf).map_err(io_err)?;
        self.next_seq += batch.len() as u64;
        self.active.len += self.buf.len() as u64;
        Ok(written)
    }

    /// Encodes the batch into `buf`, assigning versions and positions.
    fn encode(&mut self, batch: &[Request]) -> Vec<(Version, LogPos)> {
        self.buf.clear();
        let mut assigned = Vec::with_capacity(batch.len());
        for (i, req) in batch.iter().enumerate() {
            let version = Version::new(self.epoch, self.next_seq + i as u64);
            let pos = LogPos {
                file_no: self.active.file_no,
                offset: self.active.len + self.buf.len() as u64,
            };
            frame::encode(
                version,
                &req.key,
                &req.value,
                req.origin,
                req.tombstone,
                &mut self.buf,
            );
            assigned.push((version, pos));
        }
        assigned
    }

    /// Makes what was written durable, then checks that no newer epoch was
    /// claimed meanwhile (module doc).
    fn sync_batch(&mut self) -> Result<()> {
        let io_err = |e| WalError::io(&self.active.path, e);
        // Written but not durable: a crash here must lose the batch or keep
        // it whole; an injected error here is a failed fsync.
        fail::fail_point!(crate::crash_points::AFTER_LOG_WRITE_BEFORE_FSYNC, |arg| {
            Err(io_err(crate::crash_points::io_error(
                crate::crash_points::AFTER_LOG_WRITE_BEFORE_FSYNC,
                arg,
            )))
        });
        let fsync = crate::metrics::master().log_fsync_duration.start_timer();
        self.active.file.sync_data().map_err(io_err)?;
        fsync.observe_duration();
        self.active.synced = self.active.len;
        if skip_claim_check() {
            return Ok(());
        }
        let newer = epochs::newest_term(&self.dir)?;
        if newer > self.epoch {
            return Err(WalError::Fenced {
                epoch: self.epoch,
                newer,
            });
        }
        Ok(())
    }

    /// TEST-ONLY (fail point [`crate::crash_points::LOG_WRITE_LOST`]): answers
    /// the batch as written without writing it, and stops the thread for
    /// good: a power cut's effect on records no fsync covered yet.
    #[cfg(feature = "failpoints")]
    fn lose(&mut self, batch: &mut Vec<Request>) {
        use std::io::Write as _;
        let _ = writeln!(
            io::stderr(),
            "fail point {}: the batch never reaches the file; the writer stops",
            crate::crash_points::LOG_WRITE_LOST
        );
        let written = self.encode(batch);
        for (req, result) in batch.drain(..).zip(written) {
            let _ = req.reply.send(Ok(result));
        }
        loop {
            std::thread::park();
        }
    }

    /// Starts the epoch's next segment, unless a newer master has started: then
    /// this writer is deposed and must stop (its further records would be
    /// invalid anyway). A segment created by a writer deposed between the check
    /// and the creation is harmless: it is numbered under its own epoch, so it
    /// sorts below the new master's live segment, which followers and compaction
    /// never take for a sealed one.
    fn roll(&mut self) -> Result<()> {
        self.check_not_fenced()?;
        let next_no = self.active.file_no + 1;
        if segment_epoch(next_no) != self.epoch {
            return Err(numbers_exhausted(&self.dir));
        }
        let next = create_segment(&self.dir, next_no)?;
        tracing::debug!(path = %next.path.display(), "rolled to a new log segment");
        self.shared
            .live_segment
            .store(next.file_no, Ordering::Release);
        self.active = next;
        Ok(())
    }

    fn check_not_fenced(&self) -> Result<()> {
        match EpochHistory::load(&self.dir)?.latest() {
            Some((newer, _)) if newer > self.epoch => Err(WalError::Fenced {
                epoch: self.epoch,
                newer,
            }),
            _ => Ok(()),
        }
    }
}

/// Creates the first free segment numbered `from` or above within `from`'s
/// epoch (`create_new`, so two writers never share a file), writes the magic and
/// makes it durable.
fn create_segment(dir: &Path, from: SegmentNo) -> Result<Active> {
    let mut file_no = from;
    loop {
        let path = segment_path(dir, file_no);
        // O_APPEND: if a successor truncates a torn tail of this file while we
        // are paused, our next write lands at the new end instead of leaving a
        // hole of zeros that would look like corruption.
        match OpenOptions::new().append(true).create_new(true).open(&path) {
            Ok(mut file) => {
                let io_err = |e| WalError::io(&path, e);
                file.write_all(MAGIC).map_err(io_err)?;
                file.sync_all().map_err(io_err)?;
                sync_dir(dir)?;
                return Ok(Active {
                    file,
                    file_no,
                    path,
                    len: MAGIC.len() as u64,
                    synced: MAGIC.len() as u64,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                file_no += 1;
                if segment_epoch(file_no) != segment_epoch(from) {
                    return Err(numbers_exhausted(dir));
                }
            }
            Err(e) => return Err(WalError::io(&path, e)),
        }
    }
}

/// Truncates the torn tail of segment `file_no`, if it has one.
pub(super) fn truncate_torn_tail(file_no: SegmentNo, path: &Path) -> Result<()> {
    let io_err = |e| WalError::io(path, e);
    let mut seg = Segment::open(file_no, path.to_path_buf()).map_err(io_err)?;
    loop {
        match seg.next(true)? {
            Next::Record(..) => {}
            Next::End => return Ok(()),
            Next::Torn {
                offset,
                len,
                reason,
            } => {
                tracing::warn!(
                    path = %path.display(),
                    offset,
                    bytes_dropped = len,
                    %reason,
                    "truncating the torn tail of the write-ahead log (a write interrupted by a crash, never acknowledged)"
                );
                let file = OpenOptions::new().write(true).open(path).map_err(io_err)?;
                file.set_len(offset).map_err(io_err)?;
                if offset == 0 {
                    // Crashed while creating the segment: finish it.
                    file.write_all_at(MAGIC, 0).map_err(io_err)?;
                }
                file.sync_all().map_err(io_err)?;
                return Ok(());
            }
        }
    }
}

fn numbers_exhausted(dir: &Path) -> WalError {
    WalError::io(
        dir,
        io::Error::other("segment numbers exhausted (2^32 epochs or segments per epoch)"),
    )
}

#[cfg(test)]
mod tests;
