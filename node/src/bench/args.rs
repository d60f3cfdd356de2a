//! The flags of `dsm bench` and of a single run, and the parameters of one
//! measurement ([`RunParams`]) checked before any cluster is started.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};

use super::workload::{Distribution, Workload, WorkloadSpec};
use super::{failover, sweep};
use crate::metrics::MetricsListen;
use crate::security::{ClientSecurity, ClientSecurityArgs};

/// Flags of `dsm bench`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// `sweep` runs a grid of runs; without it, one run.
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// Flags of a single run.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands of `dsm bench`.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Run every combination of client and slave counts against local
    /// clusters and write results.csv, results.json and SVG plots.
    Sweep(sweep::SweepArgs),
    /// Time failovers: kill -9 or pause the active master of a local cluster
    /// while a client writes, and report how long until a WRITE is
    /// acknowledged again.
    Failover(failover::FailoverArgs),
    /// Redraw the plots of a sweep from its results.json.
    Plot {
        /// The sweep's output directory (holding results.json); the plots
        /// are written there.
        dir: PathBuf,
    },
}

/// The workload flags shared by `dsm bench` and `dsm bench sweep`.
#[derive(Args, Debug, Clone)]
pub struct WorkloadArgs {
    /// Fraction of requests that are WRITEs (0.3: 30 % WRITEs, 70 % READs).
    #[arg(long, default_value_t = 0.3)]
    pub write_ratio: f64,
    /// Number of distinct keys: key0 … key{N-1}.
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// How keys are picked: uniform (every key equally likely) or zipfian
    /// (hot keys).
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Exponent of the zipfian distribution (1.0: key0 takes about 13 % of
    /// requests with 1000 keys).
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,
    /// Size of each written value, in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Open-loop target, in requests per second over all clients; latency
    /// is then measured from when each request was due, so a stalled
    /// cluster shows up in it. Default: closed loop, no sleeping.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Client API: `unary` (one gRPC call per request, with failover and
    /// retries: what `dsm client` uses) or `pipelined` (each client's
    /// requests on one `Kv.Pipeline` stream to the active master, with the
    /// same failover and retries).
    #[arg(long, value_enum, default_value_t = Api::Unary)]
    pub api: Api,
    /// Requests each client keeps in flight (closed loop only): with the
    /// pipelined API they share its one stream, with the unary API its
    /// HTTP/2 connection. At most 1024.
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Where to serve the bench's own /metrics while it runs, or `none`.
    #[arg(long, default_value = "127.0.0.1:9190")]
    pub metrics_listen: MetricsListen,
}

/// Which client API the bench drives.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// [`crate::client::Client`]: unary calls, failover, retries.
    #[default]
    Unary,
    /// [`crate::client::pipelined::PipelinedClient`]: one stream per client
    /// to the active master, failover and retries.
    Pipelined,
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Api::Unary => "unary",
            Api::Pipelined => "pipelined",
        })
    }
}

impl WorkloadArgs {
    /// The workload part of the flags.
    pub fn spec(&self) -> WorkloadSpec {
        WorkloadSpec {
            keys: self.keys,
            write_ratio: self.write_ratio,
            distribution: self.distribution,
            zipf_exponent: self.zipf_exponent,
            value_size: self.value_size,
        }
    }
}

/// Flags of a single `dsm bench` run.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// Slaves of the local cluster started when no --master is given.
    #[arg(long, default_value_t = 3)]
    pub slaves: u32,
    /// Master of an existing cluster to load, instead of starting one.
    #[arg(long)]
    pub master: Option<String>,
    /// Backup master of that cluster, for failover during the run.
    #[arg(long, requires = "master")]
    pub backup: Option<String>,
    /// Load before the measurement, excluded from the results.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Length of the measurement.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Write every figure, with per-second samples, to this JSON file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// TLS and token towards the --master cluster (the bench's own local
    /// cluster is plaintext and open, and ignores them).
    #[command(flatten)]
    pub security: ClientSecurityArgs,
    /// The workload.
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

/// Most requests one client may keep in flight (`--depth`).
pub const MAX_DEPTH: usize = 1024;

/// What one measurement does, whoever asked for it (a run or a sweep).
#[derive(Clone, Debug)]
pub struct RunParams {
    /// Concurrent clients.
    pub clients: usize,
    /// The workload.
    pub workload: WorkloadSpec,
    /// Excluded from the results.
    pub warmup: Duration,
    /// Measured.
    pub duration: Duration,
    /// Open-loop target over all clients, requests/s.
    pub rate: Option<f64>,
    /// Client API.
    pub api: Api,
    /// Requests in flight per client.
    pub depth: usize,
    /// TLS and token of every client.
    pub security: ClientSecurity,
    /// Prefix of the progress lines (which sweep point this is).
    pub label: String,
}

impl RunParams {
    /// Rejects parameters no run can use.
    ///
    /// # Errors
    /// No client, a bad depth or rate, or a bad workload (see
    /// [`Workload::new`]).
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if !(1..=MAX_DEPTH).contains(&self.depth) {
            bail!(
                "--depth must be from 1 to {MAX_DEPTH} requests in flight per client, not {}",
                self.depth
            );
        }
        if self.depth > 1 && self.rate.is_some() {
            bail!("--depth is for the closed loop: with --rate, add --clients instead");
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            bail!("--rate must be a positive number of requests per second, not {rate}");
        }
        self.period()?;
        Workload::new(&self.workload).map(|_| ())
    }

    /// Open loop: the time between two requests of one client.
    pub fn period(&self) -> anyhow::Result<Option<Duration>> {
        let Some(rate) = self.rate else {
            return Ok(None);
        };
        match Duration::try_from_secs_f64(self.clients as f64 / rate) {
            Ok(period) if period <= Duration::from_secs(3600) => Ok(Some(period)),
            _ => bail!(
                "--rate {rate} is too low for {} clients: each would wait over an hour",
                self.clients
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn flags_have_the_documented_defaults() {
        let cli = Cli::try_parse_from(["bench"]).unwrap();
        assert!(cli.bench.command.is_none());
        let run = cli.bench.run;
        assert_eq!((run.clients, run.slaves), (10, 3));
        assert_eq!(run.warmup, Duration::from_secs(5));
        assert_eq!(run.duration, Duration::from_secs(30));
        assert!(run.master.is_none() && run.json.is_none());
        let w = run.workload;
        assert_eq!((w.write_ratio, w.keys, w.value_size), (0.3, 1000, 100));
        assert_eq!(w.distribution, Distribution::Uniform);
        assert!(w.rate.is_none());
        assert_eq!(w.metrics_listen.0, Some("127.0.0.1:9190".parse().unwrap()));
    }

    #[test]
    fn sweep_takes_lists_and_shorter_defaults() {
        let cli = Cli::try_parse_from([
            "bench",
            "sweep",
            "--clients",
            "1,2",
            "--slaves",
            "3",
            "--out",
            "d",
            "--distribution",
            "zipfian",
        ])
        .unwrap();
        let Some(BenchCommand::Sweep(sweep)) = cli.bench.command else {
            panic!("not a sweep");
        };
        assert_eq!(sweep.clients, [1, 2]);
        assert_eq!(sweep.slaves, [3]);
        assert_eq!(sweep.duration, Duration::from_secs(10));
        assert_eq!(sweep.warmup, Duration::from_secs(3));
        assert_eq!(sweep.workload.distribution, Distribution::Zipfian);

        let defaults = Cli::try_parse_from(["bench", "sweep"]).unwrap();
        let Some(BenchCommand::Sweep(sweep)) = defaults.bench.command else {
            panic!("not a sweep");
        };
        assert_eq!(sweep.clients, [1, 5, 10, 20, 50]);
        assert_eq!(sweep.slaves, [3, 5, 7, 9]);
    }

    #[test]
    fn bad_parameters_are_rejected_before_any_work() {
        let params = RunParams {
            clients: 1,
            workload: Cli::try_parse_from(["bench"])
                .unwrap()
                .bench
                .run
                .workload
                .spec(),
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            rate: None,
            api: Api::Unary,
            depth: 1,
            security: ClientSecurity::default(),
            label: String::new(),
        };
        assert!(params.validate().is_ok());
        for depth in [0, MAX_DEPTH + 1] {
            let bad_depth = RunParams {
                depth,
                ..params.clone()
            };
            assert!(bad_depth.validate().is_err(), "{depth}");
        }
        let deep_open = RunParams {
            depth: 8,
            rate: Some(100.0),
            ..params.clone()
        };
        assert!(deep_open.validate().is_err());
        let no_clients = RunParams {
            clients: 0,
            ..params.clone()
        };
        assert!(no_clients.validate().is_err());
        for rate in [0.0, -1.0, f64::NAN, 1e-300] {
            let bad_rate = RunParams {
                rate: Some(rate),
                ..params.clone()
            };
            assert!(bad_rate.validate().is_err(), "{rate}");
        }
        let open = RunParams {
            clients: 4,
            rate: Some(100.0),
            ..params.clone()
        };
        assert_eq!(open.period().unwrap(), Some(Duration::from_millis(40)));
        assert!(Cli::try_parse_from(["bench", "--backup", "x:1"]).is_err());
    }
}
