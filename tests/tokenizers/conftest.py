"""Fixtures of the tokenizer tests: a cleaned stdlib corpus and a tokenizer trained on it, per session."""

import sysconfig
from pathlib import Path

import pytest

from pretrain.data.clean import clean_corpus
from pretrain.data.config import CleanConfig, TokenizerConfig
from pretrain.tokenizers.train import train_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="session")
def cleaned_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer") / "cleaned"
    clean_corpus(CleanConfig(inputs=[str(STDLIB)], glob="[a-c]*.py", min_chars=100, docs_per_shard=10), out)
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(cleaned_dir) -> Path:
    out = cleaned_dir.parent / "tokenizer"
    train_tokenizer(TokenizerConfig(vocab_size=512), cleaned_dir, out)
    return out
