"""Answers sampled once and kept on disk under a hash of everything that produced them.

Counterfactual pairs (the reference's answers under each condition) and evaluation's reference answers (the same
for every monitoring step and every run that shares a prompt set and sampling settings) are both costly and fully
determined by their inputs: the model's weights, the prompts, the sampling settings and the seed. A key holds all
of them; a file whose key differs, that cannot be read, or that holds the wrong number of rows is regenerated,
with a log line saying why. Rows appear whole or not at all (written to a temporary file, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from alignlab.data.sources import strict_jsonl
from alignlab.errors import DataError

log = logging.getLogger(__name__)


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's config and a sample of its weights: a different model gets another cache.

    The config's ``_name_or_path`` is left out: it is where the weights were read from (for a GGUF model, a cache
    folder named after the file's modification time), so the same model installed on another machine would
    otherwise get another fingerprint and miss a committed cache. LoRA adapter weights are left out too, so the
    base model under a disabled adapter (a reference) keeps one fingerprint while the adapter trains."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        fields = {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    params = [p for name, p in model.named_parameters() if "lora_" not in name]
    for param in params[:: max(1, len(params) // 8)]:
        digest.update(param.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class AnswerCache:
    """``get(key, expected)`` → rows or ``None``; ``put(key, rows)`` → path. ``key`` is a JSON-able dict with a
    ``model`` (fingerprint) and a ``name`` (what the rows are, e.g. a condition), which name the file."""

    def __init__(self, root: str | Path, what: str = "answers") -> None:
        self.root, self.what = Path(root).expanduser(), what

    def paths(self, key: dict[str, Any]) -> tuple[Path, Path]:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        stem = self.root / key["model"] / f"{key['name']}-{digest}"
        return stem.with_suffix(".jsonl"), stem.with_suffix(".key.json")

    def get(self, key: dict[str, Any], expected: int) -> list[dict[str, Any]] | None:
        rows_path, key_path = self.paths(key)
        if not rows_path.exists():
            return None
        try:
            if json.loads(key_path.read_text()) != key:
                log.warning("%s cache %s was made by something else: regenerating", self.what, rows_path)
                return None
            rows = [row for _, row in strict_jsonl(rows_path)]
        except (OSError, json.JSONDecodeError, DataError) as e:
            log.warning("%s cache %s is unreadable (%s): regenerating", self.what, rows_path, e)
            return None
        if len(rows) != expected:
            log.warning("%s cache %s has %d rows, expected %d (interrupted?): regenerating", self.what, rows_path,
                        len(rows), expected)
            return None
        log.info("%s reused from %s", self.what, rows_path)
        return rows

    def put(self, key: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
        rows_path, key_path = self.paths(key)
        rows_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = rows_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        key_path.write_text(json.dumps(key, sort_keys=True))
        tmp.replace(rows_path)
        return rows_path
