//! `dsm bench failover`: how long a client waits when the active master goes,
//! measured the way a client sees it.
//!
//! A local cluster with `dsm local`'s defaults; one client that knows both
//! master-capable addresses WRITEs without pause; the active master is killed
//! (`kill -9`) or paused (SIGSTOP, for longer than the lease) and the time from
//! the fault to the first acknowledged WRITE sent after it is the failover
//! time. Then the fault is healed (restart, SIGCONT), the cluster settles, and
//! after a quiet period the next trial hits whichever master is active by
//! then. The quiet period makes each trial one failure, not the tail of the
//! previous one: a backup just started waits one lease period before it may
//! take over, and a master that took over from a paused one holds the active
//! lock (what tells its death at once) only from its next renewal after the
//! paused one woke up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientConfig};
use crate::local::LocalCluster;

/// Time given to the cluster between a healed fault and the next trial.
const QUIET: Duration = Duration::from_secs(3);

/// Flags of `dsm bench failover`.
#[derive(Args, Debug, Clone)]
pub struct FailoverArgs {
    /// Which faults to time.
    #[arg(long, value_enum, default_value_t = FaultKind::Both)]
    pub fault: FaultKind,
    /// Trials of each fault.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub trials: u32,
    /// Slaves of the cluster.
    #[arg(long, default_value_t = 3)]
    pub slaves: u32,
    /// How long a paused master stays paused; longer than the lease (2 s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub pause: Duration,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A fault to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// kill -9 of the active master.
    Kill,
    /// SIGSTOP of the active master, longer than the lease.
    Pause,
    /// Both, alternating.
    Both,
}

/// One timed failover.
#[derive(Clone, Debug, Serialize)]
pub struct Trial {
    /// What was done to the active master.
    pub fault: FaultKind,
    /// Which process it was.
    pub master: String,
    /// From the fault to the first acknowledged WRITE sent after it.
    pub seconds: f64,
}

/// Runs the trials and prints a table (and JSON with `--json`).
///
/// # Errors
/// When the cluster does not start or settle, or a WRITE never succeeds.
pub async fn run(args: FailoverArgs) -> anyhow::Result<()> {
    if args.pause <= Duration::from_secs(2) {
        bail!(
            "--pause {} is not longer than the lease TTL (2 s): nothing would fail over",
            humantime::format_duration(args.pause)
        );
    }
    let mut cluster = LocalCluster::start_temporary(args.slaves).await?;
    let result = trials(&args, &mut cluster).await;
    cluster.stop().await;
    let trials = result?;
    print!("{}", render(&trials));
    if let Some(path) = &args.json {
        super::write_json(path, &trials)?;
    }
    Ok(())
}

async fn trials(args: &FailoverArgs, cluster: &mut LocalCluster) -> anyhow::Result<Vec<Trial>> {
    let endpoints = cluster.endpoints();
    let stop = CancellationToken::new();
    let _stop_writer = stop.clone().drop_guard();
    // Monotonic microseconds since `origin` at which the latest WRITE was
    // sent, and the latest acknowledgement of a WRITE sent at or after a
    // given time: one writer, so the order is simple.
    let origin = Instant::now();
    let acks = Arc::new(Acks::default());
    let writer = {
        let (acks, stop, endpoints) = (acks.clone(), stop.clone(), endpoints.clone());
        tokio::spawn(async move {
            let client = Client::new(ClientConfig::new(endpoints));
            let mut n = 0u64;
            while !stop.is_cancelled() {
                n += 1;
                let sent = origin.elapsed().as_micros() as u64;
                if client
                    .write(b"failover-probe", &n.to_be_bytes())
                    .await
                    .is_ok()
                {
                    acks.acked(sent, origin.elapsed().as_micros() as u64);
                }
            }
        })
    };
    let kinds: Vec<FaultKind> = match args.fault {
        FaultKind::Both => vec![FaultKind::Kill, FaultKind::Pause],
        one => vec![one],
    };
    let mut done = Vec::new();
    for trial in 0..args.trials {
        for &fault in &kinds {
            cluster.wait_settled().await?;
            tokio::time::sleep(QUIET).await;
            let master = cluster.active_member().await?;
            let at = origin.elapsed().as_micros() as u64;
            match fault {
                FaultKind::Kill => cluster.kill9(&master).await?,
                _ => cluster.signal(&master, nix::sys::signal::Signal::SIGSTOP)?,
            }
            let first = acks
                .first_sent_after(at, Duration::from_secs(60))
                .await
                .with_context(|| format!("no WRITE succeeded within 60 s of the {fault:?}"))?;
            let seconds = (first - at) as f64 / 1e6;
            eprintln!(
                "trial {}: {fault:?} of {master}: first WRITE acknowledged after {seconds:.3} s",
                trial + 1
            );
            done.push(Trial {
                fault,
                master: master.clone(),
                seconds,
            });
            match fault {
                FaultKind::Kill => cluster.restart(&master)?,
                _ => {
                    let left = args.pause.saturating_sub(Duration::from_micros(first - at));
                    tokio::time::sleep(left).await;
                    cluster.signal(&master, nix::sys::signal::Signal::SIGCONT)?;
                }
            }
        }
    }
    stop.cancel();
    let _ = writer.await;
    Ok(done)
}

/// Acknowledgements of the one writer.
#[derive(Default)]
struct Acks {
    /// Send time of the latest acknowledged WRITE, and when it was acked.
    latest: std::sync::Mutex<(u64, u64)>,
    changed: tokio::sync::Notify,
}

impl Acks {
    fn acked(&self, sent: u64, at: u64) {
        *self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (sent, at);
        self.changed.notify_waiters();
    }

    /// When the first WRITE sent at or after `after` was acknowledged.
    async fn first_sent_after(&self, after: u64, bound: Duration) -> Option<u64> {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                let (sent, at) = *self
                    .latest
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if sent >= after {
                    return at;
                }
                notified.await;
            }
        };
        tokio::time::timeout(bound, wait).await.ok()
    }
}

/// The table printed at the end: every trial, then min / median / max per
/// fault.
pub fn render(trials: &[Trial]) -> String {
    let mut out = String::from("fault   master   seconds\n");
    for t in trials {
        out += &format!("{:<7} {:<8} {:>7.3}\n", kind(t.fault), t.master, t.seconds);
    }
    for fault in [FaultKind::Kill, FaultKind::Pause] {
        let mut times: Vec<f64> = trials
            .iter()
            .filter(|t| t.fault == fault)
            .map(|t| t.seconds)
            .collect();
        if times.is_empty() {
            continue;
        }
        times.sort_by(f64::total_cmp);
        out += &format!(
            "{}: {} trials, min {:.3} s, median {:.3} s, max {:.3} s\n",
            kind(fault),
            times.len(),
            times[0],
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    out
}

fn kind(fault: FaultKind) -> &'static str {
    match fault {
        FaultKind::Kill => "kill -9",
        FaultKind::Pause => "SIGSTOP",
        FaultKind::Both => "both",
    }
}
