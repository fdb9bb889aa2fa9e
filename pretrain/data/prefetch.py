"""Global batches prepared by a background thread while the training step runs.

The thread only computes TrainBatches.global_batch(start), a pure function of the position, for
the positions after consumed_samples. Only what the trainer takes advances consumed_samples, so
a checkpoint never counts a prepared batch as read, and a resumed run reads the same samples
with or without prefetching.
"""

import collections
import queue
import threading

import torch

from pretrain.data.loader import TrainBatches


class PrefetchBatches:
    """The batches of a TrainBatches, in the same order, read `depth` global batches ahead."""

    def __init__(self, batches: TrainBatches, depth: int = 1):
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self.batches = batches
        self.depth = depth
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: collections.deque[int] = collections.deque()  # positions asked for, oldest first
        self._closed = False
        # The thread's CUDA calls (page-locked allocations) must use this rank's GPU, not GPU 0.
        self._device = torch.cuda.current_device() if batches.pin_memory else None
        # A daemon: a run that ends without close() (a crash) does not wait for it.
        self._thread = threading.Thread(target=self._prepare, name="batch-prefetch", daemon=True)
        self._thread.start()

    def _prepare(self) -> None:
        if self._device is not None:
            torch.cuda.set_device(self._device)
        while (start := self._requests.get()) is not None:
            try:
                self._results.put((self.batches.global_batch(start), None))
            except BaseException as error:  # raised in the trainer by the call that wants this batch
                self._results.put((None, error))

    @property
    def consumed_samples(self) -> int:
        return self.batches.consumed_samples

    @consumed_samples.setter
    def consumed_samples(self, value: int) -> None:
        # Batches prepared for the old position are dropped by the next call.
        self.batches.consumed_samples = value

    def next_global_batch(self) -> list[dict]:
        """As TrainBatches.next_global_batch; the batch was usually prepared during the last step."""
        if self._closed:
            raise RuntimeError("next_global_batch after close()")
        start = self.consumed_samples
        if self._pending and self._pending[0] != start:  # resumed or rolled back since they were asked for
            self._drop_pending()
        step = self.batches.global_batch_size
        self._ask_for(start, 1)
        self._pending.popleft()
        batch, error = self._results.get()
        if error is not None:
            raise error
        self._ask_for(start + step, self.depth)  # read while this batch's step runs
        self.batches.consumed_samples = start + step
        return batch

    def _ask_for(self, start: int, count: int) -> None:
        """Have the `count` batches from position `start` on asked for (the first ones may be already)."""
        while len(self._pending) < count:
            position = start + len(self._pending) * self.batches.global_batch_size
            self._requests.put(position)
            self._pending.append(position)

    def _drop_pending(self) -> None:
        for _ in range(len(self._pending)):
            self._results.get()
        self._pending.clear()

    def __iter__(self):
        return self

    def __next__(self) -> list[dict]:
        return self.next_global_batch()

    def state_dict(self) -> dict:
        """The samples the trainer took, never those prepared ahead."""
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)

    def close(self) -> None:
        """Stop the thread once it has read the batches already asked for (later calls do nothing)."""
        if not self._closed:
            self._closed = True
            self._requests.put(None)
            self._thread.join()
