//! WATCH: every change (WRITE, DELETE) of a key or a prefix, in log order,
//! from a log position, as a server stream.
//!
//! A watcher is a follower of the log: its own [`LogReader`] reads the records
//! from the position asked for, and sends those at or below the term's
//! committed seq (in the log for good, so never taken back by a takeover), in
//! seq order, waking whenever that seq grows. Nothing of it is on the WRITE
//! path: a slow watcher only falls behind in the log, and is cut off
//! (RESOURCE_EXHAUSTED) once its stream has stayed full for [`SLOW_WATCHER`].
//!
//! Positions are seqs. A watch from a seq that compaction may already have
//! dropped records at (see [`Dropped`]) is refused with OUT_OF_RANGE, as is a
//! running watch whose reader finds that compaction dropped a change it had
//! not sent: the client re-reads, then watches from then on. When the term
//! ends the stream ends with UNAVAILABLE; the client resumes against the new
//! master from the last seq it saw plus one, and sees no gap and no duplicate
//! (the new master reads the same log). Checked by
//! `tests/kv_api.rs::a_watch_resumes_across_a_failover_without_gap_or_duplicate`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::debug;

use super::error::MasterError;
use super::{Master, Term};
use crate::metrics;
use crate::proto::{Change, WatchBatch};
use crate::wal::{Dropped, LogReader, Record};

/// A watcher whose stream stays full this long is cut off.
pub const SLOW_WATCHER: Duration = Duration::from_secs(5);
/// Changes per streamed batch at most.
const BATCH: usize = 256;
/// Key and value bytes one watcher reads from the log at a time: with its
/// stream's few batches, what a watcher holds in memory.
const READ_AHEAD: usize = 4 << 20;
/// Batches waiting in a watcher's stream (one place is kept for its error).
const STREAM_DEPTH: usize = 4;
/// Shortest pause between two reads of the log by one watcher, so that a
/// busy log is read in batches.
const MIN_POLL: Duration = Duration::from_millis(5);

/// What to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    /// Key prefix (empty: every key).
    pub prefix: Bytes,
    /// Only the key equal to `prefix`.
    pub exact: bool,
    /// First seq wanted; 0: from now.
    pub from_seq: u64,
    /// Send the values of WRITEs.
    pub values: bool,
}

impl WatchSpec {
    fn wants(&self, key: &[u8]) -> bool {
        if self.exact {
            key == &self.prefix[..]
        } else {
            key.starts_with(&self.prefix)
        }
    }
}

/// A watcher's place in the count; freed when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>, limit: usize) -> Result<Slot, MasterError> {
        let taken = count.fetch_add(1, Ordering::AcqRel);
        if taken >= limit {
            count.fetch_sub(1, Ordering::AcqRel);
            return Err(MasterError::exhausted(format!(
                "this master serves {limit} watchers, the limit (--max-watchers); close one or watch a wider prefix"
            )));
        }
        metrics::master().watchers.inc();
        Ok(Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::master().watchers.dec();
    }
}

fn compacted(from: u64, dropped: Dropped) -> MasterError {
    MasterError::Compacted {
        message: format!(
            "changes at seq {from} and after may have been compacted away (records up to seq {} were); \
             re-read the keys, then watch from now",
            dropped.any
        ),
        complete_from: dropped.any + 1,
    }
}

impl Master {
    /// Starts a watch (module doc).
    pub async fn watch(
        &self,
        spec: WatchSpec,
    ) -> Result<ReceiverStream<Result<WatchBatch, Status>>, MasterError> {
        if spec.prefix.len() > self.config.limits.max_key_bytes {
            return Err(MasterError::invalid(format!(
                "the WATCH prefix is {} bytes, over the key limit of {} bytes",
                spec.prefix.len(),
                self.config.limits.max_key_bytes
            )));
        }
        let term = self.serving_term()?;
        let slot = Slot::take(&self.watchers, self.config.limits.max_watchers)?;
        let dir = self.config.log_dir.clone();
        let from = match spec.from_seq {
            0 => term.committed() + 1,
            from => from,
        };
        let dropped = tokio::task::spawn_blocking(move || Dropped::load(&dir))
            .await
            .map_err(|e| MasterError::internal(format!("watch task failed: {e}")))?
            .map_err(|e| MasterError::internal(format!("cannot read the log: {e}")))?;
        if from <= dropped.any {
            return Err(compacted(from, dropped));
        }
        let (tx, rx) = mpsc::channel(STREAM_DEPTH);
        let dir = self.config.log_dir.clone();
        // A batch holds at most one largest value's worth of bytes beyond its
        // first change, so it always fits in a message.
        let batch_bytes = self.config.limits.max_value_bytes + self.config.limits.max_key_bytes;
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(error) = follow(&dir, &term, &spec, from, batch_bytes, &tx).await {
                let _ = tx.try_send(Err(error.into()));
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// Sends the watched changes from `from` on until the term ends or the
/// client goes.
async fn follow(
    dir: &std::path::Path,
    term: &Term,
    spec: &WatchSpec,
    from: u64,
    batch_bytes: usize,
    tx: &mpsc::Sender<Result<WatchBatch, Status>>,
) -> Result<(), MasterError> {
    let open_dir = dir.to_path_buf();
    let mut reader = tokio::task::spawn_blocking(move || LogReader::open(&open_dir))
        .await
        .map_err(|e| MasterError::internal(format!("watch task failed: {e}")))?
        .map_err(|e| MasterError::internal(format!("cannot read the log: {e}")))?;
    let mut committed = term.watch_committed();
    let ended = term.ended();
    // Records read but not yet committed.
    let mut held: VecDeque<Record> = VecDeque::new();
    let mut next = from;
    send(tx, Vec::new(), from - 1).await?;
    loop {
        let (back, polled) = tokio::task::spawn_blocking(move || {
            let mut fresh = Vec::new();
            let mut bytes = 0;
            // Bounded: a watcher far behind reads the log a piece at a time.
            let result = reader.poll_at_most(READ_AHEAD, |record, _| {
                bytes += record.key.len() + record.value.len();
                if record.version.seq >= from {
                    fresh.push(record.clone());
                }
            });
            (reader, result.map(|_| (bytes >= READ_AHEAD, fresh)))
        })
        .await
        .map_err(|e| MasterError::internal(format!("watch task failed: {e}")))?;
        reader = back;
        let (more, fresh) =
            polled.map_err(|e| MasterError::internal(format!("cannot read the log: {e}")))?;
        held.extend(fresh);
        if reader.invalidated() {
            let dropped = Dropped::load(dir).unwrap_or_default();
            metrics::master()
                .watchers_cut_off
                .with_label_values(&["compacted"])
                .inc();
            return Err(compacted(next, dropped));
        }
        let upto = term.committed();
        let mut batch = Vec::new();
        let mut bytes = 0;
        while held.front().is_some_and(|r| r.version.seq <= upto) {
            let Some(record) = held.pop_front() else {
                break;
            };
            if !spec.wants(&record.key) {
                next = record.version.seq + 1;
                continue;
            }
            let size = record.key.len() + if spec.values { record.value.len() } else { 0 };
            if !batch.is_empty() && (batch.len() == BATCH || bytes + size > batch_bytes) {
                send(tx, std::mem::take(&mut batch), next - 1).await?;
                bytes = 0;
            }
            next = record.version.seq + 1;
            bytes += size;
            batch.push(Change {
                key: record.key.to_vec(),
                version: Some(record.version.into()),
                deleted: record.tombstone,
                value: if spec.values {
                    record.value.to_vec()
                } else {
                    Vec::new()
                },
            });
        }
        if !batch.is_empty() {
            send(tx, batch, next - 1).await?;
        }
        if more && held.len() < BATCH {
            // More of the log is there to read already, and what was read is
            // sent (not waiting for its commit).
            continue;
        }
        tokio::time::sleep(MIN_POLL).await;
        tokio::select! {
            changed = committed.changed() => if changed.is_err() {
                return Ok(());
            },
            () = ended.cancelled() => {
                return Err(MasterError::unavailable(format!(
                    "this master stepped down; watch the active one from seq {next}"
                )));
            }
            () = tx.closed() => {
                debug!("watcher went away");
                return Ok(());
            }
        }
    }
}

/// Sends one batch, cutting the watcher off if its stream stays full. The
/// last place of the stream is kept free for the error that ends it.
async fn send(
    tx: &mpsc::Sender<Result<WatchBatch, Status>>,
    changes: Vec<Change>,
    position: u64,
) -> Result<(), MasterError> {
    let deadline = tokio::time::Instant::now() + SLOW_WATCHER;
    while tx.capacity() <= 1 {
        if tx.is_closed() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            metrics::master()
                .watchers_cut_off
                .with_label_values(&["slow"])
                .inc();
            return Err(MasterError::exhausted(format!(
                "this watcher did not keep up (its stream stayed full for {SLOW_WATCHER:?}); re-read, then watch again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Closed: the client went away, nothing to do.
    let _ = tx.try_send(Ok(WatchBatch { changes, position }));
    Ok(())
}
