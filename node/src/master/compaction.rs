//! Log compaction by the active master: what may be dropped, and when it runs.
//!
//! The rule (see [`crate::wal::compact`] for the contract): a record is kept
//! unless the index holds a newer version of its key that is in the log *for
//! good* — at or below the term's committed seq ([`Term::committed`]). A newer
//! version above it might still be cut off by a takeover that did not see it,
//! and the older record would then be the key's latest valid one. A record a
//! client may still retry is kept too (see [`super::sessions`]).
//!
//! Tombstones (DELETEs): a tombstone that is the key's latest version and is
//! in the log for good is dropped with every older record of its key (all of
//! them are below the live segment, so in the same compaction); the index then
//! forgets the key ([`super::index::Index::purge`]). Nothing can bring the
//! value back: replay finds nothing of the key; a slave still holding an older
//! version is never read (the key is unknown); and a follower that had not read
//! as far as the tombstone when its segments were replaced notices the gap and
//! replays the log from scratch (`wal::LogReader::invalidated`). Checked by
//! `tests/kv_api.rs`.
//!
//! Only the active master compacts, one compaction at a time per log
//! directory (the log's own lock), only below its writer's live segment, and
//! the term is checked again right before the rename and before the deletes:
//! a master deposed meanwhile changes nothing. Checked by
//! `master::tests::compaction_never_drops_the_latest_valid_record_for_an_uncommitted_one`
//! and `wal::tests`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::error::MasterError;
use super::{Master, Term, lock, term};
use crate::proto::CompactReply;
use crate::wal::{self, Record, WalError};

impl Master {
    /// Compacts the segments below the live one, keeping what may still be
    /// needed (module doc).
    pub async fn compact(&self) -> Result<CompactReply, MasterError> {
        let term = self.serving_term()?;
        let master = self
            .me
            .upgrade()
            .ok_or_else(|| MasterError::unavailable("shutting down"))?;
        let dir = self.config.log_dir.clone();
        let live = term.writer.live_segment();
        let job_term = term.clone();
        let stats = tokio::task::spawn_blocking(move || {
            wal::compact(
                &dir,
                live,
                |record| master.keeps(&job_term, record),
                || master.still_current(&job_term),
            )
        })
        .await
        .map_err(|e| MasterError::internal(format!("compaction task failed: {e}")))?
        .map_err(|e| match e {
            WalError::CompactionRunning { .. } | WalError::Deposed(_) => {
                MasterError::unavailable(format!("compaction not done: {e}"))
            }
            e => MasterError::internal(format!("compaction failed: {e}")),
        })?;
        {
            let mut index = lock(&self.index);
            let mut sessions = lock(&self.sessions);
            for moved in &stats.moved {
                index.moved(&moved.key, moved.version, moved.pos);
                if let Some(origin) = moved.origin {
                    sessions.moved(origin, moved.version, moved.pos);
                }
            }
            for (key, version) in &stats.purged {
                index.purge(key, *version);
            }
        }
        info!(
            segments_before = stats.segments_before,
            segments_after = stats.segments_after,
            bytes_before = stats.bytes_before,
            bytes_after = stats.bytes_after,
            "log compacted"
        );
        Ok(CompactReply {
            segments_before: stats.segments_before as u64,
            segments_after: stats.segments_after as u64,
            bytes_before: stats.bytes_before,
            bytes_after: stats.bytes_after,
        })
    }

    /// The keep rule (module doc).
    pub(super) fn keeps(&self, term: &Term, record: &Record) -> bool {
        if let Some(origin) = record.origin
            && lock(&self.sessions).retains(origin, record.version)
        {
            return true;
        }
        let committed = term.committed();
        lock(&self.index).get(&record.key).is_none_or(|meta| {
            if meta.version > record.version {
                // Superseded: kept only while the newer version may still go.
                return meta.version.seq > committed;
            }
            // The latest: a tombstone in the log for good goes.
            !(record.tombstone && meta.deleted && record.version.seq <= committed)
        })
    }

    /// The term check before the rename and before the deletes.
    fn still_current(&self, term: &Term) -> wal::Result<()> {
        if term.is_deposed() {
            return Err(WalError::Deposed(format!(
                "the term of epoch {} ended",
                term.epoch
            )));
        }
        match term::newest_claim(&self.config.log_dir) {
            Ok(newest) if newest > term.epoch => {
                term.depose(&format!("another process claimed epoch {newest}"));
                Err(WalError::Deposed(format!(
                    "epoch {newest} was claimed after epoch {}",
                    term.epoch
                )))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(WalError::Deposed(format!("cannot check the term: {e}"))),
        }
    }

    /// Compacts automatically once enough sealed segments piled up.
    pub(super) async fn compaction_loop(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            let Ok(term) = self.serving_term() else {
                continue;
            };
            let live = term.writer.live_segment();
            let sealed = wal::sealed_segments(&self.config.log_dir, live).unwrap_or(0);
            if sealed >= self.config.compact_segments
                && let Err(e) = self.compact().await
            {
                warn!("automatic compaction failed: {e}");
            }
        }
    }
}
