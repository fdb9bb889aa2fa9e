"""Runs submitted to the test cluster as a user submits them, and waits on their jobs."""

import json
import subprocess
import sys
import time
from pathlib import Path

from training_runs import TINY_RUN

from pretrain.monitor.metrics import read_metrics

FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
# The tiny run without the per-step sample log, on the 2-node CPU profile.
CLUSTER_RUN = [o for o in TINY_RUN if not o.startswith("train.log_sample_ids")] + ["cluster=slurm_cpu_test"]


def pretrain(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "pretrain.cli", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def submit(data_root: Path, run_dir: Path, *overrides: str, chain: int = 1) -> list[str]:
    """`pretrain submit` the tiny run; the job ids (more than one with a chain)."""
    out = pretrain("submit", *CLUSTER_RUN, f"data.root={data_root}", f"train.run_dir={run_dir}", *overrides,
                   f"--chain={chain}").stdout
    first = out.split("submitted job ")[1].split()[0]
    rest = out.split("chained: ")[1].split(")")[0].split() if chain > 1 else []
    return [first, *rest]


def job_state(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True).stdout
    return dict(word.partition("=")[::2] for word in out.split() if "=" in word)


def wait_for_job(job_id: str, run_dir: Path, timeout: float) -> tuple[dict[str, str], dict[str, float]]:
    """Poll until the job ends for good; its final scontrol record, and when things were first seen
    (seconds from now): "first_step" (a loss in metrics.jsonl), "signal" (USR1 in the log) and
    "first_step_after_signal"."""
    start, seen = time.monotonic(), {}
    while time.monotonic() - start < timeout:
        info = job_state(job_id)
        note_progress(run_dir, job_id, seen, time.monotonic() - start)
        if info.get("JobState") in FINAL_STATES:
            return info, seen
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"job {job_id} still {info.get('JobState')} after {timeout}s:\n{job_log(run_dir, job_id)}")


def note_progress(run_dir: Path, job_id: str, seen: dict, now: float) -> None:
    steps = steps_logged(run_dir)
    if steps and "first_step" not in seen:
        seen["first_step"] = now
    if "signal" not in seen and "USR1" in job_log(run_dir, job_id):
        seen["signal"], seen["steps_at_signal"] = now, len(steps)
    if "signal" in seen and "first_step_after_signal" not in seen and len(steps) > seen["steps_at_signal"]:
        # The stop step itself may be logged just after the signal: wait for a step of the new job.
        if len(job_starts(run_dir)) > 1:
            seen["first_step_after_signal"] = now


def steps_logged(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [r["step"] for r in read_metrics(path) if "loss" in r] if path.is_file() else []


def job_starts(run_dir: Path) -> list[dict]:
    path = run_dir / "slurm" / "jobs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def job_log(run_dir: Path, job_id: str) -> str:
    parts = [run_dir / "slurm" / f"{job_id}.{ext}" for ext in ("out", "err")]
    return "\n".join(p.read_text(errors="replace")[-4000:] for p in parts if p.is_file())
