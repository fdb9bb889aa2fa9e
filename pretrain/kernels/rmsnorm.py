"""RMSNorm: the torch reference, and a Triton forward + backward (dx and dweight) with the norm module.

y = x * rstd * weight with rstd = 1 / sqrt(mean(x^2) + eps), computed in fp32 and cast back
to x's dtype. The forward saves rstd (one fp32 per row) instead of the normalized input, so
the backward recomputes x * rstd. dweight is summed in fp32 per program, then over programs.
"""

import torch
import triton
import triton.language as tl

from pretrain.kernels.launch import num_programs, num_warps
from pretrain.model.norm import RMSNorm
from pretrain.model.norm import rms_norm as rms_norm_reference  # noqa: F401 (the torch model's norm is the reference)


@triton.jit
def _forward_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    tl.store(y_ptr + row * n_cols + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _backward_kernel(dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_partial_ptr, n_rows, n_cols,
                     rows_per_program, BLOCK: tl.constexpr):
    # Each program takes a contiguous run of rows and keeps its own dweight sum in registers.
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    first = program * rows_per_program
    for i in range(0, rows_per_program):
        row = first + i
        if row < n_rows:
            offset = row.to(tl.int64) * n_cols
            dy = tl.load(dy_ptr + offset + cols, mask=mask, other=0.0).to(tl.float32)
            x = tl.load(x_ptr + offset + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + row)
            x_hat = x * rstd
            dx_hat = dy * w
            # d/dx of x * rstd(x): rstd * (dx_hat - x_hat * mean(dx_hat * x_hat))
            dx = rstd * (dx_hat - x_hat * (tl.sum(dx_hat * x_hat, axis=0) / n_cols))
            tl.store(dx_ptr + offset + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            dw += dy * x_hat
    tl.store(dw_partial_ptr + program * n_cols + cols, dw, mask=mask)


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        shape = x.shape
        x2d = x.reshape(-1, shape[-1]).contiguous()
        n_rows, n_cols = x2d.shape
        y = torch.empty_like(x2d)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(n_cols)
        _forward_kernel[(n_rows,)](x2d, weight, y, rstd, n_cols, eps, BLOCK=block, num_warps=num_warps(block))
        ctx.save_for_backward(x2d, weight, rstd)
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2d, weight, rstd = ctx.saved_tensors
        n_rows, n_cols = x2d.shape
        dy2d = dy.reshape(-1, n_cols).contiguous()
        dx = torch.empty_like(x2d)
        programs = num_programs(n_rows, x2d.device)
        rows_per_program = triton.cdiv(n_rows, programs)
        dw_partial = torch.empty(programs, n_cols, dtype=torch.float32, device=x2d.device)
        block = triton.next_power_of_2(n_cols)
        _backward_kernel[(programs,)](dy2d, x2d, weight, rstd, dx, dw_partial, n_rows, n_cols,
                                      rows_per_program, BLOCK=block, num_warps=num_warps(block))
        return dx.view(dy.shape), dw_partial.sum(0).to(weight.dtype), None


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Triton RMSNorm over the last dimension; same result and gradients as rms_norm_reference."""
    return _RMSNormFunction.apply(x, weight, eps)


class TritonRMSNorm(RMSNorm):
    """RMSNorm (same weight, same sequence-parallel flag) computed by the Triton kernels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm_triton(x, self.weight, self.eps)
