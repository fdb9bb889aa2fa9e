"""Guards against non-finite losses: skip, count, then roll back or stop.

DeepSpeed's ZeRO-1/2 optimizers already skip an update whose gradient norm is not finite
(fp32 and bf16); ZeRO-0 and ZeRO-3 in fp32/bf16 apply it, leaving non-finite weights. So a
non-finite step the engine did skip is counted and training goes on; one it did not skip,
or `nonfinite_patience` of them in a row, triggers `on_nonfinite`: roll back to the newest
checkpoint and continue past the data since (the samples that led there are not replayed),
or stop with `exit_codes.DIVERGED`.
"""

import math

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
        if self.cfg.on_nonfinite == "stop" or self.rollbacks >= self.cfg.max_rollbacks:
            trainer.request_stop(exit_codes.DIVERGED, f"{reason} (after {self.rollbacks} rollbacks)")
        else:
            self.rollbacks += 1
            trainer.request_rollback(reason)

    def state_dict(self):
        return {"total": self.total, "rollbacks": self.rollbacks}

    def load_state_dict(self, state):
        self.total = state.get("total", 0)
        self.rollbacks = state.get("rollbacks", 0)
