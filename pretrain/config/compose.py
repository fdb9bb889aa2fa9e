"""Compose the Hydra config tree into a validated `Config` object."""

import os
import sysconfig
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pretrain.config.schema import Config
from pretrain.errors import ConfigError

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def config_dir() -> Path:
    """The configs/ tree: $PRETRAIN_CONFIG_DIR, else the one beside the package."""
    return Path(os.environ.get("PRETRAIN_CONFIG_DIR", DEFAULT_CONFIG_DIR))


def register() -> None:
    """Register the schema so Hydra type-checks every YAML file and override against it."""
    ConfigStore.instance().store(name="base_config", node=Config)
    if not OmegaConf.has_resolver("stdlib"):
        # The demo corpus: the running interpreter's own standard library.
        OmegaConf.register_new_resolver("stdlib", lambda: sysconfig.get_paths()["stdlib"])


def compose_config(overrides: list[str], name: str = "config", directory: Path | None = None) -> Config:
    """Compose, resolve and convert to dataclasses (running each component's checks)."""
    cfg = compose_dict(overrides, name, directory)
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_key_of(e), _first_line(e)) from None


def compose_dict(overrides: list[str], name: str = "config", directory: Path | None = None):
    """The composed config as an OmegaConf node (for printing and saving)."""
    register()
    directory = Path(directory or config_dir()).resolve()
    if not (directory / f"{name}.yaml").is_file():
        raise ConfigError("--config-name", f"no config {name}.yaml in {directory}")
    try:
        with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
            cfg = compose(config_name=name, overrides=list(overrides))
        OmegaConf.resolve(cfg)
        return cfg
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_key_of(e), _first_line(e)) from None


def _root_cause(error: Exception) -> Exception:
    # Hydra wraps OmegaConf's error ("Key 'foo' not in 'ModelConfig'") in a vaguer one
    # ("Could not override 'model.foo'"); the innermost names the key and the problem.
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _key_of(error: Exception) -> str:
    return getattr(_root_cause(error), "full_key", None) or "config"


def _first_line(error: Exception) -> str:
    # OmegaConf appends multi-line context (object type, reference type); the user needs the
    # sentence that names the problem.
    text = str(_root_cause(error)).strip() or type(error).__name__
    if text.startswith("Ambiguous value"):  # a comma list: Hydra's advice is on the lines cut off
        return text.splitlines()[0] + " (a list: key=[a,b]; a string: key='a,b'; a sweep: pretrain submit -m)"
    return text.splitlines()[0]
