//! What to change, decided from what was observed: a pure function, so the day-2 rules
//! are unit-tested without an API server.
//!
//! The rules:
//! - **Scale-down is one slave at a time, drain first.** When the StatefulSet runs more
//!   slaves than the spec asks, the highest ordinal is drained through the active master
//!   (`Kv.Drain`, which returns once every key it held has other replicas) and only then
//!   is the StatefulSet shrunk by one. It is never shrunk below the write quorum.
//! - **Rollouts go slaves first, then the standby, then the active master**, one pod at a
//!   time: the StatefulSet rolls its slaves itself; an outdated master-capable pod is
//!   replaced only once the slaves are rolled out and ready, the other master-capable pod
//!   is up to date and ready, and no drain is running. Replacing the active master last
//!   makes it hand over to an up-to-date standby. Why this order, and why safety does not
//!   depend on it: [`next_master_replacement`].
//! - **The leader Service follows the lease.** The pod that `Kv.Status` reports active is
//!   labelled `active`; when neither answers, the labels stay as they were.

use dsm_wire::Role;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::crd::DsmCluster;
use crate::names::{ANNOTATION_SPEC_HASH, LABEL_ROLE, Names, Seat};
use crate::node::StatusReply;

/// What the reconciler saw of the cluster before deciding.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The slave StatefulSet, if it exists.
    pub slave_set: Option<StatefulSet>,
    /// Every pod of the cluster (master, backup, slaves, client).
    pub pods: Vec<Pod>,
    /// `Kv.Status` of the master Service, when it answered.
    pub master: Option<StatusReply>,
    /// `Kv.Status` of the backup Service, when it answered.
    pub backup: Option<StatusReply>,
    /// The claim of `spec.bootstrap.snapshot`, when a master-capable pod is to be created
    /// (it would mount the claim) and the claim does not exist. Looked up only then: a
    /// running cluster no longer needs it.
    pub missing_snapshot_claim: Option<String>,
}

impl Observed {
    /// The pod named `name`.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name_any() == name)
    }

    /// Which seat holds the lease: the one answering `active`; if both do (a moment
    /// around a failover), the higher epoch.
    pub fn active_seat(&self) -> Option<(Seat, u64)> {
        let active = |reply: &Option<StatusReply>| {
            reply
                .as_ref()
                .filter(|r| r.role() == Some(Role::Active))
                .map(|r| r.epoch)
        };
        match (active(&self.master), active(&self.backup)) {
            (Some(m), Some(b)) if b > m => Some((Seat::Backup, b)),
            (Some(m), _) => Some((Seat::Master, m)),
            (None, Some(b)) => Some((Seat::Backup, b)),
            (None, None) => None,
        }
    }
}

/// What to do with one master-capable pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeatAction {
    /// Apply the desired pod with this role (creates it, or relabels it).
    Apply(Role),
    /// Delete the pod: it is outdated and it is its turn, or it failed. The next
    /// reconcile creates its replacement.
    Replace,
    /// Leave the pod alone for now (outdated but not its turn, or terminating), or do not
    /// create it yet (the snapshot claim it would restore from is missing).
    Wait,
    /// Delete the pod: the spec no longer wants it (backup disabled).
    Remove,
    /// Nothing exists and nothing is wanted.
    Absent,
}

/// The changes one reconcile makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Replicas to apply to the slave StatefulSet.
    pub slave_replicas: i32,
    /// Slave to drain before applying `slave_replicas` (one less than now).
    pub drain: Option<String>,
    /// The master pod's action.
    pub master: SeatAction,
    /// The backup pod's action.
    pub backup: SeatAction,
    /// Deliberate changes under way (scaling, rollouts), for the Progressing condition.
    pub rollout: Vec<String>,
    /// Deliberate changes that cannot go on until something else changes (a drain that
    /// failed, no active master to drain through): the rollout is stalled, not progressing.
    pub stalled: Vec<String>,
}

impl Plan {
    /// The action for a seat.
    pub fn seat(&self, seat: Seat) -> &SeatAction {
        match seat {
            Seat::Master => &self.master,
            Seat::Backup => &self.backup,
        }
    }
}

/// Whether the spec runs a pod in `seat`: always the master, the backup unless disabled.
pub fn wanted(dc: &DsmCluster, seat: Seat) -> bool {
    seat == Seat::Master || dc.spec.backup.enabled
}

/// Whether a pod's Ready condition is true.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_failed(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
}

/// The StatefulSet has rolled out `desired` slaves of its current revision, all ready.
pub fn slaves_steady(sts: Option<&StatefulSet>, desired: i32) -> bool {
    let Some(sts) = sts else { return false };
    let (Some(spec), Some(status)) = (sts.spec.as_ref(), sts.status.as_ref()) else {
        return false;
    };
    spec.replicas == Some(desired)
        && status.observed_generation >= sts.metadata.generation
        && status.replicas == desired
        && status.ready_replicas == Some(desired)
        && status.updated_replicas == Some(desired)
        && status.current_revision == status.update_revision
}

/// The StatefulSet is still creating, scaling or updating its slaves (readiness aside:
/// a slave that dies is not a rollout).
fn slaves_rolling(sts: Option<&StatefulSet>, desired: i32) -> bool {
    let Some(sts) = sts else { return false };
    let (Some(spec), Some(status)) = (sts.spec.as_ref(), sts.status.as_ref()) else {
        return true;
    };
    spec.replicas != Some(desired)
        || status.observed_generation < sts.metadata.generation
        || status.replicas != desired
        || status.updated_replicas != Some(desired)
        || status.current_revision != status.update_revision
}

/// Which outdated master-capable pod a rollout replaces next, and whether now: of
/// `outdated` (index in `[Master, Backup]` and role), the standby before the active
/// master, one at a time, only once the slaves are `steady` (rolled out at the desired
/// count and ready) and `other_ready(index, role)` says the other pod can carry the
/// cluster meanwhile.
///
/// # The order when the slave count changes, and why it is safe
///
/// A change of `spec.slaves.replicas` (with the factor unset, of the write quorum too)
/// changes `DSM_SLAVES`/`DSM_REPLICATION_FACTOR`, so both master-capable pods become
/// outdated; slaves read neither and are not restarted.
///
/// - *Slaves first.* Scaling up creates the new slaves before any master counts them;
///   scaling down drains each removed slave through the active master while both masters
///   still count it. Either way the masters move to the new count once the StatefulSet
///   has settled at it.
/// - *Then the standby, then the active master.* The standby's replacement costs no
///   failover; the active master goes last and hands over to the standby that already
///   runs the new count. Active first would fail over to an outdated standby that then
///   has to go too: two failovers instead of one.
/// - *Safety does not rest on this order.* Each master-capable process reads its count
///   and factor once, at start, from the ConfigMap, and the ConfigMap only ever holds a
///   spec that passed [`DsmClusterSpec::validate`](crate::crd::DsmClusterSpec::validate)
///   (the factor a majority of the slaves and at most their number), so whichever
///   generation of it a pod starts with, the node accepts it and any two write quorums of
///   that master intersect. Across the one failover, the new master fences, per the
///   previous term's membership and factor recorded in the shared log directory, enough
///   slaves that every write quorum of the previous term holds a fenced one, whatever the
///   two configurations are. So a standby with the new count taking over from an active
///   master with the old one, in either direction, cannot lose an acknowledged WRITE.
/// - *The cost of the order.* While a scale-down drains, the masters keep the old,
///   larger write quorum over fewer slaves (5 → 3 slaves: every WRITE needs all 3 until
///   the masters are replaced); that window ends with the rollout.
///
/// The tests `scaling_up_rolls_the_slaves_then_the_standby_then_the_active_master` and
/// `scaling_down_drains_then_rolls_the_standby_then_the_active_master` play this out.
pub fn next_master_replacement(
    outdated: &[(usize, Role)],
    steady: bool,
    other_ready: impl Fn(usize, Role) -> bool,
) -> Option<(usize, bool)> {
    let &(i, role) = outdated
        .iter()
        .find(|(_, role)| *role != Role::Active)
        .or(outdated.first())?;
    Some((i, steady && other_ready(i, role)))
}

/// Decides the changes for `dc` given what was observed. `hashes` are the desired spec
/// hashes of the master and backup pods ([`crate::objects::master_pod_hash`]).
pub fn plan(dc: &DsmCluster, names: &Names, observed: &Observed, hashes: [&str; 2]) -> Plan {
    let spec = &dc.spec;
    let desired = spec.slaves.replicas.max(spec.write_quorum());
    let mut rollout = Vec::new();

    // Slaves: scale down one drained slave at a time, scale up at once.
    let current = observed
        .slave_set
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas);
    let (slave_replicas, drain) = match current {
        Some(current) if current > desired => {
            let slave = names.slave_pod(current - 1);
            rollout.push(format!(
                "draining slave {slave} to scale down from {current} to {desired} slaves"
            ));
            (current - 1, Some(slave))
        }
        _ => (desired, None),
    };
    let steady = drain.is_none() && slaves_steady(observed.slave_set.as_ref(), desired);
    if drain.is_none() && slaves_rolling(observed.slave_set.as_ref(), desired) {
        rollout.push(format!("rolling out {desired} slaves"));
    }

    // Master-capable pods.
    let active = observed.active_seat().map(|(seat, _)| seat);
    let seats = [Seat::Master, Seat::Backup];
    let role = |seat: Seat, pod: Option<&Pod>| match active {
        Some(a) => {
            if a == seat {
                Role::Active
            } else {
                Role::Standby
            }
        }
        // A pod without a role label, or with one this operator does not know, is
        // standby: the leader Service never points at it on a guess.
        None => pod
            .and_then(|p| p.labels().get(LABEL_ROLE))
            .and_then(|label| label.parse().ok())
            .unwrap_or(Role::Standby),
    };
    let up_to_date = |pod: &Pod, hash: &str| {
        pod.annotations()
            .get(ANNOTATION_SPEC_HASH)
            .map(String::as_str)
            == Some(hash)
    };

    let mut actions = [SeatAction::Absent, SeatAction::Absent];
    let mut outdated: Vec<(usize, Role)> = Vec::new();
    for (i, seat) in seats.into_iter().enumerate() {
        let pod = observed.pod(&names.seat(seat));
        actions[i] = match (wanted(dc, seat), pod) {
            (false, None) => SeatAction::Absent,
            (false, Some(_)) => SeatAction::Remove,
            // It would be stuck waiting for the volume: status says what is missing.
            (true, None) if observed.missing_snapshot_claim.is_some() => SeatAction::Wait,
            (true, None) => SeatAction::Apply(role(seat, None)),
            (true, Some(p)) if p.metadata.deletion_timestamp.is_some() => SeatAction::Wait,
            (true, Some(p)) if pod_failed(p) => SeatAction::Replace,
            (true, Some(p)) if up_to_date(p, hashes[i]) => SeatAction::Apply(role(seat, Some(p))),
            (true, Some(p)) => {
                outdated.push((i, role(seat, Some(p))));
                SeatAction::Wait
            }
        };
    }
    let other_ready = |i: usize, role: Role| {
        let other = 1 - i;
        // Replacing the standby needs the active master up; replacing the active master
        // needs an up-to-date standby to hand over to.
        !wanted(dc, seats[other])
            || observed.pod(&names.seat(seats[other])).is_some_and(|p| {
                pod_ready(p) && (role == Role::Standby || up_to_date(p, hashes[other]))
            })
    };
    if let Some((i, now)) = next_master_replacement(&outdated, steady, other_ready) {
        let pod = names.seat(seats[i]);
        if now {
            actions[i] = SeatAction::Replace;
            rollout.push(format!("replacing outdated pod {pod}"));
        } else {
            rollout.push(format!(
                "pod {pod} is outdated; it is replaced once the slaves and the other master are ready"
            ));
        }
    }
    let [master, backup] = actions;
    Plan {
        slave_replicas,
        drain,
        master,
        backup,
        rollout,
        stalled: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
