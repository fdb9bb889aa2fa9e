"""A progress line for long data stages: files, docs/s, MB/s, ETA (stderr, at most every 2 s)."""

import os
import sys
import time

INTERVAL_S = 2.0


class Progress:
    """Counts finished work against the input's total bytes; prints one line per update interval."""

    def __init__(self, stage: str, total_files: int, total_bytes: int, enabled: bool = True, stream=None):
        self.stage = stage
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.total_files, self.total_bytes = total_files, total_bytes
        self.files = self.docs = self.bytes = 0
        self.start = self.last = time.monotonic()

    @classmethod
    def for_tasks(cls, tasks, enabled: bool = True, stream=None) -> "Progress":
        """The cleaning stage's: its tasks' input files."""
        total_bytes = sum(os.stat(name).st_size for t in tasks for name in t.files)
        return cls("clean", sum(len(t.files) for t in tasks), total_bytes, enabled, stream)

    def update(self, task, stats: dict) -> None:
        """A cleaning task finished, with its stats."""
        self.advance(len(task.files), stats["documents"], sum(stamp[1] for stamp in stats["files"]))

    def advance(self, files: float, docs: int, nbytes: int) -> None:
        self.files += files
        self.docs += docs
        self.bytes += nbytes
        now = time.monotonic()
        if self.enabled and now - self.last >= INTERVAL_S:
            self.last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.bytes / elapsed
        eta = (self.total_bytes - self.bytes) / rate if rate > 0 else 0.0
        return (f"{self.stage}: {self.files:g}/{self.total_files} files, {self.docs / elapsed:,.0f} docs/s, "
                f"{rate / 1e6:.1f} MB/s, ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")

    def close(self) -> None:
        if self.enabled and self.files and time.monotonic() - self.start >= INTERVAL_S:
            print(self.line(time.monotonic()), file=self.stream, flush=True)
