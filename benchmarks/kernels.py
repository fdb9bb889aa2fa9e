"""Fused kernels vs torch: forward + backward time of each op, and peak memory on a GPU.

For each op (RMSNorm, RoPE, SwiGLU, output layer + cross-entropy) it times the plain torch
reference (eager, the baseline), the same under torch.compile, apex's fused RMSNorm where apex
is installed, and our Triton kernel on a GPU; all in one process, on the same inputs, and
prints milliseconds per forward + backward and the ratio to eager (> 1 is faster).

    python benchmarks/kernels.py            # GPU: realistic shapes (8k tokens x 4096, vocab 128k), bf16
                                            # CPU: small shapes, torch variants only, fp32

On a CPU host Triton cannot run (its kernels need a GPU; the interpreter is for tests), so
only eager and compiled torch are timed. The loss also times our chunked torch version
("torch chunked"), whose point is memory: on a GPU the peak-memory column shows it.
"""

import argparse
import os
import time
from functools import partial

# On a CPU host: one thread unless told otherwise. On a shared 2-core machine OpenMP's spinning
# worker threads made torch.compile's kernels 100x slower than eager; one thread is reproducible.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from pretrain.kernels import cross_entropy as ce  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

GPU_SHAPES = dict(tokens=8192, hidden=4096, ffn=14336, heads=32, head_dim=128, vocab=131072)
CPU_SHAPES = dict(tokens=512, hidden=128, ffn=512, heads=4, head_dim=64, vocab=4096)


def measure(fn, inputs, repeats: int) -> tuple[float, float]:
    """Best-of-repeats ms of fn(*inputs).backward(upstream) (the least disturbed run on a shared machine)
    and its peak memory in MiB above the inputs (GPU only)."""

    def step():
        for t in inputs:
            t.grad = None
        out = fn(*inputs)
        out.backward(torch.ones_like(out) if out.dim() == 0 else upstream_for(out))

    for _ in range(2):  # warm-up: compilation, autotuning, allocator
        step()
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        if CUDA:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1e3)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if CUDA else None
    return min(times), peak


_upstream = {}


def upstream_for(out):
    key = (tuple(out.shape), out.dtype)
    if key not in _upstream:
        _upstream[key] = torch.randn(out.shape, device=out.device, dtype=out.dtype)
    return _upstream[key]


def leaf(*shape, dtype, scale=1.0):
    return (scale * torch.randn(*shape, device=DEVICE, dtype=torch.float32)).to(dtype).requires_grad_()


def ops(s, dtype):
    """Each op: (name, inputs, {variant: fn}); the plain torch reference is "eager", the baseline."""
    from pretrain.kernels.rmsnorm import rms_norm_reference
    from pretrain.kernels.rope import rope_reference
    from pretrain.kernels.swiglu import swiglu_reference

    seq, batch = s["tokens"] // 2, 2
    inv_freq = 1.0 / 10000 ** (torch.arange(0, s["head_dim"], 2, device=DEVICE) / s["head_dim"])
    angles = torch.outer(torch.arange(seq, device=DEVICE, dtype=torch.float32), inv_freq)
    freqs = torch.cat([angles, angles], dim=-1)[:, None, None, :]
    labels = torch.randint(0, s["vocab"], (s["tokens"],), device=DEVICE)
    table = [
        ("rmsnorm", [leaf(s["tokens"], s["hidden"], dtype=dtype), leaf(s["hidden"], dtype=dtype)],
         {"eager": partial(rms_norm_reference, eps=1e-5)}),
        ("rope", [leaf(seq, batch, s["heads"], s["head_dim"], dtype=dtype)],
         {"eager": partial(rope_reference, freqs=freqs)}),
        ("swiglu", [leaf(s["tokens"], 2 * s["ffn"], dtype=dtype)], {"eager": swiglu_reference}),
        ("linear+ce", [leaf(s["tokens"], s["hidden"], dtype=dtype),
                       leaf(s["vocab"], s["hidden"], dtype=dtype, scale=s["hidden"] ** -0.5)],
         {"eager": partial(ce.linear_cross_entropy_reference, labels=labels),
          "torch chunked": partial(ce.linear_cross_entropy, labels=labels, chunk_ce=ce.ChunkCrossEntropyTorch)}),
    ]
    for name, fn in {**triton_variants(freqs, labels), **apex_variants()}.items():
        op, variant = name
        next(variants for op_name, _, variants in table if op_name == op)[variant] = fn
    return table


def triton_variants(freqs, labels) -> dict:
    if not CUDA:
        return {}
    from pretrain.kernels import rmsnorm, rope, swiglu

    return {("rmsnorm", "triton"): partial(rmsnorm.rms_norm_triton, eps=1e-5),
            ("rope", "triton"): partial(rope.rope_triton, freqs=freqs),
            ("swiglu", "triton"): swiglu.swiglu_triton,
            ("linear+ce", "triton chunked"): partial(ce.linear_cross_entropy, labels=labels)}


def apex_variants() -> dict:
    try:
        from apex.normalization.fused_layer_norm import fused_rms_norm_affine
    except ImportError:
        return {}
    return {("rmsnorm", "apex"): lambda x, w: fused_rms_norm_affine(x, w, w.shape, 1e-5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20 if CUDA else 10)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    args = parser.parse_args()
    shapes, dtype = (GPU_SHAPES, torch.bfloat16) if CUDA else (CPU_SHAPES, torch.float32)
    torch.manual_seed(0)
    device_name = torch.cuda.get_device_name() if CUDA else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device_name}; dtype: {str(dtype).removeprefix('torch.')}; shapes: {shapes}")
    if not CUDA:
        print("triton: skipped (its kernels need a CUDA GPU; on a CPU they run only in the slow interpreter)")
    try:
        import apex.normalization  # noqa: F401
    except ImportError:
        print("apex: skipped (not installed)")
    print(f"| {'op':<10} | {'variant':<15} | {'ms (fwd+bwd)':>12} | {'vs eager':>8} | {'peak MiB':>8} |")
    print(f"|{'-' * 12}|{'-' * 17}|{'-' * 14}|{'-' * 10}|{'-' * 10}|")
    for name, inputs, variants in ops(shapes, dtype):
        if not args.no_compile:
            variants = {"eager": variants["eager"], "torch.compile": torch.compile(variants["eager"]), **variants}
        baseline = None
        for variant, fn in variants.items():
            ms, peak = measure(fn, inputs, args.repeats)
            baseline = baseline or ms
            peak_text = "-" if peak is None else f"{peak:.0f}"
            print(f"| {name:<10} | {variant:<15} | {ms:>12.3f} | {baseline / ms:>7.2f}x | {peak_text:>8} |")


if __name__ == "__main__":
    main()
