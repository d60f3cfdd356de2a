//! DSM node library: everything the `dsm` binary runs.
pub mod proto;
pub mod version;
