"""Trainer overhead: the whole training step as `pretrain train` runs it, against a bare loop.

    python benchmarks/trainer_overhead.py [--data-root DIR] [overrides ...]

Ours: the trainer `pretrain train` builds (DeepSpeed engine at ZeRO-1, the loader reading
webdataset shards, every callback of a default run: metrics log and stdout line, step metrics,
restarts, stragglers, non-finite and spike guards, watchdog, signals, checkpointing at its
interval), one Trainer.fit loop body per step. Baseline: a fresh GPTModel of the same config
and seed, the same micro-batches read into memory beforehand, torch AdamW and gradient
clipping: forward, backward and step only. One process, interleaved rounds, best of each.
The input is the standard library cleaned and tokenized as in benchmarks/data_shard.py.
"""

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from pretrain.train.quiet import silence_known_warnings  # noqa: E402

silence_known_warnings()

from data_shard import build_root  # noqa: E402
from timing import best_of_rounds  # noqa: E402

from pretrain.config import compose_config, compose_dict  # noqa: E402
from pretrain.data.config import ShardConfig  # noqa: E402
from pretrain.data.shard import write_shards  # noqa: E402
from pretrain.model.gpt import build_model, language_model_loss  # noqa: E402
from pretrain.parallel.layout import init_distributed, set_seed  # noqa: E402
from pretrain.train.engine import param_groups  # noqa: E402
from pretrain.train.inputs import check_inputs  # noqa: E402
from pretrain.train.run import build_trainer, train_batches  # noqa: E402

SEQ, WARMUP, STEPS, ROUNDS = 256, 1, 10, 5


def overrides(root: Path, run_dir: Path, extra: list[str]) -> list[str]:
    return ["model=small", f"model.seq_length={SEQ}", f"data.shard.sequence_length={SEQ}", f"data.root={root}",
            "train.micro_batch_size=8", "train.global_batch_size=16", "train.precision=fp32",
            "train.eval_interval=0", "train.train_steps=1000000", f"train.run_dir={run_dir}",
            "logging.wandb.enabled=false", "logging.stragglers.interval=10", *extra]


def ours(cfg, config_dict, layout):
    trainer = build_trainer(cfg, config_dict, layout, check_inputs(cfg))
    for callback in trainer.callbacks:
        callback.on_train_start(trainer)

    def step():
        metrics = trainer.train_step()
        trainer.step += 1
        for callback in trainer.callbacks:
            callback.on_step_end(trainer, metrics)
    return step


def bare(cfg, layout, vocab_size: int):
    set_seed(cfg.train.seed)
    model = build_model(cfg.model, vocab_size, 1)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr)
    loader = train_batches(cfg, layout)
    batches = itertools.cycle([loader.next_global_batch() for _ in range(STEPS)])

    def step():
        micro_batches = next(batches)
        for micro_batch in micro_batches:
            (language_model_loss(model, micro_batch["tokens"]) / len(micro_batches)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root", type=Path, help="a folder with cleaned/ and tokenizer/ (default: build one)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root or Path(tmp)
        if args.data_root is None:
            build_root(root)
        write_shards(ShardConfig(sequence_length=SEQ, progress=False), root / "cleaned", root / "tokenizer",
                     root / "dataset")
        names = overrides(root, Path(tmp) / "run", args.overrides)
        cfg = compose_config(names)
        layout = init_distributed(cfg.parallel, cfg.train.seed)
        setups = {"bare loop (model, AdamW, batches in memory)": bare(cfg, layout, 4096),
                  "pretrain Trainer (engine, loader, callbacks)": ours(cfg, compose_dict(names), layout)}
        report(best_of_rounds(setups, ROUNDS, STEPS, WARMUP), cfg.train.global_batch_size * SEQ)


def report(best: dict, tokens_per_step: int) -> None:
    base = next(iter(best.values()))
    print(f"\nmodel small, {tokens_per_step} tokens per step, {STEPS} steps x {ROUNDS} rounds, best round, "
          f"threads {torch.get_num_threads()}\n")
    print("| setup | s/step | tokens/s | overhead vs bare |")
    print("|---|---:|---:|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.4f} | {tokens_per_step / seconds:,.0f} | {100 * (seconds / base - 1):+.1f}% |")


if __name__ == "__main__":
    main()
