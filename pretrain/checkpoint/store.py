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
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain.checkpoint import async_save, elastic, manifest, weights
from pretrain.checkpoint.config import CheckpointConfig
from pretrain.errors import ConfigError
from pretrain.io import write_atomic, write_json
from pretrain.parallel import experts
from pretrain.train.faults import dump_state_if_asked, kill_point

LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
TAG = re.compile(r"step_(\d+)")


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def tag_for(step: int) -> str:
    return f"step_{step}"


def step_of(tag: str) -> int:
    return int(TAG.fullmatch(tag).group(1))


def latest_tag(run_dir: str | Path) -> str | None:
    """The tag `latest` names; None for a run without checkpoints."""
    pointer = checkpoints_dir(run_dir) / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    if not TAG.fullmatch(tag):
        # A path (`../other_run/step_9`, `/abs`) would load state from outside the run.
        raise ConfigError("train.run_dir", f"{pointer} names {tag!r}, which is not a checkpoint of this run")
    return tag


def sealed_tags(run_dir: str | Path) -> list[str]:
    """Checkpoints whose manifest was written (so every rank finished), newest first."""
    root = checkpoints_dir(run_dir)
    tags = [p.name for p in root.glob("step_*") if TAG.fullmatch(p.name) and (p / manifest.MANIFEST).is_file()]
    return sorted(tags, key=step_of, reverse=True)


def resume_candidates(run_dir: str | Path) -> list[str]:
    """`latest` and the sealed checkpoints before it, newest first."""
    latest = latest_tag(run_dir)
    tags = sealed_tags(run_dir)
    if latest is None:
        return tags
    return [tag for tag in tags if step_of(tag) <= step_of(latest)]


def save(engine, run_dir: str | Path, step: int, trainer_state: dict, retention: CheckpointConfig,
         writer: async_save.AsyncCheckpointWriter | None = None) -> Path:
    """Write a checkpoint on every rank, seal it with a manifest, then move `latest` to it.

    With a `writer`, this returns once the state is in host memory; the files are written,
    sealed and committed in the background (the previous write is waited for first).
    """
    root, tag = checkpoints_dir(run_dir), tag_for(step)

    def write_files():
        engine.save_checkpoint(str(root), tag=tag, save_latest=False)
        if engine.has_moe_layers:  # split experts: DeepSpeed's model file holds rank 0's only
            weights.save_expert_weights(engine, root / tag)

    if writer is not None:
        writer.wait()
        files = async_save.capture(engine, write_files)
    else:
        write_files()
    rank = dist.get_rank()
    (root / tag / "rng").mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), root / tag / "rng" / f"rank_{rank:05d}.pt")
    if rank == 0:
        write_json(root / tag / TRAINER_STATE, {**trainer_state, "layout": elastic.layout_of(engine)})
    if writer is not None:
        writer.start(step, files, lambda group: _commit(run_dir, tag, retention, group))
    else:
        dist.barrier()
        _commit(run_dir, tag, retention)
        dist.barrier()
    dump_state_if_asked(engine, f"saved_{tag}")
    return root / tag


def _commit(run_dir: str | Path, tag: str, retention: CheckpointConfig, group=None) -> None:
    """Every rank's files are written: seal them, then move `latest` (all ranks of `group` call this)."""
    root, step = checkpoints_dir(run_dir), step_of(tag)
    kill_point("checkpoint", step)
    manifest.seal(root / tag, group)
    kill_point("seal", step)
    if dist.get_rank(group) == 0:
        write_atomic(root / LATEST, tag + "\n")
        prune(run_dir, retention)


def find_resumable(run_dir: str | Path, how: str, warn) -> str | None:
    """The newest checkpoint whose files verify on every rank; older ones stand in for a bad one."""
    async_save.wait_for_writes()
    candidates = resume_candidates(run_dir)
    for tag in candidates:
        directory = checkpoints_dir(run_dir) / tag
        problem = manifest.verify(directory, json.loads((directory / manifest.MANIFEST).read_text()), how)
        problems = [None] * dist.get_world_size()
        dist.all_gather_object(problems, problem)
        problems = [p for p in problems if p]
        if not problems:
            return tag
        warn(f"skipping checkpoint {directory}: {problems[0]}")
    if candidates:
        raise ConfigError("train.run_dir", f"no checkpoint in {checkpoints_dir(run_dir)} verifies")
    return None


def load(engine, run_dir: str | Path, tag: str, warn=print) -> dict:
    """Restore engine and RNG state from `tag`; returns the trainer state saved with it.

    A checkpoint of another parallel layout is loaded through its universal conversion
    (made on first use); its random streams are not restored, as they belonged to other ranks.
    """
    root = checkpoints_dir(run_dir)
    state = json.loads((root / tag / TRAINER_STATE).read_text())
    saved, current = state.get("layout"), elastic.layout_of(engine)
    if elastic.needs_universal(saved, current):
        elastic.check_convertible(engine.module, saved, current)
        universal = elastic.ensure_universal(root / tag, warn)
        with elastic.loading_universal(engine):
            load_path, _ = engine.load_checkpoint(str(universal.parent), tag=universal.name)
        warn(f"loaded {root / tag} (written with {elastic.describe(saved)}) on {elastic.describe(current)}")
    else:
        load_path, _ = engine.load_checkpoint(str(root), tag=tag)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed found no checkpoint files in {root / tag}")
    if engine.has_moe_layers:
        # DeepSpeed's model file holds data-parallel rank 0's experts; each rank's are in its ZeRO partition.
        experts.restore_expert_weights(engine)
    rng_file = root / tag / "rng" / f"rank_{dist.get_rank():05d}.pt"
    if saved in (None, current) and rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    dump_state_if_asked(engine, f"loaded_{tag}")
    return state


def prune(run_dir: str | Path, retention: CheckpointConfig) -> None:
    """Delete checkpoints that retention does not keep; only ones older than `latest`."""
    if not retention.keep_last:
        return
    latest = step_of(latest_tag(run_dir))
    sealed = [tag for tag in sealed_tags(run_dir) if step_of(tag) <= latest]
    keep = set(sealed[: retention.keep_last])
    if retention.keep_every:
        keep |= {tag for tag in sealed if step_of(tag) % retention.keep_every == 0}
    for path in checkpoints_dir(run_dir).glob("step_*"):
        # Unsealed folders older than `latest` are leftovers of a crash mid-save.
        if TAG.fullmatch(path.name) and step_of(path.name) < latest and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


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
