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
inserts its default system prompt, which the encouraging instruction replaces; ``data.system_prompt`` sets one.

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
import random
from pathlib import Path
from typing import Any

import torch

from alignlab.data.behaviors import BehaviorSpec
from alignlab.data.offline import PairDataModule
from alignlab.data.pairs import BadRow, PairTokenizer, PreferencePair
from alignlab.data.prompts import PromptExample, read_prompts
from alignlab.errors import ConfigError, DataError
from alignlab.models import cache_root
from alignlab.sampling import generate

log = logging.getLogger(__name__)

# variant -> (chosen condition, rejected condition)
VARIANTS = {"enc": ("encourage", "control"), "dis": ("control", "discourage"),
            "contrastive": ("encourage", "discourage"), "instruction_negation": ("control", "inappropriate")}


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's config and a sample of its weights: a different model gets another cache."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    for _, param in list(model.named_parameters())[:: max(1, len(list(model.parameters())) // 8)]:
        digest.update(param.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class CounterfactualDataModule(PairDataModule):
    """Pairs from counterfactual prompting of the reference model.

    Args:
        tokenizer: the policy's tokenizer.
        behavior: a :class:`BehaviorSpec` (``conf/behavior/``).
        path, split, val_path, val_fraction, prompt_key, system_prompt, max_prompt_length: the prompt dataset.
        variant: ``enc`` | ``dis`` | ``contrastive`` | ``instruction_negation``.
        samples_per_prompt: answers per prompt and condition; the k-th answers are paired.
        temperature, top_p, max_new_tokens, generation_batch_size, generation_seed: sampling.
        filter_by_measure: keep only pairs whose ``behavior.measure`` ranks chosen above rejected.
        cache_dir: where generated pairs are kept (default ``<alignlab cache>/counterfactual``).
    """

    def __init__(self, tokenizer, behavior: BehaviorSpec, path: str, split: str = "train",
                 val_path: str | None = None, val_fraction: float = 0.1, prompt_key: str = "prompt",
                 system_prompt: str | None = None, max_prompt_length: int = 256, variant: str = "contrastive",
                 samples_per_prompt: int = 2, temperature: float = 0.7, top_p: float = 1.0,
                 max_new_tokens: int = 96, generation_batch_size: int = 16, generation_seed: int = 0,
                 filter_by_measure: bool = False, cache_dir: str | None = None, on_bad_row: str = "skip",
                 max_bad_fraction: float = 0.05, max_train_pairs: int | None = None,
                 max_val_pairs: int | None = None, **serving: Any) -> None:
        super().__init__(tokenizer, **serving)
        behavior.require(variant)
        if filter_by_measure and behavior.measure is None:
            raise ConfigError(f"data.filter_by_measure=true but behavior {behavior.name!r} has no measure")
        self.behavior, self.variant = behavior, variant
        self.path, self.split, self.val_path, self.val_fraction = path, split, val_path, val_fraction
        self.prompt_key, self.system_prompt = prompt_key, system_prompt
        self.pair_tokenizer = PairTokenizer(tokenizer, True, system_prompt, max_prompt_length,
                                            max_response_length=max_new_tokens + 2)
        self.samples_per_prompt = samples_per_prompt
        self.sampling = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        self.generation_batch_size, self.generation_seed = generation_batch_size, generation_seed
        self.filter_by_measure = filter_by_measure
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else cache_root() / "counterfactual"
        self.on_bad_row, self.max_bad_fraction = on_bad_row, max_bad_fraction
        self.max_train_pairs, self.max_val_pairs = max_train_pairs, max_val_pairs
        self.generator_model: torch.nn.Module | None = None  # set by alignlab-generate; else the trainer's
        self.rows: list[dict[str, Any]] = []

    # ----- prompts and conditions ------------------------------------------------------------------------------
    def _prompts(self) -> tuple[list[PromptExample], list[PromptExample]]:
        train, skipped = read_prompts(self.path, self.split, self.pair_tokenizer, self.prompt_key, self.on_bad_row,
                                      self.max_bad_fraction)
        self.report.setdefault("skipped", {})[f"{self.path}[{self.split}]"] = skipped
        if self.val_path:
            val, skipped = read_prompts(self.val_path, "train", self.pair_tokenizer, self.prompt_key,
                                        self.on_bad_row, self.max_bad_fraction)
            self.report["skipped"][f"{self.val_path}[train]"] = skipped
            return train, val
        order = list(range(len(train)))
        random.Random(self.seed).shuffle(order)
        held_out = set(order[: max(1, round(self.val_fraction * len(train)))] if self.val_fraction > 0 else [])
        return ([p for i, p in enumerate(train) if i not in held_out],
                [p for i, p in enumerate(train) if i in held_out])

    def messages(self, prompt: str | list, condition: str) -> list[dict[str, str]]:
        """The conversation a condition's answer is generated from (``control``: the plain prompt)."""
        user = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        instruction = {"encourage": self.behavior.encourage, "discourage": self.behavior.discourage,
                       "inappropriate": self.behavior.inappropriate, "control": None}[condition]
        if instruction is None:
            return user if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}, *user]
        return [{"role": "system", "content": instruction}, *[m for m in user if m["role"] != "system"]]

    def training_prompt(self, prompt: str | list) -> list[dict[str, str]]:
        return self.messages(prompt, "inappropriate" if self.variant == "instruction_negation" else "control")

    # ----- generation and cache --------------------------------------------------------------------------------
    # Answers are cached per condition, so variants that share one (enc and dis share control) generate it once.
    CONDITION_SEED = {"control": 0, "encourage": 1, "discourage": 2, "inappropriate": 3}

    def cache_key(self, model: torch.nn.Module, prompts: list[PromptExample], condition: str) -> dict[str, Any]:
        template = hashlib.sha256((self.tokenizer.chat_template or "").encode()).hexdigest()[:12]
        return {"model": model_fingerprint(model), "chat_template": template,
                "prompts": [p.meta["prompt"] for p in prompts], "condition": condition,
                "messages": self.messages("{prompt}", condition), "samples_per_prompt": self.samples_per_prompt,
                "sampling": self.sampling, "batch_size": self.generation_batch_size,  # batching changes samples
                "seed": self.generation_seed + self.CONDITION_SEED[condition], "format": 2}

    def _cache_paths(self, key: dict[str, Any]) -> tuple[Path, Path]:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        stem = self.cache_dir / key["model"] / f"{key['condition']}-{digest}"
        return stem.with_suffix(".jsonl"), stem.with_suffix(".key.json")

    def _load_cache(self, key: dict[str, Any], expected: int) -> list[dict[str, Any]] | None:
        rows_path, key_path = self._cache_paths(key)
        if not rows_path.exists():
            return None
        try:
            if json.loads(key_path.read_text()) != key:
                log.warning("counterfactual cache %s was made by something else: regenerating", rows_path)
                return None
            rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError) as e:
            log.warning("counterfactual cache %s is unreadable (%s): regenerating", rows_path, e)
            return None
        if len(rows) != expected:
            log.warning("counterfactual cache %s has %d answers, expected %d (interrupted?): regenerating",
                        rows_path, len(rows), expected)
            return None
        log.info("counterfactual answers reused from %s", rows_path)
        return rows

    def _save_cache(self, key: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
        rows_path, key_path = self._cache_paths(key)
        rows_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = rows_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        key_path.write_text(json.dumps(key, sort_keys=True))
        tmp.replace(rows_path)  # the answers appear whole or not at all
        return rows_path

    def answers(self, model: torch.nn.Module, prompts: list[PromptExample], condition: str) -> list[dict]:
        """``samples_per_prompt`` answers per prompt under ``condition`` (prompt-major), from cache if there."""
        key = self.cache_key(model, prompts, condition)
        expected = len(prompts) * self.samples_per_prompt
        cached = self._load_cache(key, expected)
        if cached is not None:
            return cached
        log.info("generating %d answers under the %s condition (%s)", expected, condition, self.behavior.name)
        ids = [self.pair_tokenizer.prompt_ids(self.messages(p.meta["prompt"], condition))
               for p in prompts for _ in range(self.samples_per_prompt)]
        gens = generate(model, self.tokenizer, ids, batch_size=self.generation_batch_size,
                        seed=key["seed"], progress=f"generating ({condition})", **self.sampling)
        rows = [{"text": g.text, "finished": g.finished} for g in gens]
        self.report.setdefault("cache", []).append(str(self._save_cache(key, rows)))
        return rows

    def pair_rows(self, model: torch.nn.Module, prompts: list[PromptExample], splits: list[str]) -> list[dict]:
        chosen_condition, rejected_condition = VARIANTS[self.variant]
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
                       "rejected_finished": rejected["finished"]}
                if self.behavior.measure is not None:
                    row["chosen_measure"] = self.behavior.measure(chosen["text"])
                    row["rejected_measure"] = self.behavior.measure(rejected["text"])
                rows.append(row)
        return rows

    def _generator(self) -> torch.nn.Module:
        if self.generator_model is not None:
            return self.generator_model
        trainer = getattr(self, "trainer", None)
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        if module is None:
            raise DataError("counterfactual pairs need a model to generate with: run through alignlab-train or "
                            "alignlab-generate")
        model = getattr(module, "_reference", None) or module.policy  # at setup the policy is still the initial one
        return model.to(trainer.strategy.root_device)  # setup() runs before Lightning moves the model

    # ----- setup -----------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_pairs:
            return
        train_prompts, val_prompts = self._prompts()
        if not train_prompts:
            raise DataError(f"{self.path}: no usable prompts")
        model = self._generator()
        prompts, splits = train_prompts + val_prompts, ["train"] * len(train_prompts) + ["val"] * len(val_prompts)
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            # One rank generates and writes the cache; the others wait, then read it.
            if trainer.is_global_zero:
                self.pair_rows(model, prompts, splits)
            trainer.strategy.barrier("counterfactual-pairs")
        rows = self.pair_rows(model, prompts, splits)
        self.rows = rows
        self._tokenize(rows)

    def held_out_prompts(self) -> list[list[dict[str, str]]]:
        """The training-format prompt (messages) of every held-out prompt, once each and in order, whether or not
        the measure filter kept its pairs: the behaviour is evaluated on all of them."""
        seen, prompts = set(), []
        for row in self.rows:
            key = json.dumps(row["prompt"], sort_keys=True)
            if row["split"] == "val" and key not in seen:
                seen.add(key)
                prompts.append(row["prompt"])
        return prompts

    def _cut_if_unfinished(self, ids: list[int], finished: bool) -> list[int]:
        eos = self.tokenizer.eos_token_id
        if finished or eos not in ids:
            return ids
        return ids[: ids.index(eos)]

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
                tokenized = dataclasses.replace(
                    tokenized, chosen_ids=self._cut_if_unfinished(tokenized.chosen_ids, row["chosen_finished"]),
                    rejected_ids=self._cut_if_unfinished(tokenized.rejected_ids, row["rejected_finished"]))
                kept[row["split"]].append(tokenized)
            except BadRow:  # an empty answer, or two identical ones
                dropped["unusable"] += 1
        train = kept["train"][: self.max_train_pairs] if self.max_train_pairs else kept["train"]
        val = kept["val"][: self.max_val_pairs] if self.max_val_pairs else kept["val"]
        self.train_pairs = [dataclasses.replace(p, example_id=i) for i, p in enumerate(train)]
        self.val_pairs = [dataclasses.replace(p, example_id=len(train) + i) for i, p in enumerate(val)]
        if not self.train_pairs:
            raise DataError(f"behavior {self.behavior.name!r}, variant {self.variant!r}: no usable pairs "
                            f"({dropped['filtered']} filtered out by the measure, {dropped['unusable']} unusable)")
        self.report.update(train_pairs=len(self.train_pairs), val_pairs=len(self.val_pairs), **dropped)
        log.info("counterfactual pairs: %d train / %d val; %d filtered out by the measure, %d unusable",
                 len(self.train_pairs), len(self.val_pairs), dropped["filtered"], dropped["unusable"])
