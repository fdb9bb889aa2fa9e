"""`pretrain status`: one compact row per run, from Slurm and from the run directory's files;
for a sweep, one row per point with its swept values and final validation loss."""

from pathlib import Path

from omegaconf import OmegaConf

from pretrain.launch import slurm
from pretrain.launch.submit import JOB_CONFIG, submissions
from pretrain.launch.sweep import read_sweep
from pretrain.monitor.metrics import read_metrics

COLUMNS = ("RUN", "JOB", "STATE", "NODES", "RESTARTS", "STEP", "LOSS", "TOK/S", "ETA", "CHECKPOINT")
SWEEP_COLUMNS = ("POINT", "JOB", "STATE", "STEP", "VALID_LOSS")


def run_row(run_dir: Path) -> dict[str, str]:
    """What the run is doing: its latest job's state, and the last logged step and checkpoint."""
    job_id = submissions(run_dir)[-1]["job_id"]
    info = slurm.job_info(job_id)
    row = {"RUN": str(run_dir), "JOB": job_id, "STATE": info.get("JobState", "gone"),
           "NODES": info.get("NodeList", "-"), "RESTARTS": info.get("Restarts", "-")}
    row.update(progress(run_dir))
    return row


def progress(run_dir: Path) -> dict[str, str]:
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r] \
        if (run_dir / "metrics.jsonl").is_file() else []
    latest = run_dir / "checkpoints" / "latest"
    row = {"STEP": "-", "LOSS": "-", "TOK/S": "-", "ETA": "-",
           "CHECKPOINT": latest.read_text().strip() if latest.is_file() else "-"}
    if records:
        last = records[-1]
        row.update(STEP=str(last["step"]), LOSS=f"{last['loss']:.4f}",
                   **{"TOK/S": f"{last.get('tokens_per_second', 0):.0f}"}, ETA=eta(run_dir, last))
    return row


def eta(run_dir: Path, last: dict) -> str:
    """Time to the last step at the last logged speed."""
    cfg = OmegaConf.load(run_dir / "slurm" / f"{JOB_CONFIG}.yaml")
    tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_length
    speed = last.get("tokens_per_second") or 0
    if not speed:
        return "-"
    seconds = max(0, cfg.train.train_steps - last["step"]) * tokens_per_step / speed
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


def user_runs() -> list[Path]:
    """Run directories of the user's queued and running jobs (sbatch ran in the run directory)."""
    runs = []
    for job in slurm.my_jobs():
        path = Path(job["WorkDir"])
        if (path / "slurm" / "submitted.jsonl").is_file() and path not in runs:
            runs.append(path)
    return runs


def sweep_table(sweep_dir: Path) -> str:
    """One row per point: its swept values, job state, last step and final validation loss."""
    points = read_sweep(sweep_dir)["points"]
    keys = list(dict.fromkeys(key for point in points for key in point["params"]))
    rows = [{**point["params"], **point_row(sweep_dir / point["run_dir"]), "POINT": str(point["index"])}
            for point in points]
    columns = ("POINT", *keys, *SWEEP_COLUMNS[1:])
    return f"sweep {sweep_dir}: {len(points)} points\n" + format_table(rows, columns)


def point_row(run_dir: Path) -> dict[str, str]:
    if not (run_dir / "slurm" / "submitted.jsonl").is_file():
        return {"JOB": "-", "STATE": "not submitted", "STEP": "-", "VALID_LOSS": "-"}
    job_id = submissions(run_dir)[-1]["job_id"]
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    steps = [r["step"] for r in records if "loss" in r]
    valid = [r["valid_loss"] for r in records if "valid_loss" in r]
    return {"JOB": job_id, "STATE": slurm.job_info(job_id).get("JobState", "gone"),
            "STEP": str(steps[-1]) if steps else "-", "VALID_LOSS": f"{valid[-1]:.4f}" if valid else "-"}


def format_table(rows: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> str:
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(r.get(c, "").ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
