//! `dsm-operator`: runs the DsmCluster controller, or prints the CRD (`dsm-operator crd`).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dsm_operator::controller::{self, Settings};
use tracing_subscriber::EnvFilter;

/// Kubernetes operator for DSM clusters.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (in a cluster, or against the current kubeconfig context).
    Run(RunArgs),
    /// Print the DsmCluster CustomResourceDefinition as YAML (`| kubectl apply -f -`).
    Crd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "DSM_OPERATOR_METRICS_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    metrics_listen: SocketAddr,
    /// Elect a leader among replicas with a coordination.k8s.io Lease.
    #[arg(long, env = "DSM_OPERATOR_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// The operator pod's namespace: the DsmClusters' NetworkPolicies let the operator
    /// through from there (from any namespace when unset).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// Namespace of the leader Lease [default: --namespace, else the kubeconfig
    /// context's namespace; without either the operator refuses to start].
    #[arg(long, env = "DSM_OPERATOR_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, env = "DSM_OPERATOR_LEASE_NAME", default_value = "dsm-operator")]
    lease_name: String,
    /// Seconds the Lease lasts without renewal.
    #[arg(long, env = "DSM_OPERATOR_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// This replica's identity in the election (default: the pod name).
    #[arg(long, env = "POD_NAME", default_value = "dsm-operator")]
    identity: String,
    /// Log format: `text` for people (coloured only on a terminal), `json` for log
    /// pipelines (one object per line).
    #[arg(long, env = "DSM_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs to stderr at `info` unless RUST_LOG says otherwise, in `format`; ANSI colours
/// only when stderr is a terminal, so `kubectl logs` and files get plain text.
fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.with_ansi(false).json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", dsm_operator::crd::crd_yaml()?),
        Command::Run(args) => {
            init_tracing(args.log_format);
            controller::run(Settings {
                metrics_listen: args.metrics_listen,
                leader_elect: args.leader_elect,
                namespace: args.namespace,
                lease_namespace: args.lease_namespace,
                lease_name: args.lease_name,
                lease_ttl: Duration::from_secs(args.lease_seconds.max(3)),
                identity: args.identity,
            })
            .await?;
        }
    }
    Ok(())
}
