# Sourced by the benchmark scripts: a scratch folder ($work) and the background
# processes they start ($pids, appended to with `pids+=($!)`), all stopped and
# removed when the script exits, however it exits.
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
