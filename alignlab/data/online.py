"""Online AI feedback (OAIF): pairs sampled from the current policy and labelled by a judge during training.

The datamodule serves batches of prompts. On the training device, in ``on_after_batch_transfer``, each prompt gets
two samples from the **current** policy (or, with ``sample_from=reference``, from the frozen initial model:
online but off-policy), without gradient; the judge picks the better one and the batch becomes an ordinary
:class:`PreferenceBatch`, so the training step is the same as offline DPO's.

Pairs the judge cannot label (failure), ties (``drop_ties``), pairs with an empty answer, and, with
``unfinished=drop``, pairs with an answer cut at ``max_new_tokens`` are dropped and counted; the counts travel in
the batch's ``stats`` and are logged under ``train/online/*`` and ``val/online/*``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from alignlab.data.collate import PreferenceBatch, PreferenceCollator, mask_rows, pad_rows
from alignlab.data.offline import EpochShuffleSampler, examples_done
from alignlab.data.pairs import PairTokenizer, TokenizedPair
from alignlab.data.prompts import PromptExample, read_prompts
from alignlab.errors import ConfigError, DataError
from alignlab.judges.base import Judge, Verdicts
from alignlab.sampling import Generation, generate

log = logging.getLogger(__name__)
UNFINISHED = ("keep", "penalize", "drop")


@dataclass
class LabelledPair:
    """A judged pair of samples; ``confidence`` is the judge's probability that ``chosen`` is better."""

    example_id: int
    prompt_ids: list[int]
    question: str
    meta: dict[str, Any]
    chosen: Generation
    rejected: Generation
    confidence: float


@dataclass
class PromptBatch:
    """``prompt_ids``, ``prompt_mask``: ``[B, P]`` left-padded; the rest per prompt."""

    prompt_ids: Tensor
    prompt_mask: Tensor
    example_id: Tensor
    questions: list[str]
    metas: list[dict[str, Any]]

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def prompt_lists(self) -> list[list[int]]:
        return [row[mask.bool()].tolist() for row, mask in zip(self.prompt_ids, self.prompt_mask, strict=True)]


class OnlinePairsDataModule(pl.LightningDataModule):
    """Prompts in, judged on-policy pairs out.

    Args:
        tokenizer: the policy's tokenizer.
        judge: a :class:`alignlab.judges.Judge`.
        path, split, val_path, val_fraction, prompt_key, chat_template, system_prompt, max_prompt_length,
            overlong_prompt, on_bad_row, max_bad_fraction: the prompt dataset, as for offline data.
        sample_from: ``policy`` (on-policy, the paper's setting) or ``reference`` (online, off-policy).
        temperature, top_p, max_new_tokens: sampling.
        unfinished: an answer cut at ``max_new_tokens``: ``keep`` it as is, ``penalize`` it (it loses to a
            finished answer whatever the judge says), or ``drop`` the pair.
        drop_ties: drop pairs the judge finds equally good (probability within ``tie_tolerance`` of 0.5).
        drop_inconsistent: drop pairs whose two orders a pairwise judge decided differently (position bias).
    """

    def __init__(self, tokenizer, judge: Judge, path: str, split: str = "train", val_path: str | None = None,
                 val_fraction: float = 0.1, prompt_key: str = "prompt", chat_template: bool = True,
                 system_prompt: str | None = None, max_prompt_length: int = 256, overlong_prompt: str = "truncate",
                 on_bad_row: str = "skip", max_bad_fraction: float = 0.05, batch_size: int = 4,
                 eval_batch_size: int | None = None, seed: int = 0, sample_from: str = "policy",
                 temperature: float = 0.9, top_p: float = 1.0, max_new_tokens: int = 64,
                 unfinished: str = "penalize", drop_ties: bool = True, tie_tolerance: float = 0.0,
                 drop_inconsistent: bool = True,
                 max_train_pairs: int | None = None, max_val_pairs: int | None = None) -> None:
        super().__init__()
        if sample_from not in ("policy", "reference"):
            raise ConfigError(f"data.sample_from={sample_from!r} is not 'policy' or 'reference'")
        if unfinished not in UNFINISHED:
            raise ConfigError(f"data.unfinished={unfinished!r} is not one of {UNFINISHED}")
        self.tokenizer, self.judge = tokenizer, judge
        self.path, self.split, self.val_path, self.val_fraction = path, split, val_path, val_fraction
        self.prompt_key = prompt_key
        self.prompt_tokenizer = PairTokenizer(tokenizer, chat_template, system_prompt, max_prompt_length,
                                              max_response_length=max_new_tokens + 1, overlong_prompt=overlong_prompt)
        self.on_bad_row, self.max_bad_fraction = on_bad_row, max_bad_fraction
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size or batch_size, seed
        self.sample_from, self.temperature, self.top_p = sample_from, temperature, top_p
        self.max_new_tokens, self.unfinished = max_new_tokens, unfinished
        self.drop_ties, self.tie_tolerance, self.drop_inconsistent = drop_ties, tie_tolerance, drop_inconsistent
        self.max_train_pairs, self.max_val_pairs = max_train_pairs, max_val_pairs
        self.collator = PreferenceCollator(tokenizer.pad_token_id)
        self.train_prompts: list[PromptExample] = []
        self.val_prompts: list[PromptExample] = []
        self.report: dict[str, Any] = {}

    # ----- prompts ---------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_prompts:
            return
        train = self._read(self.path, self.split)
        if self.val_path:
            val = self._read(self.val_path, "train")
        else:
            order = list(range(len(train)))
            random.Random(self.seed).shuffle(order)
            held_out = set(order[: max(1, round(self.val_fraction * len(train)))] if self.val_fraction > 0 else [])
            val = [p for i, p in enumerate(train) if i in held_out]
            train = [p for i, p in enumerate(train) if i not in held_out]
        self.train_prompts = train[: self.max_train_pairs] if self.max_train_pairs else train
        self.val_prompts = val[: self.max_val_pairs] if self.max_val_pairs else val
        for i, p in enumerate(self.train_prompts + self.val_prompts):
            p.example_id = i
        if not self.train_prompts:
            raise DataError(f"{self.path}: no usable prompts")
        self.report.update(train_prompts=len(self.train_prompts), val_prompts=len(self.val_prompts),
                           truncated_prompts=self.prompt_tokenizer.truncated_prompts)

    @property
    def num_val_examples(self) -> int:
        return len(self.val_prompts)

    def _read(self, source: str, split: str) -> list[PromptExample]:
        prompts, skipped = read_prompts(source, split, self.prompt_tokenizer, self.prompt_key, self.on_bad_row,
                                        self.max_bad_fraction)
        self.report.setdefault("skipped", {})[f"{source}[{split}]"] = skipped
        return prompts

    def _collate(self, examples: list[PromptExample]) -> PromptBatch:
        rows = [e.prompt_ids for e in examples]
        width = max(map(len, rows))
        return PromptBatch(pad_rows(rows, width, self.tokenizer.pad_token_id, left=True),
                           mask_rows(rows, width, left=True), torch.tensor([e.example_id for e in examples]),
                           [e.question for e in examples], [e.meta for e in examples])

    def train_dataloader(self) -> DataLoader:
        sampler = EpochShuffleSampler(len(self.train_prompts), self.seed,
                                      skip_examples=lambda: examples_done(getattr(self, "trainer", None),
                                                                          self.batch_size))
        return DataLoader(self.train_prompts, batch_size=self.batch_size, sampler=sampler, collate_fn=self._collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_prompts, batch_size=self.eval_batch_size, collate_fn=self._collate)

    # ----- pairs on the device ---------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, PromptBatch) or self.trainer is None:
            return batch
        return self.make_pairs(self.trainer.lightning_module, batch)

    def _sampler_model(self, module):
        if self.sample_from == "policy":
            return module.policy
        if getattr(module, "_reference", None) is not None:
            return module._reference
        if getattr(module, "reference_from_adapter", False):
            return module.policy  # sampled with its adapter disabled
        raise ConfigError("data.sample_from=reference, but no reference model is kept (a reference-free loss?)")

    def make_pairs(self, module, batch: PromptBatch) -> PreferenceBatch:
        """Sample, judge and tokenize: the training batch for ``batch``'s prompts (see the module docstring)."""
        # Validation answers are seeded by their prompts, so validation neither moves the training samples' random
        # stream nor varies between evaluations for reasons other than the policy.
        seed = None if module.training else self.seed + int(batch.example_id[0])
        labelled, stats = self.label(self._sampler_model(module), batch, disable_adapter=self._use_base(module),
                                     seed=seed)
        device = batch.prompt_ids.device
        kept = [TokenizedPair(p.example_id, "online", p.prompt_ids, _with_eos(p.chosen, self),
                              _with_eos(p.rejected, self)) for p in labelled]
        if not kept:
            return _empty_batch(device, stats)
        pairs = self.collator(kept)
        pairs.stats = stats
        return pairs.to(device)

    def _use_base(self, module) -> bool:
        return self.sample_from == "reference" and getattr(module, "reference_from_adapter", False)

    def label(self, model, batch: PromptBatch, disable_adapter: bool = False,
              seed: int | None = None) -> tuple[list[LabelledPair], dict]:
        """Two samples per prompt from ``model``, judged; returns the kept pairs and the counts of dropped ones."""
        prompts = batch.prompt_lists()
        doubled = [p for p in prompts for _ in range(2)]  # [p0, p0, p1, p1, ...]
        if disable_adapter:
            with model.disable_adapter():
                samples = self._generate(model, doubled, seed)
        else:
            samples = self._generate(model, doubled, seed)
        firsts, seconds = samples[0::2], samples[1::2]
        stats = {"pairs": float(len(prompts)), "judge_failures": 0.0, "ties": 0.0, "empty": 0.0, "identical": 0.0,
                 "inconsistent": 0.0, "unfinished_dropped": 0.0, "unfinished_answers": 0.0,
                 "mean_length": sum(len(s.token_ids) for s in samples) / max(1, len(samples))}
        # Nothing to learn from an empty answer (no text left once special tokens and spaces are gone) or from two
        # identical ones: dropped before the judge is asked, and counted apart.
        usable = []
        for i, (a, b) in enumerate(zip(firsts, seconds, strict=True)):
            if not (a.text and b.text):
                stats["empty"] += 1
            elif a.text == b.text:
                stats["identical"] += 1
            else:
                usable.append(i)
        verdicts = self._judge([batch.questions[i] for i in usable],
                               [(firsts[i].text, seconds[i].text) for i in usable], [batch.metas[i] for i in usable])
        consistent_flags = verdicts.consistent or [None] * len(usable)
        kept = []
        for i, prob, consistent in zip(usable, verdicts.prob_first, consistent_flags, strict=True):
            a, b = firsts[i], seconds[i]
            stats["unfinished_answers"] += (not a.finished) + (not b.finished)
            if self.unfinished == "drop" and not (a.finished and b.finished):
                stats["unfinished_dropped"] += 1
                continue
            if self.unfinished == "penalize" and a.finished != b.finished:
                prob = 1.0 if a.finished else 0.0  # decided by which answer ended, whatever the judge said
            elif prob is None:
                stats["judge_failures"] += 1
                continue
            elif self.drop_inconsistent and consistent is False:
                stats["inconsistent"] += 1  # the two orders disagreed: position bias, not a preference
                continue
            elif self.drop_ties and abs(prob - 0.5) <= self.tie_tolerance:
                stats["ties"] += 1
                continue
            chosen, rejected = (a, b) if prob >= 0.5 else (b, a)
            kept.append(LabelledPair(int(batch.example_id[i]), prompts[i], batch.questions[i], batch.metas[i],
                                     chosen, rejected, prob if prob >= 0.5 else 1 - prob))
        consistent = [c for c in verdicts.consistent if c is not None]
        if consistent:
            stats["position_consistency"] = sum(consistent) / len(consistent)
        stats["kept"] = float(len(kept))
        return kept, stats

    def _judge(self, questions: list[str], pairs: list[tuple[str, str]], metas: list[dict]) -> Verdicts:
        """The annotator's verdicts; a judge that raises costs this batch's pairs (counted), not the run.

        A ConfigError (e.g. an endpoint refusing the API key) still stops the run: no later batch would fare better.
        """
        if not pairs:
            return Verdicts([])
        try:
            return self.judge(questions, pairs, metas)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - any annotator fault, local model or remote
            log.warning("the annotator failed on %d pairs (%s: %s); they are counted as judge failures",
                        len(pairs), type(e).__name__, e)
            return Verdicts([None] * len(pairs))

    def _generate(self, model, prompts: list[list[int]], seed: int | None = None) -> list[Generation]:
        return generate(model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens,
                        temperature=self.temperature, top_p=self.top_p, batch_size=len(prompts), seed=seed)


def _with_eos(generation: Generation, dm: OnlinePairsDataModule) -> list[int]:
    return generation.token_ids + ([dm.tokenizer.eos_token_id] if generation.finished else [])


def _empty_batch(device, stats) -> PreferenceBatch:
    empty = torch.zeros((0, 1), dtype=torch.long, device=device)
    return PreferenceBatch(empty, empty, empty, empty, empty, empty, torch.zeros(0, dtype=torch.long, device=device),
                           stats=stats)
