"""Seeded trials: one rank is SIGKILLed at a random point (forward, backward, the optimizer
step, a checkpoint write, between the manifest and `latest`, inside a background write of an
async save); each time the run is started again, with blocking or async saves. It must end
with the weights and losses of a run that was never interrupted (which saved blocking)."""

import os
import random
import subprocess
import sys

import pytest
import torch
from training_runs import TINY_RUN, losses, run_train

from pretrain.checkpoint import store
from pretrain.train.faults import INJECT_KILL, POINTS

TRIALS = 20
STEPS = 60  # more than 20 trials can reach, so that every trial kills a running job
SAVE_INTERVAL = 2
OVERRIDES = [f"train.train_steps={STEPS}", f"train.save_interval={SAVE_INTERVAL}", "train.eval_interval=0",
             "train.log_sample_ids=false"]


def latest_step(run_dir) -> int:
    tag = store.latest_tag(run_dir)
    return store.step_of(tag) if tag else 0


def next_fault(rng: random.Random, latest: int) -> tuple[tuple[int, int, str], bool]:
    """The fault (rank, step, point) and whether the trial saves asynchronously."""
    point = rng.choice(POINTS)
    step = latest + rng.randint(1, 2 * SAVE_INTERVAL)
    if point in ("checkpoint", "seal", "async_write"):  # only reached on steps that save
        step += -step % SAVE_INTERVAL
    # Half the checkpoint and seal kills land in a background write, while training goes on.
    asynchronous = point == "async_write" or rng.random() < 0.5
    return (rng.randrange(2), step, point), asynchronous


def run_with_fault(data_root, run_dir, fault, asynchronous: bool) -> int:
    command = [sys.executable, "-m", "pretrain.cli", "train", *TINY_RUN, f"data.root={data_root}",
               f"train.run_dir={run_dir}", "parallel.nproc_per_node=2", *OVERRIDES,
               f"train.checkpoint.async_save={str(asynchronous).lower()}"]
    env = {**os.environ, INJECT_KILL: ":".join(map(str, fault))}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env).returncode


def final_weights(run_dir) -> dict:
    # Our own test output: DeepSpeed's pickle is trusted here.
    path = run_dir / "checkpoints" / f"step_{STEPS}" / "mp_rank_00_model_states.pt"
    return torch.load(path, weights_only=False)["module"]


@pytest.mark.slow
def test_twenty_random_kills_leave_the_result_unchanged(data_root, tmp_path):
    straight = tmp_path / "straight"
    run_train(data_root, straight, *OVERRIDES)
    run_dir, rng = tmp_path / "faulty", random.Random(2026)
    for trial in range(TRIALS):
        fault, asynchronous = next_fault(rng, latest_step(run_dir))
        code = run_with_fault(data_root, run_dir, fault, asynchronous)
        assert code != 0, f"trial {trial}: the fault {fault} was never reached (async: {asynchronous})"
    run_train(data_root, run_dir, *OVERRIDES)
    assert losses(run_dir) == losses(straight)
    weights, reference = final_weights(run_dir), final_weights(straight)
    assert weights.keys() == reference.keys()
    tensors = [name for name, value in reference.items() if isinstance(value, torch.Tensor)]
    assert tensors  # megatron's `_extra_state` entries are None; every weight is a tensor
    assert all(torch.equal(weights[name], reference[name]) for name in tensors)
