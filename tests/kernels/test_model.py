"""model.kernels: the choice, where it lands in megatron's GPTModel, and same loss and gradients as torch."""

import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch
from dist_utils import single_process_group, spawn
from kernel_parity import DEVICE, TOLERANCES
from training_runs import run_train

from pretrain.errors import ConfigError
from pretrain.kernels import resolve, select_kernels
from pretrain.model.config import ModelConfig
from pretrain.model.gpt import build_model, language_model_loss, transformer_config
from pretrain.model.norm import RMSNorm
from pretrain.parallel.layout import set_seed

VOCAB = 128


@pytest.fixture(scope="module", autouse=True)
def megatron_state():
    with single_process_group() as layout:
        yield layout


def tiny(kernels: str) -> ModelConfig:
    return ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                       ffn_hidden_size=48, seq_length=16, kernels=kernels)


def fixed_tokens():
    return torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(0)).to(DEVICE)


def loss_and_grads(model, tokens):
    loss = language_model_loss(model, tokens)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("untie", [True, False], ids=["untied", "tied"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_model_gives_the_torch_models_loss_and_gradients(dtype, untie):
    models = {}
    for kernels in ("torch", "triton"):
        set_seed(0)
        cfg = tiny(kernels)
        cfg.untie_embeddings_and_output_weights = untie
        models[kernels] = build_model(cfg, VOCAB, 1, params_dtype=dtype)
    models["triton"].load_state_dict(models["torch"].state_dict())
    tokens = fixed_tokens()
    expected_loss, expected_grads = loss_and_grads(models["torch"], tokens)
    loss, grads = loss_and_grads(models["triton"], tokens)
    tolerance = TOLERANCES[dtype]
    torch.testing.assert_close(loss, expected_loss, **tolerance)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        expected = expected_grads[name]
        # Gradients are small numbers: bf16's tolerance applies relative to each tensor's scale.
        scale = expected.abs().max().item()
        torch.testing.assert_close(grad.float(), expected.float(), atol=tolerance["atol"] * scale,
                                   rtol=tolerance["rtol"], msg=name)


def test_triton_choice_lands_in_the_spec_config_and_loss(monkeypatch):
    from megatron.core.models.common.embeddings import rope_utils

    from pretrain.kernels.cross_entropy import fused_language_model_loss
    from pretrain.kernels.rmsnorm import TritonRMSNorm
    from pretrain.kernels.rope import rope_triton
    from pretrain.kernels.swiglu import TritonSwiGLUMLP

    set_seed(0)
    model = build_model(tiny("triton"), VOCAB, 1)
    layer = model.decoder.layers[0]
    assert type(layer.input_layernorm) is TritonRMSNorm and type(layer.pre_mlp_layernorm) is TritonRMSNorm
    assert type(model.decoder.final_layernorm) is TritonRMSNorm
    assert type(layer.mlp) is TritonSwiGLUMLP
    assert model.config.apply_rope_fusion
    assert model.output_loss is fused_language_model_loss
    rotated = []  # megatron's attention reaches the Triton RoPE for q and k of every layer
    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb",
                        lambda t, freqs, interleaved: rotated.append(t.shape) or rope_triton(t, freqs, interleaved))
    language_model_loss(model, fixed_tokens())
    assert len(rotated) == 2 * model.config.num_layers

    torch_model = build_model(tiny("torch"), VOCAB, 1)
    assert type(torch_model.decoder.layers[0].input_layernorm) is RMSNorm
    assert not torch_model.config.apply_rope_fusion and torch_model.output_loss is None


def test_fused_norm_keeps_the_sequence_parallel_flag():
    norm_class = select_kernels("triton").norm
    norm = norm_class(config=transformer_config(tiny("triton"), 2, sequence_parallel=True), hidden_size=32, eps=1e-5)
    assert norm.weight.sequence_parallel
    norm = norm_class(config=transformer_config(tiny("triton"), 1, sequence_parallel=True), hidden_size=32, eps=1e-5)
    assert not norm.weight.sequence_parallel


def test_auto_resolves_to_what_this_host_has():
    try:
        import apex.normalization  # noqa: F401

        has_apex = True
    except ImportError:
        has_apex = False
    expected = "triton" if torch.cuda.is_available() else ("apex" if has_apex else "torch")
    assert resolve("auto") == expected
    assert resolve("torch") == "torch"


def test_bad_or_unavailable_choices_name_the_key(monkeypatch):
    with pytest.raises(ConfigError, match="model.kernels"):
        ModelConfig(kernels="fast")
    try:
        import apex.normalization  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="model.kernels: NVIDIA apex is not installed"):
            resolve("apex")
    if not torch.cuda.is_available():
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(ConfigError, match="model.kernels: triton kernels need a CUDA GPU"):
            resolve("triton")


def test_cli_rejects_an_unknown_choice_in_one_line_with_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pretrain.cli", "train", "model.kernels=fast",
                             f"data.root={tmp_path}/data"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "pretrain: error: model.kernels: must be one of auto, triton, apex, torch, got 'fast'"]


def tp2_triton_model_results() -> dict:
    """On each of 2 ranks: loss and this rank's output-layer gradient of the TP=2 kernels=triton model."""
    from pretrain.parallel.config import ParallelConfig
    from pretrain.parallel.layout import destroy_distributed, init_distributed

    init_distributed(ParallelConfig(tensor_parallel_size=2), seed=0)
    results = {}
    try:
        for sequence_parallel in (False, True):
            set_seed(0)
            model = build_model(tiny("triton"), VOCAB, 2, sequence_parallel=sequence_parallel)
            loss, grads = loss_and_grads(model, fixed_tokens())
            results[sequence_parallel] = (loss, grads["output_layer.weight"])
    finally:
        destroy_distributed()
    return results


@pytest.mark.skipif(torch.cuda.is_available(), reason="2 ranks on CPU tensors (gloo); build_model moves a model "
                                                    "to the GPU where there is one")
@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["tp2", "tp2+sp"])
def test_tp2_triton_model_matches_the_tp1_torch_model(tp2_results, sequence_parallel):
    set_seed(0)
    model = build_model(tiny("torch"), VOCAB, 1)
    expected_loss, expected_grads = loss_and_grads(model, fixed_tokens())
    ranks = [result[sequence_parallel] for result in tp2_results]
    for loss, _ in ranks:
        torch.testing.assert_close(loss, expected_loss, **TOLERANCES[torch.float32])
    output_grad = torch.cat([grad for _, grad in ranks])  # each rank holds a vocabulary slice
    torch.testing.assert_close(output_grad, expected_grads["output_layer.weight"], **TOLERANCES[torch.float32])


@pytest.fixture(scope="module")
def tp2_results():
    return spawn(tp2_triton_model_results, 2, init_process_group=False)


def test_training_with_kernels_apex_but_no_apex_stops_in_one_line_with_exit_2(dataset_dir, tmp_path):
    try:
        import apex.normalization  # noqa: F401

        pytest.skip("apex is installed here")
    except ImportError:
        pass
    result = run_train(dataset_dir.parent, tmp_path / "run", "model.kernels=apex", nproc=1, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        "pretrain: error: model.kernels: NVIDIA apex is not installed (it is built from source or comes in NGC "
        "containers); use auto, triton or torch"]


def test_under_zero3_the_triton_model_keeps_megatrons_loss(megatron_state):
    """ZeRO-3 gathers the output weight only inside its module: the fused loss steps aside."""
    from pretrain.config import Config
    from pretrain.train.engine import build_engine

    cfg = Config()
    cfg.model = tiny("triton")
    cfg.parallel.zero_stage = 3
    cfg.train.micro_batch_size = cfg.train.global_batch_size = 2
    losses = {}
    for kernels in ("torch", "triton"):
        set_seed(0)
        cfg.model.kernels = kernels
        engine = build_engine(cfg, build_model(cfg.model, VOCAB, 1), megatron_state)
        with pytest.warns(UserWarning, match="ZeRO stage 3") if kernels == "triton" else nullcontext():
            losses[kernels] = language_model_loss(engine, fixed_tokens())
        engine.backward(losses[kernels])
    torch.testing.assert_close(losses["triton"], losses["torch"], **TOLERANCES[torch.float32])
