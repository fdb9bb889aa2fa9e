"""The loader: random access to shard samples, the seeded sample order, and per-rank batches.

The data position of a run is one number, consumed_samples. Global index g maps to
sample global_sample_id(g) (a fresh permutation per epoch, a pure function of the seed),
and data-parallel rank r of dp takes indices r, r + dp, ... of each global batch; so a
resumed run, even on another dp size, reads exactly the samples an uninterrupted one would.
"""

import collections
import functools
import operator
import tarfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from pretrain.data.manifest import KEY, load_manifest
from pretrain.errors import ConfigError

# Shards mapped at once per ShardedSamples (memory maps: reads share no file position, and a
# sample is a view of the page cache until a batch copies it).
MAX_OPEN_SHARDS = 64


class _Span(NamedTuple):
    """Every mapped shard's samples as rows of one strided view of the address range they lie in.

    Each shard is mapped on its own, but all of them lie in this process's one address space: a
    [words, sample_length] view whose row w starts 4 * w bytes past the lowest shard's first sample
    reads any sample of any mapped shard, so a batch is one fancy index, however many shards it
    touches. Only rows that start at a sample are ever read; the gaps between maps never are.
    Per-shard arrays are indexed by slot = shard + 1 (what searchsorted gives), with slot 0 and
    slot len(shards) + 1 standing for indices before and after the split.
    """

    rows: np.ndarray
    covered: np.ndarray
    """Per slot: whether the span reads that shard (never for the two out-of-range slots)."""
    word_base: np.ndarray
    """Per slot: the row of global sample i of that shard is word_base[slot] + i * row_words[slot]."""
    row_words: np.ndarray
    """Per slot: 4-byte words from one sample to the next."""
    keep: tuple[np.ndarray, ...]
    """The covered shards' own views: while the span is in use, no map it reads can be unmapped."""


class ShardedSamples:
    """Samples of one split of a dataset, read by global index straight from the .tar shards.

    One thread at a time reads an object (the prefetch thread reads the train split's).
    """

    def __init__(self, dataset_dir: str | Path, split: str):
        self.dir = Path(dataset_dir)
        self.manifest = load_manifest(self.dir)
        if split not in self.manifest["splits"]:
            raise ConfigError(KEY, f"{self.dir} has no split {split!r}")
        self.split = split
        shards = self.manifest["splits"][split]["shards"]
        self.paths = [self.dir / shard["path"] for shard in shards]
        self.starts = np.cumsum([0] + [shard["samples"] for shard in shards])
        self._size = int(self.starts[-1])
        self.sample_length = self.manifest["sequence_length"] + 1
        # Offsets are found per shard on first use: constructing costs no shard reads.
        self._offsets: list[np.ndarray | None] = [None] * len(shards)
        self._maps: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._rows: dict[int, np.ndarray] = {}  # per mapped shard: its [samples, sample_length] view
        self._span: _Span | None = None

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index) -> np.ndarray:
        """Sample `index` as a read-only int32 view of its shard (copy it to keep it past close)."""
        index = operator.index(index)
        if not 0 <= index < self._size:
            raise self._out_of_range(index)
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        offset = int(self._shard_offsets(shard)[index - self.starts[shard]])
        data = self._map(shard)[offset : offset + 4 * self.sample_length]
        if len(data) != 4 * self.sample_length:
            raise ConfigError(KEY, f"shard {self.paths[shard]} is truncated")
        return data.view("<i4")

    def gather(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        """Samples [len(indices), sample_length] copied out of the shards' maps in one array.

        Every sample of a shard is a tar member of the same size, so the samples lie at a fixed
        stride and all mapped shards read through one strided view (_Span): one fancy index copies
        the batch. `out` (any integer dtype, e.g. int64: rows are widened as they land) receives
        them, in the order of `indices`.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if not len(indices):
            return np.empty((0, self.sample_length), dtype="<i4") if out is None else out
        slots = self.starts.searchsorted(indices, "right")  # shard + 1; 0 or len(paths) + 1: out of range
        span = self._span
        if span is None or not span.covered[slots].all():
            touched = set(slots.tolist())
            if 0 in touched or len(self.paths) + 1 in touched:
                raise self._out_of_range(int(indices[(indices < 0) | (indices >= self._size)][0]))
            if len(touched) > MAX_OPEN_SHARDS:  # more shards than stay mapped at once: a group of shards at a time
                if out is None:
                    out = np.empty((len(indices), self.sample_length), dtype="<i4")
                ordered = sorted(touched)
                for group in range(0, len(ordered), MAX_OPEN_SHARDS):
                    where = np.isin(slots, ordered[group : group + MAX_OPEN_SHARDS])
                    out[where] = self.gather(indices[where])
                return out
            span = self._span_over({slot - 1 for slot in touched})
        rows = span.rows[span.word_base[slots] + indices * span.row_words[slots]]
        if out is None:
            return rows
        out[:] = rows
        return out

    def _span_over(self, shards: set[int]) -> _Span:
        """A new _Span over every mapped shard, `shards` (at most MAX_OPEN_SHARDS) mapped first."""
        for shard in shards & self._maps.keys():  # most recently used: mapping the others drops none of them
            self._maps.move_to_end(shard)
        for shard in shards:
            self._shard_rows(shard)
        self._span = _span(self._rows, self.starts, self.sample_length)
        return self._span

    def _out_of_range(self, index: int) -> IndexError:
        return IndexError(f"sample {index} out of range for {self._size} {self.split} samples")

    def _shard_rows(self, shard: int) -> np.ndarray:
        """The shard's samples as a read-only [samples, sample_length] int32 view of its map."""
        if shard not in self._rows:
            self._span = None  # it may not cover the new map, or covers one about to be dropped
            data, stride = self._shard_bytes(shard)
            self._rows[shard] = np.lib.stride_tricks.as_strided(
                data.view("<i4"), shape=(len(self._shard_offsets(shard)), self.sample_length),
                strides=(stride, 4), writeable=False)
        return self._rows[shard]

    def _shard_bytes(self, shard: int) -> tuple[np.ndarray, int]:
        """The shard's bytes from its first sample's data on, and the stride of its samples."""
        offsets = self._shard_offsets(shard)
        strides = np.diff(offsets)
        stride = int(strides[0]) if len(strides) else 4 * self.sample_length
        # Not written by `pretrain data shard`: samples at uneven or unaligned places are copied once.
        if (strides != stride).any() or offsets[0] % 4 or stride % 4:
            rows = np.stack([self[int(self.starts[shard]) + k] for k in range(len(offsets))])
            return rows.reshape(-1).view(np.uint8), 4 * self.sample_length
        size = stride * (len(offsets) - 1) + 4 * self.sample_length
        data = self._map(shard)[offsets[0] : offsets[0] + size]
        if len(data) < size:
            raise ConfigError(KEY, f"shard {self.paths[shard]} is truncated")
        return data, stride

    def _shard_offsets(self, shard: int) -> np.ndarray:
        if self._offsets[shard] is None:
            expected = int(self.starts[shard + 1] - self.starts[shard])
            first_key = f"{self.split}-{int(self.starts[shard]):09d}"
            path = self.paths[shard]
            self._offsets[shard] = _index_shard(path, self.sample_length, expected, first_key)
        return self._offsets[shard]

    def _map(self, shard: int) -> np.ndarray:
        if shard in self._maps:
            self._maps.move_to_end(shard)
            return self._maps[shard]
        if len(self._maps) >= MAX_OPEN_SHARDS:
            evicted, _ = self._maps.popitem(last=False)  # unmapped once no sample view refers to it
            self._rows.pop(evicted, None)
            self._span = None
        self._maps[shard] = np.memmap(self.paths[shard], dtype=np.uint8, mode="r")
        return self._maps[shard]

    def close(self) -> None:
        """Drop the shard maps (reads map them again)."""
        self._maps.clear()
        self._rows.clear()
        self._span = None

    def __getstate__(self):
        # Memory maps do not travel to another process; offsets do.
        state = self.__dict__.copy()
        state["_maps"], state["_rows"], state["_span"] = collections.OrderedDict(), {}, None
        return state


def _index_shard(path: Path, sample_length: int, expected: int, first_key: str) -> np.ndarray:
    """Byte offsets of each sample's int32 data inside one .tar shard, in sample order."""
    if not path.is_file():
        raise ConfigError(KEY, f"shard {path} is missing")
    try:
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers() if m.name.endswith(".tokens.npy")]
    except tarfile.TarError as error:  # cut short by a failed copy, or not a tar at all
        raise ConfigError(KEY, f"shard {path} is not a whole tar file ({error})") from None
    if len(members) != expected or (members and members[0].name != f"{first_key}.tokens.npy"):
        raise ConfigError(KEY, f"shard {path} does not hold the {expected} samples manifest.json lists")
    header = _npy_header_length(path, members[0], sample_length) if members else 0
    if any(m.size != members[0].size for m in members):
        raise ConfigError(KEY, f"shard {path} has samples of different lengths")
    return np.array([m.offset_data + header for m in members], dtype=np.int64)


def _npy_header_length(path: Path, member: tarfile.TarInfo, sample_length: int) -> int:
    # Every sample of a shard was written with the same header; parse the first one.
    with open(path, "rb") as f:
        f.seek(member.offset_data)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        header = f.tell() - member.offset_data
    expected_size = header + 4 * sample_length
    if shape != (sample_length,) or dtype != np.dtype("<i4") or member.size != expected_size:
        raise ConfigError(KEY, f"shard {path} does not hold int32 samples of {sample_length} tokens")
    return header


def _span(shard_rows: dict[int, np.ndarray], starts: np.ndarray, sample_length: int) -> _Span:
    """One view over every array of `shard_rows` (each [samples, sample_length] int32, 4-byte aligned)."""
    address = {shard: rows.__array_interface__["data"][0] for shard, rows in shard_rows.items()}
    lowest = min(address, key=address.get)
    end = max(address[shard] + rows.strides[0] * (len(rows) - 1) for shard, rows in shard_rows.items())
    slots = len(starts) + 1  # the shards, and one out-of-range slot on each side
    words = (end - address[lowest]) // 4 + 1
    # An uncovered slot points past the view: reading it raises IndexError, never another shard's sample.
    covered, row_words = np.zeros(slots, dtype=bool), np.zeros(slots, np.int64)
    word_base = np.full(slots, words, np.int64)
    for shard, rows in shard_rows.items():
        first, step = divmod(address[shard] - address[lowest], 4), divmod(rows.strides[0], 4)
        if first[1] or step[1]:  # _shard_bytes copies unaligned samples: never here
            raise AssertionError(f"shard {shard}'s samples are not 4-byte aligned")
        covered[shard + 1], row_words[shard + 1] = True, step[0]
        word_base[shard + 1] = first[0] - int(starts[shard]) * step[0]
    view = np.lib.stride_tricks.as_strided(shard_rows[lowest], shape=(words, sample_length), strides=(4, 4),
                                           writeable=False)
    return _Span(view, covered, word_base, row_words, tuple(shard_rows.values()))


def sample_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which one epoch visits the samples: a permutation seeded by (seed, epoch)."""
    return np.random.default_rng((seed, epoch)).permutation(num_samples)


@functools.lru_cache(maxsize=2)
def _cached_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    # Two epochs cached: a global batch may straddle an epoch boundary.
    order = sample_order(num_samples, seed, epoch)
    order.flags.writeable = False
    return order


def global_sample_id(index: int, num_samples: int, seed: int) -> int:
    """The sample read at global index `index`: epoch = index // num_samples, then that epoch's order."""
    epoch, position = divmod(index, num_samples)
    return int(_cached_order(num_samples, seed, epoch)[position])


def global_sample_ids(indices: range | np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """global_sample_id of each of ascending `indices`, as one int64 array.

    A range within one epoch reads as a slice of that epoch's order (a copy of it, no fancy index).
    """
    first, last = int(indices[0]) // num_samples, int(indices[-1]) // num_samples
    if first == last:
        order, offset = _cached_order(num_samples, seed, first), first * num_samples
        if isinstance(indices, range):
            return order[indices.start - offset : indices.stop - offset : indices.step].copy()
        return order[indices - offset]
    indices = np.asarray(indices)
    ids = np.empty(len(indices), dtype=np.int64)
    # A batch straddles an epoch boundary (or, with a tiny split, several): each part reads its epoch.
    bounds = np.searchsorted(indices, np.arange(first + 1, last + 1) * num_samples).tolist()
    for epoch, begin, end in zip(range(first, last + 1), [0, *bounds], [*bounds, len(indices)]):
        ids[begin:end] = _cached_order(num_samples, seed, epoch)[indices[begin:end] - epoch * num_samples]
    return ids


class TrainBatches:
    """One dp rank's share of each global batch, as micro-batches; resumes from consumed_samples.

    `samples` is one dataset's ShardedSamples or a Mixture of several.
    """

    def __init__(
        self,
        samples: ShardedSamples,
        seed: int,
        micro_batch_size: int,
        global_batch_size: int,
        dp_rank: int,
        dp_size: int,
        consumed_samples: int = 0,
        pin_memory: bool = False,
    ):
        _check_batch_layout(micro_batch_size, global_batch_size, dp_rank, dp_size)
        if len(samples) == 0:
            raise ConfigError(KEY, f"the {samples.split} split of {samples.dir} has no samples")
        self.samples = samples
        self.seed = seed
        self.micro_batch_size = micro_batch_size
        self.global_batch_size = global_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.consumed_samples = consumed_samples
        self.pin_memory = pin_memory
        """Put batches in page-locked memory, so that copies to the GPU can run asynchronously."""

    def next_global_batch(self) -> list[dict]:
        """This rank's micro-batches of the global batch at consumed_samples; then advance it."""
        batch = self.global_batch(self.consumed_samples)
        self.consumed_samples += self.global_batch_size
        return batch

    def global_batch(self, start: int) -> list[dict]:
        """This rank's micro-batches of the global batch beginning at global index `start`.

        A pure function of `start` (no state changes), so a background thread may prepare one.
        """
        indices = range(start + self.dp_rank, start + self.global_batch_size, self.dp_size)
        return _micro_batches(self.samples, self._sample_ids(indices), self.micro_batch_size, self.pin_memory)

    def _sample_ids(self, indices: range) -> np.ndarray:
        # A Mixture (pretrain.data.mixture) maps indices itself, with the seed it was built with.
        if hasattr(self.samples, "sample_ids"):
            return self.samples.sample_ids(indices)
        return global_sample_ids(indices, len(self.samples), self.seed)

    def __iter__(self):
        return self

    def __next__(self) -> list[dict]:
        return self.next_global_batch()

    def state_dict(self) -> dict:
        """The whole resumable state: one number."""
        return {"consumed_samples": self.consumed_samples}

    def load_state_dict(self, state: dict) -> None:
        """Resume at state["consumed_samples"]."""
        self.consumed_samples = int(state["consumed_samples"])

    def close(self) -> None:
        """Nothing runs in the background here (see PrefetchBatches)."""


def _check_batch_layout(micro_batch_size: int, global_batch_size: int, dp_rank: int, dp_size: int):
    if micro_batch_size <= 0 or dp_size <= 0 or not 0 <= dp_rank < dp_size:
        layout = f"micro_batch_size={micro_batch_size}, dp rank {dp_rank} of {dp_size}"
        raise ValueError(f"bad batch layout: {layout}")
    if global_batch_size <= 0 or global_batch_size % (micro_batch_size * dp_size) != 0:
        raise ConfigError(
            "train.global_batch_size",
            f"{global_batch_size} is not a positive multiple of micro_batch_size x data-parallel size "
            f"= {micro_batch_size} x {dp_size}",
        )


def valid_batches(samples: ShardedSamples, num_samples: int, micro_batch_size: int, dp_rank: int,
                  dp_size: int) -> list[dict]:
    """This rank's stride of the first `num_samples` validation samples (the same set for any layout).

    The split is used whole when it is smaller; the last micro-batch may be short, and a rank
    may get fewer micro-batches than another, or none, so callers weight losses by sample counts
    (and, under ZeRO-3, run as many forwards as the rank with the most: see Trainer.evaluate).
    """
    if len(samples) == 0:
        message = f"the {samples.split} split of {samples.dir} has no samples"
        raise ConfigError("data.shard.valid_fraction", message)
    _check_batch_layout(micro_batch_size, micro_batch_size * dp_size, dp_rank, dp_size)
    ids = np.arange(dp_rank, min(num_samples, len(samples)), dp_size)
    return _micro_batches(samples, ids, micro_batch_size) if len(ids) else []


def _micro_batches(samples: ShardedSamples, ids: np.ndarray, micro_batch_size: int,
                   pin_memory: bool = False) -> list[dict]:
    """All of `ids` read at once into one tensor, split into micro-batches.

    A micro-batch is {"tokens": [micro, sample_length] int32 tensor, "sample_ids": list of ints}.
    Tokens stay int32 (what the shards hold): half the bytes of int64 to pin and to copy to the
    GPU; language_model_loss widens them on the device.
    """
    if pin_memory:
        tokens = torch.empty((len(ids), samples.sample_length), dtype=torch.int32, pin_memory=True)
        samples.gather(ids, out=tokens.numpy())
    else:
        tokens = torch.from_numpy(samples.gather(ids))
    ids = ids.tolist()
    if len(ids) <= micro_batch_size:  # one micro-batch: no split (a tensor view costs about a microsecond)
        return [{"tokens": tokens, "sample_ids": ids}]
    starts = range(0, len(ids), micro_batch_size)
    if len(ids) % micro_batch_size:  # a short last micro-batch (validation)
        parts = tokens.split(micro_batch_size)
    else:  # one call makes every view: about half the cost of split's
        parts = tokens.view(-1, micro_batch_size, samples.sample_length).unbind()
    return [{"tokens": part, "sample_ids": ids[k : k + micro_batch_size]} for k, part in zip(starts, parts)]
