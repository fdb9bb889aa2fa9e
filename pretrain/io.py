"""File primitives that leave the previous state usable if the process dies mid-write.

Data stages build their output in a hidden sibling folder and swap it into place only when
it is complete; single files (checkpoint pointers, reports, logs) are written to a temporary
name, flushed and renamed over the old one.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path):
    """Yield a fresh temporary folder that replaces out_dir when the block ends without error."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_into_place(tmp, out_dir)


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    # Two renames, not rmtree-then-rename: until the new folder is in place the old one
    # still exists (as out_dir or as the .old sibling), so no moment loses both.
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)  # the rename itself is only durable once the directory entry is flushed


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a directory's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | Path, obj) -> None:
    """Write obj as indented JSON, atomically."""
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def read_json(path: str | Path):
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths) -> str:
    """One hex sha256 over several files: their names and contents, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return digest.hexdigest()
