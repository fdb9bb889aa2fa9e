"""The `latest` pointer: what a resume reads first."""

import pytest

from pretrain.checkpoint import store
from pretrain.errors import ConfigError
from pretrain.io import write_atomic


def test_a_new_run_has_no_latest(tmp_path):
    assert store.latest_tag(tmp_path) is None


def test_latest_names_a_complete_checkpoint(tmp_path):
    (tmp_path / "checkpoints" / "step_4").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_4" / store.TRAINER_STATE).write_text("{}")
    write_atomic(tmp_path / "checkpoints" / store.LATEST, "step_4\n")
    assert store.latest_tag(tmp_path) == "step_4"


def test_latest_naming_a_damaged_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / "checkpoints" / "step_4").mkdir(parents=True)
    write_atomic(tmp_path / "checkpoints" / store.LATEST, "step_4\n")
    with pytest.raises(ConfigError) as error:
        store.latest_tag(tmp_path)
    assert error.value.key == "train.run_dir" and "step_4" in error.value.message
