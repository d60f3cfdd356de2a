//! The results of one bench run: the [`Summary`] written by `--json` and
//! kept for every sweep point, the table printed at the end, and the
//! per-slave load distribution computed from two `Status` answers.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::stats::{ErrorCount, Percentiles, Sample, format_us};
use super::workload::WorkloadSpec;
use crate::proto::StatusReply;

/// How a run was set up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Concurrent clients, each with its own connection.
    pub clients: usize,
    /// Slaves of the cluster (as configured on the master).
    pub slaves: u32,
    /// Master address used.
    pub master: String,
    /// The workload.
    pub workload: WorkloadSpec,
    /// Warm-up excluded from the results, seconds.
    pub warmup_s: f64,
    /// Measurement asked for, seconds.
    pub duration_s: f64,
    /// Open-loop target in requests/s over all clients; `None` for the
    /// closed loop (each client sends its next request when the previous
    /// one is answered).
    pub rate: Option<f64>,
    /// Client API (absent from results written before it existed: unary).
    #[serde(default)]
    pub api: super::Api,
    /// Requests in flight per client (absent from results written before
    /// it existed: 1).
    #[serde(default = "one")]
    pub depth: usize,
}

fn one() -> usize {
    1
}

/// Figures of one operation over the measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpSummary {
    /// Requests served.
    pub ops: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Served requests per second.
    pub throughput_ops_per_s: f64,
    /// Latency of the served requests.
    pub latency: Percentiles,
}

/// Requests the master sent to one slave during the measurement: how evenly
/// the load spreads across the slaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaveLoad {
    /// Slave id.
    pub id: String,
    /// READs sent to it.
    pub reads: u64,
    /// WRITEs sent to it (one per replica).
    pub writes: u64,
}

/// Everything one run measured; `--json` writes it as is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// How the run was set up.
    pub config: RunConfig,
    /// Length of the measurement actually made, seconds (shorter than
    /// asked when interrupted).
    pub measured_s: f64,
    /// True when Ctrl-C cut the run short.
    pub interrupted: bool,
    /// Requests served, READs and WRITEs.
    pub ops: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Served requests per second.
    pub throughput_ops_per_s: f64,
    /// READ figures.
    pub read: OpSummary,
    /// WRITE figures.
    pub write: OpSummary,
    /// Failures by operation and kind, with an example message.
    pub error_kinds: Vec<ErrorCount>,
    /// Per-slave requests during the measurement.
    pub slaves: Vec<SlaveLoad>,
    /// One sample per second of the measurement.
    pub samples: Vec<Sample>,
}

/// Per-slave READ and WRITE counts between two `Status` answers of the
/// active master. A slave missing from `before` (it registered during the
/// run) counts from zero; counters that went down (a failover to a master
/// whose counters start afresh) count from zero too rather than wrapping.
pub fn load_delta(before: Option<&StatusReply>, after: &StatusReply) -> Vec<SlaveLoad> {
    let mut loads: Vec<SlaveLoad> = after
        .slaves
        .iter()
        .map(|s| {
            let prior = before.and_then(|b| b.slaves.iter().find(|p| p.id == s.id));
            let (r0, w0) = prior.map_or((0, 0), |p| (p.reads, p.writes));
            SlaveLoad {
                id: s.id.clone(),
                reads: s.reads.checked_sub(r0).unwrap_or(s.reads),
                writes: s.writes.checked_sub(w0).unwrap_or(s.writes),
            }
        })
        .collect();
    loads.sort_by_key(|l| natural_key(&l.id));
    loads
}

/// Sorts `slave-10` after `slave-9`.
fn natural_key(id: &str) -> (String, u64) {
    let digits = id.len() - id.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (name, number) = id.split_at(id.len() - digits);
    (name.to_string(), number.parse().unwrap_or(0))
}

impl Summary {
    /// The one-line description of the setup heading the table.
    pub fn headline(&self) -> String {
        let c = &self.config;
        let w = &c.workload;
        let mode = match c.rate {
            Some(rate) => format!("open loop at {rate} ops/s"),
            None => "closed loop".to_string(),
        };
        let mode = match c.depth {
            1 => format!("{mode}, {} API", c.api),
            depth => format!("{mode}, {} API, {depth} in flight per client", c.api),
        };
        format!(
            "{} clients, {} slaves ({}), {:.0}% writes, {} keys ({}), {}-byte values, {mode}, {:.1}s measured after {:.0}s warm-up{}",
            c.clients,
            c.slaves,
            c.master,
            w.write_ratio * 100.0,
            w.keys,
            w.distribution,
            w.value_size,
            self.measured_s,
            c.warmup_s,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        )
    }

    /// The final table, as printed on stdout.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.headline());
        let _ = writeln!(
            out,
            "\n{:<6} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "op", "ops", "ops/s", "p50", "p90", "p99", "p99.9", "max", "errors"
        );
        for (name, op) in [("read", &self.read), ("write", &self.write)] {
            let l = &op.latency;
            let _ = writeln!(
                out,
                "{:<6} {:>10} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
                name,
                op.ops,
                op.throughput_ops_per_s,
                format_us(l.p50_us),
                format_us(l.p90_us),
                format_us(l.p99_us),
                format_us(l.p999_us),
                format_us(l.max_us),
                op.errors
            );
        }
        let _ = writeln!(
            out,
            "{:<6} {:>10} {:>10.0} {:>49} {:>8}",
            "total", self.ops, self.throughput_ops_per_s, "", self.errors
        );
        if self.error_kinds.is_empty() {
            let _ = writeln!(out, "\nerrors: none");
        } else {
            let _ = writeln!(out, "\nerrors by kind:");
            for e in &self.error_kinds {
                let _ = writeln!(
                    out,
                    "  {:<6} {:<12} {:>8}  e.g. {}",
                    e.op, e.kind, e.count, e.example
                );
            }
        }
        let total: u64 = self.slaves.iter().map(|s| s.reads + s.writes).sum();
        let _ = writeln!(out, "\nload per slave during the measurement:");
        let _ = writeln!(
            out,
            "  {:<12} {:>10} {:>10} {:>10} {:>7}",
            "slave", "reads", "writes", "total", "share"
        );
        for s in &self.slaves {
            let sum = s.reads + s.writes;
            let share = if total > 0 {
                100.0 * sum as f64 / total as f64
            } else {
                0.0
            };
            let _ = writeln!(
                out,
                "  {:<12} {:>10} {:>10} {:>10} {:>6.1}%",
                s.id, s.reads, s.writes, sum, share
            );
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bench::workload::Distribution;
    use crate::proto::SlaveStatus;

    fn slave(id: &str, reads: u64, writes: u64) -> SlaveStatus {
        SlaveStatus {
            id: id.to_string(),
            reads,
            writes,
            live: true,
            ..SlaveStatus::default()
        }
    }

    /// A summary with round figures, for the report and sweep tests.
    pub(crate) fn sample_summary(clients: usize, slaves: u32, throughput: f64) -> Summary {
        let latency = |base: u64| Percentiles {
            count: 100,
            mean_us: base as f64,
            p50_us: base,
            p90_us: base * 2,
            p99_us: base * 4,
            p999_us: base * 8,
            max_us: base * 10,
        };
        Summary {
            config: RunConfig {
                clients,
                slaves,
                master: "127.0.0.1:12345".into(),
                workload: WorkloadSpec {
                    keys: 1000,
                    write_ratio: 0.3,
                    distribution: Distribution::Uniform,
                    zipf_exponent: 1.0,
                    value_size: 100,
                },
                warmup_s: 5.0,
                duration_s: 30.0,
                rate: None,
                api: crate::bench::Api::Unary,
                depth: 1,
            },
            measured_s: 30.0,
            interrupted: false,
            ops: (throughput * 30.0) as u64,
            errors: 0,
            throughput_ops_per_s: throughput,
            read: OpSummary {
                ops: (throughput * 21.0) as u64,
                errors: 0,
                throughput_ops_per_s: throughput * 0.7,
                latency: latency(100 * clients as u64),
            },
            write: OpSummary {
                ops: (throughput * 9.0) as u64,
                errors: 0,
                throughput_ops_per_s: throughput * 0.3,
                latency: latency(300 * clients as u64),
            },
            error_kinds: Vec::new(),
            slaves: (0..slaves)
                .map(|i| SlaveLoad {
                    id: format!("slave-{i}"),
                    reads: 100 + u64::from(i),
                    writes: 50,
                })
                .collect(),
            samples: Vec::new(),
        }
    }

    #[test]
    fn load_is_the_difference_of_the_two_status_answers() {
        let before = StatusReply {
            slaves: vec![slave("slave-1", 10, 5), slave("slave-0", 7, 7)],
            ..StatusReply::default()
        };
        let after = StatusReply {
            slaves: vec![
                slave("slave-10", 3, 3),
                slave("slave-1", 30, 15),
                slave("slave-0", 2, 9),
            ],
            ..StatusReply::default()
        };
        let loads = load_delta(Some(&before), &after);
        let ids: Vec<&str> = loads.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, ["slave-0", "slave-1", "slave-10"]);
        // slave-0's read counter went down (new master): counted afresh.
        assert_eq!((loads[0].reads, loads[0].writes), (2, 2));
        assert_eq!((loads[1].reads, loads[1].writes), (20, 10));
        assert_eq!((loads[2].reads, loads[2].writes), (3, 3));
        assert_eq!(load_delta(None, &after)[1].reads, 30);
    }

    #[test]
    fn the_table_shows_every_figure_and_the_errors() {
        let mut summary = sample_summary(10, 3, 1000.0);
        let table = summary.table();
        for needle in [
            "10 clients, 3 slaves",
            "30% writes",
            "p99.9",
            "read",
            "write",
            "errors: none",
            "slave-2",
            "33.",
        ] {
            assert!(table.contains(needle), "{needle:?} missing from\n{table}");
        }
        summary.error_kinds.push(ErrorCount {
            op: "write".into(),
            kind: "unavailable".into(),
            count: 3,
            example: "no active master reachable".into(),
        });
        let table = summary.table();
        assert!(table.contains("unavailable"), "{table}");
        assert!(table.contains("no active master reachable"), "{table}");
    }

    #[test]
    fn the_json_has_every_section() {
        let summary = sample_summary(10, 3, 1000.0);
        let json: serde_json::Value = serde_json::to_value(&summary).unwrap();
        for field in [
            "config",
            "ops",
            "errors",
            "throughput_ops_per_s",
            "read",
            "write",
            "error_kinds",
            "slaves",
            "samples",
        ] {
            assert!(json.get(field).is_some(), "{field} missing");
        }
        assert_eq!(json["read"]["latency"]["p99_us"], 4000);
        assert_eq!(json["config"]["workload"]["distribution"], "uniform");
        let back: Summary = serde_json::from_value(json).unwrap();
        assert_eq!(back, summary);
    }
}
