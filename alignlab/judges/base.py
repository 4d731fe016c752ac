"""The judge contract shared by every annotator.

A judge answers, for each (prompt, (answer_a, answer_b)), the probability that ``answer_a`` is the better one, or
``None`` when it could not tell (a timeout, an unparseable reply): that pair is dropped and counted, never the run.
Judges that score both orders report whether the two verdicts agreed (position consistency). Judges that can
decide in more than one way (an endpoint reads token log-probabilities where the server sends them, else the
reply text) say which decided each verdict, so a run can count them. A judge whose failures have a reason (the
reply it could not read, the error a request ended with) says the last one, so that a run stopped for too many
failures can show it.

A judge may also raise for a whole batch: one of :data:`JUDGE_FAULTS` (I/O, HTTP, an unreadable reply, memory)
costs that batch's pairs, counted as failures; any other exception is a bug and stops the run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import torch

from alignlab.errors import JudgeReplyError

# What a judge may raise and the run survives: I/O and network faults (OSError covers TimeoutError and
# ConnectionError), HTTP faults, a reply it cannot read, and running out of memory on an unusually long batch.
JUDGE_FAULTS = (OSError, httpx.HTTPError, JudgeReplyError, torch.OutOfMemoryError)


@dataclass
class Verdicts:
    prob_first: list[float | None]
    consistent: list[bool | None] = field(default_factory=list)  # per pair; empty when the judge scores one order
    sources: list[str | None] | None = None  # per pair, what decided it (e.g. "logprobs", "text"); None: not said
    # per pair, P(a better) with a shown first and with a shown second (pairwise judges); None: one order only
    orders: list[tuple[float | None, float | None]] | None = None
    last_failure: str | None = None  # why the last failed pair of this batch failed (e.g. the reply it could not read)

    def __post_init__(self) -> None:
        if self.consistent and len(self.consistent) != len(self.prob_first):
            raise ValueError("one consistency flag per pair")
        if self.sources is not None and len(self.sources) != len(self.prob_first):
            raise ValueError("one source per pair")
        if self.orders is not None and len(self.orders) != len(self.prob_first):
            raise ValueError("one pair of per-order probabilities per pair")

    @classmethod
    def concat(cls, parts: list[Verdicts]) -> Verdicts:
        """The verdicts of consecutive chunks of pairs as one (a flag or source a chunk did not report stays
        missing for its pairs)."""
        def joined(name: str, missing: Any) -> list:
            return [x for part in parts for x in (getattr(part, name) or [missing] * len(part.prob_first))]

        consistent = joined("consistent", None) if any(part.consistent for part in parts) else []
        sources = joined("sources", None) if any(part.sources is not None for part in parts) else None
        orders = joined("orders", (None, None)) if any(part.orders is not None for part in parts) else None
        failures = [part.last_failure for part in parts if part.last_failure is not None]
        return cls(joined("prob_first", None), consistent, sources, orders, failures[-1] if failures else None)

    def source_counts(self) -> Counter[str]:
        """How many verdicts each source decided (failed pairs, whose source is None, are not counted)."""
        return Counter(s for s in self.sources or () if s is not None)


def runs_apart(judge: Any, device: torch.device) -> bool:
    """Whether ``judge`` computes somewhere other than ``device`` (where the policy samples): behind an endpoint
    (``runs_elsewhere``) or on another device (a local judge's ``device``). Its labelling can then overlap with
    sampling; a judge on the same device would only compete with it."""
    if getattr(judge, "runs_elsewhere", False):
        return True
    own = getattr(judge, "device", None)
    if own is None:
        return False
    own, device = resolved(torch.device(own)), resolved(device)
    return not (own.type == device.type and own.index == device.index)


def resolved(device: torch.device) -> torch.device:
    """``cuda`` without an index is the current CUDA device: give it its index, so that it compares equal."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class Judge(Protocol):
    """Besides being called, a judge may say where it computes, which online pairs read to overlap its calls with
    sampling (:func:`runs_apart`): ``runs_elsewhere = True`` (an endpoint) or ``device`` (a local model's)."""

    def __call__(self, prompts: list[str], pairs: list[tuple[str, str]],
                 metas: list[dict[str, Any]] | None = None) -> Verdicts: ...
