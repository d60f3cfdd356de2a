//! `dsm bench`: the load generator. N clients load a
//! cluster (a temporary [`LocalCluster`] unless `--master` is given) with a
//! READ/WRITE mix over `key0` … `keyN-1`, closed or open loop; a progress
//! line goes to stderr every second, the summary table to stdout, `--json`
//! writes every figure, and `/metrics` serves `dsm_bench_*` while it runs.
//! `dsm bench sweep` ([`sweep`]) runs a grid of client and slave counts and
//! draws throughput, latency and load plots ([`plot`]); `dsm bench failover`
//! ([`failover`]) times failovers instead.
//!
//! Module map: [`args`] holds the flags and checks them, [`run`](mod@run) is the
//! measuring engine (clients, warm-up, per-second figures), [`workload`]
//! picks requests, [`stats`] measures them, [`report`] summarises a run.

pub mod args;
pub mod failover;
pub mod plot;
pub mod report;
pub mod run;
pub mod stats;
pub mod sweep;
pub mod workload;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use args::{Api, BenchArgs, BenchCommand, RunArgs, RunParams, WorkloadArgs};
pub use run::measure;

use crate::local::{LocalCluster, shutdown_signal};
use crate::metrics::{self, MetricsListen};
use crate::security::ClientSecurity;

/// Runs `dsm bench` or one of its subcommands.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        Some(BenchCommand::Sweep(sweep)) => sweep::run(sweep).await,
        Some(BenchCommand::Failover(failover)) => failover::run(failover).await,
        Some(BenchCommand::Plot { dir }) => sweep::replot(&dir),
        None => run_once(args.run).await,
    }
}

/// A token cancelled on Ctrl-C or SIGTERM, so a run stops early but still
/// reports what it measured and stops the cluster it started.
fn cancel_on_signal() -> CancellationToken {
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        eprintln!("interrupted: finishing the run");
        token.cancel();
    });
    cancel
}

/// Starts serving the bench's `/metrics` (always ready) unless `none`.
async fn serve_metrics(listen: MetricsListen, cancel: &CancellationToken) -> anyhow::Result<()> {
    metrics::spawn(
        listen.0,
        &metrics::bench().registry,
        Arc::new(|| Ok(())),
        cancel.clone(),
    )
    .await
}

/// One run: a temporary cluster unless `--master` is given, measured, the
/// summary printed.
async fn run_once(args: RunArgs) -> anyhow::Result<()> {
    let cancel = cancel_on_signal();
    serve_metrics(args.workload.metrics_listen, &cancel).await?;
    let params = RunParams {
        clients: args.clients,
        workload: args.workload.spec(),
        warmup: args.warmup,
        duration: args.duration,
        rate: args.workload.rate,
        api: args.workload.api,
        depth: args.workload.depth,
        security: ClientSecurity::default(),
        label: String::new(),
    };
    // Check the flags before starting a cluster for nothing.
    params.validate()?;
    let summary = match args.master {
        Some(master) => {
            let endpoints: Vec<String> = std::iter::once(master).chain(args.backup).collect();
            let params = RunParams {
                security: ClientSecurity::from_args(&args.security)?,
                ..params
            };
            measure(&endpoints, &params, &cancel).await?
        }
        None => {
            let mut cluster = LocalCluster::start_temporary(args.slaves).await?;
            let result = measure(&cluster.endpoints(), &params, &cancel).await;
            cluster.stop().await;
            result?
        }
    };
    print!("{}", summary.table());
    if let Some(path) = &args.json {
        write_json(path, &summary)?;
        eprintln!("results written to {}", path.display());
    }
    cancel.cancel();
    Ok(())
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value).context("cannot encode the results")?;
    std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))
}
