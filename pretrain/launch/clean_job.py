"""The compute-node side of `pretrain data clean` on Slurm, run by slurm/clean.sh:
`python -m pretrain.launch.clean_job STAGE_DIR tasks SHARE SHARES` in each array task, and
`python -m pretrain.launch.clean_job STAGE_DIR final` in the job after the array.
"""

import sys
from pathlib import Path

from pretrain import exit_codes
from pretrain.config import ConfigError, compose_config
from pretrain.launch.submit import JOB_CONFIG


def run(stage_dir: str, part: str, *share: str) -> int:
    cfg = compose_config([], JOB_CONFIG, Path(stage_dir))
    if part == "final":
        from pretrain.stages import clean_here

        return clean_here(cfg)
    from pretrain.data.clean import clean_share

    index, shares = int(share[0]), int(share[1])
    ran = clean_share(cfg.data.clean, cfg.data.cleaned_dir, index, shares)
    print(f"share {index} of {shares}: ran {ran} unfinished clean tasks")
    return 0


def main(argv: list[str]) -> int:
    try:
        return run(*argv)
    except ConfigError as e:
        print(f"pretrain: error: {e}", file=sys.stderr)
        return exit_codes.BAD_INPUT


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
