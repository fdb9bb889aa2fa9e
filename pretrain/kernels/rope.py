"""Rotary position embedding: the torch reference and a Triton forward + backward.

megatron's non-interleaved convention (as HF Llama): the head dimension is split into halves
(x1, x2) and rotated as x * cos(freqs) + [-x2, x1] * sin(freqs). Inputs are [s, b, heads,
head_dim] as megatron's attention passes them; freqs is [s, 1, 1, head_dim] (fp32, both halves
of the last dim as megatron's RotaryEmbedding builds them), or [s, b, 1, head_dim] when each
sample has its own positions (positions reset at document starts). One program rotates every
head of one (position, sample) row. The backward is the inverse rotation of the incoming gradient.
"""

import torch
import triton
import triton.language as tl


def rope_reference(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Plain torch RoPE of t [s, b, h, d] by freqs [s, 1 or b, 1, d], computed in fp32."""
    x1, x2 = t.float().chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (t.float() * freqs.cos() + rotated * freqs.sin()).to(t.dtype)


@triton.jit
def _rope_kernel(x_ptr, freqs_ptr, y_ptr, batch, heads, half, BACKWARD: tl.constexpr, PER_SAMPLE: tl.constexpr,
                 BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # row = position * batch + sample
    freqs_row = row if PER_SAMPLE else row // batch
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < heads) & (d < half)
    first = x_ptr + row * heads * 2 * half + h * 2 * half + d
    x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first + half, mask=mask, other=0.0).to(tl.float32)
    f1 = tl.load(freqs_ptr + freqs_row * 2 * half + d, mask=d < half, other=0.0)
    f2 = tl.load(freqs_ptr + freqs_row * 2 * half + half + d, mask=d < half, other=0.0)
    cos1, sin1, cos2, sin2 = tl.cos(f1), tl.sin(f1), tl.cos(f2), tl.sin(f2)
    if BACKWARD:
        # transpose of the forward rotation: y1 = x1 cos1 - x2 sin1, y2 = x2 cos2 + x1 sin2
        y1 = x1 * cos1 + x2 * sin2
        y2 = x2 * cos2 - x1 * sin1
    else:
        y1 = x1 * cos1 - x2 * sin1
        y2 = x2 * cos2 + x1 * sin2
    out = y_ptr + row * heads * 2 * half + h * 2 * half + d
    tl.store(out, y1.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(out + half, y2.to(y_ptr.dtype.element_ty), mask=mask)


def _rotate(t: torch.Tensor, freqs: torch.Tensor, backward: bool) -> torch.Tensor:
    seq, batch, heads, dim = t.shape
    t = t.contiguous()
    out = torch.empty_like(t)
    half = dim // 2
    _rope_kernel[(seq * batch,)](t, freqs, out, batch, heads, half, BACKWARD=backward,
                                 PER_SAMPLE=freqs.shape[1] == batch and batch > 1,
                                 BLOCK_H=triton.next_power_of_2(heads), BLOCK_D=triton.next_power_of_2(half))
    return out


class _RopeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, freqs):
        ctx.save_for_backward(freqs)
        return _rotate(t, freqs, backward=False)

    @staticmethod
    def backward(ctx, dy):
        (freqs,) = ctx.saved_tensors
        return _rotate(dy, freqs, backward=True), None


def rope_triton(t: torch.Tensor, freqs: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Triton RoPE with megatron's fused-RoPE signature (fused_apply_rotary_pos_emb(t, freqs, interleaved))."""
    if interleaved:
        raise NotImplementedError("the Triton RoPE implements the non-interleaved convention only")
    if freqs.shape[-1] != t.shape[-1]:
        raise NotImplementedError("the Triton RoPE rotates the whole head dimension (rotary_percent=1.0)")
    freqs = freqs.reshape(freqs.shape[0], freqs.shape[1], freqs.shape[-1]).float().contiguous()  # [s, 1 or b, d]
    return _RopeFunction.apply(t, freqs)
