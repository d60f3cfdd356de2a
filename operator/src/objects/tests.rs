//! Tests of the objects a spec produces: each object, and what all of them share
//! (ownership, hardening, TLS and token mounts).

use std::collections::BTreeMap;

use dsm_wire::Role;
use dsm_wire::paths::{AUTH_DIR, LOG_DIR, TLS_DIR};
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaimVolumeSource, PodSpec, ResourceRequirements,
    SecretVolumeSource, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::certs;
use crate::crd::{AccessMode, DsmCluster, DsmClusterSpec, PullPolicy, TlsClientAuth};
use crate::fixtures::{bootstrapped, test_cluster, test_snapshot};
use crate::names::{LABEL_CLIENT, LABEL_INSTANCE, LABEL_LOG_VOLUME, LABEL_ROLE, Names, Seat};

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
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
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
        let pod = master_pod(&dc, &names, seat, Role::Standby, None).expect("pod");
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
fn a_restoring_pod_is_hardened_too() {
    let (dc, names) = cluster(bootstrapped(test_snapshot()));
    let pod = master_pod(
        &dc,
        &names,
        Seat::Master,
        Role::Standby,
        Some(&test_snapshot()),
    );
    assert_hardened(pod.expect("pod").spec.as_ref().expect("spec"));
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
        master_pod(&dc, &names, Seat::Master, Role::Active, None)
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
    let pod = master_pod(&dc, &names, Seat::Master, Role::Active, None).expect("pod");
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
        let pod = master_pod(&dc, &names, seat, Role::Standby, None).expect("pod");
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
    let pod = master_pod(&dc, &names, Seat::Backup, Role::Standby, None).expect("pod");
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
    let active = master_pod(&dc, &names, Seat::Master, Role::Active, None).expect("pod");
    let standby = master_pod(&dc, &names, Seat::Master, Role::Standby, None).expect("pod");
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
    let pod = master_pod(&next, &next_names, Seat::Backup, Role::Standby, None).expect("pod");
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

    let master = master_pod(&dc, &names, Seat::Master, Role::Active, None).expect("pod");
    assert_eq!(container(&master.spec).resources, Some(requests("500m")));
    // The backup inherits the master's resources unless it sets its own.
    let backup = master_pod(&dc, &names, Seat::Backup, Role::Standby, None).expect("pod");
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
    let backup = master_pod(&dc, &names, Seat::Backup, Role::Standby, None).expect("pod");
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
        master_pod(dc, names, seat, Role::Standby, None)
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

/// The volume `name` of a pod spec, if it is a claim.
fn claim_volume<'a>(
    spec: &'a PodSpec,
    name: &str,
) -> Option<&'a PersistentVolumeClaimVolumeSource> {
    spec.volumes
        .as_ref()?
        .iter()
        .find(|v| v.name == name)?
        .persistent_volume_claim
        .as_ref()
}

#[test]
fn a_bootstrap_snapshot_is_restored_by_an_init_container_on_both_master_pods() {
    let mut spec = bootstrapped(test_snapshot());
    spec.master.resources = Some(ResourceRequirements {
        requests: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("256Mi".to_string()),
        )])),
        ..ResourceRequirements::default()
    });
    let (dc, names) = cluster(spec);
    for seat in [Seat::Master, Seat::Backup] {
        let pod = master_pod(&dc, &names, seat, Role::Standby, Some(&test_snapshot()))
            .expect("pod")
            .spec
            .expect("spec");
        let [restore] = pod.init_containers.as_deref().unwrap_or_default() else {
            panic!("{seat:?}: expected one init container");
        };
        assert_eq!(restore.name, "restore");
        assert_eq!(restore.image, pod.containers[0].image, "the same dsm image");
        assert_eq!(
            restore.args.as_deref().unwrap_or_default(),
            [
                "snapshot",
                "restore",
                "/snapshot/backups/test-1.snap",
                "--log-dir",
                LOG_DIR,
                "--if-empty"
            ]
        );
        // The log mounted where the main container has it, the snapshot read-only.
        let log = mount(restore, "log").expect("log mount");
        assert_eq!(Some(log), mount(&pod.containers[0], "log"));
        assert_eq!((log.mount_path.as_str(), log.read_only), (LOG_DIR, None));
        let snapshot = mount(restore, "snapshot").expect("snapshot mount");
        assert_eq!(
            (snapshot.mount_path.as_str(), snapshot.read_only),
            (SNAPSHOT_DIR, Some(true))
        );
        let claim = claim_volume(&pod, "snapshot").expect("snapshot volume");
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            ("test-snapshots", Some(true))
        );
        assert_eq!(restore.resources, pod.containers[0].resources, "{seat:?}");
        // The main container does not see the snapshot.
        assert_eq!(mount(&pod.containers[0], "snapshot"), None);
    }
}

#[test]
fn without_bootstrap_no_pod_restores_or_mounts_a_snapshot() {
    // With a bootstrap in the spec too: slaves never restore, and a master pod does
    // only when given the snapshot (the reconciler decides per pod).
    for (dc, names) in [
        cluster(DsmClusterSpec::default()),
        cluster(bootstrapped(test_snapshot())),
    ] {
        for (who, spec) in member_specs(&dc, &names) {
            assert_eq!(spec.init_containers, None, "{who}");
            assert!(claim_volume(&spec, "snapshot").is_none(), "{who}");
        }
    }
}

#[test]
fn bootstrap_is_left_out_of_the_master_pods_spec_hash() {
    let (plain, plain_names) = cluster(DsmClusterSpec::default());
    let mut other = test_snapshot();
    other.path = "backups/test-2.snap".to_string();
    for seat in [Seat::Master, Seat::Backup] {
        let hash = master_pod_hash(&plain, &plain_names, seat).expect("hash");
        for snapshot in [test_snapshot(), other.clone()] {
            let (dc, names) = cluster(bootstrapped(snapshot.clone()));
            assert_eq!(master_pod_hash(&dc, &names, seat).expect("hash"), hash);
            let pod = master_pod(&dc, &names, seat, Role::Active, Some(&snapshot)).expect("pod");
            assert_eq!(
                pod.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(crate::names::ANNOTATION_SPEC_HASH)),
                Some(&hash)
            );
        }
    }
}

#[test]
fn the_restore_a_pod_was_created_with_is_read_back_from_its_spec() {
    let (dc, names) = cluster(bootstrapped(test_snapshot()));
    let restoring = master_pod(
        &dc,
        &names,
        Seat::Backup,
        Role::Standby,
        Some(&test_snapshot()),
    )
    .expect("pod");
    assert_eq!(restored_from(&restoring), Some(test_snapshot()));
    let plain = master_pod(&dc, &names, Seat::Backup, Role::Standby, None).expect("pod");
    assert_eq!(restored_from(&plain), None);
    // As the API server lists it, with the defaults it fills in.
    let mut listed = serde_json::to_value(&restoring).expect("json");
    listed["spec"]["initContainers"][0]["terminationMessagePath"] = "/dev/termination-log".into();
    let listed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(listed).expect("pod");
    assert_eq!(restored_from(&listed), Some(test_snapshot()));
}
