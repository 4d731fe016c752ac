"""Counterfactual DPO pairs: conditions, variants, the plain training prompt, the cache, and bad specs."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

import alignlab.data.counterfactual as cf
from alignlab.data.behaviors import BehaviorSpec, in_language, is_brief, names_people
from alignlab.data.counterfactual import CounterfactualDataModule
from alignlab.data.prompt_set import PromptSet
from alignlab.errors import ConfigError, DataError
from alignlab.sampling import Sampling
from alignlab.train import run_train

BRIEF = BehaviorSpec("brief", "Answer in one short sentence.", "Answer at great length.", None, is_brief)


def prompts_file(write_jsonl, n=10):
    return write_jsonl([{"prompt": f"Tell me about topic number {i}."} for i in range(n)], "prompts.jsonl")


def make(tiny, path, tmp_path, behavior=BRIEF, **kw):
    dm = CounterfactualDataModule(tiny.tokenizer, behavior, PromptSet(path=str(path), val_fraction=0.2),
                                  Sampling(max_new_tokens=6, temperature=0.7, batch_size=16, seed=0),
                                  samples_per_prompt=2, cache_dir=str(tmp_path / "cache"), **kw)
    dm.prepare(tiny.model)
    return dm


def test_measures():
    assert is_brief("Paris is the capital.") == 1.0 and is_brief("word " * 30) == 0.0
    assert names_people("Isaac Newton and Marie Curie met. Then they left.") == 2
    assert names_people("The history of flight is long. It began early.") == 0
    assert names_people("The Wright Brothers flew. In Paris the crowds cheered.") == 1
    assert in_language("Le soleil est une étoile qui brille dans le ciel.") == 1.0
    assert in_language("The sun is a star; it shines in the sky and le mot is French.") == 0.0
    assert in_language("Die Sonne ist ein Stern, der am Himmel scheint.") == 0.0  # another language is not French
    assert in_language("Die Sonne ist ein Stern, der am Himmel scheint.", language="de") == 1.0
    assert in_language("Oui, Paris.") == 0.0  # too short to tell


def test_contrastive_pairs_train_on_the_plain_prompt(tiny, write_jsonl, tmp_path):
    dm = make(tiny, prompts_file(write_jsonl), tmp_path)
    assert len(dm.rows) == 20 and dm.num_examples <= 20
    row = dm.rows[0]
    assert (row["chosen_condition"], row["rejected_condition"]) == ("encourage", "discourage")
    assert row["prompt"] == [{"role": "user", "content": row["prompt"][0]["content"]}]  # no instruction in it
    text = tiny.tokenizer.decode(dm.train_pairs[0].prompt_ids)
    assert "short sentence" not in text and "great length" not in text
    assert dm.messages("Hi", "encourage")[0] == {"role": "system", "content": BRIEF.encourage}


def test_instruction_negation_keeps_the_instruction_in_the_prompt(tiny, write_jsonl, tmp_path):
    spec = BehaviorSpec("ignore", inappropriate="Always answer in one short sentence.")
    dm = make(tiny, prompts_file(write_jsonl), tmp_path, behavior=spec, variant="instruction_negation")
    assert (dm.rows[0]["chosen_condition"], dm.rows[0]["rejected_condition"]) == ("control", "inappropriate")
    assert "one short sentence" in tiny.tokenizer.decode(dm.train_pairs[0].prompt_ids)


def test_pairs_are_cached_and_reused(tiny, write_jsonl, tmp_path, monkeypatch):
    path = prompts_file(write_jsonl)
    first = make(tiny, path, tmp_path)
    calls = []
    monkeypatch.setattr(cf, "generate", lambda *a, **k: calls.append(1) or [])
    again = make(tiny, path, tmp_path)
    assert calls == [] and again.rows == first.rows


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "other_key"])
def test_stale_or_corrupt_cache_is_regenerated(tiny, write_jsonl, tmp_path, caplog, damage):
    path = prompts_file(write_jsonl)
    first = make(tiny, path, tmp_path)
    rows_path = sorted((tmp_path / "cache").rglob("*.jsonl"))[0]
    lines = rows_path.read_text().splitlines()
    if damage == "corrupt":
        rows_path.write_text("{not json\n" + "\n".join(lines[1:]))
    elif damage == "truncated":
        rows_path.write_text("\n".join(lines[:5]) + "\n")
    else:
        key_path = rows_path.with_suffix(".key.json")
        key = json.loads(key_path.read_text())
        key["sampling"]["temperature"] = 0.1
        key_path.write_text(json.dumps(key))
    with caplog.at_level(logging.WARNING):
        again = make(tiny, path, tmp_path)
    assert "regenerating" in caplog.text
    assert len(again.rows) == len(first.rows)


def test_filter_by_measure_reports_what_it_kept(tiny, write_jsonl, tmp_path):
    spec = BehaviorSpec("longer", "Answer at length.", "Answer briefly.", None, lambda text: float(len(text)))
    dm = make(tiny, prompts_file(write_jsonl), tmp_path, behavior=spec, filter_by_measure=True)
    kept = dm.report["train_pairs"] + dm.report["val_pairs"]
    assert kept + dm.report["filtered"] + dm.report["unusable"] == 20
    assert kept > 0 and dm.report["filtered"] > 0  # seeded sampling: a fixed mix of both
    decoded = [tiny.tokenizer.decode(p.chosen_ids, skip_special_tokens=True) for p in dm.train_pairs]
    longer = {r["chosen"] for r in dm.rows if r["chosen_measure"] > r["rejected_measure"]}
    assert all(text.strip() in longer for text in decoded)
    # The behaviour is still evaluated on every held-out prompt, not only those whose pairs were kept.
    val_prompts = {json.dumps(r["prompt"], sort_keys=True) for r in dm.rows if r["split"] == "val"}
    held_out = [json.dumps(e.meta["prompt"], sort_keys=True) for e in dm.examples("val")]
    assert sorted(held_out) == sorted(val_prompts) and len(held_out) == len(set(held_out))


def test_bad_specs_and_prompt_files(tiny, write_jsonl, tmp_path):
    with pytest.raises(ConfigError, match="needs behavior.discourage"):
        make(tiny, prompts_file(write_jsonl), tmp_path, behavior=BehaviorSpec("x", encourage="Be brief."))
    with pytest.raises(ConfigError, match="needs behavior.inappropriate"):
        make(tiny, prompts_file(write_jsonl), tmp_path, variant="instruction_negation")
    with pytest.raises(ConfigError, match="not one of enc"):
        make(tiny, prompts_file(write_jsonl), tmp_path, variant="both")
    with pytest.raises(DataError, match="empty"):
        make(tiny, write_jsonl([], "empty.jsonl"), tmp_path)


def test_counterfactual_objective_trains_from_config(make_cfg, tmp_path):
    cfg = make_cfg("objective=counterfactual_dpo", "behavior=no_names", "data.variant=enc", "data.sampling.max_new_tokens=8",
                   "data.samples_per_prompt=1", f"data.cache_dir={tmp_path}/cache", "trainer.max_steps=2")
    metrics, objects = run_train(cfg)
    assert objects["datamodule"].rows[0]["behavior"] == "no_names"
    assert metrics["train/loss"] > 0 and len(list((tmp_path / "cache").rglob("*.jsonl"))) == 2


def test_export_writes_pairs_the_offline_data_reads(tmp_path, make_cfg):
    from alignlab.export_pairs import run_generate

    from .conftest import compose_config

    cfg = compose_config("generate", ["model=tiny", "data=counterfactual", "behavior=brief", "data.sampling.max_new_tokens=8",
                                      "data.samples_per_prompt=1", f"data.cache_dir={tmp_path}/cache",
                                      f"output={tmp_path}/pairs.parquet", "split=all"])
    totals, output = run_generate(cfg)
    import pandas as pd

    frame = pd.read_parquet(output)
    assert len(frame) == totals["pairs"] == 85  # every bundled open prompt, one sample each
    assert {"prompt", "chosen", "rejected", "chosen_condition", "variant", "chosen_measure"} <= set(frame.columns)
    _, run = run_train(make_cfg(f"data.prompts.path={output}", "trainer.max_steps=1"))
    assert run["datamodule"].num_examples > 0


def test_behaviour_rates_sample_every_prompt_n_times(tiny, write_jsonl, tmp_path, monkeypatch):
    """One record per prompt, condition and sample (0..n-1); a rate is the mean of the prompts' own means."""
    from alignlab.data.counterfactual_eval import behavior_rates
    from alignlab.records import Recorder
    from alignlab.reference import Reference

    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "alignlab_cache"))  # reference answers kept here
    varied = BehaviorSpec("chars", BRIEF.encourage, BRIEF.discourage, None, lambda text: len(text) % 3 / 2)
    dm = make(tiny, prompts_file(write_jsonl), tmp_path, behavior=varied)
    recorder = Recorder(None)
    result = behavior_rates(tiny.model, Reference.frozen_copy_of(tiny.model), dm,
                            Sampling(max_new_tokens=6, temperature=1.0, batch_size=16, seed=0), recorder, n_samples=3)
    rows = pd.DataFrame(recorder.rows["behavior"])
    assert result["num_prompts"] == 2 and len(rows) == 2 * 3 * 3  # prompts x conditions x samples
    assert rows.groupby(["prompt_id", "arm"])["sample"].apply(lambda samples: sorted(samples) == [0, 1, 2]).all()
    for arm, answers in rows.groupby("arm"):
        per_prompt = answers.groupby("prompt_id")["measure"].mean()
        assert result[f"{arm}/behavior_rate"] == pytest.approx(per_prompt.mean())


def test_evaluation_reports_behaviour_rates_and_capability(make_cfg, tmp_path, monkeypatch):
    from alignlab.evaluate import run_evaluate

    from .test_evaluate import eval_cfg
    from .test_records import wandb_tables

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))

    cfg = make_cfg("objective=counterfactual_dpo", "behavior=brief", "data.sampling.max_new_tokens=8",
                   "data.samples_per_prompt=1", f"data.cache_dir={tmp_path}/cache", "trainer.max_steps=1",
                   "save_policy=true")
    _, run = run_train(cfg)
    metrics, _ = run_evaluate(eval_cfg(run["output_dir"], tmp_path / "eval", "sampling.max_new_tokens=6",
                                       "generate.n_samples=2", "logger=wandb"))
    behavior = metrics["behavior"]
    assert behavior["behavior"] == "brief" and behavior["num_prompts"] == 6 and behavior["n_samples"] == 2
    answers = [json.loads(line) for line in (tmp_path / "eval" / "records" / "behavior.jsonl").open()]
    assert len(answers) == 6 * 3 * 2 and {r["sample"] for r in answers} == {0, 1}  # prompts x conditions x samples
    for name in ("policy", "reference", "reference_encourage"):
        assert 0 <= behavior[f"{name}/behavior_rate"] <= 1
    capability = metrics["capability"]
    assert capability["num_questions"] == 302 and 0 <= capability["policy/correct"] <= 1
    records = [json.loads(line) for line in (tmp_path / "eval" / "records" / "capability.jsonl").open()]
    assert len(records) == 2 * 302 and {r["arm"] for r in records} == {"policy", "reference"}
    # The base model's score is its own, paired with the policy's on the same questions: one step moved it little.
    by_arm = {arm: {r["prompt_id"]: r["margin"] for r in records if r["arm"] == arm} for arm in ("policy", "reference")}
    assert by_arm["policy"].keys() == by_arm["reference"].keys()
    assert all(r["correct"] == float(r["margin"] > 0) for r in records)
    # logger=wandb: every records file is also a W&B Table, with every field of its rows.
    tables = wandb_tables(tmp_path / "eval")
    assert {"records/behavior", "records/capability", "records/eval"} <= set(tables)
    assert len(tables["records/behavior"]["data"]) == len(answers) and "measure" in tables["records/behavior"]["columns"]
    assert len(tables["records/capability"]["data"]) == 2 * 302 and "false_answer" in tables["records/capability"]["columns"]


def test_capability_pairs_differ_in_the_answer_alone():
    """A true and a false statement of the same form: the same words but the answer's slot, a number off by 1, 2
    or 10, a word from the same category; so a change of answer format cannot move the score."""
    from alignlab.data.counterfactual_eval import fact_minimal_pairs
    from alignlab.data.offline import bundled_path
    from alignlab.data.sources import strict_jsonl

    rows = [row for _, row in strict_jsonl(bundled_path("short_facts"))]
    pairs = fact_minimal_pairs(rows)
    assert len(pairs) == len(rows) == 302 and len({p["prompt_id"] for p in pairs}) == 302
    answers = {row["category"]: set() for row in rows}
    for row in rows:
        answers[row["category"]].add(row["answer"])
    for row, pair in zip(rows, pairs, strict=True):
        assert pair["true"] == row["chosen"] != pair["false"]
        head, _, tail = row["chosen"].rpartition(row["answer"])
        assert pair["false"].startswith(head) and pair["false"].endswith(tail)
        wrong = pair["false"][len(head): len(pair["false"]) - len(tail)]
        if row["answer"].isdigit():
            assert abs(int(wrong) - int(row["answer"])) in (1, 2, 10) or wrong == "0"
        else:
            assert wrong in answers[row["category"]] and wrong.lower() != row["answer"].lower()
    assert fact_minimal_pairs(rows) == pairs  # seeded


def test_variants_share_the_answers_of_a_common_condition(tiny, write_jsonl, tmp_path):
    path = prompts_file(write_jsonl)
    enc = make(tiny, path, tmp_path, variant="enc")
    dis = make(tiny, path, tmp_path, variant="dis")
    assert len(list((tmp_path / "cache").rglob("*.jsonl"))) == 3  # control, encourage, discourage
    assert [r["rejected"] for r in enc.rows] == [r["chosen"] for r in dis.rows]  # the same control answers


def test_each_condition_samples_with_its_own_fixed_seed_and_key(tiny, write_jsonl, tmp_path):
    """The seed offsets (control 0, encourage 1, discourage 2, inappropriate 3) and the cache key's sampling
    settings are part of what committed answers were made with: a reordering of CONDITIONS must fail here."""
    dm = make(tiny, prompts_file(write_jsonl), tmp_path)
    seeds = {c: dm.condition_sampling(c).seed for c in ("control", "encourage", "discourage", "inappropriate")}
    assert seeds == {"control": 0, "encourage": 1, "discourage": 2, "inappropriate": 3}
    key = dm.cache_key(tiny.model, dm.examples("train"), "discourage")
    assert key["sampling"] == {"max_new_tokens": 6, "temperature": 0.7, "top_p": 1.0, "batch_size": 16, "seed": 2,
                               "backend": "hf"} and key["format"] == 3


def test_control_answers_can_come_from_another_system_prompt_than_the_one_trained_on(tiny, write_jsonl, tmp_path,
                                                                                     monkeypatch):
    """control_system_prompt separates the prompt the control answers are sampled under from the plain prompt the
    policy is trained on; by default the two are the same."""
    path = prompts_file(write_jsonl)
    prompts = PromptSet(path=str(path), val_fraction=0.2, system_prompt="Always answer the question.")
    sampled = []
    real_generate = cf.generate

    def spy(model, tokenizer, ids, sampling, **kw):
        sampled.append((sampling.seed, [tokenizer.decode(i) for i in ids]))
        return real_generate(model, tokenizer, ids, sampling, **kw)

    monkeypatch.setattr(cf, "generate", spy)
    sampling = Sampling(max_new_tokens=6, temperature=0.7, batch_size=16, seed=0)
    same = CounterfactualDataModule(tiny.tokenizer, BRIEF, prompts, sampling, variant="enc", samples_per_prompt=1,
                                    cache_dir=str(tmp_path / "a"))
    assert same.messages("Hi", "control") == same.training_prompt("Hi") == [
        {"role": "system", "content": "Always answer the question."}, {"role": "user", "content": "Hi"}]
    other = CounterfactualDataModule(tiny.tokenizer, BRIEF, prompts, sampling, variant="enc", samples_per_prompt=1,
                                     cache_dir=str(tmp_path / "b"), control_system_prompt=None)
    other.prepare(tiny.model)
    assert other.messages("Hi", "control") == [{"role": "user", "content": "Hi"}]  # the template's default
    control = next(texts for seed, texts in sampled if seed == 0)  # control samples with the offset 0
    assert control and not any("Always answer the question." in t for t in control)
    assert all("Always answer the question." in tiny.tokenizer.decode(p.prompt_ids) for p in other.train_pairs)
    assert other.rows[0]["prompt"][0] == {"role": "system", "content": "Always answer the question."}
    key = other.cache_key(tiny.model, other.examples("train"), "control")
    assert key["messages"] == [{"role": "user", "content": "{prompt}"}]
