//! What the bench measures: latency histograms (HdrHistogram, in
//! microseconds), request and error counts by kind, and the per-second
//! samples behind the progress line. The [`Recorder`] is shared by every
//! client task behind one `std::sync::Mutex`: it is held for a few hundred
//! nanoseconds per request, far below the ~17 µs of CPU one unary gRPC call
//! costs, so it does not limit what is measured.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::workload::Op;
use crate::client::ClientError;

/// Largest latency recorded exactly: 60 s, in µs. Longer ones saturate.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds with 3 significant digits (0.1 %
/// error), from 1 µs to 60 s.
pub fn new_histogram() -> Histogram<u64> {
    // Only fails for bounds that are constants and valid.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .unwrap_or_else(|e| panic!("histogram bounds: {e}"))
}

/// Records `latency` into `histogram`, in whole microseconds (at least 1).
pub fn record_latency(histogram: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// The percentiles the bench reports, in microseconds. All zero for a
/// histogram with no sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Arithmetic mean, for comparison with figures reported as averages
    /// only.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest request.
    pub max_us: u64,
}

impl Percentiles {
    /// Reads the percentiles off `histogram`.
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: histogram.len(),
            mean_us: histogram.mean(),
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// The error kind of a failed request: a short, bounded label (it is also
/// the `result` label of `dsm_bench_requests_total`).
pub fn error_kind(error: &ClientError) -> &'static str {
    match error {
        ClientError::InvalidArgument(_) => "invalid",
        ClientError::NotFound(_) => "not_found",
        ClientError::Unavailable { .. } => "unavailable",
        ClientError::BadAddress { .. } | ClientError::NoEndpoints => "bad_address",
        ClientError::ConditionFailed { .. } => "condition_failed",
        ClientError::Compacted { .. } | ClientError::Other { .. } => "error",
    }
}

/// Kind of a READ that succeeded but found no value. Every key is written
/// before the measurement starts, so this is an acknowledged write lost.
pub const MISSING_KIND: &str = "missing";

/// How one request ended.
pub enum Outcome {
    /// Served.
    Ok,
    /// Failed: its kind (see [`error_kind`]) and message.
    Failed(&'static str, String),
}

/// Count and one example message of an error kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCount {
    /// Operation that failed.
    pub op: String,
    /// Kind (see [`error_kind`] and [`MISSING_KIND`]).
    pub kind: String,
    /// How many requests failed this way during the measurement.
    pub count: u64,
    /// The first message seen, so a failure can be understood without logs.
    pub example: String,
}

/// Counts of one operation over a span of time.
#[derive(Clone)]
struct OpStats {
    latency: Histogram<u64>,
    errors: u64,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            latency: new_histogram(),
            errors: 0,
        }
    }
}

/// One second of the run, as the progress line shows it and `--json` keeps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the measurement started, at the end of this sample.
    pub second: u64,
    /// Requests served in this second.
    pub ops: u64,
    /// Requests served per second over this sample.
    pub ops_per_s: f64,
    /// READ median latency.
    pub read_p50_us: u64,
    /// READ 99th percentile.
    pub read_p99_us: u64,
    /// WRITE median latency.
    pub write_p50_us: u64,
    /// WRITE 99th percentile.
    pub write_p99_us: u64,
    /// Failed requests in this second.
    pub errors: u64,
}

impl Sample {
    /// The progress line: `phase` is `warm-up` or `measure`.
    pub fn progress_line(&self, phase: &str, elapsed: Duration) -> String {
        format!(
            "[{:>5.1}s {phase:<7}] {:>9.0} ops/s | read p50 {} p99 {} | write p50 {} p99 {} | errors {}",
            elapsed.as_secs_f64(),
            self.ops_per_s,
            format_us(self.read_p50_us),
            format_us(self.read_p99_us),
            format_us(self.write_p50_us),
            format_us(self.write_p99_us),
            self.errors
        )
    }
}

/// A latency for people: µs below 10 ms, ms above.
pub fn format_us(us: u64) -> String {
    if us < 10_000 {
        format!("{us}µs")
    } else {
        format!("{:.1}ms", us as f64 / 1000.0)
    }
}

/// Everything measured so far. Requests that *started* before
/// `measure_from` (the warm-up) only feed the progress line and the
/// Prometheus metrics, never the results.
pub struct Recorder {
    measure_from: Instant,
    /// Since the last [`Recorder::take_sample`], warm-up or not.
    interval: [OpStats; 2],
    /// Over the measurement.
    total: [OpStats; 2],
    errors: BTreeMap<(Op, &'static str), ErrorCount>,
}

fn slot(op: Op) -> usize {
    match op {
        Op::Read => 0,
        Op::Write => 1,
    }
}

impl Recorder {
    /// A recorder whose results count requests started at or after
    /// `measure_from`.
    pub fn new(measure_from: Instant) -> Recorder {
        Recorder {
            measure_from,
            interval: [OpStats::new(), OpStats::new()],
            total: [OpStats::new(), OpStats::new()],
            errors: BTreeMap::new(),
        }
    }

    /// Records one request that started at `started` and took `latency`.
    /// Failed requests are counted, their latency is not: a fast error
    /// would otherwise make the percentiles look better.
    pub fn record(&mut self, op: Op, started: Instant, latency: Duration, outcome: Outcome) {
        let measured = started >= self.measure_from;
        let i = slot(op);
        match outcome {
            Outcome::Ok => {
                record_latency(&mut self.interval[i].latency, latency);
                if measured {
                    record_latency(&mut self.total[i].latency, latency);
                }
            }
            Outcome::Failed(kind, message) => {
                self.interval[i].errors += 1;
                if measured {
                    self.total[i].errors += 1;
                    self.errors
                        .entry((op, kind))
                        .or_insert_with(|| ErrorCount {
                            op: op.name().to_string(),
                            kind: kind.to_string(),
                            count: 0,
                            example: message,
                        })
                        .count += 1;
                }
            }
        }
    }

    /// The sample since the previous call (`span` long), and a fresh start
    /// for the next one.
    pub fn take_sample(&mut self, second: u64, span: Duration) -> Sample {
        let read = Percentiles::of(&self.interval[0].latency);
        let write = Percentiles::of(&self.interval[1].latency);
        let errors = self.interval[0].errors + self.interval[1].errors;
        for stats in &mut self.interval {
            stats.latency.reset();
            stats.errors = 0;
        }
        let ops = read.count + write.count;
        Sample {
            second,
            ops,
            ops_per_s: per_second(ops, span),
            read_p50_us: read.p50_us,
            read_p99_us: read.p99_us,
            write_p50_us: write.p50_us,
            write_p99_us: write.p99_us,
            errors,
        }
    }

    /// Percentiles of `op` over the measurement.
    pub fn percentiles(&self, op: Op) -> Percentiles {
        Percentiles::of(&self.total[slot(op)].latency)
    }

    /// Failed requests of `op` over the measurement.
    pub fn errors(&self, op: Op) -> u64 {
        self.total[slot(op)].errors
    }

    /// Errors by operation and kind, over the measurement.
    pub fn error_counts(&self) -> Vec<ErrorCount> {
        self.errors.values().cloned().collect()
    }
}

/// `count / span`, 0 for an empty span.
pub fn per_second(count: u64, span: Duration) -> f64 {
    let secs = span.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            record_latency(&mut h, Duration::from_micros(us));
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50_us, 500);
        assert_eq!(p.p90_us, 900);
        assert_eq!(p.p99_us, 990);
        assert_eq!(p.p999_us, 999);
        assert_eq!(p.max_us, 1000);
        assert!((p.mean_us - 500.5).abs() < 1.0);
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }

    #[test]
    fn latencies_are_clamped_into_the_histogram_range() {
        let mut h = new_histogram();
        record_latency(&mut h, Duration::from_nanos(10));
        record_latency(&mut h, Duration::from_secs(3600));
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= MAX_LATENCY_US);
    }

    #[test]
    fn warm_up_requests_feed_the_progress_line_but_not_the_results() {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs(5);
        let mut r = Recorder::new(measure_from);
        let ms = Duration::from_millis(1);
        r.record(Op::Read, start, ms, Outcome::Ok);
        r.record(
            Op::Write,
            start,
            ms,
            Outcome::Failed("unavailable", "x".into()),
        );
        r.record(Op::Read, measure_from, 2 * ms, Outcome::Ok);
        r.record(Op::Write, measure_from, 3 * ms, Outcome::Ok);
        r.record(
            Op::Write,
            measure_from,
            ms,
            Outcome::Failed("unavailable", "no master".into()),
        );
        r.record(
            Op::Write,
            measure_from,
            ms,
            Outcome::Failed("unavailable", "again".into()),
        );
        r.record(
            Op::Read,
            measure_from,
            ms,
            Outcome::Failed(MISSING_KIND, "key7".into()),
        );

        let sample = r.take_sample(1, Duration::from_millis(500));
        assert_eq!(sample.ops, 3);
        assert_eq!(sample.ops_per_s, 6.0);
        assert_eq!(sample.errors, 4);
        assert_eq!(sample.read_p50_us, 1000);
        // Within HdrHistogram's 3 significant digits.
        assert!((3000..=3003).contains(&sample.write_p99_us));
        // The next sample starts empty.
        assert_eq!(r.take_sample(2, Duration::from_secs(1)).ops, 0);

        assert_eq!(r.percentiles(Op::Read).count, 1);
        assert!((2000..=2002).contains(&r.percentiles(Op::Read).p50_us));
        assert_eq!(r.percentiles(Op::Write).count, 1);
        assert_eq!((r.errors(Op::Read), r.errors(Op::Write)), (1, 2));
        let errors = r.error_counts();
        assert_eq!(errors.len(), 2);
        assert_eq!(
            (errors[0].op.as_str(), errors[0].kind.as_str()),
            ("read", MISSING_KIND)
        );
        assert_eq!(errors[1].count, 2);
        assert_eq!(errors[1].example, "no master");
    }

    #[test]
    fn latencies_are_shown_in_a_readable_unit() {
        assert_eq!(format_us(850), "850µs");
        assert_eq!(format_us(12_345), "12.3ms");
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
    }
}
