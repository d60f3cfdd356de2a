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
//!    token) from the cluster's Secrets;
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
use k8s_openapi::api::core::v1::{
    ConfigMap, ObjectReference, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};

use crate::certs::{self, CaPems, MemberPems};
use crate::crd::{DsmCluster, DsmClusterStatus, GROUP, SpecError, TlsClientAuth};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::names::{MANAGER, Names, Seat};
use crate::netpol;
use crate::node::{self, NodeApi, NodeCredentials};
use crate::objects;
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
    /// The operator's own namespace, which the NetworkPolicies let through to the
    /// masters; `None` (running outside the cluster) lets any namespace's operator pod in.
    pub operator_namespace: Option<String>,
}

/// What dialling a cluster's nodes takes, or why it cannot be done yet (a Secret the
/// user provides is missing or incomplete). Without credentials the node calls are
/// skipped, as if the nodes were unreachable: an observation, not a reconcile failure.
type Access = std::result::Result<NodeCredentials, String>;

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
    let observed = Observed {
        slave_set,
        pods: pod_list.items,
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
    let mut plan = plan(&dc, &names, &observed, [&hashes[0], &hashes[1]]);
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
                apply(&pods, &objects::master_pod(&dc, &names, seat, *role)?).await?;
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

/// Makes sure the TLS Secrets exist (issuing them when the operator does), and reads
/// what dialling the nodes takes: the CA, a client certificate when the masters demand
/// one, a read-write token when they demand tokens.
///
/// # Errors
/// API failures, and a CA Secret of the operator's that is unusable (it is never
/// replaced: every member trusts it). Problems with Secrets the user provides are not
/// errors but an `Err` [`Access`] saying what is missing.
async fn node_access(
    secrets: &Api<Secret>,
    dc: &DsmCluster,
    names: &Names,
    events: &mut Vec<Event>,
) -> Result<Access> {
    let mut credentials = NodeCredentials::default();
    if let Some(name) = objects::member_tls_secret(dc, names) {
        let member = if dc.spec.tls.secret_name.is_some() {
            let Some(secret) = secrets.get_opt(&name).await.map_err(Error::Kube)? else {
                return Ok(Err(format!(
                    "the TLS Secret {name} (spec.tls.secretName) does not exist"
                )));
            };
            match MemberPems::from_secret(&secret) {
                Ok(member) => member,
                Err(why) => return Ok(Err(format!("the TLS Secret {name}: {why}"))),
            }
        } else {
            ensure_tls_secrets(secrets, dc, names, Timestamp::now(), events).await?
        };
        if dc.spec.tls.client_auth == Some(TlsClientAuth::Required) {
            credentials.identity = Some((member.cert, member.key));
        }
        credentials.ca = Some(member.ca);
    }
    if let Some(name) = &dc.spec.auth.secret_name {
        let Some(secret) = secrets.get_opt(name).await.map_err(Error::Kube)? else {
            return Ok(Err(format!(
                "the auth Secret {name} (spec.auth.secretName) does not exist"
            )));
        };
        let tokens = certs::secret_text(&secret, objects::TOKENS).unwrap_or_default();
        let Some(token) = node::first_token(&tokens) else {
            return Ok(Err(format!(
                "the auth Secret {name} has no token under `{}`",
                objects::TOKENS
            )));
        };
        match node::bearer(token) {
            Ok(value) => credentials.token = Some(value),
            Err(why) => return Ok(Err(format!("the auth Secret {name}: {why}"))),
        }
    }
    Ok(Ok(credentials))
}

/// Creates the CA Secret if it does not exist, and issues the member certificate Secret
/// when it does not exist or must be renewed ([`certs::reissue_reason`]); returns the
/// member Secret's contents. An existing CA is never replaced, and a valid member
/// Secret is left exactly as it is.
async fn ensure_tls_secrets(
    secrets: &Api<Secret>,
    dc: &DsmCluster,
    names: &Names,
    now: Timestamp,
    events: &mut Vec<Event>,
) -> Result<MemberPems> {
    // `create`, not apply: it fails rather than overwrite a CA that appeared meanwhile.
    let create = PostParams {
        field_manager: Some(MANAGER.to_string()),
        ..PostParams::default()
    };
    let ca_name = names.tls_ca();
    let ca = match secrets.get_opt(&ca_name).await.map_err(Error::Kube)? {
        Some(secret) => CaPems::from_secret(&secret, &ca_name)?,
        None => {
            let ca = certs::generate_ca(names, now)?;
            secrets
                .create(&create, &objects::tls_ca_secret(dc, names, &ca)?)
                .await
                .map_err(Error::Kube)?;
            info!(secret = %ca_name, "generated the cluster CA");
            events.push(event(
                EventType::Normal,
                "GeneratedCA",
                "IssueCertificate",
                format!("generated the cluster CA in Secret {ca_name}"),
            ));
            ca
        }
    };
    let name = names.tls();
    // Why the existing certificate is replaced; `None` when there is none yet.
    let renewal = match secrets.get_opt(&name).await.map_err(Error::Kube)? {
        None => None,
        Some(secret) => Some(match MemberPems::from_secret(&secret) {
            Ok(member) => match certs::reissue_reason(&member, &ca, names, now) {
                None => return Ok(member),
                Some(why) => why,
            },
            Err(why) => why,
        }),
    };
    let member = certs::issue_member(&ca, names, now)?;
    let secret = objects::tls_secret(dc, names, &member)?;
    let note = match renewal {
        None => {
            secrets
                .create(&create, &secret)
                .await
                .map_err(Error::Kube)?;
            format!("issued the member certificate in Secret {name}")
        }
        Some(why) => {
            apply(secrets, &secret).await?;
            format!("renewed the member certificate in Secret {name}: {why}")
        }
    };
    info!(secret = %name, "{note}");
    events.push(event(
        EventType::Normal,
        "IssuedCertificate",
        "IssueCertificate",
        note,
    ));
    Ok(member)
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
        Call, FakeNodes, active_status, crash_looping, ready_slave_set, seat_pod, test_cluster,
    };
    use crate::names::Role;
    use k8s_openapi::jiff::SignedDuration;

    /// Runs one reconcile against a mocked API server and returns the calls it made.
    async fn reconcile_once(
        dc: &DsmCluster,
        slave_set: Option<StatefulSet>,
        pods: Vec<Pod>,
        nodes: Arc<FakeNodes>,
    ) -> Vec<Call> {
        let (result, calls) = reconcile_with_secrets(dc, slave_set, pods, nodes, vec![]).await;
        result.expect("reconcile succeeds");
        calls
    }

    /// One reconcile against a mocked API server that also holds `secrets`: its result
    /// and the calls it made.
    async fn reconcile_with_secrets(
        dc: &DsmCluster,
        slave_set: Option<StatefulSet>,
        pods: Vec<Pod>,
        nodes: Arc<FakeNodes>,
        secrets: Vec<Secret>,
    ) -> (Result<Action>, Vec<Call>) {
        let (ctx, server) = Context::test(dc, slave_set, pods, nodes);
        let server = server.with_secrets(secrets).run();
        let result = reconcile(Arc::new(dc.clone()), ctx).await;
        // The context (and with it every client) is gone: the server sees the end.
        (result, server.await.expect("api server task"))
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
    const NETPOL: &str = "/apis/networking.k8s.io/v1/namespaces/testns/networkpolicies";
    const SECRETS: &str = "/api/v1/namespaces/testns/secrets";

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
            format!("PATCH {NETPOL}/test-slaves{SSA}"),
            format!("PATCH {NETPOL}/test-masters{SSA}"),
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

    /// The condition `type_` of a status written in `calls`.
    fn written_condition<'a>(calls: &'a [Call], type_: &str) -> &'a serde_json::Value {
        body(calls, STATUS)["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
            .unwrap_or_else(|| panic!("no {type_} condition written"))
    }

    #[tokio::test]
    async fn an_invalid_factor_rolls_nothing_out_and_says_why() {
        let dc = test_cluster(DsmClusterSpec::default());
        let (sts, pods, nodes) = running(&dc, 3, 3);
        let status = status_after(&dc, sts.clone(), pods.clone(), nodes.clone()).await;
        // What the issue's user did: five slaves, factor still pinned at 2.
        let mut spec = DsmClusterSpec::default();
        spec.slaves.replicas = 5;
        spec.replication.factor = Some(2);
        let mut dc = test_cluster(spec).with_status(status);
        dc.metadata.generation = Some(2);

        let calls = reconcile_once(&dc, Some(sts.clone()), pods.clone(), nodes.clone()).await;
        // No ConfigMap, StatefulSet or pod is touched: only the status and the Event.
        assert_eq!(lines(&calls), [STATUS, EVENT]);
        assert!(nodes.drains.lock().expect("drains").is_empty());
        let written = &body(&calls, STATUS)["status"];
        assert_eq!(written["phase"], "Degraded");
        assert_eq!(written["observedGeneration"], 2);
        let degraded = written_condition(&calls, "Degraded");
        assert_eq!(degraded["status"], "True");
        assert_eq!(degraded["reason"], "InvalidSpec");
        let message = degraded["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(
                "spec.replication.factor 2 is not a majority of spec.slaves.replicas 5"
            ) && message.contains("use at least 3"),
            "{message}"
        );
        assert_eq!(written_condition(&calls, "Progressing")["status"], "False");
        let warning = body(&calls, EVENT);
        assert_eq!(warning["type"], "Warning");
        assert_eq!(warning["reason"], "InvalidSpec");
        assert_eq!(warning["note"], message);

        // Reconciled again with that status: nothing new to say, nothing written.
        let status = serde_json::from_value(written.clone()).expect("status");
        let dc = dc.with_status(status);
        let again = reconcile_once(&dc, Some(sts), pods, nodes).await;
        assert_eq!(lines(&again), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_crash_looping_standby_stalls_the_rollout_and_says_why() {
        let dc = test_cluster(DsmClusterSpec::default());
        let (_, mut pods, nodes) = running(&dc, 3, 3);
        let status = status_after(&dc, ready_slave_set(3, 3), pods.clone(), nodes.clone()).await;
        let mut spec = DsmClusterSpec::default();
        spec.slaves.replicas = 5;
        let mut dc = test_cluster(spec).with_status(status);
        dc.metadata.generation = Some(2);
        // The slaves scaled up; the standby was replaced with the new spec and crashes.
        let names = Names::of(&dc).expect("names");
        let hash = objects::master_pod_hash(&dc, &names, Seat::Backup).expect("hash");
        let standby = seat_pod(&names, Seat::Backup, &hash, Role::Standby, false);
        let log = "INFO dsm: starting backup\nerror: cannot open /var/lib/dsm/log: Permission denied (os error 13)\n";
        pods[1] = crash_looping(standby, 6, log);

        let calls = reconcile_once(&dc, Some(ready_slave_set(5, 5)), pods, nodes).await;
        // The outdated active master is left alone: replacing it now would leave no master.
        let mut expected: Vec<String> = default_calls()
            .into_iter()
            .filter(|line| !line.contains("/pods/test-master"))
            .collect();
        expected.extend([STATUS.to_string(), EVENT.to_string()]);
        assert_eq!(lines(&calls), expected);
        assert_eq!(body(&calls, STATUS)["status"]["phase"], "Degraded");
        let degraded = written_condition(&calls, "Degraded");
        assert_eq!(degraded["reason"], "CrashLoopBackOff");
        let error = "error: cannot open /var/lib/dsm/log: Permission denied (os error 13)";
        let message = degraded["message"].as_str().unwrap_or_default();
        assert!(message.contains(error), "{message}");
        assert_eq!(
            written_condition(&calls, "Progressing")["reason"],
            "RolloutStalled"
        );
        let warning = body(&calls, EVENT);
        assert_eq!(warning["type"], "Warning");
        assert_eq!(warning["reason"], "Degraded");
        assert!(warning["note"].as_str().unwrap_or_default().contains(error));
    }

    #[tokio::test]
    async fn each_drained_slave_gets_an_event_of_its_own() {
        let dc = test_cluster(DsmClusterSpec::default());
        let (sts, pods, nodes) = running(&dc, 3, 3);
        let dc = dc
            .clone()
            .with_status(status_after(&dc, sts, pods.clone(), nodes.clone()).await);
        // Five slaves running, three wanted: two reconciles, two drains, by one operator
        // (one Recorder, as in production).
        let (ctx, server) = Context::test(&dc, Some(ready_slave_set(5, 5)), pods, nodes.clone());
        let server = server.run();
        let dc = Arc::new(dc);
        for _ in 0..2 {
            reconcile(dc.clone(), ctx.clone())
                .await
                .expect("reconcile succeeds");
        }
        drop(ctx);
        let calls = server.await.expect("api server task");

        let drained: Vec<String> = nodes
            .drains
            .lock()
            .expect("drains")
            .iter()
            .map(|(_, slave)| slave.clone())
            .collect();
        assert_eq!(drained, ["test-slave-4", "test-slave-3"]);
        // Two Events created, none folded into the other's series (a PATCH).
        let events: Vec<&Call> = calls.iter().filter(|c| c.uri.contains("/events")).collect();
        assert!(
            events.iter().all(|c| c.line() == EVENT),
            "{:#?}",
            lines(&calls)
        );
        let told: Vec<(String, String)> = events
            .iter()
            .filter_map(|c| c.body.as_ref())
            .map(|e| {
                let note = e["note"].as_str().unwrap_or_default();
                let related = e["related"]["name"].as_str().unwrap_or_default();
                (note.to_string(), related.to_string())
            })
            .collect();
        assert_eq!(told.len(), 2, "{told:?}");
        for ((note, related), slave) in told.iter().zip(["test-slave-4", "test-slave-3"]) {
            assert!(note.contains(&format!("off {slave};")), "{note}");
            assert_eq!(related, slave);
        }
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

    /// A TLS cluster with tokens from the Secret `test-auth`.
    fn secured() -> DsmCluster {
        let mut spec = DsmClusterSpec::default();
        spec.tls.enabled = true;
        spec.auth.secret_name = Some("test-auth".to_string());
        test_cluster(spec)
    }

    fn auth_secret() -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("test-auth".to_string()),
                namespace: Some("testns".to_string()),
                ..kube::api::ObjectMeta::default()
            },
            data: Some(
                [
                    (
                        "tokens".to_string(),
                        k8s_openapi::ByteString(b"# admins\nrw-1\nrw-2\n".to_vec()),
                    ),
                    (
                        "read-only-tokens".to_string(),
                        k8s_openapi::ByteString(Vec::new()),
                    ),
                ]
                .into(),
            ),
            ..Secret::default()
        }
    }

    /// The Secret a call created or applied, as the API server would store it.
    fn secret_body(calls: &[Call], line: &str) -> Secret {
        serde_json::from_value(body(calls, line).clone()).expect("a Secret")
    }

    /// The calls a first reconcile of [`secured`] makes around the default ones: the CA
    /// and member Secrets are created, the auth Secret read.
    fn secured_first_calls() -> Vec<String> {
        let mut expected = default_calls();
        let at = expected
            .iter()
            .position(|l| l.starts_with("GET /apis/apps/v1"))
            .expect("observe step");
        let create = format!("POST {SECRETS}?&fieldManager=dsm-operator");
        expected.splice(
            at..at,
            [
                format!("GET {SECRETS}/test-tls-ca"),
                create.clone(),
                format!("GET {SECRETS}/test-tls"),
                create,
                format!("GET {SECRETS}/test-auth"),
            ],
        );
        expected
    }

    #[tokio::test]
    async fn tls_creates_the_ca_and_member_secrets_and_dials_with_them() {
        let dc = secured();
        let names = Names::of(&dc).expect("names");
        let nodes = Arc::new(FakeNodes::default());
        let (result, calls) =
            reconcile_with_secrets(&dc, None, vec![], nodes.clone(), vec![auth_secret()]).await;
        result.expect("reconcile succeeds");
        let mut expected = secured_first_calls();
        expected.extend([STATUS.to_string(), EVENT.to_string(), EVENT.to_string()]);
        assert_eq!(lines(&calls), expected);

        let posts: Vec<Secret> = calls
            .iter()
            .filter(|c| c.method == "POST" && c.uri.contains("/secrets"))
            .map(|c| serde_json::from_value(c.body.clone().expect("body")).expect("Secret"))
            .collect();
        let [ca_secret, member_secret] = posts.as_slice() else {
            panic!("expected two Secrets created, got {}", posts.len());
        };
        assert_eq!(ca_secret.metadata.name.as_deref(), Some("test-tls-ca"));
        assert_eq!(member_secret.metadata.name.as_deref(), Some("test-tls"));
        assert_eq!(member_secret.type_.as_deref(), Some("kubernetes.io/tls"));
        for secret in [ca_secret, member_secret] {
            let owners = secret.metadata.owner_references.as_ref().expect("owners");
            assert_eq!(owners[0].kind, "DsmCluster");
        }
        let ca = CaPems::from_secret(ca_secret, "test-tls-ca").expect("a usable CA");
        let member = MemberPems::from_secret(member_secret).expect("a full member Secret");
        assert_eq!(
            certs::reissue_reason(&member, &ca, &names, Timestamp::now()),
            None
        );

        // The operator dialled the masters with the CA and the first read-write token,
        // and without a client certificate (clientAuth is not `required`).
        let seen = nodes.credentials.lock().expect("credentials").clone();
        assert_eq!(seen.len(), 2, "master and backup");
        for credentials in seen {
            assert_eq!(credentials.ca.as_deref(), Some(member.ca.as_str()));
            assert!(credentials.identity.is_none());
            let token = credentials.token.expect("a token");
            assert_eq!(token.to_str().ok(), Some("Bearer rw-1"));
        }
        let reasons: Vec<&serde_json::Value> = calls
            .iter()
            .filter(|c| c.line() == EVENT)
            .filter_map(|c| c.body.as_ref().map(|b| &b["reason"]))
            .collect();
        assert_eq!(reasons, ["GeneratedCA", "IssuedCertificate"]);
        // Nothing of a key reaches an Event.
        for call in calls.iter().filter(|c| c.line() == EVENT) {
            let text = call
                .body
                .as_ref()
                .map(|b| b.to_string())
                .unwrap_or_default();
            assert!(!text.contains("PRIVATE KEY"), "{text}");
        }

        // The master pod mounts the member Secret and the tokens and probes over HTTP.
        let pod = body(
            &calls,
            &format!("PATCH /api/v1/namespaces/testns/pods/test-master{SSA}"),
        );
        let volumes = pod["spec"]["volumes"].to_string();
        assert!(volumes.contains("\"secretName\":\"test-tls\""), "{volumes}");
        assert!(
            volumes.contains("\"secretName\":\"test-auth\""),
            "{volumes}"
        );
        let probe = &pod["spec"]["containers"][0]["readinessProbe"];
        assert_eq!(probe["httpGet"]["path"], "/readyz");
    }

    #[tokio::test]
    async fn a_valid_member_secret_is_neither_patched_nor_reissued() {
        let dc = secured();
        let names = Names::of(&dc).expect("names");
        let ca = certs::generate_ca(&names, Timestamp::now()).expect("CA");
        let member = certs::issue_member(&ca, &names, Timestamp::now()).expect("member");
        let secrets = vec![
            objects::tls_ca_secret(&dc, &names, &ca).expect("CA Secret"),
            objects::tls_secret(&dc, &names, &member).expect("member Secret"),
            auth_secret(),
        ];
        let nodes = Arc::new(FakeNodes::default());
        let (result, calls) = reconcile_with_secrets(&dc, None, vec![], nodes, secrets).await;
        result.expect("reconcile succeeds");
        let mut expected: Vec<String> = secured_first_calls()
            .into_iter()
            .filter(|l| !l.starts_with("POST"))
            .collect();
        expected.push(STATUS.to_string());
        assert_eq!(lines(&calls), expected, "no Secret written, no Event");
    }

    #[tokio::test]
    async fn a_member_certificate_near_expiry_is_renewed_under_the_same_ca() {
        let dc = secured();
        let names = Names::of(&dc).expect("names");
        let now = Timestamp::now();
        let ca = certs::generate_ca(&names, now).expect("CA");
        // Issued 340 days ago: it expires in 25 days, within the 30-day window.
        let old = certs::issue_member(&ca, &names, now - SignedDuration::from_hours(24 * 340))
            .expect("member");
        let secrets = vec![
            objects::tls_ca_secret(&dc, &names, &ca).expect("CA Secret"),
            objects::tls_secret(&dc, &names, &old).expect("member Secret"),
            auth_secret(),
        ];
        let (result, calls) =
            reconcile_with_secrets(&dc, None, vec![], Arc::default(), secrets).await;
        result.expect("reconcile succeeds");
        let patch = format!("PATCH {SECRETS}/test-tls{SSA}");
        assert!(lines(&calls).contains(&patch), "{:#?}", lines(&calls));
        assert!(
            !lines(&calls)
                .iter()
                .any(|l| l.starts_with(&format!("POST {SECRETS}"))),
            "the CA is kept"
        );
        let renewed = MemberPems::from_secret(&secret_body(&calls, &patch)).expect("member");
        assert_ne!(renewed.cert, old.cert);
        assert_eq!(renewed.ca, ca.cert);
        assert_eq!(certs::reissue_reason(&renewed, &ca, &names, now), None);
        let event = body(&calls, EVENT);
        assert_eq!(event["reason"], "IssuedCertificate");
        let note = event["note"].as_str().unwrap_or_default();
        assert!(note.starts_with("renewed the member certificate"), "{note}");
    }

    #[tokio::test]
    async fn an_unusable_ca_secret_fails_the_reconcile_and_is_never_replaced() {
        let dc = secured();
        let names = Names::of(&dc).expect("names");
        let ca = certs::generate_ca(&names, Timestamp::now()).expect("CA");
        let mut broken = objects::tls_ca_secret(&dc, &names, &ca).expect("CA Secret");
        if let Some(data) = broken.data.as_mut() {
            data.remove(certs::CA_KEY);
        }
        let (result, calls) =
            reconcile_with_secrets(&dc, None, vec![], Arc::default(), vec![broken]).await;
        let error = result.expect_err("an unusable CA is an error");
        assert_eq!(error.metric_label(), "invalid_secret");
        assert!(error.to_string().contains("test-tls-ca"), "{error}");
        assert!(
            !lines(&calls)
                .iter()
                .any(|l| l.contains("/secrets") && !l.starts_with("GET")),
            "{:#?}",
            lines(&calls)
        );
    }

    #[tokio::test]
    async fn a_missing_user_secret_skips_the_node_calls_but_not_the_reconcile() {
        let mut spec = DsmClusterSpec::default();
        spec.tls.enabled = true;
        spec.tls.secret_name = Some("from-cert-manager".to_string());
        let dc = test_cluster(spec);
        let nodes = Arc::new(FakeNodes::default());
        let (result, calls) =
            reconcile_with_secrets(&dc, None, vec![], nodes.clone(), vec![]).await;
        result.expect("reconcile succeeds");
        assert!(lines(&calls).contains(&format!("GET {SECRETS}/from-cert-manager")));
        // Nothing issued: the user's Secret is the user's.
        assert!(!lines(&calls).iter().any(|l| l.contains("test-tls")));
        assert!(nodes.credentials.lock().expect("credentials").is_empty());
        assert_eq!(body(&calls, STATUS)["status"]["phase"], "Creating");
        let pod = body(
            &calls,
            &format!("PATCH /api/v1/namespaces/testns/pods/test-master{SSA}"),
        );
        assert!(
            pod["spec"]["volumes"]
                .to_string()
                .contains("\"secretName\":\"from-cert-manager\"")
        );
    }

    #[tokio::test]
    async fn network_policies_are_removed_when_disabled() {
        let mut spec = DsmClusterSpec::default();
        spec.network_policy.enabled = false;
        let dc = test_cluster(spec);
        let calls = reconcile_once(&dc, None, vec![], Arc::default()).await;
        let deletes: Vec<String> = lines(&calls)
            .into_iter()
            .filter(|l| l.contains("networkpolicies"))
            .collect();
        assert_eq!(
            deletes,
            [
                format!("DELETE {NETPOL}/test-slaves?"),
                format!("DELETE {NETPOL}/test-masters?")
            ]
        );
    }
}
