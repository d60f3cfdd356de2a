//! `dsm bench`: the seed's test harness, made better. N clients, each with
//! its own connection, send a READ/WRITE mix over `key0` … `keyN-1` to a
//! cluster (its own local one unless `--master` is given) as fast as they
//! are answered (closed loop) or at a target rate (open loop). Every key is
//! written once first, so READs find values; a warm-up follows, then the
//! measurement. A progress line goes to stderr every second, the summary
//! table to stdout, `--json` writes every figure, and `/metrics` serves
//! `dsm_bench_*` while it runs. `dsm bench sweep` ([`sweep`]) runs a grid
//! of client and slave counts and draws the seed's plots ([`plot`]).
//!
//! `dsm bench failover` ([`failover`]) times failovers instead.
//!
//! Module map: [`workload`] picks requests, [`stats`] measures them,
//! [`report`] summarises a run.

pub mod failover;
pub mod plot;
pub mod report;
pub mod stats;
pub mod sweep;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::{StreamExt, TryStreamExt};
use prometheus::{Histogram, IntCounter};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::pipelined::PipelinedClient;
use crate::client::{Client, ClientConfig, ClientError};
use crate::local::{LocalArgs, LocalCluster, shutdown_signal};
use crate::metrics::{self, MetricsListen};
use crate::security::{ClientSecurity, ClientSecurityArgs};
use report::{OpSummary, RunConfig, Summary, load_delta};
use stats::{Outcome, Recorder, error_kind, per_second};
use workload::{Distribution, Op, Workload, WorkloadSpec, key_name};

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
    /// Fraction of requests that are WRITEs (the seed used 30 %).
    #[arg(long, default_value_t = 0.3)]
    pub write_ratio: f64,
    /// Number of distinct keys: key0 … key{N-1}.
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// How keys are picked: uniform (like the seed) or zipfian (hot keys).
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
    /// requests on one `Kv.Pipeline` stream to the active master, no
    /// failover).
    #[arg(long, value_enum, default_value_t = Api::Unary)]
    pub api: Api,
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
    /// [`Client`]: unary calls, failover, retries.
    #[default]
    Unary,
    /// [`PipelinedClient`]: one stream per client to the active master.
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

/// One bench client, whichever API it uses; each has its own connection.
enum BenchClient {
    Unary(Client),
    Pipelined(PipelinedClient),
}

impl BenchClient {
    async fn read(&self, key: &[u8]) -> Result<bool, ClientError> {
        match self {
            BenchClient::Unary(c) => c.read(key).await.map(|v| v.is_some()),
            BenchClient::Pipelined(c) => c.read(key).await.map(|v| v.is_some()),
        }
    }

    async fn write(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        match self {
            BenchClient::Unary(c) => c.write(key, value).await.map(|_| ()),
            BenchClient::Pipelined(c) => c.write(key, value).await.map(|_| ()),
        }
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
    /// TLS and token of every client.
    pub security: ClientSecurity,
    /// Prefix of the progress lines (which sweep point this is).
    pub label: String,
}

/// Runs `dsm bench` or `dsm bench sweep`.
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
    metrics::register_bench();
    metrics::spawn(listen.0, Arc::new(|| Ok(())), cancel.clone()).await
}

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
            let mut cluster = OwnCluster::start(args.slaves).await?;
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

/// A local cluster started by the bench in a temporary directory, on ports
/// found free, so several benches (and tests) can run side by side.
pub struct OwnCluster {
    cluster: LocalCluster,
    /// Removed when the bench ends, unless the cluster failed to start (its
    /// logs are then kept for the error message to point at).
    _dir: tempfile::TempDir,
}

impl OwnCluster {
    /// Starts master, backup and `slaves` slaves and waits until they serve.
    pub async fn start(slaves: u32) -> anyhow::Result<OwnCluster> {
        if slaves == 0 {
            bail!("--slaves must be at least 1");
        }
        let dir = tempfile::Builder::new()
            .prefix("dsm-bench-")
            .tempdir()
            .context("cannot create a temporary directory for the cluster")?;
        // master, backup, the slaves, then a metrics port for each process.
        let count = u16::try_from(2 * slaves + 4).context("too many slaves")?;
        let ports = crate::ports::free_ports(count)?;
        let args = LocalArgs {
            slaves,
            dir: dir.path().to_path_buf(),
            host: [127, 0, 0, 1].into(),
            port: ports,
            slave_port: ports + 2,
            metrics_port: ports + 2 + slaves as u16,
            ready_timeout: Duration::from_secs(60),
            member_threads: 1,
        };
        eprintln!("starting a local cluster with {slaves} slaves");
        match LocalCluster::start(&args).await {
            Ok(cluster) => Ok(OwnCluster { cluster, _dir: dir }),
            Err(e) => {
                let kept = dir.keep();
                Err(e.context(format!("cluster data kept in {}", kept.display())))
            }
        }
    }

    /// Master then backup, for [`ClientConfig::endpoints`].
    pub fn endpoints(&self) -> Vec<String> {
        vec![
            self.cluster.master.to_string(),
            self.cluster.backup.to_string(),
        ]
    }

    /// Stops every process (the directory goes when `self` is dropped).
    pub async fn stop(&mut self) {
        self.cluster.stop().await;
    }

    /// The cluster's processes, to inject faults.
    pub fn inner(&mut self) -> &mut LocalCluster {
        &mut self.cluster
    }

    /// Waits until a master is active with every slave live.
    pub async fn wait_settled(&self) -> anyhow::Result<()> {
        let slaves = self.cluster.members.len().saturating_sub(2) as u32;
        crate::local::wait_ready(
            self.cluster.master,
            self.cluster.backup,
            slaves,
            Duration::from_secs(60),
        )
        .await
    }

    /// The name of the active master-capable process (`master` or `backup`).
    pub async fn active_member(&self) -> anyhow::Result<String> {
        for (name, address) in [
            ("master", self.cluster.master),
            ("backup", self.cluster.backup),
        ] {
            let client = Client::new(ClientConfig {
                endpoints: vec![address.to_string()],
                timeout: Duration::from_secs(1),
                retry_for: Duration::ZERO,
            });
            if client
                .endpoint_status()
                .await
                .is_ok_and(|s| s.role == "active")
            {
                return Ok(name.to_string());
            }
        }
        bail!("no master-capable process is active")
    }
}

impl RunParams {
    /// Rejects parameters no run can use.
    ///
    /// # Errors
    /// No client, a bad rate, or a bad workload (see [`Workload::new`]).
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.clients == 0 {
            bail!("--clients must be at least 1");
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
    fn period(&self) -> anyhow::Result<Option<Duration>> {
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

/// Loads the cluster at `endpoints` as `params` says and returns what was
/// measured. Stops early (and says so in the summary) when `cancel` fires.
///
/// # Errors
/// Bad parameters, no reachable cluster, or a key that could not be
/// pre-populated. Errors during the measurement are counted, not returned.
pub async fn measure(
    endpoints: &[String],
    params: &RunParams,
    cancel: &CancellationToken,
) -> anyhow::Result<Summary> {
    params.validate()?;
    let workload = Arc::new(Workload::new(&params.workload)?);
    let config = ClientConfig::new(endpoints.to_vec());
    let security = &params.security;
    let status_client = Arc::new(Client::try_with_security(config.clone(), security.clone())?);
    let first_status = status_client
        .status()
        .await
        .with_context(|| format!("cannot reach the cluster at {}", endpoints.join(", ")))?;
    let clients = (0..params.clients)
        .map(|_| match params.api {
            Api::Unary => {
                Client::try_with_security(config.clone(), security.clone()).map(BenchClient::Unary)
            }
            // The pipelined client does not look for the active master
            // itself: give it the one that answered Status.
            Api::Pipelined => {
                let active = if first_status.role == "active" && !first_status.address.is_empty() {
                    first_status.address.clone()
                } else {
                    status_client.active_endpoint()
                };
                PipelinedClient::with_security(&active, config.timeout, security)
                    .map(BenchClient::Pipelined)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;

    prepopulate(&clients, &workload).await?;

    let start = Instant::now();
    let measure_from = start + params.warmup;
    let end = measure_from + params.duration;
    let recorder = Arc::new(Mutex::new(Recorder::new(measure_from)));
    let stop = cancel.child_token();

    // The load distribution is the difference of the master's per-slave
    // counters across the measurement, so the warm-up is left out.
    let status_before = tokio::spawn({
        let status_client = status_client.clone();
        async move {
            tokio::time::sleep_until(measure_from).await;
            status_client.status().await
        }
    });

    let period = params.period()?;
    let mut handles = Vec::with_capacity(params.clients);
    for (i, client) in clients.into_iter().enumerate() {
        // Open-loop clients are spread over one period so the requests do
        // not leave in bursts of `clients` at once.
        let first = start + period.map_or(Duration::ZERO, |p| p * i as u32 / params.clients as u32);
        handles.push(tokio::spawn(run_client(
            client,
            workload.clone(),
            recorder.clone(),
            ClientSchedule { first, period, end },
            stop.clone(),
        )));
    }

    let samples = report_progress(
        futures::future::join_all(handles),
        &recorder,
        start..end,
        measure_from,
        &params.label,
    )
    .await;

    let finished = Instant::now().min(end);
    let measured = finished.saturating_duration_since(measure_from);
    let interrupted = cancel.is_cancelled();
    let before = match status_before.await {
        Ok(Ok(status)) => Some(status),
        _ => None,
    };
    let slaves = match status_client.status().await {
        Ok(after) => load_delta(before.as_ref(), &after),
        Err(e) => {
            eprintln!("warning: no per-slave load distribution: status failed: {e}");
            Vec::new()
        }
    };
    if before.is_none() && !slaves.is_empty() {
        eprintln!("warning: per-slave load includes the warm-up (status at its end failed)");
    }

    let recorder = recorder.lock().unwrap_or_else(PoisonError::into_inner);
    let op_summary = |op: Op| {
        let latency = recorder.percentiles(op);
        OpSummary {
            ops: latency.count,
            errors: recorder.errors(op),
            throughput_ops_per_s: per_second(latency.count, measured),
            latency,
        }
    };
    let (read, write) = (op_summary(Op::Read), op_summary(Op::Write));
    Ok(Summary {
        config: RunConfig {
            clients: params.clients,
            slaves: first_status.configured_slaves,
            master: endpoints.first().cloned().unwrap_or_default(),
            workload: params.workload.clone(),
            warmup_s: params.warmup.as_secs_f64(),
            duration_s: params.duration.as_secs_f64(),
            rate: params.rate,
            api: params.api,
        },
        measured_s: measured.as_secs_f64(),
        interrupted,
        ops: read.ops + write.ops,
        errors: read.errors + write.errors,
        throughput_ops_per_s: per_second(read.ops + write.ops, measured),
        read,
        write,
        error_kinds: recorder.error_counts(),
        slaves,
        samples,
    })
}

/// Writes every key once, so that READs during the run find a value.
async fn prepopulate(clients: &[BenchClient], workload: &Workload) -> anyhow::Result<()> {
    // Enough in flight to be quick even with one client (a `Client` may be
    // used concurrently), few enough not to swamp a small cluster.
    const IN_FLIGHT: usize = 32;
    futures::stream::iter(0..workload.len())
        .map(|i| async move {
            clients[i % clients.len()]
                .write(workload.key(i), workload.value())
                .await
                .with_context(|| format!("cannot pre-populate {}", key_name(i)))
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// When one client sends.
struct ClientSchedule {
    /// First request.
    first: Instant,
    /// Open loop: one request per period; closed loop: `None`.
    period: Option<Duration>,
    /// No request is started at or after this instant.
    end: Instant,
}

/// The Prometheus series one client updates, looked up once rather than
/// per request.
struct OpMetrics {
    ok: IntCounter,
    duration: Histogram,
}

impl OpMetrics {
    fn new(op: Op) -> OpMetrics {
        OpMetrics {
            ok: metrics::BENCH_REQUESTS.with_label_values(&[op.name(), "ok"]),
            duration: metrics::BENCH_REQUEST_DURATION.with_label_values(&[op.name()]),
        }
    }
}

/// One client's loop: pick a request, send it, record it, until `end`.
async fn run_client(
    client: BenchClient,
    workload: Arc<Workload>,
    recorder: Arc<Mutex<Recorder>>,
    schedule: ClientSchedule,
    stop: CancellationToken,
) {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let op_metrics = [OpMetrics::new(Op::Read), OpMetrics::new(Op::Write)];
    let mut due = schedule.first;
    loop {
        // Open loop: latency counts from when the request was due, not from
        // when it left, so time spent queued behind a slow request is not
        // hidden (coordinated omission).
        let started = match schedule.period {
            Some(period) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = stop.cancelled() => break,
                }
                let this = due;
                due += period;
                this
            }
            None => Instant::now(),
        };
        if started >= schedule.end || stop.is_cancelled() {
            break;
        }
        let (op, index) = workload.next(&mut rng);
        let key = workload.key(index);
        let request = async {
            match op {
                Op::Read => match client.read(key).await {
                    Ok(true) => Outcome::Ok,
                    Ok(false) => Outcome::Failed(
                        stats::MISSING_KIND,
                        format!(
                            "{} has no value although the bench wrote it before the run",
                            key_name(index)
                        ),
                    ),
                    Err(e) => Outcome::Failed(error_kind(&e), e.to_string()),
                },
                Op::Write => match client.write(key, workload.value()).await {
                    Ok(_) => Outcome::Ok,
                    Err(e) => Outcome::Failed(error_kind(&e), e.to_string()),
                },
            }
        };
        let outcome = tokio::select! {
            outcome = request => outcome,
            // A request cut short by Ctrl-C is neither a success nor a
            // cluster error: it is left out.
            _ = stop.cancelled() => break,
        };
        let latency = started.elapsed();
        let m = &op_metrics[usize::from(op == Op::Write)];
        match &outcome {
            Outcome::Ok => {
                m.ok.inc();
                m.duration.observe(latency.as_secs_f64());
            }
            Outcome::Failed(kind, _) => metrics::BENCH_REQUESTS
                .with_label_values(&[op.name(), kind])
                .inc(),
        }
        recorder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(op, started, latency, outcome);
    }
}

/// Prints a progress line every second until `clients` completes, and
/// returns the samples of the measured seconds. Requests still in flight
/// at the end (a client retrying against a dead cluster) are waited for
/// and shown as `drain`: they count, but their seconds are not samples.
async fn report_progress<F: std::future::Future>(
    clients: F,
    recorder: &Mutex<Recorder>,
    run: std::ops::Range<Instant>,
    measure_from: Instant,
    label: &str,
) -> Vec<stats::Sample> {
    let start = run.start;
    const TICK: Duration = Duration::from_secs(1);
    let mut ticker = tokio::time::interval_at(start + TICK, TICK);
    let mut samples = Vec::new();
    tokio::pin!(clients);
    loop {
        let tick = tokio::select! {
            _ = &mut clients => break,
            tick = ticker.tick() => tick,
        };
        let measured = tick.checked_duration_since(measure_from);
        // The sample covers the second before `tick`: it is a measured one
        // only if that whole second is after the warm-up.
        let second = measured.map_or(0, |d| d.as_secs_f64().round() as u64);
        let sample = recorder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take_sample(second, TICK);
        let phase = if tick > run.end {
            "drain"
        } else if second >= 1 {
            "measure"
        } else {
            "warm-up"
        };
        eprintln!(
            "{label}{}",
            sample.progress_line(phase, tick.duration_since(start))
        );
        if phase == "measure" {
            samples.push(sample);
        }
    }
    samples
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
            security: ClientSecurity::default(),
            label: String::new(),
        };
        assert!(params.validate().is_ok());
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
