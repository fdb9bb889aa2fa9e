"""The model: megatron-core GPTModel with a Llama-style layer spec, its norm, FLOP counting.

Kept import-free on purpose: `pretrain.model.config` is read on login nodes, which must not
import torch or megatron. Import `pretrain.model.gpt` for layer_spec, transformer_config,
build_model, language_model_loss, padded_vocab_size, count_parameters, flops_per_token.
Its parts: `flops` (parameter and FLOP arithmetic without torch, for `pretrain plan`), `hf`
(Hugging Face Llama export/import), `transfer` (init_from and frozen parts), `attention`
(core attention modules), `backends` (which one a config gets; light), `documents` (position
ids and masks of packed documents), `moe` (mixture of experts), `compile` (torch.compile of
the layers), `norm` (RMSNorm), `generate` (sampling).
"""
