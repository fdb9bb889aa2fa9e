"""Mixture of experts: megatron-core's MoE layer as the MLP of every decoder layer.

A top-k softmax router sends each token to `router_topk` of `num_experts` SwiGLU experts
(megatron's SequentialMLP: one local MLP per expert, no grouped-GEMM package needed). The
load-balancing auxiliary loss is added by megatron in backward (MoEAuxLossAutoScaler attaches
its gradient to the layer's output), so the training loss needs no extra term; its value is
tracked per layer by megatron and read here for logging.
"""

from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec
from megatron.core.transformer.spec_utils import ModuleSpec

from pretrain.model.config import ModelConfig, MoEConfig


def moe_mlp_spec(cfg: ModelConfig) -> ModuleSpec:
    """megatron's MoE layer spec from local (non-TE) linear layers."""
    return get_moe_module_spec(use_te=False, num_experts=cfg.moe.num_experts, moe_grouped_gemm=False)


def moe_options(moe: MoEConfig, ffn_hidden_size: int, expert_parallel_size: int) -> dict:
    """TransformerConfig fields for `moe` (none for a dense model)."""
    if not moe.enabled:
        return {}
    return {
        "num_moe_experts": moe.num_experts,
        "moe_router_topk": moe.router_topk,
        "moe_router_load_balancing_type": "aux_loss",
        "moe_aux_loss_coeff": moe.aux_loss_coeff,
        "moe_expert_capacity_factor": moe.capacity_factor,
        # With a capacity, tokens over it are dropped (by lowest router probability).
        "moe_token_drop_policy": "probs",
        "moe_token_dispatcher_type": moe.token_dispatcher,
        "moe_ffn_hidden_size": moe.ffn_hidden_size or ffn_hidden_size,
        "moe_grouped_gemm": False,
        "expert_model_parallel_size": expert_parallel_size,
    }


def set_aux_loss_scale(scale: float) -> None:
    """The factor on the aux loss's gradient: the one the training loss gets in backward."""
    import torch
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(scale))


def tracked_aux_losses() -> dict:
    """{name: (per-layer sums since the last call, reduce group)} from megatron's tracker, then cleared.

    Each value is this rank's share: under sequence parallelism a rank routes only its slice
    of the tokens, and the reduce group (the TP group) holds the other shares to sum.
    """
    from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker, get_moe_layer_wise_logging_tracker

    tracked = {name: (entry["values"].detach().clone(), entry.get("reduce_group"))
               for name, entry in get_moe_layer_wise_logging_tracker().items()}
    clear_aux_losses_tracker()
    return tracked
