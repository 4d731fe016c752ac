"""Counterfactual DPO's own evaluation: how often the trained policy shows the behaviour on the plain prompt, and
a capability check the behaviour training should leave alone. Called through
:meth:`CounterfactualDataModule.evaluate`; every answer is also written as a record."""

from __future__ import annotations

import random
import statistics
from typing import Any

import torch

from alignlab.answer_cache import AnswerCache
from alignlab.data.pairs import PreferencePair
from alignlab.policy_vs_reference import reference_answer_cache, reference_answers
from alignlab.records import Recorder
from alignlab.reference import Reference
from alignlab.sampling import Sampling, generate


def behavior_rates(policy, reference: Reference, datamodule, sampling: Sampling,
                   recorder: Recorder | None = None, num_prompts: int | None = None,
                   n_samples: int = 1, cache: AnswerCache | None = None) -> dict[str, Any]:
    """Behaviour rate on held-out prompts: the policy and the base model on the training prompt, and the base
    model on the prompt that elicits the behaviour (the encouraging instruction; for instruction negation, the
    prompt without the inappropriate instruction): the upper bound the policy should move toward.

    ``n_samples`` answers per prompt and condition (``generate.n_samples``), one record each (``sample`` 0 ..
    n_samples-1): one answer per prompt makes a rate that is mostly sampling noise at a small number of prompts.
    A rate is the mean over prompts of each prompt's mean over its samples (every prompt has ``n_samples``, so
    this is also the mean over all answers)."""
    measure = datamodule.behavior.measure
    held_out = datamodule.examples("val")[:num_prompts]
    target = datamodule.pairing.elicits
    tokenize = datamodule.pair_tokenizer.prompt_ids
    elicited = [tokenize(datamodule.messages([m for m in e.meta["prompt"] if m["role"] == "user"], target))
                for e in held_out]
    trained_on = [e.prompt_ids for e in held_out]
    owners = [e for e in held_out for _ in range(n_samples)]  # prompt-major, as the prompts below
    result: dict[str, Any] = {"behavior": datamodule.behavior.name, "variant": datamodule.variant,
                              "num_prompts": len(held_out), "n_samples": n_samples}
    rows = []
    for name, prompt_ids, use_reference in (("policy", trained_on, False), ("reference", trained_on, True),
                                            (f"reference_{target}", elicited, True)):
        prompts = [p for p in prompt_ids for _ in range(n_samples)]
        if use_reference:  # the base model's answers are the same for every variant and run: sampled once
            gens = reference_answers(reference, datamodule.tokenizer, prompts, sampling,
                                     cache or reference_answer_cache())
        else:
            gens = generate(policy, datamodule.tokenizer, prompts, sampling, progress=f"sampling ({name})")
        result[f"{name}/mean_length"] = statistics.fmean(len(g.token_ids) for g in gens)
        measures = [measure(g.text) for g in gens] if measure is not None else [None] * len(gens)
        if measure is not None:
            per_prompt = [statistics.fmean(measures[i: i + n_samples]) for i in range(0, len(measures), n_samples)]
            result[f"{name}/behavior_rate"] = statistics.fmean(per_prompt)
        result.setdefault("examples", []).append({"condition": name, "answer": gens[0].text})
        rows += [{"prompt_id": e.prompt_id, "prompt": e.question, "arm": name, "sample": i % n_samples,
                  "answer": g.text, "length": len(g.token_ids), "finished": g.finished, "measure": m}
                 for i, (e, g, m) in enumerate(zip(owners, gens, measures, strict=True))]
    if recorder is not None:
        recorder.write("behavior", rows)
    return result


def fact_minimal_pairs(rows: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """A true and a false statement of the same form for every ``short_facts`` row: ``chosen`` with its ``answer``
    (last occurrence) replaced by a wrong one. A number becomes a near miss (the answer plus or minus 1, 2 or 10,
    kept positive), a word another row's answer of the same category ("The capital of Greece is Athens." vs "...
    is Warsaw."). The two differ in one slot and nothing else, so preferring the true one cannot come from length
    or style."""
    rng = random.Random(seed)
    by_category: dict[str, list[str]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row["answer"])
    out = []
    for i, row in enumerate(rows):
        answer, true = row["answer"], row["chosen"]
        if answer.lstrip("-").isdigit():
            wrong = str(max(int(answer) + rng.choice([-10, -2, -1, 1, 2, 10]), 0))
            wrong = wrong if wrong != answer else str(int(answer) + 1)
        else:
            others = sorted({a for a in by_category[row["category"]] if a.lower() != answer.lower()})
            if not others:
                continue
            wrong = rng.choice(others)
        head, _, tail = true.rpartition(answer)
        out.append({"prompt_id": f"short_facts:{i}", "question": row["prompt"], "true": true,
                    "false": f"{head}{wrong}{tail}", "category": row["category"]})
    return out


@torch.no_grad()
def capability(policy, reference: Reference, datamodule, recorder: Recorder | None = None,
               batch_size: int = 16) -> dict[str, Any]:
    """A capability check that the behaviour training should leave alone and that a change of answer format
    cannot move: on all 302 bundled ``short_facts`` questions, asked the way the policy was trained (the plain
    prompt), does the model give the true statement a higher log-probability than a false one of the same form
    (:func:`fact_minimal_pairs`)? Scored for the policy and the base model on the same pairs (one record each,
    ``correct`` and the log-probability ``margin``), so the two are paired."""
    from alignlab.data.offline import bundled_path
    from alignlab.data.sources import strict_jsonl
    from alignlab.logprobs import pair_logps

    pairs = fact_minimal_pairs([row for _, row in strict_jsonl(bundled_path("short_facts"))])
    tokenize = datamodule.prompts.pair_tokenizer(datamodule.tokenizer, max_response_length=64)  # whole statements
    tokenized = [tokenize(PreferencePair(datamodule.training_prompt(p["question"]), p["true"], p["false"], {}), i,
                          p["prompt_id"]) for i, p in enumerate(pairs)]
    margins: dict[str, list[float]] = {"policy": [], "reference": []}
    for start in range(0, len(tokenized), batch_size):
        batch = datamodule.collate(tokenized[start: start + batch_size])
        for arm in margins:
            if arm == "reference":
                with reference.as_model() as model:
                    logps = pair_logps(model, batch.to(next(model.parameters()).device))
            else:
                logps = pair_logps(policy, batch.to(next(policy.parameters()).device))
            margins[arm] += (logps.chosen - logps.rejected).tolist()
    result: dict[str, Any] = {"num_questions": len(pairs)}
    rows = []
    for arm, values in margins.items():
        result[f"{arm}/correct"] = statistics.fmean(m > 0 for m in values)
        rows += [{"prompt_id": p["prompt_id"], "prompt": p["question"], "arm": arm, "sample": 0,
                  "answer": p["true"], "false_answer": p["false"], "category": p["category"],
                  "correct": float(m > 0), "margin": m} for p, m in zip(pairs, values, strict=True)]
    if recorder is not None:
        recorder.write("capability", rows)
    return result
