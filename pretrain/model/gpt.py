"""The Llama-style decoder as megatron-core's GPTModel: layer spec, config, build, loss.

FLOP and parameter arithmetic lives in flops.py (no torch, for `pretrain plan`); the names
used by the trainer are re-exported here.

One block: x + Attn(RMSNorm(x)), then h + SwiGLU(RMSNorm(h)); grouped-query attention with
rotary embeddings (megatron's non-interleaved convention, as in HF Llama), no biases, no
dropout, a final RMSNorm and an output layer that is tied to the embedding or not.
Tensor parallelism is megatron's: column-parallel qkv/fc1, row-parallel proj/fc2,
vocab-parallel embedding, output layer and cross-entropy.
"""

import torch
import torch.nn.functional as F
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from pretrain.kernels import select_kernels
from pretrain.model.attention import core_attention_module
from pretrain.model.compile import compile_layers
from pretrain.model.config import ModelConfig
from pretrain.model.documents import ModelInputs, positioned_gpt_model
from pretrain.model.flops import flops_per_token, matmul_parameters, padded_vocab_size  # noqa: F401 (re-exported)
from pretrain.model.moe import moe_mlp_spec, moe_options, seed_experts
from pretrain.parallel import cpu_compat


def layer_spec(cfg: ModelConfig) -> ModuleSpec:
    """megatron ModuleSpec of one pre-norm decoder layer built from local (non-TE) modules.

    Fused kernels are chosen here (cfg.kernels: the norm and MLP classes), never inside a forward.
    """
    kernels = select_kernels(cfg.kernels)
    attention = ModuleSpec(
        module=SelfAttention,
        params={"attn_mask_type": AttnMaskType.causal},
        submodules=SelfAttentionSubmodules(
            linear_qkv=ColumnParallelLinear,
            core_attention=core_attention_module(cfg),
            linear_proj=RowParallelLinear,
            q_layernorm=IdentityOp,
            k_layernorm=IdentityOp,
        ),
    )
    mlp = ModuleSpec(
        module=kernels.mlp,
        submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
    )
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=kernels.norm,
            self_attention=attention,
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=kernels.norm,
            mlp=moe_mlp_spec(cfg) if cfg.moe.enabled else mlp,
            mlp_bda=get_bias_dropout_add,
        ),
    )


def block_spec(cfg: ModelConfig) -> TransformerBlockSubmodules:
    """All layers plus the final norm (megatron would otherwise pick its own norm class for it)."""
    final_norm = select_kernels(cfg.kernels).norm
    return TransformerBlockSubmodules(layer_specs=[layer_spec(cfg)] * cfg.num_layers, layer_norm=final_norm)


def transformer_config(
    cfg: ModelConfig,
    tensor_parallel_size: int,
    params_dtype: torch.dtype = torch.float32,
    sequence_parallel: bool = False,
    expert_parallel_size: int = 1,
) -> TransformerConfig:
    """megatron TransformerConfig for `cfg`: RMSNorm, SwiGLU, GQA, no biases, no dropout, no fusions."""
    return TransformerConfig(
        **recompute_options(cfg.activation_checkpointing),
        **moe_options(cfg.moe, cfg.ffn_hidden_size, expert_parallel_size),
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        ffn_hidden_size=cfg.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.norm_epsilon,
        add_bias_linear=False,
        gated_linear_unit=True,
        activation_func=F.silu,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=cfg.init_method_std,
        # Fused kernels come through the layer spec, not through megatron's flags.
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        # With kernels=triton megatron's fused-RoPE hook runs our Triton RoPE (see pretrain/kernels).
        apply_rope_fusion=select_kernels(cfg.kernels).fused_rope,
        tensor_model_parallel_size=tensor_parallel_size,
        # Like Megatron-LM: sequence parallelism splits over the TP group, so TP=1 turns it off.
        sequence_parallel=sequence_parallel and tensor_parallel_size > 1,
        # On a CPU-only host, initialize on the CPU: this also makes the full weights the same
        # for every tensor-parallel size (the master weight is drawn whole, then split).
        use_cpu_initialization=not torch.cuda.is_available(),
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
    )


def recompute_options(activation_checkpointing: str) -> dict:
    """TransformerConfig fields for model.activation_checkpointing.

    selective recomputes only core attention (its s x s scores are the largest activation and
    the cheapest to redo); full recomputes each whole layer from its input.
    """
    if activation_checkpointing == "selective":
        return {"recompute_granularity": "selective", "recompute_modules": ["core_attn"]}
    if activation_checkpointing == "full":
        return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    return {}


def build_model(
    cfg: ModelConfig,
    vocab_size: int,
    tensor_parallel_size: int,
    params_dtype: torch.dtype = torch.float32,
    sequence_parallel: bool = False,
    expert_parallel_size: int = 1,
    seed: int = 0,
) -> GPTModel:
    """This rank's GPTModel shard; megatron's parallel_state must be initialized (see init_distributed).

    vocab_size is used as given: pad it first with padded_vocab_size. `seed` draws the MoE experts'
    weights (the other weights come from the generators init_distributed seeded).
    """
    cpu_compat.apply()
    model_class = positioned_gpt_model() if cfg.document_masking == "reset_position_ids" else GPTModel
    model = model_class(
        config=transformer_config(cfg, tensor_parallel_size, params_dtype, sequence_parallel, expert_parallel_size),
        transformer_layer_spec=block_spec(cfg),
        vocab_size=vocab_size,
        max_sequence_length=cfg.seq_length,
        pre_process=True,
        post_process=True,
        share_embeddings_and_output_weights=not cfg.untie_embeddings_and_output_weights,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=cfg.rotary_base,
    )
    # The loss: megatron's (logits, then vocab-parallel CE) or a fused output layer + CE.
    model.output_loss = select_kernels(cfg.kernels).output_loss
    if cfg.moe.enabled:
        seed_experts(model, seed)
    if torch.cuda.is_available():
        # megatron puts its parallel layers on the GPU; norms are built on the CPU like apex's.
        model.cuda(torch.cuda.current_device())
    if cfg.compile:
        compile_layers(model)
    return model


def language_model_loss(model: torch.nn.Module, tokens: torch.Tensor,
                        model_inputs: ModelInputs = ModelInputs()) -> torch.Tensor:
    """Mean next-token cross-entropy of tokens [b, s+1]: inputs tokens[:, :-1], labels tokens[:, 1:].

    `model` is a GPTModel or a wrapper that forwards keyword arguments (a DeepSpeed engine).
    `model_inputs` gives position ids and attention mask (document masking; plain causal by default).
    Under tensor parallelism every rank of the TP group returns the same (full-vocabulary) loss.
    The loader hands over int32 ids (half the bytes to pin and copy to a GPU); they are widened
    here, on the tokens' device.
    """
    tokens = tokens.long()
    input_ids, labels = tokens[:, :-1], tokens[:, 1:]
    position_ids, attention_mask = model_inputs(input_ids)
    inputs = dict(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask)
    fused_loss = getattr(model, "output_loss", None)  # set by build_model from cfg.kernels
    if fused_loss is not None:
        return fused_loss(model, labels, **inputs)
    per_token_loss = model(**inputs, labels=labels)
    return per_token_loss.float().mean()


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters held by this rank (a tied embedding/output weight counts once)."""
    return sum(p.numel() for p in model.parameters())
