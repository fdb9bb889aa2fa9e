"""Mixture of experts: megatron-core's MoE layer as the MLP of every decoder layer.

A top-k softmax router sends each token to `router_topk` of `num_experts` SwiGLU experts
(megatron's SequentialMLP: one local MLP per expert, no grouped-GEMM package needed). The
load-balancing auxiliary loss is added by megatron in backward (MoEAuxLossAutoScaler attaches
its gradient to the layer's output), so the training loss needs no extra term; its value is
tracked per layer by megatron and read here for logging.

Each expert's initial weights depend only on the seed, its layer and its global index, so a
model starts the same whatever `expert_parallel_size` splits the experts over ranks.
"""

import hashlib

import torch
from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec
from megatron.core.transformer.moe.experts import SequentialMLP
from megatron.core.transformer.spec_utils import ModuleSpec

from pretrain.model.config import ModelConfig, MoEConfig


def moe_mlp_spec(cfg: ModelConfig) -> ModuleSpec:
    """megatron's MoE layer spec from local (non-TE) linear layers."""
    spec = get_moe_module_spec(use_te=False, num_experts=cfg.moe.num_experts, moe_grouped_gemm=False)
    spec.submodules.experts.module = LayoutFreeExperts
    return spec


class LayoutFreeExperts(SequentialMLP):
    """megatron's SequentialMLP (one MLP per local expert), built without touching the default
    random stream: the layers built after it draw the same numbers for any number of local
    experts. Its weights are drawn afterwards by `seed_experts`."""

    def __init__(self, *args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            super().__init__(*args, **kwargs)


def seed_experts(model: torch.nn.Module, seed: int) -> None:
    """Draw every local expert's weights from a generator of (seed, layer, global expert index).

    Like megatron's CPU initialization, a weight split over expert-tensor-parallel ranks is drawn
    whole and this rank keeps its slice, with megatron's init methods (fc2: the output-layer one).
    """
    from megatron.core import parallel_state as ps

    for layer in model.decoder.layers:
        experts = getattr(layer.mlp, "experts", None)
        if not isinstance(experts, SequentialMLP) or experts.local_experts[0].linear_fc1.weight.is_meta:
            continue  # a dense layer, or a model built on the meta device only to be counted
        first = ps.get_expert_model_parallel_rank() * experts.num_local_experts
        for local, expert in enumerate(experts.local_experts):
            config = expert.config
            draws = [(expert.linear_fc1.weight, config.init_method),
                     (expert.linear_fc2.weight, config.output_layer_init_method)]
            for index, (weight, init_method) in enumerate(draws):
                generator = torch.Generator(device=weight.device)
                generator.manual_seed(_stream(seed, layer.layer_number, first + local, index))
                _draw_slice(weight, init_method, generator)


def _stream(*numbers: int) -> int:
    """A 64-bit seed that is the same in every process and Python version."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, numbers)).encode()).digest()[:8], "little")


@torch.no_grad()
def _draw_slice(weight: torch.nn.Parameter, init_method, generator: torch.Generator) -> None:
    from megatron.core import parallel_state as ps

    dim, size = getattr(weight, "partition_dim", 0), ps.get_expert_tensor_parallel_world_size()
    shape = list(weight.shape)
    shape[dim] *= size
    full = torch.empty(shape, dtype=torch.float32, device=weight.device)
    init_method(full, generator=generator)  # megatron's init methods are torch.nn.init.normal_ partials
    # megatron's split: `stride` interleaved pieces per rank (the gate and up halves of fc1).
    pieces = torch.split(full, weight.shape[dim] // getattr(weight, "partition_stride", 1), dim)
    weight.copy_(torch.cat(pieces[ps.get_expert_tensor_parallel_rank()::size], dim))


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
