//! The reconcile loop: observe, plan, apply, report.
//!
//! Every object (and the status) is written with server-side apply under the one field
//! manager [`MANAGER`], so a reconcile that finds nothing new sends the same patches
//! again, which the API server turns into no-ops, and writes no status. The order of a
//! reconcile:
//!
//! 1. apply the ConfigMap, the log PVC, the Services and the PodDisruptionBudget;
//! 2. read the slave StatefulSet and the cluster's pods, and ask both master-capable
//!    nodes for `Kv.Status`;
//! 3. [`plan`] the changes; drain a slave through the active master if scaling down;
//! 4. apply the StatefulSet, create, relabel or replace the master-capable pods, apply
//!    or remove the client and the ServiceMonitor;
//! 5. write the [`status`](crate::status) if it changed, and publish Events for what
//!    happened (failover, drain, pod replacement, degradation and recovery).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};

use crate::crd::{DsmCluster, DsmClusterStatus, GROUP};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::node::NodeApi;
use crate::objects::{self, MANAGER, Names, Seat};
use crate::plan::{Observed, Plan, SeatAction, plan};
use crate::status::{self, condition_status};

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

    // 1. Objects that do not depend on observations.
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), ns),
        &objects::config_map(&dc, &names)?,
    )
    .await?;
    apply(
        &Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns),
        &objects::log_pvc(&dc, &names)?,
    )
    .await?;
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
    let observed = Observed {
        slave_set,
        pods: pod_list.items,
        master: node_status(&*ctx.nodes, &names.seat_address(Seat::Master)).await,
        backup: if dc.spec.backup.enabled {
            node_status(&*ctx.nodes, &names.seat_address(Seat::Backup)).await
        } else {
            None
        },
    };

    // 3. Plan, and drain before shrinking.
    let hashes = [
        objects::master_pod_hash(&dc, &names, Seat::Master)?,
        objects::master_pod_hash(&dc, &names, Seat::Backup)?,
    ];
    let mut plan = plan(&dc, &names, &observed, [&hashes[0], &hashes[1]]);
    let mut events = Vec::new();
    if let Some(slave) = plan.drain.clone() {
        drain(&dc, &names, &observed, &ctx, &slave, &mut plan, &mut events).await;
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
                apply(&pods, &objects::master_pod(&dc, &names, seat, *role)?).await?;
            }
            SeatAction::Replace => {
                info!(pod = %name, "replacing outdated or failed pod");
                delete(&pods, &name).await?;
                events.push(event(
                    EventType::Normal,
                    "ReplacingPod",
                    "Rollout",
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

/// Decides the requeue after a failed reconcile, and counts the failure by kind.
pub fn error_policy(dc: Arc<DsmCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(cluster = %dc.name_any(), %error, "reconcile failed");
    ctx.metrics.reconcile_failure(error);
    Action::requeue(REQUEUE_ERROR)
}

/// `Kv.Status` of a node, or `None` (logged) when it cannot answer: a node that is down
/// or still starting is an observation, not a reconcile failure.
async fn node_status(nodes: &dyn NodeApi, address: &str) -> Option<crate::node::StatusReply> {
    match nodes.status(address).await {
        Ok(reply) => Some(reply),
        Err(error) => {
            info!(%address, %error, "node status unavailable");
            None
        }
    }
}

/// Drains `slave` through the active master; on failure keeps the StatefulSet's size
/// (the slave must not go while it holds the only copy of some keys) and says why.
async fn drain(
    dc: &DsmCluster,
    names: &Names,
    observed: &Observed,
    ctx: &Context,
    slave: &str,
    plan: &mut Plan,
    events: &mut Vec<Event>,
) {
    let Some((seat, _)) = observed.active_seat() else {
        plan.slave_replicas += 1;
        plan.rollout
            .push(format!("cannot drain {slave}: no active master"));
        return;
    };
    let address = names.seat_address(seat);
    match ctx.nodes.drain(&address, slave).await {
        Ok(reply) => {
            info!(%slave, moved_keys = reply.moved_keys, "drained slave");
            events.push(event(
                EventType::Normal,
                "DrainedSlave",
                "ScaleDown",
                format!(
                    "moved {} keys off {slave}; scaling slaves down to {} (target {})",
                    reply.moved_keys, plan.slave_replicas, dc.spec.slaves.replicas
                ),
            ));
        }
        Err(error) => {
            warn!(%slave, %error, "drain failed; not scaling down");
            plan.slave_replicas += 1;
            plan.rollout
                .push(format!("draining {slave} failed: {error}"));
            events.push(event(
                EventType::Warning,
                "DrainFailed",
                "ScaleDown",
                format!("cannot drain {slave}, keeping it: {error}"),
            ));
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

/// Events for changes between the previous status and the new one: degradation,
/// recovery and failover.
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
mod tests {
    use super::*;
    use crate::crd::DsmClusterSpec;
    use crate::fixtures::{
        Call, FakeNodes, active_status, ready_slave_set, seat_pod, test_cluster,
    };
    use crate::objects::Role;

    /// Runs one reconcile against a mocked API server and returns the calls it made.
    async fn reconcile_once(
        dc: &DsmCluster,
        slave_set: Option<StatefulSet>,
        pods: Vec<Pod>,
        nodes: Arc<FakeNodes>,
    ) -> Vec<Call> {
        let (ctx, server) = Context::test(dc, slave_set, pods, nodes);
        let server = server.run();
        reconcile(Arc::new(dc.clone()), ctx)
            .await
            .expect("reconcile succeeds");
        // The context (and with it every client) is gone: the server sees the end.
        server.await.expect("api server task")
    }

    fn lines(calls: &[Call]) -> Vec<String> {
        calls.iter().map(Call::line).collect()
    }

    fn body<'a>(calls: &'a [Call], line: &str) -> &'a serde_json::Value {
        calls
            .iter()
            .find(|c| c.line() == line)
            .and_then(|c| c.body.as_ref())
            .unwrap_or_else(|| panic!("no call `{line}` with a body"))
    }

    const SSA: &str = "?&force=true&fieldManager=dsm-operator";

    /// Every apply a reconcile of a default cluster makes, in order, around its reads.
    fn default_calls() -> Vec<String> {
        let core = "/api/v1/namespaces/testns";
        let apps = "/apis/apps/v1/namespaces/testns";
        vec![
            format!("PATCH {core}/configmaps/test-config{SSA}"),
            format!("PATCH {core}/persistentvolumeclaims/test-log{SSA}"),
            format!("PATCH {core}/services/test-master{SSA}"),
            format!("PATCH {core}/services/test-backup{SSA}"),
            format!("PATCH {core}/services/test-leader{SSA}"),
            format!("PATCH {core}/services/test-slaves{SSA}"),
            format!(
                "PATCH /apis/policy/v1/namespaces/testns/poddisruptionbudgets/test-slaves{SSA}"
            ),
            format!("GET {apps}/statefulsets/test-slave"),
            format!(
                "GET {core}/pods?&labelSelector=app.kubernetes.io%2Fname%3Ddsm%2Capp.kubernetes.io%2Finstance%3Dtest"
            ),
            format!("PATCH {apps}/statefulsets/test-slave{SSA}"),
            format!("PATCH {core}/pods/test-master{SSA}"),
            format!("PATCH {core}/pods/test-backup{SSA}"),
            format!("PATCH {apps}/deployments/test-client{SSA}"),
        ]
    }

    const STATUS: &str = "PATCH /apis/dsm.io/v1alpha1/namespaces/testns/dsmclusters/test/status?&force=true&fieldManager=dsm-operator";
    const EVENT: &str = "POST /apis/events.k8s.io/v1/namespaces/testns/events?";

    /// A running cluster: master active at epoch 1, backup standby, both up to date and
    /// ready; `ready` of `replicas` slaves ready.
    fn running(
        dc: &DsmCluster,
        replicas: i32,
        ready: i32,
    ) -> (StatefulSet, Vec<Pod>, Arc<FakeNodes>) {
        let names = Names::of(dc).expect("names");
        let hash = |seat| objects::master_pod_hash(dc, &names, seat).expect("hash");
        let pods = vec![
            seat_pod(
                &names,
                Seat::Master,
                &hash(Seat::Master),
                Role::Active,
                true,
            ),
            seat_pod(
                &names,
                Seat::Backup,
                &hash(Seat::Backup),
                Role::Standby,
                true,
            ),
        ];
        let nodes = FakeNodes {
            statuses: [(names.seat_address(Seat::Master), active_status(&names, 1))].into(),
            ..FakeNodes::default()
        };
        (ready_slave_set(replicas, ready), pods, Arc::new(nodes))
    }

    /// The status the reconciler writes for `dc` in the given state.
    async fn status_after(
        dc: &DsmCluster,
        sts: StatefulSet,
        pods: Vec<Pod>,
        nodes: Arc<FakeNodes>,
    ) -> DsmClusterStatus {
        let calls = reconcile_once(dc, Some(sts), pods, nodes).await;
        serde_json::from_value(body(&calls, STATUS)["status"].clone()).expect("status")
    }

    #[tokio::test]
    async fn create_applies_every_object_then_reports_creating() {
        let dc = test_cluster(DsmClusterSpec::default());
        let calls = reconcile_once(&dc, None, vec![], Arc::default()).await;

        let mut expected = default_calls();
        expected.push(STATUS.to_string());
        assert_eq!(lines(&calls), expected);

        let sts = body(
            &calls,
            &format!("PATCH /apis/apps/v1/namespaces/testns/statefulsets/test-slave{SSA}"),
        );
        assert_eq!(sts["spec"]["replicas"], 3);
        assert_eq!(sts["metadata"]["ownerReferences"][0]["kind"], "DsmCluster");
        // No node answers yet: both pods start as standby; the leader Service selects none.
        let master = body(
            &calls,
            &format!("PATCH /api/v1/namespaces/testns/pods/test-master{SSA}"),
        );
        assert_eq!(master["metadata"]["labels"]["dsm.io/role"], "standby");
        let status = &body(&calls, STATUS)["status"];
        assert_eq!(status["phase"], "Creating");
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(
            status["selector"],
            "app.kubernetes.io/name=dsm,app.kubernetes.io/instance=test,app.kubernetes.io/component=slave"
        );
    }

    #[tokio::test]
    async fn reconcile_is_a_no_op_once_the_status_is_written() {
        let dc = test_cluster(DsmClusterSpec::default());
        let (sts, pods, nodes) = running(&dc, 3, 3);
        let first = reconcile_once(&dc, Some(sts.clone()), pods.clone(), nodes.clone()).await;
        let status: DsmClusterStatus =
            serde_json::from_value(body(&first, STATUS)["status"].clone()).expect("status");
        assert_eq!(status.phase, status::PHASE_RUNNING);
        assert_eq!(status.active_master.as_deref(), Some("test-master"));

        let dc = dc.with_status(status);
        let second = reconcile_once(&dc, Some(sts), pods, nodes).await;
        // The same applies with the same bodies; no status write, no Event.
        assert_eq!(lines(&second), default_calls());
        for (a, b) in first.iter().zip(&second) {
            assert_eq!(a.body, b.body, "{}", a.line());
        }
    }

    #[tokio::test]
    async fn a_dead_slave_turns_the_status_degraded_with_an_event() {
        let dc = test_cluster(DsmClusterSpec::default());
        let (sts, pods, nodes) = running(&dc, 3, 3);
        let dc = dc
            .clone()
            .with_status(status_after(&dc, sts, pods.clone(), nodes.clone()).await);

        let calls = reconcile_once(&dc, Some(ready_slave_set(3, 2)), pods, nodes).await;
        let mut expected = default_calls();
        expected.extend([STATUS.to_string(), EVENT.to_string()]);
        assert_eq!(lines(&calls), expected);

        let status = &body(&calls, STATUS)["status"];
        assert_eq!(status["phase"], "Degraded");
        assert_eq!(status["readySlaves"], 2);
        let degraded = status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Degraded"))
            .expect("Degraded condition");
        assert_eq!(degraded["status"], "True");
        assert_eq!(degraded["message"], "2/3 slaves ready");
        let event = body(&calls, EVENT);
        assert_eq!(event["reason"], "Degraded");
        assert_eq!(event["type"], "Warning");
    }

    #[tokio::test]
    async fn scale_down_drains_the_last_slave_then_shrinks_the_statefulset() {
        let dc = test_cluster(DsmClusterSpec::default());
        let (sts, pods, nodes) = running(&dc, 3, 3);
        let status = status_after(&dc, sts.clone(), pods.clone(), nodes.clone()).await;
        let mut spec = DsmClusterSpec::default();
        spec.slaves.replicas = 2;
        let mut dc = test_cluster(spec).with_status(status);
        dc.metadata.generation = Some(2);

        let calls = reconcile_once(&dc, Some(sts), pods, nodes.clone()).await;
        let drains = nodes.drains.lock().expect("drains").clone();
        assert_eq!(
            drains,
            vec![(
                "test-master.testns.svc:12345".to_string(),
                "test-slave-2".to_string()
            )]
        );
        // The master-capable pods read DSM_SLAVES, so they are outdated now, but they
        // wait (no apply) until the slaves have settled at the new size.
        let mut expected: Vec<String> = default_calls()
            .into_iter()
            .filter(|line| !line.contains("/pods/test-"))
            .collect();
        expected.extend([STATUS.to_string(), EVENT.to_string()]);
        assert_eq!(lines(&calls), expected);
        let sts = body(
            &calls,
            &format!("PATCH /apis/apps/v1/namespaces/testns/statefulsets/test-slave{SSA}"),
        );
        assert_eq!(sts["spec"]["replicas"], 2);
        assert_eq!(body(&calls, EVENT)["reason"], "DrainedSlave");
        assert_eq!(body(&calls, STATUS)["status"]["phase"], "Updating");
    }

    #[tokio::test]
    async fn paused_writes_only_the_status() {
        let spec = DsmClusterSpec {
            paused: true,
            ..DsmClusterSpec::default()
        };
        let dc = test_cluster(spec);
        let calls = reconcile_once(&dc, None, vec![], Arc::default()).await;
        assert_eq!(lines(&calls), vec![STATUS.to_string()]);
        assert_eq!(body(&calls, STATUS)["status"]["phase"], "Paused");
    }

    #[tokio::test]
    async fn failures_are_counted_by_kind() {
        let dc = Arc::new(test_cluster(DsmClusterSpec::default()));
        let (ctx, _server) = Context::test(&dc, None, vec![], Arc::default());
        let action = error_policy(dc, &Error::MissingObjectKey("metadata.uid"), ctx.clone());
        assert_eq!(action, Action::requeue(REQUEUE_ERROR));
        assert_eq!(
            ctx.metrics
                .failures
                .with_label_values(&["missing_object_key"])
                .get(),
            1
        );
    }

    #[test]
    fn failover_and_recovery_raise_events() {
        let dc = test_cluster(DsmClusterSpec::default());
        let names = Names::of(&dc).expect("names");
        let (sts, pods, nodes) = running(&dc, 3, 3);
        let mut observed = Observed {
            slave_set: Some(sts),
            pods,
            master: nodes.statuses.values().next().cloned(),
            backup: None,
        };
        let plan = |dc: &DsmCluster, o: &Observed| {
            let hashes = [
                objects::master_pod_hash(dc, &names, Seat::Master).expect("hash"),
                objects::master_pod_hash(dc, &names, Seat::Backup).expect("hash"),
            ];
            crate::plan::plan(dc, &names, o, [&hashes[0], &hashes[1]])
        };
        let now = Timestamp::UNIX_EPOCH;
        let healthy = status::compute(&dc, &names, &observed, &plan(&dc, &observed), now);
        let dc = dc.with_status(healthy.clone());

        // The backup took over: a Failover event, and the lost master makes it degraded.
        observed.backup = observed.master.take().map(|mut reply| {
            reply.epoch = 2;
            reply
        });
        observed.pods.remove(0);
        let failed_over = status::compute(&dc, &names, &observed, &plan(&dc, &observed), now);
        let reasons: Vec<String> = transition_events(Some(&healthy), &failed_over)
            .into_iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(reasons, ["Degraded", "Failover"]);

        let recovered: Vec<String> = transition_events(Some(&failed_over), &healthy)
            .into_iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(recovered, ["Recovered", "Failover"]);
    }
}
