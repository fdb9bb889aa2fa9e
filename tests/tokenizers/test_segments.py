"""The segment-cached encoder gives SentencePiece's ids exactly, and steps aside when it cannot."""

import random

import numpy as np
import pytest
import sentencepiece as spm
from pipeline import STDLIB

from pretrain.data.config import TokenizerConfig
from pretrain.tokenizers.segments import SegmentEncoder
from pretrain.tokenizers.tokenizer import Tokenizer
from pretrain.tokenizers.train import _trainer_options

# Characters chosen to sit on every split rule's edges: spaces (also SentencePiece's own ▁),
# letters, digits, newlines, tabs, punctuation, non-ASCII letters, CJK and emoji.
ALPHABET = list("  \u2581aZx_09.(){}:=#\"'\n\t\r-") + ["é", "ß", "中", "🙂", "\u00a0", "def", "self", "    "]


def random_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 80))) for _ in range(count)]


def corpus_texts() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(STDLIB.glob("[a-c]*.py"))[:40]]


def assert_same_as_sentencepiece(processor, texts, model_type="bpe"):
    encoder = SegmentEncoder(processor, model_type)
    expected = processor.encode(texts, out_type="numpy", num_threads=1)
    # Twice: the second pass is served from the cache.
    for _ in range(2):
        got = encoder.encode_arrays(texts)
        assert len(got) == len(expected)
        for text, a, b in zip(texts, got, expected):
            assert a.dtype == np.int32
            assert np.array_equal(a, b), repr(text[:200])
    return encoder


def test_same_ids_as_sentencepiece_on_code_and_random_text(tokenizer_dir):
    processor = Tokenizer(tokenizer_dir).processor
    encoder = assert_same_as_sentencepiece(processor, corpus_texts() + random_texts(3000))
    # The project's own tokenizers pass both checks: the fast paths were really taken.
    assert encoder.words_safe and encoder.ascii_safe
    assert len(encoder.cache) > 0


def test_a_full_cache_is_cleared_and_stays_exact(tokenizer_dir):
    processor = Tokenizer(tokenizer_dir).processor
    encoder = SegmentEncoder(processor, "bpe", max_entries=100)
    for text in random_texts(300, seed=1):  # at most 80 characters: fewer segments than 100
        [ids] = encoder.encode_arrays([text])
        assert np.array_equal(ids, processor.encode([text], out_type="numpy")[0])
        assert len(encoder.cache) <= 100


def train(tmp_path, texts, **changes) -> spm.SentencePieceProcessor:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in texts), encoding="utf-8")
    options = _trainer_options(TokenizerConfig(vocab_size=400))
    options.update(input=str(corpus), model_prefix=str(tmp_path / "m"), **changes)
    spm.SentencePieceTrainer.train(**options)
    return spm.SentencePieceProcessor(model_file=str(tmp_path / "m.model"))


def test_unigram_models_go_straight_to_sentencepiece(tmp_path):
    # Unigram ties between equal-score splits of whitespace runs depend on the context: no cache.
    processor = train(tmp_path, corpus_texts(), model_type="unigram")
    encoder = assert_same_as_sentencepiece(processor, corpus_texts()[:10] + random_texts(1000, seed=2), "unigram")
    assert not encoder.words_safe and not encoder.cache


@pytest.mark.parametrize("normalization", [{"add_dummy_prefix": True}, {"remove_extra_whitespaces": True},
                                           {"normalization_rule_name": "nmt_nfkc"}],
                         ids=["dummy-prefix", "folded-whitespace", "nfkc"])
def test_a_tokenizer_that_normalizes_goes_straight_to_sentencepiece(tmp_path, normalization):
    # A segment's ids would depend on its place: the dummy prefix goes only before the first one.
    processor = train(tmp_path, corpus_texts(), **normalization)
    encoder = assert_same_as_sentencepiece(processor, corpus_texts()[:10] + random_texts(300, seed=4))
    assert not encoder.words_safe and not encoder.cache


@pytest.mark.parametrize("symbols, words_safe, ascii_safe", [
    (["\n", "a b"], False, False),  # a piece across a space: no segments at all
    (["\n", "x("], True, False),  # a piece across letter and symbol: only whole words
])
def test_a_piece_that_spans_a_split_turns_that_split_off(tmp_path, symbols, words_safe, ascii_safe):
    processor = train(tmp_path, corpus_texts(), user_defined_symbols=symbols)
    texts = corpus_texts()[:10] + ["a b x(y) a  b", "fa bx(("] + random_texts(500, seed=3)
    encoder = assert_same_as_sentencepiece(processor, texts)
    assert (encoder.words_safe, encoder.ascii_safe) == (words_safe, ascii_safe)
