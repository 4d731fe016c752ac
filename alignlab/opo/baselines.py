"""Answers with no model: how far copying from the rules shown gets, and which questions copying can answer.

A question whose correct option appears word for word in its gold rule, while no wrong option does, is answered
by "pick the option that appears in the rule" without understanding anything. Every OPO condition therefore
gets rows from these baselines, computed from exactly the rules the model was shown:

* :func:`string_match`: the options that appear in the rules' text (case-insensitive, punctuation and whitespace
  normalized, whole words), probability uniform over them, or over all options when none or all of them appear;
* :func:`word_overlap`: each option's share of content words (the retriever's tokens, stopwords removed) that
  occur in the rules; probability uniform over the best-scoring options. It catches partial copies that exact
  matching misses ("Only a handline" for a rule that says "only with a handline").

:func:`copyable` flags a question by program: the correct option appears in the gold rules' text and no wrong
option does. Accuracy is reported separately for copyable questions and the rest, which need inference.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from alignlab.opo.memory import RuleMemory
from alignlab.opo.questions import MCQuestion
from alignlab.opo.retrievers import tokenize

_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Lower-cased words joined by single spaces, padded with a space at each end so that a containment test
    matches whole words only: ``"6 a.m.;"`` and ``"6 A.M."`` both become ``" 6 a m "``."""
    return " " + " ".join(_WORD.findall(text.lower())) + " "


def appears(option: str, text: str) -> bool:
    """Whether ``option`` occurs in ``text`` word for word, after :func:`normalize` of both."""
    words = normalize(option)
    return words.strip() != "" and words in normalize(text)


def _uniform_over(chosen: np.ndarray) -> np.ndarray:
    """Probability 1/|chosen| on each chosen option ([n] bools), uniform over all when none is chosen."""
    chosen = chosen if chosen.any() else np.ones_like(chosen)
    return chosen / chosen.sum()


def string_match(options: list[str], rules_text: str) -> np.ndarray:
    """[n] probabilities: uniform over the options that appear in ``rules_text`` (over all when none does)."""
    return _uniform_over(np.array([appears(option, rules_text) for option in options], dtype=float))


def word_overlap(options: list[str], rules_text: str) -> np.ndarray:
    """[n] probabilities: uniform over the options with the largest share of content words found in
    ``rules_text`` (over all when no option shares any word)."""
    words = set(tokenize(rules_text))
    shares = np.array([np.mean([w in words for w in tokens]) if (tokens := tokenize(o)) else 0.0 for o in options])
    return _uniform_over((shares == shares.max()) & (shares > 0))


BASELINES: dict[str, Callable[[list[str], str], np.ndarray]] = {"string_match": string_match,
                                                               "word_overlap": word_overlap}


def gold_text(question: MCQuestion, memory: RuleMemory) -> str:
    return "\n".join(memory[i].text for i in question.rule_ids if i in memory)


def copyable(question: MCQuestion, memory: RuleMemory) -> bool:
    """The correct option appears in the gold rules' text and no wrong option does: a question that copying
    answers. The flag uses the memory as loaded (before any edit)."""
    text = gold_text(question, memory)
    hits = [appears(option, text) for option in question.options]
    return hits[question.answer] and sum(hits) == 1
