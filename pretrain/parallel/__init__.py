"""Parallel layout: process groups, megatron-core parallel state, DeepSpeed's mpu, CPU compat.

Kept import-free on purpose: `pretrain.parallel.config` is read on login nodes, which must
not import torch. Import the submodules: `layout` (init_distributed, check_layout),
`mpu` (MegatronMPU), `cpu_compat` (apply).
"""
