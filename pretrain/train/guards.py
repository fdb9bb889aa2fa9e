"""Guards against non-finite losses and loss spikes: skip, count, then roll back or stop.

DeepSpeed's ZeRO-1/2 optimizers already skip an update whose gradient norm is not finite
(fp32 and bf16); ZeRO-0 and ZeRO-3 in fp32/bf16 apply it, leaving non-finite weights. So a
non-finite step the engine did skip is counted and training goes on; one it did not skip,
or `nonfinite_patience` of them in a row, triggers `on_nonfinite`: roll back to the newest
checkpoint and continue past the data since (the samples that led there are not replayed),
or stop with `exit_codes.DIVERGED`.

A loss spike is a finite loss more than `spike_z` standard deviations above the mean of the
trailing `spike_window` losses. The loss is known only after the backward, so the trainer
asks `skip_update` just before the step's optimizer update, with the loss averaged over every
data-parallel rank: every rank sees the same number and so takes the same decision.
"""

import collections
import contextlib
import math
import statistics

from pretrain import exit_codes
from pretrain.train.callbacks import Callback
from pretrain.train.config import GuardConfig


class NonFiniteGuard(Callback):
    name = "nonfinite_guard"

    def __init__(self, cfg: GuardConfig):
        self.cfg = cfg
        self.in_a_row = 0
        self.total = 0
        self.rollbacks = 0
        self._engine_skips = 0

    def on_train_start(self, trainer):
        self._engine_skips = trainer.engine.skipped_steps

    def on_rollback(self, trainer):
        self._engine_skips = trainer.engine.skipped_steps

    def on_step_end(self, trainer, metrics):
        skipped = trainer.engine.skipped_steps > self._engine_skips
        self._engine_skips = trainer.engine.skipped_steps
        if math.isfinite(metrics["loss"]) and not skipped:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        trainer.log({"step": trainer.step, "nonfinite_steps": self.total})
        if skipped and self.in_a_row < self.cfg.nonfinite_patience:
            return
        reason = (f"{self.in_a_row} non-finite steps in a row" if skipped
                  else "a non-finite loss reached the weights (this ZeRO stage does not skip it)")
        self.in_a_row = 0
        self.rollbacks = roll_back_or_stop(trainer, self.cfg, self.rollbacks, reason)

    def state_dict(self):
        return {"total": self.total, "rollbacks": self.rollbacks}

    def load_state_dict(self, state):
        self.total = state.get("total", 0)
        self.rollbacks = state.get("rollbacks", 0)


def roll_back_or_stop(trainer, cfg: GuardConfig, rollbacks: int, reason: str) -> int:
    """Apply `on_nonfinite` to a run that keeps going bad; returns the new count of rollbacks."""
    if cfg.on_nonfinite == "stop" or rollbacks >= cfg.max_rollbacks:
        trainer.request_stop(exit_codes.DIVERGED, f"{reason} (after {rollbacks} rollbacks)")
        return rollbacks
    trainer.request_rollback(reason)
    return rollbacks + 1


class LossSpikeGuard(Callback):
    """Skips (or only reports) the update of a step whose loss spikes; too many in a row act as divergence."""

    name = "spike_guard"

    def __init__(self, cfg: GuardConfig):
        self.cfg = cfg
        self.window = collections.deque(maxlen=cfg.spike_window)
        """Recent losses that were not spikes."""
        self.total = 0
        self.in_a_row = 0
        self.rollbacks = 0
        self._spike: float | None = None  # the z-score of this step's loss, when it spiked

    def skip_update(self, trainer, loss: float) -> bool:
        self._spike = self._z_score(loss)
        return self._spike is not None and self.cfg.spike_action == "skip"

    def _z_score(self, loss: float) -> float | None:
        """The loss's z-score against the window when it is a spike, else None."""
        if not math.isfinite(loss) or len(self.window) < self.cfg.spike_min_steps:
            return None  # a non-finite loss is the NonFiniteGuard's
        spread = statistics.pstdev(self.window)
        z = (loss - statistics.fmean(self.window)) / spread if spread > 0 else 0.0
        return z if z > self.cfg.spike_z else None

    def on_step_end(self, trainer, metrics):
        z, self._spike = self._spike, None
        if z is None:
            if math.isfinite(metrics["loss"]):
                self.window.append(metrics["loss"])
            self.in_a_row = 0
            return
        self.total += 1
        self.in_a_row += 1
        action = "update skipped" if self.cfg.spike_action == "skip" else "update applied"
        trainer.print(f"loss spike at step {trainer.step}: {metrics['loss']:.4f} is {z:.1f} standard deviations "
                      f"above the last {len(self.window)} steps' mean ({action})")
        trainer.log({"step": trainer.step, "loss_spikes": self.total, "spike_z": z})
        if self.in_a_row >= self.cfg.spike_patience:
            reason, self.in_a_row = f"{self.in_a_row} loss spikes in a row", 0
            self.rollbacks = roll_back_or_stop(trainer, self.cfg, self.rollbacks, reason)

    def state_dict(self):
        return {"window": list(self.window), "total": self.total, "rollbacks": self.rollbacks}

    def load_state_dict(self, state):
        self.window.extend(state.get("window", []))
        self.total = state.get("total", 0)
        self.rollbacks = state.get("rollbacks", 0)


@contextlib.contextmanager
def update_skipped(engine):
    """Within this block `engine.step()` applies no update and does not advance the LR schedule.

    The wrapped torch optimizer's step and the scheduler's step do nothing, so the next update
    gets the learning rate this one would have had, as with DeepSpeed's own skip of an fp16
    overflow. DeepSpeed still runs the rest of its bookkeeping (grad norm, zeroing the
    gradients, copying the unchanged fp32 weights back, its step and sample counters), so
    every ZeRO stage stays consistent, and the scheduler saved in the next checkpoint carries
    the count of updates actually made.
    """
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)  # ZeRO and bf16 wrap the torch optimizer
    with _does_nothing(inner, "step"), _does_nothing(engine.lr_scheduler, "step"):
        yield


@contextlib.contextmanager
def _does_nothing(obj, method: str):
    """Within this block `obj.method(...)` does nothing (None: nothing to hold)."""
    if obj is None:
        yield
        return
    patched = obj.__dict__.get(method)  # an LR scheduler wraps the optimizer's `step` on the instance
    setattr(obj, method, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        if patched is None:
            delattr(obj, method)
        else:
            setattr(obj, method, patched)
