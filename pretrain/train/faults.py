"""Fault injection for the resilience tests: kill this rank at a named point of a step.

`PRETRAIN_INJECT_KILL=RANK:STEP:POINT` makes that rank SIGKILL itself when it reaches POINT
of step STEP (1-based). Points: forward, backward, optimizer (before the step's last
`engine.step()`, where the update happens), checkpoint (DeepSpeed's files written, manifest
not yet), seal (manifest written, `latest` not yet moved), async_write (with
train.checkpoint.async_save: in the background writer, after its first file). With async
saves, checkpoint and seal are reached in the background thread too. Unset, it costs a dict lookup.

`PRETRAIN_INJECT_SPIKE_STEPS=4,5` multiplies those steps' losses (and so their gradients) by
SPIKE_FACTOR on every rank: a loss spike for the spike guard to catch.

`PRETRAIN_PAUSE_AT_STARTUP=DIR` makes every rank, with its model and engine built and its
checkpoint not yet loaded, write DIR/rank_R (holding its pid) and wait there until a stop
signal has been recorded (at most PAUSE_LIMIT seconds): a test signals the run once every
marker exists, which is then certainly during start-up.

`PRETRAIN_DUMP_STATE=DIR` makes every save and load write the full fp32 weights and Adam
moments (`pretrain.checkpoint.elastic.full_state`) to DIR/saved_step_N.pt or
DIR/loaded_step_N.pt, so a test can check that a change of layout carried them over exactly.
"""

import functools
import os
import signal
import time
from pathlib import Path

from pretrain.train import startup_signals

INJECT_KILL = "PRETRAIN_INJECT_KILL"
DUMP_STATE = "PRETRAIN_DUMP_STATE"
INJECT_SPIKE = "PRETRAIN_INJECT_SPIKE_STEPS"
PAUSE_AT_STARTUP = "PRETRAIN_PAUSE_AT_STARTUP"
PAUSE_LIMIT = 300
SPIKE_FACTOR = 10.0
POINTS = ("forward", "backward", "optimizer", "checkpoint", "seal", "async_write")


@functools.cache
def _target() -> tuple[int, int, str] | None:
    spec = os.environ.get(INJECT_KILL)
    if not spec:
        return None
    rank, step, point = spec.split(":")
    if point not in POINTS:
        raise ValueError(f"{INJECT_KILL}: unknown point {point!r}; one of {', '.join(POINTS)}")
    return int(rank), int(step), point


@functools.cache
def _spike_steps() -> frozenset[int]:
    return frozenset(int(step) for step in os.environ.get(INJECT_SPIKE, "").split(",") if step)


def inject_spike(loss, step: int):
    """The loss, times SPIKE_FACTOR at an injected spike's step."""
    return loss * SPIKE_FACTOR if step in _spike_steps() else loss


def kill_point(point: str, step: int) -> None:
    """Die here, abruptly, if the injected fault names this rank, step and point."""
    target = _target()
    if target and target == (int(os.environ.get("RANK", 0)), step, point):
        os.kill(os.getpid(), signal.SIGKILL)


def pause_at_startup() -> None:
    """Write the start-up marker and wait for a stop signal, if a test asks for it."""
    folder = os.environ.get(PAUSE_AT_STARTUP)
    if not folder:
        return
    Path(folder, f"rank_{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
    deadline = time.monotonic() + PAUSE_LIMIT
    while startup_signals.received() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def dump_state_if_asked(engine, name: str) -> None:
    """Write the layout-free training state to $PRETRAIN_DUMP_STATE/NAME.pt (all ranks call this)."""
    folder = os.environ.get(DUMP_STATE)
    if not folder:
        return
    import torch
    import torch.distributed as dist

    from pretrain.checkpoint.elastic import full_state

    state = full_state(engine)
    if dist.get_rank() == 0:
        torch.save(state, os.path.join(folder, f"{name}.pt"))
