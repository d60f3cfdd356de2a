//! The slave's side of the `Control` service: find the active master,
//! register with it, then heartbeat until it is lost, and start over.
//!
//! The loop (a slave registers with whichever master is active, heartbeats
//! it, and registers again, with backoff, after losing it):
//! 1. **Register.** Call `Register{slave_id, address}` on the master believed
//!    active (the first configured one at start, the other one after losing
//!    a master). A FAILED_PRECONDITION answer carrying `dsm-leader: <addr>`
//!    is followed to that address; any other failure moves on to the next
//!    configured master. When every master of a round has failed, sleep with
//!    exponential backoff and full jitter ([`BACKOFF_BASE`] doubling up to
//!    [`BACKOFF_CAP`], see [`crate::backoff`]) and try again.
//! 2. **Heartbeat.** Open the bidirectional `Heartbeat` stream, send a `Ping`
//!    every heartbeat interval and read the `Pong`s. A stream that ends or
//!    fails, or no Pong for [`MISSED_PONGS`] intervals, sends the slave back
//!    to step 1.
//!
//! The epoch of every RegisterReply and Pong is recorded with
//! [`Store::raise_epoch`]. A master answering with an epoch below the slave's
//! fenced epoch has been deposed (a newer master fenced this slave since), so
//! the slave drops it and looks for the active one.
//!
//! The master the slave is registered with (if any) is published on a
//! [`watch`] channel: readiness reads it. Checked by
//! `tests::follows_leader_hint_heartbeats_and_fails_over` and
//! `tests::silent_master_is_dropped`.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::time::Duration;

use dsm_wire::metadata;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

use super::store::Store;
use crate::backoff;
use crate::error_chain;
use crate::proto;
use crate::proto::control_client::ControlClient;
use crate::security::{self, ClientTls};

/// First backoff step after a round in which no master accepted us.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest backoff step.
pub const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// Heartbeat intervals without a Pong after which the master is given up.
pub const MISSED_PONGS: u32 = 3;
/// Time allowed to open a TCP connection to a master.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a leaving slave waits for the master to acknowledge.
const LEAVE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one Register call may take. The master fences the slave and
/// answers at once (it reads the inventory afterwards), so a master that
/// does not answer quickly is paused or overloaded: try the other one.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(3);

/// Registers the slave with the active master and keeps it registered.
pub struct Registration {
    /// Identity sent in Register and every Ping.
    slave_id: String,
    /// Address the master should dial for Replica calls.
    advertise: String,
    /// Configured master-capable addresses, master first, as URIs.
    masters: Vec<String>,
    /// Time between Pings.
    heartbeat_interval: Duration,
    /// Where epochs learnt from masters are recorded.
    store: Store,
    /// The master currently registered with, `None` while looking for one.
    state: watch::Sender<Option<String>>,
    /// TLS towards the masters (cluster CA, own certificate); `None` dials
    /// plaintext.
    tls: Option<ClientTls>,
}

/// Why one registration attempt at one address failed.
enum Refusal {
    /// A standby named the active master.
    Redirect(String),
    /// Anything else: unreachable, timeout, error, deposed master.
    Failed(String),
}

impl Registration {
    /// Prepares registration for slave `slave_id`, reachable at `advertise`,
    /// with the master-capable processes at `masters` (master first, backup
    /// second; `host:port` or `http://host:port`).
    pub fn new(
        slave_id: String,
        advertise: String,
        masters: Vec<String>,
        heartbeat_interval: Duration,
        store: Store,
    ) -> Self {
        let (state, _) = watch::channel(None);
        Registration {
            slave_id,
            advertise,
            masters: masters.iter().map(|m| uri(m)).collect(),
            heartbeat_interval: heartbeat_interval.max(Duration::from_millis(1)),
            store,
            state,
            tls: None,
        }
    }

    /// Registers over TLS with this client configuration (the cluster CA and
    /// the slave's own certificate), instead of plaintext.
    pub fn with_tls(mut self, tls: Option<ClientTls>) -> Self {
        self.tls = tls;
        self
    }

    /// The master this slave is registered with (its URI), `None` while it
    /// is looking for one. Readiness is `borrow().is_some()`.
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.state.subscribe()
    }

    /// Runs the register/heartbeat loop until `shutdown` completes, then
    /// tells the master it is registered with that this slave is leaving.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        if self.masters.is_empty() {
            tracing::error!("no master address configured: the slave will never register");
            shutdown.await;
            return;
        }
        tokio::select! {
            () = shutdown => {}
            () = self.forever() => {}
        }
        self.leave().await;
        self.state.send_replace(None);
        tracing::info!("registration stopped");
    }

    /// Tells the current master that this slave is going (best effort,
    /// bounded): it then stops routing to it at once.
    async fn leave(&self) {
        let Some(master) = self.state.borrow().clone() else {
            return;
        };
        let call = async {
            let endpoint = security::endpoint(&master, self.tls.as_ref())
                .map_err(|e| format!("unusable master address: {e}"))?
                .connect_timeout(CONNECT_TIMEOUT);
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| format!("cannot connect: {}", error_chain::full_message(&e)))?;
            ControlClient::new(channel)
                .leave(proto::LeaveRequest {
                    slave_id: self.slave_id.clone(),
                })
                .await
                .map_err(|status| status.to_string())
        };
        match timeout(LEAVE_TIMEOUT, call).await {
            Ok(Ok(_)) => tracing::info!(%master, "told the master this slave is leaving"),
            Ok(Err(why)) => {
                tracing::warn!(%master, %why, "could not tell the master this slave is leaving")
            }
            Err(_) => tracing::warn!(%master, "the master did not answer Leave in time"),
        }
    }

    async fn forever(&self) {
        let mut start = self.masters[0].clone();
        loop {
            let (client, master) = self.register_somewhere(&start).await;
            self.state.send_replace(Some(master.clone()));
            let reason = self.heartbeat(client).await;
            self.state.send_replace(None);
            tracing::warn!(%master, %reason, "lost the master; registering again");
            // It may be dead: ask the other one first (a standby redirects).
            start = self.after(&master);
        }
    }

    /// The configured master after `master` (the first if it is not one).
    fn after(&self, master: &str) -> String {
        let next = match self.masters.iter().position(|m| m == master) {
            Some(i) => (i + 1) % self.masters.len(),
            None => 0,
        };
        self.masters[next].clone()
    }

    /// Tries `start`, then the other configured masters, following leader
    /// hints, with backoff between rounds, until one accepts.
    async fn register_somewhere(&self, start: &str) -> (ControlClient<Channel>, String) {
        let mut round = 0u32;
        loop {
            let mut queue: VecDeque<String> = VecDeque::new();
            queue.push_back(start.to_string());
            queue.extend(self.masters.iter().cloned());
            let mut tried = HashSet::new();
            let mut failures = Vec::new();
            while let Some(addr) = queue.pop_front() {
                if !tried.insert(addr.clone()) {
                    continue;
                }
                match self.register_at(&addr).await {
                    Ok(client) => return (client, addr),
                    Err(Refusal::Redirect(leader)) => {
                        tracing::info!(standby = %addr, %leader, "following leader hint");
                        queue.push_front(leader);
                    }
                    Err(Refusal::Failed(why)) => {
                        tracing::debug!(master = %addr, %why, "registration failed");
                        failures.push(format!("{addr}: {why}"));
                    }
                }
            }
            let pause = backoff::full_jitter(BACKOFF_BASE, BACKOFF_CAP, round);
            round = round.saturating_add(1);
            tracing::warn!(
                failures = %failures.join("; "),
                retry_in_ms = pause.as_millis() as u64,
                "no master accepted the registration"
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// One Register call at `addr`.
    async fn register_at(&self, addr: &str) -> Result<ControlClient<Channel>, Refusal> {
        let endpoint = security::endpoint(addr, self.tls.as_ref())
            .map_err(|e| Refusal::Failed(format!("unusable master address: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let channel = timeout(CONNECT_TIMEOUT, endpoint.connect())
            .await
            .map_err(|_| Refusal::Failed("connect timed out".into()))?
            .map_err(|e| {
                Refusal::Failed(format!("cannot connect: {}", error_chain::full_message(&e)))
            })?;
        let mut client = ControlClient::new(channel);
        let mut request = Request::new(proto::RegisterRequest {
            slave_id: self.slave_id.clone(),
            address: self.advertise.clone(),
        });
        request.set_timeout(REGISTER_TIMEOUT);
        let reply = match timeout(REGISTER_TIMEOUT, client.register(request)).await {
            Err(_) => return Err(Refusal::Failed("register timed out".into())),
            Ok(Err(status)) => {
                let leader = status
                    .metadata()
                    .get(metadata::LEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|v| !v.is_empty());
                return Err(match (status.code(), leader) {
                    (Code::FailedPrecondition, Some(leader)) => Refusal::Redirect(uri(leader)),
                    _ => Refusal::Failed(format!("{:?}: {}", status.code(), status.message())),
                });
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let fenced = self.store.epoch();
        if reply.epoch < fenced {
            return Err(Refusal::Failed(format!(
                "master is at epoch {} but this slave is fenced at {fenced}: it was deposed",
                reply.epoch
            )));
        }
        let epoch = self
            .store
            .raise_epoch(reply.epoch)
            .await
            .map_err(|e| Refusal::Failed(format!("cannot record epoch: {e}")))?;
        tracing::info!(master = %addr, epoch, "registered");
        Ok(client)
    }

    /// Heartbeats on an open registration until it is lost; returns why.
    async fn heartbeat(&self, mut client: ControlClient<Channel>) -> String {
        let interval = self.heartbeat_interval;
        let patience = interval * MISSED_PONGS;
        let (tx, rx) = mpsc::channel(4);
        let mut seq = 0u64;
        let ping = |seq| proto::Ping {
            slave_id: self.slave_id.clone(),
            seq,
        };
        // The first Ping goes out with the call.
        if tx.try_send(ping(seq)).is_err() {
            return "cannot queue the first ping".into();
        }
        let mut pongs = match timeout(patience, client.heartbeat(ReceiverStream::new(rx))).await {
            Err(_) => return format!("heartbeat stream did not open within {patience:?}"),
            Ok(Err(status)) => return format!("heartbeat refused: {status}"),
            Ok(Ok(response)) => response.into_inner(),
        };
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let silence = tokio::time::sleep(patience);
        tokio::pin!(silence);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    seq += 1;
                    match tx.try_send(ping(seq)) {
                        Ok(()) => {}
                        // The stream is not draining; the silence timer decides.
                        Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return "heartbeat request stream closed".into();
                        }
                    }
                }
                message = pongs.message() => match message {
                    Ok(Some(pong)) => {
                        silence.as_mut().reset(Instant::now() + patience);
                        let fenced = self.store.epoch();
                        if pong.epoch < fenced {
                            return format!(
                                "master is at epoch {} but this slave is fenced at {fenced}: it was deposed",
                                pong.epoch
                            );
                        }
                        // A no-op (no disk write) unless the epoch grew.
                        if let Err(e) = self.store.raise_epoch(pong.epoch).await {
                            return format!("cannot record epoch {}: {e}", pong.epoch);
                        }
                    }
                    Ok(None) => return "master ended the heartbeat stream".into(),
                    Err(status) => return format!("heartbeat failed: {status}"),
                },
                () = &mut silence => return format!("no pong within {patience:?}"),
            }
        }
    }
}

/// `addr` as a URI tonic can dial (`http://` added when no scheme is given).
fn uri(addr: &str) -> String {
    let addr = addr.trim();
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests;
