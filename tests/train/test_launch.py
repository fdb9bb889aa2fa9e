"""The local launcher: a stop signal that came while `pretrain train` started up ends it before any worker starts."""

import os
import signal

from pretrain import exit_codes
from pretrain.train import startup_signals
from pretrain.train.launch import launch_local


def test_a_stop_signal_before_the_workers_start_asks_for_a_requeue_and_starts_none(monkeypatch, capfd):
    monkeypatch.setattr(startup_signals, "_received", None)
    handlers = {signum: signal.getsignal(signum) for signum in startup_signals.STOP_SIGNALS}
    try:
        startup_signals.record_stop_signals()
        os.kill(os.getpid(), signal.SIGUSR1)  # as Slurm's --signal=B:USR1 while the job imports torch
        # Started workers would reject this command: exit code 2, not the requeue code.
        code = launch_local(2, ["train", "no_such_key=1"])
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert code == exit_codes.REQUEUE
    assert "received SIGUSR1 before the workers started; nothing to save" in capfd.readouterr().err
