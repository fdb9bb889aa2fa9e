"""A W&B run that follows the training run across restarts (same id, resumed)."""

import os
import uuid
from pathlib import Path

from pretrain.monitor.config import WandbConfig


def start_run(cfg: WandbConfig, run_dir: str | Path, run_id: str | None, config: dict, name: str):
    """Start or resume the run's W&B run; offline unless WANDB_MODE or the config says otherwise."""
    import wandb

    # Keep wandb's own files inside the run directory rather than the user's home.
    os.environ.setdefault("WANDB_CACHE_DIR", str(Path(run_dir) / "wandb" / ".cache"))
    os.environ.setdefault("WANDB_SILENT", "true")
    mode = os.environ.get("WANDB_MODE", cfg.mode)
    return wandb.init(project=cfg.project, entity=cfg.entity, group=cfg.group, dir=str(run_dir),
                      id=run_id or uuid.uuid4().hex[:12], resume="allow", mode=mode, name=name, config=config)
