"""The `pretrain` command: one subcommand per stage, each composing the Hydra config tree.

Heavy libraries (torch, deepspeed, megatron) are imported inside the subcommands that need
them, so `--help` and the data stages stay quick.
"""

import argparse
import os
import sys

from pretrain import exit_codes
from pretrain.errors import ConfigError
from pretrain.train.startup_signals import record_stop_signals

COMMANDS = {
    ("data", "clean"): ("pretrain.stages:clean",
                        "Normalize, filter and deduplicate raw text into cleaned jsonl shards."),
    ("tokenizer", "train"): ("pretrain.stages:train_tokenizer",
                             "Train a SentencePiece tokenizer on a sample of the cleaned corpus."),
    ("data", "shard"): ("pretrain.stages:shard",
                        "Tokenize the cleaned corpus into webdataset shards with a manifest."),
    ("train",): ("pretrain.stages:train", "Train (or resume) a model; launches torchrun itself when not under one."),
    ("demo",): ("pretrain.stages:demo", "Run every stage on the standard library's sources, then sample text."),
    ("submit",): ("pretrain.launch.commands:submit", "Render the run's sbatch script and submit it to Slurm."),
    ("resume",): ("pretrain.launch.commands:resume", "Submit a stopped run again from its saved config."),
    ("status",): ("pretrain.launch.commands:status", "Job state, restarts, last step, loss and checkpoint of runs."),
    ("cancel",): ("pretrain.launch.commands:cancel", "Ask a run's job to save a checkpoint, then cancel it."),
    ("report",): ("pretrain.monitor.report:report", "Plots and a markdown summary of a run from its metrics.jsonl."),
    ("export", "hf"): ("pretrain.stages:export_hf",
                       "Write a run's checkpoint as a Hugging Face Llama directory (safetensors + tokenizer)."),
    ("plan",): ("pretrain.plan:run", "Check a parallel layout; print parameters, memory per GPU, FLOPs, step time."),
    ("generate",): ("pretrain.stages:generate_text", "Continue prompts with a run's checkpoint (sampled or greedy)."),
}
# These take a run directory and compose its saved config (or none) instead of configs/.
RUN_DIR_COMMANDS = {"resume", "status", "cancel", "report", "export", "generate"}

OVERRIDES_HELP = (
    "Hydra overrides, e.g. model=llama_125m optim.lr=3e-4 train.run_dir=runs/x. "
    "Groups: model, data, optim, train, parallel, logging, experiment (see configs/)."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pretrain",
                                     description="LLM pretraining: data → tokenizer → shards → training.")
    groups = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    nested: dict[str, argparse._SubParsersAction] = {}
    for words, (target, help_text) in COMMANDS.items():
        parent = groups
        if len(words) == 2:
            if words[0] not in nested:
                group = groups.add_parser(words[0], help=f"{words[0]} stages")
                nested[words[0]] = group.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
            parent = nested[words[0]]
        sub = parent.add_parser(words[-1], help=help_text, description=help_text)
        if words[0] in RUN_DIR_COMMANDS:
            sub.add_argument("run_dir", nargs="?" if words[0] == "status" else None, metavar="RUN_DIR")
        sub.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
        if words[0] in ("submit", "resume"):
            add_submit_options(sub)
        if words == ("data", "clean"):
            sub.add_argument("--dry-run", action="store_true",
                             help="With a Slurm profile: print the array and final job scripts, submit nothing.")
        if words[0] == "submit":
            sub.add_argument("-m", "--multirun", action="store_true",
                             help="Sweep: one job per point of the overrides' comma lists, range(...), choice(...).")
        if words[0] == "export":
            add_export_options(sub)
        if words[0] == "generate":
            add_generate_options(sub)
        if words[0] == "plan":
            from pretrain.plan import add_options

            add_options(sub)
        if words[0] == "cancel":
            sub.add_argument("--wait", type=int, default=600, help="Seconds to wait for the checkpoint (default 600).")
        sub.add_argument("--config-dir", default=None, help="The configs/ tree to compose from.")
        sub.add_argument("--config-name", default="config", help="Top config file name (default: config).")
        sub.add_argument("--print-config", action="store_true", help="Print the composed config and exit.")
        sub.set_defaults(target=target)
    return parser


def add_submit_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--dry-run", action="store_true", help="Print the sbatch script and the config; submit nothing.")
    sub.add_argument("--chain", type=int, default=1, metavar="N",
                     help="Submit N jobs, each starting after the previous one ends (runs longer than a time limit).")


def add_export_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--step", type=int, default=None, help="Checkpoint step (default: the latest).")
    sub.add_argument("--out", default=None, help="Output directory (default: RUN_DIR/hf/step_N).")
    sub.add_argument("--tokenizer", default=None, help="Tokenizer directory (default: the run's data.root/tokenizer).")
    sub.add_argument("--max-shard-gb", type=float, default=5.0, help="Split model.safetensors into files of at most "
                     "this many GiB, with an index (default 5).")


def add_generate_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--prompt", action="append", default=[], help="Text to continue (repeat for several).")
    sub.add_argument("--step", type=int, default=None, help="Checkpoint step (default: the latest).")
    sub.add_argument("--max-new-tokens", type=int, default=64, help="Tokens to generate per prompt (default 64).")
    sub.add_argument("--temperature", type=float, default=0.8, help="Softmax temperature (default 0.8).")
    sub.add_argument("--top-k", type=int, default=40, help="Sample among the k likeliest tokens; 0: all (default 40).")
    sub.add_argument("--top-p", type=float, default=1.0, help="Nucleus: the most likely tokens up to this "
                     "probability mass (default 1: off).")
    sub.add_argument("--greedy", action="store_true", help="Take the most likely token every time.")
    sub.add_argument("--seed", type=int, default=0, help="Sampling seed (default 0).")
    sub.add_argument("--tokenizer", default=None, help="Tokenizer directory (default: the run's data.root/tokenizer).")


def run(args: argparse.Namespace) -> int:
    from pretrain.config import compose_config, compose_dict

    if args.command == "demo":
        args.overrides = ["experiment=demo", *args.overrides]
    if args.print_config:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(compose_dict(args.overrides, args.config_name, args.config_dir)), end="")
        return 0
    # A sweep has no single config: `submit -m` composes each point itself.
    multirun = getattr(args, "multirun", False)
    cfg = None if args.command in RUN_DIR_COMMANDS or multirun else compose_config(args.overrides, args.config_name,
                                                                                    args.config_dir)
    module_name, function_name = args.target.split(":")
    module = __import__(module_name, fromlist=[function_name])
    return getattr(module, function_name)(cfg, args) or 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        # First thing, before torch loads: a USR1 or TERM during the minutes of start-up is
        # kept for the trainer instead of killing the process (USR1's default action).
        record_stop_signals()
    args = build_parser().parse_args(argv)
    try:
        code = run(args)
    except ConfigError as e:
        print(f"pretrain: error: {e}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    except KeyboardInterrupt:
        code = exit_codes.INTERRUPTED
    if code == exit_codes.INTERRUPTED and "RANK" not in os.environ:  # the launcher speaks for its workers
        print("pretrain: interrupted; run the same command again to resume from the latest checkpoint",
              file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
