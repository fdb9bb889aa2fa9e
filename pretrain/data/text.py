"""Text normalization shared by cleaning and its tests."""

import re
import unicodedata

_MANY_BLANK_LINES = re.compile(r"\n{4,}")


def normalize_text(text: str) -> str:
    """NFC, LF line endings, no trailing spaces, at most 2 blank lines in a row, no blank edges."""
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    # Two blank lines survive: PEP 8 puts them between top-level definitions in code.
    text = _MANY_BLANK_LINES.sub("\n\n\n", text)
    # Only blank lines are stripped at the edges: the first line's indentation is content.
    return text.strip("\n")
