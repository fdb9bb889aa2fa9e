"""Parallel layout: the pure checks, one process in-process, and TP=2 against TP=1 under torchrun."""

import json
from pathlib import Path

import pytest
import torch
import tp_worker
from dist_utils import run_torchrun, single_process_group

from pretrain.errors import ConfigError
from pretrain.parallel.config import ParallelConfig
from pretrain.parallel.layout import check_layout, resolve_backend


@pytest.mark.parametrize("tp, world_size", [(3, 4), (2, 3), (4, 2)])
def test_check_layout_rejects_a_tp_size_that_does_not_divide_the_world(tp, world_size):
    with pytest.raises(ConfigError) as error:
        check_layout(ParallelConfig(tensor_parallel_size=tp), world_size)
    assert error.value.key == "parallel.tensor_parallel_size"


def test_check_layout_accepts_divisors():
    for tp, world_size in [(1, 1), (2, 2), (2, 8), (8, 16)]:
        check_layout(ParallelConfig(tensor_parallel_size=tp), world_size)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only choice")
def test_backend_is_gloo_without_cuda_and_nccl_is_refused():
    assert resolve_backend(ParallelConfig(backend="auto")) == "gloo"
    with pytest.raises(ConfigError, match="nccl"):
        resolve_backend(ParallelConfig(backend="nccl"))


def test_one_process_without_launcher_variables_gets_a_full_layout():
    with single_process_group(seed=3) as layout:
        assert (layout.world_size, layout.rank, layout.local_rank) == (1, 0, 0)
        assert (layout.tensor_parallel_size, layout.data_parallel_size) == (1, 1)
        assert (layout.tensor_parallel_rank, layout.data_parallel_rank) == (0, 0)


@pytest.fixture(scope="module")
def tensor_parallel_run(tmp_path_factory) -> list[dict]:
    """Per rank: layout, losses and mpu answers of tp_worker under torchrun, 2 processes, TP=2."""
    out = tmp_path_factory.mktemp("tp2") / "result.json"
    run_torchrun(Path(tp_worker.__file__), 2, [out])
    return json.loads(out.read_text())


def test_tp2_training_matches_tp1(tensor_parallel_run):
    with single_process_group():
        expected = tp_worker.train_losses(1)
    for rank in tensor_parallel_run:
        assert rank["losses"] == pytest.approx(expected, abs=1e-6, rel=0)
    assert expected[-1] < expected[0]


def test_mpu_answers_what_deepspeed_asks_at_tp2(tensor_parallel_run):
    for rank, result in enumerate(tensor_parallel_run):
        mpu = result["mpu"]
        assert result["layout"]["tensor_parallel_rank"] == rank
        assert mpu["get_tensor_model_parallel_rank"] == mpu["get_model_parallel_rank"] == rank
        assert mpu["get_tensor_model_parallel_world_size"] == mpu["get_model_parallel_world_size"] == 2
        assert mpu["get_tensor_model_parallel_group"] == mpu["get_model_parallel_group"] == [0, 1]
        assert mpu["get_tensor_model_parallel_src_rank"] == 0
        assert (mpu["get_data_parallel_rank"], mpu["get_data_parallel_world_size"]) == (0, 1)
        assert mpu["get_data_parallel_group"] == mpu["get_data_parallel_group_ranks"] == [rank]
        assert (mpu["get_pipeline_model_parallel_rank"], mpu["get_pipeline_model_parallel_world_size"]) == (0, 1)
        # Its presence would make DeepSpeed treat the mpu as Ulysses sequence parallelism.
        assert not mpu["has_initialize_sequence_parallel"]
