//! The names, labels and addresses of a cluster's objects, all derived from the
//! DsmCluster's name and namespace.
//!
//! Everything that refers to an object of a cluster takes its name from here: the objects
//! themselves ([`crate::objects`]), the member certificate, which lists the addresses
//! members are dialled at ([`crate::certs`]), the NetworkPolicies, the plan, the status
//! and the reconciler. Keeping them out of `objects` lets `certs` name the addresses
//! without depending on the objects, whose Secrets are built from its certificates.

use std::collections::BTreeMap;

use dsm_wire::ports;
use kube::ResourceExt;

use crate::crd::DsmCluster;
use crate::error::{Error, Result};

/// `app.kubernetes.io/name` of every object: always `dsm`.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the DsmCluster's name.
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/component`: master, backup, slave or client.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/managed-by`: this operator.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Set on master-capable pods to their [`Role`](dsm_wire::Role): `active` on the lease
/// holder, `standby` on the other. The leader Service selects `active`.
pub const LABEL_ROLE: &str = "dsm.io/role";
/// Set on both master-capable pods; with a ReadWriteOnce log volume their pod affinity
/// on this label keeps them on the node the volume is attached to.
pub const LABEL_LOG_VOLUME: &str = "dsm.io/log-volume";
/// Set on the Services a ServiceMonitor scrapes (not on the leader Service, which would
/// scrape the active master twice).
pub const LABEL_SCRAPE: &str = "dsm.io/scrape";
/// Set to the cluster's name on the pods allowed through the NetworkPolicies to the
/// masters' gRPC ports: the client pod, and any application pod a user labels.
pub const LABEL_CLIENT: &str = "dsm.io/client";
/// Set to `"true"` on the operator's own pod (chart and `manifests/operator.yaml`), which
/// the NetworkPolicies let through to the masters' gRPC ports for `Kv.Status` and
/// `Kv.Drain`.
pub const LABEL_OPERATOR: &str = "dsm.io/operator";
/// Hash of a master-capable pod's spec: a pod whose hash differs from the desired one is
/// outdated and gets replaced (pod specs are mostly immutable).
pub const ANNOTATION_SPEC_HASH: &str = "dsm.io/spec-hash";
/// Checksum of the configuration a pod template reads, so config changes roll the pods.
pub const ANNOTATION_CONFIG_CHECKSUM: &str = "dsm.io/config-checksum";
/// The field manager of every server-side apply.
pub const MANAGER: &str = "dsm-operator";

/// One of the two master-capable pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seat {
    /// `<name>-master`, started with `dsm master`.
    Master,
    /// `<name>-backup`, started with `dsm backup`.
    Backup,
}

impl Seat {
    /// The `dsm` subcommand and the component label.
    pub fn component(self) -> &'static str {
        match self {
            Seat::Master => "master",
            Seat::Backup => "backup",
        }
    }

    /// The gRPC port the pod listens on and its Service publishes.
    pub fn port(self) -> u16 {
        match self {
            Seat::Master => ports::MASTER,
            Seat::Backup => ports::BACKUP,
        }
    }
}

/// Names and addresses derived from a DsmCluster's name and namespace.
#[derive(Clone, Debug)]
pub struct Names {
    /// The DsmCluster's name.
    pub cluster: String,
    /// Its namespace.
    pub namespace: String,
}

impl Names {
    /// Reads name and namespace off the object.
    ///
    /// # Errors
    /// [`Error::MissingObjectKey`] when the object has no namespace (it is namespaced, so
    /// only a malformed object lacks one).
    pub fn of(dc: &DsmCluster) -> Result<Names> {
        Ok(Names {
            cluster: dc.name_any(),
            namespace: dc
                .namespace()
                .ok_or(Error::MissingObjectKey("metadata.namespace"))?,
        })
    }

    /// `<name>-config`.
    pub fn config(&self) -> String {
        format!("{}-config", self.cluster)
    }
    /// `<name>-log`.
    pub fn log_pvc(&self) -> String {
        format!("{}-log", self.cluster)
    }
    /// `<name>-master` or `<name>-backup`: the pod and its Service share the name.
    pub fn seat(&self, seat: Seat) -> String {
        format!("{}-{}", self.cluster, seat.component())
    }
    /// `<name>-leader`.
    pub fn leader(&self) -> String {
        format!("{}-leader", self.cluster)
    }
    /// `<name>-slave` (pods are `<name>-slave-0`, `<name>-slave-1` …).
    pub fn slave_set(&self) -> String {
        format!("{}-slave", self.cluster)
    }
    /// The slave pod (and slave id) of an ordinal.
    pub fn slave_pod(&self, ordinal: i32) -> String {
        format!("{}-slave-{ordinal}", self.cluster)
    }
    /// `<name>-slaves`: the headless Service giving each slave a DNS name.
    pub fn slaves_service(&self) -> String {
        format!("{}-slaves", self.cluster)
    }
    /// `<name>-client`.
    pub fn client(&self) -> String {
        format!("{}-client", self.cluster)
    }
    /// `<name>-tls-ca`: the CA Secret the operator generates.
    pub fn tls_ca(&self) -> String {
        format!("{}-tls-ca", self.cluster)
    }
    /// `<name>-tls`: the member certificate Secret the operator issues.
    pub fn tls(&self) -> String {
        format!("{}-tls", self.cluster)
    }
    /// `<name>-slaves` again, for the NetworkPolicy guarding the slaves.
    pub fn slaves_policy(&self) -> String {
        self.slaves_service()
    }
    /// `<name>-masters`: the NetworkPolicy guarding master and backup.
    pub fn masters_policy(&self) -> String {
        format!("{}-masters", self.cluster)
    }
    /// `<name>-slaves` as well, for the PodDisruptionBudget.
    pub fn pdb(&self) -> String {
        self.slaves_service()
    }
    /// `<name>` for the ServiceMonitor.
    pub fn service_monitor(&self) -> String {
        self.cluster.clone()
    }
    /// The in-cluster gRPC address of a master-capable Service.
    pub fn seat_address(&self, seat: Seat) -> String {
        format!("{}.{}.svc:{}", self.seat(seat), self.namespace, seat.port())
    }
    /// The in-cluster gRPC address of the leader Service.
    pub fn leader_address(&self) -> String {
        format!("{}.{}.svc:{}", self.leader(), self.namespace, ports::MASTER)
    }
    /// Label selector (as a string) of the slave pods.
    pub fn slave_selector(&self) -> String {
        format!(
            "{LABEL_NAME}=dsm,{LABEL_INSTANCE}={},{LABEL_COMPONENT}=slave",
            self.cluster
        )
    }
    /// Label selector (as a string) of every pod of the cluster.
    pub fn pod_selector(&self) -> String {
        format!("{LABEL_NAME}=dsm,{LABEL_INSTANCE}={}", self.cluster)
    }
}

/// Labels selecting a component's pods.
pub(crate) fn selector_labels(names: &Names, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), "dsm".to_string()),
        (LABEL_INSTANCE.to_string(), names.cluster.clone()),
        (LABEL_COMPONENT.to_string(), component.to_string()),
    ])
}

/// Selector labels plus `managed-by`.
pub(crate) fn labels(names: &Names, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(names, component);
    labels.insert(LABEL_MANAGED_BY.to_string(), MANAGER.to_string());
    labels
}
