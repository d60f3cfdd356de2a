#!/usr/bin/env bash
# Installs what the benchmark scripts need, from the package registries only:
# Debian's Redis (server and redis-benchmark), which scripts/bench-peers.sh
# compares DSM with, and valgrind for scripts/callgrind-profile.sh. Idempotent.
set -euo pipefail
if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null &&
    command -v valgrind >/dev/null; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-bench-deps: installing redis needs root (apt-get)" >&2
    exit 1
fi
# Debian starts a package's service on install unless policy-rc.d says no: the
# bench starts its own servers on other ports.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools valgrind
