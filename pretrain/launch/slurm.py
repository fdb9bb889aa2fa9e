"""Thin calls to Slurm's client commands (sbatch, scontrol, squeue, scancel)."""

import shutil
import subprocess

from pretrain.errors import ConfigError

ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "REQUEUE_HOLD", "REQUEUE_FED",
                 "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}


def require(name: str) -> None:
    if shutil.which(name) is None:
        raise ConfigError("cluster.scheduler", f"{name} not found on PATH: is this a Slurm login node?")


def slurm_command(name: str, *args: str, cwd: str | None = None) -> str:
    """Run a Slurm client command; its stdout. A missing command or an error is one ConfigError."""
    require(name)
    result = subprocess.run([name, *args], capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise ConfigError(name, message[-1] if message else f"exited with {result.returncode}")
    return result.stdout


def sbatch(script: str, cwd: str, dependency: str | None = None, extra: list[str] | tuple = ()) -> str:
    """Submit a script (after `dependency` ends, with any `extra` options); the job id."""
    options = [f"--dependency=afterany:{dependency}"] if dependency else []
    return slurm_command("sbatch", "--parsable", *options, *extra, script, cwd=cwd).strip().split(";")[0]


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (an array job: its first record); empty when Slurm no longer knows the job."""
    info = {}
    for key, value in _scontrol_fields(job_id):
        info.setdefault(key, value)
    return info


def job_states(job_id: str) -> set[str]:
    """The states of a job's records: one per array task for an array job; empty when gone."""
    return {value for key, value in _scontrol_fields(job_id) if key == "JobState"}


def _scontrol_fields(job_id: str) -> list[tuple[str, str]]:
    """(key, value) of every field of every record of `scontrol show job`; none when the job is gone."""
    try:
        text = slurm_command("scontrol", "show", "job", "--oneliner", job_id)
    except ConfigError:
        return []
    return [tuple(word.partition("=")[::2]) for word in text.split()]


def my_jobs() -> list[dict[str, str]]:
    """The user's queued and running jobs: id, name, state, elapsed time, working directory."""
    text = slurm_command("squeue", "--me", "--noheader", "--format=%i|%j|%T|%M|%Z")
    keys = ("JobId", "JobName", "JobState", "RunTime", "WorkDir")
    return [dict(zip(keys, line.split("|", 4))) for line in text.splitlines() if line.strip()]


def signal_batch(job_id: str, signal_name: str) -> None:
    slurm_command("scancel", "--batch", f"--signal={signal_name}", job_id)


def cancel(job_id: str) -> None:
    slurm_command("scancel", job_id)
