"""Stage 3, `pretrain data shard`: cleaned jsonl + tokenizer → webdataset .tar shards + manifest.

Owns the train/valid split (by a hash of each document's text, so it does not depend on
file names or order), packing documents into fixed-length samples and the manifest.
Each sample is `{split}-{index:09d}.tokens.npy`: int32, sequence_length + 1 tokens
(inputs = s[:-1], targets = s[1:]); documents are joined with eos and cut without padding.

Two passes. Tokenizing (the cost: SentencePiece's encode, through a cache of word-like
segments that gives the same ids, see pretrain/tokenizers/segments.py) runs per cleaned file,
in a process pool when there is more than one core, each file's tokens going to a scratch .npy.
Packing then reads those in file order in this process, so the shards are byte-identical for
any number of workers. Packing is numpy over whole files (eos inserted and
splits separated by index arrays) and tar members are written by hand, with no Python work per token.
"""

import hashlib
import io
import itertools
import multiprocessing
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import orjson

from pretrain.data.card import write_dataset_card
from pretrain.data.clean import cleaned_files
from pretrain.data.config import ShardConfig
from pretrain.data.manifest import MANIFEST_FORMAT
from pretrain.data.progress import Progress
from pretrain.errors import ConfigError
from pretrain.io import atomic_dir, write_json
from pretrain.tokenizers.segments import SegmentEncoder
from pretrain.tokenizers.tokenizer import Tokenizer

SPLITS = ("train", "valid")
ENCODE_BATCH = 1024
CHUNK_DOCS = 4096  # documents per tokenizing job: a pool has work even for one cleaned file
_RECORD = 20 * 512  # tar pads the archive to whole records of 20 blocks, as tarfile does


def write_shards(cfg: ShardConfig, cleaned_dir, tokenizer_dir, out_dir) -> dict:
    """Tokenize cleaned docs into out_dir/{train,valid}/shard-*.tar; write and return the manifest."""
    files = cleaned_files(cleaned_dir)
    tokenizer = Tokenizer(tokenizer_dir)
    with atomic_dir(out_dir) as tmp:
        parts = tokenize_files(files, tokenizer_dir, tmp / ".tokens", cfg.workers, cfg.progress)
        keys = np.concatenate([part["keys"] for part in parts])
        valid_docs = _initial_valid_docs(keys, cfg.valid_fraction)
        while True:
            splits = _write_splits(cfg, parts, _valid_mask(keys, valid_docs), tokenizer.eos_id, tmp)
            if not _valid_too_small(cfg, splits, len(keys)):
                break
            valid_docs = _more_valid_docs(cfg, splits, valid_docs, len(keys))
            for split in SPLITS:
                shutil.rmtree(tmp / split)
        shutil.rmtree(tmp / ".tokens")
        _check_train(cfg, splits)
        manifest = _manifest(cfg, tokenizer, splits)
        write_json(tmp / "manifest.json", manifest)
        write_dataset_card(tmp, cleaned_dir, tokenizer, manifest)
    return manifest


def worker_count(workers: int, jobs: int) -> int:
    """Processes to use: the configured number (0: the cores this process may run on), at most jobs."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(workers or available or 1, jobs))


def tokenize_files(files, tokenizer_dir, token_dir: Path, workers: int, progress: bool = True) -> list[dict]:
    """Tokenize the cleaned files, in chunks of CHUNK_DOCS documents, into token_dir.

    Returns per chunk, in input order, its token file, document lengths and split keys.
    """
    token_dir.mkdir()
    jobs, shares = [], []  # shares: (fraction of its file, bytes) of each chunk, for the progress line
    for path in files:
        lines, size = _count_lines(path), os.stat(path).st_size
        for start in range(0, lines, CHUNK_DOCS):
            token_path = str(token_dir / f"{len(jobs):06d}.npy")
            jobs.append((str(path), start, start + CHUNK_DOCS, str(tokenizer_dir), token_path))
            part = (min(lines, start + CHUNK_DOCS) - start) / lines
            shares.append((part, int(size * part)))
    meter = Progress("shard", len(files), sum(os.stat(path).st_size for path in files), enabled=progress)
    processes = worker_count(workers, len(jobs))
    if processes == 1:
        return _tracked(map(tokenize_chunk, jobs), shares, meter)
    # spawn, not fork: the parent may hold torch threads and open files (tests, the CLI).
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return _tracked(pool.imap(tokenize_chunk, jobs), shares, meter)


def _tracked(results, shares, meter: Progress) -> list[dict]:
    parts = []
    for part, (fraction, nbytes) in zip(results, shares):
        parts.append(part)
        meter.advance(fraction, len(part["lengths"]), nbytes)
    meter.close()
    return parts


def _count_lines(path) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


_ENCODERS: dict[str, SegmentEncoder] = {}


def tokenize_chunk(job: tuple) -> dict:
    """Documents [start, stop) of a cleaned file → their tokens (no eos) in one int32 .npy.

    Returns the token file, the length and the split key of each document.
    """
    path, start, stop, tokenizer_dir, token_path = job
    if tokenizer_dir not in _ENCODERS:
        # One per process, kept across chunks so its segment cache warms up; one thread:
        # parallelism comes from processes, one per core.
        tokenizer = Tokenizer(tokenizer_dir)
        _ENCODERS[tokenizer_dir] = SegmentEncoder(tokenizer.processor, tokenizer.card.get("model_type", ""))
    encoder = _ENCODERS[tokenizer_dir]
    with open(path, "rb") as f:
        texts = [orjson.loads(line)["text"] for line in itertools.islice(f, start, stop)]
    arrays = []
    for first in range(0, len(texts), ENCODE_BATCH):
        arrays += encoder.encode_arrays(texts[first : first + ENCODE_BATCH])
    tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int32)
    np.save(token_path, tokens.astype(np.int32, copy=False))
    lengths = np.array([len(ids) for ids in arrays], dtype=np.int64)
    return {"tokens": token_path, "lengths": lengths, "keys": _doc_keys(texts)}


def _doc_keys(texts: list[str]) -> np.ndarray:
    """A number in [0, 1) per document from its text: the split is stable under reordering."""
    keys = [int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
            for text in texts]
    return np.array(keys, dtype=np.uint64).astype(np.float64) / 2.0**64


def _initial_valid_docs(keys: np.ndarray, valid_fraction: float) -> int:
    if valid_fraction == 0 or len(keys) < 2:
        return 0
    return max(1, int(np.count_nonzero(keys < valid_fraction)))


def _valid_mask(keys: np.ndarray, valid_docs: int) -> np.ndarray:
    # The documents with the smallest keys: growing valid_docs only adds documents.
    mask = np.zeros(len(keys), dtype=bool)
    mask[np.argsort(keys, kind="stable")[:valid_docs]] = True
    return mask


def _valid_too_small(cfg: ShardConfig, splits: dict, num_docs: int) -> bool:
    return cfg.valid_fraction > 0 and num_docs >= 2 and splits["valid"]["samples"] == 0


def _more_valid_docs(cfg: ShardConfig, splits: dict, valid_docs: int, num_docs: int) -> int:
    # Rare (tiny corpora): the held-out documents do not fill one sample, so hold out more
    # and pack again (from the same token files) rather than leave the run without a validation set.
    if valid_docs >= num_docs - 1:
        raise ConfigError(
            "data.shard.valid_fraction",
            f"the corpus is too small for one validation sample of {cfg.sequence_length + 1} tokens; "
            "add text, lower data.shard.sequence_length or set data.shard.valid_fraction=0",
        )
    return min(2 * valid_docs, num_docs - 1)


def _check_train(cfg: ShardConfig, splits: dict) -> None:
    if splits["train"]["samples"] == 0:
        raise ConfigError(
            "data.shard.sequence_length",
            f"the training split has fewer than sequence_length + 1 = {cfg.sequence_length + 1} tokens",
        )


def _write_splits(cfg: ShardConfig, parts: list[dict], is_valid: np.ndarray, eos_id: int, folder: Path):
    writers = {split: _SplitWriter(folder, split, cfg) for split in SPLITS}
    first = 0
    for part in parts:
        lengths = part["lengths"]
        valid = is_valid[first : first + len(lengths)]
        first += len(lengths)
        # Each document followed by eos, then the tokens of each split picked out by a mask.
        stream = np.insert(np.load(part["tokens"]), np.cumsum(lengths), eos_id)
        token_valid = np.repeat(valid, lengths + 1)
        writers["valid"].add_tokens(stream[token_valid], int(np.count_nonzero(valid)))
        writers["train"].add_tokens(stream[~token_valid], int(len(valid) - np.count_nonzero(valid)))
    return {split: writer.finish() for split, writer in writers.items()}


def _manifest(cfg: ShardConfig, tokenizer: Tokenizer, splits: dict) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "sequence_length": cfg.sequence_length,
        "tokenizer_sha256": tokenizer.sha256,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "splits": splits,
    }


def _npy_header(length: int) -> bytes:
    """The .npy header of an int32 vector of this length (the same for every sample)."""
    stream = io.BytesIO()
    np.lib.format.write_array(stream, np.zeros(length, dtype="<i4"), allow_pickle=False)
    return stream.getvalue()[: -4 * length]


def _tar_header(name: str, size: int) -> bytes:
    """A tar member header as webdataset's TarWriter writes it (mtime 0: reproducible bytes)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uname = info.gname = "bigdata"
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class _Headers:
    """Tar headers of `{prefix}{index:09d}{suffix}` members of one size, from one template.

    Building each header with tarfile costs about 30 us, a fifth of the packing time; only the nine
    digits and the checksum (the sum of the header's bytes) change from one member to the next.
    """

    def __init__(self, prefix: str, suffix: str, size: int):
        self.prefix, self.suffix, self.size = prefix, suffix, size
        self.template = _tar_header(f"{prefix}{0:09d}{suffix}", size)
        self.start = len(prefix.encode("utf-8"))
        # Checksum of the template with its checksum field read as spaces, minus the nine "0"s.
        self.base = sum(self.template) - sum(self.template[148:156]) + 8 * 32 - 9 * 48

    def __call__(self, index: int) -> bytes:
        if index >= 10**9:  # the name grows a digit: no template
            return _tar_header(f"{self.prefix}{index:09d}{self.suffix}", self.size)
        digits = b"%09d" % index
        checksum = b"%06o\0" % (self.base + sum(digits))
        t, s = self.template, self.start
        return b"".join((t[:s], digits, t[s + 9 : 148], checksum, t[155:]))


class _TarShard:
    """A .tar written member by member, hashed (sha256) as it is written."""

    def __init__(self, path: Path):
        self.file = open(path, "wb", buffering=1 << 20)
        self.sha256 = hashlib.sha256()
        self.size = 0

    def add(self, header: bytes, payload: bytes) -> None:
        padding = b"\0" * (-len(payload) % 512)
        self._write(b"".join((header, payload, padding)))

    def close(self) -> str:
        """End the archive (two zero blocks, padded to a whole record); return its sha256."""
        end = 1024 + (-(self.size + 1024) % _RECORD)
        self._write(b"\0" * end)
        self.file.close()
        return self.sha256.hexdigest()

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.sha256.update(data)
        self.size += len(data)


class _SplitWriter:
    """Packs one split's token stream into samples and samples into .tar shards."""

    def __init__(self, folder: Path, split: str, cfg: ShardConfig):
        self.folder = folder
        self.split = split
        self.sample_length = cfg.sequence_length + 1
        self.samples_per_shard = cfg.samples_per_shard
        self.header = _npy_header(self.sample_length)
        self.tar_headers = _Headers(f"{split}-", ".tokens.npy", len(self.header) + 4 * self.sample_length)
        self.pending = np.zeros(0, dtype="<i4")
        self.tar = None
        self.shards: list[dict] = []
        self.samples = 0
        self.documents = 0

    def add_tokens(self, tokens: np.ndarray, documents: int) -> None:
        """Append a stream of documents (each ending in eos) and write every full sample."""
        self.documents += documents
        tokens = np.concatenate([self.pending, tokens.astype("<i4", copy=False)])
        full = len(tokens) // self.sample_length * self.sample_length
        for sample in tokens[:full].reshape(-1, self.sample_length):
            self._write_sample(sample.tobytes())
        self.pending = tokens[full:]

    def _write_sample(self, data: bytes) -> None:
        if self.tar is None:
            self._open_shard()
        self.tar.add(self.tar_headers(self.samples), self.header + data)
        self.samples += 1
        self.shards[-1]["samples"] += 1
        if self.shards[-1]["samples"] == self.samples_per_shard:
            self._close_shard()

    def _open_shard(self) -> None:
        relative = f"{self.split}/shard-{len(self.shards):06d}.tar"
        (self.folder / self.split).mkdir(exist_ok=True)
        self.tar = _TarShard(self.folder / relative)
        self.shards.append({"path": relative, "samples": 0, "tokens": 0, "sha256": None})

    def _close_shard(self) -> None:
        shard = self.shards[-1]
        shard["sha256"] = self.tar.close()
        shard["tokens"] = shard["samples"] * self.sample_length
        self.tar = None

    def finish(self) -> dict:
        """Close the last shard (the leftover tokens that do not fill a sample are dropped)."""
        if self.tar is not None:
            self._close_shard()
        (self.folder / self.split).mkdir(exist_ok=True)
        return {
            "samples": self.samples,
            "tokens": self.samples * self.sample_length,
            "documents": self.documents,
            "shards": self.shards,
        }
