"""Comparing a kernel with its torch reference: same input values, same upstream gradient."""

import torch
from conftest import TOLERANCES


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
