"""A programmatic annotator whose preference is set by an instruction, as OAIF's prompt-controlled annotator.

The base score is :func:`alignlab.judges.rater.score` (correct, concise, no filler) when the row carries its
expected answer, and the conciseness and filler parts alone otherwise. The instruction adds a length preference:

* ``helpful``: the base score only;
* ``helpful_short``: minus 0.02 per token-ish word beyond 20;
* ``helpful_very_short``: minus 0.05 per word beyond 8.

The answer with the higher score wins (probability 1); equal scores are a tie (0.5).
"""

from __future__ import annotations

from typing import Any

from alignlab.errors import ConfigError
from alignlab.judges.base import Verdicts
from alignlab.judges.rater import conciseness, has_filler, rate
from alignlab.text import word_count

# instruction -> (free words, penalty per extra word)
INSTRUCTIONS = {"helpful": (None, 0.0), "helpful_short": (20, 0.02), "helpful_very_short": (8, 0.05)}


class RuleJudge:
    def __init__(self, instruction: str = "helpful", answer_key: str = "answer") -> None:
        if instruction not in INSTRUCTIONS:
            raise ConfigError(f"judge.instruction={instruction!r} is not one of {sorted(INSTRUCTIONS)}")
        self.instruction = instruction
        self.answer_key = answer_key

    def __repr__(self) -> str:
        return f"RuleJudge(instruction={self.instruction!r})"

    def score(self, prompt: str, answer: str, meta: dict[str, Any]) -> float:
        expected = meta.get(self.answer_key)
        if expected is not None:
            base = rate(answer, str(expected), prompt).reward
        else:
            base = conciseness(answer) - (0.5 if has_filler(answer) else 0.0)
        free, per_word = INSTRUCTIONS[self.instruction]
        if free is not None:
            base -= per_word * max(0, word_count(answer) - free)
        return base

    def __call__(self, prompts: list[str], pairs: list[tuple[str, str]],
                 metas: list[dict[str, Any]] | None = None) -> Verdicts:
        metas = metas or [{} for _ in prompts]
        probs = []
        for prompt, (a, b), meta in zip(prompts, pairs, metas, strict=True):
            sa, sb = self.score(prompt, a, meta), self.score(prompt, b, meta)
            probs.append(1.0 if sa > sb else 0.0 if sa < sb else 0.5)
        return Verdicts(probs)
