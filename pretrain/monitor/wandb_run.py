"""A W&B run that follows the training run across restarts (same id, resumed), tagged with where it ran."""

import netrc
import os
import subprocess
import uuid
from pathlib import Path

from pretrain.monitor.config import WandbConfig


def start_run(cfg: WandbConfig, run_dir: str | Path, run_id: str | None, config: dict, name: str):
    """Start or resume the run's W&B run (rank 0 only); the mode follows `resolve_mode`."""
    import wandb

    # Keep wandb's own files inside the run directory rather than the user's home.
    os.environ.setdefault("WANDB_CACHE_DIR", str(Path(run_dir) / "wandb" / ".cache"))
    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(project=cfg.project, entity=cfg.entity, group=cfg.group, dir=str(run_dir),
                      id=run_id or uuid.uuid4().hex[:12], resume="allow", mode=resolve_mode(cfg.mode),
                      name=cfg.name or name, tags=[*cfg.tags, *run_tags()], config=config)


def resolve_mode(mode: str) -> str:
    """WANDB_MODE wins; `auto` is online only where an API key is configured, so nothing is lost
    on a cluster without one (offline files can be synced later with `wandb sync`)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if mode != "auto":
        return mode
    return "online" if has_api_key() else "offline"


def has_api_key() -> bool:
    """Whether wandb would find a key: the environment or `wandb login`'s netrc entry (never read out)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_tags() -> list[str]:
    """Where and what ran: git commit, Slurm job, node count, GPU type."""
    tags = []
    commit = git_commit()
    if commit:
        tags.append(f"git:{commit}")
    if os.environ.get("SLURM_JOB_ID"):
        tags.append(f"slurm:{os.environ['SLURM_JOB_ID']}")
    tags.append(f"nodes:{node_count()}")
    tags.append(f"device:{device_name()}")
    return tags


def git_commit() -> str | None:
    """The short commit of the checkout this package runs from, if it is one."""
    try:
        result = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def node_count() -> int:
    if os.environ.get("SLURM_JOB_NUM_NODES"):
        return int(os.environ["SLURM_JOB_NUM_NODES"])
    world, local = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, world // max(1, local))


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0).replace(" ", "_") if torch.cuda.is_available() else "cpu"
