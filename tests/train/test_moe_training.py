"""Mixture of experts trained by `pretrain train` (DeepSpeed + megatron-core, gloo): data parallel,
tensor + sequence parallel and expert parallel reproduce the one-process run, the aux loss is
logged, and an expert-parallel run resumes exactly."""

import json
import subprocess
import sys

import pytest
import torch
from training_runs import first_step_samples, losses, run_train, sample_ids, tokens_of

from pretrain.monitor.metrics import read_metrics

# One sample per micro-batch: the load-balancing loss is a nonlinear function of the tokens a
# micro-batch routes, so the layouts compare only when each micro-batch holds the same sample.
# Document masking and selective recomputation ride along to check their wiring end to end.
MOE_RUN = ["model=moe_tiny", "train.micro_batch_size=1", "model.document_masking=block_causal",
           "model.activation_checkpointing=selective"]


EXPERT_PARALLEL = [*MOE_RUN, "parallel.expert_parallel_size=2", "parallel.zero_stage=1"]


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


@pytest.fixture(scope="module")
def expert_parallel_run(data_root, tmp_path_factory):
    """Experts split over 2 ranks, ZeRO-1, 6 steps (checkpoints at 3 and 6)."""
    run_dir = tmp_path_factory.mktemp("ep2")
    run_train(data_root, run_dir, *EXPERT_PARALLEL)
    return run_dir


def test_expert_parallel_resume_is_exact(data_root, expert_parallel_run, tmp_path):
    """Each rank's experts come back from its own ZeRO partition: DeepSpeed's model file holds rank 0's."""
    run_train(data_root, tmp_path, *EXPERT_PARALLEL, "train.train_steps=3")
    run_train(data_root, tmp_path, *EXPERT_PARALLEL)
    assert losses(tmp_path) == losses(expert_parallel_run)  # bitwise
    assert sample_ids(tmp_path) == sample_ids(expert_parallel_run)

    # Experts do not move between layouts: another expert-parallel size is refused in one line.
    other = run_train(data_root, tmp_path, *MOE_RUN, "parallel.zero_stage=1", "train.train_steps=8", check=False)
    assert other.returncode == 2
    assert "written with dp=2 tp=1 ep=2 zero=1 on dp=2 tp=1 zero=1" in other.stderr


def test_expert_parallel_resume_is_exact_with_zero2_and_async_saves(data_root, tmp_path):
    layout = [*MOE_RUN, "parallel.expert_parallel_size=2", "parallel.zero_stage=2", "train.checkpoint.async_save=true"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_train(data_root, straight, *layout)
    run_train(data_root, resumed, *layout, "train.train_steps=3")
    run_train(data_root, resumed, *layout)
    assert losses(resumed) == losses(straight)
    assert sample_ids(resumed) == sample_ids(straight)
    written = {p.name for p in (resumed / "checkpoints" / "step_3").iterdir()}
    assert {"experts_ep_00_mp_rank_00.pt", "experts_ep_01_mp_rank_00.pt"} <= written  # written in the background


@pytest.fixture(scope="module")
def mixtral_dir(expert_parallel_run):
    """The expert-parallel run's last checkpoint exported with `pretrain export hf`."""
    hf_dir = expert_parallel_run / "hf"
    result = subprocess.run([sys.executable, "-m", "pretrain.cli", "export", "hf", str(expert_parallel_run),
                             "--out", str(hf_dir)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MixtralForCausalLM" in result.stdout
    return hf_dir


def mixtral(directory):
    from transformers import MixtralForCausalLM

    return MixtralForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager").eval()


def test_expert_parallel_checkpoint_exports_as_mixtral(data_root, expert_parallel_run, mixtral_dir):
    """Every rank's experts reach the export: transformers' Mixtral gives our logits, and our model
    rebuilt from the checkpoint's files gives the validation loss the run logged."""
    from dist_utils import single_process_group

    from pretrain.model.documents import ModelInputs
    from pretrain.model.generate import load_checkpoint_model
    from pretrain.model.gpt import language_model_loss

    tokens = tokens_of(data_root, "valid", range(12))  # eval_samples=12
    with single_process_group():
        ours, tokenizer, _ = load_checkpoint_model(expert_parallel_run)
        with torch.no_grad():
            input_ids = tokens[:, :-1]
            our_logits = ours(input_ids, torch.arange(input_ids.shape[1]).expand_as(input_ids), None)
            their_logits = mixtral(mixtral_dir)(input_ids).logits
            inputs = ModelInputs("block_causal", tokenizer.eos_id)
            our_loss = sum(language_model_loss(ours, tokens[i:i + 1], inputs).item() for i in range(12)) / 12
    assert (our_logits[..., :their_logits.shape[-1]] - their_logits).abs().max().item() <= 1e-4
    assert our_loss == pytest.approx(logged(expert_parallel_run, "valid_loss")[6], abs=1e-5)


def test_mixtral_weights_start_an_expert_parallel_run(data_root, mixtral_dir, tmp_path):
    """model.init_from with a Mixtral directory: each rank loads its own experts, so the first step's
    loss is Mixtral's on that batch; and the conversion both ways is bit-exact."""
    import torch.nn.functional as F

    from pretrain.model import hf

    run_train(data_root, tmp_path, *EXPERT_PARALLEL, "model.document_masking=none", "train.train_steps=1",
              "train.eval_interval=0", f"model.init_from={mixtral_dir}")
    tokens = tokens_of(data_root, "train", first_step_samples(tmp_path))
    with torch.no_grad():
        logits = mixtral(mixtral_dir)(tokens[:, :-1]).logits
    their_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)).item()
    assert losses(tmp_path)[1] == pytest.approx(their_loss, abs=1e-5)

    original = hf.read_hf_weights(mixtral_dir)
    cfg = hf.model_config(json.loads(sorted((tmp_path / "checkpoints").glob("step_*/trainer_state.json"))[-1]
                                     .read_text())["config"]["model"])
    back = hf.to_hf(hf.from_hf(original, cfg, 512), cfg, 512)
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)


def test_alltoall_with_tensor_and_expert_parallelism_on_gloo_is_refused(data_root, tmp_path):
    result = run_train(data_root, tmp_path, *MOE_RUN, "parallel.tensor_parallel_size=2",
                       "parallel.sequence_parallel=true", "parallel.expert_parallel_size=2", nproc=4, check=False)
    assert result.returncode == 2
    assert "model.moe.token_dispatcher: alltoall with tensor and expert parallelism needs the nccl" in result.stderr
