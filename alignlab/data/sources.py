"""Reading rows from a local file or a Hugging Face hub dataset, each row tagged with where it came from.

Local files are read by extension: ``.jsonl`` line by line (so a malformed line is reported with its line
number instead of a pyarrow traceback), ``.json`` (a list of rows, or an object with a ``data``/``rows`` list),
``.parquet`` and ``.csv``. Anything else that is not an existing path is taken as a hub name for
``datasets.load_dataset``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.errors import DataError

LOCAL_SUFFIXES = {".jsonl", ".json", ".parquet", ".csv"}


@dataclass
class Record:
    """One raw row and its location, e.g. ``data/train.jsonl:17`` (1-based line) or ``owner/name[train] row 3``."""

    where: str
    row: dict[str, Any] | None
    problem: str | None = None  # set when the row could not even be parsed


@dataclass
class Skipped:
    """Rows left out of a dataset, by reason; reported in the log and in the run's ``data_report.json``."""

    total: int = 0
    by_reason: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        self.by_reason.setdefault(reason, []).append(where)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.by_reason.values())

    def summary(self, name: str) -> str:
        parts = [f"{len(v)} {reason} (e.g. {', '.join(v[:3])})" for reason, v in sorted(self.by_reason.items())]
        return f"{name}: skipped {self.count} of {self.total} rows: " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "skipped": self.count,
                "by_reason": {k: {"count": len(v), "examples": v[:20]} for k, v in self.by_reason.items()}}


def is_local(path_or_name: str) -> bool:
    """A single local file (a folder is read like a hub dataset)."""
    path = Path(path_or_name).expanduser()
    return path.is_file() or (not path.is_dir() and path.suffix in LOCAL_SUFFIXES)


def load_records(path_or_name: str, split: str = "train", subset: str | None = None) -> list[Record]:
    """All rows of a local file or of one split of a hub dataset (or of a local folder laid out like one)."""
    if Path(path_or_name).expanduser().is_dir():
        return _load_hub(str(Path(path_or_name).expanduser()), split, subset)
    if is_local(path_or_name):
        return _load_local(Path(path_or_name).expanduser())
    return _load_hub(path_or_name, split, subset)


def hub_splits(name: str, subset: str | None = None) -> list[str]:
    import datasets

    try:
        return list(datasets.get_dataset_split_names(name, subset))
    except Exception as e:  # offline, unknown name: say which
        raise DataError(f"data.prompts.path={name!r}: its splits could not be listed: {type(e).__name__}: {e}") from e


def _load_local(path: Path) -> list[Record]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return list(read_jsonl(path))
    if suffix == ".json":
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
        if isinstance(payload, dict):
            payload = payload.get("data", payload.get("rows"))
        if not isinstance(payload, list):
            raise DataError(f"{path}: expected a list of rows (or an object with a 'data' list)")
        return [_record(f"{path} row {i}", row) for i, row in enumerate(payload)]
    if suffix in (".parquet", ".csv"):
        import pandas as pd

        try:
            frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path, keep_default_na=False)
        except Exception as e:  # pandas/pyarrow raise many types for a corrupt file
            raise DataError(f"{path}: cannot be read as {suffix[1:]} ({type(e).__name__}: {e})") from e
        return [_record(f"{path} row {i}", _plain(row)) for i, row in enumerate(frame.to_dict("records"))]
    raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {sorted(LOCAL_SUFFIXES)}")


def read_jsonl(path: str | Path) -> Iterator[Record]:
    """Rows of a JSONL file, each a :class:`Record` tagged ``<file>:<line>``; a malformed line or a non-object row
    comes back with its ``problem`` set (the caller skips it or stops, naming the place). The one JSONL reader."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield _record(where, json.loads(line))
            except json.JSONDecodeError as e:
                yield Record(where, None, f"malformed JSON ({e.msg})")


def strict_jsonl(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for each row of a JSONL file whose every row must be good (a rule memory, edits): a bad row
    is a :class:`DataError` naming its file and line."""
    for record in read_jsonl(path):
        if record.problem:
            raise DataError(f"{record.where}: {record.problem}")
        yield record.where, record.row


def _record(where: str, row: Any) -> Record:
    if not isinstance(row, dict):
        return Record(where, None, f"row is a {type(row).__name__}, not an object")
    return Record(where, row)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Parquet gives numpy arrays for list columns; turn them back into lists of dicts."""
    out = {}
    for key, value in row.items():
        if hasattr(value, "tolist"):
            value = value.tolist()
        out[key] = value
    return out


def _load_hub(name: str, split: str, subset: str | None) -> list[Record]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, subset, split=split)
    except Exception as e:  # offline, unknown name, unknown split: say which
        raise DataError(f"data.prompts.path={name!r} (split {split!r}) could not be loaded: {type(e).__name__}: {e}") from e
    return [_record(f"{name}[{split}] row {i}", row) for i, row in enumerate(dataset)]
