"""Behaviour specs for counterfactual DPO: the instructions that elicit a behaviour, and a program that sees it.

A spec names the behaviour, an **encouraging** and a **discouraging** system instruction, optionally an
**inappropriate** instruction (for instruction negation: kept in the prompt, and the answer produced without it
is preferred), and a ``measure``: ``text -> float`` in [0, 1], 1 when the text shows the desired behaviour.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from alignlab.errors import ConfigError
from alignlab.text import word_count

# Two or more capitalised words in a row ("Isaac Newton", "Marie Curie"); a leading function word that is only
# capitalised because it starts a sentence ("The Wright brothers") is not part of the name.
_CAPITALISED_RUN = re.compile(r"\b[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+)+\b")  # not across line breaks
_FUNCTION_WORDS = frozenset(
    ["The", "A", "An", "In", "On", "At", "It", "This", "That", "These", "Those", "He", "She", "They", "We", "I", "You", "His", "Her", "Their", "Our", "My", "Its", "When", "While", "After", "Before", "During", "From", "For", "With", "And", "But", "Or", "If", "As", "Many", "Some", "One", "Two", "Three", "Most", "All", "Each", "Every", "Both", "Today", "Later", "Then", "There", "Here", "Yes", "No"])


def is_brief(text: str, max_words: int = 25) -> float:
    """1 when the answer has at most ``max_words`` words."""
    return float(0 < word_count(text) <= max_words)


def is_long(text: str, min_words: int = 40) -> float:
    """1 when the answer has at least ``min_words`` words (an instruction to be brief was ignored)."""
    return float(word_count(text) >= min_words)


def in_language(text: str, language: str = "fr", min_words: int = 3) -> float:
    """1 when a language identifier (py3langid, the maintained langid.py: character n-gram naive Bayes over 97
    languages) finds the answer written in ``language`` (an ISO 639-1 code); answers of fewer than ``min_words``
    words are too short to tell and count 0."""
    if word_count(text) < min_words:
        return 0.0
    import py3langid

    return float(py3langid.classify(text)[0] == language)


def names_people(text: str) -> int:
    """Runs of two or more capitalised words, a leading function word left out: a proxy for people's names."""
    count = 0
    for run in _CAPITALISED_RUN.findall(text):
        words = run.split()
        if words[0] in _FUNCTION_WORDS:
            words = words[1:]
        count += len(words) >= 2
    return count


def names_no_one(text: str) -> float:
    return float(names_people(text) == 0)


# The prompt conditions answers are sampled under: the plain prompt, and the prompt with one of a spec's instructions.
# Their order fixes each condition's sampling-seed offset (cached answers are keyed by it): append, never reorder.
CONDITIONS = ("control", "encourage", "discourage", "inappropriate")


@dataclass(frozen=True)
class Variant:
    """One way of making counterfactual pairs from the conditions' answers.

    ``chosen`` and ``rejected``: the conditions whose answers are preferred and dispreferred; ``trained_on``: the
    condition whose prompt the policy learns on (the plain prompt; for instruction negation the prompt that keeps
    the inappropriate instruction); ``elicits``: the condition under which the base model shows the target
    behaviour, the upper bound a trained policy should move toward."""

    chosen: str
    rejected: str
    trained_on: str = "control"
    elicits: str = "encourage"

    @property
    def instructions(self) -> list[str]:
        """The conditions whose instruction the behaviour spec must give for training."""
        used = (self.chosen, self.rejected, self.trained_on)
        return [c for c in CONDITIONS if c != "control" and c in used]


VARIANTS = {
    "enc": Variant(chosen="encourage", rejected="control"),
    "dis": Variant(chosen="control", rejected="discourage"),
    "contrastive": Variant(chosen="encourage", rejected="discourage"),
    "instruction_negation": Variant(chosen="control", rejected="inappropriate", trained_on="inappropriate",
                                    elicits="control"),
}


@dataclass
class BehaviorSpec:
    """Args:
        name: what the behaviour is called in logs and file names.
        encourage: a system instruction that elicits it.
        discourage: a system instruction that elicits its opposite.
        inappropriate: for ``instruction_negation``: the instruction the model should learn to ignore.
        measure: ``text -> float`` in [0, 1]; 1 = behaviour shown. Optional, used to filter pairs and evaluate.
    """

    name: str
    encourage: str | None = None
    discourage: str | None = None
    inappropriate: str | None = None
    measure: Callable[[str], float] | None = None

    def instruction(self, condition: str) -> str | None:
        """The system instruction of a condition (:data:`CONDITIONS`); ``control`` has none."""
        if condition not in CONDITIONS:
            raise ValueError(f"condition {condition!r} is not one of {CONDITIONS}")
        return None if condition == "control" else getattr(self, condition)

    def require(self, variant: str) -> Variant:
        """The variant (``data.variant``), once this spec has every instruction it needs."""
        if variant not in VARIANTS:
            raise ConfigError(f"data.variant={variant!r} is not one of {', '.join(VARIANTS)}")
        spec = VARIANTS[variant]
        for condition in spec.instructions:
            if not (self.instruction(condition) or "").strip():
                raise ConfigError(f"behavior {self.name!r}: variant {variant!r} needs behavior.{condition}")
        return spec
