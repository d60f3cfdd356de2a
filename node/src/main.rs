//! The `dsm` binary: parses flags and hands over to the library. Every role
//! runs until Ctrl-C or SIGTERM and then shuts down cleanly.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use dsm_wire::{env, ports};
use tokio_util::sync::CancellationToken;

use dsm::bench::BenchArgs;
use dsm::chaos::ChaosArgs;
use dsm::client::ClientArgs;
use dsm::client::cli::ConnectArgs;
use dsm::commit_window::DEFAULT_COMMIT_WINDOW;
use dsm::limits::{
    DEFAULT_MAX_KEY_BYTES, DEFAULT_MAX_VALUE_BYTES, DEFAULT_MAX_WATCHERS, HARD_MAX_VALUE_BYTES,
    Limits,
};
use dsm::local::{LocalArgs, shutdown_signal};
use dsm::master::{Master, MasterConfig, placement};
use dsm::metrics::MetricsListen;
use dsm::security::{MemberTlsArgs, Security, TokenArgs};
use dsm::slave::store::StoreOptions;
use dsm::slave::{Slave, SlaveConfig};
use dsm::snapshot::Restored;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// DSM: a replicated key-value store ("distributed shared memory").
///
/// A master coordinates every READ and WRITE and logs each WRITE to a
/// write-ahead log; a backup master follows that log and takes over when the
/// master dies; slaves store the values, each WRITE going to a majority
/// quorum of them. Try it with `dsm local`, then `dsm client`.
#[derive(Parser, Debug)]
#[command(name = "dsm", version, about, long_about)]
struct Cli {
    /// Tokio worker threads of this process [default: one per CPU core].
    #[arg(long, global = true, env = env::WORKER_THREADS, value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    /// Log format of master, backup, slave and chaos: `text` for people
    /// (coloured only on a terminal), `json` for log pipelines (one object per
    /// line).
    #[arg(long, global = true, env = env::LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the master: the master-capable process that starts active.
    Master(MasterArgs),
    /// Run the backup master: follows the log and takes over when the
    /// master's lease expires.
    Backup(MasterArgs),
    /// Run a slave: stores values, registers with the active master.
    Slave(SlaveArgs),
    /// Talk to a cluster: one-shot commands, or a REPL with no command.
    Client(ClientArgs),
    /// Start a whole cluster on this machine (master, backup, slaves).
    Local(LocalArgs),
    /// Load a cluster and report throughput and latency percentiles; with
    /// `sweep`, run a grid of client and slave counts and plot it.
    Bench(BenchArgs),
    /// Run a local cluster under random faults (kill -9, SIGSTOP, network
    /// faults) and check the history for linearizability.
    Chaos(ChaosArgs),
    /// Inspect the write-ahead log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Back a cluster up, check a backup, or build a log directory from one.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Stream a consistent snapshot (every key's latest value at one log
    /// position, with a checksum) from the active master into FILE.
    Save {
        /// The snapshot file to write (replaced once complete and checked).
        file: PathBuf,
        /// Refuse snapshots with more key and value bytes than this.
        #[arg(long, value_name = "BYTES", default_value_t = 64 << 30)]
        max_bytes: u64,
        #[command(flatten)]
        cluster: ConnectArgs,
    },
    /// Check FILE and print its position, keys and bytes.
    Status {
        /// The snapshot file.
        file: PathBuf,
    },
    /// Build a new log directory from FILE, for a master to start from
    /// (start the cluster's slaves empty: the master copies every key to them).
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// The log directory to create; it must not hold a log already.
        #[arg(long, env = env::LOG_DIR)]
        log_dir: PathBuf,
        /// When the directory already holds a log, change nothing and exit
        /// 0 (for an init container that runs at every pod start).
        #[arg(long)]
        if_empty: bool,
    },
}

#[derive(Subcommand, Debug)]
enum LogCommand {
    /// Print every valid record as a `WRITE key value` line (`DELETE key`
    /// for a deletion), in log order; keys and values that are not plain
    /// text are quoted and escaped.
    Dump {
        /// The log directory (as given to `dsm master --log-dir`).
        #[arg(long, env = env::LOG_DIR, default_value = "dsm-local/log")]
        dir: PathBuf,
    },
}

/// Flags shared by `dsm master` and `dsm backup`.
#[derive(Args, Debug)]
struct MasterArgs {
    /// Address to listen on for clients and slaves
    /// [default: 0.0.0.0:12345 for master, 0.0.0.0:12346 for backup].
    #[arg(long, env = env::LISTEN)]
    listen: Option<SocketAddr>,
    /// Address clients and slaves use to reach this process, written into
    /// the lease [default: the listen address, 127.0.0.1 for 0.0.0.0].
    #[arg(long, env = env::ADVERTISE)]
    advertise: Option<String>,
    /// Shared log directory: write-ahead log segments, epoch history, lease.
    /// Master and backup must use the same one.
    #[arg(long, env = env::LOG_DIR, default_value = "dsm-data/log")]
    log_dir: PathBuf,
    /// Number of slaves the cluster is configured for. Write quorums and
    /// fencing derive from it, never from how many happen to be alive.
    #[arg(long, env = env::SLAVES, default_value_t = 3)]
    slaves: u32,
    /// Slaves each WRITE must reach before it is acknowledged
    /// [default: ceil((slaves + 1) / 2), a majority].
    #[arg(long, env = env::REPLICATION_FACTOR)]
    replication_factor: Option<u32>,
    /// Identity written into the lease [default: master or backup].
    #[arg(long, env = env::ID)]
    id: Option<String>,
    /// Lease duration: how long after the active master stops renewing
    /// (dies, hangs, is paused) the standby takes over.
    #[arg(long, env = env::LEASE_TTL, default_value = "2s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// Timeout of each call to a slave, and how long a slave may miss
    /// heartbeats before it leaves the live set.
    #[arg(long, env = env::SLAVE_TIMEOUT, default_value = "2s", value_parser = humantime::parse_duration)]
    slave_timeout: Duration,
    /// Largest key accepted, in bytes.
    #[arg(long, env = env::MAX_KEY_BYTES, default_value_t = DEFAULT_MAX_KEY_BYTES)]
    max_key_bytes: usize,
    /// Largest value accepted, in bytes (at most 32 MiB).
    #[arg(long, env = env::MAX_VALUE_BYTES, default_value_t = DEFAULT_MAX_VALUE_BYTES)]
    max_value_bytes: usize,
    /// Most WATCH streams this master serves at once; more are refused
    /// (RESOURCE_EXHAUSTED) until one closes.
    #[arg(long, env = env::MAX_WATCHERS, default_value_t = DEFAULT_MAX_WATCHERS)]
    max_watchers: usize,
    /// Size at which the log rolls over to a new segment, in bytes.
    #[arg(long, env = env::SEGMENT_BYTES, default_value_t = 64 * 1024 * 1024)]
    segment_bytes: u64,
    /// Compact the log automatically once this many sealed segments exist.
    #[arg(long, env = env::COMPACT_SEGMENTS, default_value_t = 4)]
    compact_segments: usize,
    /// Under load, how long a WRITE waits for others to share its log fsync.
    /// Longer: fewer fsyncs, more latency; 0: sync at once. A lone writer
    /// never waits.
    #[arg(long, env = env::COMMIT_WINDOW, default_value_t = DEFAULT_COMMIT_WINDOW.into())]
    commit_window: humantime::Duration,
    /// Where to serve /metrics, /healthz and /readyz over HTTP, or `none`
    /// [default: 0.0.0.0:9100 for master, 0.0.0.0:9101 for backup].
    #[arg(long, env = env::METRICS_LISTEN)]
    metrics_listen: Option<MetricsListen>,
    #[command(flatten)]
    tls: MemberTlsArgs,
    #[command(flatten)]
    tokens: TokenArgs,
    /// TEST-ONLY, deliberately unsafe: acknowledge a WRITE as soon as it is
    /// logged, before any slave stored it, so that `dsm chaos` has a bug to
    /// catch. Exists only in builds with the `chaos-broken-ack` feature.
    #[cfg(feature = "chaos-broken-ack")]
    #[arg(long, hide = true)]
    chaos_broken_ack: bool,
    /// TEST-ONLY, deliberately unsafe: the takeover of older versions
    /// (wall-clock lease expiry, the cut before any slave is fenced). Exists
    /// only in builds with the `chaos-broken-takeover` feature.
    #[cfg(feature = "chaos-broken-takeover")]
    #[arg(long, hide = true)]
    chaos_broken_takeover: bool,
    /// TEST-ONLY, deliberately unsafe: NOT_FOUND answered without confirming
    /// the term. Exists only in builds with the `chaos-broken-read` feature.
    #[cfg(feature = "chaos-broken-read")]
    #[arg(long, hide = true)]
    chaos_broken_read: bool,
}

/// Flags of `dsm slave`.
#[derive(Args, Debug)]
struct SlaveArgs {
    /// Address to listen on for the master's requests.
    #[arg(long, env = env::LISTEN, default_value_t = SocketAddr::from(([0, 0, 0, 0], ports::SLAVE)))]
    listen: SocketAddr,
    /// Address the master dials [default: the listen address, 127.0.0.1
    /// for 0.0.0.0].
    #[arg(long, env = env::ADVERTISE)]
    advertise: Option<String>,
    /// Directory of this slave's data; a restart on it loses nothing.
    #[arg(long, env = env::DATA_DIR, default_value = "dsm-data/slave")]
    data_dir: PathBuf,
    /// Stable identity of this slave (kept with its data).
    #[arg(long, env = env::ID, default_value = "slave-0")]
    id: String,
    /// Address of the master.
    #[arg(long, env = env::MASTER, default_value_t = format!("127.0.0.1:{}", ports::MASTER))]
    master: String,
    /// Address of the backup master.
    #[arg(long, env = env::BACKUP, default_value_t = format!("127.0.0.1:{}", ports::BACKUP))]
    backup: String,
    /// Interval between heartbeats to the active master.
    #[arg(long, env = env::HEARTBEAT, default_value = "500ms", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Where to serve /metrics, /healthz and /readyz over HTTP, or `none`.
    #[arg(long, env = env::METRICS_LISTEN, default_value_t = MetricsListen::on_port(ports::SLAVE_METRICS))]
    metrics_listen: MetricsListen,
    /// Under load, how long a WRITE waits for others to share its commit
    /// (one fsync). Longer: fewer fsyncs, more latency; 0: commit at once.
    /// A lone writer never waits.
    #[arg(long, env = env::COMMIT_WINDOW, default_value_t = DEFAULT_COMMIT_WINDOW.into())]
    commit_window: humantime::Duration,
    #[command(flatten)]
    tls: MemberTlsArgs,
}

/// `host:port` others can dial for a listen address.
fn advertised(listen: SocketAddr, advertise: Option<String>) -> String {
    advertise.unwrap_or_else(|| {
        if listen.ip().is_unspecified() {
            format!("127.0.0.1:{}", listen.port())
        } else {
            listen.to_string()
        }
    })
}

/// A token cancelled on Ctrl-C or SIGTERM.
fn cancel_on_signal() -> CancellationToken {
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
    cancel
}

async fn run_master(args: MasterArgs, prefer_active: bool) -> anyhow::Result<()> {
    let (default_port, default_metrics, default_id) = if prefer_active {
        (ports::MASTER, ports::METRICS, "master")
    } else {
        (ports::BACKUP, ports::BACKUP_METRICS, "backup")
    };
    let metrics_listen = args
        .metrics_listen
        .unwrap_or(MetricsListen::on_port(default_metrics));
    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], default_port)));
    if args.max_value_bytes > HARD_MAX_VALUE_BYTES {
        anyhow::bail!(
            "--max-value-bytes {} is over the hard limit of {HARD_MAX_VALUE_BYTES} bytes",
            args.max_value_bytes
        );
    }
    let config = MasterConfig {
        id: args.id.unwrap_or_else(|| default_id.to_string()),
        advertise: advertised(listen, args.advertise),
        log_dir: args.log_dir,
        slaves: args.slaves,
        replication_factor: args
            .replication_factor
            .unwrap_or_else(|| placement::default_replication_factor(args.slaves)),
        lease_ttl: args.lease_ttl,
        slave_timeout: args.slave_timeout,
        prefer_active,
        limits: Limits {
            max_key_bytes: args.max_key_bytes,
            max_value_bytes: args.max_value_bytes,
            max_watchers: args.max_watchers,
        },
        segment_bytes: args.segment_bytes,
        compact_segments: args.compact_segments.max(1),
        commit_window: args.commit_window.into(),
        security: Security::for_member(&args.tls, Some(&args.tokens))?,
    };
    #[cfg(feature = "chaos-broken-ack")]
    if args.chaos_broken_ack {
        tracing::warn!("--chaos-broken-ack: WRITEs are acknowledged before the quorum (test-only)");
        dsm::master::write::BROKEN_ACK.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    #[cfg(feature = "chaos-broken-takeover")]
    if args.chaos_broken_takeover {
        tracing::warn!(
            "--chaos-broken-takeover: wall-clock lease expiry, cut before fencing, no claim check after the log fsync (test-only)"
        );
        dsm::master::failover::BROKEN_TAKEOVER.store(true, std::sync::atomic::Ordering::SeqCst);
        dsm::wal::SKIP_CLAIM_CHECK.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    #[cfg(feature = "chaos-broken-read")]
    if args.chaos_broken_read {
        tracing::warn!("--chaos-broken-read: NOT_FOUND without confirming the term (test-only)");
        dsm::master::read::BROKEN_READ.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let master = Master::new(config)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "master-capable process started");
    let cancel = cancel_on_signal();
    dsm::metrics::spawn(
        metrics_listen.0,
        &dsm::metrics::master().registry,
        master.readiness(),
        cancel.clone(),
    )
    .await?;
    master.run(listener, cancel).await
}

async fn run_slave(args: SlaveArgs) -> anyhow::Result<()> {
    let metrics_listen = args.metrics_listen;
    let config = SlaveConfig {
        id: args.id,
        advertise: advertised(args.listen, args.advertise),
        listen: args.listen,
        data_dir: args.data_dir,
        masters: vec![args.master, args.backup],
        heartbeat_interval: args.heartbeat,
        security: Security::for_member(&args.tls, None)?,
        store: StoreOptions {
            commit_window: args.commit_window.into(),
            ..StoreOptions::default()
        },
    };
    let cancel = cancel_on_signal();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let slave = Slave::open(config).await?;
    let registered = slave.registered();
    let readiness: dsm::metrics::Readiness = Arc::new(move || match registered.borrow().as_ref() {
        Some(_) => Ok(()),
        None => Err("not registered with an active master".into()),
    });
    dsm::metrics::spawn(
        metrics_listen.0,
        &dsm::metrics::slave().registry,
        readiness,
        cancel.clone(),
    )
    .await?;
    slave.serve(listener, cancel.cancelled_owned()).await
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs to stderr at `default_level` unless RUST_LOG says otherwise (`dsm
/// chaos` uses `warn` so that its report stays readable), in `format`.
fn init_tracing(default_level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // When stderr is a file on a full volume, a failed log line must not
        // become a panic (the default reports it with `eprintln!`, which
        // panics when stderr fails).
        .log_internal_errors(false);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.with_ansi(false).json().init(),
    }
}

fn main() -> ExitCode {
    // Builds with the `failpoints` feature arm the points named in the
    // FAILPOINTS environment variable (see `dsm::crash_points`) for the whole run.
    #[cfg(feature = "failpoints")]
    let _fail_scenario = fail::FailScenario::setup();
    ignore_file_size_signal();
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = cli.worker_threads {
        runtime.worker_threads(usize::from(threads));
    }
    match runtime.build() {
        Ok(runtime) => runtime.block_on(run(cli.command, cli.log_format)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command, log_format: LogFormat) -> ExitCode {
    let result = match command {
        Command::Client(args) => return report(dsm::client::run(args).await),
        Command::Log {
            command: LogCommand::Dump { dir },
        } => dsm::log_dump::dump(&dir, &mut std::io::stdout().lock()),
        Command::Local(args) => dsm::local::run(args).await,
        Command::Snapshot { command } => snapshot(command).await,
        Command::Bench(args) => dsm::bench::run(args).await,
        Command::Chaos(args) => {
            init_tracing("warn", log_format);
            return report(dsm::chaos::run(args).await);
        }
        Command::Master(args) => {
            init_tracing("info", log_format);
            run_master(args, true).await
        }
        Command::Backup(args) => {
            init_tracing("info", log_format);
            run_master(args, false).await
        }
        Command::Slave(args) => {
            init_tracing("info", log_format);
            run_slave(args).await
        }
    };
    report(result.map(|()| ExitCode::SUCCESS))
}

/// Runs `dsm snapshot`.
async fn snapshot(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Save {
            file,
            max_bytes,
            cluster,
        } => {
            let client = dsm::client::cli::connect(&cluster)?;
            let summary = dsm::snapshot::save(&client, &file, max_bytes).await?;
            println!("saved {}\n{summary}", file.display());
        }
        SnapshotCommand::Status { file } => {
            let summary =
                tokio::task::spawn_blocking(move || dsm::snapshot::read(&file, |_| {})).await??;
            println!("{summary}");
        }
        SnapshotCommand::Restore {
            file,
            log_dir,
            if_empty,
        } => {
            let dir = log_dir.clone();
            let restored =
                tokio::task::spawn_blocking(move || dsm::snapshot::restore(&file, &dir, if_empty))
                    .await??;
            match restored {
                Restored::Built(summary) => println!(
                    "restored {} keys into {} (start a master on it, with empty slaves)\n{summary}",
                    summary.keys,
                    log_dir.display()
                ),
                Restored::AlreadyHeld => println!(
                    "{} already holds a log; nothing restored (--if-empty)",
                    log_dir.display()
                ),
            }
        }
    }
    Ok(())
}

/// Ignores SIGXFSZ, so that a write past the file size limit
/// (`RLIMIT_FSIZE`) fails with EFBIG, which the log writer reports and
/// recovers from like a full disk, instead of killing the process (the
/// signal's default action). PostgreSQL does the same.
fn ignore_file_size_signal() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_IGN installs no handler, so no code runs in signal
    // context; the disposition is process-wide, set once at startup.
    if let Err(e) = unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) } {
        eprintln!("warning: cannot ignore SIGXFSZ: {e}");
    }
}

/// Prints an error the way a person reads it and picks the exit code.
fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// The variables the flags of `command` and of its subcommands read.
    fn variables(command: &clap::Command, found: &mut Vec<String>) {
        for arg in command.get_arguments() {
            if let Some(name) = arg.get_env() {
                found.push(name.to_string_lossy().into_owned());
            }
        }
        for sub in command.get_subcommands() {
            variables(sub, found);
        }
    }

    /// The operator configures the nodes through `dsm_wire::env`: a flag reading a
    /// variable declared nowhere else would be one the operator cannot name.
    #[test]
    fn every_flag_variable_is_declared_in_the_wire_crate() {
        let mut found = Vec::new();
        variables(&Cli::command(), &mut found);
        for name in &found {
            assert!(
                dsm_wire::env::ALL.contains(&name.as_str()),
                "{name} is not declared in dsm_wire::env"
            );
        }
        for name in dsm_wire::env::ALL {
            assert!(found.iter().any(|f| f == name), "no flag reads {name}");
        }
    }
}
