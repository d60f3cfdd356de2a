#!/usr/bin/env bash
# CPU per operation: the CPU time every process spends (master, backup, three
# slaves and the bench itself), divided by the operations the bench counted.
# The members' time comes from /proc/PID/stat before and after the run (in
# clock ticks, from outside the processes, so that the scrapes count nothing),
# the bench's from its rusage. Loopback only.
#
#   bash scripts/cpu-per-op.sh                 # unary and pipelined, 64 clients
#   SECS=30 CLIENTS=16 bash scripts/cpu-per-op.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-20}
CLIENTS=${CLIENTS:-64}
DEPTH=${DEPTH:-8}
work=$(mktemp -d)
cleanup() {
    [ -n "${local_pid:-}" ] && kill -INT "$local_pid" 2>/dev/null && wait "$local_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -p dsm >&2
dsm=target/release/dsm
port=25745 metrics=25800
timeout 1800 "$dsm" local --dir "$work/cluster" --port "$port" --slave-port 25750 \
    --metrics-port "$metrics" >"$work/local.log" 2>&1 &
local_pid=$!
for _ in $(seq 300); do grep -q "cluster is up" "$work/local.log" && break; sleep 0.2; done
grep -q "cluster is up" "$work/local.log" || { cat "$work/local.log" >&2; exit 1; }

# Sum of the five members' CPU seconds: user and system time (fields 14 and
# 15 of /proc/PID/stat, in clock ticks) of each process `dsm local` started
# (`dsm local` is the child of `timeout`).
members=$(pgrep -P "$(pgrep -P "$local_pid")")
[ "$(wc -w <<<"$members")" = 5 ] || { echo "expected 5 members, found: $members" >&2; exit 1; }
tick=$(getconf CLK_TCK)
members_cpu() {
    for pid in $members; do
        awk '{print $14 + $15}' "/proc/$pid/stat"
    done | awk -v tick="$tick" '{s += $1} END {printf "%.3f\n", s / tick}'
}

echo "| API | ops/s | µs of CPU per operation (members + bench) |"
echo "|---|---:|---:|"
for run in "unary 1" "pipelined 1" "pipelined $DEPTH"; do
    read -r api depth <<<"$run"
    before=$(members_cpu)
    # The bench's own CPU time, from its rusage once it exited.
    python3 -c '
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r.ru_utime, r.ru_stime)' "$dsm" bench --master "127.0.0.1:$port" \
        --backup "127.0.0.1:$((port + 1))" --api "$api" --depth "$depth" --clients "$CLIENTS" \
        --warmup 0s --duration "${SECS}s" --metrics-listen none --json "$work/run.json" \
        >"$work/bench-time"
    after=$(members_cpu)
    python3 - "$work/run.json" "$work/bench-time" "$before" "$after" "$api" "$depth" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
user, system = map(float, open(sys.argv[2]).read().split()[-2:])
ops = d["read"]["ops"] + d["write"]["ops"]
members = float(sys.argv[4]) - float(sys.argv[3])
# The bench's own time includes its pre-population, a small share of the run.
per_op = (members + user + system) / ops * 1e6
label = sys.argv[5] + (f", depth {sys.argv[6]}" if sys.argv[6] != "1" else "")
print(f"| {label} | {d['throughput_ops_per_s']:,.0f} | {per_op:.1f} (members {members / ops * 1e6:.1f}, bench {(user + system) / ops * 1e6:.1f}) |")
PY
done
