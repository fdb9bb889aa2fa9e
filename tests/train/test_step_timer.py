"""The step timer: parts add up on a CPU, and on a GPU they are timed without synchronizing."""

import time

import pytest
import torch

from pretrain.train.step_timer import PARTS, StepTimer


def test_parts_add_up_over_micro_batches_on_a_cpu():
    timer = StepTimer(torch.device("cpu"))
    for _ in range(2):
        mark = timer.mark()
        time.sleep(0.02)
        mark = timer.add("time_forward", mark)
        timer.add("time_backward", mark)
    totals = timer.totals()
    assert set(totals) == set(PARTS)
    assert totals["time_forward"] >= 0.04
    assert totals["time_backward"] < totals["time_forward"]
    assert totals["time_optimizer"] == 0.0


@pytest.mark.gpu
def test_gpu_parts_are_read_once_at_the_end_without_stalling_the_queue():
    timer = StepTimer(torch.device("cuda"))
    torch.cuda.synchronize()
    mark = timer.mark()
    torch.cuda._sleep(200_000_000)  # about 0.1 s of GPU time, queued
    timer.add("time_forward", mark)
    assert not torch.cuda.current_stream().query()  # add() did not wait for the GPU
    totals = timer.totals()
    assert torch.cuda.current_stream().query()
    assert totals["time_forward"] > 0.01
