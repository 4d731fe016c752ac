"""Online AI feedback (OAIF): pairs sampled from the current policy and labelled by a judge during training.

The datamodule serves batches of prompts. On the training device, in ``on_after_batch_transfer``, each prompt gets
two samples from the **current** policy (or, with ``sample_from=reference``, from the frozen initial model:
online but off-policy), without gradient; the judge picks the better one and the batch becomes an ordinary
:class:`PreferenceBatch`, so the training step is the same as offline DPO's.

Pairs the judge cannot label (failure), ties (``drop_ties``), pairs with an empty answer, and, with
``unfinished=drop``, pairs with an answer cut at ``max_new_tokens`` are dropped and counted; the counts travel in
the batch's ``stats`` and are logged under ``train/online/*`` and ``val/online/*``.

An annotator that keeps failing does not leave a run training on nothing: when more than
``max_judge_failure_fraction`` of the last ``judge_failure_window`` pairs it was asked about failed, the run stops
with a :class:`JudgeFailure` naming the judge and the last reply it could not read (:class:`JudgeHealth`). A judge
that raises one of :data:`alignlab.judges.base.JUDGE_FAULTS` costs that batch's pairs; any other exception is a bug
and propagates.

Training samples are seeded per batch, from the data seed, the number of training batches served so far and the
device's rank, never from the global random state: what a step samples depends only on the policy and its
position in the run, so a run resumed from a checkpoint (which restores the policy, the optimizer and Lightning's
batch counters; the prompt order follows from the seed and the epoch) samples exactly what the uninterrupted run
sampled, whatever else drew random numbers in between.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from alignlab.data.base import PairSource, choose_split
from alignlab.data.collate import PreferenceBatch, PreferenceCollator
from alignlab.data.pairs import TokenizedPair, tokenizer_fingerprint
from alignlab.data.prompt_set import PromptExample, PromptSet
from alignlab.errors import ConfigError, JudgeFailure
from alignlab.judges.base import JUDGE_FAULTS, Judge, Verdicts, runs_apart
from alignlab.padding import left_pad
from alignlab.sampling import Generation, Sampling, generate

log = logging.getLogger(__name__)
UNFINISHED = ("keep", "penalize", "drop")
# Among the per-step pair statistics, the per-batch means; the rest are counts (summed over batches and devices).
PER_BATCH_MEANS = ("mean_length", "position_consistency")


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


class JudgeHealth:
    """Whether each of the last ``window`` pairs the annotator was asked about failed, and why the last one did.

    It trips when the failures among them exceed ``max_fraction * window``. Before ``window`` pairs were judged the
    missing ones count as answered, so one unlucky first batch never stops a run, while an annotator that never
    answers usably stops it within ``window`` pairs. ``max_fraction=1`` never trips.
    """

    def __init__(self, max_fraction: float = 0.5, window: int = 64) -> None:
        if not 0 <= max_fraction <= 1:
            raise ConfigError(f"data.max_judge_failure_fraction={max_fraction} is not within [0, 1]")
        if window < 1:
            raise ConfigError(f"data.judge_failure_window={window} must be at least 1")
        self.max_fraction = max_fraction
        self.recent: deque[bool] = deque(maxlen=window)
        self.last_failure: str | None = None

    def record(self, verdicts: Verdicts) -> None:
        self.recent.extend(p is None for p in verdicts.prob_first)
        if verdicts.last_failure is not None:
            self.last_failure = verdicts.last_failure

    @property
    def failures(self) -> int:
        return sum(self.recent)

    def tripped(self) -> bool:
        return self.failures > self.max_fraction * self.recent.maxlen

    def error(self, judge: Judge) -> JudgeFailure:
        last = " ".join(self.last_failure.split()) if self.last_failure else "none reported"
        return JudgeFailure(f"judge {judge!r} failed on {self.failures} of the last {len(self.recent)} pairs it was "
                            f"asked about (data.max_judge_failure_fraction={self.max_fraction}, "
                            f"data.judge_failure_window={self.recent.maxlen}); last failure: {last}")

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "last_failure": self.last_failure}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent.clear()
        self.recent.extend(state["recent"])
        self.last_failure = state["last_failure"]


def batch_seed(*parts: int) -> int:
    """A seed for ``torch.manual_seed`` from integers (data seed, batches served, rank), well mixed: neighbouring
    batches or ranks never share a random stream."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def batches_served(trainer) -> int:
    """Training batches of this run served before the current one (across epochs; restored on resume).

    ``on_after_batch_transfer`` runs before Lightning counts the batch as ready, so this is the batch's index."""
    return trainer.fit_loop.epoch_loop.batch_progress.total.ready


class OnlinePairsDataModule(PairSource):
    """Prompts in, judged on-policy pairs out.

    Args:
        tokenizer: the policy's tokenizer.
        judge: a :class:`alignlab.judges.Judge`.
        prompts: the :class:`PromptSet` (``data.prompts``).
        sampling: how the two answers per prompt are sampled (``data.sampling``; ``batch_size: null`` samples a
            training batch's prompts, twice each, in one batch).
        sample_from: ``policy`` (on-policy, the paper's setting) or ``reference`` (online, off-policy).
        unfinished: an answer cut at ``max_new_tokens``: ``keep`` it as is, ``penalize`` it (it loses to a
            finished answer whatever the judge says, even when the judge failed; such pairs are counted as
            ``decided_by_unfinished``), or ``drop`` the pair.
        drop_ties: drop pairs the judge finds equally good (probability within ``tie_tolerance`` of 0.5).
        drop_inconsistent: drop pairs whose two orders a pairwise judge decided differently (position bias).
        max_judge_failure_fraction, judge_failure_window: stop the run when more than this share of the last
            ``judge_failure_window`` judged pairs failed (see :class:`JudgeHealth`).
        overlap_judge: sample a batch's prompts in ``judge_chunks`` parts and let the annotator label each part in
            a worker thread while the next part is sampled: worth it when the annotator waits on something other
            than this device (``auto`` turns it on for an endpoint, whose ``runs_elsewhere`` is true, and for a local
            judge whose ``device`` is not the one the policy samples on: an LLM judge on a second GPU). Every
            answer still comes from the policy of this step. Off, a batch is sampled in one call and then judged.
        judge_chunks: how many parts a batch is sampled in when overlapping (smaller sampling batches cost some
            throughput on a device that is bound by its matrix products at small batch sizes).
        batch_size, eval_batch_size: prompts per training / validation batch.
    """

    def __init__(self, tokenizer, judge: Judge, prompts: PromptSet, sampling: Sampling,
                 sample_from: str = "policy", unfinished: str = "penalize", drop_ties: bool = True,
                 tie_tolerance: float = 0.0, drop_inconsistent: bool = True, max_judge_failure_fraction: float = 0.5,
                 judge_failure_window: int = 64, overlap_judge: bool | str = "auto", judge_chunks: int = 2,
                 **serving: Any) -> None:
        super().__init__(tokenizer, prompts, **serving)
        if sample_from not in ("policy", "reference"):
            raise ConfigError(f"data.sample_from={sample_from!r} is not 'policy' or 'reference'")
        if unfinished not in UNFINISHED:
            raise ConfigError(f"data.unfinished={unfinished!r} is not one of {UNFINISHED}")
        self.judge, self.sampling = judge, sampling
        self.prompt_tokenizer = prompts.pair_tokenizer(tokenizer, max_response_length=sampling.max_new_tokens + 1)
        self.sample_from, self.unfinished = sample_from, unfinished
        self.drop_ties, self.tie_tolerance, self.drop_inconsistent = drop_ties, tie_tolerance, drop_inconsistent
        self.collator = PreferenceCollator(tokenizer.pad_token_id)
        self.judge_health = JudgeHealth(max_judge_failure_fraction, judge_failure_window)
        if overlap_judge not in (True, False, "auto"):
            raise ConfigError(f"data.overlap_judge={overlap_judge!r} is not true, false or auto")
        if judge_chunks < 1:
            raise ConfigError(f"data.judge_chunks={judge_chunks} must be at least 1")
        self.overlap_setting, self.chunks_when_overlapping = overlap_judge, judge_chunks
        # auto: decided again at each batch, once the sampling device is known (see runs_apart)
        self.set_overlap(bool(getattr(judge, "runs_elsewhere", False)) if overlap_judge == "auto" else overlap_judge)

    def set_overlap(self, overlap: bool) -> None:
        self.overlap_judge = overlap
        self.judge_chunks = self.chunks_when_overlapping if overlap else 1

    # ----- prompts ---------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_items:
            return
        self.train_items, self.val_items = self.prompts.read_prompts(self.prompt_tokenizer, self.report)
        self.report.update(train_prompts=len(self.train_items), val_prompts=len(self.val_items))

    @property
    def train_prompts(self) -> list[PromptExample]:
        return self.train_items

    @property
    def val_prompts(self) -> list[PromptExample]:
        return self.val_items

    def examples(self, split: str = "val") -> list[PromptExample]:
        return choose_split(split, self.train_items, self.val_items)

    def collate(self, examples: Sequence[PromptExample]) -> PromptBatch:
        ids, mask = left_pad([e.prompt_ids for e in examples], self.tokenizer.pad_token_id)
        return PromptBatch(ids, mask, torch.tensor([e.example_id for e in examples]),
                           [e.question for e in examples], [e.meta for e in examples])

    # ----- pairs on the device ---------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, PromptBatch) or self.trainer is None:
            return batch
        pairs = self.make_pairs(self.trainer.lightning_module, batch)
        self.check_judge(self.trainer.strategy)
        return pairs

    def check_judge(self, strategy=None) -> None:
        """Raise :class:`JudgeFailure` when the annotator failed too often (:class:`JudgeHealth`). Under several
        devices every rank decides together (one small all-reduce per batch), so no rank stops while the others
        wait for it in the next collective."""
        tripped = self.judge_health.tripped()
        anywhere = strategy.reduce_boolean_decision(tripped, all=False) if strategy is not None else tripped
        if tripped:
            raise self.judge_health.error(self.judge)
        if anywhere:
            raise JudgeFailure(f"judge {self.judge!r} failed too often on another device (see its error)")

    def state_dict(self) -> dict[str, Any]:
        return {"judge_health": self.judge_health.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "judge_health" in state_dict:
            self.judge_health.load_state_dict(state_dict["judge_health"])

    def _sampling_seed(self, module, batch: PromptBatch) -> int | None:
        """Validation answers are seeded by their prompts, so they do not vary between evaluations for reasons other
        than the policy; training answers by the batch's position in the run (see the module docstring). Outside a
        trainer, None: the global random state."""
        if not module.training:
            return self.seed + int(batch.example_id[0])
        if self.trainer is None:
            return None
        base = self.sampling.seed if self.sampling.seed is not None else self.seed
        return batch_seed(base, batches_served(self.trainer), self.trainer.global_rank)

    def _sampler_model(self, module):
        """The model this step's answers come from, as a context manager (the reference may be the disabled
        adapter of the policy)."""
        if self.sample_from == "policy":
            return contextlib.nullcontext(module.policy)
        if not module.reference.can_sample:
            raise ConfigError("data.sample_from=reference, but no reference model is kept (a reference-free loss?)")
        return module.reference.as_model()

    def make_pairs(self, module, batch: PromptBatch) -> PreferenceBatch:
        """Sample, judge and tokenize: the training batch for ``batch``'s prompts (see the module docstring)."""
        device = batch.prompt_ids.device
        if self.overlap_setting == "auto":
            self.set_overlap(runs_apart(self.judge, device))
        with self._sampler_model(module) as model:
            labelled, stats = self.label(model, batch, seed=self._sampling_seed(module, batch))
        kept = [TokenizedPair(p.example_id, "online", p.prompt_ids, _with_eos(p.chosen, self),
                              _with_eos(p.rejected, self)) for p in labelled]
        if not kept:
            return _empty_batch(device, stats)
        pairs = self.collator(kept)
        pairs.stats = stats
        return pairs.to(device)

    def label(self, model, batch: PromptBatch, seed: int | None = None) -> tuple[list[LabelledPair], dict]:
        """Two samples per prompt from ``model``, judged; returns the kept pairs and the counts of dropped ones.

        The batch is sampled in ``judge_chunks`` parts when the judge overlaps (the k-th part with seed + k), each
        part's pairs handed to the judge as soon as they exist; otherwise in one call, then judged."""
        prompts = batch.prompt_lists()
        sampling = self.sampling if seed is None else self.sampling.replace(seed=seed)
        firsts, seconds, usable, parts = [], [], [], []
        stats = {"pairs": float(len(prompts)), "judge_failures": 0.0, "ties": 0.0, "empty": 0.0, "identical": 0.0,
                 "inconsistent": 0.0, "unfinished_dropped": 0.0, "unfinished_answers": 0.0,
                 "decided_by_unfinished": 0.0}
        with self._judging() as submit:
            for k, (lo, hi) in enumerate(_chunks(len(prompts), self.judge_chunks)):
                part_sampling = sampling if k == 0 or sampling.seed is None else sampling.replace(seed=sampling.seed + k)
                doubled = [p for p in prompts[lo:hi] for _ in range(2)]  # [p0, p0, p1, p1, ...]
                samples = generate(model, self.tokenizer, doubled, part_sampling)
                firsts += samples[0::2]
                seconds += samples[1::2]
                # Nothing to learn from an empty answer (no text left once special tokens and spaces are gone) or
                # from two identical ones: dropped before the judge is asked, and counted apart.
                mine = []
                for i in range(lo, hi):
                    a, b = firsts[i], seconds[i]
                    if not (a.text and b.text):
                        stats["empty"] += 1
                    elif a.text == b.text:
                        stats["identical"] += 1
                    else:
                        mine.append(i)
                usable += mine
                parts.append(submit(self._judge, [batch.questions[i] for i in mine],
                                    [(firsts[i].text, seconds[i].text) for i in mine], [batch.metas[i] for i in mine]))
            verdicts = Verdicts.concat([part.result() for part in parts])
        lengths = [len(s.token_ids) for s in firsts + seconds]
        stats["mean_length"] = sum(lengths) / max(1, len(lengths))
        self.judge_health.record(verdicts)
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
                stats["decided_by_unfinished"] += 1  # not the annotator's label: counted, so a reader sees how many
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
        for source, count in verdicts.source_counts().items():  # e.g. an endpoint: log-probs or reply text
            stats[f"verdicts_from_{source}"] = float(count)
        consistent = [c for c in verdicts.consistent if c is not None]
        if consistent:
            stats["position_consistency"] = sum(consistent) / len(consistent)
        stats["kept"] = float(len(kept))
        return kept, stats

    @contextlib.contextmanager
    def _judging(self) -> Iterator[Callable[..., Future]]:
        """``submit(fn, *args)``: a future of ``fn(*args)``, run in a worker thread when the judge overlaps with
        sampling, else at once (so a batch judged in one part behaves exactly as a plain call)."""
        if not self.overlap_judge:
            def now(fn, *args) -> Future:
                future: Future = Future()
                future.set_result(fn(*args))
                return future

            yield now
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="alignlab-judge") as pool:
            yield pool.submit

    def _judge(self, questions: list[str], pairs: list[tuple[str, str]], metas: list[dict]) -> Verdicts:
        """The annotator's verdicts. A judge that raises one of :data:`JUDGE_FAULTS` (I/O, HTTP, an unreadable
        reply, memory) costs this batch's pairs (counted), not the run; any other exception (a ConfigError such as
        an endpoint refusing the API key, a TypeError in a judge's code) stops it: no later batch would fare better.
        """
        if not pairs:
            return Verdicts([])
        try:
            return self.judge(questions, pairs, metas)
        except JUDGE_FAULTS as e:
            log.warning("the annotator failed on %d pairs (%s: %s); they are counted as judge failures",
                        len(pairs), type(e).__name__, e)
            return Verdicts([None] * len(pairs), last_failure=f"{type(e).__name__}: {e}")

    # ----- export ---------------------------------------------------------------------------------------------
    def export_rows(self, model, split: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """Two answers per prompt from ``model`` (the initial model: OAIF's offline baseline), labelled by the judge;
        each row says whether each answer ended and how it was produced."""
        from tqdm.auto import tqdm

        self.setup("fit")
        prompts = self.examples(split)
        produced_by = {"sampling": self.sampling.as_dict(), "unfinished": self.unfinished, "seed": self.seed}
        vocabulary = tokenizer_fingerprint(self.tokenizer)
        rows, totals = [], {}
        for start in tqdm(range(0, len(prompts), self.batch_size), desc="sampling and judging pairs",
                          unit="batch", disable=None):
            labelled, stats = self.label(model, self.collate(prompts[start: start + self.batch_size]))
            self.check_judge()
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value
            for pair in labelled:
                # The prompt row's other columns travel along (e.g. a reference answer), never as the pair itself.
                meta = {k: v for k, v in pair.meta.items() if k not in ("prompt", "chosen", "rejected")}
                rows.append({**meta, "prompt": pair.meta.get("prompt", pair.question), "chosen": pair.chosen.text,
                             "rejected": pair.rejected.text, "judge_confidence": pair.confidence,
                             "chosen_finished": pair.chosen.finished, "rejected_finished": pair.rejected.finished,
                             # The sampled ids themselves, so an offline run trains on exactly these tokens.
                             "chosen_token_ids": _with_eos(pair.chosen, self),
                             "rejected_token_ids": _with_eos(pair.rejected, self), "tokenizer": vocabulary,
                             "produced_by": produced_by})
            log.info("%d / %d prompts, %d pairs kept", min(start + self.batch_size, len(prompts)), len(prompts),
                     len(rows))
        batches = -(-len(prompts) // self.batch_size)
        for key in PER_BATCH_MEANS:
            if key in totals:
                totals[key] /= batches
        return rows, totals


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges splitting ``n`` items into at most ``parts`` nearly equal consecutive parts."""
    parts = max(1, min(parts, n))
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False) if hi > lo] or [(0, 0)]


def _with_eos(generation: Generation, dm: OnlinePairsDataModule) -> list[int]:
    return generation.token_ids + ([dm.tokenizer.eos_token_id] if generation.finished else [])


def _empty_batch(device, stats) -> PreferenceBatch:
    empty = torch.zeros((0, 1), dtype=torch.long, device=device)
    return PreferenceBatch(empty, empty, empty, empty, empty, empty, torch.zeros(0, dtype=torch.long, device=device),
                           stats=stats)
