"""Loader throughput: the trainer's TrainBatches against a plain numpy.memmap of the same tokens.

    python benchmarks/loader.py [--data-root DIR] [--sequence-length 2048] [--micro-batch-size 8]

Both read the same samples in the same seeded order (one data-parallel rank), from the page
cache (each is run once before it is timed), into int64 torch tensors of [micro, seq + 1], as
the training step takes them. The baseline is the fastest plain reader: every sample of the
split copied into one flat int32 file, opened as a memmap and fancy-indexed per micro-batch.
Both compute a micro-batch's sample ids with the same vectorized order function.
The consumer rows put the loader beside what a trainer consumes per GPU: the loader's time per
step as a share of the step. The last table is the data wait of a training loop whose step
takes STEP_SECONDS with the host idle (a GPU step: sleep), with and without the prefetch thread.
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
# What one GPU eats: tokens/s per H100 of OLMo-core's 1B model (bf16), and of an 8B model at 40% MFU.
CONSUMERS = {"1B model, 55k tokens/s per GPU": 55_000, "8B model, 8k tokens/s per GPU": 8_000}
# The data-wait loop: global batches of 8 micro-batches, a 20 ms step, 50 steps.
WAIT_MICRO_BATCHES, STEP_SECONDS, WAIT_STEPS = 8, 0.02, 50


def dataset(args, tmp: Path) -> Path:
    root = args.data_root or tmp
    if args.data_root is None:
        build_root(root)
    out = tmp / f"dataset-{args.sequence_length}"
    write_shards(ShardConfig(sequence_length=args.sequence_length, progress=False), root / "cleaned",
                 root / "tokenizer", out)
    return out


def read_ours(samples: ShardedSamples, micro: int, steps: int) -> int:
    batches = TrainBatches(samples, SEED, micro, micro, 0, 1)
    return sum(batch["tokens"].numel() for _ in range(steps) for batch in batches.next_global_batch())


def read_memmap(flat: np.ndarray, num_samples: int, micro: int, steps: int) -> int:
    tokens = 0
    for step in range(steps):
        ids = global_sample_ids(np.arange(step * micro, (step + 1) * micro), num_samples, SEED)
        tokens += torch.from_numpy(flat[ids]).long().numel()
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
        steps = len(samples) // micro  # one epoch
        memmap = best_rate(lambda: read_memmap(flat, len(samples), micro, steps))
        ours = best_rate(lambda: read_ours(samples, micro, steps))
        report(len(samples), samples.sample_length, micro, memmap, ours)
        wait_batch = WAIT_MICRO_BATCHES * micro
        plain = data_wait(TrainBatches(samples, SEED, micro, wait_batch, 0, 1))
        prefetched = data_wait(PrefetchBatches(TrainBatches(samples, SEED, micro, wait_batch, 0, 1)))
        report_wait(wait_batch, plain, prefetched)


def report(num_samples: int, sample_length: int, micro: int, memmap: float, ours: float) -> None:
    print(f"{num_samples} samples of {sample_length} tokens, micro-batches of {micro}, one epoch, best of {PASSES}\n")
    print("| reader | M tokens/s | vs memmap |")
    print("|---|---:|---:|")
    print(f"| numpy.memmap of a flat token file | {memmap / 1e6:.1f} | 1.00 |")
    print(f"| TrainBatches (webdataset shards, memory-mapped) | {ours / 1e6:.1f} | {ours / memmap:.2f} |")
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
