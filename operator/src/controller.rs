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
use kube::config::Kubeconfig;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Config, CustomResourceExt};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::crd::DsmCluster;
use crate::leader::LeaderElection;
use crate::metrics::{self, Metrics};
use crate::names::{LABEL_MANAGED_BY, MANAGER};
use crate::node::GrpcNodes;
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
    /// Namespace of the leader Lease (default: `namespace`, else the one the Kubernetes
    /// configuration names; see [`lease_namespace`]).
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
    /// Leader election has no namespace to put its Lease in.
    #[error(
        "no namespace for the leader Lease: set --lease-namespace (DSM_OPERATOR_LEASE_NAMESPACE) \
         or --namespace (POD_NAMESPACE), give the kubeconfig context a namespace \
         (`kubectl config set-context --current --namespace dsm-system`), \
         or run a single operator with --leader-elect=false"
    )]
    NoLeaseNamespace,
    /// The API server forbids this operator its leader Lease.
    #[error(
        "the API server forbids the leader Lease {namespace}/{lease}: {source}. The shipped RBAC \
         grants it in the operator's namespace (dsm-system): pass --lease-namespace \
         (DSM_OPERATOR_LEASE_NAMESPACE) naming that namespace, grant get, create and update on \
         leases in {namespace}, or run a single operator with --leader-elect=false"
    )]
    LeaseForbidden {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        lease: String,
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

/// The namespace the Kubernetes configuration names itself: the kubeconfig's current
/// context's, or without a kubeconfig (in a pod) the service account's. `None` when the
/// kubeconfig context names none, where kube would assume `default`.
fn configured_namespace(kubeconfig: Option<&Kubeconfig>, config: &Config) -> Option<String> {
    let Some(kubeconfig) = kubeconfig else {
        return Some(config.default_namespace.clone());
    };
    let current = kubeconfig.current_context.as_deref()?;
    kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == current)?
        .context
        .as_ref()?
        .namespace
        .clone()
}

/// Where the leader Lease lives: `--lease-namespace`, else the operator's own namespace
/// (`--namespace`, POD_NAMESPACE in a pod), else the namespace the Kubernetes
/// configuration names (`configured`, see `configured_namespace`). Never a guessed
/// `default`: run from a laptop with a kubeconfig naming no namespace, the operator would
/// look for its Lease where the shipped RBAC does not let it, and never lead.
///
/// # Errors
/// [`StartError::NoLeaseNamespace`] when none of them is set.
pub fn lease_namespace(
    settings: &Settings,
    configured: Option<String>,
) -> Result<String, StartError> {
    settings
        .lease_namespace
        .clone()
        .or_else(|| settings.namespace.clone())
        .or(configured)
        .ok_or(StartError::NoLeaseNamespace)
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
    info!(version = env!("CARGO_PKG_VERSION"), "dsm-operator starting");
    // As `Client::try_default` does, plus the namespace the configuration names.
    let kubeconfig = Kubeconfig::read().ok();
    let config = Config::infer()
        .await
        .map_err(|e| StartError::Client(kube::Error::InferConfig(e)))?;
    let configured = configured_namespace(kubeconfig.as_ref(), &config);
    let lease_namespace = if settings.leader_elect {
        Some(lease_namespace(&settings, configured)?)
    } else {
        None
    };
    let client = Client::try_from(config).map_err(StartError::Client)?;

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

    if let Some(namespace) = lease_namespace {
        info!(%namespace, lease = %settings.lease_name, "taking part in leader election");
        let election = Arc::new(LeaderElection {
            api: Api::<Lease>::namespaced(client.clone(), &namespace),
            lease_name: settings.lease_name.clone(),
            identity: settings.identity.clone(),
            ttl: settings.lease_ttl,
        });
        tokio::select! {
            acquired = election.acquire() => {
                if let Err(source) = acquired {
                    let _ = stop_tx.send(true);
                    return Err(StartError::LeaseForbidden {
                        namespace,
                        lease: settings.lease_name.clone(),
                        source,
                    });
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(lease_namespace: Option<&str>, namespace: Option<&str>) -> Settings {
        Settings {
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            leader_elect: true,
            namespace: namespace.map(str::to_string),
            lease_namespace: lease_namespace.map(str::to_string),
            lease_name: "dsm-operator".to_string(),
            lease_ttl: Duration::from_secs(15),
            identity: "dsm-operator".to_string(),
        }
    }

    fn kubeconfig(context_namespace: Option<&str>) -> Kubeconfig {
        let namespace = context_namespace
            .map(|ns| format!("\n      namespace: {ns}"))
            .unwrap_or_default();
        let yaml = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: dev\n\
             contexts:\n  - name: other\n    context:\n      cluster: c\n      namespace: elsewhere\n\
             \x20 - name: dev\n    context:\n      cluster: c{namespace}\n"
        );
        Kubeconfig::from_yaml(&yaml).expect("kubeconfig")
    }

    fn in_pod(namespace: &str) -> Config {
        let mut config = Config::new("https://10.0.0.1".parse().expect("uri"));
        config.default_namespace = namespace.to_string();
        config
    }

    #[test]
    fn the_kubeconfig_context_names_the_namespace_or_none() {
        let config = in_pod("default");
        assert_eq!(
            configured_namespace(Some(&kubeconfig(Some("dsm-system"))), &config).as_deref(),
            Some("dsm-system")
        );
        // kube would say `default` here; we do not guess.
        assert_eq!(configured_namespace(Some(&kubeconfig(None)), &config), None);
        // In a pod, without a kubeconfig: the service account's namespace.
        assert_eq!(
            configured_namespace(None, &in_pod("dsm-system")).as_deref(),
            Some("dsm-system")
        );
    }

    #[test]
    fn the_lease_namespace_comes_from_the_flags_then_the_configuration() {
        let configured = || Some("from-kubeconfig".to_string());
        let pick = |lease, ns, configured| lease_namespace(&settings(lease, ns), configured).ok();
        assert_eq!(
            pick(Some("a"), Some("b"), configured()).as_deref(),
            Some("a")
        );
        assert_eq!(pick(None, Some("b"), configured()).as_deref(), Some("b"));
        assert_eq!(
            pick(None, None, configured()).as_deref(),
            Some("from-kubeconfig")
        );
    }

    #[test]
    fn without_any_namespace_the_operator_refuses_to_start_and_names_the_flags() {
        let error = lease_namespace(&settings(None, None), None).expect_err("no namespace");
        let message = error.to_string();
        for flag in [
            "--lease-namespace",
            "DSM_OPERATOR_LEASE_NAMESPACE",
            "POD_NAMESPACE",
        ] {
            assert!(message.contains(flag), "{message}");
        }
    }
}
