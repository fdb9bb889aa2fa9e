"""End the job when a rank stops making progress, instead of hanging until the time limit.

A dead peer or a stuck collective blocks every other rank inside a collective call, where no
Python code of theirs runs. A thread per rank watches the time since its last progress (a
step started, a micro-batch's backward done, a step finished); past `train.step_timeout` it
exits the process (`exit_codes.HUNG`), and the launcher then stops the rest of the job. Each
rank also posts its position (step, micro-batch) to the job's key-value store (the one
torch.distributed rendezvoused through), so the message names the ranks that fell behind:
the others are waiting for them in a collective.
"""

import os
import sys
import threading
import time

import torch.distributed as dist

from pretrain import exit_codes
from pretrain.train.callbacks import Callback


class StepWatchdog(Callback):
    name = "step_watchdog"

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.store = dist.distributed_c10d._get_default_store()
        self.position = (0, 0)
        self.last_progress = time.monotonic()
        self._stop = threading.Event()

    def on_train_start(self, trainer):
        trainer.on_progress = self._beat
        self._beat(trainer.step, 0)
        threading.Thread(target=self._watch, name="step-watchdog", daemon=True).start()

    def on_step_end(self, trainer, metrics):
        self._beat(trainer.step, 0)

    def on_rollback(self, trainer):
        self._beat(trainer.step, 0)

    def on_train_end(self, trainer):
        self._stop.set()

    def _beat(self, step: int, micro_batch: int) -> None:
        # (step, -1): step started; (step, i): micro-batch i done; (step, 0) after on_step_end
        # reads as "step done" because the next start posts (step + 1, -1).
        self.position = (step, micro_batch)
        self.last_progress = time.monotonic()
        self.store.set(f"pretrain/position/{self.rank}", f"{step} {micro_batch}")

    def _watch(self) -> None:
        while not self._stop.wait(min(5.0, self.timeout / 4)):
            idle = time.monotonic() - self.last_progress
            if idle > self.timeout:
                print(f"pretrain: error: rank {self.rank} made no progress for {idle:.0f}s in step {self.position[0]} "
                      f"(train.step_timeout={self.timeout:g}); {self._behind()}; ending the job",
                      file=sys.stderr, flush=True)
                os._exit(exit_codes.HUNG)

    def _behind(self) -> str:
        """Which ranks are furthest behind: the dead or stuck ones."""
        try:
            positions = {rank: tuple(map(int, self.store.get(f"pretrain/position/{rank}").split()))
                         for rank in range(self.world_size)}
        except Exception as error:  # the store lives on rank 0's node and may be gone with it
            return f"the other ranks' progress is unknown ({error})"
        lowest = min(positions.values())
        if lowest == max(positions.values()):
            return f"every rank is at step {lowest[0]}: a collective itself is stuck"
        behind = [rank for rank, position in positions.items() if position == lowest]
        return f"stuck or dead: rank {', '.join(map(str, behind))} (behind the others, in step {lowest[0]})"
