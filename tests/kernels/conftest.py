"""Kernel tests: without a GPU the Triton kernels run in Triton's interpreter on the CPU.

TRITON_INTERPRET is read when a @triton.jit function is defined, i.e. when one of
pretrain.kernels' Triton modules is first imported; nothing imports them before these tests
(pretrain.kernels loads them only when Triton is chosen), so setting it here, when this
folder is collected, is early enough. Spawned test processes inherit it.
"""

import os
import sys

import torch

TRITON_MODULES = ("pretrain.kernels.rmsnorm", "pretrain.kernels.rope", "pretrain.kernels.swiglu",
                  "pretrain.kernels.cross_entropy")

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    imported = [name for name in TRITON_MODULES if name in sys.modules]
    assert not imported, f"{imported} were imported before TRITON_INTERPRET was set"
