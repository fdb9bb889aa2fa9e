"""Timing a training step's parts without stalling the GPU.

Kernels run asynchronously: the CPU queues a micro-batch's forward and backward and moves on.
Synchronizing to read a clock after each part would empty that queue every micro-batch, so on a
GPU each part is bracketed by CUDA events on the current stream and the events are read once,
when the step is done (its metrics need the GPU's results then anyway). On a CPU the clock is read
directly. Events time the current stream: work DeepSpeed runs on a side stream (gradient
reduction with overlap_comm) counts in the part that waits for it, usually the optimizer step.
"""

import time

import torch

PARTS = ("time_forward", "time_backward", "time_optimizer")


class StepTimer:
    """Seconds spent in each part of one step, summed over micro-batches."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self._spans: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    def mark(self):
        """A point in the step: a recorded CUDA event on a GPU, the clock on a CPU."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def add(self, part: str, start):
        """Count the time from `start` to now as `part`; returns now, where the next part starts."""
        end = self.mark()
        if self.cuda:
            self._spans.append((part, start, end))
        else:
            self.seconds[part] += end - start
        return end

    def totals(self) -> dict[str, float]:
        """Every part's seconds; on a GPU this waits for the last event (the step's end)."""
        if self._spans:
            self._spans[-1][2].synchronize()  # the last event: every earlier one has happened too
        for part, start, end in self._spans:
            self.seconds[part] += start.elapsed_time(end) / 1000  # milliseconds
        self._spans.clear()
        return dict(self.seconds)
