# The body of the two jobs `pretrain data clean` submits with a Slurm profile. It is appended,
# unchanged, after the #SBATCH lines and the block of quoted values (PART, STAGE_DIR, PYTHON,
# ...): nothing from the config is pasted into the code below, it only reads those variables.
#
# PART=tasks: one array task; it runs the unfinished clean tasks of share SLURM_ARRAY_TASK_ID
# (task index modulo SHARES), each leaving its completion marker. PART=final: after the whole
# array succeeded, the global half (dedup in input order, report, data card), as a local run.
set -uo pipefail

cd "$SUBMIT_DIR" || exit 1
for module in "${MODULES[@]}"; do module load "$module" || exit 1; done
echo "[pretrain $(date +%H:%M:%S)] clean $PART job ${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID} ${SLURM_ARRAY_TASK_ID:+task $SLURM_ARRAY_TASK_ID of $SHARES }on ${SLURMD_NODENAME:-$(hostname -s)}"
if [[ $PART == tasks ]]; then
    exec "$PYTHON" -m pretrain.launch.clean_job "$STAGE_DIR" tasks "$SLURM_ARRAY_TASK_ID" "$SHARES"
fi
exec "$PYTHON" -m pretrain.launch.clean_job "$STAGE_DIR" final
