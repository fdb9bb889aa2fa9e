"""Training-step throughput: plain torch AdamW loop (baseline) vs the DeepSpeed engine.

Runs in one process on this machine's device (CPU here, a GPU where one exists), on the same
model and batch, and prints tokens/s per setup and the ratio to the baseline: the price of
the engine (ZeRO bookkeeping, gradient hooks) at data-parallel size 1.

    python benchmarks/train_step.py [model=small] [train.micro_batch_size=8] ...
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from pretrain.train.quiet import silence_known_warnings  # noqa: E402

silence_known_warnings()

from timing import best_of_rounds  # noqa: E402

from pretrain.config import compose_config  # noqa: E402
from pretrain.model.gpt import build_model, flops_per_token, language_model_loss  # noqa: E402
from pretrain.parallel.layout import init_distributed  # noqa: E402
from pretrain.train.engine import build_engine, param_groups  # noqa: E402

VOCAB = 4096
WARMUP, STEPS, ROUNDS = 2, 5, 3


def plain_step(model, batch, optimizer):
    def step():
        loss = language_model_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def engine_step(engine, batch):
    def step():
        loss = language_model_loss(engine, batch)
        engine.backward(loss)
        engine.step()
    return step


def main(overrides: list[str]) -> None:
    cfg = compose_config(["model=small", "train.precision=fp32", "train.micro_batch_size=8",
                          "train.global_batch_size=8", *overrides])
    layout = init_distributed(cfg.parallel, cfg.train.seed)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    batch = torch.randint(0, VOCAB, (cfg.train.micro_batch_size, cfg.model.seq_length + 1), device=device)
    tokens = batch.numel() - batch.shape[0]
    model = build_model(cfg.model, VOCAB, 1).to(device)
    setups = {"torch AdamW loop (baseline)": plain_step(model, batch, torch.optim.AdamW(param_groups(model, 0.1)))}
    for stage in (0, 1):
        cfg.parallel.zero_stage = stage
        engine = build_engine(cfg, build_model(cfg.model, VOCAB, 1), layout)
        setups[f"DeepSpeed ZeRO-{stage}"] = engine_step(engine, batch)
    rows = [(name, tokens / seconds) for name, seconds in best_of_rounds(setups, ROUNDS, STEPS, WARMUP).items()]
    print(f"\nmodel {cfg.model.name}, micro batch {cfg.model.seq_length} x {cfg.train.micro_batch_size}, "
          f"{flops_per_token(cfg.model, VOCAB) / 1e6:.1f} MFLOP/token, device {device}, "
          f"threads {torch.get_num_threads()}")
    print(f"{'setup':32} {'tokens/s':>10} {'vs baseline':>12}")
    for name, rate in rows:
        print(f"{name:32} {rate:10.0f} {rate / rows[0][1]:11.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
