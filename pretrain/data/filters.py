"""Document filters: Gopher/C4 quality heuristics, Gopher repetition, code checks, language ID.

Each check takes the normalized text and its config and returns the reason it drops the
document, or None. Thresholds follow the Gopher paper (Rae et al. 2021, table A1) and C4/FineWeb;
words are whitespace-separated tokens, which keeps the checks fast and language-agnostic (FACTS:
datatrove's spaCy tokenizer costs 3-4x in speed).
"""

import re
from collections import Counter

STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
BULLETS = ("•", "●", "○", "▪", "■", "□", "◦", "-", "*", "‣", "⁃", "–")
ELLIPSES = ("...", "…")
TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "”", "’", ":", ";", ")", "。", "！", "？")
_BOILERPLATE = re.compile(r"javascript|cookie|terms of use|privacy policy|use of cookies", re.IGNORECASE)
_NOT_ALPHANUMERIC = re.compile(r"[\W_]+")
_ALPHA = re.compile(r"[^\W\d_]")


def quality_reason(text: str, cfg) -> str | None:
    """Gopher and C4 prose heuristics."""
    words = text.split()
    n = len(words)
    if n < cfg.min_words:
        return "too_few_words"
    if n > cfg.max_words:
        return "too_many_words"
    mean_length = sum(map(len, words)) / n
    if not cfg.min_mean_word_length <= mean_length <= cfg.max_mean_word_length:
        return "mean_word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / n > cfg.max_symbol_word_ratio:
        return "symbol_ratio"
    return _line_reason(text, cfg) or _word_reason(words, cfg)


def _line_reason(text: str, cfg) -> str | None:
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    n = len(lines)
    if sum(line.startswith(BULLETS) for line in lines) > cfg.max_bullet_line_fraction * n:
        return "bullet_lines"
    if sum(line.endswith(ELLIPSES) for line in lines) > cfg.max_ellipsis_line_fraction * n:
        return "ellipsis_lines"
    if sum(line.endswith(TERMINAL_PUNCTUATION) for line in lines) < cfg.min_punctuated_line_fraction * n:
        return "punctuation"
    if cfg.drop_lorem_ipsum and "lorem ipsum" in text.lower():
        return "lorem_ipsum"
    if sum(bool(_BOILERPLATE.search(line)) for line in lines) > cfg.max_boilerplate_line_fraction * n:
        return "boilerplate"
    return None


def _word_reason(words: list[str], cfg) -> str | None:
    if sum(bool(_ALPHA.search(w)) for w in words) < cfg.min_alpha_word_fraction * len(words):
        return "alpha_words"
    lowered = (w.lower().strip(".,;:!?\"'()") for w in words)
    if sum(w in STOP_WORDS for w in lowered) < cfg.min_stop_words:
        return "stop_words"
    return None


def repetition_reason(text: str, cfg) -> str | None:
    """Gopher repetition: repeated lines and paragraphs, dominant and repeated word n-grams."""
    # Paragraphs first: a repeated paragraph also repeats its lines, and this is the better reason.
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    if _duplicates(paragraphs)[0] > cfg.max_duplicate_paragraph_fraction * len(paragraphs):
        return "duplicate_paragraphs"
    lines = [line for line in text.split("\n") if line.strip()]
    dup_lines, dup_line_chars = _duplicates(lines)
    if dup_lines > cfg.max_duplicate_line_fraction * len(lines):
        return "duplicate_lines"
    if dup_line_chars > cfg.max_duplicate_line_char_fraction * len(text):
        return "duplicate_lines"
    return _ngram_reason(text.split(), cfg)


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(count, characters) of items that repeat an earlier item."""
    seen, count, chars = set(), 0, 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _ngram_reason(words: list[str], cfg) -> str | None:
    total = sum(map(len, words))
    if total == 0:
        return None
    for n, limit in enumerate(cfg.top_ngram_max_fractions, start=2):
        if _top_ngram_chars(words, n) > limit * total:
            return "top_ngrams"
    for n, limit in enumerate(cfg.duplicate_ngram_max_fractions, start=5):
        if _duplicate_ngram_chars(words, n) > limit * total:
            return "duplicate_ngrams"
    return None


def _top_ngram_chars(words: list[str], n: int) -> int:
    ngrams = Counter(zip(*(words[i:] for i in range(n))))
    if not ngrams:
        return 0
    top, count = ngrams.most_common(1)[0]
    return count * sum(map(len, top)) if count > 1 else 0


def _duplicate_ngram_chars(words: list[str], n: int) -> int:
    """Characters of words inside any later occurrence of a repeated n-gram (each word counted once)."""
    seen, covered = set(), [False] * len(words)
    for i, gram in enumerate(zip(*(words[k:] for k in range(n)))):
        if gram in seen:
            covered[i : i + n] = [True] * n
        else:
            seen.add(gram)
    return sum(len(w) for w, hit in zip(words, covered) if hit)


def code_reason(text: str, cfg) -> str | None:
    """Source-code checks: minified or data-blob lines, little alphanumeric content, generated files."""
    lines = text.split("\n")
    if max(map(len, lines)) > cfg.max_line_length:
        return "long_lines"
    if len(text) / len(lines) > cfg.max_mean_line_length:
        return "long_lines"
    alphanumeric = len(_NOT_ALPHANUMERIC.sub("", text))  # a C-level pass, not a Python loop
    if alphanumeric < cfg.min_alphanumeric_fraction * len(text):
        return "alphanumeric"
    head = "\n".join(lines[:5]).lower()
    if any(marker in head for marker in cfg.autogenerated_markers):
        return "autogenerated"
    return None


_IDENTIFIER = None


def language_reason(text: str, cfg) -> str | None:
    """py3langid on the first cfg.max_chars characters: keep-list, then minimum probability."""
    language, score = identify_language(text[: cfg.max_chars])
    if language not in cfg.keep:
        return "language"
    if score < cfg.min_score:
        return "language_score"
    return None


def identify_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) from py3langid's model, which is inside its wheel."""
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    language, score = _IDENTIFIER.classify(text.replace("\n", " "))
    return language, float(score)


def filter_reason(text: str, cfg) -> str | None:
    """The first reason any enabled filter group of a CleanConfig drops the text for, or None."""
    if cfg.uses("code") and (reason := code_reason(text, cfg.code)):
        return reason
    # Language first (as in FineWeb): the quality rules' stop words are English.
    if cfg.uses("language") and (reason := language_reason(text, cfg.language)):
        return reason
    if cfg.uses("quality") and (reason := quality_reason(text, cfg.quality)):
        return reason
    if cfg.uses("repetition") and (reason := repetition_reason(text, cfg.repetition)):
        return reason
    return None
