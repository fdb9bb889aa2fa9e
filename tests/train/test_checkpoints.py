"""Checkpoints that fail verification are skipped; retention deletes only what it may."""

from training_runs import losses, run_train


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(data_root, tmp_path):
    run_train(data_root, tmp_path, "train.checkpoint.keep_last=2")
    first = losses(tmp_path)
    flip_a_byte(next((tmp_path / "checkpoints" / "step_6").glob("*model_states.pt")))
    result = run_train(data_root, tmp_path, "train.train_steps=8", "train.checkpoint.keep_last=2")
    assert "skipping checkpoint" in result.stdout and "step_6" in result.stdout
    assert f"resuming from {tmp_path / 'checkpoints' / 'step_3'}" in result.stdout
    assert {step: losses(tmp_path)[step] for step in first} == first  # steps 4-6 redone identically
    # keep_last=2: step_3 went once step_6 and step_8 were sealed again.
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_6", "step_8"]
