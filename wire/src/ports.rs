//! The nodes' default ports: the `dsm` flags default to them, `dsm local` counts up
//! from them, and the operator's pods listen on them. On Kubernetes each node has its
//! pod's network to itself, so every node serves its metrics on [`METRICS`]; the
//! backup's and the slave's own defaults differ only so that one host can run all three.

/// gRPC port of the master (`dsm master`).
pub const MASTER: u16 = 12345;
/// gRPC port of the backup master (`dsm backup`).
pub const BACKUP: u16 = 12346;
/// gRPC port of a slave (`dsm slave`).
pub const SLAVE: u16 = 12400;
/// HTTP port of `/metrics`, `/healthz` and `/readyz`: the master's default, and every
/// node's in a pod.
pub const METRICS: u16 = 9100;
/// The backup master's default metrics port.
pub const BACKUP_METRICS: u16 = 9101;
/// A slave's default metrics port.
pub const SLAVE_METRICS: u16 = 9102;
