//! Randomized fault injection checked for linearizability: `dsm chaos` and
//! the `nemesis` integration test.
//!
//! The claim under test (the guarantees of `docs/RELIABILITY.md`):
//! single-key operations are linearizable, and no acknowledged WRITE is lost
//! while at most `replicas - quorum` slaves and one of master/backup fail.
//! The modules:
//! - [`proxy`]: a fault-injecting TCP proxy put on every network link;
//! - [`cluster`]: the processes and proxies of the cluster under test, and
//!   their wall clocks (libfaketime);
//! - [`faults`]: the fault model, pure and seeded;
//! - [`history`]: the operation history (invoke / ok / refused / fail /
//!   unknown, with monotonic timestamps);
//! - [`analysis`]: the history's check, key by key;
//! - [`checker`]: the linearizability checker for one register
//!   (Wing–Gong–Lowe, as in Porcupine), with a search budget;
//! - [`nemesis`]: the driver: a run from start to summary;
//! - `workload`: the clients, on hot keys, fresh keys and counters;
//! - `pinned`: clients kept on a paused master's open connections;
//! - [`counters`]: the keys incremented by compare-and-set, and their check.
//!
//! docs/RELIABILITY.md describes the guarantees, the fault matrix and the
//! measured results.

pub mod analysis;
pub mod checker;
pub mod cluster;
pub mod counters;
pub mod faults;
pub mod history;
pub mod nemesis;
mod pinned;
pub mod proxy;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

/// Flags of `dsm chaos`.
#[derive(Args, Debug, Clone)]
pub struct ChaosArgs {
    /// Seed of every random choice (fault kinds, targets, timings, client
    /// choices) [default: random]. Printed first so a run can be replayed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// How long to inject faults (plus a warm-up and the final checks).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Number of keys (few, so that operations on a key overlap).
    #[arg(long, default_value_t = 5)]
    pub keys: usize,
    /// Number of slaves.
    #[arg(long, default_value_t = 5)]
    pub slaves: usize,
    /// Replication factor [default: a majority of the slaves].
    #[arg(long)]
    pub replication_factor: Option<usize>,
    /// Lease TTL of the masters (also their slave timeout).
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// Which faults to draw: every kind, or only clock shifts of the
    /// masters, or only long pauses of the active master.
    #[arg(long, value_enum, default_value_t = faults::Focus::Mixed)]
    pub focus: faults::Focus,
    /// Do not shift wall clocks (they need Debian's faketime package).
    #[arg(long)]
    pub no_clock_faults: bool,
    /// Directory for the run: each run gets a fresh `seed-<seed>-<time>`
    /// subdirectory with the member logs, `history.txt` and `faults.txt`.
    #[arg(long, default_value = "dsm-chaos")]
    pub dir: PathBuf,
    /// Start the masters with the deliberately broken acknowledgement, to
    /// see the checker catch it (test-only builds with the
    /// `chaos-broken-ack` feature).
    #[cfg(feature = "chaos-broken-ack")]
    #[arg(long, hide = true)]
    pub broken_ack: bool,
    /// Start the masters with the takeover of older versions (test-only
    /// builds with the `chaos-broken-takeover` feature).
    #[cfg(feature = "chaos-broken-takeover")]
    #[arg(long, hide = true)]
    pub broken_takeover: bool,
    /// Start the masters answering NOT_FOUND without confirming their term
    /// (test-only builds with the `chaos-broken-read` feature).
    #[cfg(feature = "chaos-broken-read")]
    #[arg(long, hide = true)]
    pub broken_read: bool,
}

/// Runs `dsm chaos`: exit code 0 when the run passed, 1 when it found a
/// violation or another failure.
///
/// # Errors
/// When the cluster cannot be started.
pub async fn run(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("seed: {seed}");
    let binary = std::env::current_exe().context("cannot find the dsm executable")?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let dir = std::path::absolute(args.dir.join(format!("seed-{seed}-{stamp}")))
        .context("cannot resolve --dir")?;
    let mut config = nemesis::NemesisConfig::new(binary, dir, seed);
    config.duration = args.duration;
    config.clients = args.clients.max(1);
    config.keys = args.keys.max(1);
    config.slaves = args.slaves.max(1);
    config.replication_factor = args
        .replication_factor
        .unwrap_or(args.slaves / 2 + 1)
        .clamp(1, config.slaves);
    config.lease_ttl = args.lease_ttl;
    config.focus = args.focus;
    config.clock_faults = !args.no_clock_faults;
    #[cfg(feature = "chaos-broken-ack")]
    if args.broken_ack {
        config.broken = nemesis::Broken::Ack;
    }
    #[cfg(feature = "chaos-broken-takeover")]
    if args.broken_takeover {
        config.broken = nemesis::Broken::Takeover;
    }
    #[cfg(feature = "chaos-broken-read")]
    if args.broken_read {
        config.broken = nemesis::Broken::Read;
    }
    let summary = tokio::select! {
        s = nemesis::run(config) => s?,
        _ = crate::local::shutdown_signal() => anyhow::bail!("interrupted"),
    };
    print!("{}", summary.render());
    Ok(if summary.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
