"""Answers sampled from a policy and from its reference on the same prompts, scored side by side.

Used by ``alignlab-eval`` and by the periodic :class:`alignlab.callbacks.WinRateMonitor`: mean length, the share
of answers that ended, a Monte-Carlo KL estimate, a programmatic reward, and the win rate under an evaluator judge.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from alignlab.data.prompts import question_text
from alignlab.logprobs import response_logps
from alignlab.padding import mask_rows, pad_rows
from alignlab.sampling import Generation, generate


@torch.no_grad()
def kl_to_reference(policy, reference, prompts: list[list[int]], gens: list[Generation], pad_id: int, eos_id: int,
                    batch_size: int = 16) -> float:
    """Monte-Carlo estimate of KL(policy || reference) per answer: mean of ``log pi(y|x) - log pi_ref(y|x)`` over
    the policy's own samples (EOS included when the answer ended). With temperature != 1 the samples come from the
    tempered policy, so this is an estimate of the divergence the sampled answers actually show."""
    diffs = []
    for start in range(0, len(prompts), batch_size):
        chunk = [(p, g.token_ids + ([eos_id] if g.finished else [])) for p, g in
                 zip(prompts[start: start + batch_size], gens[start: start + batch_size], strict=True)]
        chunk = [(p, r) for p, r in chunk if r]
        if not chunk:
            continue
        p_width, r_width = max(len(p) for p, _ in chunk), max(len(r) for _, r in chunk)
        tensors = (pad_rows([p for p, _ in chunk], p_width, pad_id, left=True),
                   mask_rows([p for p, _ in chunk], p_width, left=True),
                   pad_rows([r for _, r in chunk], r_width, pad_id, left=False),
                   mask_rows([r for _, r in chunk], r_width, left=False))
        device = next(policy.parameters()).device
        tensors = tuple(t.to(device) for t in tensors)
        diffs += (response_logps(policy, *tensors) - response_logps(reference, *tensors)).tolist()
    return statistics.fmean(diffs) if diffs else 0.0


def sample_and_rate(policy, reference, tokenizer, pairs, gen_cfg, reward=None, evaluator=None) -> dict[str, Any]:
    """One answer per example from ``policy`` and from ``reference`` (same seed and settings), compared.

    ``pairs``: items with ``prompt_ids`` and ``meta`` (offline :class:`TokenizedPair` or online prompts).
    ``reward``: ``(question, answer, meta) -> Rating | None`` (e.g. :class:`AnswerRater`); ``evaluator``: a judge
    asked whether the policy's answer beats the reference's (it may differ from the training annotator).
    """
    pairs = pairs[: gen_cfg.num_prompts]
    prompts = [p.prompt_ids for p in pairs]
    options = dict(max_new_tokens=gen_cfg.max_new_tokens, temperature=gen_cfg.temperature, top_p=gen_cfg.top_p,
                   batch_size=gen_cfg.batch_size, seed=gen_cfg.get("seed", 0))
    outputs = {name: generate(model, tokenizer, prompts, progress=f"sampling ({name})", **options)
               for name, model in (("policy", policy), ("reference", reference))}
    result: dict[str, Any] = {"num_prompts": len(pairs)}
    result["policy/kl_to_reference"] = kl_to_reference(policy, reference, prompts, outputs["policy"],
                                                       tokenizer.pad_token_id, tokenizer.eos_token_id,
                                                       gen_cfg.batch_size)
    ratings: dict[str, list] = {}
    for who, gens in outputs.items():
        result[f"{who}/mean_length"] = statistics.fmean(len(g.token_ids) for g in gens)
        result[f"{who}/finished"] = statistics.fmean(g.finished for g in gens)
        if reward is not None:
            ratings[who] = [reward(_question(p), g.text, p.meta) for p, g in zip(pairs, gens, strict=True)]
    if ratings and all(r is not None for r in ratings["policy"]):
        for who, rs in ratings.items():
            result[f"{who}/reward"] = statistics.fmean(r.reward for r in rs)
            result[f"{who}/correct"] = statistics.fmean(r.correct for r in rs)
            result[f"{who}/concise"] = statistics.fmean(r.concise for r in rs)
            result[f"{who}/filler"] = statistics.fmean(r.filler > 0 for r in rs)
        wins = [1.0 if a.reward > b.reward else 0.5 if a.reward == b.reward else 0.0
                for a, b in zip(ratings["policy"], ratings["reference"], strict=True)]
        result["win_rate_vs_reference"] = statistics.fmean(wins)
    if evaluator is not None:
        questions = [_question(p) for p in pairs]
        verdicts = evaluator(questions, [(a.text, b.text) for a, b in zip(outputs["policy"], outputs["reference"],
                                                                           strict=True)], [p.meta for p in pairs])
        probs = [p for p in verdicts.prob_first if p is not None]
        result["judge/failures"] = float(len(pairs) - len(probs))
        result["judge/wins"] = float(sum(p > 0.5 for p in probs))
        result["judge/ties"] = float(sum(p == 0.5 for p in probs))
        result["judge/losses"] = float(sum(p < 0.5 for p in probs))
        if probs:
            result["judge/win_rate"] = (result["judge/wins"] + 0.5 * result["judge/ties"]) / len(probs)
    result["examples"] = [{"prompt": _question(p), "policy": a.text, "reference": b.text}
                          for p, a, b in list(zip(pairs, outputs["policy"], outputs["reference"], strict=True))[:8]]
    return result


def _question(pair) -> str:
    return question_text(pair.meta.get("prompt", ""))



def behavior_rates(policy, reference, datamodule, gen_cfg) -> dict[str, Any]:
    """Behaviour rate on held-out prompts: the policy and the base model on the training prompt, and the base
    model on the prompt that elicits the behaviour (the encouraging instruction; for instruction negation, the
    prompt without the inappropriate instruction): the upper bound the policy should move toward."""
    measure = datamodule.behavior.measure
    held_out = datamodule.held_out_prompts()[: gen_cfg.num_prompts]
    users = [[m for m in prompt if m["role"] == "user"] for prompt in held_out]
    target = "control" if datamodule.variant == "instruction_negation" else "encourage"
    tokenize = datamodule.pair_tokenizer.prompt_ids
    trained_on = [tokenize(prompt) for prompt in held_out]
    conditions = {"policy": (policy, trained_on), "reference": (reference, trained_on),
                  f"reference_{target}": (reference, [tokenize(datamodule.messages(u, target)) for u in users])}
    options = dict(max_new_tokens=gen_cfg.max_new_tokens, temperature=gen_cfg.temperature, top_p=gen_cfg.top_p,
                   batch_size=gen_cfg.batch_size, seed=gen_cfg.get("seed", 0))
    result: dict[str, Any] = {"behavior": datamodule.behavior.name, "variant": datamodule.variant,
                              "num_prompts": len(held_out)}
    for name, (model, prompts) in conditions.items():
        gens = generate(model, datamodule.tokenizer, prompts, progress=f"sampling ({name})", **options)
        result[f"{name}/mean_length"] = statistics.fmean(len(g.token_ids) for g in gens)
        if measure is not None:
            result[f"{name}/behavior_rate"] = statistics.fmean(measure(g.text) for g in gens)
        result.setdefault("examples", []).append({"condition": name, "answer": gens[0].text})
    return result
