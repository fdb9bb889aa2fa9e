"""The tests' corpus: a slice of the standard library's sources, and how it is sharded."""

import sysconfig
from pathlib import Path

from pretrain.data.config import ShardConfig

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# About 600 kB of code: big enough for a 512-piece vocabulary, small enough for seconds.
CORPUS_GLOB = "[a-c]*.py"
# One worker: a process pool costs a second of start-up; test_shard.py checks that two give the same bytes.
SHARD_CFG = ShardConfig(sequence_length=32, samples_per_shard=400, valid_fraction=0.1, workers=1)
