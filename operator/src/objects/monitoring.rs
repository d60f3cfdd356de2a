//! The ServiceMonitor through which the Prometheus Operator scrapes a cluster's nodes
//! (`spec.metrics.serviceMonitor`; applied only when its CRD is installed).

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

use super::meta;
use crate::crd::DsmCluster;
use crate::error::Result;
use crate::names::{LABEL_INSTANCE, LABEL_SCRAPE, Names, labels};

/// The Prometheus Operator's ServiceMonitor kind.
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

/// A ServiceMonitor scraping `/metrics` of master, backup and slaves.
///
/// The DSM dashboards and alerts (`charts/dsm/dashboards`, `charts/dsm/rules`) select a
/// cluster by the `namespace` and `cluster` labels and name processes by `instance`. The
/// Prometheus Operator adds `namespace` itself; the relabelings set `cluster` to the
/// DsmCluster's name and `instance` to the pod's name (which is also a slave's id, the
/// `slave` label of `dsm_slave_requests_total`), instead of a pod IP that changes on
/// every restart.
pub fn service_monitor(dc: &DsmCluster, names: &Names) -> Result<DynamicObject> {
    let mut object = DynamicObject::new(&names.service_monitor(), &service_monitor_resource())
        .within(&names.namespace);
    object.metadata = meta(dc, names, names.service_monitor(), labels(names, "metrics"))?;
    object.data = serde_json::json!({
        "spec": {
            "selector": {
                "matchLabels": {
                    LABEL_INSTANCE: names.cluster,
                    LABEL_SCRAPE: "true",
                }
            },
            "endpoints": [{
                "port": "metrics",
                "path": "/metrics",
                "interval": "15s",
                "relabelings": [
                    {
                        "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_instance"],
                        "targetLabel": "cluster",
                    },
                    {
                        "sourceLabels": ["__meta_kubernetes_pod_name"],
                        "targetLabel": "instance",
                    },
                ],
            }],
        }
    });
    Ok(object)
}
