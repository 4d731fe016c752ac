"""Offline preference pairs: a fixed dataset of (prompt, chosen, rejected), from a file or the hub.

The datamodule reads rows (:mod:`alignlab.data.sources`), validates them (:func:`alignlab.data.pairs.parse_row`),
tokenizes them TRL's way (:class:`alignlab.data.pairs.PairTokenizer`), splits off a validation set and serves
:class:`alignlab.data.collate.PreferenceBatch` es. A row that cannot be used is skipped and counted by reason
(``on_bad_row=skip``, the default, up to ``max_bad_fraction`` of the rows) or stops the run with its file and row
(``on_bad_row=error``); the counts are logged and written to the run's ``data_report.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Sampler

from alignlab.data.collate import PreferenceCollator
from alignlab.data.pairs import BadRow, PairTokenizer, TokenizedPair, parse_row
from alignlab.data.sources import Skipped, hub_splits, is_local, load_records
from alignlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BUNDLED = "short_facts"


def bundled_path(name: str = BUNDLED) -> str:
    from importlib.resources import files

    return str(files("alignlab.data") / "bundled" / f"{name}.jsonl")


def examples_done(trainer, batch_size: int) -> int:
    """Examples of the current epoch already trained on: non-zero only when resuming mid-epoch.

    Lightning restores its loop counters after building the dataloader but before iterating it, and on its own
    restarts the epoch's iteration from the first batch; skipping these keeps the data order exact.
    """
    if trainer is None:
        return 0
    done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
    if done and trainer.world_size > 1:
        log.warning("mid-epoch resume on %d devices restarts the epoch's data order", trainer.world_size)
        return 0
    return done * batch_size


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on ``(seed, epoch)``, so a resumed run sees the batches it would have seen.

    Lightning calls ``set_epoch`` at every epoch start. ``skip_examples`` is asked at the start of each pass how
    many examples of this epoch were already trained on (non-zero only when resuming mid-epoch); those are left out.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True,
                 skip_examples: Callable[[], int] | None = None) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.skip_examples = skip_examples
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = list(range(self.size))
        if self.shuffle:
            random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        skip = self.skip_examples() if self.skip_examples else 0
        return iter(order[skip:])

    def __len__(self) -> int:
        return self.size


class PairDataModule(pl.LightningDataModule):
    """Shared serving logic for any source of tokenized pairs; subclasses fill ``self.train_pairs``/``val_pairs``."""

    def __init__(self, tokenizer, batch_size: int = 4, eval_batch_size: int | None = None, seed: int = 0,
                 num_workers: int = 0, pad_to_multiple_of: int | None = None) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.collator = PreferenceCollator(tokenizer.pad_token_id, pad_to_multiple_of)
        self.train_pairs: list[TokenizedPair] = []
        self.val_pairs: list[TokenizedPair] = []
        self.report: dict[str, Any] = {}

    def loader(self, pairs, batch_size, sampler=None) -> DataLoader:
        return DataLoader(pairs, batch_size=batch_size, sampler=sampler, collate_fn=self.collator,
                          num_workers=self.num_workers, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        sampler = EpochShuffleSampler(len(self.train_pairs), self.seed, skip_examples=self._examples_done)
        return self.loader(self.train_pairs, self.batch_size, sampler)

    def _examples_done(self) -> int:
        return examples_done(getattr(self, "trainer", None), self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_pairs, self.eval_batch_size)

    def reference_dataloader(self) -> DataLoader:
        """Every pair once, in order: for precomputing reference log-probs."""
        return self.loader(self.train_pairs + self.val_pairs, self.eval_batch_size)

    @property
    def num_examples(self) -> int:
        return len(self.train_pairs) + len(self.val_pairs)

    @property
    def num_val_examples(self) -> int:
        return len(self.val_pairs)

    @property
    def fingerprint(self) -> str:
        """A hash of every pair's token ids, in id order: what precomputed reference log-probs belong to."""
        digest = hashlib.sha256()
        for pair in self.train_pairs + self.val_pairs:
            digest.update(repr((pair.prompt_ids, pair.chosen_ids, pair.rejected_ids)).encode())
        return digest.hexdigest()[:16]



class OfflinePreferenceDataModule(PairDataModule):
    """Preference pairs from a fixed dataset.

    Args:
        tokenizer: the policy's tokenizer (passed by the training entry point).
        path: a local ``.jsonl``/``.json``/``.parquet``/``.csv`` file or a hub dataset name.
        split, subset: the hub split and configuration to train on.
        val_path, val_split: a separate validation file or hub split; otherwise ``val_fraction`` of the
            training rows (a seeded split) is held out.
        prompt_key, chosen_key, rejected_key: column names.
        chat_template, system_prompt, max_prompt_length, max_response_length, overlong_prompt: see
            :class:`alignlab.data.pairs.PairTokenizer`.
        on_bad_row: ``skip`` (count and report) or ``error`` (stop at the first bad row, naming it).
        max_bad_fraction: with ``skip``, more bad rows than this fraction is an error (a wrong file, not noise).
        max_train_pairs, max_val_pairs: keep only the first N pairs (after the split), for quick runs.
    """

    def __init__(self, tokenizer, path: str, split: str = "train", subset: str | None = None,
                 val_path: str | None = None, val_split: str | None = None, val_fraction: float = 0.1,
                 prompt_key: str = "prompt", chosen_key: str = "chosen", rejected_key: str = "rejected",
                 chat_template: bool = True, system_prompt: str | None = None, max_prompt_length: int = 256,
                 max_response_length: int = 256, overlong_prompt: str = "truncate", on_bad_row: str = "skip",
                 max_bad_fraction: float = 0.05, max_train_pairs: int | None = None,
                 max_val_pairs: int | None = None, **serving: Any) -> None:
        super().__init__(tokenizer, **serving)
        if on_bad_row not in ("skip", "error"):
            raise ConfigError(f"data.on_bad_row={on_bad_row!r} is not 'skip' or 'error'")
        self.path, self.split, self.subset = path, split, subset
        self.val_path, self.val_split, self.val_fraction = val_path, val_split, val_fraction
        self.keys = dict(prompt_key=prompt_key, chosen_key=chosen_key, rejected_key=rejected_key)
        self.pair_tokenizer = PairTokenizer(tokenizer, chat_template, system_prompt, max_prompt_length,
                                            max_response_length, overlong_prompt)
        self.on_bad_row, self.max_bad_fraction = on_bad_row, max_bad_fraction
        self.max_train_pairs, self.max_val_pairs = max_train_pairs, max_val_pairs
        self._prepared = False

    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        val_source = self.val_path
        val_split = self.val_split
        if val_source is None and val_split is None and not is_local(self.path):
            splits = hub_splits(self.path, self.subset)
            val_split = next((s for s in ("test", "validation", "valid", "eval") if s in splits), None)
        if val_split is not None and val_source is None:
            if is_local(self.path):
                raise ConfigError(f"data.val_split={val_split!r} names a split of a hub dataset, but data.path is the "
                                  f"file {self.path}; give the validation file as data.val_path")
            val_source = self.path

        train = self._read(self.path, self.split)
        if val_source is not None:
            val = self._read(val_source, val_split or "train")
        else:
            order = list(range(len(train)))
            random.Random(self.seed).shuffle(order)
            n_val = max(1, round(self.val_fraction * len(train))) if self.val_fraction > 0 else 0
            held_out = set(order[:n_val])
            val = [p for i, p in enumerate(train) if i in held_out]
            train = [p for i, p in enumerate(train) if i not in held_out]
        self.train_pairs = train[: self.max_train_pairs] if self.max_train_pairs else train
        self.val_pairs = val[: self.max_val_pairs] if self.max_val_pairs else val
        # Dataset-wide ids in serving order: they index precomputed reference log-probs.
        self.train_pairs = [_with_id(p, i) for i, p in enumerate(self.train_pairs)]
        self.val_pairs = [_with_id(p, len(self.train_pairs) + i) for i, p in enumerate(self.val_pairs)]
        if not self.train_pairs:
            raise DataError(f"{self.path}: no usable training pairs")
        self.report.update(train_pairs=len(self.train_pairs), val_pairs=len(self.val_pairs),
                           truncated_prompts=self.pair_tokenizer.truncated_prompts,
                           truncated_responses=self.pair_tokenizer.truncated_responses)
        log.info("data: %d train / %d val pairs; %d prompts and %d responses truncated", len(self.train_pairs),
                 len(self.val_pairs), self.pair_tokenizer.truncated_prompts, self.pair_tokenizer.truncated_responses)
        self._prepared = True

    def _read(self, source: str, split: str) -> list[TokenizedPair]:
        records = load_records(source, split, self.subset)
        if not records:
            raise DataError(f"{source}: the dataset is empty")
        self._check_columns(source, records)
        skipped = Skipped(total=len(records))
        pairs = []
        for record in records:
            try:
                if record.problem:
                    raise BadRow(record.problem)
                pair = parse_row(record.row, **self.keys)
                pairs.append(self.pair_tokenizer(pair, len(pairs), record.where))  # ids are set after the split
            except BadRow as e:
                if self.on_bad_row == "error":
                    raise DataError(f"{record.where}: {e}") from None
                skipped.add(str(e), record.where)
        if skipped.count:
            log.warning(skipped.summary(source))
            if skipped.count > self.max_bad_fraction * len(records):
                raise DataError(f"{skipped.summary(source)}; that is more than data.max_bad_fraction="
                                f"{self.max_bad_fraction} of the rows")
        self.report.setdefault("skipped", {})[f"{source}[{split}]"] = skipped.as_dict()
        return pairs

    def _check_columns(self, source: str, records) -> None:
        """A column absent from every row is a wrong file or wrong ``*_key``: say so instead of skipping all."""
        rows = [r.row for r in records if r.row is not None]
        if not rows:
            return
        seen = set().union(*(r.keys() for r in rows))
        required = [self.keys["chosen_key"], self.keys["rejected_key"]]
        for key in required:
            if key not in seen:
                raise DataError(f"{source}: missing column '{key}' (columns: {sorted(seen)}); "
                                f"set data.{'chosen' if key == required[0] else 'rejected'}_key if it has another name")


def _with_id(pair: TokenizedPair, example_id: int) -> TokenizedPair:
    return dataclasses.replace(pair, example_id=example_id)

