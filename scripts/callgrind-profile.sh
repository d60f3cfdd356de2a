#!/usr/bin/env bash
# Instructions per operation of one DSM process, with valgrind's callgrind
# (instruction counts are repeatable on noisy machines, unlike time).
#
#   bash scripts/callgrind-profile.sh master unary       # or: slave pipelined 8
#   WINDOW=30 CLIENTS=4 bash scripts/callgrind-profile.sh master pipelined 8
#
# Starts a master and 3 slaves on loopback (no backup: the master serves
# without one), the chosen ROLE (master, or slave for slave-0) under callgrind
# with instrumentation off; loads them with `dsm bench` (30 % WRITEs, 1000 keys,
# 100-byte values); switches instrumentation on for WINDOW seconds after a
# warm-up; divides the instructions by the operations that process handled in
# that window (the master's requests, or the slave's Put/Get/Fence requests);
# prints that and the top functions by self cost. Under valgrind the process is
# ~50x slower: few clients are enough. The callgrind file (OUT.1, for
# `callgrind_annotate --inclusive=yes` and kcachegrind) is left beside OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
role=${1:?usage: callgrind-profile.sh master|slave unary|pipelined [DEPTH]}
api=${2:?usage: callgrind-profile.sh master|slave unary|pipelined [DEPTH]}
depth=${3:-1}
WINDOW=${WINDOW:-60}
CLIENTS=${CLIENTS:-8}
case "$role" in master | slave) ;; *) echo "ROLE must be master or slave" >&2; exit 2 ;; esac
command -v valgrind >/dev/null || bash scripts/install-bench-deps.sh
cargo build --release -p dsm >&2
dsm=$PWD/target/release/dsm
OUT=${OUT:-$PWD/target/callgrind/$role.$api.$depth.out}
mkdir -p "$(dirname "$OUT")"
rm -f "$OUT" "$OUT".*
# shellcheck source=scripts/scratch.sh
source scripts/scratch.sh

port=26345 metrics=26100
vg=(valgrind --tool=callgrind "--callgrind-out-file=$OUT" --dump-instr=no --instr-atstart=no)
wrap() { if [ "$1" = "$role" ]; then echo "${vg[@]}"; fi; }
# shellcheck disable=SC2046
timeout 1800 $(wrap master) "$dsm" --worker-threads=1 master --id=master --log-dir="$work/log" \
    --slaves=3 --listen=127.0.0.1:$port --metrics-listen=127.0.0.1:$metrics >"$work/master.log" 2>&1 &
pids+=($!)
for i in 0 1 2; do
    w=""
    [ "$i" = 0 ] && w=$(wrap slave)
    # shellcheck disable=SC2086
    timeout 1800 $w "$dsm" --worker-threads=1 slave --id=slave-$i --data-dir="$work/slave-$i" \
        --master=127.0.0.1:$port --listen=127.0.0.1:$((port + 10 + i)) \
        --metrics-listen=127.0.0.1:$((metrics + 1 + i)) >"$work/slave-$i.log" 2>&1 &
    pids+=($!)
done
target_metrics=$metrics
[ "$role" = slave ] && target_metrics=$((metrics + 1))
ops() {
    curl -sf "http://127.0.0.1:$target_metrics/metrics" | awk -v role="$role" '
        role == "master" && /^dsm_request_duration_seconds_count/ { s += $2 }
        role == "slave" && /^dsm_replica_requests_total/ { s += $2 }
        END { printf "%d\n", s }'
}
for _ in $(seq 600); do ops >/dev/null 2>&1 && break; sleep 0.2; done
"$dsm" bench --master 127.0.0.1:$port --clients "$CLIENTS" --write-ratio 0.3 --keys 1000 \
    --value-size 100 --api "$api" --depth "$depth" --warmup 20s --duration $((WINDOW + 40))s \
    --metrics-listen none >"$work/bench.txt" 2>&1 &
bench=$!
pids+=($bench)
sleep 30
# Without a PID, callgrind_control acts on every callgrind run: there is one.
before=$(ops)
callgrind_control -i on >/dev/null
sleep "$WINDOW"
callgrind_control -i off >/dev/null
after=$(ops)
callgrind_control -d >/dev/null
wait "$bench" || true
part=$OUT.1
annotated=$work/annotated.txt
callgrind_annotate --auto=no --threshold=90 "$part" >"$annotated"
ir=$(awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }' "$annotated")
handled=$((after - before))
echo "$role, $api API, depth $depth, $CLIENTS clients: $handled operations in ${WINDOW}s, $ir instructions"
if [ "$handled" -gt 0 ]; then
    echo "instructions per operation: $((ir / handled))"
fi
echo "top functions by self cost (callgrind_annotate $part):"
sed -n '/^Ir/,$p' "$annotated" | sed -n 1,30p
