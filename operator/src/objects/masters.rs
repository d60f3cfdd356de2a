//! Master and backup: the log volume they share, their pods (and the spec hash that
//! tells an outdated one), their Services and the leader Service.
//!
//! With `spec.bootstrap.snapshot` both pods restore the log from a snapshot file before
//! their `dsm` process starts (the init container of [`master_pod`]); the spec hash leaves
//! it out, for the reasons given at [`BootstrapSpec`](crate::crd::BootstrapSpec).

use std::collections::BTreeMap;

use dsm_wire::{Role, env, paths, ports};
use k8s_openapi::api::core::v1::{
    Affinity, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    Pod, PodAffinity, PodAffinityTerm, PodSpec, ResourceRequirements, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::master_config_checksum;
use super::pod::{Member, dsm_container, member_pod_spec, storage_request};
use super::{env_var, hash_of, meta, service_port};
use crate::crd::{AccessMode, DsmCluster, SnapshotSource};
use crate::error::Result;
use crate::names::{
    ANNOTATION_CONFIG_CHECKSUM, ANNOTATION_SPEC_HASH, LABEL_INSTANCE, LABEL_LOG_VOLUME, LABEL_NAME,
    LABEL_ROLE, LABEL_SCRAPE, Names, Seat, labels, selector_labels,
};

/// Where the restore init container mounts the claim of `spec.bootstrap.snapshot`,
/// read-only.
pub const SNAPSHOT_DIR: &str = "/snapshot";
/// The pod volume of the log claim.
const LOG_VOLUME: &str = "log";
/// The pod volume of the snapshot claim.
const SNAPSHOT_VOLUME: &str = "snapshot";
/// The init container restoring the log from a snapshot.
const RESTORE_CONTAINER: &str = "restore";

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

/// CPU and memory of a master-capable pod's containers: the backup's own, else the
/// master's.
fn seat_resources(dc: &DsmCluster, seat: Seat) -> Option<ResourceRequirements> {
    match seat {
        Seat::Backup => dc
            .spec
            .backup
            .resources
            .clone()
            .or_else(|| dc.spec.master.resources.clone()),
        Seat::Master => dc.spec.master.resources.clone(),
    }
}

/// How master, backup and the restore init container mount the log volume.
fn log_mount() -> VolumeMount {
    VolumeMount {
        name: LOG_VOLUME.to_string(),
        mount_path: paths::LOG_DIR.to_string(),
        ..VolumeMount::default()
    }
}

/// The spec of a master-capable pod, without its role (so a failover does not make it
/// look outdated) and without the restore of `spec.bootstrap` ([`with_restore`]).
fn master_pod_spec(dc: &DsmCluster, names: &Names, seat: Seat) -> PodSpec {
    let member = Member {
        command: seat.component(),
        port: seat.port(),
        env: vec![
            env_var(env::ID, names.seat(seat)),
            env_var(env::LISTEN, format!("0.0.0.0:{}", seat.port())),
            env_var(env::ADVERTISE, names.seat_address(seat)),
        ],
        resources: seat_resources(dc, seat),
        data_mount: log_mount(),
        data_volume: Some(Volume {
            name: LOG_VOLUME.to_string(),
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

/// Adds to a master-capable pod's spec the init container that restores the log from
/// `snapshot`, and the snapshot claim it reads, mounted read-only.
///
/// `dsm snapshot restore --if-empty` builds the log only in a volume that holds none:
/// restores into one directory take turns on a lock file and an unfinished one is redone,
/// so when both pods start at once one restores and the other finds the log, and at any
/// later start (a restart, a replacement) both find it and change nothing. Neither `dsm`
/// process starts before its init container has exited successfully, so no master or
/// backup ever serves from a log the restore has not finished.
fn with_restore(
    mut spec: PodSpec,
    dc: &DsmCluster,
    names: &Names,
    seat: Seat,
    snapshot: &SnapshotSource,
) -> PodSpec {
    let file = format!("{SNAPSHOT_DIR}/{}", snapshot.path);
    let args = [
        "snapshot",
        "restore",
        file.as_str(),
        "--log-dir",
        paths::LOG_DIR,
        "--if-empty",
    ];
    let mut restore = dsm_container(dc, names, args.map(str::to_string).to_vec());
    restore.name = RESTORE_CONTAINER.to_string();
    // The same as the main container's, so the init container adds nothing to what the
    // pod requests.
    restore.resources = seat_resources(dc, seat);
    restore.volume_mounts = Some(vec![
        log_mount(),
        VolumeMount {
            name: SNAPSHOT_VOLUME.to_string(),
            mount_path: SNAPSHOT_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ]);
    spec.init_containers = Some(vec![restore]);
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: SNAPSHOT_VOLUME.to_string(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: snapshot.claim_name.clone(),
            read_only: Some(true),
        }),
        ..Volume::default()
    });
    spec
}

/// The snapshot an existing master-capable pod was created to restore from, read back
/// from its spec (what `with_restore` put there): `None` for a pod without the restore
/// init container.
///
/// The reconciler applies an existing pod with this rather than the current
/// `spec.bootstrap`, because the API server refuses any change of a pod's init containers
/// or volumes.
pub fn restored_from(pod: &Pod) -> Option<SnapshotSource> {
    let spec = pod.spec.as_ref()?;
    let claim_name = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == SNAPSHOT_VOLUME)?
        .persistent_volume_claim
        .as_ref()?
        .claim_name
        .clone();
    let prefix = format!("{SNAPSHOT_DIR}/");
    let path = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == RESTORE_CONTAINER)?
        .args
        .iter()
        .flatten()
        .find_map(|arg| arg.strip_prefix(&prefix))?
        .to_string();
    Some(SnapshotSource { claim_name, path })
}

/// A master-capable pod: `dsm master` or `dsm backup` on the shared log volume, first
/// restoring the log from `restore` if given (the reconciler passes
/// `spec.bootstrap.snapshot` for a pod it creates, and [`restored_from`] for one that
/// exists).
pub fn master_pod(
    dc: &DsmCluster,
    names: &Names,
    seat: Seat,
    role: Role,
    restore: Option<&SnapshotSource>,
) -> Result<Pod> {
    let mut labels = labels(names, seat.component());
    labels.insert(LABEL_ROLE.to_string(), role.as_str().to_string());
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
    let spec = master_pod_spec(dc, names, seat);
    Ok(Pod {
        metadata,
        spec: Some(match restore {
            Some(snapshot) => with_restore(spec, dc, names, seat, snapshot),
            None => spec,
        }),
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
                service_port("metrics", ports::METRICS),
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
        (LABEL_ROLE.to_string(), Role::Active.as_str().to_string()),
    ]);
    Ok(Service {
        metadata: meta(dc, names, names.leader(), labels(names, "leader"))?,
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("grpc".to_string()),
                port: i32::from(ports::MASTER),
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
