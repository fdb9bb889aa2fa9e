"""Each Triton kernel against its torch reference, forward and gradients, fp32 and bf16.

Tiny shapes run everywhere (Triton's interpreter on a CPU host); realistic ones on a GPU.
"""

import pytest
import torch
from kernel_parity import DEVICE, assert_matches_reference

from pretrain.kernels import cross_entropy, rmsnorm, rope, swiglu

DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


def gpu(*values):
    """A realistic-size case, run only where there is a GPU."""
    return pytest.param(*values, marks=pytest.mark.gpu, id="gpu")


def randn(*shape, seed=0, scale=1.0):
    return (scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))).to(DEVICE)


@DTYPES
@pytest.mark.parametrize("shape", [(4, 6, 48), gpu((8192, 4096))])
def test_rms_norm(shape, dtype):
    x = randn(*shape)
    weight = 1 + randn(shape[-1], seed=1, scale=0.1)
    assert_matches_reference(lambda x, w: rmsnorm.rms_norm_triton(x, w, 1e-5),
                             lambda x, w: rmsnorm.rms_norm_reference(x, w, 1e-5), [x, weight], dtype)


def rotary_freqs(seq, dim, base=10000.0):
    """megatron's RotaryEmbedding freqs: [s, 1, 1, dim], both halves equal (non-interleaved)."""
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    return torch.cat([angles, angles], dim=-1)[:, None, None, :]


@DTYPES
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared-positions", "per-sample-positions"])
@pytest.mark.parametrize("shape", [(8, 2, 3, 16), gpu((4096, 2, 32, 128))])
def test_rope(shape, per_sample, dtype):
    seq, batch, _, dim = shape
    freqs = rotary_freqs(seq, dim).to(DEVICE)
    if per_sample:  # positions restarting at document starts: freqs [s, b, 1, d]
        positions = torch.stack([torch.arange(seq), torch.arange(seq) % 3] + [torch.arange(seq)] * (batch - 2), dim=1)
        freqs = freqs[:, 0][positions.to(DEVICE)]
    assert_matches_reference(lambda t: rope.rope_triton(t, freqs), lambda t: rope.rope_reference(t, freqs),
                             [randn(*shape)], dtype)


def test_rope_reference_is_megatrons_convention():
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    t, freqs = randn(8, 2, 3, 16), rotary_freqs(8, 16, base=500.0).to(DEVICE)
    torch.testing.assert_close(rope.rope_reference(t, freqs), _apply_rotary_pos_emb_bshd(t, freqs, False))


@DTYPES
@pytest.mark.parametrize("shape", [(4, 6, 2 * 40), gpu((8192, 2 * 14336))])
def test_swiglu(shape, dtype):
    assert_matches_reference(swiglu.swiglu_triton, swiglu.swiglu_reference, [randn(*shape)], dtype)


def test_swiglu_reference_is_megatrons_glu():
    x = randn(5, 2 * 12)
    gate, up = x[..., :12], x[..., 12:]
    torch.testing.assert_close(swiglu.swiglu_reference(x), torch.nn.functional.silu(gate) * up)


def labels_with_ignored(tokens, vocab, seed=2):
    labels = torch.randint(0, vocab, (tokens,), generator=torch.Generator().manual_seed(seed))
    labels[::5] = cross_entropy.IGNORE_INDEX
    return labels.to(DEVICE)


class TritonSmallBlocks(cross_entropy.ChunkCrossEntropyTriton):
    """Rows longer than a block, as a real vocabulary is: exercises the online max/sum rescaling."""

    max_block = 16


@DTYPES
@pytest.mark.parametrize("chunk_ce", [cross_entropy.ChunkCrossEntropyTriton, TritonSmallBlocks,
                                      cross_entropy.ChunkCrossEntropyTorch], ids=["triton", "triton-blocks", "torch"])
@pytest.mark.parametrize("tokens, hidden, vocab, chunk", [(24, 16, 40, 7), gpu(8192, 4096, 131072, None)])
def test_linear_cross_entropy(tokens, hidden, vocab, chunk, chunk_ce, dtype):
    """Chunked (chunk does not divide the tokens; some labels ignored) against logits + F.cross_entropy."""
    labels = labels_with_ignored(tokens, vocab)
    h, weight = randn(tokens, hidden), randn(vocab, hidden, seed=1, scale=hidden**-0.5)
    assert_matches_reference(
        lambda h, w: cross_entropy.linear_cross_entropy(h, w, labels, chunk_tokens=chunk, chunk_ce=chunk_ce),
        lambda h, w: cross_entropy.linear_cross_entropy_reference(h, w, labels), [h, weight], dtype)


def test_linear_cross_entropy_without_grad_computes_only_the_loss():
    h, weight, labels = randn(10, 8), randn(30, 8, seed=1), labels_with_ignored(10, 30)
    with torch.no_grad():
        loss = cross_entropy.linear_cross_entropy(h, weight, labels, chunk_tokens=4)
    torch.testing.assert_close(loss, cross_entropy.linear_cross_entropy_reference(h, weight, labels))
