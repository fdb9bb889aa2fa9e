"""Straggler detection: a rank that is persistently slower than the others, named with its host.

Data parallelism makes every rank's step as slow as the slowest one, so a bad GPU or node
hides in the average. What differs between ranks is the work done before the first
data-parallel collective: data wait and forward (see Trainer.train_step). Every `interval`
steps each rank's mean of that time is gathered; a rank slower than the median by more than
`margin` in `checks` gathers in a row is reported (stdout, metrics and a W&B alert), once
until it recovers.
"""

import socket
import statistics

import torch
import torch.distributed as dist

from pretrain.monitor.config import StragglerConfig
from pretrain.train.callbacks import Callback


class StragglerDetector(Callback):
    name = "stragglers"

    def __init__(self, cfg: StragglerConfig):
        self.cfg = cfg
        self.hosts: list[str] = []
        self.busy = 0.0
        self.steps = 0
        self.slow_checks: dict[int, int] = {}
        self.reported: set[int] = set()

    def on_train_start(self, trainer):
        self.hosts = [""] * dist.get_world_size()
        dist.all_gather_object(self.hosts, socket.gethostname())

    def on_step_end(self, trainer, metrics):
        self.busy += metrics["time_data"] + metrics["time_forward"]
        self.steps += 1
        if trainer.step % self.cfg.interval == 0:
            self._check(trainer, gather_times(self.busy / self.steps))
            self.busy, self.steps = 0.0, 0

    def _check(self, trainer, times: list[float]) -> None:
        median = statistics.median(times)
        for rank, seconds in enumerate(times):
            slow = seconds > median * (1 + self.cfg.margin)
            self.slow_checks[rank] = self.slow_checks.get(rank, 0) + 1 if slow else 0
            if not slow:
                self.reported.discard(rank)
            elif self.slow_checks[rank] >= self.cfg.checks and rank not in self.reported:
                self.reported.add(rank)
                self._report(trainer, rank, seconds, median)

    def _report(self, trainer, rank: int, seconds: float, median: float) -> None:
        text = (f"rank {rank} on {self.hosts[rank]} took {seconds:.3f}s of data wait + forward per step, "
                f"{seconds / median:.2f}x the median {median:.3f}s, in {self.slow_checks[rank]} checks in a row "
                f"(steps up to {trainer.step})")
        trainer.alert("straggler", text)
        trainer.log({"step": trainer.step, "straggler_rank": rank, "straggler_slowdown": seconds / median})


def gather_times(seconds: float) -> list[float]:
    """Every rank's number, in rank order (a gloo or NCCL all-gather of one float)."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    mine = torch.tensor([seconds], dtype=torch.float64, device=device)
    every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return [t.item() for t in every]
