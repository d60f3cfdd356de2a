//! The `DsmCluster` status, computed from what was observed and planned: a pure function.
//!
//! The conditions tell the truth about the pods, not about what was last applied:
//! - **Available**: a master-capable pod reports holding the lease and at least a write
//!   quorum of slaves is ready, so WRITEs can be acknowledged.
//! - **Ready**: Available, every wanted pod ready and nothing rolling out.
//! - **Progressing**: the cluster is being created, scaled or rolled out, and can get on
//!   with it; `False` with reason `RolloutStalled` when a pod that cannot run (crash
//!   loop, image pull, scheduling) or a failed drain holds the rollout up.
//! - **Degraded**: a cluster that once ran lacks a pod or the lease holder (a dead slave
//!   or master shows up here, whatever the reason), a pod cannot run or be created
//!   (reason `SnapshotClaimMissing` when the claim of `spec.bootstrap` is missing), or the
//!   spec is one the nodes would refuse (reason `InvalidSpec`: nothing is rolled out).
//!
//! A condition's `lastTransitionTime` changes only when its status does, so a reconcile
//! that sees nothing new computes the same status and writes nothing.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::crd::{DsmCluster, DsmClusterStatus, Endpoints, SpecError};
use crate::names::{Names, Seat};
use crate::plan::{Observed, Plan, pod_ready, wanted};

/// Phase while the cluster has never been ready.
pub const PHASE_CREATING: &str = "Creating";
/// Phase when everything is ready.
pub const PHASE_RUNNING: &str = "Running";
/// Phase while a deliberate change (scaling, rollout) is under way and progressing.
pub const PHASE_UPDATING: &str = "Updating";
/// Phase when pods are missing, unready or failing, a rollout is stalled, or the spec is
/// one the nodes would refuse.
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

/// Waiting reasons of a container that does not get going by itself: the pod needs a
/// fix (an image, a Secret, a configuration) or keeps failing.
const STUCK_WAITING: [&str; 7] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Longest excerpt of a container's error carried into a condition message.
const MAX_ERROR_CHARS: usize = 512;

/// A pod of the cluster that cannot run: a container crash-looping or stuck waiting, or
/// the pod unschedulable; or master pods that cannot be created ([`missing_claim`]). A
/// rollout waiting on it makes no progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFailure {
    /// Kubernetes' word for it (`CrashLoopBackOff`, `ImagePullBackOff`,
    /// `Unschedulable`…), the Degraded condition's reason.
    pub reason: String,
    /// One line for people: the pod, what is wrong, and the container's last error.
    pub message: String,
}

/// Reason of the Degraded condition (and of the Warning Event) while master pods are not
/// created because the snapshot claim of `spec.bootstrap` is missing.
pub const REASON_SNAPSHOT_CLAIM_MISSING: &str = "SnapshotClaimMissing";

/// Why master pods are not created: the snapshot `claim` they would restore from is
/// missing (they would wait for the volume without a word of why in the DsmCluster).
pub fn missing_claim(claim: &str) -> PodFailure {
    PodFailure {
        reason: REASON_SNAPSHOT_CLAIM_MISSING.to_string(),
        message: format!(
            "the PersistentVolumeClaim {claim} of spec.bootstrap.snapshot does not exist: \
             the master pods restore their log from it and are not created until it does \
             (create it, or remove spec.bootstrap)"
        ),
    }
}

/// The line of a container's termination message worth showing: with
/// `terminationMessagePolicy: FallbackToLogsOnError` that message is the tail of its log,
/// so take the last line that mentions an error (the `dsm` binary's last words), else
/// the last line.
fn last_error_line(text: &str) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = lines
        .iter()
        .rev()
        .find(|l| l.to_ascii_lowercase().contains("error"))
        .or(lines.last())?;
    Some(line.chars().take(MAX_ERROR_CHARS).collect())
}

/// Why `pod` cannot run, if it cannot: a container waiting for a reason that needs a
/// fix, a container that is not ready and whose last run failed (a crash loop between
/// two back-offs), or a pod the scheduler cannot place.
pub fn pod_failure(pod: &Pod) -> Option<PodFailure> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let name = pod.name_any();
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .chain(status.container_statuses.iter())
        .flatten();
    for c in containers {
        let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
        let waiting_reason = waiting
            .and_then(|w| w.reason.as_deref())
            .unwrap_or_default();
        let last_failure = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .filter(|t| t.exit_code != 0);
        if let Some(last) = last_failure.filter(|_| !c.ready) {
            let detail = match last.message.as_deref().and_then(last_error_line) {
                Some(line) => format!("exit code {}: {line}", last.exit_code),
                None => format!(
                    "exit code {} ({})",
                    last.exit_code,
                    last.reason.as_deref().unwrap_or("Error")
                ),
            };
            return Some(PodFailure {
                reason: "CrashLoopBackOff".to_string(),
                message: format!(
                    "pod {name} is crash-looping (container {}, {} restart{}), last {detail}",
                    c.name,
                    c.restart_count,
                    if c.restart_count == 1 { "" } else { "s" }
                ),
            });
        }
        if STUCK_WAITING.contains(&waiting_reason) {
            let detail = waiting
                .and_then(|w| w.message.as_deref())
                .and_then(last_error_line)
                .unwrap_or_default();
            return Some(PodFailure {
                reason: waiting_reason.to_string(),
                message: format!(
                    "pod {name} is {waiting_reason} (container {}): {detail}",
                    c.name
                ),
            });
        }
    }
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    })?;
    Some(PodFailure {
        reason: "Unschedulable".to_string(),
        message: format!(
            "pod {name} cannot be scheduled: {}",
            unschedulable
                .message
                .as_deref()
                .unwrap_or("no node fits it")
        ),
    })
}

/// `parts` that are not empty, joined for one condition message.
fn sentence(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("; ")
}

/// Computes the status from the observations and the plan made from them.
///
/// The phase is `Updating` only while the rollout can make progress: a pod that cannot
/// run (crash loop, image pull, scheduling) or a drain that failed stalls it, and the
/// phase turns `Degraded` with the pod's own error in the Degraded condition.
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
    let failures: Vec<PodFailure> = observed
        .missing_snapshot_claim
        .as_deref()
        .map(missing_claim)
        .into_iter()
        .chain(observed.pods.iter().filter_map(pod_failure))
        .collect();

    // Everything that keeps the cluster from full redundancy.
    let mut lacking = Vec::new();
    if active.is_none() {
        lacking.push("no master-capable pod reports holding the lease".to_string());
    }
    for seat in [Seat::Master, Seat::Backup] {
        if !wanted(dc, seat) {
            continue;
        }
        let name = names.seat(seat);
        match observed.pod(&name) {
            None => lacking.push(format!("pod {name} is missing")),
            Some(p) if !pod_ready(p) && pod_failure(p).is_none() => {
                lacking.push(format!("pod {name} is not ready"));
            }
            Some(_) => {}
        }
    }
    if ready_slaves < desired {
        lacking.push(format!("{ready_slaves}/{desired} slaves ready"));
    }
    // Pod failures first: they are what a person has to fix.
    let mut stalled: Vec<String> = failures.iter().map(|f| f.message.clone()).collect();
    stalled.extend(plan.stalled.iter().cloned());

    let rolling_out = !plan.rollout.is_empty() || !plan.stalled.is_empty();
    let progressing = rolling_out && stalled.is_empty();
    let available = active.is_some() && ready_slaves >= quorum;
    let ready = available && lacking.is_empty() && !rolling_out && failures.is_empty();
    let ever_ran = !matches!(previous_phase(dc), "" | PHASE_CREATING);
    let creating = !ever_ran && !ready && stalled.is_empty();
    let degraded = (ever_ran && !lacking.is_empty()) || !stalled.is_empty();
    let phase = if ready {
        PHASE_RUNNING
    } else if creating {
        PHASE_CREATING
    } else if !available && ever_ran {
        PHASE_UNAVAILABLE
    } else if progressing {
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
    let stalled_text = stalled.join("; ");
    let rollout_text = plan.rollout.join("; ");
    let conditions = vec![
        condition(
            "Ready",
            ready,
            if ready { "AllReady" } else { "NotReady" },
            if ready {
                summary.clone()
            } else {
                sentence(&[&stalled_text, &lacking_text, &rollout_text])
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
            progressing || creating,
            if progressing {
                "RollingOut"
            } else if creating {
                "Creating"
            } else if rolling_out {
                "RolloutStalled"
            } else {
                "Complete"
            },
            if progressing {
                rollout_text.clone()
            } else if creating {
                "waiting for the pods to become ready".to_string()
            } else if rolling_out {
                sentence(&[&format!("stalled: {stalled_text}"), &rollout_text])
            } else {
                "the cluster matches its spec".to_string()
            },
            dc,
            now,
        ),
        condition(
            "Degraded",
            degraded,
            if !degraded {
                "AsExpected"
            } else if let Some(failure) = failures.first() {
                failure.reason.as_str()
            } else if !plan.stalled.is_empty() {
                "RolloutStalled"
            } else if rolling_out {
                "RollingOut"
            } else {
                "PodsNotReady"
            },
            if !degraded {
                "every wanted pod is ready".to_string()
            } else if ever_ran {
                sentence(&[&stalled_text, &lacking_text])
            } else {
                // Still creating: whatever else is missing is expected.
                stalled_text
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
mod tests;
