"""The loader: random access to shard samples, the seeded sample order, and per-rank batches.

The data position of a run is one number, consumed_samples. Global index g maps to
sample global_sample_id(g) (a fresh permutation per epoch, a pure function of the seed),
and data-parallel rank r of dp takes indices r, r + dp, ... of each global batch; so a
resumed run, even on another dp size, reads exactly the samples an uninterrupted one would.
"""

import bisect
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
# gather() copies each shard's rows with one fancy index when it reads at least this many rows per
# shard on average, and joins the rows' bytes otherwise: numpy's fixed cost per fancy index (and
# per boolean mask) is worth it from about 20 rows per shard (measured with 2,049-token samples).
ROWS_PER_FANCY_INDEX = 20


class _ShardLayout(NamedTuple):
    """How a shard's samples lie in memory: every one at a fixed stride after the first."""

    rows: np.ndarray
    """[samples, sample_length] int32, a strided view of the shard's map."""
    data: memoryview
    """The same bytes, from the first sample's data on."""
    stride: int
    """Bytes from one sample's data to the next."""


class ShardedSamples:
    """Samples of one split of a dataset, read by global index straight from the .tar shards."""

    def __init__(self, dataset_dir: str | Path, split: str):
        self.dir = Path(dataset_dir)
        self.manifest = load_manifest(self.dir)
        if split not in self.manifest["splits"]:
            raise ConfigError(KEY, f"{self.dir} has no split {split!r}")
        self.split = split
        shards = self.manifest["splits"][split]["shards"]
        self.paths = [self.dir / shard["path"] for shard in shards]
        self.starts = np.cumsum([0] + [shard["samples"] for shard in shards])
        self._start_list, self._size = self.starts.tolist(), int(self.starts[-1])  # Python ints: quick per sample
        self.sample_length = self.manifest["sequence_length"] + 1
        # Offsets are found per shard on first use: constructing costs no shard reads.
        self._offsets: list[np.ndarray | None] = [None] * len(shards)
        self._maps: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._layouts: dict[int, _ShardLayout] = {}

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
        stride and a shard reads as a strided [samples, sample_length] view of its map: one fancy
        index per shard copies its rows when there are many per shard, else each row is a slice of
        the map and one join copies them all. `out` (any integer dtype, e.g. int64: rows are
        widened as they land) receives them, in the order of `indices`.
        """
        if len(indices) < ROWS_PER_FANCY_INDEX * len(self.paths):  # few rows per shard of the split
            rows = self._join_rows(indices.tolist() if isinstance(indices, np.ndarray) else list(indices))
            if out is None:
                return rows
            out[:] = rows
            return out
        indices = np.asarray(indices, dtype=np.int64)
        if out is None:
            out = np.empty((len(indices), self.sample_length), dtype="<i4")
        shards = np.searchsorted(self.starts, indices, side="right") - 1  # -1 or len(paths): out of range
        first, last = int(shards.min()), int(shards.max())
        if first < 0 or last >= len(self.paths):
            raise self._out_of_range(int(indices[(indices < 0) | (indices >= self._size)][0]))
        rows = indices - self.starts[shards]
        for shard in np.unique(shards).tolist():  # one fancy index per shard read; out keeps the order of indices
            where = shards == shard
            out[where] = self._layout(shard).rows[rows[where]]
        return out

    def _join_rows(self, indices: list[int]) -> np.ndarray:
        # Slicing a memoryview copies nothing, and one join copies every row: per row this costs
        # less than numpy's fixed cost per fancy index.
        row_bytes, starts, layouts, parts = 4 * self.sample_length, self._start_list, self._layouts, []
        for index in indices:
            if not 0 <= index < self._size:
                raise self._out_of_range(index)
            shard = bisect.bisect_right(starts, index) - 1
            layout = layouts.get(shard) or self._layout(shard)
            start = (index - starts[shard]) * layout.stride
            parts.append(layout.data[start : start + row_bytes])
        return np.frombuffer(bytearray().join(parts), dtype="<i4").reshape(len(parts), self.sample_length)

    def _out_of_range(self, index: int) -> IndexError:
        return IndexError(f"sample {index} out of range for {self._size} {self.split} samples")

    def _layout(self, shard: int) -> _ShardLayout:
        if shard not in self._layouts:
            data, stride = self._shard_bytes(shard)
            rows = np.lib.stride_tricks.as_strided(data.view("<i4"), shape=(len(self._shard_offsets(shard)),
                                                   self.sample_length), strides=(stride, 4), writeable=False)
            self._layouts[shard] = _ShardLayout(rows, memoryview(data), stride)
        return self._layouts[shard]

    def _shard_bytes(self, shard: int) -> tuple[np.ndarray, int]:
        """The shard's bytes from its first sample's data on, and the stride of its samples."""
        offsets = self._shard_offsets(shard)
        strides = np.diff(offsets)
        if len(strides) and (strides != strides[0]).any():  # not written by `pretrain data shard`
            rows = np.stack([self[int(self.starts[shard]) + k] for k in range(len(offsets))])
            return rows.reshape(-1).view(np.uint8), 4 * self.sample_length
        stride = int(strides[0]) if len(strides) else 4 * self.sample_length
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
            self._layouts.pop(evicted, None)
        self._maps[shard] = np.memmap(self.paths[shard], dtype=np.uint8, mode="r")
        return self._maps[shard]

    def close(self) -> None:
        """Drop the shard maps (reads map them again)."""
        self._maps.clear()
        self._layouts.clear()

    def __getstate__(self):
        # Memory maps do not travel to another process; offsets do.
        state = self.__dict__.copy()
        state["_maps"], state["_layouts"] = collections.OrderedDict(), {}
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


def global_sample_ids(indices: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """global_sample_id of each of ascending `indices`, as one int64 array."""
    first, last = int(indices[0]) // num_samples, int(indices[-1]) // num_samples
    if first == last:
        return _cached_order(num_samples, seed, first)[indices - first * num_samples]
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
        indices = np.arange(start + self.dp_rank, start + self.global_batch_size, self.dp_size)
        return _micro_batches(self.samples, self._sample_ids(indices), self.micro_batch_size, self.pin_memory)

    def _sample_ids(self, indices: np.ndarray) -> np.ndarray:
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
    may get none, so callers weight losses by sample counts.
    """
    if len(samples) == 0:
        message = f"the {samples.split} split of {samples.dir} has no samples"
        raise ConfigError("data.shard.valid_fraction", message)
    _check_batch_layout(micro_batch_size, micro_batch_size * dp_size, dp_rank, dp_size)
    ids = np.arange(dp_rank, min(num_samples, len(samples)), dp_size)
    return _micro_batches(samples, ids, micro_batch_size)


def _micro_batches(samples: ShardedSamples, ids: np.ndarray, micro_batch_size: int,
                   pin_memory: bool = False) -> list[dict]:
    """All of `ids` read at once into one int64 tensor (as the step takes them), split into micro-batches."""
    shape = (len(ids), samples.sample_length)
    # The step takes int64 ids: the rows are widened as they land in one array, no copy after.
    if pin_memory:
        tokens = torch.empty(shape, dtype=torch.long, pin_memory=True)
        samples.gather(ids, out=tokens.numpy())
    else:
        tokens = torch.from_numpy(samples.gather(ids, out=np.empty(shape, dtype=np.int64)))
    sample_ids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    if len(ids) <= micro_batch_size:  # one micro-batch: no slicing (a tensor view costs about a microsecond)
        return [{"tokens": tokens, "sample_ids": sample_ids}]
    return [{"tokens": tokens[k : k + micro_batch_size], "sample_ids": sample_ids[k : k + micro_batch_size]}
            for k in range(0, len(ids), micro_batch_size)]
