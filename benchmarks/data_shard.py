"""Tokenize + shard throughput against SentencePiece alone: prints a table.

    python benchmarks/data_shard.py [--data-root data/stdlib]

Input: a data root's cleaned/ and tokenizer/ (default: the standard library's .py files cleaned with
the basic profile and a 4096-piece BPE tokenizer trained on them, built in a temporary folder).
The baseline is SentencePiece's batch encode alone, one thread, in this process, on the same texts;
beside it, the segment-cached encoder that sharding uses (same ids, checked here), cold cache.
Speeds are tokens per CPU-second (per core): this process's CPU time plus its finished children's,
so a busy machine does not skew them and a pool of workers is charged for every core it used.
"""

import argparse
import resource
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

from pretrain.data import shard
from pretrain.data.clean import clean_corpus, cleaned_files, read_cleaned
from pretrain.data.config import CleanConfig, ShardConfig, TokenizerConfig
from pretrain.data.shard import worker_count, write_shards
from pretrain.tokenizers.segments import SegmentEncoder
from pretrain.tokenizers.tokenizer import Tokenizer
from pretrain.tokenizers.train import train_tokenizer


def build_root(root: Path) -> None:
    stdlib = sysconfig.get_paths()["stdlib"]
    # Several cleaned files, so that a pool of workers has several tokenizing jobs.
    cfg = CleanConfig(inputs=[stdlib], glob="**/*.py", exclude=["site-packages/*", "dist-packages/*"],
                      docs_per_shard=200, progress=False)
    clean_corpus(cfg, root / "cleaned")
    train_tokenizer(TokenizerConfig(vocab_size=4096, sample_docs=3000), root / "cleaned", root / "tokenizer")


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (pool workers), user + system."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(fn) -> tuple[float, float]:
    cpu, wall = cpu_seconds(), time.perf_counter()
    fn()
    return cpu_seconds() - cpu, time.perf_counter() - wall


def encode_all(encode, texts: list[str]) -> list:
    return [ids for start in range(0, len(texts), 1024) for ids in encode(texts[start : start + 1024])]


def encoders(root: Path) -> tuple[int, int, float, float]:
    """(tokens, bytes, CPU s of SentencePiece alone, CPU s of the segment-cached encoder), batches of 1024."""
    texts = [doc["text"] for doc in read_cleaned(cleaned_files(root / "cleaned"))]
    tokenizer = Tokenizer(root / "tokenizer", num_threads=1)
    expected, cached = [], []
    seconds, _ = measure(lambda: expected.extend(encode_all(tokenizer.encode_arrays, texts)))
    encoder = SegmentEncoder(tokenizer.processor, tokenizer.card["model_type"])
    cached_seconds, _ = measure(lambda: cached.extend(encode_all(encoder.encode_arrays, texts)))
    if not all(np.array_equal(a, b) for a, b in zip(expected, cached)):
        sys.exit("the segment-cached encoder disagrees with SentencePiece")
    return sum(map(len, expected)), sum(len(t.encode("utf-8")) for t in texts), seconds, cached_seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root", type=Path, help="a folder with cleaned/ and tokenizer/ (default: build one)")
    parser.add_argument("--sequence-length", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root
        if root is None:
            root = Path(tmp)
            build_root(root)
        tokens, nbytes, seconds, cached_seconds = encoders(root)
        files = len(cleaned_files(root / "cleaned"))
        print(f"input: {nbytes / 1e6:.1f} MB of text, {tokens:,} tokens ({nbytes / tokens:.2f} bytes per token), "
              f"{files} cleaned files; {worker_count(0, 10**6)} cores\n")
        print("| step | workers | CPU s | wall s | M tokens/s per core | vs SentencePiece alone |")
        print("|---|---:|---:|---:|---:|---:|")
        base_rate = tokens / seconds
        print(f"| SentencePiece encode alone (1 thread) | 1 | {seconds:.2f} | - | {base_rate / 1e6:.2f} | 1.00 |")
        rate = tokens / cached_seconds
        print(f"| segment-cached encode alone, cold | 1 | {cached_seconds:.2f} | - | {rate / 1e6:.2f} | "
              f"{rate / base_rate:.2f} |")
        for workers in sorted({1, worker_count(0, 10**6)}):
            cfg = ShardConfig(sequence_length=args.sequence_length, workers=workers)
            out = Path(tmp) / f"dataset-{workers}"
            shard._ENCODERS.clear()  # each run starts cold, as a fresh `pretrain data shard` does
            cpu, wall = measure(lambda: write_shards(cfg, root / "cleaned", root / "tokenizer", out))
            rate = tokens / cpu
            print(f"| write_shards end to end | {workers} | {cpu:.2f} | {wall:.2f} | {rate / 1e6:.2f} | "
                  f"{rate / base_rate:.2f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
