"""Fixtures of the data tests: one small real pipeline run (stdlib .py files → shards), per session."""

import sysconfig
from pathlib import Path

import pytest

from pretrain.data.clean import clean_corpus
from pretrain.data.config import CleanConfig, ShardConfig, TokenizerConfig
from pretrain.data.shard import write_shards
from pretrain.tokenizers.train import train_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# About 600 kB of code: big enough for a 512-piece vocabulary, small enough for seconds.
CORPUS_GLOB = "[a-c]*.py"
SHARD_CFG = ShardConfig(sequence_length=32, samples_per_shard=400, valid_fraction=0.1)


@pytest.fixture(scope="session")
def cleaned_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipeline") / "cleaned"
    clean_corpus(CleanConfig(inputs=[str(STDLIB)], glob=CORPUS_GLOB, min_chars=100, docs_per_shard=10), out)
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(cleaned_dir) -> Path:
    out = cleaned_dir.parent / "tokenizer"
    train_tokenizer(TokenizerConfig(vocab_size=512), cleaned_dir, out)
    return out


@pytest.fixture(scope="session")
def shard_cfg() -> ShardConfig:
    return SHARD_CFG


@pytest.fixture(scope="session")
def dataset_dir(cleaned_dir, tokenizer_dir, shard_cfg) -> Path:
    out = cleaned_dir.parent / "dataset"
    write_shards(shard_cfg, cleaned_dir, tokenizer_dir, out)
    return out
