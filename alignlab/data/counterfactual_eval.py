"""Counterfactual DPO's own evaluation: how often the trained policy shows the behaviour on the plain prompt, and
a capability check the behaviour training should leave alone. Called through
:meth:`CounterfactualDataModule.evaluate`; every answer is also written as a record."""

from __future__ import annotations

import statistics
from typing import Any

from alignlab.records import Recorder
from alignlab.reference import Reference
from alignlab.sampling import Sampling, generate


def behavior_rates(policy, reference: Reference, datamodule, sampling: Sampling,
                   recorder: Recorder | None = None, num_prompts: int | None = None) -> dict[str, Any]:
    """Behaviour rate on held-out prompts: the policy and the base model on the training prompt, and the base
    model on the prompt that elicits the behaviour (the encouraging instruction; for instruction negation, the
    prompt without the inappropriate instruction): the upper bound the policy should move toward."""
    measure = datamodule.behavior.measure
    held_out = datamodule.examples("val")[:num_prompts]
    target = "control" if datamodule.variant == "instruction_negation" else "encourage"
    tokenize = datamodule.pair_tokenizer.prompt_ids
    elicited = [tokenize(datamodule.messages([m for m in e.meta["prompt"] if m["role"] == "user"], target))
                for e in held_out]
    trained_on = [e.prompt_ids for e in held_out]
    result: dict[str, Any] = {"behavior": datamodule.behavior.name, "variant": datamodule.variant,
                              "num_prompts": len(held_out)}
    rows = []
    for name, prompts, use_reference in (("policy", trained_on, False), ("reference", trained_on, True),
                                         (f"reference_{target}", elicited, True)):
        if use_reference:
            with reference.as_model() as model:
                gens = generate(model, datamodule.tokenizer, prompts, sampling, progress=f"sampling ({name})")
        else:
            gens = generate(policy, datamodule.tokenizer, prompts, sampling, progress=f"sampling ({name})")
        result[f"{name}/mean_length"] = statistics.fmean(len(g.token_ids) for g in gens)
        measures = [measure(g.text) for g in gens] if measure is not None else [None] * len(gens)
        if measure is not None:
            result[f"{name}/behavior_rate"] = statistics.fmean(measures)
        result.setdefault("examples", []).append({"condition": name, "answer": gens[0].text})
        rows += [{"prompt_id": e.prompt_id, "prompt": e.question, "arm": name, "sample": 0, "answer": g.text,
                  "length": len(g.token_ids), "finished": g.finished, "measure": m}
                 for e, g, m in zip(held_out, gens, measures, strict=True)]
    if recorder is not None:
        recorder.write("behavior", rows)
    return result


def capability(policy, reference: Reference, tokenizer, sampling: Sampling,
               recorder: Recorder | None = None) -> dict[str, Any]:
    """A capability check that the behaviour training should leave alone: held-out short_facts questions,
    answered greedily (48 new tokens), scored by the programmatic rater (correctness and total reward)."""
    from alignlab.data.offline import OfflinePreferenceDataModule, bundled_path
    from alignlab.data.prompt_set import PromptSet
    from alignlab.judges.rater import AnswerRater
    from alignlab.policy_vs_reference import sample_and_rate

    facts = OfflinePreferenceDataModule(tokenizer, PromptSet(path=bundled_path(), seed=0))
    facts.setup("validate")
    greedy = Sampling(max_new_tokens=48, temperature=0.0, top_p=1.0, batch_size=sampling.batch_size, seed=0)
    result = sample_and_rate(policy, reference, tokenizer, facts.examples("val"), greedy, AnswerRater(),
                             recorder=recorder, evaluation="capability")
    return {k: v for k, v in result.items() if k.endswith(("/correct", "/reward", "/mean_length"))}


