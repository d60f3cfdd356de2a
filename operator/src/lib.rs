//! The DSM operator: reconciles `DsmCluster` resources into the pods, volumes and
//! Services of a DSM cluster.
//!
//! A tour of the modules:
//! - [`crd`]: the `DsmCluster` custom resource, its defaults and schema validation.
//! - [`objects`]: the Kubernetes objects a spec produces, as pure functions.
//! - [`error`]: the error type and its metric labels.
#![deny(missing_docs)]

pub mod crd;
pub mod error;
pub mod objects;

#[cfg(test)]
mod fixtures;
