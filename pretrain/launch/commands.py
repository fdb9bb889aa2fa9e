"""The login-node subcommands: `pretrain submit`, `resume`, `status` and `cancel`."""

import time
from pathlib import Path

from pretrain.config import Config, ConfigError, compose_config, compose_dict
from pretrain.launch import slurm
from pretrain.launch.status import format_table, run_row, sweep_table, user_runs
from pretrain.launch.submit import JOB_CONFIG, Job, log_path, prepare, submissions
from pretrain.launch.submit import submit as submit_job
from pretrain.launch.sweep import is_sweep, prepare_sweep, write_sweep


def submit(cfg: Config | None, args) -> int:
    """Render the run's sbatch script and submit it (or print it, with --dry-run); -m: one job per point."""
    if args.multirun:
        return submit_sweep(args)
    job = prepare(cfg, compose_dict(args.overrides, args.config_name, args.config_dir))
    return _submit_or_print(job, args)


def submit_sweep(args) -> int:
    sweep_dir, points, jobs = prepare_sweep(args.overrides, args.config_name, args.config_dir)
    if not args.dry_run:
        write_sweep(sweep_dir, args.overrides, points, jobs)  # first: a failed sbatch leaves a readable sweep
    for index, (point, job) in enumerate(zip(points, jobs)):
        print(f"# ==== point {index}: {' '.join(f'{k}={v}' for k, v in point.params.items())} ====")
        _submit_or_print(job, args)
    if not args.dry_run:
        print(f"sweep of {len(jobs)} points: {sweep_dir}; `pretrain status {sweep_dir}` shows them")
    return 0


def resume(cfg: None, args) -> int:
    """Submit a stopped run again from its saved config; overrides change it (e.g. cluster.nodes=4)."""
    run_dir = _run_dir(args)
    last = submissions(run_dir)[-1]
    state = slurm.job_info(last["job_id"]).get("JobState", "")
    if state in slurm.ACTIVE_STATES:
        raise ConfigError("RUN_DIR", f"job {last['job_id']} of {run_dir} is {state}; `pretrain cancel` it first")
    config_dir = run_dir / "slurm"
    cfg = compose_config(args.overrides, JOB_CONFIG, config_dir)
    job = prepare(cfg, compose_dict(args.overrides, JOB_CONFIG, config_dir), last["submit_dir"], last["python"])
    return _submit_or_print(job, args)


def status(cfg: None, args) -> int:
    """A table of the run (or, with no RUN_DIR, of the user's runs in the queue)."""
    if args.run_dir and is_sweep(Path(args.run_dir)):
        print(sweep_table(Path(args.run_dir).resolve()))
        return 0
    runs = [_run_dir(args)] if args.run_dir else user_runs()
    if not runs:
        print("no runs of yours in the queue")
        return 0
    print(format_table([run_row(run) for run in runs]))
    return 0


def cancel(cfg: None, args) -> int:
    """Ask the trainer to save (USR1 through the batch script), wait for it, then scancel."""
    run_dir = _run_dir(args)
    job_id = submissions(run_dir)[-1]["job_id"]
    (run_dir / "slurm" / "cancelled").touch()  # the batch script must not requeue this stop
    if slurm.job_info(job_id).get("JobState") == "RUNNING":
        slurm.signal_batch(job_id, "USR1")
        print(f"asked job {job_id} to save a checkpoint; waiting up to {args.wait}s")
        _wait_until_inactive(job_id, args.wait)
    if slurm.job_info(job_id).get("JobState", "") in slurm.ACTIVE_STATES:
        slurm.cancel(job_id)
    print(f"cancelled job {job_id}; `pretrain resume {run_dir}` continues from the latest checkpoint")
    return 0


def _submit_or_print(job: Job, args) -> int:
    if args.dry_run:
        print(job.script)
        print("# ---- resolved config (slurm/job.yaml) ----")
        print(job.config_yaml, end="")
        return 0
    ids = submit_job(job, args.chain)
    chained = f" (+{len(ids) - 1} chained: {' '.join(ids[1:])})" if len(ids) > 1 else ""
    print(f"submitted job {ids[0]}{chained}")
    print(f"log: {log_path(job.run_dir, ids[0])}")
    print(f"run directory: {job.run_dir}")
    return 0


def _run_dir(args) -> Path:
    if not args.run_dir:
        raise ConfigError("RUN_DIR", "missing: name the run directory")
    run_dir = Path(args.run_dir).resolve()
    if is_sweep(run_dir):
        raise ConfigError("RUN_DIR", f"{run_dir} is a sweep: name one of its points, e.g. {run_dir / '0'}")
    if not (run_dir / "slurm" / f"{JOB_CONFIG}.yaml").is_file():
        raise ConfigError("RUN_DIR", f"{run_dir} has no slurm/{JOB_CONFIG}.yaml: "
                                     "not a run started by `pretrain submit`")
    return run_dir


def _wait_until_inactive(job_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if slurm.job_info(job_id).get("JobState", "") not in slurm.ACTIVE_STATES:
            return
        time.sleep(2)

