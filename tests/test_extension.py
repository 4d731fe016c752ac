"""Adding a pair source, a judge or a loss touches no generic file: each is a class or function plus a YAML file
(here under tests/extension/), composed with hydra.searchpath and run through the ordinary entry points."""

from __future__ import annotations

from pathlib import Path

from omegaconf import open_dict

import tests.extension.toy  # noqa: F401  (registers the toy loss)
from alignlab.evaluate import run_evaluate
from alignlab.train import run_train

from .test_evaluate import eval_cfg
from .test_train import column, read_metrics

SEARCHPATH = f"hydra.searchpath=[file://{Path(__file__).parent / 'extension' / 'conf'}]"


def test_a_new_pair_source_and_loss_train_and_evaluate(make_cfg, tmp_path):
    cfg = make_cfg(SEARCHPATH, "objective=echo", "trainer.max_steps=3", "optimizer.lr=1e-3", "save_policy=true")
    assert cfg.data._target_.endswith("EchoPairsDataModule") and cfg.loss.name == "toy_softplus_margin"
    metrics, run = run_train(cfg)
    assert run["datamodule"].num_examples == 24 and "val/rewards/accuracies" in metrics
    assert len(column(read_metrics(run["output_dir"]), "train/loss")) == 3
    evaluated, objects = run_evaluate(eval_cfg(run["output_dir"], tmp_path / "eval", SEARCHPATH))
    assert evaluated["num_pairs"] == 8 and evaluated["samples"]["num_prompts"] == 6
    arms = {r["arm"] for r in objects["recorder"].rows["eval"]}
    assert arms == {"policy", "reference"} and (tmp_path / "eval" / "records" / "eval.jsonl").is_file()


def test_a_new_judge_labels_online_pairs(make_cfg):
    cfg = make_cfg(SEARCHPATH, "objective=oaif", "judge=longer", "data.sampling.max_new_tokens=6",
                   "trainer.max_steps=2", "data.prompts.max_train=8", "data.prompts.max_val=4")
    with open_dict(cfg):
        cfg.data.unfinished = "keep"
    _, run = run_train(cfg)
    assert type(run["datamodule"].judge).__name__ == "LongerAnswerJudge"
    assert sum(column(read_metrics(run["output_dir"]), "train/online/pairs")) == 8
