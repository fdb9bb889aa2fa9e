"""GPU training throughput and MFU: our trainer's step against a plain PyTorch Llama, same session.

    python benchmarks/gpu_throughput.py [--models llama_125m,llama_350m,llama_1b] [--seq 2048,4096]
                                        [--tokens-per-step 65536] [--steps 10] [--profile] [overrides ...]

For each model and sequence length, one process on one GPU, bf16, the same random batch:
- ours: megatron-core GPTModel with the fastest options the config offers (fused kernels,
  SDPA/flash attention; pass `model.compile=true` or `model.activation_checkpointing=selective`
  as overrides) inside the DeepSpeed engine (ZeRO-1), micro-batches accumulated to the step;
- plain: benchmarks/plain_llama.py (SDPA, torch's fused RMSNorm, bf16 autocast, fused AdamW).
Prints tokens/s, MFU (model FLOPs only, see pretrain/model/flops.py) and the ratio to plain.
With --profile, one step of ours under torch.profiler, GPU time split into matmuls, attention,
norms/elementwise, optimizer, communication and idle. Without a GPU it says so and exits 0.

Output (one row per model x sequence length):

    device NVIDIA H200 (h200, bf16 peak 989 TFLOP/s), 65536 tokens per step, 10 timed steps
    | model | seq | micro | setup | tokens/s | MFU | vs plain | peak GiB |
    |---|---:|---:|---|---:|---:|---:|---:|
    | llama_1b | 4096 | 4 | plain PyTorch | ... | ...% | 1.00 | ... |
    | llama_1b | 4096 | 4 | pretrain | ... | ...% | ... | ... |
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from pretrain.train.quiet import silence_known_warnings  # noqa: E402

silence_known_warnings()

from plain_llama import PlainLlama  # noqa: E402
from timing import seconds_per_step  # noqa: E402

from pretrain.config import compose_config  # noqa: E402
from pretrain.model.flops import flops_per_token  # noqa: E402
from pretrain.model.gpt import build_model, language_model_loss, padded_vocab_size  # noqa: E402
from pretrain.monitor.mfu import gpu_kind, peak_flops  # noqa: E402
from pretrain.parallel.layout import init_distributed  # noqa: E402
from pretrain.train.engine import build_engine  # noqa: E402

VOCAB = 32_000
WARMUP = 3
# Substrings of CUDA kernel names, first match wins: where the GPU's time goes.
KERNEL_KINDS = [
    ("communication", ("nccl",)),
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn_mha")),
    ("optimizer", ("adam", "multi_tensor")),
    ("matmuls", ("gemm", "cutlass", "xmma", "sm90", "ampere_", "cublas", "matmul")),
    ("norms/elementwise", ("",)),
]


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU here; this benchmark measures GPU throughput and MFU")
        return
    name = torch.cuda.get_device_name()
    peak = peak_flops(gpu_kind(name), "bf16")
    print(f"device {name} ({gpu_kind(name)}, bf16 peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s), "
          f"{args.tokens_per_step} tokens per step, {args.steps} timed steps")
    print("| model | seq | micro | setup | tokens/s | MFU | vs plain | peak GiB |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for model_name in args.models.split(","):
        for seq in map(int, args.seq.split(",")):
            compare(model_name, seq, args, peak)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="llama_125m,llama_350m,llama_1b")
    parser.add_argument("--seq", default="2048,4096")
    parser.add_argument("--tokens-per-step", type=int, default=65536)
    parser.add_argument("--micro-tokens", type=int, default=16384, help="tokens per micro-batch")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("overrides", nargs="*")
    return parser.parse_args()


def compare(model_name: str, seq: int, args, peak: float | None) -> None:
    micro = max(1, args.micro_tokens // seq)
    accumulation = max(1, args.tokens_per_step // (micro * seq))
    cfg = compose_config([f"model={model_name}", f"model.seq_length={seq}", "train.precision=bf16",
                          f"train.micro_batch_size={micro}", f"train.global_batch_size={micro * accumulation}",
                          "parallel.zero_stage=1", "logging.wandb.enabled=false", *args.overrides])
    layout = init_distributed(cfg.parallel, cfg.train.seed)
    vocab = padded_vocab_size(VOCAB, cfg.model, 1)
    batches = [torch.randint(0, VOCAB, (micro, seq + 1), device="cuda") for _ in range(accumulation)]
    tokens = accumulation * micro * seq
    flops = flops_per_token(cfg.model, vocab) * tokens
    rows = {"plain PyTorch": plain_step(cfg, vocab, batches), "pretrain": engine_step(cfg, vocab, batches, layout)}
    base = None
    for setup, step in rows.items():
        torch.cuda.reset_peak_memory_stats()
        seconds = seconds_per_step(step, args.steps, WARMUP)
        rate = tokens / seconds
        base = base or rate
        mfu = f"{100 * flops / seconds / peak:.1f}%" if peak else "-"
        print(f"| {model_name} | {seq} | {micro} | {setup} | {rate:,.0f} | {mfu} | {rate / base:.2f} | "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} |", flush=True)
    if args.profile:
        profile(rows["pretrain"])
    del rows
    torch.cuda.empty_cache()


def plain_step(cfg, vocab: int, batches):
    model = PlainLlama(cfg.model, vocab).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        for tokens in batches:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(tokens) / len(batches)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def engine_step(cfg, vocab: int, batches, layout):
    engine = build_engine(cfg, build_model(cfg.model, vocab, 1, torch.bfloat16), layout)

    def step():
        for tokens in batches:
            engine.backward(language_model_loss(engine, tokens))
            engine.step()
    return step


def profile(step) -> None:
    """One step under torch.profiler: GPU kernel time by kind, and idle (wall minus kernels)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.cuda.synchronize()
    started = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    wall_us = (time.perf_counter() - started) * 1e6
    totals = dict.fromkeys([kind for kind, _ in KERNEL_KINDS], 0.0)
    for event in prof.key_averages():
        if event.device_type.name == "CUDA":
            totals[kernel_kind(event.key)] += event.self_device_time_total
    busy = sum(totals.values())
    print("\n| GPU time, one step | ms | share of wall |")
    print("|---|---:|---:|")
    for kind, us in [*totals.items(), ("idle", max(wall_us - busy, 0.0))]:
        print(f"| {kind} | {us / 1e3:.1f} | {100 * us / wall_us:.1f}% |")
    print()


def kernel_kind(kernel_name: str) -> str:
    lowered = kernel_name.lower()
    return next(kind for kind, needles in KERNEL_KINDS if any(n in lowered for n in needles))


if __name__ == "__main__":
    main()
