//! The HTTP endpoints every process serves: `/metrics` in Prometheus text
//! format with the documented names, `/healthz`, and `/readyz` telling the
//! truth about each role.

mod common;

use common::{Cluster, Options, bounded, http_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness() {
    bounded(async {
        let mut cluster = Cluster::start(Options::default()).await;
        let client = cluster.client();
        client.write(b"k", b"v").await.expect("write");
        client.read(b"k").await.expect("read");
        assert!(client.read(b"missing").await.expect("read").is_none());

        let (code, body) = http_get(&cluster.master.metrics_address, "/metrics");
        assert_eq!(code, 200);
        for series in [
            r#"dsm_requests_total{op="write",result="ok"} 1"#,
            r#"dsm_requests_total{op="read",result="ok"} 1"#,
            r#"dsm_requests_total{op="read",result="not_found"} 1"#,
            "dsm_request_duration_seconds_bucket",
            "dsm_log_fsync_duration_seconds_count",
            r#"dsm_slave_requests_total{op="write",slave="#,
            "process_resident_memory_bytes",
        ] {
            assert!(
                body.contains(series),
                "master /metrics lacks {series}:\n{body}"
            );
        }
        // Each role exports its own metrics only (the per-slave panels
        // would count a master exporting `dsm_replica_keys` as a slave).
        assert!(!body.contains("dsm_replica_"), "{body}");
        let (code, body) = http_get(&cluster.slaves[0].metrics_address, "/metrics");
        assert_eq!(code, 200);
        assert!(body.contains("dsm_replica_requests_total"), "{body}");
        assert!(body.contains("process_resident_memory_bytes"), "{body}");
        assert!(!body.contains("dsm_requests_total"), "{body}");

        for member in [&cluster.master, &cluster.backup, &cluster.slaves[0]] {
            assert_eq!(
                http_get(&member.metrics_address, "/healthz").0,
                200,
                "{}",
                member.name
            );
            let (code, body) = http_get(&member.metrics_address, "/readyz");
            assert_eq!(code, 200, "{} should be ready: {body}", member.name);
        }

        // A slave whose masters are both gone is alive but not ready.
        cluster.master.kill9();
        cluster.backup.kill9();
        let slave = &cluster.slaves[0].metrics_address;
        let mut not_ready = false;
        for _ in 0..100 {
            if http_get(slave, "/readyz").0 == 503 {
                not_ready = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(not_ready, "a slave without a master must not report ready");
        assert_eq!(http_get(slave, "/healthz").0, 200);
    })
    .await;
}
