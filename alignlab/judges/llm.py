"""A local causal LM as annotator, read from the probabilities of its answer tokens (no text parsing).

* :class:`PointwiseLLMJudge` asks, for each answer alone, whether it is good, and compares ``log P(yes) - log
  P(no)`` of the two answers. SmolLM2-135M ranks obvious pairs this way (7 of 8 in the project's check).
* :class:`PairwiseLLMJudge` shows both answers and reads ``P(first)`` from the option letters, in **both** orders,
  and averages, which cancels position bias; whether the two orders agree is reported as position consistency.
  (SmolLM2-135M always picks the first shown: both orders then disagree and the average is near 0.5.)

Templates are config text with ``{prompt}``, ``{answer}`` / ``{first}``, ``{second}`` fields, so the
annotator's criterion is set from config like the paper's instructions.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from alignlab.judges.base import Verdicts
from alignlab.models import LoadedModel, load_pretrained, single_token_ids
from alignlab.padding import left_pad

POINTWISE = ("Here is a question and an answer.\n\nQuestion: {prompt}\n\nAnswer: {answer}\n\n"
             "Is this answer correct, helpful and concise? Reply with Yes or No.")
PAIRWISE = ("Which answer to the question is better: correct, helpful and concise?\n\nQuestion: {prompt}\n\n"
            "Answer A: {first}\n\nAnswer B: {second}\n\nReply with A or B.")


class _LocalJudge:
    def __init__(self, model: str | LoadedModel, template: str, choices: tuple[list[str], list[str]],
                 batch_size: int = 8, max_length: int = 1024, dtype: str = "float32", device: str = "auto") -> None:
        self.loaded = model if isinstance(model, LoadedModel) else load_pretrained(model, dtype=dtype)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.loaded.model.to(device).eval().requires_grad_(False)
        self.template = template
        self.positive = single_token_ids(self.loaded.tokenizer, choices[0])
        self.negative = single_token_ids(self.loaded.tokenizer, choices[1])
        self.batch_size, self.max_length = batch_size, max_length

    def __repr__(self) -> str:  # the class says the mode: pointwise or pairwise
        return f"{type(self).__name__}(model={self.loaded.name!r})"

    @torch.no_grad()
    def log_odds(self, texts: list[str]) -> list[float]:
        """``log P(positive) - log P(negative)`` of the next token after each rendered judge prompt."""
        tok, model = self.loaded.tokenizer, self.loaded.model
        device = next(model.parameters()).device
        out = []
        for start in range(0, len(texts), self.batch_size):
            rows = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                            return_dict=True)["input_ids"][-self.max_length:]
                    for t in texts[start: start + self.batch_size]]
            ids, mask = left_pad(rows, tok.pad_token_id)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            # Only the last position's logits are read: the output head over the whole prompt would cost, by
            # parameter count, about a fifth of the forward for nothing.
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=positions.to(device), logits_to_keep=1).logits[:, -1].float().log_softmax(-1)
            pos = logits[:, self.positive].logsumexp(-1)
            neg = logits[:, self.negative].logsumexp(-1)
            out += (pos - neg).tolist()
        return out


class PointwiseLLMJudge(_LocalJudge):
    def __init__(self, model: str | LoadedModel, template: str = POINTWISE, yes: tuple[str, ...] = ("Yes", "yes"),
                 no: tuple[str, ...] = ("No", "no"), **kwargs: Any) -> None:
        super().__init__(model, template, (list(yes), list(no)), **kwargs)

    def __call__(self, prompts: list[str], pairs: list[tuple[str, str]],
                 metas: list[dict[str, Any]] | None = None) -> Verdicts:
        texts = [self.template.format(prompt=p, answer=a) for p, (a, _) in zip(prompts, pairs, strict=True)]
        texts += [self.template.format(prompt=p, answer=b) for p, (_, b) in zip(prompts, pairs, strict=True)]
        scores = self.log_odds(texts)
        n = len(prompts)
        return Verdicts([1 / (1 + math.exp(scores[n + i] - scores[i])) for i in range(n)])


class PairwiseLLMJudge(_LocalJudge):
    def __init__(self, model: str | LoadedModel, template: str = PAIRWISE, first: tuple[str, ...] = ("A",),
                 second: tuple[str, ...] = ("B",), **kwargs: Any) -> None:
        super().__init__(model, template, (list(first), list(second)), **kwargs)

    def __call__(self, prompts: list[str], pairs: list[tuple[str, str]],
                 metas: list[dict[str, Any]] | None = None) -> Verdicts:
        shown = [self.template.format(prompt=p, first=a, second=b) for p, (a, b) in zip(prompts, pairs, strict=True)]
        swapped = [self.template.format(prompt=p, first=b, second=a) for p, (a, b) in zip(prompts, pairs, strict=True)]
        scores = self.log_odds(shown + swapped)
        n = len(prompts)
        probs, consistent, orders = [], [], []
        for i in range(n):
            p_shown = 1 / (1 + math.exp(-scores[i]))  # P(a better | a shown first)
            p_swapped = 1 / (1 + math.exp(scores[n + i]))  # P(a better | a shown second)
            probs.append((p_shown + p_swapped) / 2)
            consistent.append((p_shown > 0.5) == (p_swapped > 0.5))
            orders.append((p_shown, p_swapped))
        return Verdicts(probs, consistent, orders=orders)
