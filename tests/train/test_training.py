"""Real DeepSpeed + megatron-core training in 2-process torchrun runs on gloo."""

import json

import pytest
import torch
from training_runs import losses, run_train, sample_ids, valid_losses


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """One process, tensor parallel 1, ZeRO 0: the run every layout must reproduce."""
    run_dir = tmp_path_factory.mktemp("reference")
    run_train(data_root, run_dir, "parallel.zero_stage=0", nproc=1)
    return run_dir


def test_reference_learns(reference):
    curve = losses(reference)
    assert sorted(curve) == [1, 2, 3, 4, 5, 6]
    assert curve[6] < curve[1]
    valid = valid_losses(reference)
    assert sorted(valid) == [0, 3, 6] and valid[6] < valid[0]


@pytest.mark.parametrize("tp, zero, sequence_parallel", [
    (1, 1, False), (1, 3, False), (2, 1, False), (2, 3, False),
    # Sequence parallel: the norms' gradients are summed over the TP group by our hook, which
    # must come before the reduction in backward of ZeRO 2 and 3 as well as ZeRO 1's after it.
    (2, 1, True), (2, 2, True), (2, 3, True),
])
def test_layouts_match_the_single_process_run(data_root, reference, tmp_path, tp, zero, sequence_parallel):
    run_train(data_root, tmp_path, f"parallel.tensor_parallel_size={tp}", f"parallel.zero_stage={zero}",
              f"parallel.sequence_parallel={sequence_parallel}")
    # fp32: only the order of floating-point sums differs (gradient all-reduce across ranks,
    # tensor-parallel partial matmuls), so the curves agree to rounding. Without the
    # sequence-parallel gradient sum the curve drifts by about 1e-3.
    assert losses(tmp_path) == pytest.approx(losses(reference), rel=1e-5, abs=1e-6)
    assert valid_losses(tmp_path) == pytest.approx(valid_losses(reference), rel=1e-5, abs=1e-6)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_6"


@pytest.mark.parametrize("tp, zero", [(1, 1), (2, 3)])
def test_resume_is_exact(data_root, tmp_path, tp, zero):
    layout = [f"parallel.tensor_parallel_size={tp}", f"parallel.zero_stage={zero}"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # The straight run reads each batch when its step asks, the resumed one through the prefetch thread.
    run_train(data_root, straight, *layout, "data.prefetch_batches=0")
    run_train(data_root, resumed, *layout, "train.train_steps=3")
    second = run_train(data_root, resumed, *layout)
    assert "resuming from" in second.stdout and "step_3" in second.stdout
    assert losses(resumed) == losses(straight)  # bitwise: same floats, step by step
    assert valid_losses(resumed) == valid_losses(straight)
    assert sample_ids(resumed) == sample_ids(straight)
    assert len(sample_ids(straight)) == 2
    checkpoint = resumed / "checkpoints" / "step_6"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["consumed_samples"] == 6 * 8
    assert state["config"]["parallel"]["zero_stage"] == zero
    assert sorted(p.name for p in (checkpoint / "rng").iterdir()) == ["rank_00000.pt", "rank_00001.pt"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="these are refused only where there is no GPU")
@pytest.mark.parametrize("override, message", [
    ("train.precision=fp16", "train.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on this machine"),
    ("model.attention=flash", "model.attention: flash needs a CUDA GPU and the flash_attn package; use sdpa or auto"),
])
def test_gpu_only_choices_without_a_gpu_are_one_line_errors(data_root, tmp_path, override, message):
    result = run_train(data_root, tmp_path, override, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"pretrain: error: {message}"]
    assert not (tmp_path / "checkpoints").exists()


def test_data_parallel_ranks_split_each_global_batch(data_root, tmp_path):
    run_train(data_root, tmp_path, "train.train_steps=2", "train.eval_interval=0")
    ranks = list(sample_ids(tmp_path).values())
    for step in range(2):
        first, second = ranks[0][step]["sample_ids"], ranks[1][step]["sample_ids"]
        assert len(first) == len(second) == 4
        assert not set(first) & set(second)


def test_bf16_follows_the_fp32_curve(data_root, reference, tmp_path):
    run_train(data_root, tmp_path, "train.precision=bf16", "parallel.zero_stage=2")
    # bf16 keeps 8 bits of mantissa (relative rounding 2**-8 = 0.4%) in activations and
    # gradients; DeepSpeed keeps fp32 master weights, so the curve stays within a few of those.
    assert losses(tmp_path) == pytest.approx(losses(reference), rel=2e-2)
    assert losses(tmp_path) != losses(reference)  # it really ran in bf16


@pytest.mark.parametrize("eval_samples", [1, 5], ids=["a-rank-gets-none", "ranks-get-2-and-1-micro-batches"])
def test_validation_with_uneven_shares_under_zero3_matches_one_process(data_root, tmp_path, eval_samples):
    # ZeRO-3 gathers parameters across data parallel in every forward: the ranks must run as many.
    common = ["train.train_steps=1", f"train.eval_samples={eval_samples}", "train.eval_interval=1"]
    run_train(data_root, tmp_path / "one", *common, "parallel.zero_stage=0", nproc=1)
    run_train(data_root, tmp_path / "two", *common, "parallel.zero_stage=3", timeout=180)
    assert valid_losses(tmp_path / "two") == pytest.approx(valid_losses(tmp_path / "one"), rel=1e-5)


@pytest.mark.gpu
def test_a_gpu_run_trains_validates_and_resumes_on_nccl(data_root, tmp_path):
    # Every per-step collective (the stop-signal check, validation, stragglers) must hold GPU tensors on NCCL.
    run_train(data_root, tmp_path, "train.train_steps=3", "logging.stragglers.interval=1", nproc=1)
    resumed = run_train(data_root, tmp_path, "logging.stragglers.interval=1", nproc=1)
    assert "resuming from" in resumed.stdout
    assert sorted(losses(tmp_path)) == [1, 2, 3, 4, 5, 6]
    assert sorted(valid_losses(tmp_path)) == [0, 3, 6]
