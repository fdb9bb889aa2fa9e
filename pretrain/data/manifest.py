"""The dataset manifest: reading it, checking its shape, and verifying shards against it."""

from pathlib import Path

from pretrain.errors import ConfigError
from pretrain.io import read_json, sha256_file

KEY = "data.dataset_dir"
MANIFEST_FORMAT = 1
_REQUIRED = ("sequence_length", "tokenizer_sha256", "vocab_size", "eos_id", "splits")


def load_manifest(dataset_dir: str | Path) -> dict:
    """Read dataset_dir/manifest.json; ConfigError if it is missing or not a manifest we write."""
    path = Path(dataset_dir) / "manifest.json"
    if not path.is_file():
        raise ConfigError(KEY, f"no manifest.json in {dataset_dir}: run `pretrain data shard` first")
    try:
        manifest = read_json(path)
    except ValueError:
        raise ConfigError(KEY, f"{path} is not valid JSON") from None
    _check_shape(path, manifest)
    return manifest


def _check_shape(path: Path, manifest) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ConfigError(KEY, f"{path}: expected manifest format {MANIFEST_FORMAT}")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise ConfigError(KEY, f"{path}: missing {', '.join(missing)}")
    for split, entry in manifest["splits"].items():
        if not all(key in entry for key in ("samples", "tokens", "shards")):
            raise ConfigError(KEY, f"{path}: split {split!r} lacks samples, tokens or shards")


def verify_shards(dataset_dir: str | Path, manifest: dict) -> None:
    """Check every shard exists and matches its sha256; ConfigError naming the first bad one."""
    for entry in manifest["splits"].values():
        for shard in entry["shards"]:
            path = Path(dataset_dir) / shard["path"]
            if not path.is_file():
                raise ConfigError(KEY, f"shard {path} is missing")
            if sha256_file(path) != shard["sha256"]:
                raise ConfigError(KEY, f"shard {path} does not match its sha256 in manifest.json")
