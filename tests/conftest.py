"""Test-wide environment: everything offline, CPU-only and inside the workspace."""

import os
from pathlib import Path

import pytest
import torch
from pipeline import CORPUS_GLOB, SHARD_CFG, STDLIB

from pretrain.data.clean import clean_corpus
from pretrain.data.config import CleanConfig, ShardConfig, TokenizerConfig
from pretrain.data.shard import write_shards
from pretrain.tokenizers.train import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# One small real pipeline run (stdlib .py files → cleaned → tokenizer → shards) per session,
# laid out as a data.root folder: cleaned/, tokenizer/, dataset/.


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
