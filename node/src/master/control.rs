//! The `Control` gRPC service: slaves register with the active master and
//! heartbeat it; plus the task that expires slaves that stopped.
//!
//! Admission, in the order that keeps the membership a successor reads
//! complete (see [`super::term`]): the slave is added to the term's saved
//! membership, the log directory is checked for a newer claim (a successor
//! that claimed before the save may not have seen it: then the slave is
//! refused and this term ends), the slave is fenced with this term's epoch,
//! and only once its inventory is read does it become live and placeable.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use super::error::MasterError;
use super::index::SlaveIdx;
use super::slave_link::SlaveLink;
use super::{Master, Term, lock, term};
use crate::proto::control_server::Control;
use crate::proto::{LeaveReply, LeaveRequest, Ping, Pong, RegisterReply, RegisterRequest};
use crate::version::Version;

impl Master {
    /// Admits a slave (module doc) and records its registration; its
    /// inventory is read in the background
    /// ([`Master::activate_after_inventory`]) so that the slave gets its answer
    /// at once. A slave already live at the same address in this term (the
    /// takeover made it live) only gets a new heartbeat session.
    pub(super) async fn register_slave(&self, id: &str, address: &str) -> Result<u64, MasterError> {
        let term = self.serving_term()?;
        if id.is_empty() || id.len() > 253 {
            return Err(MasterError::invalid("slave id must be 1 to 253 characters"));
        }
        if let Some(session) = lock(&self.slaves).current_session(id, address) {
            return Ok(session);
        }
        let link = self.connector.connect(address)?;
        // A slave being drained stays out of the membership: it must not be
        // counted when a successor fences.
        if !lock(&self.slaves).is_draining(id) {
            self.admit(&term, id, address).await?;
        }
        let timeout = self.config.slave_timeout;
        let fenced = tokio::time::timeout(timeout, link.fence(term.epoch))
            .await
            .map_err(|_| {
                MasterError::unavailable(format!(
                    "slave {id} at {address} did not answer Fence in {timeout:?}"
                ))
            })??;
        if fenced > term.epoch {
            term.depose(&format!("slave {id} already knows epoch {fenced}"));
            return Err(MasterError::refused("this master was deposed"));
        }
        let (idx, session) = {
            let mut slaves = lock(&self.slaves);
            let idx = slaves.idx_for(id);
            slaves.mark_dead(idx);
            (idx, slaves.register(idx, id, address, link.clone()))
        };
        if let Some(master) = self.me.upgrade() {
            tokio::spawn(master.activate_after_inventory(term, idx, session, link));
        }
        Ok(session)
    }

    /// Adds `id` at `address` to the term's saved membership (unless it is
    /// there already), then makes sure no successor has claimed an epoch.
    async fn admit(&self, term: &Term, id: &str, address: &str) -> Result<(), MasterError> {
        let mut membership = term.membership.lock().await;
        if membership.slaves.get(id).map(String::as_str) == Some(address) {
            return Ok(());
        }
        let mut updated = membership.clone();
        updated.slaves.insert(id.to_string(), address.to_string());
        let dir = self.config.log_dir.clone();
        let epoch = term.epoch;
        let saved = updated.clone();
        let newest = tokio::task::spawn_blocking(move || -> Result<u64, term::TermError> {
            term::save_members(&dir, epoch, &saved)?;
            term::newest_claim(&dir)
        })
        .await
        .map_err(|e| MasterError::internal(format!("membership task failed: {e}")))?
        .map_err(|e| {
            MasterError::unavailable(format!("cannot record the slave's membership: {e}"))
        })?;
        *membership = updated;
        if newest > epoch {
            term.depose(&format!("another process claimed epoch {newest}"));
            return Err(MasterError::refused(
                "this master was deposed while admitting the slave; register with the active master",
            ));
        }
        info!(
            slave = id,
            address, epoch, "slave added to the term's membership"
        );
        Ok(())
    }

    /// Reads a slave's inventory, notes which latest versions it holds,
    /// overwrites values no valid log record backs, and makes it live.
    pub(super) async fn activate_after_inventory(
        self: Arc<Self>,
        term: Arc<Term>,
        idx: SlaveIdx,
        session: u64,
        link: Arc<dyn SlaveLink>,
    ) {
        let timeout = self.config.slave_timeout;
        lock(&self.index).forget_slave(idx);
        let mut strays = Vec::new();
        let mut held = 0u64;
        let read = async {
            let mut inventory = tokio::time::timeout(timeout, link.inventory(term.epoch))
                .await
                .map_err(|_| MasterError::unavailable("the slave did not start its inventory"))??;
            while let Some(chunk) = tokio::time::timeout(timeout * 4, inventory.next())
                .await
                .map_err(|_| {
                    MasterError::unavailable("the slave stalled while sending its inventory")
                })?
            {
                let chunk = chunk?;
                let mut index = lock(&self.index);
                for entry in chunk {
                    let Some(version) = entry.version.map(Version::from) else {
                        continue;
                    };
                    match index.get(&entry.key) {
                        Some(meta) if meta.version == version => {
                            index.add_holder(&entry.key, version, idx);
                            held += 1;
                        }
                        // Newer than any valid record: a deposed master's
                        // late write. It must not stay where a READ finds it.
                        Some(meta) if version > meta.version && version.epoch < term.epoch => {
                            strays.push(Bytes::from(entry.key));
                        }
                        _ => {}
                    }
                }
            }
            Ok::<(), Status>(())
        };
        if let Err(status) = read.await {
            warn!(
                slave = idx,
                "could not read the inventory of a joining slave: {}",
                status.message()
            );
            lock(&self.slaves).fail_join(idx, session);
            return;
        }
        let handle = {
            let mut slaves = lock(&self.slaves);
            if !slaves.activate(idx, session) {
                return;
            }
            slaves.live_handle(idx)
        };
        let Some(handle) = handle else { return };
        info!(slave = %handle.id, address = %handle.address, keys = held, strays = strays.len(), "slave is live");
        for key in strays {
            self.overwrite_stray(&term, &handle, key).await;
        }
        self.repair.notify_one();
    }

    /// Removes slaves that stopped heartbeating from the live set.
    pub(super) async fn expire_slaves(self: Arc<Self>, cancel: CancellationToken) {
        let period = (self.config.slave_timeout / 4).max(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            if self.serving_term().is_err() {
                continue;
            }
            let expired = lock(&self.slaves).expire(self.config.slave_timeout);
            if !expired.is_empty() {
                warn!(slaves = ?expired, "slaves missed their heartbeats; removed from the live set");
                self.repair.notify_one();
            }
        }
    }
}

#[tonic::async_trait]
impl Control for Master {
    async fn leave(&self, request: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
        self.serving_term()?;
        let id = request.into_inner().slave_id;
        let left = {
            let mut slaves = lock(&self.slaves);
            let idx = slaves.idx_for(&id);
            slaves.mark_dead(idx)
        };
        if left {
            info!(slave = %id, "slave is shutting down; removed from the live set");
            self.repair.notify_one();
        }
        Ok(Response::new(LeaveReply {}))
    }

    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let request = request.into_inner();
        let epoch = self.serving_term()?.epoch;
        self.register_slave(&request.slave_id, &request.address)
            .await?;
        Ok(Response::new(RegisterReply { epoch }))
    }

    type HeartbeatStream = ReceiverStream<Result<Pong, Status>>;

    async fn heartbeat(
        &self,
        request: Request<Streaming<Ping>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let term = self.serving_term()?;
        let mut pings = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let slaves = self.registry_handle();
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut session = None;
            loop {
                let ping = tokio::select! {
                    // Shutting down: end the stream so the server can close.
                    () = stopping.cancelled() => return,
                    ping = pings.next() => ping,
                };
                let Some(Ok(ping)) = ping else { return };
                let alive = {
                    let mut registry = lock(&slaves);
                    let current = *session
                        .get_or_insert_with(|| registry.session_of(&ping.slave_id).unwrap_or(0));
                    !term.is_deposed() && registry.heartbeat(&ping.slave_id, current)
                };
                let reply = if alive {
                    Ok(Pong {
                        epoch: term.epoch,
                        seq: ping.seq,
                    })
                } else {
                    Err(Status::failed_precondition(
                        "not registered with the active master; register again",
                    ))
                };
                let stop = reply.is_err();
                if tx.send(reply).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
