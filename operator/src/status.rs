//! The `DsmCluster` status, computed from what was observed and planned: a pure function.
//!
//! The conditions tell the truth about the pods, not about what was last applied:
//! - **Available**: a master-capable pod reports holding the lease and at least a write
//!   quorum of slaves is ready, so WRITEs can be acknowledged.
//! - **Ready**: Available, every wanted pod ready and nothing rolling out.
//! - **Progressing**: the cluster is being created, scaled or rolled out.
//! - **Degraded**: a cluster that once ran lacks a pod or the lease holder (a dead slave
//!   or master shows up here, whatever the reason), or the spec is one the nodes would
//!   refuse (reason `InvalidSpec`: nothing is rolled out).
//!
//! A condition's `lastTransitionTime` changes only when its status does, so a reconcile
//! that sees nothing new computes the same status and writes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{DsmCluster, DsmClusterStatus, Endpoints, SpecError};
use crate::objects::{Names, Seat};
use crate::plan::{Observed, Plan, pod_ready};

/// Phase while the cluster has never been ready.
pub const PHASE_CREATING: &str = "Creating";
/// Phase when everything is ready.
pub const PHASE_RUNNING: &str = "Running";
/// Phase while a deliberate change (scaling, rollout) is under way.
pub const PHASE_UPDATING: &str = "Updating";
/// Phase when pods are missing or unready for no deliberate reason.
pub const PHASE_DEGRADED: &str = "Degraded";
/// Phase when WRITEs cannot be acknowledged (no lease holder or too few slaves).
pub const PHASE_UNAVAILABLE: &str = "Unavailable";
/// Phase while `spec.paused` is set.
pub const PHASE_PAUSED: &str = "Paused";

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    dc: &DsmCluster,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let previous = dc
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
    let last_transition_time = match previous {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: dc.metadata.generation,
        last_transition_time,
    }
}

fn previous_phase(dc: &DsmCluster) -> &str {
    dc.status.as_ref().map_or("", |s| s.phase.as_str())
}

/// The last observations with `phase` and the given conditions replacing those of
/// the same type: the status of a reconcile that observes and changes nothing.
fn unreconciled(dc: &DsmCluster, phase: &str, conditions: Vec<Condition>) -> DsmClusterStatus {
    let mut status = dc.status.clone().unwrap_or_default();
    status.phase = phase.to_string();
    status.observed_generation = dc.metadata.generation;
    status
        .conditions
        .retain(|c| !conditions.iter().any(|new| new.type_ == c.type_));
    status.conditions.extend(conditions);
    status
}

/// The status of a paused cluster: the last observations, with the phase and
/// Progressing saying that nothing is reconciled.
pub fn paused(dc: &DsmCluster, now: Timestamp) -> DsmClusterStatus {
    let progressing = condition(
        "Progressing",
        false,
        "Paused",
        "spec.paused is set: the operator changes nothing".to_string(),
        dc,
        now,
    );
    unreconciled(dc, PHASE_PAUSED, vec![progressing])
}

/// Reason of the conditions of a spec the nodes would refuse.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";

/// What the status and the Warning Event say of a spec the nodes would refuse.
pub fn refusal(error: &SpecError) -> String {
    format!("{error}; nothing is rolled out until the spec is fixed")
}

/// The status of a cluster whose spec the nodes would refuse: nothing is rolled out, so
/// the last observations stay; Degraded, Ready and Progressing say why.
pub fn invalid(dc: &DsmCluster, error: &SpecError, now: Timestamp) -> DsmClusterStatus {
    let message = refusal(error);
    let conditions = [("Degraded", true), ("Ready", false), ("Progressing", false)]
        .into_iter()
        .map(|(type_, status)| {
            condition(type_, status, REASON_INVALID_SPEC, message.clone(), dc, now)
        })
        .collect();
    unreconciled(dc, PHASE_DEGRADED, conditions)
}

/// Computes the status from the observations and the plan made from them.
pub fn compute(
    dc: &DsmCluster,
    names: &Names,
    observed: &Observed,
    plan: &Plan,
    now: Timestamp,
) -> DsmClusterStatus {
    let spec = &dc.spec;
    let desired = spec.slaves.replicas;
    let quorum = spec.write_quorum();
    let sts_status = observed.slave_set.as_ref().and_then(|s| s.status.as_ref());
    let replicas = sts_status.map_or(0, |s| s.replicas);
    let ready_slaves = sts_status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let active = observed.active_seat();

    // Everything that keeps the cluster from full redundancy.
    let mut lacking = Vec::new();
    if active.is_none() {
        lacking.push("no master-capable pod reports holding the lease".to_string());
    }
    for seat in [Seat::Master, Seat::Backup] {
        if seat == Seat::Backup && !spec.backup.enabled {
            continue;
        }
        let name = names.seat(seat);
        match observed.pod(&name) {
            None => lacking.push(format!("pod {name} is missing")),
            Some(p) if !pod_ready(p) => lacking.push(format!("pod {name} is not ready")),
            Some(_) => {}
        }
    }
    if ready_slaves < desired {
        lacking.push(format!("{ready_slaves}/{desired} slaves ready"));
    }

    let available = active.is_some() && ready_slaves >= quorum;
    let ready = available && lacking.is_empty() && plan.rollout.is_empty();
    let ever_ran = !matches!(previous_phase(dc), "" | PHASE_CREATING);
    let creating = !ever_ran && !ready;
    let degraded = ever_ran && !lacking.is_empty();
    let phase = if ready {
        PHASE_RUNNING
    } else if creating {
        PHASE_CREATING
    } else if !available {
        PHASE_UNAVAILABLE
    } else if !plan.rollout.is_empty() {
        PHASE_UPDATING
    } else {
        PHASE_DEGRADED
    };

    let active_master = active.map(|(seat, _)| names.seat(seat));
    let summary = format!(
        "{ready_slaves}/{desired} slaves ready (write quorum {quorum}); active master: {}",
        active_master.as_deref().unwrap_or("unknown")
    );
    let lacking_text = lacking.join("; ");
    let conditions = vec![
        condition(
            "Ready",
            ready,
            if ready { "AllReady" } else { "NotReady" },
            if ready {
                summary.clone()
            } else {
                [lacking_text.as_str(), &plan.rollout.join("; ")]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            },
            dc,
            now,
        ),
        condition(
            "Available",
            available,
            if available {
                "QuorumReady"
            } else if active.is_none() {
                "NoActiveMaster"
            } else {
                "TooFewSlaves"
            },
            summary,
            dc,
            now,
        ),
        condition(
            "Progressing",
            creating || !plan.rollout.is_empty(),
            if !plan.rollout.is_empty() {
                "RollingOut"
            } else if creating {
                "Creating"
            } else {
                "Complete"
            },
            if plan.rollout.is_empty() {
                if creating {
                    "waiting for the pods to become ready".to_string()
                } else {
                    "the cluster matches its spec".to_string()
                }
            } else {
                plan.rollout.join("; ")
            },
            dc,
            now,
        ),
        condition(
            "Degraded",
            degraded,
            if !degraded {
                "AsExpected"
            } else if plan.rollout.is_empty() {
                "PodsNotReady"
            } else {
                "RollingOut"
            },
            if degraded {
                lacking_text
            } else {
                "every wanted pod is ready".to_string()
            },
            dc,
            now,
        ),
    ];

    DsmClusterStatus {
        phase: phase.to_string(),
        observed_generation: dc.metadata.generation,
        conditions,
        replicas,
        ready_slaves,
        active_master,
        epoch: active.map(|(_, epoch)| i64::try_from(epoch).unwrap_or(i64::MAX)),
        selector: names.slave_selector(),
        endpoints: Some(Endpoints {
            leader: names.leader_address(),
            master: names.seat_address(Seat::Master),
            backup: spec
                .backup
                .enabled
                .then(|| names.seat_address(Seat::Backup)),
        }),
    }
}

/// The `status` of a condition type, if present.
pub fn condition_status<'a>(status: Option<&'a DsmClusterStatus>, type_: &str) -> Option<&'a str> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DsmClusterSpec;
    use crate::fixtures::{active_status, ready_slave_set, seat_pod, test_cluster};
    use crate::objects::Role;
    use crate::plan::plan;

    const HASHES: [&str; 2] = ["m1", "b1"];

    fn healthy(names: &Names) -> Observed {
        Observed {
            slave_set: Some(ready_slave_set(3, 3)),
            pods: vec![
                seat_pod(names, Seat::Master, "m1", Role::Active, true),
                seat_pod(names, Seat::Backup, "b1", Role::Standby, true),
            ],
            master: Some(active_status(names, 7)),
            backup: None,
        }
    }

    fn status_of(dc: &DsmCluster, observed: &Observed) -> DsmClusterStatus {
        let names = Names::of(dc).expect("names");
        let plan = plan(dc, &names, observed, HASHES);
        compute(dc, &names, observed, &plan, Timestamp::UNIX_EPOCH)
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
        let status = status_of(&dc, &healthy(&names));
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
        let dc = test_cluster(DsmClusterSpec::default());
        let names = Names::of(&dc).expect("names");
        let running = status_of(&dc, &healthy(&names));
        let dc = dc.with_status(running);
        let mut observed = healthy(&names);
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
        let dc = test_cluster(DsmClusterSpec::default());
        let names = Names::of(&dc).expect("names");
        let running = status_of(&dc, &healthy(&names));
        let dc = dc.with_status(running);
        let mut observed = healthy(&names);
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
        let first = status_of(&dc, &healthy(&names));
        let dc = dc.with_status(first.clone());
        let plan = plan(&dc, &names, &healthy(&names), HASHES);
        let later = Timestamp::from_second(1_000_000).expect("timestamp");
        let second = compute(&dc, &names, &healthy(&names), &plan, later);
        assert_eq!(first, second);
    }

    #[test]
    fn paused_keeps_observations_and_says_so() {
        let dc = test_cluster(DsmClusterSpec::default());
        let names = Names::of(&dc).expect("names");
        let running = status_of(&dc, &healthy(&names));
        let dc = dc.with_status(running);
        let status = paused(&dc, Timestamp::UNIX_EPOCH);
        assert_eq!(status.phase, PHASE_PAUSED);
        assert_eq!(status.ready_slaves, 3);
        assert_eq!(
            condition_status(Some(&status), "Progressing"),
            Some("False")
        );
    }
}
