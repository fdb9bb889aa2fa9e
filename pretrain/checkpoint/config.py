"""Configuration of checkpoint verification and retention."""

from dataclasses import dataclass

from pretrain.errors import check_choice, check_positive


@dataclass
class CheckpointConfig:
    keep_last: int = 0
    """Keep the newest K checkpoints (0 keeps all). The newest verified one is never deleted."""
    keep_every: int = 0
    """Also keep every checkpoint whose step is a multiple of this (0: none beyond keep_last)."""
    verify: str = "sha256"
    """On resume, check each file against the manifest: sha256 (contents) or size (fast)."""
    async_save: bool = False
    """Copy the state to host memory and write it in a background thread; training waits only for the copy."""

    def __post_init__(self):
        check_positive("train.checkpoint.keep_last", self.keep_last, allow_zero=True)
        check_positive("train.checkpoint.keep_every", self.keep_every, allow_zero=True)
        check_choice("train.checkpoint.verify", self.verify, ("sha256", "size"))
