"""A programmatic rater for short factual answers: the bundled dataset's preference, as a program.

``score(answer, expected, question)`` rewards three things a reader of a short factual answer wants:

* **correct** (+1): the expected answer appears as a whole word; for a numeric answer, the first number in the
  response that is not already in the question must equal it (so "7 plus 5 is 13, not 12" is wrong);
* **concise** (up to +0.5): full marks up to 25 words, falling linearly to 0 at 75 words;
* **no filler** (-0.5): hedging, flattery, refusals and sign-offs ("Great question!", "I hope this helps").

Every bundled pair's chosen answer scores strictly higher than its rejected one (a test checks this), so a
policy's sampled answers can be scored on held-out prompts and compared with the reference model's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FILLER_PHRASES = (
    "great question", "good question", "i hope this helps", "hope that helps", "feel free", "i'm sorry",
    "i am sorry", "i cannot", "i can't", "as an ai", "i could be wrong", "i'm not sure", "i am not sure",
    "let me think", "it's hard to say", "happy to help", "i'm not able", "i am not able",
)
CONCISE_WORDS, VERBOSE_WORDS = 25, 75
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# The rater's own words: letters, digits and apostrophes of the lower-cased answer (so "4." and "—" are not words),
# unlike alignlab.text.word_count's whitespace-separated ones: changing it would change every reward it gives.
_WORDS = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class Rating:
    correct: float
    concise: float
    filler: float

    @property
    def reward(self) -> float:
        return self.correct + self.concise - self.filler


def _is_number(text: str) -> bool:
    return bool(_NUMBER.fullmatch(text.strip()))


def is_correct(answer: str, expected: str, question: str = "") -> bool:
    text = answer.lower()
    if _is_number(expected):
        in_question = set(_NUMBER.findall(question))
        fresh = [n for n in _NUMBER.findall(text) if n not in in_question]
        return bool(fresh) and float(fresh[0]) == float(expected)
    return re.search(rf"\b{re.escape(expected.lower())}\b", text) is not None


def conciseness(answer: str) -> float:
    words = len(_WORDS.findall(answer.lower()))
    if words == 0:
        return 0.0
    if words <= CONCISE_WORDS:
        return 0.5
    return 0.5 * max(0.0, 1 - (words - CONCISE_WORDS) / (VERBOSE_WORDS - CONCISE_WORDS))


def has_filler(answer: str) -> bool:
    text = answer.lower().replace("\u2019", "'")
    return any(phrase in text for phrase in FILLER_PHRASES)


def rate(answer: str, expected: str, question: str = "") -> Rating:
    return Rating(
        correct=float(is_correct(answer, expected, question)),
        concise=conciseness(answer),
        filler=0.5 if has_filler(answer) else 0.0,
    )


def score(answer: str, expected: str, question: str = "") -> float:
    """The scalar reward in [-0.5, 1.5]."""
    return rate(answer, expected, question).reward


class AnswerRater:
    """Scores a response to a row that carries its expected answer (``row[answer_key]``); ``None`` otherwise.

    Used by evaluation to compare a policy's sampled answers with the reference model's.
    """

    def __init__(self, answer_key: str = "answer") -> None:
        self.answer_key = answer_key

    def __call__(self, question: str, response: str, meta: dict) -> Rating | None:
        expected = meta.get(self.answer_key)
        if expected is None:
            return None
        return rate(response, str(expected), question)
