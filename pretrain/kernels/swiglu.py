"""SwiGLU: the torch reference, a Triton forward + backward, and megatron's MLP using it.

megatron's fc1 output is [..., 2 * ffn] = [gate; up] along the last dim (under tensor
parallelism each rank holds its own slice of both halves, so the split is local). The
output is silu(gate) * up. The backward recomputes silu from the saved fc1 output rather
than saving it: one [.., 2 * ffn] tensor kept instead of three [.., ffn] ones.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from megatron.core.transformer.mlp import MLP

_BLOCK = 1024


def swiglu_reference(x: torch.Tensor) -> torch.Tensor:
    """Plain torch silu(gate) * up of x = [gate; up] along the last dim."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


@triton.jit
def _forward_kernel(x_ptr, y_ptr, ffn, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < ffn
    gate = tl.load(x_ptr + row * 2 * ffn + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * 2 * ffn + ffn + cols, mask=mask, other=0.0).to(tl.float32)
    silu = gate * tl.sigmoid(gate)
    tl.store(y_ptr + row * ffn + cols, (silu * up).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(dy_ptr, x_ptr, dx_ptr, ffn, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < ffn
    dy = tl.load(dy_ptr + row * ffn + cols, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(x_ptr + row * 2 * ffn + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * 2 * ffn + ffn + cols, mask=mask, other=0.0).to(tl.float32)
    sigmoid = tl.sigmoid(gate)
    silu = gate * sigmoid
    # silu'(g) = sigmoid(g) * (1 + g * (1 - sigmoid(g)))
    dgate = dy * up * sigmoid * (1.0 + gate * (1.0 - sigmoid))
    tl.store(dx_ptr + row * 2 * ffn + cols, dgate.to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dx_ptr + row * 2 * ffn + ffn + cols, (dy * silu).to(dx_ptr.dtype.element_ty), mask=mask)


def _grid(n_rows: int, ffn: int, block: int) -> tuple[int, int]:
    return (n_rows, triton.cdiv(ffn, block))


class _SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x2d = x.reshape(-1, x.shape[-1]).contiguous()
        n_rows, ffn = x2d.shape[0], x2d.shape[1] // 2
        block = min(_BLOCK, triton.next_power_of_2(ffn))
        y = torch.empty(n_rows, ffn, dtype=x.dtype, device=x.device)
        _forward_kernel[_grid(n_rows, ffn, block)](x2d, y, ffn, BLOCK=block)
        ctx.save_for_backward(x2d)
        ctx.shape = x.shape
        return y.view(*x.shape[:-1], ffn)

    @staticmethod
    def backward(ctx, dy):
        (x2d,) = ctx.saved_tensors
        n_rows, ffn = x2d.shape[0], x2d.shape[1] // 2
        block = min(_BLOCK, triton.next_power_of_2(ffn))
        dx = torch.empty_like(x2d)
        _backward_kernel[_grid(n_rows, ffn, block)](dy.reshape(n_rows, ffn).contiguous(), x2d, dx, ffn, BLOCK=block)
        return dx.view(ctx.shape)


def swiglu_triton(x: torch.Tensor) -> torch.Tensor:
    """Triton silu(gate) * up of x = [gate; up] along the last dim."""
    if x.shape[-1] % 2:
        raise ValueError(f"SwiGLU needs an even last dimension ([gate; up]), got {x.shape[-1]}")
    return _SwiGLUFunction.apply(x)


class TritonSwiGLUMLP(MLP):
    """megatron's MLP (same fc1/fc2, same weights) with the Triton SwiGLU between them.

    For the dense gated MLP of this model: no per-token expert scale, fc1 bias added if present.
    """

    def forward(self, hidden_states, per_token_scale=None, **kwargs):
        if per_token_scale is not None:
            raise NotImplementedError("TritonSwiGLUMLP is the dense MLP; MoE experts use megatron's")
        gate_up, bias = self.linear_fc1(hidden_states)  # [s, b, 2 * ffn / tp]
        if bias is not None:
            gate_up = gate_up + bias
        return self.linear_fc2(swiglu_triton(gate_up))
