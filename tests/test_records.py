"""Per-prompt evaluation records: what alignlab-eval and the win-rate monitor keep, reference answers sampled
once, the same prompt ids for every arm, and the W&B table."""

from __future__ import annotations

import pytest

import alignlab.policy_vs_reference as pvr
from alignlab.evaluate import run_evaluate
from alignlab.records import FIELDS, read_records
from alignlab.train import run_train

from .test_evaluate import eval_cfg


def test_eval_writes_one_record_per_prompt_sample_and_arm(make_cfg, tmp_path):
    _, run = run_train(make_cfg("trainer.max_steps=1", "save_policy=true"))
    metrics, _ = run_evaluate(eval_cfg(run["output_dir"], tmp_path / "eval", "judge@evaluator=rule",
                                       "generate.n_samples=2"))
    frame = read_records(tmp_path / "eval" / "records" / "eval.jsonl")
    assert set(FIELDS) <= set(frame.columns)
    assert len(frame) == 6 * 2 * 2 and set(frame["arm"]) == {"policy", "reference"}
    assert frame.groupby("prompt_id").size().eq(4).all() and set(frame["sample"]) == {0, 1}
    policy = frame[frame.arm == "policy"]
    assert policy["verdict"].notna().all() and policy["reference_answer"].notna().all()
    assert policy["reward"].mean() == pytest.approx(metrics["samples"]["policy/reward"])
    assert (frame["length"] >= 0).all() and frame["seed"].eq(0).all()


def test_monitor_records_every_step_and_samples_the_reference_once(make_cfg, monkeypatch, tmp_path):
    labels = []
    original = pvr.generate

    def counting(model, tokenizer, prompts, sampling, progress=None):
        labels.append(progress)
        return original(model, tokenizer, prompts, sampling, progress)

    monkeypatch.setattr(pvr, "generate", counting)
    cfg = make_cfg("callbacks=with_win_rate", "callbacks.win_rate.every_n_steps=1", "callbacks.win_rate.num_prompts=3",
                   "callbacks.win_rate.sampling.max_new_tokens=5", "trainer.max_steps=3",
                   "objective.module.precompute_reference=false",
                   f"+callbacks.win_rate.reference_cache={tmp_path}/refcache")
    _, run = run_train(cfg)
    frame = read_records(run["output_dir"] / "records" / "monitor.jsonl")
    assert sorted(set(frame["step"])) == [1, 2, 3] and len(frame) == 3 * 3 * 2
    assert labels.count("sampling (policy)") == 3 and labels.count("sampling (reference)") == 1
    first, last = (frame[(frame.step == s) & (frame.arm == "reference")] for s in (1, 3))
    assert list(first["answer"]) == list(last["answer"])  # the same reference answers at every step


def test_monitor_prompts_are_fixed_by_their_own_prompt_set(make_cfg, tmp_path, write_jsonl):
    prompts = write_jsonl([{"id": f"q{i}", "prompt": f"Question {i}?", "answer": str(i)} for i in range(20)],
                          "eval_prompts.jsonl")
    ids = []
    for data in ("offline", "online"):
        cfg = make_cfg(f"objective={'dpo' if data == 'offline' else 'oaif'}", "callbacks=with_win_rate",
                       "callbacks.win_rate.every_n_steps=0", "callbacks.win_rate.num_prompts=4",
                       "callbacks.win_rate.sampling.max_new_tokens=4", "trainer.max_steps=1",
                       "objective.module.precompute_reference=false",
                       *(["data.sampling.max_new_tokens=4", "objective.module.min_updates=0"] if data == "online" else []),
                       f"+callbacks.win_rate.prompts={{_target_: alignlab.data.prompt_set.PromptSet, "
                       f"path: '{prompts}', val_fraction: 0.25}}")
        cfg.paths.output_dir = str(tmp_path / data)
        _, run = run_train(cfg)
        ids.append(sorted(set(read_records(run["output_dir"] / "records" / "monitor.jsonl")["prompt_id"])))
    assert ids[0] == ids[1] and len(ids[0]) == 4 and all(i.startswith("q") for i in ids[0])


def test_monitor_logs_a_wandb_table(make_cfg, monkeypatch):
    from pytorch_lightning.loggers import WandbLogger

    tables = []
    monkeypatch.setattr(WandbLogger, "log_table", lambda self, key, columns, data, step=None: tables.append(
        (key, columns, data, step)))
    cfg = make_cfg("logger=wandb", "logger.wandb.mode=offline", "callbacks=with_win_rate",
                   "callbacks.win_rate.every_n_steps=0", "callbacks.win_rate.num_prompts=2",
                   "callbacks.win_rate.sampling.max_new_tokens=4", "trainer.max_steps=1",
                   "objective.module.precompute_reference=false")
    run_train(cfg)
    assert len(tables) == 1 and tables[0][0] == "val/samples/records" and len(tables[0][2]) == 4
    assert tables[0][1][:2] == ["prompt_id", "arm"]
