"""torch.compile of the decoder layers, and the one megatron call that keeps them from one graph.

Each TransformerLayer is compiled on its own (as torchtitan does per block): the layers share
code, so the graph compiled for the first is reused by the others, and the embedding, RoPE
table and vocab-parallel loss stay eager (RoPE's table is rebuilt per call on a CPU host, which
would break the graph).

megatron's RowParallelLinear passes `tp_group=None` to its linear function, which then calls
`get_tensor_model_parallel_group_if_none` and, on global rank 0 only, `warnings.warn`s that the
argument will become mandatory. dynamo cannot trace warnings.warn, so every layer split into
pieces there, and rank 0 compiled different graphs from the others. The name is rebound in
`tensor_parallel/layers.py` to a version that returns the same default group without the
warning. Attention dropout (the RNG tracker fork, the other graph break) is not used here: our
core attention modules refuse it.
"""

import importlib
import logging

import torch

log = logging.getLogger(__name__)

_LAYERS_MODULE = "megatron.core.tensor_parallel.layers"


def compile_layers(model: torch.nn.Module) -> None:
    """Compile each decoder layer of a GPTModel in place (parameter names are unchanged)."""
    _quiet_default_tp_group()
    for layer in model.decoder.layers:
        layer.compile()


def _quiet_default_tp_group() -> None:
    layers = importlib.import_module(_LAYERS_MODULE)
    original = getattr(layers, "get_tensor_model_parallel_group_if_none", None)
    if original is None or getattr(original, "quiet", False):
        return

    def group_or_default(tp_group=None, is_expert=False, check_initialized=True):
        if tp_group is not None:
            return tp_group
        from megatron.core import parallel_state

        if not parallel_state.is_initialized():
            return None
        if is_expert:
            return parallel_state.get_expert_tensor_parallel_group(check_initialized=check_initialized)
        return parallel_state.get_tensor_model_parallel_group(check_initialized=check_initialized)

    group_or_default.quiet = True
    layers.get_tensor_model_parallel_group_if_none = group_or_default
    log.debug("megatron's default-TP-group warning silenced for torch.compile")
