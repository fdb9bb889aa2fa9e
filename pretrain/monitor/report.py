"""`pretrain report RUN_DIR`: plots and a markdown summary of a run, from its metrics.jsonl alone.

metrics.jsonl is the source of truth (W&B may be off or offline): it survives restarts, and
each start of the trainer writes a record with `restarts`, which the plots mark as dashed
lines. Writes RUN_DIR/report/{loss,lr,throughput,step_time}.png and summary.md.
"""

from pathlib import Path

from pretrain.errors import ConfigError
from pretrain.monitor.metrics import read_metrics

STEP_TIME_PARTS = ("time_data", "time_forward_backward", "time_optimizer", "time_checkpoint")


def report(cfg: None, args) -> int:
    """The CLI entry point: write the report and print where it is."""
    run_dir = Path(args.run_dir)
    records = load_records(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    written = write_plots(records, out)
    (out / "summary.md").write_text(summary(records, run_dir.name, written))
    print(f"report: {out / 'summary.md'} and {len(written)} plots in {out}")
    return 0


def load_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError("RUN_DIR", f"{path} does not exist: is {run_dir} a run directory that has trained?")
    return read_metrics(path)


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that carry `key` with a number."""
    pairs = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [s for s, _ in pairs], [v for _, v in pairs]


def restart_steps(records: list[dict]) -> list[int]:
    """Steps at which the trainer started again from a checkpoint."""
    return [r["step"] for r in records if r.get("restarts", 0) > 0 and "loss" not in r]


def write_plots(records: list[dict], out: Path) -> list[str]:
    """The PNGs that have data, as file names."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a login or compute node
    plots = {
        "loss.png": ("loss", [("loss", "train loss"), ("valid_loss", "validation loss")], None),
        "lr.png": ("learning rate", [("lr", "learning rate")], None),
        "throughput.png": ("throughput", [("tokens_per_second", "tokens/s")], ("mfu", "MFU")),
        "step_time.png": ("step time (s), per part", [(k, k.removeprefix("time_")) for k in STEP_TIME_PARTS], None),
    }
    written = []
    for name, (title, lines, twin) in plots.items():
        if any(series(records, key)[0] for key, _ in lines):
            _plot(records, out / name, title, lines, twin, stacked=name == "step_time.png")
            written.append(name)
    return written


def _plot(records, path: Path, title: str, lines, twin, stacked: bool) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    if stacked:
        steps = series(records, lines[0][0])[0]
        values = [_aligned(records, key, steps) for key, _ in lines]
        axes.stackplot(steps, values, labels=[label for _, label in lines])
    else:
        for key, label in lines:
            steps, values = series(records, key)
            axes.plot(steps, values, label=label, marker="." if len(steps) < 50 else None)
    if twin and series(records, twin[0])[0]:
        other = axes.twinx()
        other.plot(*series(records, twin[0]), color="tab:red", label=twin[1])
        other.set_ylabel(twin[1])
    for index, step in enumerate(restart_steps(records)):
        axes.axvline(step, color="grey", linestyle="--", linewidth=1, label="restart" if index == 0 else None)
    axes.set_xlabel("step")
    axes.set_title(title)
    axes.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _aligned(records, key: str, steps: list[int]) -> list[float]:
    by_step = dict(zip(*series(records, key)))
    return [by_step.get(step, 0.0) for step in steps]


def summary(records: list[dict], name: str, plots: list[str]) -> str:
    """The markdown summary: where the run is, how it went, where its time goes."""
    steps, losses = series(records, "loss")
    _, valid = series(records, "valid_loss")
    _, bpb = series(records, "valid_bpb")
    _, speed = series(records, "tokens_per_second")
    _, mfu = series(records, "mfu")
    lines = [f"# Run {name}", "", "| | |", "|---|---|"]
    rows = {
        "last step": steps[-1] if steps else "none",
        "train loss (first → last)": f"{losses[0]:.4f} → {losses[-1]:.4f}" if losses else "-",
        "validation loss (first → last, best)": f"{valid[0]:.4f} → {valid[-1]:.4f}, {min(valid):.4f}" if valid else "-",
        "validation bits per byte (last)": f"{bpb[-1]:.4f}" if bpb else "-",
        "tokens/s (mean of logged intervals)": f"{sum(speed) / len(speed):,.0f}" if speed else "-",
        "MFU (mean)": f"{100 * sum(mfu) / len(mfu):.1f}%" if mfu else "-",
        "consumed tokens": f"{_last(records, 'consumed_tokens'):,}" if _last(records, "consumed_tokens") else "-",
        "restarts": len(restart_steps(records)),
        "rollbacks": sum(1 for r in records if "rolled_back_to" in r),
    }
    lines += [f"| {key} | {value} |" for key, value in rows.items()]
    lines += ["", *_time_split(records), *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def _time_split(records: list[dict]) -> list[str]:
    totals = {key: sum(series(records, key)[1]) for key in STEP_TIME_PARTS}
    whole = sum(totals.values())
    if not whole:
        return []
    lines = ["## Where step time goes", "", "| part | share |", "|---|---:|"]
    lines += [f"| {key.removeprefix('time_')} | {100 * value / whole:.1f}% |" for key, value in totals.items()]
    return [*lines, ""]


def _last(records: list[dict], key: str):
    values = series(records, key)[1]
    return int(values[-1]) if values else None
