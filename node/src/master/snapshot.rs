//! Snapshots served by the active master (`Kv.Snapshot`): every key's latest
//! value at one log position, streamed with a checksum (the file format and
//! the client side are in [`crate::snapshot`]).
//!
//! Consistency: the position is the term's committed seq when the snapshot
//! starts, confirmed by a read barrier like a READ; the snapshot holds, for
//! each key, its latest record at or below that seq (a deleted key is left
//! out). The records are read from the log itself, in two passes (where each
//! key's latest record is, then the values in key order), under the log's
//! compaction lock: no compaction moves records meanwhile, and one snapshot
//! runs at a time.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::Master;
use super::error::MasterError;
use crate::proto::snapshot_chunk::Part;
use crate::proto::{
    SnapshotChunk, SnapshotEntries, SnapshotEntry, SnapshotHeader, SnapshotTrailer,
};
use crate::snapshot::{Digest, FORMAT};
use crate::version::Version;
use crate::wal::{self, CompactionLock, LogPos, LogReader, WalError};

/// Entries per streamed chunk at most (a chunk also stops growing past half
/// the largest message).
const CHUNK_ENTRIES: usize = 512;

fn log_error(e: WalError) -> MasterError {
    MasterError::internal(format!("cannot read the log for the snapshot: {e}"))
}

impl Master {
    /// Starts a snapshot (module doc).
    pub async fn snapshot(
        &self,
    ) -> Result<ReceiverStream<Result<SnapshotChunk, Status>>, MasterError> {
        let term = self.serving_term()?;
        let dir = self.config.log_dir.clone();
        let lock_dir = dir.clone();
        let lock = tokio::task::spawn_blocking(move || CompactionLock::try_take(&lock_dir))
            .await
            .map_err(|e| MasterError::internal(format!("snapshot task failed: {e}")))?
            .map_err(|e| match e {
                WalError::CompactionRunning { .. } => MasterError::unavailable(
                    "a compaction or another snapshot is running on this log; try again in a few seconds",
                ),
                e => log_error(e),
            })?;
        let position = Version::new(term.epoch, term.committed());
        term.barrier.ticket().await?;
        term.check_can_ack()?;
        let chunk_bytes = self.config.limits.max_message_bytes() / 2;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let _lock = lock;
            if let Err(error) = stream(dir, position, chunk_bytes, &tx).await {
                let _ = tx.send(Err(error.into())).await;
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

async fn stream(
    dir: PathBuf,
    position: Version,
    chunk_bytes: usize,
    tx: &mpsc::Sender<Result<SnapshotChunk, Status>>,
) -> Result<(), MasterError> {
    let scan_dir = dir.clone();
    let latest = tokio::task::spawn_blocking(move || {
        let mut latest: BTreeMap<Bytes, (Version, LogPos, bool)> = BTreeMap::new();
        let mut reader = LogReader::open(&scan_dir)?;
        reader.poll(|record, pos| {
            if record.version.seq <= position.seq {
                latest.insert(record.key.clone(), (record.version, pos, record.tombstone));
            }
        })?;
        Ok::<_, WalError>(latest)
    })
    .await
    .map_err(|e| MasterError::internal(format!("snapshot task failed: {e}")))?
    .map_err(log_error)?;
    let part = |part| Ok(SnapshotChunk { part: Some(part) });
    if tx
        .send(part(Part::Header(SnapshotHeader {
            format: FORMAT,
            position: Some(position.into()),
        })))
        .await
        .is_err()
    {
        return Ok(());
    }
    let wanted: Vec<(Bytes, Version, LogPos)> = latest
        .into_iter()
        .filter(|(_, (_, _, tombstone))| !tombstone)
        .map(|(key, (version, pos, _))| (key, version, pos))
        .collect();
    let mut digest = Digest::default();
    for chunk in wanted.chunks(CHUNK_ENTRIES) {
        let read_dir = dir.clone();
        let chunk = chunk.to_vec();
        let records = tokio::task::spawn_blocking(move || {
            chunk
                .into_iter()
                .map(|(key, version, pos)| {
                    let record = wal::read_at(&read_dir, pos)?;
                    if record.key != key || record.version != version {
                        return Err(WalError::Moved {
                            path: read_dir.clone(),
                            offset: pos.offset,
                            reason: "the record moved under the snapshot".into(),
                        });
                    }
                    Ok(record)
                })
                .collect::<Result<Vec<_>, WalError>>()
        })
        .await
        .map_err(|e| MasterError::internal(format!("snapshot task failed: {e}")))?
        .map_err(log_error)?;
        let mut entries = Vec::new();
        let mut size = 0;
        for record in records {
            digest.add(&record.key, record.version, &record.value);
            size += record.key.len() + record.value.len();
            entries.push(SnapshotEntry {
                key: record.key.to_vec(),
                version: Some(record.version.into()),
                value: record.value.to_vec(),
            });
            if size >= chunk_bytes {
                let full = std::mem::take(&mut entries);
                size = 0;
                if tx
                    .send(part(Part::Entries(SnapshotEntries { entries: full })))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
        if !entries.is_empty()
            && tx
                .send(part(Part::Entries(SnapshotEntries { entries })))
                .await
                .is_err()
        {
            return Ok(());
        }
    }
    let _ = tx
        .send(part(Part::Trailer(SnapshotTrailer {
            keys: digest.keys(),
            bytes: digest.bytes(),
            crc32c: digest.crc(),
        })))
        .await;
    Ok(())
}
