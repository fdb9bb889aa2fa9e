"""Resume on another parallel layout through DeepSpeed's universal checkpoint.

A checkpoint records the layout it was written with (data-parallel size, tensor-parallel
size, ZeRO stage). A run that resumes on another layout converts the checkpoint once into
step_N/universal/ (DeepSpeed's `ds_to_universal`: every parameter and Adam moment as a full,
unpartitioned tensor) and loads that with `load_universal`. The conversion is a pure function
of the checkpoint, so it is built in a hidden folder and renamed into place: a crash mid-way
leaves only the hidden folder, and the next resume converts again.

The converter merges tensor-parallel slices by name, so the model must declare how
megatron-core splits each weight (`universal_checkpoint_info`). A pattern left out does not
fail: it converts and loads wrong weights, which is why the elastic test compares the full
fp32 weights and Adam moments before and after each change of layout.

What cannot change (DeepSpeed 0.19 fails or loads nothing): from or to ZeRO stage 0 (except a
data-parallel change at stage 0, where the optimizer state is not partitioned and loads
natively), between ZeRO-3 and ZeRO-1/2, and a larger tensor-parallel size at ZeRO-3. A
mixture-of-experts model keeps its layout: the patterns here cover the dense model only.
"""

import argparse
import contextlib
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain.checkpoint import manifest
from pretrain.checkpoint.weights import load_file
from pretrain.errors import ConfigError
from pretrain.io import fsync_path

UNIVERSAL = "universal"

# megatron-core's parameter names (GPTModel with the local layer spec), by how TP splits them.
# Column-parallel weights (linear_qkv: group-major, so plain concatenation) need no pattern.
_REPLICATED = [r".*layernorm\.weight$", r".*layernorm\.bias$", r".*\.linear_proj\.bias$", r".*\.linear_fc2\.bias$"]
_ROW_PARALLEL = [r".*\.linear_proj\.weight$", r".*\.linear_fc2\.weight$"]
_VOCABULARY = [r"^embedding\.word_embeddings\.weight$", r"^output_layer\.weight$"]
_GLU = [r".*\.linear_fc1\.weight$"]  # [gate; up] per TP rank: each half is split separately
_GLU_NAME = re.compile(_GLU[0])


def layout_of(engine) -> dict:
    """The parallel layout a checkpoint of this engine is written with."""
    from megatron.core import parallel_state

    layout = {"data_parallel_size": parallel_state.get_data_parallel_world_size(),
              "tensor_parallel_size": parallel_state.get_tensor_model_parallel_world_size(),
              "zero_stage": engine.zero_optimization_stage()}
    expert_parallel_size = parallel_state.get_expert_model_parallel_world_size()
    if expert_parallel_size > 1:  # absent at 1, as in checkpoints written before it was recorded
        layout["expert_parallel_size"] = expert_parallel_size
    return layout


def describe(layout: dict) -> str:
    experts = f" ep={layout['expert_parallel_size']}" if "expert_parallel_size" in layout else ""
    return f"dp={layout['data_parallel_size']} tp={layout['tensor_parallel_size']}{experts} zero={layout['zero_stage']}"


def needs_universal(saved: dict | None, current: dict) -> bool:
    """Whether loading a checkpoint of layout `saved` on `current` goes through the universal format.

    Raises ConfigError for a change DeepSpeed cannot make.
    """
    if saved is None or saved == current:
        return False  # a checkpoint written before layouts were recorded: the same layout
    problem = _unsupported(saved, current)
    if problem:
        raise ConfigError("parallel", f"cannot resume a checkpoint written with {describe(saved)} on "
                                      f"{describe(current)}: {problem}")
    return not (saved["zero_stage"] == current["zero_stage"] == 0)


def _unsupported(saved: dict, current: dict) -> str | None:
    old, new = saved["zero_stage"], current["zero_stage"]
    tp_changed = saved["tensor_parallel_size"] != current["tensor_parallel_size"]
    if old == new == 0:
        return "ZeRO stage 0 can change only the data-parallel size" if tp_changed else None
    if 0 in (old, new):
        return "a ZeRO stage 0 checkpoint has no partitioned optimizer state to convert, and stage 0 cannot load one"
    if (old == 3) != (new == 3):
        return "DeepSpeed's universal checkpoint does not convert between ZeRO-3 and ZeRO-1/2"
    if new == 3 and current["tensor_parallel_size"] > saved["tensor_parallel_size"]:
        return "DeepSpeed cannot raise the tensor-parallel size of a ZeRO-3 checkpoint"
    return None


def check_convertible(model: torch.nn.Module, saved: dict, current: dict) -> None:
    """Refuse a model whose weights the patterns below do not describe (megatron's MoE experts)."""
    if any(".experts." in name for name, _ in model.named_parameters()):
        raise ConfigError("model.moe.num_experts",
                          f"cannot resume a checkpoint written with {describe(saved)} on {describe(current)}: "
                          "a mixture-of-experts model resumes only on the layout it was saved with "
                          "(the universal conversion here does not describe megatron's expert weights)")


def universal_checkpoint_info(model: torch.nn.Module, vocab_size: int) -> dict:
    """How megatron-core splits each weight, for the converter; set as `model.universal_checkpoint_info`.

    `vocab_size` is the tokenizer's (unpadded) size: the converter strips the TP-dependent
    padding rows and a load pads to the new layout's size again.
    """
    names = [name for name, _ in model.named_parameters()]

    def used(patterns):  # the converter's strict mode refuses a pattern that matches nothing
        return [p for p in patterns if any(re.match(p, name) for name in names)]

    return {
        "tp_replicated_parameter_patterns": used(_REPLICATED),
        "parameter_with_row_parallelism_patterns": used(_ROW_PARALLEL),
        "vocabulary_parameter_patterns": used(_VOCABULARY),
        "original_vocab_size": vocab_size,
        "parameter_with_2_sub_params_cat_dim_0": used(_GLU),
    }


def universal_dir(checkpoint: Path) -> Path:
    return checkpoint / UNIVERSAL


def ensure_universal(checkpoint: Path, warn) -> Path:
    """step_N/universal, converted by rank 0 unless a sealed one verifies; every rank calls this."""
    target = universal_dir(checkpoint)
    problem = _check_sealed(target)  # the same answer on every rank
    if not problem:
        return target
    if dist.get_rank() == 0:
        try:
            _convert_again(checkpoint, target, problem, warn)
        except Exception as error:  # the other ranks wait at the barrier; the check after it fails for all
            warn(f"the universal conversion of {checkpoint} failed: {error}")
    dist.barrier()
    problem = _check_sealed(target)
    if problem:
        raise RuntimeError(f"the universal conversion of {checkpoint} does not verify: {problem}")
    return target


def _convert_again(checkpoint: Path, target: Path, problem: str, warn) -> None:
    for leftover in checkpoint.glob(f".{UNIVERSAL}.tmp-*"):  # a conversion that crashed
        shutil.rmtree(leftover, ignore_errors=True)
    if target.exists():
        warn(f"converting {checkpoint} again: {problem}")
        shutil.rmtree(target)
    warn(f"converting {checkpoint} to DeepSpeed's universal format for the new layout")
    convert(checkpoint, target)


def _check_sealed(directory: Path) -> str | None:
    """This rank's share of the files against the universal folder's manifest, agreed by all ranks."""
    if not (directory / manifest.MANIFEST).is_file():
        problem = "it has no manifest"
    else:
        problem = manifest.verify(directory, json.loads((directory / manifest.MANIFEST).read_text()), "size")
    problems = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    return next((p for p in problems if p), None)


def convert(checkpoint: Path, target: Path) -> None:
    """Run ds_to_universal on `checkpoint` into `target` (one process; a hidden folder until sealed)."""
    from deepspeed.checkpoint import ds_to_universal

    scratch = Path(tempfile.mkdtemp(prefix=f".{UNIVERSAL}.tmp-", dir=checkpoint))
    try:
        source = _converter_input(checkpoint, scratch / "input")
        output = scratch / UNIVERSAL  # the converter writes `latest_universal` beside its output
        args = argparse.Namespace(input_folder=str(source), output_folder=str(output), num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True,
                                  inject_missing_state=False)
        with contextlib.redirect_stdout(io.StringIO()):  # its progress bars and prints
            ds_to_universal.main(args)
        manifest.seal_local(output)
        output.rename(target)
        fsync_path(checkpoint)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _converter_input(checkpoint: Path, folder: Path) -> Path:
    """DeepSpeed's files of the checkpoint, with megatron's `_extra_state` entries removed.

    megatron modules save an `_extra_state: None` per layer, which the converter tries to
    turn into a tensor and fails on. The optimizer files are linked, not copied.
    """
    folder.mkdir(parents=True)
    for path in checkpoint.glob("*_optim_states.pt"):
        (folder / path.name).symlink_to(path)
    for path in checkpoint.glob("*model_states.pt"):
        state = load_file(path, deepspeed_classes=True)  # no unpickling beyond tensors and plain data
        state["module"] = {k: v for k, v in state["module"].items() if not k.endswith("._extra_state")}
        torch.save(state, folder / path.name)
    return folder


@contextlib.contextmanager
def loading_universal(engine):
    """DeepSpeed reads `load_universal` only while loading, so it is switched on just for that."""
    config = engine._config
    saved, config.load_universal_checkpoint = config.load_universal_checkpoint, True
    try:
        yield
    finally:
        config.load_universal_checkpoint = saved


def full_state(engine) -> dict[str, dict[str, torch.Tensor]]:
    """Every parameter's fp32 weight and Adam moments as whole tensors, whatever the layout.

    Built from megatron's own split attributes, independently of the converter's patterns,
    so comparing it before and after a change of layout checks the conversion. Collective:
    every rank calls it; each gets the same result.
    """
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    _relink_optimizer_state(engine.optimizer)
    out = {}
    for name, param in engine.module.named_parameters():
        pieces = {"fp32": safe_get_full_fp32_param(param),
                  "exp_avg": safe_get_full_optimizer_state(param, "exp_avg"),
                  "exp_avg_sq": safe_get_full_optimizer_state(param, "exp_avg_sq")}
        out[name] = {key: _gather_tensor_parallel(name, param, value.detach()).cpu()  # gathered where it lives: NCCL
                     for key, value in pieces.items() if value is not None}
    return out


def _relink_optimizer_state(optimizer) -> None:
    # ZeRO-1/2 link each parameter to its Adam moments once, right after stepping the first
    # parameter group, so the later groups' parameters (norm weights here) stay unlinked.
    if getattr(optimizer, "_hp_optimizer_states_linked", None):
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()


def _gather_tensor_parallel(name: str, param, local: torch.Tensor) -> torch.Tensor:
    from megatron.core import parallel_state

    size = parallel_state.get_tensor_model_parallel_world_size()
    if size == 1 or not getattr(param, "tensor_model_parallel", False):
        return local
    shards = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(shards, local.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
    dim = param.partition_dim
    if _GLU_NAME.match(name):  # each rank holds [its gate rows; its up rows]
        halves = [shard.chunk(2, dim=dim) for shard in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=dim)
    return torch.cat(shards, dim=dim)
