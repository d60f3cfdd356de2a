//! The slaves: their StatefulSet (each slave with its own data volume), the headless
//! Service giving each one a stable DNS name, and the PodDisruptionBudget that keeps
//! node drains from taking them below the write quorum.

use std::collections::BTreeMap;

use dsm_wire::{env, paths, ports};
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, EnvVarSource, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodTemplateSpec, Service,
    ServiceSpec, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::shared_config_checksum;
use super::pod::{Member, member_pod_spec, storage_request};
use super::{env_var, meta, service_port};
use crate::crd::DsmCluster;
use crate::error::Result;
use crate::names::{ANNOTATION_CONFIG_CHECKSUM, LABEL_SCRAPE, Names, labels, selector_labels};

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
                service_port("grpc", ports::SLAVE),
                service_port("metrics", ports::METRICS),
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
    let vars = vec![
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
        env_var(env::ID, "$(POD_NAME)"),
        env_var(env::LISTEN, format!("0.0.0.0:{}", ports::SLAVE)),
        env_var(
            env::ADVERTISE,
            format!(
                "$(POD_NAME).{}.{}.svc:{}",
                names.slaves_service(),
                names.namespace,
                ports::SLAVE
            ),
        ),
        env_var(env::DATA_DIR, paths::DATA_DIR),
    ];
    let member = Member {
        command: "slave",
        port: ports::SLAVE,
        env: vars,
        resources: slaves.resources.clone(),
        data_mount: VolumeMount {
            name: "data".to_string(),
            mount_path: paths::DATA_DIR.to_string(),
            ..VolumeMount::default()
        },
        // The StatefulSet's claim template below.
        data_volume: None,
        tokens: false,
    };
    let mut pod_spec = member_pod_spec(dc, names, member);
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
