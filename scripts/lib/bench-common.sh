# Shared by scripts/bench-blk and scripts/bench-ab (sourced, not run).

# Stops every process in the PIDS array: SIGTERM, up to 10 s to exit, then
# SIGKILL.
stop_pids() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# wait_socket PATH PID WHAT: waits up to 30 s for PID to listen on PATH.
wait_socket() {
    for _ in $(seq 300); do
        [[ -S $1 ]] && return 0
        kill -0 "$2" 2>/dev/null || { echo "$3 exited early" >&2; return 1; }
        sleep 0.1
    done
    echo "$3: no socket $1 after 30 s" >&2
    return 1
}

# data_disk DIR: the block device (as named in /proc/diskstats) holding DIR,
# following device-mapper links (/dev/mapper/x -> dm-0); nothing when it is
# not a block device.
data_disk() {
    local dev
    dev=$(basename "$(readlink -f "$(df --output=source "$1" | tail -1)")")
    if awk -v d="$dev" '$3 == d { found = 1 } END { exit !found }' /proc/diskstats; then
        echo "$dev"
    fi
}
