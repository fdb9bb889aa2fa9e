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
from pretrain.checkpoint import async_save, store
from pretrain.io import write_atomic
from pretrain.monitor.metrics import MetricsFile, format_record
from pretrain.monitor.mfu import mfu


class Callback:
    name = "callback"

    def on_train_start(self, trainer) -> None: ...

    def on_step_end(self, trainer, metrics: dict) -> None: ...

    def skip_update(self, trainer, loss: float) -> bool:
        """Asked before each step's optimizer update with the data-parallel mean loss; True skips the update."""
        return False

    def on_log(self, trainer, record: dict) -> None: ...

    def on_train_end(self, trainer) -> None: ...

    def on_rollback(self, trainer) -> None:
        """The trainer went back to an earlier checkpoint; `trainer.step` is its step."""

    def on_alert(self, trainer, title: str, text: str) -> None:
        """Something people should look at (a straggler, say), already printed by rank 0."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class StepMetrics(Callback):
    """Averages loss, throughput and the step-time split over each log interval and logs them."""

    name = "step_metrics"
    TIMES = ("time_data", "time_forward", "time_backward", "time_optimizer")

    def __init__(self, log_interval: int, tokens_per_step: int, seq_length: int, world_size: int,
                 flops_per_step: float = 0.0, peak_flops: float | None = None):
        self.log_interval = log_interval
        self.tokens_per_step = tokens_per_step
        self.seq_length = seq_length
        self.world_size = world_size
        self.flops_per_step = flops_per_step
        self.peak_flops = peak_flops
        """Peak FLOP/s of one device; None (unknown device) logs no mfu."""
        self._reset()

    def _reset(self):
        self.losses, self.seconds = [], 0.0
        self.times = dict.fromkeys(self.TIMES, 0.0)

    def on_step_end(self, trainer, metrics):
        self.losses.append(metrics["loss"])
        self.seconds += metrics["step_time"]
        for key in self.TIMES:
            self.times[key] += metrics[key]
        if trainer.step % self.log_interval == 0 or trainer.finished or trainer.stopping:
            trainer.log(self._record(trainer, metrics))  # a run that stops logs its last steps too
            self._reset()

    def _record(self, trainer, metrics) -> dict:
        steps = len(self.losses)
        tokens_per_second = self.tokens_per_step * steps / self.seconds
        checkpoint, trainer.checkpoint_seconds = trainer.checkpoint_seconds, 0.0
        consumed = trainer.batches.consumed_samples
        return {
            "step": trainer.step,
            "loss": sum(self.losses) / steps,
            "lr": metrics["lr"],
            "grad_norm": metrics["grad_norm"],
            "tokens_per_second": tokens_per_second,
            "tokens_per_second_per_gpu": tokens_per_second / self.world_size,
            **({"mfu": mfu(self.flops_per_step * steps / self.seconds, self.peak_flops, self.world_size)}
               if self.peak_flops else {}),
            **_precision_state(trainer.engine),
            "consumed_samples": consumed,
            "consumed_tokens": consumed * self.seq_length,
            # Seconds per step, this rank's (rank 0's in the log); checkpoint: saves since the last log
            # (the callback runs before Checkpointing, so a save at a logged step counts in the next log).
            "time_data": self.times["time_data"] / steps,
            "time_forward_backward": (self.times["time_forward"] + self.times["time_backward"]) / steps,
            "time_optimizer": self.times["time_optimizer"] / steps,
            "time_checkpoint": checkpoint / steps,
            **_memory(),
            **metrics.get("aux_losses", {}),  # MoE: the last step's load-balancing loss
            "eta_seconds": (trainer.train_steps - trainer.step) * self.seconds / steps,
        }


def _precision_state(engine) -> dict:
    """Steps the engine skipped (non-finite gradients) and, with fp16, the dynamic loss scale."""
    state = {"skipped_steps": int(getattr(engine, "skipped_steps", 0))}
    scale = getattr(engine.optimizer, "cur_scale", None) if engine.fp16_enabled() else None
    if scale is not None:
        state["loss_scale"] = float(scale)
    return state


def _memory() -> dict:
    """Peak and reserved accelerator memory in GiB; on a CPU host the process's peak RSS."""
    if torch.cuda.is_available():
        return {"memory_max_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
                "memory_reserved_gb": torch.cuda.memory_reserved() / 2**30}
    import resource

    return {"memory_max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


class Evaluation(Callback):
    """Evaluations at the start, every `interval` steps and at the end: validation loss and bits
    per byte on held-out shards, then each extra evaluator's numbers (see pretrain.monitor.evaluators)."""

    name = "evaluation"

    def __init__(self, interval: int, valid_batches: list[dict], token_bytes=None, evaluators=()):
        self.interval = interval
        self.valid_batches = valid_batches
        self.token_bytes = token_bytes
        self.evaluators = list(evaluators)

    def on_train_start(self, trainer):
        if self.interval and trainer.step == 0 and not trainer.stopping:  # a stop must beat the grace period
            self._evaluate(trainer)

    def on_step_end(self, trainer, metrics):
        if self.interval and (trainer.step % self.interval == 0 or trainer.step == trainer.train_steps):
            self._evaluate(trainer)

    def _evaluate(self, trainer):
        record = {"step": trainer.step, **trainer.evaluate(self.valid_batches, self.token_bytes)}
        for evaluator in self.evaluators:
            record.update({f"{evaluator.name}/{key}": value for key, value in evaluator.evaluate(trainer).items()})
        trainer.log(record)


class Restarts(Callback):
    """Records every start from a checkpoint (requeue, resume, crash) and logs the count.

    The history is run_dir/restarts.jsonl, appended to and never trimmed: unlike the metrics
    log, it keeps a restart that crashed again before its first checkpoint.
    """

    name = "restarts"

    def on_train_start(self, trainer):
        if trainer.step == 0 or not trainer.is_rank0:
            return
        history = MetricsFile(trainer.run_dir / "restarts.jsonl")
        history.append({"step": trainer.step, "time": time.time(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                        "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT")})
        restarts = len(history.path.read_text().splitlines())
        trainer.log({"step": trainer.step, "restarts": restarts})


class Checkpointing(Callback):
    """Saves every `interval` steps and at the end of training (in the background with async_save)."""

    name = "checkpointing"

    def __init__(self, interval: int, retention, resolved_config: dict):
        self.interval = interval
        self.retention = retention
        self.resolved_config = resolved_config
        self.writer = async_save.AsyncCheckpointWriter() if retention.async_save else None

    def on_step_end(self, trainer, metrics):
        if trainer.rollback_reason is not None:
            return  # this step's weights are about to be discarded
        if (self.interval and trainer.step % self.interval == 0) or trainer.finished or trainer.stopping:
            started = time.perf_counter()
            state = {**trainer.state_dict(), "config": self.resolved_config}
            try:
                path = store.save(trainer.engine, trainer.run_dir, trainer.step, state, self.retention, self.writer)
            except (OSError, RuntimeError) as error:  # torch.save reports a full disk as RuntimeError
                _exit_on_storage_error(trainer, error)
            seconds = time.perf_counter() - started
            trainer.checkpoint_seconds += seconds  # the time training was blocked: the host copy, with async_save
            if self.writer is None:
                trainer.print(f"saved checkpoint {path} in {seconds:.1f}s")
                return
            trainer.print(f"saving checkpoint {path} in the background; training waited {seconds:.2f}s")
            if trainer.finished or trainer.stopping:
                self.on_train_end(trainer)

    def on_train_end(self, trainer):
        if self.writer is None or not self.writer.pending:
            return
        try:
            self.writer.wait()  # a stop or the end of training waits for the write in flight
        except async_save.StorageError as error:
            _exit_on_storage_error(trainer, error)
        trainer.print(f"checkpoint {store.latest_tag(trainer.run_dir)} written")


def _exit_on_storage_error(trainer, error: Exception) -> None:
    # The other ranks are blocked in the save's collectives: leave at once and let the launcher
    # stop them. `latest` was not moved, so the previous checkpoint is the one a restart uses.
    latest = store.latest_tag(trainer.run_dir) or "no checkpoint yet"
    step = error.step if isinstance(error, async_save.StorageError) else trainer.step
    print(f"pretrain: error: rank {trainer.rank}: could not write the checkpoint of step {step}: "
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
    """Rank 0 mirrors records to W&B; the run id is kept in checkpoints so restarts resume it.

    A restart replays the steps between its checkpoint and the crash. W&B keeps the values it
    already has for those (metrics.jsonl has the replayed ones): the highest step sent is kept
    in run_dir/wandb/last_step, outside checkpoints, written before the record is sent, and
    records up to it are not sent again, so W&B's history never repeats or rewinds a step.
    """

    name = "wandb"

    def __init__(self, start_run):
        self.start_run = start_run
        self.run_id = None
        self.run = None
        self.sent_before = -1
        self.last_step = -1

    def on_train_start(self, trainer):
        if trainer.is_rank0:
            self.run = self.start_run(self.run_id)
            self.run_id = self.run.id
            self.marker = trainer.run_dir / "wandb" / "last_step"
            self.sent_before = int(self.marker.read_text()) if self.marker.is_file() else -1

    def on_log(self, trainer, record):
        if self.run is None or record["step"] <= self.sent_before or record["step"] < self.last_step:
            return  # sent before a restart, or replayed after a rollback: W&B takes steps in order only
        if record["step"] > self.last_step:
            # Written before sending: a kill between the two then loses this step from W&B
            # (metrics.jsonl has it) instead of sending it twice after the restart.
            self.last_step = record["step"]
            write_atomic(self.marker, str(self.last_step))
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def on_alert(self, trainer, title, text):
        if self.run is not None:
            self.run.alert(title=title, text=text)

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
