"""Checkpoint throughput: saving and loading a real DeepSpeed engine's state against the disk.

In one process: `dd` measures the disk's sequential write (oflag=direct, or conv=fsync where
direct I/O is refused) and read (iflag=direct, or after dropping the file from the page
cache) on a file the size of the checkpoint, in the same folder; then a GPTModel wrapped by
DeepSpeed (ZeRO-1, fp32, AdamW moments filled by two steps) is saved and loaded through
`pretrain.checkpoint.store`, blocking and async. Prints MB/s against dd's and the training
time each save blocks (median of a few saves).

    python benchmarks/checkpoint.py [--dir PATH] [--saves 5] [model.hidden_size=512 ...]
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pretrain.train.quiet import silence_known_warnings  # noqa: E402

silence_known_warnings()

import torch.distributed as dist  # noqa: E402

from pretrain.checkpoint import store  # noqa: E402
from pretrain.checkpoint.async_save import AsyncCheckpointWriter  # noqa: E402
from pretrain.checkpoint.config import CheckpointConfig  # noqa: E402
from pretrain.config import compose_config  # noqa: E402
from pretrain.io import sha256_file  # noqa: E402
from pretrain.model.gpt import build_model, language_model_loss  # noqa: E402
from pretrain.parallel.layout import init_distributed  # noqa: E402
from pretrain.train.engine import build_engine  # noqa: E402

VOCAB = 8192
MODEL = ["model.num_layers=3", "model.hidden_size=512", "model.num_attention_heads=8", "model.num_query_groups=4",
         "model.ffn_hidden_size=1408", "model.seq_length=64"]
MB = 1e6


def dd(args: list[str]) -> float:
    """Run dd; its own MB/s figure (it prints bytes and seconds on the last line of stderr)."""
    result = subprocess.run(["dd", *args], capture_output=True, text=True)
    if result.returncode:
        raise OSError(result.stderr.strip().splitlines()[-1])
    line = result.stderr.strip().splitlines()[-1]
    size, seconds = int(line.split()[0]), float(re.search(r", ([\d.e-]+) s,", line).group(1))
    return size / seconds / MB


def drop_from_cache(path: Path) -> None:
    """Ask the kernel to forget a file's cached pages (they are clean once fsynced)."""
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_speeds(folder: Path, size: int) -> tuple[float, str, float, str]:
    """dd's sequential write and read MB/s on a `size`-byte file in `folder`, and how each was measured."""
    target, count = folder / "dd.bin", max(1, size // (4 << 20))
    write_args = ["if=/dev/zero", f"of={target}", "bs=4M", f"count={count}"]
    try:
        write, write_how = dd([*write_args, "oflag=direct"]), "oflag=direct"
    except OSError:
        write, write_how = dd([*write_args, "conv=fsync"]), "conv=fsync"
    try:
        read, read_how = dd([f"if={target}", "of=/dev/null", "bs=4M", "iflag=direct"]), "iflag=direct"
    except OSError:
        drop_from_cache(target)
        read, read_how = dd([f"if={target}", "of=/dev/null", "bs=4M"]), "page cache dropped"
    target.unlink()
    return write, write_how, read, read_how


def build(overrides: list[str]):
    cfg = compose_config(["train.precision=fp32", "train.micro_batch_size=2", "train.global_batch_size=2",
                          "parallel.zero_stage=1", *MODEL, *overrides])
    layout = init_distributed(cfg.parallel, cfg.train.seed)
    engine = build_engine(cfg, build_model(cfg.model, VOCAB, 1), layout)
    batch = torch.randint(0, VOCAB, (2, cfg.model.seq_length + 1))
    for _ in range(2):  # the Adam moments exist only after a step
        engine.backward(language_model_loss(engine, batch))
        engine.step()
    return engine


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed_saves(engine, run_dir: Path, saves: int, writer) -> tuple[list[float], list[float]]:
    """Seconds each save blocked the caller, and seconds until it was committed."""
    blocked, total = [], []
    for step in range(1, saves + 1):
        started = time.perf_counter()
        store.save(engine, run_dir, step, {"step": step}, CheckpointConfig(keep_last=1), writer)
        blocked.append(time.perf_counter() - started)
        if writer is not None:
            writer.wait()
        total.append(time.perf_counter() - started)
    return blocked, total


def hash_rate(folder: Path) -> float:
    """MB/s of sha256 over a checkpoint's files (what sealing its manifest costs, on one core)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    started = time.perf_counter()
    for path in files:
        sha256_file(path)
    return folder_bytes(folder) / (time.perf_counter() - started) / MB


def timed_load(engine, run_dir: Path) -> float:
    tag = store.latest_tag(run_dir)
    drop_from_cache(store.checkpoints_dir(run_dir) / tag)
    started = time.perf_counter()
    store.load(engine, run_dir, tag, warn=lambda message: None)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=".", help="folder on the file system to measure (a temp folder is made in it)")
    parser.add_argument("--saves", type=int, default=5)
    args, overrides = parser.parse_known_args()
    engine = build(overrides)
    work = Path(tempfile.mkdtemp(prefix=".checkpoint-bench-", dir=args.dir))
    try:
        blocking, blocking_total = timed_saves(engine, work / "blocking", args.saves, None)
        checkpoint = store.checkpoints_dir(work / "blocking") / store.tag_for(args.saves)
        size, hashing = folder_bytes(checkpoint), hash_rate(checkpoint)
        load = timed_load(engine, work / "blocking")
        background, background_total = timed_saves(engine, work / "async", args.saves, AsyncCheckpointWriter())
        write, write_how, read, read_how = disk_speeds(work, size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(size, args.saves, write, write_how, read, read_how, hashing, blocking, blocking_total, background,
           background_total, load)


def report(size, saves, write, write_how, read, read_how, hashing, blocking, blocking_total, background,
           background_total, load) -> None:
    save_rate = size / statistics.median(blocking_total) / MB
    load_rate = size / load / MB
    print(f"\ncheckpoint {size / MB:.0f} MB (DeepSpeed ZeRO-1 fp32: weights, fp32 master, Adam moments), "
          f"threads {torch.get_num_threads()}, median of {saves} saves")
    print(f"{'measure':44} {'MB/s':>8} {'vs dd':>7}")
    print(f"{'dd sequential write (' + write_how + ')':44} {write:8.0f} {1:6.2f}x")
    print(f"{'checkpoint save, blocking (written + sealed)':44} {save_rate:8.0f} {save_rate / write:6.2f}x")
    print(f"{'sha256 of its files, page cache warm':44} {hashing:8.0f} {hashing / write:6.2f}x")
    print(f"{'dd sequential read (' + read_how + ')':44} {read:8.0f} {1:6.2f}x")
    print(f"{'checkpoint load (page cache dropped)':44} {load_rate:8.0f} {load_rate / read:6.2f}x")
    print(f"\n{'training blocked per save':44} {'seconds':>8} {'vs blocking':>12}")
    print(f"{'blocking save':44} {statistics.median(blocking):8.2f} {1:11.2f}x")
    print(f"{'async save (copy to host memory)':44} {statistics.median(background):8.2f} "
          f"{statistics.median(background) / statistics.median(blocking):11.2f}x")
    print(f"{'async save, until committed (background)':44} {statistics.median(background_total):8.2f} "
          f"{statistics.median(background_total) / statistics.median(blocking):11.2f}x")


if __name__ == "__main__":
    main()
    dist.destroy_process_group()
    sys.exit(0)
