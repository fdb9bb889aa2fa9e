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
from pretrain.config import compose_config
from pretrain.monitor.metrics import read_metrics
from pretrain.train.faults import INJECT_KILL, INJECT_SPIKE
from pretrain.train.run import INJECT_NONFINITE
from pretrain.train.schedule import lr_multiplier


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


def run_with_spikes(data_root, run_dir, steps: str, *overrides, nproc: int = 2, env=None):
    command = [sys.executable, "-m", "pretrain.cli", "train", *TINY_RUN, f"data.root={data_root}",
               f"train.run_dir={run_dir}", f"parallel.nproc_per_node={nproc}", "train.eval_interval=0",
               *SPIKE, *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, INJECT_SPIKE: steps, **(env or {})})


@pytest.fixture(scope="module")
def spiked(data_root, tmp_path_factory):
    """A ZeRO-2 run of 7 steps whose step 5 spikes: its directory and the finished process."""
    run_dir = tmp_path_factory.mktemp("spiked")
    result = run_with_spikes(data_root, run_dir, "5", "parallel.zero_stage=2")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def weights(run_dir, step: int) -> dict:
    # Our own test output: DeepSpeed's pickle is trusted here.
    path = run_dir / "checkpoints" / f"step_{step}" / "mp_rank_00_model_states.pt"
    state = torch.load(path, weights_only=False)["module"]
    return {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_a_loss_spike_is_skipped_on_every_rank_and_counted(spiked):
    run_dir, result = spiked
    assert [(r["step"], r["loss_spikes"]) for r in records(run_dir, "loss_spikes")] == [(5, 1)]
    assert "loss spike at step 5" in result.stdout and "(update skipped)" in result.stdout
    assert same_weights(weights(run_dir, 4), weights(run_dir, 5))  # no update at step 5
    assert not same_weights(weights(run_dir, 5), weights(run_dir, 6))  # training went on
    assert all(math.isfinite(value) for value in losses(run_dir).values())
    consumed = [r["consumed_samples"] for r in records(run_dir, "consumed_samples")]
    assert consumed == [8 * step for step in range(1, 8)]  # the skipped step's batch was consumed too


def scheduled_lr(updates: int) -> float:
    """The schedule's learning rate after `updates` optimizer updates, computed as LambdaLR does."""
    cfg = compose_config([o for o in TINY_RUN + SPIKE if o.startswith(("optim.", "train.train_steps"))])
    return cfg.optim.lr * lr_multiplier(cfg.optim, cfg.train.train_steps)(updates)


def test_a_skipped_update_does_not_advance_the_lr_schedule_and_a_resume_keeps_it(data_root, tmp_path, spiked):
    run_dir, _ = spiked
    lrs = {r["step"]: r["lr"] for r in records(run_dir, "lr")}
    skipped = {step: int(step > 5) for step in lrs}  # updates skipped before each step
    assert lrs == {step: scheduled_lr(step - 1 - skipped[step]) for step in range(1, 8)}
    assert lrs[6] == lrs[5]  # the update after the skip has the skipped one's learning rate

    # Killed during step 7, so the newest checkpoint is step 6's, taken after the skip.
    killed = run_with_spikes(data_root, tmp_path, "5", "parallel.zero_stage=2", env={INJECT_KILL: "0:7:forward"})
    assert killed.returncode != 0 and (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_6"
    resumed = run_with_spikes(data_root, tmp_path, "5", "parallel.zero_stage=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "(step 6," in resumed.stdout
    assert {r["step"]: r["lr"] for r in records(tmp_path, "lr")} == lrs
    assert losses(tmp_path) == losses(run_dir)


def test_spikes_in_a_row_under_warn_apply_the_update_then_stop(data_root, tmp_path):
    result = run_with_spikes(data_root, tmp_path, "5,6", "train.guard.spike_action=warn",
                             "train.guard.spike_patience=2", "train.guard.on_nonfinite=stop", nproc=1)
    assert result.returncode == exit_codes.DIVERGED, result.stderr[-3000:]
    assert "2 loss spikes in a row" in result.stdout
    assert [r["step"] for r in records(tmp_path, "loss_spikes")] == [5, 6]
    assert not same_weights(weights(tmp_path, 4), weights(tmp_path, 5))  # warn: the update was applied


def step_with_update_skipped(zero_stage: int) -> tuple[bool, list[float]]:
    """One step of a real engine inside update_skipped: whether every weight stayed as it was,
    and the learning rate before the first step, before the skipped one and after it."""
    from dist_utils import single_process_group

    from pretrain.model.gpt import build_model, language_model_loss
    from pretrain.train.engine import build_engine
    from pretrain.train.guards import update_skipped

    cfg = compose_config(["model=tiny", "model.seq_length=16", "train.micro_batch_size=2", "train.global_batch_size=2",
                          "train.precision=fp32", "optim.warmup_steps=0", "optim.decay_steps=4",
                          f"parallel.zero_stage={zero_stage}"])
    with single_process_group() as layout:
        engine = build_engine(cfg, build_model(cfg.model, 128, 1), layout)
        tokens = torch.randint(0, 128, (2, 17))
        lrs = []
        for skip in (False, True):  # the first step fills the Adam moments, so a skipped one would move weights
            lrs.append(engine.get_lr()[0])
            before = {n: safe_weight(engine, p).clone() for n, p in engine.module.named_parameters()}
            engine.backward(language_model_loss(engine, tokens))
            with update_skipped(engine) if skip else contextlib.nullcontext():
                engine.step()
        lrs.append(engine.get_lr()[0])
        kept = all(torch.equal(before[n], safe_weight(engine, p)) for n, p in engine.module.named_parameters())
        return kept, lrs


def safe_weight(engine, param) -> torch.Tensor:
    from deepspeed.utils import safe_get_full_fp32_param

    full = safe_get_full_fp32_param(param)  # ZeRO-3 holds only a partition in the parameter itself
    return param.detach() if full is None else full


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_a_skipped_update_leaves_the_weights_at_zero_stages_the_runs_do_not_cover(zero_stage):
    kept, lrs = step_with_update_skipped(zero_stage)
    assert kept
    assert lrs[0] > lrs[1] == lrs[2]  # the schedule decays, but not over the skipped update
