"""Let megatron-core's GPTModel train on a host without a CUDA device.

megatron-core assumes a GPU in a few places on the training path of a GPTModel built
from local (non-Transformer-Engine) modules. On a CPU-only host each of them either
raises ("Torch not compiled with CUDA enabled") or silently does nothing. `apply()`
redirects exactly those to the CPU, and is a no-op when `torch.cuda.is_available()`:

1. The current device. `torch.cuda.current_device()` is called to place new tensors in
   `tensor_parallel/mappings.py` (gather/reduce-scatter outputs), `tensor_parallel/layers.py`
   and `tensor_parallel/utils.py` (gather buffers), `utils.py` (GlobalMemoryBuffer) and
   `models/common/embeddings/rotary_pos_embedding.py` (moves `inv_freq` to "the GPU" on the
   first forward). On a CUDA-less host it raises; redirected, it returns the CPU device.
2. The device RNG. `tensor_parallel/random.py` keeps per-purpose RNG states (data-parallel,
   tensor-parallel, expert) in `CudaRNGStatesTracker` and switches between them with
   `torch.cuda.get_rng_state`, `torch.cuda.manual_seed` and its own `_get_cuda_rng_state`
   / `_set_cuda_rng_state`. Without CUDA the getter raises and the setters are silently
   queued forever (`torch.cuda._lazy_call`), so every tracked state would be the same.
   Redirected, "the device generator" is the CPU default generator: on the CPU it is the
   generator that dropout and init actually draw from. The tracker then works unchanged,
   including `get_cuda_rng_tracker().get_states()` / `set_states()` for an exact resume
   (the states are CPU ByteTensors, as on a GPU).
3. The default causal mask. `transformer/utils.py` builds it (and the sliding-window mask)
   with `device="cuda"`; `fusions/fused_softmax.py` imports both by name and calls them
   when attention gets no mask. Both names are rebound, in both modules, to CPU versions.
4. MoE's side stream. The `alltoall` token dispatcher (`transformer/moe/token_dispatcher.py`)
   creates a `torch.cuda.Stream` in its constructor, compares it with
   `torch.cuda.current_stream()`, copies routing counts to the host inside
   `torch.cuda.stream(...)` and waits on an event it records there. On the CPU there is one
   stream: the dispatcher's class-level stream is preset to a no-op stand-in, and
   `torch.cuda.current_stream()` returns that same stand-in, so the dispatcher sees itself on
   its own stream and never waits (`torch.cuda.stream(...)` is already a no-op without CUDA).
5. MoE split sizes. `moe_utils.maybe_move_tensor_to_cpu(..., as_numpy=True)` converts the
   all-to-all split sizes to numpy only for CUDA tensors; CPU tensors come back as tensors,
   which gloo's `all_to_all_single` refuses as split sizes (reached with expert parallelism).
   The dispatcher's copy of the name is rebound to a version that converts CPU tensors too.

Independent of the device, on any install without Transformer Engine (GPU hosts too):
`moe_utils.router_gating_linear` tests `te_general_gemm is not None`, a name bound only when
TE imports, so the MoE router raises NameError. `apply()` binds it to None there (megatron's
own meaning of "no TE kernel"), before its early return on CUDA hosts. megatron's
`track_moe_metrics` (which allocates on `device="cuda"`) is not redirected: the trainer reads
the aux-loss tracker itself (`pretrain.model.moe.tracked_aux_losses`).

Items 1, 2 and 4 replace attributes of `torch.cuda` process-wide: megatron reaches them as
`torch.cuda.X` from dozens of call sites, so there is no narrower handle. They only change
calls that would otherwise fail or do nothing on this host. Names missing from a given
megatron-core version are skipped, so the shim is safe across versions.
"""

import functools
import importlib
import logging

import torch

log = logging.getLogger(__name__)

_RANDOM_MODULE = "megatron.core.tensor_parallel.random"
_MASK_MODULES = ("megatron.core.transformer.utils", "megatron.core.fusions.fused_softmax")
_MOE_UTILS_MODULE = "megatron.core.transformer.moe.moe_utils"
_DISPATCHER_MODULE = "megatron.core.transformer.moe.token_dispatcher"

_applied = False


def apply() -> None:
    """Redirect megatron-core's hard-coded CUDA calls to the CPU; idempotent, no-op with CUDA."""
    global _applied
    _define_missing_transformer_engine_gemm()
    if _applied or torch.cuda.is_available():
        return
    _redirect_current_device()
    _redirect_device_rng()
    _redirect_causal_masks()
    _redirect_moe_streams()
    _redirect_moe_split_sizes()
    _applied = True
    log.debug("megatron-core CUDA calls redirected to the CPU")


def is_applied() -> bool:
    """Whether `apply()` has redirected anything in this process."""
    return _applied


def _redirect_current_device() -> None:
    torch.cuda.current_device = _cpu_device


def _cpu_device() -> torch.device:
    return torch.device("cpu")


def _redirect_device_rng() -> None:
    torch.cuda.get_rng_state = _get_rng_state
    torch.cuda.set_rng_state = _set_rng_state
    torch.cuda.manual_seed = _manual_seed
    random = _import(_RANDOM_MODULE)
    # megatron's own copies of torch.cuda's getters/setters (it skips the state clone).
    _rebind(random, "_get_cuda_rng_state", _get_rng_state)
    _rebind(random, "_set_cuda_rng_state", _set_rng_state)


def _get_rng_state(device="cuda", clone=False, graph_safe=False) -> torch.Tensor:
    return torch.get_rng_state()


def _set_rng_state(new_state: torch.Tensor, device=-1, graph_safe=False) -> None:
    torch.set_rng_state(new_state)


def _manual_seed(seed: int) -> None:
    torch.manual_seed(seed)


def _redirect_causal_masks() -> None:
    for name in _MASK_MODULES:
        module = _import(name)
        _rebind(module, "get_default_causal_mask", _default_causal_mask)
        _rebind(module, "get_sliding_window_causal_mask", _sliding_window_causal_mask)


@functools.lru_cache(maxsize=8)
def _default_causal_mask(sq: int) -> torch.Tensor:
    """True above the diagonal: key positions a query may not see (megatron's convention)."""
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def _sliding_window_causal_mask(sq: int, skv: int, window_size) -> torch.Tensor:
    allowed = torch.ones(sq, skv, dtype=torch.bool)
    allowed = torch.triu(allowed, diagonal=skv - sq - window_size[0])
    allowed = torch.tril(allowed, diagonal=skv - sq + window_size[1])
    return ~allowed


def _define_missing_transformer_engine_gemm() -> None:
    moe_utils = _import(_MOE_UTILS_MODULE)
    if moe_utils is not None and not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


class _HostStream:
    """The one CPU "stream": work is already ordered, so there is nothing to wait for."""

    def wait_stream(self, stream) -> None:
        pass

    def record_event(self, event=None) -> "_HostEvent":
        return _HostEvent()


class _HostEvent:
    def synchronize(self) -> None:
        pass


_HOST_STREAM = _HostStream()


def _current_stream(device=None) -> _HostStream:
    return _HOST_STREAM


def _redirect_moe_streams() -> None:
    torch.cuda.current_stream = _current_stream
    dispatcher = _import(_DISPATCHER_MODULE)
    if dispatcher is not None and hasattr(dispatcher, "MoEAlltoAllTokenDispatcher"):
        dispatcher.MoEAlltoAllTokenDispatcher.cuda_dtoh_stream = _HOST_STREAM


def _redirect_moe_split_sizes() -> None:
    _rebind(_import(_DISPATCHER_MODULE), "maybe_move_tensor_to_cpu", _host_tensor)


def _host_tensor(tensor, as_numpy: bool = False, record_stream: bool = False):
    """A host copy of `tensor` (numpy when asked), as megatron's helper gives for CUDA tensors."""
    if torch.is_tensor(tensor):
        tensor = tensor.cpu()
        return tensor.numpy() if as_numpy else tensor
    return tensor


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        log.debug("cpu_compat: %s not found, skipped", name)
        return None


def _rebind(module, name: str, replacement) -> None:
    if module is not None and hasattr(module, name):
        setattr(module, name, replacement)
    else:
        log.debug("cpu_compat: %s.%s not found, skipped", getattr(module, "__name__", module), name)
