"""The GPU peak table, device-name detection and the MFU formula."""

import pytest

from pretrain.monitor.mfu import PEAK_FLOPS, gpu_kind, mfu, peak_flops


@pytest.mark.parametrize("name, kind", [
    ("NVIDIA A100-SXM4-40GB", "a100_40gb"),
    ("NVIDIA A100-SXM4-80GB", "a100_80gb"),
    ("NVIDIA A100 80GB PCIe", "a100_80gb"),
    ("NVIDIA H100 80GB HBM3", "h100_sxm"),
    ("NVIDIA H100 PCIe", "h100_pcie"),
    ("NVIDIA H100 NVL", None),
    ("NVIDIA H200", "h200"),
    ("NVIDIA B200", "b200"),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_gpu_kind_from_the_device_name(name, kind):
    assert gpu_kind(name) == kind


def test_peaks_are_dense_spec_sheet_numbers():
    # Dense = half of the spec sheets' "with sparsity" figures.
    assert peak_flops("h100_sxm", "bf16") == 989.4e12 and peak_flops("h100_sxm", "fp8") == 1978.9e12
    assert peak_flops("a100_80gb", "bf16") == 312e12 and peak_flops("a100_40gb", "fp8") is None
    assert peak_flops("b200", "fp8") == 2 * peak_flops("b200", "bf16")
    assert all(peak_flops(gpu, "fp32") is None for gpu in PEAK_FLOPS)
    assert peak_flops(None, "bf16") is None


def test_mfu_is_achieved_over_peak_times_devices():
    assert mfu(400e12, 1000e12, 2) == pytest.approx(0.2)
    assert mfu(400e12, None, 2) is None
