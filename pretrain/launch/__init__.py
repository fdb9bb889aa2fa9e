"""Running a config on a Slurm cluster from a login node: sbatch rendering, submit, resume,
status, cancel. Nothing here imports torch, deepspeed or megatron (a login node may lack
them, and `pretrain status` should answer at once); the job itself runs `pretrain train`.
"""
