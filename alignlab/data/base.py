"""The pair-source protocol every datamodule implements, and the serving logic they share.

A pair source turns a :class:`PromptSet` into :class:`PreferenceBatch` es and knows three things about itself
that generic code asks for, so that training, ``alignlab-eval`` and ``alignlab-generate`` follow one path and a new
pair source touches no generic file:

* :meth:`PairSource.examples`: its prompts of a split (held-out by default), by stable prompt ids;
* :meth:`PairSource.pair_loader`: its fixed pairs of a split, or ``None`` when pairs are made during training;
* :meth:`PairSource.evaluate`: any evaluation of its own beyond the generic one (counterfactual behaviour rates);
* :meth:`PairSource.export_rows`: its pairs as the rows of an offline dataset.

Pairs made by a model before training (counterfactual) or for export come from :meth:`PairSource.prepare`'s
``model`` outside a trainer, and from the training module's reference inside one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
from torch import nn
from torch.utils.data import DataLoader, Sampler

from alignlab.data.collate import PreferenceCollator
from alignlab.data.pairs import TokenizedPair
from alignlab.data.prompt_set import PromptExample, PromptSet, question_text
from alignlab.errors import ConfigError

log = logging.getLogger(__name__)
SPLITS = ("val", "train", "all")


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


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    return split


def choose_split(split: str, train: list, val: list) -> list:
    return {"val": val, "train": train, "all": train + val}[check_split(split)]


class PairSource(pl.LightningDataModule):
    """Serves ``train_items``/``val_items`` (pairs or prompts) through ``collate``; subclasses fill them in
    :meth:`setup`. See the module docstring for the protocol.

    Args:
        tokenizer: the policy's tokenizer (passed by the entry points).
        prompts: the :class:`PromptSet` the items come from.
        batch_size, eval_batch_size: items per training / validation batch.
        num_workers: DataLoader workers.
        seed: the order of training batches and the seeds of what a source samples (``data.seed``, the run's
            seed); null: the prompt set's seed. The prompt set's own seed decides its train/validation split only,
            so runs of several seeds can share one split and still differ in everything else.
    """

    def __init__(self, tokenizer, prompts: PromptSet, batch_size: int = 4, eval_batch_size: int | None = None,
                 num_workers: int = 0, seed: int | None = None) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.seed = prompts.seed if seed is None else seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.train_items: list = []
        self.val_items: list = []
        self.report: dict[str, Any] = {}
        self.initial_model: nn.Module | None = None

    # ----- the protocol ---------------------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> None:
        """Set up outside a trainer; ``model`` is the initial model, for sources that generate with one."""
        self.initial_model = model
        self.setup("validate")

    def examples(self, split: str = "val") -> list[PromptExample]:
        """The prompts of a split, once each, in a fixed order: what sampled evaluation answers."""
        raise NotImplementedError

    def pair_loader(self, split: str = "val") -> DataLoader | None:
        """Fixed pairs of a split (``all``: every pair once, in id order), or ``None`` when there are none."""
        return None

    def evaluate(self, policy: nn.Module, reference, sampling, recorder, num_prompts: int | None = None,
                 n_samples: int = 1, cache=None) -> dict[str, Any]:
        """Evaluation particular to this source (beyond pair metrics and policy-vs-reference samples), on at most
        ``num_prompts`` held-out prompts, ``n_samples`` answers each, sampled with ``sampling``; its answers go to
        ``recorder``; the reference's answers are kept in ``cache`` (an :class:`~alignlab.answer_cache.AnswerCache`;
        None: the alignlab cache)."""
        return {}

    def export_rows(self, model: nn.Module, split: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """``(rows, counts)``: this source's pairs of a split as rows of an offline dataset."""
        raise NotImplementedError

    @property
    def fingerprint(self) -> str | None:
        """What precomputed reference log-probs belong to; ``None`` for sources without fixed pairs."""
        return None

    # ----- serving --------------------------------------------------------------------------------------------
    def collate(self, items: Sequence) -> Any:
        raise NotImplementedError

    def loader(self, items: Sequence, batch_size: int, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(items, batch_size=batch_size, sampler=sampler, collate_fn=self.collate,
                          num_workers=self.num_workers, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        sampler = EpochShuffleSampler(len(self.train_items), self.seed, skip_examples=self._examples_done)
        return self.loader(self.train_items, self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_items, self.eval_batch_size)

    def _examples_done(self) -> int:
        return examples_done(getattr(self, "trainer", None), self.batch_size)

    @property
    def num_examples(self) -> int:
        return len(self.train_items) + len(self.val_items)

    @property
    def num_val_examples(self) -> int:
        return len(self.val_items)

    def generator_model(self):
        """The model that generates before training: :meth:`prepare`'s, else the training module's reference
        (at setup the policy is still the initial model), as a context manager yielding the network."""
        if self.initial_model is not None:
            return contextlib.nullcontext(self.initial_model)
        trainer = getattr(self, "trainer", None)
        module = trainer.lightning_module if trainer is not None else None
        if module is None:
            raise ConfigError(f"{type(self).__name__} generates with a model: run it through alignlab-train, "
                              "alignlab-eval or alignlab-generate")
        module.reference.to(trainer.strategy.root_device)  # setup() runs before Lightning moves the model
        if module.reference.can_sample:
            return module.reference.as_model()
        return contextlib.nullcontext(module.policy.to(trainer.strategy.root_device))


class FixedPairsSource(PairSource):
    """A source whose pairs exist before training (offline, counterfactual): ``train_items``/``val_items`` are
    :class:`TokenizedPair` s with dataset-wide ids, and reference log-probs can be precomputed for them."""

    def __init__(self, tokenizer, prompts: PromptSet, pad_to_multiple_of: int | None = None, **serving: Any) -> None:
        super().__init__(tokenizer, prompts, **serving)
        self.collator = PreferenceCollator(tokenizer.pad_token_id, pad_to_multiple_of)

    def collate(self, items: Sequence[TokenizedPair]):
        return self.collator(items)

    @property
    def train_pairs(self) -> list[TokenizedPair]:
        return self.train_items

    @property
    def val_pairs(self) -> list[TokenizedPair]:
        return self.val_items

    def set_pairs(self, train: list[TokenizedPair], val: list[TokenizedPair]) -> None:
        """Give the pairs dataset-wide ids in serving order: they index precomputed reference log-probs."""
        self.train_items = [dataclasses.replace(p, example_id=i) for i, p in enumerate(train)]
        self.val_items = [dataclasses.replace(p, example_id=len(train) + i) for i, p in enumerate(val)]

    def pair_loader(self, split: str = "val") -> DataLoader:
        return self.loader(choose_split(split, self.train_items, self.val_items), self.eval_batch_size)

    def examples(self, split: str = "val") -> list[PromptExample]:
        """Each distinct prompt of the split's pairs once (several pairs may share one), in pair order."""
        seen, out = set(), []
        for pair in choose_split(split, self.train_items, self.val_items):
            key = tuple(pair.prompt_ids)
            if key in seen:
                continue
            seen.add(key)
            prompt = pair.meta.get("prompt", "")
            out.append(PromptExample(pair.example_id, pair.where, pair.prompt_ids, question_text(prompt), pair.meta,
                                     pair.prompt_id))
        return out

    @property
    def fingerprint(self) -> str:
        """A hash of every pair's token ids, in id order: what precomputed reference log-probs belong to."""
        digest = hashlib.sha256()
        for pair in self.train_items + self.val_items:
            digest.update(repr((pair.prompt_ids, pair.chosen_ids, pair.rejected_ids)).encode())
        return digest.hexdigest()[:16]
