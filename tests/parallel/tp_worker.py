"""A few AdamW steps of the tiny model at a given tensor-parallel size, and an mpu report.

Imported by the tests (tp=1, in the test process) and run under torchrun for tp=2:
    torchrun --nproc-per-node 2 tests/parallel/tp_worker.py OUT.json
"""

import json
import sys

import torch
import torch.distributed as dist

from pretrain.model.config import ModelConfig
from pretrain.model.gpt import build_model, language_model_loss
from pretrain.parallel.config import ParallelConfig
from pretrain.parallel.layout import destroy_distributed, init_distributed, set_seed

SEED = 1234
VOCAB = 256
STEPS = 5


def tiny_config() -> ModelConfig:
    return ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                       ffn_hidden_size=176, seq_length=32)


def fixed_batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, 33), generator=torch.Generator().manual_seed(0))


def train_losses(tensor_parallel_size: int, steps: int = STEPS) -> list[float]:
    """Losses of `steps` AdamW steps on one fixed batch, from megatron's seeded CPU init."""
    set_seed(SEED)
    model = build_model(tiny_config(), VOCAB, tensor_parallel_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    tokens = fixed_batch()
    losses = []
    for _ in range(steps):
        loss = language_model_loss(model, tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def mpu_report() -> dict:
    """Every getter DeepSpeed calls on the mpu, with this rank's answer (groups as rank lists)."""
    from pretrain.parallel.mpu import MegatronMPU

    mpu = MegatronMPU()
    report = {}
    for name in dir(mpu):
        if name.startswith("get_"):
            value = getattr(mpu, name)()
            report[name] = dist.get_process_group_ranks(value) if isinstance(value, dist.ProcessGroup) else value
    report["has_initialize_sequence_parallel"] = hasattr(mpu, "initialize_sequence_parallel")
    return report


def main(out_path: str) -> None:
    layout = init_distributed(ParallelConfig(tensor_parallel_size=2), seed=SEED)
    result = {"layout": vars(layout), "losses": train_losses(2), "mpu": mpu_report()}
    results = [None] * layout.world_size
    dist.all_gather_object(results, result)
    if layout.rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
