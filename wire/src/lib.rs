//! The DSM wire contract: everything the `dsm` nodes, their clients and the operator
//! must agree on, in one crate both the node and the operator build on.
//!
//! A tour of the modules:
//! - [`proto`]: the gRPC services and messages, generated from `proto/dsm.proto`.
//! - [`metadata`]: the gRPC metadata keys the `.proto` file cannot carry.
//! - [`role`]: whether a master-capable process is the active master ([`Role`]), as
//!   `Kv.Status` reports it.
//! - [`ports`]: the nodes' default ports.
//! - [`env`](mod@env): the environment variables the `dsm` flags read.
//! - [`paths`]: where a node's container keeps its data and finds its Secrets.
#![deny(missing_docs)]

pub mod env;
pub mod metadata;
pub mod paths;
pub mod ports;
pub mod proto;
pub mod role;

pub use role::{Role, UnknownRole};
