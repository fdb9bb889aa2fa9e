"""The prefetch thread: the same batches as without it, exact resume, errors reach the caller, clean stop."""

import shutil
import threading

import numpy as np
import pytest
import torch
from test_loader import cut_last_sample, flat_ids

from pretrain.data.loader import ShardedSamples, TrainBatches, global_sample_ids
from pretrain.data.prefetch import PrefetchBatches
from pretrain.errors import ConfigError


@pytest.fixture(scope="module")
def train(dataset_dir):
    return ShardedSamples(dataset_dir, "train")


def plain(train, consumed=0):
    return TrainBatches(train, 9, 2, 12, dp_rank=1, dp_size=3, consumed_samples=consumed)


def prefetched(train, consumed=0, depth=1):
    return PrefetchBatches(plain(train, consumed), depth)


def ids_of(loader, steps):
    return [flat_ids(loader.next_global_batch()) for _ in range(steps)]


def test_same_batches_as_without_prefetch(train):
    for depth in (1, 3):
        loader = prefetched(train, depth=depth)
        reference = plain(train)
        for _ in range(len(train) // 12 + 3):  # into the second epoch
            got, expected = loader.next_global_batch(), reference.next_global_batch()
            assert flat_ids(got) == flat_ids(expected)
            assert torch.equal(torch.cat([mb["tokens"] for mb in got]), torch.cat([mb["tokens"] for mb in expected]))
        assert loader.state_dict() == reference.state_dict()
        loader.close()


def test_state_counts_taken_batches_and_resume_is_exact(train):
    uninterrupted = ids_of(plain(train), 6)
    loader = prefetched(train, depth=2)
    head = ids_of(loader, 3)
    state = loader.state_dict()
    assert state == {"consumed_samples": 36}  # two more batches are prepared, not consumed
    loader.close()
    for resumed in (prefetched(train), plain(train)):
        resumed.load_state_dict(state)
        assert head + ids_of(resumed, 3) == uninterrupted
        resumed.close()


def test_moving_the_position_drops_prepared_batches(train):
    reference = ids_of(plain(train), 5)
    loader = prefetched(train, depth=2)
    assert ids_of(loader, 4) == reference[:4]
    loader.consumed_samples = 12  # a rollback to a checkpoint at step 1
    assert flat_ids(loader.next_global_batch()) == reference[1]
    loader.load_state_dict({"consumed_samples": 48})  # a resume
    assert flat_ids(loader.next_global_batch()) == reference[4]
    loader.close()


def test_an_error_in_the_thread_reaches_the_next_batch(train, dataset_dir, tmp_path):
    shutil.copytree(dataset_dir, tmp_path / "dataset")
    samples = ShardedSamples(tmp_path / "dataset", "train")
    in_first_shard = np.arange(len(train)) < int(samples.starts[1])
    # A position whose sample is outside the first shard and whose next sample is inside it.
    ids = global_sample_ids(np.arange(len(train)), len(train), 9)
    start = int(np.flatnonzero(~in_first_shard[ids[:-1]] & in_first_shard[ids[1:]])[0])
    cut_last_sample(samples.paths[0])
    loader = PrefetchBatches(TrainBatches(samples, 9, 1, 1, 0, 1, consumed_samples=start))
    assert flat_ids(loader.next_global_batch()) == [ids[start]]  # the failing batch is being prepared
    with pytest.raises(ConfigError, match="is not a whole tar file"):
        loader.next_global_batch()
    assert loader.state_dict() == {"consumed_samples": start + 1}  # the failed batch was not taken
    loader.close()


def test_close_stops_the_thread(train):
    before = set(threading.enumerate())
    loader = prefetched(train, depth=2)
    loader.next_global_batch()
    [thread] = set(threading.enumerate()) - before
    assert thread.daemon  # a crashed run does not wait for it
    loader.close()
    loader.close()
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="after close"):
        loader.next_global_batch()
