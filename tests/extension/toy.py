"""A pair source, a judge and a loss written as a user would add them, outside alignlab's own files.

Each is one class or function here plus one YAML file under ``conf/``: the test composes them with
``hydra.searchpath`` and trains and evaluates through the ordinary entry points.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from alignlab.data.base import FixedPairsSource, choose_split
from alignlab.data.pairs import PreferencePair
from alignlab.data.prompt_set import PromptSet
from alignlab.judges.base import Verdicts
from alignlab.losses import register_loss


class EchoPairsDataModule(FixedPairsSource):
    """Pairs made by a rule from prompts alone: the chosen answer repeats the prompt's last word, the rejected one
    says something else."""

    def __init__(self, tokenizer, prompts: PromptSet, **serving: Any) -> None:
        super().__init__(tokenizer, prompts, **serving)
        self.pair_tokenizer = prompts.pair_tokenizer(tokenizer, max_response_length=32)

    def setup(self, stage: str | None = None) -> None:
        if self.train_items:
            return
        train, val = self.prompts.read_prompts(self.pair_tokenizer, self.report)
        self.set_pairs([self._pair(p) for p in train], [self._pair(p) for p in val])

    def _pair(self, prompt):
        word = prompt.question.split()[-1]
        pair = PreferencePair(prompt.meta["prompt"], f"{word} {word}.", "Something else entirely.", {})
        tokenized = self.pair_tokenizer(pair, prompt.example_id, prompt.where)
        return dataclasses.replace(tokenized, meta={**tokenized.meta, "prompt_id": prompt.prompt_id})

    def export_rows(self, model, split: str):
        self.setup("fit")
        rows = [{"prompt": p.meta["prompt"], "chosen": "...", "rejected": "..."}
                for p in choose_split(split, self.train_items, self.val_items)]
        return rows, {"pairs": float(len(rows))}


class LongerAnswerJudge:
    """Prefers the longer answer (a toy annotator)."""

    def __call__(self, prompts, pairs, metas=None) -> Verdicts:
        return Verdicts([0.5 if len(a) == len(b) else float(len(a) > len(b)) for a, b in pairs])


@register_loss("toy_softplus_margin", paper="(a test's own loss)")
def toy_softplus_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float,
                        margin: float = 0.5) -> torch.Tensor:
    """softplus(margin - beta * h): DPO's loss shifted by a margin."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return F.softplus(margin - beta * h)
