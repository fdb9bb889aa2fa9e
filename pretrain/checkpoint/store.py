"""Save and load checkpoints under run_dir/checkpoints/step_N.

A checkpoint is DeepSpeed's files (model, optimizer, scheduler; one set per model-parallel
rank and ZeRO partition), `trainer_state.json` (step, consumed samples, callbacks' state,
the resolved config) and one RNG file per rank (DeepSpeed saves no RNG state, and its
client_state is written by rank 0 only). `latest` names the newest complete checkpoint and
moves only after every rank has finished writing, so a crash mid-save leaves the previous
checkpoint in force.
"""

import json
import random
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain.errors import ConfigError
from pretrain.io import write_atomic, write_json

LATEST = "latest"
TRAINER_STATE = "trainer_state.json"


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def tag_for(step: int) -> str:
    return f"step_{step}"


def latest_tag(run_dir: str | Path) -> str | None:
    """The tag `latest` points to; None for a run without checkpoints."""
    pointer = checkpoints_dir(run_dir) / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    if not (checkpoints_dir(run_dir) / tag / TRAINER_STATE).is_file():
        # `latest` moves only after a checkpoint is complete, so this is damage from outside
        # (a deleted or half-copied folder): stop rather than silently start from scratch.
        raise ConfigError("train.run_dir", f"{pointer} names {tag}, which has no {TRAINER_STATE}")
    return tag


def save(engine, run_dir: str | Path, step: int, trainer_state: dict) -> Path:
    """Write a checkpoint on every rank, then (rank 0, after a barrier) move `latest` to it."""
    root, tag = checkpoints_dir(run_dir), tag_for(step)
    engine.save_checkpoint(str(root), tag=tag, save_latest=False)
    rank = dist.get_rank()
    (root / tag / "rng").mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), root / tag / "rng" / f"rank_{rank:05d}.pt")
    if rank == 0:
        write_json(root / tag / TRAINER_STATE, trainer_state)
    dist.barrier()
    if rank == 0:
        write_atomic(root / LATEST, tag + "\n")
    dist.barrier()
    return root / tag


def load(engine, run_dir: str | Path, tag: str) -> dict:
    """Restore engine and RNG state from `tag`; returns the trainer state saved with it."""
    root = checkpoints_dir(run_dir)
    load_path, _ = engine.load_checkpoint(str(root), tag=tag)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed found no checkpoint files in {root / tag}")
    rng_file = root / tag / "rng" / f"rank_{dist.get_rank():05d}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return json.loads((root / tag / TRAINER_STATE).read_text())


def rng_state() -> dict:
    """Every random stream a training step may draw from, for this rank."""
    from megatron.core import tensor_parallel

    state = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "megatron": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["megatron"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
