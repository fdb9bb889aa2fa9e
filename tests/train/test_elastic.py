"""Elastic resume: one run continued on another data-parallel size, tensor-parallel size and
ZeRO stage, leg after leg (ZeRO 1/2, then ZeRO-3 on its own). At every change the full fp32
weights and Adam moments loaded must equal the ones saved, bit for bit, and the run must read
the same global sample sequence as an uninterrupted one (no sample skipped or repeated); its
losses follow the uninterrupted run's up to float rounding (the reductions are ordered
differently)."""

import os

import pytest
import torch
from training_runs import losses, run_train, sample_ids

from pretrain import exit_codes
from pretrain.train.faults import DUMP_STATE

STEPS_PER_LEG = 2
# (processes, overrides): each leg trains STEPS_PER_LEG more steps from the previous leg's checkpoint.
LEGS = [
    (2, ["parallel.zero_stage=1"]),                                     # dp=2 tp=1 zero=1
    (1, ["parallel.zero_stage=2"]),                                     # dp 2→1, zero 1→2
    (2, ["parallel.zero_stage=2", "parallel.tensor_parallel_size=2"]),  # tp 1→2
    (1, ["parallel.zero_stage=1"]),                                     # tp 2→1, zero 2→1
    (2, ["parallel.zero_stage=1"]),                                     # dp 1→2
]
TOTAL_STEPS = STEPS_PER_LEG * len(LEGS)
COMMON = ["train.eval_interval=0", f"train.save_interval={STEPS_PER_LEG}"]
# fp32 losses of the same weights on another layout differ by summation order only.
LOSS_TOLERANCE = 1e-5


def step_sets(run_dir) -> dict[int, set]:
    """The samples each step read, over all ranks (the ranks of a TP group read the same ones)."""
    steps: dict[int, set] = {}
    for records in sample_ids(run_dir).values():
        for record in records:
            steps.setdefault(record["step"], set()).update(record["sample_ids"])
    return steps


def assert_same_state(saved: dict, loaded: dict, where: str) -> None:
    assert saved.keys() == loaded.keys(), where
    for name, states in saved.items():
        assert states.keys() == {"fp32", "exp_avg", "exp_avg_sq"}, f"{where}: {name}"
        for key, tensor in states.items():
            assert torch.equal(tensor, loaded[name][key]), f"{where}: {name} {key} differs"


def leave_a_crashed_conversion(checkpoint) -> None:
    """A crashed conversion's hidden work folder, and a universal/ that does not verify."""
    (checkpoint / ".universal.tmp-crashed" / "input").mkdir(parents=True)
    (checkpoint / "universal" / "zero").mkdir(parents=True)
    (checkpoint / "universal" / "zero" / "half_written.pt").write_bytes(b"partial")


@pytest.fixture
def dump_dir(tmp_path, monkeypatch):
    folder = tmp_path / "dumps"
    folder.mkdir()
    monkeypatch.setenv(DUMP_STATE, str(folder))
    return folder


def test_a_run_moves_across_dp_tp_and_zero_layouts(data_root, tmp_path, dump_dir):
    run_dir = tmp_path / "elastic"
    for leg, (nproc, overrides) in enumerate(LEGS, start=1):
        if leg == 2:
            leave_a_crashed_conversion(run_dir / "checkpoints" / f"step_{STEPS_PER_LEG}")
        result = run_train(data_root, run_dir, *COMMON, *overrides, f"train.train_steps={STEPS_PER_LEG * leg}",
                           nproc=nproc)
        if leg == 2:
            assert "converting" in result.stdout and "again: it has no manifest" in result.stdout
            assert not list((run_dir / "checkpoints" / f"step_{STEPS_PER_LEG}").glob(".universal.tmp-*"))
        if leg > 1:
            step = STEPS_PER_LEG * (leg - 1)
            assert f"step_{step} (written with" in result.stdout, result.stdout[-2000:]
            assert_same_state(torch.load(dump_dir / f"saved_step_{step}.pt", weights_only=True),
                              torch.load(dump_dir / f"loaded_step_{step}.pt", weights_only=True), f"leg {leg}")
    os.environ.pop(DUMP_STATE, None)
    straight = tmp_path / "straight"
    run_train(data_root, straight, *COMMON, *LEGS[0][1], f"train.train_steps={TOTAL_STEPS}")

    elastic_steps, straight_steps = step_sets(run_dir), step_sets(straight)
    assert sorted(elastic_steps) == list(range(1, TOTAL_STEPS + 1))
    assert elastic_steps == straight_steps
    assert all(len(ids) == 8 for ids in elastic_steps.values())  # the global batch, once each
    elastic, reference = losses(run_dir), losses(straight)
    assert elastic.keys() == reference.keys()
    assert all(abs(elastic[s] - reference[s]) < LOSS_TOLERANCE for s in reference), (elastic, reference)

    # A change DeepSpeed cannot make is refused with one line naming both layouts.
    refused = run_train(data_root, run_dir, *COMMON, "parallel.zero_stage=3", f"train.train_steps={TOTAL_STEPS + 2}",
                        nproc=1, check=False)
    assert refused.returncode == exit_codes.BAD_INPUT, refused.stderr[-3000:]
    assert ("cannot resume a checkpoint written with dp=2 tp=1 zero=1 on dp=1 tp=1 zero=3: "
            "DeepSpeed's universal checkpoint does not convert between ZeRO-3 and ZeRO-1/2") in refused.stderr
    assert "Traceback" not in refused.stderr


ZERO3_LEGS = [
    (2, ["parallel.zero_stage=3", "parallel.tensor_parallel_size=2"]),  # dp=1 tp=2 zero=3
    (1, ["parallel.zero_stage=3"]),                                     # tp 2→1
    (2, ["parallel.zero_stage=3"]),                                     # dp 1→2
]


def test_zero3_moves_down_in_tensor_parallelism_and_across_data_parallel_sizes(data_root, tmp_path, dump_dir):
    run_dir = tmp_path / "zero3"
    for leg, (nproc, overrides) in enumerate(ZERO3_LEGS, start=1):
        run_train(data_root, run_dir, *COMMON, *overrides, f"train.train_steps={STEPS_PER_LEG * leg}", nproc=nproc)
        if leg > 1:
            step = STEPS_PER_LEG * (leg - 1)
            assert_same_state(torch.load(dump_dir / f"saved_step_{step}.pt", weights_only=True),
                              torch.load(dump_dir / f"loaded_step_{step}.pt", weights_only=True), f"leg {leg}")
    assert sorted(step_sets(run_dir)) == list(range(1, STEPS_PER_LEG * len(ZERO3_LEGS) + 1))
