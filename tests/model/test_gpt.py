"""The megatron GPTModel on CPU, one process: loss, gradients, learning, parity with plain torch."""

import math

import pytest
import reference_llama
import torch
from reference_llama import tiny

from pretrain.model.gpt import (
    build_model,
    count_parameters,
    flops_per_token,
    language_model_loss,
    matmul_parameters,
    padded_vocab_size,
    transformer_config,
)
from pretrain.parallel.layout import set_seed

VOCAB = 256


pytestmark = pytest.mark.usefixtures("megatron_state")


def batch(seed: int = 0, size: int = 4) -> torch.Tensor:
    return torch.randint(0, VOCAB, (size, 33), generator=torch.Generator().manual_seed(seed))


def test_loss_starts_near_log_vocab_and_every_parameter_gets_a_gradient():
    set_seed(0)
    model = build_model(tiny(), VOCAB, 1)
    loss = language_model_loss(model, batch())
    assert torch.isfinite(loss)
    assert abs(loss.item() - math.log(VOCAB)) < 0.1
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_adamw_steps_reduce_the_loss_on_a_fixed_batch():
    set_seed(0)
    model = build_model(tiny(), VOCAB, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens = batch()
    losses = []
    for _ in range(8):
        loss = language_model_loss(model, tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize("untie", [True, False], ids=["untied", "tied"])
def test_logits_match_a_plain_torch_llama(untie):
    cfg = tiny(untie_embeddings_and_output_weights=untie, rotary_base=500)
    set_seed(1)
    model = build_model(cfg, VOCAB, 1).eval()
    weights = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    assert ("output_layer.weight" in weights) == untie
    input_ids = batch(seed=1)[:, :-1]
    position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    with torch.no_grad():
        ours = model(input_ids=input_ids, position_ids=position_ids, attention_mask=None)
        expected = reference_llama.logits(weights, cfg, input_ids)
    assert ours.shape == (4, 32, VOCAB)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_parameter_count_and_flops_follow_the_shapes():
    cfg = tiny()
    set_seed(0)
    model = build_model(cfg, VOCAB, 1)
    norms = (2 * cfg.num_layers + 1) * cfg.hidden_size
    embedding = VOCAB * cfg.hidden_size
    assert count_parameters(model) == matmul_parameters(cfg, VOCAB) + embedding + norms
    attention = 12 * cfg.num_layers * cfg.hidden_size * cfg.seq_length
    assert flops_per_token(cfg, VOCAB) == 6 * matmul_parameters(cfg, VOCAB) + attention


def test_vocab_is_padded_to_a_multiple_of_divisor_times_tp():
    cfg = tiny(make_vocab_size_divisible_by=128)
    assert padded_vocab_size(256, cfg, 1) == 256
    assert padded_vocab_size(257, cfg, 1) == 384
    assert padded_vocab_size(300, cfg, 4) == 512


def test_transformer_config_matches_dtype_and_marks_sequence_parallel_norms():
    config = transformer_config(tiny(), 1, torch.bfloat16)
    assert config.bf16 and not config.fp16 and config.params_dtype == torch.bfloat16
    assert not config.add_bias_linear and config.gated_linear_unit
    assert config.hidden_dropout == config.attention_dropout == 0.0
    from pretrain.model.norm import RMSNorm

    config = transformer_config(tiny(), 2, sequence_parallel=True)
    assert RMSNorm(config=config, hidden_size=64, eps=1e-5).weight.sequence_parallel
    config = transformer_config(tiny(), 1, sequence_parallel=True)  # nothing to split over
    assert not RMSNorm(config=config, hidden_size=64, eps=1e-5).weight.sequence_parallel


def test_bf16_model_trains_on_cpu():
    set_seed(0)
    model = build_model(tiny(), VOCAB, 1, params_dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    loss = language_model_loss(model, batch())
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - math.log(VOCAB)) < 0.2
