"""Hugging Face Llama ⇄ our megatron GPTModel: weight layout, config.json, tokenizer files.

Export (`pretrain export hf RUN_DIR`) reads a checkpoint on the CPU, merges its tensor-parallel
shards and writes a directory that `transformers.LlamaForCausalLM` and `AutoTokenizer` load.
Import (`model.init_from=DIR`) reads such a directory into this rank's GPTModel shard.
Only torch, safetensors and sentencepiece are needed; transformers is not.

Layout facts (megatron-core's GPTModel, local layer spec):
- `linear_qkv.weight` is [G·(Q/G+2)·d, h], grouped per query group: viewed as
  [G, Q/G+2, d, h], each group holds its Q/G query heads, then its key, then its value.
  HF keeps q_proj [Q·d, h], k_proj and v_proj [G·d, h]; query head i reads kv head i // (Q/G)
  in both, so regrouping is a reshape.
- `linear_fc1.weight` is [gate; up]; under tensor parallelism each rank holds [gate_r; up_r],
  so the halves are gathered separately.
- Column-parallel weights (qkv, fc1, embedding, output layer) split along dim 0, row-parallel
  ones (attention output, fc2) along dim 1; norms are replicated.
- The embedding and output layer carry rows for vocabulary padding (a multiple of
  make_vocab_size_divisible_by × TP): dropped on export, zero rows on import.
- A mixture-of-experts model exports as `MixtralForCausalLM` (same attention, norms and
  embeddings): megatron's `mlp.router.weight` [E, h] is Mixtral's `block_sparse_moe.gate`,
  and expert j's `linear_fc1` [gate; up] / `linear_fc2` are its `w1`, `w3` / `w2`; on import
  each expert-parallel rank keeps its own experts (global index j -> local j - rank x E/ep).
"""

import json
import re
import shutil
from pathlib import Path

import torch

from pretrain.errors import ConfigError
from pretrain.model.config import ModelConfig
from pretrain.model.safetensors_writer import StreamingSafetensors

KEY = "model.init_from"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT = "output_layer.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
QKV = "self_attention.linear_qkv.weight"
FC1 = "mlp.linear_fc1.weight"
_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")
# Layer weights that map one-to-one: our suffix -> HF suffix.
_SAME = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
}
_DENSE_FC2 = ("mlp.linear_fc2.weight", "mlp.down_proj.weight")  # a MoE layer has experts instead
_COLUMN_PARALLEL = (QKV, EMBEDDING, OUTPUT)
_ROW_PARALLEL = ("self_attention.linear_proj.weight", "linear_fc2.weight")  # the MLP's and each expert's
# MoE layers (HF Mixtral): the router, and each expert's SwiGLU as w1 (gate), w3 (up), w2 (down).
ROUTER = "mlp.router.weight"
_EXPERT = re.compile(r"mlp\.experts\.local_experts\.(\d+)\.(linear_fc1|linear_fc2)\.weight")


# --- tensor parallelism: merge shards for export, split for import -------------------------

def _split_dim(name: str) -> int | None:
    if name.endswith("linear_fc1.weight"):
        return None  # gate and up halves (the MLP's and each expert's): see merge/split
    if name.endswith(_COLUMN_PARALLEL):
        return 0
    if name.endswith(_ROW_PARALLEL):
        return 1
    return -1  # replicated


def merge_tensor_parallel(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Full weights from each TP rank's shard (in rank order)."""
    if len(shards) == 1:
        return dict(shards[0])
    full = {}
    for name in shards[0]:
        parts = [shard[name] for shard in shards]
        dim = _split_dim(name)
        if dim is None:
            gates, ups = zip(*(part.chunk(2, dim=0) for part in parts))
            full[name] = torch.cat([*gates, *ups])
        else:
            full[name] = parts[0] if dim < 0 else torch.cat(parts, dim=dim)
    return full


def split_tensor_parallel(full: dict[str, torch.Tensor], tp_size: int, tp_rank: int) -> dict[str, torch.Tensor]:
    """This TP rank's shard of full weights."""
    if tp_size == 1:
        return dict(full)
    shard = {}
    for name, tensor in full.items():
        dim = _split_dim(name)
        if dim is None:
            gate, up = tensor.chunk(2, dim=0)
            shard[name] = torch.cat([gate.chunk(tp_size)[tp_rank], up.chunk(tp_size)[tp_rank]])
        else:
            shard[name] = tensor if dim < 0 else tensor.chunk(tp_size, dim=dim)[tp_rank]
    return {name: t.contiguous() for name, t in shard.items()}


# --- megatron names and layout ⇄ HF Llama ------------------------------------------------------

def to_hf(weights: dict[str, torch.Tensor], cfg: ModelConfig, vocab_size: int) -> dict[str, torch.Tensor]:
    """HF LlamaForCausalLM state dict from our full (TP-merged) weights, or from any part of them
    (export converts a layer at a time); vocab padding dropped."""
    groups, per_group = cfg.num_query_groups, cfg.num_attention_heads // cfg.num_query_groups
    top = {EMBEDDING: "model.embed_tokens.weight", FINAL_NORM: "model.norm.weight", OUTPUT: "lm_head.weight"}
    hf = {top[name]: tensor[:vocab_size] if name != FINAL_NORM else tensor
          for name, tensor in weights.items() if name in top}
    for name, tensor in weights.items():
        match = _LAYER.fullmatch(name)
        if not match:
            continue
        prefix, suffix = f"model.layers.{match.group(1)}.", match.group(2)
        if suffix == QKV:
            qkv = tensor.view(groups, per_group + 2, -1, tensor.shape[-1])  # [G, Q/G+2, d, h]
            hf[prefix + "self_attn.q_proj.weight"] = qkv[:, :per_group].reshape(-1, tensor.shape[-1])
            hf[prefix + "self_attn.k_proj.weight"] = qkv[:, per_group].reshape(-1, tensor.shape[-1])
            hf[prefix + "self_attn.v_proj.weight"] = qkv[:, per_group + 1].reshape(-1, tensor.shape[-1])
        elif suffix == FC1:
            hf[prefix + "mlp.gate_proj.weight"], hf[prefix + "mlp.up_proj.weight"] = tensor.chunk(2, dim=0)
        elif suffix in _SAME:
            hf[prefix + _SAME[suffix]] = tensor
        elif suffix == _DENSE_FC2[0]:
            hf[prefix + _DENSE_FC2[1]] = tensor
        else:
            hf.update(_moe_to_hf(prefix + "block_sparse_moe.", suffix, tensor))
    return {name: t.contiguous() for name, t in hf.items()}


def check_experts(names: list[str], cfg: ModelConfig, checkpoint: Path) -> None:
    """Every layer must hold all of the model's experts (a checkpoint of split experts lists each rank's)."""
    found = {int(m.group(1)) for name in names if (m := _EXPERT.search(name)) and name.startswith("decoder.layers.0.")}
    if found != set(range(cfg.moe.num_experts if cfg.moe.enabled else 0)):
        raise ConfigError("--step", f"{checkpoint} holds experts {sorted(found)} of the first layer, the model has "
                                    f"{cfg.moe.num_experts} (a file of experts is missing)")


def _moe_to_hf(prefix: str, suffix: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """A router or expert weight under Mixtral's names (megatron's router, top-k of the logits then
    softmax over those k, is Mixtral's softmax, top-k, renormalise)."""
    if suffix == ROUTER:
        return {prefix + "gate.weight": tensor}
    expert = _EXPERT.fullmatch(suffix)
    if expert is None:
        return {}
    name = f"{prefix}experts.{expert.group(1)}."
    if expert.group(2) == "linear_fc2":
        return {name + "w2.weight": tensor}
    gate, up = tensor.chunk(2, dim=0)
    return {name + "w1.weight": gate, name + "w3.weight": up}


def from_hf(hf: dict[str, torch.Tensor], cfg: ModelConfig, padded_vocab: int) -> dict[str, torch.Tensor]:
    """Our full (unsplit) weights from an HF Llama state dict; padding rows are zero."""
    groups, per_group = cfg.num_query_groups, cfg.num_attention_heads // cfg.num_query_groups
    weights = {EMBEDDING: _pad_rows(hf["model.embed_tokens.weight"], padded_vocab),
               FINAL_NORM: hf["model.norm.weight"]}
    if cfg.untie_embeddings_and_output_weights:
        weights[OUTPUT] = _pad_rows(hf["lm_head.weight"], padded_vocab)
    for layer in range(cfg.num_layers):
        ours, theirs = f"decoder.layers.{layer}.", f"model.layers.{layer}."
        q, k, v = (hf[f"{theirs}self_attn.{p}_proj.weight"] for p in "qkv")
        h = q.shape[-1]
        qkv = torch.cat([q.view(groups, per_group, -1, h), k.view(groups, 1, -1, h), v.view(groups, 1, -1, h)], dim=1)
        weights[ours + QKV] = qkv.reshape(-1, h)
        if cfg.moe.enabled:
            weights.update(_moe_from_hf(hf, cfg, ours, theirs + "block_sparse_moe."))
        else:
            weights[ours + FC1] = torch.cat([hf[theirs + "mlp.gate_proj.weight"], hf[theirs + "mlp.up_proj.weight"]])
            weights[ours + _DENSE_FC2[0]] = hf[theirs + _DENSE_FC2[1]]
        for our_suffix, their_suffix in _SAME.items():
            weights[ours + our_suffix] = hf[theirs + their_suffix]
    return weights


def _moe_from_hf(hf: dict[str, torch.Tensor], cfg: ModelConfig, ours: str, theirs: str) -> dict[str, torch.Tensor]:
    """One Mixtral layer's router and experts under our names (experts by global index)."""
    weights = {ours + ROUTER: hf[theirs + "gate.weight"]}
    for j in range(cfg.moe.num_experts):
        expert, name = f"{theirs}experts.{j}.", f"{ours}mlp.experts.local_experts.{j}."
        weights[name + "linear_fc1.weight"] = torch.cat([hf[expert + "w1.weight"], hf[expert + "w3.weight"]])
        weights[name + "linear_fc2.weight"] = hf[expert + "w2.weight"]
    return weights


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if rows < tensor.shape[0]:
        raise ConfigError(KEY, f"the HF vocabulary ({tensor.shape[0]}) is larger than the model's ({rows})")
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], tensor.shape[1])])


# --- config.json ----------------------------------------------------------------------------

def hf_config(cfg: ModelConfig, vocab_size: int, dtype: torch.dtype, special_ids: dict) -> dict:
    """config.json of a LlamaForCausalLM with our model's shape (MixtralForCausalLM with MoE)."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_query_groups,
        "head_dim": cfg.hidden_size // cfg.num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_length,
        "rms_norm_eps": cfg.norm_epsilon,
        "rope_theta": float(cfg.rotary_base),
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": not cfg.untie_embeddings_and_output_weights,
        "initializer_range": cfg.init_method_std,
        "torch_dtype": DTYPE_NAMES[dtype],  # transformers 4.x
        "dtype": DTYPE_NAMES[dtype],  # 5.x
        "use_cache": True,
        **special_ids,
    }
    if cfg.moe.enabled:
        config.update({
            "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
            "intermediate_size": cfg.moe.ffn_hidden_size or cfg.ffn_hidden_size,
            "num_local_experts": cfg.moe.num_experts, "num_experts_per_tok": cfg.moe.router_topk,
            "router_aux_loss_coef": cfg.moe.aux_loss_coeff, "output_router_logits": False, "sliding_window": None,
        })
    return config


def _rope_theta(hf: dict) -> float | None:
    # transformers 4.x writes rope_theta at the top; 5.x inside rope_parameters.
    return hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta"))


def _hf_values(hf: dict, cfg: ModelConfig) -> dict:
    """The HF config's values for the keys we compare, with HF's defaults where a key is absent."""
    return {
        "hidden_size": hf.get("hidden_size"),
        "num_hidden_layers": hf.get("num_hidden_layers"),
        "num_attention_heads": hf.get("num_attention_heads"),
        "num_key_value_heads": hf.get("num_key_value_heads", hf.get("num_attention_heads")),
        "intermediate_size": hf.get("intermediate_size"),
        "head_dim": hf.get("head_dim") or cfg.hidden_size // cfg.num_attention_heads,
        "tie_word_embeddings": hf.get("tie_word_embeddings", False),
        "vocab_size": hf.get("vocab_size"),
        "rope_theta": float(_rope_theta(hf) or 10000.0),
        "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "num_local_experts": hf.get("num_local_experts", 0),
        "num_experts_per_tok": hf.get("num_experts_per_tok", 2),  # MixtralConfig's default
    }


def check_hf_config(hf: dict, cfg: ModelConfig, vocab_size: int, where: Path) -> None:
    """Raise ConfigError naming the first key where the HF config and the model config differ."""
    ours = {  # HF key: (our value, where it comes from)
        "hidden_size": (cfg.hidden_size, "model.hidden_size"),
        "num_hidden_layers": (cfg.num_layers, "model.num_layers"),
        "num_attention_heads": (cfg.num_attention_heads, "model.num_attention_heads"),
        "num_key_value_heads": (cfg.num_query_groups, "model.num_query_groups"),
        "intermediate_size": (cfg.moe.ffn_hidden_size or cfg.ffn_hidden_size, "model.moe.ffn_hidden_size")
        if cfg.moe.enabled else (cfg.ffn_hidden_size, "model.ffn_hidden_size"),
        "head_dim": (cfg.hidden_size // cfg.num_attention_heads, "model.hidden_size / model.num_attention_heads"),
        "tie_word_embeddings": (not cfg.untie_embeddings_and_output_weights,
                                "not model.untie_embeddings_and_output_weights"),
        "vocab_size": (vocab_size, "the tokenizer's vocabulary (or model.vocab_size)"),
        "rope_theta": (float(cfg.rotary_base), "model.rotary_base"),
        "rms_norm_eps": (float(cfg.norm_epsilon), "model.norm_epsilon"),
        "num_local_experts": (cfg.moe.num_experts, "model.moe.num_experts"),
    }
    if cfg.moe.enabled:
        ours["num_experts_per_tok"] = (cfg.moe.router_topk, "model.moe.router_topk")
    theirs_by_key = _hf_values(hf, cfg)
    for key, (value, our_key) in ours.items():
        theirs = theirs_by_key[key]
        if theirs != value:
            raise ConfigError(KEY, f"{where}: {key}={theirs} differs from {our_key}={value}")
    model_type = "mixtral" if cfg.moe.enabled else "llama"
    if hf.get("model_type", "llama") != model_type or hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(KEY, f"{where}: not a {model_type.capitalize()} model (model_type="
                               f"{hf.get('model_type')}, hidden_act={hf.get('hidden_act')})")
    if cfg.moe.enabled and hf.get("sliding_window"):
        raise ConfigError(KEY, f"{where}: sliding_window={hf['sliding_window']}; this model attends to the whole "
                               "sequence")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ConfigError(KEY, f"{where}: {key}=true; this model has no biases")
    rope_type = (hf.get("rope_scaling") or hf.get("rope_parameters") or {}).get("rope_type", "default")
    if rope_type != "default":
        raise ConfigError(KEY, f"{where}: rope scaling {rope_type!r} is not supported")


def read_hf_config(directory: str | Path) -> dict:
    """An HF model directory's config.json; ConfigError if the directory or file is missing."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ConfigError(KEY, f"{directory} is not a Hugging Face model directory (no config.json)")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise ConfigError(KEY, f"{path} is not valid JSON") from None


# --- safetensors files ----------------------------------------------------------------------

def read_hf_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors, or of the shards an index file names."""
    from safetensors.torch import load_file

    weights = {}
    for path in safetensors_files(directory):
        weights.update(load_file(path))
    return weights


def safetensors_files(directory: str | Path) -> list[Path]:
    """model.safetensors, or the shards model.safetensors.index.json names."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return [directory / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    raise ConfigError(KEY, f"{directory} has no model.safetensors (or model.safetensors.index.json)")


# --- export ---------------------------------------------------------------------------------

def export(run_dir: str | Path, step: int | None = None, out_dir: str | Path | None = None,
           tokenizer_dir: str | Path | None = None, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write checkpoint `step` (default: latest) of `run_dir` as an HF Llama (MoE: Mixtral) directory."""
    from pretrain.checkpoint.weights import tensor_parallel_shards
    from pretrain.io import atomic_dir, write_json

    run_dir = Path(run_dir)
    checkpoint, config, cfg = read_checkpoint(run_dir, step)
    tokenizer = open_tokenizer(tokenizer_dir or run_tokenizer_dir(config))
    vocab_size = cfg.vocab_size or tokenizer.vocab_size
    dtype = DTYPES[config["train"]["precision"]]
    shards = tensor_parallel_shards(checkpoint)  # read lazily: memory maps, ZeRO-3 pieces on demand
    check_experts(list(shards[0]), cfg, checkpoint)
    special = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    out_dir = Path(out_dir or run_dir / "hf" / checkpoint.name)
    with atomic_dir(out_dir) as tmp:
        # A layer at a time: memory holds one layer's merged weights and one output shard.
        writer = SafetensorsWriter(tmp, max_shard_bytes)
        for names in conversion_units(shards[0]):
            weights = merge_tensor_parallel([{name: shard[name] for name in names} for shard in shards])
            for name, tensor in to_hf(weights, cfg, vocab_size).items():
                writer.add(name, tensor.to(dtype))
        writer.close()
        write_json(tmp / "config.json", hf_config(cfg, vocab_size, dtype, special))
        write_json(tmp / "generation_config.json", {**special, "max_length": cfg.seq_length})
        write_tokenizer(tokenizer, tmp, cfg.seq_length)
        _readable_by_all(tmp)
    return out_dir


def _readable_by_all(directory: Path) -> None:
    # The temporary folder and safetensors' file are created private (0700/0600); an export is
    # meant to be shared like any other output, so give it the umask's usual permissions.
    import os

    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


class SafetensorsWriter:
    """model.safetensors, or shards of at most max_shard_bytes (a tensor is never split) and
    model.safetensors.index.json, as transformers writes them. Each tensor goes to disk as it is
    added: memory holds what the caller holds, not a shard."""

    def __init__(self, directory: Path, max_shard_bytes: int):
        self.directory, self.max_shard_bytes = directory, max_shard_bytes
        self.current: StreamingSafetensors | None = None
        self.written: list[list[str]] = []  # each file's tensor names, in order
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.current is not None and self.current.size and self.current.size + nbytes > self.max_shard_bytes:
            self._finish_file()
        if self.current is None:
            self.current = StreamingSafetensors(self._part(len(self.written)), {"format": "pt"})
            self.written.append([])
        self.current.add(name, tensor)
        self.written[-1].append(name)
        self.total += nbytes

    def _finish_file(self) -> None:
        self.current.close()
        self.current = None

    def _part(self, index: int) -> Path:
        return self.directory / f"part-{index:05d}.safetensors"  # renamed once the count is known

    def close(self) -> None:
        from pretrain.io import write_json

        if self.current is None and not self.written:
            self.current = StreamingSafetensors(self._part(0), {"format": "pt"})
            self.written.append([])
        if self.current is not None:
            self._finish_file()
        if len(self.written) == 1:
            self._part(0).rename(self.directory / "model.safetensors")
            return
        weight_map = {}
        for index, names in enumerate(self.written):
            filename = f"model-{index + 1:05d}-of-{len(self.written):05d}.safetensors"
            self._part(index).rename(self.directory / filename)
            weight_map.update(dict.fromkeys(names, filename))
        index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
        write_json(self.directory / "model.safetensors.index.json", index)


def conversion_units(names) -> list[list[str]]:
    """Our weight names grouped as export converts them: each decoder layer's together, the rest alone."""
    units, layers = [], {}
    for name in names:
        match = _LAYER.fullmatch(name)
        if match is None:
            units.append([name])
        elif match.group(1) in layers:
            layers[match.group(1)].append(name)
        else:
            layers[match.group(1)] = [name]
            units.append(layers[match.group(1)])
    return units


def model_config(fields: dict) -> ModelConfig:
    """ModelConfig from a saved config's `model` section (keys unknown to this version ignored)."""
    from pretrain.model.config import MoEConfig

    known = ModelConfig.__dataclass_fields__
    kept = {k: v for k, v in fields.items() if k in known}
    if isinstance(kept.get("moe"), dict):
        kept["moe"] = MoEConfig(**kept["moe"])
    return ModelConfig(**kept)


def read_checkpoint(run_dir: str | Path, step: int | None) -> tuple[Path, dict, ModelConfig]:
    """(checkpoint folder, the run's resolved config, its model config) of checkpoint `step` (default: latest)."""
    from pretrain.checkpoint import store

    checkpoint = find_checkpoint(Path(run_dir), step)
    config = json.loads((checkpoint / store.TRAINER_STATE).read_text())["config"]
    return checkpoint, config, model_config(config["model"])


def run_tokenizer_dir(config: dict) -> Path:
    """The tokenizer a run trained with: its data.root/tokenizer."""
    return Path(config["data"]["root"]) / "tokenizer"


def find_checkpoint(run_dir: Path, step: int | None) -> Path:
    """The folder of checkpoint `step` (default: latest) of a run; one-line errors otherwise."""
    from pretrain.checkpoint import store

    if not (run_dir / "config.yaml").is_file():
        raise ConfigError("RUN_DIR", f"{run_dir} is not a run directory (no config.yaml)")
    tag = store.latest_tag(run_dir) if step is None else store.tag_for(step)
    if tag is None or not (store.checkpoints_dir(run_dir) / tag / "manifest.json").is_file():
        sealed = ", ".join(store.sealed_tags(run_dir)) or "none"
        raise ConfigError("--step", f"no complete checkpoint {tag or ''} in {run_dir} (complete ones: {sealed})")
    return store.checkpoints_dir(run_dir) / tag


def open_tokenizer(directory: str | Path):
    """The tokenizer of an exported or sampled checkpoint; --tokenizer names it when it moved."""
    from pretrain.tokenizers.tokenizer import Tokenizer

    try:
        return Tokenizer(directory)
    except ConfigError as error:
        raise ConfigError("--tokenizer", f"{error.message} (the run's data.root/tokenizer; pass --tokenizer DIR)")


def write_tokenizer(tokenizer, directory: Path, max_length: int) -> None:
    """tokenizer.model plus the files that make AutoTokenizer build a LlamaTokenizer from it.

    Our SentencePiece model adds no dummy prefix and the training data has no bos, so HF must
    not add either (`legacy: false`, `add_prefix_space: false`, `add_bos_token: false`).
    """
    from pretrain.io import write_json

    shutil.copyfile(tokenizer.dir / "tokenizer.model", directory / "tokenizer.model")
    piece = tokenizer.processor.id_to_piece
    special = {"bos_token": piece(tokenizer.bos_id), "eos_token": piece(tokenizer.eos_id),
               "unk_token": piece(tokenizer.unk_id), "pad_token": piece(tokenizer.pad_id)}
    write_json(directory / "special_tokens_map.json", special)
    write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "LlamaTokenizer", **special,
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False, "legacy": False,
        "model_max_length": max_length, "clean_up_tokenization_spaces": False,
    })


# --- import ---------------------------------------------------------------------------------

def check_init_from(cfg: ModelConfig, tokenizer_vocab_size: int) -> dict:
    """Check model.init_from's config against the model before any process starts; its config."""
    hf = read_hf_config(cfg.init_from)
    vocab_size = cfg.vocab_size or tokenizer_vocab_size
    check_hf_config(hf, cfg, vocab_size, Path(cfg.init_from) / "config.json")
    shapes = hf_tensor_shapes(cfg.init_from)
    for name, shape in expected_hf_shapes(cfg, vocab_size).items():
        if name not in shapes:
            raise ConfigError(KEY, f"{cfg.init_from} has no tensor {name}")
        if shapes[name] != shape:
            raise ConfigError(KEY, f"{cfg.init_from}: {name} has shape {shapes[name]}, the model needs {shape}")
    return hf


def hf_tensor_shapes(directory: str | Path) -> dict[str, tuple]:
    """Name -> shape of every tensor in the directory's safetensors files, from their headers only."""
    from safetensors import safe_open

    shapes = {}
    for path in safetensors_files(directory):
        with safe_open(path, framework="pt") as f:
            shapes.update({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})
    return shapes


def expected_hf_shapes(cfg: ModelConfig, vocab_size: int) -> dict[str, tuple]:
    """The HF Llama (MoE: Mixtral) tensor shapes of a model with this config."""
    h, d = cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads
    layer = {"input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
             "self_attn.q_proj.weight": (cfg.num_attention_heads * d, h),
             "self_attn.k_proj.weight": (cfg.num_query_groups * d, h),
             "self_attn.v_proj.weight": (cfg.num_query_groups * d, h),
             "self_attn.o_proj.weight": (h, cfg.num_attention_heads * d),
             "mlp.gate_proj.weight": (cfg.ffn_hidden_size, h), "mlp.up_proj.weight": (cfg.ffn_hidden_size, h),
             "mlp.down_proj.weight": (h, cfg.ffn_hidden_size)}
    shapes = {"model.embed_tokens.weight": (vocab_size, h), "model.norm.weight": (h,)}
    if cfg.untie_embeddings_and_output_weights:
        shapes["lm_head.weight"] = (vocab_size, h)
    if cfg.moe.enabled:
        layer = {name: shape for name, shape in layer.items() if not name.startswith("mlp.")}
        f = cfg.moe.ffn_hidden_size or cfg.ffn_hidden_size
        layer["block_sparse_moe.gate.weight"] = (cfg.moe.num_experts, h)
        for j in range(cfg.moe.num_experts):
            layer.update({f"block_sparse_moe.experts.{j}.w1.weight": (f, h),
                          f"block_sparse_moe.experts.{j}.w3.weight": (f, h),
                          f"block_sparse_moe.experts.{j}.w2.weight": (h, f)})
    for i in range(cfg.num_layers):
        shapes.update({f"model.layers.{i}.{name}": shape for name, shape in layer.items()})
    return shapes


def local_experts(weights: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """This expert-parallel rank's experts, renamed to their local index; the other weights as they are."""
    if not cfg.moe.enabled:
        return weights
    from pretrain.checkpoint.weights import LOCAL_EXPERT, local_expert_range, renumber_expert

    owned = local_expert_range(cfg.moe.num_experts)
    kept = {}
    for name, tensor in weights.items():
        expert = LOCAL_EXPERT.fullmatch(name)
        if expert is None:
            kept[name] = tensor
        elif int(expert.group(2)) in owned:
            kept[renumber_expert(name, -owned.start)] = tensor
    return kept


@torch.no_grad()
def load_into(model: torch.nn.Module, cfg: ModelConfig, padded_vocab: int, tp_size: int, tp_rank: int) -> None:
    """Copy model.init_from's weights into this rank's GPTModel shard (shapes checked)."""
    try:
        full = from_hf(read_hf_weights(cfg.init_from), cfg, padded_vocab)
    except KeyError as error:
        raise ConfigError(KEY, f"{cfg.init_from} has no tensor {error.args[0]}") from None
    except RuntimeError as error:  # a tensor whose size does not fit the config's shape
        raise ConfigError(KEY, f"{cfg.init_from}: {str(error).splitlines()[0]}") from None
    shard = local_experts(split_tensor_parallel(full, tp_size, tp_rank), cfg)
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(shard))
    if missing:
        raise ConfigError(KEY, f"{cfg.init_from} has no weights for {missing[0]}")
    for name, param in params.items():
        if param.shape != shard[name].shape:
            raise ConfigError(KEY, f"{cfg.init_from}: {name} has shape {tuple(shard[name].shape)} on this rank, "
                                   f"the model {tuple(param.shape)}")
        param.copy_(shard[name])
