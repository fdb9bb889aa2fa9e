"""Render the sbatch script of a run: #SBATCH lines, a block of quoted values, slurm/job.sh.

Rendering is a pure function of its arguments (no clock, no environment), so the same config
gives the same script byte for byte (the golden-file tests rely on it). Every value that
reaches the shell passes through `shlex.quote`; values on #SBATCH lines are read by sbatch,
not by a shell, and are plain words by construction (ClusterConfig checks them, and the job
name is reduced to safe characters). The job's logs are named relative to the run directory
(sbatch runs there), so the run directory's own name never appears on an #SBATCH line.
"""

import re
import shlex
from pathlib import Path

from pretrain.launch.config import ClusterConfig

SLURM_DIR = Path(__file__).resolve().parents[2] / "slurm"
JOB_BODY = SLURM_DIR / "job.sh"
LOG_PATTERN = "slurm/%j.out"
ERROR_PATTERN = "slurm/%j.err"


def job_name(cluster: ClusterConfig, run_dir: str) -> str:
    """The Slurm job name: the configured one or the run directory's name, in safe characters."""
    name = cluster.job_name or Path(run_dir).name or "pretrain"
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def sbatch_options(cluster: ClusterConfig, run_dir: str) -> list[str]:
    tasks_per_node = 1 if cluster.launcher == "torchrun" else cluster.procs_per_node
    options = [f"--job-name={job_name(cluster, run_dir)}", f"--nodes={cluster.nodes}",
               f"--ntasks-per-node={tasks_per_node}"]
    if cluster.gpus_per_node:
        options.append(f"--gpus-per-node={cluster.gpus_per_node}")
    options += resource_options(cluster)
    if cluster.exclusive:
        options.append("--exclusive")
    options += [f"--output={LOG_PATTERN}", f"--error={ERROR_PATTERN}", "--open-mode=append",
                f"--signal=B:USR1@{cluster.signal_grace}", "--requeue"]
    return options


def resource_options(cluster: ClusterConfig) -> list[str]:
    """The options every job of the profile asks for: CPUs per task, memory, time, where it runs."""
    options = [f"--cpus-per-task={cluster.cpus_per_task}"] if cluster.cpus_per_task else []
    for key in ("mem", "time", "partition", "account", "qos", "constraint"):
        if getattr(cluster, key):
            options.append(f"--{key}={getattr(cluster, key)}")
    return options


def environment(cluster: ClusterConfig) -> list[str]:
    """Shell lines exporting the profile's environment variables, each value quoted."""
    return [f"export {name}={shlex.quote(str(value))}" for name, value in sorted(cluster.env.items())]


def values_block(cluster: ClusterConfig, run_dir: str, submit_dir: str, python: str, train_steps: int) -> list[str]:
    """Shell assignments of everything job.sh reads, each value quoted."""
    q = shlex.quote
    container = []
    if cluster.container_image:
        container.append(f"--container-image={cluster.container_image}")
    if cluster.container_mounts:
        container.append(f"--container-mounts={','.join(cluster.container_mounts)}")
    lines = [
        f"RUN_DIR={q(run_dir)}",
        f"SUBMIT_DIR={q(submit_dir)}",
        f"PYTHON={q(python)}",
        f"LAUNCHER={q(cluster.launcher)}",
        f"PROCS_PER_NODE={cluster.procs_per_node}",
        f"GPUS_PER_NODE={cluster.gpus_per_node}",
        f"TRAIN_STEPS={train_steps}",
        f"MAX_RESTARTS={cluster.max_restarts}",
        f"SIGNAL_GRACE={cluster.signal_grace}",
        f"FORWARD_SIGNAL={int(cluster.forward_signal)}",
        f"PREFLIGHT={int(cluster.preflight)}",
        f"MASTER_PORT_BASE={cluster.master_port_base}",
        f"MODULES=({' '.join(q(m) for m in cluster.modules)})",
        f"CONTAINER_ARGS=({' '.join(q(c) for c in container)})",
    ]
    return lines + environment(cluster)


def script(written_by: str, options: list[str], values: list[str], body: Path) -> str:
    """An sbatch script: a comment on who wrote it, #SBATCH lines, the block of values, the shell body."""
    lines = ["#!/bin/bash", f"# {written_by}", *(f"#SBATCH {option}" for option in options),
             "", "# ---- values from the config, each quoted ----", *values, "# ---- end of values ----", ""]
    return "\n".join(lines) + body.read_text()


def render(cluster: ClusterConfig, run_dir: str, submit_dir: str, python: str, train_steps: int) -> str:
    """The whole sbatch script as text."""
    return script("written by `pretrain submit`; the run directory is RUN_DIR below",
                  sbatch_options(cluster, run_dir), values_block(cluster, run_dir, submit_dir, python, train_steps),
                  JOB_BODY)
