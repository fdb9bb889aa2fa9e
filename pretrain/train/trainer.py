"""The training loop. It runs steps; callbacks do everything else."""

import contextlib
import math
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from pretrain import exit_codes
from pretrain.model.documents import ModelInputs
from pretrain.model.gpt import language_model_loss
from pretrain.model.moe import set_aux_loss_scale, tracked_aux_losses
from pretrain.train.engine import moe_aux_loss_scale
from pretrain.train.faults import inject_spike, kill_point
from pretrain.train.guards import update_skipped
from pretrain.train.step_timer import StepTimer


class Trainer:
    def __init__(self, engine, batches, callbacks, run_dir: str, train_steps: int, seq_length: int, device,
                 model_inputs: ModelInputs = ModelInputs()):
        self.engine = engine
        self.model_inputs = model_inputs
        """Position ids and attention mask of each micro-batch (document masking)."""
        self.batches = batches
        self.callbacks = callbacks
        self.run_dir = Path(run_dir)
        self.train_steps = train_steps
        self.seq_length = seq_length
        self.device = device
        self.step = 0
        self.rank = dist.get_rank()
        self.is_rank0 = self.rank == 0
        self.stop_code: int | None = None
        """Set by a callback to end the run early with this exit code (after the step's callbacks)."""
        self.rollback_reason: str | None = None
        """Set by a callback to reload the newest checkpoint before the next step."""
        self.inject_nonfinite_steps: set[int] = set()
        """Fault injection for tests: these steps' losses are made NaN before backward."""
        self.inject_hang: int | None = None
        """Fault injection for tests: this rank stops responding before this step."""
        self.inject_forward_delay = 0.0
        """Fault injection for tests: seconds this rank sleeps after each forward (a slow GPU)."""
        self.checkpoint_seconds = 0.0
        """Time spent saving checkpoints since the last metrics log (the checkpoint callback adds to it)."""
        self.on_progress = None
        """Called with (step, micro_batch) as a step advances: -1 when it starts, then after each backward."""

    def fit(self) -> int:
        """Train until `train_steps` (or a callback's stop), from wherever the state says the run is."""
        for callback in self.callbacks:
            callback.on_train_start(self)
        try:
            while self.step < self.train_steps and self.stop_code is None:
                if self.rollback_reason is not None:
                    self._roll_back()
                    continue
                metrics = self.train_step()
                self.step += 1
                for callback in self.callbacks:
                    callback.on_step_end(self, metrics)
        finally:
            self.batches.close()  # the prefetch thread, if any
        for callback in self.callbacks:
            callback.on_train_end(self)
        # Leave together: the launcher stops the other workers as soon as one exits with a
        # non-zero code (the requeue code is one), which could cut rank 0's W&B flush short.
        dist.barrier()
        return self.stop_code or 0

    def request_stop(self, exit_code: int, reason: str) -> None:
        """End the run after this step's callbacks; checkpointing sees `stopping` and saves."""
        self.stop_code = exit_code
        self.print(f"stopping at step {self.step}: {reason}")

    def _progress(self, micro_batch: int) -> None:
        if self.on_progress is not None:
            self.on_progress(self.step + 1, micro_batch)

    def request_rollback(self, reason: str) -> None:
        """Reload the newest checkpoint before the next step, keeping the data position."""
        self.rollback_reason = reason

    def _roll_back(self) -> None:
        from pretrain.checkpoint import store

        reason, self.rollback_reason = self.rollback_reason, None
        tag = store.find_resumable(self.run_dir, "size", warn=self.print)
        if tag is None:
            self.request_stop(exit_codes.DIVERGED, f"{reason}, and no checkpoint to roll back to")
            return
        consumed = self.batches.consumed_samples
        self.step = store.load(self.engine, self.run_dir, tag, warn=self.print)["step"]
        self.print(f"{reason}: rolled back to {tag}; the {consumed - self.batches.consumed_samples} samples "
                   "read since are skipped")
        for callback in self.callbacks:
            callback.on_rollback(self)
        self.log({"step": self.step, "rolled_back_to": self.step})

    @property
    def stopping(self) -> bool:
        return self.stop_code is not None

    @property
    def finished(self) -> bool:
        return self.step >= self.train_steps

    def train_step(self) -> dict:
        """One optimizer step: every micro-batch of this rank's share of the global batch.

        Also times its parts on this rank: data wait, forward (no data-parallel collective in
        it, so a slow rank shows there), backward, and the optimizer step.
        """
        started = time.perf_counter()
        if self.step + 1 == self.inject_hang:
            threading.Event().wait()  # a rank that stops responding, as a wedged GPU or a dead node does
        self._progress(-1)
        self.engine.train()
        lr = self.engine.get_lr()[0]
        set_aux_loss_scale(moe_aux_loss_scale(self.engine))  # MoE only; the fp16 scale changes
        losses, sample_ids = [], []
        micro_batches = self.batches.next_global_batch()
        time_data = time.perf_counter() - started
        timer = StepTimer(torch.device(self.device))
        for index, micro_batch in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            mark = timer.mark()
            kill_point("forward", self.step + 1)
            tokens = micro_batch["tokens"].to(self.device, non_blocking=True)  # async when pinned
            loss = language_model_loss(self.engine, tokens, self.model_inputs)
            if self.step + 1 in self.inject_nonfinite_steps:
                loss = loss * float("nan")  # once: a rolled-back run meets new data at this step
            loss = inject_spike(loss, self.step + 1)
            time.sleep(self.inject_forward_delay)
            mark = timer.add("time_forward", mark)
            kill_point("backward", self.step + 1)
            self.engine.backward(loss)
            self._progress(index)
            losses.append(loss.detach().float())
            sample_ids += micro_batch["sample_ids"]
            skip = False
            if last:
                kill_point("optimizer", self.step + 1)
                mark = timer.add("time_backward", mark)
                step_loss = self._data_parallel_mean(torch.stack(losses).mean())
                skip = self._skip_update(step_loss)
            with update_skipped(self.engine) if skip else contextlib.nullcontext():
                self.engine.step()  # DeepSpeed steps the optimizer only at the accumulation boundary
            if not last:
                timer.add("time_backward", mark)
        timer.add("time_optimizer", mark)
        times = {"time_data": time_data, **timer.totals()}
        self.inject_nonfinite_steps.discard(self.step + 1)
        return {
            "sample_ids": sample_ids,
            "loss": step_loss,
            "lr": lr,
            "grad_norm": _as_float(self.engine.get_global_grad_norm()),
            "step_time": time.perf_counter() - started,
            **times,
            "aux_losses": self._aux_losses(len(micro_batches)),
        }

    def _aux_losses(self, micro_batches: int) -> dict[str, float]:
        """MoE auxiliary losses of this step (none for a dense model): mean over layers and micro-batches,
        summed over the ranks that share a micro-batch's tokens, averaged over data parallel."""
        losses = {}
        for name, (per_layer, reduce_group) in tracked_aux_losses().items():
            if reduce_group is not None:
                dist.all_reduce(per_layer, group=reduce_group)
            losses[name] = self._data_parallel_mean(per_layer.mean() / micro_batches)
        return losses

    def _skip_update(self, loss: float) -> bool:
        """Whether a callback vetoes this step's update; the loss is the same on every rank, so is the answer."""
        return any([callback.skip_update(self, loss) for callback in self.callbacks])  # ask every one

    @torch.no_grad()
    def evaluate(self, micro_batches: list[dict], token_bytes: torch.Tensor | None = None) -> dict:
        """Validation loss (mean per sample) over every data-parallel rank's micro-batches, and
        bits per byte when `token_bytes` (UTF-8 bytes of each token id's text) is given.

        Bits per byte = summed next-token loss in nats / ln 2 / bytes of the predicted tokens'
        text: it does not depend on the tokenizer, so runs with different vocabularies compare.
        """
        self.engine.eval()
        # [sum of per-sample mean losses, samples, summed token losses (nats), bytes of target text],
        # on the device: NCCL reduces only GPU tensors.
        total = torch.zeros(4, dtype=torch.float64, device=self.device)
        # Under ZeRO-3 a forward gathers parameters across data parallel: a rank with fewer
        # validation micro-batches runs a counted-for-nothing one for each it lacks.
        filler = {"tokens": torch.zeros((1, self.seq_length + 1), dtype=torch.long)}
        most = self._most_over_data_parallel(len(micro_batches))  # before any forward: collectives in one order
        for index in range(most):
            mb = micro_batches[index] if index < len(micro_batches) else filler
            tokens = mb["tokens"]
            loss = language_model_loss(self.engine, tokens.to(self.device), self.model_inputs).item()
            if mb is filler:
                continue
            targets = tokens[:, 1:]
            text_bytes = token_bytes[targets].sum().item() if token_bytes is not None else 0
            total += torch.tensor([loss * len(tokens), len(tokens), loss * targets.numel(), text_bytes],
                                  dtype=torch.float64, device=self.device)
        self.engine.train()
        dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
        result = {"valid_loss": (total[0] / total[1]).item()}
        if token_bytes is not None and total[3] > 0:
            result["valid_bpb"] = (total[2] / math.log(2) / total[3]).item()
        return result

    def log(self, record: dict) -> None:
        for callback in self.callbacks:
            callback.on_log(self, record)

    def alert(self, title: str, text: str) -> None:
        """A warning people should see: stdout (rank 0) and each callback's channel (a W&B alert)."""
        self.print(f"warning: {title}: {text}")
        for callback in self.callbacks:
            callback.on_alert(self, title, text)

    def print(self, message: str) -> None:
        if self.is_rank0:
            print(message, flush=True)

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "consumed_samples": self.batches.consumed_samples,
            "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks},
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.batches.consumed_samples = state["consumed_samples"]
        for callback in self.callbacks:
            callback.load_state_dict(state["callbacks"].get(callback.name, {}))

    def _most_over_data_parallel(self, count: int) -> int:
        most = torch.tensor([count], dtype=torch.int64, device=self.device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX, group=parallel_state.get_data_parallel_group())
        return int(most.item())

    def _data_parallel_mean(self, value: torch.Tensor) -> float:
        value = value.detach().clone()
        dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
        return value.item() / parallel_state.get_data_parallel_world_size()


def _as_float(value) -> float:
    if value is None:
        return float("nan")
    return float(value.item() if isinstance(value, torch.Tensor) else value)
