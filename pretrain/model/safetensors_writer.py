"""Write safetensors files a tensor at a time, so an export holds one layer in memory, not a shard.

`safetensors.torch.save_file` takes a whole dict and serializes it in memory, so a 5 GiB shard
costs 5 GiB of RAM. The format is simple (8-byte little-endian header length, a JSON header of
each tensor's dtype, shape and byte range, then the bytes), so this writer reserves room for the
header, appends each tensor's bytes as it comes, and fills the header in when the file is done.
A header larger than the room left for it is handled by writing the file again behind a larger
one. Files are read back with safetensors itself (tests load every export with it and with
transformers).
"""

import json
import os
import shutil
import struct
from pathlib import Path

import torch

HEADER_ROOM = 1 << 20  # bytes kept for the JSON header: about 5,000 tensors' entries
_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


class StreamingSafetensors:
    """One .safetensors file, written as tensors are added; `close()` writes the header."""

    def __init__(self, path: Path, metadata: dict[str, str] | None = None, header_room: int = HEADER_ROOM):
        self.path, self.metadata, self.header_room = Path(path), metadata or {}, header_room
        self.file = open(self.path, "wb")
        self.file.seek(8 + header_room)
        self.entries: dict[str, dict] = {}
        self.size = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        data = tensor.detach().cpu().contiguous()
        nbytes = data.numel() * data.element_size()
        self.entries[name] = {"dtype": _DTYPES[data.dtype], "shape": list(data.shape),
                              "data_offsets": [self.size, self.size + nbytes]}
        if nbytes:
            self.file.write(memoryview(data.view(torch.uint8).reshape(-1).numpy()))
        self.size += nbytes

    def close(self) -> None:
        header = json.dumps({"__metadata__": self.metadata, **self.entries}, separators=(",", ":")).encode()
        if len(header) <= self.header_room:
            self.file.seek(0)
            self.file.write(struct.pack("<Q", self.header_room) + header.ljust(self.header_room, b" "))
            self.file.close()
            return
        self.file.close()
        self._rewrite_behind(header)

    def _rewrite_behind(self, header: bytes) -> None:
        """The header outgrew its room: copy the bytes behind a header of the right size."""
        room = -(-len(header) // 8) * 8  # safetensors keeps the bytes 8-aligned
        moved = self.path.with_name(self.path.name + ".tmp")
        with open(self.path, "rb") as source, open(moved, "wb") as target:
            target.write(struct.pack("<Q", room) + header.ljust(room, b" "))
            source.seek(8 + self.header_room)
            shutil.copyfileobj(source, target, 16 << 20)
        os.replace(moved, self.path)
