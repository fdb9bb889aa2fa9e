"""Launch `pretrain train` workers on this machine with torchrun's elastic agent.

The agent runs inside this process (rather than as `python -m torch.distributed.run`) so a
Ctrl-C or a failed worker ends with one line and the workers' own exit code, instead of the
agent's traceback. The agent forwards SIGINT and SIGTERM to the workers itself; SIGUSR1 (the
"save and stop" signal) is forwarded here. A stop signal that came while this process started
(recorded by `pretrain.train.startup_signals`) ends it before any worker starts.
"""

import os
import signal
import sys

import psutil

from pretrain import exit_codes
from pretrain.train import startup_signals


def launch_local(nproc: int, worker_args: list[str]) -> int:
    """Run `python -m pretrain.cli WORKER_ARGS` in `nproc` processes; return their exit code."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # Each worker gets its share of the cores; torch would otherwise start one thread per core
    # in every process and oversubscribe the machine.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = torchrun.parse_args(["--standalone", f"--nproc-per-node={nproc}", "--no-python",
                                sys.executable, "-m", "pretrain.cli", *worker_args])
    signal.signal(signal.SIGUSR1, _forward_to_workers)
    startup_signals.stop_recording(signal.SIGTERM)  # the agent installs its own handler as it starts the workers
    if (signum := startup_signals.received()) is not None:
        print(f"pretrain: received {signal.Signals(signum).name} before the workers started; nothing to save",
              file=sys.stderr)
        return exit_codes.REQUEUE
    try:
        torchrun.run(args)
        return 0
    except SignalException as stop:
        # The agent sent the signal on to the workers, which save and stop on SIGTERM.
        return exit_codes.REQUEUE if stop.sigval == signal.SIGTERM else exit_codes.INTERRUPTED
    except ChildFailedError as error:
        return _exit_code_of(error.failures)


def _forward_to_workers(signum, frame) -> None:
    # The agent starts each worker in its own session, so a signal to this process reaches
    # no worker unless passed on.
    for child in psutil.Process().children():
        child.send_signal(signum)


def _exit_code_of(failures: dict) -> int:
    """A documented code if any worker gave one (others may have been stopped by the agent)."""
    codes = {rank: failure.exitcode for rank, failure in sorted(failures.items())}
    for code in (exit_codes.BAD_INPUT, exit_codes.STORAGE, exit_codes.HUNG, exit_codes.DIVERGED,
                 exit_codes.REQUEUE, exit_codes.INTERRUPTED):
        if code in codes.values():
            return code
    rank, code = next(iter(codes.items()))
    print(f"pretrain: worker rank {rank} exited with code {code}", file=sys.stderr)
    return code if code > 0 else 1
