"""Asynchronous checkpoints: training waits only while the state is copied to host memory.

DeepSpeed builds its state dicts as usual, but through `HostCopyEngine`, a checkpoint engine
whose `save` copies every tensor to CPU memory and queues the file instead of writing it.
A thread per rank then writes the queued files, and the ranks agree over a gloo group of
their own (the training's collectives keep the default group to themselves) that every
file is on disk before the manifest is written and `latest` moves: the same protocol as a
blocking save. A crash mid-write leaves the previous checkpoint in force. One write is in
flight at a time: the next save, a rollback, a stop and the end of training wait for it.
"""

import copy
import threading

import torch
import torch.distributed as dist
from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine

from pretrain.train.faults import kill_point

_writers: list["AsyncCheckpointWriter"] = []


class StorageError(RuntimeError):
    """A background write failed on some rank; `step` is the checkpoint that was not written."""

    def __init__(self, step: int, message: str):
        self.step = step
        super().__init__(message)


def to_host(obj):
    """A copy of a state dict whose tensors live in CPU memory and share nothing with training."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((key, to_host(value)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_host(value) for value in obj)
    return copy.deepcopy(obj)  # scalars, strings, small config objects


class HostCopyEngine(CheckpointEngine):
    """DeepSpeed checkpoint engine that keeps each file's state in host memory instead of writing it."""

    def __init__(self, zipfile_serialization: bool):
        super().__init__()
        self.name = "host_copy"
        self.zipfile_serialization = zipfile_serialization  # the file format the engine it stands in for writes
        self.queued: list[tuple[str, dict, bool]] = []

    def create(self, info):
        pass

    def save(self, state_dict, path: str):
        self.queued.append((path, to_host(state_dict), self.zipfile_serialization))

    def load(self, path: str, map_location=None):
        raise RuntimeError("the host-copy checkpoint engine only saves")

    def commit(self, info):
        return True

    def preserves_storage_sharing(self):
        return False  # to_host already copies each view into a tensor of its own


def capture(engine, save) -> list[tuple[str, dict, bool]]:
    """Run `save()` (DeepSpeed's save_checkpoint and any file written through `engine.checkpoint_engine`)
    with the host-copy engine: the files it would write, in memory."""
    original = engine.checkpoint_engine
    engine.checkpoint_engine = HostCopyEngine(getattr(original, "zipfile_serialization", True))
    try:
        save()
        return engine.checkpoint_engine.queued
    finally:
        engine.checkpoint_engine = original


class AsyncCheckpointWriter:
    """Writes one checkpoint at a time in a background thread; all ranks create it together."""

    def __init__(self):
        self.group = dist.new_group(backend="gloo")  # collective: every rank, same order
        self._thread: threading.Thread | None = None
        self._error: StorageError | None = None
        _writers.append(self)

    def start(self, step: int, files: list[tuple[str, dict, bool]], commit) -> None:
        """Write `files` in the background, then, once every rank's are durable, call commit(group)."""
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(step, files, commit),
                                        name=f"checkpoint-writer-{step}", daemon=True)
        self._thread.start()

    def _write(self, step: int, files, commit) -> None:
        problem = None
        try:
            for index, (path, state, zipfile_serialization) in enumerate(files):
                torch.save(state, path, _use_new_zipfile_serialization=zipfile_serialization)
                if index == 0:
                    kill_point("async_write", step)
        except Exception as error:  # any failure must reach the gather below, or the other ranks wait in it
            problem = _describe(error)
        files.clear()  # let the host copy go as soon as it is on disk
        problems = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(problems, problem, group=self.group)
        failed = [(rank, p) for rank, p in enumerate(problems) if p]
        if failed:
            rank, message = failed[0]
            self._error = StorageError(step, f"rank {rank}: {message}")
            return
        try:
            commit(self.group)
        except Exception as error:  # sealing or moving `latest` failed: reported by wait(), as a write failure is
            self._error = StorageError(step, f"rank {dist.get_rank()}: {_describe(error)}")

    def wait(self) -> None:
        """Block until the write in flight (if any) is committed; raise StorageError if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @property
    def pending(self) -> bool:
        """A write was started and not yet waited for."""
        return self._thread is not None or self._error is not None


def wait_for_writes() -> None:
    """Wait for every background checkpoint write of this process (before reading checkpoints)."""
    for writer in _writers:
        writer.wait()


def _describe(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} ({error.filename})"
    return (str(error).splitlines() or [type(error).__name__])[0]
