//! Where things are in a node's container on Kubernetes: the data directories the node
//! image (`docker/node.Dockerfile`) creates for the nodes' user, and where the Secrets
//! are mounted. The operator's pods use these, and the chart's snapshot CronJob mounts
//! the member certificate at [`TLS_DIR`] as well.

/// Where master and backup mount the shared log volume.
pub const LOG_DIR: &str = "/var/lib/dsm/log";
/// Where each slave mounts its data volume.
pub const DATA_DIR: &str = "/var/lib/dsm/data";
/// Where the member certificate Secret (or, in the client pod, only its `ca.crt`) is
/// mounted.
pub const TLS_DIR: &str = "/etc/dsm/tls";
/// Where master and backup mount the token Secret.
pub const AUTH_DIR: &str = "/etc/dsm/auth";
