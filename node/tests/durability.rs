//! Reads, writes and durability: round trips, slave loss and
//! re-replication, whole-cluster restarts, damaged log files, bad input.

mod common;

use std::time::Duration;

use common::{Cluster, Options, bounded, newest_segment};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_read_overwrite_and_not_found() {
    bounded(async {
        let cluster = Cluster::start(Options::default()).await;
        let client = cluster.client();
        client.write(b"hello", b"world").await.expect("write");
        let got = client.read(b"hello").await.expect("read");
        assert_eq!(got.map(|(v, _)| v.to_vec()), Some(b"world".to_vec()));

        assert!(client.read(b"never-written").await.expect("read").is_none());

        let odd = b"spaces and\nnewlines\r\n\x00\xff\xfe not utf-8 \"quoted\"".to_vec();
        client.write(b"odd value", &odd).await.expect("write odd");
        let got = client.read(b"odd value").await.expect("read odd");
        assert_eq!(got.map(|(v, _)| v.to_vec()), Some(odd));

        client
            .write(b"empty", b"")
            .await
            .expect("write empty value");
        let got = client.read(b"empty").await.expect("read empty");
        assert_eq!(got.map(|(v, _)| v.to_vec()), Some(Vec::new()));

        let first = client.write(b"counter", b"1").await.expect("write 1");
        let second = client.write(b"counter", b"2").await.expect("write 2");
        assert!(
            second > first,
            "versions increase: {first:?} then {second:?}"
        );
        let got = client.read(b"counter").await.expect("read");
        assert_eq!(got.map(|(v, _)| v.to_vec()), Some(b"2".to_vec()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_loses_nothing() {
    bounded(async {
        let cluster = Cluster::start(Options::default()).await;
        let client = cluster.client();
        client.write(b"k", b"kept").await.expect("write");

        let cases: Vec<(Vec<u8>, Vec<u8>, &str)> = vec![
            (Vec::new(), b"v".to_vec(), "key is empty"),
            (vec![b'k'; 1025], b"v".to_vec(), "the limit is 1024 bytes"),
            (
                b"k".to_vec(),
                vec![0u8; 1024 * 1024 + 1],
                "the limit is 1048576 bytes",
            ),
        ];
        for (key, value, expected) in cases {
            let err = client
                .write(&key, &value)
                .await
                .expect_err("bad write must fail");
            assert!(
                err.to_string().contains(expected),
                "error {err} should mention {expected:?}"
            );
        }
        let err = client
            .read(b"")
            .await
            .expect_err("empty key read must fail");
        assert!(err.to_string().contains("key is empty"), "{err}");

        let got = client.read(b"k").await.expect("read");
        assert_eq!(got.map(|(v, _)| v.to_vec()), Some(b"kept".to_vec()));
        let status = client.status().await.expect("status");
        assert_eq!(status.keys, 1, "nothing else was stored");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slave_loss_is_re_replicated() {
    bounded(async {
        let mut cluster = Cluster::start(Options::default()).await;
        let client = cluster.client();
        for i in 0..200 {
            client
                .write(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
                .await
                .expect("write");
        }
        cluster.slaves[0].kill9();
        for i in 200..250 {
            client
                .write(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
                .await
                .expect("write with a slave down");
        }
        for i in 0..250 {
            let got = client.read(format!("k{i}").as_bytes()).await.expect("read");
            assert_eq!(
                got.map(|(v, _)| v.to_vec()),
                Some(format!("v{i}").into_bytes())
            );
        }
        // Every key is back to its replication factor on the two survivors.
        cluster
            .wait_for("all keys re-replicated on the surviving slaves", |s| {
                s.under_replicated_keys == 0
                    && s.keys == 250
                    && s.slaves.iter().filter(|x| x.live).all(|x| x.keys == 250)
            })
            .await;

        // The killed slave rejoins without serving anything stale.
        cluster.slaves[0].restart();
        cluster.wait_ready().await;
        for i in 0..250 {
            client
                .write(format!("k{i}").as_bytes(), format!("w{i}").as_bytes())
                .await
                .expect("overwrite");
        }
        for i in 0..250 {
            let got = client.read(format!("k{i}").as_bytes()).await.expect("read");
            assert_eq!(
                got.map(|(v, _)| v.to_vec()),
                Some(format!("w{i}").into_bytes())
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_whole_cluster_keeps_acknowledged_writes() {
    bounded(async {
        let mut cluster = Cluster::start(Options::default()).await;
        let client = cluster.client();
        for i in 0..100 {
            client
                .write(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
                .await
                .expect("write");
        }
        cluster.power_cut_and_restart().await;
        for i in 0..100 {
            let got = client.read(format!("k{i}").as_bytes()).await.expect("read");
            assert_eq!(
                got.map(|(v, _)| v.to_vec()),
                Some(format!("v{i}").into_bytes())
            );
        }
    })
    .await;
}

/// Writes `n` records whose frames all have the same size, and stops the
/// cluster, so tests can damage a known record.
async fn write_fixed_records(cluster: &mut Cluster, n: usize) {
    let client = cluster.client();
    for i in 0..n {
        client
            .write(format!("key-{i:02}").as_bytes(), &[b'x'; 100])
            .await
            .expect("write");
    }
    cluster.master.kill9();
    cluster.backup.kill9();
    for s in &mut cluster.slaves {
        s.kill9();
    }
}

/// Frame size of the records `write_fixed_records` writes: length and CRC
/// (8), kind (1), epoch and seq (16), the client's id and WRITE number (16),
/// key length (4), key (6), value (100).
const FRAME: u64 = 8 + 1 + 16 + 16 + 4 + 6 + 100;
/// Segment files start with an 8-byte magic.
const MAGIC: u64 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_loses_only_the_last_record() {
    bounded(async {
        let mut cluster = Cluster::start(Options::default()).await;
        write_fixed_records(&mut cluster, 20).await;
        let segment = newest_segment(&cluster.log_dir());
        let len = std::fs::metadata(&segment).expect("segment").len();
        assert_eq!(
            len,
            MAGIC + 20 * FRAME,
            "unexpected layout of {}",
            segment.display()
        );
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .expect("open");
        file.set_len(len - FRAME / 2).expect("truncate mid-record");
        drop(file);

        cluster.start_all();
        cluster.wait_ready().await;
        let client = cluster.client();
        for i in 0..19 {
            let got = client
                .read(format!("key-{i:02}").as_bytes())
                .await
                .expect("read");
            assert!(got.is_some(), "key-{i:02} survived");
        }
        let log = cluster.master.log() + &cluster.backup.log();
        assert!(
            log.contains("torn"),
            "a warning names the torn tail:\n{log}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_record_in_the_middle_refuses_to_start() {
    bounded(async {
        let mut cluster = Cluster::start(Options::default()).await;
        write_fixed_records(&mut cluster, 20).await;
        let segment = newest_segment(&cluster.log_dir());
        let mut bytes = std::fs::read(&segment).expect("read segment");
        let inside_record_10 = (MAGIC + 10 * FRAME + FRAME / 2) as usize;
        bytes[inside_record_10] ^= 0xff;
        std::fs::write(&segment, &bytes).expect("write segment");

        cluster.master.restart();
        let status = cluster.master.wait_exit(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| !s.success()),
            "the master must refuse to start on a corrupt log\n{}",
            cluster.master.log()
        );
        let log = cluster.master.log();
        let name = segment
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        assert!(
            log.contains("corrupt") && log.contains(&name),
            "the error names the problem and the file:\n{log}"
        );
    })
    .await;
}

/// The pipelined client (many requests on one stream, as the bench uses)
/// has the unary calls' semantics: values, NOT_FOUND, refused input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_client_has_unary_semantics() {
    bounded(async {
        let cluster = Cluster::start(Options::default()).await;
        let leader = cluster.client().status().await.expect("status").leader;
        let pipelined = std::sync::Arc::new(
            dsm::client::pipelined::PipelinedClient::new(dsm::client::ClientConfig {
                endpoints: vec![leader],
                timeout: Duration::from_secs(10),
                retry_for: Duration::ZERO,
            })
            .expect("pipelined client"),
        );
        let writes: Vec<_> = (0..300)
            .map(|i| {
                let p = pipelined.clone();
                tokio::spawn(async move {
                    p.write(format!("p{i}").as_bytes(), format!("v{i}").as_bytes())
                        .await
                })
            })
            .collect();
        for w in writes {
            w.await.expect("task").expect("pipelined write");
        }
        let unary = cluster.client();
        for i in 0..300 {
            let key = format!("p{i}");
            let want = Some(format!("v{i}").into_bytes());
            let got = pipelined
                .read(key.as_bytes())
                .await
                .expect("pipelined read");
            assert_eq!(got.map(|(v, _)| v.to_vec()), want);
            let got = unary.read(key.as_bytes()).await.expect("unary read");
            assert_eq!(got.map(|(v, _)| v.to_vec()), want);
        }
        assert!(pipelined.read(b"absent").await.expect("read").is_none());
        let err = pipelined.write(b"", b"v").await.expect_err("empty key");
        assert!(err.to_string().contains("key is empty"), "{err}");
    })
    .await;
}
