"""Every Triton kernel compiles for a GPU (Hopper, sm_90) down to a cubin, with no GPU present.

The interpreter that runs the kernels on a CPU host accepts some programs the GPU compiler
rejects (types of loop-carried values, pointer arithmetic); Triton's ahead-of-time compile with
the ptxas it ships catches those here. Signatures are those of the bf16 model.
"""

import pytest
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from pretrain.kernels import cross_entropy, rmsnorm, rope, swiglu

BF16, FP32, I32, I64 = "*bf16", "*fp32", "i32", "*i64"

KERNELS = {
    "rmsnorm-forward": (rmsnorm._forward_kernel, [BF16, BF16, BF16, FP32, I32, "fp32"], {"BLOCK": 4096}),
    "rmsnorm-backward": (rmsnorm._backward_kernel, [BF16, BF16, BF16, FP32, BF16, FP32, I32, I32, I32],
                         {"BLOCK": 4096}),
    "rope-forward": (rope._rope_kernel, [BF16, FP32, BF16, I32, I32, I32],
                     {"BACKWARD": False, "PER_SAMPLE": False, "BLOCK_H": 32, "BLOCK_D": 64}),
    "rope-backward": (rope._rope_kernel, [BF16, FP32, BF16, I32, I32, I32],
                      {"BACKWARD": True, "PER_SAMPLE": True, "BLOCK_H": 32, "BLOCK_D": 64}),
    "swiglu-forward": (swiglu._forward_kernel, [BF16, BF16, I32], {"BLOCK": 1024}),
    "swiglu-backward": (swiglu._backward_kernel, [BF16, BF16, BF16, I32], {"BLOCK": 1024}),
    "ce-stats": (cross_entropy._stats_kernel, [FP32, I64, FP32, FP32, FP32, I32], {"BLOCK": 4096}),
    "ce-grad": (cross_entropy._grad_kernel, [FP32, I64, FP32, FP32, FP32, BF16, I32], {"BLOCK": 4096}),
}


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_compiles_to_a_cubin(name):
    kernel, argument_types, constants = KERNELS[name]
    jit = JITFunction(kernel.fn)  # under TRITON_INTERPRET the module holds an interpreted wrapper
    names = [arg for arg in jit.arg_names if arg not in constants]
    signature = {**dict(zip(names, argument_types, strict=True)), **{key: "constexpr" for key in constants}}
    compiled = triton.compile(ASTSource(jit, signature, constants), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": 8})
    assert compiled.asm["cubin"]
