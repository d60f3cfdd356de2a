//! Named fault-injection points in the WRITE path (the `fail` crate).
//!
//! They exist only in builds with the `failpoints` feature; in every other
//! build `fail::fail_point!` expands to nothing. A process built with the
//! feature reads the `FAILPOINTS` environment variable at startup
//! (`FailScenario::setup` in `main`), e.g.
//!
//! ```text
//! FAILPOINTS='write::after_log_durable=3*off->return' dsm master ...
//! ```
//!
//! lets three WRITEs through that point and crashes the process on the
//! fourth. Every point understands the `return` action, with an optional
//! argument:
//! - no argument or `crash`: the process kills itself with SIGKILL, as
//!   `kill -9` or the OOM killer would: no destructor runs, no buffer is
//!   flushed, the lease is not released. (`panic` would only end the tokio
//!   task that hit it, which is not a crash.)
//! - `eio`, `enospc` (only [`AFTER_LOG_WRITE_BEFORE_FSYNC`]): the log's
//!   fsync fails with that OS error instead of running, as a dying disk or a
//!   full thin-provisioned volume would make it.
//!
//! The points, in the order a WRITE passes them, are the constants below;
//! `tests/crash_points.rs` crashes at each and checks recovery.

/// Validated, before anything is appended to the log.
pub const BEFORE_LOG_APPEND: &str = "write::before_log_append";
/// In the log writer thread, before a batch is written. Only for `return`:
/// the batch is answered as written (so its WRITEs go to their slaves) but
/// never reaches the file, and the writer thread stops: what a power cut
/// does to records no fsync covered yet. Combined with
/// [`AFTER_REPLICATION`], it leaves on the slaves a version the log never
/// got (a stray).
pub const LOG_WRITE_LOST: &str = "wal::write_lost";
/// In the log writer thread: the batch is written (in the page cache) but
/// not yet fsynced; its WRITEs may be on their way to the slaves.
pub const AFTER_LOG_WRITE_BEFORE_FSYNC: &str = "wal::after_write_before_fsync";
/// The record is durable in the log; the slaves may not have it yet.
pub const AFTER_LOG_DURABLE: &str = "write::after_log_durable";
/// A quorum of slaves stored the value; the log's fsync may not have
/// returned yet.
pub const AFTER_REPLICATION: &str = "write::after_replication";
/// The record is durable and a quorum stored it; the client has no answer yet.
pub const AFTER_QUORUM_BEFORE_REPLY: &str = "write::after_quorum_before_reply";

/// Kills this process with SIGKILL: the crash a fail point simulates.
///
/// Generic in its (never produced) return type so that it fits any
/// `fail_point!` closure.
#[cfg(feature = "failpoints")]
pub fn crash<T>(point: &str) -> T {
    use nix::sys::signal::{Signal, raise};
    use std::io::Write;
    // stderr is unbuffered: this line reaches the log before the process
    // dies. Not `eprintln!`, which panics if stderr fails (full volume).
    let _ = writeln!(
        std::io::stderr(),
        "fail point {point}: crashing this process with SIGKILL"
    );
    let _ = raise(Signal::SIGKILL);
    // SIGKILL cannot be caught; this is only reached if raise itself failed.
    std::process::abort()
}

/// The I/O error a fail point configured with `return(ARG)` injects, or a
/// crash when ARG is absent, `crash`, or unknown.
#[cfg(feature = "failpoints")]
pub fn io_error(point: &str, arg: Option<String>) -> std::io::Error {
    use nix::errno::Errno;
    let errno = match arg.as_deref() {
        Some("eio") => Errno::EIO,
        Some("enospc") => Errno::ENOSPC,
        _ => crash(point),
    };
    tracing::error!(point, %errno, "fail point: injecting an I/O error");
    std::io::Error::from_raw_os_error(errno as i32)
}
