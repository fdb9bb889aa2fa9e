"""Stage 1, `pretrain data clean`: raw inputs → cleaned jsonl shards, report.json and a data card.

Two halves. Tasks (a few input files each) are read, normalized, filtered, hashed and PII-scrubbed
in worker processes (tasks.py), each leaving a completion marker in a work folder next to the
output, so a killed run redoes only unfinished tasks. Dedup (exact, then MinHash) runs in this
process over the tasks' records in input order, so the first copy is kept whatever the number of
workers. report.json accounts for every input document: kept + sum(dropped) == input_documents.
On Slurm (pretrain/launch/clean_array.py) an array job runs the tasks (`clean_share`) and a
dependent job runs `clean_corpus`, which then finds every task done.
"""

import multiprocessing
import shutil
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import orjson

from pretrain.data.card import write_card
from pretrain.data.config import CleanConfig
from pretrain.data.dedup import ExactIndex, NearDuplicateIndex
from pretrain.data.progress import Progress
from pretrain.data.readers import make_tasks
from pretrain.data.tasks import finished, run_task, task_stem
from pretrain.data.text import normalize_text
from pretrain.errors import ConfigError
from pretrain.io import atomic_dir, read_json, write_json

__all__ = ["clean_corpus", "cleaned_files", "read_cleaned", "normalize_text"]
DROP_REASONS = ("too_short", "too_long", "duplicate", "not_utf8")
WORK_FORMAT = 2  # the files a task leaves (2: with shingle hashes); older work folders are redone


def clean_corpus(cfg: CleanConfig, out_dir: str | Path) -> dict:
    """Read, filter, dedup and scrub cfg.inputs into out_dir/cleaned-*.jsonl; return the report."""
    tasks = make_tasks(cfg.inputs, cfg.glob, cfg.exclude, cfg.files_per_task)
    out_dir = Path(out_dir)
    work_dir = prepare_work_dir(out_dir, cfg)
    report = _empty_report()
    with atomic_dir(out_dir) as tmp:
        with _JsonlShards(tmp, cfg.docs_per_shard) as shards:
            dedup = _Dedup(cfg)
            for task, stats in _task_results(tasks, cfg, work_dir, report):
                _add_task_counts(report, stats)
                dedup.run(task_stem(work_dir, task), shards, report)
        dedup.finish(report)
        _finish_report(report)
        write_json(tmp / "report.json", report)
        write_card(tmp, cfg, report)
    shutil.rmtree(work_dir, ignore_errors=True)
    return report


def work_dir_of(out_dir: str | Path) -> Path:
    """The folder of task outputs and markers, beside the output."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.work"


def prepare_work_dir(out_dir: str | Path, cfg: CleanConfig) -> Path:
    """The work folder, emptied when the config changed since its tasks were made."""
    work_dir = work_dir_of(out_dir)
    if work_dir.exists() and not work_dir_current(out_dir, cfg):
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json(work_dir / "config.json", _work_settings(cfg))
    return work_dir


def work_dir_current(out_dir: str | Path, cfg: CleanConfig) -> bool:
    """Whether the work folder's tasks were made with this config (their markers count)."""
    config_file = work_dir_of(out_dir) / "config.json"
    return config_file.is_file() and read_json(config_file) == _work_settings(cfg)


def _work_settings(cfg: CleanConfig) -> dict:
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("workers", "progress", "docs_per_shard")}
    settings["work_format"] = WORK_FORMAT
    return settings


def clean_share(cfg: CleanConfig, out_dir: str | Path, share: int, shares: int) -> int:
    """Run the unfinished tasks of one share (index % shares == share) into the prepared work
    folder, as one Slurm array task does; the global half is left to `clean_corpus`. How many ran."""
    work_dir = work_dir_of(out_dir)
    if not work_dir_current(out_dir, cfg):
        raise ConfigError("data.cleaned_dir", f"{work_dir} was prepared for another config: submit the clean again")
    tasks = make_tasks(cfg.inputs, cfg.glob, cfg.exclude, cfg.files_per_task)
    pending = [t for t in tasks if t.index % shares == share and finished(work_dir, t) is None]
    with _results(pending, cfg, work_dir) as results:
        for stats in results:
            if "error" in stats:
                raise ConfigError(*stats["error"])
    return len(pending)


def _task_results(tasks, cfg: CleanConfig, work_dir: Path, report: dict) -> Iterator:
    """(task, counts) in input order; finished tasks from their markers, the rest from the workers."""
    done = {task.index: stats for task in tasks if (stats := finished(work_dir, task)) is not None}
    pending = [task for task in tasks if task.index not in done]
    report["resumed_tasks"] = len(done)
    progress = Progress.for_tasks(tasks, enabled=cfg.progress)
    with _results(pending, cfg, work_dir) as results:
        for task in tasks:
            stats = done.get(task.index) or next(results)
            if "error" in stats:
                raise ConfigError(*stats["error"])
            progress.update(task, stats)
            yield task, stats
    progress.close()


class _results:
    """Worker results in task order: a process pool when cfg.workers > 1, else this process."""

    def __init__(self, pending, cfg, work_dir):
        self.pool = None
        if cfg.workers > 1 and len(pending) > 1:
            # spawn, not fork: the parent may hold torch threads and open files (tests, the CLI).
            self.pool = multiprocessing.get_context("spawn").Pool(min(cfg.workers, len(pending)))
            self.iterator = self.pool.imap(_TaskRunner(cfg, work_dir), pending)
        else:
            self.iterator = (run_task(task, cfg, work_dir) for task in pending)

    def __enter__(self):
        return self.iterator

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


class _TaskRunner:
    def __init__(self, cfg, work_dir):
        self.cfg, self.work_dir = cfg, work_dir

    def __call__(self, task):
        return run_task(task, self.cfg, self.work_dir)


class _Dedup:
    """Global exact and near dedup over task records, in input order; writes what survives."""

    def __init__(self, cfg: CleanConfig):
        self.exact = ExactIndex()
        self.shingles = _ShingleFiles()
        self.near = NearDuplicateIndex(cfg.near_dedup, self.shingles.load) if cfg.uses("near_dedup") else None

    def run(self, stem: Path, shards, report: dict) -> None:
        task = self.shingles.add(stem) if self.near else None
        signatures = np.load(f"{stem}.sig.npy") if self.near else None
        with open(f"{stem}.jsonl", "rb") as f:
            for row, line in enumerate(f):
                record = orjson.loads(line)
                reason = self._reason(record, signatures, task, row)
                if reason:
                    _count_drop(report, reason, 1, record["bytes_in"])
                else:
                    _keep(report, record, shards)

    def _reason(self, record: dict, signatures, task: int, row: int) -> str | None:
        if self.exact.is_duplicate(bytes.fromhex(record["digest"])):
            return "duplicate"
        if self.near is not None:
            ref = task << 32 | row
            if self.near.match(signatures[row], self.shingles.load(ref), record["id"], ref) is not None:
                return "near_duplicate"
        return None

    def finish(self, report: dict) -> None:
        if self.near is not None:
            report["near_dedup"] = self.near.cluster_report()


class _ShingleFiles:
    """Each task's shingle hashes on disk, read back by reference (task << 32 | row).

    Memory-mapped, a few tasks open at a time: the index holds 8 bytes per kept document, not
    its shingles; reads happen for the current document and for LSH candidates only.
    """

    OPEN = 16

    def __init__(self):
        self.stems: list[str] = []
        self.open: dict[int, tuple] = {}

    def add(self, stem: Path) -> int:
        self.stems.append(str(stem))
        return len(self.stems) - 1

    def load(self, ref: int) -> np.ndarray:
        hashes, ends = self._task(ref >> 32)
        row = ref & 0xFFFFFFFF
        return hashes[(ends[row - 1] if row else 0) : ends[row]]

    def _task(self, task: int) -> tuple:
        if task not in self.open:
            if len(self.open) >= self.OPEN:
                self.open.clear()
            stem = self.stems[task]
            self.open[task] = (np.load(f"{stem}.shingles.npy", mmap_mode="r"), np.load(f"{stem}.shingle_ends.npy"))
        return self.open[task]


def _keep(report: dict, record: dict, shards) -> None:
    shards.write({"text": record["text"], "id": record["id"]})
    report["kept"] += 1
    report["bytes_out"] += len(record["text"].encode("utf-8"))
    for kind, count in record.get("pii", {}).items():
        report["pii"][kind] = report["pii"].get(kind, 0) + count


def _count_drop(report: dict, reason: str, docs: int, nbytes: int) -> None:
    report["dropped"][reason] = report["dropped"].get(reason, 0) + docs
    report["dropped_bytes"][reason] = report["dropped_bytes"].get(reason, 0) + nbytes


def _add_task_counts(report: dict, stats: dict) -> None:
    report["input_documents"] += stats["documents"]
    report["bytes_in"] += stats["bytes_in"]
    for reason, (docs, nbytes) in stats["dropped"].items():
        _count_drop(report, reason, docs, nbytes)
    for source, count in stats["per_input"].items():
        if report["inputs"] and report["inputs"][-1]["path"] == source:
            report["inputs"][-1]["documents"] += count
        else:
            report["inputs"].append({"path": source, "documents": count})
    report["empty_files"] += stats["empty_files"]
    report["unreadable_files"] += stats["unreadable_files"]


def _empty_report() -> dict:
    return {
        "input_documents": 0,
        "kept": 0,
        "dropped": {reason: 0 for reason in DROP_REASONS},
        "dropped_bytes": {reason: 0 for reason in DROP_REASONS},
        "inputs": [],
        "bytes_in": 0,
        "bytes_out": 0,
        "pii": {},
        "empty_files": [],
        "unreadable_files": [],
    }


def _finish_report(report: dict) -> None:
    accounted = report["kept"] + sum(report["dropped"].values())
    if accounted != report["input_documents"]:  # a bug, not a user mistake: fail loudly
        raise AssertionError(f"report does not add up: {accounted} != {report['input_documents']}")
    for item in report["unreadable_files"]:
        print(f"warning: {item['path']} is unreadable past some point ({item['error']}); "
              "documents before it were counted", file=sys.stderr)


def cleaned_files(cleaned_dir: str | Path) -> list[Path]:
    """The cleaned-*.jsonl files of a clean output, in order; ConfigError when there are none."""
    files = sorted(Path(cleaned_dir).glob("cleaned-*.jsonl"))
    if not files:
        raise ConfigError(
            "data.cleaned_dir", f"no cleaned-*.jsonl in {cleaned_dir}: run `pretrain data clean` first"
        )
    return files


def read_cleaned(files) -> Iterator[dict]:
    """Yield the {"text", "id"} objects of cleaned files in order."""
    for path in files:
        with open(path, "rb") as f:
            for line in f:
                yield orjson.loads(line)


class _JsonlShards:
    """Writes {"text", "id"} objects into cleaned-00000.jsonl, ... of docs_per_shard lines each."""

    def __init__(self, folder: Path, docs_per_shard: int):
        self.folder = folder
        self.docs_per_shard = docs_per_shard
        self.file = None
        self.shard = 0
        self.count = 0

    def write(self, obj: dict) -> None:
        if self.file is None or self.count == self.docs_per_shard:
            self._next_file()
        self.file.write(orjson.dumps(obj) + b"\n")
        self.count += 1

    def _next_file(self) -> None:
        self.close()
        self.file = open(self.folder / f"cleaned-{self.shard:05d}.jsonl", "wb")
        self.shard += 1
        self.count = 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
