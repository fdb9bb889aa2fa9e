"""A run stopped at any moment resumes from its latest checkpoint; W&B follows it."""

import json
import os
import signal
import subprocess
import sys
import time

from training_runs import TINY_RUN, losses, run_train

from pretrain.monitor.metrics import read_metrics

STEPS = 40


def wandb_history(run_dir):
    """Every logged record of every offline W&B run file, read back with wandb's own tool."""
    records = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
                             capture_output=True, text=True, check=True).stdout
        records += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return records


def start_and_interrupt(data_root, run_dir, overrides):
    command = [sys.executable, "-m", "pretrain.cli", "train", *TINY_RUN, f"data.root={data_root}",
               f"train.run_dir={run_dir}", "parallel.nproc_per_node=2", *overrides]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not latest.is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
    process.wait(timeout=60)
    return latest.read_text().strip()


def test_interrupted_run_resumes_exactly_and_finishes_at_the_same_step(data_root, tmp_path):
    run_dir = tmp_path / "interrupted"
    overrides = [f"train.train_steps={STEPS}", "train.save_interval=3", "train.eval_interval=0",
                 "logging.wandb.enabled=true"]
    stopped_at = start_and_interrupt(data_root, run_dir, overrides)
    assert stopped_at != f"step_{STEPS}"
    result = run_train(data_root, run_dir, *overrides)
    assert f"resuming from {run_dir / 'checkpoints' / stopped_at}" in result.stdout
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS}"
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, STEPS + 1))  # every step once, none repeated after the restart
    straight = tmp_path / "straight"
    run_train(data_root, straight, *overrides[:-1])
    assert losses(run_dir) == losses(straight)  # bitwise, across a Ctrl-C at an arbitrary moment

    history = wandb_history(run_dir)
    runs = {r["run"]["run_id"] for r in history if r.get("type") == "run"}
    assert len(runs) == 1  # the restart resumed the same W&B run
    state = json.loads((run_dir / "checkpoints" / f"step_{STEPS}" / "trainer_state.json").read_text())
    assert state["callbacks"]["wandb"]["run_id"] in runs
    logged = {r["history"]["step"]["num"]: r["history"]["item"]["loss"]
              for r in history if r.get("type") == "history" and "loss" in r["history"]["item"]}
    assert logged[STEPS] == losses(run_dir)[STEPS]
