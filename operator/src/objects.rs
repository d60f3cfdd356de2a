//! The Kubernetes objects a `DsmCluster` spec produces, as plain functions of the spec.
//!
//! Nothing here talks to the API server, so every object can be unit-tested. The
//! reconciler applies what these functions return with server-side apply; each object
//! carries an ownerReference to its `DsmCluster`, so deleting the cluster deletes them all
//! (the slaves' own PVCs go with the StatefulSet through its retention policy).
//!
//! Pods run as a non-root user with a read-only root filesystem, every capability dropped
//! and the RuntimeDefault seccomp profile; the only writable paths are their volumes and
//! an in-memory `/tmp`.
//!
//! Config changes roll: each pod template carries the checksum of the configuration its
//! component reads, and each master-capable pod a hash of its whole spec, so a change
//! makes the StatefulSet roll its slaves and the reconciler replace outdated masters.
//!
//! With `spec.tls.enabled` every member mounts the member certificate Secret at
//! [`TLS_DIR`] and its probes move from gRPC to the HTTP `/healthz` and `/readyz` of the
//! metrics port, because kubelet's gRPC probes cannot speak TLS. With
//! `spec.auth.secretName` master and backup mount the token files at [`AUTH_DIR`]. The
//! client pod only ever gets the CA certificate and a token, never a private key.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource, GRPCAction, HTTPGetAction,
    KeyToPath, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodAffinity, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    Secret, SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::certs::{self, CaPems, MemberPems};
use crate::crd::{AccessMode, DsmCluster};
use crate::error::{Error, Result};
use crate::names::{
    ANNOTATION_CONFIG_CHECKSUM, ANNOTATION_SPEC_HASH, LABEL_CLIENT, LABEL_INSTANCE,
    LABEL_LOG_VOLUME, LABEL_NAME, LABEL_ROLE, LABEL_SCRAPE, MASTER_PORT, METRICS_PORT, Role,
    SLAVE_PORT, Seat, labels, selector_labels,
};

/// The names live in [`crate::names`]; the node crate's tests
/// (`node/tests/operator_certificates.rs`) reach them through here.
pub use crate::names::Names;

/// Where master and backup mount the shared log volume.
pub const LOG_DIR: &str = "/var/lib/dsm/log";
/// Where each slave mounts its data volume.
pub const DATA_DIR: &str = "/var/lib/dsm/data";
/// The unprivileged user (and group) every container runs as; the images create it.
pub const RUN_AS_USER: i64 = 10001;
/// Where the member certificate Secret (or, in the client pod, only its `ca.crt`) is
/// mounted.
pub const TLS_DIR: &str = "/etc/dsm/tls";
/// Where master and backup mount the token Secret.
pub const AUTH_DIR: &str = "/etc/dsm/auth";
/// Key of the read-write tokens (one per line) in the auth Secret.
pub const TOKENS: &str = "tokens";
/// Key of the read-only tokens in the auth Secret.
pub const READ_ONLY_TOKENS: &str = "read-only-tokens";
/// Key of the client pod's token in the auth Secret (optional).
pub const CLIENT_TOKEN: &str = "client-token";

fn owner(dc: &DsmCluster) -> Result<OwnerReference> {
    dc.controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))
}

/// Metadata of an object of the cluster: name, namespace, labels and the ownerReference.
pub(crate) fn meta(
    dc: &DsmCluster,
    names: &Names,
    name: String,
    labels: BTreeMap<String, String>,
) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![owner(dc)?]),
        ..ObjectMeta::default()
    })
}

/// A short, stable hash of any serializable value.
fn hash_of<T: Serialize>(value: &T) -> Result<String> {
    let bytes = serde_json::to_vec(value).map_err(Error::Serialization)?;
    let digest = Sha256::digest(bytes);
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// Configuration keys (the nodes' `DSM_*` flag variables) every component reads; the
/// checksum of a component's keys rolls exactly the pods a change concerns.
const SHARED_KEYS: [&str; 3] = ["DSM_MASTER", "DSM_BACKUP", "DSM_METRICS_LISTEN"];

/// The ConfigMap's data: cluster-wide flags of the `dsm` binary as environment variables.
pub fn config_data(dc: &DsmCluster, names: &Names) -> BTreeMap<String, String> {
    let spec = &dc.spec;
    let mut data = BTreeMap::from([
        ("DSM_MASTER".to_string(), names.seat_address(Seat::Master)),
        ("DSM_LOG_DIR".to_string(), LOG_DIR.to_string()),
        (
            "DSM_METRICS_LISTEN".to_string(),
            format!("0.0.0.0:{METRICS_PORT}"),
        ),
        ("DSM_SLAVES".to_string(), spec.slaves.replicas.to_string()),
        (
            "DSM_REPLICATION_FACTOR".to_string(),
            spec.write_quorum().to_string(),
        ),
        ("DSM_LEASE_TTL".to_string(), spec.timeouts.lease_ttl.clone()),
    ]);
    if spec.backup.enabled {
        data.insert("DSM_BACKUP".to_string(), names.seat_address(Seat::Backup));
    }
    data
}

/// Checksum of the configuration master-capable pods read (all of it).
pub fn master_config_checksum(dc: &DsmCluster, names: &Names) -> Result<String> {
    hash_of(&config_data(dc, names))
}

/// Checksum of the configuration slaves and clients read (the addresses only: scaling,
/// which changes `DSM_SLAVES`, must not restart every slave).
pub fn shared_config_checksum(dc: &DsmCluster, names: &Names) -> Result<String> {
    let data = config_data(dc, names);
    let shared: BTreeMap<&str, Option<&String>> =
        SHARED_KEYS.iter().map(|k| (*k, data.get(*k))).collect();
    hash_of(&shared)
}

/// The ConfigMap every pod reads its flags from (`envFrom`).
pub fn config_map(dc: &DsmCluster, names: &Names) -> Result<ConfigMap> {
    Ok(ConfigMap {
        metadata: meta(dc, names, names.config(), labels(names, "config"))?,
        data: Some(config_data(dc, names)),
        ..ConfigMap::default()
    })
}

/// The write-ahead log volume shared by master and backup.
pub fn log_pvc(dc: &DsmCluster, names: &Names) -> Result<PersistentVolumeClaim> {
    let log = &dc.spec.log_volume;
    Ok(PersistentVolumeClaim {
        metadata: meta(dc, names, names.log_pvc(), labels(names, "log"))?,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![log.access_mode.as_str().to_string()]),
            storage_class_name: log.storage_class_name.clone(),
            resources: Some(storage_request(&log.size)),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    })
}

fn storage_request(size: &str) -> VolumeResourceRequirements {
    VolumeResourceRequirements {
        requests: Some(BTreeMap::from([(
            "storage".to_string(),
            Quantity(size.to_string()),
        )])),
        ..VolumeResourceRequirements::default()
    }
}

fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        fs_group_change_policy: Some("OnRootMismatch".to_string()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn env_from_config(names: &Names) -> Vec<EnvFromSource> {
    vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: names.config(),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    }]
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: number,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

/// gRPC health probe on a node's main port (every `dsm` server serves grpc.health.v1).
fn grpc_probe(port: i32, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        grpc: Some(GRPCAction {
            port,
            service: None,
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// HTTP probe of `path` on the metrics port, which stays plaintext with TLS on.
fn http_probe(path: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("metrics".to_string()),
            scheme: Some("HTTP".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// Sets the startup, readiness and liveness probes of a member listening on `port`.
///
/// Replaying a long log can take a while: the startup probe allows it, the liveness
/// probe then restarts a hung (e.g. SIGSTOPped) process so the lease moves on.
///
/// Without TLS they are gRPC health checks of the member's port: ready means serving.
/// With TLS kubelet cannot speak to that port, so they are HTTP on the metrics port:
/// alive is `/healthz` (the process answers), ready is `/readyz`, which asks more — the
/// active master serving, a standby caught up with the log, a slave registered with an
/// active master. That is the readiness rollouts should wait for (the StatefulSet rolls
/// the next slave once this one has rejoined; a standby is replaced only while the
/// active master serves). Members never dial each other through a readiness-filtered
/// address: the headless slave Service and the master and backup Services publish
/// not-ready pods, or a new master waiting for slaves to register would never see them.
fn set_probes(container: &mut Container, tls: bool, port: i32) {
    if tls {
        container.startup_probe = Some(http_probe("/healthz", 2, 150));
        container.readiness_probe = Some(http_probe("/readyz", 5, 2));
        container.liveness_probe = Some(http_probe("/healthz", 10, 3));
    } else {
        container.startup_probe = Some(grpc_probe(port, 2, 150));
        container.readiness_probe = Some(grpc_probe(port, 5, 2));
        container.liveness_probe = Some(grpc_probe(port, 10, 3));
    }
}

/// The Secret holding the member certificate, when TLS is on: the user's
/// (`spec.tls.secretName`, e.g. cert-manager's) or the one the operator issues.
pub fn member_tls_secret(dc: &DsmCluster, names: &Names) -> Option<String> {
    let tls = &dc.spec.tls;
    tls.enabled
        .then(|| tls.secret_name.clone().unwrap_or_else(|| names.tls()))
}

/// A read-only volume of some keys of a Secret, readable by the containers' group only.
fn secret_volume(name: &str, secret: &str, keys: &[&str]) -> Volume {
    Volume {
        name: name.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            items: Some(
                keys.iter()
                    .map(|key| KeyToPath {
                        key: key.to_string(),
                        path: key.to_string(),
                        mode: None,
                    })
                    .collect(),
            ),
            // fsGroup owns the files: 0440 keeps the keys from every other user.
            default_mode: Some(0o440),
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

fn read_only_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// What a member needs for TLS and, for master and backup (`tokens`), client tokens: the
/// Secret volumes, their mounts and the `DSM_*` variables pointing at the files.
fn member_security(
    dc: &DsmCluster,
    names: &Names,
    tokens: bool,
) -> (Vec<Volume>, Vec<VolumeMount>, Vec<EnvVar>) {
    let (mut volumes, mut mounts, mut vars) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(secret) = member_tls_secret(dc, names) {
        volumes.push(secret_volume(
            "tls",
            &secret,
            &[certs::TLS_CERT, certs::TLS_KEY, certs::CA_CERT],
        ));
        mounts.push(read_only_mount("tls", TLS_DIR));
        vars.push(env(
            "DSM_TLS_CERT",
            format!("{TLS_DIR}/{}", certs::TLS_CERT),
        ));
        vars.push(env("DSM_TLS_KEY", format!("{TLS_DIR}/{}", certs::TLS_KEY)));
        vars.push(env("DSM_TLS_CA", format!("{TLS_DIR}/{}", certs::CA_CERT)));
        if let Some(mode) = dc.spec.tls.client_auth {
            vars.push(env("DSM_TLS_CLIENT_AUTH", mode.as_str()));
        }
    }
    if let (true, Some(secret)) = (tokens, &dc.spec.auth.secret_name) {
        volumes.push(secret_volume("auth", secret, &[TOKENS, READ_ONLY_TOKENS]));
        mounts.push(read_only_mount("auth", AUTH_DIR));
        vars.push(env("DSM_TOKEN_FILE", format!("{AUTH_DIR}/{TOKENS}")));
        vars.push(env(
            "DSM_READ_ONLY_TOKEN_FILE",
            format!("{AUTH_DIR}/{READ_ONLY_TOKENS}"),
        ));
    }
    (volumes, mounts, vars)
}

fn tmp_volume() -> (Volume, VolumeMount) {
    (
        Volume {
            name: "tmp".to_string(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_string()),
                size_limit: Some(Quantity("16Mi".to_string())),
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: "tmp".to_string(),
            mount_path: "/tmp".to_string(),
            ..VolumeMount::default()
        },
    )
}

/// A `dsm` container with the hardening every component shares.
fn dsm_container(dc: &DsmCluster, names: &Names, args: Vec<String>) -> Container {
    Container {
        name: "dsm".to_string(),
        image: Some(dc.spec.image.clone()),
        image_pull_policy: dc.spec.image_pull_policy.map(|p| p.as_str().to_string()),
        args: Some(args),
        env_from: Some(env_from_config(names)),
        security_context: Some(container_security_context()),
        // A node that exits on an error says why on its last log line; this puts that
        // tail in the pod status (`lastState.terminated.message`), where the operator
        // reads it into the DsmCluster's Degraded condition.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Container::default()
    }
}

/// A pod spec with the hardening every component shares. Service links are off: with a
/// cluster named `dsm` they would inject variables such as `DSM_MASTER_PORT` into the
/// namespace the `dsm` binary reads its flags from.
fn hardened_pod_spec(containers: Vec<Container>, volumes: Vec<Volume>) -> PodSpec {
    PodSpec {
        containers,
        volumes: Some(volumes),
        security_context: Some(pod_security_context()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        ..PodSpec::default()
    }
}

/// Affinity keeping master and backup on the log volume's node when it is ReadWriteOnce.
/// The first of the two pods matches its own term, which Kubernetes accepts when no
/// other pod matches, so it schedules anywhere and the second follows it.
fn log_volume_affinity(dc: &DsmCluster, names: &Names) -> Option<Affinity> {
    if dc.spec.log_volume.access_mode != AccessMode::ReadWriteOnce || !dc.spec.backup.enabled {
        return None;
    }
    Some(Affinity {
        pod_affinity: Some(PodAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        LABEL_LOG_VOLUME.to_string(),
                        names.cluster.clone(),
                    )])),
                    ..LabelSelector::default()
                }),
                topology_key: "kubernetes.io/hostname".to_string(),
                ..PodAffinityTerm::default()
            }]),
            ..PodAffinity::default()
        }),
        ..Affinity::default()
    })
}

/// The spec of a master-capable pod, without its role (so a failover does not make it
/// look outdated).
fn master_pod_spec(dc: &DsmCluster, names: &Names, seat: Seat) -> PodSpec {
    let resources = match seat {
        Seat::Backup => dc
            .spec
            .backup
            .resources
            .clone()
            .or_else(|| dc.spec.master.resources.clone()),
        Seat::Master => dc.spec.master.resources.clone(),
    };
    let (tmp, tmp_mount) = tmp_volume();
    let (security_volumes, security_mounts, security_env) = member_security(dc, names, true);
    let mut container = dsm_container(dc, names, vec![seat.component().to_string()]);
    let mut vars = vec![
        env("DSM_ID", names.seat(seat)),
        env("DSM_LISTEN", format!("0.0.0.0:{}", seat.port())),
        env("DSM_ADVERTISE", names.seat_address(seat)),
    ];
    vars.extend(security_env);
    container.env = Some(vars);
    container.ports = Some(vec![
        port("grpc", seat.port()),
        port("metrics", METRICS_PORT),
    ]);
    container.resources = resources;
    let mut mounts = vec![
        VolumeMount {
            name: "log".to_string(),
            mount_path: LOG_DIR.to_string(),
            ..VolumeMount::default()
        },
        tmp_mount,
    ];
    mounts.extend(security_mounts);
    container.volume_mounts = Some(mounts);
    set_probes(&mut container, dc.spec.tls.enabled, seat.port());
    let log = Volume {
        name: "log".to_string(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: names.log_pvc(),
            read_only: Some(false),
        }),
        ..Volume::default()
    };
    let mut volumes = vec![log, tmp];
    volumes.extend(security_volumes);
    let mut spec = hardened_pod_spec(vec![container], volumes);
    spec.affinity = log_volume_affinity(dc, names);
    spec.restart_policy = Some("Always".to_string());
    spec
}

/// The desired spec hash of a master-capable pod (its config checksum included).
pub fn master_pod_hash(dc: &DsmCluster, names: &Names, seat: Seat) -> Result<String> {
    let config = master_config_checksum(dc, names)?;
    hash_of(&(master_pod_spec(dc, names, seat), config))
}

/// A master-capable pod: `dsm master` or `dsm backup` on the shared log volume.
pub fn master_pod(dc: &DsmCluster, names: &Names, seat: Seat, role: Role) -> Result<Pod> {
    let mut labels = labels(names, seat.component());
    labels.insert(LABEL_ROLE.to_string(), role.label().to_string());
    labels.insert(LABEL_LOG_VOLUME.to_string(), names.cluster.clone());
    let mut metadata = meta(dc, names, names.seat(seat), labels)?;
    metadata.annotations = Some(BTreeMap::from([
        (
            ANNOTATION_SPEC_HASH.to_string(),
            master_pod_hash(dc, names, seat)?,
        ),
        (
            ANNOTATION_CONFIG_CHECKSUM.to_string(),
            master_config_checksum(dc, names)?,
        ),
    ]));
    Ok(Pod {
        metadata,
        spec: Some(master_pod_spec(dc, names, seat)),
        ..Pod::default()
    })
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    }
}

/// The Service of a master-capable pod (stable address in `--advertise` and the ConfigMap).
///
/// It publishes the pod even when it is not ready: slaves register through it, and a
/// master that has just taken over becomes ready (`/readyz`, with TLS) only once enough
/// slaves have registered with it.
pub fn seat_service(dc: &DsmCluster, names: &Names, seat: Seat) -> Result<Service> {
    let mut labels = labels(names, seat.component());
    labels.insert(LABEL_SCRAPE.to_string(), "true".to_string());
    Ok(Service {
        metadata: meta(dc, names, names.seat(seat), labels)?,
        spec: Some(ServiceSpec {
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(names, seat.component())),
            ports: Some(vec![
                service_port("grpc", seat.port()),
                service_port("metrics", METRICS_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The leader Service: selects whichever master-capable pod the operator last saw
/// holding the lease. Clients that reach a standby are redirected anyway (`dsm-leader`).
pub fn leader_service(dc: &DsmCluster, names: &Names) -> Result<Service> {
    let selector = BTreeMap::from([
        (LABEL_NAME.to_string(), "dsm".to_string()),
        (LABEL_INSTANCE.to_string(), names.cluster.clone()),
        (LABEL_ROLE.to_string(), Role::Active.label().to_string()),
    ]);
    Ok(Service {
        metadata: meta(dc, names, names.leader(), labels(names, "leader"))?,
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("grpc".to_string()),
                port: MASTER_PORT,
                // Named, because master and backup listen on different ports.
                target_port: Some(IntOrString::String("grpc".to_string())),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The headless Service giving each slave the stable DNS name it advertises. Not-ready
/// slaves are published too: the master dials a slave as soon as it registers.
pub fn slaves_service(dc: &DsmCluster, names: &Names) -> Result<Service> {
    let mut labels = labels(names, "slave");
    labels.insert(LABEL_SCRAPE.to_string(), "true".to_string());
    Ok(Service {
        metadata: meta(dc, names, names.slaves_service(), labels)?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(names, "slave")),
            ports: Some(vec![
                service_port("grpc", SLAVE_PORT),
                service_port("metrics", METRICS_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The slave StatefulSet with `replicas` pods (the reconciler passes fewer than the spec
/// asks while it drains slaves one at a time).
pub fn slave_set(dc: &DsmCluster, names: &Names, replicas: i32) -> Result<StatefulSet> {
    let slaves = &dc.spec.slaves;
    let (tmp, tmp_mount) = tmp_volume();
    let (security_volumes, security_mounts, security_env) = member_security(dc, names, false);
    let mut container = dsm_container(dc, names, vec!["slave".to_string()]);
    let mut vars = vec![
        EnvVar {
            name: "POD_NAME".to_string(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_string(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        // The pod name is the slave's stable id: it survives restarts with its volume.
        env("DSM_ID", "$(POD_NAME)"),
        env("DSM_LISTEN", format!("0.0.0.0:{SLAVE_PORT}")),
        env(
            "DSM_ADVERTISE",
            format!(
                "$(POD_NAME).{}.{}.svc:{SLAVE_PORT}",
                names.slaves_service(),
                names.namespace
            ),
        ),
        env("DSM_DATA_DIR", DATA_DIR),
    ];
    vars.extend(security_env);
    container.env = Some(vars);
    container.ports = Some(vec![
        port("grpc", SLAVE_PORT),
        port("metrics", METRICS_PORT),
    ]);
    container.resources = slaves.resources.clone();
    let mut mounts = vec![
        VolumeMount {
            name: "data".to_string(),
            mount_path: DATA_DIR.to_string(),
            ..VolumeMount::default()
        },
        tmp_mount,
    ];
    mounts.extend(security_mounts);
    container.volume_mounts = Some(mounts);
    set_probes(&mut container, dc.spec.tls.enabled, SLAVE_PORT);

    let mut volumes = vec![tmp];
    volumes.extend(security_volumes);
    let mut pod_spec = hardened_pod_spec(vec![container], volumes);
    // Spread slaves over nodes when there are enough of them.
    pod_spec.affinity = Some(Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(names, "slave")),
                            ..LabelSelector::default()
                        }),
                        topology_key: "kubernetes.io/hostname".to_string(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    });

    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".to_string()),
            labels: Some(selector_labels(names, "slave")),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: slaves.storage.storage_class_name.clone(),
            resources: Some(storage_request(&slaves.storage.size)),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };

    Ok(StatefulSet {
        metadata: meta(dc, names, names.slave_set(), labels(names, "slave"))?,
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(names.slaves_service()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(names, "slave")),
                ..LabelSelector::default()
            },
            // Slaves do not depend on each other: start and replace them in parallel;
            // updates still roll one pod at a time.
            pod_management_policy: Some("Parallel".to_string()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_string()),
                ..StatefulSetUpdateStrategy::default()
            }),
            // A removed slave was drained first, and deleting the cluster deletes its data.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".to_string()),
                    when_scaled: Some("Delete".to_string()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(names, "slave")),
                    annotations: Some(BTreeMap::from([(
                        ANNOTATION_CONFIG_CHECKSUM.to_string(),
                        shared_config_checksum(dc, names)?,
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    })
}

/// The idle client: `kubectl exec -it deploy/<name>-client -- dsm client` opens the REPL
/// with `DSM_MASTER` and `DSM_BACKUP` already set from the ConfigMap, and with TLS the
/// CA (`DSM_TLS_CA`, the `ca.crt` of the member Secret and nothing else of it) and with
/// tokens `DSM_TOKEN` (the auth Secret's `client-token`, if it has one). Its pods carry
/// [`LABEL_CLIENT`], which lets them through the NetworkPolicies.
pub fn client_deployment(dc: &DsmCluster, names: &Names) -> Result<Deployment> {
    let (tmp, tmp_mount) = tmp_volume();
    let mut container = dsm_container(dc, names, vec!["infinity".to_string()]);
    container.command = Some(vec!["sleep".to_string()]);
    // The REPL keeps its history under $HOME; the root filesystem is read-only.
    let mut vars = vec![env("HOME", "/tmp")];
    let mut mounts = vec![tmp_mount];
    let mut volumes = vec![tmp];
    if let Some(secret) = member_tls_secret(dc, names) {
        volumes.push(secret_volume("tls-ca", &secret, &[certs::CA_CERT]));
        mounts.push(read_only_mount("tls-ca", TLS_DIR));
        vars.push(env("DSM_TLS_CA", format!("{TLS_DIR}/{}", certs::CA_CERT)));
    }
    if let Some(secret) = &dc.spec.auth.secret_name {
        vars.push(EnvVar {
            name: "DSM_TOKEN".to_string(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.clone(),
                    key: CLIENT_TOKEN.to_string(),
                    // Without one the pod still starts; calls are then refused.
                    optional: Some(true),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    container.env = Some(vars);
    container.volume_mounts = Some(mounts);
    container.resources = Some(ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("10m".to_string())),
            ("memory".to_string(), Quantity("16Mi".to_string())),
        ])),
        ..ResourceRequirements::default()
    });
    let mut pod_spec = hardened_pod_spec(vec![container], volumes);
    // `sleep` ignores SIGTERM as PID 1: do not wait the default 30 s on every rollout.
    pod_spec.termination_grace_period_seconds = Some(1);
    let mut client_labels = labels(names, "client");
    client_labels.insert(LABEL_CLIENT.to_string(), names.cluster.clone());
    Ok(Deployment {
        metadata: meta(dc, names, names.client(), labels(names, "client"))?,
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector_labels(names, "client")),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(client_labels),
                    annotations: Some(BTreeMap::from([(
                        ANNOTATION_CONFIG_CHECKSUM.to_string(),
                        shared_config_checksum(dc, names)?,
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

fn secret_data(entries: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    entries
        .iter()
        .map(|(key, pem)| (key.to_string(), ByteString(pem.as_bytes().to_vec())))
        .collect()
}

/// The Secret `<name>-tls-ca` holding the cluster CA the operator generated (`ca.crt`,
/// `ca.key`). Only the operator reads it; no pod mounts it.
pub fn tls_ca_secret(dc: &DsmCluster, names: &Names, ca: &CaPems) -> Result<Secret> {
    Ok(Secret {
        metadata: meta(dc, names, names.tls_ca(), labels(names, "tls"))?,
        type_: Some("Opaque".to_string()),
        data: Some(secret_data(&[
            (certs::CA_CERT, &ca.cert),
            (certs::CA_KEY, &ca.key),
        ])),
        ..Secret::default()
    })
}

/// The `kubernetes.io/tls` Secret `<name>-tls` every member mounts (`tls.crt`,
/// `tls.key`, `ca.crt`: the layout of cert-manager's Secrets too).
pub fn tls_secret(dc: &DsmCluster, names: &Names, member: &MemberPems) -> Result<Secret> {
    Ok(Secret {
        metadata: meta(dc, names, names.tls(), labels(names, "tls"))?,
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(secret_data(&[
            (certs::TLS_CERT, &member.cert),
            (certs::TLS_KEY, &member.key),
            (certs::CA_CERT, &member.ca),
        ])),
        ..Secret::default()
    })
}

/// Keeps voluntary disruptions (node drains) from taking the ready slaves below the
/// write quorum.
pub fn pod_disruption_budget(dc: &DsmCluster, names: &Names) -> Result<PodDisruptionBudget> {
    Ok(PodDisruptionBudget {
        metadata: meta(dc, names, names.pdb(), labels(names, "slave"))?,
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(dc.spec.write_quorum())),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(names, "slave")),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// The Prometheus Operator's ServiceMonitor kind.
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

/// A ServiceMonitor scraping `/metrics` of master, backup and slaves.
///
/// The DSM dashboards and alerts (`charts/dsm/dashboards`, `charts/dsm/rules`) select a
/// cluster by the `namespace` and `cluster` labels and name processes by `instance`. The
/// Prometheus Operator adds `namespace` itself; the relabelings set `cluster` to the
/// DsmCluster's name and `instance` to the pod's name (which is also a slave's id, the
/// `slave` label of `dsm_slave_requests_total`), instead of a pod IP that changes on
/// every restart.
pub fn service_monitor(dc: &DsmCluster, names: &Names) -> Result<DynamicObject> {
    let mut object = DynamicObject::new(&names.service_monitor(), &service_monitor_resource())
        .within(&names.namespace);
    object.metadata = meta(dc, names, names.service_monitor(), labels(names, "metrics"))?;
    object.data = serde_json::json!({
        "spec": {
            "selector": {
                "matchLabels": {
                    LABEL_INSTANCE: names.cluster,
                    LABEL_SCRAPE: "true",
                }
            },
            "endpoints": [{
                "port": "metrics",
                "path": "/metrics",
                "interval": "15s",
                "relabelings": [
                    {
                        "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_instance"],
                        "targetLabel": "cluster",
                    },
                    {
                        "sourceLabels": ["__meta_kubernetes_pod_name"],
                        "targetLabel": "instance",
                    },
                ],
            }],
        }
    });
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DsmClusterSpec, PullPolicy, TlsClientAuth};
    use crate::fixtures::test_cluster;

    fn cluster(spec: DsmClusterSpec) -> (DsmCluster, Names) {
        let dc = test_cluster(spec);
        let names = Names::of(&dc).expect("names");
        (dc, names)
    }

    fn container(spec: &Option<PodSpec>) -> &Container {
        &spec.as_ref().expect("pod spec").containers[0]
    }

    fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
        c.env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .as_deref()
    }

    fn assert_hardened(spec: &PodSpec) {
        let pod = spec
            .security_context
            .as_ref()
            .expect("pod security context");
        assert_eq!(pod.run_as_non_root, Some(true));
        assert_eq!(pod.run_as_user, Some(RUN_AS_USER));
        assert_eq!(
            pod.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
        assert_eq!(spec.enable_service_links, Some(false));
        for c in &spec.containers {
            let sc = c
                .security_context
                .as_ref()
                .expect("container security context");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(
                sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_string()])
            );
            // The crash-loop message in the DsmCluster's status comes from here.
            assert_eq!(
                c.termination_message_policy.as_deref(),
                Some("FallbackToLogsOnError"),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn every_pod_is_hardened_and_leaves_its_last_error_in_its_status() {
        let (dc, names) = cluster(DsmClusterSpec::default());
        for seat in [Seat::Master, Seat::Backup] {
            let pod = master_pod(&dc, &names, seat, Role::Standby).expect("pod");
            assert_hardened(pod.spec.as_ref().expect("spec"));
        }
        let sts = slave_set(&dc, &names, 3).expect("sts");
        assert_hardened(
            sts.spec
                .and_then(|s| s.template.spec)
                .as_ref()
                .expect("spec"),
        );
        let client = client_deployment(&dc, &names).expect("client");
        assert_hardened(
            client
                .spec
                .and_then(|s| s.template.spec)
                .as_ref()
                .expect("spec"),
        );
    }

    #[test]
    fn every_object_is_owned_by_the_cluster() {
        let (dc, names) = cluster(DsmClusterSpec::default());
        let now = k8s_openapi::jiff::Timestamp::now();
        let ca = certs::generate_ca(&names, now).expect("CA");
        let member = certs::issue_member(&ca, &names, now).expect("member");
        let metas = [
            config_map(&dc, &names).expect("cm").metadata,
            log_pvc(&dc, &names).expect("pvc").metadata,
            master_pod(&dc, &names, Seat::Master, Role::Active)
                .expect("pod")
                .metadata,
            seat_service(&dc, &names, Seat::Backup)
                .expect("svc")
                .metadata,
            leader_service(&dc, &names).expect("svc").metadata,
            slaves_service(&dc, &names).expect("svc").metadata,
            slave_set(&dc, &names, 3).expect("sts").metadata,
            client_deployment(&dc, &names).expect("client").metadata,
            pod_disruption_budget(&dc, &names).expect("pdb").metadata,
            service_monitor(&dc, &names).expect("sm").metadata,
            crate::netpol::slaves_policy(&dc, &names)
                .expect("policy")
                .metadata,
            crate::netpol::masters_policy(&dc, &names, None)
                .expect("policy")
                .metadata,
            tls_ca_secret(&dc, &names, &ca).expect("secret").metadata,
            tls_secret(&dc, &names, &member).expect("secret").metadata,
        ];
        for meta in metas {
            let owners = meta.owner_references.expect("owner references");
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "DsmCluster");
            assert_eq!(owners[0].name, "test");
            assert_eq!(owners[0].controller, Some(true));
            assert_eq!(meta.namespace.as_deref(), Some("testns"));
        }
    }

    #[test]
    fn backup_disabled_leaves_backup_out_of_the_config_and_affinity() {
        let mut spec = DsmClusterSpec::default();
        spec.backup.enabled = false;
        let (dc, names) = cluster(spec);
        let data = config_data(&dc, &names);
        assert!(!data.contains_key("DSM_BACKUP"));
        assert_eq!(data["DSM_MASTER"], "test-master.testns.svc:12345");
        let pod = master_pod(&dc, &names, Seat::Master, Role::Active).expect("pod");
        // No partner to stay with: the master may schedule anywhere.
        assert_eq!(pod.spec.expect("spec").affinity, None);
    }

    #[test]
    fn read_write_once_log_volume_pins_master_and_backup_together() {
        let (dc, names) = cluster(DsmClusterSpec::default());
        let pvc = log_pvc(&dc, &names).expect("pvc");
        assert_eq!(
            pvc.spec.and_then(|s| s.access_modes),
            Some(vec!["ReadWriteOnce".to_string()])
        );
        for seat in [Seat::Master, Seat::Backup] {
            let pod = master_pod(&dc, &names, seat, Role::Standby).expect("pod");
            assert_eq!(
                pod.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_LOG_VOLUME)),
                Some(&"test".to_string())
            );
            let term = pod
                .spec
                .and_then(|s| s.affinity)
                .and_then(|a| a.pod_affinity)
                .and_then(|a| a.required_during_scheduling_ignored_during_execution)
                .expect("required pod affinity");
            assert_eq!(term[0].topology_key, "kubernetes.io/hostname");
            assert_eq!(
                term[0]
                    .label_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.as_ref())
                    .and_then(|l| l.get(LABEL_LOG_VOLUME)),
                Some(&"test".to_string())
            );
        }
    }

    #[test]
    fn read_write_many_log_volume_needs_no_affinity() {
        let mut spec = DsmClusterSpec::default();
        spec.log_volume.access_mode = AccessMode::ReadWriteMany;
        spec.log_volume.storage_class_name = Some("nfs".to_string());
        spec.log_volume.size = "5Gi".to_string();
        let (dc, names) = cluster(spec);
        let pvc = log_pvc(&dc, &names).expect("pvc").spec.expect("spec");
        assert_eq!(pvc.access_modes, Some(vec!["ReadWriteMany".to_string()]));
        assert_eq!(pvc.storage_class_name.as_deref(), Some("nfs"));
        assert_eq!(
            pvc.resources
                .and_then(|r| r.requests)
                .map(|r| r["storage"].clone()),
            Some(Quantity("5Gi".to_string()))
        );
        let pod = master_pod(&dc, &names, Seat::Backup, Role::Standby).expect("pod");
        assert_eq!(pod.spec.expect("spec").affinity, None);
    }

    #[test]
    fn slaves_scale_and_quorum_follow_the_spec() {
        let mut spec = DsmClusterSpec::default();
        spec.slaves.replicas = 5;
        let (dc, names) = cluster(spec);
        let sts = slave_set(&dc, &names, 5).expect("sts").spec.expect("spec");
        assert_eq!(sts.replicas, Some(5));
        assert_eq!(sts.service_name.as_deref(), Some("test-slaves"));
        let data = config_data(&dc, &names);
        assert_eq!(data["DSM_SLAVES"], "5");
        assert_eq!(data["DSM_REPLICATION_FACTOR"], "3");
        let pdb = pod_disruption_budget(&dc, &names).expect("pdb");
        assert_eq!(
            pdb.spec.and_then(|s| s.min_available),
            Some(IntOrString::Int(3))
        );
    }

    #[test]
    fn scaling_changes_master_config_but_does_not_roll_slaves() {
        let (dc, names) = cluster(DsmClusterSpec::default());
        let mut bigger = DsmClusterSpec::default();
        bigger.slaves.replicas = 7;
        let (dc7, names7) = cluster(bigger);
        assert_eq!(
            shared_config_checksum(&dc, &names).expect("checksum"),
            shared_config_checksum(&dc7, &names7).expect("checksum")
        );
        assert_ne!(
            master_pod_hash(&dc, &names, Seat::Master).expect("hash"),
            master_pod_hash(&dc7, &names7, Seat::Master).expect("hash")
        );
    }

    #[test]
    fn role_changes_do_not_make_a_master_pod_outdated() {
        let (dc, names) = cluster(DsmClusterSpec::default());
        let active = master_pod(&dc, &names, Seat::Master, Role::Active).expect("pod");
        let standby = master_pod(&dc, &names, Seat::Master, Role::Standby).expect("pod");
        assert_eq!(active.metadata.annotations, standby.metadata.annotations);
        assert_eq!(
            active
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_ROLE)),
            Some(&"active".to_string())
        );
    }

    #[test]
    fn image_changes_make_master_pods_outdated() {
        let (dc, names) = cluster(DsmClusterSpec::default());
        let spec = DsmClusterSpec {
            image: "dsm:next".to_string(),
            image_pull_policy: Some(PullPolicy::Always),
            ..DsmClusterSpec::default()
        };
        let (next, next_names) = cluster(spec);
        assert_ne!(
            master_pod_hash(&dc, &names, Seat::Backup).expect("hash"),
            master_pod_hash(&next, &next_names, Seat::Backup).expect("hash")
        );
        let pod = master_pod(&next, &next_names, Seat::Backup, Role::Standby).expect("pod");
        let c = container(&pod.spec);
        assert_eq!(c.image.as_deref(), Some("dsm:next"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    }

    #[test]
    fn custom_resources_and_storage_classes_reach_the_pods() {
        let requests = |cpu: &str| ResourceRequirements {
            requests: Some(BTreeMap::from([(
                "cpu".to_string(),
                Quantity(cpu.to_string()),
            )])),
            ..ResourceRequirements::default()
        };
        let mut spec = DsmClusterSpec::default();
        spec.master.resources = Some(requests("500m"));
        spec.slaves.resources = Some(requests("250m"));
        spec.slaves.storage.storage_class_name = Some("fast-ssd".to_string());
        spec.slaves.storage.size = "20Gi".to_string();
        let (dc, names) = cluster(spec);

        let master = master_pod(&dc, &names, Seat::Master, Role::Active).expect("pod");
        assert_eq!(container(&master.spec).resources, Some(requests("500m")));
        // The backup inherits the master's resources unless it sets its own.
        let backup = master_pod(&dc, &names, Seat::Backup, Role::Standby).expect("pod");
        assert_eq!(container(&backup.spec).resources, Some(requests("500m")));

        let sts = slave_set(&dc, &names, 3).expect("sts").spec.expect("spec");
        assert_eq!(
            container(&sts.template.spec).resources,
            Some(requests("250m"))
        );
        let claim = &sts.volume_claim_templates.expect("claims")[0];
        let claim_spec = claim.spec.as_ref().expect("claim spec");
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast-ssd"));
        assert_eq!(
            claim_spec
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .map(|r| r["storage"].clone()),
            Some(Quantity("20Gi".to_string()))
        );
    }

    #[test]
    fn pods_advertise_their_service_addresses() {
        let (dc, names) = cluster(DsmClusterSpec::default());
        let backup = master_pod(&dc, &names, Seat::Backup, Role::Standby).expect("pod");
        let c = container(&backup.spec);
        assert_eq!(c.args, Some(vec!["backup".to_string()]));
        assert_eq!(
            env_value(c, "DSM_ADVERTISE"),
            Some("test-backup.testns.svc:12346")
        );
        assert_eq!(env_value(c, "DSM_LISTEN"), Some("0.0.0.0:12346"));

        let sts = slave_set(&dc, &names, 3).expect("sts").spec.expect("spec");
        let c = container(&sts.template.spec);
        assert_eq!(env_value(c, "DSM_ID"), Some("$(POD_NAME)"));
        assert_eq!(
            env_value(c, "DSM_ADVERTISE"),
            Some("$(POD_NAME).test-slaves.testns.svc:12400")
        );
    }

    #[test]
    fn leader_service_selects_the_active_role_by_port_name() {
        let (dc, names) = cluster(DsmClusterSpec::default());
        let svc = leader_service(&dc, &names)
            .expect("svc")
            .spec
            .expect("spec");
        assert_eq!(
            svc.selector.as_ref().and_then(|s| s.get(LABEL_ROLE)),
            Some(&"active".to_string())
        );
        let port = &svc.ports.expect("ports")[0];
        assert_eq!(
            port.target_port,
            Some(IntOrString::String("grpc".to_string()))
        );
    }

    #[test]
    fn client_idles_with_the_cluster_addresses() {
        let (dc, names) = cluster(DsmClusterSpec::default());
        let deploy = client_deployment(&dc, &names).expect("client");
        let c = container(&deploy.spec.as_ref().expect("spec").template.spec).clone();
        assert_eq!(c.command, Some(vec!["sleep".to_string()]));
        assert_eq!(c.args, Some(vec!["infinity".to_string()]));
        assert_eq!(
            c.env_from
                .and_then(|e| e[0].config_map_ref.clone())
                .map(|r| r.name),
            Some("test-config".to_string())
        );
    }

    #[test]
    fn service_monitor_labels_targets_the_way_the_dashboards_select_them() {
        let (dc, names) = cluster(DsmClusterSpec::default());
        let sm = service_monitor(&dc, &names).expect("sm");
        let relabelings = &sm.data["spec"]["endpoints"][0]["relabelings"];
        let target = |label: &str| {
            relabelings
                .as_array()
                .expect("relabelings")
                .iter()
                .find(|r| r["targetLabel"] == label)
                .map(|r| r["sourceLabels"][0].clone())
        };
        // Kubernetes turns the Service label app.kubernetes.io/instance (the cluster's
        // name) into this meta label.
        assert_eq!(
            target("cluster"),
            Some(serde_json::json!(
                "__meta_kubernetes_service_label_app_kubernetes_io_instance"
            ))
        );
        assert_eq!(
            target("instance"),
            Some(serde_json::json!("__meta_kubernetes_pod_name"))
        );
        let selected = &sm.data["spec"]["selector"]["matchLabels"];
        assert_eq!(selected[LABEL_INSTANCE], "test");
    }

    fn secured(
        secret_name: Option<&str>,
        client_auth: Option<TlsClientAuth>,
        auth: bool,
    ) -> (DsmCluster, Names) {
        let mut spec = DsmClusterSpec::default();
        spec.tls.enabled = true;
        spec.tls.secret_name = secret_name.map(str::to_string);
        spec.tls.client_auth = client_auth;
        if auth {
            spec.auth.secret_name = Some("test-auth".to_string());
        }
        cluster(spec)
    }

    /// The spec of every member pod: master, backup and the slaves' template.
    fn member_specs(dc: &DsmCluster, names: &Names) -> Vec<(&'static str, PodSpec)> {
        let pod = |seat| {
            master_pod(dc, names, seat, Role::Standby)
                .expect("pod")
                .spec
                .expect("spec")
        };
        let slave = slave_set(dc, names, 3)
            .expect("sts")
            .spec
            .and_then(|s| s.template.spec)
            .expect("spec");
        vec![
            ("master", pod(Seat::Master)),
            ("backup", pod(Seat::Backup)),
            ("slave", slave),
        ]
    }

    fn volume<'a>(spec: &'a PodSpec, name: &str) -> Option<&'a SecretVolumeSource> {
        spec.volumes
            .as_ref()?
            .iter()
            .find(|v| v.name == name)?
            .secret
            .as_ref()
    }

    fn volume_keys(source: &SecretVolumeSource) -> Vec<&str> {
        source
            .items
            .iter()
            .flatten()
            .map(|i| i.key.as_str())
            .collect()
    }

    fn mount<'a>(c: &'a Container, name: &str) -> Option<&'a VolumeMount> {
        c.volume_mounts.as_ref()?.iter().find(|m| m.name == name)
    }

    #[test]
    fn tls_mounts_the_member_secret_on_every_member_and_probes_over_http() {
        let (dc, names) = secured(None, Some(TlsClientAuth::Required), false);
        for (who, spec) in member_specs(&dc, &names) {
            let tls = volume(&spec, "tls").unwrap_or_else(|| panic!("{who}: no tls volume"));
            assert_eq!(tls.secret_name.as_deref(), Some("test-tls"), "{who}");
            assert_eq!(volume_keys(tls), ["tls.crt", "tls.key", "ca.crt"], "{who}");
            assert_eq!(tls.default_mode, Some(0o440), "{who}");
            let c = &spec.containers[0];
            let m = mount(c, "tls").unwrap_or_else(|| panic!("{who}: not mounted"));
            assert_eq!((m.mount_path.as_str(), m.read_only), (TLS_DIR, Some(true)));
            for (var, value) in [
                ("DSM_TLS_CERT", "/etc/dsm/tls/tls.crt"),
                ("DSM_TLS_KEY", "/etc/dsm/tls/tls.key"),
                ("DSM_TLS_CA", "/etc/dsm/tls/ca.crt"),
                ("DSM_TLS_CLIENT_AUTH", "required"),
            ] {
                assert_eq!(env_value(c, var), Some(value), "{who}: {var}");
            }
            // kubelet's gRPC probes cannot speak TLS: HTTP on the metrics port instead.
            for (probe, path) in [
                (&c.startup_probe, "/healthz"),
                (&c.readiness_probe, "/readyz"),
                (&c.liveness_probe, "/healthz"),
            ] {
                let probe = probe.as_ref().expect("probe");
                assert!(probe.grpc.is_none(), "{who}");
                let http = probe.http_get.as_ref().expect("httpGet");
                assert_eq!(http.path.as_deref(), Some(path), "{who}");
                assert_eq!(http.port, IntOrString::String("metrics".to_string()));
            }
            // No tokens configured: nothing of them.
            assert!(volume(&spec, "auth").is_none(), "{who}");
            assert_eq!(env_value(c, "DSM_TOKEN_FILE"), None, "{who}");
        }
    }

    #[test]
    fn without_tls_members_keep_grpc_probes_and_mount_no_secret() {
        let (dc, names) = cluster(DsmClusterSpec::default());
        for (who, spec) in member_specs(&dc, &names) {
            assert!(volume(&spec, "tls").is_none(), "{who}");
            let c = &spec.containers[0];
            assert_eq!(env_value(c, "DSM_TLS_CA"), None, "{who}");
            for probe in [&c.startup_probe, &c.readiness_probe, &c.liveness_probe] {
                assert!(
                    probe.as_ref().and_then(|p| p.grpc.as_ref()).is_some(),
                    "{who}"
                );
            }
        }
        // clientAuth is left to the node's default unless set.
        let (dc, names) = secured(None, None, false);
        for (who, spec) in member_specs(&dc, &names) {
            assert_eq!(
                env_value(&spec.containers[0], "DSM_TLS_CLIENT_AUTH"),
                None,
                "{who}"
            );
        }
    }

    #[test]
    fn a_secret_of_the_users_own_is_mounted_instead_of_the_generated_one() {
        let (dc, names) = secured(Some("dsm-cert-manager"), None, false);
        assert_eq!(
            member_tls_secret(&dc, &names).as_deref(),
            Some("dsm-cert-manager")
        );
        for (who, spec) in member_specs(&dc, &names) {
            let tls = volume(&spec, "tls").expect("tls volume");
            assert_eq!(
                tls.secret_name.as_deref(),
                Some("dsm-cert-manager"),
                "{who}"
            );
        }
    }

    #[test]
    fn tokens_reach_master_and_backup_but_not_the_slaves() {
        let (dc, names) = secured(None, None, true);
        for (who, spec) in member_specs(&dc, &names) {
            let c = &spec.containers[0];
            if who == "slave" {
                assert!(volume(&spec, "auth").is_none());
                assert_eq!(env_value(c, "DSM_TOKEN_FILE"), None);
                continue;
            }
            let auth = volume(&spec, "auth").expect("auth volume");
            assert_eq!(auth.secret_name.as_deref(), Some("test-auth"));
            assert_eq!(volume_keys(auth), ["tokens", "read-only-tokens"]);
            assert_eq!(
                mount(c, "auth").map(|m| m.mount_path.as_str()),
                Some(AUTH_DIR)
            );
            assert_eq!(
                env_value(c, "DSM_TOKEN_FILE"),
                Some("/etc/dsm/auth/tokens"),
                "{who}"
            );
            assert_eq!(
                env_value(c, "DSM_READ_ONLY_TOKEN_FILE"),
                Some("/etc/dsm/auth/read-only-tokens"),
                "{who}"
            );
        }
    }

    #[test]
    fn the_client_gets_the_ca_and_its_token_but_never_a_key() {
        let (dc, names) = secured(None, None, true);
        let deploy = client_deployment(&dc, &names).expect("client");
        let template = deploy.spec.expect("spec").template;
        assert_eq!(
            template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.as_ref())
                .and_then(|l| l.get(LABEL_CLIENT))
                .map(String::as_str),
            Some("test")
        );
        let spec = template.spec.expect("pod spec");
        let ca = volume(&spec, "tls-ca").expect("CA volume");
        assert_eq!(ca.secret_name.as_deref(), Some("test-tls"));
        assert_eq!(volume_keys(ca), ["ca.crt"]);
        let c = &spec.containers[0];
        assert_eq!(env_value(c, "DSM_TLS_CA"), Some("/etc/dsm/tls/ca.crt"));
        for var in ["DSM_TLS_CERT", "DSM_TLS_KEY", "DSM_TOKEN_FILE"] {
            assert_eq!(env_value(c, var), None, "{var}");
        }
        let printed = serde_json::to_string(&spec).expect("json");
        assert!(!printed.contains("tls.key"), "{printed}");
        let token = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "DSM_TOKEN")
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("DSM_TOKEN from the auth Secret");
        assert_eq!(
            (token.name.as_str(), token.key.as_str(), token.optional),
            ("test-auth", "client-token", Some(true))
        );
    }

    #[test]
    fn master_and_backup_services_publish_pods_that_are_not_ready() {
        let (dc, names) = cluster(DsmClusterSpec::default());
        for seat in [Seat::Master, Seat::Backup] {
            let svc = seat_service(&dc, &names, seat).expect("svc");
            assert_eq!(
                svc.spec.and_then(|s| s.publish_not_ready_addresses),
                Some(true)
            );
        }
    }

    #[test]
    fn tls_settings_make_master_pods_outdated() {
        let (plain, plain_names) = cluster(DsmClusterSpec::default());
        let (tls, tls_names) = secured(None, None, false);
        let (auth, auth_names) = secured(None, None, true);
        let hash = |dc, names| master_pod_hash(dc, names, Seat::Master).expect("hash");
        assert_ne!(hash(&plain, &plain_names), hash(&tls, &tls_names));
        assert_ne!(hash(&tls, &tls_names), hash(&auth, &auth_names));
    }

    #[test]
    fn the_member_secret_has_the_kubernetes_tls_layout() {
        let (dc, names) = secured(None, None, false);
        let now = k8s_openapi::jiff::Timestamp::now();
        let ca = certs::generate_ca(&names, now).expect("CA");
        let member = certs::issue_member(&ca, &names, now).expect("member");
        let secret = tls_secret(&dc, &names, &member).expect("secret");
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let keys: Vec<&String> = secret.data.iter().flatten().map(|(k, _)| k).collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
        let ca_secret = tls_ca_secret(&dc, &names, &ca).expect("secret");
        assert_eq!(ca_secret.metadata.name.as_deref(), Some("test-tls-ca"));
        assert_eq!(
            certs::CaPems::from_secret(&ca_secret, "test-tls-ca").expect("CA"),
            ca
        );
    }
}
