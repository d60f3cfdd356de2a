//! The store's single writer thread and its group commit.
//!
//! Every mutation of the store (a put, an epoch raise) is a [`Command`] sent
//! to this thread. It waits for one, under load waits the
//! [commit window](crate::commit_window), takes every other command queued by
//! then (up to [`MAX_BATCH_COMMANDS`] and [`MAX_BATCH_BYTES`]), checks each
//! against the index, appends the frames of those that apply to the file in
//! one `write`, syncs it (`fdatasync`), publishes them to the index, and only
//! then answers them: **persist, then acknowledge**. A failed write or sync
//! fails every command of its batch and cuts the file back to where the
//! batch began.
//!
//! Version order and fencing are checked here, by the one thread that
//! changes the index, against the index plus the batch's own earlier
//! commands (see the module documentation of [`super`]). A compaction copies
//! on its own thread while this one goes on appending, and is completed here,
//! between batches, so it never races a put ([`super::compaction`]).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::record::{encode_epoch, encode_put, put_frame_len};
use super::{PutOutcome, Shared, Slot, StoreError, ValueAt, compaction, file};
use crate::commit_window::CommitWindow;
use crate::version::Version;
use crate::wal::frame::{HEADER_LEN, MAX_RECORD_BYTES};

/// Commands waiting in the writer's channel. Bounded so that a flood of puts
/// backs up into the gRPC layer instead of into memory.
pub(super) const QUEUE_DEPTH: usize = 1024;
/// One batch takes at most this many commands…
const MAX_BATCH_COMMANDS: usize = 1024;
/// …or stops growing once its values add up to this many bytes.
pub(super) const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// The largest frame a put may take: the framing's limit on a payload.
const MAX_FRAME_BYTES: u64 = HEADER_LEN as u64 + MAX_RECORD_BYTES as u64;
/// How far past a batch the file is zero-filled when it runs out.
const PREALLOCATE_BYTES: u64 = 2 << 20;
/// Zeros are written in pieces of at most this size.
const ZERO_CHUNK: usize = 1 << 20;

/// One request to the writer thread.
pub(super) enum Command {
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
    /// The copy of a compaction ended (from its thread).
    Compacted(Result<compaction::Copied, StoreError>),
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

/// Starts the writer thread on the store `shared`, appending to `file` from
/// `end` (its length), which already holds `garbage` bytes of superseded
/// frames. It takes its commands from `rx`; `tx` is the sending side, for
/// a compaction to report on.
pub(super) fn start(
    shared: Arc<Shared>,
    file: Arc<File>,
    end: u64,
    garbage: u64,
    (rx, tx): (mpsc::Receiver<Command>, mpsc::WeakSender<Command>),
    options: super::StoreOptions,
    lock: File,
) -> Result<JoinHandle<()>, StoreError> {
    let writer = Writer {
        _lock: lock,
        broken: None,
        path: shared.path.clone(),
        shared,
        file,
        end,
        allocated: end,
        garbage,
        compact_at: options.compaction_min_bytes,
        compaction_min_bytes: options.compaction_min_bytes,
        rx,
        tx,
        compaction: None,
        commit_window: CommitWindow::new(options.commit_window),
        frames: Vec::new(),
    };
    std::thread::Builder::new()
        .name("slave-store-writer".into())
        .spawn(move || writer.run())
        .map_err(|e| StoreError::Write(format!("cannot start writer thread: {e}")))
}

/// The writer thread's state.
struct Writer {
    /// Set when the file can no longer be trusted to hold what the index
    /// says (a failed cut-back, a compaction renamed but not synced): every
    /// later batch is refused with this reason until the slave restarts and
    /// replays what is on disk.
    broken: Option<String>,
    shared: Arc<Shared>,
    /// The store file (the one in the shared state), appended to at `end`.
    file: Arc<File>,
    path: PathBuf,
    /// End of the frames: everything before it is synced.
    end: u64,
    /// Length of the file: zeros from `end` to here (see [`Writer::preallocate`]).
    allocated: u64,
    /// Bytes of the file that later frames superseded.
    garbage: u64,
    /// The file length from which a compaction is considered.
    compact_at: u64,
    compaction_min_bytes: u64,
    rx: mpsc::Receiver<Command>,
    /// Handed to a compaction's copy thread, to report on; weak, so that
    /// the writer stops once every [`super::Store`] is gone, even while a
    /// copy runs.
    tx: mpsc::WeakSender<Command>,
    /// The compaction whose copy is running, if one is.
    compaction: Option<compaction::Running>,
    commit_window: CommitWindow,
    /// The frames of the batch being built (reused between batches).
    frames: Vec<u8>,
    /// The data directory's lock, held until this thread ends, so no other
    /// store opens the directory while this one may still write to it.
    /// Declared last so that it is dropped last, after a running
    /// compaction's copy has stopped.
    _lock: File,
}

/// The answer owed to one command of a batch, sent after the commit.
enum Pending {
    /// A put and what it did (or why it was refused on its own).
    Put(
        oneshot::Sender<Result<PutOutcome, StoreError>>,
        Result<PutOutcome, StoreError>,
    ),
    Epoch(oneshot::Sender<Result<u64, StoreError>>, u64),
}

impl Pending {
    /// The reply channel of a command no batch will apply (its answer is
    /// only ever a failure).
    fn refused(cmd: Command) -> Option<Pending> {
        match cmd {
            Command::Put { reply, .. } => Some(Pending::Put(reply, Ok(PutOutcome::Stored))),
            Command::RaiseEpoch { reply, .. } => Some(Pending::Epoch(reply, 0)),
            Command::Close | Command::Compacted(_) => None,
        }
    }

    /// Answers with what the committed batch did.
    fn succeed(self) {
        match self {
            Pending::Put(reply, outcome) => {
                let _ = reply.send(outcome);
            }
            Pending::Epoch(reply, epoch) => {
                let _ = reply.send(Ok(epoch));
            }
        }
    }

    /// Answers that the batch failed and nothing of it applied.
    fn fail(self, message: &str) {
        match self {
            Pending::Put(reply, _) => {
                let _ = reply.send(Err(StoreError::Write(message.to_owned())));
            }
            Pending::Epoch(reply, _) => {
                let _ = reply.send(Err(StoreError::Write(message.to_owned())));
            }
        }
    }
}

impl Writer {
    /// Group commit loop: wait for one command, under load wait the commit
    /// window, take every other command queued by then (up to the batch
    /// limits), append them all in one write, sync, and only then answer
    /// them.
    fn run(mut self) {
        let mut closing = false;
        while !closing {
            let Some(first) = self.rx.blocking_recv() else {
                break;
            };
            self.commit_window.wait();
            let mut batch = self.take_batch(first);
            if let Some(pos) = batch.iter().position(|c| matches!(c, Command::Close)) {
                // Commands queued after Close are refused (their senders see Closed).
                batch.truncate(pos);
                closing = true;
            }
            let compacted = batch
                .iter()
                .position(|c| matches!(c, Command::Compacted(_)))
                .map(|pos| batch.remove(pos));
            self.commit_window.taken(batch.len());
            if !batch.is_empty() {
                self.apply(batch);
            }
            if let Some(Command::Compacted(copied)) = compacted {
                self.finish_compaction(copied);
            }
            if !closing {
                self.maybe_compact();
            }
        }
        // Refuse whatever is still queued.
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        if let Some(running) = self.compaction.take() {
            running.abandon(&self.shared.dir);
        }
        tracing::debug!("slave store writer stopped");
    }

    /// `first` and every command queued behind it, up to the batch limits.
    fn take_batch(&mut self, first: Command) -> Vec<Command> {
        let mut bytes = first.size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            let Ok(cmd) = self.rx.try_recv() else {
                break;
            };
            bytes += cmd.size();
            batch.push(cmd);
        }
        batch
    }

    /// Decides every command of `batch`, makes the frames of those that
    /// change something durable, publishes them and answers.
    fn apply(&mut self, batch: Vec<Command>) {
        if let Some(why) = &self.broken {
            let msg = format!(
                "the store stopped writing after an earlier failure ({why}); restart the slave"
            );
            for answer in batch.into_iter().filter_map(Pending::refused) {
                answer.fail(&msg);
            }
            return;
        }
        self.frames.clear();
        let mut answers = Vec::with_capacity(batch.len());
        let mut changes = Changes::default();
        let epoch = {
            let state = self.shared.read();
            let mut decide = Decide {
                index: &state.index,
                epoch: state.epoch,
                end: self.end,
                frames: &mut self.frames,
                changes: &mut changes,
            };
            for cmd in batch {
                answers.extend(decide.command(cmd));
            }
            decide.epoch
        };
        if !self.frames.is_empty()
            && let Err(e) = self.append()
        {
            tracing::error!(error = %e, "slave store batch failed; nothing of it was acknowledged");
            let msg = e.to_string();
            for answer in answers {
                answer.fail(&msg);
            }
            return;
        }
        self.garbage += changes.garbage;
        {
            let mut state = self.shared.write();
            state.epoch = epoch;
            for (key, slot) in changes.slots {
                if let Some(old) = super::set_slot(&mut state.index, &key, slot) {
                    self.garbage += old.frame_len(key.len());
                }
            }
        }
        // Persist, then acknowledge: the sync has returned and the index
        // shows the batch, so every answer describes what is on disk.
        answers.into_iter().for_each(Pending::succeed);
    }

    /// Appends the batch's frames at `end` and syncs them; on failure cuts
    /// the file back to `end`, so nothing unsynced is ever read back.
    fn append(&mut self) -> Result<(), StoreError> {
        let written = self
            .preallocate(self.end + self.frames.len() as u64)
            .and_then(|()| {
                self.file
                    .write_all_at(&self.frames, self.end)
                    .map_err(super::error::io_err("write", &self.path))
            })
            .and_then(|()| {
                #[cfg(test)]
                self.shared.faults.sync(&self.path)?;
                self.file
                    .sync_data()
                    .map_err(super::error::io_err("fsync", &self.path))
            });
        match written {
            Ok(()) => {
                self.end += self.frames.len() as u64;
                self.shared.synced_end.store(self.end, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                #[cfg(test)]
                let cut = self
                    .shared
                    .faults
                    .cut()
                    .and_then(|()| self.file.set_len(self.end));
                #[cfg(not(test))]
                let cut = self.file.set_len(self.end);
                match cut {
                    Ok(()) => self.allocated = self.end,
                    Err(cut) => {
                        // Frames of the failed batch may still be in the
                        // file, past the end the index knows.
                        tracing::error!(error = %cut, "cannot cut the slave store back after a failed write");
                        self.broken = Some(format!(
                            "cannot cut the file back after a failed write: {cut}"
                        ));
                    }
                }
                Err(e)
            }
        }
    }

    /// Makes sure the file holds synced zeros up to at least `needed`, by
    /// zero-filling [`PREALLOCATE_BYTES`] past it when it does not. A batch
    /// then overwrites blocks that already exist, so its `fdatasync` changes
    /// no file size or extent and needs no journal commit: on this ext4
    /// volume a 135-byte append syncs in p50 170 µs, an overwrite in 115 µs.
    /// Replay reads the zeros as the end of the file.
    fn preallocate(&mut self, needed: u64) -> Result<(), StoreError> {
        if needed <= self.allocated {
            return Ok(());
        }
        let target = needed + PREALLOCATE_BYTES;
        let zeros = vec![0u8; ZERO_CHUNK.min((target - self.allocated) as usize)];
        let mut at = self.allocated;
        while at < target {
            let n = zeros.len().min((target - at) as usize);
            self.file
                .write_all_at(&zeros[..n], at)
                .map_err(super::error::io_err("preallocate", &self.path))?;
            at += n as u64;
        }
        self.file
            .sync_data()
            .map_err(super::error::io_err("fsync", &self.path))?;
        self.allocated = target;
        Ok(())
    }

    /// Starts rewriting the file with only the newest frame of each key
    /// once it is large and at least half superseded, so disk use stays
    /// within about twice the live data and each byte is copied a bounded
    /// number of times. The copy runs beside this thread ([`compaction`]).
    fn maybe_compact(&mut self) {
        if self.compaction.is_some()
            || self.broken.is_some()
            || self.end < self.compact_at
            || self.garbage * 2 < self.end
        {
            return;
        }
        let started = compaction::start(
            self.shared.clone(),
            self.file.clone(),
            self.end,
            self.tx.clone(),
        );
        match started {
            Ok(running) => {
                tracing::debug!(bytes = self.end, "slave store compaction started");
                self.compaction = Some(running);
            }
            Err(e) => {
                self.compact_at = self.end + self.compaction_min_bytes;
                tracing::error!(error = %e, "slave store compaction could not start; keeping the current file");
            }
        }
    }

    /// Completes the running compaction with what its copy made.
    fn finish_compaction(&mut self, copied: Result<compaction::Copied, StoreError>) {
        let Some(running) = self.compaction.take() else {
            return;
        };
        let before = self.end;
        let copied_in = running.began.elapsed();
        let pause = std::time::Instant::now();
        let finished = match copied {
            Err(e) => {
                drop(running);
                Err(file::NewFileError::Before(e))
            }
            Ok(_) if self.broken.is_some() => {
                running.abandon(&self.shared.dir);
                return;
            }
            Ok(copied) => running.finish(&self.shared, &self.file, self.end, copied),
        };
        match finished {
            Ok(installed) => {
                compaction::close_in_background(std::mem::replace(&mut self.file, installed.file));
                self.end = installed.end;
                self.shared.synced_end.store(self.end, Ordering::Release);
                self.allocated = installed.end;
                self.garbage = installed.garbage;
                self.compact_at = self.compaction_min_bytes;
                #[cfg(test)]
                self.shared.faults.compacted();
                tracing::info!(
                    before,
                    after = self.end,
                    copy_ms = copied_in.as_millis() as u64,
                    writes_paused_ms = pause.elapsed().as_millis() as u64,
                    "slave store compacted"
                );
            }
            Err(file::NewFileError::Before(e)) => {
                // The old file is untouched; try again after more writes.
                let _ = file::remove_leftover(&self.shared.dir);
                self.compact_at = self.end + self.compaction_min_bytes;
                tracing::error!(error = %e, "slave store compaction failed; keeping the current file");
            }
            Err(file::NewFileError::Unsynced(e)) => {
                // The compacted file replaced the old one, but the rename may
                // not survive a crash: writing to either could lose puts.
                tracing::error!(error = %e, "slave store compaction could not sync its rename; refusing writes");
                self.broken = Some(format!("compaction could not sync its rename: {e}"));
            }
        }
    }
}

/// What a batch changes in the index once its frames are durable.
#[derive(Default)]
struct Changes {
    /// The new slots, one per key (the batch's last put of it).
    slots: Vec<(Bytes, Slot)>,
    /// Where each key's slot is in `slots`.
    by_key: HashMap<Bytes, usize>,
    /// Bytes of the batch's frames that later frames of it superseded.
    garbage: u64,
}

/// Decides a batch's commands against the index as it will be after the
/// commands before them, appending the frames of those that apply.
struct Decide<'a> {
    index: &'a super::Index,
    /// The fenced epoch after the commands decided so far.
    epoch: u64,
    /// Where the batch's frames will start in the file.
    end: u64,
    frames: &'a mut Vec<u8>,
    changes: &'a mut Changes,
}

impl Decide<'_> {
    /// Decides one command; returns the answer it is owed once the batch is durable.
    fn command(&mut self, cmd: Command) -> Option<Pending> {
        match cmd {
            Command::Put {
                key,
                value,
                version,
                force,
                epoch: token,
                reply,
            } => {
                let outcome = self.put(key, value, version, force, token);
                Some(Pending::Put(reply, outcome))
            }
            Command::RaiseEpoch {
                epoch: wanted,
                reply,
            } => Some(Pending::Epoch(reply, self.raise_epoch(wanted))),
            Command::Close | Command::Compacted(_) => None,
        }
    }

    fn put(
        &mut self,
        key: Bytes,
        value: Option<Bytes>,
        version: Version,
        force: bool,
        token: Option<u64>,
    ) -> Result<PutOutcome, StoreError> {
        if let Some(token) = token {
            // Fencing: a deposed master's put is refused, checked by the
            // thread that would apply it.
            if token < self.epoch {
                return Ok(PutOutcome::StaleEpoch { fenced: self.epoch });
            }
            self.raise_epoch(token);
        }
        let frame_len = put_frame_len(key.len(), value.as_ref().map_or(0, Bytes::len));
        if frame_len > MAX_FRAME_BYTES {
            return Err(StoreError::TooLarge {
                bytes: frame_len,
                max: MAX_FRAME_BYTES,
            });
        }
        let pending = self.changes.by_key.get(&key).copied();
        let current = match pending {
            Some(i) => Some(self.changes.slots[i].1.version),
            None => self.index.get(&key[..]).map(|slot| slot.version),
        };
        // Version order: never replace a newer-or-equal version unless forced.
        if let Some(current) = current
            && current >= version
            && !force
        {
            return Ok(PutOutcome::Superseded { current });
        }
        let value_at = encode_put(&key, version, value.as_deref(), self.frames);
        let slot = Slot {
            version,
            value: value.map(|v| ValueAt {
                offset: self.end + value_at as u64,
                len: v.len() as u32,
            }),
        };
        match pending {
            Some(i) => {
                let old = std::mem::replace(&mut self.changes.slots[i].1, slot);
                self.changes.garbage += old.frame_len(key.len());
            }
            None => {
                self.changes
                    .by_key
                    .insert(key.clone(), self.changes.slots.len());
                self.changes.slots.push((key, slot));
            }
        }
        Ok(PutOutcome::Stored)
    }

    /// Raises the fenced epoch to `wanted` if it is higher; returns the
    /// fenced epoch after.
    fn raise_epoch(&mut self, wanted: u64) -> u64 {
        if wanted > self.epoch {
            encode_epoch(wanted, self.frames);
            self.epoch = wanted;
        }
        self.epoch
    }
}
