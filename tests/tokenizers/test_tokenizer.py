"""Tokenizer training and the wrapper: lossless round trips, the card, tamper and input errors."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from pipeline import STDLIB

from pretrain.data.config import TokenizerConfig
from pretrain.errors import ConfigError
from pretrain.tokenizers.tokenizer import Tokenizer
from pretrain.tokenizers.train import train_tokenizer

TRICKY = [
    "",
    "  leading spaces and trailing  ",
    "\n\n\tx = 1\n\n\n",
    "é ü 中文 🙂 \u00a0 \u200b",
    "line\r\nwindows\rmac",
    "1234567890 3.14159",
]


def test_round_trip_on_code_and_odd_text(tokenizer_dir):
    tokenizer = Tokenizer(tokenizer_dir)
    # Files the tokenizer was not trained on, plus text no corpus normalization has touched.
    texts = [p.read_text(encoding="utf-8") for p in sorted(STDLIB.glob("[d-f]*.py"))[:8]] + TRICKY
    for text, ids in zip(texts, tokenizer.encode(texts)):
        assert tokenizer.decode(ids) == text


def test_newlines_and_indentation_are_cheap(tokenizer_dir):
    tokenizer = Tokenizer(tokenizer_dir)
    [ids] = tokenizer.encode(["def f():\n        return 1\n"])
    pieces = [tokenizer.processor.id_to_piece(i) for i in ids]
    assert "\n" in pieces and "▁▁▁▁" in "".join(pieces)
    assert not any(piece.startswith("<0x") for piece in pieces)
    assert len(ids) < 12


def test_card_describes_the_model(tokenizer_dir, cleaned_dir):
    card = json.loads((tokenizer_dir / "card.json").read_text())
    model = (tokenizer_dir / "tokenizer.model").read_bytes()
    assert card["sha256"] == hashlib.sha256(model).hexdigest()
    assert (card["pad_id"], card["bos_id"], card["eos_id"], card["unk_id"]) == (0, 1, 2, 3)
    assert card["vocab_size"] == 512
    assert card["model_type"] == "bpe"
    assert card["sample_docs"] == sum(1 for p in cleaned_dir.glob("cleaned-*.jsonl") for _ in open(p))
    tokenizer = Tokenizer(tokenizer_dir)
    assert (tokenizer.vocab_size, tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (512, 0, 1, 2)
    assert tokenizer.sha256 == card["sha256"]


def test_training_is_deterministic_and_samples_by_seed(cleaned_dir, tmp_path):
    cfg = TokenizerConfig(vocab_size=400, sample_docs=5, seed=7)
    first = train_tokenizer(cfg, cleaned_dir, tmp_path / "one")
    second = train_tokenizer(cfg, cleaned_dir, tmp_path / "two")
    other_cfg = TokenizerConfig(vocab_size=400, sample_docs=5, seed=8)
    other_seed = train_tokenizer(other_cfg, cleaned_dir, tmp_path / "three")
    assert first["sample_docs"] == 5
    assert first["sha256"] == second["sha256"] != other_seed["sha256"]
    assert first["corpus_sha256"] == other_seed["corpus_sha256"]


def test_tampered_model_is_refused(tokenizer_dir, tmp_path):
    copy = Path(shutil.copytree(tokenizer_dir, tmp_path / "tok"))
    with open(copy / "tokenizer.model", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ConfigError, match="data.tokenizer_dir: .*does not match the sha256"):
        Tokenizer(copy)


def test_missing_tokenizer_dir(tmp_path):
    with pytest.raises(ConfigError, match="data.tokenizer_dir: no tokenizer in .*pretrain tokenizer train"):
        Tokenizer(tmp_path / "nowhere")


def test_no_cleaned_corpus(tmp_path):
    with pytest.raises(ConfigError, match="data.cleaned_dir: .*run `pretrain data clean` first"):
        train_tokenizer(TokenizerConfig(), tmp_path, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_vocab_too_large_for_corpus(cleaned_dir, tmp_path):
    with pytest.raises(ConfigError) as error:
        train_tokenizer(TokenizerConfig(vocab_size=100_000, sample_docs=3), cleaned_dir, tmp_path / "tok")
    assert error.value.key == "data.tokenizer.vocab_size"
    assert "\n" not in str(error.value) and "Vocabulary size too high (100000)" in str(error.value)
    assert not (tmp_path / "tok").exists()


def test_retraining_replaces_the_folder_atomically(cleaned_dir, tokenizer_dir, tmp_path):
    out = Path(shutil.copytree(tokenizer_dir, tmp_path / "tok"))
    before = (out / "card.json").read_text()
    with pytest.raises(ConfigError):
        train_tokenizer(TokenizerConfig(vocab_size=100_000, sample_docs=3), cleaned_dir, out)
    assert (out / "card.json").read_text() == before
    card = train_tokenizer(TokenizerConfig(vocab_size=400, sample_docs=3), cleaned_dir, out)
    assert Tokenizer(out).sha256 == card["sha256"] != json.loads(before)["sha256"]
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]
