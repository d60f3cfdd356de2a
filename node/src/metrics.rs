//! Prometheus metrics, and the HTTP endpoints every `dsm` process serves on
//! `--metrics-listen`: `/metrics` (Prometheus text format), `/healthz`
//! (the process is alive) and `/readyz` (it does its job: active master
//! holding the lease and serving, standby caught up with the log, slave
//! registered; 503 with the reason otherwise).
//!
//! Every metric is defined here, so this file is the list dashboards and
//! alerts are written against; `docs/OBSERVABILITY.md` tables them, and a
//! unit test checks that the tables and the registries agree. Names follow
//! Prometheus conventions: `dsm_` prefix, base units, `_total` for counters,
//! `_seconds` for durations. No label carries a key; `slave` labels are
//! bounded by the slave count.
//!
//! A process exports the metrics of its role only, each role's in its own
//! [`Registry`]: [`MasterMetrics`] (master and backup), [`SlaveMetrics`],
//! [`BenchMetrics`] (`dsm bench`), each beside the `process_*` collector.
//! The dashboards rely on that split: a master exporting
//! `dsm_replica_keys 0` would show up as an empty slave, a slave exporting
//! `dsm_backup_lag_seconds` as a third master. Each struct makes its
//! metrics through `Registering`, which registers a metric as it creates
//! it: every field is exported, at zero, from the moment the struct exists,
//! and there is no separate list to forget one in.
//!
//! Code reaches them through [`master()`], [`slave()`] and [`bench()`],
//! each built on first use and kept for the life of the process. A process
//! runs one role from start to exit, so a process-wide set is what an
//! `Arc` created in `main` would be, without threading it down to where
//! metrics are recorded: the log writer, the session table, the watch
//! streams. The one exception is the auth layer, which guards the master's
//! and the slave's servers alike: it is handed the counter of the role it
//! guards ([`crate::security::Security::auth_layer`]).

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use dsm_wire::metadata;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

/// The metrics of a master-capable process (master or backup); the standby
/// exports them too, mostly at 0.
pub struct MasterMetrics {
    /// What `/metrics` serves on a master or backup.
    pub registry: Registry,
    /// `dsm_requests_total{op,result}`: client requests handled, by
    /// operation (read, write, delete, list, watch, snapshot, status,
    /// compact, drain) and result (ok, not_found, invalid, unavailable,
    /// not_leader, condition_failed, compacted, limit, refused, error). A
    /// WATCH or snapshot counts once, when its stream starts.
    pub requests: IntCounterVec,
    /// `dsm_request_duration_seconds{op}`: client request latency.
    pub request_duration: HistogramVec,
    /// `dsm_role{role}`: 1 for the role this process has now (active,
    /// standby), 0 for the other.
    pub role: IntGaugeVec,
    /// `dsm_epoch`: epoch of the active term (0 on a standby).
    pub epoch: IntGauge,
    /// `dsm_live_slaves`: slaves registered and heartbeating (0 on a standby).
    pub live_slaves: IntGauge,
    /// `dsm_configured_slaves`: the configured slave count `n`.
    pub configured_slaves: IntGauge,
    /// `dsm_replication_factor`: the replication factor `r`.
    pub replication_factor: IntGauge,
    /// `dsm_keys`: keys in the index.
    pub keys: IntGauge,
    /// `dsm_under_replicated_keys`: keys short of the replication factor.
    pub under_replicated_keys: IntGauge,
    /// `dsm_log_bytes`: bytes of log segments on disk.
    pub log_bytes: IntGauge,
    /// `dsm_log_last_sequence`: sequence number of the last record written
    /// (active) or applied (standby); the difference is the standby's lag
    /// in records.
    pub log_last_sequence: IntGauge,
    /// `dsm_log_fsync_duration_seconds`: duration of each log fsync (one
    /// covers a whole group commit).
    pub log_fsync_duration: Histogram,
    /// `dsm_log_records_total`: records appended to the log; against the
    /// fsync count, the group commit's batch size.
    pub log_records: IntCounter,
    /// `dsm_backup_lag_seconds`: seconds since the standby last reached the
    /// end of the log.
    pub backup_lag: Gauge,
    /// `dsm_failovers_total`: takeovers by this process.
    pub failovers: IntCounter,
    /// `dsm_re_replications_total`: copies made by re-replication (slave
    /// loss, short writes, drains).
    pub re_replications: IntCounter,
    /// `dsm_deduplicated_writes_total`: retried WRITEs answered from the
    /// client session table instead of being applied again.
    pub deduplicated_writes: IntCounter,
    /// `dsm_client_sessions_evicted_total`: client sessions forgotten
    /// because the table was full.
    pub sessions_evicted: IntCounter,
    /// `dsm_client_sessions`: clients whose WRITEs this master can
    /// deduplicate.
    pub client_sessions: IntGauge,
    /// `dsm_watchers`: WATCH streams open on this master.
    pub watchers: IntGauge,
    /// `dsm_watchers_cut_off_total{reason}`: WATCH streams this master
    /// ended with an error, by reason (slow: its stream stayed full;
    /// compacted: it fell behind a compaction).
    pub watchers_cut_off: IntCounterVec,
    /// `dsm_slave_requests_total{slave,op}`: requests the master sent to
    /// each slave, the load distribution; a slave's series appear when it
    /// registers.
    pub slave_requests: IntCounterVec,
    /// `dsm_auth_rejected_total{reason}`: calls refused by the auth layer.
    pub auth_rejected: IntCounterVec,
}

/// The metrics of a slave.
pub struct SlaveMetrics {
    /// What `/metrics` serves on a slave.
    pub registry: Registry,
    /// `dsm_replica_requests_total{op,result}`: replica requests served,
    /// by operation and result.
    pub requests: IntCounterVec,
    /// `dsm_replica_keys`: keys the slave stores.
    pub keys: IntGauge,
    /// `dsm_replica_registered`: 1 while the slave is registered with an
    /// active master.
    pub registered: IntGauge,
    /// `dsm_replica_epoch`: the slave's fenced epoch.
    pub epoch: IntGauge,
    /// `dsm_auth_rejected_total{reason}`: calls refused by the auth layer.
    pub auth_rejected: IntCounterVec,
}

/// The metrics of `dsm bench`: a live view of a run (its report is the
/// result), never exported by a server.
pub struct BenchMetrics {
    /// What `/metrics` serves while `dsm bench` runs.
    pub registry: Registry,
    /// `dsm_bench_requests_total{op,result}`: requests sent, by operation
    /// (read, write) and result (ok, missing, not_found, invalid,
    /// unavailable, bad_address, error). Counts the warm-up too.
    pub requests: IntCounterVec,
    /// `dsm_bench_request_duration_seconds{op}`: latency the bench observed
    /// per served request.
    pub request_duration: HistogramVec,
}

/// The metrics of this process's master or backup.
pub fn master() -> &'static MasterMetrics {
    static METRICS: LazyLock<MasterMetrics> = LazyLock::new(|| constant(MasterMetrics::new()));
    &METRICS
}

/// The metrics of this process's slave.
pub fn slave() -> &'static SlaveMetrics {
    static METRICS: LazyLock<SlaveMetrics> = LazyLock::new(|| constant(SlaveMetrics::new()));
    &METRICS
}

/// The metrics of this process's `dsm bench` run.
pub fn bench() -> &'static BenchMetrics {
    static METRICS: LazyLock<BenchMetrics> = LazyLock::new(|| constant(BenchMetrics::new()));
    &METRICS
}

/// Unwraps a set of metrics. Their names, help texts, labels and buckets
/// are constants of this module, so an error (a clash, an invalid name) is
/// a bug here, never a condition of the run; the unit tests build every
/// set, so the first test run catches it.
fn constant<T>(metrics: prometheus::Result<T>) -> T {
    metrics.expect("the metric definitions of dsm::metrics are invalid")
}

/// Operations of `dsm_requests_total` whose series exist from the start,
/// with every result: the data operations (status, compact and drain get
/// theirs when first asked for).
const REQUEST_OPS: [&str; 6] = ["read", "write", "delete", "list", "watch", "snapshot"];

/// Every `result` of `dsm_requests_total`.
const REQUEST_RESULTS: [&str; 10] = [
    "ok",
    "not_found",
    "invalid",
    "unavailable",
    "not_leader",
    "condition_failed",
    "compacted",
    "limit",
    "refused",
    "error",
];

impl MasterMetrics {
    fn new() -> prometheus::Result<MasterMetrics> {
        let r = Registering::new()?;
        let metrics = MasterMetrics {
            requests: r.counter_vec(
                "dsm_requests_total",
                "Client requests handled by this master, by operation and result.",
                &["op", "result"],
            )?,
            request_duration: r.histogram_vec(
                "dsm_request_duration_seconds",
                "Latency of client requests handled by this master, by operation.",
                &["op"],
            )?,
            role: r.gauge_vec(
                "dsm_role",
                "1 for the current role of this master-capable process (active or standby), 0 otherwise.",
                &["role"],
            )?,
            epoch: r.gauge(
                "dsm_epoch",
                "Epoch (term) of this process when active; 0 when standby.",
            )?,
            live_slaves: r.gauge("dsm_live_slaves", "Slaves in the active master's live set.")?,
            configured_slaves: r.gauge(
                "dsm_configured_slaves",
                "Slave count the cluster is configured for (quorums derive from it).",
            )?,
            replication_factor: r.gauge("dsm_replication_factor", "Slaves each WRITE must reach.")?,
            keys: r.gauge("dsm_keys", "Keys in this master's index.")?,
            under_replicated_keys: r.gauge(
                "dsm_under_replicated_keys",
                "Keys with fewer live replicas than the replication factor.",
            )?,
            log_bytes: r.gauge(
                "dsm_log_bytes",
                "Size of the write-ahead log segments on disk.",
            )?,
            log_last_sequence: r.gauge(
                "dsm_log_last_sequence",
                "Last log sequence number written (active) or applied (standby).",
            )?,
            log_fsync_duration: r.histogram(
                "dsm_log_fsync_duration_seconds",
                "Duration of each write-ahead log fdatasync (one per group commit).",
            )?,
            log_records: r.counter(
                "dsm_log_records_total",
                "Records appended to the write-ahead log.",
            )?,
            backup_lag: r.add(Gauge::new(
                "dsm_backup_lag_seconds",
                "Seconds since this standby last read the log to its end (0 when active).",
            )?)?,
            failovers: r.counter(
                "dsm_failovers_total",
                "Times this process took over as the active master.",
            )?,
            re_replications: r.counter(
                "dsm_re_replications_total",
                "Key copies made by background re-replication.",
            )?,
            deduplicated_writes: r.counter(
                "dsm_deduplicated_writes_total",
                "WRITE retries recognised and answered with the original outcome, not applied again.",
            )?,
            sessions_evicted: r.counter(
                "dsm_client_sessions_evicted_total",
                "Client sessions forgotten early because the session table was full.",
            )?,
            client_sessions: r.gauge(
                "dsm_client_sessions",
                "Clients whose WRITE retries this master can still recognise.",
            )?,
            watchers: r.gauge("dsm_watchers", "WATCH streams open on this master.")?,
            watchers_cut_off: r.counter_vec(
                "dsm_watchers_cut_off_total",
                "WATCH streams ended by this master because the watcher fell behind, by reason.",
                &["reason"],
            )?,
            slave_requests: r.counter_vec(
                "dsm_slave_requests_total",
                "Requests the active master sent to each slave, by operation (read, write).",
                &["slave", "op"],
            )?,
            auth_rejected: auth_rejected(&r)?,
            registry: r.0,
        };
        // Series of known label values exist from the start, so that rates
        // and ratios over them have data before the first such event.
        for role in dsm_wire::Role::ALL {
            metrics.role.with_label_values(&[role.as_str()]);
        }
        for reason in ["slow", "compacted"] {
            metrics.watchers_cut_off.with_label_values(&[reason]);
        }
        for op in REQUEST_OPS {
            metrics.request_duration.with_label_values(&[op]);
            for result in REQUEST_RESULTS {
                metrics.requests.with_label_values(&[op, result]);
            }
        }
        Ok(metrics)
    }
}

impl SlaveMetrics {
    fn new() -> prometheus::Result<SlaveMetrics> {
        let r = Registering::new()?;
        Ok(SlaveMetrics {
            requests: r.counter_vec(
                "dsm_replica_requests_total",
                "Requests this slave served, by operation (put, get, fence, inventory) and result.",
                &["op", "result"],
            )?,
            keys: r.gauge("dsm_replica_keys", "Keys stored by this slave.")?,
            registered: r.gauge(
                "dsm_replica_registered",
                "1 while this slave is registered with the active master.",
            )?,
            epoch: r.gauge(
                "dsm_replica_epoch",
                "Highest epoch this slave has been fenced with.",
            )?,
            auth_rejected: auth_rejected(&r)?,
            registry: r.0,
        })
    }
}

impl BenchMetrics {
    fn new() -> prometheus::Result<BenchMetrics> {
        let r = Registering::new()?;
        let metrics = BenchMetrics {
            requests: r.counter_vec(
                "dsm_bench_requests_total",
                "Requests sent by dsm bench, by operation and result.",
                &["op", "result"],
            )?,
            request_duration: r.histogram_vec(
                "dsm_bench_request_duration_seconds",
                "Latency of requests served to dsm bench, as the client saw it, by operation.",
                &["op"],
            )?,
            registry: r.0,
        };
        for op in ["read", "write"] {
            metrics.requests.with_label_values(&[op, "ok"]);
            metrics.request_duration.with_label_values(&[op]);
        }
        Ok(metrics)
    }
}

/// `dsm_auth_rejected_total{reason}`, of every server: gRPC calls refused
/// by the security layer, by reason (unauthenticated: no or unknown token,
/// or a member call without a verified certificate; permission_denied: a
/// read-only token asking for a write). Both series exist from the start.
fn auth_rejected(r: &Registering) -> prometheus::Result<IntCounterVec> {
    let metric = r.counter_vec(
        "dsm_auth_rejected_total",
        "gRPC calls refused for missing or insufficient credentials, by reason.",
        &["reason"],
    )?;
    for reason in ["unauthenticated", "permission_denied"] {
        metric.with_label_values(&[reason]);
    }
    Ok(metric)
}

/// `process_cpu_seconds_total`, as the prometheus crate names it.
#[cfg(target_os = "linux")]
const CPU_SECONDS: &str = "process_cpu_seconds_total";

/// The `process_*` metrics of the prometheus crate's collector, except that
/// `process_cpu_seconds_total` comes from `getrusage` in microseconds: the
/// crate's counts whole seconds (an integer counter of `/proc` clock ticks
/// divided by their rate), too coarse for a CPU panel's rate over a minute.
#[cfg(target_os = "linux")]
struct ProcessMetrics {
    from_proc: prometheus::process_collector::ProcessCollector,
    cpu: Opts,
    cpu_desc: prometheus::core::Desc,
}

#[cfg(target_os = "linux")]
impl ProcessMetrics {
    fn new() -> prometheus::Result<ProcessMetrics> {
        use prometheus::core::Describer;
        let cpu = Opts::new(
            CPU_SECONDS,
            "Total user and system CPU time spent in seconds.",
        );
        Ok(ProcessMetrics {
            from_proc: prometheus::process_collector::ProcessCollector::for_self(),
            cpu_desc: cpu.describe()?,
            cpu,
        })
    }
}

/// User and system CPU time of this process so far, in seconds.
#[cfg(target_os = "linux")]
fn cpu_seconds() -> Option<f64> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1_000_000.0;
    Some(seconds(usage.user_time()) + seconds(usage.system_time()))
}

#[cfg(target_os = "linux")]
impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut descs: Vec<_> = (self.from_proc.desc().into_iter())
            .filter(|desc| desc.fq_name != CPU_SECONDS)
            .collect();
        descs.push(&self.cpu_desc);
        descs
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families: Vec<_> = (self.from_proc.collect().into_iter())
            .filter(|family| family.name() != CPU_SECONDS)
            .collect();
        // A counter made afresh for each scrape, set to the total: nothing
        // to keep in step between concurrent scrapes.
        if let (Some(seconds), Ok(cpu)) = (
            cpu_seconds(),
            prometheus::Counter::with_opts(self.cpu.clone()),
        ) {
            cpu.inc_by(seconds);
            families.extend(cpu.collect());
        }
        families
    }
}

/// Builds one registry: each method creates a metric and registers it
/// before handing it back, so no metric of a struct above can be left out
/// of its registry.
struct Registering(Registry);

impl Registering {
    /// A registry holding the `process_*` metrics (CPU, memory, open files,
    /// start time), which every `dsm` process exports; the collector reads
    /// `/proc`, so it exists on Linux only.
    fn new() -> prometheus::Result<Registering> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry.register(Box::new(ProcessMetrics::new()?))?;
        Ok(Registering(registry))
    }

    fn add<M: Collector + Clone + 'static>(&self, metric: M) -> prometheus::Result<M> {
        self.0.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        self.add(IntCounter::new(name, help)?)
    }

    fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    fn gauge(&self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.add(IntGauge::new(name, help)?)
    }

    fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    fn histogram(&self, name: &str, help: &str) -> prometheus::Result<Histogram> {
        self.add(Histogram::with_opts(latency(name, help)?)?)
    }

    fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<HistogramVec> {
        self.add(HistogramVec::new(latency(name, help)?, labels)?)
    }
}

/// A latency histogram's options: buckets from 50 µs to about 6.5 s
/// (doubling).
fn latency(name: &str, help: &str) -> prometheus::Result<HistogramOpts> {
    let buckets = prometheus::exponential_buckets(0.000_05, 2.0, 18)?;
    Ok(HistogramOpts::new(name, help).buckets(buckets))
}

/// Decides what `/readyz` answers: `Ok` when ready, or why not.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the endpoints answer from.
#[derive(Clone)]
struct Endpoints {
    /// The metrics of this process's role.
    registry: Registry,
    readiness: Readiness,
}

/// Serves `/metrics` (from `registry`), `/healthz` and `/readyz` on
/// `listener` until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    readiness: Readiness,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Endpoints {
            registry,
            readiness,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .context("metrics HTTP server failed")
}

/// Binds `addr` and serves in the background; errors are logged.
pub async fn spawn(
    addr: Option<SocketAddr>,
    registry: &Registry,
    readiness: Readiness,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let Some(addr) = addr else { return Ok(()) };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr} (--metrics-listen)"))?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics, /healthz, /readyz");
    let registry = registry.clone();
    tokio::spawn(async move {
        if let Err(e) = serve(listener, registry, readiness, cancel).await {
            tracing::error!("{e:#}");
        }
    });
    Ok(())
}

/// The value of `--metrics-listen`: an address, or `none` to serve nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl MetricsListen {
    /// Every interface (`0.0.0.0`) on `port`.
    pub fn on_port(port: u16) -> MetricsListen {
        MetricsListen(Some(SocketAddr::from(([0, 0, 0, 0], port))))
    }
}

/// As `--metrics-listen` takes it (how clap shows a default).
impl std::fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("none"),
        }
    }
}

impl std::str::FromStr for MetricsListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(MetricsListen(None));
        }
        s.parse()
            .map(|addr| MetricsListen(Some(addr)))
            .map_err(|e| format!("{s:?} is not host:port or `none`: {e}"))
    }
}

async fn metrics(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    match encode(&endpoints.registry) {
        Ok(body) => (
            StatusCode::OK,
            [("content-type", prometheus::TEXT_FORMAT)],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            e.to_string().into_bytes(),
        ),
    }
}

/// `registry` in the Prometheus text format.
fn encode(registry: &Registry) -> prometheus::Result<Vec<u8>> {
    let mut body = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut body)?;
    Ok(body)
}

async fn ready(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    match (endpoints.readiness)() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// The `result` label for a request's outcome.
pub fn result_label<T>(result: &Result<T, tonic::Status>) -> &'static str {
    use tonic::Code;
    match result {
        Ok(_) => "ok",
        Err(s) => match s.code() {
            Code::NotFound => "not_found",
            Code::InvalidArgument => "invalid",
            Code::Unavailable | Code::DeadlineExceeded => "unavailable",
            Code::FailedPrecondition if s.metadata().contains_key(metadata::CURRENT_VERSION) => {
                "condition_failed"
            }
            Code::FailedPrecondition => "not_leader",
            Code::OutOfRange => "compacted",
            Code::ResourceExhausted => "limit",
            _ => "error",
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The `dsm_*` metrics `docs/OBSERVABILITY.md` tables under the
    /// `### {heading}` headings of its Metrics section.
    fn documented(headings: &[&str]) -> BTreeSet<String> {
        let docs = include_str!("../../docs/OBSERVABILITY.md");
        let metrics = docs
            .split("\n## Metrics")
            .nth(1)
            .expect("a Metrics section");
        let mut names = BTreeSet::new();
        for heading in headings {
            let section = metrics
                .split("\n### ")
                .find(|s| s.starts_with(heading))
                .unwrap_or_else(|| panic!("no `### {heading}` under Metrics"));
            names.extend(
                section
                    .lines()
                    .filter_map(|line| line.strip_prefix("| `dsm_"))
                    .filter_map(|rest| rest.split('`').next())
                    .map(|name| format!("dsm_{name}")),
            );
        }
        assert!(!names.is_empty(), "no metric tabled under {headings:?}");
        names
    }

    /// `process_cpu_seconds_total` is the process's CPU time to the
    /// microsecond, not in whole seconds: a scrape shows a total between
    /// what `getrusage` reads just before and just after it.
    #[cfg(target_os = "linux")]
    #[test]
    fn process_cpu_seconds_are_not_rounded_to_whole_seconds() {
        let registry = Registering::new().expect("registry").0;
        let before = cpu_seconds().expect("getrusage");
        let families = registry.gather();
        let after = cpu_seconds().expect("getrusage");
        let cpu = families
            .iter()
            .filter(|family| family.name() == CPU_SECONDS)
            .flat_map(|family| family.get_metric())
            .map(|metric| metric.get_counter().get_value())
            .collect::<Vec<_>>();
        assert_eq!(cpu.len(), 1, "one {CPU_SECONDS} sample");
        assert!(
            before <= cpu[0] && cpu[0] <= after,
            "{CPU_SECONDS} {} outside [{before}, {after}]",
            cpu[0]
        );
    }

    /// `registry` in the text format.
    fn text(registry: &Registry) -> String {
        String::from_utf8(encode(registry).expect("encode")).expect("UTF-8")
    }

    /// Checks that the families `registry` exports are the `dsm_*` metrics
    /// tabled under `headings`, plus on Linux the `process_*` ones. A
    /// family missing is a metric made without registering it (or a table
    /// row without a metric); one too many is another role's metric, or
    /// one the tables lack.
    fn exports_what_is_documented(registry: &Registry, headings: &[&str]) {
        let text = text(registry);
        let families: BTreeSet<String> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split(' ').next())
            .map(str::to_string)
            .collect();
        if cfg!(target_os = "linux") {
            assert!(
                families.contains("process_resident_memory_bytes"),
                "no process_* metrics:\n{text}"
            );
        }
        let exported: BTreeSet<String> = families
            .into_iter()
            .filter(|name| name.starts_with("dsm_"))
            .collect();
        let documented = documented(headings);
        let missing: Vec<_> = documented.difference(&exported).collect();
        let undocumented: Vec<_> = exported.difference(&documented).collect();
        assert!(
            missing.is_empty() && undocumented.is_empty(),
            "{headings:?}: not exported {missing:?}, not documented {undocumented:?}"
        );
    }

    // Only the families labelled by what arrives later (a slave, a kind of
    // request) need a series before they are exported.

    #[test]
    fn a_master_exports_every_master_metric_from_the_start() {
        let metrics = constant(MasterMetrics::new());
        // What the master does when a slave registers.
        metrics
            .slave_requests
            .with_label_values(&["slave-0", "read"]);
        exports_what_is_documented(&metrics.registry, &["Master and backup", "Every member"]);
        let text = text(&metrics.registry);
        for series in [
            r#"dsm_requests_total{op="watch",result="not_leader"} 0"#,
            r#"dsm_request_duration_seconds_count{op="snapshot"} 0"#,
            r#"dsm_role{role="standby"} 0"#,
            r#"dsm_watchers_cut_off_total{reason="compacted"} 0"#,
            r#"dsm_auth_rejected_total{reason="permission_denied"} 0"#,
            "dsm_log_fsync_duration_seconds_count 0",
            "dsm_backup_lag_seconds 0",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[test]
    fn a_slave_exports_every_slave_metric_from_the_start() {
        let metrics = constant(SlaveMetrics::new());
        // What the slave's first served request does.
        metrics.requests.with_label_values(&["get", "ok"]);
        exports_what_is_documented(&metrics.registry, &["Slaves", "Every member"]);
        let text = text(&metrics.registry);
        assert!(
            text.contains(r#"dsm_auth_rejected_total{reason="unauthenticated"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn the_bench_exports_only_its_own_metrics_from_the_start() {
        let metrics = constant(BenchMetrics::new());
        exports_what_is_documented(&metrics.registry, &["dsm bench"]);
        let text = text(&metrics.registry);
        for series in [
            r#"dsm_bench_requests_total{op="read",result="ok"} 0"#,
            r#"dsm_bench_request_duration_seconds_count{op="write"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[test]
    fn metrics_listen_accepts_none() {
        assert_eq!("none".parse(), Ok(MetricsListen(None)));
        assert!(
            "127.0.0.1:9100"
                .parse::<MetricsListen>()
                .is_ok_and(|a| a.0.is_some())
        );
        assert!("nine".parse::<MetricsListen>().is_err());
    }

    #[test]
    fn metrics_listen_reads_back_as_shown() {
        for shown in ["none", "0.0.0.0:9102"] {
            let listen: MetricsListen = shown.parse().expect("valid");
            assert_eq!(listen.to_string(), shown);
        }
        assert_eq!(MetricsListen::on_port(9102).to_string(), "0.0.0.0:9102");
    }
}
