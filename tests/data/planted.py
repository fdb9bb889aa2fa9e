"""Planted near-duplicates: random documents and copies mutated to a known Jaccard similarity."""

import random

from pretrain.data.dedup import jaccard, shingles


def vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(size)]


def mutate(words: list[str], changes: int, vocab: list[str], rng: random.Random) -> list[str]:
    copy = list(words)
    for position in rng.sample(range(len(copy)), changes):
        copy[position] = rng.choice(vocab)
    return copy


def planted_pairs(count: int, seed: int, words: int = 300, shingle_size: int = 5, gap=(0.72, 0.88)):
    """`count` (base, variant, exact Jaccard) triples; similarities inside `gap` are skipped.

    The gap keeps the test about the method, not about the estimator's noise right at the
    threshold (a 120-permutation estimate has a standard deviation of about 0.035 at J = 0.8);
    the benchmark reports recall and precision in finer bins, gap included.
    """
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    triples = []
    while len(triples) < count:
        base = [rng.choice(vocab) for _ in range(words)]
        variant = mutate(base, rng.randint(0, 16), vocab, rng)
        a, b = (set(shingles(" ".join(words), shingle_size)) for words in (base, variant))
        similarity = jaccard(a, b)
        if gap is None or not gap[0] < similarity < gap[1]:
            triples.append((" ".join(base), " ".join(variant), similarity))
    return triples
