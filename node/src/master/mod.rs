//! The master-capable role: `dsm master` and `dsm backup` run this same code.
//!
//! Exactly one master-capable process is *active* at a time; the other is the
//! *standby*. Their life is a loop ([`failover`]):
//!
//! 1. **Standby.** Replay the write-ahead log into a fresh [`index::Index`],
//!    then keep following it, and watch the [`lease`]. Answer clients and
//!    slaves with FAILED_PRECONDITION naming the active master.
//! 2. **Takeover**, once the lease looks free (the active master died, was
//!    paused, or released it): claim the next epoch, fence enough of the
//!    previous term's slaves that none of its write quorums is left unfenced,
//!    read the log to its end through freshly opened files, record the cut,
//!    and serve. Clocks decide only when this happens, never whether it is safe
//!    ([`term`] has the argument).
//! 3. **Active.** Serve READs ([`read`], each confirmed by a [`barrier`]
//!    round) and WRITEs ([`write`](mod@write), deduplicated by [`sessions`]); admit
//!    slaves ([`control`]); re-replicate ([`repair`]); compact the log
//!    ([`compaction`]); renew the lease. A term ends when a slave or the log
//!    directory shows a newer epoch, or when the log writer fails (full or
//!    failing log volume, see [`Term::log_append_failed`]): back to 1.
//!
//! The other modules: [`index`] (key metadata), [`slaves`] (registry),
//! [`placement`] (quorum arithmetic), [`slave_link`] (the seam to the slaves),
//! [`kv`] (the client gRPC service).

pub mod barrier;
pub mod compaction;
pub mod control;
pub mod error;
pub mod failover;
pub mod index;
pub mod kv;
pub mod lease;
pub mod placement;
pub mod read;
pub mod repair;
pub mod sessions;
pub mod slave_link;
pub mod slaves;
pub mod snapshot;
pub mod term;
pub mod watch;
pub mod write;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::limits::Limits;
use crate::metrics::{self, Readiness};
use crate::proto::control_server::ControlServer;
use crate::proto::kv_server::KvServer;
use crate::security::Security;
use crate::wal;
use error::MasterError;
use index::Index;
use lease::LeaseFile;
use sessions::Sessions;
use slave_link::{Connector, GrpcConnector};
use slaves::Registry;
pub use term::Term;

/// Everything a master-capable process is configured with.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// Identity written into the lease (e.g. `master`, `backup`, a pod name).
    pub id: String,
    /// Address clients and slaves use to reach this process.
    pub advertise: String,
    /// Shared log directory (segments, terms, lease).
    pub log_dir: PathBuf,
    /// Configured slave count `n`; the default replication factor derives
    /// from it.
    pub slaves: u32,
    /// Slaves each WRITE must reach (`r`).
    pub replication_factor: u32,
    /// Lease duration: the standby takes over once it has seen no renewal
    /// for this long (on its own clock).
    pub lease_ttl: Duration,
    /// Timeout of each master→slave call, and how long a slave may miss
    /// heartbeats before it leaves the live set.
    pub slave_timeout: Duration,
    /// True for `dsm master`: take a free lease at once. A `dsm backup`
    /// first waits one lease period so that a master started at the same
    /// time wins.
    pub prefer_active: bool,
    /// Key and value size limits.
    pub limits: Limits,
    /// Size at which the log rolls to a new segment.
    pub segment_bytes: u64,
    /// Compact automatically once this many sealed segments exist.
    pub compact_segments: usize,
    /// Under load, how long a log append waits for others to share its
    /// fsync (see [`crate::commit_window`]).
    pub commit_window: Duration,
    /// TLS for the server and for connections to slaves, client tokens
    /// (see [`crate::security`]); the default is plaintext and open.
    pub security: Security,
}

/// What this process currently is.
#[derive(Clone)]
pub enum Role {
    /// Following the log; `leader` is the active master's address as the
    /// lease names it (empty when unknown).
    Standby {
        /// Active master's address.
        leader: String,
    },
    /// Claimed `epoch` and fencing the previous term's slaves.
    TakingOver {
        /// The claimed epoch.
        epoch: u64,
        /// What the takeover waits for, in words.
        waiting_for: String,
    },
    /// Serving as the active master.
    Active(Arc<Term>),
}

impl Role {
    /// What `Kv.Status` and the role gauge report: a takeover still counts as
    /// standby until it serves.
    pub fn reported(&self) -> dsm_wire::Role {
        match self {
            Role::Active(_) => dsm_wire::Role::Active,
            Role::Standby { .. } | Role::TakingOver { .. } => dsm_wire::Role::Standby,
        }
    }
}

/// A master-capable process.
pub struct Master {
    /// This process itself, for tasks spawned from request handlers.
    me: Weak<Master>,
    config: MasterConfig,
    lease: LeaseFile,
    /// Makes links to slaves (gRPC, or in-memory slaves in tests).
    connector: Arc<dyn Connector>,
    role: Mutex<Role>,
    index: Mutex<Index>,
    /// Client WRITEs a retry may still ask about (exactly-once).
    sessions: Mutex<Sessions>,
    /// Orders a key's WRITEs around conditional ones (see [`write`]).
    ordering: write::KeyOrder,
    /// Watchers being served (see [`watch`]).
    watchers: Arc<std::sync::atomic::AtomicUsize>,
    slaves: Arc<Mutex<Registry>>,
    /// Wakes the re-replication task (slave died, write short of quorum,
    /// stale replica found).
    repair: Notify,
    /// Highest sequence number known to be in the log.
    log_end_seq: AtomicU64,
    /// When the standby last read the log to its end (readiness, lag).
    caught_up_at: Mutex<Instant>,
    /// Cancelled when the process starts shutting down: long-lived streams
    /// (pipelines, heartbeats) then end, so that the server can close.
    stopping: CancellationToken,
}

/// How long a shutting-down process waits for its connections to close
/// before it drops them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Locks a std mutex, recovering the data if a panicking thread poisoned it
/// (every critical section leaves the data consistent between statements).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Master {
    /// Creates the process state; nothing runs until [`run`](Self::run).
    /// Slaves are reached over gRPC.
    pub fn new(config: MasterConfig) -> anyhow::Result<Arc<Self>> {
        let connector = Arc::new(GrpcConnector {
            tls: config.security.client.clone(),
            connect_timeout: config.slave_timeout,
            limits: config.limits,
        });
        Master::with_connector(config, connector)
    }

    /// [`Master::new`] with slaves reached through `connector`.
    pub fn with_connector(
        config: MasterConfig,
        connector: Arc<dyn Connector>,
    ) -> anyhow::Result<Arc<Self>> {
        placement::validate(config.slaves, config.replication_factor)
            .map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(&config.log_dir)
            .with_context(|| format!("cannot create log directory {}", config.log_dir.display()))?;
        crate::snapshot::check_not_restoring(&config.log_dir)?;
        Ok(Arc::new_cyclic(|me| Master {
            me: me.clone(),
            lease: LeaseFile::new(&config.log_dir, &config.id),
            config,
            connector,
            role: Mutex::new(Role::Standby {
                leader: String::new(),
            }),
            index: Mutex::new(Index::default()),
            sessions: Mutex::new(Sessions::default()),
            ordering: write::KeyOrder::default(),
            watchers: Arc::default(),
            slaves: Arc::new(Mutex::new(Registry::default())),
            repair: Notify::new(),
            log_end_seq: AtomicU64::new(0),
            caught_up_at: Mutex::new(Instant::now()),
            stopping: CancellationToken::new(),
        }))
    }

    /// The slave registry, shared with tasks that outlive a request.
    fn registry_handle(&self) -> Arc<Mutex<Registry>> {
        self.slaves.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &MasterConfig {
        &self.config
    }

    /// The current role.
    pub fn role(&self) -> Role {
        lock(&self.role).clone()
    }

    /// The active term, or the error to send: FAILED_PRECONDITION naming the
    /// active master when standby, UNAVAILABLE while taking over.
    pub fn serving_term(&self) -> Result<Arc<Term>, MasterError> {
        match self.role() {
            Role::Active(term) if term.is_deposed() => Err(self.not_leader("")),
            Role::Active(term) => Ok(term),
            Role::TakingOver { epoch, waiting_for } => Err(MasterError::unavailable(format!(
                "master is taking over (epoch {epoch}): {waiting_for}"
            ))),
            Role::Standby { leader } => Err(self.not_leader(&leader)),
        }
    }

    fn not_leader(&self, leader: &str) -> MasterError {
        let message = if leader.is_empty() {
            format!(
                "{} is not the active master (no active master known)",
                self.config.advertise
            )
        } else {
            format!(
                "{} is not the active master; it is {leader}",
                self.config.advertise
            )
        };
        MasterError::NotLeader {
            message,
            leader: leader.to_string(),
        }
    }

    /// Runs the process until `cancel` fires: the gRPC server on `listener`
    /// and the role loop. Returns an error if the log cannot be replayed
    /// (for instance a corrupt record in the middle of it).
    ///
    /// Shutting down: the active master releases the lease (the standby takes
    /// over at once), long-lived streams end after their in-flight work, and
    /// connections still open after [`SHUTDOWN_GRACE`] are dropped: whatever
    /// was acknowledged is durable already.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<KvServer<Master>>().await;
        let max_message = self.config.limits.max_message_bytes();
        let security = &self.config.security;
        let router = tonic::transport::Server::builder()
            .layer(security.auth_layer(&metrics::master().auth_rejected))
            .add_service(health_service)
            .add_service(
                KvServer::from_arc(self.clone())
                    .max_decoding_message_size(max_message)
                    .max_encoding_message_size(max_message),
            )
            .add_service(ControlServer::from_arc(self.clone()));
        let shutdown = self.stopping.clone().cancelled_owned();
        {
            let (cancel, stopping) = (cancel.clone(), self.stopping.clone());
            tokio::spawn(async move {
                cancel.cancelled().await;
                stopping.cancel();
            });
        }
        let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match &security.server {
                Some(tls) => Box::pin(
                    router.serve_with_incoming_shutdown(tls.clone().incoming(listener), shutdown),
                ),
                // Small replies must not wait for Nagle's algorithm.
                None => Box::pin(router.serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )),
            };
        let background = self.spawn_background(&cancel);
        let roles = self.clone().run_roles(cancel.clone());
        tokio::pin!(server);
        let result = tokio::select! {
            r = &mut server => r.context("gRPC server failed"),
            r = roles => r,
        };
        cancel.cancel();
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
            .await
            .is_err()
        {
            tracing::warn!(
                "connections still open {SHUTDOWN_GRACE:?} after shutdown began; closing them"
            );
        }
        for task in background {
            let _ = task.await;
        }
        result
    }

    /// The tasks that run beside the role loop in every role.
    fn spawn_background(
        self: &Arc<Self>,
        cancel: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().publish_gauges(cancel.clone())),
            tokio::spawn(self.clone().expire_slaves(cancel.clone())),
            tokio::spawn(self.clone().repair_loop(cancel.clone())),
            tokio::spawn(self.clone().compaction_loop(cancel.clone())),
        ]
    }

    /// `/readyz` for a master-capable process: the active master once it
    /// serves, a standby while it keeps up with the log.
    pub fn readiness(self: &Arc<Self>) -> Readiness {
        let master = Arc::downgrade(self);
        Arc::new(move || match master.upgrade() {
            Some(master) => master.ready(),
            None => Err("shutting down".into()),
        })
    }

    fn ready(&self) -> Result<(), String> {
        match self.role() {
            Role::Active(term) if term.is_deposed() => Err("stepping down".into()),
            Role::Active(_) => Ok(()),
            Role::TakingOver { epoch, waiting_for } => {
                Err(format!("taking over (epoch {epoch}): {waiting_for}"))
            }
            Role::Standby { .. } => {
                let behind = lock(&self.caught_up_at).elapsed();
                if behind <= self.config.lease_ttl {
                    Ok(())
                } else {
                    Err(format!(
                        "standby last caught up with the log {behind:?} ago"
                    ))
                }
            }
        }
    }

    /// Refreshes the gauges once a second.
    async fn publish_gauges(self: Arc<Self>, cancel: CancellationToken) {
        let metrics = metrics::master();
        metrics.configured_slaves.set(i64::from(self.config.slaves));
        metrics
            .replication_factor
            .set(i64::from(self.config.replication_factor));
        loop {
            let r = self.config.replication_factor as usize;
            let role = self.role();
            let reported = role.reported();
            let epoch = match role {
                Role::Active(term) => term.epoch,
                _ => 0,
            };
            let active = reported == dsm_wire::Role::Active;
            for role in dsm_wire::Role::ALL {
                metrics
                    .role
                    .with_label_values(&[role.as_str()])
                    .set(i64::from(role == reported));
            }
            metrics.epoch.set(epoch as i64);
            metrics
                .log_last_sequence
                .set(self.log_end_seq.load(Ordering::SeqCst) as i64);
            let lag = if active {
                0.0
            } else {
                lock(&self.caught_up_at).elapsed().as_secs_f64()
            };
            metrics.backup_lag.set(lag);
            let placeable: Vec<index::SlaveIdx> = lock(&self.slaves)
                .placeable()
                .iter()
                .map(|s| s.idx)
                .collect();
            metrics
                .live_slaves
                .set(if active { placeable.len() as i64 } else { 0 });
            {
                let index = lock(&self.index);
                metrics.keys.set(index.len() as i64);
                let short = if active {
                    index.count_under_replicated(r, |i| placeable.contains(&i))
                } else {
                    0
                };
                metrics.under_replicated_keys.set(short as i64);
            }
            {
                let mut sessions = lock(&self.sessions);
                sessions.expire(Instant::now());
                metrics.client_sessions.set(sessions.len() as i64);
            }
            let dir = self.config.log_dir.clone();
            if let Ok(Ok(bytes)) = tokio::task::spawn_blocking(move || wal::log_bytes(&dir)).await {
                metrics.log_bytes.set(bytes as i64);
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
