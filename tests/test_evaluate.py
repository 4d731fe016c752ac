"""alignlab-eval on the tiny model: pair metrics from a saved run, samples scored, KL to the reference."""

from __future__ import annotations

import json

import pytest
from omegaconf import open_dict

from alignlab.evaluate import run_evaluate
from alignlab.records import read_records
from alignlab.train import run_train

from .conftest import compose_config


def eval_cfg(policy_path, out, *overrides):
    cfg = compose_config("eval", [f"policy_path={policy_path}", "generate.num_prompts=6", "sampling.max_new_tokens=8",
                                  *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def test_untrained_policy_equals_its_reference(make_cfg, tmp_path):
    _, run = run_train(make_cfg("trainer.max_steps=1", "optimizer.lr=1e-12", "save_policy=true"))
    metrics, _ = run_evaluate(eval_cfg(run["output_dir"], tmp_path / "eval", "judge@evaluator=rule"))
    assert metrics["num_pairs"] == 8  # the run's own held-out pairs (its config is reused)
    judged = metrics["samples"]
    assert judged["judge/ties"] == 6 and judged["judge/win_rate"] == 0.5  # same weights, same seed: all ties
    assert metrics["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    samples = metrics["samples"]
    assert samples["policy/kl_to_reference"] == pytest.approx(0.0, abs=1e-3)
    rows = read_records(tmp_path / "eval" / "records" / "eval.jsonl")
    ratios = rows.loc[rows["arm"] == "policy", "log_ratio"]
    assert len(ratios) == 6 and ratios.abs().max() < 1e-3 and rows.loc[rows["arm"] == "reference", "log_ratio"].isna().all()
    assert samples["policy/reward"] == pytest.approx(samples["reference/reward"])  # same seed, same weights
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["samples"]["num_prompts"] == 6 and len(saved["samples"]["examples"]) == 6


def test_trained_policy_ranks_held_out_pairs(make_cfg, tmp_path):
    cfg = make_cfg("optimizer.lr=3e-3", "trainer.max_steps=-1", "trainer.max_epochs=1", "data.prompts.max_train=null",
                   "data.prompts.max_val=null", "data.batch_size=16", "save_policy=true")
    _, run = run_train(cfg)
    metrics, _ = run_evaluate(eval_cfg(run["output_dir"], tmp_path / "eval", "generate.enabled=false"))
    assert metrics["num_pairs"] == 30 and metrics["rewards/accuracies"] > 0.6 and metrics["rewards/margins"] > 0
    pairs = read_records(tmp_path / "eval" / "records" / "pairs.jsonl")  # the same pairs, one row each
    assert len(pairs) == 30 and pairs["prompt_id"].nunique() == 30
    assert pairs["margin"].mean() == pytest.approx(metrics["rewards/margins"], rel=1e-4)
    assert pairs["ranked"].mean() == pytest.approx(metrics["rewards/accuracies"])
    assert "samples" not in metrics
    # The trained policy's own answers: each keeps log pi - log pi_ref, whose mean is the reported KL estimate.
    sampled, _ = run_evaluate(eval_cfg(run["output_dir"], tmp_path / "sampled", "split=train"))
    rows = read_records(tmp_path / "sampled" / "records" / "eval.jsonl")
    ratios = rows.loc[rows["arm"] == "policy", "log_ratio"].dropna()
    assert len(ratios) >= 5 and ratios.abs().min() > 1e-3
    assert ratios.mean() == pytest.approx(sampled["samples"]["policy/kl_to_reference"], rel=1e-6)
