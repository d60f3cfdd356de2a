//! The KV API beyond READ/WRITE, end to end on real processes: DELETE,
//! compare-and-set, LIST, WATCH and snapshots, through the library client
//! and the `dsm client` / `dsm snapshot` commands a user runs. Faults
//! (compaction, kill -9, restarts, a slave that missed a DELETE) are mixed in
//! where the feature claims to survive them.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{Cluster, Options, WAIT, bounded, http_get, run_dsm};
use dsm::client::{Client, ClientError, WatchOptions};
use dsm::version::{Expect, Version};

/// `dsm client --master A --backup B ARGS…` against the cluster.
fn client_cli(cluster: &Cluster, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let master = format!("--master={}", cluster.master.address);
    let backup = format!("--backup={}", cluster.backup.address);
    let mut all = vec!["client", master.as_str(), backup.as_str()];
    all.extend_from_slice(args);
    let (code, out, err) = run_dsm(&all, stdin);
    (code, String::from_utf8_lossy(&out).into_owned(), err)
}

/// The version in an `OK (version E.S)` / `OK (deleted, version E.S)` line.
fn version_in(line: &str) -> Version {
    let text = line
        .rsplit("version ")
        .next()
        .and_then(|rest| rest.strip_suffix(")\n").or(rest.strip_suffix(')')))
        .unwrap_or_else(|| panic!("no version in {line:?}"));
    text.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// The count on the `keys:` line of a snapshot summary.
fn keys_line(summary: &str) -> usize {
    summary
        .lines()
        .find_map(|l| l.strip_prefix("keys:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no keys line in {summary:?}"))
}

/// Every key of the cluster, page by page.
async fn all_keys(client: &Client, prefix: &[u8]) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    let mut after: Option<bytes::Bytes> = None;
    loop {
        let page = client
            .list(prefix, after.as_deref(), 0, false)
            .await
            .expect("list");
        keys.extend(page.keys.into_iter().map(|(k, _)| k.to_vec()));
        match page.next {
            Some(next) => after = Some(next),
            None => return keys,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_compare_and_set_and_keys_work_from_the_command_line() {
    bounded(async {
        let cluster = Cluster::start(Options::default()).await;
        let (code, out, err) = client_cli(&cluster, &["write", "k", "v1"], b"");
        assert_eq!(code, 0, "{err}");
        let v1 = version_in(&out);

        // A compare-and-set against another version changes nothing, exits 3
        // and says what the key is at.
        let (code, out, err) = client_cli(
            &cluster,
            &["write", "k", "v2", "--if-version", "999.1"],
            b"",
        );
        assert_eq!(code, 3, "a failed condition exits 3: {err}");
        assert!(out.is_empty());
        assert!(err.contains(&format!("is at version {v1}")), "{err}");
        let (code, out, err) = client_cli(
            &cluster,
            &["write", "k", "v2", "--if-version", &v1.to_string()],
            b"",
        );
        assert_eq!(code, 0, "{err}");
        let v2 = version_in(&out);
        assert!(v2 > v1);
        let (code, _, err) = client_cli(&cluster, &["write", "k", "x", "--if-absent"], b"");
        assert_eq!(code, 3);
        assert!(
            err.contains(&format!("is at version {v2}")),
            "the refusal names the current version: {err}"
        );
        let (code, out, _) = client_cli(&cluster, &["read", "k"], b"");
        assert_eq!((code, out.as_str()), (0, "v2\n"), "nothing was changed");

        let (code, _, err) = client_cli(&cluster, &["write", "new", "y", "--if-absent"], b"");
        assert_eq!(code, 0, "{err}");
        let (code, out, _) = client_cli(&cluster, &["keys"], b"");
        assert_eq!((code, out.as_str()), (0, "k\nnew\n"));
        let (_, out, _) = client_cli(&cluster, &["keys", "--versions", "n"], b"");
        assert!(out.starts_with("new (version "), "{out}");

        let (code, out, err) = client_cli(&cluster, &["delete", "k"], b"");
        assert_eq!(code, 0, "{err}");
        let deleted = version_in(&out);
        assert!(deleted > v2, "{out}");
        let (code, _, err) = client_cli(&cluster, &["read", "k"], b"");
        assert_eq!(code, 1, "a deleted key is not found: {err}");
        let (code, out, _) = client_cli(&cluster, &["delete", "k"], b"");
        assert_eq!(code, 0);
        assert!(out.contains("nothing to delete"), "{out}");
        let (code, _, _) = client_cli(
            &cluster,
            &["delete", "new", "--if-version", &deleted.to_string()],
            b"",
        );
        assert_eq!(code, 3, "deleting at a wrong version is refused");
        let (_, out, _) = client_cli(&cluster, &["keys"], b"");
        assert_eq!(out, "new\n");

        // The same through the shell, scripted.
        let script = b"WRITE a 1\nWRITE a 2 IF ABSENT\nDELETE a\nREAD a\nKEYS\nDEL new\nKEYS\n";
        let (code, out, _) = client_cli(&cluster, &[], script);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(code, 2, "a refused condition is an ERR line: {out}");
        assert!(lines[0].starts_with("OK (version "), "{out}");
        assert!(lines[1].starts_with("ERR condition not met"), "{out}");
        assert!(lines[2].starts_with("OK (deleted, version "), "{out}");
        assert_eq!(lines[3], "(not found)");
        assert!(lines[4].starts_with("new (version "), "{out}");
        assert!(lines[5].starts_with("OK (deleted"), "{out}");
        assert_eq!(lines[6], "(no keys)");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_through_every_key_in_order_and_refuse_oversized_pages() {
    bounded(async {
        let cluster = Cluster::start(Options::default()).await;
        let client = cluster.client();
        let mut written = Vec::new();
        for i in 0..250 {
            let key = format!("p/{i:04}");
            client.write(key.as_bytes(), b"x").await.expect("write");
            written.push(key.into_bytes());
        }
        client
            .write(b"q", b"outside the prefix")
            .await
            .expect("write");
        client.delete(b"p/0007").await.expect("delete");
        written.retain(|k| k != b"p/0007");
        assert_eq!(all_keys(&client, b"p/").await, written);

        let page = client.list(b"p/", None, 10, true).await.expect("list");
        assert_eq!(page.keys.len(), 10);
        assert!(
            page.keys.iter().all(|(_, v)| v.is_some()),
            "versions asked for"
        );
        assert_eq!(page.next.as_deref(), Some(&b"p/0010"[..]));

        match client.list(b"p/", None, 1001, false).await {
            Err(ClientError::InvalidArgument(message)) => {
                assert!(message.contains("at most 1000"), "{message}")
            }
            other => panic!("an oversized page must be refused: {other:?}"),
        }
        let (code, out, _) = client_cli(&cluster, &["keys", "p/", "--limit", "3"], b"");
        assert_eq!((code, out.as_str()), (0, "p/0000\np/0001\np/0002\n"));
    })
    .await;
}

/// The 20 `doomed-` keys read as absent and are not listed.
async fn check_deleted(client: &Client, stage: &str) {
    for i in 0..20 {
        let key = format!("doomed-{i}");
        let got = client.read(key.as_bytes()).await.expect("read");
        assert!(got.is_none(), "{key} came back {stage}: {got:?}");
    }
    assert!(
        all_keys(client, b"doomed-").await.is_empty(),
        "a deleted key is listed {stage}"
    );
}

/// A DELETE survives everything that rebuilds state: compaction (which drops
/// the tombstone and every older record of the key), a kill -9 of the master
/// (the backup replays the compacted log), a slave that still holds the old
/// value because it was down during the DELETE, and a full restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_never_comes_back_after_compaction_failover_or_restart() {
    bounded(async {
        let mut cluster = Cluster::start(Options {
            extra_master_args: vec![
                "--segment-bytes=4096".into(),
                "--compact-segments=100000".into(),
            ],
            ..Options::default()
        })
        .await;
        let client = cluster.client();
        for i in 0..20 {
            client
                .write(format!("doomed-{i}").as_bytes(), b"old value")
                .await
                .expect("write");
        }
        // Slave 0 misses the DELETEs: whatever it held stays on its disk.
        cluster.slaves[0].kill9();
        for i in 0..20 {
            let deleted = client
                .delete(format!("doomed-{i}").as_bytes())
                .await
                .expect("delete");
            assert!(deleted.is_some());
        }
        let filler = vec![b'f'; 200];
        for i in 0..200 {
            client
                .write(format!("filler-{}", i % 10).as_bytes(), &filler)
                .await
                .expect("write");
        }
        let reply = client.compact().await.expect("compact");
        assert!(
            reply.segments_after < reply.segments_before,
            "compaction merged segments: {reply:?}"
        );
        check_deleted(&client, "after compaction").await;

        // A compacted-away change cannot be watched any more: the watch says so.
        match client
            .watch(WatchOptions {
                from_seq: 1,
                ..WatchOptions::default()
            })
            .await
        {
            Err(ClientError::Compacted { complete_from }) => assert!(complete_from > 1),
            Err(other) => panic!("expected a Compacted error, got {other}"),
            Ok(_) => panic!("a watch from seq 1 after compaction must be refused"),
        }

        cluster.master.kill9();
        cluster.wait_active(&cluster.backup.address.clone()).await;
        check_deleted(&client, "after the backup took over").await;

        cluster.slaves[0].restart();
        cluster.wait_ready().await;
        check_deleted(&client, "once the slave that missed the DELETEs is back").await;

        cluster.power_cut_and_restart().await;
        check_deleted(&client, "after a full restart").await;

        // The key can be created again, newer than anything it had.
        let again = client.write(b"doomed-0", b"reborn").await.expect("write");
        let (value, version) = client
            .read(b"doomed-0")
            .await
            .expect("read")
            .expect("found");
        assert_eq!((&value[..], version), (&b"reborn"[..], again));
    })
    .await;
}

/// A watch that sees its master killed resumes on the successor from the
/// position it reached: every acknowledged WRITE is reported once, in log
/// order, and nothing is reported that was not written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_across_a_failover_without_gap_or_duplicate() {
    bounded(async {
        let mut cluster = Cluster::start(Options::default()).await;
        let watcher = cluster.client();
        let mut watch = watcher
            .watch(WatchOptions {
                prefix: "w/".into(),
                values: true,
                ..WatchOptions::default()
            })
            .await
            .expect("watch");
        let writer = cluster.client();
        let mut acked = BTreeMap::new();
        let total = 300;
        for i in 0..total {
            if i == total / 2 {
                cluster.master.kill9();
            }
            let key = format!("w/{i:04}");
            // The outcome of the WRITE in flight at the kill may be unknown.
            if let Ok(version) = writer.write(key.as_bytes(), key.as_bytes()).await {
                acked.insert(version.seq, key);
            }
        }
        let end = writer.write(b"w/end", b"w/end").await.expect("final write");
        let mut seen: HashMap<u64, String> = HashMap::new();
        let mut last_seq = 0;
        loop {
            let change = tokio::time::timeout(Duration::from_secs(60), watch.next())
                .await
                .expect("the watch keeps delivering")
                .expect("the watch survives the failover");
            assert!(
                change.version.seq > last_seq,
                "changes come once, in log order: {} after {last_seq}",
                change.version.seq
            );
            last_seq = change.version.seq;
            assert!(!change.deleted);
            assert_eq!(change.key, change.value, "the value written with the key");
            if change.version == end {
                break;
            }
            seen.insert(
                change.version.seq,
                String::from_utf8_lossy(&change.key).into(),
            );
        }
        for (seq, key) in &acked {
            assert_eq!(
                seen.get(seq),
                Some(key),
                "acknowledged {key} at seq {seq} was not reported"
            );
        }
        // Only WRITEs whose outcome was unknown may appear beyond the acked.
        assert!(
            seen.len() <= acked.len() + 1,
            "{} seen, {} acked",
            seen.len(),
            acked.len()
        );
    })
    .await;
}

/// `dsm snapshot save` writes every live key at one position, `status`
/// checks the file, `restore` builds a log a new cluster starts from with
/// every key readable and new WRITEs newer than every restored one; a damaged
/// file is refused by name, and a restore never overwrites a log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restores_every_key_into_a_new_cluster() {
    bounded(async {
        let source = Cluster::start(Options::default()).await;
        let client = source.client();
        let mut expected = BTreeMap::new();
        for i in 0..120u32 {
            let key = format!("key-{i:03}");
            let value = format!("value-{i}").repeat(1 + (i as usize % 7));
            client
                .write(key.as_bytes(), value.as_bytes())
                .await
                .expect("write");
            expected.insert(key, value);
        }
        for i in (0..120).step_by(10) {
            let key = format!("key-{i:03}");
            client.delete(key.as_bytes()).await.expect("delete");
            expected.remove(&key);
        }
        for i in (5..120).step_by(10) {
            let key = format!("key-{i:03}");
            client
                .write(key.as_bytes(), b"overwritten")
                .await
                .expect("write");
            expected.insert(key, "overwritten".into());
        }
        client.write(b"binary", b"\x00\xff\n").await.expect("write");
        expected.insert("binary".into(), "\u{0}\u{fffd}\n".into());

        let work = tempfile::tempdir().expect("temporary directory");
        let file = work.path().join("cluster.snap");
        let file_arg = file.to_str().expect("utf-8 path");
        let master = format!("--master={}", source.master.address);
        let backup = format!("--backup={}", source.backup.address);
        let (code, out, err) = run_dsm(&["snapshot", "save", file_arg, &master, &backup], b"");
        let out = String::from_utf8_lossy(&out);
        assert_eq!(code, 0, "{err}");
        assert_eq!(keys_line(&out), expected.len(), "{out}");
        let (code, out, err) = run_dsm(&["snapshot", "status", file_arg], b"");
        assert_eq!(code, 0, "{err}");
        assert_eq!(keys_line(&String::from_utf8_lossy(&out)), expected.len());

        let target = Cluster::prepare(Options::default());
        let log_dir = target.log_dir();
        let log_arg = format!("--log-dir={}", log_dir.display());
        let (code, out, err) = run_dsm(&["snapshot", "restore", file_arg, &log_arg], b"");
        assert_eq!(code, 0, "{err}");
        assert!(String::from_utf8_lossy(&out).contains("restored"));
        let (code, _, err) = run_dsm(&["snapshot", "restore", file_arg, &log_arg], b"");
        assert_ne!(code, 0, "a restore into an existing log must be refused");
        assert!(err.contains(&log_dir.display().to_string()), "{err}");

        let mut target = target;
        target.start_all();
        target.wait_ready().await;
        let restored = target.client();
        for (key, value) in &expected {
            let (got, _) = restored
                .read(key.as_bytes())
                .await
                .expect("read")
                .unwrap_or_else(|| panic!("{key} was not restored"));
            if key == "binary" {
                assert_eq!(&got[..], b"\x00\xff\n");
            } else {
                assert_eq!(got, value.as_bytes(), "{key}");
            }
        }
        for i in (0..120).step_by(10) {
            let key = format!("key-{i:03}");
            assert!(restored.read(key.as_bytes()).await.expect("read").is_none());
        }
        let listed = all_keys(&restored, b"").await;
        assert_eq!(listed.len(), expected.len());
        let newest = restored
            .list(b"", None, 1000, true)
            .await
            .expect("list")
            .keys
            .iter()
            .filter_map(|(_, v)| *v)
            .max()
            .expect("some version");
        let fresh = restored.write(b"after-restore", b"x").await.expect("write");
        assert!(
            fresh > newest,
            "{fresh} is newer than every restored {newest}"
        );
        let cas = restored.write_if(b"key-001", b"cas", Expect::Absent).await;
        assert!(
            matches!(cas, Err(ClientError::ConditionFailed { .. })),
            "{cas:?}"
        );

        // A flipped byte anywhere is caught, naming the file.
        let mut bytes = std::fs::read(&file).expect("read snapshot");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        let damaged = work.path().join("damaged.snap");
        std::fs::write(&damaged, &bytes).expect("write damaged copy");
        let damaged_arg = damaged.to_str().expect("utf-8 path");
        let (code, _, err) = run_dsm(&["snapshot", "status", damaged_arg], b"");
        assert_ne!(code, 0, "a damaged snapshot must be refused");
        assert!(err.contains("damaged.snap"), "{err}");
        let fresh_dir = work.path().join("fresh-log");
        let fresh_arg = format!("--log-dir={}", fresh_dir.display());
        let (code, _, _) = run_dsm(&["snapshot", "restore", damaged_arg, &fresh_arg], b"");
        assert_ne!(code, 0);
        assert!(
            !fresh_dir.join("terms").exists(),
            "nothing is restored from a damaged snapshot"
        );
    })
    .await;
}

/// The value of one sample (`name{labels}`) in a Prometheus text page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

/// Watchers are bounded: over `--max-watchers` a WATCH is refused naming the
/// limit, and a watcher that stops reading is cut off with an error saying
/// why, while WRITEs and a watcher that keeps up go on; its place is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_are_bounded_and_a_stalled_one_is_cut_off_without_stopping_writes() {
    use dsm::proto::WatchRequest;
    use dsm::proto::kv_client::KvClient;

    bounded(async {
        let cluster = Cluster::start(Options {
            extra_master_args: vec!["--max-watchers=2".into()],
            ..Options::default()
        })
        .await;
        let mut kv = KvClient::connect(format!("http://{}", cluster.master.address))
            .await
            .expect("connect");
        let everything = WatchRequest {
            values: true,
            ..WatchRequest::default()
        };
        // Never read from: its stream fills up.
        let mut stalled = kv
            .watch(everything.clone())
            .await
            .expect("watch")
            .into_inner();

        // A watcher that keeps up, in its own task, until it sees "end".
        let endpoints = (
            cluster.master.address.clone(),
            cluster.backup.address.clone(),
        );
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let keeping_up = tokio::spawn(async move {
            let client = Client::new(dsm::client::ClientConfig {
                endpoints: vec![endpoints.0, endpoints.1],
                timeout: Duration::from_secs(2),
                retry_for: Duration::from_secs(30),
            });
            let mut watch = client
                .watch(WatchOptions::default())
                .await
                .expect("the second watcher is within the limit");
            let _ = ready_tx.send(());
            let mut seen = Vec::new();
            loop {
                let change = watch
                    .next()
                    .await
                    .expect("a watcher that reads is not cut off");
                if &change.key[..] == b"end" {
                    return seen;
                }
                seen.push(change.version);
            }
        });
        ready_rx.await.expect("second watcher started");

        let refused = kv
            .watch(everything.clone())
            .await
            .expect_err("over the limit");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("--max-watchers"),
            "{}",
            refused.message()
        );

        let client = cluster.client();
        let value = vec![b'v'; 64 * 1024];
        let cut_off = "dsm_watchers_cut_off_total{reason=\"slow\"}";
        let started = std::time::Instant::now();
        let mut acked = Vec::new();
        loop {
            for _ in 0..10 {
                let key = format!("big-{}", acked.len());
                acked.push(
                    client
                        .write(key.as_bytes(), &value)
                        .await
                        .expect("writes go on"),
                );
            }
            let (_, page) = http_get(&cluster.master.metrics_address, "/metrics");
            if sample(&page, cut_off).is_some_and(|n| n >= 1.0) {
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "the stalled watcher was never cut off\n{}",
                cluster.logs()
            );
        }
        // Its buffered batches, then the error that ended it.
        let error = loop {
            match stalled.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stalled watch ended without saying why"),
                Err(status) => break status,
            }
        };
        assert_eq!(error.code(), tonic::Code::ResourceExhausted);
        assert!(
            error.message().contains("did not keep up"),
            "{}",
            error.message()
        );

        // Its place is free again.
        let mut again = kv
            .watch(everything)
            .await
            .expect("a freed place")
            .into_inner();
        client.write(b"end", b"").await.expect("write");
        assert!(again.message().await.expect("stream").is_some());
        let seen = keeping_up.await.expect("watcher task");
        for version in &acked {
            assert!(
                seen.contains(version),
                "the watcher that kept up missed {version}"
            );
        }
    })
    .await;
}
