"""Turn a composed config into a submitted Slurm job inside the run directory.

The run directory holds what a job needs and what it leaves:
  slurm/job.yaml         the composed config, resolved (the job composes it again, typed)
  slurm/job.sbatch       the rendered script
  slurm/submitted.jsonl  one line per submitted job: id, where from, which interpreter
  slurm/jobs.jsonl       one line per job start (written by the job): id, restart count, time
  slurm/JOBID.out/.err   the job's logs, appended across requeues
"""

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from pretrain.config import Config, ConfigError, validate
from pretrain.launch import slurm
from pretrain.launch.sbatch import LOG_PATTERN, render

JOB_CONFIG = "job"  # slurm/job.yaml, composed with --config-dir RUN_DIR/slurm --config-name job


@dataclass
class Job:
    run_dir: Path
    script: str
    config_yaml: str
    submit_dir: str
    python: str


def prepare(cfg: Config, cfg_dict, submit_dir: str | None = None, python: str | None = None) -> Job:
    """Check the config for the cluster's world size and render its script (nothing written)."""
    cluster = cfg.cluster
    if cluster.scheduler != "slurm":
        raise ConfigError("cluster", f"profile {cluster.name!r} runs on this machine: use `pretrain train`, "
                                     "or pick a Slurm profile (cluster=slurm_cpu_test, cluster=h100_ib, ...)")
    validate(cfg, cluster.world_size)
    submit_dir = submit_dir or os.getcwd()
    run_dir = Path(submit_dir, cfg.train.run_dir).resolve()
    # The job may start elsewhere (another cwd, a chain link weeks later): pin the run directory.
    cfg_dict.train.run_dir = str(run_dir)
    python = python or cluster.python or sys.executable
    script = render(cluster, str(run_dir), submit_dir, python, cfg.train.train_steps)
    return Job(run_dir, script, job_config_yaml(cfg_dict), submit_dir, python)


def job_config_yaml(cfg_dict) -> str:
    """The composed config as the job's `JOB_CONFIG.yaml`: it composes again, typed, on the base config."""
    return "defaults:\n  - base_config\n  - _self_\n\n" + OmegaConf.to_yaml(cfg_dict)


def write(job: Job) -> Path:
    """Write the job's config and script into run_dir/slurm; the script's path."""
    slurm_dir = job.run_dir / "slurm"
    slurm_dir.mkdir(parents=True, exist_ok=True)
    (slurm_dir / f"{JOB_CONFIG}.yaml").write_text(job.config_yaml)
    script = slurm_dir / "job.sbatch"
    script.write_text(job.script)
    (slurm_dir / "cancelled").unlink(missing_ok=True)
    return script


def submit(job: Job, chain: int = 1) -> list[str]:
    """Write and submit the job, `chain` times in a row (each after the previous ends); the ids."""
    if chain < 1:
        raise ConfigError("--chain", f"must be >= 1, got {chain}")
    slurm.require("sbatch")
    script = write(job)
    ids: list[str] = []
    for _ in range(chain):
        # sbatch runs in the run directory: the job's log paths are relative to it.
        ids.append(slurm.sbatch(str(script), cwd=str(job.run_dir), dependency=ids[-1] if ids else None))
        record_submission(job, ids[-1])
    return ids


def record_submission(job: Job, job_id: str) -> None:
    record = {"job_id": job_id, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "submit_dir": job.submit_dir, "python": job.python}
    with open(job.run_dir / "slurm" / "submitted.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def submissions(run_dir: Path) -> list[dict]:
    path = run_dir / "slurm" / "submitted.jsonl"
    if not path.is_file():
        raise ConfigError("RUN_DIR", f"{run_dir} has no slurm/submitted.jsonl: it was not started by `pretrain submit`")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def log_path(run_dir: Path, job_id: str) -> Path:
    return run_dir / LOG_PATTERN.replace("%j", job_id)
