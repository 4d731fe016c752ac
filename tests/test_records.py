"""Per-prompt evaluation records: what alignlab-eval and the win-rate monitor keep, reference answers sampled
once, the same prompt ids for every arm, the step and seed of the evaluated run, and the W&B tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

import alignlab.policy_vs_reference as pvr
from alignlab.evaluate import run_evaluate
from alignlab.loggers import records_table
from alignlab.records import FIELDS, Recorder, read_records
from alignlab.train import run_train

from .test_evaluate import eval_cfg


def wandb_tables(folder: Path) -> dict[str, dict]:
    """The W&B Tables of the one offline run under ``folder``: key (e.g. ``records/eval``) -> its JSON."""
    (run,) = folder.glob("wandb/offline-run-*")
    tables = {}
    for file in (run / "files" / "media" / "table").rglob("*.table.json"):
        key = re.sub(r"_\d+_[0-9a-f]+\.table\.json$", "", file.relative_to(run / "files" / "media" / "table").as_posix())
        tables[key] = json.loads(file.read_text())
    return tables


def column(table: dict, name: str) -> list:
    index = table["columns"].index(name)
    return [row[index] for row in table["data"]]


def test_eval_writes_one_record_per_prompt_sample_and_arm(make_cfg, tmp_path):
    _, run = run_train(make_cfg("trainer.max_steps=1", "save_policy=true", "seed=3"))
    metrics, _ = run_evaluate(eval_cfg(run["output_dir"], tmp_path / "eval", "judge@evaluator=rule",
                                       "generate.n_samples=2"))
    frame = read_records(tmp_path / "eval" / "records" / "eval.jsonl")
    assert set(FIELDS) <= set(frame.columns)
    assert len(frame) == 6 * 2 * 2 and set(frame["arm"]) == {"policy", "reference"}
    assert frame.groupby("prompt_id").size().eq(4).all() and set(frame["sample"]) == {0, 1}
    policy = frame[frame.arm == "policy"]
    assert policy["verdict"].notna().all() and policy["reference_answer"].notna().all()
    assert policy["reward"].mean() == pytest.approx(metrics["samples"]["policy/reward"])
    assert (frame["length"] >= 0).all()
    # Stamped with the trained run's final step and seed; the draws' own seed is the eval's sampling.seed.
    assert frame["step"].eq(1).all() and frame["seed"].eq(3).all() and frame["sampling_seed"].eq(0).all()


def test_eval_reads_and_keeps_the_reference_answers_in_the_folder_it_is_given(make_cfg, tmp_path):
    """generate.reference_cache: the reference's answers are written to that folder once and read back from it by
    the next evaluation (here: answers edited in the folder come back as the reference's), so a committed folder
    gives every run, on any machine, the very same answers."""
    _, run = run_train(make_cfg("trainer.max_steps=1", "save_policy=true"))
    folder = tmp_path / "reference_answers"
    run_evaluate(eval_cfg(run["output_dir"], tmp_path / "eval1", f"generate.reference_cache={folder}"))
    (cached,) = folder.rglob("*.jsonl")
    rows = [json.loads(line) for line in cached.read_text().splitlines()]
    assert len(rows) == 6
    cached.write_text("".join(json.dumps({**r, "text": f"kept {i}"}) + "\n" for i, r in enumerate(rows)))
    run_evaluate(eval_cfg(run["output_dir"], tmp_path / "eval2", f"generate.reference_cache={folder}"))
    frame = read_records(tmp_path / "eval2" / "records" / "eval.jsonl")
    assert sorted(frame[frame.arm == "reference"]["answer"]) == sorted(f"kept {i}" for i in range(6))


def test_records_table_keeps_every_field_and_serialises_nested_values():
    recorder = Recorder(None, seed=2, step=5, sampling_seed=0)
    recorder.write("eval", [{"prompt_id": "q1", "prompt": "Why?", "arm": "policy", "sample": 1, "answer": "So.",
                             "reward_parts": {"correct": True, "concise": 0.5}, "verdict_orders": [0.75, 0.25],
                             "margin": 0.3}])
    table = records_table(recorder.rows["eval"])
    assert table.columns == [*FIELDS, "margin"]  # the schema first, then the extra fields
    (row,) = table.data
    cell = dict(zip(table.columns, row, strict=True))
    assert cell["prompt"] == "Why?" and cell["seed"] == 2 and cell["step"] == 5 and cell["sample"] == 1
    assert json.loads(cell["reward_parts"]) == {"correct": True, "concise": 0.5}
    assert json.loads(cell["verdict_orders"]) == [0.75, 0.25] and cell["margin"] == 0.3
    assert records_table(pd.DataFrame(recorder.rows["eval"])).columns == table.columns  # a DataFrame too


def test_eval_logs_every_records_file_as_a_wandb_table(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    _, run = run_train(make_cfg("trainer.max_steps=1", "save_policy=true", "seed=3"))
    run_evaluate(eval_cfg(run["output_dir"], tmp_path / "eval", "logger=wandb", "judge@evaluator=rule"))
    tables = wandb_tables(tmp_path / "eval")
    assert set(tables) == {"records/eval", "records/pairs"}
    samples = tables["records/eval"]
    assert set(FIELDS) <= set(samples["columns"]) and len(samples["data"]) == 6 * 2
    assert all(column(samples, "prompt")) and set(column(samples, "seed")) == {3}  # the trained run's, not eval's
    policy = [dict(zip(samples["columns"], row, strict=True)) for row in samples["data"]]
    policy = [row for row in policy if row["arm"] == "policy"]
    assert all(json.loads(row["reward_parts"]).keys() == {"correct", "concise", "filler"} for row in policy)
    assert all(row["verdict"] is not None and row["reference_answer"] is not None for row in policy)
    assert "margin" in tables["records/pairs"]["columns"]


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


def test_monitor_logs_a_wandb_table(make_cfg, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = make_cfg("logger=wandb", "logger.wandb.mode=offline", "callbacks=with_win_rate",
                   "callbacks.win_rate.every_n_steps=0", "callbacks.win_rate.num_prompts=2",
                   "callbacks.win_rate.sampling.max_new_tokens=4", "trainer.max_steps=1",
                   "objective.module.precompute_reference=false")
    _, run = run_train(cfg)
    tables = wandb_tables(run["output_dir"])
    assert set(tables) == {"val/samples/records"}
    table = tables["val/samples/records"]
    assert set(FIELDS) <= set(table["columns"]) and len(table["data"]) == 4
    assert all(column(table, "prompt")) and all(isinstance(p, str) for p in column(table, "reward_parts"))
    assert set(column(table, "step")) == {1} and set(column(table, "seed")) == {0}


def test_eval_prompts_are_fixed_by_their_own_prompt_set(make_cfg, tmp_path, write_jsonl):
    """Two runs trained on different data, evaluated with the same ``generate.prompts``: the same prompt ids."""
    prompts = write_jsonl([{"id": f"q{i}", "prompt": f"Question {i}?", "answer": str(i)} for i in range(20)],
                          "eval_prompts.jsonl")
    other = write_jsonl([{"prompt": f"Name a colour ({i}).", "chosen": "Red.", "rejected": "I could not say."}
                         for i in range(24)], "other_pairs.jsonl")
    node = f"generate.prompts={{_target_: alignlab.data.prompt_set.PromptSet, path: '{prompts}', val_fraction: 0.25}}"
    ids = []
    for name, data in (("bundled", []), ("other", [f"data.prompts.path={other}"])):
        cfg = make_cfg("trainer.max_steps=1", "save_policy=true", *data)
        cfg.paths.output_dir = str(tmp_path / name)
        _, run = run_train(cfg)
        run_evaluate(eval_cfg(run["output_dir"], tmp_path / f"eval_{name}", "generate.num_prompts=4", node))
        ids.append(sorted(set(read_records(tmp_path / f"eval_{name}" / "records" / "eval.jsonl")["prompt_id"])))
    assert ids[0] == ids[1] and len(ids[0]) == 4 and all(i.startswith("q") for i in ids[0])


def test_a_model_keeps_its_fingerprint_wherever_it_was_read_from(tiny, tmp_path):
    """Committed answer caches are found by the model's fingerprint: the same weights read from another folder
    (another machine's GGUF conversion) must get the same one, and other weights another."""
    import torch
    from transformers import AutoModelForCausalLM

    from alignlab.answer_cache import model_fingerprint

    for name in ("here", "there"):
        tiny.model.save_pretrained(tmp_path / name)
    here, there = (AutoModelForCausalLM.from_pretrained(tmp_path / n) for n in ("here", "there"))
    assert here.config._name_or_path != there.config._name_or_path
    assert model_fingerprint(here) == model_fingerprint(there) == model_fingerprint(tiny.model)
    with torch.no_grad():
        next(there.parameters()).add_(1.0)
    assert model_fingerprint(there) != model_fingerprint(here)


def test_committed_answer_caches_are_found_by_smollm2s_fingerprint():
    """The reproductions commit the answers they train on and compare with (experiments/*/reference_answers,
    experiments/*/answers), filed under the fingerprint of the model that sampled them: SmolLM2, whose
    fingerprint here must name every such folder, and every key in it, or runs would resample them."""
    from alignlab.answer_cache import model_fingerprint
    from alignlab.models import load_pretrained

    from .conftest import SMOLLM2

    root = Path(__file__).resolve().parents[1] / "experiments"
    folders = [f for pattern in ("*/reference_answers/*", "*/answers/*") for f in root.glob(pattern) if f.is_dir()]
    assert folders, "no committed answer cache found"
    fingerprint = model_fingerprint(load_pretrained(SMOLLM2).model)
    for folder in folders:
        assert folder.name == fingerprint, f"{folder} is not under SmolLM2's fingerprint {fingerprint}"
        for key_file in folder.glob("*.key.json"):
            assert json.loads(key_file.read_text())["model"] == fingerprint, key_file
