//! Starting the operator: pre-flight check, metrics server, leader election, then the
//! kube-rs `Controller` driving [`reconcile`] for every DsmCluster.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, CustomResourceExt};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::crd::DsmCluster;
use crate::leader::LeaderElection;
use crate::metrics::{self, Metrics};
use crate::node::GrpcNodes;
use crate::objects::{LABEL_MANAGED_BY, MANAGER};
use crate::reconcile::{Context, error_policy, reconcile};

/// How the operator runs (from its command line).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub metrics_listen: SocketAddr,
    /// Take part in leader election (off only when a single replica runs).
    pub leader_elect: bool,
    /// The namespace the operator runs in (its pod's), which the clusters'
    /// NetworkPolicies let through to the masters.
    pub namespace: Option<String>,
    /// Namespace of the leader Lease (default: `namespace`, else the client's default).
    pub lease_namespace: Option<String>,
    /// Name of the leader Lease.
    pub lease_name: String,
    /// Duration of the leader Lease.
    pub lease_ttl: Duration,
    /// This replica's identity (its pod name).
    pub identity: String,
}

/// Why the operator cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No usable Kubernetes configuration.
    #[error("cannot configure a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The DsmCluster CRD is not installed (or not readable).
    #[error(
        "the DsmCluster CRD ({crd}) is not queryable: {source}. Install it with \
         `kubectl apply -f manifests/crd.yaml` (or `dsm-operator crd | kubectl apply -f -`)"
    )]
    MissingCrd {
        /// The CRD's name.
        crd: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// The metrics could not be registered.
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The metrics server could not start.
    #[error("cannot serve metrics: {0}")]
    Serve(#[from] std::io::Error),
}

/// Whether the Prometheus Operator's ServiceMonitor kind is served.
async fn service_monitor_crd(client: &Client) -> bool {
    match client
        .list_api_group_resources("monitoring.coreos.com/v1")
        .await
    {
        Ok(list) => list.resources.iter().any(|r| r.name == "servicemonitors"),
        Err(_) => false,
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the operator until a termination signal, or until leadership is lost.
///
/// # Errors
/// When it cannot start: no Kubernetes configuration, CRD missing, metrics port taken.
pub async fn run(settings: Settings) -> Result<(), StartError> {
    let client = Client::try_default().await.map_err(StartError::Client)?;

    // Pre-flight: the CRD must be installed.
    let clusters: Api<DsmCluster> = Api::all(client.clone());
    if let Err(source) = clusters.list(&ListParams::default().limit(1)).await {
        return Err(StartError::MissingCrd {
            crd: DsmCluster::crd_name().to_string(),
            source,
        });
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            termination_signal().await;
            info!("termination signal received");
            let _ = stop_tx.send(true);
        });
    }

    let registry = Arc::new(prometheus::Registry::new());
    let metrics = Arc::new(Metrics::register(&registry)?);
    let listener = tokio::net::TcpListener::bind(settings.metrics_listen).await?;
    info!(address = %settings.metrics_listen, "serving /metrics, /healthz and /readyz");
    let server = tokio::spawn(metrics::serve(listener, registry, stopped(stop_rx.clone())));

    if settings.leader_elect {
        let namespace = settings
            .lease_namespace
            .clone()
            .or_else(|| settings.namespace.clone())
            .unwrap_or_else(|| client.default_namespace().to_string());
        let election = Arc::new(LeaderElection {
            api: Api::<Lease>::namespaced(client.clone(), &namespace),
            lease_name: settings.lease_name.clone(),
            identity: settings.identity.clone(),
            ttl: settings.lease_ttl,
        });
        tokio::select! {
            _ = election.acquire() => {}
            _ = stopped(stop_rx.clone()) => return Ok(()),
        }
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            election.hold().await;
            error!("leadership lost: stopping the controller");
            let _ = stop_tx.send(true);
        });
    }

    let context = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.to_string(),
                instance: Some(settings.identity.clone()),
            },
        ),
        metrics,
        nodes: Arc::new(GrpcNodes::default()),
        service_monitor_crd: service_monitor_crd(&client).await,
        operator_namespace: settings.namespace.clone(),
        client: client.clone(),
    });
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    Controller::new(clusters, watcher::Config::default().any_semantic())
        .owns(Api::<StatefulSet>::all(client.clone()), owned.clone())
        .owns(Api::<Pod>::all(client.clone()), owned.clone())
        .owns(Api::<Deployment>::all(client), owned)
        .graceful_shutdown_on(stopped(stop_rx))
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => info!(cluster = %object.name, "reconciled"),
                Err(error) => warn!(%error, "reconcile failed"),
            }
        })
        .await;
    let _ = stop_tx.send(true);
    match server.await {
        Ok(result) => result?,
        Err(error) => warn!(%error, "metrics server task failed"),
    }
    Ok(())
}
