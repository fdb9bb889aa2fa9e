"""Readers of raw inputs: jsonl (plain, .gz, .zst), parquet and folders of text files.

Inputs are expanded (globs, folders) into tasks: a few files handled and marked complete together.
A reader yields `Doc`s; a document it cannot use is still yielded, with the reason it is dropped,
so the report counts every input document. Only a mistake that spoils a whole file (the text
field absent from all of it, a file that is mostly not JSON) is a ConfigError naming file and key.
"""

import fnmatch
import glob
import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import orjson

from pretrain.errors import ConfigError

KEY = "data.clean.inputs"
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst")
FILE_SUFFIXES = JSONL_SUFFIXES + (".parquet",)
_SKIP_CHUNK = 1 << 20


@dataclass
class Doc:
    id: str
    text: str | None
    """None when the document is dropped at reading; `reason` says why."""
    nbytes: int
    reason: str | None = None


@dataclass
class Task:
    """Files handled by one worker call and marked complete together, in input order."""

    index: int
    files: list[str]
    folder: str | None = None
    """The input folder the files belong to (for ids relative to it), or None for data files."""


def make_tasks(inputs: list[str], pattern: str, exclude: list[str], files_per_task: int) -> list[Task]:
    """Expand inputs (files, folders, globs) into tasks in a fixed order: sorted inputs, sorted files."""
    if not inputs:
        raise ConfigError(KEY, "no inputs given: list .jsonl[.gz|.zst] or .parquet files, folders or globs")
    tasks: list[Task] = []
    for path in _expand(inputs):
        if path.is_dir():
            files = _folder_files(path, pattern, exclude)
            for start in range(0, len(files), files_per_task):
                tasks.append(Task(len(tasks), files[start : start + files_per_task], str(path)))
        else:
            tasks.append(Task(len(tasks), [str(path)]))
    return tasks


def _expand(inputs: list[str]) -> list[Path]:
    paths = set()
    for item in inputs:
        if glob.has_magic(item):
            matches = glob.glob(item, recursive=True)
            if not matches:
                raise ConfigError(KEY, f"no file matches {item}")
            paths.update(Path(m) for m in matches)
        else:
            paths.add(Path(item))
    for path in sorted(paths):
        if not path.exists():
            raise ConfigError(KEY, f"no such file or folder: {path}")
        if path.is_file() and not path.name.endswith(FILE_SUFFIXES):
            raise ConfigError(KEY, f"{path}: expected a .jsonl, .jsonl.gz, .jsonl.zst or .parquet file, or a folder")
    return sorted(paths)


def _folder_files(folder: Path, pattern: str, exclude: list[str]) -> list[str]:
    files = (p for p in folder.glob(pattern) if p.is_file())
    return sorted(str(p) for p in files if not _excluded(p.relative_to(folder), exclude))


def _excluded(relative: Path, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(relative.as_posix(), pattern) for pattern in patterns)


def read_task(task: Task, cfg):
    """Yield (file, Doc) for every document of a task's files, in order."""
    for name in task.files:
        path = Path(name)
        if task.folder is not None:
            yield name, read_text_file(path, Path(task.folder), cfg.max_doc_bytes)
        elif path.name.endswith(".parquet"):
            for doc in read_parquet(path, cfg.text_key, cfg.id_key):
                yield name, doc
        else:
            for doc in read_jsonl(path, cfg.text_key, cfg.id_key, cfg.max_doc_bytes, cfg.max_bad_line_fraction):
                yield name, doc


def read_text_file(path: Path, folder: Path, max_bytes: int) -> Doc:
    """One document per text file; a file over max_bytes is not read."""
    doc_id = f"{folder}:{path.relative_to(folder).as_posix()}"
    size = path.stat().st_size
    if size > max_bytes:
        return Doc(doc_id, None, size, "too_large")
    raw = path.read_bytes()
    text = decode(raw)
    return Doc(doc_id, text, len(raw), None if text is not None else "not_utf8")


def read_jsonl(path: Path, text_key: str, id_key: str, max_bytes: int, max_bad_fraction: float):
    """Documents of a jsonl file; bad lines come out with a reason, whole-file mistakes raise."""
    counts = {"lines": 0, "bad_json": 0, "missing_text": 0}
    first_bad = None
    try:
        with _open_binary(path) as f:
            for line_number, raw, nbytes in _lines(f, max_bytes):
                counts["lines"] += 1
                doc = _jsonl_doc(raw, f"{path}:{line_number}", text_key, id_key, nbytes)
                if doc.reason in ("bad_json", "missing_text"):
                    counts[doc.reason] += 1
                    first_bad = first_bad or line_number
                yield doc
    except (EOFError, OSError, zlib.error) as e:
        # A truncated or corrupt archive: what was read is counted; the rest is reported as unreadable.
        yield Doc(f"{path}:unreadable", None, 0, f"unreadable_file: {type(e).__name__}: {e}")
    _check_whole_file(path, counts, first_bad, text_key, max_bad_fraction)


def _check_whole_file(path: Path, counts: dict, first_bad, text_key: str, max_bad_fraction: float) -> None:
    lines = counts["lines"]
    if lines and counts["missing_text"] == lines - counts["bad_json"] and counts["missing_text"]:
        raise ConfigError("data.clean.text_key", f"{path}: no line has the field '{text_key}'")
    if lines and counts["bad_json"] > max_bad_fraction * lines:
        raise ConfigError(KEY, f"{path}: {counts['bad_json']} of {lines} lines are not valid JSON "
                               f"(first at {path}:{first_bad})")


def _open_binary(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def _lines(f, max_bytes: int):
    """(line number, raw line or None when longer than max_bytes) for each non-blank line.

    Lines are read at most max_bytes + 1 at a time, so a 100 MB line never sits in memory whole.
    """
    # zstandard's reader has no readline of its own: buffer it.
    stream = f if hasattr(f, "peek") else io.BufferedReader(f, 1 << 20)
    line_number = 0
    while raw := stream.readline(max_bytes + 1):
        line_number += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            yield line_number, None, _skip_rest_of_line(stream) + len(raw)
        elif raw.strip():
            yield line_number, raw, len(raw)


def _skip_rest_of_line(stream) -> int:
    skipped = 0
    while chunk := stream.readline(_SKIP_CHUNK):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def _jsonl_doc(raw: bytes | None, where: str, text_key: str, id_key: str, nbytes: int) -> Doc:
    if raw is None:
        return Doc(where, None, nbytes, "too_large")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Doc(where, None, nbytes, "not_utf8" if decode(raw) is None else "bad_json")
    if not isinstance(obj, dict) or not isinstance(obj.get(text_key), str):
        return Doc(where, None, nbytes, "missing_text")
    text = obj[text_key]
    doc_id = obj.get(id_key)
    return Doc(str(doc_id) if doc_id is not None else where, text, nbytes)


def read_parquet(path: Path, text_key: str, id_key: str):
    """Documents of a parquet file, read a row group's batch at a time."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        yield Doc(f"{path}:unreadable", None, 0, f"unreadable_file: {type(e).__name__}: {e}")
        return
    names = parquet.schema_arrow.names
    if text_key not in names:
        raise ConfigError("data.clean.text_key", f"{path}: no column '{text_key}' (columns: {', '.join(names)})")
    columns = [text_key] + ([id_key] if id_key in names else [])
    row = 0
    for batch in parquet.iter_batches(columns=columns, batch_size=4096):
        texts = batch.column(text_key).to_pylist()
        ids = batch.column(id_key).to_pylist() if id_key in names else [None] * len(texts)
        for text, doc_id in zip(texts, ids):
            row += 1
            yield _parquet_doc(text, doc_id, f"{path}:{row}")


def _parquet_doc(text, doc_id, where: str) -> Doc:
    if not isinstance(text, str):
        return Doc(where, None, 0, "missing_text")
    return Doc(str(doc_id) if doc_id is not None else where, text, len(text.encode("utf-8", "replace")))


def decode(raw: bytes) -> str | None:
    """UTF-8 text, or None when the bytes are not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
