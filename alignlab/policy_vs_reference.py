"""Answers sampled from a policy and from its reference on the same prompts, scored side by side.

Used by ``alignlab-eval`` and by the periodic :class:`alignlab.callbacks.WinRateMonitor`: mean length, the share
of answers that ended, a Monte-Carlo KL estimate, a programmatic reward, and the win rate under an evaluator judge.
Every answer is also kept as a per-prompt record (:mod:`alignlab.records`), from which intervals and paired
comparisons are computed.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from typing import Any

from alignlab.answer_cache import AnswerCache, model_fingerprint
from alignlab.data.prompt_set import PromptExample, PromptSet
from alignlab.logprobs import sequence_logps
from alignlab.records import Recorder
from alignlab.reference import Reference
from alignlab.sampling import Generation, Sampling, generate


def held_out_prompts(datamodule, prompts: PromptSet | None = None, split: str = "val") -> list[PromptExample]:
    """The prompts a policy is compared with its reference on: the datamodule's own ``split`` (``prompts=None``),
    or the validation prompts of ``prompts``, a :class:`PromptSet` read with the datamodule's tokenizer, by their
    stable ids. A shared ``PromptSet`` scores arms trained on different data (offline pairs, online prompts,
    another file) on the same prompt ids, so their records pair; the monitor (``callbacks.win_rate.prompts``) and
    ``alignlab-eval`` (``generate.prompts``) both take one."""
    if prompts is None:
        return datamodule.examples(split)
    _, examples = prompts.read_prompts(prompts.pair_tokenizer(datamodule.tokenizer), {})
    return examples


def answer_logps(model, prompts: list[list[int]], gens: list[Generation], pad_id: int, eos_id: int,
                 batch_size: int = 16) -> list[float | None]:
    """``log p(answer | prompt)`` of each sampled answer (EOS included when it ended); None for an empty one."""
    answers = [g.token_ids + ([eos_id] if g.finished else []) for g in gens]
    return sequence_logps(model, prompts, answers, pad_id, batch_size)


def reference_answer_cache(root=None) -> AnswerCache:
    """Where reference answers are kept between monitoring steps and runs (``<alignlab cache>/reference_answers``
    unless ``root`` is given)."""
    from alignlab.models import cache_root

    return AnswerCache(root or cache_root() / "reference_answers", "reference answers")


def reference_answers(reference: Reference, tokenizer, prompts: list[list[int]], sampling: Sampling,
                      cache: AnswerCache | None = None) -> list[Generation]:
    """The reference's answers, sampled once per (reference weights, prompts, settings) and then reused: at every
    monitoring step and by every run that evaluates on the same prompts, which also pairs their comparisons."""
    with reference.as_model() as model:
        prompts_digest = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]
        key = {"model": model_fingerprint(model), "name": "reference", "prompts": prompts_digest,
               "sampling": sampling.as_dict(), "format": 1}
        cached = cache.get(key, len(prompts)) if cache is not None else None
        if cached is not None:
            return [Generation(r["text"], r["token_ids"], r["finished"]) for r in cached]
        gens = generate(model, tokenizer, prompts, sampling, progress="sampling (reference)")
    if cache is not None and sampling.seed is not None:  # unseeded answers are not reproducible: never cached
        cache.put(key, [{"text": g.text, "token_ids": g.token_ids, "finished": g.finished} for g in gens])
    return gens


def log_ratios(policy, reference: Reference, prompts: list[list[int]], gens: list[Generation], pad_id: int,
               eos_id: int, batch_size: int = 16) -> list[float | None]:
    """``log pi(y|x) - log pi_ref(y|x)`` of each of the policy's own sampled answers (None for an empty one): their
    mean is a Monte-Carlo estimate of KL(policy || reference) per answer, and kept per answer it gives that
    estimate an interval over prompts. With temperature != 1 the samples come from the tempered policy, so this
    estimates the divergence the sampled answers actually show."""
    mine = answer_logps(policy, prompts, gens, pad_id, eos_id, batch_size)
    with reference.as_model() as model:
        theirs = answer_logps(model, prompts, gens, pad_id, eos_id, batch_size)
    return [None if a is None else a - b for a, b in zip(mine, theirs, strict=True)]


def sample_and_rate(policy, reference: Reference, tokenizer, examples: list[PromptExample], sampling: Sampling,
                    reward=None, evaluator=None, n_samples: int = 1, recorder: Recorder | None = None,
                    evaluation: str = "eval", step: int | None = None,
                    cache: AnswerCache | None = None) -> dict[str, Any]:
    """``n_samples`` answers per example from ``policy`` and from ``reference`` (same seed and settings), compared.

    ``reward``: ``(question, answer, meta) -> Rating | None`` (e.g. :class:`AnswerRater`); ``evaluator``: a judge
    asked whether the policy's answer beats the reference's answer to the same prompt and sample index (it may
    differ from the training annotator). Records go to ``recorder`` under ``evaluation``. The reference's answers
    come from ``cache`` when the same reference, prompts and settings produced them before.
    """
    prompts = [e.prompt_ids for e in examples for _ in range(n_samples)]  # prompt-major
    owners = [e for e in examples for _ in range(n_samples)]
    outputs = {"policy": generate(policy, tokenizer, prompts, sampling, progress="sampling (policy)"),
               "reference": reference_answers(reference, tokenizer, prompts, sampling, cache)}
    result: dict[str, Any] = {"num_prompts": len(examples), "n_samples": n_samples}
    ratios = log_ratios(policy, reference, prompts, outputs["policy"], tokenizer.pad_token_id,
                        tokenizer.eos_token_id, sampling.batch_size or 16)
    known = [r for r in ratios if r is not None]
    result["policy/kl_to_reference"] = statistics.fmean(known) if known else 0.0
    ratings: dict[str, list] = {}
    for who, gens in outputs.items():
        result[f"{who}/mean_length"] = statistics.fmean(len(g.token_ids) for g in gens)
        result[f"{who}/finished"] = statistics.fmean(g.finished for g in gens)
        if reward is not None:
            ratings[who] = [reward(e.question, g.text, e.meta) for e, g in zip(owners, gens, strict=True)]
    if ratings and all(r is not None for r in ratings["policy"]):
        for who, rs in ratings.items():
            result[f"{who}/reward"] = statistics.fmean(r.reward for r in rs)
            result[f"{who}/correct"] = statistics.fmean(r.correct for r in rs)
            result[f"{who}/concise"] = statistics.fmean(r.concise for r in rs)
            result[f"{who}/filler"] = statistics.fmean(r.filler > 0 for r in rs)
        wins = [1.0 if a.reward > b.reward else 0.5 if a.reward == b.reward else 0.0
                for a, b in zip(ratings["policy"], ratings["reference"], strict=True)]
        result["win_rate_vs_reference"] = statistics.fmean(wins)
    verdicts = None
    if evaluator is not None:
        verdicts = evaluator([e.question for e in owners],
                             [(a.text, b.text) for a, b in zip(outputs["policy"], outputs["reference"], strict=True)],
                             [e.meta for e in owners])
        probs = [p for p in verdicts.prob_first if p is not None]
        result["judge/failures"] = float(len(owners) - len(probs))
        result["judge/wins"] = float(sum(p > 0.5 for p in probs))
        result["judge/ties"] = float(sum(p == 0.5 for p in probs))
        result["judge/losses"] = float(sum(p < 0.5 for p in probs))
        if probs:
            result["judge/win_rate"] = (result["judge/wins"] + 0.5 * result["judge/ties"]) / len(probs)
    result["examples"] = [{"prompt": e.question, "policy": a.text, "reference": b.text}
                          for e, a, b in list(zip(owners, outputs["policy"], outputs["reference"], strict=True))[:8]]
    if recorder is not None:
        recorder.write(evaluation, _rows(owners, n_samples, outputs, ratings, verdicts, ratios), step)
    return result


def _rows(owners, n_samples, outputs, ratings, verdicts, ratios) -> list[dict[str, Any]]:
    """One record per prompt, sample and arm; the policy's rows carry the evaluator's verdict and the answer's
    ``log_ratio`` (log pi - log pi_ref, the per-answer KL estimate)."""
    rows = []
    policy, reference = outputs["policy"], outputs["reference"]
    for i, example in enumerate(owners):
        for arm, gens, other in (("policy", policy, reference), ("reference", reference, policy)):
            rating = ratings[arm][i] if arm in ratings else None
            row = {"prompt_id": example.prompt_id, "prompt": example.question, "arm": arm, "sample": i % n_samples,
                   "answer": gens[i].text, "length": len(gens[i].token_ids), "finished": gens[i].finished,
                   "reference_answer": other[i].text if arm == "policy" else None,
                   "reference_length": len(other[i].token_ids) if arm == "policy" else None}
            if rating is not None:
                row.update(reward=rating.reward, correct=rating.correct,
                           reward_parts={"correct": rating.correct, "concise": rating.concise,
                                         "filler": rating.filler})
            if arm == "policy":
                row["log_ratio"] = ratios[i]
            if verdicts is not None and arm == "policy":
                row["verdict"] = verdicts.prob_first[i]
                row["verdict_orders"] = list(verdicts.orders[i]) if verdicts.orders else None
            rows.append(row)
    return rows
