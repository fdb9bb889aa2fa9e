"""Mixture of experts trained by `pretrain train` (DeepSpeed + megatron-core, gloo): data parallel,
tensor + sequence parallel and expert parallel reproduce the one-process run, the aux loss is
logged, and an expert-parallel run resumes exactly."""

import pytest
from training_runs import losses, run_train, sample_ids

from pretrain.monitor.metrics import read_metrics

# One sample per micro-batch: the load-balancing loss is a nonlinear function of the tokens a
# micro-batch routes, so the layouts compare only when each micro-batch holds the same sample.
# Document masking and selective recomputation ride along to check their wiring end to end.
MOE_RUN = ["model=moe_tiny", "train.micro_batch_size=1", "model.document_masking=block_causal",
           "model.activation_checkpointing=selective"]


def aux_losses(run_dir) -> dict[int, float]:
    return logged(run_dir, "load_balancing_loss")


def logged(run_dir, name: str) -> dict[int, float]:
    return {r["step"]: r[name] for r in read_metrics(run_dir / "metrics.jsonl") if name in r}


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


@pytest.mark.parametrize("layout, nproc", [
    (["parallel.zero_stage=2"], 2),
    (["parallel.tensor_parallel_size=2", "parallel.sequence_parallel=true", "parallel.zero_stage=1"], 2),
    # Two experts per rank, tokens sent between the ranks; each expert's gradient reduced only
    # where that expert lives (here: nowhere else).
    (["parallel.expert_parallel_size=2", "parallel.zero_stage=2"], 2),
    # Experts split over 2 ranks and each expert over the 2 ranks of a TP group (drawn whole, then
    # split). gloo cannot gather the uneven token counts of the alltoall dispatcher here.
    (["parallel.tensor_parallel_size=2", "parallel.sequence_parallel=true", "parallel.expert_parallel_size=2",
      "parallel.zero_stage=1", "model.moe.token_dispatcher=allgather"], 4),
], ids=["dp2-zero2", "tp2-sp-zero1", "ep2-zero2", "tp2-sp-ep2-zero1"])
def test_moe_layouts_match_the_single_process_run(data_root, moe_reference, tmp_path, layout, nproc):
    run_train(data_root, tmp_path, *MOE_RUN, *layout, nproc=nproc)
    assert losses(tmp_path) == pytest.approx(losses(moe_reference), rel=1e-5, abs=1e-6)
    assert aux_losses(tmp_path) == pytest.approx(aux_losses(moe_reference), rel=1e-5, abs=1e-6)


def test_expert_parallel_gradients_match_replicated_experts(data_root, tmp_path):
    """The gradient norm (over every expert, for clipping) and the losses of EP=2 equal EP=1's, ZeRO-1.

    A gradient averaged over the wrong group, or scaled by the expert-parallel size, changes the norm
    even where Adam's normalisation would hide it from the loss.
    """
    replicated, split = tmp_path / "ep1", tmp_path / "ep2"
    run_train(data_root, replicated, *MOE_RUN, "parallel.zero_stage=1")
    run_train(data_root, split, *MOE_RUN, "parallel.zero_stage=1", "parallel.expert_parallel_size=2")
    assert logged(split, "grad_norm") == pytest.approx(logged(replicated, "grad_norm"), rel=1e-5)
    assert losses(split) == pytest.approx(losses(replicated), rel=1e-5, abs=1e-6)


def test_expert_parallel_resume_is_exact(data_root, tmp_path):
    """Each rank's experts come back from its own ZeRO partition: DeepSpeed's model file holds rank 0's."""
    layout = [*MOE_RUN, "parallel.expert_parallel_size=2", "parallel.zero_stage=1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_train(data_root, straight, *layout)
    run_train(data_root, resumed, *layout, "train.train_steps=3")
    run_train(data_root, resumed, *layout)
    assert losses(resumed) == losses(straight)  # bitwise
    assert sample_ids(resumed) == sample_ids(straight)

    # Experts do not move between layouts: another expert-parallel size is refused in one line.
    other = run_train(data_root, straight, *MOE_RUN, "parallel.zero_stage=1", "train.train_steps=8", check=False)
    assert other.returncode == 2
    assert "written with dp=2 tp=1 ep=2 zero=1 on dp=2 tp=1 zero=1" in other.stderr


def test_alltoall_with_tensor_and_expert_parallelism_on_gloo_is_refused(data_root, tmp_path):
    result = run_train(data_root, tmp_path, *MOE_RUN, "parallel.tensor_parallel_size=2",
                       "parallel.sequence_parallel=true", "parallel.expert_parallel_size=2", nproc=4, check=False)
    assert result.returncode == 2
    assert "model.moe.token_dispatcher: alltoall with tensor and expert parallelism needs the nccl" in result.stderr
