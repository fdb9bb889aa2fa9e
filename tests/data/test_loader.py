"""The loader: random access, the seeded order, dp sharding of batches, resume and validation."""

import multiprocessing
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch

from pretrain.data import loader
from pretrain.data.loader import (
    ShardedSamples,
    TrainBatches,
    global_sample_id,
    global_sample_ids,
    sample_order,
    valid_batches,
)
from pretrain.errors import ConfigError


@pytest.fixture(scope="module")
def train(dataset_dir):
    return ShardedSamples(dataset_dir, "train")


def flat_ids(micro_batches):
    return [sample_id for mb in micro_batches for sample_id in mb["sample_ids"]]


def test_random_access_matches_sequential_reads(train):
    sequential = [train[i] for i in range(len(train))]
    rng = np.random.default_rng(0)
    for index in rng.integers(0, len(train), size=200):
        np.testing.assert_array_equal(train[int(index)], sequential[index])
    assert train[len(train) - 1].shape == (33,)
    with pytest.raises(IndexError):
        train[len(train)]


def test_samples_survive_pickling_and_fork(train, dataset_dir):
    expected = train[len(train) // 2]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(train))[len(train) // 2], expected)
    # A reader built and used before the fork keeps working in the child (pread, no shared offset).
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(train.__getitem__, [len(train) // 2, 0])
    np.testing.assert_array_equal(results[0], expected)
    np.testing.assert_array_equal(results[1], train[0])


def test_sample_order_is_a_seeded_permutation_per_epoch():
    first = sample_order(100, seed=1, epoch=0)
    assert sorted(first.tolist()) == list(range(100))
    np.testing.assert_array_equal(first, sample_order(100, seed=1, epoch=0))
    assert not np.array_equal(first, sample_order(100, seed=1, epoch=1))
    assert not np.array_equal(first, sample_order(100, seed=2, epoch=0))


def test_global_sample_id_wraps_into_the_next_epoch():
    epoch0 = [global_sample_id(i, 10, seed=3) for i in range(10)]
    epoch1 = [global_sample_id(i, 10, seed=3) for i in range(10, 20)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1
    assert epoch1 == sample_order(10, 3, 1).tolist()


def test_global_sample_ids_are_the_per_index_ids():
    # One epoch; several; ten; the last index of an epoch; a range whose stop passes the epoch's end.
    for indices in (range(3, 9), range(5, 47, 3), range(0, 100), range(19, 20), range(12, 21, 4)):
        expected = [global_sample_id(i, 10, seed=3) for i in indices]
        assert global_sample_ids(indices, 10, seed=3).tolist() == expected
        assert global_sample_ids(np.arange(indices.start, indices.stop, indices.step), 10, seed=3).tolist() == expected


def test_gather_of_no_samples_reads_nothing(dataset_dir):
    fresh = ShardedSamples(dataset_dir, "train")
    assert fresh.gather([]).shape == (0, fresh.sample_length)
    assert fresh.gather(np.array([], dtype=np.int64), out=np.empty((0, fresh.sample_length), np.int64)).shape[0] == 0


def test_gather_is_the_per_sample_reads_across_shards(train):
    assert len(train.paths) >= 3
    rng = np.random.default_rng(1)
    last_of_first = int(train.starts[1]) - 1
    many = 200
    for indices in ([last_of_first, last_of_first + 1, 0, len(train) - 1, 0],  # both sides of a boundary
                    rng.integers(0, len(train), size=many),
                    rng.integers(int(train.starts[1]), int(train.starts[2]), size=many),  # one shard
                    rng.integers(int(train.starts[1]), int(train.starts[2]), size=3),
                    []):
        expected = np.array([train[int(i)] for i in indices], dtype="<i4").reshape(-1, train.sample_length)
        np.testing.assert_array_equal(train.gather(indices), expected)
        widened = np.zeros((len(indices), train.sample_length), dtype=np.int64)
        assert train.gather(indices, out=widened) is widened
        np.testing.assert_array_equal(widened, expected)
    for bad in ([0, len(train)], [-1, 3], [*range(many), len(train) + 5]):
        with pytest.raises(IndexError, match=f"sample {bad[0] if bad[0] < 0 else bad[-1]} out of range"):
            train.gather(bad)


@pytest.mark.parametrize("open_shards", [1, 2])
def test_gather_is_right_when_a_batch_touches_more_shards_than_stay_mapped(dataset_dir, monkeypatch, open_shards):
    monkeypatch.setattr(loader, "MAX_OPEN_SHARDS", open_shards)
    samples = ShardedSamples(dataset_dir, "train")
    expected = {i: np.array(samples[i]) for i in range(len(samples))}
    samples.close()
    rng = np.random.default_rng(2)
    for _ in range(5):  # shards mapped and dropped between batches and within one
        indices = rng.integers(0, len(samples), size=40)
        np.testing.assert_array_equal(samples.gather(indices), np.stack([expected[int(i)] for i in indices]))
        assert len(samples._maps) <= open_shards


def test_a_span_reads_only_the_shards_it_covers(dataset_dir):
    samples = ShardedSamples(dataset_dir, "train")
    span = loader._span({0: samples._shard_rows(0)}, samples.starts, samples.sample_length)
    first = np.array([0])
    np.testing.assert_array_equal(span.rows[span.word_base[1] + first * span.row_words[1]][0], samples[0])
    in_second = np.array([int(samples.starts[1])])  # shard 1 is slot 2, not covered
    with pytest.raises(IndexError):
        span.rows[span.word_base[2] + in_second * span.row_words[2]]


def cut_last_sample(shard):
    """Truncate a shard inside its last sample's data."""
    with tarfile.open(shard) as tar:
        cut = tar.getmembers()[-1].offset_data + 8
    with open(shard, "r+b") as f:
        f.truncate(cut)


def test_truncated_shard_is_named(dataset_dir, tmp_path):
    shutil.copytree(dataset_dir, tmp_path / "dataset")
    samples = ShardedSamples(tmp_path / "dataset", "train")
    in_first, in_second = int(samples.starts[1]) - 1, int(samples.starts[1])
    samples.gather([in_first, in_second])  # shards indexed while whole
    samples.close()
    cut_last_sample(samples.paths[0])  # then cut under the reader
    for read in (lambda: samples[in_first], lambda: samples.gather([in_second, in_first])):
        with pytest.raises(ConfigError, match=f"shard {samples.paths[0]} is truncated"):
            read()
    samples.gather([in_second])  # the other shards still read
    fresh = ShardedSamples(tmp_path / "dataset", "train")  # a reader that meets the cut shard when indexing
    with pytest.raises(ConfigError, match=f"shard {samples.paths[0]} is not a whole tar file"):
        fresh.gather([in_first])


def test_batches_are_the_per_sample_reads_across_epochs(train):
    # Three ranks' batches of 12, starting 5 samples before the end of the first epoch.
    start = len(train) - 5
    for rank in range(3):
        batches = TrainBatches(train, 9, 2, 12, dp_rank=rank, dp_size=3, consumed_samples=start)
        for step in range(2):
            micro_batches = batches.next_global_batch()
            indices = range(start + 12 * step + rank, start + 12 * (step + 1), 3)
            assert flat_ids(micro_batches) == [global_sample_id(i, len(train), 9) for i in indices]
            for micro_batch in micro_batches:
                assert micro_batch["tokens"].dtype == torch.int32 and micro_batch["tokens"].shape == (2, 33)
                expected = np.stack([train[i] for i in micro_batch["sample_ids"]])
                np.testing.assert_array_equal(micro_batch["tokens"].numpy(), expected)


def test_dp_ranks_split_each_global_batch(train):
    whole = TrainBatches(train, seed=5, micro_batch_size=2, global_batch_size=8, dp_rank=0, dp_size=1)
    ranks = [TrainBatches(train, seed=5, micro_batch_size=2, global_batch_size=8, dp_rank=r, dp_size=2) for r in (0, 1)]
    for _ in range(3):
        expected = flat_ids(whole.next_global_batch())
        shares = [rank.next_global_batch() for rank in ranks]
        assert all(len(share) == 2 for share in shares)  # 8 / 2 ranks / 2 per micro-batch
        ids = [flat_ids(share) for share in shares]
        assert set(ids[0]).isdisjoint(ids[1])
        assert ids[0] == expected[0::2] and ids[1] == expected[1::2]
    assert ranks[0].consumed_samples == ranks[1].consumed_samples == 24


def test_micro_batch_tokens_are_the_samples(train):
    batches = TrainBatches(train, seed=5, micro_batch_size=4, global_batch_size=4, dp_rank=0, dp_size=1)
    [micro_batch] = batches.next_global_batch()
    assert micro_batch["tokens"].dtype == torch.int32 and micro_batch["tokens"].shape == (4, 33)
    for row, sample_id in zip(micro_batch["tokens"], micro_batch["sample_ids"]):
        np.testing.assert_array_equal(row.numpy(), train[sample_id])


def test_resume_gives_the_same_batches(train):
    def batches(consumed, count, dp_rank=1):
        loader = TrainBatches(train, 9, 2, 12, dp_rank=dp_rank, dp_size=3, consumed_samples=consumed)
        return [flat_ids(loader.next_global_batch()) for _ in range(count)]

    uninterrupted = batches(0, 5)
    assert batches(2 * 12, 3) == uninterrupted[2:]
    loader = TrainBatches(train, 9, 2, 12, dp_rank=1, dp_size=3)
    loader.load_state_dict({"consumed_samples": 36})
    assert flat_ids(next(loader)) == uninterrupted[3]
    assert loader.state_dict() == {"consumed_samples": 48}


def test_resume_on_another_dp_size_reads_the_same_samples(train):
    before = [TrainBatches(train, 9, 1, 12, dp_rank=r, dp_size=4, consumed_samples=24) for r in range(4)]
    after = [TrainBatches(train, 9, 2, 12, dp_rank=r, dp_size=2, consumed_samples=24) for r in range(2)]
    assert sorted(sum((flat_ids(b.next_global_batch()) for b in before), [])) == sorted(
        sum((flat_ids(b.next_global_batch()) for b in after), [])
    )


def test_epochs_wrap_with_a_new_permutation(train):
    n = len(train)
    loader = TrainBatches(train, seed=4, micro_batch_size=1, global_batch_size=1, dp_rank=0, dp_size=1)
    epoch0 = [flat_ids(loader.next_global_batch())[0] for _ in range(n)]
    epoch1 = [flat_ids(loader.next_global_batch())[0] for _ in range(n)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n))
    assert epoch0 != epoch1


def test_batch_arithmetic_is_checked(train):
    with pytest.raises(ConfigError) as error:
        TrainBatches(train, seed=0, micro_batch_size=3, global_batch_size=8, dp_rank=0, dp_size=2)
    assert error.value.key == "train.global_batch_size"


def test_valid_batches_are_fixed_and_strided(dataset_dir):
    valid = ShardedSamples(dataset_dir, "valid")
    assert len(valid) >= 11
    shares = [valid_batches(valid, num_samples=11, micro_batch_size=2, dp_rank=r, dp_size=2) for r in (0, 1)]
    assert [len(share) for share in shares] == [3, 3]
    assert flat_ids(shares[0]) == [0, 2, 4, 6, 8, 10] and flat_ids(shares[1]) == [1, 3, 5, 7, 9]
    again = valid_batches(valid, num_samples=11, micro_batch_size=2, dp_rank=0, dp_size=2)
    assert torch.equal(torch.cat([mb["tokens"] for mb in again]), torch.cat([mb["tokens"] for mb in shares[0]]))
    single = valid_batches(valid, num_samples=11, micro_batch_size=4, dp_rank=0, dp_size=1)
    assert flat_ids(single) == list(range(11))  # the same set, whatever the layout
    whole = valid_batches(valid, num_samples=10**9, micro_batch_size=len(valid), dp_rank=0, dp_size=1)
    assert flat_ids(whole) == list(range(len(valid)))
    assert valid_batches(valid, num_samples=1, micro_batch_size=2, dp_rank=1, dp_size=2) == []  # no empty batch


def test_unknown_split(dataset_dir):
    with pytest.raises(ConfigError, match="no split 'test'"):
        ShardedSamples(dataset_dir, "test")
