"""The `pretrain` command: help, and one-line errors with exit code 2 for user mistakes."""

import json
import subprocess
import sys

import pytest


def pretrain(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pretrain.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("command", [["data", "clean"], ["data", "shard"], ["tokenizer", "train"], ["train"], ["demo"]])
def test_every_subcommand_has_help(command):
    result = pretrain(*command, "--help")
    assert result.returncode == 0
    assert "overrides" in result.stdout


@pytest.mark.parametrize("args, key", [
    (["train", "model.foo=1"], "model.foo"),
    (["train", "optim.lr=abc"], "optim.lr"),
    (["train", "parallel.tensor_parallel_size=3"], "parallel.tensor_parallel_size"),
    (["train", "parallel.nproc_per_node=2", "train.micro_batch_size=4", "train.global_batch_size=12"],
     "train.global_batch_size"),
    (["data", "clean", "data.clean.inputs=[/no/such/file.jsonl]"], "data.clean.inputs"),
])
def test_bad_input_is_one_line_and_exit_2(args, key, tmp_path):
    result = pretrain(*args, f"data.root={tmp_path}/data", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"pretrain: error: {key}")


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"text": "a" * 300}) + "\n{not json\n")
    result = pretrain("data", "clean", f"data.clean.inputs=[{raw}]", f"data.root={tmp_path}/data", cwd=tmp_path)
    assert result.returncode == 2
    assert f"{raw}:2" in result.stderr
    assert not (tmp_path / "data" / "cleaned").exists()


def test_training_without_a_dataset_says_what_to_run(tmp_path):
    result = pretrain("train", f"data.root={tmp_path}/data", cwd=tmp_path)
    assert result.returncode == 2
    assert "pretrain: error: data." in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_print_config_shows_the_composed_tree():
    result = pretrain("train", "model=llama_1b", "--print-config")
    assert result.returncode == 0
    assert "num_query_groups: 8" in result.stdout
