"""Where a datamodule's prompts come from, and the rules that turn rows into usable examples: one shape for all.

A :class:`PromptSet` (the ``data.prompts`` config node) names the source (a local file or a hub dataset), the
validation source or fraction, the prompt column, the chat-template and length rules and the bad-row policy. It
is read and split once, by :meth:`PromptSet.read`, whatever a row becomes: an offline pair, an online prompt, a
counterfactual prompt. Rows need a ``prompt`` (text or a list of messages); other columns travel along as
``meta`` (with the original prompt under ``meta["prompt"]``).

Every example gets a **stable prompt id**: the row's own ``id`` column if it has one, else its file name and line
(``short_facts.jsonl:17``) or hub row: the key that evaluation records are paired on across runs.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from alignlab.data.pairs import BadRow, Messages, PairTokenizer
from alignlab.data.sources import Record, Skipped, hub_splits, is_local, load_records
from alignlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)
T = TypeVar("T")
VALIDATION_SPLITS = ("test", "validation", "valid", "eval")


@dataclass
class PromptExample:
    """A prompt ready to sample from: ``prompt_ids`` are templated with the generation prompt."""

    example_id: int
    where: str
    prompt_ids: list[int]
    question: str
    meta: dict[str, Any] = field(default_factory=dict)
    prompt_id: str = ""


def question_text(prompt: str | Messages) -> str:
    """The user's words of a prompt (what a judge or a rater is shown)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt if m["role"] == "user")


def stable_prompt_id(record: Record) -> str:
    """The row's ``id`` column, else its location without the folder (the same on every machine)."""
    if record.row is not None and record.row.get("id") not in (None, ""):
        return str(record.row["id"])
    where = record.where
    return Path(where).name if "/" in where.split(" ")[0] and Path(where.split(" ")[0]).suffix else where


@dataclass
class PromptSet:
    """A dataset of prompts (and whatever else its rows carry) with its split and its rules.

    Args:
        path: a local ``.jsonl``/``.json``/``.parquet``/``.csv`` file or a hub dataset name.
        split, subset: the hub split and configuration to read.
        val_path, val_split: a separate validation file or hub split; a hub dataset's own ``test``/``validation``
            split is used when neither is given; otherwise ``val_fraction`` of the rows (a seeded split).
        prompt_key: the prompt column.
        chat_template, system_prompt, max_prompt_length, overlong_prompt: see
            :class:`alignlab.data.pairs.PairTokenizer`.
        on_bad_row: ``skip`` (count and report, up to ``max_bad_fraction`` of the rows) or ``error`` (stop at the
            first bad row, naming its file and row).
        max_train, max_val: keep only the first N examples of each side (after the split), for quick runs.
        seed: the validation split's shuffle.
    """

    path: str
    split: str = "train"
    subset: str | None = None
    val_path: str | None = None
    val_split: str | None = None
    val_fraction: float = 0.1
    prompt_key: str = "prompt"
    chat_template: bool = True
    system_prompt: str | None = None
    max_prompt_length: int = 256
    overlong_prompt: str = "truncate"
    on_bad_row: str = "skip"
    max_bad_fraction: float = 0.05
    max_train: int | None = None
    max_val: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.on_bad_row not in ("skip", "error"):
            raise ConfigError(f"data.prompts.on_bad_row={self.on_bad_row!r} is not 'skip' or 'error'")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.prompts.val_fraction={self.val_fraction} must be in [0, 1)")

    def pair_tokenizer(self, tokenizer, max_response_length: int = 256,
                       add_system_prompt: bool = True) -> PairTokenizer:
        """``add_system_prompt=False``: the caller's messages say their own system message, or have none on
        purpose (the chat template's default), so ``system_prompt`` is not added to them."""
        return PairTokenizer(tokenizer, self.chat_template, self.system_prompt if add_system_prompt else None,
                             self.max_prompt_length, max_response_length, self.overlong_prompt)

    # ----- reading and splitting ----------------------------------------------------------------------------
    def read(self, parse: Callable[[Record], T], report: dict[str, Any],
             required: Sequence[str] = ()) -> tuple[list[T], list[T]]:
        """``(train, val)``: every row parsed by ``parse`` (which raises :class:`BadRow` for an unusable row),
        bad rows skipped and counted in ``report["skipped"]`` or stopping the run, then split and capped.

        ``required``: columns that must appear in some row (a column absent from all is a wrong file or key)."""
        train_source, val_source = self._sources()
        train = self._read(*train_source, parse, report, required)
        if val_source is not None:
            val = self._read(*val_source, parse, report, required)
        else:
            order = list(range(len(train)))
            random.Random(self.seed).shuffle(order)
            n_val = max(1, round(self.val_fraction * len(train))) if self.val_fraction > 0 else 0
            held_out = set(order[:n_val])
            train, val = ([x for i, x in enumerate(train) if i not in held_out],
                          [x for i, x in enumerate(train) if i in held_out])
        train = train[: self.max_train] if self.max_train else train
        val = val[: self.max_val] if self.max_val else val
        if not train:
            raise DataError(f"{self.path}: no usable training examples")
        return train, val

    def read_prompts(self, pair_tokenizer: PairTokenizer, report: dict[str, Any]) -> tuple[list[PromptExample],
                                                                                           list[PromptExample]]:
        """Prompts tokenized with the generation prompt, split; example ids run over train then val."""

        def parse(record: Record) -> PromptExample:
            prompt = record.row.get(self.prompt_key)
            if not prompt or (isinstance(prompt, str) and not prompt.strip()):
                raise BadRow("empty prompt")
            if not isinstance(prompt, (str, list)):
                raise BadRow(f"'{self.prompt_key}' is neither text nor a list of messages")
            ids = pair_tokenizer.fit_prompt(pair_tokenizer.prompt_ids(prompt), record.where)
            meta = {**{k: v for k, v in record.row.items() if k != self.prompt_key}, "prompt": prompt}
            return PromptExample(0, record.where, ids, question_text(prompt), meta, stable_prompt_id(record))

        train, val = self.read(parse, report, required=(self.prompt_key,))
        for i, example in enumerate(train + val):
            example.example_id = i
        report["truncated_prompts"] = pair_tokenizer.truncated_prompts
        return train, val

    def _sources(self) -> tuple[tuple[str, str], tuple[str, str] | None]:
        """``((train source, split), (validation source, split) or None)``."""
        val_split = self.val_split
        if self.val_path is None and val_split is None and not is_local(self.path):
            val_split = next((s for s in VALIDATION_SPLITS if s in hub_splits(self.path, self.subset)), None)
        if self.val_path is not None:
            return (self.path, self.split), (self.val_path, val_split or "train")
        if val_split is not None:
            if is_local(self.path):
                raise ConfigError(f"data.prompts.val_split={val_split!r} names a split of a hub dataset, but "
                                  f"data.prompts.path is the file {self.path}; give the file as data.prompts.val_path")
            return (self.path, self.split), (self.path, val_split)
        return (self.path, self.split), None

    def _read(self, source: str, split: str, parse: Callable[[Record], T], report: dict[str, Any],
              required: Sequence[str]) -> list[T]:
        records = load_records(source, split, self.subset)
        if not records:
            raise DataError(f"{source}: the dataset is empty")
        _check_columns(source, records, required)
        skipped, items = Skipped(total=len(records)), []
        for record in records:
            try:
                if record.problem:
                    raise BadRow(record.problem)
                items.append(parse(record))
            except BadRow as e:
                if self.on_bad_row == "error":
                    raise DataError(f"{record.where}: {e}") from None
                skipped.add(str(e), record.where)
        if skipped.count:
            log.warning(skipped.summary(source))
            if skipped.count > self.max_bad_fraction * len(records):
                raise DataError(f"{skipped.summary(source)}; that is more than data.prompts.max_bad_fraction="
                                f"{self.max_bad_fraction} of the rows")
        report.setdefault("skipped", {})[f"{source}[{split}]"] = skipped.as_dict()
        return items


def _check_columns(source: str, records: list[Record], required: Sequence[str]) -> None:
    """A column absent from every row is a wrong file or a wrong ``*_key``: say so instead of skipping all."""
    rows = [r.row for r in records if r.row is not None]
    if not rows:
        return
    seen = set().union(*(r.keys() for r in rows))
    for key in required:
        if key not in seen:
            raise DataError(f"{source}: missing column '{key}' (columns: {sorted(seen)}); set the data config's "
                            f"*_key to the column's name")
