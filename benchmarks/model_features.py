"""Cost of the model-side options on this machine: CPU time per training step and the bytes of
activations autograd keeps for backward. Prints a table.

    python benchmarks/model_features.py [--model small] [--batch 8] [--steps 5] [--compile]

One process, fp32, one thread, forward + backward of `--batch` samples of the preset's
sequence length. Times are CPU seconds of this process (median of --steps after a warm-up),
so a busy machine skews them less. Saved bytes are counted exactly, through autograd's
saved-tensor hooks (each storage once), for one forward.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dist_utils import single_process_group  # noqa: E402

from pretrain.config import compose_config  # noqa: E402
from pretrain.model.documents import ModelInputs  # noqa: E402
from pretrain.model.gpt import build_model, language_model_loss  # noqa: E402
from pretrain.parallel.layout import set_seed  # noqa: E402

VOCAB = 4096
EOS = 2

VARIANTS = [
    ("attention=local (megatron unfused)", {"attention": "local"}),
    ("local + activation_checkpointing=selective", {"attention": "local", "activation_checkpointing": "selective"}),
    ("attention=sdpa", {"attention": "sdpa"}),
    ("sdpa + document_masking=block_causal", {"attention": "sdpa", "document_masking": "block_causal"}),
    ("sdpa + activation_checkpointing=selective", {"attention": "sdpa", "activation_checkpointing": "selective"}),
    ("sdpa + activation_checkpointing=full", {"attention": "sdpa", "activation_checkpointing": "full"}),
]


def saved_bytes(model, tokens, inputs) -> int:
    seen = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = language_model_loss(model, tokens, inputs)
    loss.backward()
    return sum(seen.values())


def step_seconds(model, tokens, inputs, steps: int) -> float:
    times = []
    for _ in range(steps + 1):
        start = time.process_time()
        language_model_loss(model, tokens, inputs).backward()
        times.append(time.process_time() - start)
    return statistics.median(times[1:])


def measure(base, overrides: dict, tokens, steps: int) -> tuple[float, int]:
    cfg = type(base)(**{**vars(base), **overrides})
    set_seed(0)
    model = build_model(cfg, VOCAB, 1)
    inputs = ModelInputs(cfg.document_masking, EOS)
    return step_seconds(model, tokens, inputs, steps), saved_bytes(model, tokens, inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time model.compile=true (cold compile first)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = compose_config([f"model={args.model}"]).model
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, VOCAB, (args.batch, base.seq_length + 1), generator=generator)
    tokens[:, :: max(1, base.seq_length // 4)] = EOS  # four documents per sample
    variants = VARIANTS + ([("sdpa + compile", {"attention": "sdpa", "compile": True})] if args.compile else [])
    print(f"model={args.model} batch={args.batch} seq={base.seq_length} fp32, 1 thread, torch {torch.__version__}")
    print(f"{'variant':44s} {'CPU s/step':>10s} {'saved MiB':>10s}")
    with single_process_group():
        for name, overrides in variants:
            seconds, nbytes = measure(base, overrides, tokens, args.steps)
            print(f"{name:44s} {seconds:10.3f} {nbytes / 2**20:10.1f}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
