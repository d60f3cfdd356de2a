//! The DSM operator: reconciles `DsmCluster` resources into the pods, volumes and
//! Services of a DSM cluster.
//!
//! A tour of the modules:
//! - [`crd`]: the `DsmCluster` custom resource, its defaults and schema validation.
//! - [`names`]: the names, labels and addresses of a cluster's objects.
//! - [`objects`]: the Kubernetes objects a spec produces, as pure functions.
//! - [`netpol`]: the NetworkPolicies that limit who may connect to the nodes.
//! - [`certs`]: the cluster CA and member certificate the operator issues and renews.
//! - [`plan`]: what to change given what was observed (scaling, rollouts, roles).
//! - [`status`]: the status and conditions reported back.
//! - [`node`]: the gRPC calls to the DSM nodes (`Kv.Status`, `Kv.Drain`), over TLS and
//!   with a token when the cluster demands them.
//! - [`reconcile`]: the reconcile loop tying the above together.
//! - [`controller`]: start-up: pre-flight check, metrics server, leader election.
//! - [`leader`]: leader election on a coordination.k8s.io Lease.
//! - [`metrics`]: the operator's own metrics and HTTP endpoints.
//! - [`error`]: the error type and its metric labels.
#![deny(missing_docs)]

pub mod certs;
pub mod controller;
pub mod crd;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod netpol;
pub mod node;
pub mod objects;
pub mod plan;
pub mod reconcile;
pub mod status;

#[cfg(test)]
mod fixtures;
