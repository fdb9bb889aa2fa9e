# The body of every sbatch job `pretrain submit` writes. It is appended, unchanged, after the
# #SBATCH lines and the block of quoted values rendered from the config (RUN_DIR, PYTHON, ...):
# nothing from the config is pasted into the code below, it only reads those variables.
#
# Life of a job: record the start in slurm/jobs.jsonl; exit at once if the run is finished (a
# later link of a chain); check every node; run the training step in the background (a bash
# trap only runs between commands); on USR1 (sent by Slurm `signal_grace` seconds before the
# time limit) pass it to the step, whose workers save a checkpoint and exit 75; then requeue
# the job while the run is unfinished and restarts remain. A normal end or a real failure
# does not requeue.
set -uo pipefail

REQUEUE_CODE=75
SIGNALLED=0
STEP_PID=

log() { echo "[pretrain $(date +%H:%M:%S)] $*"; }

record_start() {
    printf '{"job_id": %s, "restart_count": %s, "start": "%s", "nodes": "%s"}\n' \
        "$SLURM_JOB_ID" "${SLURM_RESTART_COUNT:-0}" "$(date -Iseconds)" "$SLURM_JOB_NODELIST" \
        >>"$RUN_DIR/slurm/jobs.jsonl"
}

latest_step() {
    local tag
    tag=$(cat "$RUN_DIR/checkpoints/latest" 2>/dev/null) || { echo 0; return; }
    tag=${tag#step_}
    [[ $tag =~ ^[0-9]+$ ]] && echo "$tag" || echo 0
}

run_finished() { (( $(latest_step) >= TRAIN_STEPS )); }

first_node_address() {
    # NodeAddr, not the node name: where several nodes share a host (the test cluster) only
    # the address resolves; on ordinary clusters it is the node's own address.
    local head addr
    head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    addr=$(scontrol show node "$head" 2>/dev/null | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n 1)
    echo "${addr:-$head}"
}

preflight() {
    # One task per node: a missing GPU, interpreter (a venv not on the shared filesystem) or an
    # unwritable run directory stops the job here, naming the node, instead of as a rendezvous
    # timeout minutes later.
    local check='
        node=${SLURMD_NODENAME:-$(hostname -s)}
        command -v "$3" >/dev/null 2>&1 || { echo "preflight: $node: no interpreter $3" >&2; exit 1; }
        if (( $2 > 0 )); then
            found=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU")
            (( found >= $2 )) || { echo "preflight: $node: $found GPUs visible, $2 needed" >&2; exit 1; }
        fi
        probe="$1/slurm/.preflight-$node-$SLURM_JOB_ID"
        { touch "$probe" && rm -f "$probe"; } 2>/dev/null || { echo "preflight: $node: cannot write to $1" >&2; exit 1; }'
    # No --kill-on-bad-exit: the checks are quick, and killing the step on the first failure can
    # drop the failing node's message before srun forwards it; srun still exits non-zero.
    srun --ntasks-per-node=1 bash -c "$check" preflight "$RUN_DIR" "$GPUS_PER_NODE" "$PYTHON"
}

start_step() {
    local worker=("$PYTHON" -m pretrain.cli train --config-dir "$RUN_DIR/slurm" --config-name job)
    if [[ $LAUNCHER == torchrun ]]; then
        local signals=SIGTERM,SIGINT,SIGHUP,SIGQUIT usr1=ignore
        if (( FORWARD_SIGNAL )); then signals+=,SIGUSR1; usr1=forward; fi
        # Without forwarding, the agent ignores USR1 (its workers get their own copy from Slurm);
        # the workers replace the inherited "ignore" with the trainer's handler.
        # The agent kills workers that outlive --shutdown-timeout after its signal. USR1 comes
        # SIGNAL_GRACE to SIGNAL_GRACE+30 s before the limit, which Slurm enforces up to 30 s
        # late: give the save all of that; the hard limit still ends a hung worker.
        local shutdown=$((SIGNAL_GRACE + 60))
        srun --ntasks-per-node=1 --kill-on-bad-exit=1 "${CONTAINER_ARGS[@]}" \
            bash -c '[[ $0 == ignore ]] && trap "" USR1; exec "$@"' "$usr1" \
            "$PYTHON" -m torch.distributed.run --nnodes="$SLURM_NNODES" --nproc-per-node="$PROCS_PER_NODE" \
            --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" \
            --max-restarts=0 --signals-to-handle="$signals" --shutdown-timeout="$shutdown" \
            --no-python "${worker[@]}" &
    else
        srun --ntasks-per-node="$PROCS_PER_NODE" --kill-on-bad-exit=1 "${CONTAINER_ARGS[@]}" \
            bash -c 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS \
                LOCAL_WORLD_SIZE=$SLURM_NTASKS_PER_NODE; exec "$@"' worker "${worker[@]}" &
    fi
    STEP_PID=$!
}

on_usr1() {
    SIGNALLED=1
    log "USR1: asking the trainer to save and stop"
    [[ -n $STEP_PID ]] && kill -USR1 "$STEP_PID" 2>/dev/null  # srun passes it to every task
}

wait_step() {
    # `wait` returns early whenever a trapped signal arrives: wait again until the step is gone.
    local code
    wait "$STEP_PID"; code=$?
    while kill -0 "$STEP_PID" 2>/dev/null; do wait "$STEP_PID"; code=$?; done
    return "$code"
}

should_requeue() {
    local code=$1
    [[ -f $RUN_DIR/slurm/cancelled ]] && return 1  # `pretrain cancel`: saved on purpose, stop
    (( ${SLURM_RESTART_COUNT:-0} < MAX_RESTARTS )) || { log "restart limit ($MAX_RESTARTS) reached"; return 1; }
    run_finished && return 1
    (( code == REQUEUE_CODE || SIGNALLED ))
}

main() {
    # First thing: a batch shell without a trap dies of USR1.
    trap on_usr1 USR1
    trap 'SIGNALLED=1' TERM  # at the hard limit Slurm signals the steps itself
    cd "$SUBMIT_DIR" || exit 1
    mkdir -p "$RUN_DIR/slurm"
    record_start
    if run_finished; then log "run finished at step $(latest_step); nothing to do"; exit 0; fi
    for module in "${MODULES[@]}"; do module load "$module" || exit 1; done
    MASTER_ADDR=$(first_node_address)
    MASTER_PORT=$((MASTER_PORT_BASE + SLURM_JOB_ID % 10000))
    export MASTER_ADDR MASTER_PORT
    log "job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST, from step $(latest_step)"
    if (( PREFLIGHT )); then preflight || { log "preflight failed"; exit 1; }; fi
    local code=$REQUEUE_CODE
    if (( ! SIGNALLED )); then start_step; wait_step; code=$?; fi
    log "training step exited with $code at step $(latest_step)"
    if should_requeue "$code"; then
        log "requeueing"
        scontrol requeue "$SLURM_JOB_ID" && exit 0
    fi
    # Finished and stopped on purpose (or by a signal at the very end): the run is done.
    if run_finished && (( code == 0 || code == REQUEUE_CODE || SIGNALLED )); then exit 0; fi
    # Saved for a requeue that is not coming (restart limit, cancel): say so with the requeue
    # code, whichever launcher (torchrun's agent reports a signal as 1).
    if (( code == REQUEUE_CODE || SIGNALLED )); then exit "$REQUEUE_CODE"; fi
    exit "$code"
}

main
