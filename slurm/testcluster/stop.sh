#!/usr/bin/env bash
# Stop the test cluster started by start.sh: each daemon by the pid in its pid file.
# Keeps $PRETRAIN_SLURM_DIR (logs) unless --purge is given.
set -uo pipefail

DIR=${PRETRAIN_SLURM_DIR:-/tmp/pretrain-slurm}

stop_pid_file() {
    local file=$1 pid
    [[ -f $file ]] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$file"
}

for file in "$DIR"/run/slurmd-*.pid; do stop_pid_file "$file"; done
stop_pid_file "$DIR/run/slurmctld.pid"
stop_pid_file "$DIR/munge/munged.pid"
if [[ ${1:-} == --purge ]]; then rm -rf "$DIR"; fi
echo "stopped the test cluster in $DIR"
