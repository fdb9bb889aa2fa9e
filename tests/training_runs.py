"""Runs of `pretrain train` as a user starts them, and readers of the logs they leave."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from pipeline import SHARD_CFG

from pretrain.data.loader import ShardedSamples
from pretrain.monitor.metrics import read_metrics

SEQ_LENGTH = SHARD_CFG.sequence_length

# Small and quick: 2 layers, 8 samples per step, fp32 so parities can be tight.
TINY_RUN = [
    "model=tiny", f"model.seq_length={SEQ_LENGTH}",
    "train.micro_batch_size=2", "train.global_batch_size=8", "train.precision=fp32",
    "train.train_steps=6", "train.log_interval=1", "train.eval_interval=3", "train.eval_samples=12",
    "train.save_interval=3", "train.sample_tokens=0", "train.log_sample_ids=true",
    "optim.lr=3e-3", "optim.min_lr=3e-4", "optim.warmup_steps=2", "optim.decay_steps=4", "logging.wandb.enabled=false",
]


def run_train(data_root: Path, run_dir: Path, *overrides: str, nproc: int = 2, timeout: int = 300,
              check: bool = True) -> subprocess.CompletedProcess:
    """`pretrain train` as a user runs it (it launches torchrun itself when nproc > 1)."""
    command = [sys.executable, "-m", "pretrain.cli", "train", *TINY_RUN, f"data.root={data_root}",
               f"train.run_dir={run_dir}", f"parallel.nproc_per_node={nproc}", *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def valid_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["valid_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "valid_loss" in r}


def sample_ids(run_dir: Path) -> dict[str, list]:
    return {path.name: read_metrics(path) for path in sorted((run_dir / "samples").glob("rank_*.jsonl"))}


def wandb_history(run_dir: Path) -> list[dict]:
    """Every record of every offline W&B run file of the run, in order, read back with `wandb leet`."""
    records = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
                             capture_output=True, text=True, check=True).stdout
        records += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return records


def tokens_of(data_root, split: str, ids) -> torch.Tensor:
    samples = ShardedSamples(data_root / "dataset", split)
    return torch.from_numpy(np.stack([samples[i] for i in ids])).long()


def first_step_samples(run_dir) -> list[int]:
    """Every sample of step 1 over the data-parallel ranks (TP ranks repeat their group's)."""
    ids = set()
    for path in sorted((run_dir / "samples").glob("rank_*.jsonl")):
        ids |= set(next(r for r in read_metrics(path) if r["step"] == 1)["sample_ids"])
    return sorted(ids)
