#!/usr/bin/env python3
"""Validates every Kubernetes manifest the project ships, offline.

- Every YAML document under manifests/ and every manifest charts/dsm renders (with the
  default values and with every toggle on) is checked against the Kubernetes OpenAPI
  schemas of --kubernetes-version by kubernetes-validate, in strict mode (unknown fields
  are errors).
- DsmCluster documents are checked against the schema of manifests/crd.yaml.
- The chart is linted (strict) and rendered by real Helm code: the helm-python-sdk
  package, Helm compiled as a library.
- charts/dsm/crds/dsmcluster.yaml must equal manifests/crd.yaml.
- Files passed with --extra (the objects the operator builds, written by the Rust test)
  are validated the same way.

Exit status 0 when everything is valid; the last line reads "N passed, M failed".
Install the tools with scripts/install-test-deps.sh.
"""

import argparse
import copy
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml
from helm_python import chart as helm_chart

# Kinds whose schema is not part of Kubernetes: the Prometheus Operator's (checked for
# shape only) and ours (checked against the CRD).
PROMETHEUS_KINDS = {"ServiceMonitor", "PrometheusRule"}

# Chart values covering every template: the defaults, and every toggle on.
VALUE_SETS = {
    "defaults": {},
    "everything-on": {
        "replicaCount": 2,
        "cluster": {
            "create": True,
            "spec": {
                "slaves": {"replicas": 5, "storage": {"size": "10Gi"}},
                "backup": {"enabled": False},
                "logVolume": {"accessMode": "ReadWriteMany", "storageClassName": "nfs"},
                "metrics": {"serviceMonitor": True},
                "tls": {"enabled": True, "clientAuth": "optional"},
                "auth": {"secretName": "dsm-auth"},
                "networkPolicy": {
                    "enabled": True,
                    "allowedClients": [
                        {"namespaceSelector": {"matchLabels": {"team": "apps"}}},
                    ],
                },
            },
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": True},
        "networkPolicy": {"enabled": True},
        "dashboards": {"enabled": True, "label": "grafana_dashboard", "namespace": "monitoring"},
        "imagePullSecrets": [{"name": "registry"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "snapshots": {
            "enabled": True,
            "keep": 3,
            "storage": {"accessMode": "ReadWriteMany", "storageClassName": "nfs"},
            "tls": {"caSecretName": "dsm-tls"},
            "auth": {"secretName": "dsm-auth"},
        },
    },
    # Snapshots of a plaintext cluster the chart does not create.
    "snapshots-only": {
        "snapshots": {"enabled": True, "clusterName": "prod"},
    },
}


class Report:
    """Counts checks and prints one line per failure."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def ok(self, what):
        self.passed += 1
        print(f"ok    {what}")

    def fail(self, what, why):
        self.failed += 1
        print(f"FAIL  {what}: {why}")


def crd_schema(repo):
    crd = yaml.safe_load((repo / "manifests" / "crd.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def validate_document(doc, where, version, schema, report):
    if not isinstance(doc, dict):
        report.fail(where, "not a mapping")
        return
    kind = doc.get("kind", "?")
    name = (doc.get("metadata") or {}).get("name", "?")
    what = f"{where}: {kind}/{name}"
    try:
        if kind == "DsmCluster":
            jsonschema.validate(doc, schema)
        elif kind in PROMETHEUS_KINDS:
            if not (doc.get("apiVersion") == "monitoring.coreos.com/v1" and name != "?"
                    and isinstance(doc.get("spec"), dict)):
                raise ValueError("expected apiVersion monitoring.coreos.com/v1, a name and a spec")
        else:
            kubernetes_validate.validate(doc, version, strict=True)
        report.ok(what)
    except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as error:
        path = "/".join(str(p) for p in error.path)
        report.fail(what, f"{path}: {error.message}")
    except Exception as error:  # noqa: BLE001 - every other failure is a finding too
        report.fail(what, f"{type(error).__name__}: {error}")


def validate_yaml(text, where, version, schema, report):
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        report.fail(where, f"invalid YAML: {error}")
        return
    for doc in docs:
        validate_document(doc, where, version, schema, report)


def check_chart(repo, version, schema, report):
    chart_dir = repo / "charts" / "dsm"
    lint = helm_chart.lint(str(chart_dir), strict=True, kube_version=f"v{version}")
    problems = [m for m in lint.get("messages", []) if m.get("severity", 0) >= 2]
    # Helm's own advice that a chart should have an icon is informational (severity 1).
    if lint.get("errors") or problems:
        report.fail("helm lint --strict charts/dsm", f"{lint.get('errors')} {problems}")
    else:
        report.ok("helm lint --strict charts/dsm")

    chart = helm_chart.Chart.load(str(chart_dir))
    for label, values in VALUE_SETS.items():
        try:
            chart.validate_schema(copy.deepcopy(values))
            rendered = chart.render(copy.deepcopy(values), name="dsm", namespace="dsm-system",
                                    is_install=True)
        except Exception as error:  # noqa: BLE001
            report.fail(f"helm template ({label})", f"{type(error).__name__}: {error}")
            continue
        report.ok(f"helm template ({label}) renders {len(rendered)} templates")
        for path, text in sorted(rendered.items()):
            if path.endswith("NOTES.txt") or not text.strip():
                continue
            validate_yaml(text, f"{path} [{label}]", version, schema, report)

    for label, values in [("replicaCount: 0", {"replicaCount": 0}),
                          ("snapshots.keep: 0", {"snapshots": {"keep": 0}})]:
        try:
            chart.validate_schema(values)
            report.fail("values.schema.json", f"accepted {label}")
        except Exception:  # noqa: BLE001 - the rejection is what we want
            report.ok(f"values.schema.json rejects {label}")

    chart_crd = chart_dir / "crds" / "dsmcluster.yaml"
    if chart_crd.read_text() == (repo / "manifests" / "crd.yaml").read_text():
        report.ok("charts/dsm/crds/dsmcluster.yaml equals manifests/crd.yaml")
    else:
        report.fail("charts/dsm/crds/dsmcluster.yaml",
                    "differs from manifests/crd.yaml: cp manifests/crd.yaml charts/dsm/crds/dsmcluster.yaml")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=pathlib.Path,
                        default=pathlib.Path(__file__).resolve().parents[2])
    parser.add_argument("--kubernetes-version", default="1.33.0")
    parser.add_argument("--extra", type=pathlib.Path, action="append", default=[],
                        help="more YAML files (or directories of them) to validate")
    args = parser.parse_args()

    report = Report()
    schema = crd_schema(args.repo)
    files = sorted((args.repo / "manifests").rglob("*.yaml"))
    for extra in args.extra:
        files += sorted(extra.rglob("*.yaml")) if extra.is_dir() else [extra]
    for path in files:
        validate_yaml(path.read_text(), str(path), args.kubernetes_version, schema, report)
    check_chart(args.repo, args.kubernetes_version, schema, report)

    print(f"manifests: {report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
