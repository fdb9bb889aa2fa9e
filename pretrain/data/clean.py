"""Stage 1, `pretrain data clean`: raw jsonl files and text folders → cleaned jsonl shards.

Owns reading the raw inputs, text normalization, the length filter, exact dedup and the
report that accounts for every input document (kept + sum(dropped) == input_documents).
"""

import fnmatch
import gzip
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from pretrain.data.config import CleanConfig
from pretrain.errors import ConfigError
from pretrain.io import atomic_dir, write_json

KEY = "data.clean.inputs"
DROP_REASONS = ("too_short", "too_long", "duplicate", "not_utf8")
_MANY_BLANK_LINES = re.compile(r"\n{4,}")


def clean_corpus(cfg: CleanConfig, out_dir: str | Path) -> dict:
    """Normalize, filter and dedup cfg.inputs into out_dir/cleaned-*.jsonl; return the report."""
    inputs = _check_inputs(cfg.inputs)
    report = _empty_report()
    seen: set[bytes] = set()
    with atomic_dir(out_dir) as tmp:
        with _JsonlShards(tmp, cfg.docs_per_shard) as shards:
            for source in inputs:
                count = 0
                for doc_id, text, nbytes in _read_input(source, cfg):
                    count += 1
                    kept = _clean_one(cfg, text, nbytes, seen, report)
                    if kept is not None:
                        shards.write({"text": kept, "id": doc_id})
                report["inputs"].append({"path": str(source), "documents": count})
        write_json(tmp / "report.json", report)
    return report


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
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def normalize_text(text: str) -> str:
    """NFC, \\n line endings, no trailing spaces, at most 2 blank lines in a row, no blank edges."""
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    # Two blank lines survive: PEP 8 puts them between top-level definitions in code.
    text = _MANY_BLANK_LINES.sub("\n\n\n", text)
    # Only blank lines are stripped at the edges: the first line's indentation is content.
    return text.strip("\n")


def _clean_one(cfg: CleanConfig, text, nbytes: int, seen: set, report: dict) -> str | None:
    report["input_documents"] += 1
    report["bytes_in"] += nbytes
    reason, text = _drop_reason(cfg, text, seen)
    if reason is not None:
        report["dropped"][reason] += 1
        return None
    report["kept"] += 1
    report["bytes_out"] += len(text.encode("utf-8"))
    return text


def _drop_reason(cfg: CleanConfig, text, seen: set):
    if text is None:
        return "not_utf8", None
    text = normalize_text(text)
    # Length first: it is cheaper than hashing, and short duplicates count as short.
    if len(text) < cfg.min_chars:
        return "too_short", None
    if len(text) > cfg.max_chars:
        return "too_long", None
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from a JSON "\ud800" escape
        return "not_utf8", None
    digest = hashlib.blake2b(data, digest_size=16).digest()
    if digest in seen:
        return "duplicate", None
    seen.add(digest)
    return None, text


def _check_inputs(inputs) -> list[Path]:
    if not inputs:
        raise ConfigError(KEY, "no inputs given: list .jsonl files or folders of text files")
    paths = sorted(Path(p) for p in inputs)
    for path in paths:
        if not path.exists():
            raise ConfigError(KEY, f"no such file or folder: {path}")
        if path.is_file() and not path.name.endswith((".jsonl", ".jsonl.gz")):
            raise ConfigError(KEY, f"{path}: expected a .jsonl or .jsonl.gz file, or a folder")
    return paths


def _empty_report() -> dict:
    return {
        "input_documents": 0,
        "kept": 0,
        "dropped": {reason: 0 for reason in DROP_REASONS},
        "inputs": [],
        "bytes_in": 0,
        "bytes_out": 0,
    }


def _read_input(source: Path, cfg: CleanConfig):
    """Yield (id, text or None when not UTF-8, input bytes) for each document of one input."""
    if source.is_dir():
        yield from _read_folder(source, cfg.glob, cfg.exclude)
    else:
        yield from _read_jsonl(source, cfg.text_key)


def _read_folder(folder: Path, pattern: str, exclude: list[str]):
    files = sorted(p for p in folder.glob(pattern) if p.is_file() and not _excluded(p.relative_to(folder), exclude))
    for path in files:
        raw = path.read_bytes()
        doc_id = f"{folder}:{path.relative_to(folder).as_posix()}"
        yield doc_id, _decode(raw), len(raw)


def _excluded(relative: Path, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(relative.as_posix(), pattern) for pattern in patterns)


def _read_jsonl(path: Path, text_key: str):
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for line_number, raw in enumerate(f, start=1):
                if raw.strip():
                    text = _jsonl_text(raw, path, line_number, text_key)
                    yield f"{path}:{line_number}", text, len(raw)
    except (EOFError, gzip.BadGzipFile) as e:
        raise ConfigError(KEY, f"{path}: not a valid gzip file ({e})") from None


def _jsonl_text(raw: bytes, path: Path, line_number: int, text_key: str) -> str | None:
    line = _decode(raw)
    if line is None:
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        raise ConfigError(KEY, f"{path}:{line_number}: not valid JSON") from None
    if not isinstance(obj, dict) or text_key not in obj:
        raise ConfigError(KEY, f"{path}:{line_number}: no '{text_key}' field")
    if not isinstance(obj[text_key], str):
        raise ConfigError(KEY, f"{path}:{line_number}: '{text_key}' is not a string")
    return obj[text_key]


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


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
        self.file.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.count += 1

    def _next_file(self) -> None:
        self.close()
        self.file = open(self.folder / f"cleaned-{self.shard:05d}.jsonl", "w", encoding="utf-8")
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
