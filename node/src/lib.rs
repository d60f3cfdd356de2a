//! DSM node library: everything the `dsm` binary runs.
//!
//! `docs/ARCHITECTURE.md` walks through the whole system: who owns what, the
//! invariants and where each is enforced, a WRITE, a READ and a takeover.
//!
//! A tour, in the order a request travels:
//! - [`client`]: the failover client library, the `dsm client` command and
//!   its REPL; [`quoting`] is how keys and values are shown to people.
//! - [`master`]: the master-capable role (`dsm master`, `dsm backup`): the
//!   failover state machine, terms and fencing, the lease, the key index, the
//!   READ/WRITE paths, exactly-once sessions, re-replication, compaction.
//! - [`wal`]: the write-ahead log (`kv_store` segments, group commit,
//!   replay, compaction); [`commit_window`]: how the log and the slaves'
//!   stores batch fsyncs.
//! - [`slave`]: the storage role: versioned values in an embedded database.
//! - [`local`]: `dsm local`, a whole cluster as child processes;
//!   [`process`] supervises each of them, [`ports`] finds them free ports.
//! - [`snapshot`]: snapshot files (`dsm snapshot save`, `status`, `restore`).
//! - [`bench`](mod@bench): `dsm bench`, load generation, results and plots.
//! - [`chaos`]: `dsm chaos` and the nemesis test: faults injected at random,
//!   the history checked for linearizability.
//! - [`metrics`]: Prometheus metrics and the health endpoints.
//! - [`security`]: TLS, mutual TLS between members, client tokens.
//! - [`proto`]: the gRPC code of the wire contract (the `dsm-wire` crate,
//!   which the operator shares: metadata keys, roles, ports, variables);
//!   [`version`], [`limits`]: shared types; [`backoff`], [`error_chain`]:
//!   helpers of the client and the slave.
//! - [`crash_points`]: named crash points of the WRITE path (feature
//!   `failpoints`); `fuzzing` (feature `fuzzing`): entry points of the fuzz targets.
#![deny(missing_docs)]

pub mod backoff;
pub mod bench;
pub mod chaos;
pub mod client;
pub mod commit_window;
pub mod crash_points;
pub mod error_chain;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod limits;
pub mod local;
pub mod log_dump;
pub mod master;
pub mod metrics;
pub mod pipeline;
pub mod ports;
pub mod process;
pub mod quoting;
pub mod security;
pub mod slave;
pub mod snapshot;
pub mod version;
pub mod wal;

pub use dsm_wire::proto;
