"""The CPU shim: megatron's RNG tracker, causal mask and device calls work without CUDA."""

import pytest
import torch
from dist_utils import single_process_group

from pretrain.parallel import cpu_compat

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the shim is a no-op with CUDA")


@pytest.fixture(scope="module", autouse=True)
def megatron_state():
    with single_process_group(seed=7) as layout:
        yield layout


def draw(tracker, name: str) -> torch.Tensor:
    with tracker.fork(name):
        return torch.rand(4)


def test_rng_tracker_states_save_and_restore_exactly():
    from megatron.core import tensor_parallel

    tracker = tensor_parallel.get_cuda_rng_tracker()
    names = ["model-parallel-rng", "data-parallel-rng"]
    saved = {k: v.clone() for k, v in tracker.get_states().items()}
    default_state = torch.get_rng_state()
    first = {name: draw(tracker, name) for name in names}
    assert not torch.equal(first[names[0]], first[names[1]])  # separate streams
    assert torch.equal(torch.get_rng_state(), default_state)  # fork restores the default stream

    tracker.set_states(saved)
    again = {name: draw(tracker, name) for name in names}
    for name in names:
        assert torch.equal(first[name], again[name])


def test_default_causal_mask_is_built_on_the_cpu():
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils

    for module in (utils, fused_softmax):
        mask = module.get_default_causal_mask(3)
        assert mask.device.type == "cpu"
        assert mask.tolist() == [[False, True, True], [False, False, True], [False, False, False]]


def test_apply_is_idempotent_and_leaves_cuda_hosts_alone(monkeypatch):
    redirected = torch.cuda.current_device
    cpu_compat.apply()
    assert cpu_compat.is_applied() and torch.cuda.current_device is redirected
    assert torch.cuda.current_device() == torch.device("cpu")

    sentinel = object()
    monkeypatch.setattr(cpu_compat, "_applied", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", sentinel)
    cpu_compat.apply()
    assert torch.cuda.current_device is sentinel and not cpu_compat.is_applied()
