"""Hugging Face export and import against transformers' LlamaForCausalLM (the reference).

Two training runs are exported: TP=1 with ZeRO-3 (dp=2), and TP=2 (dp=1) with a padded
vocabulary. Two runs start from an export (model.init_from): TP=2 under ZeRO-3 with frozen
parts (exported again afterwards), and TP=1 under ZeRO-2. Everything is fp32, so logits agree
to rounding.
"""

import json
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from dist_utils import single_process_group
from safetensors.torch import load_file, save_file
from training_runs import first_step_samples, losses, run_train, tokens_of, valid_losses
from transformers import AutoTokenizer, LlamaForCausalLM

from pretrain.model import hf
from pretrain.model.flops import flops_per_token
from pretrain.model.generate import greedy
from pretrain.monitor.metrics import read_metrics
from pretrain.tokenizers.tokenizer import Tokenizer

VOCAB = 512  # the test tokenizer's
EXPORT_RUNS = {
    "tp1_zero3": ["parallel.zero_stage=3", "train.peak_flops=1e12"],
    "tp2_padded_vocab": ["parallel.tensor_parallel_size=2", "model.make_vocab_size_divisible_by=384"],
}
EXPORT_OPTIONS = {"tp1_zero3": [], "tp2_padded_vocab": ["--max-shard-gb", "0.0002"]}  # 0.2 MiB: 3-4 files
SHORT = ["train.train_steps=3", "train.save_interval=3", "model.rotary_base=500"]


@pytest.fixture(scope="module")
def data_root(dataset_dir):
    """The session's pipeline run as a data.root folder (cleaned/, tokenizer/, dataset/)."""
    return dataset_dir.parent


@pytest.fixture
def megatron_state():
    # Per test: it sets RANK/WORLD_SIZE in os.environ, which `pretrain train` children must not see.
    with single_process_group() as layout:
        yield layout


@pytest.fixture(scope="module")
def exports(data_root, tmp_path_factory):
    """Each layout trained once and exported with the CLI: name -> (run_dir, hf_dir)."""
    done = {}
    for name, overrides in EXPORT_RUNS.items():
        run_dir = tmp_path_factory.mktemp(name)
        run_train(data_root, run_dir, *SHORT, *overrides)
        result = pretrain("export", "hf", str(run_dir), "--out", str(run_dir / "hf"), *EXPORT_OPTIONS[name])
        assert result.returncode == 0, result.stderr[-3000:]
        done[name] = (run_dir, run_dir / "hf")
    return done


def pretrain(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pretrain.cli", *args], capture_output=True, text=True, timeout=300)


def hf_model(directory) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager").eval()


def hf_loss(model, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(tokens[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)).item()


def our_model(run_dir):
    """Our GPTModel (TP=1) holding the run's latest checkpoint, merged from its shards."""
    from pretrain.model.generate import load_checkpoint_model

    model, _, cfg = load_checkpoint_model(run_dir)
    return model, cfg


@pytest.mark.parametrize("name", list(EXPORT_RUNS))
def test_exported_model_matches_ours_in_logits_loss_and_greedy_generation(name, exports, data_root, megatron_state):
    run_dir, hf_dir = exports[name]
    theirs = hf_model(hf_dir)
    ours, cfg = our_model(run_dir)
    tokens = tokens_of(data_root, "valid", range(12))  # the run's validation set (eval_samples=12)
    input_ids = tokens[:, :-1]
    with torch.no_grad():
        position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        our_logits = ours(input_ids, position_ids, None)
        their_logits = theirs(input_ids).logits
    assert their_logits.shape[-1] == VOCAB and our_logits.shape[-1] >= VOCAB
    assert (our_logits[..., :VOCAB] - their_logits).abs().max().item() <= 1e-4
    # The merged weights are the trained model's: at its own TP and ZeRO layout it logged this
    # validation loss (over the padded vocabulary, as ours computes it).
    our_loss = F.cross_entropy(our_logits.reshape(-1, our_logits.shape[-1]), tokens[:, 1:].reshape(-1)).item()
    assert our_loss == pytest.approx(valid_losses(run_dir)[3], abs=1e-5)

    prompt = tokens[0, :8].tolist()
    mine = greedy(ours, prompt, 6, cfg.seq_length, VOCAB, eos_id=2, device="cpu")
    generated = theirs.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)
    assert generated[0, len(prompt):].tolist() == mine


def test_export_writes_a_tokenizer_that_transformers_loads_and_that_encodes_like_ours(exports, data_root):
    _, hf_dir = exports["tp1_zero3"]
    theirs = AutoTokenizer.from_pretrained(hf_dir)
    ours = Tokenizer(data_root / "tokenizer")
    text = "def area(r):\n    return 3.14159 * r ** 2  # naïve ✓\n\nclass Circle:  pass\n"
    assert theirs(text, add_special_tokens=False)["input_ids"] == ours.encode([text])[0]
    assert theirs.decode(ours.encode([text])[0]) == text
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (ours.bos_id, ours.eos_id, ours.pad_id)
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == VOCAB
    assert json.loads((hf_dir / "generation_config.json").read_text())["eos_token_id"] == ours.eos_id


def test_mfu_is_logged_with_a_peak_and_absent_without(exports):
    run_dir, _ = exports["tp1_zero3"]  # train.peak_flops=1e12 on 2 processes
    cfg = hf.model_config(json.loads((run_dir / "checkpoints" / "step_3" / "trainer_state.json").read_text())
                          ["config"]["model"])
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    for record in records:
        expected = record["tokens_per_second"] * flops_per_token(cfg, VOCAB) / (2 * 1e12)
        assert record["mfu"] == pytest.approx(expected, rel=1e-9)
    run_dir, _ = exports["tp2_padded_vocab"]  # CPU, no override: the peak is unknown
    assert all("mfu" not in r for r in read_metrics(run_dir / "metrics.jsonl"))


def test_import_then_export_is_bit_exact_at_tp1_and_tp2(exports, megatron_state):
    from pretrain.model.gpt import build_model

    assert len(hf.safetensors_files(exports["tp2_padded_vocab"][1])) > 2  # written as shards with an index
    for name, (_, hf_dir) in exports.items():
        original = hf.read_hf_weights(hf_dir)
        cfg = hf.model_config(_model_fields(exports[name][0]))
        full = hf.from_hf(original, cfg, 768)  # padded as a TP=2 run with divisor 384 pads
        shards = [hf.split_tensor_parallel(full, 2, rank) for rank in range(2)]
        back = hf.to_hf(hf.merge_tensor_parallel(shards), cfg, VOCAB)
        assert back.keys() == original.keys()
        assert all(torch.equal(back[k], original[k]) for k in original), name
    # Into a real GPTModel (TP=1) and out again.
    run_dir, hf_dir = exports["tp1_zero3"]
    cfg = hf.model_config({**_model_fields(run_dir), "init_from": str(hf_dir)})
    model = build_model(cfg, VOCAB, 1)
    hf.load_into(model, cfg, VOCAB, 1, 0)
    weights = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    back, original = hf.to_hf(weights, cfg, VOCAB), load_file(hf_dir / "model.safetensors")
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)


def _model_fields(run_dir) -> dict:
    checkpoint = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    return json.loads((checkpoint / "trainer_state.json").read_text())["config"]["model"]


def test_init_from_at_tp2_starts_from_the_hf_weights_and_keeps_frozen_parts_fixed(exports, data_root, tmp_path):
    _, source = exports["tp1_zero3"]
    run_dir = tmp_path / "transfer"
    common = ["train.train_steps=2", "train.save_interval=2", "model.rotary_base=500", f"model.init_from={source}",
              "model.freeze_embedding=true", "model.freeze_layers=1"]
    result = run_train(data_root, run_dir, "parallel.tensor_parallel_size=2", "parallel.zero_stage=3", *common)
    assert f"initialized the model from {source}" in result.stdout
    tokens = tokens_of(data_root, "train", first_step_samples(run_dir))
    assert len(tokens) == 8
    assert losses(run_dir)[1] == pytest.approx(hf_loss(hf_model(source), tokens), abs=1e-5)

    out = run_dir / "hf"
    assert pretrain("export", "hf", str(run_dir), "--out", str(out)).returncode == 0
    before, after = load_file(source / "model.safetensors"), load_file(out / "model.safetensors")
    frozen = [k for k in before if k.startswith(("model.embed_tokens.", "model.layers.0."))]
    assert len(frozen) == 1 + 9
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    trained = [k for k in before if k not in frozen]
    assert all(not torch.equal(before[k], after[k]) for k in trained)

    # The run has a checkpoint now: going on resumes it, and init_from is not loaded again.
    result = run_train(data_root, run_dir, "parallel.tensor_parallel_size=2", "parallel.zero_stage=3", *common,
                       "train.train_steps=3")
    assert "not loaded: the run directory has a checkpoint, resuming wins" in result.stdout
    assert "resuming from" in result.stdout and "initialized the model" not in result.stdout


def test_init_from_at_tp1_under_zero2_starts_from_the_hf_weights(exports, data_root, tmp_path):
    _, source = exports["tp2_padded_vocab"]  # its vocabulary padding was stripped: 512 rows
    run_dir = tmp_path / "continued"
    run_train(data_root, run_dir, "train.train_steps=1", "parallel.zero_stage=2", "model.rotary_base=500",
              "train.eval_interval=0", f"model.init_from={source}")
    tokens = tokens_of(data_root, "train", first_step_samples(run_dir))
    assert losses(run_dir)[1] == pytest.approx(hf_loss(hf_model(source), tokens), abs=1e-5)


def test_bad_init_from_or_export_input_is_one_line_and_exit_2(exports, data_root, tmp_path):
    run_dir, source = exports["tp1_zero3"]
    bad = tmp_path / "bad_shape"
    shutil.copytree(source, bad)
    weights = load_file(bad / "model.safetensors")
    weights["model.layers.1.mlp.down_proj.weight"] = weights["model.layers.1.mlp.down_proj.weight"][:, :100].clone()
    save_file(weights, bad / "model.safetensors")
    cases = [
        (run_train(data_root, tmp_path / "c", f"model.init_from={bad}", "model.rotary_base=500", check=False),
         "model.layers.1.mlp.down_proj.weight has shape (64, 100), the model needs (64, 176)"),
        (run_train(data_root, tmp_path / "a", f"model.init_from={tmp_path / 'missing'}", check=False),
         "model.init_from: "),
        (run_train(data_root, tmp_path / "b", f"model.init_from={source}", "model.rotary_base=500",
                   "model.ffn_hidden_size=128", check=False),
         "intermediate_size=176 differs from model.ffn_hidden_size=128"),
        (pretrain("export", "hf", str(run_dir), "--step", "99"), "--step: "),
    ]
    for result, expected in cases:
        assert result.returncode == 2, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr


def test_hf_config_check_accepts_what_transformers_writes_and_names_a_mismatch(tmp_path):
    from transformers import LlamaConfig

    cfg = hf.model_config({"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2,
                           "ffn_hidden_size": 176, "seq_length": 32, "rotary_base": 500})
    ours = hf.hf_config(cfg, VOCAB, torch.float32, {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
    LlamaConfig(**ours).save_pretrained(tmp_path)  # this transformers version's own layout of the keys
    written = hf.read_hf_config(tmp_path)
    hf.check_hf_config(written, cfg, VOCAB, tmp_path)
    mismatches = [("num_key_value_heads", 4, "num_key_value_heads=4 differs from model.num_query_groups=2"),
                  ("vocab_size", 640, "vocab_size=640 differs from the tokenizer's"),
                  ("tie_word_embeddings", True, "tie_word_embeddings=True differs")]
    for key, value, message in mismatches:
        with pytest.raises(hf.ConfigError, match=message):
            hf.check_hf_config({**written, key: value}, cfg, VOCAB, tmp_path)
    with pytest.raises(hf.ConfigError, match="rope_theta=10000.0 differs from model.rotary_base=500"):
        hf.check_hf_config(json.loads(json.dumps(ours).replace("500.0", "10000.0")), cfg, VOCAB, tmp_path)


def test_mixtral_config_check_accepts_what_transformers_writes_and_names_a_mismatch(tmp_path):
    from transformers import MixtralConfig

    from pretrain.model.config import MoEConfig

    cfg = hf.model_config({"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2,
                           "ffn_hidden_size": 176, "seq_length": 32,
                           "moe": MoEConfig(num_experts=4, router_topk=2, ffn_hidden_size=96)})
    ours = hf.hf_config(cfg, VOCAB, torch.float32, {})
    MixtralConfig(**ours).save_pretrained(tmp_path)
    written = hf.read_hf_config(tmp_path)
    hf.check_hf_config(written, cfg, VOCAB, tmp_path)
    mismatches = [("num_local_experts", 8, "num_local_experts=8 differs from model.moe.num_experts=4"),
                  ("num_experts_per_tok", 1, "num_experts_per_tok=1 differs from model.moe.router_topk=2"),
                  ("intermediate_size", 176, "intermediate_size=176 differs from model.moe.ffn_hidden_size=96"),
                  ("sliding_window", 16, "sliding_window=16; this model attends to the whole sequence"),
                  ("model_type", "llama", "not a Mixtral model")]
    for key, value, message in mismatches:
        with pytest.raises(hf.ConfigError, match=message):
            hf.check_hf_config({**written, key: value}, cfg, VOCAB, tmp_path)
    dense = hf.model_config({"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2,
                             "ffn_hidden_size": 96, "seq_length": 32})
    with pytest.raises(hf.ConfigError, match="num_local_experts=4 differs from model.moe.num_experts=0"):
        hf.check_hf_config(written, dense, VOCAB, tmp_path)


def test_tied_embeddings_export_without_lm_head_and_match_transformers(tmp_path, megatron_state):
    from safetensors.torch import save_file

    from pretrain.model.gpt import build_model
    from pretrain.parallel.layout import set_seed

    cfg = hf.model_config({"num_layers": 2, "hidden_size": 64, "num_attention_heads": 8, "num_query_groups": 2,
                           "ffn_hidden_size": 96, "seq_length": 16, "rotary_base": 300,
                           "untie_embeddings_and_output_weights": False})
    set_seed(3)
    ours = build_model(cfg, 384, 1).eval()  # 300 tokens padded to 384
    weights = {k: v for k, v in ours.state_dict().items() if not k.endswith("_extra_state")}
    tensors = hf.to_hf(weights, cfg, 300)
    assert "lm_head.weight" not in tensors and tensors["model.embed_tokens.weight"].shape == (300, 64)
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(hf.hf_config(cfg, 300, torch.float32, {})))
    theirs = hf_model(tmp_path)
    input_ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        our_logits = ours(input_ids, torch.arange(16).expand_as(input_ids), None)[..., :300]
        assert (our_logits - theirs(input_ids).logits).abs().max().item() <= 1e-4
