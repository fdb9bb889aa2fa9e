"""Injected non-finite losses and loss spikes: skipped and counted, then a rollback or a stop."""

import contextlib
import math
import os
import subprocess
import sys

import pytest
import torch
from training_runs import TINY_RUN, losses

from pretrain import exit_codes
from pretrain.monitor.metrics import read_metrics
from pretrain.train.faults import INJECT_SPIKE
from pretrain.train.run import INJECT_NONFINITE


def run_with_nan(data_root, run_dir, steps: str, *overrides):
    command = [sys.executable, "-m", "pretrain.cli", "train", *TINY_RUN, f"data.root={data_root}",
               f"train.run_dir={run_dir}", "parallel.nproc_per_node=2", "train.eval_interval=0", *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, INJECT_NONFINITE: steps})


def records(run_dir, key):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if key in r]


def test_zero1_skips_a_nonfinite_step_and_goes_on(data_root, tmp_path):
    result = run_with_nan(data_root, tmp_path, "4", "parallel.zero_stage=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in records(tmp_path, "nonfinite_steps")] == [4]
    curve = losses(tmp_path)
    assert math.isnan(curve[4])
    assert all(math.isfinite(curve[step]) for step in (5, 6))  # the weights were not touched


def test_zero0_rolls_back_past_the_bad_data(data_root, tmp_path):
    # ZeRO-0 applies a NaN update, so the guard must reload step 3 and move on.
    result = run_with_nan(data_root, tmp_path, "5", "parallel.zero_stage=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rolled back to step_3" in result.stdout
    assert [r["step"] for r in records(tmp_path, "rolled_back_to")] == [3]
    steps = [r["step"] for r in records(tmp_path, "loss")]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 4-5 were redone; each logged once
    assert all(math.isfinite(value) for value in losses(tmp_path).values())
    samples = read_metrics(tmp_path / "samples" / "rank_00000.jsonl")
    first_after = next(r for r in samples if r["step"] == 4)["sample_ids"]
    assert [r["step"] for r in samples] == [1, 2, 3, 4, 5, 6]
    assert first_after != read_metrics(tmp_path / "samples" / "rank_00000.jsonl")[2]["sample_ids"]


def test_too_many_in_a_row_stops_with_the_diverged_code(data_root, tmp_path):
    result = run_with_nan(data_root, tmp_path, "2,3", "train.guard.nonfinite_patience=2",
                          "train.guard.on_nonfinite=stop")
    assert result.returncode == exit_codes.DIVERGED, result.stderr[-3000:]
    assert "2 non-finite steps in a row" in result.stdout


SPIKE = ["train.guard.spike_window=4", "train.guard.spike_min_steps=3", "train.guard.spike_z=6",
         "train.save_interval=1", "train.train_steps=7"]


def run_with_spikes(data_root, run_dir, steps: str, *overrides, nproc: int = 2):
    command = [sys.executable, "-m", "pretrain.cli", "train", *TINY_RUN, f"data.root={data_root}",
               f"train.run_dir={run_dir}", f"parallel.nproc_per_node={nproc}", "train.eval_interval=0",
               *SPIKE, *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, INJECT_SPIKE: steps})


def weights(run_dir, step: int) -> dict:
    # Our own test output: DeepSpeed's pickle is trusted here.
    path = run_dir / "checkpoints" / f"step_{step}" / "mp_rank_00_model_states.pt"
    state = torch.load(path, weights_only=False)["module"]
    return {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_a_loss_spike_is_skipped_on_every_rank_and_counted(data_root, tmp_path):
    result = run_with_spikes(data_root, tmp_path, "5", "parallel.zero_stage=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(r["step"], r["loss_spikes"]) for r in records(tmp_path, "loss_spikes")] == [(5, 1)]
    assert "loss spike at step 5" in result.stdout and "(update skipped)" in result.stdout
    assert same_weights(weights(tmp_path, 4), weights(tmp_path, 5))  # no update at step 5
    assert not same_weights(weights(tmp_path, 5), weights(tmp_path, 6))  # training went on
    assert all(math.isfinite(value) for value in losses(tmp_path).values())


def test_spikes_in_a_row_under_warn_apply_the_update_then_stop(data_root, tmp_path):
    result = run_with_spikes(data_root, tmp_path, "5,6", "train.guard.spike_action=warn",
                             "train.guard.spike_patience=2", "train.guard.on_nonfinite=stop", nproc=1)
    assert result.returncode == exit_codes.DIVERGED, result.stderr[-3000:]
    assert "2 loss spikes in a row" in result.stdout
    assert [r["step"] for r in records(tmp_path, "loss_spikes")] == [5, 6]
    assert not same_weights(weights(tmp_path, 4), weights(tmp_path, 5))  # warn: the update was applied


def step_with_update_skipped(zero_stage: int) -> bool:
    """One step of a real engine inside update_skipped: whether every weight stayed as it was."""
    from dist_utils import single_process_group

    from pretrain.config import compose_config
    from pretrain.model.gpt import build_model, language_model_loss
    from pretrain.train.engine import build_engine
    from pretrain.train.guards import update_skipped

    cfg = compose_config(["model=tiny", "model.seq_length=16", "train.micro_batch_size=2", "train.global_batch_size=2",
                          "train.precision=fp32", "optim.warmup_steps=0", f"parallel.zero_stage={zero_stage}"])
    with single_process_group() as layout:
        engine = build_engine(cfg, build_model(cfg.model, 128, 1), layout)
        tokens = torch.randint(0, 128, (2, 17))
        for skip in (False, True):  # the first step fills the Adam moments, so a skipped one would move weights
            before = {n: safe_weight(engine, p).clone() for n, p in engine.module.named_parameters()}
            engine.backward(language_model_loss(engine, tokens))
            with update_skipped(engine) if skip else contextlib.nullcontext():
                engine.step()
        return all(torch.equal(before[n], safe_weight(engine, p)) for n, p in engine.module.named_parameters())


def safe_weight(engine, param) -> torch.Tensor:
    from deepspeed.utils import safe_get_full_fp32_param

    full = safe_get_full_fp32_param(param)  # ZeRO-3 holds only a partition in the parameter itself
    return param.detach() if full is None else full


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_a_skipped_update_leaves_the_weights_at_zero_stages_the_runs_do_not_cover(zero_stage):
    assert step_with_update_skipped(zero_stage)
