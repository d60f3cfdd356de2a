//! The Kubernetes objects a `DsmCluster` spec produces, as plain functions of the spec.
//!
//! Nothing here talks to the API server, so every object can be unit-tested. The
//! reconciler applies what these functions return with server-side apply; each object
//! carries an ownerReference to its `DsmCluster`, so deleting the cluster deletes them all
//! (the slaves' own PVCs go with the StatefulSet through its retention policy).
//!
//! One file per part of the cluster, each with everything that part needs (their public
//! items are re-exported here, so callers write `objects::master_pod`):
//! - `config`: the ConfigMap of the nodes' flags, and the checksums that roll the pods
//!   reading it when it changes;
//! - `pod`: what every DSM pod shares: the hardened container and pod spec, probes,
//!   `/tmp`;
//! - `masters`: master and backup (the log volume, their pods and spec hash, the restore
//!   of `spec.bootstrap`, their Services, the leader Service);
//! - `slaves`: the slave StatefulSet, its headless Service and PodDisruptionBudget;
//! - `client`: the idle client Deployment;
//! - `secrets`: the TLS Secrets the operator writes, and how each pod mounts the TLS and
//!   token Secrets;
//! - `monitoring`: the ServiceMonitor.
//!
//! Names and labels are not here but in [`crate::names`]: the certificates, the
//! NetworkPolicies, the plan and the status name the same objects, and `certs` must not
//! depend on the objects (their Secrets are built from its certificates). The
//! NetworkPolicies stay in [`crate::netpol`], which builds on `meta`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crd::DsmCluster;
use crate::error::{Error, Result};

mod client;
mod config;
mod masters;
mod monitoring;
mod pod;
mod secrets;
mod slaves;
#[cfg(test)]
mod tests;

pub use client::client_deployment;
pub use config::{config_data, config_map, master_config_checksum, shared_config_checksum};
pub use masters::{
    SNAPSHOT_DIR, leader_service, log_pvc, master_pod, master_pod_hash, restored_from, seat_service,
};
pub use monitoring::{service_monitor, service_monitor_resource};
pub use pod::RUN_AS_USER;
pub use secrets::{
    CLIENT_TOKEN, READ_ONLY_TOKENS, TOKENS, member_tls_secret, tls_ca_secret, tls_secret,
};
pub use slaves::{pod_disruption_budget, slave_set, slaves_service};

/// The names live in [`crate::names`]; the node crate's tests
/// (`node/tests/operator_certificates.rs`) reach them through here.
pub use crate::names::Names;

fn owner(dc: &DsmCluster) -> Result<OwnerReference> {
    dc.controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))
}

/// Metadata of an object of the cluster: name, namespace, labels and the ownerReference.
pub(crate) fn meta(
    dc: &DsmCluster,
    names: &Names,
    name: String,
    labels: BTreeMap<String, String>,
) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![owner(dc)?]),
        ..ObjectMeta::default()
    })
}

/// A short, stable hash of any serializable value.
fn hash_of<T: Serialize>(value: &T) -> Result<String> {
    let bytes = serde_json::to_vec(value).map_err(Error::Serialization)?;
    let digest = Sha256::digest(bytes);
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// An environment variable with a plain value.
fn env_var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// A Service port targeting the container port of the same name (`grpc`, `metrics`), so
/// master and backup, which listen on different ports, are published the same way.
fn service_port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    }
}
