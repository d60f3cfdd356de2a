//! Master and backup: the log volume they share, their pods (and the spec hash that
//! tells an outdated one), their Services and the leader Service.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    Pod, PodAffinity, PodAffinityTerm, PodSpec, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::master_config_checksum;
use super::pod::{Member, member_pod_spec, storage_request};
use super::{env, hash_of, meta, service_port};
use crate::crd::{AccessMode, DsmCluster};
use crate::error::Result;
use crate::names::{
    ANNOTATION_CONFIG_CHECKSUM, ANNOTATION_SPEC_HASH, LABEL_INSTANCE, LABEL_LOG_VOLUME, LABEL_NAME,
    LABEL_ROLE, LABEL_SCRAPE, MASTER_PORT, METRICS_PORT, Names, Role, Seat, labels,
    selector_labels,
};

/// Where master and backup mount the shared log volume.
pub const LOG_DIR: &str = "/var/lib/dsm/log";

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
    let member = Member {
        command: seat.component(),
        port: seat.port(),
        env: vec![
            env("DSM_ID", names.seat(seat)),
            env("DSM_LISTEN", format!("0.0.0.0:{}", seat.port())),
            env("DSM_ADVERTISE", names.seat_address(seat)),
        ],
        resources,
        data_mount: VolumeMount {
            name: "log".to_string(),
            mount_path: LOG_DIR.to_string(),
            ..VolumeMount::default()
        },
        data_volume: Some(Volume {
            name: "log".to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: names.log_pvc(),
                read_only: Some(false),
            }),
            ..Volume::default()
        }),
        tokens: true,
    };
    let mut spec = member_pod_spec(dc, names, member);
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
