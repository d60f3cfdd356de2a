//! Tests of the status and its conditions over the life of a cluster: creation,
//! health, failures, stalled rollouts and pauses.

use super::*;
use crate::crd::DsmClusterSpec;
use crate::fixtures::{
    POD_HASHES, REFUSED_CONFIG_LOG, crash_looping, healthy, ready_slave_set, seat_pod, test_cluster,
};
use crate::plan::plan;
use dsm_wire::Role;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
};

fn status_of(dc: &DsmCluster, observed: &Observed) -> DsmClusterStatus {
    let names = Names::of(dc).expect("names");
    let plan = plan(dc, &names, observed, POD_HASHES);
    compute(dc, &names, observed, &plan, Timestamp::UNIX_EPOCH)
}

/// A default cluster that has been running: its status is that of [`healthy`], which is
/// also the observation returned for a test to change.
fn running() -> (DsmCluster, Names, Observed) {
    let dc = test_cluster(DsmClusterSpec::default());
    let names = Names::of(&dc).expect("names");
    let status = status_of(&dc, &healthy(&names, 7));
    let observed = healthy(&names, 7);
    (dc.with_status(status), names, observed)
}

#[test]
fn a_new_cluster_is_creating_not_degraded() {
    let dc = test_cluster(DsmClusterSpec::default());
    let status = status_of(&dc, &Observed::default());
    assert_eq!(status.phase, PHASE_CREATING);
    assert_eq!(condition_status(Some(&status), "Degraded"), Some("False"));
    assert_eq!(condition_status(Some(&status), "Progressing"), Some("True"));
    assert_eq!(condition_status(Some(&status), "Available"), Some("False"));
}

#[test]
fn a_healthy_cluster_is_running_and_names_its_master() {
    let dc = test_cluster(DsmClusterSpec::default());
    let names = Names::of(&dc).expect("names");
    let status = status_of(&dc, &healthy(&names, 7));
    assert_eq!(status.phase, PHASE_RUNNING);
    assert_eq!(status.active_master.as_deref(), Some("test-master"));
    assert_eq!(status.epoch, Some(7));
    assert_eq!(status.ready_slaves, 3);
    for (type_, expected) in [
        ("Ready", "True"),
        ("Available", "True"),
        ("Progressing", "False"),
        ("Degraded", "False"),
    ] {
        assert_eq!(
            condition_status(Some(&status), type_),
            Some(expected),
            "{type_}"
        );
    }
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(1))
    );
}

#[test]
fn a_dying_slave_makes_a_running_cluster_degraded() {
    let (dc, _, mut observed) = running();
    observed.slave_set = Some(ready_slave_set(3, 2));
    let status = status_of(&dc, &observed);
    assert_eq!(status.phase, PHASE_DEGRADED);
    assert_eq!(condition_status(Some(&status), "Degraded"), Some("True"));
    assert_eq!(condition_status(Some(&status), "Ready"), Some("False"));
    // Two of three slaves are still a write quorum.
    assert_eq!(condition_status(Some(&status), "Available"), Some("True"));
}

#[test]
fn losing_the_master_makes_a_running_cluster_unavailable() {
    let (dc, names, mut observed) = running();
    observed.master = None;
    observed.pods[0] = seat_pod(&names, Seat::Master, "m1", Role::Active, false);
    let status = status_of(&dc, &observed);
    assert_eq!(status.phase, PHASE_UNAVAILABLE);
    assert_eq!(condition_status(Some(&status), "Degraded"), Some("True"));
    assert_eq!(condition_status(Some(&status), "Available"), Some("False"));
}

#[test]
fn an_unchanged_cluster_keeps_its_transition_times() {
    let dc = test_cluster(DsmClusterSpec::default());
    let names = Names::of(&dc).expect("names");
    let first = status_of(&dc, &healthy(&names, 7));
    let dc = dc.with_status(first.clone());
    let plan = plan(&dc, &names, &healthy(&names, 7), POD_HASHES);
    let later = Timestamp::from_second(1_000_000).expect("timestamp");
    let second = compute(&dc, &names, &healthy(&names, 7), &plan, later);
    assert_eq!(first, second);
}

fn condition_of<'a>(status: &'a DsmClusterStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

/// Mid-rollout to a new master spec (hashes `m2`/`b2`): the standby was replaced, the
/// active master still runs the old one and waits for the standby to be ready.
fn standby_replaced(names: &Names, standby: Pod) -> (Observed, Plan, DsmCluster) {
    let (dc, _, mut observed) = running();
    observed.pods[1] = standby;
    let plan = plan(&dc, names, &observed, ["m2", "b2"]);
    (observed, plan, dc)
}

#[test]
fn a_rollout_waiting_on_a_starting_standby_is_updating() {
    let dc = test_cluster(DsmClusterSpec::default());
    let names = Names::of(&dc).expect("names");
    let starting = seat_pod(&names, Seat::Backup, "b2", Role::Standby, false);
    let (observed, plan, dc) = standby_replaced(&names, starting);
    assert_eq!(plan.master, crate::plan::SeatAction::Wait);
    let status = compute(&dc, &names, &observed, &plan, Timestamp::UNIX_EPOCH);
    assert_eq!(status.phase, PHASE_UPDATING);
    assert_eq!(condition_of(&status, "Progressing").status, "True");
}

#[test]
fn a_crash_looping_standby_turns_the_rollout_degraded_with_its_error() {
    let dc = test_cluster(DsmClusterSpec::default());
    let names = Names::of(&dc).expect("names");
    let standby = seat_pod(&names, Seat::Backup, "b2", Role::Standby, false);
    let standby = crash_looping(standby, 4, REFUSED_CONFIG_LOG);
    let (observed, plan, dc) = standby_replaced(&names, standby);
    let status = compute(&dc, &names, &observed, &plan, Timestamp::UNIX_EPOCH);

    // Not `Updating`: nothing will progress until the standby runs.
    assert_eq!(status.phase, PHASE_DEGRADED);
    let degraded = condition_of(&status, "Degraded");
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.reason, "CrashLoopBackOff");
    assert!(
        degraded.message.starts_with(
            "pod test-backup is crash-looping (container dsm, 4 restarts), last exit code 2: \
             error: --replication-factor 2 is not a majority of --slaves 5"
        ),
        "{}",
        degraded.message
    );
    let progressing = condition_of(&status, "Progressing");
    assert_eq!(progressing.status, "False");
    assert_eq!(progressing.reason, "RolloutStalled");
    assert!(
        progressing.message.contains("test-master is outdated"),
        "{}",
        progressing.message
    );
    // WRITEs still go through the active master.
    assert_eq!(condition_of(&status, "Available").status, "True");
}

#[test]
fn a_crash_looping_master_of_a_new_cluster_is_degraded_not_creating() {
    let dc = test_cluster(DsmClusterSpec::default());
    let names = Names::of(&dc).expect("names");
    let master = seat_pod(&names, Seat::Master, "m1", Role::Standby, false);
    let observed = Observed {
        pods: vec![crash_looping(
            master,
            1,
            "error: cannot open the log: permission denied\n",
        )],
        ..Observed::default()
    };
    let status = status_of(&dc, &observed);
    assert_eq!(status.phase, PHASE_DEGRADED);
    let degraded = condition_of(&status, "Degraded");
    assert!(
        degraded
            .message
            .ends_with("error: cannot open the log: permission denied"),
        "{}",
        degraded.message
    );
}

#[test]
fn a_slave_that_cannot_pull_its_image_degrades_a_running_cluster() {
    let (dc, names, mut observed) = running();
    observed.slave_set = Some(ready_slave_set(3, 2));
    let mut slave = seat_pod(&names, Seat::Master, "m1", Role::Standby, false);
    slave.metadata.name = Some("test-slave-2".to_string());
    slave.status = Some(PodStatus {
        container_statuses: Some(vec![ContainerStatus {
            name: "dsm".to_string(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ImagePullBackOff".to_string()),
                    message: Some("Back-off pulling image \"dsm:nope\"".to_string()),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]),
        ..PodStatus::default()
    });
    observed.pods.push(slave);
    let status = status_of(&dc, &observed);
    assert_eq!(status.phase, PHASE_DEGRADED);
    let degraded = condition_of(&status, "Degraded");
    assert_eq!(degraded.reason, "ImagePullBackOff");
    assert_eq!(
        degraded.message,
        "pod test-slave-2 is ImagePullBackOff (container dsm): Back-off pulling image \"dsm:nope\"; 2/3 slaves ready"
    );
}

#[test]
fn pod_failures_are_told_apart_from_pods_that_recovered_or_are_starting() {
    let dc = test_cluster(DsmClusterSpec::default());
    let names = Names::of(&dc).expect("names");
    let base = seat_pod(&names, Seat::Master, "m1", Role::Active, true);
    assert_eq!(pod_failure(&base), None);

    // Crashed once, restarted and ready again: not a failure.
    let mut recovered = crash_looping(base.clone(), 1, "error: boom\n");
    if let Some(c) = recovered
        .status
        .as_mut()
        .and_then(|s| s.container_statuses.as_mut())
        .and_then(|cs| cs.first_mut())
    {
        c.ready = true;
        c.state = None;
    }
    assert_eq!(pod_failure(&recovered), None);

    // Killed without a message (OOM): the exit code and reason say it.
    let mut killed = crash_looping(base.clone(), 2, "");
    if let Some(t) = killed
        .status
        .as_mut()
        .and_then(|s| s.container_statuses.as_mut())
        .and_then(|cs| cs.first_mut())
        .and_then(|c| c.last_state.as_mut())
        .and_then(|s| s.terminated.as_mut())
    {
        t.exit_code = 137;
        t.reason = Some("OOMKilled".to_string());
    }
    let failure = pod_failure(&killed).expect("a failure");
    assert!(
        failure.message.ends_with("last exit code 137 (OOMKilled)"),
        "{}",
        failure.message
    );

    // Pending for want of a node.
    let mut pending = base;
    pending.status = Some(PodStatus {
        phase: Some("Pending".to_string()),
        conditions: Some(vec![PodCondition {
            type_: "PodScheduled".to_string(),
            status: "False".to_string(),
            reason: Some("Unschedulable".to_string()),
            message: Some("0/3 nodes are available: 3 Insufficient memory.".to_string()),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    assert_eq!(
        pod_failure(&pending),
        Some(PodFailure {
            reason: "Unschedulable".to_string(),
            message: "pod test-master cannot be scheduled: 0/3 nodes are available: 3 Insufficient memory."
                .to_string(),
        })
    );
}

#[test]
fn the_error_line_of_a_log_tail_is_the_one_shown() {
    assert_eq!(
        last_error_line(REFUSED_CONFIG_LOG).as_deref(),
        Some(
            "error: --replication-factor 2 is not a majority of --slaves 5: two writes could reach disjoint slaves; use at least 3"
        )
    );
    assert_eq!(
        last_error_line("a\nlast words\n\n").as_deref(),
        Some("last words")
    );
    assert_eq!(last_error_line("\n"), None);
    assert_eq!(
        last_error_line(&"x".repeat(2000)).map(|l| l.len()),
        Some(MAX_ERROR_CHARS)
    );
}

#[test]
fn paused_keeps_observations_and_says_so() {
    let (dc, _, _) = running();
    let status = paused(&dc, Timestamp::UNIX_EPOCH);
    assert_eq!(status.phase, PHASE_PAUSED);
    assert_eq!(status.ready_slaves, 3);
    assert_eq!(
        condition_status(Some(&status), "Progressing"),
        Some("False")
    );
}
