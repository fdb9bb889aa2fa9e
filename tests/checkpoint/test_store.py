"""Which checkpoint a resume picks, its manifest, and retention."""

import json

import pytest
from dist_utils import single_process_group

from pretrain.checkpoint import manifest, store
from pretrain.checkpoint.config import CheckpointConfig
from pretrain.errors import ConfigError
from pretrain.io import write_atomic


def fake_checkpoint(run_dir, step: int, sealed: bool = True):
    directory = run_dir / "checkpoints" / f"step_{step}"
    (directory / "rng").mkdir(parents=True)
    (directory / "mp_rank_00_model_states.pt").write_bytes(bytes(range(256)) * 4)
    (directory / "rng" / "rank_00000.pt").write_bytes(b"rng")
    (directory / store.TRAINER_STATE).write_text("{}")
    if sealed:
        with single_process_group():
            manifest.seal(directory)
    return directory


def point_latest(run_dir, tag: str):
    write_atomic(run_dir / "checkpoints" / store.LATEST, tag + "\n")


def test_a_new_run_has_nothing_to_resume(tmp_path):
    assert store.latest_tag(tmp_path) is None
    assert store.resume_candidates(tmp_path) == []


def test_candidates_are_latest_then_older_sealed_ones(tmp_path):
    for step in (2, 4, 6):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 8, sealed=False)  # a crash mid-save
    point_latest(tmp_path, "step_4")
    assert store.resume_candidates(tmp_path) == ["step_4", "step_2"]


def test_latest_may_not_point_outside_the_run(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    point_latest(tmp_path, "../other_run/checkpoints/step_9")
    with pytest.raises(ConfigError) as error:
        store.latest_tag(tmp_path)
    assert error.value.key == "train.run_dir"


def test_manifest_catches_changed_bytes_and_sizes(tmp_path):
    directory = fake_checkpoint(tmp_path, 2)
    listed = json.loads((directory / manifest.MANIFEST).read_text())
    with single_process_group():
        assert manifest.verify(directory, listed, "sha256") is None
        model = directory / "mp_rank_00_model_states.pt"
        data = bytearray(model.read_bytes())
        data[100] ^= 1
        model.write_bytes(bytes(data))
        assert "sha256" in manifest.verify(directory, listed, "sha256")
        assert manifest.verify(directory, listed, "size") is None  # size alone cannot see a flipped bit
        model.write_bytes(bytes(data[:-1]))
        assert "bytes" in manifest.verify(directory, listed, "size")
        (directory / "stray.pt").write_bytes(b"")
        assert "differ" in manifest.verify(directory, listed, "size")


def test_retention_keeps_the_last_k_and_every_mth(tmp_path):
    for step in range(1, 8):
        fake_checkpoint(tmp_path, step)
    point_latest(tmp_path, "step_7")
    store.prune(tmp_path, CheckpointConfig(keep_last=2, keep_every=3))
    assert sorted(store.sealed_tags(tmp_path), key=store.step_of) == ["step_3", "step_6", "step_7"]


def test_retention_never_touches_checkpoints_newer_than_latest(tmp_path):
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, step)
    point_latest(tmp_path, "step_1")
    store.prune(tmp_path, CheckpointConfig(keep_last=1))
    assert sorted(store.sealed_tags(tmp_path), key=store.step_of) == ["step_1", "step_2", "step_3"]
