"""Hugging Face export memory: a layer at a time against the whole model at once, same checkpoint.

    python benchmarks/export.py [--model llama_350m] [--tensor-parallel 2]

Writes a checkpoint in the layout `pretrain train` leaves at tensor-parallel size 2 with ZeRO 1
(`mp_rank_XX_model_states.pt` per TP rank, fp32, random weights of the model's shapes) and
exports it twice, each in a fresh process:
- pretrain: `pretrain.model.hf.export`, which merges and converts one decoder layer at a time;
- whole model (baseline): every TP shard merged and converted at once, then written (what an
  export that builds the full state dict first holds).
Memory is the peak of anonymous resident memory (RssAnon, sampled every 5 ms): the memory the
kernel cannot drop. The checkpoint's own pages are memory-mapped and count only as page cache.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from pretrain.checkpoint import manifest  # noqa: E402
from pretrain.config import compose_config  # noqa: E402
from pretrain.model import hf  # noqa: E402
from pretrain.model.flops import padded_vocab_size  # noqa: E402

MiB = 2**20

CHILD = """
import sys, threading, time
peak = 0
def sample():
    global peak
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                peak = max(peak, int(line.split()[1]) * 1024)
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
time.sleep(0.05)
idle = peak
from export import run_mode
run_mode(sys.argv[1], sys.argv[2], sys.argv[3])
time.sleep(0.02)
print(idle, peak)
"""


def write_checkpoint(root: Path, model: str, tp: int) -> int:
    """A run directory with one checkpoint of random weights split as TP ranks hold them; its bytes."""
    cfg = compose_config([f"model={model}"])
    vocab = 32_000
    padded = padded_vocab_size(vocab, cfg.model, tp)
    full = hf.from_hf(random_hf_weights(cfg.model, vocab), cfg.model, padded)
    checkpoint = root / "run" / "checkpoints" / "step_1"
    checkpoint.mkdir(parents=True)
    for rank in range(tp):
        shard = hf.split_tensor_parallel(full, tp, rank)
        torch.save({"module": shard}, checkpoint / f"mp_rank_{rank:02d}_model_states.pt")
    config = {"model": {**_fields(cfg.model), "vocab_size": vocab},
              "data": {"root": str(root)}, "train": {"precision": "fp32"}}
    (checkpoint / "trainer_state.json").write_text(json.dumps({"config": config}))
    manifest.seal_local(checkpoint)
    (root / "run" / "checkpoints" / "latest").write_text("step_1\n")
    (root / "run" / "config.yaml").write_text(json.dumps(config))
    return sum(p.stat().st_size for p in checkpoint.glob("*.pt"))


def _fields(model_cfg) -> dict:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(model_cfg).items() if v is not None}


def random_hf_weights(cfg, vocab: int) -> dict[str, torch.Tensor]:
    shapes = hf.expected_hf_shapes(cfg, vocab)
    generator = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=generator) * 0.02 for name, shape in shapes.items()}


def tokenizer_dir(root: Path) -> Path:
    """A small tokenizer trained by the project on a few generated documents."""
    from pretrain.data.config import TokenizerConfig
    from pretrain.tokenizers.train import train_tokenizer

    cleaned = root / "cleaned"
    cleaned.mkdir()
    texts = (f"line {i} of some words to learn pieces from {i * 7}" for i in range(2000))
    docs = (json.dumps({"id": str(i), "text": text}) for i, text in enumerate(texts))
    (cleaned / "cleaned-00000.jsonl").write_text("\n".join(docs) + "\n")
    train_tokenizer(TokenizerConfig(vocab_size=300, sample_docs=2000), cleaned, root / "tokenizer")
    return root / "tokenizer"


def run_mode(mode: str, run_dir: str, out: str) -> None:
    """In the measured child: export as `pretrain export hf` does, or the whole model at once."""
    if mode == "layers":
        hf.export(run_dir, out_dir=out)
        return
    from pretrain.checkpoint.weights import tensor_parallel_shards

    checkpoint, _, cfg = hf.read_checkpoint(run_dir, None)
    weights = hf.merge_tensor_parallel([dict(shard) for shard in tensor_parallel_shards(checkpoint)])
    tensors = hf.to_hf(weights, cfg, cfg.vocab_size)
    Path(out).mkdir()
    writer = hf.SafetensorsWriter(Path(out), 5 * 2**30)
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    writer.close()


def measure(mode: str, root: Path) -> tuple[int, float]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(root / "run"), str(root / f"hf-{mode}")],
                         capture_output=True, text=True, cwd=Path(__file__).parent,
                         env={"PYTHONPATH": f"{Path(__file__).parent}:{Path(__file__).parent.parent}"})
    if out.returncode:
        raise SystemExit(f"export ({mode}) failed:\n{out.stderr[-3000:]}")
    idle, peak = map(int, out.stdout.split()[-2:])
    return peak - idle, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama_350m")
    parser.add_argument("--tensor-parallel", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        size = write_checkpoint(root, args.model, args.tensor_parallel)
        tokenizer_dir(root)
        rows = {mode: measure(mode, root) for mode in ("whole", "layers")}
    print(f"checkpoint: {args.model}, TP={args.tensor_parallel}, fp32, {size / MiB:,.0f} MiB")
    print("| export | peak anonymous memory MiB | vs checkpoint | seconds |")
    print("|---|---:|---:|---:|")
    for mode, label in (("whole", "whole model at once (baseline)"), ("layers", "pretrain: a layer at a time")):
        peak, seconds = rows[mode]
        print(f"| {label} | {peak / MiB:,.0f} | {peak / size:.2f} | {seconds:.1f} |")
    print(f"ratio (baseline / pretrain): {rows['whole'][0] / rows['layers'][0]:.1f}x less memory")


if __name__ == "__main__":
    main()
