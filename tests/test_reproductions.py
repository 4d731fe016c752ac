"""The commands of the paper reproductions (experiments/*/run.sh) compose with the current config tree: every
override they pass names a key that exists. (The OPO experiment's commands are composed in tests/test_opo.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from .conftest import compose_config

OAIF = Path(__file__).resolve().parent.parent / "experiments" / "oaif"
# What experiments/oaif/run.sh adds to every training command.
OAIF_TRAIN_EXTRA = ["trainer.enable_progress_bar=false", "+trainer.enable_checkpointing=false", "save_policy=false",
                    "~callbacks.checkpoint"]


def oaif_runs() -> list[tuple[str, str, list[str]]]:
    """(name, command, overrides) of every line of experiments/oaif/runs.txt, which run.sh reads."""
    runs = []
    for line in (OAIF / "runs.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command, *overrides = line.split()
            runs.append((name, command, [o.replace("$ROOT", "experiments/oaif/runs") for o in overrides]))
    return runs

TRAIN = [
    # experiments/dpo_family/run.sh (one job of its multirun)
    ["experiment=dpo_family", "loss=ipo", "loss.beta=0.5", "trainer.enable_progress_bar=false"],
    # experiments/counterfactual_dpo/run.sh
    ["experiment=counterfactual_dpo", "behavior=french", "data.variant=enc", "data.filter_by_measure=true"],
    ["experiment=counterfactual_dpo", "behavior=ignore_brevity", "data.variant=instruction_negation"],
]
EVAL = [["generate.num_prompts=30", "sampling.max_new_tokens=64"],
        ["generate.num_prompts=17", "sampling.max_new_tokens=80"]]


@pytest.mark.parametrize("overrides", TRAIN, ids=lambda o: " ".join(o))
def test_training_commands_compose(overrides):
    cfg = compose_config("train", overrides)
    OmegaConf.to_container(cfg.data, resolve=False)
    assert cfg.objective.name in ("dpo", "oaif", "counterfactual_dpo")


@pytest.mark.parametrize("overrides", EVAL, ids=lambda o: " ".join(o))
def test_evaluation_commands_compose(overrides):
    cfg = compose_config("eval", ["policy_path=somewhere", *overrides])
    assert cfg.generate.enabled and cfg.sampling.max_new_tokens in (64, 80)


def test_oaif_run_sh_reads_the_runs_file():
    script = (OAIF / "run.sh").read_text()
    assert "runs.txt" in script and "alignlab-$command" in script
    assert all(extra in script for extra in OAIF_TRAIN_EXTRA)
    assert {command for _, command, _ in oaif_runs()} == {"train", "generate"}


@pytest.mark.parametrize("name, command, overrides", oaif_runs(), ids=[r[0] for r in oaif_runs()])
def test_every_oaif_command_composes(name, command, overrides):
    """Both arms see the same split and are measured on the same held-out prompts; offline pairs come from the
    online arm's sampling settings and annotator, with every pair kept as the annotator labelled it."""
    if command == "generate":
        cfg = compose_config("generate", overrides)
        online = compose_config("train", ["experiment=oaif"])
        assert cfg.data.unfinished == "keep" and cfg.judge._target_ == online.judge._target_
        assert cfg.data.sampling == online.data.sampling
        assert (cfg.data.prompts.val_fraction, cfg.data.prompts.seed) == (0.25, 0)
        return
    cfg = compose_config("train", [*overrides, *OAIF_TRAIN_EXTRA])
    assert "checkpoint" not in cfg.callbacks and cfg.save_policy is False and not cfg.trainer.enable_checkpointing
    monitor = cfg.callbacks.win_rate
    assert (monitor.num_prompts, monitor.n_samples, monitor.every_n_steps) == (64, 3, 14)
    assert (monitor.prompts.val_fraction, monitor.prompts.seed, cfg.data.prompts.seed) == (0.25, 0, 0)
    assert cfg.data.seed == cfg.seed  # one split for every seed; order and samples still the run's
    if cfg.objective.name == "oaif":
        assert cfg.data.unfinished == "keep" and cfg.data.prompts.val_fraction == 0.25
    else:
        assert cfg.trainer.max_steps == 28 and cfg.data.prompts.path.endswith("/pairs.jsonl")
