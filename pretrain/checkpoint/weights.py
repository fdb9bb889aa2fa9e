"""Read a checkpoint's model weights on the CPU, without DeepSpeed or a process group.

DeepSpeed writes torch pickles. They are read with `weights_only=True`; the only classes
allowed beyond tensors and containers are DeepSpeed's ZeRO-stage enum and its loss-scaler
record, which the ZeRO-3 optimizer files carry (plain data, restored without running code).

Layouts (one set per tensor-parallel rank `mp_rank_XX`):
- ZeRO 0-2: `mp_rank_XX_model_states.pt` holds the module's full (per TP rank) weights in
  the training dtype.
- ZeRO 3: the module entries are empty; each data-parallel rank's
  `zero_pp_rank_D_mp_rank_XX_optim_states.pt` holds its slice of every parameter (fp32
  master), concatenated in `param_shapes` order, each parameter padded to a multiple of the
  data-parallel size. Frozen parameters are sliced the same way in the model-state files.
- MoE experts split over ranks (expert_parallel_size E > 1): the model file holds expert-parallel
  rank 0's experts; `experts_ep_EE_mp_rank_XX.pt` holds rank EE's, named by their global index
  (`...local_experts.<global>...`, as a model with E = 1 names them). Written by this project,
  not DeepSpeed (its own expert files are keyed to its own MoE module).
"""

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from pretrain.errors import ConfigError

_MP_RANK = re.compile(r"mp_rank_(\d+)")
LOCAL_EXPERT = re.compile(r"(.*\.local_experts\.)(\d+)(\..*)")  # prefix, expert index, rest
EXPERT_FILE = "experts_ep_{ep}_mp_rank_{tp:02d}.pt"  # ep: two digits, or * to find them all


def load_file(path: Path, deepspeed_classes: bool = False) -> dict:
    """torch.load with weights_only=True; optimizer files also need DeepSpeed's two data classes."""
    if not deepspeed_classes:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    with torch.serialization.safe_globals([ZeroStageEnum, LossScaler]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def tensor_parallel_shards(checkpoint_dir: Path) -> list[dict[str, torch.Tensor]]:
    """Each tensor-parallel rank's parameters (full over data parallelism), by TP rank."""
    checkpoint_dir = Path(checkpoint_dir)
    model_files = sorted(checkpoint_dir.glob("*model_states.pt"))
    if not model_files:
        raise ConfigError("--step", f"no DeepSpeed model files in {checkpoint_dir}")
    tp_ranks = sorted({int(_MP_RANK.search(p.name).group(1)) for p in model_files})
    return [_tp_rank_weights(checkpoint_dir, rank) for rank in tp_ranks]


def _tp_rank_weights(checkpoint_dir: Path, tp_rank: int) -> dict[str, torch.Tensor]:
    mp = f"mp_rank_{tp_rank:02d}"
    plain = checkpoint_dir / f"{mp}_model_states.pt"
    if plain.is_file():  # ZeRO 0-2: the module itself
        return _with_all_experts(_parameters(load_file(plain)["module"]), checkpoint_dir, tp_rank)
    model_files = _by_dp_rank(checkpoint_dir.glob(f"zero_pp_rank_*_{mp}_model_states.pt"))
    optim_files = _by_dp_rank(checkpoint_dir.glob(f"zero_pp_rank_*_{mp}_optim_states.pt"))
    return gather_zero3(model_files, optim_files)


def _with_all_experts(weights: dict[str, torch.Tensor], checkpoint_dir: Path, tp_rank: int) -> dict:
    """Every expert-parallel rank's experts in place of rank 0's (a checkpoint with split experts)."""
    files = sorted(checkpoint_dir.glob(EXPERT_FILE.format(ep="*", tp=tp_rank)))
    if not files:
        return weights
    weights = {name: tensor for name, tensor in weights.items() if not LOCAL_EXPERT.fullmatch(name)}
    for path in files:
        weights.update(load_file(path))
    return weights


def save_expert_weights(engine, checkpoint_dir: Path) -> None:
    """Write this rank's experts under their global index, once per expert-parallel and TP rank."""
    from megatron.core import parallel_state as ps

    from pretrain.parallel.experts import is_expert

    if ps.get_expert_data_parallel_rank() != 0:
        return  # the other ranks of its expert-data-parallel group hold the same experts
    first = local_expert_range(engine.module.config.num_moe_experts).start
    # A clone: the parameter is a view of a flat buffer, which torch.save would write whole.
    state = {renumber_expert(name, first): param.detach().clone()
             for name, param in engine.module.named_parameters() if is_expert(param)}
    ep_rank = f"{ps.get_expert_model_parallel_rank():02d}"
    path = checkpoint_dir / EXPERT_FILE.format(ep=ep_rank, tp=ps.get_tensor_model_parallel_rank())
    engine.checkpoint_engine.save(state, str(path))


def local_expert_range(num_experts: int) -> range:
    """The global indices of the experts this expert-parallel rank holds."""
    from megatron.core import parallel_state as ps

    per_rank = num_experts // ps.get_expert_model_parallel_world_size()
    first = ps.get_expert_model_parallel_rank() * per_rank
    return range(first, first + per_rank)


def renumber_expert(name: str, shift: int) -> str:
    """An expert weight's name with its expert index moved by `shift` (local <-> global index)."""
    prefix, index, rest = LOCAL_EXPERT.fullmatch(name).groups()
    return f"{prefix}{int(index) + shift}{rest}"


def _by_dp_rank(paths) -> list[Path]:
    return sorted(paths, key=lambda p: int(re.search(r"zero_pp_rank_(\d+)_", p.name).group(1)))


def _parameters(module_state: dict) -> dict[str, torch.Tensor]:
    # megatron's layers add `_extra_state` entries (None or bytes) for Transformer Engine: not weights.
    return {name: tensor for name, tensor in module_state.items()
            if isinstance(tensor, torch.Tensor) and not name.endswith("_extra_state")}


def gather_zero3(model_files: list[Path], optim_files: list[Path]) -> "Zero3Weights":
    """One TP rank's parameters from its ZeRO-3 partitions (one file pair per DP rank), read lazily."""
    return Zero3Weights(model_files, optim_files)


class Zero3Weights(Mapping):
    """name -> full parameter, assembled from every data-parallel rank's slice when it is read.

    The partition files are memory-mapped, so holding this costs no memory until a parameter
    is read; export reads a layer at a time.
    """

    def __init__(self, model_files: list[Path], optim_files: list[Path]):
        self.world = len(optim_files)
        self.model_files = model_files
        model_state = load_file(model_files[0])
        self.flats = [load_file(f, True)["optimizer_state_dict"]["fp32_flat_groups"] for f in optim_files]
        self.places: dict[str, tuple[int, int, torch.Size]] = {}  # name -> (param group, offset, shape)
        for group_index, group in enumerate(model_state["param_shapes"]):
            offset = 0
            for name, shape in group.items():
                self.places[name] = (group_index, offset, shape)
                offset += self._part(shape)
            if offset != self.flats[0][group_index].numel():
                raise ValueError(f"ZeRO-3 partitions of {optim_files[0].parent} hold "
                                 f"{self.flats[0][group_index].numel()} values of param group {group_index} per "
                                 f"rank, the parameter shapes need {offset}")
        self.frozen = model_state.get("frozen_param_shapes") or {}
        self._fragments = None

    def _part(self, shape: torch.Size) -> int:
        return -(-shape.numel() // self.world)  # each rank's slice, the last padded

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self.frozen:
            shape = self.frozen[name]
            pieces = [fragments[name].reshape(-1) for fragments in self.fragments()]
        else:
            group_index, offset, shape = self.places[name]
            part = self._part(shape)
            pieces = [flats[group_index].reshape(-1)[offset:offset + part] for flats in self.flats]
        return torch.cat(pieces)[:shape.numel()].view(shape).clone()

    def fragments(self) -> list[dict]:
        if self._fragments is None:
            self._fragments = [load_file(f)["frozen_param_fragments"] for f in self.model_files]
        return self._fragments

    def __iter__(self):
        return iter([*self.places, *self.frozen])

    def __len__(self) -> int:
        return len(self.places) + len(self.frozen)
