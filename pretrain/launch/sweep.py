"""Sweeps: Hydra multirun overrides (`pretrain submit -m optim.lr=1e-4,3e-4`) → one Slurm job per point.

Grid: expansion follows Hydra's basic sweeper, with Hydra's own override parser so the syntax
is the same: comma lists, `range(...)`, `choice(...)`, `glob(...)` over a config group, and
`sort`/`shuffle`; the points are their cartesian product, the first swept key varying slowest.

Random search: an `interval(...)` anywhere makes the sweep a random search of `sweep.n_trials`
points, drawn by Optuna's RandomSampler seeded with `sweep.seed` (the same seed, the same
points). Intervals become distributions as in Hydra's Optuna sweeper plugin (`tag(log, ...)`
log-uniform, `int(interval(...))` integers); a discrete sweep (`a,b`, `choice`, `range`) is
drawn uniformly from exactly the values a grid would take. The sampler only proposes points:
the jobs run on their own and nothing waits for their results.

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
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pretrain.config import ConfigError, compose_config, compose_dict, config_dir
from pretrain.launch.submit import Job, prepare

SWEEP_FILE = "sweep.json"


@dataclass
class Point:
    overrides: list[str]
    """The point's full override list, as if typed for a single run."""
    params: dict[str, str]
    """The swept keys and this point's value of each."""


@dataclass
class SweepSettings:
    """`sweep.*` overrides: settings of the random search, not of the runs."""

    n_trials: int = 10
    """Random search: how many points to draw."""
    seed: int = 0
    """Random search: the sampler's seed; the same seed draws the same points."""


def expand(overrides: list[str], directory: Path | None = None) -> list[Point]:
    """The sweep's points: a random search when an override is an interval, else the grid."""
    settings, parsed = split_settings(parse(overrides))
    for override in parsed:
        if override.is_sweep_override() and override.get_key_element().lstrip("+~") == "train.run_dir":
            raise ConfigError("train.run_dir", "cannot be swept: each point runs in SWEEP_DIR/N")
    if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed):
        return sample(parsed, read_settings(settings), directory)
    if settings:
        raise ConfigError(settings[0].get_key_element(), "only a random search (an interval(...) override) "
                                                         "takes sweep.* settings")
    return grid(parsed, directory)


def split_settings(parsed: list[Override]) -> tuple[list[Override], list[Override]]:
    """(the `sweep.*` settings, the run's overrides)."""
    is_setting = [o.get_key_element().startswith("sweep.") for o in parsed]
    return ([o for o, s in zip(parsed, is_setting) if s], [o for o, s in zip(parsed, is_setting) if not s])


def read_settings(settings: list[Override]) -> SweepSettings:
    dotlist = [f"{o.get_key_element().removeprefix('sweep.')}={o.get_value_element_as_str()}" for o in settings]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SweepSettings), OmegaConf.from_dotlist(dotlist))
        result = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"sweep.{e.full_key}" if e.full_key else "sweep", str(e).splitlines()[0]) from None
    if result.n_trials < 1:
        raise ConfigError("sweep.n_trials", f"must be >= 1, got {result.n_trials}")
    return result


def sample(parsed: list[Override], settings: SweepSettings, directory: Path | None) -> list[Point]:
    """`settings.n_trials` points drawn by Optuna's RandomSampler; fixed overrides go to every point."""
    import optuna  # only here: it takes seconds to import (still no torch)
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    distributions = {}
    for override in parsed:
        if not override.is_sweep_override():
            continue
        key = override.get_key_element()
        if override.is_discrete_sweep():
            # The grid's own values, as override strings: range(1,4) is 1,2,3 in both modes.
            distributions[key] = optuna.distributions.CategoricalDistribution(sweep_values(override, directory))
        else:
            distributions[key] = create_optuna_distribution_from_override(override)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=settings.seed))
    points = []
    for _ in range(settings.n_trials):
        params = {key: str(value) for key, value in study.ask(fixed_distributions=distributions).params.items()}
        lines = [f"{o.get_key_element()}={params[o.get_key_element()]}" if o.is_sweep_override() else o.input_line
                 for o in parsed]
        points.append(Point(lines, {key: params[key] for key in distributions}))
    return points


def grid(parsed: list[Override], directory: Path | None) -> list[Point]:
    """The cartesian product of the sweep overrides; the other overrides go to every point."""
    choices = []
    for override in parsed:
        if not override.is_sweep_override():
            choices.append([(override.input_line, None)])
            continue
        key = override.get_key_element()
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
