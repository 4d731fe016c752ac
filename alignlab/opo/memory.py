"""The rule memory: norms as text, loaded from JSONL or a folder of Markdown/text files, editable in place.

Retrievers subscribe to the memory and are told of every add, edit and removal, so an index follows the memory
without being rebuilt from scratch where the retriever allows it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.data.sources import strict_jsonl
from alignlab.errors import DataError

TEXT_SUFFIXES = (".md", ".txt")


@dataclass(frozen=True)
class Rule:
    id: str
    text: str
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


Listener = Callable[[str, Rule | None, Rule | None], None]  # (event, old, new); event: add | edit | remove


class RuleMemory:
    """Rules by id, in insertion order. ``subscribe(listener)`` reports every change to an index."""

    def __init__(self, rules: list[Rule] | None = None, origin: str = "<memory>") -> None:
        self.origin = origin
        self._rules: dict[str, Rule] = {}
        self._listeners: list[Listener] = []
        for rule in rules or []:
            self.add(rule)

    # --- reading ----------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> RuleMemory:
        """From a JSONL file (``id``, ``text``, optional ``source`` and ``metadata``) or a folder of ``.md``/``.txt``
        files (one rule per file; id = file name without suffix; metadata from ``key: value`` lines in a leading
        ``---`` block). Bad rows are errors naming the file and line: a norm silently missing changes answers."""
        path = Path(path)
        if path.is_dir():
            memory = cls(origin=str(path))
            for file in sorted(p for p in path.iterdir() if p.suffix in TEXT_SUFFIXES):
                memory.add(_rule_from_text_file(file))
        elif path.is_file():
            memory = cls(origin=str(path))
            for where, row in strict_jsonl(path):
                memory.add(_rule_from_row(row, where), where=where)
        else:
            raise DataError(f"rule memory {path}: no such file or folder")
        if not len(memory):
            raise DataError(f"rule memory {path} holds no rules")
        return memory

    def __len__(self) -> int:
        return len(self._rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(list(self._rules.values()))

    def __contains__(self, rule_id: str) -> bool:
        return rule_id in self._rules

    def __getitem__(self, rule_id: str) -> Rule:
        try:
            return self._rules[rule_id]
        except KeyError:
            raise DataError(f"{self.origin}: no rule with id {rule_id!r}") from None

    @property
    def rules(self) -> list[Rule]:
        return list(self._rules.values())

    # --- changing ---------------------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _notify(self, event: str, old: Rule | None, new: Rule | None) -> None:
        for listener in self._listeners:
            listener(event, old, new)

    def add(self, rule: Rule, where: str | None = None) -> None:
        if rule.id in self._rules:
            raise DataError(f"{where or self.origin}: duplicate rule id {rule.id!r}")
        if not rule.text.strip():
            raise DataError(f"{where or self.origin}: rule {rule.id!r} has empty text")
        self._rules[rule.id] = rule
        self._notify("add", None, rule)

    def edit(self, rule_id: str, text: str | None = None, **changes: Any) -> Rule:
        """Replace a rule's text (and/or ``source``, ``metadata``); returns the new rule."""
        old = self[rule_id]
        new = Rule(rule_id, text if text is not None else old.text, changes.get("source", old.source),
                   changes.get("metadata", old.metadata))
        if not new.text.strip():
            raise DataError(f"{self.origin}: edit would leave rule {rule_id!r} empty")
        self._rules[rule_id] = new
        self._notify("edit", old, new)
        return new

    def remove(self, rule_id: str) -> Rule:
        old = self[rule_id]
        del self._rules[rule_id]
        self._notify("remove", old, None)
        return old

    def save(self, path: str | Path) -> None:
        with Path(path).open("w", encoding="utf-8") as f:
            for rule in self:
                f.write(json.dumps({"id": rule.id, "text": rule.text, "source": rule.source,
                                    "metadata": rule.metadata}, ensure_ascii=False) + "\n")


def _rule_from_row(row: dict[str, Any], where: str) -> Rule:
    for key in ("id", "text"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise DataError(f"{where}: missing or empty '{key}'")
    metadata = row.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise DataError(f"{where}: 'metadata' must be an object")
    return Rule(row["id"], row["text"].strip(), str(row.get("source") or ""), metadata)


def _rule_from_text_file(file: Path) -> Rule:
    text, metadata = file.read_text(encoding="utf-8").strip(), {}
    if text.startswith("---"):
        header, _, body = text[3:].partition("\n---")
        for number, line in enumerate(header.strip().splitlines(), start=2):
            key, sep, value = line.partition(":")
            if not sep:
                raise DataError(f"{file}:{number}: metadata lines are 'key: value'")
            metadata[key.strip()] = value.strip()
        text = body.strip()
    return Rule(file.stem, text, str(metadata.pop("source", file.name)), metadata)
