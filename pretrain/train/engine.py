"""DeepSpeed engine setup: ZeRO, precision, accumulation and clipping from the config."""

import deepspeed
import torch

from pretrain.config import Config
from pretrain.parallel import experts
from pretrain.parallel.layout import ParallelLayout
from pretrain.parallel.mpu import MegatronMPU
from pretrain.parallel.sequence_parallel import register_sequence_parallel_grad_hooks
from pretrain.train.schedule import lr_multiplier


def deepspeed_config(cfg: Config, layout: ParallelLayout) -> dict:
    """The DeepSpeed config dict; DeepSpeed derives nothing we did not decide here."""
    train = cfg.train
    accumulation = train.global_batch_size // (train.micro_batch_size * layout.data_parallel_size)
    return {
        "train_batch_size": train.global_batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.parallel.zero_stage},
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: norms' gains and biases are not regularized."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(cfg: Config, model: torch.nn.Module, layout: ParallelLayout):
    """Wrap the model in a DeepSpeed engine with AdamW and the warmup-cosine schedule."""
    optim = cfg.optim
    groups = param_groups(model, optim.weight_decay)
    if layout.expert_parallel_size > 1:
        experts.check_dispatcher(cfg.model.moe.token_dispatcher, layout.tensor_parallel_size)
        experts.prepare_model(model, cfg.model.moe.num_experts, layout.expert_parallel_size)
        groups = experts.split_param_groups(groups)
    # torch's AdamW instead of DeepSpeed's fused CPU/GPU Adam: no op compilation at start-up;
    # on a GPU its fused (single-kernel) implementation, which torch ships precompiled.
    optimizer = torch.optim.AdamW(groups, lr=optim.lr,
                                  betas=(optim.beta1, optim.beta2), eps=optim.eps, fused=torch.cuda.is_available())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(optim, cfg.train.train_steps))
    _skip_shm_comm_build()
    # megatron's finalize_model_grads would sum these over the TP group; DeepSpeed does not.
    register_sequence_parallel_grad_hooks(model)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg, layout), mpu=MegatronMPU())
    return engine


def _skip_shm_comm_build() -> None:
    # On CPU, DeepSpeed compiles a shared-memory all-reduce op on first initialize (about
    # 30 s of gcc per fresh machine). Plain gloo is enough for CPU runs.
    if not torch.cuda.is_available():
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def moe_aux_loss_scale(engine) -> float:
    """The factor DeepSpeed's backward puts on the loss: 1 / accumulation steps, times the fp16 loss
    scale. megatron adds the MoE aux loss's gradient in backward at its own scale, which must match."""
    scale = 1.0 / engine.gradient_accumulation_steps()
    if engine.fp16_enabled():
        scale *= float(engine.optimizer.cur_scale)
    return scale
