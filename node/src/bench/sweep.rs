//! `dsm bench sweep`: the scaling study. For each slave count one
//! local cluster is started and every client count is run against it; the
//! points go to `results.csv` and `results.json` (rewritten after each
//! point, so an interrupted sweep keeps what it measured) and the plots are
//! drawn at the end (see [`super::plot`]).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use super::report::Summary;
use super::{RunParams, WorkloadArgs, cancel_on_signal, measure, serve_metrics};
use crate::local::LocalCluster;

/// Flags of `dsm bench sweep`.
#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    /// Client counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 5, 10, 20, 50])]
    pub clients: Vec<usize>,
    /// Slave counts to run, comma-separated: one local cluster each.
    #[arg(long, value_delimiter = ',', default_values_t = [3u32, 5, 7, 9])]
    pub slaves: Vec<u32>,
    /// Directory for results.csv, results.json and the SVG plots.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Load before each point's measurement, excluded from the results.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Length of each point's measurement.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// The workload of every point.
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

/// Runs the grid and writes the results and plots.
pub async fn run(args: SweepArgs) -> anyhow::Result<()> {
    if args.clients.is_empty() || args.slaves.is_empty() {
        bail!("--clients and --slaves need at least one value each");
    }
    let base = RunParams {
        clients: 1,
        workload: args.workload.spec(),
        warmup: args.warmup,
        duration: args.duration,
        rate: args.workload.rate,
        api: args.workload.api,
        depth: args.workload.depth,
        security: Default::default(),
        label: String::new(),
    };
    for &clients in &args.clients {
        RunParams {
            clients,
            ..base.clone()
        }
        .validate()?;
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let cancel = cancel_on_signal();
    serve_metrics(args.workload.metrics_listen, &cancel).await?;

    let mut points: Vec<Summary> = Vec::new();
    'grid: for &slaves in &args.slaves {
        let mut cluster = LocalCluster::start_temporary(slaves).await?;
        for &clients in &args.clients {
            if cancel.is_cancelled() {
                break;
            }
            let params = RunParams {
                clients,
                label: format!("[{slaves} slaves, {clients:>3} clients] "),
                ..base.clone()
            };
            let summary = match measure(&cluster.endpoints(), &params, &cancel).await {
                Ok(summary) => summary,
                Err(e) => {
                    cluster.stop().await;
                    return Err(e.context(format!("{slaves} slaves, {clients} clients")));
                }
            };
            eprintln!(
                "{}{:.0} ops/s, read p50/p99 {}/{} µs, write p50/p99 {}/{} µs, {} errors",
                params.label,
                summary.throughput_ops_per_s,
                summary.read.latency.p50_us,
                summary.read.latency.p99_us,
                summary.write.latency.p50_us,
                summary.write.latency.p99_us,
                summary.errors
            );
            let interrupted = summary.interrupted;
            points.push(summary);
            write_results(&args.out, &points)?;
            if interrupted {
                cluster.stop().await;
                break 'grid;
            }
        }
        cluster.stop().await;
    }
    let plots = super::plot::sweep_plots(&args.out, &points)?;
    println!("{}", table(&points));
    println!(
        "results: {} and {}",
        args.out.join("results.csv").display(),
        args.out.join("results.json").display()
    );
    for plot in plots {
        println!("plot: {}", plot.display());
    }
    cancel.cancel();
    Ok(())
}

/// Reads `dir/results.json` and draws the plots again (after changing
/// them, or to plot a subset of points edited out of the file).
pub fn replot(dir: &std::path::Path) -> anyhow::Result<()> {
    let path = dir.join("results.json");
    let json = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let points: Vec<Summary> = serde_json::from_str(&json)
        .with_context(|| format!("{} is not the results of a sweep", path.display()))?;
    for plot in super::plot::sweep_plots(dir, &points)? {
        println!("plot: {}", plot.display());
    }
    Ok(())
}

/// Writes `results.csv` and `results.json` into `dir`.
pub fn write_results(dir: &std::path::Path, points: &[Summary]) -> anyhow::Result<()> {
    let path = dir.join("results.csv");
    std::fs::write(&path, csv(points))
        .with_context(|| format!("cannot write {}", path.display()))?;
    super::write_json(&dir.join("results.json"), &points)
}

/// Column names of `results.csv`, in order.
pub const CSV_HEADER: &str = "slaves,clients,api,write_ratio,keys,distribution,value_size,rate,\
measured_s,ops,errors,throughput_ops_per_s,\
read_ops,read_p50_us,read_p90_us,read_p99_us,read_p999_us,read_max_us,read_mean_us,\
write_ops,write_p50_us,write_p90_us,write_p99_us,write_p999_us,write_max_us,write_mean_us";

/// One CSV row per point. Every field is a number or a fixed word, so no
/// quoting is needed.
pub fn csv(points: &[Summary]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for p in points {
        let c = &p.config;
        let w = &c.workload;
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{},{:.3},{},{},{:.1}",
            c.slaves,
            c.clients,
            c.api,
            w.write_ratio,
            w.keys,
            w.distribution,
            w.value_size,
            c.rate.map(|r| r.to_string()).unwrap_or_default(),
            p.measured_s,
            p.ops,
            p.errors,
            p.throughput_ops_per_s
        );
        for op in [&p.read, &p.write] {
            let l = &op.latency;
            let _ = write!(
                out,
                ",{},{},{},{},{},{},{:.1}",
                op.ops, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
            );
        }
        out.push('\n');
    }
    out
}

/// A compact table of every point, printed at the end.
pub fn table(points: &[Summary]) -> String {
    let mut out = format!(
        "{:>6} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
        "slaves", "clients", "ops/s", "read p50", "read p99", "write p50", "write p99", "errors"
    );
    for p in points {
        let _ = writeln!(
            out,
            "{:>6} {:>7} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>7}",
            p.config.slaves,
            p.config.clients,
            p.throughput_ops_per_s,
            super::stats::format_us(p.read.latency.p50_us),
            super::stats::format_us(p.read.latency.p99_us),
            super::stats::format_us(p.write.latency.p50_us),
            super::stats::format_us(p.write.latency.p99_us),
            p.errors
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::sample_summary;

    #[test]
    fn csv_has_a_header_and_one_row_per_point_with_every_column() {
        let points = vec![sample_summary(1, 3, 500.0), sample_summary(10, 3, 2500.0)];
        let csv = csv(&points);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        let columns = lines[0].split(',').count();
        assert_eq!(columns, 26);
        for row in &lines[1..] {
            assert_eq!(row.split(',').count(), columns, "{row}");
        }
        assert!(lines[2].starts_with("3,10,unary,0.3,1000,uniform,100,,30.000,75000,0,2500.0,"));
    }

    #[test]
    fn results_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let points = vec![sample_summary(1, 3, 500.0)];
        write_results(dir.path(), &points).unwrap();
        let json = std::fs::read_to_string(dir.path().join("results.json")).unwrap();
        let back: Vec<Summary> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, points);
        let csv = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
        assert_eq!(csv.lines().count(), 2);
        assert!(table(&points).contains("500"));
        replot(dir.path()).unwrap();
        assert!(dir.path().join("throughput_vs_clients.svg").exists());
        assert!(replot(&dir.path().join("nowhere")).is_err());
    }
}
