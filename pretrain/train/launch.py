"""Launch `pretrain train` workers on this machine with torchrun's elastic agent.

The agent runs inside this process (rather than as `python -m torch.distributed.run`) so a
Ctrl-C or a failed worker ends with one line and the workers' own exit code, instead of the
agent's traceback.
"""

import os
import sys

from pretrain import exit_codes


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
    try:
        torchrun.run(args)
        return 0
    except SignalException:
        return exit_codes.INTERRUPTED
    except ChildFailedError as error:
        rank, failure = min(error.failures.items())
        print(f"pretrain: worker rank {rank} exited with code {failure.exitcode}", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
