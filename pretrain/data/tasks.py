"""The parallel half of cleaning: one task's files → filtered, PII-scrubbed records, hashes and signatures.

A task writes task-NNNNNN.jsonl (kept records), task-NNNNNN.sig.npy (MinHash signatures) and
task-NNNNNN.shingles.npy / .shingle_ends.npy (each record's sorted shingle hashes, concatenated,
for the exact Jaccard check of near-duplicate candidates) into the work folder, then
task-NNNNNN.done.json last: the completion marker, with the task's counts and the size and mtime
of each file it read. A re-run skips tasks whose marker matches and redoes the rest.
"""

import os
from pathlib import Path

import numpy as np
import orjson

from pretrain.data.dedup import content_digest, signature_and_shingles
from pretrain.data.filters import filter_reason
from pretrain.data.pii import scrub
from pretrain.data.readers import Task, read_task
from pretrain.data.text import normalize_text
from pretrain.errors import ConfigError
from pretrain.io import write_json

_CONTROL = {chr(c) for c in range(32) if chr(c) not in "\t\n"} | {"\x7f"}


def task_stem(work_dir: Path, task: Task) -> Path:
    return Path(work_dir) / f"task-{task.index:06d}"


def file_stamps(task: Task) -> list:
    """(path, size, mtime_ns) of each file: a changed input invalidates its task's marker."""
    return [[name, os.stat(name).st_size, os.stat(name).st_mtime_ns] for name in task.files]


def finished(work_dir: Path, task: Task) -> dict | None:
    """The marker's counts when the task completed on these same files, else None."""
    marker = Path(f"{task_stem(work_dir, task)}.done.json")
    if not marker.is_file():
        return None
    stats = orjson.loads(marker.read_bytes())
    return stats if stats.get("files") == file_stamps(task) else None


def run_task(task: Task, cfg, work_dir: Path) -> dict:
    """Filter one task into the work folder and mark it complete; return its counts.

    A ConfigError comes back as {"error": [key, message]}: it has to cross a process boundary.
    """
    try:
        return _run_task(task, cfg, Path(work_dir))
    except ConfigError as e:
        return {"error": [e.key, e.message]}


def _run_task(task: Task, cfg, work_dir: Path) -> dict:
    stats = {"index": task.index, "documents": 0, "bytes_in": 0, "dropped": {}, "per_input": {},
             "unreadable_files": [], "empty_files": [], "records": 0}
    signatures, hashes = [], []
    stem = task_stem(work_dir, task)
    with open(f"{stem}.jsonl", "wb") as out:
        for name, doc in read_task(task, cfg):
            _count_input(stats, task, name, doc)
            record = _process(doc, cfg)
            if isinstance(record, str):
                _drop(stats, record, doc.nbytes)
                continue
            if cfg.uses("near_dedup"):
                signature, shingle_hashes = signature_and_shingles(record.pop("signature_text"), cfg.near_dedup)
                signatures.append(signature)
                hashes.append(shingle_hashes)
            out.write(orjson.dumps(record) + b"\n")
            stats["records"] += 1
    num_perm = cfg.near_dedup.num_perm
    np.save(f"{stem}.sig.npy", np.array(signatures, dtype=np.uint32).reshape(len(signatures), num_perm))
    np.save(f"{stem}.shingles.npy", np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint32))
    np.save(f"{stem}.shingle_ends.npy", np.cumsum([len(h) for h in hashes], dtype=np.int64))
    stats["empty_files"] = [n for n in task.files if task.folder is None and os.stat(n).st_size == 0]
    stats["files"] = file_stamps(task)
    write_json(f"{stem}.done.json", stats)
    return stats


def _count_input(stats: dict, task: Task, name: str, doc) -> None:
    source = task.folder or name
    if doc.reason and doc.reason.startswith("unreadable_file"):
        # Not a document: the rest of a corrupt archive. The file is listed; no document is invented.
        stats["unreadable_files"].append({"path": name, "error": doc.reason.split(": ", 1)[1]})
        return
    stats["documents"] += 1
    stats["bytes_in"] += doc.nbytes
    stats["per_input"][source] = stats["per_input"].get(source, 0) + 1


def _drop(stats: dict, reason: str, nbytes: int) -> None:
    if reason.startswith("unreadable_file"):
        return
    docs, total = stats["dropped"].get(reason, (0, 0))
    stats["dropped"][reason] = (docs + 1, total + nbytes)


def _process(doc, cfg) -> dict | str:
    """The record to dedup and keep, or the reason the document is dropped."""
    if doc.reason:
        return doc.reason
    text = normalize_text(doc.text)
    if _control_count(text) > cfg.max_control_fraction * max(len(text), 1):
        return "binary"
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from a JSON "\ud800" escape
        return "not_utf8"
    if reason := filter_reason(text, cfg):
        return reason
    record = {"id": doc.id, "digest": content_digest(data).hex(), "bytes_in": doc.nbytes, "signature_text": text}
    if cfg.uses("pii"):
        text, counts = scrub(text, cfg.pii.kinds)
        record["pii"] = {kind: n for kind, n in counts.items() if n}
    record["text"] = text
    return record


def _control_count(text: str) -> int:
    # str.count runs in C; 32 passes cost less than one Python loop over the characters.
    return sum(text.count(c) for c in _CONTROL)
