"""Mixtures: proportions, per-dataset epochs, and exact resume as one consumed_samples number."""

import collections

import numpy as np
import pytest
from pipeline import STDLIB

from pretrain.data.clean import clean_corpus
from pretrain.data.config import CleanConfig, MixtureComponent
from pretrain.data.loader import ShardedSamples, TrainBatches, global_sample_id, sample_order
from pretrain.data.mixture import BLOCK, ID_SHIFT, Mixture, shares
from pretrain.data.shard import write_shards
from pretrain.errors import ConfigError


@pytest.fixture(scope="module")
def second_dataset(tmp_path_factory, tokenizer_dir, shard_cfg):
    """Another slice of the standard library, tokenized with the session's tokenizer."""
    root = tmp_path_factory.mktemp("second")
    clean_corpus(CleanConfig(inputs=[str(STDLIB)], glob="[d-e]*.py", min_chars=100, progress=False), root / "cleaned")
    write_shards(shard_cfg, root / "cleaned", tokenizer_dir, root / "dataset")
    return root / "dataset"


@pytest.fixture(scope="module")
def mixture(dataset_dir, second_dataset):
    a, b = ShardedSamples(dataset_dir, "train"), ShardedSamples(second_dataset, "train")
    return Mixture([a, b, a], [0.5, 0.3, 0.2], seed=17)


def test_shares_sum_to_the_block_and_follow_weights():
    assert shares([1, 1, 1], 10).tolist() == [4, 3, 3]
    assert shares([0.7, 0.3]).sum() == BLOCK


def test_proportions_within_one_percent_over_100k_samples(mixture):
    counts = collections.Counter((mixture.sample_ids(range(100_000)) >> ID_SHIFT).tolist())
    for dataset, weight in enumerate([0.5, 0.3, 0.2]):
        assert abs(counts[dataset] / 100_000 - weight) < 0.01


def test_each_dataset_runs_through_whole_epochs(mixture):
    # The first len(B) draws of dataset 1 are each of its samples once: per-dataset epochs.
    size = len(mixture.datasets[1])
    draws = [s & ((1 << ID_SHIFT) - 1) for s in map(mixture.sample_id, range(20 * size)) if s >> ID_SHIFT == 1]
    assert sorted(draws[:size]) == list(range(size))
    assert draws[size : 2 * size] != draws[:size]


def located(mixture, index: int) -> int:
    """The module's definition, one index at a time: the reference for the vectorized sample_ids."""
    block, position = divmod(index, BLOCK)
    pattern = np.random.default_rng((mixture.seed, block)).permutation(np.repeat(np.arange(3), mixture.shares))
    dataset = int(pattern[position])
    draw = block * int(mixture.shares[dataset]) + int((pattern[:position] == dataset).sum())
    samples = len(mixture.datasets[dataset])
    epoch, offset = divmod(draw, samples)
    sample = int(sample_order(samples, mixture.seed + dataset * 1_000_003, epoch)[offset])
    return dataset << ID_SHIFT | sample


def test_sample_ids_are_the_per_index_definition_across_blocks_and_epochs(mixture):
    smallest = min(len(samples) for samples in mixture.datasets)
    for indices in (range(BLOCK - 5, BLOCK + 300, 3), np.arange(0, 3 * smallest + 7), range(4, 5)):
        assert mixture.sample_ids(indices).tolist() == [located(mixture, int(i)) for i in indices]


def test_first_dataset_follows_its_single_dataset_order(mixture):
    ids = [mixture.sample_id(i) for i in range(3000)]
    own = [s for s in ids if s >> ID_SHIFT == 0][:50]
    assert own == [global_sample_id(k, len(mixture.datasets[0]), 17) for k in range(50)]


def ids_of(batches, steps):
    return [[i for mb in batches.next_global_batch() for i in mb["sample_ids"]] for _ in range(steps)]


def test_resume_across_a_mixture_is_exact_on_any_dp_size(mixture):
    full = [TrainBatches(mixture, 17, 2, 8, rank, 2) for rank in range(2)]
    uninterrupted = [ids_of(b, 6) for b in full]
    first = [TrainBatches(mixture, 17, 2, 8, rank, 2) for rank in range(2)]
    head = [ids_of(b, 3) for b in first]
    consumed = first[0].consumed_samples
    resumed = [TrainBatches(mixture, 17, 2, 8, rank, 2, consumed_samples=consumed) for rank in range(2)]
    tail = [ids_of(b, 3) for b in resumed]
    assert [h + t for h, t in zip(head, tail)] == uninterrupted
    # On 4 ranks the same global batches are read, split differently.
    four = [TrainBatches(mixture, 17, 1, 8, rank, 4, consumed_samples=consumed) for rank in range(4)]
    steps = [ids_of(b, 3) for b in four]
    for step in range(3):
        expected = uninterrupted[0][3 + step] + uninterrupted[1][3 + step]
        assert sorted(sum((s[step] for s in steps), [])) == sorted(expected)


def test_batches_read_the_located_samples(mixture):
    batch = TrainBatches(mixture, 17, 4, 4, 0, 1).next_global_batch()[0]
    for row, sample_id in zip(batch["tokens"], batch["sample_ids"]):
        dataset, sample = sample_id >> ID_SHIFT, sample_id & ((1 << ID_SHIFT) - 1)
        np.testing.assert_array_equal(row.numpy(), mixture.datasets[dataset][sample])


def test_bad_mixtures(dataset_dir):
    with pytest.raises(ConfigError, match="data.mixture.weight"):
        MixtureComponent(dataset_dir=str(dataset_dir), weight=0)
    a = ShardedSamples(dataset_dir, "train")
    with pytest.raises(ConfigError, match="draws nothing"):
        Mixture([a, a], [1.0, 1e-9], seed=1)
