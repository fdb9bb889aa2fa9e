"""JSON-lines logs keyed by step (metrics.jsonl and friends), trimmed back on resume."""

import json
from pathlib import Path

from pretrain.io import write_atomic


class MetricsFile:
    """An append-only JSON-lines log keyed by step (metrics.jsonl, the per-rank sample logs)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`: a resumed run logs those steps again."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= step]
        write_atomic(self.path, "".join(line + "\n" for line in kept))

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _step_of(line: str) -> float:
    """The record's step; a torn line (the process was killed mid-write) sorts past any step."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return float("inf")


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# Kept in metrics.jsonl and W&B, left off the terminal line to keep it to one glance.
QUIET = ("tokens_per_second_per_gpu", "consumed_samples", "consumed_tokens", "time_", "memory_")


def format_record(record: dict) -> str:
    """One compact stdout line for a metrics record."""
    parts = [f"step {record['step']}"]
    for key, value in record.items():
        if key in ("step", "eta_seconds") or key.startswith(QUIET) or (key == "skipped_steps" and not value):
            continue
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    if "eta_seconds" in record:
        parts.append(f"eta {format_duration(record['eta_seconds'])}")
    return " | ".join(parts)


def format_duration(seconds: float) -> str:
    """3h05m, 12m30s or 45s."""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
