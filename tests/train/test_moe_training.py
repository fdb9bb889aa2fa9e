"""Mixture of experts trained by `pretrain train` (DeepSpeed + megatron-core, gloo): data parallel
and tensor + sequence parallel reproduce the one-process run, and the aux loss is logged."""

import pytest
from training_runs import losses, run_train

from pretrain.monitor.metrics import read_metrics

# One sample per micro-batch: the load-balancing loss is a nonlinear function of the tokens a
# micro-batch routes, so the layouts compare only when each micro-batch holds the same sample.
# Document masking and selective recomputation ride along to check their wiring end to end.
MOE_RUN = ["model=moe_tiny", "train.micro_batch_size=1", "model.document_masking=block_causal",
           "model.activation_checkpointing=selective"]


def aux_losses(run_dir) -> dict[int, float]:
    records = read_metrics(run_dir / "metrics.jsonl")
    return {r["step"]: r["load_balancing_loss"] for r in records if "load_balancing_loss" in r}


@pytest.fixture(scope="module")
def moe_reference(data_root, tmp_path_factory):
    """One process: 8 micro-batches of one sample per step."""
    run_dir = tmp_path_factory.mktemp("moe_reference")
    run_train(data_root, run_dir, *MOE_RUN, "parallel.zero_stage=0", nproc=1)
    return run_dir


def test_moe_learns_and_logs_its_aux_loss(moe_reference):
    curve, aux = losses(moe_reference), aux_losses(moe_reference)
    assert sorted(curve) == sorted(aux) == [1, 2, 3, 4, 5, 6]
    assert curve[6] < curve[1] - 0.2
    assert all(0.9 < value < 2 for value in aux.values())  # 1 when perfectly balanced


@pytest.mark.parametrize("layout", [
    # 4 micro-batches per rank: the aux loss's gradient must be scaled by 1/4, not 1/8 as above.
    ["parallel.zero_stage=2"],
    ["parallel.tensor_parallel_size=2", "parallel.sequence_parallel=true", "parallel.zero_stage=1"],
], ids=["dp2-zero2", "tp2-sp-zero1"])
def test_moe_layouts_match_the_single_process_run(data_root, moe_reference, tmp_path, layout):
    run_train(data_root, tmp_path, *MOE_RUN, *layout)
    assert losses(tmp_path) == pytest.approx(losses(moe_reference), rel=1e-5, abs=1e-6)
    assert aux_losses(tmp_path) == pytest.approx(aux_losses(moe_reference), rel=1e-5, abs=1e-6)
