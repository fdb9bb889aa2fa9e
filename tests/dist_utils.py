"""Run test code in several processes: `run_torchrun` (a script or module) and `spawn` (a function).

Both use gloo on 127.0.0.1 by default, so they work on CPU-only machines. Each launch costs
the children's imports (torch, megatron, deepspeed: several seconds): keep their number small.
"""

import os
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO_ROOT = Path(__file__).resolve().parents[1]

# Variables a parent process may carry from its own single-process group; torchrun and
# spawn set their own, and stale ones would confuse the children.
_DIST_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                   "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without distributed variables, the repo on PYTHONPATH, `env` on top."""
    merged = {k: v for k, v in os.environ.items() if k not in _DIST_VARIABLES}
    path = merged.get("PYTHONPATH")
    merged["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    merged.setdefault("OMP_NUM_THREADS", "1")
    merged.update(env or {})
    return merged


def run_torchrun(
    target: str | Path,
    nproc: int,
    args: Sequence[object] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    check: bool = True,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node nproc target args...`; target is a .py path or a module.

    With check=True a non-zero exit raises AssertionError carrying the output's tail.
    On timeout the whole process group (torchrun and its workers) is killed.
    """
    target = str(target)
    is_script = target.endswith(".py") or os.path.exists(target)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd += [target] if is_script else ["-m", target]
    cmd += [str(a) for a in args]
    proc = subprocess.Popen(cmd, env=child_env(env), cwd=cwd or REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"torchrun timed out after {timeout} s: {cmd}\n{_tail(stdout, stderr)}")
    result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"torchrun exited {result.returncode}: {cmd}\n{_tail(stdout, stderr)}")
    return result


def spawn(fn: Callable, nproc: int, *args, backend: str = "gloo", init_process_group: bool = True) -> list:
    """Run fn(*args) in nproc fresh processes; returns each rank's return value, by rank.

    The children see RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, and (with
    init_process_group) an initialized default group that is destroyed afterwards. fn must be
    importable by name (a module-level function) and its return value picklable. A child's
    exception is raised here as torch.multiprocessing's ProcessRaisedException.
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="spawn-") as tmp:
        mp.start_processes(_spawned, args=(fn, args, nproc, port, backend, init_process_group, tmp),
                           nprocs=nproc, start_method="spawn", join=True)
        return [torch.load(Path(tmp) / f"{rank}.pt", weights_only=False) for rank in range(nproc)]


def _spawned(rank, fn, args, nproc, port, backend, init_process_group, tmp):
    os.environ.update(child_env({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                                 "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(rank)}))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    if init_process_group:
        dist.init_process_group(backend, rank=rank, world_size=nproc)
    try:
        result = fn(*args)
    finally:
        if init_process_group and dist.is_initialized():
            dist.destroy_process_group()
    torch.save(result, Path(tmp) / f"{rank}.pt")


@contextmanager
def restored_environ() -> Iterator[None]:
    """Undo changes to os.environ on exit (init_distributed sets RANK etc. in one-process tests)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def single_process_group(tensor_parallel_size: int = 1, seed: int = 0) -> Iterator[object]:
    """In this process: a one-rank gloo group with megatron's parallel state; yields the layout."""
    from pretrain.parallel.config import ParallelConfig
    from pretrain.parallel.layout import destroy_distributed, init_distributed

    with restored_environ():
        layout = init_distributed(ParallelConfig(tensor_parallel_size=tensor_parallel_size), seed=seed)
        try:
            yield layout
        finally:
            destroy_distributed()


def _tail(stdout: str, stderr: str, chars: int = 6000) -> str:
    return f"--- stdout ---\n{stdout[-chars:]}\n--- stderr ---\n{stderr[-chars:]}"
