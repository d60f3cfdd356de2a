//! The measuring engine of `dsm bench` and `dsm bench sweep`: N clients,
//! each with its own connection, send a READ/WRITE mix to a cluster as fast
//! as they are answered (closed loop) or at a target rate (open loop). Every
//! key is written once first, so READs find values; a warm-up follows, then
//! the measurement, with a progress line on stderr every second and the
//! `dsm_bench_*` metrics updated per request.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use prometheus::{Histogram, IntCounter};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::args::{Api, RunParams};
use super::report::{OpSummary, RunConfig, Summary, load_delta};
use super::stats::{self, Outcome, Recorder, error_kind, per_second};
use super::workload::{Op, Workload, key_name};
use crate::client::pipelined::PipelinedClient;
use crate::client::{Client, ClientConfig, ClientError};
use crate::metrics;

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
    let clients =
        (0..params.clients)
            .map(|_| match params.api {
                Api::Unary => Client::try_with_security(config.clone(), security.clone())
                    .map(BenchClient::Unary),
                Api::Pipelined => PipelinedClient::with_security(config.clone(), security)
                    .map(BenchClient::Pipelined),
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
    let mut handles = Vec::with_capacity(params.clients * params.depth);
    for (i, client) in clients.into_iter().enumerate() {
        // Open-loop clients are spread over one period so the requests do
        // not leave in bursts of `clients` at once.
        let first = start + period.map_or(Duration::ZERO, |p| p * i as u32 / params.clients as u32);
        // `depth` closed loops share the client: that many in flight on it.
        let client = Arc::new(client);
        for _ in 0..params.depth {
            handles.push(tokio::spawn(run_client(
                client.clone(),
                workload.clone(),
                recorder.clone(),
                ClientSchedule { first, period, end },
                stop.clone(),
            )));
        }
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
            depth: params.depth,
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
        let metrics = metrics::bench();
        OpMetrics {
            ok: metrics.requests.with_label_values(&[op.name(), "ok"]),
            duration: metrics.request_duration.with_label_values(&[op.name()]),
        }
    }
}

/// One client's loop: pick a request, send it, record it, until `end`.
async fn run_client(
    client: Arc<BenchClient>,
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
            Outcome::Failed(kind, _) => metrics::bench()
                .requests
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
