//! Validates every manifest the project ships, and every object the operator builds,
//! against the Kubernetes schemas, offline, and lints and renders the Helm chart with
//! real Helm code — by running `validate_manifests.py` beside this file.
//!
//! Needs the Python packages `kubernetes-validate` and `helm-python-sdk`:
//! `scripts/install-test-deps.sh` installs them. Set `DSM_TEST_PYTHON` to use another
//! interpreter than `python3`.

use std::path::{Path, PathBuf};
use std::process::Command;

use dsm_operator::certs;
use dsm_operator::crd::{
    AccessMode, BootstrapSpec, DsmCluster, DsmClusterSpec, SnapshotSource, TlsClientAuth,
};
use dsm_operator::names::{Names, Seat};
use dsm_operator::netpol;
use dsm_operator::objects;
use dsm_wire::Role;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator/ has a parent")
        .to_path_buf()
}

fn python() -> String {
    std::env::var("DSM_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn cluster(name: &str, spec: DsmClusterSpec) -> DsmCluster {
    let mut dc = DsmCluster::new(name, spec);
    dc.metadata = ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some("default".to_string()),
        uid: Some("7d3c1a52-0f7e-4b9e-a7d5-2f4c9c1e8b01".to_string()),
        ..ObjectMeta::default()
    };
    dc
}

/// A master-capable pod as the operator creates it for `dc` (restoring `spec.bootstrap`).
fn new_master_pod(dc: &DsmCluster, names: &Names, seat: Seat, role: Role) -> Pod {
    let restore = dc.spec.bootstrap_snapshot();
    objects::master_pod(dc, names, seat, role, restore).expect("pod")
}

/// Every object the operator would create for `dc`, as one multi-document YAML file.
fn objects_yaml(dc: &DsmCluster) -> String {
    let names = Names::of(dc).expect("names");
    let docs = [
        serde_saphyr::to_string(&objects::config_map(dc, &names).expect("cm")),
        serde_saphyr::to_string(&objects::log_pvc(dc, &names).expect("pvc")),
        serde_saphyr::to_string(&new_master_pod(dc, &names, Seat::Master, Role::Active)),
        serde_saphyr::to_string(&new_master_pod(dc, &names, Seat::Backup, Role::Standby)),
        serde_saphyr::to_string(&objects::seat_service(dc, &names, Seat::Master).expect("svc")),
        serde_saphyr::to_string(&objects::seat_service(dc, &names, Seat::Backup).expect("svc")),
        serde_saphyr::to_string(&objects::leader_service(dc, &names).expect("svc")),
        serde_saphyr::to_string(&objects::slaves_service(dc, &names).expect("svc")),
        serde_saphyr::to_string(
            &objects::slave_set(dc, &names, dc.spec.slaves.replicas).expect("sts"),
        ),
        serde_saphyr::to_string(&objects::client_deployment(dc, &names).expect("client")),
        serde_saphyr::to_string(&objects::pod_disruption_budget(dc, &names).expect("pdb")),
        serde_saphyr::to_string(&objects::service_monitor(dc, &names).expect("sm")),
        serde_saphyr::to_string(&netpol::slaves_policy(dc, &names).expect("policy")),
        serde_saphyr::to_string(
            &netpol::masters_policy(dc, &names, Some("dsm-system")).expect("policy"),
        ),
    ];
    let mut docs: Vec<_> = docs.into_iter().collect();
    if dc.spec.tls.enabled && dc.spec.tls.secret_name.is_none() {
        let ca = certs::generate_ca(&names, Timestamp::now()).expect("CA");
        let member = certs::issue_member(&ca, &names, Timestamp::now()).expect("member");
        docs.push(serde_saphyr::to_string(
            &objects::tls_ca_secret(dc, &names, &ca).expect("secret"),
        ));
        docs.push(serde_saphyr::to_string(
            &objects::tls_secret(dc, &names, &member).expect("secret"),
        ));
    }
    docs.into_iter()
        .map(|d| d.expect("yaml"))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn manifests_chart_and_operator_objects_validate_against_kubernetes_schemas() {
    let python = python();
    let probe = Command::new(&python)
        .args(["-c", "import kubernetes_validate, helm_python"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "{python} lacks kubernetes-validate or helm-python-sdk ({}): run scripts/install-test-deps.sh",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(error) => panic!(
            "cannot run {python} ({error}): install Python 3 and run scripts/install-test-deps.sh"
        ),
    }

    // The operator's objects for a few representative specs.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator-objects");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut rwx = DsmClusterSpec::default();
    rwx.log_volume.access_mode = AccessMode::ReadWriteMany;
    rwx.slaves.replicas = 5;
    rwx.slaves.storage.storage_class_name = Some("fast".to_string());
    let mut no_backup = DsmClusterSpec::default();
    no_backup.backup.enabled = false;
    no_backup.replication.factor = Some(3);
    no_backup.network_policy.enabled = false;
    let mut secured = DsmClusterSpec::default();
    secured.tls.enabled = true;
    secured.tls.client_auth = Some(TlsClientAuth::Required);
    secured.client.enabled = false;
    secured.auth.secret_name = Some("secured-auth".to_string());
    secured.network_policy.allowed_clients = vec![NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some([("team".to_string(), "apps".to_string())].into()),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }];
    let mut cert_manager = DsmClusterSpec::default();
    cert_manager.tls.enabled = true;
    cert_manager.tls.secret_name = Some("dsm-cert-manager".to_string());
    let restored = DsmClusterSpec {
        bootstrap: Some(BootstrapSpec {
            snapshot: SnapshotSource {
                claim_name: "dsm-snapshots".to_string(),
                path: "dsm-20260101T030000Z.snap".to_string(),
            },
        }),
        ..DsmClusterSpec::default()
    };
    for (name, spec) in [
        ("default", DsmClusterSpec::default()),
        ("restored", restored),
        ("rwx", rwx),
        ("no-backup", no_backup),
        ("secured", secured),
        ("cert-manager", cert_manager),
    ] {
        std::fs::write(
            dir.join(format!("{name}.yaml")),
            objects_yaml(&cluster(name, spec)),
        )
        .expect("write");
    }

    let script = repo().join("operator/tests/validate_manifests.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg("--repo")
        .arg(repo())
        .arg("--extra")
        .arg(&dir)
        .output()
        .expect("run validate_manifests.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "manifest validation failed:\n{stdout}\n{stderr}"
    );
}
