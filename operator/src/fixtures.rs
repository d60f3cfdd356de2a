//! Test fixtures: builders of the objects the unit tests observe.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use dsm_wire::Role;
use futures::future::BoxFuture;
use http::{Request, Response};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    PersistentVolumeClaim, Pod, PodCondition, PodStatus, Secret,
};
use kube::api::ObjectMeta;

use crate::crd::{BootstrapSpec, DsmCluster, DsmClusterSpec, DsmClusterStatus, SnapshotSource};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::names::{ANNOTATION_SPEC_HASH, LABEL_ROLE, Names, Seat};
use crate::node::{DrainReply, NodeApi, NodeCredentials, StatusReply};
use crate::plan::Observed;
use crate::reconcile::Context;

/// A DsmCluster named `test` in namespace `testns`, as the API server would return it.
pub fn test_cluster(spec: DsmClusterSpec) -> DsmCluster {
    let mut dc = DsmCluster::new("test", spec);
    dc.metadata = ObjectMeta {
        name: Some("test".to_string()),
        namespace: Some("testns".to_string()),
        uid: Some("0b5e33c8-6a8b-4b5c-9c1d-5f0f7a1c2d3e".to_string()),
        generation: Some(1),
        ..ObjectMeta::default()
    };
    dc
}

/// The snapshot the bootstrap tests restore from: `backups/test-1.snap` on the claim
/// `test-snapshots`.
pub fn test_snapshot() -> SnapshotSource {
    SnapshotSource {
        claim_name: "test-snapshots".to_string(),
        path: "backups/test-1.snap".to_string(),
    }
}

/// The spec of a cluster bootstrapped from `snapshot`, otherwise the default.
pub fn bootstrapped(snapshot: SnapshotSource) -> DsmClusterSpec {
    DsmClusterSpec {
        bootstrap: Some(BootstrapSpec { snapshot }),
        ..DsmClusterSpec::default()
    }
}

impl DsmCluster {
    /// The same cluster with a status.
    pub fn with_status(mut self, status: DsmClusterStatus) -> Self {
        self.status = Some(status);
        self
    }
}

/// `Kv.Status` of an active master (the master seat) at `epoch`.
pub fn active_status(names: &Names, epoch: u64) -> StatusReply {
    StatusReply {
        role: Role::Active.as_str().to_string(),
        epoch,
        leader: names.seat_address(Seat::Master),
        address: names.seat_address(Seat::Master),
        ..StatusReply::default()
    }
}

/// A rolled-out slave StatefulSet with `replicas` slaves of which `ready` are ready.
pub fn ready_slave_set(replicas: i32, ready: i32) -> StatefulSet {
    StatefulSet {
        metadata: ObjectMeta {
            name: Some("test-slave".to_string()),
            namespace: Some("testns".to_string()),
            generation: Some(1),
            ..ObjectMeta::default()
        },
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            ..StatefulSetSpec::default()
        }),
        status: Some(StatefulSetStatus {
            observed_generation: Some(1),
            replicas,
            ready_replicas: Some(ready),
            updated_replicas: Some(replicas),
            current_revision: Some("rev1".to_string()),
            update_revision: Some("rev1".to_string()),
            ..StatefulSetStatus::default()
        }),
    }
}

/// The desired spec hashes of the master and backup pods, in the order `plan` takes
/// them, that the pods of [`healthy`] carry.
pub const POD_HASHES: [&str; 2] = ["m1", "b1"];

/// A healthy cluster as observed: the master active at `epoch`, the backup standby, both
/// ready and up to date with [`POD_HASHES`]; three slaves, all ready.
pub fn healthy(names: &Names, epoch: u64) -> Observed {
    Observed {
        slave_set: Some(ready_slave_set(3, 3)),
        pods: vec![
            seat_pod(names, Seat::Master, POD_HASHES[0], Role::Active, true),
            seat_pod(names, Seat::Backup, POD_HASHES[1], Role::Standby, true),
        ],
        master: Some(active_status(names, epoch)),
        ..Observed::default()
    }
}

/// A master-capable pod as the API server reports it, with the given spec hash and role.
pub fn seat_pod(names: &Names, seat: Seat, hash: &str, role: Role, ready: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(names.seat(seat)),
            namespace: Some(names.namespace.clone()),
            labels: Some(BTreeMap::from([(
                LABEL_ROLE.to_string(),
                role.as_str().to_string(),
            )])),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_SPEC_HASH.to_string(),
                hash.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some("Running".to_string()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".to_string(),
                status: if ready { "True" } else { "False" }.to_string(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

/// The log tail a master leaves in `lastState.terminated.message` when it refuses its
/// configuration: here a standby restarted after a scale from 3 to 5 slaves with the
/// replication factor still pinned at 2, which crash-loops on it.
pub const REFUSED_CONFIG_LOG: &str = "2026-01-01T00:00:00Z  INFO dsm: starting backup\n\
error: --replication-factor 2 is not a majority of --slaves 5: two writes could reach disjoint slaves; use at least 3\n";

/// `pod` with its `dsm` container crash-looping: waiting in CrashLoopBackOff after
/// `restarts` runs, the last of which exited 2 leaving `log` as its termination message.
pub fn crash_looping(mut pod: Pod, restarts: i32, log: &str) -> Pod {
    let status = pod.status.get_or_insert_with(PodStatus::default);
    status.conditions = Some(vec![PodCondition {
        type_: "Ready".to_string(),
        status: "False".to_string(),
        ..PodCondition::default()
    }]);
    status.container_statuses = Some(vec![ContainerStatus {
        name: "dsm".to_string(),
        ready: false,
        restart_count: restarts,
        state: Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("CrashLoopBackOff".to_string()),
                message: Some("back-off 40s restarting failed container=dsm".to_string()),
            }),
            ..ContainerState::default()
        }),
        last_state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 2,
                reason: Some("Error".to_string()),
                message: Some(log.to_string()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    }]);
    pod
}

/// A [`NodeApi`] answering from a table instead of sockets, recording drains and the
/// credentials of every call.
#[derive(Default)]
pub struct FakeNodes {
    /// `Kv.Status` replies by address; other addresses are unreachable.
    pub statuses: BTreeMap<String, StatusReply>,
    /// `(address, slave_id)` of every `Kv.Drain` call.
    pub drains: Mutex<Vec<(String, String)>>,
    /// The credentials each call was made with.
    pub credentials: Mutex<Vec<NodeCredentials>>,
}

impl FakeNodes {
    fn record(&self, credentials: &NodeCredentials) {
        if let Ok(mut seen) = self.credentials.lock() {
            seen.push(credentials.clone());
        }
    }
}

impl NodeApi for FakeNodes {
    fn status<'a>(
        &'a self,
        address: &'a str,
        credentials: &'a NodeCredentials,
    ) -> BoxFuture<'a, Result<StatusReply>> {
        self.record(credentials);
        let reply = self
            .statuses
            .get(address)
            .cloned()
            .ok_or_else(|| Error::NodeUnreachable {
                address: address.to_string(),
                message: "connection refused".to_string(),
            });
        Box::pin(async move { reply })
    }

    fn drain<'a>(
        &'a self,
        address: &'a str,
        slave_id: &'a str,
        credentials: &'a NodeCredentials,
    ) -> BoxFuture<'a, Result<DrainReply>> {
        self.record(credentials);
        if let Ok(mut drains) = self.drains.lock() {
            drains.push((address.to_string(), slave_id.to_string()));
        }
        Box::pin(async move { Ok(DrainReply { moved_keys: 5 }) })
    }
}

/// One request the reconciler sent to the API server.
#[derive(Clone, Debug)]
pub struct Call {
    /// `GET`, `PATCH`, `DELETE`, `POST`.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// The JSON body, if any.
    pub body: Option<serde_json::Value>,
}

impl Call {
    /// `METHOD uri`, for comparing call sequences.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }
}

/// A mocked API server holding a fixed state: it answers each request as the real one
/// would (echoing applied and created objects, serving the given StatefulSet, with the
/// last applied spec, pods, Secrets and PersistentVolumeClaims, 404 for the rest) and
/// records every request, so a test can assert the exact calls made.
pub struct ApiServerVerifier {
    handle: Handle<Request<Body>, Response<Body>>,
    cluster: DsmCluster,
    slave_set: Option<StatefulSet>,
    pods: Vec<Pod>,
    secrets: Vec<Secret>,
    claims: Vec<PersistentVolumeClaim>,
}

impl ApiServerVerifier {
    /// The same server also holding `secrets`.
    pub fn with_secrets(mut self, secrets: Vec<Secret>) -> Self {
        self.secrets = secrets;
        self
    }

    /// The same server also holding `claims` (GETs of them; applies are echoed).
    pub fn with_claims(mut self, claims: Vec<PersistentVolumeClaim>) -> Self {
        self.claims = claims;
        self
    }

    /// Serves requests until every client is dropped, then returns the calls made.
    pub fn run(self) -> JoinHandle<Vec<Call>> {
        tokio::spawn(async move {
            let Self {
                mut handle,
                cluster,
                mut slave_set,
                pods,
                secrets,
                claims,
            } = self;
            let mut calls = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let uri = request.uri().to_string();
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .expect("request body");
                let body: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
                // An applied StatefulSet spec is what later GETs see (its status stays
                // the fixture's: the test decides how far the rollout got).
                if method == "PATCH"
                    && uri.contains("/statefulsets/")
                    && let (Some(sts), Some(applied)) = (slave_set.as_mut(), &body)
                    && let Ok(spec) = serde_json::from_value(applied["spec"].clone())
                {
                    sts.spec = Some(spec);
                }
                let (code, response) = match (method.as_str(), &body) {
                    ("GET", _) if uri.contains("/statefulsets/") => match &slave_set {
                        Some(sts) => (200, json!(sts)),
                        None => not_found(),
                    },
                    ("GET", _) if uri.contains("/secrets/") => get_named(&secrets, "secrets", &uri),
                    ("GET", _) if uri.contains("/persistentvolumeclaims/") => {
                        get_named(&claims, "persistentvolumeclaims", &uri)
                    }
                    ("GET", _) if uri.contains("/pods?") => (
                        200,
                        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}),
                    ),
                    ("PATCH", Some(patch)) if uri.contains("/status?") => {
                        let status = serde_json::from_value(patch["status"].clone())
                            .expect("status patch carries a valid status");
                        (200, json!(cluster.clone().with_status(status)))
                    }
                    ("PATCH", Some(object)) | ("POST", Some(object)) => (200, object.clone()),
                    ("DELETE", _) => {
                        match pods
                            .iter()
                            .find(|p| uri.contains(&format!("/pods/{}?", p.name_any())))
                        {
                            Some(pod) => (200, json!(pod)),
                            None => not_found(),
                        }
                    }
                    _ => not_found(),
                };
                calls.push(Call { method, uri, body });
                send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&response).expect("json")))
                        .expect("response"),
                );
            }
            calls
        })
    }
}

/// The answer to a GET of `uri` (`…/<plural>/<name>`) from `objects`.
fn get_named<K: ResourceExt + Serialize>(
    objects: &[K],
    plural: &str,
    uri: &str,
) -> (u16, serde_json::Value) {
    match objects
        .iter()
        .find(|o| uri.ends_with(&format!("/{plural}/{}", o.name_any())))
    {
        Some(object) => (200, json!(object)),
        None => not_found(),
    }
}

fn not_found() -> (u16, serde_json::Value) {
    (
        404,
        json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
               "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

impl Context {
    /// A context whose client talks to an [`ApiServerVerifier`] holding `slave_set` and
    /// `pods`, and whose nodes are `nodes`.
    pub fn test(
        cluster: &DsmCluster,
        slave_set: Option<StatefulSet>,
        pods: Vec<Pod>,
        nodes: Arc<FakeNodes>,
    ) -> (Arc<Context>, ApiServerVerifier) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "testns");
        let registry = prometheus::Registry::new();
        let context = Context {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "dsm-operator".to_string(),
                    instance: None,
                },
            ),
            client,
            metrics: Arc::new(Metrics::register(&registry).expect("metrics")),
            nodes,
            service_monitor_crd: false,
            operator_namespace: Some("dsm-system".to_string()),
        };
        let verifier = ApiServerVerifier {
            handle,
            cluster: cluster.clone(),
            slave_set,
            pods,
            secrets: Vec::new(),
            claims: Vec::new(),
        };
        (Arc::new(context), verifier)
    }
}
