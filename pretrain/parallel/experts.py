"""Expert parallelism under DeepSpeed: megatron-core's experts, DeepSpeed's expert-aware ZeRO.

With `expert_parallel_size` = E > 1 megatron splits each MoE layer's experts over E ranks of the
data-parallel group (its expert-parallel group) and routes tokens between them with all-to-all.
Each expert's weights then live on the ranks of its expert-data-parallel group only, so their
gradients must be reduced over that group, never over the whole data-parallel group, and ZeRO
must partition them over that group too. DeepSpeed does exactly that for parameters it sees as
expert parameters (`param.allreduce == False`, which megatron already sets on experts when
E > 1), grouped in optimizer param groups marked `moe`, once its engine has found an MoE layer
in the model. Three things connect the two:

- `register_expert_groups` hands megatron's own expert-parallel and expert-data-parallel
  groups to DeepSpeed's group registry, so both libraries agree on who holds which expert.
- `ExpertGroupsMarker`, attached to the model, is what DeepSpeed's engine looks for
  (`isinstance(module, deepspeed.moe.layer.MoE)`). It owns no experts: DeepSpeed's own expert
  checkpoint files are keyed to its MoE module's parameter names, so it writes and reads none.
- After a checkpoint load, `restore_expert_weights` copies the fp32 master weights (each rank's
  own ZeRO partition, which holds its experts) back into the model: DeepSpeed's model file is
  written by data-parallel rank 0 and holds that rank's experts only.

Only ZeRO stages 1 and 2 are supported: stage 0 keeps optimizer state in rank 0's model file
(other ranks' experts' moments would be lost), and stage 3 has no expert partitioning here.
"""

import torch
from deepspeed.moe.layer import MoE
from deepspeed.utils import groups

from pretrain.errors import ConfigError


def check_dispatcher(token_dispatcher: str, tensor_parallel_size: int) -> None:
    """megatron's alltoall dispatcher gathers uneven token counts over the TP group when experts are
    split too; NCCL's all-gather takes uneven pieces, gloo's does not."""
    import torch.distributed as dist

    if token_dispatcher == "alltoall" and tensor_parallel_size > 1 and dist.get_backend() == "gloo":
        raise ConfigError("model.moe.token_dispatcher", "alltoall with tensor and expert parallelism needs the "
                          "nccl backend (gloo cannot gather uneven token counts); use allgather on gloo")


def group_name(expert_parallel_size: int) -> str:
    """DeepSpeed's name for the expert groups of this size."""
    return f"ep_size_{expert_parallel_size}"


def register_expert_groups(expert_parallel_size: int) -> None:
    """Make DeepSpeed use megatron's expert groups (megatron's parallel state must be initialized)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    name = group_name(expert_parallel_size)
    expert_group, data_group = ps.get_expert_model_parallel_group(), ps.get_expert_data_parallel_group()
    groups._EXPERT_PARALLEL_GROUP[name] = expert_group
    groups._EXPERT_PARALLEL_GROUP_RANKS[name] = dist.get_process_group_ranks(expert_group)
    groups._EXPERT_DATA_PARALLEL_GROUP[name] = data_group
    groups._EXPERT_DATA_PARALLEL_GROUP_RANKS[name] = dist.get_process_group_ranks(data_group)


class ExpertGroupsMarker(MoE):
    """Tells DeepSpeed's engine the model has expert-parallel layers; owns no experts itself."""

    def __init__(self, num_experts: int, expert_parallel_size: int):
        torch.nn.Module.__init__(self)  # not MoE.__init__: that would build DeepSpeed's own experts
        self.num_experts = num_experts
        self.expert_group_name = group_name(expert_parallel_size)
        self.num_local_experts = 0  # DeepSpeed saves and loads one file per local expert: none

    def set_deepspeed_parallelism(self, use_data_before_expert_parallel_: bool = False) -> None:
        """The groups are megatron's, registered before the engine is built."""


def is_expert(param: torch.nn.Parameter) -> bool:
    """A parameter that lives on one expert-parallel rank only (megatron marks it allreduce=False,
    the mark DeepSpeed reads too)."""
    return not getattr(param, "allreduce", True)


def prepare_model(model: torch.nn.Module, num_experts: int, expert_parallel_size: int) -> None:
    """Register the groups, name each expert parameter's group, attach the marker DeepSpeed looks for."""
    register_expert_groups(expert_parallel_size)
    for param in filter(is_expert, model.parameters()):
        param.group_name = group_name(expert_parallel_size)
    model.deepspeed_expert_groups = ExpertGroupsMarker(num_experts, expert_parallel_size)


def split_param_groups(param_groups: list[dict]) -> list[dict]:
    """Each optimizer param group split into its shared and its expert parameters (marked `moe`)."""
    split = []
    for group in param_groups:
        shared = [p for p in group["params"] if not is_expert(p)]
        experts = [p for p in group["params"] if is_expert(p)]
        split.append({**group, "params": shared})
        if experts:
            split.append({**group, "params": experts, "moe": True, "name": experts[0].group_name})
    return split


def restore_expert_weights(engine) -> None:
    """Set the model's weights from the optimizer's fp32 master partitions (after a load)."""
    engine.optimizer.update_lp_params()
