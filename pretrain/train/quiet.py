"""Silence third-party start-up warnings that say nothing about the run.

megatron-core warns once per module that apex / Transformer Engine are absent (they are
optional here: our own norm and torch's optimizers are used), DeepSpeed that it picked the
CPU accelerator. Every rank repeats them, burying the first lines of the training log.
"""

import os
import warnings

_HARMLESS = (
    r".*(Apex|Transformer Engine)( and Apex)? (is|are) not installed.*",
    r"full scope is deprecated.*",
    r".*all_gather_into_tensor` is deprecated.*",
)


def silence_known_warnings() -> None:
    """Call before megatron-core or DeepSpeed is imported."""
    for pattern in _HARMLESS:
        warnings.filterwarnings("ignore", message=pattern)
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
