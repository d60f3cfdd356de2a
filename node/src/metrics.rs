//! Prometheus metrics, and the HTTP endpoints every `dsm` process serves on
//! `--metrics-listen`: `/metrics` (Prometheus text format), `/healthz`
//! (the process is alive) and `/readyz` (it does its job: active master
//! holding the lease and serving, standby caught up with the log, slave
//! registered; 503 with the reason otherwise).
//!
//! Every metric is defined here, so this file is the list dashboards and
//! alerts are written against. Names follow Prometheus conventions: `dsm_`
//! prefix, base units, `_total` for counters, `_seconds` for durations. No
//! label carries a key; `slave` labels are bounded by the slave count.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, TextEncoder,
};
use tokio_util::sync::CancellationToken;

/// Latency buckets from 50 µs to about 6.5 s (doubling).
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.000_05, 2.0, 18).unwrap_or_default()
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(Box::new(metric.clone()));
    metric
}

fn counter(name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(Box::new(metric.clone()));
    metric
}

fn gauge(name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(Box::new(metric.clone()));
    metric
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(Box::new(metric.clone()));
    metric
}

fn histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(latency_buckets());
    let metric = HistogramVec::new(opts, labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(Box::new(metric.clone()));
    metric
}

fn histogram(name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(latency_buckets());
    let metric = Histogram::with_opts(opts).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(Box::new(metric.clone()));
    metric
}

/// Registers in the default registry. Names are constants of this module,
/// so a clash is a programming error caught by the first test that runs.
fn register(metric: Box<dyn prometheus::core::Collector>) {
    if let Err(e) = prometheus::register(metric) {
        panic!("duplicate metric registration: {e}");
    }
}

// ---- master and backup -------------------------------------------------

/// Client requests handled, by operation (read, write, delete, list, watch,
/// snapshot, status, compact, drain) and result (ok, not_found, invalid,
/// unavailable, not_leader, condition_failed, compacted, limit, refused,
/// error). A
/// WATCH or snapshot counts once, when its stream starts.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dsm_requests_total",
        "Client requests handled by this master, by operation and result.",
        &["op", "result"],
    )
});

/// Client request latency by operation.
pub static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "dsm_request_duration_seconds",
        "Latency of client requests handled by this master, by operation.",
        &["op"],
    )
});

/// 1 for the role this master-capable process has now (active, standby).
pub static ROLE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "dsm_role",
        "1 for the current role of this master-capable process (active or standby), 0 otherwise.",
        &["role"],
    )
});

/// Epoch of the active term (0 on a standby).
pub static EPOCH: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dsm_epoch",
        "Epoch (term) of this process when active; 0 when standby.",
    )
});

/// Live slaves (registered, heartbeating).
pub static LIVE_SLAVES: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("dsm_live_slaves", "Slaves in the active master's live set."));

/// The configured slave count `n`.
pub static CONFIGURED_SLAVES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dsm_configured_slaves",
        "Slave count the cluster is configured for (quorums derive from it).",
    )
});

/// The replication factor `r`.
pub static REPLICATION_FACTOR: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("dsm_replication_factor", "Slaves each WRITE must reach."));

/// Keys in the index.
pub static KEYS: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("dsm_keys", "Keys in this master's index."));

/// Keys short of the replication factor.
pub static UNDER_REPLICATED: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dsm_under_replicated_keys",
        "Keys with fewer live replicas than the replication factor.",
    )
});

/// Bytes of log segments on disk.
pub static LOG_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dsm_log_bytes",
        "Size of the write-ahead log segments on disk.",
    )
});

/// Sequence number of the last record written (active) or applied
/// (standby); the difference is the standby's lag in records.
pub static LOG_LAST_SEQUENCE: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dsm_log_last_sequence",
        "Last log sequence number written (active) or applied (standby).",
    )
});

/// Duration of each log fsync (one covers a whole group commit).
pub static LOG_FSYNC_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "dsm_log_fsync_duration_seconds",
        "Duration of each write-ahead log fdatasync (one per group commit).",
    )
});

/// Records written per fsync (group commit effectiveness).
pub static LOG_RECORDS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dsm_log_records_total",
        "Records appended to the write-ahead log.",
    )
});

/// Seconds since the standby last reached the end of the log.
pub static BACKUP_LAG: LazyLock<prometheus::Gauge> = LazyLock::new(|| {
    let metric = prometheus::Gauge::new(
        "dsm_backup_lag_seconds",
        "Seconds since this standby last read the log to its end (0 when active).",
    )
    .unwrap_or_else(|e| panic!("metric dsm_backup_lag_seconds: {e}"));
    register(Box::new(metric.clone()));
    metric
});

/// Takeovers by this process.
pub static FAILOVERS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dsm_failovers_total",
        "Times this process took over as the active master.",
    )
});

/// Copies made by re-replication (slave loss, short writes, drains).
pub static RE_REPLICATIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dsm_re_replications_total",
        "Key copies made by background re-replication.",
    )
});

/// Retried WRITEs answered from the client session table instead of being
/// applied again.
pub static DEDUPLICATED_WRITES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dsm_deduplicated_writes_total",
        "WRITE retries recognised and answered with the original outcome, not applied again.",
    )
});

/// Client sessions forgotten because the table was full.
pub static SESSIONS_EVICTED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dsm_client_sessions_evicted_total",
        "Client sessions forgotten early because the session table was full.",
    )
});

/// Clients whose WRITEs the active master can deduplicate.
pub static CLIENT_SESSIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dsm_client_sessions",
        "Clients whose WRITE retries this master can still recognise.",
    )
});

/// WATCH streams open on this master.
pub static WATCHERS: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("dsm_watchers", "WATCH streams open on this master."));

/// WATCH streams this master ended with an error, by reason (slow: its
/// stream stayed full; compacted: it fell behind a compaction).
pub static WATCHERS_CUT_OFF: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dsm_watchers_cut_off_total",
        "WATCH streams ended by this master because the watcher fell behind, by reason.",
        &["reason"],
    )
});

/// Requests the master sent to each slave: the load distribution.
pub static SLAVE_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dsm_slave_requests_total",
        "Requests the active master sent to each slave, by operation (read, write).",
        &["slave", "op"],
    )
});

// ---- slave -------------------------------------------------------------

/// Replica requests a slave served, by operation and result.
pub static REPLICA_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dsm_replica_requests_total",
        "Requests this slave served, by operation (put, get, fence, inventory) and result.",
        &["op", "result"],
    )
});

/// Keys a slave stores.
pub static REPLICA_KEYS: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("dsm_replica_keys", "Keys stored by this slave."));

/// 1 while the slave is registered with an active master.
pub static REPLICA_REGISTERED: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dsm_replica_registered",
        "1 while this slave is registered with the active master.",
    )
});

/// The slave's fenced epoch.
pub static REPLICA_EPOCH: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dsm_replica_epoch",
        "Highest epoch this slave has been fenced with.",
    )
});

// ---- bench -------------------------------------------------------------

/// Requests `dsm bench` sent, by operation (read, write) and result (ok,
/// missing, not_found, invalid, unavailable, bad_address, error). Counts
/// the warm-up too: it is a live view, the bench's report is the result.
pub static BENCH_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dsm_bench_requests_total",
        "Requests sent by dsm bench, by operation and result.",
        &["op", "result"],
    )
});

/// Latency `dsm bench` observed per served request, by operation.
pub static BENCH_REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "dsm_bench_request_duration_seconds",
        "Latency of requests served to dsm bench, as the client saw it, by operation.",
        &["op"],
    )
});

/// Decides what `/readyz` answers: `Ok` when ready, or why not.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(readiness);
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .context("metrics HTTP server failed")
}

/// Binds `addr` and serves in the background; errors are logged.
pub async fn spawn(
    addr: Option<SocketAddr>,
    readiness: Readiness,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let Some(addr) = addr else { return Ok(()) };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr} (--metrics-listen)"))?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        if let Err(e) = serve(listener, readiness, cancel).await {
            tracing::error!("{e:#}");
        }
    });
    Ok(())
}

/// The value of `--metrics-listen`: an address, or `none` to serve nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

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

async fn metrics() -> impl IntoResponse {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&prometheus::gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            e.to_string().into_bytes(),
        ),
    }
}

async fn ready(State(readiness): State<Readiness>) -> impl IntoResponse {
    match readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

// ---- every role ---------------------------------------------------------

/// gRPC calls refused by the security layer, by reason (unauthenticated:
/// no or unknown token, or a member call without a verified certificate;
/// permission_denied: a read-only token asking for a write).
pub static AUTH_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dsm_auth_rejected_total",
        "gRPC calls refused for missing or insufficient credentials, by reason.",
        &["reason"],
    )
});

/// Forces every master/backup metric of this module into the registry, so
/// that a scrape shows each series (at zero) before it first changes.
///
/// The slave metrics (`dsm_replica_*`) are left out on purpose: a slave
/// sets its gauges itself, and a master that exported `dsm_replica_keys 0`
/// would show up as an empty slave on the per-slave dashboard panels.
pub fn register_all() {
    for metric in [
        &*EPOCH,
        &*LIVE_SLAVES,
        &*CONFIGURED_SLAVES,
        &*REPLICATION_FACTOR,
        &*KEYS,
    ] {
        let _ = metric.get();
    }
    for metric in [&*UNDER_REPLICATED, &*LOG_BYTES, &*LOG_LAST_SEQUENCE] {
        let _ = metric.get();
    }
    let _ = BACKUP_LAG.get();
    let _ = (FAILOVERS.get(), RE_REPLICATIONS.get(), LOG_RECORDS.get());
    let _ = (
        DEDUPLICATED_WRITES.get(),
        SESSIONS_EVICTED.get(),
        CLIENT_SESSIONS.get(),
    );
    let _ = LOG_FSYNC_DURATION.get_sample_count();
    for reason in ["unauthenticated", "permission_denied"] {
        let _ = AUTH_REJECTED.with_label_values(&[reason]).get();
    }
    for role in ["active", "standby"] {
        let _ = ROLE.with_label_values(&[role]).get();
    }
    let _ = WATCHERS.get();
    for reason in ["slow", "compacted"] {
        let _ = WATCHERS_CUT_OFF.with_label_values(&[reason]).get();
    }
    for op in ["read", "write", "delete", "list", "watch", "snapshot"] {
        let _ = REQUEST_DURATION.with_label_values(&[op]).get_sample_count();
        for result in [
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
        ] {
            let _ = REQUESTS.with_label_values(&[op, result]).get();
        }
    }
}

/// Forces the bench's metrics into the registry (not part of
/// [`register_all`]: servers do not export bench series).
pub fn register_bench() {
    for op in ["read", "write"] {
        let _ = BENCH_REQUESTS.with_label_values(&[op, "ok"]).get();
        let _ = BENCH_REQUEST_DURATION
            .with_label_values(&[op])
            .get_sample_count();
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
            Code::FailedPrecondition
                if s.metadata()
                    .contains_key(crate::wire::CURRENT_VERSION_METADATA) =>
            {
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
    use super::*;

    #[test]
    fn every_metric_is_exposed_with_its_conventional_name() {
        register_all();
        // What a slave's gauge loop does on its first tick.
        REPLICA_KEYS.set(0);
        register_bench();
        let names: Vec<String> = prometheus::gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        for name in [
            "dsm_requests_total",
            "dsm_request_duration_seconds",
            "dsm_role",
            "dsm_epoch",
            "dsm_live_slaves",
            "dsm_keys",
            "dsm_under_replicated_keys",
            "dsm_log_bytes",
            "dsm_log_fsync_duration_seconds",
            "dsm_backup_lag_seconds",
            "dsm_failovers_total",
            "dsm_re_replications_total",
            "dsm_replica_keys",
            "dsm_bench_requests_total",
            "dsm_bench_request_duration_seconds",
        ] {
            assert!(
                names.iter().any(|n| n == name),
                "{name} missing from {names:?}"
            );
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
}
