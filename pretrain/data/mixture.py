"""Mixtures: several datasets' train samples drawn in proportion to weights, as a pure function of the index.

Global index i falls in block i // BLOCK. Each block holds every dataset's share of BLOCK samples
(weights rounded by largest remainder, so proportions are exact to 1/BLOCK), in an order shuffled
by (seed, block). Dataset d's k-th draw overall is k = block * share[d] + (draws of d earlier in the
block), and reads that dataset's global_sample_id-style epoch permutation at k. Nothing depends on
history, so resume stays one consumed_samples number and any rank can compute any index.
"""

import functools

import numpy as np

from pretrain.data.loader import ShardedSamples, sample_order
from pretrain.errors import ConfigError

BLOCK = 4096
# Sample ids of a mixture pack (dataset, sample) into one int64 for logs: dataset << ID_SHIFT | sample.
ID_SHIFT = 40
SAMPLE_MASK = (1 << ID_SHIFT) - 1


def shares(weights: list[float], block: int = BLOCK) -> np.ndarray:
    """Samples per block for each weight: proportional, summing to block (largest remainder)."""
    exact = np.asarray(weights, dtype=np.float64) / sum(weights) * block
    counts = np.floor(exact).astype(np.int64)
    short = block - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


class Mixture:
    """Random access to a weighted mixture of datasets' train splits by global index."""

    def __init__(self, datasets: list[ShardedSamples], weights: list[float], seed: int):
        _check_compatible(datasets)
        self.datasets = datasets
        self.weights = list(weights)
        self.seed = seed
        self.shares = shares(weights)
        if (self.shares == 0).any():
            raise ConfigError("data.mixture.weight", f"a weight below 1/{BLOCK} of the total draws nothing")
        self.split = "train"
        self.dir = datasets[0].dir
        self.sample_length = datasets[0].sample_length

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def sample_id(self, index: int) -> int:
        """The packed (dataset, sample) id read at global index `index`."""
        return int(self.sample_ids(np.array([index]))[0])

    def sample_ids(self, indices) -> np.ndarray:
        """sample_id of each of `indices` (a range or an int64 array), as one int64 array."""
        indices = np.asarray(indices, dtype=np.int64)
        datasets, draws = self._draws(indices)
        ids = np.empty_like(indices)
        for dataset, samples in enumerate(self.datasets):
            mine = datasets == dataset
            epochs, offsets = np.divmod(draws[mine], len(samples))
            picked = np.empty_like(offsets)
            for epoch in np.unique(epochs).tolist():  # one, or two across an epoch's end
                now = epochs == epoch
                picked[now] = _dataset_order(len(samples), self.seed, dataset, epoch)[offsets[now]]
            ids[mine] = dataset << ID_SHIFT | picked
        return ids

    def _draws(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The dataset each index reads, and which draw of that dataset overall it is (see the module)."""
        blocks, positions = np.divmod(indices, BLOCK)
        datasets, draws = np.empty_like(indices), np.empty_like(indices)
        for block in np.unique(blocks).tolist():  # a global batch spans one block or two
            here = blocks == block
            pattern, ranks = _block_pattern(self.seed, tuple(self.shares), block)
            datasets[here] = pattern[positions[here]]
            draws[here] = block * self.shares[datasets[here]] + ranks[positions[here]]
        return datasets, draws

    def __getitem__(self, sample_id: int) -> np.ndarray:
        return self.datasets[sample_id >> ID_SHIFT][sample_id & SAMPLE_MASK]

    def gather(self, sample_ids, out: np.ndarray | None = None) -> np.ndarray:
        """The samples of packed `sample_ids` in one array, as ShardedSamples.gather: one gather per dataset."""
        sample_ids = np.asarray(sample_ids, dtype=np.int64)
        if out is None:
            out = np.empty((len(sample_ids), self.sample_length), dtype="<i4")
        datasets = sample_ids >> ID_SHIFT
        for dataset, samples in enumerate(self.datasets):
            rows = np.flatnonzero(datasets == dataset)
            if len(rows):
                out[rows] = samples.gather(sample_ids[rows] & SAMPLE_MASK)
        return out


@functools.lru_cache(maxsize=4)
def _block_pattern(seed: int, block_shares: tuple, block: int) -> tuple[np.ndarray, np.ndarray]:
    pattern = np.repeat(np.arange(len(block_shares)), block_shares)
    pattern = np.random.default_rng((seed, block)).permutation(pattern)
    ranks = np.empty(len(pattern), dtype=np.int64)
    for dataset in range(len(block_shares)):
        where = pattern == dataset
        ranks[where] = np.arange(where.sum())
    return pattern, ranks


@functools.lru_cache(maxsize=16)
def _dataset_order(num_samples: int, seed: int, dataset: int, epoch: int) -> np.ndarray:
    # Dataset 0 of a mixture follows the same order as that dataset trained alone.
    return sample_order(num_samples, seed + dataset * 1_000_003, epoch)


def _check_compatible(datasets: list[ShardedSamples]) -> None:
    if not datasets:
        raise ConfigError("data.mixture", "is empty")
    first = datasets[0].manifest
    for samples in datasets:
        if len(samples) == 0:
            raise ConfigError("data.mixture", f"{samples.dir} has no train samples")
        for key in ("tokenizer_sha256", "sequence_length"):
            if samples.manifest[key] != first[key]:
                raise ConfigError("data.mixture", f"{samples.dir} has another {key} than {datasets[0].dir}")
