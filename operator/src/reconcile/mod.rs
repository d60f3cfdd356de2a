//! The reconcile loop: observe, plan, apply, report.
//!
//! A spec the nodes would refuse ([`DsmClusterSpec::validate`](crate::crd::DsmClusterSpec::validate))
//! is not reconciled at all: the status says why (`Degraded`, reason `InvalidSpec`) and a
//! Warning Event is published, and the cluster keeps running as it was.
//!
//! Every object (and the status) is written with server-side apply under the one field
//! manager [`MANAGER`], so a reconcile that finds nothing new sends the same patches
//! again, which the API server turns into no-ops, and writes no status. The order of a
//! reconcile:
//!
//! 1. apply the ConfigMap, the log PVC, the Services, the PodDisruptionBudget and the
//!    NetworkPolicies; with TLS, create the CA and issue or renew the member certificate
//!    (unless the user brings their own Secret); read what dialling the nodes takes (CA,
//!    token) from the cluster's Secrets (both in `reconcile/access.rs`);
//! 2. read the slave StatefulSet and the cluster's pods (and, when a master-capable pod
//!    is to be created from `spec.bootstrap`, its snapshot claim), and ask both
//!    master-capable nodes for `Kv.Status`;
//! 3. [`plan`] the changes; drain a slave through the active master if scaling down;
//! 4. apply the StatefulSet, create, relabel or replace the master-capable pods, apply
//!    or remove the client and the ServiceMonitor;
//! 5. write the [`status`] if it changed, and publish Events for what
//!    happened (failover, drain, pod replacement, degradation and recovery).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, ObjectReference, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};

use crate::crd::{DsmCluster, DsmClusterStatus, GROUP, SpecError};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::names::{MANAGER, Names, Seat};
use crate::netpol;
use crate::node::{self, NodeApi};
use crate::objects;
use crate::plan::{self, Observed, Plan, SeatAction};
use crate::status::{self, condition_status};

mod access;

use access::{Access, node_access};

/// How soon to look again while something is changing (pods starting, a rollout).
const REQUEUE_BUSY: Duration = Duration::from_secs(5);
/// How soon to look again when all is well: the leader label and the status must follow
/// failovers even when no Kubernetes object changes.
const REQUEUE_IDLE: Duration = Duration::from_secs(30);
/// How soon to retry after an error.
const REQUEUE_ERROR: Duration = Duration::from_secs(15);

/// What every reconcile shares.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Events on the DsmCluster.
    pub recorder: Recorder,
    /// The operator's own metrics.
    pub metrics: Arc<Metrics>,
    /// The DSM nodes' gRPC API.
    pub nodes: Arc<dyn NodeApi>,
    /// Whether the Prometheus Operator's ServiceMonitor CRD exists (checked at start-up).
    pub service_monitor_crd: bool,
    /// The operator's own namespace, which the NetworkPolicies let through to the
    /// masters; `None` (running outside the cluster) lets any namespace's operator pod in.
    pub operator_namespace: Option<String>,
}

/// Reconciles one DsmCluster. See the module documentation for the order of steps.
///
/// # Errors
/// Any API call that fails; node calls that fail are reported in the status instead.
#[instrument(skip_all, fields(cluster = %dc.name_any(), namespace = dc.namespace().unwrap_or_default()))]
pub async fn reconcile(dc: Arc<DsmCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.count_and_measure();
    let names = Names::of(&dc)?;
    let client = ctx.client.clone();
    let ns = names.namespace.as_str();

    if dc.spec.paused {
        let status = status::paused(&dc, Timestamp::now());
        write_status(&Api::namespaced(client, ns), &dc, status).await?;
        return Ok(Action::await_change());
    }
    if let Err(error) = dc.spec.validate() {
        return refuse(&dc, &ctx, ns, &error).await;
    }

    // 1. Objects that do not depend on observations.
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), ns),
        &objects::config_map(&dc, &names)?,
    )
    .await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    apply(&claims, &objects::log_pvc(&dc, &names)?).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    apply(
        &services,
        &objects::seat_service(&dc, &names, Seat::Master)?,
    )
    .await?;
    if dc.spec.backup.enabled {
        apply(
            &services,
            &objects::seat_service(&dc, &names, Seat::Backup)?,
        )
        .await?;
    } else {
        delete(&services, &names.seat(Seat::Backup)).await?;
    }
    apply(&services, &objects::leader_service(&dc, &names)?).await?;
    apply(&services, &objects::slaves_service(&dc, &names)?).await?;
    apply(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
        &objects::pod_disruption_budget(&dc, &names)?,
    )
    .await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    if dc.spec.network_policy.enabled {
        apply(&policies, &netpol::slaves_policy(&dc, &names)?).await?;
        let masters = netpol::masters_policy(&dc, &names, ctx.operator_namespace.as_deref())?;
        apply(&policies, &masters).await?;
    } else {
        delete(&policies, &names.slaves_policy()).await?;
        delete(&policies, &names.masters_policy()).await?;
    }
    let mut events = Vec::new();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let access = node_access(&secrets, &dc, &names, &mut events).await?;
    if let Err(why) = &access {
        warn!(%why, "cannot dial the nodes yet");
    }

    // 2. Observe.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let slave_set = sets
        .get_opt(&names.slave_set())
        .await
        .map_err(Error::Kube)?;
    let pod_list = pods
        .list(&ListParams::default().labels(&names.pod_selector()))
        .await
        .map_err(Error::Kube)?;
    let missing_snapshot_claim =
        missing_snapshot_claim(&claims, &dc, &names, &pod_list.items).await?;
    let observed = Observed {
        slave_set,
        pods: pod_list.items,
        missing_snapshot_claim,
        master: node_status(&*ctx.nodes, &names.seat_address(Seat::Master), &access).await,
        backup: if dc.spec.backup.enabled {
            node_status(&*ctx.nodes, &names.seat_address(Seat::Backup), &access).await
        } else {
            None
        },
    };

    // 3. Plan, and drain before shrinking.
    let hashes = [
        objects::master_pod_hash(&dc, &names, Seat::Master)?,
        objects::master_pod_hash(&dc, &names, Seat::Backup)?,
    ];
    let mut plan = plan::plan(&dc, &names, &observed, [&hashes[0], &hashes[1]]);
    if let Some(slave) = plan.drain.clone() {
        let drained = drain(&dc, &names, &observed, &ctx, &access, &slave, &mut plan).await;
        events.extend(drained);
    }

    // 4. Apply what depends on the observations.
    apply(
        &sets,
        &objects::slave_set(&dc, &names, plan.slave_replicas)?,
    )
    .await?;
    for seat in [Seat::Master, Seat::Backup] {
        let name = names.seat(seat);
        match plan.seat(seat) {
            SeatAction::Apply(role) => {
                // The API server refuses any change of a pod's init containers and
                // volumes: an existing pod keeps the restore it was created with.
                let restore = match observed.pod(&name) {
                    Some(pod) => objects::restored_from(pod),
                    None => dc.spec.bootstrap_snapshot().cloned(),
                };
                let pod = objects::master_pod(&dc, &names, seat, *role, restore.as_ref())?;
                apply(&pods, &pod).await?;
            }
            SeatAction::Replace => {
                info!(pod = %name, "replacing outdated or failed pod");
                delete(&pods, &name).await?;
                events.push(pod_event(
                    EventType::Normal,
                    "ReplacingPod",
                    "Rollout",
                    &names,
                    &name,
                    format!("deleted pod {name} to recreate it with the current spec"),
                ));
            }
            SeatAction::Remove => delete(&pods, &name).await?,
            SeatAction::Wait | SeatAction::Absent => {}
        }
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    if dc.spec.client.enabled {
        apply(&deployments, &objects::client_deployment(&dc, &names)?).await?;
    } else {
        delete(&deployments, &names.client()).await?;
    }
    if ctx.service_monitor_crd {
        let monitors: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &objects::service_monitor_resource());
        if dc.spec.metrics.service_monitor {
            apply(&monitors, &objects::service_monitor(&dc, &names)?).await?;
        } else {
            delete(&monitors, &names.service_monitor()).await?;
        }
    } else if dc.spec.metrics.service_monitor {
        warn!("spec.metrics.serviceMonitor is set but the ServiceMonitor CRD is not installed");
    }

    // 5. Report.
    let new_status = status::compute(&dc, &names, &observed, &plan, Timestamp::now());
    events.extend(transition_events(dc.status.as_ref(), &new_status));
    let busy = new_status.phase != status::PHASE_RUNNING;
    write_status(&Api::namespaced(client, ns), &dc, new_status).await?;
    for ev in events {
        ctx.recorder
            .publish(&ev, &dc.object_ref(&()))
            .await
            .map_err(Error::Kube)?;
    }
    Ok(Action::requeue(if busy {
        REQUEUE_BUSY
    } else {
        REQUEUE_IDLE
    }))
}

/// Rolls nothing out of a spec the nodes would refuse (a master started with it would
/// crash-loop): says why in the status and, when that is news, in a Warning Event. The
/// next reconcile comes with the next change of the spec.
async fn refuse(dc: &DsmCluster, ctx: &Context, ns: &str, error: &SpecError) -> Result<Action> {
    warn!(%error, "invalid spec: not rolling it out");
    let status = status::invalid(dc, error, Timestamp::now());
    let news = dc.status.as_ref() != Some(&status);
    write_status(&Api::namespaced(ctx.client.clone(), ns), dc, status).await?;
    if news {
        let warning = event(
            EventType::Warning,
            status::REASON_INVALID_SPEC,
            "Validate",
            status::refusal(error),
        );
        ctx.recorder
            .publish(&warning, &dc.object_ref(&()))
            .await
            .map_err(Error::Kube)?;
    }
    Ok(Action::await_change())
}

/// Decides the requeue after a failed reconcile, and counts the failure by kind.
pub fn error_policy(dc: Arc<DsmCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(cluster = %dc.name_any(), %error, "reconcile failed");
    ctx.metrics.reconcile_failure(error);
    Action::requeue(REQUEUE_ERROR)
}

/// The claim of `spec.bootstrap.snapshot` when a master-capable pod is to be created,
/// which would mount it, and the claim does not exist. Not looked up while both pods
/// exist: they have restored already, and a claim deleted since hinders nothing.
///
/// # Errors
/// The API call failing.
async fn missing_snapshot_claim(
    claims: &Api<PersistentVolumeClaim>,
    dc: &DsmCluster,
    names: &Names,
    pods: &[Pod],
) -> Result<Option<String>> {
    let Some(snapshot) = dc.spec.bootstrap_snapshot() else {
        return Ok(None);
    };
    let creating = [Seat::Master, Seat::Backup].into_iter().any(|seat| {
        let name = names.seat(seat);
        plan::wanted(dc, seat) && !pods.iter().any(|p| p.name_any() == name)
    });
    if !creating {
        return Ok(None);
    }
    let claim = claims
        .get_opt(&snapshot.claim_name)
        .await
        .map_err(Error::Kube)?;
    Ok(claim.is_none().then(|| snapshot.claim_name.clone()))
}

/// `Kv.Status` of a node, or `None` (logged) when it cannot answer: a node that is down
/// or still starting, or that cannot be dialled yet for lack of credentials, is an
/// observation, not a reconcile failure.
async fn node_status(
    nodes: &dyn NodeApi,
    address: &str,
    access: &Access,
) -> Option<node::StatusReply> {
    let credentials = access.as_ref().ok()?;
    match nodes.status(address, credentials).await {
        Ok(reply) => Some(reply),
        Err(error) => {
            info!(%address, %error, "node status unavailable");
            None
        }
    }
}

/// Drains `slave` through the active master; on failure keeps the StatefulSet's size
/// (the slave must not go while it holds the only copy of some keys) and says why.
/// Returns the Event to publish, if any.
async fn drain(
    dc: &DsmCluster,
    names: &Names,
    observed: &Observed,
    ctx: &Context,
    access: &Access,
    slave: &str,
    plan: &mut Plan,
) -> Option<Event> {
    let Some((seat, _)) = observed.active_seat() else {
        plan.slave_replicas += 1;
        plan.stalled
            .push(format!("cannot drain {slave}: no active master"));
        return None;
    };
    let result = match access {
        Ok(credentials) => ctx
            .nodes
            .drain(&names.seat_address(seat), slave, credentials)
            .await
            .map_err(|e| e.to_string()),
        Err(why) => Err(why.clone()),
    };
    match result {
        Ok(reply) => {
            info!(%slave, moved_keys = reply.moved_keys, "drained slave");
            Some(pod_event(
                EventType::Normal,
                "DrainedSlave",
                "ScaleDown",
                names,
                slave,
                format!(
                    "moved {} keys off {slave}; scaling slaves down to {} (target {})",
                    reply.moved_keys, plan.slave_replicas, dc.spec.slaves.replicas
                ),
            ))
        }
        Err(error) => {
            warn!(%slave, %error, "drain failed; not scaling down");
            plan.slave_replicas += 1;
            plan.stalled
                .push(format!("draining {slave} failed: {error}"));
            Some(pod_event(
                EventType::Warning,
                "DrainFailed",
                "ScaleDown",
                names,
                slave,
                format!("cannot drain {slave}, keeping it: {error}"),
            ))
        }
    }
}

fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    }
}

/// An Event about one pod of the cluster, which it names as its `related` object.
///
/// kube's [`Recorder`] folds Events of the same type, reason and action about the same
/// objects into one series, keeping the first one's note: two slaves drained one after
/// the other would show as the first one, twice. The pod reference tells them apart.
fn pod_event(
    type_: EventType,
    reason: &str,
    action: &str,
    names: &Names,
    pod: &str,
    note: String,
) -> Event {
    Event {
        secondary: Some(ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("Pod".to_string()),
            name: Some(pod.to_string()),
            namespace: Some(names.namespace.clone()),
            ..ObjectReference::default()
        }),
        ..event(type_, reason, action, note)
    }
}

/// Events for changes between the previous status and the new one: degradation,
/// recovery, a missing snapshot claim and failover.
fn transition_events(old: Option<&DsmClusterStatus>, new: &DsmClusterStatus) -> Vec<Event> {
    let mut events = Vec::new();
    let degraded = |s: Option<&DsmClusterStatus>| condition_status(s, "Degraded") == Some("True");
    let message = |type_: &str| {
        new.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    match (degraded(old), degraded(Some(new))) {
        (false, true) => events.push(event(
            EventType::Warning,
            "Degraded",
            "Observe",
            message("Degraded"),
        )),
        (true, false) => events.push(event(
            EventType::Normal,
            "Recovered",
            "Observe",
            message("Ready"),
        )),
        _ => {}
    }
    // The generic Degraded Event comes only with the transition; a missing snapshot claim
    // gets one of its own whenever it becomes the reason, naming the claim.
    let degraded_reason = |s: Option<&DsmClusterStatus>| {
        s?.conditions
            .iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True")
            .map(|c| c.reason.clone())
    };
    let claim_missing = Some(status::REASON_SNAPSHOT_CLAIM_MISSING.to_string());
    if degraded_reason(Some(new)) == claim_missing && degraded_reason(old) != claim_missing {
        events.push(event(
            EventType::Warning,
            status::REASON_SNAPSHOT_CLAIM_MISSING,
            "Observe",
            message("Degraded"),
        ));
    }
    let moved = old
        .and_then(|s| s.active_master.as_deref())
        .zip(new.active_master.as_deref())
        .filter(|(before, after)| before != after);
    if let Some((before, after)) = moved {
        events.push(event(
            EventType::Normal,
            "Failover",
            "Observe",
            format!(
                "the active master moved from {before} to {after} (epoch {})",
                new.epoch.unwrap_or_default()
            ),
        ));
    }
    events
}

/// Server-side applies `object` under [`MANAGER`], taking over fields others set.
async fn apply<K>(api: &Api<K>, object: &K) -> Result<K>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = object
        .meta()
        .name
        .as_deref()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(Error::Kube)
}

/// Deletes an object; one that is already gone is fine.
async fn delete<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(error) => Err(Error::Kube(error)),
    }
}

/// Writes the status with server-side apply, unless it is unchanged.
async fn write_status(
    api: &Api<DsmCluster>,
    dc: &DsmCluster,
    status: DsmClusterStatus,
) -> Result<()> {
    if dc.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": format!("{GROUP}/v1alpha1"),
        "kind": "DsmCluster",
        "status": status,
    });
    api.patch_status(
        &dc.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(())
}

#[cfg(test)]
mod tests;
