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

Items 1 and 2 replace attributes of `torch.cuda` process-wide: megatron reaches them as
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

_applied = False


def apply() -> None:
    """Redirect megatron-core's hard-coded CUDA calls to the CPU; idempotent, no-op with CUDA."""
    global _applied
    if _applied or torch.cuda.is_available():
        return
    _redirect_current_device()
    _redirect_device_rng()
    _redirect_causal_masks()
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
