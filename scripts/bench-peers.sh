#!/usr/bin/env bash
# DSM against its peers on this machine, in one run: `dsm bench` (unary and
# pipelined APIs), the one-hop tonic ceiling (../shared/tools/grpc-ceiling) and
# Redis with AOF fsync always and 2 replicas, at 1, 16 and 64 closed-loop
# clients (30 % writes, 1000 uniform keys, 100-byte values), plus one
# fdatasync of a 100-byte append. Prints the table and the ratios the
# performance targets are written in (docs/BENCHMARKS.md).
#
#   bash scripts/bench-peers.sh            # about 10 minutes
#   SECS=5 bash scripts/bench-peers.sh     # shorter points
#   DEPTH=16 bash scripts/bench-peers.sh   # requests in flight per pipelined
#                                          # client in the deep row (default 8)
#
# Loopback only; every process is bounded by `timeout` and stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-10}
WARMUP=${WARMUP:-2}
DEPTH=${DEPTH:-8}
CLIENTS=(1 16 64)
# shellcheck source=scripts/scratch.sh
source scripts/scratch.sh

bash scripts/install-bench-deps.sh
echo "building dsm and the gRPC ceiling (release)..." >&2
cargo build --release -p dsm >&2
dsm=target/release/dsm
ceiling_dir=../shared/tools/grpc-ceiling
export CARGO_TARGET_DIR=${CEILING_TARGET_DIR:-/tmp/grpc-ceiling-target}
cargo build --release --manifest-path "$ceiling_dir/Cargo.toml" >&2
ceiling=$CARGO_TARGET_DIR/release/grpc-ceiling
unset CARGO_TARGET_DIR

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 never opened" >&2
    return 1
}

results=$work/results.txt # lines: name clients ops_s read_p50_us write_p50_us

echo "fdatasync of a 100-byte append..." >&2
fsync_p50=$(python3 - "$work/fsync.bin" <<'EOF'
import os, statistics, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
samples = []
for _ in range(2000):
    os.write(fd, b"x" * 100)
    t = time.perf_counter_ns()
    os.fdatasync(fd)
    samples.append((time.perf_counter_ns() - t) / 1000)
print(f"{statistics.median(samples):.0f}")
EOF
)

# name, API, requests in flight per client
for run in "unary unary 1" "pipelined pipelined 1" "pipelined-deep pipelined $DEPTH"; do
    read -r name api depth <<<"$run"
    for c in "${CLIENTS[@]}"; do
        echo "dsm bench --api $api --depth $depth --clients $c..." >&2
        timeout 300 "$dsm" bench --api "$api" --depth "$depth" --clients "$c" --slaves 3 \
            --write-ratio 0.3 --keys 1000 --value-size 100 --warmup "${WARMUP}s" \
            --duration "${SECS}s" --metrics-listen none --json "$work/dsm-$name-$c.json" >/dev/null 2>&1
        python3 - "$work/dsm-$name-$c.json" "dsm-$name" "$c" >>"$results" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(sys.argv[2], sys.argv[3], round(d["throughput_ops_per_s"]),
      d["read"]["latency"]["p50_us"], d["write"]["latency"]["p50_us"])
EOF
    done
done

echo "gRPC ceiling..." >&2
timeout 600 "$ceiling" server --addr 127.0.0.1:50071 --max-secs 550 >/dev/null 2>&1 &
pids+=($!)
wait_port 50071
for mode in unary stream; do
    for c in "${CLIENTS[@]}"; do
        best=""
        for conns in 1 4; do
            line=$(timeout 120 "$ceiling" bench --addr 127.0.0.1:50071 --mode "$mode" --c "$c" \
                --conns "$conns" --depth 1 --warmup "$WARMUP" --secs "$SECS")
            best=$(printf '%s\n%s\n' "$best" "$line" | python3 -c '
import sys
rows = [dict(kv.split("=") for kv in l.split()) for l in sys.stdin if l.strip()]
top = max(rows, key=lambda r: float(r["ops_s"]))
print(" ".join(f"{k}={v}" for k, v in top.items()))')
        done
        python3 -c '
import sys
r = dict(kv.split("=") for kv in sys.argv[3].split())
print(sys.argv[1], sys.argv[2], round(float(r["ops_s"])), r["p50_us"], r["p50_us"])' \
            "ceiling-$mode" "$c" "$best" >>"$results"
    done
done

echo "Redis, AOF fsync always, 2 replicas..." >&2
for i in 0 1 2; do
    port=$((16400 + i))
    mkdir -p "$work/redis-$i"
    replica=()
    [ "$i" -gt 0 ] && replica=(--replicaof 127.0.0.1 16400)
    timeout 900 redis-server --bind 127.0.0.1 --port "$port" --dir "$work/redis-$i" \
        --save '' --appendonly yes --appendfsync always "${replica[@]}" >/dev/null &
    pids+=($!)
    wait_port "$port"
done
sleep 2
for c in "${CLIENTS[@]}"; do
    # Several seconds per point at this machine's rates: a SET waits for its
    # fsync, a GET does not.
    for test in set get; do
        if [ "$test" = set ]; then
            requests=$((c < 4 ? 50000 : c * 6000))
        else
            requests=$((c < 4 ? 200000 : 1000000))
        fi
        timeout 300 redis-benchmark -h 127.0.0.1 -p 16400 -t "$test" -n "$requests" -r 1000 -d 100 \
            -c "$c" -P 1 --csv --precision 3 | tail -n +2 | tr -d '"' |
            while IFS=, read -r name rps _avg _min p50 _rest; do
                echo "redis-$(echo "$name" | tr 'A-Z' 'a-z') $c ${rps%.*} $(python3 -c "print(round(float('$p50')*1000))") 0"
            done >>"$results"
    done
done

python3 - "$results" "$fsync_p50" "$DEPTH" <<'EOF'
import sys
rows = {}
for line in open(sys.argv[1]):
    name, c, ops, rp50, wp50 = line.split()
    rows[(name, int(c))] = (int(ops), float(rp50), float(wp50))
fsync = float(sys.argv[2])
clients = [1, 16, 64]
def ops(name, c):
    return rows.get((name, c), (0, 0, 0))[0]
for c in clients:
    s, g = ops("redis-set", c), ops("redis-get", c)
    rows[("redis-mix", c)] = (round(1 / (0.3 / s + 0.7 / g)) if s and g else 0, 0, 0)
names = [
    ("dsm-unary", "DSM `dsm bench --api unary`"),
    ("dsm-pipelined", "DSM `dsm bench --api pipelined`"),
    ("dsm-pipelined-deep", f"DSM `dsm bench --api pipelined --depth {sys.argv[3]}`"),
    ("redis-set", "Redis, AOF fsync always + 2 replicas: SET"),
    ("redis-get", "Redis, same setup: GET"),
    ("redis-mix", "Redis, same setup: 30/70 mix (harmonic)"),
    ("ceiling-unary", "one-hop tonic ceiling, do-nothing server: unary"),
    ("ceiling-stream", "one-hop tonic ceiling, do-nothing server: bidi stream"),
]
print("| system | 1 client | 16 | 64 |")
print("|---|---:|---:|---:|")
for key, label in names:
    print(f"| {label} | " + " | ".join(f"{ops(key, c):,}" for c in clients) + " |")
print()
print(f"fdatasync of a 100-byte append: p50 {fsync:.0f} µs")
hop = rows.get(("ceiling-unary", 1), (0, 0, 0))[1]
u64 = ops("dsm-unary", 64)
p64 = max(ops("dsm-pipelined", 64), ops("dsm-pipelined-deep", 64))
ceil64, mix64 = ops("ceiling-unary", 64), ops("redis-mix", 64)
_, r1, w1 = rows.get(("dsm-unary", 1), (0, 0, 0))
def verdict(ok):
    return "met" if ok else "NOT met"
print()
print("| target | measured | |")
print("|---|---|---|")
print(f"| unary, 64 clients ≥ 0.6× the unary ceiling | {u64 / ceil64:.2f}× | {verdict(u64 >= 0.6 * ceil64)} |")
print(f"| pipelined, 64 clients ≥ 100,000 ops/s | {p64:,} | {verdict(p64 >= 100_000)} |")
print(f"| pipelined, 64 clients ≥ 1.2× Redis's mix | {p64 / mix64:.2f}× | {verdict(p64 >= 1.2 * mix64)} |")
budget_w = fsync + hop + 100
print(f"| 1 client WRITE p50 ≤ fdatasync + one hop + 100 µs = {budget_w:.0f} µs | {w1:.0f} µs | {verdict(w1 <= budget_w)} |")
print(f"| 1 client READ p50 ≤ two hops = {2 * hop:.0f} µs | {r1:.0f} µs | {verdict(r1 <= 2 * hop)} |")
EOF
