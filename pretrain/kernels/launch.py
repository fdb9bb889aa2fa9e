"""Launch sizes shared by the Triton kernels."""

import torch


def num_programs(n_rows: int, device: torch.device) -> int:
    """Programs for a kernel that loops over rows and keeps a per-program partial sum.

    Enough to fill a GPU (a few per SM); on the CPU interpreter few, because each program
    instance costs milliseconds there.
    """
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 4
    return max(1, min(n_rows, target))


def num_warps(block: int) -> int:
    """Warps for a program that holds `block` elements in registers: about 16 fp32 values per thread."""
    return max(1, min(16, block // 512))
