"""Sweeps: Hydra multirun overrides (`pretrain submit -m optim.lr=1e-4,3e-4`) → one Slurm job per point.

Expansion follows Hydra's basic sweeper, with Hydra's own override parser so the syntax is
the same: comma lists, `range(...)`, `choice(...)`, `glob(...)` over a config group, and
`sort`/`shuffle`; the points are their cartesian product, the first swept key varying
slowest. `interval(...)` needs a random-search sweeper plugin, which is not supported.

The sweep directory is the first point's `train.run_dir`:
  SWEEP_DIR/sweep.json   the points: index, swept values, full overrides, run directory
  SWEEP_DIR/0, /1, ...   each point's run directory, as `pretrain submit` makes one
Every point's W&B run is in the group `logging.wandb.group` (default: the sweep directory's name).
"""

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from hydra.errors import HydraException

from pretrain.config import ConfigError, compose_config, compose_dict, config_dir
from pretrain.launch.submit import Job, prepare

SWEEP_FILE = "sweep.json"


@dataclass
class Point:
    overrides: list[str]
    """The point's full override list, as if typed for a single run."""
    params: dict[str, str]
    """The swept keys and this point's value of each."""


def expand(overrides: list[str], directory: Path | None = None) -> list[Point]:
    """The cartesian product of the sweep overrides; the other overrides go to every point."""
    choices = []
    for override in parse(overrides):
        if not override.is_sweep_override():
            choices.append([(override.input_line, None)])
            continue
        key = override.get_key_element()
        if key.lstrip("+~") == "train.run_dir":
            raise ConfigError("train.run_dir", "cannot be swept: each point runs in SWEEP_DIR/N")
        choices.append([(f"{key}={value}", (key, value)) for value in sweep_values(override, directory)])
    return [Point([line for line, _ in combo], dict(pair for _, pair in combo if pair))
            for combo in itertools.product(*choices)]


def parse(overrides: list[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise ConfigError("overrides", str(e).strip().splitlines()[0]) from None


def sweep_values(override: Override, directory: Path | None) -> list[str]:
    key = override.get_key_element()
    if not override.is_discrete_sweep():
        raise ConfigError(key, "interval(...) needs a random-search sweeper, which `pretrain submit` "
                               "does not have: list the values, or use range(...) or choice(...)")
    if isinstance(override.value(), Glob):
        # Hydra matches a glob against the config group's files; so do we.
        group = Path(directory or config_dir()) / override.key_or_group.replace(".", "/")
        names = sorted(path.stem for path in group.glob("*.yaml"))
        values = override.value().filter(names)
        if not values:
            raise ConfigError(key, f"glob matches no config in {group}")
        return values
    return list(override.sweep_string_iterator())


def prepare_sweep(overrides: list[str], name: str = "config", directory: Path | None = None,
                  submit_dir: str | None = None) -> tuple[Path, list[Point], list[Job]]:
    """The sweep directory, its points and one rendered job per point (nothing written)."""
    points = expand(overrides, directory)
    submit_dir = submit_dir or os.getcwd()
    first = compose_config(points[0].overrides, name, directory)
    sweep_dir = Path(submit_dir, first.train.run_dir).resolve()
    jobs = [prepare_point(point, index, sweep_dir, name, directory, submit_dir) for index, point in enumerate(points)]
    return sweep_dir, points, jobs


def prepare_point(point: Point, index: int, sweep_dir: Path, name: str, directory, submit_dir: str) -> Job:
    cfg = compose_config(point.overrides, name, directory)
    cfg_dict = compose_dict(point.overrides, name, directory)
    # Set on both: the typed config is what gets checked, the dict is what the job composes.
    for node in (cfg, cfg_dict):
        node.train.run_dir = str(sweep_dir / str(index))
        node.logging.wandb.group = cfg.logging.wandb.group or sweep_dir.name
        node.cluster.job_name = cfg.cluster.job_name or f"{sweep_dir.name}_{index}"
    return prepare(cfg, cfg_dict, submit_dir)


def write_sweep(sweep_dir: Path, overrides: list[str], points: list[Point], jobs: list[Job]) -> None:
    """sweep.json; refuses a directory that holds a sweep already (its points would resume, not start)."""
    path = sweep_dir / SWEEP_FILE
    if path.exists():
        raise ConfigError("train.run_dir", f"{sweep_dir} holds a sweep already: pick another train.run_dir")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = {"overrides": list(overrides),
              "points": [{"index": i, "run_dir": job.run_dir.name, "params": point.params,
                          "overrides": point.overrides} for i, (point, job) in enumerate(zip(points, jobs))]}
    path.write_text(json.dumps(record, indent=1) + "\n")


def is_sweep(path: Path) -> bool:
    return (path / SWEEP_FILE).is_file()


def read_sweep(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / SWEEP_FILE).read_text())
