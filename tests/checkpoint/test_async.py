"""Async checkpoints: the host copy shares nothing with training, and a run that saves in the
background leaves the same sealed checkpoints and the same losses as one that blocks."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from dist_utils import single_process_group
from training_runs import TINY_RUN, losses, run_train

from pretrain import exit_codes
from pretrain.checkpoint import manifest
from pretrain.checkpoint.async_save import to_host
from pretrain.monitor.metrics import read_metrics


def test_the_host_copy_shares_no_memory_with_the_training_state():
    flat = torch.arange(10, dtype=torch.float32)
    state = {"module": {"w": flat[2:6]}, "groups": [{"lr": 0.1, "params": [0, 1]}], "step": 3, "name": "x"}
    copy = to_host(state)
    flat.add_(100)
    state["groups"][0]["lr"] = 0.2
    assert torch.equal(copy["module"]["w"], torch.tensor([2.0, 3.0, 4.0, 5.0]))
    assert copy["module"]["w"].untyped_storage().nbytes() == 4 * 4  # the view alone, not its base
    assert copy["groups"] == [{"lr": 0.1, "params": [0, 1]}] and copy["step"] == 3 and copy["name"] == "x"


@pytest.fixture(scope="module")
def data_root(dataset_dir):
    """The shared pipeline run as a data.root folder (cleaned/, tokenizer/, dataset/)."""
    return dataset_dir.parent


def model_weights(run_dir, step: int) -> dict:
    # Our own test output: DeepSpeed's pickle is trusted here.
    state = torch.load(run_dir / "checkpoints" / f"step_{step}" / "mp_rank_00_model_states.pt", weights_only=False)
    return {name: value for name, value in state["module"].items() if isinstance(value, torch.Tensor)}


def test_an_async_run_leaves_the_checkpoints_of_a_blocking_one(data_root, tmp_path):
    blocking, background = tmp_path / "blocking", tmp_path / "async"
    run_train(data_root, blocking, "train.eval_interval=0")
    result = run_train(data_root, background, "train.eval_interval=0", "train.checkpoint.async_save=true")
    assert "saving checkpoint" in result.stdout and "in the background" in result.stdout
    assert (background / "checkpoints" / "latest").read_text().strip() == "step_6"  # the end waited for it
    assert losses(background) == losses(blocking)
    for step in (3, 6):
        directory = background / "checkpoints" / f"step_{step}"
        listed = json.loads((directory / manifest.MANIFEST).read_text())
        with single_process_group():
            assert manifest.verify(directory, listed, "sha256") is None
        assert sorted(listed["files"]) == manifest.checkpoint_files(blocking / "checkpoints" / f"step_{step}")
        ours, theirs = model_weights(background, step), model_weights(blocking, step)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_stop_signal_waits_for_the_background_write(data_root, tmp_path):
    # save_interval=1: a write is in flight at nearly every step boundary, the stop's included.
    command = [sys.executable, "-m", "pretrain.cli", "train", *TINY_RUN, f"data.root={data_root}",
               f"train.run_dir={tmp_path}", "parallel.nproc_per_node=2", "train.eval_interval=0",
               "train.train_steps=40", "train.save_interval=1", "train.checkpoint.async_save=true"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline and not (
            metrics.is_file() and len([r for r in read_metrics(metrics) if "loss" in r]) >= 3):
        time.sleep(0.1)
    process.send_signal(signal.SIGUSR1)
    out, err = process.communicate(timeout=120)
    assert process.returncode == exit_codes.REQUEUE, err[-3000:]
    last = max(r["step"] for r in read_metrics(metrics) if "loss" in r)
    assert last < 40
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == f"step_{last}"
    assert (tmp_path / "checkpoints" / f"step_{last}" / manifest.MANIFEST).is_file()
