"""Comparing a kernel with its torch reference: same input values, same upstream gradient."""

import os
from contextlib import contextmanager

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

TOLERANCES = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    # bf16 results against the fp32 reference on the same (bf16-valued) inputs: about two ulps.
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def leaves(tensors, dtype):
    """Copies in dtype (floating ones; labels stay as they are) that require grad."""
    return [t.detach().to(dtype).requires_grad_() if t.is_floating_point() else t for t in tensors]


def assert_matches_reference(kernel, reference, inputs, dtype):
    """kernel on `inputs` cast to dtype vs reference on the same values in fp32: output and input gradients."""
    ours = leaves(inputs, dtype)
    theirs = leaves(ours, torch.float32)
    out, expected = kernel(*ours), reference(*theirs)
    assert out.shape == expected.shape and (out.dtype == dtype or out.dim() == 0)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.device, out.dtype)
    out.backward(upstream)
    expected.backward(upstream.float())
    torch.testing.assert_close(out.float(), expected, **TOLERANCES[dtype])
    for mine, ref in zip(ours, theirs):
        if mine.is_floating_point():
            assert mine.grad.dtype == dtype
            torch.testing.assert_close(mine.grad.float(), ref.grad, **TOLERANCES[dtype])


@contextmanager
def interpreted_children():
    """Processes started inside run Triton in the interpreter: their ranks compute on CPU tensors (gloo)."""
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
