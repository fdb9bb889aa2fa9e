"""The tokenizer wrapper: a SentencePiece model checked against its card before use."""

import hashlib
from pathlib import Path

import numpy as np
import sentencepiece as spm

from pretrain.errors import ConfigError
from pretrain.io import read_json

KEY = "data.tokenizer_dir"


class Tokenizer:
    """A trained tokenizer folder (tokenizer.model + card.json); encode and decode in batches."""

    def __init__(self, tokenizer_dir: str | Path, num_threads: int = -1):
        self.dir = Path(tokenizer_dir)
        self.card = _load_card(self.dir)
        model = _load_model_bytes(self.dir, self.card)
        self.processor = spm.SentencePieceProcessor(model_proto=model)
        # -1 lets SentencePiece use every core; loader workers should pass 1.
        self.num_threads = num_threads

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    @property
    def pad_id(self) -> int:
        return self.processor.pad_id()

    @property
    def bos_id(self) -> int:
        return self.processor.bos_id()

    @property
    def eos_id(self) -> int:
        return self.processor.eos_id()

    @property
    def unk_id(self) -> int:
        return self.processor.unk_id()

    @property
    def sha256(self) -> str:
        return self.card["sha256"]

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (no bos/eos added)."""
        if isinstance(texts, str):
            raise TypeError("Tokenizer.encode takes a list of strings")
        return self.processor.encode(list(texts), out_type=int, num_threads=self.num_threads)

    def encode_arrays(self, texts: list[str]) -> list:
        """Token ids of each text as int32 numpy arrays: no Python int per token."""
        return self.processor.encode(list(texts), out_type="numpy", num_threads=self.num_threads)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of each id's text (int64, one per id): a byte-fallback piece is one byte,
        a control id (bos, eos, pad) none; a piece's ▁ is a space. Decoding is lossless, so the
        bytes of a sequence's text are the sum over its ids (bits per byte needs them)."""
        processor = self.processor
        sizes = np.zeros(processor.get_piece_size(), dtype=np.int64)
        for i in range(len(sizes)):
            if processor.is_byte(i):
                sizes[i] = 1
            elif not (processor.is_control(i) or processor.is_unknown(i)):
                sizes[i] = len(processor.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        return sizes

    def decode(self, ids) -> str:
        """The text of one sequence of ids (a list, numpy array or tensor)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        return self.processor.decode(ids)


def _load_card(folder: Path) -> dict:
    if not (folder / "card.json").is_file():
        raise ConfigError(KEY, f"no tokenizer in {folder}: run `pretrain tokenizer train` first")
    try:
        card = read_json(folder / "card.json")
    except ValueError:
        raise ConfigError(KEY, f"{folder / 'card.json'} is not valid JSON") from None
    if not isinstance(card, dict) or "sha256" not in card:
        raise ConfigError(KEY, f"{folder / 'card.json'} has no sha256")
    return card


def _load_model_bytes(folder: Path, card: dict) -> bytes:
    path = folder / "tokenizer.model"
    if not path.is_file():
        raise ConfigError(KEY, f"{path} is missing: run `pretrain tokenizer train` again")
    # Hash the very bytes we load, so a file changed between check and load cannot slip by.
    model = path.read_bytes()
    if hashlib.sha256(model).hexdigest() != card["sha256"]:
        raise ConfigError(KEY, f"{path} does not match the sha256 in card.json (changed since?)")
    return model
