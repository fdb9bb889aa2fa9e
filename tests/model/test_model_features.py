"""Model-side scale features on CPU, one process: attention backends, document masking,
activation checkpointing. Each is checked against a reference: megatron's own unfused
attention, each document run alone, a plain-torch Llama, the model without recomputation."""

import pytest
import reference_llama
import torch
from reference_llama import tiny

from pretrain.model.config import ModelConfig, MoEConfig
from pretrain.model.documents import ModelInputs
from pretrain.model.gpt import build_model, language_model_loss
from pretrain.model.moe import set_aux_loss_scale
from pretrain.parallel.layout import set_seed

VOCAB = 256
EOS = 2


pytestmark = pytest.mark.usefixtures("megatron_state")


def built(cfg: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float32):
    set_seed(seed)
    return build_model(cfg, VOCAB, 1, params_dtype=dtype)


def packed_tokens() -> torch.Tensor:
    """[2, 33]: row 0 is a 12-token document (ending in eos) then a 21-token one; row 1 has three."""
    tokens = torch.randint(3, VOCAB, (2, 33), generator=torch.Generator().manual_seed(3))
    tokens[0, 11] = EOS
    tokens[1, [4, 20]] = EOS
    return tokens


def per_token_loss(model, tokens: torch.Tensor, inputs: ModelInputs) -> torch.Tensor:
    input_ids = tokens[:, :-1]
    position_ids, attention_mask = inputs(input_ids)
    return model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, labels=tokens[:, 1:])


def loss_and_grads(model, tokens: torch.Tensor, inputs: ModelInputs = ModelInputs()):
    model.zero_grad()
    loss = language_model_loss(model, tokens, inputs)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("masking", ["none", "block_causal"])
def test_sdpa_matches_megatrons_unfused_attention(masking):
    inputs = ModelInputs(masking, EOS)
    reference = loss_and_grads(built(tiny(attention="local", document_masking=masking)), packed_tokens(), inputs)
    sdpa = loss_and_grads(built(tiny(attention="sdpa", document_masking=masking)), packed_tokens(), inputs)
    torch.testing.assert_close(sdpa, reference, rtol=1e-5, atol=1e-6)  # fp32, sums in another order


@pytest.mark.parametrize("attention", ["sdpa", "local"])
def test_block_causal_packed_documents_compute_what_each_document_computes_alone(attention):
    model = built(tiny(attention=attention, document_masking="block_causal"))
    tokens = packed_tokens()[:1]
    packed = per_token_loss(model, tokens, ModelInputs("block_causal", EOS))[0]
    # Each document alone, inputs from its first token, labels up to the next document's first.
    first, second = tokens[:, :13], tokens[:, 12:]
    alone = torch.cat([per_token_loss(model, part, ModelInputs())[0] for part in (first, second)])
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(packed.mean(), alone.mean())
    unmasked = per_token_loss(model, tokens, ModelInputs())[0]
    assert not torch.allclose(unmasked[12:], alone[12:], atol=1e-3)  # the second document saw the first


def test_reset_position_ids_restart_rope_at_each_document():
    inputs = ModelInputs("reset_position_ids", EOS)
    input_ids = packed_tokens()[:, :-1]
    positions, mask = inputs(input_ids)
    assert mask is None
    assert positions[0].tolist() == list(range(12)) + list(range(20))
    assert positions[1].tolist() == list(range(5)) + list(range(16)) + list(range(11))
    cfg = tiny(document_masking="reset_position_ids", rotary_base=500)
    model = built(cfg, seed=1).eval()
    weights = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    with torch.no_grad():
        ours = model(input_ids=input_ids, position_ids=positions, attention_mask=None)
        expected = reference_llama.logits(weights, cfg, input_ids, positions)
        counting_through = reference_llama.logits(weights, cfg, input_ids)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, counting_through, atol=1e-3)


def calls_per_module(model, kinds: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(kinds, 0)
    for name, module in model.named_modules():
        kind = name.rsplit(".", 1)[-1]
        if kind in kinds:
            module.register_forward_hook(lambda *_, kind=kind: counts.__setitem__(kind, counts[kind] + 1))
    return counts


@pytest.mark.parametrize("checkpointing, recomputed", [("selective", {"core_attention"}),
                                                       ("full", {"core_attention", "mlp"})])
def test_activation_checkpointing_recomputes_and_changes_no_number(checkpointing, recomputed):
    tokens = packed_tokens()
    reference = loss_and_grads(built(tiny()), tokens)
    model = built(tiny(activation_checkpointing=checkpointing))
    calls = calls_per_module(model, ("core_attention", "mlp"))
    result = loss_and_grads(model, tokens)
    layers = model.config.num_layers
    assert calls == {kind: 2 * layers if kind in recomputed else layers for kind in calls}
    torch.testing.assert_close(result, reference, rtol=0, atol=0)  # the same ops again: bitwise


def router_grads_and_aux(aux_loss_coeff: float):
    from pretrain.model.moe import tracked_aux_losses

    model = built(tiny(moe=MoEConfig(num_experts=4, router_topk=2, aux_loss_coeff=aux_loss_coeff)))
    tracked_aux_losses()  # start from an empty tracker
    loss, grads = loss_and_grads(model, packed_tokens())
    routers = {name: grad for name, grad in grads.items() if name.endswith("router.weight")}
    return loss, routers, {name: float(values.mean()) for name, (values, _) in tracked_aux_losses().items()}


def test_moe_aux_loss_reaches_the_router_gradients_in_proportion_to_its_coefficient():
    set_aux_loss_scale(1.0)
    loss0, grads0, _ = router_grads_and_aux(0.0)
    loss1, grads1, aux = router_grads_and_aux(0.1)
    loss2, grads2, _ = router_grads_and_aux(0.2)
    assert len(grads0) == 2 and loss0 == loss1 == loss2  # the aux term is added in backward only
    # Logged unweighted: 1 for a perfectly balanced router, and a fresh one is close to balanced.
    assert set(aux) == {"load_balancing_loss"} and abs(aux["load_balancing_loss"] - 1) < 0.2
    for name in grads0:
        effect = grads1[name] - grads0[name]
        assert effect.abs().max() > 1e-4 * grads0[name].abs().max()
        torch.testing.assert_close(grads2[name] - grads0[name], 2 * effect, rtol=1e-3, atol=1e-7)


def test_compiled_layers_give_eager_loss_and_gradients_in_one_graph(tmp_path, monkeypatch):
    import tempfile

    import torch._dynamo

    # Inductor writes its cache under both of these (TMPDIR even when the cache dir is set).
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tokens = packed_tokens()
    reference = loss_and_grads(built(tiny()), tokens)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = loss_and_grads(built(tiny(compile=True)), tokens)
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 1  # one graph, shared by both layers
    assert not counters["graph_break"], dict(counters["graph_break"])
    # Inductor fuses and reorders fp32 arithmetic: equal to rounding, not bitwise.
    torch.testing.assert_close(compiled, reference, rtol=1e-5, atol=1e-6)


def test_moe_flops_count_the_router_and_the_routed_experts_only():
    from pretrain.model.gpt import count_parameters, matmul_parameters

    dense, moe = tiny(), tiny(moe=MoEConfig(num_experts=4, router_topk=2, ffn_hidden_size=48))
    h, layers = dense.hidden_size, dense.num_layers
    per_layer_change = (h * 4 + 2 * 3 * h * 48) - 3 * h * dense.ffn_hidden_size
    assert matmul_parameters(moe, VOCAB) == matmul_parameters(dense, VOCAB) + layers * per_layer_change
    held = count_parameters(built(moe)) - count_parameters(built(dense))
    assert held == layers * (h * 4 + 4 * 3 * h * 48 - 3 * h * dense.ffn_hidden_size)  # every expert is held


def test_attention_backend_is_resolved_for_the_host_and_checked_before_launch():
    from pretrain.errors import ConfigError
    from pretrain.model.backends import check_attention, installed, resolve_attention

    assert resolve_attention(tiny(attention="local"), cuda=True) == "local"
    assert resolve_attention(tiny(), cuda=False) == "sdpa"  # flash-attn is for GPUs
    assert resolve_attention(tiny(document_masking="block_causal"), cuda=True) == "sdpa"
    assert resolve_attention(tiny(), cuda=True) == ("flash" if installed("flash_attn") else "sdpa")
    with pytest.raises(ConfigError) as error:
        check_attention(tiny(attention="flash"), cuda=False)
    assert error.value.key == "model.attention"
    assert check_attention(tiny(attention="sdpa"), cuda=False) == "sdpa"


@pytest.mark.gpu
@pytest.mark.parametrize("attention, masking", [("sdpa", "none"), ("sdpa", "block_causal"), ("flash", "none")])
def test_gpu_attention_kernels_match_the_unfused_reference(attention, masking):
    from pretrain.model.backends import installed

    if attention == "flash" and not installed("flash_attn"):
        pytest.skip("flash-attn is not installed")
    inputs = ModelInputs(masking, EOS)
    tokens = packed_tokens().cuda()
    reference = loss_and_grads(built(tiny(attention="local"), dtype=torch.bfloat16), tokens, inputs)
    result = loss_and_grads(built(tiny(attention=attention), dtype=torch.bfloat16), tokens, inputs)
    # bf16 kernels round differently (8-bit mantissa) from the unfused softmax path.
    torch.testing.assert_close(result[0], reference[0], rtol=2e-2, atol=0)
    for name, grad in reference[1].items():
        assert torch.nn.functional.cosine_similarity(result[1][name].float().flatten(),
                                                     grad.float().flatten(), dim=0) > 0.99, name
        # The direction alone would pass a gradient twice too large: its size must match too.
        torch.testing.assert_close(result[1][name].float().norm(), grad.float().norm(), rtol=2e-2, atol=0)
