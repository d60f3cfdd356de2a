//! The `Control` gRPC service: slaves register with the active master and
//! heartbeat it; plus the task that expires slaves that stopped.
//!
//! Registration is also fencing: the master raises the slave's epoch before
//! anything else, so from then on the slave rejects the deposed master.

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use super::index::SlaveIdx;
use super::{Master, Term, lock, placement};
use crate::proto::control_server::Control;
use crate::proto::replica_client::ReplicaClient;
use crate::proto::{FenceRequest, InventoryRequest, Ping, Pong, RegisterReply, RegisterRequest};
use crate::security;
use crate::version::Version;

impl Master {
    /// Fences a slave and records its registration; its inventory is read
    /// in the background ([`Master::join`]) so that the slave gets its answer
    /// at once. Returns the registration's session number.
    async fn register_slave(&self, id: &str, address: &str) -> Result<u64, Status> {
        let term = self.active_term()?;
        if id.is_empty() || id.len() > 253 {
            return Err(Status::invalid_argument(
                "slave id must be 1 to 253 characters",
            ));
        }
        let endpoint = security::endpoint(address, self.config.security.client.as_ref())
            .map_err(|e| {
                Status::invalid_argument(format!("slave address {address:?} is not usable: {e}"))
            })?
            .connect_timeout(self.config.slave_timeout)
            .tcp_nodelay(true);
        let max_message = self.config.limits.max_message_bytes();
        let mut client = ReplicaClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let timeout = self.config.slave_timeout;
        let fenced =
            tokio::time::timeout(timeout, client.fence(FenceRequest { epoch: term.epoch }))
                .await
                .map_err(|_| {
                    Status::unavailable(format!(
                        "slave {id} at {address} did not answer Fence in {timeout:?}"
                    ))
                })??
                .into_inner();
        if fenced.epoch > term.epoch {
            term.depose(&format!("slave {id} already knows epoch {}", fenced.epoch));
            return Err(Status::failed_precondition("this master was deposed"));
        }
        let fence_quorum =
            placement::fence_quorum(self.config.slaves, self.config.replication_factor) as usize;
        let fenced_count = {
            let mut fenced = lock(&term.fenced);
            fenced.insert(id.to_string());
            fenced.len()
        };
        if fenced_count >= fence_quorum && !term.serving.swap(true, Ordering::SeqCst) {
            info!(
                epoch = term.epoch,
                fenced = fenced_count,
                "serving: enough slaves fenced"
            );
        }
        let (idx, session) = {
            let mut slaves = lock(&self.slaves);
            let idx = slaves.idx_for(id);
            slaves.mark_dead(idx);
            (idx, slaves.register(idx, id, address, client.clone()))
        };
        if let Some(master) = self.me.upgrade() {
            tokio::spawn(master.join(term, idx, session, client));
        }
        Ok(session)
    }

    /// Reads a registered slave's inventory, notes which latest versions it
    /// holds, overwrites values no valid log record backs, and makes it live.
    async fn join(
        self: Arc<Self>,
        term: Arc<Term>,
        idx: SlaveIdx,
        session: u64,
        mut client: ReplicaClient<Channel>,
    ) {
        let timeout = self.config.slave_timeout;
        lock(&self.index).forget_slave(idx);
        let mut strays = Vec::new();
        let mut held = 0u64;
        let read = async {
            let mut inventory = client
                .inventory(InventoryRequest { epoch: term.epoch })
                .await?
                .into_inner();
            while let Some(chunk) = tokio::time::timeout(timeout * 4, inventory.next())
                .await
                .map_err(|_| Status::unavailable("the slave stalled while sending its inventory"))?
            {
                let chunk = chunk?;
                let mut index = lock(&self.index);
                for entry in chunk.entries {
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
                "could not read the inventory of a registering slave: {}",
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
            if self.active_term().is_err() {
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
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let request = request.into_inner();
        let epoch = self.active_term()?.epoch;
        let session = self
            .register_slave(&request.slave_id, &request.address)
            .await?;
        let mut response = Response::new(RegisterReply { epoch });
        if let Ok(value) = session.to_string().parse() {
            response.metadata_mut().insert("dsm-session", value);
        }
        Ok(response)
    }

    type HeartbeatStream = ReceiverStream<Result<Pong, Status>>;

    async fn heartbeat(
        &self,
        request: Request<Streaming<Ping>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let term = self.active_term()?;
        let mut pings = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let slaves = self.registry_handle();
        tokio::spawn(async move {
            let mut session = None;
            while let Some(Ok(ping)) = pings.next().await {
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
