//! Master failover: kill -9, restart, SIGSTOP (epoch fencing), and log
//! compaction with the backup following. Each test checks that nothing
//! acknowledged is lost (DESIGN §4).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, Options, bounded};
use dsm::client::Client;

/// What a writer saw for one key: the last acknowledged value, and values
/// of later attempts whose outcome is unknown (they failed after the master
/// may have logged them).
#[derive(Default, Clone, Debug)]
struct KeyHistory {
    acked: Option<Vec<u8>>,
    unknown_after: Vec<Vec<u8>>,
}

type History = Arc<Mutex<HashMap<Vec<u8>, KeyHistory>>>;

/// Writes `count` unique values over `keys` keys, recording every outcome.
async fn write_loop(client: Client, history: History, start: usize, count: usize, keys: usize) {
    for i in start..start + count {
        let key = format!("key-{}", i % keys).into_bytes();
        let value = format!("value-{i}").into_bytes();
        let result = client.write(&key, &value).await;
        let mut h = history.lock().expect("history lock");
        let entry = h.entry(key).or_default();
        match result {
            Ok(_) => {
                entry.acked = Some(value);
                entry.unknown_after.clear();
            }
            Err(_) => entry.unknown_after.push(value),
        }
    }
}

fn acked_count(history: &History) -> usize {
    history
        .lock()
        .expect("history lock")
        .values()
        .filter(|h| h.acked.is_some())
        .count()
}

/// Every key reads back as its last acknowledged value (or a later value
/// whose WRITE had an unknown outcome).
async fn check_history(cluster: &Cluster, history: &History) {
    let client = cluster.client();
    let snapshot = history.lock().expect("history lock").clone();
    for (key, h) in snapshot {
        let got = client.read(&key).await.expect("read after failover");
        let got = got.map(|(value, _)| value.to_vec());
        let ok = match (&got, &h.acked) {
            (Some(v), Some(acked)) => v == acked || h.unknown_after.contains(v),
            (Some(v), None) => h.unknown_after.contains(v),
            (None, None) => true,
            (None, Some(_)) => false,
        };
        assert!(
            ok,
            "key {} reads {:?}, expected {:?} (or one of {:?})\n{}",
            String::from_utf8_lossy(&key),
            got.map(|v| String::from_utf8_lossy(&v).into_owned()),
            h.acked.map(|v| String::from_utf8_lossy(&v).into_owned()),
            h.unknown_after.len(),
            cluster.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_master_during_writes_loses_nothing() {
    bounded(async {
        let mut cluster = Cluster::start(Options::default()).await;
        let history: History = Arc::default();
        let writer = tokio::spawn(write_loop(cluster.client(), history.clone(), 0, 400, 60));
        while acked_count(&history) < 30 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cluster.master.kill9();
        writer.await.expect("writer task");
        let acked = acked_count(&history);
        assert_eq!(acked, 60, "every key was written through the failover");
        cluster.wait_active(&cluster.backup.address.clone()).await;
        check_history(&cluster, &history).await;

        // The killed master comes back as the standby...
        cluster.master.restart();
        let master = Cluster::direct_client(&cluster.master.address);
        let mut standby = false;
        for _ in 0..200 {
            if let Ok(s) = master.endpoint_status().await
                && s.role == "standby"
            {
                standby = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            standby,
            "restarted master must come back as standby\n{}",
            cluster.logs()
        );

        // ...and takes over again when the backup is killed.
        write_loop(cluster.client(), history.clone(), 400, 50, 60).await;
        cluster.backup.kill9();
        write_loop(cluster.client(), history.clone(), 450, 50, 60).await;
        cluster.wait_active(&cluster.master.address.clone()).await;
        check_history(&cluster, &history).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_master_is_fenced() {
    bounded(async {
        let cluster = Cluster::start(Options::default()).await;
        let client = cluster.client();
        for i in 0..20 {
            client
                .write(format!("k{i}").as_bytes(), b"old")
                .await
                .expect("write before pause");
        }
        cluster.master.pause();
        cluster.wait_active(&cluster.backup.address).await;
        for i in 0..20 {
            client
                .write(format!("k{i}").as_bytes(), b"new")
                .await
                .expect("write through the new master");
        }
        cluster.master.resume();

        // The old master must not acknowledge anything any more: a write
        // sent to it fails, or is redirected to the new master (epoch 2).
        let old = Cluster::direct_client(&cluster.master.address);
        for i in 0..20 {
            let result = old.write(format!("probe{i}").as_bytes(), b"probe").await;
            if let Ok(version) = result {
                assert!(
                    version.epoch >= 2,
                    "the deposed master acknowledged a write: {version:?}"
                );
            }
        }
        let mut standby = false;
        for _ in 0..100 {
            // A fresh client: `old` learnt the new master's address from
            // the redirects above and would ask it instead.
            let fresh = Cluster::direct_client(&cluster.master.address);
            if fresh
                .endpoint_status()
                .await
                .is_ok_and(|s| s.role == "standby")
            {
                standby = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            standby,
            "the resumed master must step down\n{}",
            cluster.logs()
        );

        // Reads return the newest values, never the fenced master's.
        cluster.wait_ready().await;
        for i in 0..20 {
            let got = client.read(format!("k{i}").as_bytes()).await.expect("read");
            assert_eq!(
                got.map(|(v, _)| v.to_vec()),
                Some(b"new".to_vec()),
                "key k{i}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_under_writes_then_backup_takes_over() {
    bounded(async {
        let options = Options {
            extra_master_args: vec![
                "--segment-bytes=4096".to_string(),
                "--compact-segments=100000".to_string(),
            ],
            ..Options::default()
        };
        let mut cluster = Cluster::start(options).await;
        let history: History = Arc::default();
        let writer = tokio::spawn(write_loop(cluster.client(), history.clone(), 0, 600, 25));
        let client = cluster.client();
        let mut merged_during_writes = 0;
        while !writer.is_finished() {
            if let Ok(reply) = client.compact().await
                && reply.segments_after < reply.segments_before
            {
                merged_during_writes += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        writer.await.expect("writer task");
        client.compact().await.expect("final compaction");
        assert!(
            merged_during_writes > 0,
            "compaction merged sealed segments while writes were going on\n{}",
            cluster.logs()
        );

        // The backup kept its place: once caught up, it takes over with the
        // same data.
        let end = client.status().await.expect("status").log_end_seq;
        let backup = Cluster::direct_client(&cluster.backup.address);
        let mut caught_up = false;
        for _ in 0..200 {
            if backup
                .endpoint_status()
                .await
                .is_ok_and(|s| s.log_end_seq >= end)
            {
                caught_up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            caught_up,
            "backup never caught up with the log\n{}",
            cluster.logs()
        );
        cluster.master.kill9();
        cluster.wait_active(&cluster.backup.address.clone()).await;
        check_history(&cluster, &history).await;
    })
    .await;
}
