//! The master-capable role: `dsm master` and `dsm backup` run this same code.
//!
//! Exactly one master-capable process is *active* at a time; the other is the
//! *standby*. Their life is a loop (see [`Master::run_roles`]):
//!
//! 1. **Standby.** Replay the write-ahead log into a fresh [`index::Index`],
//!    then keep following it, and watch the lease. Answer clients and slaves
//!    with FAILED_PRECONDITION naming the active master.
//! 2. **Takeover**, once the lease has expired (the active master died or is
//!    paused): under the lease lock, read the log to its end, append the new
//!    epoch and the sequence number it starts at to the epoch history (that is
//!    where the old master's log ends: its later records are ignored on
//!    replay), write the lease, and open a new log segment.
//! 3. **Active.** Accept slave registrations — each one fences the slave with
//!    the new epoch and reads its inventory — and serve once
//!    `fence_quorum(n, r)` slaves are fenced, so no quorum of the old master
//!    is left without a fenced slave. Renew the lease; an active master whose
//!    lease deadline passed (it was paused) acknowledges nothing until it has
//!    renewed, and one that finds the lease taken (or a newer epoch in the
//!    epoch history) steps down to 1. So does one whose log writer failed
//!    (full or failing log volume, see [`Term::log_append_failed`]): step 1
//!    recovers the log from disk, and step 2 is retried until the volume
//!    accepts writes again.
//!
//! The modules: [`index`] (key metadata), [`slaves`] (registry), [`placement`]
//! (quorum arithmetic), [`data`] (the READ/WRITE/repair paths), [`kv`] and
//! [`control`] (the gRPC services).

pub mod control;
pub mod data;
pub mod index;
pub mod kv;
pub mod pipe;
pub mod placement;
pub mod slaves;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::transport::server::TcpIncoming;
use tracing::{error, info, warn};

use crate::lease::{LeaseFile, LeaseRecord, now_unix_ms};
use crate::limits::Limits;
use crate::metrics::{self, Readiness};
use crate::proto::control_server::ControlServer;
use crate::proto::kv_server::KvServer;
use crate::security::Security;
use crate::wal::{self, EpochHistory, LogReader, LogWriter};
use index::Index;
use slaves::Registry;

/// Response metadata key naming the active master in FAILED_PRECONDITION
/// answers.
pub const LEADER_METADATA: &str = "dsm-leader";

/// Everything a master-capable process is configured with.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// Identity written into the lease (e.g. `master`, `backup`, a pod name).
    pub id: String,
    /// Address clients and slaves use to reach this process.
    pub advertise: String,
    /// Shared log directory (segments, epoch history, lease).
    pub log_dir: PathBuf,
    /// Configured slave count `n`; quorums derive from it, never from how
    /// many slaves look alive.
    pub slaves: u32,
    /// Slaves each WRITE must reach (`r`).
    pub replication_factor: u32,
    /// Lease duration; the standby takes over this long (plus a margin)
    /// after the last renewal.
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

/// One term of this process as the active master.
pub struct Term {
    /// The epoch this term writes with; slaves fenced with it reject older.
    pub epoch: u64,
    /// The log writer (group commit) for this epoch's segments.
    pub writer: LogWriter,
    /// Monotonic instant until which acknowledging is safe.
    deadline: Mutex<Instant>,
    /// Set once enough slaves are fenced.
    serving: AtomicBool,
    /// Set when the term ended (lease lost, stale epoch seen).
    deposed: AtomicBool,
    /// Wakes the lease loop when the term is deposed from elsewhere.
    deposed_notify: Notify,
    /// Slaves fenced with `epoch`.
    fenced: Mutex<HashSet<String>>,
}

impl Term {
    /// Fails unless this term may still acknowledge: not deposed, and the
    /// lease deadline has not passed (a paused master that wakes up must
    /// not acknowledge before it renewed).
    pub fn check_can_ack(&self) -> Result<(), Status> {
        if self.deposed.load(Ordering::SeqCst) {
            return Err(Status::unavailable(
                "this master was deposed while the request ran; retry against the active master",
            ));
        }
        if Instant::now() >= *lock(&self.deadline) {
            return Err(Status::unavailable(
                "this master's lease expired while the request ran (was it paused?); retry",
            ));
        }
        Ok(())
    }

    /// Ends the term.
    pub fn depose(&self, why: &str) {
        if !self.deposed.swap(true, Ordering::SeqCst) {
            warn!(epoch = self.epoch, "stepping down: {why}");
        }
        self.deposed_notify.notify_one();
    }

    /// The answer to a WRITE whose log append failed; ends the term unless
    /// only that record was refused (too large).
    ///
    /// Why end the term: after a failed write or fsync the writer refuses
    /// every later append for good, because the kernel may have dropped the
    /// pages the failed fsync covered (fsyncgate), so a retry could
    /// acknowledge data that is not on disk. The only honest way back is
    /// PostgreSQL's: forget what memory believes and recover from what the
    /// disk holds. Here that is cheaper than a restart: the process steps
    /// down, replays the log from disk as a standby, and takes over again
    /// (new epoch, new segment, new writer) once the log volume accepts
    /// writes again — or the other master-capable process does. Tested by
    /// `tests/disk_faults.rs`.
    pub fn log_append_failed(&self, error: wal::WalError) -> Status {
        if !matches!(error, wal::WalError::TooLarge { .. }) {
            self.depose(&format!(
                "the write-ahead log failed ({error}); stepping down to recover it with a fresh writer"
            ));
        }
        Status::unavailable(format!(
            "write-ahead log append failed: {error}; the WRITE was not acknowledged"
        ))
    }

    /// Whether the term ended.
    pub fn is_deposed(&self) -> bool {
        self.deposed.load(Ordering::SeqCst)
    }
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
    /// Serving as the active master.
    Active(Arc<Term>),
}

/// A master-capable process.
pub struct Master {
    /// This process itself, for tasks spawned from request handlers.
    me: Weak<Master>,
    config: MasterConfig,
    lease: LeaseFile,
    role: Mutex<Role>,
    index: Mutex<Index>,
    slaves: Arc<Mutex<Registry>>,
    /// Wakes the re-replication task (slave died, write short of quorum,
    /// stale replica found).
    repair: Notify,
    /// Highest sequence number known to be in the log.
    log_end_seq: AtomicU64,
    /// When the standby last read the log to its end (readiness, lag).
    caught_up_at: Mutex<Instant>,
}

/// Pause between takeover attempts that failed on I/O (a full or failing
/// log volume): each attempt may append an epoch line, so do not spin.
const TAKEOVER_RETRY: Duration = Duration::from_secs(1);

/// Whether a takeover failed because the log itself is damaged (which
/// needs an operator) rather than because its volume failed an operation
/// (which may heal: space freed, device back).
fn is_log_damage(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<wal::WalError>(),
            Some(
                wal::WalError::Corrupt { .. }
                    | wal::WalError::NotASegment { .. }
                    | wal::WalError::BadEpochs { .. }
            )
        )
    })
}

/// Locks a std mutex, recovering the data if a panicking thread poisoned it
/// (every critical section leaves the data consistent between statements).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Master {
    /// Creates the process state; nothing runs until [`run`].
    pub fn new(config: MasterConfig) -> anyhow::Result<Arc<Self>> {
        placement::validate(config.slaves, config.replication_factor)
            .map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(&config.log_dir)
            .with_context(|| format!("cannot create log directory {}", config.log_dir.display()))?;
        Ok(Arc::new_cyclic(|me| Master {
            me: me.clone(),
            lease: LeaseFile::new(&config.log_dir),
            config,
            role: Mutex::new(Role::Standby {
                leader: String::new(),
            }),
            index: Mutex::new(Index::default()),
            slaves: Arc::new(Mutex::new(Registry::default())),
            repair: Notify::new(),
            log_end_seq: AtomicU64::new(0),
            caught_up_at: Mutex::new(Instant::now()),
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
    /// active master when standby, UNAVAILABLE while still fencing.
    pub fn serving_term(&self) -> Result<Arc<Term>, Status> {
        match self.role() {
            Role::Active(term) if term.is_deposed() => Err(self.not_leader("")),
            Role::Active(term) => {
                if term.serving.load(Ordering::SeqCst) {
                    Ok(term)
                } else {
                    let fenced = lock(&term.fenced).len();
                    Err(Status::unavailable(format!(
                        "master is taking over (epoch {}): {fenced} of {} slaves fenced so far",
                        term.epoch,
                        placement::fence_quorum(self.config.slaves, self.config.replication_factor)
                    )))
                }
            }
            Role::Standby { leader } => Err(self.not_leader(&leader)),
        }
    }

    /// The active term even while still fencing (registration needs it).
    pub fn active_term(&self) -> Result<Arc<Term>, Status> {
        match self.role() {
            Role::Active(term) if !term.is_deposed() => Ok(term),
            Role::Active(_) => Err(self.not_leader("")),
            Role::Standby { leader } => Err(self.not_leader(&leader)),
        }
    }

    fn not_leader(&self, leader: &str) -> Status {
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
        let mut status = Status::failed_precondition(message);
        if let Ok(value) = leader.parse() {
            status.metadata_mut().insert(LEADER_METADATA, value);
        }
        status
    }

    /// Runs the process until `cancel` fires: the gRPC server on `listener`
    /// and the role loop. Returns an error if the log cannot be replayed
    /// (for instance a corrupt record in the middle of it).
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
            .layer(security.auth_layer())
            .add_service(health_service)
            .add_service(
                KvServer::from_arc(self.clone())
                    .max_decoding_message_size(max_message)
                    .max_encoding_message_size(max_message),
            )
            .add_service(ControlServer::from_arc(self.clone()));
        let shutdown = cancel.clone().cancelled_owned();
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
        let background = [
            tokio::spawn(self.clone().publish_gauges(cancel.clone())),
            tokio::spawn(self.clone().expire_slaves(cancel.clone())),
            tokio::spawn(self.clone().repair_loop(cancel.clone())),
            tokio::spawn(self.clone().compaction_loop(cancel.clone())),
        ];
        let roles = self.clone().run_roles(cancel.clone());
        let result = tokio::select! {
            r = server => r.context("gRPC server failed"),
            r = roles => r,
        };
        cancel.cancel();
        for task in background {
            let _ = task.await;
        }
        result
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
            Role::Active(term) if !term.serving.load(Ordering::SeqCst) => {
                Err("taking over: waiting for enough slaves to be fenced".into())
            }
            Role::Active(_) => Ok(()),
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
        metrics::register_all();
        metrics::CONFIGURED_SLAVES.set(i64::from(self.config.slaves));
        metrics::REPLICATION_FACTOR.set(i64::from(self.config.replication_factor));
        loop {
            let r = self.config.replication_factor as usize;
            let (active, epoch) = match self.role() {
                Role::Active(term) => (true, term.epoch),
                Role::Standby { .. } => (false, 0),
            };
            metrics::ROLE
                .with_label_values(&["active"])
                .set(i64::from(active));
            metrics::ROLE
                .with_label_values(&["standby"])
                .set(i64::from(!active));
            metrics::EPOCH.set(epoch as i64);
            metrics::LOG_LAST_SEQUENCE.set(self.log_end_seq.load(Ordering::SeqCst) as i64);
            let lag = if active {
                0.0
            } else {
                lock(&self.caught_up_at).elapsed().as_secs_f64()
            };
            metrics::BACKUP_LAG.set(lag);
            let placeable: Vec<index::SlaveIdx> = lock(&self.slaves)
                .placeable()
                .iter()
                .map(|s| s.idx)
                .collect();
            metrics::LIVE_SLAVES.set(if active { placeable.len() as i64 } else { 0 });
            {
                let index = lock(&self.index);
                metrics::KEYS.set(index.len() as i64);
                let short = if active {
                    index.count_under_replicated(r, |i| placeable.contains(&i))
                } else {
                    0
                };
                metrics::UNDER_REPLICATED.set(short as i64);
            }
            let dir = self.config.log_dir.clone();
            if let Ok(Ok(bytes)) = tokio::task::spawn_blocking(move || wal::log_bytes(&dir)).await {
                metrics::LOG_BYTES.set(bytes as i64);
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// The standby → takeover → active → (deposed) standby loop.
    async fn run_roles(self: Arc<Self>, cancel: CancellationToken) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let Some(term) = self.standby(&cancel, started).await? else {
                return Ok(());
            };
            self.active(term, &cancel).await?;
            if cancel.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Replays the log from scratch into a fresh index, then follows it until
    /// this process takes over (Some) or is cancelled (None).
    async fn standby(
        self: &Arc<Self>,
        cancel: &CancellationToken,
        started: Instant,
    ) -> anyhow::Result<Option<Arc<Term>>> {
        *lock(&self.role) = Role::Standby {
            leader: String::new(),
        };
        *lock(&self.index) = Index::default();
        *lock(&self.slaves) = Registry::default();
        let dir = self.config.log_dir.clone();
        let replay_started = Instant::now();
        let mut reader = tokio::task::spawn_blocking(move || LogReader::open(&dir))
            .await?
            .with_context(|| format!("cannot open the log in {}", self.config.log_dir.display()))?;
        reader = self.catch_up(reader).await?;
        info!(
            keys = lock(&self.index).len(),
            last_seq = reader.last_seq(),
            elapsed_ms = replay_started.elapsed().as_millis() as u64,
            "standby: log replayed, following it"
        );
        let margin = self.config.lease_ttl / 2;
        loop {
            let lease = self.lease.read()?;
            let free = lease
                .as_ref()
                .is_none_or(|l| l.is_expired(now_unix_ms(), margin));
            // An expired lease names a master that is dead or paused: do not
            // send clients and slaves there.
            let leader = match &lease {
                Some(l) if !free => l.address.clone(),
                _ => String::new(),
            };
            *lock(&self.role) = Role::Standby { leader };
            let may_try = self.config.prefer_active || started.elapsed() >= self.config.lease_ttl;
            if free && may_try {
                let (back, outcome) = self.try_takeover(reader).await?;
                reader = back;
                match outcome {
                    Ok(Some(term)) => return Ok(Some(term)),
                    Ok(None) => {}
                    // A damaged log stays fatal: retrying cannot fix it.
                    Err(e) if is_log_damage(&e) => return Err(e),
                    // A full or failing log volume: keep following the log
                    // and try again once it may have recovered.
                    Err(e) => {
                        warn!("cannot take over yet, retrying in {TAKEOVER_RETRY:?}: {e:#}");
                        tokio::select! {
                            _ = cancel.cancelled() => return Ok(None),
                            _ = tokio::time::sleep(TAKEOVER_RETRY) => {}
                        }
                    }
                }
            }
            reader = self.catch_up(reader).await?;
            if reader.invalidated() {
                // A deposed master's late record was applied before the
                // epoch that invalidates it became visible: start over.
                info!(
                    "standby: the log's epoch history changed under the follower; replaying again"
                );
                return Box::pin(self.standby(cancel, started)).await;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Applies every new log record to the index.
    async fn catch_up(self: &Arc<Self>, mut reader: LogReader) -> anyhow::Result<LogReader> {
        let master = self.clone();
        tokio::task::spawn_blocking(move || {
            let result = master.apply_new_records(&mut reader);
            result.map(|_| reader)
        })
        .await?
    }

    fn apply_new_records(&self, reader: &mut LogReader) -> anyhow::Result<()> {
        let mut index = lock(&self.index);
        reader
            .poll(|record, pos| {
                index.record(&record.key, record.version, pos, Vec::new());
            })
            .with_context(|| {
                format!("cannot replay the log in {}", self.config.log_dir.display())
            })?;
        self.log_end_seq.store(reader.last_seq(), Ordering::SeqCst);
        *lock(&self.caught_up_at) = Instant::now();
        Ok(())
    }

    /// Takes the lease if it is still free: the takeover of step 2. The
    /// reader comes back even when the takeover failed.
    async fn try_takeover(
        self: &Arc<Self>,
        mut reader: LogReader,
    ) -> anyhow::Result<(LogReader, anyhow::Result<Option<Arc<Term>>>)> {
        let master = self.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let outcome = master.takeover_locked(&mut reader);
            (reader, outcome)
        })
        .await?)
    }

    fn takeover_locked(&self, reader: &mut LogReader) -> anyhow::Result<Option<Arc<Term>>> {
        let config = &self.config;
        let guard = self.lease.lock()?;
        let lease = self.lease.read()?;
        if lease
            .as_ref()
            .is_some_and(|l| !l.is_expired(now_unix_ms(), config.lease_ttl / 2))
        {
            return Ok(None);
        }
        // The old master can no longer acknowledge (its lease deadline has
        // passed), so the log it leaves is final up to here: read it all.
        self.apply_new_records(reader)?;
        let history = EpochHistory::load(&config.log_dir)?;
        let last_epoch = history
            .latest()
            .map(|(epoch, _)| epoch)
            .max(lease.as_ref().map(|l| l.epoch))
            .unwrap_or(0);
        let epoch = last_epoch + 1;
        let start_seq = reader.last_seq() + 1;
        // Persist where the old epoch ends before writing anything new:
        // records of older epochs at or beyond `start_seq` are ignored.
        EpochHistory::append(&config.log_dir, epoch, start_seq)?;
        let renewed_at = Instant::now();
        self.lease.write(
            &guard,
            &LeaseRecord {
                holder: config.id.clone(),
                address: config.advertise.clone(),
                epoch,
                expires_unix_ms: now_unix_ms() + config.lease_ttl.as_millis() as u64,
            },
        )?;
        drop(guard);
        let writer = LogWriter::open(
            &config.log_dir,
            epoch,
            start_seq,
            config.segment_bytes,
            config.commit_window,
        )?;
        info!(
            epoch,
            start_seq,
            keys = lock(&self.index).len(),
            "took over as the active master; fencing slaves"
        );
        metrics::FAILOVERS.inc();
        Ok(Some(Arc::new(Term {
            epoch,
            writer,
            deadline: Mutex::new(renewed_at + config.lease_ttl),
            serving: AtomicBool::new(false),
            deposed: AtomicBool::new(false),
            deposed_notify: Notify::new(),
            fenced: Mutex::new(HashSet::new()),
        })))
    }

    /// Serves as the active master until deposed or cancelled, renewing the
    /// lease every quarter of its duration.
    async fn active(
        self: &Arc<Self>,
        term: Arc<Term>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        *lock(&self.role) = Role::Active(term.clone());
        let period = self.config.lease_ttl / 4;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.release_lease(&term).await;
                    return Ok(());
                }
                _ = term.deposed_notify.notified() => {}
                _ = tokio::time::sleep(period) => {}
            }
            if term.is_deposed() {
                return Ok(());
            }
            let renew_started = Instant::now();
            let master = self.clone();
            let epoch = term.epoch;
            match tokio::task::spawn_blocking(move || master.renew_locked(epoch)).await? {
                Ok(None) => *lock(&term.deadline) = renew_started + self.config.lease_ttl,
                Ok(Some(why)) => term.depose(&why),
                Err(e) => warn!("cannot renew the lease: {e:#}"),
            }
        }
    }

    /// Renews the lease if this term still holds it; otherwise returns why
    /// the term is over.
    fn renew_locked(&self, epoch: u64) -> anyhow::Result<Option<String>> {
        let guard = self.lease.lock()?;
        // A takeover appends its epoch before it writes the lease. If the
        // lease write failed (full log volume), the lease still names us, but
        // our records from that epoch's start seq on are already invalid on
        // replay: acknowledging them would lose them. Tested by
        // `tests/disk_faults.rs`.
        if let Some((newer, start_seq)) = EpochHistory::load(&self.config.log_dir)?
            .latest()
            .filter(|(newer, _)| *newer > epoch)
        {
            return Ok(Some(format!(
                "a takeover started epoch {newer} at seq {start_seq} in the log's epoch history"
            )));
        }
        let current = self.lease.read()?;
        match current {
            Some(l) if l.holder == self.config.id && l.epoch == epoch => {
                self.lease.write(
                    &guard,
                    &LeaseRecord {
                        expires_unix_ms: now_unix_ms() + self.config.lease_ttl.as_millis() as u64,
                        ..l
                    },
                )?;
                Ok(None)
            }
            Some(l) => Ok(Some(format!(
                "the lease is now held by {} at {} (epoch {})",
                l.holder, l.address, l.epoch
            ))),
            None => Ok(Some("the lease file was removed".into())),
        }
    }

    /// On a clean shutdown, expires the lease so the standby takes over
    /// without waiting for it to time out.
    async fn release_lease(self: &Arc<Self>, term: &Arc<Term>) {
        term.depose("shutting down");
        let master = self.clone();
        let epoch = term.epoch;
        let released = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let guard = master.lease.lock()?;
            if let Some(l) = master.lease.read()?
                && l.holder == master.config.id
                && l.epoch == epoch
            {
                master.lease.write(
                    &guard,
                    &LeaseRecord {
                        expires_unix_ms: 0,
                        ..l
                    },
                )?;
            }
            Ok(())
        })
        .await;
        match released {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!("cannot release the lease: {e:#}"),
            Err(e) => error!("cannot release the lease: {e}"),
        }
    }
}
