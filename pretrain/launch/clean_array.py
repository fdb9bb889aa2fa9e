"""`pretrain data clean ... cluster=<slurm profile>`: the clean stage as a Slurm array job.

Cleaning has two halves (pretrain/data/clean.py): per-task filtering, which leaves a completion
marker per task in a work folder, and the global half (dedup in input order, report, data card).
Here the first half becomes an array job, array task i running the clean tasks whose index is
i modulo the number of shares, and the second half a job that starts after the whole array
succeeded (afterok). The final job is `clean_corpus` itself: it finds every task marked done and
does exactly what a local run does after its parallel part, so the output is the local one.

Submitting again submits only the shares with an unfinished task (each array task also skips
finished ones), then the final job. Files, in CLEANED_DIR.slurm/ beside the output:
  job.yaml              the composed config (array tasks and the final job compose it again)
  tasks.sbatch          the array job; final.sbatch the final job
  submitted.jsonl       one line per submission: array job id, its shares, final job id
  tasks-A_I.out/.err    array task I's logs; final-J.out/.err the final job's
"""

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pretrain.config import Config, ConfigError
from pretrain.data.clean import prepare_work_dir, work_dir_current, work_dir_of
from pretrain.data.config import CleanConfig
from pretrain.data.readers import make_tasks
from pretrain.data.tasks import finished
from pretrain.launch import slurm
from pretrain.launch.config import ClusterConfig
from pretrain.launch.sbatch import SLURM_DIR, environment, job_name, resource_options, script
from pretrain.launch.submit import JOB_CONFIG, job_config_yaml

CLEAN_BODY = SLURM_DIR / "clean.sh"
MAX_ARRAY_SIZE = 1000  # Slurm's default MaxArraySize is 1001: indices 0-1000


@dataclass
class CleanJobs:
    stage_dir: Path
    shares: int
    pending: list[int]
    """The shares with an unfinished task: the array indices to submit."""
    tasks_script: str
    final_script: str
    config_yaml: str
    cleaned_dir: str
    clean: CleanConfig


def stage_dir_of(cleaned_dir: str) -> Path:
    return Path(f"{Path(cleaned_dir).resolve()}.slurm")


def prepare(cfg: Config, cfg_dict, submit_dir: str | None = None, python: str | None = None) -> CleanJobs:
    """Find the unfinished shares and render both scripts (nothing written)."""
    clean, cluster = cfg.data.clean, cfg.cluster
    tasks = make_tasks(clean.inputs, clean.glob, clean.exclude, clean.files_per_task)
    shares = min(cluster.array_tasks or len(tasks), len(tasks), MAX_ARRAY_SIZE)
    work_dir = work_dir_of(cfg.data.cleaned_dir)
    # Markers made under another config do not count: submitting empties that work folder.
    current = work_dir_current(cfg.data.cleaned_dir, clean)
    pending = sorted({task.index % shares for task in tasks if not current or finished(work_dir, task) is None})
    submit_dir = submit_dir or os.getcwd()
    python = python or cluster.python or sys.executable
    stage_dir = stage_dir_of(cfg.data.cleaned_dir)
    name = cluster.job_name or f"clean_{Path(cfg.data.cleaned_dir).name}"
    scripts = [render(cluster, part, stage_dir, submit_dir, python, shares, name) for part in ("tasks", "final")]
    return CleanJobs(stage_dir, shares, pending, *scripts, job_config_yaml(cfg_dict), cfg.data.cleaned_dir, clean)


def array_spec(pending: list[int], parallelism: int) -> str:
    """`--array` value: the pending indices, as ranges where they are consecutive, then %K."""
    ranges, start = [], None
    for index, value in enumerate(pending):
        if start is None:
            start = value
        if index + 1 == len(pending) or pending[index + 1] != value + 1:
            ranges.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ",".join(ranges) + (f"%{parallelism}" if parallelism else "")


def sbatch_options(cluster: ClusterConfig, part: str, name: str) -> list[str]:
    # One process per array task (and for the final job): nodes, GPUs and the launcher are the
    # training job's business; the array spreads over the nodes instead.
    log = "tasks-%A_%a" if part == "tasks" else "final-%j"
    return [f"--job-name={job_name(cluster, name)}", "--nodes=1", "--ntasks=1", *resource_options(cluster),
            f"--output={log}.out", f"--error={log}.err", "--open-mode=append"]


def render(cluster: ClusterConfig, part: str, stage_dir: Path, submit_dir: str, python: str, shares: int,
           name: str) -> str:
    """One of the two scripts: #SBATCH lines, the quoted values, slurm/clean.sh."""
    q = shlex.quote
    values = [f"PART={part}", f"STAGE_DIR={q(str(stage_dir))}", f"SUBMIT_DIR={q(submit_dir)}",
              f"PYTHON={q(python)}", f"SHARES={shares}", f"MODULES=({' '.join(q(m) for m in cluster.modules)})"]
    return script(f"written by `pretrain data clean` ({part}); the files are in STAGE_DIR below",
                  sbatch_options(cluster, part, name), values + environment(cluster), CLEAN_BODY)


def submit(jobs: CleanJobs, parallelism: int) -> tuple[str | None, str]:
    """Write the files and submit the array (when a share is unfinished) and the final job."""
    slurm.require("sbatch")
    refuse_while_active(jobs.stage_dir)
    prepare_work_dir(jobs.cleaned_dir, jobs.clean)
    jobs.stage_dir.mkdir(parents=True, exist_ok=True)
    (jobs.stage_dir / f"{JOB_CONFIG}.yaml").write_text(jobs.config_yaml)
    for part, text in (("tasks", jobs.tasks_script), ("final", jobs.final_script)):
        (jobs.stage_dir / f"{part}.sbatch").write_text(text)
    cwd = str(jobs.stage_dir)  # the logs are named relative to it
    array_id = None
    if jobs.pending:
        array_id = slurm.sbatch(str(jobs.stage_dir / "tasks.sbatch"), cwd=cwd,
                                extra=[f"--array={array_spec(jobs.pending, parallelism)}"])
    # afterok on a failed array would wait forever: cancel the final job instead.
    extra = [f"--dependency=afterok:{array_id}", "--kill-on-invalid-dep=yes"] if array_id else []
    final_id = slurm.sbatch(str(jobs.stage_dir / "final.sbatch"), cwd=cwd, extra=extra)
    record = {"array_job_id": array_id, "shares": jobs.shares, "pending": jobs.pending, "final_job_id": final_id,
              "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with open(jobs.stage_dir / "submitted.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return array_id, final_id


def refuse_while_active(stage_dir: Path) -> None:
    """Two arrays writing the same task files would corrupt them: one submission at a time."""
    path = stage_dir / "submitted.jsonl"
    if not path.is_file():
        return
    last = json.loads(path.read_text().splitlines()[-1])
    for job_id in (last["array_job_id"], last["final_job_id"]):
        active = slurm.job_states(job_id) & slurm.ACTIVE_STATES if job_id else set()
        if active:
            raise ConfigError("data.cleaned_dir", f"job {job_id} of this clean is {min(active)}: wait for it, "
                                                  "or scancel it, then submit again")


def submit_clean(cfg: Config, cfg_dict, dry_run: bool) -> int:
    """`pretrain data clean` with a Slurm profile: submit (or print) the array and the final job."""
    jobs = prepare(cfg, cfg_dict)
    spec = array_spec(jobs.pending, cfg.cluster.array_parallelism) if jobs.pending else ""
    if dry_run:
        print(f"# ==== array job: --array={spec or '(none: every task is done)'} ====")
        print(jobs.tasks_script)
        print("# ==== final job: after the whole array succeeded ====")
        print(jobs.final_script)
        return 0
    array_id, final_id = submit(jobs, cfg.cluster.array_parallelism)
    if array_id:
        print(f"submitted array job {array_id} (--array={spec}: {len(jobs.pending)} of {jobs.shares} shares)")
    else:
        print("every clean task is done already: no array job")
    print(f"submitted final job {final_id} (dedup, report, data card) -> {cfg.data.cleaned_dir}")
    print(f"logs: {jobs.stage_dir}")
    return 0
