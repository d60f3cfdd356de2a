#!/usr/bin/env bash
# Times how long a slave, then the active master, take to exit after SIGTERM
# while `dsm bench` drives load through them (docs/BENCHMARKS.md, "Planned
# stops"). Runs a local cluster on ports 23400+ three times; needs a release
# build (`cargo build --release -p dsm`).
set -euo pipefail
cd "$(dirname "$0")/.."
dsm=target/release/dsm
work=$(mktemp -d)
trap 'pkill -INT -f "local --dir $work" || true; rm -rf "$work"' EXIT

# Until the process is gone or a zombie its parent has not reaped yet.
wait_exit() {
    while [ -e "/proc/$1" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null; do
        sleep 0.005
    done
}

timed_term() {
    local pid=$1 t0 t1
    t0=$(date +%s.%N)
    kill -TERM "$pid"
    wait_exit "$pid"
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc
}

for run in 1 2 3; do
    dir=$work/run-$run
    $dsm local --dir "$dir" --port 23400 --slave-port 23500 --metrics-port 23600 >"$dir.log" 2>&1 &
    local_pid=$!
    sleep 6
    $dsm bench --master 127.0.0.1:23400 --backup 127.0.0.1:23401 --clients 16 \
        --warmup 1s --duration 20s >"$dir.bench" 2>&1 &
    bench=$!
    sleep 5
    slave=$(pgrep -f "slave --id=slave-0 --data-dir=$dir" | head -1)
    echo "run $run: slave SIGTERM to exit $(timed_term "$slave") s"
    sleep 3
    master=$(pgrep -f "master --id=master --log-dir=$dir" | head -1)
    echo "run $run: active master SIGTERM to exit $(timed_term "$master") s"
    wait "$bench"
    grep -E '^(total|errors)' "$dir.bench" | sed "s/^/run $run: bench /"
    kill -INT "$local_pid"
    wait "$local_pid" || true
done
