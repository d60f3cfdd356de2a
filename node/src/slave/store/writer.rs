//! The store's single writer thread and its group commit.
//!
//! Every mutation of the store (a put, an epoch raise) is a [`Command`] sent
//! to this thread. It waits for one, under load waits the
//! [commit window](crate::commit_window), takes every other command queued by
//! then (up to [`MAX_BATCH_COMMANDS`] and [`MAX_BATCH_BYTES`]), applies them
//! all in one write transaction, commits it (fsync), and only then answers
//! them: **persist, then acknowledge**. A failed transaction fails every
//! command of its batch, none of which applied.
//!
//! Version order and fencing are checked here, inside the transaction that
//! would apply the put (see the module documentation of [`super`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;
use redb::{Database, ReadableTable as _, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::error::db_err;
use super::record::{decode_record, encode_record};
use super::{META, META_EPOCH, PutOutcome, StoreError, VALUES};
use crate::commit_window::CommitWindow;
use crate::version::Version;

/// Commands waiting in the writer's channel. Bounded so that a flood of puts
/// backs up into the gRPC layer instead of into memory.
pub(super) const QUEUE_DEPTH: usize = 1024;
/// One batch takes at most this many commands…
const MAX_BATCH_COMMANDS: usize = 1024;
/// …or stops growing once its values add up to this many bytes.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

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

/// Starts the writer thread on `db`, taking its commands from `rx` and
/// publishing the fenced epoch in `epoch` after each commit.
pub(super) fn start(
    db: Arc<Database>,
    epoch: Arc<AtomicU64>,
    rx: mpsc::Receiver<Command>,
    commit_window: CommitWindow,
) -> Result<JoinHandle<()>, StoreError> {
    let writer = Writer {
        db,
        epoch,
        rx,
        commit_window,
    };
    std::thread::Builder::new()
        .name("slave-store-writer".into())
        .spawn(move || writer.run())
        .map_err(|e| StoreError::Write(format!("cannot start writer thread: {e}")))
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

impl Pending {
    /// The command's reply channel, for a command the batch did not reach
    /// (its answer is only ever a failure).
    fn unreached(cmd: Command) -> Option<Pending> {
        match cmd {
            Command::Put { reply, .. } => Some(Pending::Put(reply, PutOutcome::Stored)),
            Command::RaiseEpoch { reply, .. } => Some(Pending::Epoch(reply, 0)),
            Command::Close => None,
        }
    }

    /// Answers with what the committed batch did.
    fn succeed(self) {
        match self {
            Pending::Put(reply, outcome) => {
                let _ = reply.send(Ok(outcome));
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
    /// limits), apply them all in one write transaction, commit (fsync), and
    /// only then answer them.
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

    fn apply(&self, batch: Vec<Command>) {
        let committed_epoch = self.epoch.load(Ordering::Acquire);
        let mut answers = Vec::with_capacity(batch.len());
        match self.write_batch(batch, committed_epoch, &mut answers) {
            Ok(epoch) => {
                // Persist, then acknowledge: the commit has returned, so the
                // epoch and every answer below describe what is on disk.
                self.epoch.store(epoch, Ordering::Release);
                answers.into_iter().for_each(Pending::succeed);
            }
            Err((e, replies)) => {
                tracing::error!(error = %e, "slave store batch failed; nothing of it applied");
                let msg = e.to_string();
                for answer in replies {
                    answer.fail(&msg);
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
        epoch: u64,
        answers: &mut Vec<Pending>,
    ) -> Result<u64, (StoreError, Vec<Pending>)> {
        // The replies are moved into `answers` as each command is handled, so
        // that a failure can still answer all of them.
        let mut commands = batch.into_iter();
        match self.transact(&mut commands, epoch, answers) {
            Ok(epoch) => Ok(epoch),
            Err(e) => {
                let mut pending = std::mem::take(answers);
                // Commands not reached yet still need an answer.
                pending.extend(commands.filter_map(Pending::unreached));
                Err((e, pending))
            }
        }
    }

    /// Applies `commands` in one write transaction, pushing each one's
    /// answer to `answers`, and commits it if anything changed; returns the
    /// epoch after them. Stops at the first error (the transaction is then
    /// dropped, so nothing of it applies).
    fn transact(
        &self,
        commands: &mut impl Iterator<Item = Command>,
        epoch: u64,
        answers: &mut Vec<Pending>,
    ) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let (epoch, dirty) = {
            let mut batch = Batch::open(&txn, epoch)?;
            for cmd in commands.by_ref() {
                answers.extend(batch.apply(cmd)?);
            }
            (batch.epoch, batch.dirty)
        };
        if dirty {
            txn.commit().map_err(db_err)?;
        } else {
            // Every answer describes state committed by earlier batches.
            txn.abort().map_err(db_err)?;
        }
        Ok(epoch)
    }
}

/// The tables of one batch's write transaction, and what the batch has done
/// so far.
struct Batch<'txn> {
    values: Table<'txn, &'static [u8], &'static [u8]>,
    meta: Table<'txn, &'static str, &'static [u8]>,
    /// The fenced epoch after the commands applied so far.
    epoch: u64,
    /// Whether anything was written (else the transaction is not committed).
    dirty: bool,
}

impl<'txn> Batch<'txn> {
    fn open(txn: &'txn WriteTransaction, epoch: u64) -> Result<Batch<'txn>, StoreError> {
        Ok(Batch {
            values: txn.open_table(VALUES).map_err(db_err)?,
            meta: txn.open_table(META).map_err(db_err)?,
            epoch,
            dirty: false,
        })
    }

    /// Applies one command; returns the answer it is owed after the commit.
    fn apply(&mut self, cmd: Command) -> Result<Option<Pending>, StoreError> {
        match cmd {
            Command::Put {
                key,
                value,
                version,
                force,
                epoch: token,
                reply,
            } => {
                let outcome = self.put(&key, value.as_deref(), version, force, token)?;
                Ok(Some(Pending::Put(reply, outcome)))
            }
            Command::RaiseEpoch {
                epoch: wanted,
                reply,
            } => Ok(Some(Pending::Epoch(reply, self.raise_epoch(wanted)?))),
            Command::Close => Ok(None),
        }
    }

    fn put(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        version: Version,
        force: bool,
        token: Option<u64>,
    ) -> Result<PutOutcome, StoreError> {
        if let Some(token) = token {
            // Fencing: a deposed master's put is refused, checked in the
            // transaction that would apply it.
            if token < self.epoch {
                return Ok(PutOutcome::StaleEpoch { fenced: self.epoch });
            }
            self.raise_epoch(token)?;
        }
        let current = match self.values.get(key).map_err(db_err)? {
            Some(v) => Some(decode_record(key, v.value())?.0),
            None => None,
        };
        // Version order: never replace a newer-or-equal version unless forced.
        if let Some(current) = current
            && current >= version
            && !force
        {
            return Ok(PutOutcome::Superseded { current });
        }
        let record = encode_record(version, value);
        self.values.insert(key, &record[..]).map_err(db_err)?;
        self.dirty = true;
        Ok(PutOutcome::Stored)
    }

    /// Raises the fenced epoch to `wanted` if it is higher; returns the
    /// fenced epoch after.
    fn raise_epoch(&mut self, wanted: u64) -> Result<u64, StoreError> {
        if wanted > self.epoch {
            self.meta
                .insert(META_EPOCH, &wanted.to_be_bytes()[..])
                .map_err(db_err)?;
            self.epoch = wanted;
            self.dirty = true;
        }
        Ok(self.epoch)
    }
}
