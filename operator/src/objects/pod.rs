//! What every DSM pod shares: one hardened `dsm` container in a hardened pod spec, its
//! probes, an in-memory `/tmp`, and the volume requests of its claims; and the pod spec
//! of a member (master, backup or slave) built from them.
//!
//! Pods run as a non-root user with a read-only root filesystem, every capability dropped
//! and the RuntimeDefault seccomp profile; the only writable paths are their volumes and
//! an in-memory `/tmp`. With `spec.tls.enabled` the probes move from gRPC to the HTTP
//! `/healthz` and `/readyz` of the metrics port, because kubelet's gRPC probes cannot
//! speak TLS (`set_probes`).

use std::collections::BTreeMap;

use dsm_wire::ports;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, GRPCAction, HTTPGetAction, PodSecurityContext, PodSpec, Probe,
    ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::secrets::member_security;
use crate::crd::DsmCluster;
use crate::names::Names;

/// The unprivileged user (and group) every container runs as; the images create it.
pub const RUN_AS_USER: i64 = 10001;

/// A claim's request for `size` of storage.
pub(super) fn storage_request(size: &str) -> VolumeResourceRequirements {
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

fn env_from_config(names: &Names) -> Vec<EnvFromSource> {
    vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: names.config(),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    }]
}

fn port(name: &str, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: i32::from(number),
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

/// gRPC health probe on a node's main port (every `dsm` server serves grpc.health.v1).
fn grpc_probe(port: u16, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        grpc: Some(GRPCAction {
            port: i32::from(port),
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
fn set_probes(container: &mut Container, tls: bool, port: u16) {
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

/// An in-memory `/tmp` and its mount: with a read-only root filesystem, the one writable
/// path besides the pod's volumes.
pub(super) fn tmp_volume() -> (Volume, VolumeMount) {
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

/// What sets one member (master, backup or slave) apart in [`member_pod_spec`].
pub(super) struct Member {
    /// The `dsm` subcommand it runs.
    pub(super) command: &'static str,
    /// Its gRPC port, which its probes check too.
    pub(super) port: u16,
    /// Its own `DSM_*` variables (the ConfigMap has the cluster-wide ones).
    pub(super) env: Vec<EnvVar>,
    /// Its resource requests and limits.
    pub(super) resources: Option<ResourceRequirements>,
    /// Where it mounts the volume it keeps its data on (the log, or a slave's store).
    pub(super) data_mount: VolumeMount,
    /// The pod volume behind `data_mount`, unless a StatefulSet's claim template
    /// provides it.
    pub(super) data_volume: Option<Volume>,
    /// Whether it mounts the client token files (master and backup serve `Kv`).
    pub(super) tokens: bool,
}

/// The pod spec of a member: the hardened `dsm` container with its ports, probes, data
/// volume, `/tmp` and what it needs of the Secrets.
pub(super) fn member_pod_spec(dc: &DsmCluster, names: &Names, member: Member) -> PodSpec {
    let (tmp, tmp_mount) = tmp_volume();
    let (security_volumes, security_mounts, security_env) =
        member_security(dc, names, member.tokens);
    let mut container = dsm_container(dc, names, vec![member.command.to_string()]);
    let mut vars = member.env;
    vars.extend(security_env);
    container.env = Some(vars);
    container.ports = Some(vec![
        port("grpc", member.port),
        port("metrics", ports::METRICS),
    ]);
    container.resources = member.resources;
    let mut mounts = vec![member.data_mount, tmp_mount];
    mounts.extend(security_mounts);
    container.volume_mounts = Some(mounts);
    set_probes(&mut container, dc.spec.tls.enabled, member.port);
    let mut volumes: Vec<Volume> = member.data_volume.into_iter().collect();
    volumes.push(tmp);
    volumes.extend(security_volumes);
    hardened_pod_spec(vec![container], volumes)
}

/// A `dsm` container with the hardening every component shares.
pub(super) fn dsm_container(dc: &DsmCluster, names: &Names, args: Vec<String>) -> Container {
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
pub(super) fn hardened_pod_spec(containers: Vec<Container>, volumes: Vec<Volume>) -> PodSpec {
    PodSpec {
        containers,
        volumes: Some(volumes),
        security_context: Some(pod_security_context()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        ..PodSpec::default()
    }
}
