"""Prompt datasets (online and counterfactual pairs start from prompts alone), read with the offline data's rules.

Rows need a ``prompt`` (text or a list of messages); other columns travel along as ``meta`` (with the original
prompt under ``meta["prompt"]``). Bad rows are skipped and counted, or stop the run, as for offline pairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from alignlab.data.pairs import BadRow, Messages, PairTokenizer
from alignlab.data.sources import Skipped, load_records
from alignlab.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class PromptExample:
    example_id: int
    where: str
    prompt_ids: list[int]
    question: str
    meta: dict[str, Any] = field(default_factory=dict)


def question_text(prompt: str | Messages) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt if m["role"] == "user")


def read_prompts(source: str, split: str, prompt_tokenizer: PairTokenizer, prompt_key: str = "prompt",
                 on_bad_row: str = "skip", max_bad_fraction: float = 0.05) -> tuple[list[PromptExample], dict]:
    """Prompts of ``source`` tokenized with the generation prompt, and the report of skipped rows."""
    records = load_records(source, split)
    if not records:
        raise DataError(f"{source}: the dataset is empty")
    if not any(r.row and prompt_key in r.row for r in records):
        raise DataError(f"{source}: missing column '{prompt_key}'; set data.prompt_key")
    skipped, prompts = Skipped(total=len(records)), []
    for record in records:
        try:
            if record.problem:
                raise BadRow(record.problem)
            prompt = record.row.get(prompt_key)
            if not prompt or (isinstance(prompt, str) and not prompt.strip()):
                raise BadRow("empty prompt")
            if not isinstance(prompt, (str, list)):
                raise BadRow(f"'{prompt_key}' is neither text nor a list of messages")
            ids = prompt_tokenizer.prompt_ids(prompt)
            limit = prompt_tokenizer.max_prompt_length
            if len(ids) > limit:
                if prompt_tokenizer.overlong_prompt == "error":
                    raise DataError(f"{record.where}: prompt longer than max_prompt_length={limit} "
                                    f"({len(ids)} tokens)")
                if prompt_tokenizer.overlong_prompt == "skip":
                    raise BadRow(f"prompt longer than max_prompt_length={limit}")
                ids = ids[-limit:]
                prompt_tokenizer.truncated_prompts += 1
            meta = {**{k: v for k, v in record.row.items() if k != prompt_key}, "prompt": prompt}
            prompts.append(PromptExample(len(prompts), record.where, ids, question_text(prompt), meta))
        except BadRow as e:
            if on_bad_row == "error":
                raise DataError(f"{record.where}: {e}") from None
            skipped.add(str(e), record.where)
    if skipped.count:
        log.warning(skipped.summary(source))
        if skipped.count > max_bad_fraction * len(records):
            raise DataError(f"{skipped.summary(source)}; more than data.max_bad_fraction={max_bad_fraction}")
    return prompts, skipped.as_dict()
