//! The operator's own Prometheus metrics and the HTTP server exposing them with its
//! health endpoints.
//!
//! - `dsm_operator_reconciliations_total`: reconciles started;
//! - `dsm_operator_reconcile_failures_total{error}`: failed reconciles by
//!   [`Error::metric_label`];
//! - `dsm_operator_reconcile_duration_seconds`: how long reconciles take.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::error::Error;

/// Counters and histograms of the reconcile loop.
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciliations: IntCounter,
    /// Failed reconciles, by kind of error.
    pub failures: IntCounterVec,
    /// Reconcile durations.
    pub duration: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    ///
    /// # Errors
    /// When a metric of the same name is already registered.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            reconciliations: IntCounter::new(
                "dsm_operator_reconciliations_total",
                "DsmCluster reconciles started",
            )?,
            failures: IntCounterVec::new(
                Opts::new(
                    "dsm_operator_reconcile_failures_total",
                    "DsmCluster reconciles that failed, by kind of error",
                ),
                &["error"],
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    "dsm_operator_reconcile_duration_seconds",
                    "Time a DsmCluster reconcile takes",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
            )?,
        };
        registry.register(Box::new(metrics.reconciliations.clone()))?;
        registry.register(Box::new(metrics.failures.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        Ok(metrics)
    }

    /// Counts a reconcile and times it until the returned guard drops.
    pub fn count_and_measure(&self) -> prometheus::HistogramTimer {
        self.reconciliations.inc();
        self.duration.start_timer()
    }

    /// Counts a failed reconcile under its error's label.
    pub fn reconcile_failure(&self, error: &Error) {
        self.failures
            .with_label_values(&[error.metric_label()])
            .inc();
    }
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            error.to_string().into_bytes(),
        ),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves.
///
/// # Errors
/// When accepting connections fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(registry);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_error_kind() {
        let registry = Registry::new();
        let metrics = Metrics::register(&registry).expect("register");
        metrics.reconcile_failure(&Error::MissingObjectKey("metadata.uid"));
        metrics.reconcile_failure(&Error::MissingObjectKey("metadata.uid"));
        assert_eq!(
            metrics
                .failures
                .with_label_values(&["missing_object_key"])
                .get(),
            2
        );
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(names.contains(&"dsm_operator_reconcile_failures_total".to_string()));
    }
}
