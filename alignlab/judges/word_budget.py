"""An annotator told to be brief: any judge's verdict plus a penalty for words beyond a budget.

Why: OAIF's second claim is that the annotator's instruction steers the trained policy's length ("helpful",
"helpful and short", "helpful and very short"). SmolLM2-135M, the only local LLM here, does not follow a length
instruction when it annotates (experiments/oaif/length_control_short_facts/instructions.md), so the instruction's
length term is given to the annotator as a number instead of as words: ``max_words``. The judge underneath keeps
its notion of helpfulness; this adds, in log-odds,

    logit P(a better) = logit P_judge(a better) + per_word * (over(b) - over(a)),  over(x) = max(0, words(x) - max_words)

so an answer within the budget is never penalised, and of two answers over it the longer pays ``per_word`` per
extra word. With ``per_word = 0.25`` four words over the budget weigh as much as odds of e from the judge. A pair the
judge could not decide (``None``) stays undecided: the budget never labels a pair on its own.
"""

from __future__ import annotations

import math
from typing import Any

from alignlab.errors import ConfigError
from alignlab.judges.base import Judge, Verdicts
from alignlab.text import word_count


class WordBudgetJudge:
    """Args:
        judge: the annotator whose verdicts the budget adjusts (e.g. the reference-similarity judge).
        max_words: the budget; answers of at most this many words are not penalised.
        per_word: log-odds per word beyond the budget (> 0).
    """

    def __init__(self, judge: Judge, max_words: int, per_word: float = 0.25) -> None:
        if max_words < 0:
            raise ConfigError(f"judge.max_words={max_words} must be >= 0")
        if per_word <= 0:
            raise ConfigError(f"judge.per_word={per_word} must be > 0")
        self.judge, self.max_words, self.per_word = judge, max_words, per_word
        # an endpoint or another device underneath still is: the online datamodule overlaps its calls with sampling
        self.runs_elsewhere = bool(getattr(judge, "runs_elsewhere", False))
        self.device = getattr(judge, "device", None)

    def __repr__(self) -> str:
        return f"WordBudgetJudge({self.judge!r}, max_words={self.max_words}, per_word={self.per_word})"

    def over(self, text: str) -> int:
        """Words of ``text`` beyond the budget (0 within it)."""
        return max(0, word_count(text) - self.max_words)

    def __call__(self, prompts: list[str], pairs: list[tuple[str, str]],
                 metas: list[dict[str, Any]] | None = None) -> Verdicts:
        base = self.judge(prompts, pairs, metas)
        shifts = [self.per_word * (self.over(b) - self.over(a)) for a, b in pairs]
        probs = [shifted(p, shift) for p, shift in zip(base.prob_first, shifts, strict=True)]
        orders = None
        if base.orders is not None:  # a pairwise judge's verdict in each order, each shifted alike
            orders = [(shifted(first, shift), shifted(second, shift))
                      for (first, second), shift in zip(base.orders, shifts, strict=True)]
        return Verdicts(probs, base.consistent, base.sources, orders, base.last_failure)


def shifted(p: float | None, logit_shift: float) -> float | None:
    """``p`` moved by ``logit_shift`` in log-odds; an undecided ``None`` stays undecided."""
    if p is None:
        return None
    p = min(max(p, 1e-12), 1 - 1e-12)
    logit = math.log(p / (1 - p)) + logit_shift
    return 1 / (1 + math.exp(-max(-50.0, min(50.0, logit))))
