//! Crash points of the WRITE path (`dsm::crash_points`): the master kills itself
//! with SIGKILL at one point of one WRITE; after the backup's takeover, and
//! again after a restart of every process, every acknowledged WRITE reads
//! back with its exact value, the crashed WRITE is all-or-nothing (absent, or
//! present with its exact value), and the cluster keeps serving.
//!
//! This checks that no acknowledged WRITE is lost, at the points
//! where the persist-before-acknowledge order could break. It needs the
//! `failpoints` feature, which also builds the `dsm` binary the test runs:
//! `cargo test -p dsm --features failpoints --test crash_points`.
#![cfg(feature = "failpoints")]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::{Cluster, Options, WAIT, bounded};
use dsm::crash_points;

/// WRITEs that pass the point (and are acknowledged) before the one that
/// crashes at it.
const ACKNOWLEDGED: usize = 4;

/// What recovery may do with the WRITE that crashed, given where it crashed.
#[derive(Clone, Copy, Debug)]
enum Crashed {
    /// Nothing was logged: it must not appear.
    Absent,
    /// It is durable in the log, the source of truth: it must appear.
    Present,
    /// Written but not fsynced: a process crash keeps it in the page cache,
    /// a power cut may not; both outcomes are correct.
    Either,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_log_append() {
    bounded(crash_at(crash_points::BEFORE_LOG_APPEND, Crashed::Absent)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_log_write_before_fsync() {
    bounded(crash_at(
        crash_points::AFTER_LOG_WRITE_BEFORE_FSYNC,
        Crashed::Either,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_log_durable() {
    bounded(crash_at(crash_points::AFTER_LOG_DURABLE, Crashed::Present)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_replication() {
    bounded(crash_at(crash_points::AFTER_REPLICATION, Crashed::Either)).await;
}

/// A WRITE its slaves stored but the log never got (the batch is lost as a
/// power cut would lose it, then the master crashes once the quorum stored
/// it): a stray. It overwrote an acknowledged key on its slaves; the
/// takeover must keep reading the acknowledged value, and overwrite the
/// stray.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_log_lost_is_never_read() {
    bounded(async {
        let armed = format!(
            "{}={ACKNOWLEDGED}*off->return",
            crash_points::LOG_WRITE_LOST
        );
        crash_with(
            &[armed],
            crash_points::AFTER_REPLICATION,
            Target::Stray("acked-0"),
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_quorum_before_reply() {
    bounded(crash_at(
        crash_points::AFTER_QUORUM_BEFORE_REPLY,
        Crashed::Present,
    ))
    .await;
}

/// The value of the WRITE that crashes: bytes a partial or mangled record
/// could not reproduce by accident.
fn crashed_value(point: &str) -> Vec<u8> {
    let mut value = format!("unacknowledged WRITE at {point}\n").into_bytes();
    value.extend((0..=255u8).cycle().take(3000));
    value
}

async fn crash_at(point: &str, expected: Crashed) {
    crash_with(&[], point, Target::New(expected)).await;
}

/// The key the crashed WRITE goes to.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// A key of its own, `crashed`, which recovery may treat as this says.
    New(Crashed),
    /// This acknowledged key, whose slaves store the crashed value while the
    /// log never gets it: recovery must keep the acknowledged value and
    /// overwrite the stray.
    Stray(&'static str),
}

/// Crashes the master at `point` (with the `also` fail points armed too) in
/// a WRITE of `target`, and checks recovery.
async fn crash_with(also: &[String], point: &str, target: Target) {
    let (key, expected) = match target {
        Target::New(expected) => ("crashed", expected),
        Target::Stray(key) => (key, Crashed::Absent),
    };
    let mut cluster = Cluster::prepare(Options::default());
    // Armed on the master only: the backup that takes over runs clean.
    let mut armed = also.to_vec();
    armed.push(format!("{point}={ACKNOWLEDGED}*off->return"));
    cluster
        .master
        .env
        .push(("FAILPOINTS".to_string(), armed.join(";")));
    cluster.start_all();
    cluster.wait_ready().await;

    // One address, no retries: a retry against the backup would turn the
    // crashed WRITE into an acknowledged one.
    let master = Cluster::direct_client(&cluster.master.address);
    let mut acknowledged = Vec::new();
    for i in 0..ACKNOWLEDGED {
        let (key, value) = (format!("acked-{i}"), format!("value {i} before {point}"));
        master
            .write(key.as_bytes(), value.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("WRITE {i} before the crash: {e}\n{}", cluster.logs()));
        acknowledged.push((key, value));
    }
    let value = crashed_value(point);
    let answer = master.write(key.as_bytes(), &value).await;
    assert!(
        answer.is_err(),
        "the master acknowledged the WRITE it should have crashed in: {answer:?}"
    );
    let exit = cluster
        .master
        .wait_exit(WAIT)
        .expect("the master exits at the fail point");
    assert_eq!(exit.signal(), Some(9), "killed by SIGKILL: {exit:?}");
    assert!(
        cluster
            .master
            .log()
            .contains(&format!("fail point {point}")),
        "the master crashed at {point}\n{}",
        cluster.logs()
    );

    cluster.wait_active(&cluster.backup.address).await;
    if let Target::Stray(_) = target {
        let overwritten = "overwrote a value left by a deposed master";
        while !cluster.backup.log().contains(overwritten) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    check(&cluster, &acknowledged, &value, expected, "after failover").await;

    cluster.master.env.clear();
    cluster.power_cut_and_restart().await;
    check(
        &cluster,
        &acknowledged,
        &value,
        expected,
        "after a full restart",
    )
    .await;
}

/// Every acknowledged WRITE is there, the crashed one is all-or-nothing,
/// and a new WRITE is acknowledged and read back.
async fn check(
    cluster: &Cluster,
    acknowledged: &[(String, String)],
    crashed: &[u8],
    expected: Crashed,
    when: &str,
) {
    let client = cluster.client();
    for (key, value) in acknowledged {
        let got = client
            .read(key.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("READ {key} {when}: {e}\n{}", cluster.logs()));
        assert_eq!(
            got.map(|(v, _)| v.to_vec()),
            Some(value.clone().into_bytes()),
            "acknowledged {key} {when}"
        );
    }
    let got = client
        .read(b"crashed")
        .await
        .unwrap_or_else(|e| panic!("READ crashed {when}: {e}\n{}", cluster.logs()));
    match (got.map(|(v, _)| v.to_vec()), expected) {
        (None, Crashed::Absent | Crashed::Either) => {}
        (Some(v), Crashed::Present | Crashed::Either) if v == crashed => {}
        (Some(v), _) if v != crashed => panic!(
            "{when}: the crashed WRITE came back altered ({} bytes instead of {})",
            v.len(),
            crashed.len()
        ),
        (got, expected) => panic!(
            "{when}: the crashed WRITE is {} but must be {expected:?}",
            if got.is_some() { "present" } else { "absent" }
        ),
    }
    let probe = format!("written {when}");
    client
        .write(b"probe", probe.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("WRITE {when}: {e}\n{}", cluster.logs()));
    let got = client.read(b"probe").await.expect("READ probe");
    assert_eq!(got.map(|(v, _)| v.to_vec()), Some(probe.into_bytes()));
}

/// A failed fsync of the log (injected: `return(eio)` at
/// [`crash_points::AFTER_LOG_WRITE_BEFORE_FSYNC`]) is never acknowledged, the
/// master stops acknowledging with that writer instead of retrying it
/// (fsyncgate) and cuts the record out of the file, and WRITEs resume without
/// any restart: the master steps down and a fresh writer recovers the log, in
/// a new epoch. The lease volume stays healthy here, so only that step-down
/// ends the failed term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fsync_is_not_acknowledged_and_writes_resume() {
    bounded(async {
        let point = crash_points::AFTER_LOG_WRITE_BEFORE_FSYNC;
        let mut cluster = Cluster::prepare(Options::default());
        cluster.master.env.push((
            "FAILPOINTS".to_string(),
            format!("{point}={ACKNOWLEDGED}*off->1*return(eio)"),
        ));
        cluster.start_all();
        cluster.wait_ready().await;
        let master = Cluster::direct_client(&cluster.master.address);
        let mut acknowledged = Vec::new();
        for i in 0..ACKNOWLEDGED {
            let (key, value) = (format!("acked-{i}"), format!("value {i}"));
            master
                .write(key.as_bytes(), value.as_bytes())
                .await
                .expect("WRITE before the failed fsync");
            acknowledged.push((key, value));
        }
        let epoch_before = master.status().await.expect("status").epoch;
        let value = crashed_value(point);
        let message = master
            .write(b"crashed", &value)
            .await
            .expect_err("a WRITE whose fsync failed must not be acknowledged")
            .to_string();
        assert!(
            message.contains("UNAVAILABLE")
                && message.contains("write-ahead log append failed")
                && message.contains("Input/output error"),
            "{message}"
        );
        // The master process stays up (this is an error, not a crash)...
        assert!(
            cluster
                .master
                .wait_exit(Duration::from_millis(200))
                .is_none()
        );
        // ...and the cluster writes again, in a new term.
        let client = cluster.client();
        client
            .write(b"resumed", b"after the failed fsync")
            .await
            .unwrap_or_else(|e| panic!("WRITEs resume: {e}\n{}", cluster.logs()));
        acknowledged.push(("resumed".to_string(), "after the failed fsync".to_string()));
        let epoch_after = client.status().await.expect("status").epoch;
        assert!(
            epoch_after > epoch_before,
            "{epoch_before} -> {epoch_after}"
        );
        assert!(
            cluster.master.log().contains("stepping down"),
            "{}",
            cluster.logs()
        );

        // The writer cut the log back to its last fsync: the record whose
        // fsync failed is gone from the file, not left readable in the page
        // cache for the next term to serve.
        check(
            &cluster,
            &acknowledged,
            &value,
            Crashed::Absent,
            "in the new term",
        )
        .await;
        cluster.master.env.clear();
        cluster.power_cut_and_restart().await;
        check(
            &cluster,
            &acknowledged,
            &value,
            Crashed::Absent,
            "after a full restart",
        )
        .await;
    })
    .await;
}
