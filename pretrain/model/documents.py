"""Packed documents: position ids and attention masks from the eos tokens in a sample.

Shards join documents with eos and cut samples without regard to document ends (see
pretrain/data/shard.py), so the boundaries are read from the token stream: a document ends
with its eos, and the token after an eos starts the next one. A sample may begin or end in
the middle of a document; that piece counts as a document of its own.

`model.document_masking` chooses what the model sees:
- none: one causal sequence, positions 0..s-1 (documents see the ones before them).
- reset_position_ids: still one causal sequence, but RoPE positions restart at 0 at each
  document start.
- block_causal: each token attends only to earlier tokens of its own document, so a packed
  sample computes exactly what its documents would alone. Positions need no reset there:
  RoPE depends only on the distance between query and key, and every pair lies within one
  document.
"""

from dataclasses import dataclass

import torch


def document_ids(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[b, s] index of the document each token belongs to (an eos belongs to the document it ends)."""
    ends = (input_ids == eos_id).long()
    return torch.cumsum(ends, dim=1) - ends  # eos before this token, not counting itself


def reset_position_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """[b, s] position of each token inside its document."""
    positions = torch.arange(doc_ids.shape[1], device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    # The index where each token's document starts: a running max over the start positions.
    start_index = torch.where(starts, positions, torch.zeros_like(positions)).cummax(dim=1).values
    return positions - start_index


def block_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """[b, 1, s, s] boolean mask, True where query i must not see key j (megatron's convention):
    j after i, or j in another document."""
    seq = doc_ids.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=doc_ids.device).tril()
    same_document = doc_ids.unsqueeze(2) == doc_ids.unsqueeze(1)
    return ~(causal & same_document).unsqueeze(1)


@dataclass
class ModelInputs:
    """Turns input ids into the (position_ids, attention_mask) the GPTModel gets."""

    document_masking: str = "none"
    """As model.document_masking."""
    eos_id: int = -1
    """The tokenizer's end-of-document id; unused when document_masking is none."""

    def __call__(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq = input_ids.shape
        if self.document_masking == "none":
            # attention_mask=None: the core attention applies the causal mask itself.
            return torch.arange(seq, device=input_ids.device).expand(batch, seq), None
        doc_ids = document_ids(input_ids, self.eos_id)
        if self.document_masking == "reset_position_ids":
            return reset_position_ids(doc_ids), None
        return torch.arange(seq, device=input_ids.device).expand(batch, seq), block_causal_mask(doc_ids)


def positioned_gpt_model():
    """GPTModel whose rotary embedding follows `position_ids` (megatron's RoPE uses 0..s-1 and
    ignores them), for reset_position_ids. Built lazily: this module is also read without megatron."""
    from megatron.core.models.gpt import GPTModel

    class PositionedGPTModel(GPTModel):
        def _preprocess(self, input_ids, position_ids, *args, **kwargs):
            out = super()._preprocess(input_ids, position_ids, *args, **kwargs)
            rotary = out[1]  # [s, 1, 1, d]: the angles of positions 0..s-1, and every position is < s
            if rotary is None or position_ids is None:
                return out
            return (out[0], rotary[:, 0][position_ids.t()], *out[2:])  # [s, b, 1, d]

    return PositionedGPTModel
