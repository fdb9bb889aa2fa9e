"""Model FLOPs utilization: achieved model FLOP/s over the devices' peak; the per-GPU hardware
facts (peak FLOP/s, memory) it and `pretrain plan` read.

Peaks are NVIDIA's spec-sheet dense numbers (the "with sparsity" figures are twice these)
for the SXM parts unless named otherwise. MFU counts the model's FLOPs only (see
`pretrain.model.flops.flops_per_token`), not recomputation, so it compares across
checkpointing modes and with published MFUs.
"""

PEAK_FLOPS = {
    # GPU: {precision: dense FLOP/s}; fp8 absent where the GPU has no fp8 tensor cores.
    "a100_40gb": {"bf16": 312e12, "fp16": 312e12},
    "a100_80gb": {"bf16": 312e12, "fp16": 312e12},
    "h100_sxm": {"bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12},
    "h100_pcie": {"bf16": 756.5e12, "fp16": 756.5e12, "fp8": 1513e12},
    "h200": {"bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12},
    "b200": {"bf16": 2250e12, "fp16": 2250e12, "fp8": 4500e12},
}
# Memory of one GPU in GiB as the driver reports it.
GPU_MEMORY_GIB = {"a100_40gb": 40, "a100_80gb": 80, "h100_sxm": 80, "h100_pcie": 80, "h200": 140, "b200": 179}


def gpu_kind(device_name: str) -> str | None:
    """The PEAK_FLOPS key for a torch.cuda device name ("NVIDIA H100 80GB HBM3"), or None."""
    name = device_name.upper()
    if "H200" in name:
        return "h200"
    if "B200" in name:
        return "b200"
    if "H100" in name:
        if "PCIE" in name:
            return "h100_pcie"
        # The NVL part has other clocks; an unknown peak is better than a wrong MFU.
        return None if "NVL" in name else "h100_sxm"
    if "A100" in name:
        return "a100_80gb" if "80G" in name else "a100_40gb"
    return None


def peak_flops(gpu: str | None, precision: str) -> float | None:
    """Dense peak FLOP/s of one GPU at `precision` (bf16, fp16, fp8); None when unknown (fp32, CPU)."""
    return PEAK_FLOPS.get(gpu or "", {}).get(precision)


def local_peak_flops(precision: str, override: float = 0.0) -> float | None:
    """This process's device peak: `override` when set, else the detected GPU's; None on the CPU."""
    if override:
        return override
    import torch

    if not torch.cuda.is_available():
        return None
    return peak_flops(gpu_kind(torch.cuda.get_device_name()), precision)


def mfu(flops_per_second: float, peak_per_device: float | None, devices: int) -> float | None:
    """Achieved model FLOP/s over the peak of all devices; None when the peak is unknown."""
    if not peak_per_device:
        return None
    return flops_per_second / (peak_per_device * devices)
