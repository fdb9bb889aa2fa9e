"""A rank that stops responding, and a disk that fills up: the job ends with a message that
says what happened, and the previous checkpoint still resumes."""

import os
import subprocess
import sys
import time

import pytest
from training_runs import TINY_RUN, losses, run_train

from pretrain import exit_codes
from pretrain.train.run import INJECT_HANG


def start_train(data_root, run_dir, *overrides, env=None):
    command = [sys.executable, "-m", "pretrain.cli", "train", *TINY_RUN, f"data.root={data_root}",
               f"train.run_dir={run_dir}", "parallel.nproc_per_node=2", "train.eval_interval=0", *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_a_hung_rank_ends_the_job_within_the_timeout_naming_it(data_root, tmp_path):
    started = time.monotonic()
    result = start_train(data_root, tmp_path, "train.step_timeout=6", env={INJECT_HANG: "1:3"})
    assert result.returncode == exit_codes.HUNG, result.stderr[-3000:]
    assert "stuck or dead: rank 1 (behind the others" in result.stderr
    assert time.monotonic() - started < 120  # not the collective's 30-minute default


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: room for one checkpoint of the tiny model (about 2.6 MiB), not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mount)]).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_a_full_disk_is_a_clear_error_and_the_previous_checkpoint_resumes(data_root, small_disk, tmp_path):
    run_dir = small_disk / "run"
    result = start_train(data_root, run_dir)
    assert result.returncode == exit_codes.STORAGE, result.stderr[-3000:]
    assert "could not write the checkpoint of step 6: No space left on device" in result.stderr
    assert "latest is still step_3" in result.stderr
    subprocess.run(["mount", "-o", "remount,size=32M", str(small_disk)], check=True)
    resumed = run_train(data_root, run_dir, "train.eval_interval=0")
    assert f"resuming from {run_dir / 'checkpoints' / 'step_3'}" in resumed.stdout
    straight = tmp_path / "straight"
    run_train(data_root, straight, "train.eval_interval=0")
    assert losses(run_dir) == losses(straight)
