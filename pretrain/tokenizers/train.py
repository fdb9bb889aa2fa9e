"""Stage 2, `pretrain tokenizer train`: a SentencePiece model trained on a cleaned corpus.

Owns the deterministic document sample, the trainer options that make the tokenizer
lossless on code (decode(encode(x)) == x, newlines and indentation included) and the
tokenizer card that later stages check against.
"""

import io
from pathlib import Path

import numpy as np
import sentencepiece as spm

from pretrain.data.clean import cleaned_files, read_cleaned
from pretrain.data.config import TokenizerConfig
from pretrain.errors import ConfigError
from pretrain.io import atomic_dir, sha256_file, sha256_files, write_json

SPECIAL_IDS = {"pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3}
# "\n" is its own piece: training reads one line per sentence, so pieces never span lines.
USER_SYMBOLS = ["\n"]
THREADS = 2


def train_tokenizer(cfg: TokenizerConfig, cleaned_dir: str | Path, out_dir: str | Path) -> dict:
    """Train SentencePiece on a seeded sample of cleaned docs; write model and card; return the card."""
    files = cleaned_files(cleaned_dir)
    chosen = _sample_indices(_count_docs(files), cfg.sample_docs, cfg.seed)
    model = _train(cfg, _sample_lines(files, chosen))
    with atomic_dir(out_dir) as tmp:
        (tmp / "tokenizer.model").write_bytes(model)
        card = _card(cfg, tmp / "tokenizer.model", files, len(chosen))
        write_json(tmp / "card.json", card)
    return card


def _count_docs(files) -> int:
    total = 0
    for path in files:
        with open(path, "rb") as f:
            total += sum(1 for _ in f)
    return total


def _sample_indices(num_docs: int, sample_docs: int, seed: int) -> set[int]:
    # A pure function of (corpus size, seed): the same documents whatever the thread count.
    if num_docs <= sample_docs:
        return set(range(num_docs))
    chosen = np.random.default_rng(seed).choice(num_docs, size=sample_docs, replace=False)
    return set(chosen.tolist())


def _sample_lines(files, chosen: set[int]):
    for index, doc in enumerate(read_cleaned(files)):
        if index in chosen:
            yield from (line for line in doc["text"].split("\n") if line)


def _train(cfg: TokenizerConfig, lines) -> bytes:
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=lines, model_writer=model, **_trainer_options(cfg)
        )
    except RuntimeError as e:
        if "Vocabulary size" in str(e):
            # Keep SentencePiece's own advice, without its source location prefix.
            message = " ".join(str(e).split()).rpartition("] ")[2]
            message = f"{message} (with sample_docs={cfg.sample_docs})"
            raise ConfigError("data.tokenizer.vocab_size", message) from None
        raise
    return model.getvalue()


def _trainer_options(cfg: TokenizerConfig) -> dict:
    return dict(
        model_type=cfg.model_type,
        vocab_size=cfg.vocab_size,
        max_sentence_length=cfg.max_sentence_length,
        # Lossless text: no NFKC, no whitespace folding, no dummy leading space.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        # Unseen characters become bytes instead of <unk>.
        byte_fallback=True,
        split_digits=True,
        user_defined_symbols=USER_SYMBOLS,
        num_threads=THREADS,
        minloglevel=1,
        **SPECIAL_IDS,
    )


def _card(cfg: TokenizerConfig, model_path: Path, files, sample_docs: int) -> dict:
    processor = spm.SentencePieceProcessor(model_file=str(model_path))
    return {
        "vocab_size": processor.get_piece_size(),
        "model_type": cfg.model_type,
        **SPECIAL_IDS,
        "sha256": sha256_file(model_path),
        "corpus_sha256": sha256_files(files),
        "sample_docs": sample_docs,
        "seed": cfg.seed,
    }
