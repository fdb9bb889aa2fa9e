"""Everything around the training step: metrics, validation, checkpoints, W&B, samples.

A callback sees the trainer at fixed points and may keep state that is saved with each
checkpoint (`state_dict`/`load_state_dict`, keyed by the callback's `name`).
"""

import os
import shutil
import sys
import time
from pathlib import Path

import torch

from pretrain import exit_codes
from pretrain.checkpoint import store
from pretrain.monitor.metrics import MetricsFile, format_record


class Callback:
    name = "callback"

    def on_train_start(self, trainer) -> None: ...

    def on_step_end(self, trainer, metrics: dict) -> None: ...

    def on_log(self, trainer, record: dict) -> None: ...

    def on_train_end(self, trainer) -> None: ...

    def on_rollback(self, trainer) -> None:
        """The trainer went back to an earlier checkpoint; `trainer.step` is its step."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class StepMetrics(Callback):
    """Averages loss and throughput over each log interval and logs them."""

    name = "step_metrics"

    def __init__(self, log_interval: int, tokens_per_step: int):
        self.log_interval = log_interval
        self.tokens_per_step = tokens_per_step
        self._reset()

    def _reset(self):
        self.losses, self.seconds = [], 0.0

    def on_step_end(self, trainer, metrics):
        self.losses.append(metrics["loss"])
        self.seconds += metrics["step_time"]
        if trainer.step % self.log_interval == 0 or trainer.step == trainer.train_steps:
            trainer.log({
                "step": trainer.step,
                "loss": sum(self.losses) / len(self.losses),
                "lr": metrics["lr"],
                "grad_norm": metrics["grad_norm"],
                "tokens_per_second": self.tokens_per_step * len(self.losses) / self.seconds,
                "consumed_samples": trainer.batches.consumed_samples,
                **metrics.get("aux_losses", {}),  # MoE: the last step's load-balancing loss
            })
            self._reset()


class Evaluation(Callback):
    """Validation loss on held-out shards: at the start, every `interval` steps and at the end."""

    name = "evaluation"

    def __init__(self, interval: int, valid_batches: list[dict]):
        self.interval = interval
        self.valid_batches = valid_batches

    def on_train_start(self, trainer):
        if self.interval and trainer.step == 0:
            self._evaluate(trainer)

    def on_step_end(self, trainer, metrics):
        if self.interval and (trainer.step % self.interval == 0 or trainer.step == trainer.train_steps):
            self._evaluate(trainer)

    def _evaluate(self, trainer):
        trainer.log({"step": trainer.step, "valid_loss": trainer.evaluate(self.valid_batches)})


class Checkpointing(Callback):
    """Saves every `interval` steps and at the end of training."""

    name = "checkpointing"

    def __init__(self, interval: int, retention, resolved_config: dict):
        self.interval = interval
        self.retention = retention
        self.resolved_config = resolved_config

    def on_step_end(self, trainer, metrics):
        if trainer.rollback_reason is not None:
            return  # this step's weights are about to be discarded
        if (self.interval and trainer.step % self.interval == 0) or trainer.finished or trainer.stopping:
            started = time.perf_counter()
            state = {**trainer.state_dict(), "config": self.resolved_config}
            try:
                path = store.save(trainer.engine, trainer.run_dir, trainer.step, state, self.retention)
            except (OSError, RuntimeError) as error:  # torch.save reports a full disk as RuntimeError
                _exit_on_storage_error(trainer, error)
            trainer.print(f"saved checkpoint {path} in {time.perf_counter() - started:.1f}s")


def _exit_on_storage_error(trainer, error: Exception) -> None:
    # The other ranks are blocked in the save's collectives: leave at once and let the launcher
    # stop them. `latest` was not moved, so the previous checkpoint is the one a restart uses.
    latest = store.latest_tag(trainer.run_dir) or "no checkpoint yet"
    print(f"pretrain: error: rank {trainer.rank}: could not write the checkpoint of step {trainer.step}: "
          f"{_describe(error, trainer.run_dir)}; latest is still {latest}", file=sys.stderr, flush=True)
    os._exit(exit_codes.STORAGE)


def _describe(error: Exception, run_dir) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} ({error.filename})"
    free = shutil.disk_usage(run_dir).free
    if free < 64 * 2**20:
        return f"No space left on device ({free} bytes free under {run_dir})"
    return str(error).splitlines()[0]


class MetricsLog(Callback):
    """Rank 0 writes each record to stdout and run_dir/metrics.jsonl."""

    name = "metrics_log"

    def __init__(self, metrics_file: MetricsFile):
        self.file = metrics_file

    def on_train_start(self, trainer):
        if trainer.is_rank0:
            self.file.truncate_after(trainer.step)

    def on_rollback(self, trainer):
        self.on_train_start(trainer)

    def on_log(self, trainer, record):
        if trainer.is_rank0:
            self.file.append(record)
            print(format_record(record), flush=True)


class SampleLog(Callback):
    """Each rank records which samples every step consumed: run_dir/samples/rank_R.jsonl.

    An audit trail for "no sample lost or repeated" across restarts and re-layouts.
    """

    name = "sample_log"

    def __init__(self, run_dir: str, rank: int):
        self.file = MetricsFile(Path(run_dir) / "samples" / f"rank_{rank:05d}.jsonl")

    def on_train_start(self, trainer):
        self.file.path.parent.mkdir(parents=True, exist_ok=True)
        self.file.truncate_after(trainer.step)

    def on_rollback(self, trainer):
        self.file.truncate_after(trainer.step)

    def on_step_end(self, trainer, metrics):
        self.file.append({"step": trainer.step, "sample_ids": metrics["sample_ids"]})


class Wandb(Callback):
    """Rank 0 mirrors records to W&B; the run id is kept in checkpoints so restarts resume it."""

    name = "wandb"

    def __init__(self, start_run):
        self.start_run = start_run
        self.run_id = None
        self.run = None

    def on_train_start(self, trainer):
        if trainer.is_rank0:
            self.run = self.start_run(self.run_id)
            self.run_id = self.run.id

    def on_log(self, trainer, record):
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def on_train_end(self, trainer):
        if self.run is not None:
            self.run.finish()

    def state_dict(self):
        return {"run_id": self.run_id}

    def load_state_dict(self, state):
        self.run_id = state.get("run_id")


class Samples(Callback):
    """Continues a few prompts with the trained model at the end (every rank generates; rank 0 prints)."""

    name = "samples"

    def __init__(self, prompts: list[str], max_new_tokens: int, tokenizer, seed: int):
        self.prompts, self.max_new_tokens = prompts, max_new_tokens
        self.tokenizer, self.seed = tokenizer, seed

    def on_train_end(self, trainer):
        from pretrain.model.generate import generate

        if not self.prompts or not self.max_new_tokens or not trainer.finished:
            return
        generator = torch.Generator().manual_seed(self.seed)
        for prompt in self.prompts:
            text = generate(trainer.engine.module, self.tokenizer, prompt, self.max_new_tokens,
                            trainer.seq_length, trainer.device, generator)
            trainer.print(f"--- sample ---\n{prompt}{text}")
