"""Assemble a training run from the config: processes, data, model, engine, callbacks."""

import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pretrain.checkpoint import store
from pretrain.checkpoint.elastic import universal_checkpoint_info
from pretrain.config import Config
from pretrain.data.loader import ShardedSamples, TrainBatches, valid_batches
from pretrain.data.prefetch import PrefetchBatches
from pretrain.io import write_atomic
from pretrain.model.documents import ModelInputs
from pretrain.model.gpt import build_model, flops_per_token, padded_vocab_size
from pretrain.model.transfer import prepare_model
from pretrain.monitor.evaluators import load_evaluators
from pretrain.monitor.metrics import MetricsFile
from pretrain.monitor.mfu import local_peak_flops
from pretrain.monitor.stragglers import StragglerDetector
from pretrain.monitor.wandb_run import start_run
from pretrain.parallel.layout import ParallelLayout, destroy_distributed, init_distributed
from pretrain.tokenizers.tokenizer import Tokenizer
from pretrain.train import callbacks as cb
from pretrain.train.engine import build_engine
from pretrain.train.faults import pause_at_startup
from pretrain.train.guards import LossSpikeGuard, NonFiniteGuard
from pretrain.train.inputs import check_inputs
from pretrain.train.signals import StopOnSignal
from pretrain.train.trainer import Trainer
from pretrain.train.watchdog import StepWatchdog

INJECT_NONFINITE = "PRETRAIN_INJECT_NONFINITE_STEPS"
"""Fault injection for tests: comma-separated steps whose loss is made NaN."""
INJECT_HANG = "PRETRAIN_INJECT_HANG"
"""Fault injection for tests: "RANK:STEP", that rank stops responding before that step."""
INJECT_SLOW = "PRETRAIN_INJECT_SLOW"
"""Fault injection for tests: "RANK:SECONDS", that rank sleeps this long after each forward."""

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def run_training(cfg: Config, config_dict: dict) -> int:
    """Train (resuming from the run directory's latest checkpoint if there is one); the exit code."""
    tokenizer = check_inputs(cfg)
    layout = init_distributed(cfg.parallel, cfg.train.seed)
    try:
        trainer = build_trainer(cfg, config_dict, layout, tokenizer)
        code = trainer.fit()
        trainer.print(f"run directory: {Path(cfg.train.run_dir).resolve()}")
        return code
    finally:
        destroy_distributed()


def build_trainer(cfg: Config, config_dict: dict, layout: ParallelLayout, tokenizer: Tokenizer) -> Trainer:
    run_dir = Path(cfg.train.run_dir)
    if layout.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(config_dict))
    vocab_size = padded_vocab_size(cfg.model.vocab_size or tokenizer.vocab_size, cfg.model, layout.tensor_parallel_size)
    model = build_model(cfg.model, vocab_size, layout.tensor_parallel_size, DTYPES[cfg.train.precision],
                        sequence_parallel=cfg.parallel.sequence_parallel,
                        expert_parallel_size=layout.expert_parallel_size, seed=cfg.train.seed)
    prepare_model(model, cfg.model, vocab_size, layout.tensor_parallel_size, layout.tensor_parallel_rank, run_dir,
                  say=lambda message: print(message, flush=True) if layout.rank == 0 else None)
    # Saved in every checkpoint: how to merge TP slices when resuming on another layout.
    model.universal_checkpoint_info = universal_checkpoint_info(model, cfg.model.vocab_size or tokenizer.vocab_size)
    engine = build_engine(cfg, model, layout)
    trainer = Trainer(engine, train_batches(cfg, layout), build_callbacks(cfg, config_dict, layout, tokenizer),
                      str(run_dir), cfg.train.train_steps, cfg.model.seq_length, engine.device,
                      ModelInputs(cfg.model.document_masking, tokenizer.eos_id))
    trainer.inject_nonfinite_steps = {int(s) for s in os.environ.get(INJECT_NONFINITE, "").split(",") if s}
    trainer.inject_hang = _injected_hang(layout.rank)
    trainer.inject_forward_delay = _injected_delay(layout.rank)
    pause_at_startup()
    resume(trainer, run_dir, cfg.train.checkpoint.verify)
    return trainer


def train_batches(cfg: Config, layout: ParallelLayout) -> TrainBatches | PrefetchBatches:
    samples = ShardedSamples(cfg.data.dataset_dir, "train")
    if cfg.data.mixture:
        from pretrain.data.mixture import Mixture

        datasets = [ShardedSamples(part.dataset_dir, "train") for part in cfg.data.mixture]
        samples = Mixture(datasets, [part.weight for part in cfg.data.mixture], cfg.data.seed)
    prefetch = cfg.data.prefetch_batches
    # Page-locked only when prefetched: pinning in the step's own time would cost more than it saves.
    batches = TrainBatches(samples, cfg.data.seed, cfg.train.micro_batch_size, cfg.train.global_batch_size,
                           layout.data_parallel_rank, layout.data_parallel_size,
                           pin_memory=bool(prefetch) and torch.cuda.is_available())
    return PrefetchBatches(batches, prefetch) if prefetch else batches


def build_callbacks(cfg: Config, config_dict, layout: ParallelLayout, tokenizer: Tokenizer) -> list:
    """Sinks first, so that records made at the start (the step-0 validation) reach them all."""
    train = cfg.train
    callbacks = [cb.MetricsLog(MetricsFile(Path(train.run_dir) / "metrics.jsonl"))]
    config = OmegaConf.to_container(config_dict)
    if cfg.logging.wandb.enabled:
        callbacks.append(cb.Wandb(lambda run_id: start_run(cfg.logging.wandb, train.run_dir, run_id, config,
                                                           name=Path(train.run_dir).name)))
    if train.log_sample_ids:
        callbacks.append(cb.SampleLog(train.run_dir, layout.rank))
    callbacks.append(cb.Restarts())
    # Before anything that works at the start: a stop that came during start-up skips the step-0 validation.
    callbacks.append(StopOnSignal())
    tokens_per_step = train.global_batch_size * cfg.model.seq_length
    vocab_size = padded_vocab_size(cfg.model.vocab_size or tokenizer.vocab_size, cfg.model, layout.tensor_parallel_size)
    peak = local_peak_flops(train.precision, train.peak_flops)
    # Before the save: a kill after a step's checkpoint is sealed must not lose that step's record, which
    # the resumed run would never log again. Its save therefore counts in the next record's time_checkpoint.
    callbacks.append(cb.StepMetrics(train.log_interval, tokens_per_step, cfg.model.seq_length, layout.world_size,
                                    flops_per_token(cfg.model, vocab_size) * tokens_per_step, peak))
    if cfg.logging.stragglers.interval:
        callbacks.append(StragglerDetector(cfg.logging.stragglers))
    callbacks.append(NonFiniteGuard(train.guard))  # before Checkpointing: a bad step is not saved
    if train.guard.spike_window:
        callbacks.append(LossSpikeGuard(train.guard))
    if train.eval_interval:
        valid = valid_batches(ShardedSamples(cfg.data.dataset_dir, "valid"), train.eval_samples,
                              train.micro_batch_size, layout.data_parallel_rank, layout.data_parallel_size)
        evaluators = load_evaluators(cfg.logging.evaluators, cfg, tokenizer)
        callbacks.append(cb.Evaluation(train.eval_interval, valid, torch.from_numpy(tokenizer.token_bytes()),
                                       evaluators))
    if train.step_timeout:
        callbacks.append(StepWatchdog(train.step_timeout))
    callbacks.append(cb.Checkpointing(train.save_interval, train.checkpoint, config))
    callbacks.append(cb.Samples(train.sample_prompts, train.sample_tokens, tokenizer, train.seed))
    return callbacks


def resume(trainer: Trainer, run_dir: Path, verify: str) -> None:
    """Continue from the newest checkpoint that verifies, if there is one; say so either way."""
    tag = store.find_resumable(run_dir, verify, warn=trainer.print)
    if tag is None:
        trainer.print(f"starting a new run in {run_dir}")
        return
    trainer.load_state_dict(store.load(trainer.engine, run_dir, tag, warn=trainer.print))
    trainer.print(f"resuming from {store.checkpoints_dir(run_dir) / tag} "
                  f"(step {trainer.step}, consumed_samples {trainer.batches.consumed_samples})")


def _injected_hang(rank: int) -> int | None:
    """The step before which this rank is to hang, when a test injects one."""
    target = os.environ.get(INJECT_HANG)
    if not target:
        return None
    hang_rank, step = (int(x) for x in target.split(":"))
    return step if hang_rank == rank else None


def _injected_delay(rank: int) -> float:
    """Seconds this rank is to sleep after each forward, when a test makes it a straggler."""
    target = os.environ.get(INJECT_SLOW)
    if not target:
        return 0.0
    slow_rank, seconds = target.split(":")
    return float(seconds) if int(slow_rank) == rank else 0.0
