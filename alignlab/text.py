"""Text measures that judges and behaviour detectors share, so that a word budget and a brevity behaviour count
the same words."""

from __future__ import annotations

import re

_WORDS = re.compile(r"\S+")


def word_count(text: str) -> int:
    """Whitespace-separated words, as a reader counts them (punctuation stays with its word)."""
    return len(_WORDS.findall(text))
