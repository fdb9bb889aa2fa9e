"""A checkpoint's manifest: every file with its size and sha256, written last.

Ranks share the work: each one fsyncs and hashes every world_size-th file (sorted by path),
so a checkpoint of many shards is sealed in parallel, as it was written.
"""

import os
from pathlib import Path

import torch.distributed as dist

from pretrain.io import fsync_path, sha256_file, write_json

MANIFEST = "manifest.json"


# Inside a checkpoint, a conversion for another layout (sealed by its own manifest) and
# hidden work folders are not part of what the manifest lists.
_NOT_LISTED = ("universal",)


def checkpoint_files(directory: Path) -> list[str]:
    """Every file of a checkpoint but its manifest, as sorted relative paths."""
    files = []
    for folder, subfolders, names in os.walk(directory):
        top = folder == str(directory)
        # Pruned, not filtered: a universal conversion holds as many files as the checkpoint.
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and not (top and d in _NOT_LISTED)]
        rel_folder = Path(folder).relative_to(directory)
        files += [(rel_folder / name).as_posix() for name in names
                  if not name.startswith(".") and not (top and name == MANIFEST)
                  and os.path.isfile(os.path.join(folder, name))]  # no broken link, FIFO or socket
    return sorted(files)


def seal(directory: Path, group=None) -> None:
    """Make every rank's files durable and write the manifest (on rank 0); all ranks of `group` call this."""
    files = checkpoint_files(directory)
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    mine = {rel: _durable_entry(directory / rel) for rel in files[rank::world_size]}
    shares = [None] * world_size
    dist.all_gather_object(shares, mine, group=group)
    if rank == 0:
        entries = {rel: entry for share in shares for rel, entry in share.items()}
        write_json(directory / MANIFEST, {"files": entries})


def seal_local(directory: Path) -> None:
    """`seal` for a folder written by one process alone (no collectives)."""
    entries = {rel: _durable_entry(directory / rel) for rel in checkpoint_files(directory)}
    write_json(directory / MANIFEST, {"files": entries})


def verify(directory: Path, manifest: dict, how: str) -> str | None:
    """Check this rank's share of the files; a description of the first problem, or None."""
    files = sorted(manifest["files"])
    if checkpoint_files(directory) != files:
        return "its files differ from the manifest's list"
    for rel in files[dist.get_rank()::dist.get_world_size()]:
        entry, path = manifest["files"][rel], directory / rel
        if path.stat().st_size != entry["size"]:
            return f"{rel} has {path.stat().st_size} bytes, the manifest says {entry['size']}"
        if how == "sha256" and sha256_file(path) != entry["sha256"]:
            return f"{rel} does not match its sha256"
    return None


def _durable_entry(path: Path) -> dict:
    fsync_path(path)
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}
