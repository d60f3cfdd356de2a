#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, from the
# package registries only. Idempotent: skips what is already there.
set -euo pipefail

# --- operator (issue 4) -------------------------------------------------------
# operator/tests/manifests.rs validates manifests/, the rendered Helm chart and the
# operator's objects offline with two PyPI packages:
#   kubernetes-validate  the Kubernetes OpenAPI schemas of every release, offline;
#   helm-python-sdk      Helm compiled as a library: lint, render, values schema.
# (helm-sdkpy declares Python >= 3.12 and pip refuses it on this machine's 3.11;
# forced, it loads and lints but cannot render offline, so it is not used.)
install_operator_test_deps() {
    local python="${DSM_TEST_PYTHON:-python3}"
    if "$python" -c 'import kubernetes_validate, helm_python' 2>/dev/null; then
        return 0
    fi
    "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        'kubernetes-validate==1.37.0' 'helm-python-sdk==0.2.2'
}

install_operator_test_deps
