"""The judge contract shared by every annotator.

A judge answers, for each (prompt, (answer_a, answer_b)), the probability that ``answer_a`` is the better one, or
``None`` when it could not tell (a timeout, an unparseable reply): that pair is dropped and counted, never the run.
Judges that score both orders report whether the two verdicts agreed (position consistency).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Verdicts:
    prob_first: list[float | None]
    consistent: list[bool | None] = field(default_factory=list)  # per pair; empty when the judge scores one order

    def __post_init__(self) -> None:
        if self.consistent and len(self.consistent) != len(self.prob_first):
            raise ValueError("one consistency flag per pair")


class Judge(Protocol):
    def __call__(self, prompts: list[str], pairs: list[tuple[str, str]],
                 metas: list[dict[str, Any]] | None = None) -> Verdicts: ...
