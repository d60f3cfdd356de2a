//! `dsm bench` end to end: the real binary starts its own local cluster
//! (on ports it finds free, so these tests run in parallel with others),
//! loads it, and writes its results. Checks shapes and counts, never
//! timings.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{dsm_bin, free_port};

/// Body of `GET /metrics` on `port`, or `None` while nothing answers.
fn scrape(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn bench_run_reports_throughput_latency_and_load_per_slave() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let metrics_port = free_port();
    let mut child = Command::new(dsm_bin())
        .args(["bench", "--slaves", "3", "--clients", "2"])
        .args(["--warmup", "1s", "--duration", "2s"])
        .arg(format!("--metrics-listen=127.0.0.1:{metrics_port}"))
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dsm bench");

    // While it runs, the bench serves its own metrics.
    let started = Instant::now();
    let mut served = false;
    while !served && started.elapsed() < Duration::from_secs(90) {
        if child.try_wait().expect("poll dsm bench").is_some() {
            break;
        }
        served = scrape(metrics_port).is_some_and(|body| {
            body.contains("dsm_bench_requests_total{op=\"read\",result=\"ok\"}")
                && body.contains("dsm_bench_request_duration_seconds_bucket{op=\"write\"")
        });
        std::thread::sleep(Duration::from_millis(200));
    }

    let output = child.wait_with_output().expect("wait for dsm bench");
    let report = describe(&output);
    assert!(output.status.success(), "{report}");
    assert!(served, "no bench metrics on /metrics\n{report}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("p99.9"), "{report}");
    assert!(stdout.contains("load per slave"), "{report}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ops/s | read p50"),
        "no progress line\n{report}"
    );

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(summary["ops"].as_u64().unwrap() > 0, "{summary:#}");
    assert_eq!(summary["errors"], 0, "{summary:#}");
    assert_eq!(summary["error_kinds"].as_array().unwrap().len(), 0);
    assert!(summary["read"]["ops"].as_u64().unwrap() > 0);
    assert!(summary["write"]["ops"].as_u64().unwrap() > 0);
    let read_latency = &summary["read"]["latency"];
    assert!(read_latency["p50_us"].as_u64().unwrap() <= read_latency["p99_us"].as_u64().unwrap());
    assert_eq!(summary["config"]["slaves"], 3);
    assert_eq!(summary["config"]["clients"], 2);
    let slaves = summary["slaves"].as_array().unwrap();
    assert_eq!(slaves.len(), 3, "{summary:#}");
    // Every READ went to one slave, every WRITE to a quorum of them.
    let reads: u64 = slaves.iter().map(|s| s["reads"].as_u64().unwrap()).sum();
    let writes: u64 = slaves.iter().map(|s| s["writes"].as_u64().unwrap()).sum();
    assert!(reads > 0 && writes > 0, "{summary:#}");
    assert!(!summary["samples"].as_array().unwrap().is_empty());
}

#[test]
fn bench_sweep_writes_results_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let output = Command::new(dsm_bin())
        .args(["bench", "sweep", "--clients", "1,2", "--slaves", "3"])
        .args([
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--metrics-listen",
            "none",
        ])
        // The run test covers the unary API; this one the pipelined.
        .args(["--api", "pipelined"])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run dsm bench sweep");
    let report = describe(&output);
    assert!(output.status.success(), "{report}");

    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows[0].starts_with("slaves,clients,"));
    assert!(rows[1].starts_with("3,1,pipelined,"), "{csv}");
    assert!(rows[2].starts_with("3,2,pipelined,"), "{csv}");
    for row in &rows[1..] {
        // ops > 0 and errors == 0 (columns 10 and 11).
        let fields: Vec<&str> = row.split(',').collect();
        assert_ne!(fields[9], "0", "{csv}");
        assert_eq!(fields[10], "0", "{csv}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);

    for name in [
        "throughput_vs_clients",
        "throughput_vs_slaves",
        "read_latency_vs_clients",
        "read_latency_vs_slaves",
        "write_latency_vs_clients",
        "write_latency_vs_slaves",
        "load_distribution",
    ] {
        let path = out.join(format!("{name}.svg"));
        let svg = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}\n{report}", path.display()));
        assert!(svg.starts_with("<svg") && svg.contains("<text"), "{name}");
    }
}
