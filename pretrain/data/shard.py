"""Stage 3, `pretrain data shard`: cleaned jsonl + tokenizer → webdataset .tar shards + manifest.

Owns the train/valid split (by a hash of each document's text, so it does not depend on
file names or order), packing documents into fixed-length samples and the manifest.
Each sample is `{split}-{index:09d}.tokens.npy`: int32, sequence_length + 1 tokens
(inputs = s[:-1], targets = s[1:]); documents are joined with eos and cut without padding.
"""

import hashlib
import io
import itertools
import shutil
from pathlib import Path

import numpy as np
import webdataset as wds

from pretrain.data.clean import cleaned_files, read_cleaned
from pretrain.data.config import ShardConfig
from pretrain.data.manifest import MANIFEST_FORMAT
from pretrain.errors import ConfigError
from pretrain.io import atomic_dir, sha256_file, write_json
from pretrain.tokenizers.tokenizer import Tokenizer

SPLITS = ("train", "valid")
ENCODE_BATCH = 256


def write_shards(cfg: ShardConfig, cleaned_dir, tokenizer_dir, out_dir) -> dict:
    """Tokenize cleaned docs into out_dir/{train,valid}/shard-*.tar; write and return the manifest."""
    files = cleaned_files(cleaned_dir)
    tokenizer = Tokenizer(tokenizer_dir)
    keys = _doc_keys(files)
    valid_docs = _initial_valid_docs(keys, cfg.valid_fraction)
    with atomic_dir(out_dir) as tmp:
        while True:
            splits = _write_splits(cfg, files, tokenizer, _valid_mask(keys, valid_docs), tmp)
            if not _valid_too_small(cfg, splits, len(keys)):
                break
            valid_docs = _more_valid_docs(cfg, splits, valid_docs, len(keys))
            for split in SPLITS:
                shutil.rmtree(tmp / split)
        _check_train(cfg, splits)
        manifest = _manifest(cfg, tokenizer, splits)
        write_json(tmp / "manifest.json", manifest)
    return manifest


def _doc_keys(files) -> np.ndarray:
    """A number in [0, 1) per document from its text: the split is stable under reordering."""
    keys = [
        int.from_bytes(hashlib.blake2b(doc["text"].encode("utf-8"), digest_size=8).digest(), "little")
        for doc in read_cleaned(files)
    ]
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
    # and tokenize again rather than leave the run without a validation set.
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


def _write_splits(cfg: ShardConfig, files, tokenizer: Tokenizer, is_valid: np.ndarray, folder: Path):
    writers = {split: _SplitWriter(folder, split, cfg) for split in SPLITS}
    docs = enumerate(read_cleaned(files))
    while batch := list(itertools.islice(docs, ENCODE_BATCH)):
        token_lists = tokenizer.encode([doc["text"] for _, doc in batch])
        in_valid = [bool(is_valid[index]) for index, _ in batch]
        for split in SPLITS:
            chosen = [ids for ids, valid in zip(token_lists, in_valid) if valid == (split == "valid")]
            writers[split].add_documents(chosen, tokenizer.eos_id)
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


class _SplitWriter:
    """Packs one split's token stream into samples and samples into .tar shards."""

    def __init__(self, folder: Path, split: str, cfg: ShardConfig):
        self.folder = folder
        self.split = split
        self.sample_length = cfg.sequence_length + 1
        self.samples_per_shard = cfg.samples_per_shard
        self.header = _npy_header(self.sample_length)
        self.pending = np.zeros(0, dtype=np.int32)
        self.tar = None
        self.shards: list[dict] = []
        self.samples = 0
        self.documents = 0

    def add_documents(self, token_lists: list[list[int]], eos_id: int) -> None:
        """Append documents (each followed by eos) and write every full sample."""
        if not token_lists:
            return
        self.documents += len(token_lists)
        total = sum(len(ids) + 1 for ids in token_lists)
        stream = itertools.chain.from_iterable(ids + [eos_id] for ids in token_lists)
        tokens = np.concatenate([self.pending, np.fromiter(stream, dtype=np.int32, count=total)])
        full = len(tokens) // self.sample_length * self.sample_length
        for sample in tokens[:full].reshape(-1, self.sample_length):
            self._write_sample(sample)
        self.pending = tokens[full:]

    def _write_sample(self, sample: np.ndarray) -> None:
        if self.tar is None:
            self._open_shard()
        key = f"{self.split}-{self.samples:09d}"
        self.tar.write({"__key__": key, "tokens.npy": self.header + sample.astype("<i4").tobytes()})
        self.samples += 1
        self.shards[-1]["samples"] += 1
        if self.shards[-1]["samples"] == self.samples_per_shard:
            self._close_shard()

    def _open_shard(self) -> None:
        relative = f"{self.split}/shard-{len(self.shards):06d}.tar"
        (self.folder / self.split).mkdir(exist_ok=True)
        # mtime=0: the same input gives byte-identical shards, hence the same sha256.
        self.tar = wds.TarWriter(str(self.folder / relative), encoder=False, mtime=0)
        self.shards.append({"path": relative, "samples": 0, "tokens": 0, "sha256": None})

    def _close_shard(self) -> None:
        self.tar.close()
        self.tar = None
        shard = self.shards[-1]
        shard["tokens"] = shard["samples"] * self.sample_length
        shard["sha256"] = sha256_file(self.folder / shard["path"])

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
