"""Monitoring on a real 2-process run: metrics, bits per byte, a straggler, an extra evaluator,
W&B across a restart (read back with wandb's own tool) and the report made from it all."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from training_runs import run_train, wandb_history

from pretrain.data.loader import ShardedSamples, valid_batches
from pretrain.monitor.metrics import read_metrics
from pretrain.tokenizers.tokenizer import Tokenizer

HERE = Path(__file__).parent
EVAL_SAMPLES = 12
MONITORED = ["train.eval_interval=2", f"train.eval_samples={EVAL_SAMPLES}", "train.log_interval=2",
             "logging.wandb.enabled=true", "logging.stragglers.interval=2", "logging.stragglers.checks=2",
             "logging.stragglers.margin=0.5", "logging.evaluators=[sample_evaluator:token_count]"]


@pytest.fixture(scope="module")
def monitored_run(dataset_dir, tmp_path_factory):
    """4 steps with rank 1 made slow, then the same run continued to 8: (run_dir, stdouts)."""
    data_root, run_dir = dataset_dir.parent, tmp_path_factory.mktemp("monitored")
    outputs = []
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        env.setenv("PRETRAIN_INJECT_SLOW", "1:0.3")
        for steps in (4, 8):
            result = run_train(data_root, run_dir, *MONITORED, f"train.train_steps={steps}", "optim.decay_steps=6")
            outputs.append(result.stdout)
    return run_dir, outputs


def test_metrics_carry_throughput_time_split_memory_and_restarts(monitored_run):
    run_dir, _ = monitored_run
    records = read_metrics(run_dir / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [2, 4, 6, 8]
    for record in steps:
        for key in ("lr", "grad_norm", "tokens_per_second", "tokens_per_second_per_gpu", "skipped_steps",
                    "consumed_samples", "consumed_tokens", "time_data", "time_forward_backward",
                    "time_optimizer", "time_checkpoint", "memory_max_rss_gb", "eta_seconds"):
            assert key in record, key
        assert record["tokens_per_second_per_gpu"] == pytest.approx(record["tokens_per_second"] / 2)
        assert record["consumed_tokens"] == record["consumed_samples"] * 32
        # Rank 0 waits for slow rank 1 (0.6 s of sleep a step) in the gradient reduction.
        assert record["time_forward_backward"] + record["time_optimizer"] > 0.5
    assert steps[-1]["eta_seconds"] == 0
    # Saves at steps 3 and 6 (save_interval=3) land in the checkpoint time of the next log.
    assert steps[1]["time_checkpoint"] > 0 and steps[3]["time_checkpoint"] > 0
    assert steps[0]["time_checkpoint"] == steps[2]["time_checkpoint"] == 0
    assert [r["restarts"] for r in records if "restarts" in r] == [1]
    assert len((run_dir / "restarts.jsonl").read_text().splitlines()) == 1


def test_bits_per_byte_is_the_loss_over_the_bytes_of_the_text(monitored_run, dataset_dir, tokenizer_dir):
    run_dir, _ = monitored_run
    tokenizer = Tokenizer(tokenizer_dir)
    # By hand: the validation samples' target tokens decoded to text, and their bytes counted.
    [batch] = valid_batches(ShardedSamples(dataset_dir, "valid"), EVAL_SAMPLES, EVAL_SAMPLES, 0, 1)
    targets = batch["tokens"][:, 1:].numpy()
    text_bytes = sum(len(tokenizer.decode(row).encode("utf-8")) for row in targets)
    for record in (r for r in read_metrics(run_dir / "metrics.jsonl") if "valid_loss" in r):
        # valid_loss is the mean per sample of per-token means; every sample has the same length.
        expected = record["valid_loss"] * targets.size / math.log(2) / text_bytes
        assert record["valid_bpb"] == pytest.approx(expected, rel=1e-9)
        assert record["sample_evaluator/targets"] == EVAL_SAMPLES * 32  # the extra evaluator ran on every rank
    assert text_bytes > targets.size  # code: more than one byte per token


def test_a_slow_rank_is_named_with_its_host(monitored_run):
    run_dir, outputs = monitored_run
    import socket

    assert f"warning: straggler: rank 1 on {socket.gethostname()}" in outputs[0]
    reported = [r for r in read_metrics(run_dir / "metrics.jsonl") if "straggler_rank" in r]
    assert {r["straggler_rank"] for r in reported} == {1}
    assert reported[0]["straggler_slowdown"] > 1.5
    alerts = [r["alert"] for r in wandb_history(run_dir) if r.get("type") == "alert"]
    assert alerts and "rank 1" in alerts[0]["text"]


def test_wandb_follows_the_restart_with_steps_only_increasing(monitored_run):
    run_dir, _ = monitored_run
    history = wandb_history(run_dir)
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 2
    assert len({r["run"]["run_id"] for r in history if r.get("type") == "run"}) == 1
    steps = [r["history"]["step"]["num"] for r in history if r.get("type") == "history"]
    assert steps == sorted(set(steps)) and steps[-1] == 8
    items = {}
    for r in history:
        if r.get("type") == "history":
            items.update(r["history"]["item"])
    for key in ("loss", "valid_loss", "valid_bpb", "lr", "grad_norm", "tokens_per_second", "time_optimizer"):
        assert key in items, key
    tags = next(r["run"] for r in history if r.get("type") == "run").get("tags", [])
    assert "device:cpu" in tags and "nodes:1" in tags


def test_report_plots_and_summarizes_the_metrics_log(monitored_run):
    run_dir, _ = monitored_run
    result = subprocess.run([sys.executable, "-m", "pretrain.cli", "report", str(run_dir)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = run_dir / "report"
    for name in ("loss.png", "lr.png", "throughput.png", "step_time.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    summary = (out / "summary.md").read_text()
    records = read_metrics(run_dir / "metrics.jsonl")
    last = [r for r in records if "loss" in r][-1]
    assert "| last step | 8 |" in summary
    assert f"{last['loss']:.4f}" in summary
    assert "| restarts | 1 |" in summary


def test_report_of_a_folder_without_metrics_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pretrain.cli", "report", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "metrics.jsonl does not exist" in result.stderr


def generate(run_dir, *options):
    return subprocess.run([sys.executable, "-m", "pretrain.cli", "generate", str(run_dir), *options],
                          capture_output=True, text=True)


def test_generate_continues_prompts_from_a_checkpoint(monitored_run):
    run_dir, _ = monitored_run
    greedy = generate(run_dir, "--prompt", "def main(", "--prompt", "import ", "--greedy", "--max-new-tokens", "6")
    assert greedy.returncode == 0, greedy.stderr
    assert "--- 'def main('\ndef main(" in greedy.stdout and "--- 'import '\nimport " in greedy.stdout
    assert generate(run_dir, "--prompt", "def main(", "--prompt", "import ", "--greedy",
                    "--max-new-tokens", "6").stdout == greedy.stdout  # greedy is deterministic
    sampled = [generate(run_dir, "--prompt", "class ", "--seed", str(seed), "--top-p", "0.9", "--step", "4").stdout
               for seed in (1, 1)]
    assert sampled[0] == sampled[1] and sampled[0].startswith("--- 'class '\nclass ")


@pytest.mark.parametrize("options, key", [
    (["--prompt", "x", "--top-p", "0"], "--top-p"),
    (["--prompt", "x", "--temperature", "0"], "--temperature"),
    (["--prompt", "x", "--step", "5"], "--step"),  # no checkpoint at step 5
    ([], "--prompt"),
])
def test_generate_bad_options_are_one_line(monitored_run, options, key):
    run_dir, _ = monitored_run
    result = generate(run_dir, *options)
    assert result.returncode == 2 and result.stderr.startswith(f"pretrain: error: {key}")
    assert result.stderr.count("\n") == 1
