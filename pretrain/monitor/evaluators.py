"""The extension point for downstream evaluations, run beside validation loss and bits per byte.

An evaluator is any object with a `name` and `evaluate(trainer) -> dict[str, float]`. It runs on
every rank at each evaluation (so it may use collectives: the model is tensor-parallel and
data-parallel; `trainer.engine.module` is this rank's shard, `trainer.device` its device), and
rank 0's numbers are logged as `name/key`. List factories in the config:

    logging.evaluators=[mypkg.evals:hellaswag]

where `mypkg.evals.hellaswag(cfg, tokenizer)` returns the evaluator.
"""

import importlib
from typing import Protocol

from pretrain.errors import ConfigError


class Evaluator(Protocol):
    name: str

    def evaluate(self, trainer) -> dict[str, float]: ...


def load_evaluators(targets: list[str], cfg, tokenizer) -> list[Evaluator]:
    """Import each "package.module:factory" and call it with (cfg, tokenizer)."""
    return [_factory(target)(cfg, tokenizer) for target in targets]


def _factory(target: str):
    module_name, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError("logging.evaluators", f"cannot load {target!r}: {error}") from None
