"""The streaming safetensors writer against safetensors' own reader."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pretrain.model.hf import SafetensorsWriter
from pretrain.model.safetensors_writer import StreamingSafetensors


def tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(7, 5, generator=generator),
        "b.bf16": torch.randn(3, 4, generator=generator).to(torch.bfloat16),
        "c.empty": torch.zeros(0, 4),
        "d.ids": torch.arange(11, dtype=torch.int64),
        "e.view": torch.randn(6, 6, generator=generator).t(),  # not contiguous
    }


@pytest.mark.parametrize("header_room", [1 << 20, 16], ids=["room-reserved", "header-outgrows-room"])
def test_streamed_file_reads_back_exactly(tmp_path, header_room):
    path = tmp_path / "x.safetensors"
    writer = StreamingSafetensors(path, {"format": "pt"}, header_room=header_room)
    for name, tensor in tensors().items():
        writer.add(name, tensor)
    writer.close()
    back = load_file(path)
    assert back.keys() == tensors().keys()
    assert all(torch.equal(back[name], tensor) and back[name].dtype == tensor.dtype
               for name, tensor in tensors().items())
    with safe_open(path, "pt") as opened:
        assert opened.metadata() == {"format": "pt"}


def test_shards_split_at_the_size_limit_with_an_index(tmp_path):
    writer = SafetensorsWriter(tmp_path, max_shard_bytes=200)  # bytes: a 140, b 24, c 0, d 88, e 144
    for name, tensor in tensors().items():
        writer.add(name, tensor)
    writer.close()
    files = sorted(tmp_path.glob("*.safetensors"))
    assert [p.name for p in files] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    shards = [load_file(path) for path in files]
    assert [sorted(shard) for shard in shards] == [["a.weight", "b.bf16", "c.empty"], ["d.ids"], ["e.view"]]
    merged = {name: tensor for shard in shards for name, tensor in shard.items()}
    assert all(torch.equal(merged[name], tensor) for name, tensor in tensors().items())
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["d.ids"] == "model-00002-of-00003.safetensors"
    assert index["metadata"]["total_size"] == 140 + 24 + 88 + 144
