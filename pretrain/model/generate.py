"""Sampling text from a trained GPTModel (temperature, top-k, top-p, greedy), for demos, smoke checks
and `pretrain generate RUN_DIR`.
"""

import dataclasses
from pathlib import Path

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region


def generate(model, tokenizer, prompt: str, max_new_tokens: int, seq_length: int, device,
             generator: torch.Generator, temperature: float = 0.8, top_k: int = 40, top_p: float = 1.0) -> str:
    """Continue `prompt`; every tensor-parallel rank must call this with the same generator seed."""

    def sample(logits: torch.Tensor) -> int:
        probs = torch.softmax(_top_p(_top_k(logits.float() / temperature, top_k), top_p), dim=-1).cpu()
        return int(torch.multinomial(probs, 1, generator=generator))

    new = next_tokens(model, tokenizer.encode([prompt])[0], max_new_tokens, seq_length, tokenizer.vocab_size,
                      tokenizer.eos_id, device, sample)
    return tokenizer.decode(new[:-1] if new and new[-1] == tokenizer.eos_id else new)


def greedy(model, ids: list[int], max_new_tokens: int, seq_length: int, vocab_size: int, eos_id: int,
           device) -> list[int]:
    """The most likely continuation of token ids (argmax each step, ending after eos), as new ids."""
    return next_tokens(model, ids, max_new_tokens, seq_length, vocab_size, eos_id, device,
                       lambda logits: int(logits.argmax()))


@torch.no_grad()
def next_tokens(model, ids: list[int], max_new_tokens: int, seq_length: int, vocab_size: int, eos_id: int,
                device, pick) -> list[int]:
    """New token ids after `ids`, `pick(logits)` choosing each one, ending after eos (kept) or at the limit."""
    was_training = model.training
    model.eval()
    new: list[int] = []
    while len(new) < max_new_tokens and (not new or new[-1] != eos_id):
        context = torch.tensor([(list(ids) + new)[-seq_length:]], dtype=torch.long, device=device)
        new.append(pick(next_token_logits(model, context)[:vocab_size]))  # drop vocab padding
    model.train(was_training)
    return new


def next_token_logits(model, context: torch.Tensor) -> torch.Tensor:
    """Logits over the full vocabulary for the token after `context` [1, s]."""
    position_ids = torch.arange(context.shape[1], device=context.device).unsqueeze(0)
    logits = model(context, position_ids, None)[:, -1]  # [1, vocab / tp]
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        logits = gather_from_tensor_model_parallel_region(logits)
    return logits[0]


def _top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.numel():
        return logits
    threshold = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < threshold, float("-inf"))


def _top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least p (nucleus)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # A token stays when the probability mass before it is still below p (the first always stays).
    drop_sorted = (probs.cumsum(-1) - probs) >= p
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def load_checkpoint_model(run_dir: str | Path, step: int | None = None, tokenizer_dir: str | None = None):
    """(model, tokenizer, model config): a run's checkpoint as one TP=1 GPTModel in this process.

    Any layout loads (tensor-parallel shards are merged, ZeRO-3 partitions gathered). megatron's
    parallel state must be set up, for one process (pretrain.parallel.layout.init_distributed).
    """
    from pretrain.checkpoint.weights import tensor_parallel_shards
    from pretrain.model import hf
    from pretrain.model.gpt import build_model

    checkpoint, config, cfg = hf.read_checkpoint(run_dir, step)
    tokenizer = hf.open_tokenizer(tokenizer_dir or hf.run_tokenizer_dir(config))
    weights = hf.merge_tensor_parallel(tensor_parallel_shards(checkpoint))
    # The weights are all it needs: kernels this host picks itself, no compile for a few tokens.
    runnable = dataclasses.replace(cfg, kernels="auto", compile=False)
    model = build_model(runnable, weights[hf.EMBEDDING].shape[0], 1)  # the vocabulary as padded in training
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(not name.endswith("_extra_state") for name in missing):
        raise ValueError(f"{checkpoint} does not fit the model: missing {missing}, unexpected {unexpected}")
    return model.eval(), tokenizer, cfg
