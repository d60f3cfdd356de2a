//! `dsm-operator`: runs the DsmCluster controller, or prints the CRD (`dsm-operator crd`).

use clap::{Parser, Subcommand};

/// Kubernetes operator for DSM clusters.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the DsmCluster CustomResourceDefinition as YAML (`| kubectl apply -f -`).
    Crd,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", dsm_operator::crd::crd_yaml()?),
    }
    Ok(())
}
