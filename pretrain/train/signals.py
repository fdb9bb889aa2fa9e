"""Stop cleanly on SIGUSR1 / SIGTERM: what Slurm sends before a time limit or a preemption.

The first signal sets a flag; at the next step boundary every rank learns whether any rank
got one (ranks may be signalled at different moments, or only some of them), the step's
checkpoint is written, and the job exits with `exit_codes.REQUEUE`. A second signal exits at
once: the previous checkpoint stays the latest.

A signal that came during start-up was recorded (`pretrain.train.startup_signals`); it is
honoured as soon as training begins, after the checkpoint load: nothing was trained since
that checkpoint, so the run exits with `exit_codes.REQUEUE` without a step or a save.
"""

import os
import signal

import torch
import torch.distributed as dist

from pretrain import exit_codes
from pretrain.train import startup_signals
from pretrain.train.callbacks import Callback
from pretrain.train.startup_signals import STOP_SIGNALS


class StopOnSignal(Callback):
    name = "stop_on_signal"

    def __init__(self):
        self.received: int | None = None

    def on_train_start(self, trainer):
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)
        # Read after installing: a signal in between reaches `_handle` instead of being lost.
        if self.received is None:
            self.received = startup_signals.received()
        self._stop_if_any_rank_received(trainer, " during start-up")

    def _handle(self, signum, frame):
        if self.received is not None:
            os._exit(exit_codes.REQUEUE)
        self.received = signum

    def on_step_end(self, trainer, metrics):
        # Must run before Checkpointing in the callback list, so the stop step is saved.
        self._stop_if_any_rank_received(trainer)

    def _stop_if_any_rank_received(self, trainer, when: str = "") -> None:
        # On the device: NCCL reduces only GPU tensors.
        flag = torch.tensor([0 if self.received is None else self.received], dtype=torch.int32, device=trainer.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and not trainer.finished:
            trainer.request_stop(exit_codes.REQUEUE, f"received {signal.Signals(flag.item()).name}{when}")

    def on_train_end(self, trainer):
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
