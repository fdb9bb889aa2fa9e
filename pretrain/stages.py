"""What each `pretrain` subcommand does, given the composed config."""

import os
from pathlib import Path

from pretrain.config import Config, ConfigError, compose_dict, validate


def clean(cfg: Config, args) -> int:
    if cfg.cluster.scheduler == "slurm":  # an array job per share of the tasks, then the global half
        from pretrain.launch.clean_array import submit_clean

        cfg_dict = compose_dict(args.overrides, args.config_name, args.config_dir)
        return submit_clean(cfg, cfg_dict, getattr(args, "dry_run", False))
    return clean_here(cfg)


def clean_here(cfg: Config) -> int:
    """The whole clean stage in this process (and its worker pool)."""
    from pretrain.data.clean import clean_corpus

    report = clean_corpus(cfg.data.clean, cfg.data.cleaned_dir)
    dropped = ", ".join(f"{reason} {n}" for reason, n in report["dropped"].items() if n) or "none"
    print(f"cleaned {report['input_documents']} documents: kept {report['kept']}, dropped {dropped} "
          f"-> {cfg.data.cleaned_dir}")
    if report["pii"]:
        print("PII replaced: " + ", ".join(f"{kind} {n}" for kind, n in report["pii"].items()))
    if report["resumed_tasks"]:
        print(f"reused: {report['resumed_tasks']} finished tasks (of an earlier run, or of the Slurm array job)")
    return 0


def train_tokenizer(cfg: Config, args) -> int:
    from pretrain.tokenizers.train import train_tokenizer as train_sentencepiece

    card = train_sentencepiece(cfg.data.tokenizer, cfg.data.cleaned_dir, cfg.data.tokenizer_dir)
    print(f"trained a {card['vocab_size']}-token {card['model_type']} tokenizer on {card['sample_docs']} "
          f"documents -> {cfg.data.tokenizer_dir}")
    return 0


def shard(cfg: Config, args) -> int:
    from pretrain.data.shard import write_shards

    manifest = write_shards(cfg.data.shard, cfg.data.cleaned_dir, cfg.data.tokenizer_dir, cfg.data.dataset_dir)
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['samples']} samples, {info['tokens']} tokens in {len(info['shards'])} shards")
    print(f"-> {cfg.data.dataset_dir}")
    return 0


def train(cfg: Config, args) -> int:
    """Train in this process, or launch torchrun on this node when not started by a launcher."""
    under_launcher = "WORLD_SIZE" in os.environ
    world_size = int(os.environ["WORLD_SIZE"]) if under_launcher else cfg.parallel.nproc_per_node
    validate(cfg, world_size)
    from pretrain.train.inputs import check_device, check_inputs

    tokenizer = check_inputs(cfg)  # before torch and deepspeed load: a missing dataset is one line, exit 2
    if cfg.model.init_from and not Path(cfg.train.run_dir, "checkpoints", "latest").is_file():
        from pretrain.model.hf import check_init_from

        check_init_from(cfg.model, tokenizer.vocab_size)
    check_device(cfg)
    if not under_launcher and cfg.parallel.nproc_per_node > 1:
        from pretrain.train.launch import launch_local

        return launch_local(cfg.parallel.nproc_per_node, worker_args(args))
    from pretrain.train.quiet import silence_known_warnings

    silence_known_warnings()
    from pretrain.train.run import run_training

    return run_training(cfg, compose_dict(args.overrides, args.config_name, args.config_dir))


def worker_args(args) -> list[str]:
    """This command line again, for the launched workers."""
    extra = ["--config-name", args.config_name] + (["--config-dir", str(args.config_dir)] if args.config_dir else [])
    return ["train", *args.overrides, *extra]


def export_hf(cfg: None, args) -> int:
    """`pretrain export hf RUN_DIR`: a checkpoint as a Hugging Face Llama (or Mixtral) directory."""
    import json

    from pretrain.model.hf import export

    if args.max_shard_gb <= 0:
        raise ConfigError("--max-shard-gb", f"must be > 0, got {args.max_shard_gb}")
    out = export(args.run_dir, args.step, args.out, args.tokenizer, int(args.max_shard_gb * 2**30))
    architecture = json.loads((out / "config.json").read_text())["architectures"][0]
    print(f"exported {args.run_dir} -> {out} ({architecture}: model.safetensors, config.json, tokenizer)")
    return 0


def generate_text(cfg: None, args) -> int:
    """`pretrain generate RUN_DIR --prompt ...`: continue prompts with a checkpoint of the run."""
    _check_sampling(args)
    from pretrain.train.quiet import silence_known_warnings

    silence_known_warnings()
    import torch

    from pretrain.model.generate import generate, greedy, load_checkpoint_model
    from pretrain.parallel.config import ParallelConfig
    from pretrain.parallel.layout import init_distributed

    init_distributed(ParallelConfig(), args.seed)  # one process, TP=1: megatron's layers need its state
    model, tokenizer, model_cfg = load_checkpoint_model(args.run_dir, args.step, args.tokenizer)
    generator = torch.Generator().manual_seed(args.seed)
    device = next(model.parameters()).device  # build_model puts it on the GPU where there is one
    for prompt in args.prompt:
        if args.greedy:
            ids = greedy(model, tokenizer.encode([prompt])[0], args.max_new_tokens, model_cfg.seq_length,
                         tokenizer.vocab_size, tokenizer.eos_id, device)
            text = tokenizer.decode([i for i in ids if i != tokenizer.eos_id])
        else:
            text = generate(model, tokenizer, prompt, args.max_new_tokens, model_cfg.seq_length, device,
                            generator, args.temperature, args.top_k, args.top_p)
        print(f"--- {prompt!r}\n{prompt}{text}")
    return 0


def _check_sampling(args) -> None:
    if not args.prompt:
        raise ConfigError("--prompt", "give at least one prompt")
    if args.max_new_tokens <= 0:
        raise ConfigError("--max-new-tokens", f"must be > 0, got {args.max_new_tokens}")
    if args.temperature <= 0:
        raise ConfigError("--temperature", f"must be > 0 (use --greedy for argmax), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ConfigError("--top-p", f"must be in (0, 1], got {args.top_p}")


def demo(cfg: Config, args) -> int:
    """Every stage on the standard library's sources; stages whose output exists are skipped."""
    data = cfg.data
    if not Path(data.cleaned_dir, "report.json").is_file():
        clean(cfg, args)
    if not Path(data.tokenizer_dir, "card.json").is_file():
        train_tokenizer(cfg, args)
    if not Path(data.dataset_dir, "manifest.json").is_file():
        shard(cfg, args)
    args.command = "train"
    code = train(cfg, args)
    if code == 0:
        print_validation_summary(Path(cfg.train.run_dir))
    return code


def print_validation_summary(run_dir: Path) -> None:
    from pretrain.monitor.metrics import read_metrics

    valid = [r["valid_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "valid_loss" in r]
    if len(valid) >= 2:
        print(f"validation loss {valid[0]:.3f} -> {valid[-1]:.3f} ({100 * valid[-1] / valid[0]:.0f}% of the first)")
