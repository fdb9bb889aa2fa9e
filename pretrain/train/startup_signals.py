"""Record a stop signal (SIGUSR1, SIGTERM) that arrives while a training process starts up.

The trainer's own handler (`pretrain.train.signals`) is installed only when training begins:
after the imports, the process groups, the model, the engine and the checkpoint load, which
take minutes at scale. Until then SIGUSR1's default action would kill the process with
nothing saved, and Slurm's requeue would never run. So `pretrain train` calls
`record_stop_signals` first thing; the trainer takes over the recorded signal when it starts.
No torch here: importing this module must cost nothing.
"""

import signal

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

_received: int | None = None
_previous = {}  # the handling each signal had before


def record_stop_signals() -> None:
    """From now on a stop signal is only recorded (see `received`) until someone installs a handler."""
    for signum in STOP_SIGNALS:
        _previous[signum] = signal.signal(signum, _record)


def stop_recording(signum: int) -> None:
    """Give `signum` back the handling it had before `record_stop_signals`."""
    signal.signal(signum, _previous.get(signum, signal.SIG_DFL))


def _record(signum, frame) -> None:
    global _received
    if _received is None:
        _received = signum


def received() -> int | None:
    """The first stop signal recorded, if any."""
    return _received
