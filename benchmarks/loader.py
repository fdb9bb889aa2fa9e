"""Loader throughput: the trainer's TrainBatches against plain numpy.memmap readers of the same tokens.

    python benchmarks/loader.py [--data-root DIR] [--sequence-length 2048] [--micro-batch-size 8]

Every reader delivers what the training step takes: one rank's global batch as a list of
[micro, seq + 1] int32 torch tensors (the step widens them on its device), the samples in the
same seeded order (one data-parallel rank), from the page cache (each reader is run once before
it is timed). Two batch shapes: one micro-batch per step, and ACCUMULATION micro-batches per
step (a rank's share of a 512-sample global batch on 8 GPUs at micro-batch 8). The baselines
copy every sample of the split into one flat int32 file, opened as a memmap: the plain reader
fancy-indexes it per micro-batch; the batched one fancy-indexes a whole global batch at once and
splits it. All compute sample ids with the same global_sample_ids. The consumer rows put the
loader beside what a trainer consumes per GPU. The last table is the data wait of a training
loop whose step takes STEP_SECONDS with the host idle (a GPU step: sleep), with and without the
prefetch thread.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from data_shard import build_root  # noqa: E402

from pretrain.data.config import ShardConfig  # noqa: E402
from pretrain.data.loader import ShardedSamples, TrainBatches, global_sample_ids  # noqa: E402
from pretrain.data.prefetch import PrefetchBatches  # noqa: E402
from pretrain.data.shard import write_shards  # noqa: E402

SEED, PASSES = 1234, 3
ACCUMULATION = 8
# What one GPU eats: tokens/s per H100 of OLMo-core's 1B model (bf16), and of an 8B model at 40% MFU.
CONSUMERS = {"1B model, 55k tokens/s per GPU": 55_000, "8B model, 8k tokens/s per GPU": 8_000}
# The data-wait loop: a 20 ms step, 50 steps.
STEP_SECONDS, WAIT_STEPS = 0.02, 50


def dataset(args, tmp: Path) -> Path:
    root = args.data_root or tmp
    if args.data_root is None:
        build_root(root)
    out = tmp / f"dataset-{args.sequence_length}"
    write_shards(ShardConfig(sequence_length=args.sequence_length, progress=False), root / "cleaned",
                 root / "tokenizer", out)
    return out


def read_ours(samples: ShardedSamples, micro: int, batch: int, steps: int) -> int:
    batches = TrainBatches(samples, SEED, micro, batch, 0, 1)
    return sum(mb["tokens"].numel() for _ in range(steps) for mb in batches.next_global_batch())


def read_memmap(flat: np.ndarray, micro: int, batch: int, steps: int) -> int:
    """The plain reader: one fancy index per micro-batch."""
    tokens = 0
    for start in range(0, steps * batch, micro):
        ids = global_sample_ids(range(start, start + micro), len(flat), SEED)
        tokens += torch.from_numpy(flat[ids]).numel()
    return tokens


def read_memmap_batched(flat: np.ndarray, micro: int, batch: int, steps: int) -> int:
    """One fancy index per global batch, split into micro-batches."""
    tokens = 0
    for start in range(0, steps * batch, batch):
        ids = global_sample_ids(range(start, start + batch), len(flat), SEED)
        tokens += sum(part.numel() for part in torch.from_numpy(flat[ids]).split(micro))
    return tokens


def data_wait(batches) -> float:
    """Mean seconds a loop of WAIT_STEPS steps spends waiting for its next global batch.

    Counted from the second step: the first batch of a run has had no step to be read during.
    """
    batches.next_global_batch()
    time.sleep(STEP_SECONDS)
    waited = 0.0
    for _ in range(WAIT_STEPS):
        started = time.perf_counter()
        batch = batches.next_global_batch()
        waited += time.perf_counter() - started
        del batch  # freed by the step, as in the trainer: freeing 1 MB is not waiting for data
        time.sleep(STEP_SECONDS)
    batches.close()
    return waited / WAIT_STEPS


def best_rate(read) -> float:
    read()  # page cache and offsets warm
    rates = []
    for _ in range(PASSES):
        started = time.perf_counter()
        tokens = read()
        rates.append(tokens / (time.perf_counter() - started))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root", type=Path, help="a folder with cleaned/ and tokenizer/ (default: build one)")
    parser.add_argument("--sequence-length", type=int, default=2048)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        samples = ShardedSamples(dataset(args, Path(tmp)), "train")
        flat_path = Path(tmp) / "flat.bin"
        np.stack([samples[i] for i in range(len(samples))]).tofile(flat_path)
        flat = np.memmap(flat_path, dtype="<i4", mode="r").reshape(len(samples), samples.sample_length)
        micro = args.micro_batch_size
        print(f"{len(samples)} samples of {samples.sample_length} tokens in {len(samples.paths)} shards, "
              f"micro-batches of {micro}, one epoch, best of {PASSES}\n")
        print("| micro-batches per step | reader | M tokens/s | vs memmap per micro-batch | vs memmap per batch |")
        print("|---:|---|---:|---:|---:|")
        for accumulation in (1, ACCUMULATION):
            batch = accumulation * micro
            steps = len(samples) // batch  # one epoch
            rates = {name: best_rate(lambda read=read: read(source, micro, batch, steps)) for name, read, source in (
                ("numpy.memmap of a flat token file, per micro-batch", read_memmap, flat),
                ("numpy.memmap of a flat token file, per global batch", read_memmap_batched, flat),
                ("TrainBatches (webdataset shards, memory-mapped)", read_ours, samples))}
            report(accumulation, rates)
        report_consumers(rates["TrainBatches (webdataset shards, memory-mapped)"])
        wait_batch = ACCUMULATION * micro
        plain = data_wait(TrainBatches(samples, SEED, micro, wait_batch, 0, 1))
        prefetched = data_wait(PrefetchBatches(TrainBatches(samples, SEED, micro, wait_batch, 0, 1)))
        report_wait(wait_batch, plain, prefetched)


def report(accumulation: int, rates: dict[str, float]) -> None:
    per_micro, per_batch = list(rates.values())[:2]
    for name, rate in rates.items():
        print(f"| {accumulation} | {name} | {rate / 1e6:.1f} | {rate / per_micro:.2f} | {rate / per_batch:.2f} |")


def report_consumers(ours: float) -> None:
    print("\n| consumer | loader time per step / step time |")
    print("|---|---:|")
    for name, rate in CONSUMERS.items():
        print(f"| {name} | {100 * rate / ours:.3f}% |")


def report_wait(wait_batch: int, plain: float, prefetched: float) -> None:
    print(f"\nData wait per step: global batches of {wait_batch} samples, a {1000 * STEP_SECONDS:.0f} ms step "
          f"(host idle), mean of {WAIT_STEPS} steps after the first\n")
    print("| loader | data wait per step (ms) | share of the step |")
    print("|---|---:|---:|")
    for name, wait in (("TrainBatches", plain), ("PrefetchBatches (1 batch ahead)", prefetched)):
        print(f"| {name} | {1000 * wait:.3f} | {100 * wait / STEP_SECONDS:.2f}% |")


if __name__ == "__main__":
    main()
