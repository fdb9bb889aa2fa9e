"""Seeded trials: one rank is SIGKILLed at a random point (forward, backward, the optimizer
step, a checkpoint write, between the manifest and `latest`); each time the run is started
again. It must end with the weights and losses of a run that was never interrupted."""

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


def next_fault(rng: random.Random, latest: int) -> tuple[int, int, str]:
    point = rng.choice(POINTS)
    step = latest + rng.randint(1, 2 * SAVE_INTERVAL)
    if point in ("checkpoint", "seal"):  # only reached on steps that save
        step += -step % SAVE_INTERVAL
    return rng.randrange(2), step, point


def run_with_fault(data_root, run_dir, fault) -> int:
    command = [sys.executable, "-m", "pretrain.cli", "train", *TINY_RUN, f"data.root={data_root}",
               f"train.run_dir={run_dir}", "parallel.nproc_per_node=2", *OVERRIDES]
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
        fault = next_fault(rng, latest_step(run_dir))
        code = run_with_fault(data_root, run_dir, fault)
        assert code != 0, f"trial {trial}: the fault {fault} was never reached"
    run_train(data_root, run_dir, *OVERRIDES)
    assert losses(run_dir) == losses(straight)
    weights, reference = final_weights(run_dir), final_weights(straight)
    assert weights.keys() == reference.keys()
    tensors = [name for name, value in reference.items() if isinstance(value, torch.Tensor)]
    assert tensors  # megatron's `_extra_state` entries are None; every weight is a tensor
    assert all(torch.equal(weights[name], reference[name]) for name in tensors)
