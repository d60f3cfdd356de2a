//! The active master's data paths: WRITE, READ, re-replication, drain and
//! log compaction.
//!
//! Invariant (persist before acknowledge): a WRITE is appended to the log and
//! fsynced (group commit) *before* it is sent to any slave, and acknowledged
//! only after every slave of its quorum stored it and the lease still holds.
//! Checked by the integration tests `kill_master_during_writes_loses_nothing`
//! and `restart_whole_cluster_keeps_acknowledged_writes`.
//!
//! Rule for WRITEs short of a quorum (DESIGN §4 asks us to pick one): a WRITE
//! is checked against the live slave count before it is logged, so the
//! common case fails cleanly with nothing logged. If slaves die *while* it
//! replicates, the record is already in the log: the client gets UNAVAILABLE
//! ("outcome unknown", like a timeout), the key's metadata moves to the new
//! version with whatever replicas acked, and background re-replication
//! completes it from a replica or from the log. The log is the source of
//! truth; nothing in it is ever rolled back.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use super::index::SlaveIdx;
use super::slaves::SlaveHandle;
use super::{Master, Term, lock, placement};
use crate::metrics;
use crate::proto::{CompactReply, GetReply, GetRequest, PutRequest};
use crate::version::Version;
use crate::wal::{self, LogPos};

/// TEST-ONLY (feature `chaos-broken-ack`, flag `--chaos-broken-ack`):
/// when set, a WRITE is acknowledged as soon as it is logged and replicated
/// in the background — the bug the nemesis must catch (a READ right after
/// the acknowledgement still finds the previous version).
#[cfg(feature = "chaos-broken-ack")]
pub static BROKEN_ACK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Keys repaired per round of the re-replication task.
const REPAIR_BATCH: usize = 4096;
/// Concurrent key repairs.
const REPAIR_PARALLELISM: usize = 32;

impl Master {
    /// A WRITE: validate, log (fsync), replicate to `r` slaves, acknowledge.
    pub async fn write(&self, key: Bytes, value: Bytes) -> Result<Version, Status> {
        self.config
            .limits
            .check_write(&key, &value)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let term = self.serving_term()?;
        let r = self.config.replication_factor as usize;
        let candidates = placement::write_order(&lock(&self.slaves).placeable());
        if candidates.len() < r {
            return Err(Status::unavailable(format!(
                "only {} slave(s) are live; a WRITE needs {r} (replication factor); nothing was written",
                candidates.len()
            )));
        }
        fail::fail_point!(crate::faults::BEFORE_LOG_APPEND, |_| {
            crate::faults::crash(crate::faults::BEFORE_LOG_APPEND)
        });
        let (version, pos) = term
            .writer
            .append(key.clone(), value.clone())
            .await
            .map_err(|e| term.log_append_failed(e))?;
        fail::fail_point!(crate::faults::AFTER_FSYNC_BEFORE_REPLICATION, |_| {
            crate::faults::crash(crate::faults::AFTER_FSYNC_BEFORE_REPLICATION)
        });
        self.log_end_seq.fetch_max(version.seq, Ordering::SeqCst);
        #[cfg(feature = "chaos-broken-ack")]
        if BROKEN_ACK.load(Ordering::SeqCst)
            && let Some(me) = self.me.upgrade()
        {
            // Deliberately wrong: acknowledge now, replicate later.
            tokio::spawn(async move {
                let acked = me
                    .replicate(&term, &key, &value, version, &candidates)
                    .await;
                lock(&me.index).record(&key, version, pos, acked);
                me.repair.notify_one();
            });
            return Ok(version);
        }
        let acked = self
            .replicate(&term, &key, &value, version, &candidates)
            .await;
        let reached = acked.len();
        lock(&self.index).record(&key, version, pos, acked);
        if reached < r {
            self.repair.notify_one();
            term.check_can_ack()?;
            return Err(Status::unavailable(format!(
                "WRITE {version} is in the log but reached only {reached} of {r} slaves before they failed; \
                 it will be re-replicated when slaves return (outcome unknown, like a timeout)"
            )));
        }
        term.check_can_ack()?;
        fail::fail_point!(crate::faults::AFTER_QUORUM_BEFORE_REPLY, |_| {
            crate::faults::crash(crate::faults::AFTER_QUORUM_BEFORE_REPLY)
        });
        Ok(version)
    }

    /// Sends the value to the first `r` candidates in parallel, replacing
    /// each one that fails by the next candidate. Returns who stored it.
    async fn replicate(
        &self,
        term: &Term,
        key: &Bytes,
        value: &Bytes,
        version: Version,
        candidates: &[Arc<SlaveHandle>],
    ) -> Vec<SlaveIdx> {
        let r = self.config.replication_factor as usize;
        let send = |slave: Arc<SlaveHandle>| async move {
            let result = self.put_to(term, &slave, key, value, version, false).await;
            (slave, result)
        };
        let mut next = candidates.len().min(r);
        let mut in_flight: FuturesUnordered<_> =
            candidates[..next].iter().cloned().map(send).collect();
        let mut acked = Vec::with_capacity(r);
        while let Some((slave, result)) = in_flight.next().await {
            match result {
                Ok(_) => {
                    acked.push(slave.idx);
                    if acked.len() == r {
                        break;
                    }
                }
                Err(_) if term.is_deposed() => break,
                Err(_) => {
                    if let Some(spare) = candidates.get(next).cloned() {
                        next += 1;
                        in_flight.push(send(spare));
                    }
                }
            }
        }
        acked
    }

    /// One Put to one slave, with the slave timeout. Failures mark the slave
    /// dead, or depose this term if the slave was fenced by a newer master.
    async fn put_to(
        &self,
        term: &Term,
        slave: &SlaveHandle,
        key: &Bytes,
        value: &Bytes,
        version: Version,
        force: bool,
    ) -> Result<bool, Status> {
        let request = PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            version: Some(version.into()),
            epoch: term.epoch,
            force,
        };
        let result = tokio::time::timeout(self.config.slave_timeout, slave.pipe.put(request)).await;
        match self.settle(term, slave, result) {
            Ok(reply) => {
                slave.writes.inc();
                Ok(reply.stored)
            }
            Err(status) => Err(status),
        }
    }

    /// One Get from one slave, with the slave timeout.
    async fn get_from(
        &self,
        term: &Term,
        slave: &SlaveHandle,
        key: &Bytes,
    ) -> Result<GetReply, Status> {
        let request = GetRequest {
            key: key.to_vec(),
            epoch: term.epoch,
        };
        let result = tokio::time::timeout(self.config.slave_timeout, slave.pipe.get(request)).await;
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
    ) -> Result<T, Status> {
        let status = match result {
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(status)) => status,
            Err(_) => Status::deadline_exceeded(format!(
                "slave {} did not answer within {:?}",
                slave.id, self.config.slave_timeout
            )),
        };
        match status.code() {
            Code::FailedPrecondition => {
                term.depose(&format!(
                    "slave {} rejected epoch {}: {}",
                    slave.id,
                    term.epoch,
                    status.message()
                ));
            }
            Code::InvalidArgument => {}
            _ => {
                if lock(&self.slaves).mark_dead(slave.idx) {
                    warn!(slave = %slave.id, "slave removed from the live set: {}", status.message());
                    self.repair.notify_one();
                }
            }
        }
        Err(status)
    }

    /// A READ: the latest version's value, from one of its holders (chosen at
    /// random to spread the load), falling back to the other holders and
    /// finally to the log. A holder found stale is repaired.
    pub async fn read(&self, key: Bytes) -> Result<(Bytes, Version), Status> {
        self.config
            .limits
            .check_key(&key)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let term = self.serving_term()?;
        let Some(meta) = lock(&self.index).get(&key).cloned() else {
            return Err(Status::not_found("key not found"));
        };
        let holders = self.live_holders(&meta.holders);
        for slave in placement::write_order(&holders) {
            let Ok(reply) = self.get_from(&term, &slave, &key).await else {
                continue;
            };
            let found = reply.version.map(Version::from).filter(|_| reply.found);
            match found {
                Some(v) if v == meta.version => {
                    slave.reads.inc();
                    term.check_can_ack()?;
                    return Ok((Bytes::from(reply.value), v));
                }
                // A newer WRITE is on its way to this slave: not ours to
                // return before it is acknowledged; ask another holder.
                Some(v) if v > meta.version => {}
                _ => {
                    debug!(slave = %slave.id, "stale replica found by READ; repairing");
                    lock(&self.index).remove_holder(&key, slave.idx);
                    self.repair.notify_one();
                }
            }
        }
        let value = self.read_log(&key, meta.version, meta.pos).await?;
        self.repair.notify_one();
        term.check_can_ack()?;
        Ok((value, meta.version))
    }

    /// The value of `key` at `version` from the log: the source of truth
    /// when no slave holds that version. If compaction moved the record
    /// since `pos` was recorded, it is looked up by scanning the log.
    async fn read_log(&self, key: &Bytes, version: Version, pos: LogPos) -> Result<Bytes, Status> {
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
        .map_err(|e| Status::internal(format!("log read task failed: {e}")))?
        .map_err(|e| Status::internal(format!("cannot read the log: {e}")))?;
        found.ok_or_else(|| {
            Status::data_loss(format!(
                "version {version} of the key is missing from the log"
            ))
        })
    }

    /// The live slaves among `holders`.
    fn live_holders(&self, holders: &[SlaveIdx]) -> Vec<Arc<SlaveHandle>> {
        let slaves = lock(&self.slaves);
        holders
            .iter()
            .filter_map(|h| slaves.live_handle(*h))
            .collect()
    }

    /// The value of the latest version of `key`, from a holder or the log.
    async fn latest_value(
        &self,
        term: &Term,
        key: &Bytes,
    ) -> Option<(Bytes, Version, Vec<SlaveIdx>)> {
        let meta = lock(&self.index).get(key).cloned()?;
        let holders = self.live_holders(&meta.holders);
        for slave in holders {
            if let Ok(reply) = self.get_from(term, &slave, key).await
                && reply.found
                && reply.version.map(Version::from) == Some(meta.version)
            {
                return Some((Bytes::from(reply.value), meta.version, meta.holders));
            }
        }
        let value = self.read_log(key, meta.version, meta.pos).await.ok()?;
        Some((value, meta.version, meta.holders))
    }

    /// Brings `key` back to `r` live, non-draining holders. Returns the
    /// number of copies made.
    async fn repair_key(&self, term: &Term, key: Bytes) -> usize {
        let r = self.config.replication_factor as usize;
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
                .put_to(term, &target, &key, &value, version, false)
                .await
                .is_ok()
                && lock(&self.index).add_holder(&key, version, target.idx)
            {
                missing -= 1;
                copies += 1;
                metrics::RE_REPLICATIONS.inc();
            }
        }
        copies
    }

    /// Overwrites a value on `slave` that no valid log record backs (a
    /// deposed master's late write) with the latest valid version.
    pub(super) async fn overwrite_stray(&self, term: &Term, slave: &SlaveHandle, key: Bytes) {
        if let Some((value, version, _)) = self.latest_value(term, &key).await
            && self
                .put_to(term, slave, &key, &value, version, true)
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
        let r = self.config.replication_factor as usize;
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
    /// stop going to it and every key regains `r` holders elsewhere.
    pub async fn drain(&self, slave_id: &str) -> Result<u64, Status> {
        let term = self.serving_term()?;
        let r = self.config.replication_factor as usize;
        {
            let mut slaves = lock(&self.slaves);
            let remaining = slaves
                .placeable()
                .iter()
                .filter(|s| s.id != slave_id)
                .count();
            if remaining < r {
                return Err(Status::failed_precondition(format!(
                    "cannot drain {slave_id}: {remaining} slave(s) would remain and WRITEs need {r} (replication factor)"
                )));
            }
            if slaves.start_drain(slave_id).is_none() {
                return Err(Status::not_found(format!(
                    "no slave named {slave_id} has registered"
                )));
            }
        }
        info!(slave = slave_id, "draining");
        let mut moved = 0u64;
        loop {
            let (found, copies) = self.repair_round(&term).await;
            moved += copies as u64;
            if found == 0 {
                info!(slave = slave_id, moved, "drained");
                return Ok(moved);
            }
            if copies == 0 {
                return Err(Status::unavailable(format!(
                    "drain of {slave_id} stalled with {found} key(s) still short of {r} replicas; retry"
                )));
            }
        }
    }

    /// Compacts the sealed log segments, keeping the latest record per key.
    pub async fn compact(&self) -> Result<CompactReply, Status> {
        self.serving_term()?;
        let dir = self.config.log_dir.clone();
        let master = self;
        let stats = tokio::task::block_in_place(|| {
            // Keep every record not superseded by a newer visible version:
            // a record newer than the index (a WRITE still replicating) must
            // stay, or an acknowledged WRITE could vanish from the log.
            wal::compact(&dir, |key, version| {
                lock(&master.index)
                    .get(key)
                    .is_none_or(|meta| version >= meta.version)
            })
        })
        .map_err(|e| Status::internal(format!("compaction failed: {e}")))?;
        {
            let mut index = lock(&self.index);
            for (key, version, pos) in &stats.moved {
                index.moved(key, *version, *pos);
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

    /// Compacts automatically once enough sealed segments piled up.
    pub(super) async fn compaction_loop(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            if self.serving_term().is_err() {
                continue;
            }
            let sealed = wal::sealed_segments(&self.config.log_dir).unwrap_or(0);
            if sealed >= self.config.compact_segments
                && let Err(e) = self.compact().await
            {
                warn!("automatic compaction failed: {}", e.message());
            }
        }
    }
}
