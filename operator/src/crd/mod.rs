//! The `DsmCluster` custom resource (`dsm.io/v1alpha1`): the spec a user writes and the
//! status the operator reports.
//!
//! The schema the API server enforces is derived from these types: `dsm-operator crd`
//! prints it, and `manifests/crd.yaml` is that output checked in (the test
//! `crd_yaml_is_up_to_date` fails when it drifts). Validation that a plain OpenAPI schema
//! cannot express (a write quorum that is a majority of the slaves, sizes that are
//! quantities, settings fixed once the cluster exists) is written as CEL rules with a
//! message a user can act on.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the custom resource.
pub const GROUP: &str = "dsm.io";

/// The desired shape of one DSM cluster: a master, an optional backup master sharing the
/// write-ahead log volume, a StatefulSet of slaves and an idle client pod to exec into.
// Each `printcolumn(...)` repeats the same keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dsm.io",
    version = "v1alpha1",
    kind = "DsmCluster",
    plural = "dsmclusters",
    shortname = "dsm",
    namespaced,
    status = "DsmClusterStatus",
    derive = "PartialEq",
    doc = "A replicated DSM key-value store: master, backup master, slaves and a client pod.",
    scale(
        spec_replicas_path = ".spec.slaves.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Slaves",
        type_ = "integer",
        json_path = ".spec.slaves.replicas",
        description = "Configured number of slaves"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readySlaves",
        description = "Slaves ready to serve"
    ),
    printcolumn(
        name = "Master",
        type_ = "string",
        json_path = ".status.activeMaster",
        description = "Pod of the active master"
    ),
    printcolumn(
        name = "Epoch",
        type_ = "integer",
        json_path = ".status.epoch",
        description = "Master term, bumped on every failover",
        priority = 1
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Summary of the cluster's state"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
// The two replication rules are `DsmClusterSpec::validate` in CEL (the reconciler checks
// the same again); their messages name the values and the smallest valid factor.
#[x_kube(validation = Rule::new(
    "!has(self.replication) || !has(self.replication.factor) || self.replication.factor <= self.slaves.replicas"
).message(Message::Expression(
    "'spec.replication.factor ' + string(self.replication.factor) + ' exceeds spec.slaves.replicas ' + string(self.slaves.replicas) + \
     ': use a factor from ' + string(self.slaves.replicas / 2 + 1) + ' to ' + string(self.slaves.replicas) + ', or unset it to follow a majority of the slaves'".into()
)))]
#[x_kube(validation = Rule::new(
    "!has(self.replication) || !has(self.replication.factor) || 2 * self.replication.factor > self.slaves.replicas"
).message(Message::Expression(
    "'spec.replication.factor ' + string(self.replication.factor) + ' is not a majority of spec.slaves.replicas ' + string(self.slaves.replicas) + \
     ': two WRITEs could reach disjoint slaves; use at least ' + string(self.slaves.replicas / 2 + 1) + ', or unset it to follow a majority of the slaves'".into()
)))]
#[x_kube(validation = Rule::new(
    "!has(self.tls) || !has(self.tls.clientAuth) || self.tls.clientAuth != 'required' || !has(self.client) || !self.client.enabled"
).message("spec.tls.clientAuth: required needs spec.client.enabled: false (the client pod gets no certificate: any certificate of the cluster CA is a member's)"))]
#[serde(rename_all = "camelCase")]
pub struct DsmClusterSpec {
    /// Container image holding the `dsm` binary, used by every pod of the cluster.
    #[serde(default = "default_image")]
    pub image: String,
    /// Pull policy of that image (Always, IfNotPresent or Never); Kubernetes' default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// The slaves that store values.
    #[serde(default)]
    pub slaves: SlavesSpec,
    /// The master: metadata server coordinating every READ and WRITE.
    #[serde(default)]
    pub master: MasterSpec,
    /// The backup master, which follows the log and takes over when the master dies.
    #[serde(default)]
    pub backup: BackupSpec,
    /// The volume holding the write-ahead log, shared by master and backup.
    #[serde(default)]
    pub log_volume: LogVolumeSpec,
    /// Restores a new cluster from a snapshot file instead of starting it empty. Used
    /// only when a master or backup pod is created, and acted on only while the log volume
    /// is empty: each such pod restores the file into the log volume before its `dsm`
    /// process starts, unless the volume already holds a log. Changing or removing it
    /// later restores nothing and replaces no running pod; pods created while it is set
    /// mount the claim, so remove it before deleting the claim. The slaves start empty;
    /// the master copies every key to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,
    /// How many slaves acknowledge each WRITE.
    #[serde(default)]
    pub replication: ReplicationSpec,
    /// The idle client pod users `kubectl exec` into.
    #[serde(default)]
    pub client: ClientSpec,
    /// Prometheus scraping.
    #[serde(default)]
    pub metrics: MetricsSpec,
    /// Failure-detection timings handed to the nodes.
    #[serde(default)]
    pub timeouts: TimeoutsSpec,
    /// TLS on every gRPC connection, mutual TLS between members.
    #[serde(default)]
    pub tls: TlsSpec,
    /// Bearer tokens the masters demand from clients.
    #[serde(default)]
    pub auth: AuthSpec,
    /// NetworkPolicies limiting who may connect to the nodes.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Stops reconciling: the operator leaves every object as it is until unpaused
    /// (for maintenance by hand).
    #[serde(default)]
    pub paused: bool,
}

/// Kubernetes image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull only when the node lacks the image.
    IfNotPresent,
    /// Never pull; the image must be on the node.
    Never,
}

impl PullPolicy {
    /// The value Kubernetes expects in `imagePullPolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// The slave StatefulSet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SlavesSpec {
    /// Number of slaves. Write quorums are computed from this configured count, never from
    /// how many slaves look alive. Scaling down drains each removed slave first.
    #[serde(default = "default_slave_replicas")]
    #[schemars(range(min = 1))]
    pub replicas: i32,
    /// Each slave's own data volume (fixed once the cluster exists: StatefulSet volume
    /// claim templates are immutable).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.slaves.storage cannot change once the cluster exists"))]
    pub storage: StorageSpec,
    /// CPU and memory of each slave container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for SlavesSpec {
    fn default() -> Self {
        Self {
            replicas: default_slave_replicas(),
            storage: StorageSpec::default(),
            resources: None,
        }
    }
}

/// A persistent volume request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size, as a Kubernetes quantity (e.g. `1Gi`).
    #[serde(default = "default_volume_size")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isQuantity(self)").message("must be a Kubernetes quantity such as 1Gi or 500Mi"))]
    pub size: String,
    /// StorageClass of the volume; the cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_volume_size(),
            storage_class_name: None,
        }
    }
}

/// The master pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MasterSpec {
    /// CPU and memory of the master container (the backup uses the same unless it sets its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// The backup master pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Runs a backup master. Without it a master failure makes the cluster unavailable
    /// until Kubernetes restarts the master.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// CPU and memory of the backup container; the master's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for BackupSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            resources: None,
        }
    }
}

/// How the write-ahead log volume is shared by master and backup.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AccessMode {
    /// Both pods mount the volume wherever they run (needs an RWX storage class, e.g. NFS or CephFS).
    ReadWriteMany,
    /// The volume attaches to one node: master and backup are pinned to that node by pod
    /// affinity, so a node failure takes both down.
    ReadWriteOnce,
}

impl AccessMode {
    /// The value Kubernetes expects in `accessModes`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteMany => "ReadWriteMany",
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
        }
    }
}

/// The shared log volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LogVolumeSpec {
    /// Requested size, as a Kubernetes quantity (e.g. `1Gi`).
    #[serde(default = "default_volume_size")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isQuantity(self)").message("must be a Kubernetes quantity such as 1Gi or 500Mi"))]
    pub size: String,
    /// StorageClass of the volume; the cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.logVolume.storageClassName cannot change once the cluster exists"))]
    pub storage_class_name: Option<String>,
    /// ReadWriteOnce (the default, works with any storage class) pins master and backup
    /// to one node; ReadWriteMany lets them run on different nodes.
    #[serde(default = "default_access_mode")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.logVolume.accessMode cannot change once the cluster exists"))]
    pub access_mode: AccessMode,
}

impl Default for LogVolumeSpec {
    fn default() -> Self {
        Self {
            size: default_volume_size(),
            storage_class_name: None,
            access_mode: default_access_mode(),
        }
    }
}

/// Where a new cluster's data comes from.
///
/// Both master-capable pods get an init container running `dsm snapshot restore
/// --if-empty` ([`crate::objects::master_pod`]): restores into one directory take turns
/// and a finished one is not redone, so whichever runs first builds the log, and neither
/// `dsm` process starts before it exists. The field is not part of the pods' spec hash: a
/// pod's init containers and volumes are fixed when it is created, and replacing the
/// masters for a field that only matters on an empty log would cost a failover for
/// nothing. Pods created later (a rollout, a failed pod) follow the current value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// A snapshot file written by `dsm snapshot save`, on a PersistentVolumeClaim of the
    /// cluster's namespace.
    pub snapshot: SnapshotSource,
}

/// A snapshot file on a PersistentVolumeClaim.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSource {
    /// The PersistentVolumeClaim holding the file, in the cluster's namespace. Master and
    /// backup mount it read-only for as long as they run (a ReadWriteOnce claim stays
    /// attached to their node meanwhile); until it exists they are not created.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// The file's path inside the claim, relative to its root (e.g.
    /// `dsm-20260101T030000Z.snap`). The restore refuses a damaged or truncated file and
    /// leaves the pod waiting with the error in the DsmCluster's status.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("!self.startsWith('/')").message(
        "spec.bootstrap.snapshot.path must be relative to the root of the claim (no leading /)"
    ))]
    #[x_kube(validation = Rule::new(
        "self != '..' && !self.startsWith('../') && !self.endsWith('/..') && !self.contains('/../')"
    ).message("spec.bootstrap.snapshot.path must not contain a `..` segment: it names a file inside the claim"))]
    pub path: String,
}

/// Replication settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSpec {
    /// Slaves each WRITE must reach before it is acknowledged (the write quorum): a
    /// majority of spec.slaves.replicas at least (replicas / 2 + 1), and at most
    /// replicas. Leave it unset to use that majority: it then follows every change of
    /// spec.slaves.replicas (3 slaves: 2, 5 slaves: 3), while a set factor stays as set
    /// and a scale that makes it too small is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub factor: Option<i32>,
}

/// The client pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientSpec {
    /// Runs an idle client Deployment: `kubectl exec -it deploy/<name>-client -- dsm client`
    /// opens the REPL already pointed at the cluster.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for ClientSpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Prometheus scraping.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Creates a ServiceMonitor for the nodes' `/metrics` (needs the Prometheus Operator's CRDs).
    #[serde(default)]
    pub service_monitor: bool,
}

/// Failure-detection timings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutsSpec {
    /// How long the active master's lease lasts unless renewed; the backup takes over
    /// after it expires. A duration such as `2s` or `1500ms`.
    #[serde(default = "default_lease_ttl")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m))+$"), length(max = 32))]
    pub lease_ttl: String,
}

impl Default for TimeoutsSpec {
    fn default() -> Self {
        Self {
            lease_ttl: default_lease_ttl(),
        }
    }
}

/// TLS for the cluster's gRPC connections (docs/SECURITY.md).
///
/// Fixed once the cluster exists: members speak TLS or plaintext, trusting one CA, and a
/// half-rolled cluster of both kinds could not reach a quorum to finish the rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.enabled == oldSelf.enabled").message("spec.tls.enabled cannot change once the cluster exists"))]
#[x_kube(validation = Rule::new(
    "(has(self.secretName) ? self.secretName : '') == (has(oldSelf.secretName) ? oldSelf.secretName : '')"
).message("spec.tls.secretName cannot change once the cluster exists: renew the certificate inside the Secret instead"))]
#[x_kube(validation = Rule::new("self.enabled || !has(self.secretName)").message("spec.tls.secretName needs spec.tls.enabled: true"))]
pub struct TlsSpec {
    /// Serves and dials TLS on every gRPC port, members authenticating each other with
    /// certificates of one cluster CA. The operator issues the CA and the member
    /// certificate (Secrets `<name>-tls-ca` and `<name>-tls`) and renews the latter,
    /// unless `secretName` is set.
    #[serde(default)]
    pub enabled: bool,
    /// A `kubernetes.io/tls` Secret to use instead of issuing one (for instance the
    /// Secret of a cert-manager Certificate), with keys `tls.crt`, `tls.key` and
    /// `ca.crt`. Its certificate must name every address members are dialled at and
    /// allow both server and client authentication (docs/SECURITY.md lists them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// Whether `Kv` clients must present a certificate of the cluster CA too (members
    /// always must); `optional` (the nodes' default) lets clients use tokens instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<TlsClientAuth>,
}

/// Whether the masters demand a client certificate from `Kv` clients.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TlsClientAuth {
    /// Verified if presented; clients may go without one.
    Optional,
    /// The TLS handshake fails without a certificate of the cluster CA.
    Required,
}

impl TlsClientAuth {
    /// The value of the nodes' `DSM_TLS_CLIENT_AUTH`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsClientAuth::Optional => "optional",
            TlsClientAuth::Required => "required",
        }
    }
}

/// Client bearer tokens.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// A Secret with keys `tokens` (read-write tokens, one per line) and
    /// `read-only-tokens` (may be empty), and optionally `client-token` (the token the
    /// client pod sends). With it the masters refuse `Kv` calls without a token; the
    /// operator uses the first read-write token itself. Unset: no tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
}

/// NetworkPolicies for the cluster's pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Creates NetworkPolicies so that only master and backup reach the slaves' port,
    /// and only the cluster's own pods, the operator and pods labelled
    /// `dsm.io/client: <name>` (plus `allowedClients`) reach the masters' ports; the
    /// metrics port stays open. Without a CNI that enforces NetworkPolicies they change
    /// nothing.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// More peers allowed to reach the masters' gRPC ports, e.g. a namespaceSelector
    /// for applications in other namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_clients: Vec<NetworkPolicyPeer>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            allowed_clients: Vec::new(),
        }
    }
}

/// What the operator observed on its last reconcile.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DsmClusterStatus {
    /// One-word summary: Creating, Running, Updating, Degraded, Unavailable or Paused.
    #[serde(default)]
    pub phase: String,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Available, Progressing and Degraded, each with the generation it describes.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Slaves the StatefulSet currently runs (the scale subresource's status).
    #[serde(default)]
    pub replicas: i32,
    /// Slaves whose pod is ready.
    #[serde(default)]
    pub ready_slaves: i32,
    /// Name of the pod holding the active master's lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_master: Option<String>,
    /// The active master's epoch (bumped on every failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// Label selector of the slave pods (the scale subresource's selector).
    #[serde(default)]
    pub selector: String,
    /// Addresses clients use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
}

/// In-cluster addresses of the cluster's Services.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// Always the active master.
    pub leader: String,
    /// The master pod.
    pub master: String,
    /// The backup pod, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
}

fn default_image() -> String {
    format!("dsm:{}", env!("CARGO_PKG_VERSION"))
}

fn default_slave_replicas() -> i32 {
    3
}

fn default_volume_size() -> String {
    "1Gi".to_string()
}

fn default_access_mode() -> AccessMode {
    AccessMode::ReadWriteOnce
}

fn default_lease_ttl() -> String {
    "2s".to_string()
}

fn default_true() -> bool {
    true
}

impl Default for DsmClusterSpec {
    fn default() -> Self {
        Self {
            image: default_image(),
            image_pull_policy: None,
            slaves: SlavesSpec::default(),
            master: MasterSpec::default(),
            backup: BackupSpec::default(),
            log_volume: LogVolumeSpec::default(),
            bootstrap: None,
            replication: ReplicationSpec::default(),
            client: ClientSpec::default(),
            metrics: MetricsSpec::default(),
            timeouts: TimeoutsSpec::default(),
            tls: TlsSpec::default(),
            auth: AuthSpec::default(),
            network_policy: NetworkPolicySpec::default(),
            paused: false,
        }
    }
}

impl DsmClusterSpec {
    /// The snapshot a master-capable pod created now restores its log from.
    pub fn bootstrap_snapshot(&self) -> Option<&SnapshotSource> {
        self.bootstrap.as_ref().map(|b| &b.snapshot)
    }

    /// Slaves each WRITE must reach: the configured factor, or a majority of the
    /// configured slaves, `ceil((n + 1) / 2)` — the same default as the node's. Unset,
    /// it follows every change of the slave count.
    pub fn write_quorum(&self) -> i32 {
        self.replication
            .factor
            .unwrap_or_else(|| majority(self.slaves.replicas))
    }

    /// Checks what the node checks of `--slaves` and `--replication-factor`: at least
    /// one slave, and a factor that is a majority of the slaves without exceeding them,
    /// so that any two write quorums intersect.
    ///
    /// # Errors
    /// The first rule the spec breaks.
    pub fn validate(&self) -> Result<(), SpecError> {
        let replicas = self.slaves.replicas;
        if replicas < 1 {
            return Err(SpecError::NoSlaves(replicas));
        }
        match self.replication.factor {
            Some(factor) if factor > replicas => {
                Err(SpecError::FactorAboveSlaves { factor, replicas })
            }
            Some(factor) if 2 * i64::from(factor) <= i64::from(replicas) => {
                Err(SpecError::FactorNotMajority { factor, replicas })
            }
            _ => Ok(()),
        }
    }
}

/// `ceil((n + 1) / 2)`, i.e. `n / 2 + 1`: the smallest count such that any two sets of
/// that size among `n` slaves intersect.
pub fn majority(n: i32) -> i32 {
    n / 2 + 1
}

/// A spec the nodes would refuse to run. The CRD's CEL rules reject these at admission
/// with the same messages; the reconciler checks again before it rolls anything out,
/// because a spec can predate the rules (an older CRD) or slip past them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// More slaves per WRITE than there are slaves.
    #[error(
        "spec.replication.factor {factor} exceeds spec.slaves.replicas {replicas}: use a factor from {} to {replicas}, or unset it to follow a majority of the slaves",
        majority(*replicas)
    )]
    FactorAboveSlaves {
        /// The configured factor.
        factor: i32,
        /// The configured slave count.
        replicas: i32,
    },
    /// Too few slaves per WRITE for any two WRITEs to share a slave.
    #[error(
        "spec.replication.factor {factor} is not a majority of spec.slaves.replicas {replicas}: two WRITEs could reach disjoint slaves; use at least {}, or unset it to follow a majority of the slaves",
        majority(*replicas)
    )]
    FactorNotMajority {
        /// The configured factor.
        factor: i32,
        /// The configured slave count.
        replicas: i32,
    },
    /// No slaves at all.
    #[error("spec.slaves.replicas {0} must be at least 1")]
    NoSlaves(i32),
}

/// The YAML of the CustomResourceDefinition, as `dsm-operator crd` prints it.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    serde_saphyr::to_string(&DsmCluster::crd())
}

#[cfg(test)]
mod tests;
