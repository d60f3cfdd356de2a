//! Re-replication and drains: bringing every key back to `r` live holders
//! after a slave was lost, a WRITE fell short of its quorum, or a slave is
//! being drained; and the one-slave calls every path shares (`Master::put_to`,
//! `Master::get_from`, `Master::read_log`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{info, warn};

use super::error::MasterError;
use super::index::{Holders, SlaveIdx};
use super::slaves::SlaveHandle;
use super::{Master, Term, lock, placement};
use crate::metrics;
use crate::proto::{GetReply, GetRequest, PutRequest};
use crate::version::Version;
use crate::wal::{self, LogPos};

/// Keys repaired per round of the re-replication task.
const REPAIR_BATCH: usize = 4096;
/// Concurrent key repairs.
const REPAIR_PARALLELISM: usize = 32;

impl Master {
    /// One Put (of a tombstone when `value` is `None`) to one slave, with the
    /// slave timeout. Failures mark the slave dead, or depose this term if the
    /// slave was fenced by a newer master.
    pub(super) async fn put_to(
        &self,
        term: &Term,
        slave: &SlaveHandle,
        key: &Bytes,
        value: Option<&Bytes>,
        version: Version,
        force: bool,
    ) -> Result<bool, MasterError> {
        let request = PutRequest {
            key: key.to_vec(),
            value: value.map(|v| v.to_vec()).unwrap_or_default(),
            version: Some(version.into()),
            epoch: term.epoch,
            force,
            tombstone: value.is_none(),
        };
        let result = tokio::time::timeout(self.config.slave_timeout, slave.link.put(request)).await;
        match self.settle(term, slave, result) {
            Ok(reply) => {
                slave.writes.inc();
                Ok(reply.stored)
            }
            Err(status) => Err(status),
        }
    }

    /// One Get from one slave, with the slave timeout.
    pub(super) async fn get_from(
        &self,
        term: &Term,
        slave: &SlaveHandle,
        key: &Bytes,
    ) -> Result<GetReply, MasterError> {
        let request = GetRequest {
            key: key.to_vec(),
            epoch: term.epoch,
        };
        let result = tokio::time::timeout(self.config.slave_timeout, slave.link.get(request)).await;
        self.settle(term, slave, result)
    }

    /// Turns a slave call's outcome into a result, applying its side effects:
    /// FAILED_PRECONDITION means the slave knows a newer epoch (this master
    /// was deposed); a timeout or transport error removes the slave from the
    /// live set until it registers again.
    fn settle<T>(
        &self,
        term: &Term,
        slave: &SlaveHandle,
        result: Result<Result<T, Status>, tokio::time::error::Elapsed>,
    ) -> Result<T, MasterError> {
        let error = match result {
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(status)) => MasterError::from(status),
            Err(_) => MasterError::timed_out(format!(
                "slave {} did not answer within {:?}",
                slave.id, self.config.slave_timeout
            )),
        };
        match &error {
            MasterError::Refused(why) => {
                term.depose(&format!(
                    "slave {} rejected epoch {}: {why}",
                    slave.id, term.epoch
                ));
            }
            MasterError::Invalid(_) => {}
            _ => {
                if lock(&self.slaves).mark_dead(slave.idx) {
                    warn!(slave = %slave.id, "slave removed from the live set: {error}");
                    self.repair.notify_one();
                }
            }
        }
        Err(error)
    }

    /// The value of `key` at `version` from the log: the source of truth
    /// when no slave holds that version. If compaction moved the record
    /// since `pos` was recorded, it is looked up by scanning the log.
    pub(super) async fn read_log(
        &self,
        key: &Bytes,
        version: Version,
        pos: LogPos,
    ) -> Result<Bytes, MasterError> {
        let dir = self.config.log_dir.clone();
        let key = key.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<Option<Bytes>, wal::WalError> {
            if let Ok(record) = wal::read_at(&dir, pos)
                && record.key == key
                && record.version == version
            {
                return Ok(Some(record.value));
            }
            let mut reader = wal::LogReader::open(&dir)?;
            let mut value = None;
            reader.poll(|record, _| {
                if record.key == key && record.version == version {
                    value = Some(record.value.clone());
                }
            })?;
            Ok(value)
        })
        .await
        .map_err(|e| MasterError::internal(format!("log read task failed: {e}")))?
        .map_err(|e| MasterError::internal(format!("cannot read the log: {e}")))?;
        found.ok_or_else(|| {
            MasterError::data_loss(format!(
                "version {version} of the key is missing from the log"
            ))
        })
    }

    /// The live slaves among `holders`.
    pub(super) fn live_holders(&self, holders: &Holders) -> Vec<Arc<SlaveHandle>> {
        let slaves = lock(&self.slaves);
        holders
            .iter()
            .filter_map(|h| slaves.live_handle(*h))
            .collect()
    }

    /// The value of the latest version of `key` (`None` for a tombstone),
    /// from a holder or the log.
    async fn latest_value(
        &self,
        term: &Term,
        key: &Bytes,
    ) -> Option<(Option<Bytes>, Version, Holders)> {
        let meta = lock(&self.index).get(key)?;
        if meta.deleted {
            return Some((None, meta.version, meta.holders));
        }
        let holders = self.live_holders(&meta.holders);
        for slave in holders {
            if let Ok(reply) = self.get_from(term, &slave, key).await
                && reply.found
                && reply.version.map(Version::from) == Some(meta.version)
            {
                return Some((Some(Bytes::from(reply.value)), meta.version, meta.holders));
            }
        }
        let value = self.read_log(key, meta.version, meta.pos).await.ok()?;
        Some((Some(value), meta.version, meta.holders))
    }

    /// Brings `key` back to `r` live, non-draining holders. Returns the
    /// number of copies made.
    async fn repair_key(&self, term: &Term, key: Bytes) -> usize {
        let r = term.replication_factor as usize;
        let Some((value, version, holders)) = self.latest_value(term, &key).await else {
            return 0;
        };
        let (mut missing, targets) = {
            let slaves = lock(&self.slaves);
            let good = holders.iter().filter(|h| slaves.is_placeable(**h)).count();
            let targets: Vec<Arc<SlaveHandle>> = slaves
                .placeable()
                .into_iter()
                .filter(|s| !holders.contains(&s.idx))
                .collect();
            (r.saturating_sub(good), targets)
        };
        let mut copies = 0;
        for target in placement::write_order(&targets) {
            if missing == 0 || term.is_deposed() {
                break;
            }
            if self
                .put_to(term, &target, &key, value.as_ref(), version, false)
                .await
                .is_ok()
                && lock(&self.index).add_holder(&key, version, target.idx)
            {
                missing -= 1;
                copies += 1;
                metrics::master().re_replications.inc();
            }
        }
        copies
    }

    /// Overwrites a value on `slave` that no valid log record backs (a
    /// deposed master's late write) with the latest valid version.
    pub(super) async fn overwrite_stray(&self, term: &Term, slave: &SlaveHandle, key: Bytes) {
        if let Some((value, version, _)) = self.latest_value(term, &key).await
            && self
                .put_to(term, slave, &key, value.as_ref(), version, true)
                .await
                .is_ok()
        {
            lock(&self.index).add_holder(&key, version, slave.idx);
            info!(slave = %slave.id, %version, "overwrote a value left by a deposed master");
        }
    }

    /// One round of re-replication; returns (keys found under-replicated,
    /// copies made).
    async fn repair_round(&self, term: &Term) -> (usize, usize) {
        let r = term.replication_factor as usize;
        let placeable: HashSet<SlaveIdx> = lock(&self.slaves)
            .placeable()
            .iter()
            .map(|s| s.idx)
            .collect();
        let keys = lock(&self.index).under_replicated(r, |i| placeable.contains(&i), REPAIR_BATCH);
        let found = keys.len();
        let copies = futures::stream::iter(keys)
            .map(|key| self.repair_key(term, key))
            .buffer_unordered(REPAIR_PARALLELISM)
            .fold(0, |sum, n| async move { sum + n })
            .await;
        (found, copies)
    }

    /// Background re-replication: after a slave died, a WRITE fell short of
    /// its quorum, a stale replica was found, or every few seconds.
    pub(super) async fn repair_loop(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.repair.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            let Ok(term) = self.serving_term() else {
                continue;
            };
            let (found, copies) = self.repair_round(&term).await;
            if copies > 0 {
                info!(under_replicated = found, copies, "re-replicated keys");
            }
            // A full batch means there is more to do; a round that made
            // progress may have more to do as well.
            if found == REPAIR_BATCH || (copies > 0 && found > 0) {
                self.repair.notify_one();
            }
        }
    }

    /// Moves every key off `slave_id` so that it can be removed: new WRITEs
    /// stop going to it, every key regains `r` holders elsewhere, and it
    /// leaves the term's membership (a successor no longer counts it when it
    /// fences). A member that has not registered this term holds nothing this
    /// term placed: it only leaves the membership.
    pub async fn drain(&self, slave_id: &str) -> Result<u64, MasterError> {
        let term = self.serving_term()?;
        let r = term.replication_factor as usize;
        let registered = {
            let mut slaves = lock(&self.slaves);
            let remaining = slaves
                .placeable()
                .iter()
                .filter(|s| s.id != slave_id)
                .count();
            if remaining < r {
                return Err(MasterError::refused(format!(
                    "cannot drain {slave_id}: {remaining} slave(s) would remain and WRITEs need {r} (replication factor)"
                )));
            }
            slaves.start_drain(slave_id).is_some()
        };
        if !registered && !term.membership.lock().await.slaves.contains_key(slave_id) {
            return Err(MasterError::not_found(format!(
                "no slave named {slave_id} is a member of this cluster"
            )));
        }
        info!(slave = slave_id, "draining");
        let mut moved = 0u64;
        loop {
            let (found, copies) = self.repair_round(&term).await;
            moved += copies as u64;
            if found == 0 {
                break;
            }
            if copies == 0 {
                return Err(MasterError::unavailable(format!(
                    "drain of {slave_id} stalled with {found} key(s) still short of {r} replicas; retry"
                )));
            }
        }
        if registered {
            // A WRITE placed on it just before the drain began may still be
            // running; it ends within the slave timeout.
            tokio::time::sleep(self.config.slave_timeout).await;
        }
        self.leave_membership(&term, slave_id).await?;
        info!(slave = slave_id, moved, "drained");
        Ok(moved)
    }

    /// Removes `slave_id` from the term's saved membership.
    async fn leave_membership(&self, term: &Term, slave_id: &str) -> Result<(), MasterError> {
        let mut membership = term.membership.lock().await;
        if !membership.slaves.contains_key(slave_id) {
            return Ok(());
        }
        let mut updated = membership.clone();
        updated.slaves.remove(slave_id);
        let dir = self.config.log_dir.clone();
        let epoch = term.epoch;
        let saved = updated.clone();
        tokio::task::spawn_blocking(move || super::term::save_members(&dir, epoch, &saved))
            .await
            .map_err(|e| MasterError::internal(format!("membership task failed: {e}")))?
            .map_err(|e| MasterError::unavailable(format!("cannot record the membership: {e}")))?;
        *membership = updated;
        Ok(())
    }
}
