//! The idle client Deployment people `kubectl exec` into to use the REPL.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::config::shared_config_checksum;
use super::pod::{dsm_container, hardened_pod_spec, tmp_volume};
use super::secrets::client_security;
use super::{env_var, meta};
use crate::crd::DsmCluster;
use crate::error::Result;
use crate::names::{ANNOTATION_CONFIG_CHECKSUM, LABEL_CLIENT, Names, labels, selector_labels};

/// The idle client: `kubectl exec -it deploy/<name>-client -- dsm client` opens the REPL
/// with `DSM_MASTER` and `DSM_BACKUP` already set from the ConfigMap, and with TLS the
/// CA (`DSM_TLS_CA`, the `ca.crt` of the member Secret and nothing else of it) and with
/// tokens `DSM_TOKEN` (the auth Secret's `client-token`, if it has one). Its pods carry
/// [`LABEL_CLIENT`], which lets them through the NetworkPolicies.
pub fn client_deployment(dc: &DsmCluster, names: &Names) -> Result<Deployment> {
    let (tmp, tmp_mount) = tmp_volume();
    let (security_volumes, security_mounts, security_env) = client_security(dc, names);
    let mut container = dsm_container(dc, names, vec!["infinity".to_string()]);
    container.command = Some(vec!["sleep".to_string()]);
    // The REPL keeps its history under $HOME; the root filesystem is read-only.
    let mut vars = vec![env_var("HOME", "/tmp")];
    vars.extend(security_env);
    let mut mounts = vec![tmp_mount];
    mounts.extend(security_mounts);
    let mut volumes = vec![tmp];
    volumes.extend(security_volumes);
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
