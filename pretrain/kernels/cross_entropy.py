"""Fused output layer + cross-entropy that never materializes the full logits.

loss = mean over tokens of logsumexp(h W^T) - (h W^T)[label]. The tokens are processed in
chunks: logits of one chunk at a time (a torch matmul), their softmax statistics, the loss,
and the gradients of hidden and weight, which are accumulated chunk by chunk in the forward
(so the backward only scales them by the incoming scalar gradient). Peak memory is one
chunk's logits instead of all of them (8k tokens x 128k vocab in fp32 = 4 GiB, twice over
with the softmax that the unfused backward keeps).

Tensor parallelism as megatron's vocab_parallel_cross_entropy: each rank holds a vocabulary
slice of W; the max, the sum of exponentials and the target logit of each token are
all-reduced over the TP group. The gradient of hidden from each rank's slice is summed by
megatron's input mapping of the output layer (copy-to-TP-region, or the sequence-parallel
gather), applied in `linear_cross_entropy`.

The matmuls are torch's (cuBLAS is as fast as it gets); the per-chunk softmax/CE part is a
Triton kernel pair (statistics, then gradient written straight in the matmul dtype) on the
GPU, or the same steps in torch (`ChunkCrossEntropyTorch`) for hosts without Triton.
"""

import warnings
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
import triton
import triton.language as tl

from pretrain.kernels.launch import num_warps

IGNORE_INDEX = -100
CHUNK_LOGITS = 2**26
"""Logits per chunk (256 MiB in fp32): tokens per chunk = CHUNK_LOGITS // vocabulary slice."""


def linear_cross_entropy_reference(hidden, weight, labels, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Plain torch: full logits = hidden @ weight^T, then F.cross_entropy (mean over kept tokens)."""
    return F.cross_entropy((hidden @ weight.t()).float(), labels, ignore_index=ignore_index)


class ChunkCrossEntropyTorch:
    """Per-chunk softmax statistics and gradient in torch."""

    @staticmethod
    def stats(logits, local_labels, in_range):
        """Row max, sum of exp(logits - max), and the target logit (0 where the label is on another rank)."""
        row_max = logits.max(dim=-1).values
        sum_exp = torch.exp(logits - row_max[:, None]).sum(dim=-1)
        index = torch.where(in_range, local_labels, 0)[:, None]
        target = torch.where(in_range, logits.gather(1, index).squeeze(1), 0.0)
        return row_max, sum_exp, target

    @staticmethod
    def grad(logits, local_labels, in_range, row_max, sum_exp, scale, dtype):
        """(softmax - onehot(label)) * scale per row, in `dtype`."""
        grad = torch.exp(logits - row_max[:, None]) / sum_exp[:, None]
        rows = torch.nonzero(in_range).squeeze(1)
        grad[rows, local_labels[rows]] -= 1.0
        return (grad * scale[:, None]).to(dtype)


@triton.jit
def _stats_kernel(logits_ptr, labels_ptr, max_ptr, sum_exp_ptr, target_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * n_cols
    row_max = tl.full([], float("-inf"), tl.float32)
    sum_exp = tl.full([], 0.0, tl.float32)
    # One pass, online: rescale the running sum whenever the running max grows.
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < n_cols, other=float("-inf"))
        new_max = tl.maximum(row_max, tl.max(x, axis=0))
        sum_exp = sum_exp * tl.exp(row_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        row_max = new_max
    label = tl.load(labels_ptr + row)
    in_range = (label >= 0) & (label < n_cols)
    target = tl.load(base + label, mask=in_range, other=0.0)
    tl.store(max_ptr + row, row_max)
    tl.store(sum_exp_ptr + row, sum_exp)
    tl.store(target_ptr + row, target)


@triton.jit
def _grad_kernel(logits_ptr, labels_ptr, max_ptr, sum_exp_ptr, scale_ptr, grad_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_max = tl.load(max_ptr + row)
    inv_sum = 1.0 / tl.load(sum_exp_ptr + row)
    scale = tl.load(scale_ptr + row)
    label = tl.load(labels_ptr + row)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(logits_ptr + row * n_cols + cols, mask=mask, other=0.0)
        grad = tl.exp(x - row_max) * inv_sum - tl.where(cols == label, 1.0, 0.0)
        tl.store(grad_ptr + row * n_cols + cols, (grad * scale).to(grad_ptr.dtype.element_ty), mask=mask)


class ChunkCrossEntropyTriton:
    """Per-chunk softmax statistics and gradient as Triton kernels (one program per token)."""

    max_block = 4096
    """Vocabulary entries a program loads at once; a row longer than that is walked block by block."""

    @classmethod
    def stats(cls, logits, local_labels, in_range):
        rows, cols = logits.shape
        row_max, sum_exp, target = (torch.empty(rows, dtype=torch.float32, device=logits.device) for _ in range(3))
        block = cls._block(cols)
        _stats_kernel[(rows,)](logits, local_labels, row_max, sum_exp, target, cols, BLOCK=block,
                               num_warps=num_warps(block))
        return row_max, sum_exp, target

    @classmethod
    def grad(cls, logits, local_labels, in_range, row_max, sum_exp, scale, dtype):
        rows, cols = logits.shape
        grad = logits if dtype == torch.float32 else torch.empty_like(logits, dtype=dtype)
        block = cls._block(cols)
        _grad_kernel[(rows,)](logits, local_labels, row_max, sum_exp, scale, grad, cols, BLOCK=block,
                              num_warps=num_warps(block))
        return grad

    @classmethod
    def _block(cls, cols: int) -> int:
        return min(cls.max_block, triton.next_power_of_2(cols))


def _combine_over_tp(row_max, sum_exp, target, group):
    """Each rank's statistics over its vocabulary slice -> the statistics over the whole vocabulary."""
    if group is None or dist.get_world_size(group) == 1:
        return row_max, sum_exp, target
    global_max = row_max.clone()
    dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
    sums = torch.stack([sum_exp * torch.exp(row_max - global_max), target])
    dist.all_reduce(sums, group=group)
    return global_max, sums[0], sums[1]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, group, chunk_tokens, chunk_ce, ignore_index):
        vocab_start = weight.shape[0] * (dist.get_rank(group) if group is not None else 0)
        kept = labels != ignore_index
        scale = kept.float() / kept.sum().clamp(min=1)  # d(mean loss) / d(token loss)
        want_hidden_grad, want_weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_hidden_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight_grad else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            h = hidden[rows]
            logits = (h @ weight.t()).float()  # [chunk, vocab slice]: the only logits alive at a time
            local_labels = (labels[rows] - vocab_start).contiguous()
            in_range = (local_labels >= 0) & (local_labels < weight.shape[0])
            row_max, sum_exp, target = _combine_over_tp(*chunk_ce.stats(logits, local_labels, in_range), group)
            loss += ((torch.log(sum_exp) + row_max - target) * scale[rows]).sum()
            if want_hidden_grad or want_weight_grad:
                grad_logits = chunk_ce.grad(logits, local_labels, in_range, row_max, sum_exp,
                                            scale[rows].contiguous(), hidden.dtype)
                if want_hidden_grad:
                    grad_hidden[rows] = grad_logits @ weight
                if want_weight_grad:
                    grad_weight += grad_logits.t() @ h
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    tp_group=None,
    sequence_parallel: bool = False,
    chunk_tokens: int | None = None,
    chunk_ce=ChunkCrossEntropyTriton,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean cross-entropy of hidden [n, h] @ weight[vocab slice, h]^T against labels [n] (global ids).

    tp_group: the tensor-parallel group over which the vocabulary is split (None: not split).
    Under sequence parallelism hidden is this rank's slice of the tokens and is gathered first.
    """
    if tp_group is not None and dist.get_world_size(tp_group) > 1:
        from megatron.core.tensor_parallel import mappings

        if sequence_parallel:
            hidden = mappings.gather_from_sequence_parallel_region(hidden, True, tp_group)
        else:
            hidden = mappings.copy_to_tensor_model_parallel_region(hidden, tp_group)
    else:
        tp_group = None
    if not torch.is_grad_enabled():  # evaluation: skip the gradient work done in the forward
        hidden, weight = hidden.detach(), weight.detach()
    if hidden.shape[0] != labels.shape[0]:
        raise ValueError(f"hidden has {hidden.shape[0]} tokens, labels {labels.shape[0]}")
    chunk_tokens = chunk_tokens or max(1, CHUNK_LOGITS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden.contiguous(), weight, labels.contiguous(), tp_group,
                                     chunk_tokens, chunk_ce, ignore_index)


@contextmanager
def _decoder_output_only(gpt):
    """Make megatron's GPTModel return the final-norm hidden states [s, b, h] instead of logits."""
    post_process = gpt.post_process
    gpt.post_process = False
    try:
        yield
    finally:
        gpt.post_process = post_process


def _unwrap(model):
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):  # DeepSpeed engine, torch.compile
        model = getattr(model, "module", None) or model._orig_mod
    return model


def fused_language_model_loss(model, labels: torch.Tensor, **inputs) -> torch.Tensor:
    """Mean loss over labels [b, s] of a megatron GPTModel (or a wrapper of one) run on `inputs`,
    with the fused output layer + CE in place of megatron's logits and loss."""
    gpt = _unwrap(model)
    weight = _output_weight(gpt)
    if hasattr(weight, "ds_id"):
        # ZeRO-3 gathers a weight only inside its own module's forward, which the fused loss
        # bypasses: such a model keeps megatron's logits + loss.
        warnings.warn("ZeRO stage 3: the fused output layer + loss is not used (megatron's loss is)", stacklevel=2)
        return model(**inputs, labels=labels).float().mean()
    with _decoder_output_only(gpt):
        hidden = model(**inputs)  # [s, b, h] (under sequence parallelism: this rank's s / tp)
    from megatron.core import parallel_state

    return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), weight, labels.t().reshape(-1),
                                tp_group=parallel_state.get_tensor_model_parallel_group(),
                                sequence_parallel=gpt.config.sequence_parallel)


def _output_weight(gpt) -> torch.Tensor:
    """The output layer's weight [vocab slice, h]: the input embedding's when they are tied."""
    if gpt.share_embeddings_and_output_weights:
        return gpt.shared_embedding_or_output_weight()
    return gpt.output_layer.weight
