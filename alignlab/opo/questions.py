"""Multiple-choice questions about rules: reading (with row-level errors), and the query a retriever sees."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.data.sources import read_jsonl
from alignlab.errors import DataError

LETTERS = "ABCDEFGH"


@dataclass
class MCQuestion:
    """``options`` in their stored order; ``answer`` is the index of the correct one; ``rule_ids`` the gold rules."""

    id: str
    question: str
    options: list[str]
    answer: int
    rule_ids: list[str]
    source: str = "human"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def letter(self) -> str:
        return LETTERS[self.answer]

    def query(self) -> str:
        """What a retriever is asked: the stem plus its options (they name what the question is about)."""
        return " ".join([self.question, *self.options])

    def to_row(self) -> dict[str, Any]:
        return {"id": self.id, "question": self.question, "options": self.options, "answer": self.letter,
                "rule_ids": self.rule_ids, "source": self.source, **({"meta": self.meta} if self.meta else {})}


def parse_question(row: Any, where: str, known_rules: set[str] | None = None) -> MCQuestion:
    """One question row, checked; errors name ``where`` (file:line) and the field."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a question row must be a JSON object")
    for key in ("id", "question", "answer"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise DataError(f"{where}: missing or empty '{key}'")
    options = row.get("options")
    if not isinstance(options, list) or not all(isinstance(o, str) and o.strip() for o in options):
        raise DataError(f"{where}: 'options' must be a list of non-empty strings")
    if not 2 <= len(options) <= len(LETTERS):
        raise DataError(f"{where}: {len(options)} options; 2 to {len(LETTERS)} are supported")
    if len({o.strip().lower() for o in options}) != len(options):
        raise DataError(f"{where}: two options are the same")
    letter = row["answer"].strip().upper()
    valid = LETTERS[: len(options)]
    if len(letter) != 1 or letter not in valid:
        raise DataError(f"{where}: answer {row['answer']!r} is not among the options' letters {', '.join(valid)}")
    rule_ids = row.get("rule_ids") or []
    if not isinstance(rule_ids, list) or not rule_ids:
        raise DataError(f"{where}: 'rule_ids' must list the gold rule(s)")
    if known_rules is not None and (unknown := [r for r in rule_ids if r not in known_rules]):
        raise DataError(f"{where}: rule_ids {unknown} are not in the rule memory")
    return MCQuestion(row["id"], row["question"].strip(), [o.strip() for o in options], valid.index(letter),
                      list(rule_ids), str(row.get("source") or "human"), dict(row.get("meta") or {}))


def load_questions(path: str | Path, known_rules: set[str] | None = None,
                   on_bad_row: str = "error") -> tuple[list[MCQuestion], dict[str, Any]]:
    """Questions of a JSONL file and a report of skipped rows (``on_bad_row``: ``error`` stops at the first bad
    row naming file and line; ``skip`` counts it, with the reason, in the report)."""
    if on_bad_row not in ("error", "skip"):
        raise DataError(f"on_bad_row={on_bad_row!r} is not 'error' or 'skip'")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"questions {path}: no such file")
    questions, skipped, seen = [], [], set()
    for record in read_jsonl(path):
        where = record.where
        try:
            if record.problem:
                raise DataError(f"{where}: {record.problem}")
            question = parse_question(record.row, where, known_rules)
            if question.id in seen:
                raise DataError(f"{where}: duplicate question id {question.id!r}")
        except DataError as e:
            if on_bad_row == "error":
                raise
            skipped.append(str(e))
            continue
        seen.add(question.id)
        questions.append(question)
    if not questions:
        raise DataError(f"questions {path}: no usable questions" + (f" ({len(skipped)} bad rows)" if skipped else ""))
    return questions, {"path": str(path), "questions": len(questions), "skipped": len(skipped),
                       "skipped_rows": skipped[:20]}


def save_questions(questions: list[MCQuestion], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as f:
        for question in questions:
            f.write(json.dumps(question.to_row(), ensure_ascii=False) + "\n")
