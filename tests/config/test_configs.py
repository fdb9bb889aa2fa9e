"""Every shipped config composes, converts to the schema and passes validation."""

from pathlib import Path

import pytest

from pretrain.config import ConfigError, compose_config, config_dir, validate

CONFIGS = config_dir()
MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
GROUPS = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir())


def test_every_group_is_shipped():
    assert {"model", "data", "optim", "train", "parallel", "logging", "experiment"} <= set(GROUPS)


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    for option in sorted(p.stem for p in (CONFIGS / group).glob("*.yaml")):
        cfg = compose_config([f"{group}={option}"])
        validate(cfg, world_size=cfg.parallel.nproc_per_node * cfg.parallel.tensor_parallel_size)


@pytest.mark.parametrize("model", MODELS)
def test_model_presets_are_llama_shaped(model):
    cfg = compose_config([f"model={model}"])
    assert cfg.model.name == model
    assert cfg.model.num_attention_heads % cfg.model.num_query_groups == 0
    assert cfg.data.shard.sequence_length == cfg.model.seq_length


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_validate_on_their_own_layout(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    validate(cfg, world_size=cfg.parallel.nproc_per_node)


def test_demo_reads_the_standard_library():
    cfg = compose_config(["experiment=demo"])
    assert Path(cfg.data.clean.inputs[0], "os.py").is_file()


@pytest.mark.parametrize("overrides, key", [
    (["model.foo=1"], "model.foo"),
    (["optim.lr=abc"], "optim.lr"),
    (["train.precision=fp8"], "train.precision"),
    (["model.num_layers=0"], "model.num_layers"),
    (["model.num_query_groups=3"], "model.num_query_groups"),
    (["parallel.zero_stage=4"], "parallel.zero_stage"),
    (["train.micro_batch_size=3", "train.global_batch_size=16"], "train.global_batch_size"),
    (["data.prefetch_batches=-1"], "data.prefetch_batches"),
])
def test_bad_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        compose_config(overrides)
    assert error.value.key == key


@pytest.mark.parametrize("overrides, world_size, key", [
    (["parallel.tensor_parallel_size=3"], 3, "parallel.tensor_parallel_size"),  # 3 does not divide 4 heads
    (["parallel.tensor_parallel_size=2"], 3, "parallel.tensor_parallel_size"),  # 2 does not divide 3 ranks
    (["train.micro_batch_size=4", "train.global_batch_size=12"], 2, "train.global_batch_size"),
    (["train.precision=bf16", "parallel.tensor_parallel_size=2", "parallel.zero_stage=0"], 2, "parallel.zero_stage"),
    (["model.seq_length=128", "data.shard.sequence_length=64"], 1, "model.seq_length"),
    (["parallel.tensor_parallel_size=2", "parallel.sequence_parallel=true", "model.seq_length=255",
      "data.shard.sequence_length=255"], 2, "model.seq_length"),
    (["model.moe.num_experts=4", "parallel.tensor_parallel_size=2"], 2, "parallel.sequence_parallel"),
    (["parallel.expert_parallel_size=2"], 2, "parallel.expert_parallel_size"),  # a dense model
    (["model.moe.num_experts=4", "parallel.expert_parallel_size=2", "train.micro_batch_size=1",
      "train.global_batch_size=3"], 3, "parallel.expert_parallel_size"),
    (["model.moe.num_experts=3", "parallel.expert_parallel_size=2"], 2, "parallel.expert_parallel_size"),
    (["model.moe.num_experts=4", "parallel.expert_parallel_size=2", "parallel.zero_stage=0"], 2,
     "parallel.expert_parallel_size"),
    (["model.moe.num_experts=4", "parallel.expert_parallel_size=2", "parallel.zero_stage=3"], 2,
     "parallel.expert_parallel_size"),
    (["model.document_masking=block_causal", "model.attention=flash"], 1, "model.document_masking"),
    (["model.document_masking=block_causal", "model.attention=te"], 1, "model.document_masking"),
])
def test_cross_component_checks(overrides, world_size, key):
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg, world_size)
    assert error.value.key == key


@pytest.mark.parametrize("overrides, key", [
    (["model.attention=fast"], "model.attention"),
    (["model.document_masking=packed"], "model.document_masking"),
    (["model.activation_checkpointing=all"], "model.activation_checkpointing"),
    (["model.moe.num_experts=2", "model.moe.router_topk=3"], "model.moe.router_topk"),
    (["model.moe.token_dispatcher=flex"], "model.moe.token_dispatcher"),
    (["model.moe.capacity_factor=0"], "model.moe.capacity_factor"),
    (["parallel.expert_parallel_size=0"], "parallel.expert_parallel_size"),
])
def test_bad_model_feature_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        compose_config(overrides)
    assert error.value.key == key


def test_sequence_parallel_without_tensor_parallel_warns_and_passes(capsys):
    validate(compose_config(["parallel.sequence_parallel=true"]), world_size=2)
    assert "parallel.sequence_parallel does nothing with tensor_parallel_size=1" in capsys.readouterr().err
    validate(compose_config(["parallel.sequence_parallel=true", "parallel.tensor_parallel_size=2",
                             "model.moe.num_experts=4", "model.document_masking=block_causal"]), world_size=2)
    assert capsys.readouterr().err == ""


def test_a_valid_layout_passes():
    cfg = compose_config(["parallel.tensor_parallel_size=2", "train.micro_batch_size=4", "train.global_batch_size=16"])
    validate(cfg, world_size=4)
