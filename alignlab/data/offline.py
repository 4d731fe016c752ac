"""Offline preference pairs: a fixed dataset of (prompt, chosen, rejected), from a file or the hub.

The datamodule reads its :class:`PromptSet` (:meth:`PromptSet.read`), validates each row
(:func:`alignlab.data.pairs.parse_row`), tokenizes it TRL's way (:class:`alignlab.data.pairs.PairTokenizer`) and
serves :class:`alignlab.data.collate.PreferenceBatch` es. A row that cannot be used is skipped and counted by reason
(``on_bad_row=skip``, up to ``max_bad_fraction`` of the rows) or stops the run with its file and row
(``on_bad_row=error``); the counts are logged and written to the run's ``data_report.json``.

Rows written by ``alignlab-generate`` say whether each answer ended (``chosen_finished``/``rejected_finished``); an
answer that was cut at the sampling cap is trained without an end-of-turn token, exactly as the online arm trains it.
They also carry the sampled token ids (``chosen_token_ids``/``rejected_token_ids``, with the vocabulary's hash under
``tokenizer``): under the same tokenizer those ids are trained as they are, so an offline pair is token for token
the pair the online arm would have trained on (text re-tokenized would differ at the end of turn and wherever
decoding and encoding do not round-trip). Under another tokenizer the text is tokenized as usual.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from alignlab.data.base import FixedPairsSource, choose_split
from alignlab.data.pairs import BadRow, TokenizedPair, parse_row, tokenizer_fingerprint
from alignlab.data.prompt_set import PromptSet, stable_prompt_id
from alignlab.data.sources import Record

log = logging.getLogger(__name__)

BUNDLED = "short_facts"
FINISHED_KEYS = {"chosen_ids": "chosen_finished", "rejected_ids": "rejected_finished"}


def bundled_path(name: str = BUNDLED) -> str:
    from importlib.resources import files

    return str(files("alignlab.data") / "bundled" / f"{name}.jsonl")


def cut_end_of_turn(ids: list[int], eos_id: int) -> list[int]:
    """A response's ids up to (not including) its first end-of-turn token: an answer that never ended."""
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


class OfflinePreferenceDataModule(FixedPairsSource):
    """Preference pairs from a fixed dataset.

    Args:
        tokenizer: the policy's tokenizer (passed by the training entry point).
        prompts: the :class:`PromptSet` (``data.prompts``): file or hub name, split, limits, bad-row policy.
        chosen_key, rejected_key: column names of the responses.
        max_response_length: longer responses keep their first tokens (counted).
        batch_size, eval_batch_size, num_workers, pad_to_multiple_of: serving.
    """

    def __init__(self, tokenizer, prompts: PromptSet, chosen_key: str = "chosen", rejected_key: str = "rejected",
                 max_response_length: int = 256, **serving: Any) -> None:
        super().__init__(tokenizer, prompts, **serving)
        self.keys = dict(prompt_key=prompts.prompt_key, chosen_key=chosen_key, rejected_key=rejected_key)
        self.pair_tokenizer = prompts.pair_tokenizer(tokenizer, max_response_length)
        self._prepared = False
        self._vocabulary_hash: str | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        train, val = self.prompts.read(self._parse, self.report,
                                       required=(self.keys["chosen_key"], self.keys["rejected_key"]))
        self.set_pairs(train, val)
        self.report.update(train_pairs=len(self.train_items), val_pairs=len(self.val_items),
                           truncated_prompts=self.pair_tokenizer.truncated_prompts,
                           truncated_responses=self.pair_tokenizer.truncated_responses)
        log.info("data: %d train / %d val pairs; %d prompts and %d responses truncated", len(self.train_items),
                 len(self.val_items), self.pair_tokenizer.truncated_prompts, self.pair_tokenizer.truncated_responses)
        self._prepared = True

    def _parse(self, record: Record) -> TokenizedPair:
        pair = parse_row(record.row, **self.keys)
        tokenized = self.pair_tokenizer(pair, 0, record.where)  # ids are set after the split
        if record.row.get("tokenizer") is not None and record.row["tokenizer"] == self._vocabulary():
            limit = self.pair_tokenizer.max_response_length
            chosen, rejected = list(record.row["chosen_token_ids"]), list(record.row["rejected_token_ids"])
            self.pair_tokenizer.truncated_responses += max(len(chosen), len(rejected)) > limit
            return dataclasses.replace(tokenized, chosen_ids=chosen[:limit], rejected_ids=rejected[:limit],
                                       meta={**tokenized.meta, "prompt_id": stable_prompt_id(record)})
        eos = self.tokenizer.eos_token_id
        cut = {field: cut_end_of_turn(getattr(tokenized, field), eos)
               for field, key in FINISHED_KEYS.items() if record.row.get(key) is False}
        if cut:
            tokenized = dataclasses.replace(tokenized, **cut)
            if tokenized.chosen_ids == tokenized.rejected_ids or not (tokenized.chosen_ids and tokenized.rejected_ids):
                raise BadRow("chosen and rejected are identical or empty once the unfinished ending is removed")
        return dataclasses.replace(tokenized, meta={**tokenized.meta, "prompt_id": stable_prompt_id(record)})

    def _vocabulary(self) -> str:
        if self._vocabulary_hash is None:
            self._vocabulary_hash = tokenizer_fingerprint(self.tokenizer)
        return self._vocabulary_hash

    def export_rows(self, model, split: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """The validated rows as they were read (text, not token ids), with their columns."""
        self.setup("fit")
        pairs = choose_split(split, self.train_items, self.val_items)
        rows = [{**p.meta, "chosen": self.tokenizer.decode(p.chosen_ids, skip_special_tokens=True).strip(),
                 "rejected": self.tokenizer.decode(p.rejected_ids, skip_special_tokens=True).strip()} for p in pairs]
        return rows, {"pairs": float(len(rows))}
