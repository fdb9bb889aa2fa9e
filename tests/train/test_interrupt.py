"""A run stopped at any moment, or asked to stop by a signal, resumes exactly; W&B follows it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from training_runs import TINY_RUN, losses, run_train, wandb_history

from pretrain import exit_codes
from pretrain.monitor.metrics import read_metrics
from pretrain.train.faults import PAUSE_AT_STARTUP

STEPS = 40


OVERRIDES = [f"train.train_steps={STEPS}", "train.save_interval=3", "train.eval_interval=0"]


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    """The uninterrupted run that every stopped-and-resumed run must reproduce."""
    run_dir = tmp_path_factory.mktemp("straight")
    run_train(data_root, run_dir, *OVERRIDES)
    return run_dir


def start(data_root, run_dir, overrides, nproc=2, env=None) -> subprocess.Popen:
    command = [sys.executable, "-m", "pretrain.cli", "train", *TINY_RUN, f"data.root={data_root}",
               f"train.run_dir={run_dir}", f"parallel.nproc_per_node={nproc}", *overrides]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})})


def wait_for(condition, process, seconds=240):
    deadline = time.time() + seconds
    while not condition() and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert process.poll() is None, "the run ended before it could be stopped"


def start_and_interrupt(data_root, run_dir, overrides):
    process = start(data_root, run_dir, overrides)
    latest = run_dir / "checkpoints" / "latest"
    wait_for(latest.is_file, process)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
    process.communicate(timeout=60)
    return latest.read_text().strip()


def stop_at_a_step(data_root, run_dir) -> str:
    """Start a run, stop it with SIGUSR1 after a few steps; the checkpoint it saved."""
    process = start(data_root, run_dir, OVERRIDES)
    wait_for(lambda: len(logged_steps(run_dir)) >= 4, process)
    process.send_signal(signal.SIGUSR1)
    _, err = process.communicate(timeout=120)
    assert process.returncode == exit_codes.REQUEUE, err[-3000:]
    return (run_dir / "checkpoints" / "latest").read_text().strip()


def signal_during_startup(data_root, run_dir, signum, nproc=2, overrides=OVERRIDES) -> subprocess.CompletedProcess:
    """Start a run, send `signum` to `pretrain train` while every rank is paused in start-up
    (its engine built, its checkpoint not yet loaded), and wait for the run to end."""
    markers = run_dir.parent / f"{run_dir.name}-startup"
    markers.mkdir()
    process = start(data_root, run_dir, overrides, nproc, env={PAUSE_AT_STARTUP: str(markers)})
    wait_for(lambda: len(list(markers.glob("rank_*"))) == nproc, process)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def logged_steps(run_dir) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [r["step"] for r in read_metrics(path) if "loss" in r] if path.is_file() else []


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_stop_signal_saves_at_the_next_step_and_exits_with_the_requeue_code(data_root, tmp_path, straight, signum):
    process = start(data_root, tmp_path, OVERRIDES)
    wait_for(lambda: len(logged_steps(tmp_path)) >= 4, process)
    process.send_signal(signum)  # to `pretrain train` only, as Slurm's `--signal=B:...` does
    out, err = process.communicate(timeout=120)
    assert process.returncode == exit_codes.REQUEUE, err[-3000:]
    saved = (tmp_path / "checkpoints" / "latest").read_text().strip()
    assert saved == f"step_{logged_steps(tmp_path)[-1]}"  # the step it stopped at was saved
    assert f"stopping at {saved.replace('_', ' ')}: received {signum.name}" in out
    assert int(saved.split("_")[1]) < STEPS
    result = run_train(data_root, tmp_path, *OVERRIDES)
    assert f"resuming from {tmp_path / 'checkpoints' / saved}" in result.stdout
    assert losses(tmp_path) == losses(straight)


def test_interrupted_run_resumes_exactly_and_finishes_at_the_same_step(data_root, tmp_path, straight):
    run_dir = tmp_path / "interrupted"
    overrides = [*OVERRIDES, "logging.wandb.enabled=true"]
    stopped_at = start_and_interrupt(data_root, run_dir, overrides)
    assert stopped_at != f"step_{STEPS}"
    result = run_train(data_root, run_dir, *overrides)
    assert f"resuming from {run_dir / 'checkpoints' / stopped_at}" in result.stdout
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS}"
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, STEPS + 1))  # every step once, none repeated after the restart
    assert losses(run_dir) == losses(straight)  # bitwise, across a Ctrl-C at an arbitrary moment

    history = wandb_history(run_dir)
    runs = {r["run"]["run_id"] for r in history if r.get("type") == "run"}
    assert len(runs) == 1  # the restart resumed the same W&B run
    state = json.loads((run_dir / "checkpoints" / f"step_{STEPS}" / "trainer_state.json").read_text())
    assert state["callbacks"]["wandb"]["run_id"] in runs
    steps = [r["history"]["step"]["num"] for r in history if r.get("type") == "history"]
    assert steps == sorted(set(steps))  # the replayed steps after the restart were not sent again
    logged = {r["history"]["step"]["num"]: r["history"]["item"]["loss"]
              for r in history if r.get("type") == "history" and "loss" in r["history"]["item"]}
    assert logged[STEPS] == losses(run_dir)[STEPS]


def test_a_stop_signal_during_start_up_exits_for_a_requeue_and_the_run_resumes_exactly(data_root, tmp_path,
                                                                                      straight):
    run_dir = tmp_path / "run"
    saved = stop_at_a_step(data_root, run_dir)
    steps_before = logged_steps(run_dir)
    # SIGUSR1's default action would kill the workers: the launcher would report a failure (1).
    result = signal_during_startup(data_root, run_dir, signal.SIGUSR1)
    assert result.returncode == exit_codes.REQUEUE, result.stderr[-3000:]
    assert f"stopping at {saved.replace('_', ' ')}: received SIGUSR1 during start-up" in result.stdout
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == saved
    assert logged_steps(run_dir) == steps_before  # no step was trained after the checkpoint

    resumed = run_train(data_root, run_dir, *OVERRIDES)
    assert f"resuming from {run_dir / 'checkpoints' / saved}" in resumed.stdout
    assert logged_steps(run_dir) == list(range(1, STEPS + 1))  # none lost, none repeated
    assert losses(run_dir) == losses(straight)
    for rank in (0, 1):
        name = f"samples/rank_{rank:05d}.jsonl"
        assert read_metrics(run_dir / name) == read_metrics(straight / name)


def test_sigterm_during_the_start_up_of_a_new_run_exits_for_a_requeue(data_root, tmp_path):
    # One process, no launcher in between: the worker itself gets the signal.
    run_dir = tmp_path / "run"
    with_validation = [*OVERRIDES, "train.eval_interval=2"]
    result = signal_during_startup(data_root, run_dir, signal.SIGTERM, nproc=1, overrides=with_validation)
    assert result.returncode == exit_codes.REQUEUE, result.stderr[-3000:]  # not -SIGTERM
    assert "stopping at step 0: received SIGTERM during start-up" in result.stdout
    assert not (run_dir / "checkpoints" / "latest").exists()  # nothing trained, nothing saved
    assert logged_steps(run_dir) == []
    metrics = run_dir / "metrics.jsonl"
    assert not metrics.is_file() or not [r for r in read_metrics(metrics) if "valid_loss" in r]  # no step-0 validation
