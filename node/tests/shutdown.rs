//! Planned stops (a rolling update, a deleted pod): a member that gets
//! SIGTERM while serving load stops on its own, promptly — long before a
//! kubelet's grace period (30 s) would kill it — and nothing acknowledged is
//! lost. How long it takes is measured, not asserted (docs/BENCHMARKS.md).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, Options, bounded};
use dsm::client::Client;
use tokio_util::sync::CancellationToken;

/// A stop is "on its own" when the process exits within this; a server
/// waiting for its clients' long-lived streams never would.
const ON_ITS_OWN: Duration = Duration::from_secs(10);

/// Writes fresh keys until `stop`; the acknowledged ones go to `acked`.
async fn write_until(client: Client, acked: Arc<Mutex<Vec<String>>>, stop: CancellationToken) {
    let mut i = 0;
    while !stop.is_cancelled() {
        i += 1;
        let key = format!("key-{i}");
        if client.write(key.as_bytes(), key.as_bytes()).await.is_ok() {
            acked.lock().expect("acked").push(key);
        }
    }
}

async fn wait_for_acks(acked: &Mutex<Vec<String>>, n: usize) {
    while acked.lock().expect("acked").len() < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn all_read_back(cluster: &Cluster, acked: &Mutex<Vec<String>>) {
    let client = cluster.client();
    let keys = acked.lock().expect("acked").clone();
    for key in keys {
        let got = client.read(key.as_bytes()).await.expect("read");
        assert_eq!(
            got.map(|(v, _)| v.to_vec()),
            Some(key.clone().into_bytes()),
            "acknowledged {key} lost\n{}",
            cluster.logs()
        );
    }
}

/// A regression test: a slave serving the master's replication stream used
/// to wait for that stream to close, which it never did, until it was killed.
/// Now it tells the master it is leaving, finishes what is in flight, and
/// exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_slave_stops_on_sigterm_and_loses_nothing() {
    bounded(async {
        let mut cluster = Cluster::start(Options::default()).await;
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let writer = tokio::spawn(write_until(cluster.client(), acked.clone(), stop.clone()));
        wait_for_acks(&acked, 50).await;
        cluster.slaves[0].terminate();
        let status = cluster.slaves[0].wait_exit(ON_ITS_OWN);
        assert!(
            status.is_some_and(|s| s.success()),
            "the slave did not stop on its own: {status:?}\n{}",
            cluster.logs()
        );
        let before = acked.lock().expect("acked").len();
        wait_for_acks(&acked, before + 50).await;
        stop.cancel();
        writer.await.expect("writer");
        assert!(
            cluster.master.log().contains("slave is shutting down"),
            "the master was told\n{}",
            cluster.logs()
        );
        cluster.slaves[0].start_alone();
        cluster.wait_ready().await;
        all_read_back(&cluster, &acked).await;
    })
    .await;
}

/// The active master stopped for a planned restart hands over: it releases
/// the lease, so the backup takes over at once, and it exits on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_active_master_hands_over_and_loses_nothing() {
    bounded(async {
        let mut cluster = Cluster::start(Options::default()).await;
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let writer = tokio::spawn(write_until(cluster.client(), acked.clone(), stop.clone()));
        wait_for_acks(&acked, 50).await;
        cluster.master.terminate();
        let status = cluster.master.wait_exit(ON_ITS_OWN);
        assert!(
            status.is_some_and(|s| s.success()),
            "the master did not stop on its own: {status:?}\n{}",
            cluster.logs()
        );
        let before = acked.lock().expect("acked").len();
        wait_for_acks(&acked, before + 50).await;
        stop.cancel();
        writer.await.expect("writer");
        assert!(
            cluster.backup.log().contains("released the lease"),
            "the backup took over because the lease was released\n{}",
            cluster.logs()
        );
        all_read_back(&cluster, &acked).await;
    })
    .await;
}
