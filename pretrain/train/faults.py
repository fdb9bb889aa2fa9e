"""Fault injection for the resilience tests: kill this rank at a named point of a step.

`PRETRAIN_INJECT_KILL=RANK:STEP:POINT` makes that rank SIGKILL itself when it reaches POINT
of step STEP (1-based). Points: forward, backward, optimizer (before the step's last
`engine.step()`, where the update happens), checkpoint (DeepSpeed's files written, manifest
not yet), seal (manifest written, `latest` not yet moved). Unset, it costs a dict lookup.
"""

import functools
import os
import signal

INJECT_KILL = "PRETRAIN_INJECT_KILL"
POINTS = ("forward", "backward", "optimizer", "checkpoint", "seal")


@functools.cache
def _target() -> tuple[int, int, str] | None:
    spec = os.environ.get(INJECT_KILL)
    if not spec:
        return None
    rank, step, point = spec.split(":")
    if point not in POINTS:
        raise ValueError(f"{INJECT_KILL}: unknown point {point!r}; one of {', '.join(POINTS)}")
    return int(rank), int(step), point


def kill_point(point: str, step: int) -> None:
    """Die here, abruptly, if the injected fault names this rank, step and point."""
    target = _target()
    if target and target == (int(os.environ.get("RANK", 0)), step, point):
        os.kill(os.getpid(), signal.SIGKILL)
