//! Tests of the CRD: its defaults, the CEL rules evaluated as the API server would, the
//! examples in `manifests/examples/`, and the checked-in YAML being current.

use super::*;

#[test]
fn majority_matches_ceil_of_n_plus_one_over_two() {
    for (n, q) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)] {
        assert_eq!(majority(n), q, "n = {n}");
    }
}

#[test]
fn write_quorum_prefers_the_configured_factor() {
    let mut spec = DsmClusterSpec::default();
    assert_eq!(spec.write_quorum(), 2);
    spec.replication.factor = Some(3);
    assert_eq!(spec.write_quorum(), 3);
}

#[test]
fn an_empty_spec_takes_every_default() {
    let spec: DsmClusterSpec = serde_json::from_str("{}").expect("empty spec parses");
    assert_eq!(spec, DsmClusterSpec::default());
}

#[test]
fn validate_accepts_exactly_the_majorities_up_to_the_slave_count() {
    for replicas in 1..=9 {
        for factor in 1..=10 {
            let mut spec = DsmClusterSpec::default();
            spec.slaves.replicas = replicas;
            spec.replication.factor = Some(factor);
            let valid = factor <= replicas && 2 * factor > replicas;
            assert_eq!(
                spec.validate().is_ok(),
                valid,
                "{replicas} slaves, factor {factor}"
            );
        }
    }
}

#[test]
fn an_unset_factor_follows_the_slave_count() {
    for (replicas, quorum) in [(1, 1), (3, 2), (4, 3), (5, 3), (7, 4)] {
        let mut spec = DsmClusterSpec::default();
        spec.slaves.replicas = replicas;
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(spec.write_quorum(), quorum, "{replicas} slaves");
    }
}

/// The CRD's schema, as the API server gets it.
fn crd_schema() -> serde_json::Value {
    use kube::CustomResourceExt;
    let crd = DsmCluster::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the CRD has a schema");
    serde_json::to_value(schema).expect("schema serializes")
}

/// A DsmCluster object with `spec` as a user writes it.
fn object(spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "dsm.io/v1alpha1",
        "kind": "DsmCluster",
        "metadata": {"name": "dsm"},
        "spec": spec,
    })
}

/// Evaluates the CRD's CEL rules on `new` (an update of `old` when given): the
/// messages of the rules that fail.
fn admit(new: &serde_json::Value, old: Option<&serde_json::Value>) -> Vec<String> {
    match kube_cel::Validator::new().validate(&crd_schema(), new, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
    }
}

#[test]
fn admission_refuses_a_factor_that_is_not_a_majority_and_names_the_fix() {
    let spec = serde_json::json!({"slaves": {"replicas": 5}, "replication": {"factor": 2}});
    assert_eq!(
        admit(&object(spec), None),
        [
            "spec.replication.factor 2 is not a majority of spec.slaves.replicas 5: two WRITEs \
             could reach disjoint slaves; use at least 3, or unset it to follow a majority of the slaves"
        ]
    );
    let spec = serde_json::json!({"slaves": {"replicas": 3}, "replication": {"factor": 4}});
    assert_eq!(
        admit(&object(spec), None),
        [
            "spec.replication.factor 4 exceeds spec.slaves.replicas 3: use a factor from 2 to 3, \
             or unset it to follow a majority of the slaves"
        ]
    );
}

#[test]
fn admission_and_reconcile_agree_on_every_factor_and_message() {
    for replicas in 1..=7 {
        for factor in 1..=8 {
            let mut spec = DsmClusterSpec::default();
            spec.slaves.replicas = replicas;
            spec.replication.factor = Some(factor);
            let json = serde_json::json!({
                "slaves": {"replicas": replicas},
                "replication": {"factor": factor},
            });
            let expected: Vec<String> = spec
                .validate()
                .err()
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(
                admit(&object(json), None),
                expected,
                "{replicas} slaves, factor {factor}"
            );
        }
    }
}

#[test]
fn admission_refuses_a_scale_that_leaves_a_set_factor_behind() {
    // `kubectl scale --replicas 5` of a cluster that pins factor 2 of 3 slaves.
    let pinned =
        object(serde_json::json!({"slaves": {"replicas": 3}, "replication": {"factor": 2}}));
    let mut scaled = pinned.clone();
    scaled["spec"]["slaves"]["replicas"] = 5.into();
    let refused = admit(&scaled, Some(&pinned));
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("use at least 3"), "{refused:?}");

    // The same scale with the factor unset is accepted.
    let unset = object(serde_json::json!({"slaves": {"replicas": 3}}));
    let mut scaled = unset.clone();
    scaled["spec"]["slaves"]["replicas"] = 5.into();
    assert_eq!(admit(&scaled, Some(&unset)), Vec::<String>::new());
}

#[test]
fn admission_accepts_an_empty_spec_and_the_shipped_examples() {
    assert_eq!(
        admit(&object(serde_json::json!({})), None),
        Vec::<String>::new()
    );
    let examples = format!("{}/../manifests/examples", env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).expect("manifests/examples") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("example");
        let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).expect("YAML");
        // Some examples hold other objects too (the snapshot CronJob and its claim).
        for example in documents.iter().filter(|d| d["kind"] == "DsmCluster") {
            assert_eq!(
                admit(example, None),
                Vec::<String>::new(),
                "{}",
                path.display()
            );
            seen += 1;
        }
    }
    assert!(seen >= 3, "DsmClusters found in {examples}");
}

/// A DsmCluster bootstrapped from the file `path` of the claim `dsm-snapshots`.
fn bootstrapped_from(path: &str) -> serde_json::Value {
    object(serde_json::json!({
        "bootstrap": {"snapshot": {"claimName": "dsm-snapshots", "path": path}},
    }))
}

#[test]
fn admission_takes_a_snapshot_path_inside_the_claim_only() {
    for path in [
        "dsm-20260101T030000Z.snap",
        "backups/dsm.snap",
        "a..b/dsm..snap",
        ".hidden/dsm.snap",
    ] {
        assert_eq!(
            admit(&bootstrapped_from(path), None),
            Vec::<String>::new(),
            "{path}"
        );
    }
    let absolute =
        "spec.bootstrap.snapshot.path must be relative to the root of the claim (no leading /)";
    let dots = "spec.bootstrap.snapshot.path must not contain a `..` segment: it names a file inside the claim";
    for (path, refused) in [
        ("/snapshots/dsm.snap", vec![absolute]),
        ("..", vec![dots]),
        ("../other/dsm.snap", vec![dots]),
        ("backups/../../dsm.snap", vec![dots]),
        ("backups/..", vec![dots]),
        ("/../dsm.snap", vec![absolute, dots]),
    ] {
        assert_eq!(admit(&bootstrapped_from(path), None), refused, "{path}");
    }
}

#[test]
fn bootstrap_may_be_set_changed_or_removed_on_a_running_cluster() {
    // It only acts on an empty log volume, so no transition is refused.
    let running = object(serde_json::json!({}));
    let set = bootstrapped_from("a.snap");
    let changed = bootstrapped_from("b.snap");
    for (new, old) in [(&set, &running), (&changed, &set), (&running, &changed)] {
        assert_eq!(admit(new, Some(old)), Vec::<String>::new());
    }
}

#[test]
fn the_bootstrap_schema_requires_a_claim_and_a_path() {
    let schema = crd_schema();
    let snapshot =
        &schema["properties"]["spec"]["properties"]["bootstrap"]["properties"]["snapshot"];
    assert_eq!(
        snapshot["required"],
        serde_json::json!(["claimName", "path"])
    );
    assert_eq!(snapshot["properties"]["path"]["minLength"], 1);
    assert_eq!(snapshot["properties"]["claimName"]["minLength"], 1);
}

#[test]
fn crd_carries_scale_printer_columns_and_validation_messages() {
    let yaml = crd_yaml().expect("crd serializes");
    for needle in [
        "specReplicasPath: .spec.slaves.replicas",
        "jsonPath: .status.readySlaves",
        "jsonPath: .status.activeMaster",
        "2 * self.replication.factor > self.slaves.replicas",
        "messageExpression",
        "isQuantity(self)",
        "minimum: 1",
        "spec.tls.enabled cannot change once the cluster exists",
        "spec.tls.clientAuth: required needs spec.client.enabled: false",
        "spec.bootstrap.snapshot.path must be relative to the root of the claim",
    ] {
        assert!(yaml.contains(needle), "CRD lacks `{needle}`");
    }
}

/// `manifests/crd.yaml` must be what `dsm-operator crd` prints; regenerate it with
/// `cargo run -p dsm-operator -- crd > manifests/crd.yaml`.
#[test]
fn crd_yaml_is_up_to_date() {
    let generated = crd_yaml().expect("crd serializes");
    for path in ["manifests/crd.yaml", "charts/dsm/crds/dsmcluster.yaml"] {
        let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
        let checked_in = std::fs::read_to_string(&full).unwrap_or_default();
        assert!(
            checked_in == generated,
            "manifests/crd.yaml is out of date: run `cargo run -p dsm-operator -- crd > manifests/crd.yaml` \
         and `cp manifests/crd.yaml charts/dsm/crds/dsmcluster.yaml` ({path} differs)"
        );
    }
}
