//! The slave: stores values with their versions and does what the active
//! master tells it to.
//!
//! - [`store`] keeps values, versions and the fenced epoch in an append-only file
//!   in the slave's own data directory; a put is acknowledged only once it is
//!   on disk, so a restart (even `kill -9`) loses nothing acknowledged.
//! - [`service`] is the `Replica` gRPC service the master calls (Put, Get,
//!   Fence, Inventory), with the epoch fencing check.
//! - [`registration`] is the slave's side of `Control`: register with the
//!   active master, heartbeat, fail over to the other master.
//!
//! [`run`] ties them together for the `dsm slave` command; [`Slave`] does the
//! same in steps for tests and for callers that want the registration state.

pub mod registration;
pub mod service;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::metrics;
use crate::proto::replica_server::ReplicaServer;
use crate::security::Security;
use registration::Registration;
use service::ReplicaService;
use store::{Store, StoreOptions};

/// Default time between two heartbeat Pings.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a shutting-down slave waits for its connections to close before
/// it drops them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1000);

/// How to run a slave.
#[derive(Clone, Debug)]
pub struct SlaveConfig {
    /// Stable identity; recorded in the data directory, which refuses any other id.
    pub id: String,
    /// Address the Replica and health services listen on.
    pub listen: SocketAddr,
    /// Address masters dial to reach this slave (e.g. the pod's DNS name and
    /// port); differs from `listen` behind NAT or when listening on 0.0.0.0.
    pub advertise: String,
    /// Directory holding the slave's database; must survive restarts.
    pub data_dir: PathBuf,
    /// Master-capable processes, master first, backup second (`host:port`).
    pub masters: Vec<String>,
    /// Time between heartbeat Pings; a master silent for three intervals is
    /// given up.
    pub heartbeat_interval: Duration,
    /// TLS for the Replica server and for registration with the masters
    /// (see [`crate::security`]); the default is plaintext.
    pub security: Security,
    /// How the store batches its commits.
    pub store: StoreOptions,
}

/// An opened slave, not yet serving: its store is open and its registration
/// state can be watched.
pub struct Slave {
    /// The slave's durable store.
    store: Store,
    /// The register/heartbeat loop, started by [`Slave::serve`].
    registration: Registration,
    /// How the Replica server is protected.
    security: Security,
}

impl Slave {
    /// Opens the slave's store (creating the data directory). Fails if the
    /// directory belongs to another slave id or is in use by another process.
    pub async fn open(config: SlaveConfig) -> anyhow::Result<Slave> {
        let dir = config.data_dir.clone();
        let id = config.id.clone();
        // Opening replays the whole store file: keep it off the runtime.
        let options = config.store;
        let store = tokio::task::spawn_blocking(move || Store::open_with(&dir, &id, options))
            .await
            .context("store open task failed")?
            .with_context(|| format!("opening slave data in {}", config.data_dir.display()))?;
        let registration = Registration::new(
            config.id,
            config.advertise,
            config.masters,
            config.heartbeat_interval,
            store.clone(),
        )
        .with_tls(config.security.client.clone());
        Ok(Slave {
            store,
            registration,
            security: config.security,
        })
    }

    /// The slave's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The master the slave is registered with, `None` while it is not
    /// registered (what readiness reports).
    pub fn registered(&self) -> watch::Receiver<Option<String>> {
        self.registration.subscribe()
    }

    /// Serves Replica and gRPC health on `listener` and keeps the slave
    /// registered, until `shutdown` completes. Then, in this order: tells the
    /// master it is leaving (so it routes nothing new here), lets in-flight
    /// requests finish (pipelined streams take no new work and end), stops the
    /// server (connections still open after [`SHUTDOWN_GRACE`] are dropped:
    /// every acknowledged Put is durable already) and closes the store.
    /// Returns an error if the server fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Slave {
            store,
            registration,
            security,
        } = self;
        let local = listener.local_addr().context("listener address")?;

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<ReplicaServer<ReplicaService>>().await;

        // Stops registration and the gauges.
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            // An error means the sender is gone, which also means stop.
            let _ = rx.wait_for(|stop| *stop).await;
        };

        let service = ReplicaService::new(store.clone());
        let stopping = service.stopping();
        let router = Server::builder()
            .layer(security.auth_layer(&metrics::slave().auth_rejected))
            .add_service(health_service)
            .add_service(service.into_server());
        let stop = stopping.clone().cancelled_owned();
        let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match &security.server {
                Some(tls) => Box::pin(
                    router.serve_with_incoming_shutdown(tls.clone().incoming(listener), stop),
                ),
                None => {
                    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                    Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
                }
            };
        let gauges = tokio::spawn(publish_gauges(
            store.clone(),
            registration.subscribe(),
            stopped(stop_rx.clone()),
        ));
        let mut registration = tokio::spawn(registration.run(stopped(stop_rx)));
        tracing::info!(id = store.id(), %local, epoch = store.epoch(), "slave serving");

        tokio::pin!(server);
        let result = tokio::select! {
            res = &mut server => res.context("replica server stopped unexpectedly"),
            () = shutdown => {
                tracing::info!("slave shutting down");
                health.set_not_serving::<ReplicaServer<ReplicaService>>().await;
                stop_tx.send_replace(true);
                // Registration tells the master first, bounded by its own timeout.
                if let Err(e) = (&mut registration).await {
                    tracing::error!(error = %e, "registration task failed");
                }
                stopping.cancel();
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                    Ok(res) => res.context("replica server failed while shutting down"),
                    Err(_) => {
                        tracing::warn!(
                            "connections still open {SHUTDOWN_GRACE:?} after shutdown began; closing them"
                        );
                        Ok(())
                    }
                }
            }
        };
        stop_tx.send_replace(true);
        stopping.cancel();
        let _ = gauges.await;
        if !registration.is_finished() {
            registration.abort();
        }
        // Every acknowledged write is already durable; this waits for a
        // batch that may be mid-commit.
        store.close().await.context("closing slave store")?;
        tracing::info!("slave stopped");
        result
    }
}

/// Refreshes the slave's gauges once a second until `stop`.
async fn publish_gauges(
    store: Store,
    registered: watch::Receiver<Option<String>>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let metrics = metrics::slave();
    loop {
        let counted = store.clone();
        if let Ok(Ok(keys)) = tokio::task::spawn_blocking(move || counted.len()).await {
            metrics.keys.set(keys as i64);
        }
        metrics.epoch.set(store.epoch() as i64);
        metrics
            .registered
            .set(i64::from(registered.borrow().is_some()));
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Runs a slave until `shutdown` completes: opens its store, binds
/// `config.listen`, serves Replica and gRPC health, and registers with the
/// active master.
pub async fn run(
    config: SlaveConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    Slave::open(config).await?.serve(listener, shutdown).await
}

#[cfg(test)]
mod tests;
