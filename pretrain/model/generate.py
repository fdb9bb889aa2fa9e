"""Sampling text from a trained GPTModel (top-k, temperature), for demos and smoke checks."""

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int, seq_length: int, device,
             generator: torch.Generator, temperature: float = 0.8, top_k: int = 40) -> str:
    """Continue `prompt`; every tensor-parallel rank must call this with the same generator seed."""
    was_training = model.training
    model.eval()
    ids = tokenizer.encode([prompt])[0]
    prompt_length = len(ids)
    for _ in range(max_new_tokens):
        context = torch.tensor([ids[-seq_length:]], dtype=torch.long, device=device)
        logits = next_token_logits(model, context)[: tokenizer.vocab_size]  # drop vocab padding
        probs = torch.softmax(_top_k(logits.float() / temperature, top_k), dim=-1).cpu()
        token = int(torch.multinomial(probs, 1, generator=generator))
        if token == tokenizer.eos_id:
            break
        ids.append(token)
    model.train(was_training)
    return tokenizer.decode(ids[prompt_length:])


@torch.no_grad()
def greedy(model, ids: list[int], max_new_tokens: int, seq_length: int, vocab_size: int, eos_id: int,
           device) -> list[int]:
    """The most likely continuation of token ids (argmax each step, ending after eos), as new ids."""
    was_training = model.training
    model.eval()
    new: list[int] = []
    while len(new) < max_new_tokens and (not new or new[-1] != eos_id):
        context = torch.tensor([(list(ids) + new)[-seq_length:]], dtype=torch.long, device=device)
        new.append(int(next_token_logits(model, context)[:vocab_size].argmax()))  # drop vocab padding
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
