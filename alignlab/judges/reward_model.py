"""A reward model (any ``AutoModelForSequenceClassification`` with one output) as annotator.

Each answer is scored alone, rendered as a user turn and an assistant turn with the reward model's chat template
(or ``{prompt}\\n\\n{answer}`` when it has none); the probability that the first answer is better is the
Bradley-Terry ``sigmoid(r_a - r_b)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from alignlab.judges.base import Verdicts
from alignlab.models import load_tokenizer, parse_dtype, resolve_device, resolve_name_or_path


class RewardModelJudge:
    def __init__(self, model: str, batch_size: int = 8, max_length: int = 1024, dtype: str = "float32",
                 device: str = "auto") -> None:
        self.tokenizer = load_tokenizer(model)
        self.device = resolve_device(device)
        self.model = AutoModelForSequenceClassification.from_pretrained(resolve_name_or_path(model),
                                                                        dtype=parse_dtype(dtype))
        self.model.to(self.device).eval()
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.max_length = batch_size, max_length
        self.name = model

    def __repr__(self) -> str:
        return f"RewardModelJudge(model={self.name!r})"

    def _render(self, prompt: str, answer: str) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tokenize=False)
        return f"{prompt}\n\n{answer}"

    @torch.no_grad()
    def scores(self, prompts: list[str], answers: list[str]) -> list[float]:
        out = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [self._render(p, a) for p, a in zip(prompts[start: start + self.batch_size],
                                                        answers[start: start + self.batch_size], strict=True)]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_length, add_special_tokens=False)
            out += self.model(**enc.to(self.model.device)).logits[:, 0].float().tolist()
        return out

    def __call__(self, prompts: list[str], pairs: list[tuple[str, str]],
                 metas: list[dict[str, Any]] | None = None) -> Verdicts:
        n = len(prompts)
        scores = self.scores(prompts + prompts, [a for a, _ in pairs] + [b for _, b in pairs])
        return Verdicts([1 / (1 + math.exp(scores[n + i] - scores[i])) for i in range(n)])
