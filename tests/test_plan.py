"""`pretrain plan`: a 70B layout on 1,024 GPUs checked by hand, bad layouts, counts of real models."""

import argparse
import re
import subprocess
import sys

import pytest
import torch
from dist_utils import single_process_group, spawn

from pretrain.config import compose_config
from pretrain.model.config import ModelConfig
from pretrain.model.flops import padded_vocab_size, total_parameters
from pretrain.plan import estimated_step_seconds, gpus_per_node_of, parameters_per_gpu, plan, recommend

GiB = 2**30
LLAMA_70B = ["experiment=llama_70b_128node"]  # 128 nodes x 8, TP=8, ZeRO-1, bf16, micro 1, global 1024


def pretrain_plan(*args) -> subprocess.CompletedProcess:
    # Also proves that plan runs without importing torch.
    code = ("import sys; from pretrain.cli import main; code = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'plan imported torch'; sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, "plan", *args], capture_output=True, text=True, timeout=120)


def test_70b_on_1024_gpus_matches_hand_arithmetic():
    result = pretrain_plan(*LLAMA_70B, "--activation-checkpointing", "selective", "--gpu", "h100_sxm", "--mfu", "0.4")
    assert result.returncode == 0, result.stderr
    assert "GPUs/node    8 (from cluster.gpus_per_node)" in result.stdout
    assert "layout       1024 GPUs = tensor 8 x data 128; ZeRO-1, bf16" in result.stdout
    assert "global 1024 = micro 1 x data 128 x accumulation 8; 8,388,608 tokens per step" in result.stdout

    p = plan(compose_config(LLAMA_70B), 1024, "h100_sxm", 0.4, "selective")
    h, f, layers, vocab = 8192, 28672, 80, 128256
    layer = h * (64 + 2 * 8) * 128 + h * h + 3 * h * f  # qkv (64 q + 8 k + 8 v heads of 128), proj, SwiGLU
    # Llama-3-70B's published size: 70.55B.
    assert p["parameters_unpadded"] == layers * (layer + 2 * h) + h + 2 * vocab * h == 70_553_706_496
    assert p["padded_vocab"] == 129_024  # 128256 rounded up to 128 x TP 8
    per_gpu = layers * (layer // 8 + 2 * h) + h + 2 * 129_024 * h // 8
    assert p["parameters_per_gpu"] == per_gpu == 8_821_940_224
    assert f"{per_gpu:,} per GPU" in result.stdout
    memory = p["memory"]
    assert memory["weights"] == memory["gradients"] == 2 * per_gpu  # bf16, not partitioned at ZeRO-1
    assert memory["optimizer"] == 12 * per_gpu / 128  # fp32 master + 2 moments over 128 data-parallel ranks
    assert memory["activations"] == layers * 8192 * 1 * h * (10 + 24 / 8)  # selective, no sequence parallelism
    assert f"= {memory['total'] / GiB:.2f} GiB" in result.stdout
    flops = (6 * (layers * layer + 129_024 * h) + 12 * layers * h * 8192) * 1024 * 8192
    assert p["flops_per_step"] == flops
    assert p["step_time"] == pytest.approx(flops / (0.4 * 989.4e12 * 1024), rel=1e-12)
    assert p["tokens_per_second"] == pytest.approx(1024 * 8192 / p["step_time"], rel=1e-12)


def test_checkpointing_modes_and_zero_stages_change_memory_as_the_formulas_say():
    cfg = compose_config([*LLAMA_70B, "model.attention=local"])  # the unfused attention keeps its scores
    s, b, h, a, t = 8192, 1, 8192, 64, 8
    none = plan(cfg, 1024, "h100_sxm", 0.4, "none")["memory"]["activations"]
    full = plan(cfg, 1024, "h100_sxm", 0.4, "full")["memory"]["activations"]
    sp = plan(cfg, 1024, "h100_sxm", 0.4, "selective", sequence_parallel=True)["memory"]["activations"]
    assert none == 80 * s * b * h * (10 + 24 / t + 5 * a * s / (h * t))
    fused = plan(compose_config(LLAMA_70B), 1024, "h100_sxm", 0.4, "none")["memory"]["activations"]
    assert fused == 80 * s * b * h * (10 + 24 / t)  # SDPA / flash-attn: no scores stored
    assert full == 80 * 2 * s * b * h
    assert sp == 80 * 34 * s * b * h / t
    cfg = compose_config([*LLAMA_70B, "parallel.zero_stage=3"])
    memory, n = plan(cfg, 1024, "h100_sxm", 0.4, "full")["memory"], 8_821_940_224
    assert (memory["weights"], memory["gradients"], memory["optimizer"]) == (2 * n / 128, 2 * n / 128, 12 * n / 128)


@pytest.mark.parametrize("args, expected", [
    (["parallel.tensor_parallel_size=16"], "tensor_parallel_size: 16 does not divide model.num_query_groups=8"),
    (["--world-size", "1020"], "parallel.tensor_parallel_size: 8 does not divide the world size 1020"),
    (["--data-parallel-size", "64"], "--data-parallel-size: tensor 8 x data 64 = 512, not the world size 1024"),
    (["--gpus-per-node", "0"], "--gpus-per-node: must be > 0, got 0"),
    (["--world-size", "1000"], "train.global_batch_size: 1024 is not divisible by micro_batch_size x data-parallel"),
])
def test_a_bad_layout_is_one_line_naming_the_key_and_exit_2(args, expected):
    result = pretrain_plan(*LLAMA_70B, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


@pytest.mark.parametrize("untie", [True, False], ids=["untied", "tied"])
def test_parameter_arithmetic_equals_a_real_gpt_model(untie):
    from pretrain.model.gpt import build_model, count_parameters

    cfg = ModelConfig(num_layers=3, hidden_size=64, num_attention_heads=8, num_query_groups=2, ffn_hidden_size=96,
                      seq_length=16, untie_embeddings_and_output_weights=untie)
    with single_process_group():
        assert count_parameters(build_model(cfg, 384, 1)) == total_parameters(cfg, 384)


def _70b_shard_parameters() -> int:
    """A real 70B GPTModel shard at TP=8, built on the meta device under a fake 1,024-rank group."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from pretrain.model.gpt import build_model, count_parameters

    dist.init_process_group("fake", world_size=1024, rank=0, store=FakeStore())
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=8, create_gloo_process_groups=False)
    cfg = compose_config(LLAMA_70B).model
    with torch.device("meta"):
        model = build_model(cfg, padded_vocab_size(cfg.vocab_size, cfg, 8), 8, torch.bfloat16)
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()
    return count_parameters(model)


def test_per_gpu_parameters_equal_a_real_70b_shard_at_tp8():
    cfg = compose_config(LLAMA_70B)
    assert spawn(_70b_shard_parameters, 1, init_process_group=False) == [parameters_per_gpu(cfg, 129_024, 8)]


def test_communication_per_step_follows_the_ring_arithmetic():
    from pretrain.communication import data_parallel_bytes, tensor_parallel_bytes

    n, d, a = 1_000_000, 4, 8  # parameters per GPU, data-parallel ranks, accumulation
    share = (d - 1) / d
    assert data_parallel_bytes(n, 2, d, 0, a) == data_parallel_bytes(n, 2, d, 1, a) == 2 * share * 2 * n
    assert data_parallel_bytes(n, 2, d, 2, a) == (a + 1) * share * 2 * n  # reduce-scatter per micro-batch
    assert data_parallel_bytes(n, 4, d, 3, a) == 3 * a * share * 4 * n  # fp32, gather twice and scatter per micro
    assert data_parallel_bytes(n, 2, 1, 3, a) == 0
    b, s, h, layers, t = 2, 4096, 1024, 10, 4
    activations = b * s * h * 2
    assert tensor_parallel_bytes(b, s, h, layers, t, a, "none") == 4 * 2 * (t - 1) / t * activations * layers * a
    assert tensor_parallel_bytes(b, s, h, layers, t, a, "full") == 6 * 2 * (t - 1) / t * activations * layers * a
    assert tensor_parallel_bytes(b, s, h, layers, 1, a, "none") == 0


def test_70b_plan_prints_traffic_and_recommends_a_layout_that_fits():
    cfg = compose_config(LLAMA_70B)
    p = plan(cfg, 1024, "h100_sxm", 0.4, "none", sequence_parallel=True)
    dp_bytes = 2 * 127 / 128 * 2 * p["parameters_per_gpu"]  # ZeRO-1, bf16 gradients
    assert p["communication_bytes"]["data_parallel"] == pytest.approx(dp_bytes)
    assert p["communication_seconds"]["data_parallel"] == pytest.approx(dp_bytes / 50e9)  # across nodes
    best = recommend(cfg, 1024, "h100_sxm", 0.4, gpus_per_node=8)
    assert best["fits"] and best["memory"]["total"] <= 0.9 * 80 * GiB
    # TP=4 fits only by recomputing every layer (weights and gradients take 66 GiB): slower than TP=8.
    small_tp = compose_config([*LLAMA_70B, "parallel.tensor_parallel_size=4"])
    assert not plan(small_tp, 1024, "h100_sxm", 0.4, "none", sequence_parallel=True)["fits"]
    alternative = plan(small_tp, 1024, "h100_sxm", 0.4, "full", sequence_parallel=True)
    assert alternative["fits"]
    slower = estimated_step_seconds(alternative["step_time"], "full", alternative["communication_seconds"])
    assert best["estimated_step_time"] < slower
    assert best["layout"].tensor == 8
    result = pretrain_plan(*LLAMA_70B)
    assert "comm/GPU     data parallel" in result.stdout and "recommended  tensor 8, ZeRO-" in result.stdout


def test_a_small_model_is_recommended_no_tensor_parallelism():
    cfg = compose_config(["model=llama_1b", "train.micro_batch_size=4", "train.global_batch_size=256"])
    best = recommend(cfg, 8, "h100_sxm", 0.4, gpus_per_node=8)
    assert (best["layout"].tensor, best["zero_stage"], best["checkpointing"]) == (1, 1, "none")


def test_gpus_per_node_comes_from_the_flag_the_profile_nproc_above_1_else_8():
    def of(overrides, flag=None):
        return gpus_per_node_of(compose_config(overrides), argparse.Namespace(gpus_per_node=flag))

    assert of([], flag=2) == (2, "from --gpus-per-node")
    assert of(["cluster=h100_ib", "parallel.nproc_per_node=4"]) == (8, "from cluster.gpus_per_node")
    assert of(["parallel.nproc_per_node=4"]) == (4, "from parallel.nproc_per_node")
    count, source = of([])  # the local profile sets no GPUs; nproc_per_node is its default 1
    assert count == 8 and source.startswith("assumed")


def test_without_a_profile_a_70b_model_is_recommended_tensor_parallelism():
    # 70B on 16 nodes: at TP=1 its bf16 weights and gradients alone are 263 GiB per GPU.
    result = pretrain_plan("model=llama_70b", "train.micro_batch_size=1", "--nodes", "16")
    assert result.returncode == 0, result.stderr
    assert "GPUs/node    8 (assumed, the usual node" in result.stdout
    assert "layout       128 GPUs = tensor 1 x data 128" in result.stdout
    tensor = re.search(r"recommended  tensor (\d+),", result.stdout)
    assert tensor and int(tensor.group(1)) > 1, result.stdout
    # At one GPU per node the recommendation can try TP=1 only.
    one = pretrain_plan("model=llama_70b", "train.micro_batch_size=1", "--world-size", "128", "--gpus-per-node", "1")
    assert "GPUs/node    1 (from --gpus-per-node)" in one.stdout and "recommended  tensor 1," in one.stdout


# 8 experts of the tiny MoE model, split over 4 ranks, with TP=2 and sequence parallelism, on 16 GPUs.
MOE_EP4 = ["model=moe_tiny", "model.moe.num_experts=8", "parallel.tensor_parallel_size=2",
           "parallel.sequence_parallel=true", "parallel.expert_parallel_size=4", "parallel.zero_stage=1",
           "train.micro_batch_size=1", "train.global_batch_size=8", "model.vocab_size=1000"]


def _moe_shard_parameters() -> int:
    """A real MoE GPTModel shard at TP=2, EP=4, built on the meta device under a fake 16-rank group."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from pretrain.model.gpt import build_model, count_parameters

    dist.init_process_group("fake", world_size=16, rank=0, store=FakeStore())
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=2, expert_model_parallel_size=4,
                                             create_gloo_process_groups=False)
    cfg = compose_config(MOE_EP4).model
    with torch.device("meta"):
        model = build_model(cfg, padded_vocab_size(cfg.vocab_size, cfg, 2), 2, sequence_parallel=True,
                            expert_parallel_size=4)
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()
    return count_parameters(model)


def test_expert_parallelism_divides_the_experts_and_their_zero_partition():
    cfg = compose_config(MOE_EP4)
    p = plan(cfg, 16, "h100_sxm", 0.4, "full")
    assert spawn(_moe_shard_parameters, 1, init_process_group=False) == [p["parameters_per_gpu"]]
    h, experts_per_gpu = 64, 2  # 8 experts over 4 ranks
    expert = 3 * h * 96 // 2  # SwiGLU of moe.ffn_hidden_size 96, TP=2
    assert p["parameters_per_gpu"] - parameters_per_gpu(cfg, p["padded_vocab"], 2, ep=1) == \
        -2 * (8 - experts_per_gpu) * expert  # 2 layers, 6 of 8 experts elsewhere
    experts = 2 * experts_per_gpu * expert
    # bf16 Adam state (12 bytes): the shared weights over 8 data-parallel ranks, the experts over 8 / 4 = 2.
    assert p["memory"]["optimizer"] == 12 * (p["parameters_per_gpu"] - experts) / 8 + 12 * experts / 2
