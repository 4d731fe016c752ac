"""Counterfactual DPO (Butcher 2024): preferences from *how* an answer was produced, with no labels and no judge.

For each prompt the reference model answers under up to three conditions:

* ``control``: the plain prompt;
* ``encourage``: a system instruction for the desired behaviour;
* ``discourage``: a system instruction for the undesired behaviour;
* ``inappropriate``: an instruction the model should learn to ignore (instruction negation).

Variants pair them (``chosen`` over ``rejected``): ``enc`` encourage over control, ``dis`` control over
discourage, ``contrastive`` encourage over discourage, ``instruction_negation`` control over inappropriate. The
model is trained on the **plain** prompt (for instruction negation: the prompt *with* the inappropriate
instruction), so the behaviour moves into the weights. "Plain" means the chat template's own default: SmolLM2's
inserts its default system prompt, which the encouraging instruction replaces; ``data.prompts.system_prompt`` sets one.
The control answers are sampled on that same plain prompt unless ``control_system_prompt`` names another: an
ablation that separates the prompt the policy is trained on from the one its rejected (or, for DIS, chosen)
answers came from.

Answers are generated once in ``setup()`` (``samples_per_prompt`` per prompt and condition, batched) and cached on
disk per condition, under a hash of everything that produced them: the model's weights fingerprint, the prompts,
the condition's messages and the sampling settings; variants sharing a condition share its answers. A stale or
corrupt cache is regenerated, with a log line saying why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any

import torch

from alignlab.answer_cache import AnswerCache, model_fingerprint
from alignlab.data.base import FixedPairsSource, check_split
from alignlab.data.behaviors import CONDITIONS, BehaviorSpec
from alignlab.data.offline import cut_end_of_turn
from alignlab.data.pairs import BadRow, PreferencePair
from alignlab.data.prompt_set import PromptExample, PromptSet, question_text
from alignlab.errors import ConfigError, DataError
from alignlab.models import cache_root
from alignlab.sampling import Sampling, generate

log = logging.getLogger(__name__)

PLAIN = object()
"""``control_system_prompt``'s default: the control answers are sampled on the plain prompt itself."""


class CounterfactualDataModule(FixedPairsSource):
    """Pairs from counterfactual prompting of the reference model.

    Args:
        tokenizer: the policy's tokenizer.
        behavior: a :class:`BehaviorSpec` (``conf/behavior/``).
        prompts: the :class:`PromptSet` (``data.prompts``; its ``system_prompt`` is the plain condition's).
        sampling: how the answers are generated (``data.sampling``; its seed is offset per condition).
        variant: ``enc`` | ``dis`` | ``contrastive`` | ``instruction_negation``.
        samples_per_prompt: answers per prompt and condition; the k-th answers are paired.
        filter_by_measure: keep only pairs whose ``behavior.measure`` ranks chosen above rejected.
        cache_dir: where generated pairs are kept (default ``<alignlab cache>/counterfactual``).
        control_system_prompt: the system prompt the control answers are sampled under (``None``: the chat
            template's default); by default the plain prompt's own, ``prompts.system_prompt``.
    """

    def __init__(self, tokenizer, behavior: BehaviorSpec, prompts: PromptSet, sampling: Sampling,
                 variant: str = "contrastive", samples_per_prompt: int = 2, filter_by_measure: bool = False,
                 cache_dir: str | None = None, control_system_prompt: str | None | object = PLAIN,
                 **serving: Any) -> None:
        super().__init__(tokenizer, prompts, **serving)
        self.pairing = behavior.require(variant)
        if filter_by_measure and behavior.measure is None:
            raise ConfigError(f"data.filter_by_measure=true but behavior {behavior.name!r} has no measure")
        if not prompts.chat_template:
            raise ConfigError("counterfactual pairs put instructions in a system message: data.prompts."
                              "chat_template must be true")
        if sampling.seed is None:
            raise ConfigError("data.sampling.seed must be set: counterfactual answers are cached by their seed")
        self.behavior, self.variant = behavior, variant
        self.system_prompt = prompts.system_prompt
        self.control_system_prompt = prompts.system_prompt if control_system_prompt is PLAIN else control_system_prompt
        # messages() and training_prompt() write every system message themselves, the template's default included.
        self.pair_tokenizer = prompts.pair_tokenizer(tokenizer, max_response_length=sampling.max_new_tokens + 2,
                                                     add_system_prompt=False)
        self.samples_per_prompt, self.sampling = samples_per_prompt, sampling
        self.filter_by_measure = filter_by_measure
        self.cache = AnswerCache(cache_dir or cache_root() / "counterfactual", "counterfactual answers")
        self.rows: list[dict[str, Any]] = []

    # ----- prompts and conditions ------------------------------------------------------------------------------
    def messages(self, prompt: str | list, condition: str) -> list[dict[str, str]]:
        """The conversation a condition's answer is generated from (``control``: the user's turn under
        ``control_system_prompt``)."""
        instruction = self.behavior.instruction(condition)
        return with_system(prompt, self.control_system_prompt if instruction is None else instruction)

    def training_prompt(self, prompt: str | list) -> list[dict[str, str]]:
        """The prompt the policy is trained and evaluated on: the plain prompt, or for instruction negation the
        prompt with the instruction to ignore."""
        instruction = self.behavior.instruction(self.pairing.trained_on)
        return with_system(prompt, self.system_prompt if instruction is None else instruction)

    # ----- generation and cache --------------------------------------------------------------------------------
    # Answers are cached per condition, so variants that share one (enc and dis share control) generate it once.

    def condition_sampling(self, condition: str) -> Sampling:
        """``data.sampling`` with the condition's own seed (offset by its place in :data:`CONDITIONS`)."""
        return self.sampling.replace(seed=self.sampling.seed + CONDITIONS.index(condition))

    def cache_key(self, model: torch.nn.Module, prompts: list[PromptExample], condition: str) -> dict[str, Any]:
        """Everything the condition's answers depend on; the sampling settings whole (batching and the engine
        change the samples too)."""
        template = hashlib.sha256((self.tokenizer.chat_template or "").encode()).hexdigest()[:12]
        return {"model": model_fingerprint(model), "chat_template": template, "name": condition,
                "prompts": [p.meta["prompt"] for p in prompts], "condition": condition,
                "messages": self.messages("{prompt}", condition), "samples_per_prompt": self.samples_per_prompt,
                "sampling": self.condition_sampling(condition).as_dict(), "format": 3}

    def answers(self, model: torch.nn.Module, prompts: list[PromptExample], condition: str) -> list[dict]:
        """``samples_per_prompt`` answers per prompt under ``condition`` (prompt-major), from cache if there."""
        key = self.cache_key(model, prompts, condition)
        expected = len(prompts) * self.samples_per_prompt
        cached = self.cache.get(key, expected)
        if cached is not None:
            return cached
        log.info("generating %d answers under the %s condition (%s)", expected, condition, self.behavior.name)
        ids = [self.pair_tokenizer.prompt_ids(self.messages(p.meta["prompt"], condition))
               for p in prompts for _ in range(self.samples_per_prompt)]
        gens = generate(model, self.tokenizer, ids, self.condition_sampling(condition),
                        progress=f"generating ({condition})")
        rows = [{"text": g.text, "finished": g.finished} for g in gens]
        self.report.setdefault("cache", []).append(str(self.cache.put(key, rows)))
        return rows

    def pair_rows(self, model: torch.nn.Module, prompts: list[PromptExample], splits: list[str]) -> list[dict]:
        chosen_condition, rejected_condition = self.pairing.chosen, self.pairing.rejected
        chosen_answers = self.answers(model, prompts, chosen_condition)
        rejected_answers = self.answers(model, prompts, rejected_condition)
        rows = []
        for i, (prompt, split) in enumerate(zip(prompts, splits, strict=True)):
            for k in range(self.samples_per_prompt):
                chosen = chosen_answers[i * self.samples_per_prompt + k]
                rejected = rejected_answers[i * self.samples_per_prompt + k]
                row = {"prompt": self.training_prompt(prompt.meta["prompt"]), "chosen": chosen["text"],
                       "rejected": rejected["text"], "split": split, "behavior": self.behavior.name,
                       "variant": self.variant, "chosen_condition": chosen_condition,
                       "rejected_condition": rejected_condition, "chosen_finished": chosen["finished"],
                       "rejected_finished": rejected["finished"], "prompt_id": prompt.prompt_id}
                if self.behavior.measure is not None:
                    row["chosen_measure"] = self.behavior.measure(chosen["text"])
                    row["rejected_measure"] = self.behavior.measure(rejected["text"])
                rows.append(row)
        return rows

    # ----- setup -----------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_items:
            return
        train_prompts, val_prompts = self.prompts.read_prompts(self.pair_tokenizer, self.report)
        prompts, splits = train_prompts + val_prompts, ["train"] * len(train_prompts) + ["val"] * len(val_prompts)
        with self.generator_model() as model:
            trainer = getattr(self, "trainer", None)
            if trainer is not None and trainer.world_size > 1:
                # One rank generates and writes the cache; the others wait, then read it.
                if trainer.is_global_zero:
                    self.pair_rows(model, prompts, splits)
                trainer.strategy.barrier("counterfactual-pairs")
            self.rows = self.pair_rows(model, prompts, splits)
        self._tokenize(self.rows)

    def examples(self, split: str = "val") -> list[PromptExample]:
        """The training-format prompt of every prompt of the split, once each and in order, whether or not the
        measure filter kept its pairs: the behaviour is evaluated on all of them."""
        check_split(split)
        seen, out = set(), []
        for row in self.rows:
            key = json.dumps(row["prompt"], sort_keys=True)
            if (split == "all" or row["split"] == split) and key not in seen:
                seen.add(key)
                out.append(PromptExample(len(out), row["prompt_id"], self.pair_tokenizer.prompt_ids(row["prompt"]),
                                         question_text(row["prompt"]), {"prompt": row["prompt"]}, row["prompt_id"]))
        return out

    def evaluate(self, policy, reference, sampling, recorder, num_prompts: int | None = None,
                 n_samples: int = 1, cache=None) -> dict[str, Any]:
        from alignlab.data.counterfactual_eval import behavior_rates, capability

        return {"behavior": behavior_rates(policy, reference, self, sampling, recorder, num_prompts, n_samples,
                                           cache),
                "capability": capability(policy, reference, self, recorder)}

    def export_rows(self, model, split: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
        check_split(split)
        self.prepare(model)
        rows = [r for r in self.rows if split == "all" or r["split"] == split]
        return rows, {"pairs": float(len(rows))}

    def _tokenize(self, rows: list[dict[str, Any]]) -> None:
        kept = {"train": [], "val": []}
        dropped = {"filtered": 0, "unusable": 0}
        for i, row in enumerate(rows):
            if self.filter_by_measure and not row["chosen_measure"] > row["rejected_measure"]:
                dropped["filtered"] += 1
                continue
            pair = PreferencePair(row["prompt"], row["chosen"], row["rejected"], {})
            try:
                tokenized = self.pair_tokenizer(pair, 0, f"generated pair {i}")
                # An answer cut at max_new_tokens did not end: train on its tokens without an end of turn, or
                # the length signal would come with an artificial "stop mid-sentence" ending.
                eos = self.tokenizer.eos_token_id
                tokenized = dataclasses.replace(
                    tokenized, meta={**tokenized.meta, "prompt_id": row["prompt_id"]},
                    chosen_ids=tokenized.chosen_ids if row["chosen_finished"] else
                    cut_end_of_turn(tokenized.chosen_ids, eos),
                    rejected_ids=tokenized.rejected_ids if row["rejected_finished"] else
                    cut_end_of_turn(tokenized.rejected_ids, eos))
                kept[row["split"]].append(tokenized)
            except BadRow:  # an empty answer, or two identical ones
                dropped["unusable"] += 1
        self.set_pairs(kept["train"], kept["val"])
        if not self.train_items:
            raise DataError(f"behavior {self.behavior.name!r}, variant {self.variant!r}: no usable pairs "
                            f"({dropped['filtered']} filtered out by the measure, {dropped['unusable']} unusable)")
        self.report.update(train_pairs=len(self.train_items), val_pairs=len(self.val_items), **dropped)
        log.info("counterfactual pairs: %d train / %d val; %d filtered out by the measure, %d unusable",
                 len(self.train_items), len(self.val_items), dropped["filtered"], dropped["unusable"])


def with_system(prompt: str | list, system: str | None) -> list[dict[str, str]]:
    """``prompt`` as messages under the system message ``system``, which replaces any the prompt has (``None``:
    the prompt as it is, so the chat template adds its default system prompt where it has none)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is None:
        return messages
    return [{"role": "system", "content": system}, *[m for m in messages if m["role"] != "system"]]
