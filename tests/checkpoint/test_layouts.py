"""Which layout changes resume through the universal format, which are refused, and what a
checkpoint's manifest leaves out (its conversion, hidden work folders)."""

import pytest
import torch
from test_store import fake_checkpoint

from pretrain.checkpoint import manifest
from pretrain.checkpoint.elastic import check_convertible, needs_universal
from pretrain.errors import ConfigError


def layout(dp=1, tp=1, zero=1):
    return {"data_parallel_size": dp, "tensor_parallel_size": tp, "zero_stage": zero}


@pytest.mark.parametrize("saved, current", [
    (layout(dp=2), layout(dp=1)),
    (layout(zero=1), layout(zero=2)),
    (layout(tp=1, zero=2), layout(tp=2, zero=2)),
    (layout(tp=2, zero=3), layout(tp=1, zero=3)),
    (layout(dp=2, zero=3), layout(dp=1, zero=3)),
])
def test_supported_changes_go_through_the_universal_format(saved, current):
    assert needs_universal(saved, current)


def test_the_same_layout_and_a_stage_0_dp_change_load_natively():
    assert not needs_universal(layout(dp=2), layout(dp=2))
    assert not needs_universal(None, layout(dp=2))  # written before layouts were recorded
    assert not needs_universal(layout(dp=2, zero=0), layout(dp=1, zero=0))


@pytest.mark.parametrize("saved, current, reason", [
    (layout(zero=1), layout(zero=3), "between ZeRO-3 and ZeRO-1/2"),
    (layout(zero=3), layout(zero=2), "between ZeRO-3 and ZeRO-1/2"),
    (layout(tp=1, zero=3), layout(tp=2, zero=3), "cannot raise the tensor-parallel size of a ZeRO-3"),
    (layout(zero=1), layout(zero=0), "ZeRO stage 0"),
    (layout(zero=0), layout(zero=1), "ZeRO stage 0"),
    (layout(tp=2, zero=0), layout(tp=1, zero=0), "stage 0 can change only the data-parallel size"),
])
def test_unsupported_changes_are_refused_naming_both_layouts(saved, current, reason):
    with pytest.raises(ConfigError) as error:
        needs_universal(saved, current)
    message = str(error.value)
    assert "dp=1" in message and f"zero={saved['zero_stage']}" in message and reason in message
    assert "\n" not in message


def test_the_manifest_leaves_out_the_conversion_and_hidden_folders(tmp_path):
    directory = fake_checkpoint(tmp_path, 3)
    listed = manifest.checkpoint_files(directory)
    (directory / "universal" / "zero").mkdir(parents=True)
    (directory / "universal" / "zero" / "fp32.pt").write_bytes(b"x")
    (directory / ".universal.tmp-1" / "input").mkdir(parents=True)
    (directory / ".universal.tmp-1" / "input" / "a.pt").write_bytes(b"x")
    assert manifest.checkpoint_files(directory) == listed
    assert "rng/rank_00000.pt" in listed


def test_a_mixture_of_experts_model_keeps_its_layout():
    dense = torch.nn.ModuleDict({"mlp": torch.nn.ModuleDict({"linear_fc1": torch.nn.Linear(2, 2)})})
    check_convertible(dense, layout(dp=2), layout(dp=1))
    expert_list = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    experts = torch.nn.ModuleDict({"mlp": torch.nn.ModuleDict({"experts": expert_list})})
    with pytest.raises(ConfigError, match="mixture-of-experts model resumes only on the layout it was saved with"):
        check_convertible(experts, layout(dp=2), layout(dp=1))
