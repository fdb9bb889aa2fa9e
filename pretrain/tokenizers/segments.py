"""Encode text through a cache of word-like segments, with results identical to SentencePiece's.

Why: sharding is bound by SentencePiece's encode (about 430 ns per token on one core here),
yet most of a corpus is the same few hundred thousand identifiers, keywords, numbers and
punctuation runs over and over. Encoding each distinct segment once and reusing its ids is
about twice as fast on the standard library's sources (`benchmarks/data_shard.py`).

Why it is exact: SentencePiece's BPE merges two adjacent symbols only when their
concatenation is a vocabulary piece. If no piece can span a split point, every symbol stays
on one side of it, and each side merges in the same relative order as it would alone: the
ids of the text are the ids of its segments, concatenated. Whether a piece can span a split
point is not assumed from how the tokenizer was trained but checked against the vocabulary
when the encoder is built: the split rules below put a split between two characters from
those two characters alone, so a piece spans one exactly when splitting the piece itself
cuts it. A rule that fails the check
is not used (no rule at all: plain SentencePiece).

Only BPE models: unigram's Viterbi breaks ties between equally scored splits (runs of
whitespace pieces, say) by position, so a segment alone may pick another split of equal score.
And only models that encode the text as it is (`pretrain tokenizer train`'s settings): a dummy
prefix space, folded whitespace or an NFKC normalizer make a segment's ids depend on where
it stands, so a tokenizer trained elsewhere with them goes straight to SentencePiece.
"""

import itertools
import re

import numpy as np

_WS = " \u2581"  # a space, and SentencePiece's escaped space, which may also appear in raw text
# A run of spaces followed by a run of anything else: the split SentencePiece's trainer makes
# between words (split_by_whitespace, with whitespace-only pieces allowed).
WORDS = re.compile(rf"[{_WS}]*[^{_WS}]+|[{_WS}]+")
# For pure-ASCII text, finer: letters, digits, newlines and other symbols kept apart
# (split_by_unicode_script and split_by_number), each run with its leading spaces.
ASCII_RUNS = re.compile(rf"[{_WS}]*(?:[A-Za-z]+|[0-9]+|\n|[^{_WS}A-Za-z0-9\n]+)|[{_WS}]+")


class SegmentEncoder:
    """Batch encode into int32 arrays through a bounded cache of segment ids."""

    def __init__(self, processor, model_type: str, max_entries: int = 1 << 19):
        self.processor = processor
        self.max_entries = max_entries
        self.cache: dict[str, tuple[int, ...]] = {}
        pieces = vocabulary_pieces(processor)
        self.words_safe = model_type == "bpe" and encodes_text_as_is(processor) and no_piece_is_split(pieces, WORDS)
        self.ascii_safe = self.words_safe and no_piece_is_split([p for p in pieces if _is_ascii(p)], ASCII_RUNS)

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text as an int32 array, equal to SentencePiece's encode."""
        if not self.words_safe:
            return self.processor.encode(list(texts), out_type="numpy", num_threads=1)
        segments = [self._split(text) for text in texts]
        self._fill(set(itertools.chain.from_iterable(segments)))
        get = self.cache.__getitem__
        return [np.fromiter(itertools.chain.from_iterable(map(get, parts)), dtype=np.int32) for parts in segments]

    def _split(self, text: str) -> list[str]:
        return (ASCII_RUNS if self.ascii_safe and text.isascii() else WORDS).findall(text)

    def _fill(self, segments: set[str]) -> None:
        missing = [s for s in segments if s not in self.cache]
        if len(self.cache) + len(missing) > self.max_entries:
            self.cache.clear()  # bounded memory; frequent segments come back at once
            missing = list(segments)
        encoded = self.processor.encode(missing, out_type=int, num_threads=1)
        self.cache.update(zip(missing, map(tuple, encoded)))


def vocabulary_pieces(processor) -> list[str]:
    """Pieces that can appear in an encoding as text: not byte-fallback, control or unknown ids."""
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())
            if not (processor.is_byte(i) or processor.is_control(i) or processor.is_unknown(i))]


def encodes_text_as_is(processor) -> bool:
    """No normalization: identity rule, no whitespace folding, no dummy leading space."""
    from sentencepiece import sentencepiece_model_pb2

    spec = sentencepiece_model_pb2.ModelProto.FromString(processor.serialized_model_proto()).normalizer_spec
    return spec.name == "identity" and not spec.add_dummy_prefix and not spec.remove_extra_whitespaces


def no_piece_is_split(pieces: list[str], rule: re.Pattern) -> bool:
    """True when `rule` leaves every piece whole (one segment)."""
    return all(len(rule.findall(piece)) == 1 for piece in pieces)


def _is_ascii(piece: str) -> bool:
    return piece.replace("\u2581", " ").isascii()
