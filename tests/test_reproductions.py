"""The commands of the paper reproductions (experiments/*/run.sh) compose with the current config tree: every
override they pass names a key that exists. (The OPO experiment's commands are composed in tests/test_opo.py.)"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from .conftest import compose_config

TRAIN = [
    # experiments/dpo_family/run.sh (one job of its multirun)
    ["experiment=dpo_family", "loss=ipo", "loss.beta=0.5", "trainer.enable_progress_bar=false"],
    # experiments/oaif/run.sh
    ["experiment=oaif", "seed=1", "trainer.enable_progress_bar=false", "data.unfinished=penalize"],
    ["experiment=oaif_offline", "seed=1", "data.prompts.path=pairs_train.jsonl", "data.prompts.val_path=pairs_val.jsonl"],
    ["experiment=oaif", "judge=rule", "judge.instruction=helpful_short", "optimizer.lr=5e-5",
     "data.prompts.max_train=128", "callbacks.win_rate.every_n_steps=4", "data.unfinished=penalize"],
    # experiments/counterfactual_dpo/run.sh
    ["experiment=counterfactual_dpo", "behavior=french", "data.variant=enc", "data.filter_by_measure=true"],
    ["experiment=counterfactual_dpo", "behavior=ignore_brevity", "data.variant=instruction_negation"],
]
EVAL = [["generate.num_prompts=30", "sampling.max_new_tokens=64"],
        ["generate.num_prompts=17", "sampling.max_new_tokens=80"]]
GENERATE = [["judge=llm_pointwise", "data.sampling.max_new_tokens=64", "data.sampling.temperature=0.9", "seed=1",
             "split=train", "output=pairs.jsonl", "data.unfinished=penalize"]]


@pytest.mark.parametrize("overrides", TRAIN, ids=lambda o: " ".join(o))
def test_training_commands_compose(overrides):
    cfg = compose_config("train", overrides)
    OmegaConf.to_container(cfg.data, resolve=False)
    assert cfg.objective.name in ("dpo", "oaif", "counterfactual_dpo")


@pytest.mark.parametrize("overrides", EVAL, ids=lambda o: " ".join(o))
def test_evaluation_commands_compose(overrides):
    cfg = compose_config("eval", ["policy_path=somewhere", *overrides])
    assert cfg.generate.enabled and cfg.sampling.max_new_tokens in (64, 80)


@pytest.mark.parametrize("overrides", GENERATE, ids=lambda o: " ".join(o))
def test_export_commands_compose(overrides):
    cfg = compose_config("generate", overrides)
    assert cfg.data.unfinished == "penalize" and cfg.data.sampling.temperature == 0.9
