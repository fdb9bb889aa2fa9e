"""The timing loop the step benchmarks share: seconds per step after warm-up, best of interleaved rounds."""

import time

import torch


def seconds_per_step(step, steps: int, warmup: int) -> float:
    """Wall seconds per call of step(), averaged over `steps` calls after `warmup` untimed ones
    (compilation, autotuning, allocator). On a GPU the queued work is waited for at both ends."""
    for _ in range(warmup):
        step()
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return (time.perf_counter() - started) / steps


def best_of_rounds(setups: dict, rounds: int, steps: int, warmup: int) -> dict:
    """Each setup's least seconds per step over the rounds. The rounds interleave the setups so that
    a slow spell of a shared machine hits every one of them, and the best round is the least disturbed."""
    best = dict.fromkeys(setups, float("inf"))
    for _ in range(rounds):
        for name, step in setups.items():
            best[name] = min(best[name], seconds_per_step(step, steps, warmup))
    return best


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
